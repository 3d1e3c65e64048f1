package oci_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/conformance/internal/berthd"
	"github.com/berth-runtime/berth/internal/testutil"
)

// Regression tests for the classic container escapes. Each says which
// part of berth (most often runc's libcontainer, which berth's init is)
// stops it, and proves it from the container's side.

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// attackOnInit matches the attack log's lines about a process of berth's
// init ("<berth> init"), with its pid.
var attackOnInit = regexp.MustCompile(`(?m)^(?:open failed (\d+)|caught \S+) \[\S*berth init \]$`)

// TestEscapeOverwriteRuntimeBinary (CVE-2019-5736): a process in the
// container opens /proc/<pid>/exe of every process it sees, which
// includes berth's init while it joins the container for `berth exec`,
// and writes through the descriptor once the init has exec'd. Not
// affected: libcontainer runs the init from a sealed copy of the binary
// (exeseal: a read-only overlay or a sealed memfd), never from the host's
// file, so the writes fail and the host's berth is unchanged.
func TestEscapeOverwriteRuntimeBinary(t *testing.T) {
	b := newBerth(t)
	before := sha256File(t, b.bin)
	// Anything that is not the container's own busybox is the runtime.
	// The descriptor is opened for a compound command: a failed
	// redirection of exec itself would end the shell.
	attack := `
while true; do
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" = "$$" ] && continue
    cmd=$(tr '\0' ' ' < $p/cmdline 2>/dev/null)
    {
      target=$(readlink /proc/self/fd/3)
      case "$target" in /bin/busybox|"") continue;; esac
      echo "caught $target [$cmd]"
      sleep 0.1
      if echo '#!/bin/sh' >> /proc/self/fd/3; then echo "WROTE $target"; else echo "denied $target"; fi
    } 3< "$p/exe" 2>/dev/null || echo "open failed ${p#/proc/} [$cmd]"
  done
done`
	bundle := testutil.NewBundle(t, "exe-attack", "sh", "-c", attack+" > /attack.log 2>&1")
	b.deleteOnCleanup("exe-attack")
	b.ok("run", "-d", "-b", bundle.Dir, "exe-attack")
	// Each exec puts an init of berth ("berth init") into the
	// container's namespaces; the attack must have gone for one of them,
	// else it proves nothing. Execs go on until it has, a few times.
	attempts := func() int {
		log, _ := os.ReadFile(filepath.Join(bundle.Rootfs(), "attack.log"))
		pids := map[string]bool{}
		for _, m := range attackOnInit.FindAllSubmatch(log, -1) {
			pids[string(m[1])] = true
		}
		return len(pids)
	}
	execs := 0
	for ; execs < 300 && (execs < 40 || attempts() < 3); execs++ {
		if r := b.run("exec", "exe-attack", "true"); r.ExitCode != 0 {
			log, _ := os.ReadFile(filepath.Join(bundle.Rootfs(), "attack.log"))
			t.Fatalf("exec %d: %s; attack log:\n%s", execs, r, log)
		}
	}
	// The attacker's loop may still be writing about the last one.
	time.Sleep(300 * time.Millisecond)
	b.ok("kill", "exe-attack", "KILL")
	log, _ := os.ReadFile(filepath.Join(bundle.Rootfs(), "attack.log"))
	if after := sha256File(t, b.bin); after != before {
		t.Fatalf("the host's berth binary changed: %s → %s; attack log:\n%s", before, after, log)
	}
	if bytes.Contains(log, []byte("WROTE")) {
		t.Errorf("a write through the runtime's /proc/<pid>/exe succeeded:\n%s", log)
	}
	n := attempts()
	t.Logf("%d execs; the attacker went for %d of berth's init processes; opening a process's exe failed %d times (gone already, or not dumpable as berth's init is); an exe other than the container's was held %d times, every write denied",
		execs, n, bytes.Count(log, []byte("open failed")), bytes.Count(log, []byte("caught ")))
	if n == 0 {
		t.Fatalf("in %d execs the attacker never went for berth's init: the test proves nothing; attack log:\n%s", execs, log)
	}

	// The second defence, seen from the host: a created container's init
	// (waiting in the container's namespaces for start) runs a copy of
	// berth, not the host's file.
	bundle = testutil.NewBundle(t, "exe-created", "true")
	b.deleteOnCleanup("exe-created")
	b.ok("create", "-b", bundle.Dir, "exe-created")
	initExe, err := os.Stat(fmt.Sprintf("/proc/%d/exe", b.state("exe-created").Pid))
	if err != nil {
		t.Fatal(err)
	}
	host, err := os.Stat(b.bin)
	if err != nil {
		t.Fatal(err)
	}
	if os.SameFile(initExe, host) {
		t.Errorf("the init of a created container runs the host's %s itself", b.bin)
	}
}

