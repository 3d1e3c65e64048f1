package testutil

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	specsv "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"go.podman.io/image/v5/copy"
	"go.podman.io/image/v5/docker"
	dockerarchive "go.podman.io/image/v5/docker/archive"
	"go.podman.io/image/v5/oci/layout"
	"go.podman.io/image/v5/signature"
	"go.podman.io/image/v5/types"
)

// File is one entry of a test layer.
type File struct {
	Path    string
	Content string
	// Type is a tar type flag; default regular file.
	Type     byte
	Mode     int64 // default 0644, or 0755 for directories
	Linkname string
	UID, GID int
	Major    int64
	Minor    int64
	Xattrs   map[string]string
}

// Layer is one layer of a test image.
type Layer struct {
	Files []File
	// Tar, if set, is the layer's uncompressed tar as is (hostile tests).
	Tar []byte
	// Dir, if set, is tarred whole (a busybox root filesystem).
	Dir string
	// Compression is "gzip" (default), "zstd", "none" or "estargz"
	// (gzip with a table of contents, lazily pullable; the descriptor
	// gets eStargz's annotations).
	Compression string
	// EStargzChunkSize is the size of an eStargz layer's chunks (default
	// estargz's 4 MiB); EStargzPrefetch the files it marks for prefetch.
	EStargzChunkSize int
	EStargzPrefetch  []string
}

// ImageSpec is a test image.
type ImageSpec struct {
	Layers   []Layer
	Config   v1.ImageConfig
	Platform v1.Platform // default linux/amd64
	// Annotations go in the manifest.
	Annotations map[string]string
}

// TarFiles builds an uncompressed tar of the entries.
func TarFiles(t T, files []File) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{
			Name: f.Path, Typeflag: f.Type, Mode: f.Mode, Linkname: f.Linkname,
			Uid: f.UID, Gid: f.GID, Devmajor: f.Major, Devminor: f.Minor,
			ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX,
		}
		if hdr.Typeflag == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if hdr.Mode == 0 {
			hdr.Mode = 0o644
			if hdr.Typeflag == tar.TypeDir {
				hdr.Mode = 0o755
			}
		}
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = int64(len(f.Content))
		}
		if len(f.Xattrs) > 0 {
			hdr.PAXRecords = map[string]string{}
			for k, v := range f.Xattrs {
				hdr.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(f.Content)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TarDir builds an uncompressed tar of a directory tree.
func TarDir(t T, dir string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = rel
		hdr.Uname, hdr.Gname = "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.Copy(tw, f)
			return err
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// ociLayout writes blobs and an index.json.
type ociLayout struct {
	t   T
	dir string
}

func newOCILayout(t T, dir string) *ociLayout {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return &ociLayout{t: t, dir: dir}
}

func (l *ociLayout) blob(mediaType string, data []byte) v1.Descriptor {
	d := digest.FromBytes(data)
	if err := os.WriteFile(filepath.Join(l.dir, "blobs", "sha256", d.Encoded()), data, 0o644); err != nil {
		l.t.Fatal(err)
	}
	return v1.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(data))}
}

func (l *ociLayout) jsonBlob(mediaType string, v any) v1.Descriptor {
	data, err := json.Marshal(v)
	if err != nil {
		l.t.Fatal(err)
	}
	return l.blob(mediaType, data)
}

// image writes one image's layers, config and manifest.
func (l *ociLayout) image(spec ImageSpec) v1.Descriptor {
	t := l.t
	if spec.Platform.OS == "" {
		spec.Platform = v1.Platform{OS: "linux", Architecture: "amd64"}
	}
	cfg := v1.Image{
		Platform: spec.Platform,
		Config:   spec.Config,
		RootFS:   v1.RootFS{Type: "layers"},
	}
	created := time.Unix(1700000000, 0).UTC()
	cfg.Created = &created
	var layers []v1.Descriptor
	for _, layer := range spec.Layers {
		raw := layer.Tar
		switch {
		case layer.Dir != "":
			raw = TarDir(t, layer.Dir)
		case raw == nil:
			raw = TarFiles(t, layer.Files)
		}
		if layer.Compression == "estargz" {
			desc, diffID := l.estargzLayer(raw, layer)
			cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, diffID)
			layers = append(layers, desc)
			continue
		}
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, digest.FromBytes(raw))
		var buf bytes.Buffer
		mt := v1.MediaTypeImageLayerGzip
		switch layer.Compression {
		case "", "gzip":
			zw := gzip.NewWriter(&buf)
			zw.Write(raw)
			zw.Close()
		case "zstd":
			mt = v1.MediaTypeImageLayerZstd
			zw, err := zstd.NewWriter(&buf)
			if err != nil {
				t.Fatal(err)
			}
			zw.Write(raw)
			zw.Close()
		case "none":
			mt = v1.MediaTypeImageLayer
			buf.Write(raw)
		default:
			t.Fatalf("unknown compression %q", layer.Compression)
		}
		layers = append(layers, l.blob(mt, buf.Bytes()))
	}
	m := v1.Manifest{
		Versioned:   specsv.Versioned{SchemaVersion: 2},
		MediaType:   v1.MediaTypeImageManifest,
		Config:      l.jsonBlob(v1.MediaTypeImageConfig, cfg),
		Layers:      layers,
		Annotations: spec.Annotations,
	}
	d := l.jsonBlob(v1.MediaTypeImageManifest, m)
	p := spec.Platform
	d.Platform = &p
	return d
}

