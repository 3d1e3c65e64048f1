// Package powercut is a disk whose power a test can cut: a file served
// over FUSE, behind a loop device, that keeps every write since the last
// flush in a volatile cache, as a disk's write cache does. A flush (the
// loop device's REQ_PREFLUSH, which reaches the file as fsync) makes them
// durable; a cut loses them, all or all but a prefix in write order, as
// dm-log-writes replayed to a mark does. This kernel has no device-mapper
// (no dm-flakey, no dm-log-writes) and no nbd or ublk; it has loop and
// FUSE, and these two give the same fault.
package powercut

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const pageSize = 4096

// write is one write since the last flush, in order.
type write struct {
	off  int64
	data []byte
}

// Disk is the volatile disk: durable content in a sparse file of the
// host, the writes since the last flush in memory.
type Disk struct {
	size    int64
	durable *os.File
	path    string

	mu sync.Mutex
	// pages is the current content of the pages written since the last
	// flush; log the writes themselves, in order.
	pages map[int64][]byte
	log   []write
	// off: the power is cut, writes and flushes go nowhere.
	off bool
	// Written and Flushes count what reached the disk since New.
	written, flushes int64
}

// New serves a disk of size bytes (a sparse file in dir) at dir/fuse/disk;
// the test's clean-up unmounts it.
func New(t testing.TB, dir string, size int64) *Disk {
	t.Helper()
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("no %s on this host (%v): a disk whose power the test cuts needs FUSE and loop devices", dev, err)
		}
	}
	durable, err := os.Create(filepath.Join(dir, "durable"))
	if err != nil {
		t.Fatal(err)
	}
	if err := durable.Truncate(size); err != nil {
		t.Fatal(err)
	}
	d := &Disk{size: size, durable: durable, pages: map[int64][]byte{}}
	mnt := filepath.Join(dir, "fuse")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	root := &rootNode{disk: d}
	// DirectMount: mount(2) as root, no fusermount binary needed.
	server, err := fs.Mount(mnt, root, &fs.Options{MountOptions: fuse.MountOptions{
		DirectMount: true, FsName: "berth-powercut", Name: "powercut", MaxWrite: 1 << 20,
	}})
	if err != nil {
		t.Fatalf("FUSE mount: %v", err)
	}
	d.path = filepath.Join(mnt, "disk")
	t.Cleanup(func() {
		if err := server.Unmount(); err != nil {
			t.Errorf("powercut: FUSE unmount: %v", err)
			_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
		durable.Close()
	})
	return d
}

// Path is the disk's file, for losetup.
func (d *Disk) Path() string { return d.path }

// Written is how many bytes were written to the disk so far, flushed or
// not.
func (d *Disk) Written() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.written
}

// Flushes is how many flushes reached the disk.
func (d *Disk) Flushes() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.flushes
}

// Cut cuts the power: of the writes since the last flush, the first
// keep reach the disk (keep < 0: a random number of them, from rng),
// the others are lost, and nothing written until Restore lands. It
// returns how many writes were pending and how many were kept.
func (d *Disk) Cut(keep int, rng *rand.Rand) (pending, kept int, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	pending = len(d.log)
	if keep < 0 {
		keep = rng.IntN(pending + 1)
	}
	keep = min(keep, pending)
	for _, w := range d.log[:keep] {
		if _, err := d.durable.WriteAt(w.data, w.off); err != nil {
			return pending, keep, err
		}
	}
	d.log, d.pages, d.off = nil, map[int64][]byte{}, true
	return pending, keep, nil
}

// Restore turns the power back on: the disk holds what was durable at the
// cut.
func (d *Disk) Restore() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.off = false
}

func (d *Disk) readAt(dest []byte, off int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := d.durable.ReadAt(dest, off); err != nil {
		return err
	}
	for p := off / pageSize * pageSize; p < off+int64(len(dest)); p += pageSize {
		page, ok := d.pages[p]
		if !ok {
			continue
		}
		lo, hi := max(p, off), min(p+pageSize, off+int64(len(dest)))
		copy(dest[lo-off:hi-off], page[lo-p:hi-p])
	}
	return nil
}

func (d *Disk) writeAt(data []byte, off int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.off {
		return nil
	}
	d.written += int64(len(data))
	d.log = append(d.log, write{off: off, data: append([]byte(nil), data...)})
	for p := off / pageSize * pageSize; p < off+int64(len(data)); p += pageSize {
		page, ok := d.pages[p]
		if !ok {
			page = make([]byte, pageSize)
			if _, err := d.durable.ReadAt(page, p); err != nil {
				return err
			}
			d.pages[p] = page
		}
		lo, hi := max(p, off), min(p+pageSize, off+int64(len(data)))
		copy(page[lo-p:hi-p], data[lo-off:hi-off])
	}
	return nil
}

