// Package cluster_test runs a two-node Kubernetes cluster on berth, built
// from upstream sources by `make kubernetes` and brought up by
// hack/cluster/cluster.sh exactly as `make cluster NODES=2` does, and
// checks what users do with a cluster from both sides: what Kubernetes
// reports (through kubectl and the API server) and what each node's
// berthd reports.
package cluster_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-runtime/berth/internal/testutil"
)

const (
	nodes    = 2
	registry = "10.210.0.1:5000"
)

// suite is the cluster the tests share: bringing one up takes a minute.
var suite struct {
	dir     string // CLUSTER_DIR
	cgroup  string // the cgroup the cluster runs below (CLUSTER_CGROUP)
	k8sBin  string // kubectl, kubeadm, ...
	env     []string
	busybox string // busybox image, tag 1
	// busybox2 is the same image with another config: a new version to
	// roll out.
	busybox2 string
}

func TestMain(m *testing.M) {
	testutil.MainWith(m, func(s *testutil.Scratch) error {
		if os.Geteuid() != 0 {
			return nil // tests skip themselves
		}
		suite.k8sBin = os.Getenv("BERTH_K8S_DIR")
		if suite.k8sBin == "" {
			suite.k8sBin = filepath.Join(testutil.RepoRoot(), ".cache", "kubernetes")
		}
		for _, b := range []string{"kubeadm", "kubectl", "kubelet", "kube-apiserver", "etcd", "coredns"} {
			if _, err := os.Stat(filepath.Join(suite.k8sBin, b)); err != nil {
				return fmt.Errorf("%s not built (make test builds it: make kubernetes): %v", b, err)
			}
		}
		mkimage := os.Getenv("BERTH_MKIMAGE")
		if mkimage == "" {
			mkimage = filepath.Join(testutil.RepoRoot(), ".cache", "mkimage")
		}
		// BERTH_CLUSTER_DIR: use the cluster `make cluster NODES=2` left
		// running there, as it is, rather than one of the suite's own.
		reuse := os.Getenv("BERTH_CLUSTER_DIR")
		suite.dir = reuse
		if reuse == "" {
			suite.dir = s.TempDir()
			// As /var/lib is: the root of a container in a user namespace
			// must find its way to its root filesystem under berthd's root.
			for _, d := range []string{filepath.Dir(suite.dir), suite.dir} {
				if err := os.Chmod(d, 0o711); err != nil {
					return err
				}
			}
		}
		suite.env = append(os.Environ(),
			"BERTH_BIN_DIR="+testutil.BinDir(),
			"CNI_BIN_DIR="+cniBinDir(),
			"K8S_BIN_DIR="+suite.k8sBin,
			"CLUSTER_DIR="+suite.dir,
			"MKIMAGE="+mkimage,
		)
		suite.cgroup = "berth-cluster"
		if reuse == "" {
			suite.cgroup = strings.TrimPrefix(testutil.CgroupParent, "/") + "/cluster"
			suite.env = append(suite.env, "CLUSTER_CGROUP="+suite.cgroup)
			if err := up(s); err != nil {
				return err
			}
		}
		pushTestImages(s)
		return nil
	})
}

// up brings the suite's cluster up; the clean-up takes it down, even when
// up fails half way.
func up(s *testutil.Scratch) error {
	before := hostState()
	s.Cleanup(func() {
		if out, err := clusterScript("down"); err != nil {
			s.Errorf("cluster down: %v\n%s", err, out)
		}
		if after := hostState(); after != before {
			s.Errorf("the host is not as before the cluster:\n--- before\n%s\n--- after\n%s", before, after)
		}
	})
	start := time.Now()
	if out, err := clusterScript("up", fmt.Sprint(nodes)); err != nil {
		return fmt.Errorf("cluster up: %v\n%s%s", err, out, clusterLogs())
	}
	fmt.Fprintf(os.Stderr, "cluster: %d nodes up in %s\n", nodes, time.Since(start).Round(time.Second))
	return nil
}

// pushTestImages pushes busybox as two versions of one image.
func pushTestImages(s *testutil.Scratch) {
	reg := &testutil.Registry{Addr: registry}
	rootfs := s.TempDir()
	testutil.BusyboxRootfs(s, rootfs)
	env := []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	for tag, cfg := range map[string]v1.ImageConfig{
		"1": {Cmd: []string{"sh"}, Env: env},
		"2": {Cmd: []string{"sh"}, Env: append(env, "BUSYBOX_VERSION=2")},
	} {
		layout := testutil.BuildOCI(s, s.TempDir(), "latest", testutil.ImageSpec{
			Layers: []testutil.Layer{{Dir: rootfs}}, Config: cfg,
		})
		reg.Push(s, layout, "e2e/busybox:"+tag)
	}
	suite.busybox, suite.busybox2 = registry+"/e2e/busybox:1", registry+"/e2e/busybox:2"
}

func cniBinDir() string {
	if d := os.Getenv("BERTH_CNI_BIN"); d != "" {
		return d
	}
	return filepath.Join(testutil.RepoRoot(), ".cache", "cni-bin")
}

