package oci_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containerd/console"

	"github.com/berth-runtime/berth/internal/testutil"
)

func TestCreateWithConsoleSocket(t *testing.T) {
	b := newBerth(t)
	bundle := testutil.NewBundle(t, "tty-sock", "sh", "-c", "echo tty:$(tty); read x; echo got:$x")
	bundle.Spec.Process.Terminal = true
	bundle.Save(t)
	b.deleteOnCleanup("tty-sock")
	sock := testutil.NewConsoleSocket(t)

	// Without a console socket a detached tty has nowhere to go.
	if r := b.run("create", "-b", bundle.Dir, "tty-sock"); r.ExitCode != 1 || !strings.Contains(r.Stderr, "console socket") {
		t.Fatalf("create without console socket: %s", r)
	}
	assertGone(t, b, "tty-sock")

	done := make(chan testutil.Result, 1)
	go func() { done <- b.run("create", "--console-socket", sock.Path, "-b", bundle.Dir, "tty-sock") }()
	master := sock.ReceiveMaster(t)
	if r := <-done; r.ExitCode != 0 {
		t.Fatalf("create: %s", r)
	}
	b.ok("start", "tty-sock")
	testutil.ReadUntil(t, master, "tty:/dev/pts/0", 20*time.Second)
	if _, err := master.Write([]byte("typed\n")); err != nil {
		t.Fatal(err)
	}
	testutil.ReadUntil(t, master, "got:typed", 20*time.Second)
	b.waitStatus("tty-sock", "stopped")
}

func TestExecTTYWithConsoleSocket(t *testing.T) {
	b := newBerth(t)
	runningContainer(t, b, "tty-exec")
	sock := testutil.NewConsoleSocket(t)
	done := make(chan testutil.Result, 1)
	go func() {
		done <- b.run("exec", "-t", "-d", "--console-socket", sock.Path, "tty-exec", "sh", "-c", "echo exec-tty:$(tty); sleep 1")
	}()
	master := sock.ReceiveMaster(t)
	if r := <-done; r.ExitCode != 0 {
		t.Fatalf("exec: %s", r)
	}
	testutil.ReadUntil(t, master, "exec-tty:/dev/pts/", 20*time.Second)
}

// TestForegroundTTY runs berth on a pty, as a person at a terminal would:
// berth copies between its terminal and the container's.
func TestForegroundTTY(t *testing.T) {
	b := newBerth(t)
	bundle := testutil.NewBundle(t, "tty-fg", "sh", "-c", "echo fg:$(tty); read x; echo got:$x; exit 4")
	bundle.Spec.Process.Terminal = true
	bundle.Save(t)
	b.deleteOnCleanup("tty-fg")

	master, slavePath, err := console.NewPty()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	slave, err := os.OpenFile(slavePath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slave.Close()
	cmd := exec.Command(b.bin, b.global([]string{"run", "-b", bundle.Dir, "tty-fg"})...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	m := os.NewFile(master.Fd(), "master")
	readPty(t, m, "fg:/dev/pts/0")
	if _, err := master.Write([]byte("hello\r")); err != nil {
		t.Fatal(err)
	}
	readPty(t, m, "got:hello")
	select {
	case err := <-waited:
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 4 {
			t.Fatalf("berth run on a tty: %v, want exit 4", err)
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("berth run on a tty did not exit")
	}
	assertGone(t, b, "tty-fg")
}

// readPty reads a blocking pty master in a goroutine until want appears.
func readPty(t *testing.T, f *os.File, want string) {
	t.Helper()
	found := make(chan string, 1)
	go func() {
		var out []byte
		buf := make([]byte, 1024)
		for {
			n, err := f.Read(buf)
			out = append(out, buf[:n]...)
			if strings.Contains(string(out), want) || err != nil {
				found <- string(out)
				return
			}
		}
	}()
	select {
	case out := <-found:
		if !strings.Contains(out, want) {
			t.Fatalf("pty output %q lacks %q", out, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("pty never printed %q", want)
	}
}
