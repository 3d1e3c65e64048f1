package image

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
)

// Archive formats Export writes.
const (
	// FormatDockerArchive is `docker save`'s format (podman save's
	// default): manifest.json, the config and a tar per layer.
	FormatDockerArchive = "docker-archive"
	// FormatOCIArchive is an OCI image layout as a tar (podman save
	// --format oci-archive, skopeo's oci-archive:).
	FormatOCIArchive = "oci-archive"
)

// ExportOptions tune Export.
type ExportOptions struct {
	// Format is FormatDockerArchive (the default) or FormatOCIArchive.
	Format string
}

// exportImage is an image as Export writes it.
type exportImage struct {
	img    Image
	names  []string
	config []byte
	layers []exportLayer
}

type exportLayer struct {
	chainID, diffID digest.Digest
	size            int64
	write           func(io.Writer) error
}

// Export writes the images refs name to w as one archive that Import,
// `docker load`, `podman load` and `ctr import` read. Each layer is the
// tar the image was pulled with, byte for byte (tarsplit.go), so that the
// image keeps its ID: layers go uncompressed, as docker save writes
// them. An image named by a name is recorded under that name, one named
// by ID under all of its names. Every image is found, and every layer
// checked for its record, before the first byte is written; the layers
// are kept from the collector until the export ends.
func (s *Store) Export(ctx context.Context, w io.Writer, refs []string, o ExportOptions) error {
	format := o.Format
	if format == "" {
		format = FormatDockerArchive
	}
	if format != FormatDockerArchive && format != FormatOCIArchive {
		return withKind(ErrInvalidReference, fmt.Errorf("export: format %q: want %s or %s", format, FormatDockerArchive, FormatOCIArchive))
	}
	if len(refs) == 0 {
		return withKind(ErrInvalidReference, errors.New("export: no image named"))
	}
	leaseID, err := s.newLease()
	if err != nil {
		return err
	}
	defer s.dropLease(leaseID)

	var images []*exportImage
	err = s.db.Update(func(tx *bolt.Tx) error {
		for _, ref := range refs {
			id, err := s.resolve(tx, ref)
			if err != nil {
				return err
			}
			if i := slices.IndexFunc(images, func(e *exportImage) bool { return e.img.ID == id }); i >= 0 {
				images[i].names = appendUnique(images[i].names, exportNames(images[i].img, ref)...)
				continue
			}
			e := &exportImage{}
			if _, err := getJSON(tx.Bucket(bucketImages), id, &e.img); err != nil {
				return err
			}
			if e.img.Artifact {
				return withKind(ErrBadImage, fmt.Errorf("export %s: an artifact, not an image: only images are exported", ref))
			}
			e.names = exportNames(e.img, ref)
			if e.config, err = os.ReadFile(s.blobPath(digest.Digest(e.img.ID))); err != nil {
				return fmt.Errorf("export %s: its config: %w", ref, err)
			}
			for _, chainID := range e.img.Layers {
				var lr layerRecord
				ok, err := getJSON(tx.Bucket(bucketLayers), string(chainID), &lr)
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("export %s: layer %s is not in the store", ref, chainID)
				}
				if lr.Lazy != nil {
					return fmt.Errorf("export %s: layer %s is pulled lazily and not all local yet: export it once it is", ref, lr.Lazy.Blob)
				}
				if err := leaseLayer(tx, leaseID, chainID); err != nil {
					return err
				}
				e.layers = append(e.layers, exportLayer{chainID: chainID, diffID: lr.DiffID})
			}
			images = append(images, e)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Each layer's tar-split read once, leased, outside the database's
	// write lock.
	tars := map[digest.Digest]exportLayer{}
	for _, e := range images {
		for i, l := range e.layers {
			t, ok := tars[l.chainID]
			if !ok {
				if t.size, t.write, err = s.layerTar(l.chainID, l.diffID); err != nil {
					return fmt.Errorf("export %s: %w", e.img.ID, err)
				}
				tars[l.chainID] = t
			}
			e.layers[i].size, e.layers[i].write = t.size, t.write
		}
	}
	aw := &archiveWriter{tw: tar.NewWriter(w), ctx: ctx, written: map[string]bool{}}
	if format == FormatOCIArchive {
		err = aw.oci(images)
	} else {
		err = aw.docker(images)
	}
	if err != nil {
		return err
	}
	return aw.tw.Close()
}

// exportNames are the names an image is exported under: the one it was
// asked by, if that is one of its names; else all of them.
func exportNames(img Image, ref string) []string {
	if n, err := Normalize(ref); err == nil && slices.Contains(img.Names, n) {
		return []string{n}
	}
	return slices.Clone(img.Names)
}

// archiveWriter writes an archive's files, each once.
type archiveWriter struct {
	tw      *tar.Writer
	ctx     context.Context
	written map[string]bool
}

// epoch is every archive entry's time: an export of the same images is
// the same bytes.
var epoch = time.Unix(0, 0)

func (a *archiveWriter) file(name string, data []byte) error {
	return a.stream(name, int64(len(data)), func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

func (a *archiveWriter) stream(name string, size int64, write func(io.Writer) error) error {
	if a.written[name] {
		return nil
	}
	if err := a.ctx.Err(); err != nil {
		return err
	}
	a.written[name] = true
	hdr := &tar.Header{Name: name, Size: size, Mode: 0o644, ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := a.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := write(a.tw); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}

func (a *archiveWriter) dir(name string) error {
	if a.written[name] {
		return nil
	}
	a.written[name] = true
	return a.tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, ModTime: epoch, Typeflag: tar.TypeDir, Format: tar.FormatPAX})
}

// docker writes docker save's layout: <config>.json, <diff ID>.tar per
// layer, and manifest.json listing each image with its RepoTags.
func (a *archiveWriter) docker(images []*exportImage) error {
	type entry struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	manifest := []entry{}
	for _, e := range images {
		ent := entry{Config: digest.Digest(e.img.ID).Encoded() + ".json", RepoTags: tagsOnly(e.names)}
		if err := a.file(ent.Config, e.config); err != nil {
			return err
		}
		for _, l := range e.layers {
			name := l.diffID.Encoded() + ".tar"
			if err := a.stream(name, l.size, l.write); err != nil {
				return err
			}
			ent.Layers = append(ent.Layers, name)
		}
		manifest = append(manifest, ent)
	}
	data, err := json.Marshal(manifest)
	if err != nil {
		return err
	}
	return a.file("manifest.json", data)
}

// tagsOnly keeps the repo:tag names (a docker-archive records no
// digests).
func tagsOnly(names []string) []string {
	out := []string{}
	for _, n := range names {
		if r, err := reference.ParseNormalizedNamed(n); err == nil {
			if _, ok := r.(reference.NamedTagged); ok {
				out = append(out, n)
			}
		}
	}
	return out
}

// oci writes an OCI image layout: each image gets a new manifest (its
// layers uncompressed: the config and its diff IDs as they were), listed
// in index.json once per name.
func (a *archiveWriter) oci(images []*exportImage) error {
	if err := a.file(v1.ImageLayoutFile, []byte(`{"imageLayoutVersion":"`+v1.ImageLayoutVersion+`"}`)); err != nil {
		return err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := a.dir(d); err != nil {
			return err
		}
	}
	blob := func(d digest.Digest) string { return "blobs/" + d.Algorithm().String() + "/" + d.Encoded() }
	index := v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex}
	for _, e := range images {
		m := v1.Manifest{
			Versioned: specs.Versioned{SchemaVersion: 2},
			MediaType: v1.MediaTypeImageManifest,
			Config:    v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: digest.Digest(e.img.ID), Size: int64(len(e.config))},
		}
		for _, l := range e.layers {
			if err := a.stream(blob(l.diffID), l.size, l.write); err != nil {
				return err
			}
			m.Layers = append(m.Layers, v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: l.diffID, Size: l.size})
		}
		if err := a.file(blob(m.Config.Digest), e.config); err != nil {
			return err
		}
		data, err := json.Marshal(m)
		if err != nil {
			return err
		}
		md := digest.FromBytes(data)
		if err := a.file(blob(md), data); err != nil {
			return err
		}
		desc := v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: md, Size: int64(len(data))}
		names := tagsOnly(e.names)
		if len(names) == 0 {
			index.Manifests = append(index.Manifests, desc)
		}
		// The full name as the ref.name too (as skopeo writes it): two
		// images of one archive may share a tag.
		for _, n := range names {
			d := desc
			d.Annotations = map[string]string{"io.containerd.image.name": n, v1.AnnotationRefName: n}
			index.Manifests = append(index.Manifests, d)
		}
	}
	data, err := json.Marshal(index)
	if err != nil {
		return err
	}
	return a.file(v1.ImageIndexFile, data)
}