// clusterScript runs hack/cluster/cluster.sh with the suite's settings.
func clusterScript(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(testutil.RepoRoot(), "hack", "cluster", "cluster.sh"), args...)
	cmd.Env = suite.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// clusterLogs is the tail of every daemon's log, for a failure.
func clusterLogs() string {
	var b strings.Builder
	logs, _ := filepath.Glob(filepath.Join(suite.dir, "node*", "*.log"))
	for _, l := range logs {
		data, _ := os.ReadFile(l)
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		fmt.Fprintf(&b, "\n--- %s\n%s\n", l, strings.Join(lines, "\n"))
	}
	return b.String()
}

func requireCluster(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	if suite.busybox == "" {
		t.Fatal("the cluster did not come up")
	}
}

// kubectl runs kubectl against the cluster and returns its stdout.
func kubectl(t testing.TB, args ...string) string {
	t.Helper()
	out, stderr, err := kubectlErr(args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr)
	}
	return out
}

// kubectlErr is kubectl returning the failure.
func kubectlErr(args ...string) (stdout, stderr string, err error) {
	return kubectlIn(nil, args...)
}

func kubectlIn(stdin []byte, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(suite.k8sBin, "kubectl"), append([]string{"--kubeconfig", filepath.Join(suite.dir, "kubeconfig")}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// apply creates or updates objects from a manifest.
func apply(t testing.TB, manifest string) {
	t.Helper()
	if out, stderr, err := kubectlIn([]byte(manifest), "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s%s\n%s", err, out, stderr, manifest)
	}
}

// getJSON decodes `kubectl get ... -o json` into v.
func getJSON(t testing.TB, v any, args ...string) {
	t.Helper()
	out := kubectl(t, append(append([]string{"get"}, args...), "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("decode kubectl get %s: %v", strings.Join(args, " "), err)
	}
}

// eventually polls cond until it returns "" or the timeout passes, and
// fails with its last answer.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		if last = cond(); last == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s: %s", what, timeout, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// namespace makes a namespace that the test's clean-up deletes.
func namespace(t *testing.T) string {
	t.Helper()
	ns := strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	ns = strings.ReplaceAll(ns, "_", "-")
	if len(ns) > 50 {
		ns = ns[:50]
	}
	kubectl(t, "create", "namespace", ns)
	t.Cleanup(func() {
		if _, stderr, err := kubectlErr("delete", "namespace", ns, "--wait=true", "--timeout=120s"); err != nil {
			t.Errorf("delete namespace %s: %v %s", ns, err, stderr)
		}
	})
	return ns
}

// berthctl runs berthctl against node n's berthd, inside the node.
func berthctl(t testing.TB, n int, args ...string) string {
	t.Helper()
	full := append([]string{
		"--net=/run/netns/berthc-node" + fmt.Sprint(n),
		"--mount=/run/berth-cluster/node" + fmt.Sprint(n) + ".mnt", "--",
		testutil.Bin(t, "berthctl"), "--runtime-endpoint", fmt.Sprintf("unix:///run/berth-cluster/node%d/berth.sock", n),
	}, args...)
	out, err := exec.Command("nsenter", full...).CombinedOutput()
	if err != nil {
		t.Fatalf("berthctl %s on node %d: %v\n%s", strings.Join(args, " "), n, err, out)
	}
	return string(out)
}

// hostState is what a cluster could leave behind on the host: network
// namespaces, links, mounts, iptables rules, the paths kubeadm and the
// kubelet use whatever they are told, and the sysctls the kubelet sets.
// Cgroups are the suite's leak check's.
func hostState() string {
	var b strings.Builder
	run := func(name string, args ...string) {
		out, err := exec.Command(name, args...).CombinedOutput()
		fmt.Fprintf(&b, "$ %s %s (%v)\n%s", name, strings.Join(args, " "), err, out)
	}
	run("ip", "netns", "list")
	run("ip", "-o", "link", "show")
	run("iptables", "-S")
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mounts), "\n") {
		if strings.Contains(l, "berth-cluster") || (suite.dir != "" && strings.Contains(l, suite.dir)) {
			fmt.Fprintf(&b, "mount: %s\n", l)
		}
	}
	for _, p := range []string{"/etc/kubernetes", "/var/lib/kubelet", "/var/log/pods", "/var/log/containers",
		"/lib/modules", "/usr/libexec/kubernetes", "/run/xtables.lock", "/run/berth-cluster"} {
		_, err := os.Lstat(p)
		fmt.Fprintf(&b, "%s exists: %v\n", p, err == nil)
	}
	for _, sysctl := range []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
		"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"} {
		v, _ := os.ReadFile("/proc/sys/" + sysctl)
		fmt.Fprintf(&b, "%s = %s", sysctl, v)
	}
	return b.String()
}

// signalNodeDaemon signals the daemon of node n whose pid file
// hack/cluster keeps ("pid starttime"): runtime.pid, kubelet.pid.
func signalNodeDaemon(t testing.TB, n int, pidfile string, sig syscall.Signal) {
	t.Helper()
	path := fmt.Sprintf("/run/berth-cluster/node%d/%s", n, pidfile)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		t.Fatalf("%s is empty", path)
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatalf("signal %s (%d): %v", path, pid, err)
	}
}
