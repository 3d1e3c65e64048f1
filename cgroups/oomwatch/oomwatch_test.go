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

func unified() bool {
	_, err := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	return err == nil
}

// cgroupDir is the cgroup's directory in the memory hierarchy.
func cgroupDir(path string) string {
	if unified() {
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

// makeCgroup makes a cgroup under the test's parent, with a 32 MiB limit
// and no swap where limit is set, and removes it (and what is below it)
// at the end.
func makeCgroup(t *testing.T, name string, limit bool) (path, dir string) {
	t.Helper()
	path = testutil.CgroupParent + "/" + name
	if err := cgroups.Create(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cgroups.RemoveTree(path); err != nil {
			t.Error(err)
		}
	})
	dir = cgroupDir(path)
	if !limit {
		return path, dir
	}
	if unified() {
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
	return path, dir
}

// process is the test binary started as a hog in the cgroup, waiting on
// its stdin; go lets it eat.
type process struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan error
}

func startIn(t *testing.T, dir string) *process {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "OOMWATCH_HOG=1", "GOGC=off")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, stdin: stdin, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-p.done })
	write(t, dir, "cgroup.procs", strconv.Itoa(cmd.Process.Pid))
	return p
}

func (p *process) eat(t *testing.T) {
	t.Helper()
	fmt.Fprintln(p.stdin)
	p.wait(t)
}

func (p *process) wait(t *testing.T) {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		if err == nil {
			t.Fatal("the process exited without being killed")
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the process was not killed within 2 minutes")
	}
}

// A process killed by the OOM killer is counted, and the count stays
// after its cgroup is removed (as systemd removes a container's scope
// once it is empty).
func TestOOMKillCountedAndKeptAfterRemoval(t *testing.T) {
	testutil.RequireRoot(t)
	path, dir := makeCgroup(t, "oomwatch", true)
	p := startIn(t, dir)
	var watcher oomwatch.Watcher
	w, err := watcher.Watch(p.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if n := w.Seen(); n != 0 {
		t.Fatalf("kills before anything ran: %d", n)
	}
	p.eat(t)
	// The notification is read while the cgroup exists, as a shim's
	// would be before systemd removes the scope.
	deadline := time.Now().Add(10 * time.Second)
	for w.Seen() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no OOM kill read from the notifications (the hog: %v)", p.cmd.ProcessState)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cgroups.RemoveTree(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("cgroup still there: %v", err)
	}
	if n := w.Kills(true); n == 0 {
		t.Fatal("the OOM kill was not counted")
	}
}

// A cgroup removed before any notification of its kill was read: the
// kill is found in the parent's counts (v2 counts every event in the
// ancestors too), for the one container that died of SIGKILL, once.
func TestOOMKillFoundInTheParent(t *testing.T) {
	testutil.RequireRoot(t)
	if !unified() {
		t.Skip("needs cgroup v2: v1 counts no event in the parent (make test-vm runs it)")
	}
	parentPath, parentDir := makeCgroup(t, "oomparent", false)
	// A v2 parent hands the memory controller down once asked to.
	write(t, parentDir, "cgroup.subtree_control", "+memory")
	watcher := oomwatch.WatcherWithoutLoop()
	var watches []*oomwatch.Watch
	var procs []*process
	for _, name := range []string{"hog", "bystander", "stopped"} {
		_, dir := makeCgroup(t, "oomparent/"+name, name == "hog")
		p := startIn(t, dir)
		w, err := watcher.Watch(p.cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		watches, procs = append(watches, w), append(procs, p)
	}
	procs[0].eat(t)
	for _, p := range procs[1:] {
		_ = p.cmd.Process.Kill()
		p.wait(t)
	}
	for _, name := range []string{"hog", "bystander", "stopped"} {
		if err := cgroups.RemoveTree(parentPath + "/" + name); err != nil {
			t.Fatal(err)
		}
	}
	// Killed by SIGKILL but not by the OOM killer, and not the first to
	// ask: the one kill goes to the first that asks, once.
	if n := watches[2].Kills(false); n != 0 {
		t.Errorf("an exit that was not a SIGKILL took %d kills", n)
	}
	if n := watches[0].Kills(true); n == 0 {
		t.Error("the hog's kill was not found in the parent")
	}
	if n := watches[1].Kills(true); n != 0 {
		t.Errorf("a bystander killed by SIGKILL took %d kills the hog had taken", n)
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
