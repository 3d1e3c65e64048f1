package lazy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"strings"
	"syscall"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// layerFS serves a Layer's tree on go-fuse's raw protocol API. Its node
// IDs are the entries' places in the layer's Walk (the root is 1), fixed
// when it is made and the same in every process that serves the layer:
// a server adopting a connection (Adopt) answers the node IDs the kernel
// learnt from the one before it. Lookups keep no count, so FORGET has
// nothing to do.
type layerFS struct {
	fuse.RawFileSystem // ENOSYS for what a read-only tree lacks
	l                  *Layer
	log                *slog.Logger
	nodes              []node // nodes[id-1]
}

type node struct {
	e        *estargz.TOCEntry
	name     string // for Layer.ReadAt
	mode     uint32 // S_IFMT bits
	children []child
	byName   map[string]uint64
}

type child struct {
	name string
	id   uint64
}

// newLayerFS numbers every entry the layer's Walk lists, in its order,
// under the directory it is in. A hard link's names are one node; a
// second name of a directory (a hard link to it, which a hostile TOC can
// name) is left out: it would make a cycle.
func newLayerFS(l *Layer, log *slog.Logger) (*layerFS, error) {
	root, ok := l.Lookup("")
	if !ok {
		return nil, fmt.Errorf("%w: no root directory", ErrCorrupt)
	}
	f := &layerFS{RawFileSystem: fuse.NewDefaultRawFileSystem(), l: l, log: log}
	f.nodes = append(f.nodes, node{e: root, mode: fuse.S_IFDIR, byName: map[string]uint64{}})
	dirs := map[string]uint64{"": 1}
	links := map[*estargz.TOCEntry]uint64{root: 1}
	err := l.Walk(func(name string, e *estargz.TOCEntry) error {
		if name == "" {
			return nil
		}
		parentName, base := path.Split(name)
		parent, ok := dirs[strings.TrimSuffix(parentName, "/")]
		if !ok {
			return nil // in a directory left out
		}
		if id, ok := links[e]; ok {
			if e.Type == "dir" {
				log.Warn("eStargz hard link to a directory left out", "name", name)
				return nil
			}
			f.add(parent, base, id)
			return nil
		}
		var mode uint32
		switch e.Type {
		case "dir":
			mode = fuse.S_IFDIR
		case "reg":
			mode = fuse.S_IFREG
		case "symlink":
			mode = fuse.S_IFLNK
		case "char":
			mode = syscall.S_IFCHR
		case "block":
			mode = syscall.S_IFBLK
		case "fifo":
			mode = syscall.S_IFIFO
		default:
			log.Warn("eStargz entry of an unknown type left out", "name", name, "type", e.Type)
			return nil
		}
		f.nodes = append(f.nodes, node{e: e, name: name, mode: mode})
		id := uint64(len(f.nodes))
		f.add(parent, base, id)
		if e.Type == "dir" {
			f.nodes[id-1].byName = map[string]uint64{}
			dirs[name] = id
		}
		if e.Type == "dir" || e.NumLink > 1 {
			links[e] = id
		}
		return nil
	})
	return f, err
}

func (f *layerFS) add(parent uint64, name string, id uint64) {
	p := &f.nodes[parent-1]
	if _, ok := p.byName[name]; ok {
		return // a TOC naming an entry twice: the first stays
	}
	p.byName[name] = id
	p.children = append(p.children, child{name, id})
}

func (f *layerFS) node(id uint64) *node {
	if id == 0 || id > uint64(len(f.nodes)) {
		return nil
	}
	return &f.nodes[id-1]
}

func (f *layerFS) String() string { return "berth-lazy" }

// entryOut is the answer to a name's lookup, cached by the kernel for
// attrTimeout: the layer never changes.
func (f *layerFS) entryOut(id uint64, out *fuse.EntryOut) {
	n := f.node(id)
	out.NodeId = id
	f.attr(id, n, &out.Attr)
	out.SetEntryTimeout(attrTimeout)
	out.SetAttrTimeout(attrTimeout)
}

func (f *layerFS) attr(id uint64, n *node, out *fuse.Attr) {
	fill(n.e, out)
	out.Mode |= n.mode
	out.Ino = id
}

func (f *layerFS) Lookup(_ <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	p := f.node(h.NodeId)
	if p == nil {
		return fuse.ENOENT
	}
	if p.byName == nil {
		return fuse.ENOTDIR
	}
	id, ok := p.byName[name]
	if !ok {
		// A negative entry: node ID 0, cached as long as the others.
		out.SetEntryTimeout(attrTimeout)
		return fuse.OK
	}
	f.entryOut(id, out)
	return fuse.OK
}

