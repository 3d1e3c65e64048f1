package oci_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-runtime/berth/internal/testutil"
)

func TestRunPassesStdioAndExitCode(t *testing.T) {
	b := newBerth(t)
	bundle := testutil.NewBundle(t, "run-stdio", "sh", "-c", "read line; echo out:$line; echo err >&2; exit 3")
	r := b.runIn(bundle.Dir, []byte("hello\n"), "run", "run-stdio")
	if r.ExitCode != 3 || r.Stdout != "out:hello\n" || r.Stderr != "err\n" {
		t.Fatalf("got %s, want exit 3, stdout out:hello, stderr err", r)
	}
	assertGone(t, b, "run-stdio")
}

func TestRunBundleFlag(t *testing.T) {
	b := newBerth(t)
	bundle := testutil.NewBundle(t, "run-bundle", "echo", "ok")
	r := b.run("run", "--bundle", bundle.Dir, "run-bundle")
	if r.ExitCode != 0 || r.Stdout != "ok\n" {
		t.Fatalf("got %s", r)
	}
	r = b.run("run", "-b", bundle.Dir, "run-bundle")
	if r.ExitCode != 0 || r.Stdout != "ok\n" {
		t.Fatalf("-b: got %s", r)
	}
}

func TestRunKilledBySignalExits128PlusSignal(t *testing.T) {
	b := newBerth(t)
	bundle := testutil.NewBundle(t, "run-sig", "sleep", "300")
	b.deleteOnCleanup("run-sig")
	done := make(chan testutil.Result, 1)
	go func() { done <- b.run("run", "-b", bundle.Dir, "run-sig") }()
	// The init of a pid namespace ignores signals it has no handler for,
	// except from outside: SIGKILL through berth kill.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if r := b.run("state", "run-sig"); r.ExitCode == 0 && strings.Contains(r.Stdout, `"running"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("container never ran")
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.ok("kill", "run-sig", "KILL")
	if r := <-done; r.ExitCode != 137 {
		t.Fatalf("got %s, want exit 137", r)
	}
	assertGone(t, b, "run-sig")
}

func TestRunKeepLeavesStoppedContainer(t *testing.T) {
	b := newBerth(t)
	bundle := testutil.NewBundle(t, "run-keep", "true")
	b.deleteOnCleanup("run-keep")
	b.ok("run", "--keep", "-b", bundle.Dir, "run-keep")
	if st := b.state("run-keep"); st.Status != "stopped" || st.Pid != 0 {
		t.Fatalf("after run --keep: %+v", st)
	}
	b.ok("delete", "run-keep")
	assertGone(t, b, "run-keep")
}

func TestRunDetachedWithPidFile(t *testing.T) {
	b := newBerth(t)
	bundle := testutil.NewBundle(t, "run-detach", "sleep", "300")
	b.deleteOnCleanup("run-detach")
	pidFile := filepath.Join(t.TempDir(), "pid")
	b.ok("run", "-d", "--pid-file", pidFile, "-b", bundle.Dir, "run-detach")
	st := b.state("run-detach")
	if st.Status != "running" {
		t.Fatalf("status %s, want running", st.Status)
	}
	if got := readTrim(t, pidFile); got != strconv.Itoa(st.Pid) {
		t.Fatalf("pid file %s, state pid %d", got, st.Pid)
	}
	comm := readTrim(t, "/proc/"+strconv.Itoa(st.Pid)+"/comm")
	if comm != "sleep" {
		t.Fatalf("pid %d runs %q, want sleep", st.Pid, comm)
	}
	b.ok("kill", "run-detach", "KILL")
	b.waitStatus("run-detach", "stopped")
	b.ok("delete", "run-detach")
	assertGone(t, b, "run-detach")
}

func TestRunNoPivot(t *testing.T) {
	b := newBerth(t)
	bundle := testutil.NewBundle(t, "run-nopivot", "sh", "-c", "ls /bin/busybox")
	if r := b.run("run", "--no-pivot", "-b", bundle.Dir, "run-nopivot"); r.ExitCode != 0 || r.Stdout != "/bin/busybox\n" {
		t.Fatalf("got %s", r)
	}
}

