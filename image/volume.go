package image

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/moby/sys/mountinfo"
	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// ImageMount is an image's file system, mounted read-only for image
// volumes (KEP-4639): the same unpacked layers a root filesystem stands
// on, without a layer of its own.
type ImageMount struct {
	ImageID string
	// Path is where it is mounted.
	Path string
}

// imageMountRecord is an image mount's users (container ids) and the
// layers it holds: while it has a user, its layers stay, whether or not
// the image is still recorded.
type imageMountRecord struct {
	ImageID string          `json:"imageID"`
	Layers  []digest.Digest `json:"layers"`
	Users   []string        `json:"users"`
}

var bucketImageMounts = []byte("image-mounts")

func (s *Store) imageMountDir(imageID string, elem ...string) string {
	return filepath.Join(append([]string{s.root, "image-mounts", digest.Digest(imageID).Encoded()}, elem...)...)
}

// MountImage makes an image's file system available read-only for user
// (a container id): one mount per image on the node, shared by every
// container that uses it, made by the first and kept until the last
// lets go (UnmountImages). Mounted again if a reboot took it.
func (s *Store) MountImage(imageRef, user string) (*ImageMount, error) {
	if err := validRootfsID(user); err != nil {
		return nil, err
	}
	s.imageMountMu.Lock()
	defer s.imageMountMu.Unlock()
	var rec imageMountRecord
	err := s.db.Update(func(tx *bolt.Tx) error {
		imageID, err := s.resolve(tx, imageRef)
		if err != nil {
			return err
		}
		b := tx.Bucket(bucketImageMounts)
		found, err := getJSON(b, imageID, &rec)
		if err != nil {
			return err
		}
		if !found {
			var img Image
			if _, err := getJSON(tx.Bucket(bucketImages), imageID, &img); err != nil {
				return err
			}
			rec = imageMountRecord{ImageID: imageID, Layers: img.Layers}
		}
		if !slices.Contains(rec.Users, user) {
			rec.Users = append(rec.Users, user)
		}
		return putJSON(b, imageID, &rec)
	})
	if err != nil {
		return nil, err
	}
	merged := s.imageMountDir(rec.ImageID, "merged")
	if ok, _ := mountinfo.Mounted(merged); !ok {
		if err := s.mountImage(&rec); err != nil {
			_ = s.dropImageMountUser(rec.ImageID, user)
			return nil, fmt.Errorf("mount image %s: %w", rec.ImageID, err)
		}
	}
	return &ImageMount{ImageID: rec.ImageID, Path: merged}, nil
}

// mountImage mounts the layers as an overlay with no upper layer, which
// overlayfs makes read-only; an empty directory at the bottom makes two
// lower directories of an image of one (or none).
func (s *Store) mountImage(rec *imageMountRecord) error {
	empty := s.imageMountDir(rec.ImageID, "empty")
	merged := s.imageMountDir(rec.ImageID, "merged")
	for _, d := range []string{empty, merged} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return storeIOError("image mount", err)
		}
	}
	s.lazyMu.RLock()
	defer s.lazyMu.RUnlock()
	lowers, err := s.layerDirs(context.Background(), topFirst(rec.Layers))
	if err != nil {
		return fmt.Errorf("image mount: %w", err)
	}
	lowers = append(lowers, empty)
	data := "lowerdir=" + strings.Join(escapeLowers(lowers), ":")
	if len(data) > maxMountData {
		return fmt.Errorf("%d layers do not fit into one overlay mount's options", len(rec.Layers))
	}
	return unix.Mount("overlay", merged, "overlay", unix.MS_RDONLY|unix.MS_NODEV, data)
}

// UnmountImages lets user go of every image mount it had; a mount with
// no user left is unmounted, and its layers may be collected.
func (s *Store) UnmountImages(user string) error {
	s.imageMountMu.Lock()
	defer s.imageMountMu.Unlock()
	var ids []string
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketImageMounts).ForEach(func(k, v []byte) error {
			var rec imageMountRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			if slices.Contains(rec.Users, user) {
				ids = append(ids, string(k))
			}
			return nil
		})
	})
	if err != nil {
		return storeIOError("image mounts", err)
	}
	for _, id := range ids {
		if err := s.dropImageMountUser(id, user); err != nil {
			return err
		}
	}
	if len(ids) > 0 {
		return s.GC()
	}
	return nil
}

// dropImageMountUser removes user from an image mount, and the mount
// once it has none.
func (s *Store) dropImageMountUser(imageID, user string) error {
	var last bool
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketImageMounts)
		var rec imageMountRecord
		found, err := getJSON(b, imageID, &rec)
		if err != nil || !found {
			return err
		}
		rec.Users = slices.DeleteFunc(rec.Users, func(u string) bool { return u == user })
		if len(rec.Users) > 0 {
			return putJSON(b, imageID, &rec)
		}
		last = true
		return nil
	})
	if err != nil {
		return storeIOError("image mount "+imageID, err)
	}
	if !last {
		return nil
	}
	// Unmounted before the record goes: a record without a mount is
	// mounted again by its next user, a mount without a record would
	// stay.
	if err := unmountAll(s.imageMountDir(imageID, "merged")); err != nil {
		return fmt.Errorf("image mount %s: %w", imageID, err)
	}
	if err := os.RemoveAll(s.imageMountDir(imageID)); err != nil {
		return storeIOError("image mount "+imageID, err)
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketImageMounts).Delete([]byte(imageID)) })
}

// ImageMountUsers lists the users of every image mount, for a caller
// reconciling them with what runs.
func (s *Store) ImageMountUsers() ([]string, error) {
	var users []string
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketImageMounts).ForEach(func(_, v []byte) error {
			var rec imageMountRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			for _, u := range rec.Users {
				if !slices.Contains(users, u) {
					users = append(users, u)
				}
			}
			return nil
		})
	})
	return users, err
}

// SubPath resolves a path within a mounted image (an image volume's
// subPath): the kernel resolves it inside the image (openat2,
// RESOLVE_IN_ROOT), so the image's symlinks and ".." stay in it, and
// the image is read-only, so what it resolves to cannot change before
// the container's bind mount is made of it.
func (m *ImageMount) SubPath(sub string) (string, error) {
	root, err := os.Open(m.Path)
	if err != nil {
		return "", err
	}
	defer root.Close()
	fd, err := unix.Openat2(int(root.Fd()), sub, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		return "", fmt.Errorf("sub path %q in the image: %w", sub, err)
	}
	defer unix.Close(fd)
	p, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return "", fmt.Errorf("sub path %q in the image: %w", sub, err)
	}
	if p != m.Path && !strings.HasPrefix(p, m.Path+"/") {
		return "", fmt.Errorf("sub path %q resolved outside the image, to %s", sub, p)
	}
	return p, nil
}
