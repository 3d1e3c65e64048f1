package cri_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/conformance/internal/berthd"
	"github.com/berth-runtime/berth/internal/testutil"
)

// hostState is what pods must not leave behind on the host.
type hostState struct {
	links    []string
	iptables string
	ipam     []string
}

func snapshotHost(t *testing.T, bridge, ipamDir string) hostState {
	t.Helper()
	var s hostState
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ifs {
		if i.Name != bridge { // the bridge stays until the test removes it
			s.links = append(s.links, i.Name)
		}
	}
	for _, table := range []string{"nat", "filter"} {
		out, err := exec.Command("iptables-save", "-t", table).Output()
		if err != nil {
			t.Fatalf("iptables-save: %v", err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if sharedPortmapRule(l) {
				continue
			}
			if strings.HasPrefix(l, "-A") || strings.HasPrefix(l, ":") {
				// Chain declarations without their counters.
				l, _, _ = strings.Cut(l, " [")
				s.iptables += l + "\n"
			}
		}
	}
	_ = filepath.WalkDir(ipamDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), "last_reserved_ip") && d.Name() != "lock" {
			s.ipam = append(s.ipam, p)
		}
		return nil
	})
	return s
}

// bridgeDaemon starts berthd on a bridge network of the test's own: bridge
// <prefix><pid>, subnet 10.<subnetByte>.<pid>.0/24. It returns the
// daemon, the bridge and host-local's store.
func bridgeDaemon(t *testing.T, prefix string, subnetByte int) (d *daemon, bridge, ipamDir string) {
	t.Helper()
	bins := berthd.CNIBinDir(t)
	bridge = fmt.Sprintf("%s%d", prefix, os.Getpid()%100000)
	confDir, ipamDir := berthd.BridgeNetwork(t, bridge, fmt.Sprintf("10.%d.%d.0/24", subnetByte, os.Getpid()%250))
	d = startDaemon(t, daemonOptions{cniConfDir: confDir, extra: fmt.Sprintf("cni_bin_dirs = [%q]", bins)})
	return d, bridge, ipamDir
}

// assertSame fails the test where after differs from s: an interface, an
// iptables rule changed, or any IP allocation left at all.
func (s hostState) assertSame(t *testing.T, when string, after hostState) {
	t.Helper()
	if strings.Join(after.links, " ") != strings.Join(s.links, " ") {
		t.Errorf("%s: interfaces before %v, after %v", when, s.links, after.links)
	}
	if after.iptables != s.iptables {
		t.Errorf("%s: iptables rules changed:\nbefore:\n%s\nafter:\n%s", when, s.iptables, after.iptables)
	}
	if len(after.ipam) != 0 {
		t.Errorf("%s: IP allocations left in host-local's store: %v", when, after.ipam)
	}
}

// sharedPortmapRule reports the portmap plugin's node-wide chains and
// the jumps into them: made by the first pod with a hostPort and kept for
// all later ones, by any runtime. Per-pod rules (-j CNI-DN-...) are not.
func sharedPortmapRule(l string) bool {
	switch {
	case strings.HasPrefix(l, ":CNI-HOSTPORT-"):
		return true
	case strings.Contains(l, "-j CNI-HOSTPORT-"):
		return true
	case strings.HasPrefix(l, "-A CNI-HOSTPORT-MASQ ") && strings.Contains(l, "-j MASQUERADE"):
		return true
	case strings.HasPrefix(l, "-A CNI-HOSTPORT-SETMARK "):
		return true
	}
	return false
}

