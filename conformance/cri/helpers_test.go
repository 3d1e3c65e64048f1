// Package cri_test drives the built berthd over its CRI socket, as a
// kubelet would, with images from a registry on 127.0.0.1.
package cri_test

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/conformance/internal/berthd"
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
		env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/bin", "FROM_IMAGE=yes"}
		suite.busybox, suite.base = berthd.PushBusybox(s, suite.reg, env...)
		base := suite.base
		euid, err := setuidProgram(s.TempDir())
		if err != nil {
			return err
		}
		syscalls, err := syscallsProgram(s.TempDir())
		if err != nil {
			return err
		}
		tools := testutil.BuildOCI(s, s.TempDir(), "latest", testutil.ImageSpec{
			Layers: []testutil.Layer{base, {Files: []testutil.File{
				{Path: "app", Type: tar.TypeDir, Mode: 0o755, UID: 1000, GID: 1000},
				{Path: "app/hello.txt", Content: "hello from the image\n"},
				// Set-user-ID root: no_new_privs must keep it from working.
				{Path: "usr/local/bin/euid", Content: euid, Mode: 0o4755},
				{Path: "usr/local/bin/syscalls", Content: syscalls, Mode: 0o755},
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

// setuidProgram builds a static program that prints its effective uid.
func setuidProgram(dir string) (string, error) {
	return cProgram(dir, "euid", `#include <stdio.h>
#include <unistd.h>
int main(void) { printf("%d\n", (int)geteuid()); return 0; }
`)
}

// syscallsProgram builds a static program that tries the system calls
// the default seccomp profile denies and prints how each ended. reboot
// gets a wrong magic number: allowed, it would fail with EINVAL, so the
// host is never at risk.
func syscallsProgram(dir string) (string, error) {
	return cProgram(dir, "syscalls", `#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>
static void try(const char *name, long rc) {
	printf("%s=%s\n", name, rc != -1 ? "ok" : errno == EPERM ? "EPERM" : strerror(errno));
}
int main(void) {
	try("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -4 /* user keyring */, 0));
	try("mount", mount("none", "/tmp", "tmpfs", 0, NULL));
	try("reboot", syscall(SYS_reboot, 0xfee1dead, 0, 0, NULL));
	try("unshare", unshare(CLONE_NEWUSER));
	return 0;
}
`)
}

// cProgram builds a static C program from src.
func cProgram(dir, name, src string) (string, error) {
	srcFile := filepath.Join(dir, name+".c")
	if err := os.WriteFile(srcFile, []byte(src), 0o644); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, name)
	if out, err := exec.Command("gcc", "-static", "-Os", "-o", bin, srcFile).CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the test program %s: %v: %s", name, err, out)
	}
	data, err := os.ReadFile(bin)
	return string(data), err
}

// daemon is a berthd started by a test, with the suite's helpers.
type daemon struct {
	*berthd.Daemon
	t testing.TB
}

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
	// rootSize puts berthd's root on a tmpfs of this size.
	rootSize string
	// env is added to berthd's environment.
	env []string
	// root is berthd's root, a directory the test mounted.
	root string
	// imageDefaults leaves registries.conf and policy.json to berthd's
	// defaults.
	imageDefaults bool
}

// startDaemon starts berthd; the test's clean-up removes every pod, stops
// the daemon and fails the test if anything was left behind.
func startDaemon(t testing.TB, opts ...daemonOptions) *daemon {
	t.Helper()
	var o daemonOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.registriesConf == "" {
		o.registriesConf = suite.regConf
	}
	return &daemon{t: t, Daemon: berthd.Start(t, berthd.Options{
		Extra: o.extra, CNIConfDir: o.cniConfDir, CNIConfTemplate: o.cniConfTemplate, RegistriesConf: o.registriesConf,
		RootSize: o.rootSize, Env: o.env, Root: o.root, ImageDefaults: o.imageDefaults,
	})}
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
		LogDirectory: filepath.Join(d.Dir, "logs", name),
		Labels:       map[string]string{"app": name, "suite": "cri"},
		Annotations:  map[string]string{"berth.test/annotation": "yes"},
		Linux:        &runtimeapi.LinuxPodSandboxConfig{},
	}
}

// runPod runs a pod and returns its id.
func (d *daemon) runPod(t testing.TB, cfg *runtimeapi.PodSandboxConfig) string {
	t.Helper()
	resp, err := d.RT.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		t.Fatalf("RunPodSandbox %s: %v", cfg.Metadata.GetName(), err)
	}
	return resp.PodSandboxId
}

// pull pulls an image.
func (d *daemon) pull(t testing.TB, ref string) string {
	t.Helper()
	resp, err := d.Img.PullImage(ctxT(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
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
	resp, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: cfg, SandboxConfig: podCfg})
	if err != nil {
		t.Fatalf("CreateContainer %s: %v", cfg.Metadata.Name, err)
	}
	return resp.ContainerId
}

// run creates and starts a container.
func (d *daemon) run(t testing.TB, podID string, podCfg *runtimeapi.PodSandboxConfig, cfg *runtimeapi.ContainerConfig) string {
	t.Helper()
	id := d.create(t, podID, podCfg, cfg)
	if _, err := d.RT.StartContainer(ctxT(t), &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer %s: %v", cfg.Metadata.Name, err)
	}
	return id
}

// status returns a container's status.
func (d *daemon) status(t testing.TB, id string) *runtimeapi.ContainerStatus {
	t.Helper()
	resp, err := d.RT.ContainerStatus(ctxT(t), &runtimeapi.ContainerStatusRequest{ContainerId: id})
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
	resp, err := d.RT.ExecSync(ctxT(t), &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 60})
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
var eventually = berthd.Eventually

var errNotYet = errors.New("not yet")

// adminClient talks to berthd's side channel.
func (d *daemon) adminClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Dial: func(_, _ string) (net.Conn, error) {
		return net.Dial("unix", adminapi.SocketFor(d.Socket))
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
