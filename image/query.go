package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	digest "github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
)

// Get finds an image by name (normalized as Kubernetes does: "busybox"
// finds docker.io/library/busybox:latest), repo digest, image ID, or a
// unique image ID prefix.
func (s *Store) Get(ref string) (*Image, error) {
	var img Image
	err := s.db.View(func(tx *bolt.Tx) error {
		id, err := s.resolve(tx, ref)
		if err != nil {
			return err
		}
		_, err = getJSON(tx.Bucket(bucketImages), id, &img)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &img, nil
}

// resolve maps a user's string to an image ID.
func (s *Store) resolve(tx *bolt.Tx, ref string) (string, error) {
	k := keysFor(s.systemContext(nil), ref)
	images := tx.Bucket(bucketImages)
	if k.id != "" && images.Get([]byte(k.id)) != nil {
		return k.id, nil
	}
	names := tx.Bucket(bucketNames)
	for _, n := range k.names {
		if id := names.Get([]byte(n)); id != nil {
			return string(id), nil
		}
	}
	if k.idPrefix != "" {
		var match []string
		prefix := "sha256:" + k.idPrefix
		c := images.Cursor()
		for key, _ := c.Seek([]byte(prefix)); key != nil && strings.HasPrefix(string(key), prefix); key, _ = c.Next() {
			match = append(match, string(key))
		}
		switch len(match) {
		case 1:
			return match[0], nil
		case 0:
		default:
			return "", fmt.Errorf("image ID prefix %q is ambiguous: %d images match", k.idPrefix, len(match))
		}
	}
	return "", withKind(ErrNotFound, fmt.Errorf("image %q not found", ref))
}

// List returns every stored image.
func (s *Store) List() ([]Image, error) {
	var out []Image
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketImages).ForEach(func(_, v []byte) error {
			var img Image
			if err := json.Unmarshal(v, &img); err != nil {
				return err
			}
			out = append(out, img)
			return nil
		})
	})
	return out, err
}

// Config returns the image's OCI config (entrypoint, command, env, user,
// working directory, exposed ports, volumes, stop signal).
func (s *Store) Config(img *Image) (*v1.Image, error) {
	if img.Artifact {
		return nil, fmt.Errorf("image %s: %w", img.ID, errArtifact)
	}
	data, err := os.ReadFile(s.blobPath(digest.Digest(img.ID)))
	if err != nil {
		return nil, fmt.Errorf("image %s config: %w", img.ID, err)
	}
	var cfg v1.Image
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, withKind(ErrBadImage, fmt.Errorf("image %s config: %w", img.ID, err))
	}
	return &cfg, nil
}

// Remove removes a reference. A name that is one of several the image
// has is untagged; the image's last name, its ID or a digest removes the
// image. Layers go once no image and no container uses them.
func (s *Store) Remove(ref string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		id, err := s.resolve(tx, ref)
		if err != nil {
			return err
		}
		images, names := tx.Bucket(bucketImages), tx.Bucket(bucketNames)
		var img Image
		if _, err := getJSON(images, id, &img); err != nil {
			return err
		}
		k := keysFor(s.systemContext(nil), ref)
		for _, n := range k.names {
			if slices.Contains(img.Names, n) && len(img.Names) > 1 {
				if err := names.Delete([]byte(n)); err != nil {
					return err
				}
				return dropName(tx, id, n)
			}
		}
		for _, n := range append(img.Names, img.RepoDigests...) {
			if cur := names.Get([]byte(n)); string(cur) == id {
				if err := names.Delete([]byte(n)); err != nil {
					return err
				}
			}
		}
		return images.Delete([]byte(id))
	})
	if err != nil {
		return err
	}
	return s.GC()
}

// Usage is what the store takes on its file system.
type Usage struct {
	// Mountpoint is the store's root directory.
	Mountpoint string
	// Bytes and Inodes used by image layers.
	Bytes, Inodes int64
}

// Usage sums the unpacked layers. Containers' writable layers are
// reported per container.
func (s *Store) Usage() (Usage, error) {
	u := Usage{Mountpoint: s.root}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketLayers).ForEach(func(_, v []byte) error {
			var l layerRecord
			if err := json.Unmarshal(v, &l); err != nil {
				return err
			}
			u.Bytes += l.Size
			u.Inodes += l.Inodes
			return nil
		})
	})
	return u, err
}

// IsNotFound reports whether err says an image is not in the store.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