// TestPodNetworkBridge: pods on a bridge of their own get addresses from
// host-local, reach each other, serve a hostPort on 127.0.0.1, and leave
// no interface, iptables rule or IP allocation behind.
func TestPodNetworkBridge(t *testing.T) {
	bins := berthd.CNIBinDir(t)
	bridge := fmt.Sprintf("bt%d", os.Getpid()%100000)
	subnet := fmt.Sprintf("10.213.%d.0/24", os.Getpid()%250)
	confDir, ipamDir := berthd.BridgeNetwork(t, bridge, subnet)
	before := snapshotHost(t, bridge, ipamDir)
	d := startDaemon(t, daemonOptions{cniConfDir: confDir, extra: fmt.Sprintf("cni_bin_dirs = [%q]", bins)})
	_, ipnet, _ := net.ParseCIDR(subnet)

	hostPort := 20000 + os.Getpid()%10000
	serverCfg := d.podConfig("server")
	serverCfg.PortMappings = []*runtimeapi.PortMapping{{Protocol: runtimeapi.Protocol_TCP, ContainerPort: 8080, HostPort: int32(hostPort), HostIp: "127.0.0.1"}}
	serverCfg.DnsConfig = &runtimeapi.DNSConfig{Servers: []string{"10.213.255.10"}, Searches: []string{"berth.test"}, Options: []string{"ndots:2"}}
	server := d.runPod(t, serverCfg)
	web := d.run(t, server, serverCfg, containerConfig("web", "", "sh", "-c",
		"mkdir -p /www && echo pong > /www/index.html && exec httpd -f -p 8080 -h /www"))
	clientCfg := d.podConfig("client")
	client := d.runPod(t, clientCfg)
	curl := d.run(t, client, clientCfg, containerConfig("curl", "", "sleep", "3600"))

	ips := map[string]string{}
	for _, pod := range []string{server, client} {
		st, err := d.RT.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
		if err != nil {
			t.Fatal(err)
		}
		ip := net.ParseIP(st.Status.GetNetwork().GetIp())
		if ip == nil || !ipnet.Contains(ip) {
			t.Fatalf("pod %s IP %q, want one in %s", pod, st.Status.GetNetwork().GetIp(), subnet)
		}
		ips[pod] = ip.String()
	}
	if ips[server] == ips[client] {
		t.Fatalf("both pods got %s", ips[server])
	}
	if out := d.mustExec(t, web, "ip", "-4", "-o", "addr", "show", "eth0"); !strings.Contains(out, ips[server]+"/24") {
		t.Errorf("eth0 in the pod: %q, want %s", out, ips[server])
	}
	if out := d.mustExec(t, web, "cat", "/etc/resolv.conf"); !strings.Contains(out, "nameserver 10.213.255.10") ||
		!strings.Contains(out, "search berth.test") || !strings.Contains(out, "options ndots:2") {
		t.Errorf("resolv.conf:\n%s", out)
	}

	// Pod to pod, by IP.
	eventually(t, 20*time.Second, "client pod reaches the server pod", func() error {
		out, errOut, code := d.execSync(t, curl, "wget", "-q", "-O-", "http://"+ips[server]+":8080/index.html")
		if code != 0 || out != "pong\n" {
			p, perr, pcode := d.execSync(t, curl, "ping", "-c", "1", "-W", "1", ips[server])
			return fmt.Errorf("wget: %d %q %q; ping: %d %s %s", code, out, errOut, pcode, p, perr)
		}
		return nil
	})
	// hostPort on 127.0.0.1, from the host.
	eventually(t, 20*time.Second, "hostPort on 127.0.0.1", func() error {
		c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		r, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/index.html", hostPort))
		if err != nil {
			return err
		}
		defer r.Body.Close()
		body, _ := io.ReadAll(r.Body)
		if string(body) != "pong\n" {
			return fmt.Errorf("%s %q", r.Status, body)
		}
		return nil
	})

	// A hostNetwork pod skips CNI: the host's interfaces, the test's
	// bridge among them, and no address of the bridge's.
	hostCfg := d.podConfig("host-network")
	hostCfg.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}
	allocated := len(snapshotHost(t, bridge, ipamDir).ipam)
	hostPod := d.runPod(t, hostCfg)
	hostC := d.run(t, hostPod, hostCfg, containerConfig("c", "", "sleep", "3600"))
	seen := d.mustExec(t, hostC, "ip", "-o", "link", "show")
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ifs {
		if !strings.Contains(seen, " "+i.Name+":") && !strings.Contains(seen, " "+i.Name+"@") {
			t.Errorf("hostNetwork pod does not see the host's %s:\n%s", i.Name, seen)
		}
	}
	if st, err := d.RT.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: hostPod}); err != nil || st.Status.GetNetwork().GetIp() != "" {
		t.Errorf("hostNetwork pod status: %v, IP %q (want none: the kubelet uses the node's)", err, st.GetStatus().GetNetwork().GetIp())
	}
	if n := len(snapshotHost(t, bridge, ipamDir).ipam); n != allocated {
		t.Errorf("hostNetwork pod took an address: %d allocations, %d before", n, allocated)
	}

	for _, pod := range []string{server, client, hostPod} {
		if _, err := d.RT.StopPodSandbox(ctxT(t), &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
			t.Fatal(err)
		}
		// Stop is idempotent, CNI DEL included.
		if _, err := d.RT.StopPodSandbox(ctxT(t), &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
			t.Fatal(err)
		}
	}
	before.assertSame(t, "after the pods", snapshotHost(t, bridge, ipamDir))
}