func TestRunEnvCwdUserHostname(t *testing.T) {
	b := newBerth(t)
	bundle := testutil.NewBundle(t, "run-proc", "sh", "-c", `echo "$FOO|$(pwd)|$(id -u):$(id -g)|$(hostname)|$(id -G)"`)
	bundle.Spec.Process.Env = append(bundle.Spec.Process.Env, "FOO=bar")
	bundle.Spec.Process.Cwd = "/tmp"
	bundle.Spec.Process.User.UID = 1000
	bundle.Spec.Process.User.GID = 1000
	bundle.Spec.Process.User.AdditionalGids = []uint32{2000}
	bundle.Spec.Hostname = "box"
	bundle.Save(t)
	r := b.run("run", "-b", bundle.Dir, "run-proc")
	if want := "bar|/tmp|1000:1000|box|1000 2000\n"; r.ExitCode != 0 || r.Stdout != want {
		t.Fatalf("got %s, want stdout %q", r, want)
	}
}

func TestRunReadonlyRootfs(t *testing.T) {
	b := newBerth(t)
	bundle := testutil.NewBundle(t, "run-ro", "sh", "-c", "touch /x 2>/dev/null && echo writable || echo readonly; touch /tmp/y && echo tmpok")
	bundle.Spec.Root.Readonly = true
	bundle.Spec.Mounts = append(bundle.Spec.Mounts, specMount("/tmp", "tmpfs", "tmpfs", "nosuid", "nodev"))
	bundle.Save(t)
	if r := b.run("run", "-b", bundle.Dir, "run-ro"); r.Stdout != "readonly\ntmpok\n" {
		t.Fatalf("got %s", r)
	}
	bundle.Spec.Root.Readonly = false
	bundle.Save(t)
	if r := b.run("run", "-b", bundle.Dir, "run-ro"); r.Stdout != "writable\ntmpok\n" {
		t.Fatalf("writable rootfs: got %s", r)
	}
}

func TestRunBindMountRelativeSource(t *testing.T) {
	b := newBerth(t)
	bundle := testutil.NewBundle(t, "run-bind", "cat", "/data/file")
	if err := os.MkdirAll(filepath.Join(bundle.Dir, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle.Dir, "data", "file"), []byte("shared\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := specMount("/data", "bind", "data", "rbind", "ro")
	bundle.Spec.Mounts = append(bundle.Spec.Mounts, m)
	bundle.Save(t)
	// From another directory: the relative source is the bundle's.
	if r := b.runIn(t.TempDir(), nil, "run", "-b", bundle.Dir, "run-bind"); r.ExitCode != 0 || r.Stdout != "shared\n" {
		t.Fatalf("got %s", r)
	}
}

func TestFeatures(t *testing.T) {
	b := newBerth(t)
	r := b.ok("features")
	var f struct {
		OCIVersionMin string `json:"ociVersionMin"`
		OCIVersionMax string `json:"ociVersionMax"`
		Linux         struct {
			Namespaces []string `json:"namespaces"`
			Seccomp    struct {
				Enabled bool `json:"enabled"`
			} `json:"seccomp"`
			Cgroup struct {
				V1 bool `json:"v1"`
				V2 bool `json:"v2"`
			} `json:"cgroup"`
		} `json:"linux"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &f); err != nil {
		t.Fatalf("features is not JSON: %v", err)
	}
	if f.OCIVersionMin != "1.0.0" || f.OCIVersionMax == "" || !f.Linux.Seccomp.Enabled || !f.Linux.Cgroup.V1 || !f.Linux.Cgroup.V2 {
		t.Fatalf("features: %+v", f)
	}
	if !strings.Contains(strings.Join(f.Linux.Namespaces, ","), "network") {
		t.Fatalf("namespaces %v lack network", f.Linux.Namespaces)
	}
}

func TestVersion(t *testing.T) {
	b := newBerth(t)
	r := b.ok("--version")
	if !strings.HasPrefix(r.Stdout, "berth version ") || !strings.Contains(r.Stdout, "spec: ") || !strings.Contains(r.Stdout, "libseccomp: ") {
		t.Fatalf("version output %q", r.Stdout)
	}
}
