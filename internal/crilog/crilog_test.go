package crilog

import (
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
		stamp + " stdout F no-newline",
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