// TestPodNetworkDualStack: on a network with an IPv4 and an IPv6 range,
// a pod's status has both addresses, IPv4 first, both on eth0, and pods
// reach each other over IPv6.
func TestPodNetworkDualStack(t *testing.T) {
	bins := berthd.CNIBinDir(t)
	if data, err := os.ReadFile("/proc/sys/net/ipv6/conf/default/disable_ipv6"); err != nil || strings.TrimSpace(string(data)) != "0" {
		t.Skipf("IPv6 is disabled on this host (%v %q)", err, data)
	}
	bridge := fmt.Sprintf("bd%d", os.Getpid()%100000)
	v4 := fmt.Sprintf("10.218.%d.0/24", os.Getpid()%250)
	v6 := fmt.Sprintf("fd00:b37:%x::/64", os.Getpid()%0xffff)
	confDir, ipamDir := berthd.BridgeNetwork(t, bridge, v4, v6)
	before := snapshotHost(t, bridge, ipamDir)
	d := startDaemon(t, daemonOptions{cniConfDir: confDir, extra: fmt.Sprintf("cni_bin_dirs = [%q]", bins)})
	_, net4, _ := net.ParseCIDR(v4)
	_, net6, _ := net.ParseCIDR(v6)

	serverCfg := d.podConfig("server6")
	server := d.runPod(t, serverCfg)
	web := d.run(t, server, serverCfg, containerConfig("web", "", "sh", "-c",
		"mkdir -p /www && echo pong6 > /www/index.html && exec httpd -f -p 8080 -h /www"))
	clientCfg := d.podConfig("client6")
	client := d.runPod(t, clientCfg)
	curl := d.run(t, client, clientCfg, containerConfig("curl", "", "sleep", "3600"))

	st, err := d.RT.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: server})
	if err != nil {
		t.Fatal(err)
	}
	ip4 := net.ParseIP(st.Status.GetNetwork().GetIp())
	var ip6 net.IP
	if extra := st.Status.GetNetwork().GetAdditionalIps(); len(extra) == 1 {
		ip6 = net.ParseIP(extra[0].GetIp())
	}
	if ip4 == nil || !net4.Contains(ip4) || ip6 == nil || !net6.Contains(ip6) {
		t.Fatalf("pod network status %v, want an IP in %s, then one in %s", st.Status.GetNetwork(), v4, v6)
	}
	if out := d.mustExec(t, web, "ip", "-6", "-o", "addr", "show", "eth0"); !strings.Contains(out, ip6.String()+"/64") {
		t.Errorf("eth0 in the pod: %q, want %s", out, ip6)
	}
	eventually(t, 30*time.Second, "client pod reaches the server pod over IPv6", func() error {
		out, errOut, code := d.execSync(t, curl, "wget", "-q", "-O-", "http://["+ip6.String()+"]:8080/index.html")
		if code != 0 || out != "pong6\n" {
			return fmt.Errorf("wget: %d %q %q", code, out, errOut)
		}
		return nil
	})
	for _, pod := range []string{server, client} {
		if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
			t.Fatal(err)
		}
	}
	before.assertSame(t, "after the pods", snapshotHost(t, bridge, ipamDir))
}

