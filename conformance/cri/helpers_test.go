// Package cri_test drives the built berthd over its CRI socket, as a
// kubelet would, with images from a registry on 127.0.0.1.
package cri_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/cri/adminapi"
	"github.com/berth-runtime/berth/internal/testutil"
)

// suite holds what every test shares: a registry with the test images.
var suite struct {
	reg     *testutil.Registry
	regConf string
	// busybox has a shell as its command; tools has a user, an entrypoint
	// and a stop signal of its own.
	busybox, tools string
}

func TestMain(m *testing.M) {
	testutil.MainWith(m, func(s *testutil.Scratch) error {
		if os.Geteuid() != 0 {
			return nil // tests skip themselves
		}
		suite.reg = testutil.StartRegistry(s, testutil.RegistryOptions{})
		suite.regConf = testutil.RegistriesConf(s, "", suite.reg.Addr)
		rootfs := s.TempDir()
		testutil.BusyboxRootfs(s, rootfs)
		base := testutil.Layer{Dir: rootfs}
		env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/bin", "FROM_IMAGE=yes"}
		busybox := testutil.BuildOCI(s, s.TempDir(), "latest", testutil.ImageSpec{
			Layers: []testutil.Layer{base},
			Config: v1.ImageConfig{Cmd: []string{"sh"}, Env: env},
		})
		suite.reg.Push(s, busybox, "busybox:latest")
		suite.busybox = suite.reg.Addr + "/busybox:latest"
		tools := testutil.BuildOCI(s, s.TempDir(), "latest", testutil.ImageSpec{
			Layers: []testutil.Layer{base, {Files: []testutil.File{
				{Path: "app", Type: tar.TypeDir, Mode: 0o755, UID: 1000, GID: 1000},
				{Path: "app/hello.txt", Content: "hello from the image\n"},
			}}},
			Config: v1.ImageConfig{
				User: "user", Entrypoint: []string{"sh", "-c"}, Cmd: []string{"id; sleep 3600"},
				Env: env, WorkingDir: "/app", StopSignal: "SIGUSR1",
			},
		})
		suite.reg.Push(s, tools, "tools:v1")
		suite.tools = suite.reg.Addr + "/tools:v1"
		return nil
	})
}

// daemon is a berthd started by a test on its own socket, root and state.
type daemon struct {
	t            testing.TB
	dir          string // holds root/, the config and the daemon's log
	state        string // short: Unix socket paths are limited
	config       string
	socket       string
	cgroupParent string
	log          string
	cmd          *exec.Cmd
	exited       chan error
	conn         *grpc.ClientConn
	rt           runtimeapi.RuntimeServiceClient
	img          runtimeapi.ImageServiceClient
}

var daemonSeq atomic.Int64

// daemonOptions tune a test daemon's configuration.
type daemonOptions struct {
	// extra TOML lines.
	extra string
	// cniConfDir; default an empty directory (pods get loopback only).
	cniConfDir string
	// registriesConf; default the suite's.
	registriesConf string
	// cniConfTemplate; default none, whatever the host has.
	cniConfTemplate string
}

