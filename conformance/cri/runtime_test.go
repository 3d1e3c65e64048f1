package cri_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	utilversion "k8s.io/apimachinery/pkg/util/version"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/conformance/internal/berthd"
	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/internal/testutil"
)

func TestVersionStatusAndRuntimeConfig(t *testing.T) {
	cni := t.TempDir()
	d := startDaemon(t, daemonOptions{cniConfDir: cni, extra: fmt.Sprintf("cni_bin_dirs = [%q]", berthd.CNIBinDir(t))})
	ctx := ctxT(t)

	v, err := d.RT.Version(ctx, &runtimeapi.VersionRequest{Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if v.RuntimeName != "berth" || v.RuntimeApiVersion != "v1" || v.RuntimeVersion == "" {
		t.Errorf("version: %+v", v)
	}
	// The kubelet parses the runtime version as semver (else the node
	// shows "berth://Unknown"); it is the version every binary prints.
	if _, err := utilversion.ParseSemantic(v.RuntimeVersion); err != nil {
		t.Errorf("runtime version %q is not a semantic version: %v", v.RuntimeVersion, err)
	}
	for _, bin := range []string{"berthd", "berth", "berthctl"} {
		out, err := exec.Command(testutil.Bin(t, bin), "--version").Output()
		if err != nil || !strings.Contains(string(out), v.RuntimeVersion) {
			t.Errorf("%s --version: %q %v, want %s", bin, out, err, v.RuntimeVersion)
		}
	}

	st, err := d.RT.Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	conds := map[string]*runtimeapi.RuntimeCondition{}
	for _, c := range st.Status.Conditions {
		conds[c.Type] = c
	}
	if c := conds[runtimeapi.RuntimeReady]; c == nil || !c.Status {
		t.Errorf("RuntimeReady: %+v", c)
	}
	// No CNI configuration: the network is not ready, and says why.
	if c := conds[runtimeapi.NetworkReady]; c == nil || c.Status || c.Reason == "" || !strings.Contains(c.Message, cni) {
		t.Errorf("NetworkReady without a CNI config: %+v", c)
	}
	if len(st.RuntimeHandlers) == 0 || st.RuntimeHandlers[0].Features == nil || !st.RuntimeHandlers[0].Features.RecursiveReadOnlyMounts {
		t.Errorf("runtime handlers: %+v", st.RuntimeHandlers)
	}
	if st.Features == nil || !st.Features.SupplementalGroupsPolicy {
		t.Errorf("features: %+v", st.Features)
	}
	var cfg map[string]any
	if err := json.Unmarshal([]byte(st.Info["config"]), &cfg); err != nil || cfg["Socket"] != d.Socket {
		t.Errorf("verbose config: %v %v", err, st.Info["config"])
	}

	rc, err := d.RT.RuntimeConfig(ctx, &runtimeapi.RuntimeConfigRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := runtimeapi.CgroupDriver_CGROUPFS
	if d.Driver == cgroups.Systemd {
		want = runtimeapi.CgroupDriver_SYSTEMD
	}
	if rc.Linux.GetCgroupDriver() != want {
		t.Errorf("cgroup driver %v, want %v", rc.Linux.GetCgroupDriver(), want)
	}

	// A usable configuration appears: the network becomes ready without a
	// restart (loopback only needs the loopback plugin).
	// A config naming a plugin that does not exist is not usable.
	networkReady := func() (*runtimeapi.RuntimeCondition, error) {
		st, err := d.RT.Status(ctx, &runtimeapi.StatusRequest{})
		if err != nil {
			return nil, err
		}
		for _, c := range st.Status.Conditions {
			if c.Type == runtimeapi.NetworkReady {
				return c, nil
			}
		}
		return nil, errors.New("no NetworkReady condition")
	}
	bad := `{"cniVersion": "1.0.0", "name": "missing", "plugins": [{"type": "no-such-plugin"}]}`
	if err := os.WriteFile(filepath.Join(cni, "05-missing.conflist"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "NetworkReady names the missing plugin", func() error {
		c, err := networkReady()
		if err != nil {
			return err
		}
		if c.Status || !strings.Contains(c.Message, "no-such-plugin") {
			return fmt.Errorf("%+v", c)
		}
		return nil
	})
	if err := os.Remove(filepath.Join(cni, "05-missing.conflist")); err != nil {
		t.Fatal(err)
	}
	conf := `{"cniVersion": "1.0.0", "name": "lo-only", "plugins": [{"type": "loopback"}]}`
	if err := os.WriteFile(filepath.Join(cni, "10-lo.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "NetworkReady after a config appeared", func() error {
		c, err := networkReady()
		if err != nil {
			return err
		}
		if !c.Status {
			return fmt.Errorf("%+v", c)
		}
		return nil
	})

	// The pod CIDR: kept across restarts, checked.
	_, err = d.RT.UpdateRuntimeConfig(ctx, &runtimeapi.UpdateRuntimeConfigRequest{RuntimeConfig: &runtimeapi.RuntimeConfig{
		NetworkConfig: &runtimeapi.NetworkConfig{PodCidr: "10.99.0.0/24"}}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.RT.UpdateRuntimeConfig(ctx, &runtimeapi.UpdateRuntimeConfigRequest{RuntimeConfig: &runtimeapi.RuntimeConfig{
		NetworkConfig: &runtimeapi.NetworkConfig{PodCidr: "10.99.0.0/33"}}})
	wantCode(t, err, codes.InvalidArgument, "UpdateRuntimeConfig with a bad CIDR")
	d.Restart(15)
	st, err = d.RT.Status(ctxT(t), &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.Info["podCIDR"] != "10.99.0.0/24" {
		t.Errorf("pod CIDR after restart: %q", st.Info["podCIDR"])
	}

	_, err = d.RT.CheckpointContainer(ctxT(t), &runtimeapi.CheckpointContainerRequest{ContainerId: "x", Location: "/tmp/x.tar"})
	wantCode(t, err, codes.NotFound, "CheckpointContainer of a missing container")
}

// TestSystemdNotify: with NOTIFY_SOCKET set (Type=notify), berthd sends
// READY=1, and only once recovery is done and its socket serves.
func TestSystemdNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	d := startDaemon(t, daemonOptions{env: []string{"NOTIFY_SOCKET=" + sock}})
	buf := make([]byte, 4096)
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := conn.Read(buf)
	if err != nil || !strings.Contains(string(buf[:n]), "READY=1") {
		t.Fatalf("notification from berthd: %q %v", buf[:n], err)
	}
	log := string(readFile(d.LogFile))
	recovered, serving, told := strings.Index(log, "recovered state"), strings.Index(log, "serving the CRI"), strings.Index(log, "told systemd berthd is ready")
	if recovered < 0 || serving < 0 || told < 0 || !(recovered < serving && serving < told) {
		t.Errorf("berthd's log does not show recovery, then serving, then the notification (%d, %d, %d):\n%s", recovered, serving, told, log)
	}
}

// TestSocketGroup: socket_group gives a group (a monitoring agent's) the
// CRI socket, mode 0660, still owned by root.
func TestSocketGroup(t *testing.T) {
	g, err := user.LookupGroup("nogroup")
	if err != nil {
		t.Skipf("no group nogroup on this host to give the socket to: %v", err)
	}
	d := startDaemon(t, daemonOptions{extra: `socket_group = "nogroup"`})
	fi, err := os.Stat(d.Socket)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fmt.Sprint(st.Gid) != g.Gid || st.Uid != 0 || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket %s: owner %d:%d mode %v, want 0:%s 0660", d.Socket, st.Uid, st.Gid, fi.Mode().Perm(), g.Gid)
	}

	// Someone outside the group gets one line saying why and what to do.
	cmd := exec.Command(testutil.Bin(t, "berthctl"), "-r", "unix://"+d.Socket, "version")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 12345}}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "permission denied") || !strings.Contains(string(out), "run berthctl as root") ||
		strings.Count(strings.TrimSpace(string(out)), "\n") > 0 {
		t.Errorf("berthctl as a user outside the socket's group: %v: %q", err, out)
	}
}

// TestFreshNodeDefaults: a node without containers-common has no
// registries.conf and no policy.json, and a node before its network
// plugin no CNI configuration: berthd starts, pulls with the defaults (a
// drop-in still adds its registry), runs pods on loopback, and says in
// one line each what it defaulted.
func TestFreshNodeDefaults(t *testing.T) {
	for _, f := range []string{image.DefaultRegistriesConf, image.DefaultPolicyFile} {
		if _, err := os.Stat(f); err == nil {
			t.Skipf("this host has %s (containers-common); the VM tier's image has neither", f)
		}
	}
	d := startDaemon(t, daemonOptions{imageDefaults: true})
	dropIns := filepath.Join(d.Dir, "registries.d")
	if err := os.MkdirAll(dropIns, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", suite.reg.Addr)
	if err := os.WriteFile(filepath.Join(dropIns, "50-test.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	podCfg := d.podConfig("fresh")
	c := d.run(t, d.runPod(t, podCfg), podCfg, containerConfig("fresh", "", "echo", "pulled and ran"))
	if st := d.waitExited(t, c, time.Minute); st.ExitCode != 0 {
		t.Fatalf("exit %d", st.ExitCode)
	}
	log := string(readFile(d.LogFile))
	for _, line := range []string{"no registries.conf: ", "no policy.json: ", "pods get loopback only until a CNI network is configured"} {
		if n := strings.Count(log, line); n != 1 {
			t.Errorf("berthd's log says %q %d times, want once", line, n)
		}
	}
}