// TestPodNetworkPodCIDR: the bridge template make install ships is
// rendered when the kubelet sets the node's pod CIDR, and pods get their
// addresses from it.
func TestPodNetworkPodCIDR(t *testing.T) {
	bins := berthd.CNIBinDir(t)
	bridge := fmt.Sprintf("bp%d", os.Getpid()%100000)
	ipamDir := t.TempDir()
	// The shipped template, on the test's own bridge and IPAM store.
	tmpl, err := os.ReadFile(filepath.Join(testutil.RepoRoot(), "contrib", "cni", "bridge.conflist.template"))
	if err != nil {
		t.Fatal(err)
	}
	own := strings.Replace(string(tmpl), `"bridge": "berth0"`, fmt.Sprintf(`"bridge": %q`, bridge), 1)
	own = strings.Replace(own, `"type": "host-local",`, fmt.Sprintf(`"type": "host-local", "dataDir": %q,`, ipamDir), 1)
	if own == string(tmpl) || !strings.Contains(own, ipamDir) {
		t.Fatalf("contrib/cni/bridge.conflist.template changed shape; adapt this test:\n%s", tmpl)
	}
	tmplFile := filepath.Join(t.TempDir(), "bridge.conflist.template")
	if err := os.WriteFile(tmplFile, []byte(own), 0o644); err != nil {
		t.Fatal(err)
	}
	berthd.OwnBridge(t, bridge)
	before := snapshotHost(t, bridge, ipamDir)
	confDir := t.TempDir()
	d := startDaemon(t, daemonOptions{cniConfDir: confDir, cniConfTemplate: tmplFile, extra: fmt.Sprintf("cni_bin_dirs = [%q]", bins)})

	cidr := fmt.Sprintf("10.219.%d.0/24", os.Getpid()%250)
	if _, err := d.RT.UpdateRuntimeConfig(ctxT(t), &runtimeapi.UpdateRuntimeConfigRequest{RuntimeConfig: &runtimeapi.RuntimeConfig{
		NetworkConfig: &runtimeapi.NetworkConfig{PodCidr: cidr}}}); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(filepath.Join(confDir, "10-berth-bridge.conflist")); err != nil || !strings.Contains(string(data), cidr) {
		t.Fatalf("rendered configuration: %v\n%s", err, data)
	}
	st, err := d.RT.Status(ctxT(t), &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range st.Status.Conditions {
		if c.Type == runtimeapi.NetworkReady && !c.Status {
			t.Errorf("NetworkReady after the pod CIDR: %+v", c)
		}
	}
	cfg := d.podConfig("in-cidr")
	pod := d.runPod(t, cfg)
	c := d.run(t, pod, cfg, containerConfig("c", "", "sleep", "3600"))
	ps, err := d.RT.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
	if err != nil {
		t.Fatal(err)
	}
	_, ipnet, _ := net.ParseCIDR(cidr)
	ip := net.ParseIP(ps.Status.GetNetwork().GetIp())
	if ip == nil || !ipnet.Contains(ip) || len(ps.Status.GetNetwork().GetAdditionalIps()) != 0 {
		t.Errorf("pod network %v, want one IP in %s", ps.Status.GetNetwork(), cidr)
	}
	gw := ipnet.IP.To4()
	gw[3] = 1
	if out := d.mustExec(t, c, "ip", "route", "show", "default"); !strings.Contains(out, "via "+gw.String()) {
		t.Errorf("default route in the pod: %q, want via %s", out, gw)
	}
	if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
	before.assertSame(t, "after the pod", snapshotHost(t, bridge, ipamDir))
}

// TestInstallCNIConfig: make install puts the default bridge network in
// place only where no CNI configuration exists, and keeps an edited
// template.
func TestInstallCNIConfig(t *testing.T) {
	root := testutil.RepoRoot()
	install := func(destDir string) {
		t.Helper()
		cmd := exec.Command("make", "-s", "-C", root, "install-cni-config", "DESTDIR="+destDir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make install-cni-config: %v\n%s", err, out)
		}
	}
	fresh := t.TempDir()
	install(fresh)
	got, err := os.ReadFile(filepath.Join(fresh, "etc/cni/net.d/10-berth-bridge.conflist"))
	want, _ := os.ReadFile(filepath.Join(root, "contrib/cni/10-berth-bridge.conflist"))
	if err != nil || string(got) != string(want) || !strings.Contains(string(got), `"10.88.0.0/16"`) {
		t.Errorf("default network on a fresh node: %v\n%s", err, got)
	}
	if _, err := os.Stat(filepath.Join(fresh, "etc/berth/cni-bridge.conflist.template")); err != nil {
		t.Errorf("template: %v", err)
	}

	node := t.TempDir()
	for dir, file := range map[string]string{"etc/cni/net.d": "05-mine.conflist", "etc/berth": "cni-bridge.conflist.template"} {
		if err := os.MkdirAll(filepath.Join(node, dir), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(node, dir, file), []byte("mine"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	install(node)
	if _, err := os.Stat(filepath.Join(node, "etc/cni/net.d/10-berth-bridge.conflist")); err == nil {
		t.Errorf("default network installed next to the node's own")
	}
	if data, _ := os.ReadFile(filepath.Join(node, "etc/berth/cni-bridge.conflist.template")); string(data) != "mine" {
		t.Errorf("edited template replaced: %q", data)
	}
}

// faultPlugin installs a CNI plugin of the test's own, chained after the
// bridge, whose ADD fails, hangs or answers garbage as its mode file
// says. In the block-add and block-del modes it writes its PID into
// block.pid next to the mode file and waits for a file named release
// there. Otherwise DEL succeeds, so that teardown can be checked.
func faultPlugin(t *testing.T, binDir string) (modeFile string) {
	t.Helper()
	dir := t.TempDir()
	modeFile = filepath.Join(dir, "mode")
	script := fmt.Sprintf(`#!/bin/sh
mode=$(cat %[1]q/mode)
block() {
	echo $$ > %[1]q/block.pid
	i=0
	while [ ! -e %[1]q/release ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
}
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}'; exit 0;;
ADD)
	case "$mode" in
	fail) echo '{"cniVersion":"1.0.0","code":11,"msg":"berth-fault: injected failure"}'; exit 1;;
	hang) exec sleep 60;;
	garbage) echo 'this is not JSON'; exit 0;;
	block-add) block; exit 1;;
	esac
	# No fault: pass the previous plugin's result on (the object after
	# "prevResult", braces counted; results hold no braces in strings).
	awk 'BEGIN { RS = "\001" } {
		s = substr($0, index($0, "\"prevResult\":") + 13); d = 0
		for (j = 1; j <= length(s); j++) { c = substr(s, j, 1); printf "%%s", c
			if (c == "{") d++; else if (c == "}") { d--; if (d == 0) break } }
	}'
	exit 0;;
DEL)
	[ "$mode" = block-del ] && block;;
esac
exit 0
`, dir)
	if err := os.WriteFile(filepath.Join(binDir, "berth-fault"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return modeFile
}

// faultNetwork is a bridge network whose plugins include the fault
// plugin, chained between the bridge and portmap while withFault says so.
type faultNetwork struct {
	bins, confDir, ipamDir, bridge, modeFile string
	conf                                     string // the configuration file
	plain                                    []byte // its content without the fault plugin
}

func newFaultNetwork(t *testing.T, prefix string, subnetByte int) *faultNetwork {
	t.Helper()
	// The standard plugins and the fault plugin, side by side.
	n := &faultNetwork{bins: t.TempDir()}
	for _, p := range []string{"bridge", "host-local", "portmap", "loopback"} {
		data, err := os.ReadFile(filepath.Join(berthd.CNIBinDir(t), p))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(n.bins, p), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	n.modeFile = faultPlugin(t, n.bins)
	n.bridge = fmt.Sprintf("%s%d", prefix, os.Getpid()%100000)
	n.confDir, n.ipamDir = berthd.BridgeNetwork(t, n.bridge, fmt.Sprintf("10.%d.%d.0/24", subnetByte, os.Getpid()%250))
	n.conf = filepath.Join(n.confDir, "10-berth-test.conflist")
	var err error
	if n.plain, err = os.ReadFile(n.conf); err != nil {
		t.Fatal(err)
	}
	n.withFault(t, true)
	return n
}

// withFault puts the fault plugin into the chain or takes it out; berthd
// picks the change up at its next CNI call.
func (n *faultNetwork) withFault(t *testing.T, on bool) {
	t.Helper()
	data := n.plain
	if on {
		data = []byte(strings.Replace(string(n.plain), `{"type": "portmap"`, `{"type": "berth-fault"}, {"type": "portmap"`, 1))
	}
	if err := os.WriteFile(n.conf, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (n *faultNetwork) setMode(t *testing.T, mode string) {
	t.Helper()
	if err := os.WriteFile(n.modeFile, []byte(mode), 0o644); err != nil {
		t.Fatal(err)
	}
}

// daemonExtra is the berthd configuration that uses the network.
func (n *faultNetwork) daemonExtra(timeout string) string {
	return fmt.Sprintf("cni_bin_dirs = [%q]\ncni_timeout = %q", n.bins, timeout)
}

// blocked waits for the plugin to block and returns its PID.
func (n *faultNetwork) blocked(t *testing.T) int {
	t.Helper()
	pidFile := filepath.Join(filepath.Dir(n.modeFile), "block.pid")
	var pid int
	eventually(t, 30*time.Second, "the fault plugin blocks", func() error {
		data, err := os.ReadFile(pidFile)
		if err != nil {
			return err
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(data)))
		return err
	})
	return pid
}

// release lets a blocked plugin go and waits until its process is gone.
func (n *faultNetwork) release(t *testing.T, pid int) {
	t.Helper()
	dir := filepath.Dir(n.modeFile)
	if err := os.WriteFile(filepath.Join(dir, "release"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the released plugin exits", func() error {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			return fmt.Errorf("plugin %d still runs", pid)
		}
		return nil
	})
	for _, f := range []string{"release", "block.pid"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPodNetworkFaults: a plugin that fails, hangs or answers garbage
// fails RunPodSandbox with its message and leaves no interface, iptables
// rule, IP allocation or network namespace behind.
func TestPodNetworkFaults(t *testing.T) {
	n := newFaultNetwork(t, "bf", 214)
	bridge, ipamDir := n.bridge, n.ipamDir
	d := startDaemon(t, daemonOptions{cniConfDir: n.confDir, extra: n.daemonExtra("3s")})
	// A first pod creates the bridge and portmap's node-wide chains, which
	// stay; the snapshot is taken after it is gone.
	n.setMode(t, "fail")
	_, _ = d.RT.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{Config: d.podConfig("warmup")})
	before := snapshotHost(t, bridge, ipamDir)

	for _, c := range []struct{ mode, want string }{
		{"fail", "berth-fault: injected failure"},
		{"garbage", "berth-fault"},
		{"hang", "timed out"},
	} {
		n.setMode(t, c.mode)
		cfg := d.podConfig("fault-" + c.mode)
		cfg.PortMappings = []*runtimeapi.PortMapping{{Protocol: runtimeapi.Protocol_TCP, ContainerPort: 80, HostPort: int32(30000 + os.Getpid()%10000), HostIp: "127.0.0.1"}}
		_, err := d.RT.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{Config: cfg})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("plugin %s: RunPodSandbox: %v, want an error with %q", c.mode, err, c.want)
		}
		pods, err := d.RT.ListPodSandbox(ctxT(t), &runtimeapi.ListPodSandboxRequest{})
		if err != nil || len(pods.Items) != 0 {
			t.Errorf("plugin %s: pods left: %v %v", c.mode, err, pods.GetItems())
		}
		if entries, _ := os.ReadDir(filepath.Join(d.State, "netns")); len(entries) != 0 {
			t.Errorf("plugin %s: network namespaces left: %d", c.mode, len(entries))
		}
		before.assertSame(t, "plugin "+c.mode, snapshotHost(t, bridge, ipamDir))
	}
	// The hung plugin's process is gone too.
	if procs := berthd.ProcessesMentioning("berth-fault"); len(procs) > 0 {
		t.Errorf("fault plugin processes left: %v", procs)
	}
}

// TestPodNetworkCrash: berthd killed in the middle of CNI ADD or DEL
// finishes or undoes the half-done work when it starts again: no IP left
// in host-local's store, no veth, no iptables rule, no netns mount.
func TestPodNetworkCrash(t *testing.T) {
	n := newFaultNetwork(t, "bk", 217)
	d := startDaemon(t, daemonOptions{cniConfDir: n.confDir, extra: n.daemonExtra("1m")})
	// The first pod makes the bridge, which stays.
	n.setMode(t, "fail")
	_, _ = d.RT.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{Config: d.podConfig("warmup")})
	before := snapshotHost(t, n.bridge, n.ipamDir)
	hostPort := int32(31000 + os.Getpid()%10000)
	withHostPort := func(name string) *runtimeapi.PodSandboxConfig {
		cfg := d.podConfig(name)
		cfg.PortMappings = []*runtimeapi.PortMapping{{Protocol: runtimeapi.Protocol_TCP, ContainerPort: 80, HostPort: hostPort, HostIp: "127.0.0.1"}}
		return cfg
	}
	netnsLeft := func() []string {
		entries, _ := os.ReadDir(filepath.Join(d.State, "netns"))
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}

	t.Run("ADD", func(t *testing.T) {
		// The bridge has made the veth and host-local has given the IP
		// when the fault plugin blocks.
		n.setMode(t, "block-add")
		done := make(chan error, 1)
		go func() {
			_, err := d.RT.RunPodSandbox(context.Background(), &runtimeapi.RunPodSandboxRequest{Config: withHostPort("crash-add")})
			done <- err
		}()
		pid := n.blocked(t)
		if mid := snapshotHost(t, n.bridge, n.ipamDir); len(mid.ipam) == 0 {
			t.Fatalf("no IP allocated while ADD blocks: not the half-done state this test is about")
		}
		d.Stop(syscall.SIGKILL)
		if err := <-done; err == nil {
			t.Fatal("RunPodSandbox succeeded though berthd was killed")
		}
		n.setMode(t, "")
		n.release(t, pid)
		d.Start()
		if pods, err := d.RT.ListPodSandbox(ctxT(t), &runtimeapi.ListPodSandboxRequest{}); err != nil || len(pods.Items) != 0 {
			t.Errorf("pods after restart: %v %v", err, pods.GetItems())
		}
		if left := netnsLeft(); len(left) != 0 {
			t.Errorf("network namespaces left: %v", left)
		}
		before.assertSame(t, "after a crash in ADD", snapshotHost(t, n.bridge, n.ipamDir))
	})

	t.Run("DEL", func(t *testing.T) {
		// A pod set up in full, hostPort rules included, with the fault
		// plugin passing ADD through (DEL runs the chain ADD ran, from
		// libcni's cache); then DEL blocks after portmap's and before the
		// bridge's.
		pod := d.runPod(t, withHostPort("crash-del"))
		n.setMode(t, "block-del")
		done := make(chan error, 1)
		go func() {
			_, err := d.RT.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod})
			done <- err
		}()
		pid := n.blocked(t)
		d.Stop(syscall.SIGKILL)
		if err := <-done; err == nil {
			t.Fatal("StopPodSandbox succeeded though berthd was killed")
		}
		n.setMode(t, "")
		n.release(t, pid)
		d.Start()
		// Without another call: the restart finished the stop.
		st, err := d.RT.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
		if err != nil || st.Status.State != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
			t.Errorf("pod after restart: %v %v", err, st.GetStatus().GetState())
		}
		if left := netnsLeft(); len(left) != 0 {
			t.Errorf("network namespaces left: %v", left)
		}
		before.assertSame(t, "after a crash in DEL", snapshotHost(t, n.bridge, n.ipamDir))
		if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
			t.Fatal(err)
		}
	})
}

// TestPodNetworkChurn creates and removes 100 pods with hostPorts, ten at
// a time: no address is handed out twice while its pod exists, and the
// host ends exactly as it began.
func TestPodNetworkChurn(t *testing.T) {
	testutil.Slow(t)
	d, bridge, ipamDir := bridgeDaemon(t, "bc", 215)
	// The first pod makes the bridge and portmap's node-wide chains.
	warm := d.runPod(t, d.podConfig("warmup"))
	if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: warm}); err != nil {
		t.Fatal(err)
	}
	before := snapshotHost(t, bridge, ipamDir)
	base := 40000 + os.Getpid()%10000
	for batch := 0; batch < 10; batch++ {
		ips := map[string]string{}
		var pods []string
		for i := 0; i < 10; i++ {
			cfg := d.podConfig(fmt.Sprintf("churn-%d-%d", batch, i))
			cfg.PortMappings = []*runtimeapi.PortMapping{{Protocol: runtimeapi.Protocol_TCP, ContainerPort: 80, HostPort: int32(base + i), HostIp: "127.0.0.1"}}
			pod := d.runPod(t, cfg)
			pods = append(pods, pod)
			st, err := d.RT.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
			if err != nil {
				t.Fatal(err)
			}
			ip := st.Status.GetNetwork().GetIp()
			if other, dup := ips[ip]; dup || ip == "" {
				t.Fatalf("batch %d: pod %s got %q, already held by %s", batch, pod, ip, other)
			}
			ips[ip] = pod
		}
		for _, pod := range pods {
			if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
				t.Fatal(err)
			}
		}
	}
	before.assertSame(t, "after the pods", snapshotHost(t, bridge, ipamDir))
}

