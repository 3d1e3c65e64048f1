package reaper

import (
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSubscribeAfterExit: an exit reaped before anyone subscribed is
// handed to the subscriber that comes later.
func TestSubscribeAfterExit(t *testing.T) {
	r, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "exit 7")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	deadline := time.Now().Add(10 * time.Second)
	for unix.Kill(pid, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case e := <-r.Subscribe(pid):
		if e.Status != 7 {
			t.Fatalf("exit %+v, want status 7", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit for a process reaped before the subscription")
	}
}

// TestSubscribeIgnoresExitOfReusedPid: an exit kept for a pid that a
// live process has now (the pid was reused) is not that process's: the
// subscriber gets the live process's own exit.
func TestSubscribeIgnoresExitOfReusedPid(t *testing.T) {
	r, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	defer unix.Kill(pid, unix.SIGKILL)
	// What an earlier process of the same pid left, as deliver keeps it.
	r.mu.Lock()
	r.unclaimed[pid] = Exit{Pid: pid, Status: 0, Time: time.Now()}
	r.mu.Unlock()
	ch := r.Subscribe(pid)
	select {
	case e := <-ch:
		t.Fatalf("got %+v for a process that is still running", e)
	case <-time.After(200 * time.Millisecond):
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-ch:
		if e.Signal != unix.SIGKILL || e.Status != 137 {
			t.Fatalf("exit %+v, want SIGKILL (137)", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit after the kill")
	}
}

// TestExitNoticedThroughPidfd: a watched process's exit wakes the loop
// through its pidfd, with no SIGCHLD and no sweep.
func TestExitNoticedThroughPidfd(t *testing.T) {
	if !pidfdsPollable() {
		t.Skip("this kernel's pidfds cannot be polled (before Linux 5.3): exits come from SIGCHLD")
	}
	// No loop: what watch sends stays in kick.
	r := &Reaper{kick: make(chan struct{}, 1), pidfds: true}
	cmd := exec.Command("sh", "-c", "read x; exit 3")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	r.watch(cmd.Process.Pid)
	select {
	case <-r.kick:
		t.Fatal("woken while the process runs")
	case <-time.After(200 * time.Millisecond):
	}
	stdin.Close() // now it exits
	select {
	case <-r.kick:
	case <-time.After(30 * time.Second):
		t.Fatal("the exit did not wake the reaper")
	}
}