// estargzLayer writes raw as an eStargz blob and returns its descriptor,
// with the annotations lazy pullers read, and its diff ID.
func (l *ociLayout) estargzLayer(raw []byte, layer Layer) (v1.Descriptor, digest.Digest) {
	t := l.t
	opts := []estargz.Option{estargz.WithPrioritizedFiles(layer.EStargzPrefetch)}
	if layer.EStargzChunkSize > 0 {
		opts = append(opts, estargz.WithChunkSize(layer.EStargzChunkSize))
	}
	blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(raw), 0, int64(len(raw))), opts...)
	if err != nil {
		t.Fatalf("estargz: %v", err)
	}
	defer blob.Close()
	data, err := io.ReadAll(blob)
	if err != nil {
		t.Fatalf("estargz: %v", err)
	}
	size, err := blob.UncompressedSize()
	if err != nil {
		t.Fatalf("estargz: %v", err)
	}
	desc := l.blob(v1.MediaTypeImageLayerGzip, data)
	desc.Annotations = map[string]string{
		estargz.TOCJSONDigestAnnotation:         blob.TOCDigest().String(),
		estargz.StoreUncompressedSizeAnnotation: strconv.FormatInt(size, 10),
	}
	return desc, blob.DiffID()
}

func (l *ociLayout) index(tag string, manifests ...v1.Descriptor) {
	for i := range manifests {
		manifests[i].Annotations = map[string]string{v1.AnnotationRefName: tag}
	}
	idx := v1.Index{Versioned: specsv.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: manifests}
	data, err := json.Marshal(idx)
	if err != nil {
		l.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(l.dir, "index.json"), data, 0o644); err != nil {
		l.t.Fatal(err)
	}
}

// BuildOCI writes an OCI layout with one image tagged tag, and returns
// "<dir>:<tag>" for the oci: transport.
func BuildOCI(t T, dir, tag string, spec ImageSpec) string {
	t.Helper()
	l := newOCILayout(t, dir)
	l.index(tag, l.image(spec))
	return dir + ":" + tag
}

// ArtifactFile is one layer of an OCI artifact: a file, named by its
// title annotation where Title is set.
type ArtifactFile struct {
	Title, Content, MediaType string
}

