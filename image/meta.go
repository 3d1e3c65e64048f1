package image

import (
	"encoding/json"
	"fmt"
	"time"

	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// Image is a stored image.
type Image struct {
	// ID is the digest of the image config ("sha256:…"), as the CRI and
	// Docker name images.
	ID string `json:"id"`
	// Names are the repo:tag names the image is known by, normalized.
	Names []string `json:"names"`
	// RepoDigests are repo@digest names: of the top-level manifest (an
	// index for a multi-platform image) and of this platform's manifest.
	RepoDigests []string `json:"repoDigests"`
	// Manifest is the digest of this platform's manifest.
	Manifest digest.Digest `json:"manifest"`
	// Layers are the chain IDs of the layers, bottom first.
	Layers []digest.Digest `json:"layers"`
	// Size is the unpacked size of all layers in bytes.
	Size int64 `json:"size"`
	// Created is the image's creation time from its config.
	Created time.Time `json:"created"`
	// Pulled is when berth stored the image.
	Pulled time.Time `json:"pulled"`
	// Artifact: an OCI artifact (artifact.go): its ID is its manifest's
	// digest, its one layer holds its files, and it runs nowhere.
	Artifact bool `json:"artifact,omitempty"`
}

// layerRecord is a stored, unpacked layer.
type layerRecord struct {
	ChainID    digest.Digest `json:"chainID"`
	DiffID     digest.Digest `json:"diffID"`
	Parent     digest.Digest `json:"parent,omitempty"`
	Compressed digest.Digest `json:"compressed,omitempty"`
	Size       int64         `json:"size"`
	Inodes     int64         `json:"inodes"`
	// Lazy: the layer is served lazily (lazypull.go), not unpacked yet.
	Lazy *lazyLayer `json:"lazy,omitempty"`
}

// rootfsRecord is a container's root filesystem: its layers stay while
// it exists.
type rootfsRecord struct {
	ID      string          `json:"id"`
	ImageID string          `json:"imageID"`
	Layers  []digest.Digest `json:"layers"`
	Created time.Time       `json:"created"`
	// IDMapped: mounted through a user namespace, which only the
	// caller that created it can give again.
	IDMapped bool `json:"idMapped,omitempty"`
}

// lease keeps the layers of a pull in progress from being collected.
type lease struct {
	Layers  []digest.Digest `json:"layers"`
	Created time.Time       `json:"created"`
}

var (
	bucketImages = []byte("images")
	bucketNames  = []byte("names")
	bucketLayers = []byte("layers")
	bucketRootfs = []byte("rootfs")
	bucketLeases = []byte("leases")
)

var allBuckets = [][]byte{bucketImages, bucketNames, bucketLayers, bucketRootfs, bucketLeases, bucketImageMounts}

func getJSON(b *bolt.Bucket, key string, v any) (bool, error) {
	data := b.Get([]byte(key))
	if data == nil {
		return false, nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("metadata %s: %w", key, err)
	}
	return true, nil
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), data)
}

// layerRefs counts, per chain ID, what keeps a layer: images, container
// root filesystems, image mounts, and pulls in progress.
func layerRefs(tx *bolt.Tx) (map[digest.Digest]int, error) {
	refs := map[digest.Digest]int{}
	err := tx.Bucket(bucketImages).ForEach(func(_, v []byte) error {
		var img Image
		if err := json.Unmarshal(v, &img); err != nil {
			return err
		}
		for _, l := range img.Layers {
			refs[l]++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = tx.Bucket(bucketRootfs).ForEach(func(_, v []byte) error {
		var r rootfsRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		for _, l := range r.Layers {
			refs[l]++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = tx.Bucket(bucketImageMounts).ForEach(func(_, v []byte) error {
		var m imageMountRecord
		if err := json.Unmarshal(v, &m); err != nil {
			return err
		}
		for _, l := range m.Layers {
			refs[l]++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = tx.Bucket(bucketLeases).ForEach(func(_, v []byte) error {
		var l lease
		if err := json.Unmarshal(v, &l); err != nil {
			return err
		}
		for _, c := range l.Layers {
			refs[c]++
		}
		return nil
	})
	return refs, err
}
