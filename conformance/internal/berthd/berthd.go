// Package berthd starts the built berthd for end-to-end tests on a
// socket, root, state and cgroup parent of the test's own, and checks
// afterwards that nothing of it is left on the host.
package berthd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/testutil"
)

// Daemon is a berthd started by a test.
type Daemon struct {
	T          testing.TB
	Dir        string // holds root/, the config and the daemon's log
	State      string // short: Unix socket paths are limited
	ConfigFile string
	Socket     string
	// Driver is the cgroup driver (testutil.CgroupDriver), CgroupParent
	// the configuration's parent in the driver's form (a path, or a
	// slice), CgroupPath that parent's cgroup path.
	Driver       cgroups.Driver
	CgroupParent string
	CgroupPath   string
	LogFile      string
	RT           runtimeapi.RuntimeServiceClient
	Img          runtimeapi.ImageServiceClient

	cmd    *exec.Cmd
	exited chan error
	conn   *grpc.ClientConn
	// rootMounted: the test's tmpfs is on the root, to unmount at the end.
	rootMounted bool
	env         []string
}

var seq atomic.Int64

// Options tune a test daemon's configuration.
type Options struct {
	// Extra TOML lines.
	Extra string
	// CNIConfDir; default an empty directory (pods get loopback only).
	CNIConfDir string
	// CNIConfTemplate; default none, whatever the host has.
	CNIConfTemplate string
	// RegistriesConf is the registries.conf to pull with.
	RegistriesConf string
	// CgroupParent; default one of its own under testutil.CgroupParent.
	CgroupParent string
	// RootSize, if set, puts berthd's root (its image store and metadata)
	// on a tmpfs of that size ("16m"), to fill it.
	RootSize string
	// Env is added to berthd's environment (NOTIFY_SOCKET, say).
	Env []string
	// Root, if set, is berthd's root: a directory the test mounted (a
	// file system of its own, say); default Dir/root.
	Root string
	// ImageDefaults leaves registries_conf and signature_policy to
	// berthd's defaults (the host's files, or none), as a node's
	// configuration would; RegistriesConf is then ignored, and the
	// drop-in directory Dir/registries.d stays the test's.
	ImageDefaults bool
}

