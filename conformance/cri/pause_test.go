package cri_test

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-runtime/berth/internal/testutil"
)

// TestPauseBinary checks the pause process on its own: it names itself,
// and SIGINT and SIGTERM stop it with 128+signal, also as the init of a
// pid namespace, which the kernel spares every signal it neither handles
// nor blocks.
func TestPauseBinary(t *testing.T) {
	testutil.RequireRoot(t)
	pause := testutil.Bin(t, "pause")
	out, err := exec.Command(pause, "-v").Output()
	if err != nil || string(out) != "berth pause\n" {
		t.Fatalf("pause -v: %q, %v", out, err)
	}
	for _, c := range []struct {
		name   string
		sig    syscall.Signal
		newPid bool
	}{
		{"term", syscall.SIGTERM, false},
		{"int", syscall.SIGINT, false},
		{"term as a namespace's init", syscall.SIGTERM, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(pause)
			if c.newPid {
				cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-exited
			})
			// A signal sent before pause is ready for it would take its
			// default action: wait until pause sleeps, which it does only
			// once ready.
			waitFor(t, 5*time.Second, func() bool {
				stat, _ := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/stat")
				f := strings.SplitN(string(stat), " ", 2)
				return len(f) == 2 && strings.HasPrefix(f[1], "(pause) S ")
			})
			if err := cmd.Process.Signal(c.sig); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-exited:
				exited <- err
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 128+int(c.sig) {
					t.Errorf("pause after %v: %v, want exit status %d", c.sig, err, 128+int(c.sig))
				}
			case <-time.After(5 * time.Second):
				t.Errorf("pause still runs 5s after %v", c.sig)
			}
		})
	}
}

// waitFor polls cond until it holds or the timeout ends the test.
func waitFor(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
