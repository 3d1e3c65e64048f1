package oci_test

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-runtime/berth/internal/testutil"
)

// TestCheckpointRestore dumps a running container with CRIU and restores
// it from the same bundle, as runc's checkpoint and restore do: its
// memory (a shell's counter) goes on from where the dump stopped it, and
// its stdout, a pipe at the dump, is the restoring command's new pipe.
// A dump with --leave-running leaves it running.
func TestCheckpointRestore(t *testing.T) {
	b := newBerth(t)
	testutil.RequireCRIU(t)
	const id = "cr"
	bundle := testutil.NewBundle(t, id, "sh", "-c", "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done")
	b.deleteOnCleanup(id)

	out := b.startPiped("run", "-d", "-b", bundle.Dir, id)
	for n := 0; n < 5; {
		if n = readCount(t, out); n == 0 {
			t.Fatal("the container's stdout ended before the dump")
		}
	}
	images := filepath.Join(t.TempDir(), "images")
	b.ok("checkpoint", "--image-path", images, id)
	// The dump ends the container: its stdout reaches EOF.
	last := 0
	for n := readCount(t, out); n > 0; n = readCount(t, out) {
		last = n
	}
	assertGone(t, b, id)
	if _, err := os.Stat(filepath.Join(images, "inventory.img")); err != nil {
		t.Fatalf("no CRIU images: %v", err)
	}

	out = b.startPiped("restore", "-d", "--image-path", images, "--work-path", t.TempDir(), "-b", bundle.Dir, id)
	if n := readCount(t, out); n != last+1 {
		t.Fatalf("restored counter printed %d first, want %d (the dump stopped it at %d)", n, last+1, last)
	}
	if st := b.state(id); st.Status != "running" || st.Bundle != bundle.Dir {
		t.Fatalf("state after restore: %+v", st)
	}

	b.ok("checkpoint", "--leave-running", "--image-path", filepath.Join(t.TempDir(), "images"), id)
	after := readCount(t, out)
	if n := readCount(t, out); n != after+1 || b.state(id).Status != "running" {
		t.Fatalf("after a dump with --leave-running: counter %d then %d, state %s", after, n, b.state(id).Status)
	}
	if r := b.run("checkpoint", "--image-path", t.TempDir(), "no-such"); r.ExitCode == 0 {
		t.Fatalf("checkpoint of a missing container succeeded")
	}
	b.ok("delete", "--force", id)
	assertGone(t, b, id)
}

// startPiped runs a detaching command with stdout and stderr on a pipe
// the test reads (CRIU dumps a pipe; a file outside the container's
// mounts it cannot).
func (c *cli) startPiped(args ...string) *bufio.Reader {
	c.t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { r.Close() })
	cmd := exec.Command(c.bin, c.global(args)...)
	cmd.Stdout, cmd.Stderr = w, w
	err = cmd.Run()
	w.Close()
	if err != nil {
		// What berth said is in the pipe; the container may hold it open.
		r.SetReadDeadline(time.Now().Add(time.Second))
		msg, _ := io.ReadAll(r)
		c.t.Fatalf("berth %s: %v: %s", strings.Join(args, " "), err, msg)
	}
	// A container that never writes must not hang the test.
	r.SetReadDeadline(time.Now().Add(time.Minute))
	return bufio.NewReader(r)
}

// readCount reads the counter's next line; 0 at EOF.
func readCount(t *testing.T, r *bufio.Reader) int {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil && line == "" {
		if strings.Contains(err.Error(), "timeout") {
			t.Fatalf("counter: %v", err)
		}
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("counter printed %q", line)
	}
	return n
}
