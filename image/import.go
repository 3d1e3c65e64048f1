package image

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
)

// ImportOptions tune Import.
type ImportOptions struct {
	// Name names an archive's only image where the archive gives it no
	// full name (an OCI archive whose index says only a tag, a `docker
	// save` of an image by id).
	Name string
	// Progress, if set, is called with each image's pull status.
	Progress         func(PullStatus)
	ProgressInterval time.Duration
}

// archiveImage is one image of an archive: its reference within the
// transport, and the names to record it under.
type archiveImage struct {
	ref   string
	names []string
}

// Import loads the images of an archive read from r, a docker-archive
// (`docker save`, `podman save`) or an oci-archive (an OCI image layout
// as a tar: `podman save --format oci-archive`, `skopeo copy`, `ctr
// export`), as an air-gapped node loads images. Each image goes through
// the same pull as a registry's (the signature policy, the layer checks,
// the durable store) from the archive, written to the store's temporary
// directory first, and is recorded under the names the archive gives it
// (docker-archive RepoTags; OCI index annotations io.containerd.image.name
// or a full org.opencontainers.image.ref.name), or o.Name.
func (s *Store) Import(ctx context.Context, r io.Reader, o ImportOptions) ([]*Image, error) {
	dir, err := s.tempDir("import")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	archive := filepath.Join(dir, "archive.tar")
	f, err := os.OpenFile(archive, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, storeIOError("import", err)
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, storeIOError("import: receive the archive", err)
	}
	transport, images, err := archiveImages(archive, o.Name)
	if err != nil {
		return nil, withKind(ErrBadImage, fmt.Errorf("import: %w", err))
	}
	var out []*Image
	for _, ai := range images {
		src, err := parseTransportRef(transport + ":" + archive + ai.ref)
		if err != nil {
			return out, withKind(ErrBadImage, fmt.Errorf("import: %w", err))
		}
		sp := &sharedPull{done: make(chan struct{}), progress: map[*PullOptions]func(PullStatus){}}
		po := PullOptions{Progress: o.Progress, ProgressInterval: o.ProgressInterval}
		if po.Progress != nil {
			sp.progress[&po] = po.Progress
		}
		img, err := s.pullCandidate(ctx, s.systemContext(nil), candidate{src: src, name: ai.names[0]}, po, sp)
		if err != nil {
			return out, err
		}
		if img, err = s.addNames(img.ID, ai.names[1:]...); err != nil {
			return out, err
		}
		out = append(out, img)
	}
	return out, nil
}

// archiveImages reads an archive's index: its transport, and each image's
// reference within it and names. A name that is not a valid reference,
// and an image with no name where o.Name gives none, is an error.
func archiveImages(path, name string) (string, []archiveImage, error) {
	files, err := readTarFiles(path, "oci-layout", "index.json", "manifest.json")
	if err != nil {
		return "", nil, err
	}
	var transport string
	var images []archiveImage
	switch {
	case files["oci-layout"] != nil && files["index.json"] != nil:
		transport = "oci-archive"
		var index v1.Index
		if err := json.Unmarshal(files["index.json"], &index); err != nil {
			return "", nil, fmt.Errorf("the archive's index.json: %w", err)
		}
		for _, m := range index.Manifests {
			var names []string
			if n := m.Annotations["io.containerd.image.name"]; n != "" {
				names = append(names, n)
			}
			// The transport finds an image by its ref.name, or takes the
			// only one. A ref.name is a tag as often as a name: only a
			// full name names the image.
			ref := ""
			if n := m.Annotations[v1.AnnotationRefName]; n != "" {
				ref = ":" + n
				if strings.ContainsAny(n, "/:") {
					names = append(names, n)
				}
			} else if len(index.Manifests) > 1 {
				return "", nil, errors.New("the archive's index has several images, some without a ref.name to tell them apart")
			}
			images = append(images, archiveImage{ref: ref, names: names})
		}
	case files["manifest.json"] != nil:
		transport = "docker-archive"
		var entries []struct{ RepoTags []string }
		if err := json.Unmarshal(files["manifest.json"], &entries); err != nil {
			return "", nil, fmt.Errorf("the archive's manifest.json: %w", err)
		}
		for i, e := range entries {
			images = append(images, archiveImage{ref: fmt.Sprintf(":@%d", i), names: e.RepoTags})
		}
	default:
		return "", nil, errors.New("not a docker-archive (manifest.json) nor an oci-archive (oci-layout, index.json)")
	}
	if len(images) == 0 {
		return "", nil, errors.New("the archive holds no image")
	}
	for i := range images {
		if len(images[i].names) == 0 {
			if name == "" || len(images) > 1 {
				return "", nil, fmt.Errorf("image %d of the archive has no name: give the archive's only image one", i)
			}
			images[i].names = []string{name}
		}
		for j, n := range images[i].names {
			norm, err := Normalize(n)
			if err != nil {
				return "", nil, err
			}
			images[i].names[j] = norm
		}
	}
	return transport, images, nil
}

// readTarFiles reads the named files at the top of a tar archive.
func readTarFiles(path string, names ...string) (map[string][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("not a tar archive: %w", err)
		}
		n := strings.TrimPrefix(filepath.Clean("/"+h.Name), "/")
		if want[n] && h.Typeflag == tar.TypeReg {
			// Index files are small; a huge one is not one.
			data, err := io.ReadAll(io.LimitReader(tr, 16<<20))
			if err != nil {
				return nil, err
			}
			out[n] = data
		}
	}
}

// addNames records more names of an image, taking each from whatever
// image had it.
func (s *Store) addNames(id string, names ...string) (*Image, error) {
	var out Image
	err := s.db.Update(func(tx *bolt.Tx) error {
		ok, err := getJSON(tx.Bucket(bucketImages), id, &out)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("image %s vanished", id)
		}
		if err := putNames(tx, id, names); err != nil {
			return err
		}
		// putNames may have rewritten the record.
		if _, err := getJSON(tx.Bucket(bucketImages), id, &out); err != nil {
			return err
		}
		out.Names = appendUnique(out.Names, names...)
		return putJSON(tx.Bucket(bucketImages), id, &out)
	})
	if err != nil {
		return nil, storeIOError("record image names", err)
	}
	return &out, nil
}
