package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The OCI layer's whiteout names.
const (
	whiteoutPrefix    = ".wh."
	whiteoutOpaqueDir = ".wh..wh..opq"
)

// RootfsDiff writes what a container changed in its image (its writable
// layer) to w as a tar in an OCI layer's form: an overlay whiteout
// becomes a .wh. entry, an opaque directory a .wh..wh..opq entry. It
// returns the paths the container deleted, which CRI-O's checkpoints
// list in deleted.files. The container may be running: the walk stays
// inside the layer (os.Root), and what changes under it is skipped.
func (s *Store) RootfsDiff(id string, w io.Writer) (deleted []string, err error) {
	if err := validRootfsID(id); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(s.rootfsDir(id, "upper"))
	if err != nil {
		return nil, fmt.Errorf("root filesystem %s: %w", id, err)
	}
	defer root.Close()
	tw := tar.NewWriter(w)
	err = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == "." {
				return err
			}
			return nil
		}
		if p == "." {
			return nil
		}
		gone, err := writeDiffEntry(tw, root, p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed while walked
		}
		if gone {
			deleted = append(deleted, "/"+p)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("root filesystem %s: diff: %w", id, err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("root filesystem %s: diff: %w", id, err)
	}
	return deleted, nil
}

// writeDiffEntry writes the entry p of an overlay upper directory; gone
// says it was a whiteout.
func writeDiffEntry(tw *tar.Writer, root *os.Root, p string) (gone bool, err error) {
	fi, err := root.Lstat(p)
	if err != nil {
		return false, err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&fs.ModeCharDevice != 0 && st != nil && st.Rdev == 0 {
		dir, name := path.Split(p)
		return true, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: dir + whiteoutPrefix + name, Mode: 0o600, Format: tar.FormatPAX})
	}
	var link string
	switch {
	case fi.Mode()&fs.ModeSocket != 0:
		return false, nil // a socket is recreated by whoever listens
	case fi.Mode()&fs.ModeSymlink != 0:
		if link, err = root.Readlink(p); err != nil {
			return false, err
		}
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return false, err
	}
	hdr.Name, hdr.Uname, hdr.Gname, hdr.Format = p, "", "", tar.FormatPAX
	switch {
	case fi.IsDir():
		hdr.Name += "/"
		if err := tw.WriteHeader(hdr); err != nil {
			return false, err
		}
		d, err := root.Open(p)
		if err != nil {
			return false, err
		}
		opaque := isOpaque(int(d.Fd()))
		d.Close()
		if !opaque {
			return false, nil
		}
		return false, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: p + "/" + whiteoutOpaqueDir, Mode: 0o600, Format: tar.FormatPAX})
	case fi.Mode().IsRegular():
		f, err := root.Open(p)
		if err != nil {
			return false, err
		}
		defer f.Close()
		if err := tw.WriteHeader(hdr); err != nil {
			return false, err
		}
		// A file the container shortens meanwhile is padded: the
		// header's size was promised.
		n, err := io.CopyN(tw, f, hdr.Size)
		if err == io.EOF {
			_, err = io.CopyN(tw, zeros{}, hdr.Size-n)
		}
		return false, err
	}
	return false, tw.WriteHeader(hdr)
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) { clear(b); return len(b), nil }

// ApplyRootfsDiff applies a container's changes, as RootfsDiff writes
// them (or as CRI-O's checkpoints carry them: no whiteouts, and deleted
// listing what was removed), to the mounted root filesystem of the
// container id. Every path stays inside that root filesystem.
func (s *Store) ApplyRootfsDiff(id string, diff io.Reader, deleted []string) error {
	if err := validRootfsID(id); err != nil {
		return err
	}
	root, err := os.OpenRoot(s.rootfsDir(id, "merged"))
	if err != nil {
		return fmt.Errorf("root filesystem %s: %w", id, err)
	}
	defer root.Close()
	if err := ExtractTar(root, diff); err != nil {
		return fmt.Errorf("root filesystem %s: apply diff: %w", id, err)
	}
	for _, p := range deleted {
		if err := root.RemoveAll(relPath(p)); err != nil {
			return fmt.Errorf("root filesystem %s: delete %s: %w", id, p, err)
		}
	}
	return nil
}

