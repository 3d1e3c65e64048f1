package oci_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/testutil"
)

// podman drives Debian's podman with berth as its OCI runtime: a real
// engine using berth the way it uses runc. Storage, run state, cgroups
// and the network mode are the test's own.
type podman struct {
	t            *testing.T
	bin          string
	global       []string
	rootfs       string
	cgroupParent string
}

// podmanCgroup is the cgroup parent of podman's containers, as the
// suite's driver wants it: a path, or a slice (podman's systemd cgroup
// manager, which has berth use its own).
func podmanCgroup() (parent, manager string) {
	if testutil.CgroupDriver() == cgroups.Systemd {
		return testutil.SubSlice("podman"), "systemd"
	}
	return testutil.CgroupParent + "/podman", "cgroupfs"
}

func newPodman(t *testing.T) *podman {
	t.Helper()
	testutil.RequireRoot(t)
	berth := testutil.Bin(t, "berth")
	dir := t.TempDir()
	parent, manager := podmanCgroup()
	p := &podman{
		t:   t,
		bin: testutil.RequireCommand(t, "podman"),
		global: []string{
			"--runtime", berth,
			// Without it, podman leaves berth its default state root
			// (/run/berth/runtime), as it leaves runc /run/runc.
			"--runtime-flag", "root=" + filepath.Join(dir, "berth-state"),
			"--root", filepath.Join(dir, "storage"),
			"--runroot", filepath.Join(dir, "run"),
			"--tmpdir", filepath.Join(dir, "tmp"),
			"--storage-driver", "vfs",
			"--cgroup-manager", manager,
			"--events-backend", "file",
		},
		rootfs:       filepath.Join(dir, "rootfs"),
		cgroupParent: parent,
	}
	testutil.BusyboxRootfs(t, p.rootfs)
	t.Cleanup(func() {
		p.run("rm", "--force", "--all", "--time", "0")
		// conmon's cgroup stays after its containers; remove the tree.
		// systemd removes the scopes, and keeps a slice it started
		// until it is stopped.
		if manager == "cgroupfs" {
			if err := cgroups.RemoveTree(parent); err != nil {
				t.Errorf("remove podman's cgroups: %v", err)
			}
		} else if err := testutil.StopSlice(parent); err != nil {
			t.Errorf("stop podman's slice: %v", err)
		}
	})
	return p
}

func (p *podman) run(args ...string) testutil.Result {
	p.t.Helper()
	return testutil.Cmd{Path: p.bin, Args: append(append([]string{}, p.global...), args...)}.Run(p.t)
}

func (p *podman) ok(args ...string) testutil.Result {
	p.t.Helper()
	r := p.run(args...)
	if r.ExitCode != 0 {
		p.t.Fatalf("podman %s: %s", strings.Join(args, " "), r)
	}
	return r
}

// runArgs are the flags every container needs here: no network setup, our
// cgroup parent, and rlimits within this machine's hard limits (no
// CAP_SYS_RESOURCE to raise them).
func (p *podman) runArgs(extra ...string) []string {
	nofile := hardNofile(p.t)
	args := []string{"run", "--network", "none", "--cgroup-parent", p.cgroupParent,
		"--ulimit", "nofile=" + nofile + ":" + nofile, "--ulimit", "nproc=32768:32768"}
	return append(append(args, extra...), "--rootfs", p.rootfs)
}

func hardNofile(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/limits")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "Max open files") {
			if f := strings.Fields(line); len(f) >= 5 {
				return f[4]
			}
		}
	}
	return "1024"
}

func TestPodmanUsesBerth(t *testing.T) {
	testutil.Slow(t)
	p := newPodman(t)

	r := p.ok(append(p.runArgs("--rm"), "sh", "-c", "echo hello from podman; cat /proc/1/cmdline | tr '\\0' ' '")...)
	if !strings.Contains(r.Stdout, "hello from podman") {
		t.Fatalf("podman run: %s", r)
	}
	if r := p.run(append(p.runArgs("--rm"), "sh", "-c", "exit 5")...); r.ExitCode != 5 {
		t.Fatalf("podman run exit code: %s, want 5", r)
	}

	p.ok(append(p.runArgs("-d", "--name", "long"), "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")...)
	if r := p.ok("exec", "long", "sh", "-c", "echo exec $(id -u)"); r.Stdout != "exec 0\n" {
		t.Fatalf("podman exec: %s", r)
	}
	if r := p.ok("exec", "-t", "long", "tty"); !strings.HasPrefix(r.Stdout, "/dev/pts/") {
		t.Fatalf("podman exec -t: %s", r)
	}
	if r := p.ok("ps", "--format", "{{.Names}} {{.Status}}"); !strings.Contains(r.Stdout, "long Up") {
		t.Fatalf("podman ps: %s", r)
	}
	p.ok("stop", "--time", "10", "long")
	if r := p.ok("ps", "-a", "--format", "{{.Names}} {{.Status}}"); !strings.Contains(r.Stdout, "long Exited (0)") {
		t.Fatalf("podman ps after stop: %s", r)
	}
	p.ok("rm", "long")
	if r := p.ok("ps", "-a", "-q"); strings.TrimSpace(r.Stdout) != "" {
		t.Fatalf("containers left after rm: %q", r.Stdout)
	}
}
