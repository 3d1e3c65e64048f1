package lazy_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/image/lazy"
	"github.com/berth-runtime/berth/internal/testutil"
)

func requireFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE and overlay needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no /dev/fuse on this host: %v", err)
	}
}

var mountFiles = append(slices.Clone(files),
	testutil.File{Path: "bin/", Type: '5'},
	testutil.File{Path: "bin/su", Content: "#!/bin/sh\n", Mode: 04755},
	testutil.File{Path: "home/", Type: '5'},
	testutil.File{Path: "home/user/", Type: '5', Mode: 0o700, UID: 1000, GID: 1000},
	testutil.File{Path: "home/user/notes", Content: "mine\n", Mode: 0o600, UID: 1000, GID: 1000,
		Xattrs: map[string]string{"user.origin": "test"}},
	testutil.File{Path: "dev/", Type: '5'},
	testutil.File{Path: "dev/null", Type: '3', Major: 1, Minor: 3, Mode: 0o666},
	testutil.File{Path: "dev/pipe", Type: '6', Mode: 0o600},
	// A hard link to a directory, which no tar tool writes: left out,
	// or "find" would loop.
	testutil.File{Path: "home/loop", Type: '1', Linkname: "home"},
)

// A layer mounted over FUSE is the image's files as the kernel sees any
// other directory: contents, modes, owners, links, devices, extended
// attributes; and the lower directory of an overlay.
func TestMountLayer(t *testing.T) {
	requireFUSE(t)
	rl := pushLayer(t, mountFiles)
	l := rl.open(t, 2*time.Second)
	dir := filepath.Join(t.TempDir(), "layer")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := lazy.MountLayer(dir, l, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			t.Errorf("clean-up: %v", err)
		}
	})

	if b, err := os.ReadFile(filepath.Join(dir, "data/big")); err != nil || string(b) != files[3].Content {
		t.Errorf("data/big through FUSE: %d bytes, %v", len(b), err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "etc/hello")); err != nil || string(b) != files[1].Content {
		t.Errorf("etc/hello: %q, %v", b, err)
	}
	names := func(d string) []string {
		ents, err := os.ReadDir(filepath.Join(dir, d))
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range ents {
			out = append(out, e.Name())
		}
		return out
	}
	if got := names(""); !slices.Equal(got, []string{"bin", "data", "dev", "empty", "etc", "home"}) {
		t.Errorf("root: %v", got)
	}
	if got := names("home"); !slices.Equal(got, []string{"user"}) {
		t.Errorf("home: %v", got)
	}
	stat := func(p string) *syscall.Stat_t {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dir, p), &st); err != nil {
			t.Fatal(err)
		}
		return &st
	}
	checks := []struct {
		path     string
		mode     uint32
		uid, gid uint32
	}{
		{"bin/su", syscall.S_IFREG | syscall.S_ISUID | 0o755, 0, 0},
		{"home/user", syscall.S_IFDIR | 0o700, 1000, 1000},
		{"home/user/notes", syscall.S_IFREG | 0o600, 1000, 1000},
		{"dev/null", syscall.S_IFCHR | 0o666, 0, 0},
		{"dev/pipe", syscall.S_IFIFO | 0o600, 0, 0},
		{"data/link", syscall.S_IFLNK | 0o777, 0, 0},
	}
	for _, c := range checks {
		st := stat(c.path)
		if st.Mode != c.mode || st.Uid != c.uid || st.Gid != c.gid {
			t.Errorf("%s: mode %o uid %d gid %d; want %o %d %d", c.path, st.Mode, st.Uid, st.Gid, c.mode, c.uid, c.gid)
		}
	}
	if st := stat("dev/null"); unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
		t.Errorf("dev/null: device %d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	if big, hard := stat("data/big"), stat("data/hard"); big.Ino != hard.Ino || big.Nlink != 2 {
		t.Errorf("data/hard: inode %d, data/big %d with %d links", hard.Ino, big.Ino, big.Nlink)
	}
	if target, err := os.Readlink(filepath.Join(dir, "data/link")); err != nil || target != "big" {
		t.Errorf("data/link -> %q, %v", target, err)
	}
	buf := make([]byte, 64)
	if n, err := unix.Lgetxattr(filepath.Join(dir, "home/user/notes"), "user.origin", buf); err != nil || string(buf[:n]) != "test" {
		t.Errorf("xattr user.origin: %q, %v", buf[:n], err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/new"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write into the layer: %v; want EROFS", err)
	}

	// The lower directory of an overlay, as a root filesystem's layer is.
	ov := t.TempDir()
	upper, work, merged := filepath.Join(ov, "upper"), filepath.Join(ov, "work"), filepath.Join(ov, "merged")
	for _, d := range []string{upper, work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("overlay", merged, "overlay", 0, "lowerdir="+dir+",upperdir="+upper+",workdir="+work); err != nil {
		t.Fatalf("overlay over the FUSE layer: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(merged, unix.MNT_DETACH) })
	if b, err := os.ReadFile(filepath.Join(merged, "etc/hello")); err != nil || string(b) != files[1].Content {
		t.Errorf("etc/hello through the overlay: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(merged, "etc/hello"), []byte("changed\n"), 0o644); err != nil {
		t.Errorf("copy-up from the FUSE layer: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(upper, "etc/hello")); string(b) != "changed\n" {
		t.Errorf("the upper layer has %q", b)
	}
	if err := unix.Unmount(merged, 0); err != nil {
		t.Errorf("unmount the overlay: %v", err)
	}

	// A registry that stops answering: a read of what is not fetched
	// yet fails with EIO after the fetch timeout, never hangs.
	rl.proxy.mu.Lock()
	rl.proxy.stall = make(chan struct{})
	rl.proxy.mu.Unlock()
	defer func() {
		rl.proxy.mu.Lock()
		close(rl.proxy.stall)
		rl.proxy.stall = nil
		rl.proxy.mu.Unlock()
	}()
	if _, err := os.ReadFile(filepath.Join(dir, "bin/su")); !errors.Is(err, syscall.EIO) {
		t.Errorf("read from a registry that does not answer: %v; want EIO", err)
	}
}

// adoptHelperEnv names the blob file and TOC digest a TestAdopt child
// serves; its fd 3 is a socket to the test.
const adoptHelperEnv = "BERTH_LAZY_ADOPT_HELPER"

// TestAdoptHelperProcess is TestAdopt's first server, in a process of its
// own that the test kills: it mounts the layer at the directory named in
// its environment, sends the test a duplicate of the connection and its
// INIT, and once the test writes a byte, blocks every fetch (writing a
// byte back at the first), as a server that dies in the middle of one.
func TestAdoptHelperProcess(t *testing.T) {
	spec := os.Getenv(adoptHelperEnv)
	if spec == "" {
		t.Skip("the child of TestAdopt")
	}
	parts := strings.Split(spec, ",")
	blob, err := os.ReadFile(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	sock := os.NewFile(3, "sock")
	var blocking atomic.Bool
	var once sync.Once
	f := &memFetcher{blob: func(off, n int64) []byte {
		if blocking.Load() {
			once.Do(func() { _, _ = sock.Write([]byte{1}) })
			select {}
		}
		return blob[off : off+n]
	}}
	l, err := lazy.Open(context.Background(), f, int64(len(blob)), digest.Digest(parts[2]))
	if err != nil {
		t.Fatal(err)
	}
	m, err := lazy.MountLayer(parts[0], l, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	dev, init := m.Dev()
	if err := unix.Sendmsg(3, init, unix.UnixRights(int(dev.Fd())), nil, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := sock.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	blocking.Store(true)
	// Armed: only now may the test read, or its read could be served
	// before the fetches block.
	if _, err := sock.Write([]byte{2}); err != nil {
		t.Fatal(err)
	}
	select {}
}

// A server killed while it fetches a chunk for a reader: the connection,
// kept by a duplicate of its descriptor, is adopted by another server,
// which answers the kernel's node IDs and the read the dead one had taken.
// The files already open, the names already looked up and the waiting
// reader all go on as if nothing had happened.
func TestAdopt(t *testing.T) {
	requireFUSE(t)
	blob, toc := buildBlob(t, mountFiles)
	tmp := t.TempDir()
	blobFile := filepath.Join(tmp, "blob")
	if err := os.WriteFile(blobFile, blob, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(tmp, "layer")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours, theirs := os.NewFile(uintptr(pair[0]), "sock"), os.NewFile(uintptr(pair[1]), "sock")
	defer ours.Close()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	child := exec.Command(exe, "-test.run=^TestAdoptHelperProcess$")
	child.Env = append(os.Environ(), adoptHelperEnv+"="+dir+","+blobFile+","+toc.String())
	child.ExtraFiles = []*os.File{theirs}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = child.Process.Kill()
			_ = child.Wait()
		}
		_ = unix.Unmount(dir, unix.MNT_DETACH)
	})
	init := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(pair[0], init, oob, 0)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("no descriptor from the child: %v", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("no descriptor from the child: %v", err)
	}
	dev := os.NewFile(uintptr(fds[0]), "/dev/fuse")
	defer dev.Close()
	init = init[:n]

	// Before the crash: a name looked up, a file open, a chunk read.
	if b, err := os.ReadFile(filepath.Join(dir, "etc/hello")); err != nil || string(b) != files[1].Content {
		t.Fatalf("etc/hello: %q, %v", b, err)
	}
	big, err := os.Open(filepath.Join(dir, "data/big"))
	if err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	// The child now blocks its fetches; a read of data/big waits in it.
	if _, err := ours.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	if _, err := ours.Read(make([]byte, 1)); err != nil {
		t.Fatalf("the child did not block its fetches: %v", err)
	}
	type result struct {
		b   []byte
		err error
	}
	read := make(chan result, 1)
	go func() {
		b := make([]byte, 100)
		n, err := big.ReadAt(b, 3*chunkSize)
		read <- result{b[:n], err}
	}()
	if _, err := ours.Read(make([]byte, 1)); err != nil {
		t.Fatalf("the child took no fetch: %v", err)
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	killed = true

	m := &memFetcher{blob: func(off, n int64) []byte { return blob[off : off+n] }}
	l, err := lazy.Open(context.Background(), m, int64(len(blob)), toc)
	if err != nil {
		t.Fatal(err)
	}
	adopted, err := lazy.Adopt(dir, dev, init, l, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := adopted.Unmount(); err != nil {
			t.Errorf("clean-up: %v", err)
		}
	})
	select {
	case r := <-read:
		if want := files[3].Content[3*chunkSize : 3*chunkSize+100]; r.err != nil || string(r.b) != want {
			t.Errorf("the read the dead server had taken: %q, %v", r.b, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the read the dead server had taken is not answered after 30 s")
	}
	big.Close()
	if b, err := os.ReadFile(filepath.Join(dir, "data/hard")); err != nil || string(b) != files[3].Content {
		t.Errorf("data/hard after the adoption: %d bytes, %v", len(b), err)
	}
	ents, err := os.ReadDir(filepath.Join(dir, "home/user"))
	if err != nil || len(ents) != 1 || ents[0].Name() != "notes" {
		t.Errorf("home/user after the adoption: %v, %v", ents, err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, "etc/hello"), &st); err != nil || st.Size != int64(len(files[1].Content)) {
		t.Errorf("etc/hello after the adoption: %d bytes, %v", st.Size, err)
	}
}