// ExtractTar writes a tar's entries under root, with OCI whiteouts
// applied as deletions: a hostile entry (an absolute name, "..", a path
// through a symlink out of root) fails inside os.Root, never on the host.
func ExtractTar(root *os.Root, r io.Reader) error { return extractTar(root, r, false) }

// ExtractFiles is ExtractTar for a tar of plain files and directories
// (a checkpoint archive, whose files CRIU reads without os.Root): any
// other entry is refused.
func ExtractFiles(root *os.Root, r io.Reader) error { return extractTar(root, r, true) }

func extractTar(root *os.Root, r io.Reader, plain bool) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if plain && h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeDir {
			return fmt.Errorf("%s: a %q entry where only files and directories belong", h.Name, h.Typeflag)
		}
		if err := extractEntry(root, tr, h); err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
	}
}

func extractEntry(root *os.Root, r io.Reader, h *tar.Header) error {
	name := relPath(h.Name)
	if name == "." {
		return nil
	}
	dir, base := path.Split(name)
	if dir == "" {
		dir = "."
	}
	if base == whiteoutOpaqueDir {
		return clearDir(root, dir)
	}
	if rest, ok := strings.CutPrefix(base, whiteoutPrefix); ok {
		return root.RemoveAll(path.Join(dir, rest))
	}
	if err := root.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	mode := os.FileMode(h.Mode) & os.ModePerm
	if h.Typeflag != tar.TypeDir {
		if err := root.RemoveAll(name); err != nil {
			return err
		}
	}
	switch h.Typeflag {
	case tar.TypeDir:
		err := root.Mkdir(name, mode)
		if errors.Is(err, fs.ErrExist) {
			if fi, serr := root.Lstat(name); serr == nil && !fi.IsDir() {
				if err = root.Remove(name); err == nil {
					err = root.Mkdir(name, mode)
				}
			} else {
				err = serr
			}
		}
		if err != nil {
			return err
		}
	case tar.TypeReg:
		f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, r)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	case tar.TypeSymlink:
		return withOwner(root.Symlink(h.Linkname, name), root, name, h, false)
	case tar.TypeLink:
		return root.Link(relPath(h.Linkname), name)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		d, err := root.Open(dir)
		if err != nil {
			return err
		}
		kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[h.Typeflag]
		err = unix.Mknodat(int(d.Fd()), base, kind|uint32(mode), int(unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))))
		d.Close()
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("unsupported tar entry type %q", h.Typeflag)
	}
	return withOwner(nil, root, name, h, true)
}

// withOwner gives name the entry's owner (and, for a non-symlink, its
// mode bits beyond the umask).
func withOwner(err error, root *os.Root, name string, h *tar.Header, chmod bool) error {
	if err != nil {
		return err
	}
	if err := root.Lchown(name, h.Uid, h.Gid); err != nil {
		return err
	}
	if chmod {
		return root.Chmod(name, os.FileMode(h.Mode)&os.ModePerm|tarSpecialBits(h.Mode))
	}
	return nil
}

func tarSpecialBits(m int64) os.FileMode {
	var out os.FileMode
	if m&0o4000 != 0 {
		out |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		out |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		out |= os.ModeSticky
	}
	return out
}

// clearDir empties dir: an opaque directory hides what was below.
func clearDir(root *os.Root, dir string) error {
	d, err := root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := root.RemoveAll(path.Join(dir, n)); err != nil {
			return err
		}
	}
	return nil
}

// relPath is a tar entry's or a listed path's name relative to its root:
// cleaned from "/", ".." cannot climb out of it (os.Root refuses the rest).
func relPath(p string) string {
	if rel := path.Clean("/" + p)[1:]; rel != "" {
		return rel
	}
	return "."
}
