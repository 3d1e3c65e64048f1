// Package kubelet_test runs the real kubelet, built from the
// k8s.io/kubernetes module (hack/kubernetes/build.sh), in standalone mode on
// a berthd started by the test: static pods, probes, restarts, logs, and
// both daemons' restarts and crashes.
package kubelet_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/conformance/internal/berthd"
	"github.com/berth-runtime/berth/internal/testutil"
)

// suite holds the registry with the test image.
var suite struct {
	reg     *testutil.Registry
	regConf string
	busybox string
	// base is the busybox layer, for images made on the way.
	base testutil.Layer
}

func TestMain(m *testing.M) {
	testutil.MainWith(m, func(s *testutil.Scratch) error {
		if os.Geteuid() != 0 {
			return nil // tests skip themselves
		}
		suite.reg = testutil.StartRegistry(s, testutil.RegistryOptions{})
		suite.regConf = testutil.RegistriesConf(s, "", suite.reg.Addr)
		suite.busybox, suite.base = berthd.PushBusybox(s, suite.reg, "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
		return nil
	})
}

// kubeletBin is the kubelet make test builds (hack/kubernetes/build.sh).
func kubeletBin(t *testing.T) string {
	t.Helper()
	p := os.Getenv("BERTH_KUBELET")
	if p == "" {
		p = filepath.Join(testutil.RepoRoot(), ".cache", "kubelet", "kubelet")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("kubelet not built (make test builds it: hack/kubernetes/build.sh): %v", err)
	}
	return p
}

// node is a kubelet in standalone mode on a berthd of its own.
type node struct {
	t         *testing.T
	bin       string
	d         *berthd.Daemon
	dir       string // the kubelet's root, config, manifests and logs
	manifests string
	podLogs   string
	// cgroupRoot is the kubelet's cgroupRoot (a path), berthdParent the
	// same in the driver's form (a path, or the slice).
	cgroupRoot   string
	berthdParent string
	config       string
	log          string
	port         int // read-only port, on 127.0.0.1
	securePort   int // the authenticated API (anonymous, AlwaysAllow)
	healthzPort  int
	cmd          *exec.Cmd
	exited       chan error
	iptables     berthd.Iptables // before the kubelet ran
	sysctlsSaved map[string]string
	// removeHostPaths removes the kubelet's fixed paths that were new.
	removeHostPaths func() error
}

// The kernel settings the kubelet makes as it starts (unless
// protectKernelDefaults): the test puts them back.
var kubeletSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// nodeOptions tune a node's berthd.
type nodeOptions struct {
	// registriesConf; default the suite's.
	registriesConf string
	// extra TOML lines for berthd's configuration.
	extra string
}

func startNode(t *testing.T) *node {
	t.Helper()
	return startNodeWith(t, nodeOptions{})
}

func startNodeWith(t *testing.T, o nodeOptions) *node {
	t.Helper()
	if o.registriesConf == "" {
		o.registriesConf = suite.regConf
	}
	n := &node{t: t, bin: kubeletBin(t), dir: t.TempDir()}
	n.manifests = filepath.Join(n.dir, "manifests")
	n.podLogs = filepath.Join(n.dir, "pod-logs")
	for _, d := range []string{n.manifests, n.podLogs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The kubelet makes its QoS cgroups under a root that must exist.
	systemd := testutil.CgroupDriver() == cgroups.Systemd
	if systemd {
		// The kubelet names its cgroupRoot by the slice's parts
		// (/a/b for a-b.slice), and joins its own with dashes.
		n.berthdParent = testutil.SubSlice(fmt.Sprintf("kubelet%d", os.Getpid()))
		n.cgroupRoot = "/" + strings.ReplaceAll(strings.TrimSuffix(n.berthdParent, ".slice"), "-", "/")
		if err := kubeletSlice(n.berthdParent); err != nil {
			t.Fatal(err)
		}
	} else {
		n.cgroupRoot = fmt.Sprintf("%s/kubelet-%d", testutil.CgroupParent, os.Getpid())
		n.berthdParent = n.cgroupRoot
		if err := cgroups.Create(n.cgroupRoot); err != nil {
			t.Fatal(err)
		}
	}
	// Should berthd not start, its clean-up (which removes this root
	// otherwise) is not there to run.
	t.Cleanup(func() {
		var err error
		if systemd {
			err = testutil.StopSlice(n.berthdParent)
		} else if cgroups.Exists(n.cgroupRoot) {
			err = cgroups.RemoveTree(n.cgroupRoot)
		}
		if err != nil {
			t.Errorf("clean-up: %v", err)
		}
	})
	bridge := fmt.Sprintf("bk%d", os.Getpid()%100000)
	confDir, _ := berthd.BridgeNetwork(t, bridge, fmt.Sprintf("10.221.%d.0/24", os.Getpid()%250))
	n.d = berthd.Start(t, berthd.Options{
		CNIConfDir: confDir, RegistriesConf: o.registriesConf, CgroupParent: n.berthdParent,
		Extra: fmt.Sprintf("cni_bin_dirs = [%q]\n%s", berthd.CNIBinDir(t), o.extra),
	})
	// The kubelet's chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...) and
	// the jumps into them go after the kubelet.
	n.iptables = berthd.SnapshotIptables()
	// Paths the kubelet uses whatever its root: device plugins' socket,
	// the symlinks to container logs.
	n.removeHostPaths = testutil.RemoveIfNew("/var/lib/kubelet", "/var/log/containers")
	n.sysctlsSaved = map[string]string{}
	for _, s := range kubeletSysctls {
		if data, err := os.ReadFile("/proc/sys/" + s); err == nil {
			n.sysctlsSaved[s] = strings.TrimSpace(string(data))
		}
	}
	// Registered after berthd's: runs before it, so that the kubelet is
	// gone before berthd's clean-up looks for leftovers.
	t.Cleanup(n.cleanup)
	n.port, n.securePort, n.healthzPort = freePort(t), freePort(t), freePort(t)
	n.config = filepath.Join(n.dir, "kubelet.yaml")
	// On cgroup v1 the kubelet must be told to run and which driver to
	// use; on v2 it is left to its defaults, as a node's would be: it
	// takes the driver from berthd (RuntimeConfig). Swap (NodeSwap) is
	// for v2 nodes only: Burstable pods get their share of it.
	nodeSettings := "failCgroupV1: false\ncgroupDriver: cgroupfs\n"
	if cgroups.HostMode() == cgroups.Unified {
		nodeSettings = "memorySwap:\n  swapBehavior: LimitedSwap\n"
	}
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
%sfailSwapOn: false
cgroupRoot: %q
cgroupsPerQOS: true
containerRuntimeEndpoint: unix://%s
staticPodPath: %q
podLogsDir: %q
fileCheckFrequency: 1s
syncFrequency: 3s
address: 127.0.0.1
readOnlyPort: %d
port: %d
healthzBindAddress: 127.0.0.1
healthzPort: %d
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
containerLogMaxSize: 20Ki
containerLogMaxFiles: 2
containerLogMonitorInterval: 3s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%%"
  imagefs.available: "1%%"
localStorageCapacityIsolation: false
serializeImagePulls: false
volumePluginDir: %q
`, nodeSettings, n.cgroupRoot, n.d.Socket, n.manifests, n.podLogs, n.port, n.securePort, n.healthzPort, filepath.Join(n.dir, "volume-plugins"))
	if err := os.WriteFile(n.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	n.log = filepath.Join(n.dir, "kubelet.log")
	n.start()
	return n
}

// kubeletSlice starts the slice a kubelet's cgroupRoot names, with every
// controller the kubelet checks its root for, as the root cgroup has
// them: the ones systemd manages through the slice's settings (cpu
// through a CPUWeight, as accounting alone needs no controller since
// Linux 4.15; cpuset through AllowedCPUs), hugetlb, which systemd
// leaves alone, enabled on the way down by hand.
func kubeletSlice(slice string) error {
	if err := testutil.StartSlice(slice); err != nil {
		return err
	}
	cpus, err := os.ReadFile("/sys/fs/cgroup/cpuset.cpus.effective")
	if err != nil {
		return err
	}
	out, err := exec.Command("systemctl", "set-property", "--runtime", slice, "CPUWeight=100", "MemoryAccounting=yes",
		"IOAccounting=yes", "TasksAccounting=yes", "AllowedCPUs="+strings.TrimSpace(string(cpus))).CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl set-property %s: %v: %s", slice, err, out)
	}
	// The root down to the slice, and the slice for the kubelet's own.
	dirs := []string{"/sys/fs/cgroup"}
	for _, part := range strings.Split(strings.TrimPrefix(testutil.SlicePath(slice), "/"), "/") {
		dirs = append(dirs, filepath.Join(dirs[len(dirs)-1], part))
	}
	for _, dir := range dirs {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+hugetlb"), 0); err != nil {
			return fmt.Errorf("enable hugetlb below %s: %w", dir, err)
		}
	}
	return nil
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs the kubelet and waits until it is healthy.
func (n *node) start() {
	t := n.t
	t.Helper()
	logf, err := os.OpenFile(n.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	n.cmd = exec.Command(n.bin, "--config", n.config, "--root-dir", filepath.Join(n.dir, "root"),
		"--cert-dir", filepath.Join(n.dir, "pki"), "--hostname-override", "berth-node", "--node-ip", "127.0.0.1", "--v", "2")
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.exited = make(chan error, 1)
	go func(c *exec.Cmd, ch chan error) { ch <- c.Wait() }(n.cmd, n.exited)
	deadline := time.Now().Add(60 * time.Second)
	for {
		r, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", n.healthzPort))
		if err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case werr := <-n.exited:
			n.cmd = nil
			t.Fatalf("kubelet exited: %v\n%s", werr, n.logTail(40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubelet not healthy: %v\n%s", err, n.logTail(40))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stop stops the kubelet; pods keep running.
func (n *node) stop() {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(30 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.exited
	}
	n.cmd = nil
}

func (n *node) logTail(lines int) string {
	data, _ := os.ReadFile(n.log)
	l := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// cleanup stops the kubelet, removes its pods through berthd, and undoes
// what the kubelet made on the host: its cgroups, mounts, iptables chains
// and kernel settings.
func (n *node) cleanup() {
	t := n.t
	n.stop()
	if t.Failed() {
		t.Logf("kubelet log (last lines):\n%s", n.logTail(60))
	}
	if n.d.Running() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if pods, err := n.d.RT.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			for _, p := range pods.Items {
				if _, err := n.d.RT.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
					t.Errorf("clean-up: remove pod %s: %v", p.Id, err)
				}
			}
		}
		cancel()
	}
	mounts := berthd.MountsUnder(n.dir)
	for i := len(mounts) - 1; i >= 0; i-- {
		_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
	}
	// The kubelet's QoS cgroups; berthd's clean-up checks the rest. Its
	// systemd slices stay until stopped: a process left in them is a
	// leak, the slices themselves are not.
	if testutil.CgroupDriver() == cgroups.Systemd {
		if pids, _ := cgroups.Pids(testutil.SlicePath(n.berthdParent)); len(pids) > 0 {
			t.Errorf("LEAK: processes left in the kubelet's cgroups: %v", pids)
		}
		if err := testutil.StopSlice(n.berthdParent); err != nil {
			t.Errorf("clean-up: %v", err)
		}
	} else if err := cgroups.RemoveTree(n.cgroupRoot + "/kubepods"); err != nil {
		t.Errorf("clean-up: kubelet cgroups: %v", err)
	}
	n.iptables.RemoveNew(t, "KUBE-")
	// Symlinks into this test's log directory, in a directory the node
	// may have had before.
	if links, err := os.ReadDir("/var/log/containers"); err == nil {
		for _, l := range links {
			p := filepath.Join("/var/log/containers", l.Name())
			if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, n.dir+"/") {
				_ = os.Remove(p)
			}
		}
	}
	if err := n.removeHostPaths(); err != nil {
		t.Errorf("clean-up: %v", err)
	}
	for s, v := range n.sysctlsSaved {
		if err := os.WriteFile("/proc/sys/"+s, []byte(v), 0o644); err != nil {
			t.Errorf("clean-up: restore %s=%s: %v", s, v, err)
		}
	}
}

// addPod writes a static pod manifest.
func (n *node) addPod(p *corev1.Pod) {
	n.t.Helper()
	p.APIVersion, p.Kind = "v1", "Pod"
	if p.Namespace == "" {
		p.Namespace = "default"
	}
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		n.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.manifests, p.Name+".json"), data, 0o644); err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) removePod(name string) {
	n.t.Helper()
	if err := os.Remove(filepath.Join(n.manifests, name+".json")); err != nil {
		n.t.Fatal(err)
	}
}

// pods is the kubelet's own view of its pods (static pods with the
// status its status manager keeps), from its read-only port.
func (n *node) pods() (map[string]corev1.Pod, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	r, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/pods", n.port))
	if err != nil {
		return nil, err
	}
	defer r.Body.Close()
	data, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, err
	}
	var list corev1.PodList
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("kubelet /pods: %w: %.200s", err, data)
	}
	out := map[string]corev1.Pod{}
	for _, p := range list.Items {
		// Static pods are named <manifest name>-<node name>.
		out[strings.TrimSuffix(p.Name, "-berth-node")] = p
	}
	return out, nil
}

// pod waits until the kubelet's view of a pod satisfies ok.
func (n *node) pod(name string, timeout time.Duration, what string, ok func(p corev1.Pod) error) corev1.Pod {
	n.t.Helper()
	var last corev1.Pod
	eventually(n.t, timeout, name+": "+what, func() error {
		pods, err := n.pods()
		if err != nil {
			return err
		}
		p, found := pods[name]
		if !found {
			return fmt.Errorf("the kubelet has no pod %s", name)
		}
		last = p
		if err := ok(p); err != nil {
			st, _ := json.Marshal(p.Status)
			return fmt.Errorf("%v; status %s", err, st)
		}
		return nil
	})
	return last
}

var eventually = berthd.Eventually

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func containerStatus(p corev1.Pod, name string) *corev1.ContainerStatus {
	for _, list := range [][]corev1.ContainerStatus{p.Status.ContainerStatuses, p.Status.InitContainerStatuses} {
		for i := range list {
			if list[i].Name == name {
				return &list[i]
			}
		}
	}
	return nil
}

// criID is the runtime's ID of a container the kubelet reports.
func criID(cs *corev1.ContainerStatus) string {
	_, id, _ := strings.Cut(cs.ContainerID, "://")
	return id
}

// execIn runs a command in a container through berthd.
func (n *node) execIn(id string, cmd ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := n.d.RT.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 20})
	if err != nil {
		return "", err
	}
	if r.ExitCode != 0 {
		return string(r.Stdout), fmt.Errorf("%v: exit %d: %s", cmd, r.ExitCode, r.Stderr)
	}
	return string(r.Stdout), nil
}

func sh(script string) []string { return []string{"sh", "-c", script} }

func ptr[T any](v T) *T { return &v }
