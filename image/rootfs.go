package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// ErrRootfsExists: a root filesystem with this id exists already.
var ErrRootfsExists = errors.New("root filesystem already exists")

// Rootfs is a container's root filesystem: the image's layers, shared
// and read-only, under a writable layer of the container's own.
type Rootfs struct {
	ID      string
	ImageID string
	// Path is where the overlay is mounted.
	Path string
}

func (s *Store) rootfsDir(id string, elem ...string) string {
	return filepath.Join(append([]string{s.root, "containers", id}, elem...)...)
}

// IDMap asks for a root filesystem seen through a user namespace: the
// image's layers are mounted id-mapped through it, and the container's
// own writes land on disk as the host ids its root maps to.
type IDMap struct {
	// UsernsPath is a file of the user namespace (/proc/<pid>/ns/user or
	// a bind mount of one).
	UsernsPath string
	// HostUID and HostGID are what the namespace's uid and gid 0 are on
	// the host.
	HostUID, HostGID int
}

// CreateRootfs makes and mounts a root filesystem for the container id
// from an image, id-mapped if idmap is not nil. Nothing is left behind if
// it fails.
func (s *Store) CreateRootfs(id, imageRef string, idmap *IDMap) (_ *Rootfs, retErr error) {
	if err := validRootfsID(id); err != nil {
		return nil, err
	}
	var rec rootfsRecord
	err := s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketRootfs).Get([]byte(id)) != nil {
			return withKind(ErrRootfsExists, fmt.Errorf("root filesystem %s already exists", id))
		}
		imageID, err := s.resolve(tx, imageRef)
		if err != nil {
			return err
		}
		var img Image
		if _, err := getJSON(tx.Bucket(bucketImages), imageID, &img); err != nil {
			return err
		}
		rec = rootfsRecord{ID: id, ImageID: imageID, Layers: img.Layers, Created: time.Now().UTC(), IDMapped: idmap != nil}
		return putJSON(tx.Bucket(bucketRootfs), id, &rec)
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			if err := s.RemoveRootfs(id); err != nil {
				s.log.Warn("undo root filesystem", "container", id, "error", err)
			}
		}
	}()
	for _, d := range []string{"upper", "work", "merged"} {
		if err := os.MkdirAll(s.rootfsDir(id, d), 0o755); err != nil {
			return nil, storeIOError("root filesystem "+id, err)
		}
	}
	// upper is the container's / and keeps 0755; its parent is not
	// listable by other users (the store's root is not either).
	if err := os.Chmod(s.rootfsDir(id), 0o711); err != nil {
		return nil, storeIOError("root filesystem "+id, err)
	}
	if idmap != nil {
		// The container's root owns its upper layer, as it would its /.
		for _, d := range []string{"upper", "work"} {
			if err := os.Chown(s.rootfsDir(id, d), idmap.HostUID, idmap.HostGID); err != nil {
				return nil, storeIOError("root filesystem "+id, err)
			}
		}
	}
	if err := s.mount(&rec, idmap); err != nil {
		return nil, err
	}
	return &Rootfs{ID: id, ImageID: rec.ImageID, Path: s.rootfsDir(id, "merged")}, nil
}

// MountRootfs mounts a recorded root filesystem again if it is not
// mounted (after a reboot, or a restart that found it unmounted).
func (s *Store) MountRootfs(id string) (*Rootfs, error) {
	rec, err := s.rootfsRecord(id)
	if err != nil {
		return nil, err
	}
	if ok, _ := mountinfo.Mounted(s.rootfsDir(id, "merged")); !ok {
		if rec.IDMapped {
			return nil, fmt.Errorf("root filesystem %s is id-mapped through a user namespace that is gone; create it again", id)
		}
		if err := s.mount(rec, nil); err != nil {
			return nil, err
		}
	}
	return &Rootfs{ID: id, ImageID: rec.ImageID, Path: s.rootfsDir(id, "merged")}, nil
}

// Rootfses lists the recorded root filesystems.
func (s *Store) Rootfses() ([]Rootfs, error) {
	var out []Rootfs
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRootfs).ForEach(func(_, v []byte) error {
			var r rootfsRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, Rootfs{ID: r.ID, ImageID: r.ImageID, Path: s.rootfsDir(r.ID, "merged")})
			return nil
		})
	})
	return out, err
}