// Start starts berthd; the test's clean-up removes every pod, stops the
// daemon and fails the test if anything was left behind.
func Start(t testing.TB, o Options) *Daemon {
	t.Helper()
	testutil.RequireRoot(t)
	d := &Daemon{T: t, Dir: t.TempDir(), env: o.Env}
	// As /var/lib is: the root of a container in a user namespace must
	// find its way to its root filesystem under berthd's root.
	for _, dir := range []string{filepath.Dir(d.Dir), d.Dir} {
		if err := os.Chmod(dir, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	state, err := os.MkdirTemp("/run", "berth-test-")
	if err != nil {
		t.Fatal(err)
	}
	d.State = state
	d.Socket = filepath.Join(state, "berth.sock")
	d.Driver = testutil.CgroupDriver()
	d.CgroupParent, d.CgroupPath = o.CgroupParent, o.CgroupParent
	switch {
	case d.Driver == cgroups.Systemd:
		if d.CgroupParent == "" {
			d.CgroupParent = testutil.SubSlice(fmt.Sprintf("cri%dx%d", os.Getpid(), seq.Add(1)))
		}
		d.CgroupPath = testutil.SlicePath(d.CgroupParent)
	case d.CgroupParent == "":
		d.CgroupParent = fmt.Sprintf("%s/cri-%d-%d", testutil.CgroupParent, os.Getpid(), seq.Add(1))
		d.CgroupPath = d.CgroupParent
	}
	if o.CNIConfDir == "" {
		o.CNIConfDir = filepath.Join(d.Dir, "cni")
		if err := os.MkdirAll(o.CNIConfDir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// An accept-anything policy, as a node without one gets (a policy
	// file named in the configuration must exist).
	policy := filepath.Join(d.Dir, "policy.json")
	if err := os.WriteFile(policy, []byte(`{"default":[{"type":"insecureAcceptAnything"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	d.ConfigFile = filepath.Join(d.Dir, "berth.toml")
	root := o.Root
	if root == "" {
		root = filepath.Join(d.Dir, "root")
	}
	cfg := fmt.Sprintf(`root = %q
state = %q
socket = %q
cgroup_driver = %q
cgroup_parent = %q
cni_conf_dir = %q
cni_conf_template = %q
%sregistries_conf_dir = %q
%slog_level = "debug"
stream_address = "127.0.0.1:0"
pull_progress_interval = "1s"
%s
`, root, d.State, d.Socket, d.Driver, d.CgroupParent, o.CNIConfDir, o.CNIConfTemplate, imageKey("registries_conf", o.RegistriesConf, o.ImageDefaults),
		filepath.Join(d.Dir, "registries.d"), imageKey("signature_policy", policy, o.ImageDefaults), o.Extra)
	if err := os.WriteFile(d.ConfigFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	d.LogFile = filepath.Join(d.Dir, "berthd.log")
	if o.RootSize != "" {
		root := filepath.Join(d.Dir, "root")
		if err := os.MkdirAll(root, 0o711); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mount("tmpfs", root, "tmpfs", 0, "size="+o.RootSize); err != nil {
			t.Fatalf("a tmpfs for berthd's root: %v", err)
		}
		d.rootMounted = true
	}
	t.Cleanup(d.cleanup)
	d.Start()
	return d
}

// imageKey is a TOML line setting key to path, or none with defaults.
func imageKey(key, path string, defaults bool) string {
	if defaults {
		return ""
	}
	return fmt.Sprintf("%s = %q\n", key, path)
}

// Start runs berthd and waits until it answers.
func (d *Daemon) Start() {
	t := d.T
	t.Helper()
	logf, err := os.OpenFile(d.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	d.cmd = exec.Command(testutil.Bin(t, "berthd"), "--config", d.ConfigFile)
	d.cmd.Env = append(os.Environ(), d.env...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func(c *exec.Cmd) { exited <- c.Wait() }(d.cmd)
	d.exited = exited
	conn, err := grpc.NewClient("unix://"+d.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	d.conn, d.RT, d.Img = conn, runtimeapi.NewRuntimeServiceClient(conn), runtimeapi.NewImageServiceClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := d.RT.Version(ctx, &runtimeapi.VersionRequest{})
		cancel()
		if err == nil {
			break
		}
		select {
		case werr := <-exited:
			d.conn.Close()
			d.cmd = nil
			t.Fatalf("berthd exited: %v\n%s", werr, d.LogTail(40))
		default:
		}
		if time.Now().After(deadline) {
			d.Stop(syscall.SIGKILL)
			t.Fatalf("berthd does not answer: %v\n%s", err, d.LogTail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Pid is the running berthd's process ID (0 when stopped).
func (d *Daemon) Pid() int {
	if d.cmd == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// Running reports whether the test's berthd process runs.
func (d *Daemon) Running() bool { return d.cmd != nil }

// Stop sends sig and waits for berthd to exit.
func (d *Daemon) Stop(sig syscall.Signal) {
	d.T.Helper()
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Signal(sig)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
		d.T.Errorf("berthd did not exit on %v", sig)
	}
	d.conn.Close()
	d.cmd = nil
}

// Restart stops berthd with sig (SIGTERM, or SIGKILL for a crash) and
// starts it again on the same root and state.
func (d *Daemon) Restart(sig syscall.Signal) {
	d.T.Helper()
	d.Stop(sig)
	d.Start()
}

// LogTail is the end of berthd's log, without lines containing skip
// (if given).
func (d *Daemon) LogTail(n int, skip ...string) string {
	data, _ := os.ReadFile(d.LogFile)
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if len(skip) == 0 || !strings.Contains(l, skip[0]) {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// LogLines is every line of berthd's log, debug included, that contains
// s (an object's id, say).
func (d *Daemon) LogLines(s string) string {
	data, _ := os.ReadFile(d.LogFile)
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, s) {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// cleanup removes every pod and container, stops berthd, and checks that
// nothing of the test is left on the host: mounts, shims, network
// namespaces, cgroups. What is left is removed and reported.
func (d *Daemon) cleanup() {
	t := d.T
	if d.cmd != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if pods, err := d.RT.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			for _, p := range pods.Items {
				if _, err := d.RT.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
					t.Errorf("clean-up: remove pod %s: %v", p.Id, err)
				}
			}
		} else {
			t.Errorf("clean-up: list pods: %v", err)
		}
		cancel()
		d.Stop(syscall.SIGTERM)
	}
	d.stopLazyHelper()
	if d.rootMounted {
		if err := syscall.Unmount(filepath.Join(d.Dir, "root"), 0); err != nil {
			t.Errorf("clean-up: unmount the root's tmpfs: %v", err)
		}
	}
	if t.Failed() {
		t.Logf("berthd log (last lines above debug level):\n%s", d.LogTail(80, "level=debug"))
	}
	// Shims go once their pods are removed; give the last a moment.
	var procs []int
	for i := 0; i < 50; i++ {
		if procs = ProcessesMentioning(d.State); len(procs) == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(procs) > 0 {
		t.Errorf("LEAK: processes of the test daemon still run: %v", procs)
		for _, p := range procs {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	}
	for _, dir := range []string{d.State, d.Dir} {
		if mounts := MountsUnder(dir); len(mounts) > 0 {
			t.Errorf("LEAK: mounts left under %s: %v", dir, mounts)
			for i := len(mounts) - 1; i >= 0; i-- {
				_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
			}
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(d.State, "netns")); len(entries) > 0 {
		t.Errorf("LEAK: network namespaces left: %d", len(entries))
	}
	if d.Driver == cgroups.Systemd {
		// systemd removes a scope once its processes are gone and a
		// slice once nothing is in it: give it a moment.
		for i := 0; i < 50 && len(CgroupChildren(d.CgroupPath)) > 0; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if cgroups.Exists(d.CgroupPath) {
		if pids, _ := cgroups.Pids(d.CgroupPath); len(pids) > 0 {
			t.Errorf("LEAK: processes left in %s: %v", d.CgroupPath, pids)
		}
		if leftover := CgroupChildren(d.CgroupPath); len(leftover) > 0 {
			t.Errorf("LEAK: cgroups left under %s: %v", d.CgroupPath, leftover)
		}
		if d.Driver != cgroups.Systemd {
			if err := cgroups.RemoveTree(d.CgroupPath); err != nil {
				t.Errorf("clean-up: %v", err)
			}
		}
	}
	// The daemon's parent slice: started as the parent of its pods',
	// systemd keeps it, as a node keeps berthd's.
	if d.Driver == cgroups.Systemd {
		if err := testutil.StopSlice(d.CgroupParent); err != nil {
			t.Errorf("clean-up: %v", err)
		}
	}
	if err := os.RemoveAll(d.State); err != nil {
		t.Errorf("clean-up: %v", err)
	}
}

// LazyHelperPid is the pid of the berth-lazy berthd started, from its
// pid file; 0 if none runs.
func (d *Daemon) LazyHelperPid() int {
	data, err := os.ReadFile(filepath.Join(d.State, "lazy", "berth-lazy.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || !testutil.Alive(pid) {
		return 0
	}
	// A stale file's pid may be another program's by now.
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || !strings.HasPrefix(filepath.Base(exe), "berth-lazy") {
		return 0
	}
	return pid
}

// stopLazyHelper stops the berth-lazy berthd started, as a node's
// shutdown would: with its pods gone, it unmounts its layers and exits.
func (d *Daemon) stopLazyHelper() {
	pid := d.LazyHelperPid()
	if pid == 0 {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 200 && testutil.Alive(pid); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if testutil.Alive(pid) {
		d.T.Errorf("berth-lazy (pid %d) did not exit on SIGTERM with no pod left", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// ContainerPid is a running container's pid on the host, from berthd's
// verbose status.
func (d *Daemon) ContainerPid(t testing.TB, id string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := d.RT.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var info struct{ Pid int }
	if err := json.Unmarshal([]byte(resp.Info["info"]), &info); err != nil || info.Pid == 0 {
		t.Fatalf("verbose status of %s: %v %q", id, err, resp.Info["info"])
	}
	return info.Pid
}

// PodCgroupPath is the cgroup path of the pod cgroup berthd makes for a
// pod that comes without a parent of its own.
func (d *Daemon) PodCgroupPath(podID string) string {
	if d.Driver == cgroups.Systemd {
		return testutil.SlicePath(strings.TrimSuffix(d.CgroupParent, ".slice") + "-pod" + podID[:16] + ".slice")
	}
	return d.CgroupParent + "/pod" + podID[:16]
}

// KubeletPodParent is a pod cgroup parent as the kubelet sends it, below
// the daemon's parent, and its cgroup path. For cgroupfs both are the
// path; for systemd the kubelet sends the slice's expanded path too
// (/a.slice/a-kubepods.slice/.../a-kubepods-burstable-pod<uid>.slice, the
// uid's dashes turned to underscores).
func (d *Daemon) KubeletPodParent(qos, uid string) (parent, path string) {
	if d.Driver == cgroups.Systemd {
		slice := strings.TrimSuffix(d.CgroupParent, ".slice") + "-kubepods-" + qos + "-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice"
		return testutil.SlicePath(slice), testutil.SlicePath(slice)
	}
	parent = d.CgroupParent + "/kubepods/" + qos + "/pod" + uid
	return parent, parent
}

// RemoveKubeletCgroups removes what KubeletPodParent's parents made, as
// the kubelet removes its cgroups: the tree under kubepods (cgroupfs),
// or the kubepods slice and the slices in it, which systemd keeps until
// they are stopped.
func (d *Daemon) RemoveKubeletCgroups() error {
	if d.Driver == cgroups.Systemd {
		return testutil.StopSlice(strings.TrimSuffix(d.CgroupParent, ".slice") + "-kubepods.slice")
	}
	return cgroups.RemoveTree(d.CgroupParent + "/kubepods")
}

// Eventually retries fn until it returns nil, and fails the test when
// the timeout passes first.
func Eventually(t testing.TB, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ProcessesMentioning lists the pids whose command line contains s.
func ProcessesMentioning(s string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(data, []byte(s)) {
			out = append(out, pid)
		}
	}
	return out
}

// MountsUnder lists mount points at or under dir, outermost first.
func MountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			out = append(out, fields[4])
		}
	}
	return out
}

// CgroupChildren lists the cgroups under a parent in any hierarchy.
func CgroupChildren(parent string) []string {
	var out []string
	roots, _ := filepath.Glob("/sys/fs/cgroup/*" + parent)
	roots = append(roots, "/sys/fs/cgroup"+parent)
	for _, r := range roots {
		_ = filepath.WalkDir(r, func(p string, de os.DirEntry, err error) error {
			if err == nil && de.IsDir() && p != r {
				out = append(out, p)
			}
			return nil
		})
	}
	return out
}