// startDaemon starts berthd; the test's clean-up removes every pod, stops
// the daemon and fails the test if anything was left behind.
func startDaemon(t testing.TB, opts ...daemonOptions) *daemon {
	t.Helper()
	testutil.RequireRoot(t)
	var o daemonOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	d := &daemon{t: t, dir: t.TempDir()}
	state, err := os.MkdirTemp("/run", "berth-test-")
	if err != nil {
		t.Fatal(err)
	}
	d.state = state
	d.socket = filepath.Join(state, "berth.sock")
	d.cgroupParent = fmt.Sprintf("%s/cri-%d-%d", testutil.CgroupParent, os.Getpid(), daemonSeq.Add(1))
	if o.cniConfDir == "" {
		o.cniConfDir = filepath.Join(d.dir, "cni")
		if err := os.MkdirAll(o.cniConfDir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if o.registriesConf == "" {
		o.registriesConf = suite.regConf
	}
	d.config = filepath.Join(d.dir, "berth.toml")
	cfg := fmt.Sprintf(`root = %q
state = %q
socket = %q
cgroup_driver = "cgroupfs"
cgroup_parent = %q
cni_conf_dir = %q
cni_conf_template = %q
registries_conf = %q
registries_conf_dir = %q
signature_policy = %q
log_level = "debug"
stream_address = "127.0.0.1:0"
pull_progress_interval = "1s"
%s
`, filepath.Join(d.dir, "root"), d.state, d.socket, d.cgroupParent, o.cniConfDir, o.cniConfTemplate, o.registriesConf,
		filepath.Join(d.dir, "registries.d"), filepath.Join(d.dir, "no-policy.json"), o.extra)
	if err := os.WriteFile(d.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	d.log = filepath.Join(d.dir, "berthd.log")
	t.Cleanup(d.cleanup)
	d.start()
	return d
}

// start runs berthd and waits until it answers.
func (d *daemon) start() {
	t := d.t
	t.Helper()
	logf, err := os.OpenFile(d.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	d.cmd = exec.Command(testutil.Bin(t, "berthd"), "--config", d.config)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func(c *exec.Cmd) { exited <- c.Wait() }(d.cmd)
	conn, err := grpc.NewClient("unix://"+d.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	d.conn, d.rt, d.img = conn, runtimeapi.NewRuntimeServiceClient(conn), runtimeapi.NewImageServiceClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := d.rt.Version(ctx, &runtimeapi.VersionRequest{})
		cancel()
		if err == nil {
			break
		}
		select {
		case werr := <-exited:
			t.Fatalf("berthd exited: %v\n%s", werr, d.logTail(40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("berthd does not answer: %v\n%s", err, d.logTail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.exited = exited
}

// stop sends sig and waits for berthd to exit.
func (d *daemon) stop(sig syscall.Signal) {
	d.t.Helper()
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Signal(sig)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
		d.t.Errorf("berthd did not exit on %v", sig)
	}
	d.conn.Close()
	d.cmd = nil
}

// restart stops berthd with sig (SIGTERM, or SIGKILL for a crash) and
// starts it again on the same root and state.
func (d *daemon) restart(sig syscall.Signal) {
	d.t.Helper()
	d.stop(sig)
	d.start()
}

// logTail is the end of berthd's log, without lines containing skip
// (if given).
func (d *daemon) logTail(n int, skip ...string) string {
	data, _ := os.ReadFile(d.log)
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

// cleanup removes every pod and container, stops berthd, and checks that
// nothing of the test is left on the host: mounts, shims, network
// namespaces, cgroups. What is left is removed and reported.
func (d *daemon) cleanup() {
	t := d.t
	if d.cmd != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if pods, err := d.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			for _, p := range pods.Items {
				if _, err := d.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
					t.Errorf("clean-up: remove pod %s: %v", p.Id, err)
				}
			}
		} else {
			t.Errorf("clean-up: list pods: %v", err)
		}
		cancel()
		d.stop(syscall.SIGTERM)
	}
	if t.Failed() {
		t.Logf("berthd log (last lines above debug level):\n%s", d.logTail(80, "level=debug"))
	}
	// Shims go once their pods are removed; give the last a moment.
	var procs []int
	for i := 0; i < 50; i++ {
		if procs = processesMentioning(d.state); len(procs) == 0 {
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
	for _, dir := range []string{d.state, d.dir} {
		if mounts := mountsUnder(dir); len(mounts) > 0 {
			t.Errorf("LEAK: mounts left under %s: %v", dir, mounts)
			for i := len(mounts) - 1; i >= 0; i-- {
				_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
			}
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(d.state, "netns")); len(entries) > 0 {
		t.Errorf("LEAK: network namespaces left: %d", len(entries))
	}
	if cgroups.Exists(d.cgroupParent) {
		if pids, _ := cgroups.Pids(d.cgroupParent); len(pids) > 0 {
			t.Errorf("LEAK: processes left in %s: %v", d.cgroupParent, pids)
		}
		if leftover := cgroupChildren(d.cgroupParent); len(leftover) > 0 {
			t.Errorf("LEAK: cgroups left under %s: %v", d.cgroupParent, leftover)
		}
		if err := cgroups.RemoveTree(d.cgroupParent); err != nil {
			t.Errorf("clean-up: %v", err)
		}
	}
	if err := os.RemoveAll(d.state); err != nil {
		t.Errorf("clean-up: %v", err)
	}
}

// processesMentioning lists the pids whose command line contains s.
func processesMentioning(s string) []int {
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

// mountsUnder lists mount points at or under dir, outermost first.
func mountsUnder(dir string) []string {
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

// cgroupChildren lists the cgroups under a parent in any hierarchy.
func cgroupChildren(parent string) []string {
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

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// podConfig is a minimal pod config with a unique name.
func (d *daemon) podConfig(name string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "berth-test", Uid: name + "-uid"},
		Hostname:     name,
		LogDirectory: filepath.Join(d.dir, "logs", name),
		Labels:       map[string]string{"app": name, "suite": "cri"},
		Annotations:  map[string]string{"berth.test/annotation": "yes"},
		Linux:        &runtimeapi.LinuxPodSandboxConfig{},
	}
}

// runPod runs a pod and returns its id.
func (d *daemon) runPod(t testing.TB, cfg *runtimeapi.PodSandboxConfig) string {
	t.Helper()
	resp, err := d.rt.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		t.Fatalf("RunPodSandbox %s: %v", cfg.Metadata.GetName(), err)
	}
	return resp.PodSandboxId
}

// pull pulls an image.
func (d *daemon) pull(t testing.TB, ref string) string {
	t.Helper()
	resp, err := d.img.PullImage(ctxT(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil {
		t.Fatalf("PullImage %s: %v", ref, err)
	}
	return resp.ImageRef
}

// containerConfig is a container running args in image (busybox by
// default), logging to <name>.log.
func containerConfig(name, image string, args ...string) *runtimeapi.ContainerConfig {
	if image == "" {
		image = suite.busybox
	}
	return &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image:    &runtimeapi.ImageSpec{Image: image},
		Args:     args,
		LogPath:  name + ".log",
		Labels:   map[string]string{"container": name},
		Linux:    &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{}},
	}
}

// create creates a container; the image is pulled first.
func (d *daemon) create(t testing.TB, podID string, podCfg *runtimeapi.PodSandboxConfig, cfg *runtimeapi.ContainerConfig) string {
	t.Helper()
	d.pull(t, cfg.Image.Image)
	resp, err := d.rt.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: cfg, SandboxConfig: podCfg})
	if err != nil {
		t.Fatalf("CreateContainer %s: %v", cfg.Metadata.Name, err)
	}
	return resp.ContainerId
}

// run creates and starts a container.
func (d *daemon) run(t testing.TB, podID string, podCfg *runtimeapi.PodSandboxConfig, cfg *runtimeapi.ContainerConfig) string {
	t.Helper()
	id := d.create(t, podID, podCfg, cfg)
	if _, err := d.rt.StartContainer(ctxT(t), &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer %s: %v", cfg.Metadata.Name, err)
	}
	return id
}

// status returns a container's status.
func (d *daemon) status(t testing.TB, id string) *runtimeapi.ContainerStatus {
	t.Helper()
	resp, err := d.rt.ContainerStatus(ctxT(t), &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("ContainerStatus %s: %v", id, err)
	}
	return resp.Status
}

// waitExited waits until a container has exited and returns its status.
func (d *daemon) waitExited(t testing.TB, id string, timeout time.Duration) *runtimeapi.ContainerStatus {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := d.status(t, id)
		if st.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s still %s after %s", id, st.State, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// execSync runs a command and returns its stdout, stderr and exit code.
func (d *daemon) execSync(t testing.TB, id string, cmd ...string) (string, string, int32) {
	t.Helper()
	resp, err := d.rt.ExecSync(ctxT(t), &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 60})
	if err != nil {
		t.Fatalf("ExecSync %v in %s: %v", cmd, id, err)
	}
	return string(resp.Stdout), string(resp.Stderr), resp.ExitCode
}

// mustExec runs a command that must succeed and returns its stdout.
func (d *daemon) mustExec(t testing.TB, id string, cmd ...string) string {
	t.Helper()
	out, errOut, code := d.execSync(t, id, cmd...)
	if code != 0 {
		t.Fatalf("%v exited %d: %s%s", cmd, code, out, errOut)
	}
	return out
}

// wantCode checks that err is a gRPC status with the code.
func wantCode(t testing.TB, err error, code codes.Code, what string) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("%s: got %v (%v), want %v", what, status.Code(err), err, code)
	}
}

// eventually retries fn until it returns nil or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var errNotYet = errors.New("not yet")

// adminClient talks to berthd's side channel.
func (d *daemon) adminClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Dial: func(_, _ string) (net.Conn, error) {
		return net.Dial("unix", adminapi.SocketFor(d.socket))
	}}}
}

// pullsInFlight lists the pulls berthd is running, from its side channel.
func (d *daemon) pullsInFlight() ([]adminapi.Pull, error) {
	resp, err := d.adminClient().Get("http://berthd" + adminapi.PullsPath)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var pulls []adminapi.Pull
	return pulls, json.NewDecoder(resp.Body).Decode(&pulls)
}
