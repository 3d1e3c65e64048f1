package crilog

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCopyWritesCRIFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c", "0.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	l.now = func() time.Time { return ts }
	long := strings.Repeat("x", MaxLine+10)
	if err := l.Copy("stdout", strings.NewReader("one\ntwo\n"+long+"\nno-newline"), nil); err != nil {
		t.Fatal(err)
	}
	if err := l.Copy("stderr", strings.NewReader("err\n"), nil); err != nil {
		t.Fatal(err)
	}
	l.Close()
	data, _ := os.ReadFile(path)
	stamp := ts.Format(time.RFC3339Nano)
	want := strings.Join([]string{
		stamp + " stdout F one",
		stamp + " stdout F two",
		stamp + " stdout P " + strings.Repeat("x", MaxLine),
		stamp + " stdout F " + strings.Repeat("x", 10),
		// The end of output without a newline: partial, as containerd
		// writes it and the kubelet reads it.
		stamp + " stdout P no-newline",
		stamp + " stderr F err",
	}, "\n") + "\n"
	if string(data) != want {
		t.Fatalf("log:\n%.300q\nwant:\n%.300q", data, want)
	}
}

func TestReopenAfterRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "0.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_ = l.record("stdout", false, []byte("before"))
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	_ = l.record("stdout", false, []byte("after"))
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if !strings.Contains(string(old), "before") || strings.Contains(string(old), "after") || !strings.Contains(string(cur), "after") {
		t.Fatalf("old %q new %q", old, cur)
	}
}

// TestStuckAttachClientBlocksNothing: an attach client that never reads
// does not hold up the stream or the log; it is dropped (its pipe
// closed), while a client that reads gets every byte in order.
func TestStuckAttachClientBlocksNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	stuckR, stuckW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stuckR.Close() // never read until the end
	fastR, fastW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	var tee Tee
	tee.Add(stuckW)
	tee.Add(fastW)
	line := strings.Repeat("y", 1023) + "\n"
	copyWithin := func(input string) {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- l.Copy("stdout", strings.NewReader(input), &tee) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("the log copy is stuck behind an attach client that does not read")
		}
	}
	// 1 MiB: within what a client may fall behind; the reading client
	// gets all of it.
	first := strings.Repeat(line, 1<<10)
	copyWithin(first)
	buf := make([]byte, len(first))
	fastR.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(fastR, buf); err != nil || string(buf) != first {
		t.Fatalf("the reading client: %v (%d bytes)", err, len(buf))
	}
	// 16 MiB more: far beyond the stuck client's pipe and queue. The copy
	// goes on; the stuck client is dropped.
	copyWithin(strings.Repeat(line, 16<<10))
	tee.CloseAll()
	fastR.Close()
	stuckR.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := io.Copy(io.Discard, stuckR); err != nil || n >= 17<<20 {
		t.Errorf("the stuck client read %d bytes, then %v; want its pipe closed early", n, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() < 17<<20 {
		t.Errorf("log %v %v: not everything was logged", fi, err)
	}
}
