package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
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
//
// Every path here comes from the image. Each is opened below its layer
// directory without following any symlink (openat2, RESOLVE_BENEATH and
// RESOLVE_NO_SYMLINKS), and every change goes through the descriptor: a
// layer whose "a" is a symlink to /etc must not let "a/x" name the
// host's /etc/x, for reading a lower layer's metadata or for writing it.
// A path that is not a real directory inside its layer is skipped.
func fixImpliedDirs(dir string, implied []string, lowers []string) error {
	if len(implied) == 0 || len(lowers) == 0 {
		return nil
	}
	root, err := openDir(dir)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	lowerFDs := make([]int, 0, len(lowers))
	defer func() {
		for _, fd := range lowerFDs {
			unix.Close(fd)
		}
	}()
	for _, l := range lowers {
		fd, err := openDir(l)
		if err != nil {
			return err
		}
		lowerFDs = append(lowerFDs, fd)
	}
	for _, p := range implied {
		if err := fixImpliedDir(root, lowerFDs, p); err != nil {
			return fmt.Errorf("directory %s: %w", p, err)
		}
	}
	return nil
}

// fixImpliedDir copies the metadata of p from the nearest lower layer
// that has it onto p in the layer root.
func fixImpliedDir(root int, lowers []int, p string) error {
	dst, err := openDirBeneath(root, p)
	if notInLayer(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(dst)
	for _, lower := range lowers {
		src, err := openDirBeneath(lower, p)
		switch {
		case errors.Is(err, unix.ENOENT):
			if opaqueAbove(lower, p) {
				return nil
			}
			continue
		case notInLayer(err):
			// A file, whiteout or symlink in its place (or in a parent's)
			// hides p in every layer below.
			return nil
		case err != nil:
			return err
		}
		err = copyDirMetadata(src, dst)
		unix.Close(src)
		return err
	}
	return nil
}

// openDir opens a directory of berth's own (a layer directory).
func openDir(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}

// openDirBeneath opens p (slash-separated, relative to root) as a
// directory only if every component is a real directory below root: no
// "..", no symlink, no mount point on the way.
func openDirBeneath(root int, p string) (int, error) {
	rel := strings.TrimPrefix(path.Clean("/"+p), "/")
	if rel == "" {
		rel = "."
	}
	how := &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	}
	for try := 0; ; try++ {
		fd, err := unix.Openat2(root, rel, how)
		// EAGAIN: a rename elsewhere on the system raced the lookup.
		if (errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR)) && try < 1000 {
			continue
		}
		if errors.Is(err, unix.ENOSYS) {
			return -1, fmt.Errorf("open %s inside its layer: needs openat2 (Linux 5.6 or later): %w", p, err)
		}
		return fd, err
	}
}

// notInLayer: the path is not a real directory inside the layer (a
// symlink, a file or device in the way, or it would leave the layer).
func notInLayer(err error) bool {
	return errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) ||
		errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOENT)
}

// opaqueAbove reports whether a directory above p in the layer is opaque,
// which hides p in every layer below it. (A whiteout of p or of a parent
// is a character device, which openDirBeneath already refuses.)
func opaqueAbove(layer int, p string) bool {
	p = path.Clean("/" + p)
	var above []string
	for q := path.Dir(p); q != "/" && q != "."; q = path.Dir(q) {
		above = append(above, q)
	}
	for _, q := range above {
		fd, err := openDirBeneath(layer, q)
		if err != nil {
			continue
		}
		opaque := isOpaque(fd)
		unix.Close(fd)
		if opaque {
			return true
		}
	}
	return false
}

func isOpaque(fd int) bool {
	buf := make([]byte, 1)
	n, err := unix.Fgetxattr(fd, "trusted.overlay.opaque", buf)
	return err == nil && n == 1 && buf[0] == 'y'
}

// copyDirMetadata copies owner, mode, extended attributes and times from
// the directory src to dst, both open descriptors.
func copyDirMetadata(src, dst int) error {
	var st unix.Stat_t
	if err := unix.Fstat(src, &st); err != nil {
		return err
	}
	if err := unix.Fchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(dst, st.Mode&07777); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	if err := copyXattrs(src, dst); err != nil {
		return err
	}
	return futimens(dst, []unix.Timespec{st.Atim, st.Mtim})
}

// futimens sets the times of an open file.
func futimens(fd int, ts []unix.Timespec) error {
	err := unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.EINVAL) {
		// Kernels before AT_EMPTY_PATH in utimensat: the descriptor's own
		// /proc link names the same open directory.
		err = unix.UtimesNanoAt(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), ts, 0)
	}
	if err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

func copyXattrs(src, dst int) error {
	size, err := unix.Flistxattr(src, nil)
	if err != nil || size == 0 {
		return nil
	}
	buf := make([]byte, size)
	size, err = unix.Flistxattr(src, buf)
	if err != nil {
		return nil
	}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		// Overlay's own attributes describe that layer, not the directory.
		if name == "" || strings.HasPrefix(name, "trusted.overlay.") {
			continue
		}
		n, err := unix.Fgetxattr(src, name, nil)
		if err != nil {
			continue
		}
		val := make([]byte, n)
		if n, err = unix.Fgetxattr(src, name, val); err != nil {
			continue
		}
		if err := unix.Fsetxattr(dst, name, val[:n], 0); err != nil {
			return fmt.Errorf("set xattr %s: %w", name, err)
		}
	}
	return nil
}