// TestPodNetworkDelAfterConfigChange: CNI DEL uses the configuration the
// pod's ADD used (libcni's cache), so a pod whose configuration file was
// changed (another IPAM store) or removed since it started still gives
// back its IP and interfaces when it stops.
func TestPodNetworkDelAfterConfigChange(t *testing.T) {
	bridge := fmt.Sprintf("bd%d", os.Getpid()%100000)
	confDir, ipamDir := berthd.BridgeNetwork(t, bridge, fmt.Sprintf("10.221.%d.0/24", os.Getpid()%250))
	d := startDaemon(t, daemonOptions{cniConfDir: confDir, extra: fmt.Sprintf("cni_bin_dirs = [%q]", berthd.CNIBinDir(t))})
	before := snapshotHost(t, bridge, ipamDir)
	confs, err := filepath.Glob(filepath.Join(confDir, "*.conflist"))
	if err != nil || len(confs) != 1 {
		t.Fatalf("CNI configuration of the test: %v %v", confs, err)
	}
	original := readFile(confs[0])
	for _, change := range []string{"changed", "removed"} {
		t.Run(change, func(t *testing.T) {
			podCfg := d.podConfig("del-" + change)
			pod := d.runPod(t, podCfg)
			if after := snapshotHost(t, bridge, ipamDir); len(after.ipam) != 1 {
				t.Fatalf("IP allocations after ADD: %v", after.ipam)
			}
			switch change {
			case "changed":
				// Another host-local store: a DEL with this configuration
				// would release nothing from the real one.
				other := t.TempDir()
				conf := strings.Replace(string(original), ipamDir, other, 1)
				if err := os.WriteFile(confs[0], []byte(conf), 0o644); err != nil {
					t.Fatal(err)
				}
			case "removed":
				if err := os.Remove(confs[0]); err != nil {
					t.Fatal(err)
				}
			}
			defer func() {
				if err := os.WriteFile(confs[0], original, 0o644); err != nil {
					t.Fatal(err)
				}
			}()
			if _, err := d.RT.StopPodSandbox(ctxT(t), &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
				t.Fatal(err)
			}
			if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
				t.Fatal(err)
			}
			before.assertSame(t, "configuration "+change+" before the pod stopped", snapshotHost(t, bridge, ipamDir))
		})
	}
}