func (s *Store) rootfsRecord(id string) (*rootfsRecord, error) {
	if err := validRootfsID(id); err != nil {
		return nil, err
	}
	var rec rootfsRecord
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		ok, err = getJSON(tx.Bucket(bucketRootfs), id, &rec)
		return err
	})
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, withKind(ErrNotFound, fmt.Errorf("root filesystem %s not found", id))
	}
	return &rec, nil
}

// RemoveRootfs unmounts and deletes a root filesystem; removing one that
// does not exist is not an error. Layers only it used are collected.
func (s *Store) RemoveRootfs(id string) error {
	if err := validRootfsID(id); err != nil {
		return err
	}
	merged := s.rootfsDir(id, "merged")
	if err := unmountAll(merged); err != nil {
		return fmt.Errorf("root filesystem %s: %w", id, err)
	}
	// Id-mapped layers a crash left mounted between their mount and the
	// overlay's.
	idmapped, _ := os.ReadDir(s.rootfsDir(id, "idmapped"))
	for _, e := range idmapped {
		if err := unmountAll(s.rootfsDir(id, "idmapped", e.Name())); err != nil {
			return fmt.Errorf("root filesystem %s: %w", id, err)
		}
	}
	if err := os.RemoveAll(s.rootfsDir(id)); err != nil {
		return storeIOError("remove root filesystem "+id, err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketRootfs).Delete([]byte(id)) }); err != nil {
		return storeIOError("remove root filesystem "+id, err)
	}
	return s.GC()
}

// RootfsUsage measures a container's writable layer. The container
// writes it while it is walked: the walk stays inside it (os.Root), so
// a directory swapped for a symlink to / is not followed out.
func (s *Store) RootfsUsage(id string) (bytes, inodes int64, err error) {
	if err := validRootfsID(id); err != nil {
		return 0, 0, err
	}
	root, err := os.OpenRoot(s.rootfsDir(id, "upper"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	defer root.Close()
	err = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			// Below the top, the container changes what it walks: an entry
			// removed, or swapped for a symlink out of the root (which
			// os.Root refuses), is not counted.
			if p == "." {
				return err
			}
			return nil
		}
		inodes++
		if info, err := d.Info(); err == nil && d.Type().IsRegular() {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				bytes += st.Blocks * 512
			}
		}
		return nil
	})
	return bytes, inodes, err
}

// mount mounts the overlay of a root filesystem.
func (s *Store) mount(rec *rootfsRecord, idmap *IDMap) error {
	s.lazyMu.RLock()
	defer s.lazyMu.RUnlock()
	lowers, err := s.layerDirs(context.Background(), topFirst(rec.Layers))
	if err != nil {
		return fmt.Errorf("mount root filesystem %s: %w", rec.ID, err)
	}
	if idmap != nil && len(lowers) > 0 {
		mapped, unmount, err := s.idmapLayers(rec.ID, lowers, idmap.UsernsPath)
		if err != nil {
			return fmt.Errorf("mount root filesystem %s: %w", rec.ID, err)
		}
		// The overlay holds the id-mapped layers it was mounted on; their
		// own mount points can go right after.
		defer unmount()
		lowers = mapped
	}
	if len(lowers) == 0 {
		// An image without layers: overlay needs a lower directory.
		empty := s.rootfsDir(rec.ID, "empty")
		if err := os.MkdirAll(empty, 0o755); err != nil {
			return storeIOError("root filesystem "+rec.ID, err)
		}
		lowers = append(lowers, empty)
	}
	err = mountOverlay(lowers, s.rootfsDir(rec.ID, "upper"), s.rootfsDir(rec.ID, "work"), s.rootfsDir(rec.ID, "merged"))
	if err != nil {
		return fmt.Errorf("mount root filesystem %s: %w", rec.ID, err)
	}
	return nil
}