// flush makes every write so far durable.
func (d *Disk) flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.off {
		return nil
	}
	d.flushes++
	for p, page := range d.pages {
		if _, err := d.durable.WriteAt(page, p); err != nil {
			return err
		}
	}
	d.log, d.pages = nil, map[int64][]byte{}
	return nil
}

type rootNode struct {
	fs.Inode
	disk *Disk
}

var _ fs.NodeOnAdder = (*rootNode)(nil)

func (r *rootNode) OnAdd(ctx context.Context) {
	ch := r.NewPersistentInode(ctx, &diskNode{disk: r.disk}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
	r.AddChild("disk", ch, false)
}

type diskNode struct {
	fs.Inode
	disk *Disk
}

var (
	_ fs.NodeOpener    = (*diskNode)(nil)
	_ fs.NodeReader    = (*diskNode)(nil)
	_ fs.NodeWriter    = (*diskNode)(nil)
	_ fs.NodeFsyncer   = (*diskNode)(nil)
	_ fs.NodeGetattrer = (*diskNode)(nil)
)

// Open opens the disk for direct I/O: no page cache of the file in the
// kernel, which would keep what a cut lost.
func (n *diskNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (n *diskNode) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= n.disk.size {
		return fuse.ReadResultData(nil), 0
	}
	dest = dest[:min(int64(len(dest)), n.disk.size-off)]
	if err := n.disk.readAt(dest, off); err != nil {
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest), 0
}

func (n *diskNode) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if off+int64(len(data)) > n.disk.size {
		return 0, syscall.ENOSPC
	}
	if err := n.disk.writeAt(data, off); err != nil {
		return 0, syscall.EIO
	}
	return uint32(len(data)), 0
}

func (n *diskNode) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if err := n.disk.flush(); err != nil {
		return syscall.EIO
	}
	return 0
}

func (n *diskNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o600
	out.Size = uint64(n.disk.size)
	out.Blocks = uint64(n.disk.size / 512)
	return 0
}

// Device is the disk behind a loop device, with an ext4 file system of
// its own mounted at Dir.
type Device struct {
	disk *Disk
	Loop string
	Dir  string
}

// Format attaches the disk to a loop device, makes an ext4 file system on
// it and mounts it at dir; the test's clean-up unmounts and detaches it.
func Format(t testing.TB, disk *Disk, dir string) *Device {
	t.Helper()
	dev := &Device{disk: disk, Dir: dir}
	t.Cleanup(dev.release)
	dev.attach(t)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", dev.Loop).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	dev.mount(t)
	return dev
}

func (dev *Device) attach(t testing.TB) {
	t.Helper()
	out, err := exec.Command("losetup", "--find", "--show", dev.disk.Path()).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev.Loop = strings.TrimSpace(string(out))
}

func (dev *Device) mount(t testing.TB) {
	t.Helper()
	if err := os.MkdirAll(dev.Dir, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(dev.Loop, dev.Dir, "ext4", 0, ""); err != nil {
		t.Fatalf("mount %s: %v", dev.Loop, err)
	}
}

// release unmounts and detaches, whatever is still there.
func (dev *Device) release() {
	if dev.Dir != "" {
		if err := syscall.Unmount(dev.Dir, 0); err != nil && err != syscall.EINVAL {
			_ = syscall.Unmount(dev.Dir, syscall.MNT_DETACH)
		}
	}
	if dev.Loop != "" {
		_ = exec.Command("losetup", "--detach", dev.Loop).Run()
		dev.Loop = ""
	}
}

// Reboot does what a reboot after a cut (Disk.Cut) does: the file system
// is gone from the host and is mounted again from what the disk kept, its
// journal replayed. Whoever wrote to it must have stopped first (a
// process killed holds no mount).
func (dev *Device) Reboot(t testing.TB) {
	t.Helper()
	// Unmounting writes back what the cache holds: to nowhere now.
	if err := syscall.Unmount(dev.Dir, 0); err != nil {
		t.Fatalf("unmount %s after the cut: %v", dev.Dir, err)
	}
	if out, err := exec.Command("losetup", "--detach", dev.Loop).CombinedOutput(); err != nil {
		t.Fatalf("losetup --detach: %v: %s", err, out)
	}
	dev.Loop = ""
	dev.disk.Restore()
	dev.attach(t)
	dev.mount(t)
}
