package testutil

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Sentinel is a directory tree outside every store, standing for the
// host's own directories (/etc, /tmp) that hostile image or request
// content may try to reach through symlinks or "..". Check compares it
// with how it was made: owners, modes, times (ctime included, which any
// chown, chmod, utimes or xattr change moves), extended attributes,
// contents and the set of entries.
type Sentinel struct {
	// Dir is the tree's root, an absolute path; Victim is the directory
	// inside it that the attacks aim at.
	Dir, Victim string
	before      map[string]entryState
}

// SentinelUID and SentinelMode are the victim directory's owner and mode:
// values no image or test uses elsewhere, so that finding them inside a
// container or layer means they were read from the sentinel.
const (
	SentinelUID  = 4343
	SentinelMode = 0o705
)

type entryState struct {
	mode           uint32
	uid, gid       uint32
	size           int64
	mtime, ctime   int64
	xattrs, digest string
}

// NewSentinel makes the tree under the system's temporary directory (not
// under a test's TempDir, which stores may share) and removes it when the
// test ends.
func NewSentinel(t T) *Sentinel {
	t.Helper()
	dir, err := os.MkdirTemp("", "berth-sentinel-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return NewSentinelAt(t, dir)
}

// NewSentinelAt makes the tree in dir (made if missing, else empty), at
// a place an attack can name relatively (a fuzzer's "../outside").
func NewSentinelAt(t T, dir string) *Sentinel {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var err error
	s := &Sentinel{Dir: dir, Victim: filepath.Join(dir, "victim")}
	old := time.Unix(1_000_000_000, 0)
	for _, e := range []struct {
		path string
		dir  bool
		mode os.FileMode
		uid  int
	}{
		{s.Victim, true, SentinelMode, SentinelUID},
		{filepath.Join(s.Victim, "inner"), true, 0o700, 0},
		{filepath.Join(s.Victim, "file"), false, 0o600, 0},
		{filepath.Join(dir, "sentinel"), false, 0o644, 0},
	} {
		if e.dir {
			err = os.Mkdir(e.path, e.mode)
		} else {
			err = os.WriteFile(e.path, []byte("sentinel "+e.path), e.mode)
		}
		if err == nil {
			err = os.Chmod(e.path, e.mode)
		}
		if err == nil {
			err = os.Lchown(e.path, e.uid, e.uid)
		}
		if err != nil {
			t.Fatal(err)
		}
		// Best effort: some file systems take no user xattrs.
		_ = unix.Lsetxattr(e.path, "user.berth-sentinel", []byte("yes"), 0)
	}
	for _, p := range []string{filepath.Join(s.Victim, "inner"), filepath.Join(s.Victim, "file"), s.Victim, filepath.Join(dir, "sentinel"), dir} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	if s.before, err = s.snapshot(); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *Sentinel) snapshot() (map[string]entryState, error) {
	out := map[string]entryState{}
	err := filepath.WalkDir(s.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		e := entryState{
			mode: st.Mode, uid: st.Uid, gid: st.Gid, size: st.Size,
			mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(), xattrs: xattrsOf(p),
		}
		if st.Mode&syscall.S_IFMT == syscall.S_IFREG {
			// O_NOFOLLOW|O_NONBLOCK: never follow or block on what an
			// attack may have put there.
			if f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0); err == nil {
				h := sha256.New()
				buf := make([]byte, 1<<16)
				for {
					n, err := f.Read(buf)
					h.Write(buf[:n])
					if err != nil {
						break
					}
				}
				f.Close()
				e.digest = fmt.Sprintf("%x", h.Sum(nil))
			}
		}
		out[p] = e
		return nil
	})
	return out, err
}

func xattrsOf(p string) string {
	size, err := unix.Llistxattr(p, nil)
	if err != nil || size <= 0 {
		return ""
	}
	buf := make([]byte, size)
	if size, err = unix.Llistxattr(p, buf); err != nil {
		return ""
	}
	names := strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00")
	slices.Sort(names)
	var b strings.Builder
	for _, n := range names {
		val := make([]byte, 256)
		k, _ := unix.Lgetxattr(p, n, val)
		fmt.Fprintf(&b, "%s=%q;", n, val[:max(k, 0)])
	}
	return b.String()
}

// Changes lists every difference from how the tree was made; none means
// nothing reached it.
func (s *Sentinel) Changes() []string {
	after, err := s.snapshot()
	if err != nil {
		return []string{fmt.Sprintf("walk the sentinel tree: %v", err)}
	}
	var diffs []string
	for p, b := range s.before {
		a, ok := after[p]
		switch {
		case !ok:
			diffs = append(diffs, p+": removed")
		case a != b:
			diffs = append(diffs, fmt.Sprintf("%s: was mode %o owner %d:%d mtime %d ctime %d xattrs %s, now mode %o owner %d:%d mtime %d ctime %d xattrs %s (content same: %v)",
				p, b.mode, b.uid, b.gid, b.mtime, b.ctime, b.xattrs, a.mode, a.uid, a.gid, a.mtime, a.ctime, a.xattrs, a.digest == b.digest))
		}
	}
	for p := range after {
		if _, ok := s.before[p]; !ok {
			diffs = append(diffs, p+": created")
		}
	}
	slices.Sort(diffs)
	return diffs
}

// Check fails the test if anything in the tree changed.
func (s *Sentinel) Check(t interface {
	Helper()
	Errorf(string, ...any)
}) {
	t.Helper()
	for _, d := range s.Changes() {
		t.Errorf("host directory outside the store changed: %s", d)
	}
}