// TestEscapeLeakedDescriptors (CVE-2024-21626): a working directory of
// /proc/self/fd/N reaches the host when the runtime leaks a descriptor of
// a host directory into the container's init. Not affected: berth's init
// closes every descriptor above stdio before it execs the process, and
// libcontainer refuses a working directory outside the container's root.
func TestEscapeLeakedDescriptors(t *testing.T) {
	b := newBerth(t)
	// The container sees no descriptor but its stdio.
	bundle := testutil.NewBundle(t, "fds", "sh", "-c", "ls /proc/self/fd | tr '\\n' ' '")
	r := b.ok("run", "-b", bundle.Dir, "fds")
	// ls has one of its own (the directory it reads).
	if got := strings.Fields(r.Stdout); len(got) > 4 {
		t.Errorf("descriptors in the container: %v, want 0 1 2 and ls's own", got)
	}
	for n := 3; n <= 12; n++ {
		id := fmt.Sprintf("cwd-%d", n)
		bundle := testutil.NewBundle(t, id, "sh", "-c", "pwd -P; cat ../../../../../../etc/hostname")
		bundle.Spec.Process.Cwd = fmt.Sprintf("/proc/self/fd/%d", n)
		bundle.Save(t)
		r := b.run("run", "-b", bundle.Dir, id)
		if r.ExitCode == 0 && (strings.Contains(r.Stdout, "unreachable") || !strings.HasPrefix(r.Stdout, "/")) {
			t.Errorf("cwd /proc/self/fd/%d: the process started outside the container: %s", n, r)
		}
		if r.ExitCode != 0 && r.Stderr == "" {
			t.Errorf("cwd /proc/self/fd/%d refused without a message: %s", n, r)
		}
	}
	// The same through exec.
	bundle = testutil.NewBundle(t, "fds-exec", "sleep", "60")
	b.deleteOnCleanup("fds-exec")
	b.ok("run", "-d", "-b", bundle.Dir, "fds-exec")
	for n := 3; n <= 12; n++ {
		r := b.run("exec", "--cwd", fmt.Sprintf("/proc/self/fd/%d", n), "fds-exec", "pwd", "-P")
		if r.ExitCode == 0 && !strings.HasPrefix(r.Stdout, "/") {
			t.Errorf("exec with cwd /proc/self/fd/%d ran outside the container: %s", n, r)
		}
	}
}

// TestEscapeSymlinkRaceOnMount (CVE-2021-30465 class): a volume the
// attacker writes to has a directory that a mount of the next container
// targets; the attacker swaps it with a symlink to a host directory as
// fast as it can. Not affected: libcontainer resolves the destination
// inside the rootfs and mounts through the opened file descriptor it
// checked, so the mount lands inside the container or fails, never on
// the host's directory.
func TestEscapeSymlinkRaceOnMount(t *testing.T) {
	b := newBerth(t)
	hostDir := t.TempDir() // what the attacker wants to mount over
	if err := os.WriteFile(filepath.Join(hostDir, "precious"), []byte("host data\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	volume := t.TempDir()
	dir, link := filepath.Join(volume, "target"), filepath.Join(volume, "link")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(hostDir, link); err != nil {
		t.Fatal(err)
	}
	// The attacker: RENAME_EXCHANGE swaps the directory and the symlink
	// atomically, so the target is always one of the two.
	var stop atomic.Bool
	var swaps atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if err := unix.Renameat2(unix.AT_FDCWD, dir, unix.AT_FDCWD, link, unix.RENAME_EXCHANGE); err == nil {
				swaps.Add(1)
			}
		}
	}()
	// Each run reports its own mount table (the host's cannot see the
	// container's mount namespace). The tmpfs lands on the directory
	// libcontainer opened: at /v/target, or at /v/link when a swap came
	// between its resolution of the path and the mount, which is the race
	// an attacker must win. Runs go on until the race was won a few times
	// (or refused, which libcontainer does when it sees the swap).
	var refused, atTarget, raced, followed int
	runs := 0
	for ; runs < 400 && (runs < 30 || raced+refused < 3); runs++ {
		id := fmt.Sprintf("race-%d", runs)
		bundle := testutil.NewBundle(t, id, "sh", "-c", "cut -d' ' -f5,9 /proc/self/mountinfo")
		bundle.Spec.Mounts = append(bundle.Spec.Mounts,
			specs.Mount{Destination: "/v", Type: "bind", Source: volume, Options: []string{"rbind", "rw"}},
			specs.Mount{Destination: "/v/target", Type: "tmpfs", Source: "tmpfs", Options: []string{"size=1m"}})
		bundle.Save(t)
		r := b.run("run", "-b", bundle.Dir, id)
		switch {
		case r.ExitCode != 0:
			refused++
		case strings.Contains(r.Stdout, "/v/target tmpfs\n"):
			atTarget++
		case strings.Contains(r.Stdout, "/v/link tmpfs\n"):
			raced++
		case strings.Contains(r.Stdout, hostDir+" tmpfs\n"):
			// The path was the symlink when resolved: followed inside the
			// container's root, to the container's own hostDir.
			followed++
		default:
			stop.Store(true)
			t.Fatalf("run %d succeeded, but its tmpfs is not inside the container's /v: mounted elsewhere (%q)", runs, r.Stdout)
		}
		if m := berthd.MountsUnder(hostDir); len(m) > 0 {
			stop.Store(true)
			t.Fatalf("run %d mounted over the host's directory: %v (%s)", runs, m, r)
		}
	}
	stop.Store(true)
	wg.Wait()
	if data, err := os.ReadFile(filepath.Join(hostDir, "precious")); err != nil || string(data) != "host data\n" {
		t.Errorf("the host's directory changed: %q %v", data, err)
	}
	if swaps.Load() == 0 {
		t.Fatal("the attacker never swapped: the race was not run")
	}
	t.Logf("%d runs, %d swaps: %d mounted at /v/target, %d through the symlink inside the container's root, %d won the race and still mounted inside the container (/v/link), %d refused",
		runs, swaps.Load(), atTarget, followed, raced, refused)
	if raced+refused == 0 {
		t.Fatalf("in %d runs the swap never came between resolution and mount: the test proves nothing", runs)
	}
}

