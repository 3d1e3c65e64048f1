package oomwatch_test

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/cgroups/oomwatch"
	"github.com/berth-runtime/berth/internal/testutil"
)

func TestMain(m *testing.M) {
	if os.Getenv("OOMWATCH_HOG") == "1" {
		hog()
	}
	testutil.Main(m)
}

// hog waits for a line on stdin (its parent moves it into the cgroup
// meanwhile), then touches memory until the OOM killer ends it.
func hog() {
	_, _ = io.ReadAll(io.LimitReader(os.Stdin, 1))
	var keep [][]byte
	for {
		b := make([]byte, 1<<20)
		for i := range b {
			b[i] = 1
		}
		keep = append(keep, b)
	}
}

// cgroupDir is the cgroup's directory in the memory hierarchy.
func cgroupDir(path string) string {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return filepath.Join("/sys/fs/cgroup", path)
	}
	return filepath.Join("/sys/fs/cgroup/memory", path)
}

func write(t *testing.T, dir, file, value string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0); err != nil {
		t.Fatal(err)
	}
}

// A process killed by the OOM killer is counted, and the count stays
// after its cgroup is removed (as systemd removes a container's scope
// once it is empty).
func TestOOMKillCountedAndKeptAfterRemoval(t *testing.T) {
	testutil.RequireRoot(t)
	path := testutil.CgroupParent + "/oomwatch"
	if err := cgroups.Create(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cgroups.RemoveTree(path); err != nil {
			t.Error(err)
		}
	})
	dir := cgroupDir(path)
	if _, err := os.Stat(filepath.Join(dir, "memory.max")); err == nil {
		write(t, dir, "memory.max", strconv.Itoa(32<<20))
		if _, err := os.Stat(filepath.Join(dir, "memory.swap.max")); err == nil {
			write(t, dir, "memory.swap.max", "0")
		}
	} else {
		write(t, dir, "memory.limit_in_bytes", strconv.Itoa(32<<20))
		if _, err := os.Stat(filepath.Join(dir, "memory.memsw.limit_in_bytes")); err == nil {
			write(t, dir, "memory.memsw.limit_in_bytes", strconv.Itoa(32<<20))
		}
	}

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "OOMWATCH_HOG=1", "GOGC=off")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	write(t, dir, "cgroup.procs", strconv.Itoa(cmd.Process.Pid))

	var watcher oomwatch.Watcher
	w, err := watcher.Watch(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if n := w.Seen(); n != 0 {
		t.Fatalf("kills before anything ran: %d", n)
	}
	fmt.Fprintln(stdin)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the hog exited without being killed")
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the hog was not OOM-killed within 2 minutes")
	}
	// The notification is read while the cgroup exists, as a shim's
	// would be before systemd removes the scope.
	deadline := time.Now().Add(10 * time.Second)
	for w.Seen() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no OOM kill read from the notifications (the hog: %v)", cmd.ProcessState)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cgroups.RemoveTree(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("cgroup still there: %v", err)
	}
	if n := w.Kills(); n == 0 {
		t.Fatal("the OOM kill was not counted")
	}
}

// A process that is not in a memory cgroup's reach is an error, not a
// watch that never fires.
func TestStartErrors(t *testing.T) {
	var w oomwatch.Watcher
	if _, err := w.Watch(1 << 30); err == nil {
		t.Fatal("watch of a pid that does not exist")
	}
}
