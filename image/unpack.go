package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd/containerd/v2/pkg/archive"
	"golang.org/x/sys/unix"
)

// unpackResult describes an unpacked layer.
type unpackResult struct {
	size   int64 // bytes of file content
	inodes int64 // tar entries written
	// implied are directories the tar creates only as parents of its
	// entries: they take their metadata from the layers below once those
	// are known (fixImpliedDirs).
	implied []string
}

// unpackOptions are the policies an unpack enforces.
type unpackOptions struct {
	denyDevices bool
}

// unpack applies the layer tar r to dir, an empty directory, in overlayfs
// form: whiteouts become 0:0 character devices and opaque directories get
// trusted.overlay.opaque=y. containerd's archive package resolves every
// path inside dir (no "..", absolute path, symlink or hardlink reaches
// outside it), and nothing else writes to dir meanwhile, so no race can
// redirect a write.
func unpack(ctx context.Context, dir string, r io.Reader, o unpackOptions) (*unpackResult, error) {
	res := &unpackResult{}
	explicit := map[string]bool{}
	parents := map[string]bool{}
	filter := func(hdr *tar.Header) (bool, error) {
		name := path.Clean("/" + hdr.Name)
		switch hdr.Typeflag {
		case tar.TypeChar, tar.TypeBlock:
			if o.denyDevices {
				return false, fmt.Errorf("layer contains device node %s, and device nodes are not allowed in images", name)
			}
		case tar.TypeXGlobalHeader:
			return false, nil
		}
		res.inodes++
		if hdr.Typeflag == tar.TypeDir {
			explicit[name] = true
		}
		for p := path.Dir(name); p != "/" && p != "."; p = path.Dir(p) {
			if parents[p] {
				break
			}
			parents[p] = true
		}
		return true, nil
	}
	n, err := archive.Apply(ctx, dir, r,
		archive.WithConvertWhiteout(archive.OverlayConvertWhiteout),
		archive.WithFilter(filter))
	if err != nil {
		return nil, err
	}
	res.size = n
	for p := range parents {
		if !explicit[p] {
			res.implied = append(res.implied, p)
		}
	}
	// Parents first, so that a child's fix never runs before its parent's.
	sort.Strings(res.implied)
	return res, nil
}

// fixImpliedDirs gives directories that a layer created only as parents
// the owner, mode, times and extended attributes of the same directory
// in the nearest lower layer (lowers: top first). In an overlay the upper
// directory's metadata wins, so a default root:0755 would silently
// replace, say, a user's 0700 home directory. containerd does the same
// when it unpacks onto its parent layers.
func fixImpliedDirs(dir string, implied []string, lowers []string) error {
	for _, p := range implied {
		target := filepath.Join(dir, p)
		if fi, err := os.Lstat(target); err != nil || !fi.IsDir() {
			continue
		}
		for _, lower := range lowers {
			src := filepath.Join(lower, p)
			fi, err := os.Lstat(src)
			if errors.Is(err, os.ErrNotExist) {
				if whitedOut(lower, p) {
					break
				}
				continue
			}
			if err != nil {
				return err
			}
			if fi.IsDir() {
				if err := copyDirMetadata(src, target); err != nil {
					return fmt.Errorf("directory %s: %w", p, err)
				}
			}
			break
		}
	}
	return nil
}

// whitedOut reports whether a lower layer hides p or one of its parents
// (a 0:0 character device in its place, or an opaque directory above it).
func whitedOut(layer, p string) bool {
	for q := p; q != "/" && q != "."; q = path.Dir(q) {
		var st unix.Stat_t
		if unix.Lstat(filepath.Join(layer, q), &st) == nil {
			if st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0 {
				return true
			}
			if q != p && isOpaque(filepath.Join(layer, q)) {
				return true
			}
		}
	}
	return false
}

func isOpaque(dir string) bool {
	buf := make([]byte, 1)
	n, err := unix.Lgetxattr(dir, "trusted.overlay.opaque", buf)
	return err == nil && n == 1 && buf[0] == 'y'
}

func copyDirMetadata(src, dst string) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return err
	}
	if err := unix.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if err := unix.Chmod(dst, st.Mode&07777); err != nil {
		return err
	}
	if err := copyXattrs(src, dst); err != nil {
		return err
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	return unix.UtimesNanoAt(unix.AT_FDCWD, dst, ts, unix.AT_SYMLINK_NOFOLLOW)
}

func copyXattrs(src, dst string) error {
	size, err := unix.Llistxattr(src, nil)
	if err != nil || size == 0 {
		return nil
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(src, buf)
	if err != nil {
		return nil
	}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		// Overlay's own attributes describe that layer, not the directory.
		if name == "" || strings.HasPrefix(name, "trusted.overlay.") {
			continue
		}
		n, err := unix.Lgetxattr(src, name, nil)
		if err != nil {
			continue
		}
		val := make([]byte, n)
		if n, err = unix.Lgetxattr(src, name, val); err != nil {
			continue
		}
		if err := unix.Lsetxattr(dst, name, val[:n], 0); err != nil {
			return err
		}
	}
	return nil
}