// TestEscapeMountPaths: a destination with .. or through a symlink in the
// image resolves inside the rootfs; mounts over /proc's files and a /proc
// that is a symlink are refused (CVE-2019-16884, CVE-2019-19921 class).
func TestEscapeMountPaths(t *testing.T) {
	b := newBerth(t)
	hostDir := t.TempDir()

	t.Run("dotdot", func(t *testing.T) {
		bundle := testutil.NewBundle(t, "dotdot", "sh", "-c", "grep tmpfs /proc/self/mountinfo | cut -d' ' -f5")
		dest := "/../../../../../../.." + hostDir
		bundle.Spec.Mounts = append(bundle.Spec.Mounts, specs.Mount{Destination: dest, Type: "tmpfs", Source: "tmpfs"})
		bundle.Save(t)
		r := b.run("run", "-b", bundle.Dir, "dotdot")
		if m := berthd.MountsUnder(hostDir); len(m) > 0 {
			t.Fatalf("a destination with .. mounted on the host: %v", m)
		}
		if r.ExitCode == 0 && !strings.Contains(r.Stdout, hostDir+"\n") {
			t.Errorf("the mount is not at %s inside the container: %s", hostDir, r)
		}
	})

	t.Run("symlink-in-image", func(t *testing.T) {
		bundle := testutil.NewBundle(t, "imglink", "sh", "-c", "grep tmpfs /proc/self/mountinfo | cut -d' ' -f5")
		if err := os.Symlink(hostDir, filepath.Join(bundle.Rootfs(), "escape")); err != nil {
			t.Fatal(err)
		}
		bundle.Spec.Mounts = append(bundle.Spec.Mounts, specs.Mount{Destination: "/escape", Type: "tmpfs", Source: "tmpfs"})
		bundle.Save(t)
		r := b.run("run", "-b", bundle.Dir, "imglink")
		if m := berthd.MountsUnder(hostDir); len(m) > 0 {
			t.Fatalf("a symlink in the rootfs led a mount onto the host: %v", m)
		}
		if r.ExitCode != 0 {
			t.Fatalf("run: %s", r)
		}
		if !strings.Contains(r.Stdout, hostDir+"\n") {
			t.Errorf("the mount is not at the symlink's target inside the rootfs: %s", r)
		}
	})

	t.Run("over-proc-files", func(t *testing.T) {
		for _, dest := range []string{"/proc/sys/kernel/core_pattern", "/proc/self/attr/current", "/proc/sysrq-trigger"} {
			bundle := testutil.NewBundle(t, "overproc", "true")
			bundle.Spec.Mounts = append(bundle.Spec.Mounts, specs.Mount{Destination: dest, Type: "bind", Source: "/dev/null", Options: []string{"bind"}})
			bundle.Save(t)
			r := b.run("run", "-b", bundle.Dir, "overproc")
			if r.ExitCode == 0 || !strings.Contains(r.Stderr, "/proc") {
				t.Errorf("a bind mount over %s: %s, want a refusal naming /proc", dest, r)
			}
		}
	})

	t.Run("proc-is-a-symlink", func(t *testing.T) {
		bundle := testutil.NewBundle(t, "proclink", "true")
		proc := filepath.Join(bundle.Rootfs(), "proc")
		if err := os.RemoveAll(proc); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(hostDir, proc); err != nil {
			t.Fatal(err)
		}
		r := b.run("run", "-b", bundle.Dir, "proclink")
		if m := berthd.MountsUnder(hostDir); len(m) > 0 {
			t.Fatalf("proc was mounted on the host through a symlink: %v", m)
		}
		if r.ExitCode == 0 {
			t.Errorf("a rootfs whose /proc is a symlink ran: %s", r)
		}
	})
}
