package lazy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Mount is a Layer served read-only over FUSE at a directory: the lower
// directory of an overlay while the layer is not on disk yet.
type Mount struct {
	Dir    string
	server *fuse.Server
}

// attrTimeout is how long the kernel may cache names and attributes: the
// layer never changes.
const attrTimeout = time.Hour

// MountLayer serves l at dir, an existing empty directory, until Unmount.
// Every entry of the TOC is there with its mode, owner, size, times,
// device numbers, link target and extended attributes; a file's content
// is read through l, and a read that fails (the registry gone, a chunk
// that does not match its digest) fails with EIO and a log line.
func MountLayer(dir string, l *Layer, log *slog.Logger) (*Mount, error) {
	e, ok := l.Lookup("")
	if !ok {
		return nil, fmt.Errorf("mount eStargz layer at %s: %w: no root directory", dir, ErrCorrupt)
	}
	tree := &tree{l: l, log: log.With("mount", dir), root: e}
	root := &dirNode{entry{tree: tree, e: e}}
	timeout := attrTimeout
	server, err := fs.Mount(dir, root, &fs.Options{
		EntryTimeout: &timeout, AttrTimeout: &timeout, NegativeTimeout: &timeout,
		// The layer's owners and modes, checked by the kernel for every
		// user of the overlay above it.
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			DirectMount: true, AllowOther: true,
			DirectMountFlags: unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV,
			Options:          []string{"default_permissions"},
			FsName:           "berth-lazy", Name: "berth-lazy", MaxReadAhead: 1 << 20,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("mount eStargz layer at %s: %w", dir, err)
	}
	return &Mount{Dir: dir, server: server}, nil
}

// Detach unmounts the layer's directory. It fails (EBUSY) while a file
// or directory of the mount is open, but not for an overlay mounted on
// it: overlayfs holds a private clone of each lower mount, which the
// server goes on serving until the last such overlay is unmounted.
// Drained waits for that.
func (m *Mount) Detach() error {
	if err := unix.Unmount(m.Dir, 0); err != nil {
		return fmt.Errorf("unmount eStargz layer at %s: %w", m.Dir, err)
	}
	return nil
}

// Drained waits until nothing uses the detached mount any more and its
// server has ended.
func (m *Mount) Drained() {
	m.server.Wait()
}

// Unmount detaches the layer and waits for its server to end.
func (m *Mount) Unmount() error {
	if err := m.Detach(); err != nil {
		return err
	}
	m.Drained()
	return nil
}

// tree makes the inodes of a layer's entries once the root is mounted.
type tree struct {
	l    *Layer
	log  *slog.Logger
	root *estargz.TOCEntry
}

// build makes an inode for every entry the layer's Walk lists, numbered in
// its order, under the inode of the directory it is in. A hard link's
// names are one inode; a second name of a directory (a hard link to it,
// which a hostile TOC can name) is left out: it would make a cycle.
func (t *tree) build(ctx context.Context, root *fs.Inode) {
	dirs := map[string]*fs.Inode{"": root}
	links := map[*estargz.TOCEntry]*fs.Inode{t.root: root}
	ino := uint64(1) // the root's
	_ = t.l.Walk(func(name string, e *estargz.TOCEntry) error {
		if name == "" {
			return nil
		}
		parentName, base := path.Split(name)
		parent, ok := dirs[strings.TrimSuffix(parentName, "/")]
		if !ok {
			return nil // in a directory left out
		}
		if in, ok := links[e]; ok {
			if e.Type == "dir" {
				t.log.Warn("eStargz hard link to a directory left out", "name", name)
				return nil
			}
			parent.AddChild(base, in, false)
			return nil
		}
		var node fs.InodeEmbedder
		var mode uint32
		switch e.Type {
		case "dir":
			mode, node = fuse.S_IFDIR, &dirNode{entry{tree: t, e: e}}
		case "reg":
			mode, node = fuse.S_IFREG, &fileNode{entry: entry{tree: t, e: e}, name: name}
		case "symlink":
			mode, node = fuse.S_IFLNK, &linkNode{entry{tree: t, e: e}}
		case "char":
			mode, node = syscall.S_IFCHR, &specialNode{entry{tree: t, e: e}}
		case "block":
			mode, node = syscall.S_IFBLK, &specialNode{entry{tree: t, e: e}}
		case "fifo":
			mode, node = syscall.S_IFIFO, &specialNode{entry{tree: t, e: e}}
		default:
			t.log.Warn("eStargz entry of an unknown type left out", "name", name, "type", e.Type)
			return nil
		}
		ino++
		in := parent.NewPersistentInode(ctx, node, fs.StableAttr{Mode: mode, Ino: ino})
		parent.AddChild(base, in, false)
		if e.Type == "dir" {
			dirs[name] = in
		}
		if e.Type == "dir" || e.NumLink > 1 {
			links[e] = in
		}
		return nil
	})
}

// fill is an entry's attributes as the kernel sees them.
func (t *tree) fill(e *estargz.TOCEntry, out *fuse.Attr) {
	fi := e.Stat().Mode()
	out.Mode = uint32(fi.Perm())
	if fi&os.ModeSetuid != 0 {
		out.Mode |= syscall.S_ISUID
	}
	if fi&os.ModeSetgid != 0 {
		out.Mode |= syscall.S_ISGID
	}
	if fi&os.ModeSticky != 0 {
		out.Mode |= syscall.S_ISVTX
	}
	out.Uid, out.Gid = uint32(e.UID), uint32(e.GID)
	out.Size = uint64(e.Size)
	if e.Type == "symlink" {
		// As every Linux file system shows a link, whatever the tar says.
		out.Mode = 0o777
		out.Size = uint64(len(e.LinkName))
	}
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 4096
	out.Nlink = uint32(max(e.NumLink, 1))
	mt := e.ModTime()
	out.SetTimes(&mt, &mt, &mt)
	out.Rdev = uint32(unix.Mkdev(uint32(e.DevMajor), uint32(e.DevMinor)))
}

func xattr(e *estargz.TOCEntry, attr string, dest []byte) (uint32, syscall.Errno) {
	v, ok := e.Xattrs[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

func listXattr(e *estargz.TOCEntry, dest []byte) (uint32, syscall.Errno) {
	var names []string
	for k := range e.Xattrs {
		names = append(names, k)
	}
	sort.Strings(names)
	var buf []byte
	for _, k := range names {
		buf = append(append(buf, k...), 0)
	}
	if len(dest) < len(buf) {
		return uint32(len(buf)), syscall.ERANGE
	}
	return uint32(copy(dest, buf)), 0
}

// entry is what every node of the tree is: an inode of one TOC entry,
// with its attributes and extended attributes.
type entry struct {
	fs.Inode
	tree *tree
	e    *estargz.TOCEntry
}

func (n *entry) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.tree.fill(n.e, &out.Attr)
	return 0
}

func (n *entry) Getxattr(_ context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return xattr(n.e, attr, dest)
}

func (n *entry) Listxattr(_ context.Context, dest []byte) (uint32, syscall.Errno) {
	return listXattr(n.e, dest)
}

type dirNode struct{ entry }

var _ = (fs.NodeOnAdder)((*dirNode)(nil))

// OnAdd makes the whole tree when the root is mounted.
func (d *dirNode) OnAdd(ctx context.Context) {
	if d.e == d.tree.root {
		d.tree.build(ctx, d.EmbeddedInode())
	}
}

type fileNode struct {
	entry
	name string
}

func (f *fileNode) Open(_ context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	// The content never changes: the page cache may keep it.
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (f *fileNode) Read(ctx context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := f.tree.l.ReadAt(ctx, f.name, dest, off)
	// A short read is what the kernel gets before a failing chunk; the
	// failure itself is EIO on its next request.
	if err != nil && n == 0 && !errors.Is(err, io.EOF) {
		f.tree.log.Error("lazy read failed", "file", f.name, "offset", off, "error", err)
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:n]), 0
}

type linkNode struct{ entry }

func (s *linkNode) Readlink(context.Context) ([]byte, syscall.Errno) {
	return []byte(s.e.LinkName), 0
}

// specialNode is a device or a FIFO: its attributes are all it has here.
type specialNode struct{ entry }