// BuildOCIArtifact writes an OCI layout with one artifact tagged tag (an
// artifactType, the empty config, a layer per file), as model weights
// and other non-image content are shipped, and returns "<dir>:<tag>".
func BuildOCIArtifact(t T, dir, tag, artifactType string, files ...ArtifactFile) string {
	t.Helper()
	l := newOCILayout(t, dir)
	empty := l.blob("application/vnd.oci.empty.v1+json", []byte("{}"))
	var layers []v1.Descriptor
	for _, f := range files {
		mt := f.MediaType
		if mt == "" {
			mt = "application/octet-stream"
		}
		d := l.blob(mt, []byte(f.Content))
		if f.Title != "" {
			d.Annotations = map[string]string{v1.AnnotationTitle: f.Title}
		}
		layers = append(layers, d)
	}
	m := v1.Manifest{
		Versioned: specsv.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest,
		ArtifactType: artifactType, Config: empty, Layers: layers,
	}
	l.index(tag, l.jsonBlob(v1.MediaTypeImageManifest, m))
	return dir + ":" + tag
}

// BuildOCIIndex writes an OCI layout whose tag is a multi-platform index
// of the images.
func BuildOCIIndex(t T, dir, tag string, specs ...ImageSpec) string {
	t.Helper()
	l := newOCILayout(t, dir)
	var ms []v1.Descriptor
	for _, s := range specs {
		ms = append(ms, l.image(s))
	}
	inner := v1.Index{Versioned: specsv.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: ms}
	l.index(tag, l.jsonBlob(v1.MediaTypeImageIndex, inner))
	return dir + ":" + tag
}

// Push copies an OCI layout image ("dir:tag") to repo:tag on the
// registry, every platform of an index included, digests unchanged.
func (r *Registry) Push(t T, layoutRef, repoTag string) {
	t.Helper()
	r.PushAs(t, layoutRef, repoTag, "")
}

// PushAs is Push converting the manifest to a MIME type (Docker schema 2,
// say); "" keeps it.
func (r *Registry) PushAs(t T, layoutRef, repoTag, manifestType string) {
	t.Helper()
	src, err := layout.ParseReference(layoutRef)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := docker.ParseReference("//" + r.Addr + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	sys := &types.SystemContext{DockerInsecureSkipTLSVerify: types.OptionalBoolTrue}
	if r.User != "" {
		sys.DockerAuthConfig = &types.DockerAuthConfig{Username: r.User, Password: r.Password}
	}
	pc, err := signature.NewPolicyContext(&signature.Policy{Default: signature.PolicyRequirements{signature.NewPRInsecureAcceptAnything()}})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Destroy()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts := &copy.Options{SourceCtx: sys, DestinationCtx: sys, ImageListSelection: copy.CopyAllImages, PreserveDigests: true}
	if manifestType != "" {
		opts.ForceManifestMIMEType, opts.PreserveDigests = manifestType, false
	}
	_, err = copy.Image(ctx, pc, dst, src, opts)
	if err != nil {
		t.Fatalf("push %s to %s: %v", layoutRef, repoTag, err)
	}
}

// ExportDockerArchive writes an OCI layout image as a docker-archive tar
// (`docker save` format) tagged name.
func ExportDockerArchive(t T, layoutRef, path, name string) {
	t.Helper()
	src, err := layout.ParseReference(layoutRef)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := alltransportsDockerArchive(path + ":" + name)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := signature.NewPolicyContext(&signature.Policy{Default: signature.PolicyRequirements{signature.NewPRInsecureAcceptAnything()}})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Destroy()
	if _, err := copy.Image(context.Background(), pc, dst, src, &copy.Options{}); err != nil {
		t.Fatalf("export %s to %s: %v", layoutRef, path, err)
	}
}

func alltransportsDockerArchive(ref string) (types.ImageReference, error) {
	return dockerarchive.ParseReference(ref)
}

// Manifest reads the manifest of repoTag, a single image, from the
// registry.
func (r *Registry) Manifest(t T, repoTag string) v1.Manifest {
	t.Helper()
	ref, err := docker.ParseReference("//" + r.Addr + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	sys := &types.SystemContext{DockerInsecureSkipTLSVerify: types.OptionalBoolTrue}
	if r.User != "" {
		sys.DockerAuthConfig = &types.DockerAuthConfig{Username: r.User, Password: r.Password}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	src, err := ref.NewImageSource(ctx, sys)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	raw, _, err := src.GetManifest(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var m v1.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("manifest of %s: %v", repoTag, err)
	}
	return m
}