// idmapLayers mounts each layer id-mapped through the user namespace at
// usernsPath (Linux 5.19 for overlayfs on id-mapped layers) and returns
// their mount points, and a function that unmounts and removes them.
func (s *Store) idmapLayers(id string, layers []string, usernsPath string) (_ []string, unmount func(), retErr error) {
	userns, err := os.Open(usernsPath)
	if err != nil {
		return nil, nil, fmt.Errorf("user namespace: %w", err)
	}
	defer userns.Close()
	dir := s.rootfsDir(id, "idmapped")
	var mounted []string
	unmount = func() {
		for _, m := range mounted {
			_ = unix.Unmount(m, unix.MNT_DETACH)
		}
		_ = os.RemoveAll(dir)
	}
	defer func() {
		if retErr != nil {
			unmount()
		}
	}()
	out := make([]string, 0, len(layers))
	for i, l := range layers {
		target := filepath.Join(dir, strconv.Itoa(i))
		if err := os.MkdirAll(target, 0o700); err != nil {
			return nil, nil, storeIOError("root filesystem "+id, err)
		}
		fd, err := unix.OpenTree(unix.AT_FDCWD, l, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		if err != nil {
			return nil, nil, fmt.Errorf("clone layer %s: %w", l, err)
		}
		err = unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns.Fd())})
		if err == nil {
			err = unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH)
		}
		unix.Close(fd)
		if err != nil {
			return nil, nil, fmt.Errorf("id-map layer %s (needs a kernel with id-mapped mounts): %w", l, err)
		}
		mounted = append(mounted, target)
		out = append(out, target)
	}
	return out, unmount, nil
}

// maxMountData is what mount(2) accepts in its data argument (a page).
const maxMountData = 4095

// mountOverlay mounts an overlay of lowers (top first) under upper. Where
// the lower directories do not fit into one mount(2) option string, they
// are passed one by one with the new mount API ("lowerdir+", Linux 6.8).
func mountOverlay(lowers []string, upper, work, target string) error {
	data := "lowerdir=" + strings.Join(escapeLowers(lowers), ":") + ",upperdir=" + upper + ",workdir=" + work
	if len(data) <= maxMountData {
		return unix.Mount("overlay", target, "overlay", 0, data)
	}
	if !lowerdirPlus() {
		return fmt.Errorf("%d layers do not fit into one overlay mount on this kernel (needs Linux 6.8's lowerdir+)", len(lowers))
	}
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("fsopen overlay: %w", err)
	}
	defer unix.Close(fd)
	for _, l := range lowers {
		if err := unix.FsconfigSetString(fd, "lowerdir+", l); err != nil {
			return fmt.Errorf("overlay lowerdir+ %s: %w", l, err)
		}
	}
	if err := unix.FsconfigSetString(fd, "upperdir", upper); err != nil {
		return fmt.Errorf("overlay upperdir: %w", err)
	}
	if err := unix.FsconfigSetString(fd, "workdir", work); err != nil {
		return fmt.Errorf("overlay workdir: %w", err)
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return fmt.Errorf("create overlay: %w", err)
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fsmount overlay: %w", err)
	}
	defer unix.Close(mfd)
	return unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH)
}

// escapeLowers escapes the characters overlay's option parser treats
// specially in lower directory paths.
func escapeLowers(lowers []string) []string {
	out := make([]string, len(lowers))
	r := strings.NewReplacer(`\`, `\\`, `:`, `\:`, `,`, `\,`)
	for i, l := range lowers {
		out[i] = r.Replace(l)
	}
	return out
}

var lowerdirPlus = sync.OnceValue(func() bool {
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	// An empty value is refused with EINVAL by kernels that know the key
	// and with another error (or accepted) by those that do not; probe
	// with a path that exists.
	return unix.FsconfigSetString(fd, "lowerdir+", "/") == nil
})

// unmountAll unmounts whatever is mounted at target (overlays stacked by
// a retry included); not mounted is fine.
func unmountAll(target string) error {
	for i := 0; i < 8; i++ {
		err := unix.Unmount(target, 0)
		switch {
		case err == nil:
			continue
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EBUSY):
			// Still used by a process of a container being torn down:
			// detach now, the kernel finishes when the last user goes.
			if err := unix.Unmount(target, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("unmount %s: %w", target, err)
			}
		default:
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
	return fmt.Errorf("unmount %s: still mounted", target)
}

// validRootfsID keeps ids to one safe path component.
func validRootfsID(id string) error {
	if id == "" || id == "." || id == ".." || len(id) > 256 || strings.ContainsAny(id, "/\x00") {
		return fmt.Errorf("invalid root filesystem id %q", id)
	}
	return nil
}