func (f *layerFS) Forget(uint64, uint64) {}

func (f *layerFS) GetAttr(_ <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	n := f.node(in.NodeId)
	if n == nil {
		return fuse.ENOENT
	}
	f.attr(in.NodeId, n, &out.Attr)
	out.SetTimeout(attrTimeout)
	return fuse.OK
}

func (f *layerFS) Readlink(_ <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	n := f.node(h.NodeId)
	if n == nil || n.mode != fuse.S_IFLNK {
		return nil, fuse.EINVAL
	}
	return []byte(n.e.LinkName), fuse.OK
}

func (f *layerFS) GetXAttr(_ <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	n := f.node(h.NodeId)
	if n == nil {
		return 0, fuse.ENOENT
	}
	sz, errno := xattr(n.e, attr, dest)
	return sz, fuse.ToStatus(errno)
}

func (f *layerFS) ListXAttr(_ <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	n := f.node(h.NodeId)
	if n == nil {
		return 0, fuse.ENOENT
	}
	sz, errno := listXattr(n.e, dest)
	return sz, fuse.ToStatus(errno)
}

func (f *layerFS) Open(_ <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	n := f.node(in.NodeId)
	if n == nil {
		return fuse.ENOENT
	}
	if in.Flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return fuse.EROFS
	}
	// The content never changes: the page cache may keep it.
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE
	return fuse.OK
}

func (f *layerFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	n := f.node(in.NodeId)
	if n == nil || n.mode != fuse.S_IFREG {
		return nil, fuse.EINVAL
	}
	ctx := &fuse.Context{Caller: in.Caller, Cancel: cancel}
	got, err := f.l.ReadAt(context.Context(ctx), n.name, buf, int64(in.Offset))
	// A short read is what the kernel gets before a failing chunk; the
	// failure itself is EIO on its next request.
	if err != nil && got == 0 && !errors.Is(err, io.EOF) {
		f.log.Error("lazy read failed", "file", n.name, "offset", in.Offset, "error", err)
		return nil, fuse.EIO
	}
	return fuse.ReadResultData(buf[:got]), fuse.OK
}

func (f *layerFS) Release(<-chan struct{}, *fuse.ReleaseIn) {}

// Flush: ENOSYS, which the kernel remembers for the connection, so that
// closing a file of a read-only layer never waits on the server; while
// berth-lazy restarts it would wait until the connection is adopted.
func (f *layerFS) Flush(<-chan struct{}, *fuse.FlushIn) fuse.Status { return fuse.ENOSYS }

func (f *layerFS) OpenDir(_ <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	n := f.node(in.NodeId)
	if n == nil {
		return fuse.ENOENT
	}
	if n.byName == nil {
		return fuse.ENOTDIR
	}
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_CACHE_DIR
	return fuse.OK
}

func (f *layerFS) ReleaseDir(*fuse.ReleaseIn) {}

func (f *layerFS) ReadDir(_ <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return f.readDir(in, out, false)
}

func (f *layerFS) ReadDirPlus(_ <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return f.readDir(in, out, true)
}

// readDir lists ".", ".." and the children in their order; an entry's
// offset is its place in that list plus one, so a listing goes on from
// any offset without state of the open directory.
func (f *layerFS) readDir(in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) fuse.Status {
	n := f.node(in.NodeId)
	if n == nil || n.byName == nil {
		return fuse.ENOTDIR
	}
	for i := in.Offset; i < uint64(len(n.children))+2; i++ {
		e := fuse.DirEntry{Off: i + 1, Mode: fuse.S_IFDIR}
		var id uint64
		switch i {
		case 0:
			e.Name, e.Ino = ".", in.NodeId
		case 1:
			e.Name, e.Ino = "..", fuse.FUSE_UNKNOWN_INO
		default:
			c := n.children[i-2]
			id = c.id
			e.Name, e.Ino, e.Mode = c.name, id, f.nodes[id-1].mode
		}
		if !plus {
			if !out.AddDirEntry(e) {
				break
			}
			continue
		}
		eo := out.AddDirLookupEntry(e)
		if eo == nil {
			break
		}
		if id != 0 { // "." and ".." are not looked up
			f.entryOut(id, eo)
		}
	}
	return fuse.OK
}

func (f *layerFS) StatFs(_ <-chan struct{}, _ *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	out.Bsize, out.Frsize, out.NameLen = 4096, 4096, 255
	out.Files = uint64(len(f.nodes))
	return fuse.OK
}
