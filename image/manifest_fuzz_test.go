package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/berth-runtime/berth/internal/testutil"
)

// Manifest media types a fuzz input may claim for its top-level blob.
var fuzzMediaTypes = []string{
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
}

// Seeds. The fuzzer edits them freely; the @NAME@ placeholders are filled
// with the real digests and sizes of the other blobs before the pull, so
// that a mutation reaches past the digest checks into the parsers.
const (
	seedManifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"@CONFIG@","size":@CONFIGSIZE@},
"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"@LAYER@","size":@LAYERSIZE@}]}`
	seedDockerManifest = `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
"config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"@CONFIG@","size":@CONFIGSIZE@},
"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar","digest":"@LAYER@","size":@LAYERSIZE@}]}`
	seedIndex = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"@MANIFEST@","size":@MANIFESTSIZE@,"platform":{"architecture":"@ARCH@","os":"linux"}}]}`
	seedConfig = `{"architecture":"@ARCH@","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},
"rootfs":{"type":"layers","diff_ids":["@DIFFID@"]},"created":"2024-01-01T00:00:00Z"}`
)

// FuzzManifest pulls an OCI layout whose manifest (or index), config and
// layer come from the fuzzer, through the same code as a registry pull.
// A pull may fail, but only with one of the store's error kinds, leaving
// no image behind; one that succeeds gets a root filesystem (the overlay
// mounted) and can be removed again. Throughout, a sentinel tree beside
// the store ("../../../outside" from a layer) stays as it was.
func FuzzManifest(f *testing.F) {
	if os.Geteuid() != 0 {
		f.Skip("unpacking layers keeps owners and device nodes: needs root")
	}
	layer := fuzzLayer(f)
	f.Add(byte(0), []byte(seedManifest), []byte(seedConfig), layer)
	f.Add(byte(1), []byte(seedIndex), []byte(seedConfig), layer)
	f.Add(byte(2), []byte(seedDockerManifest), []byte(seedConfig), layer)
	f.Add(byte(3), []byte(strings.ReplaceAll(seedIndex, "oci.image.manifest.v1", "docker.distribution.manifest.v2")), []byte(seedConfig), layer)
	f.Add(byte(0), []byte(seedManifest), []byte(strings.Replace(seedConfig, `"@DIFFID@"`, `"@DIFFID@","@DIFFID@"`, 1)), layer)
	f.Add(byte(0), []byte(`{"schemaVersion":1}`), []byte(`{}`), []byte{})

	dir := f.TempDir()
	sentinel := testutil.NewSentinelAt(f, filepath.Join(dir, "outside"))
	f.Add(byte(0), []byte(seedManifest), []byte(seedConfig), hostileLayer(f))
	s, err := Open(Options{
		Root:              filepath.Join(dir, "store"),
		RegistriesConfDir: filepath.Join(dir, "registries.d"),
		PolicyFile:        writeFile(f, dir, "policy.json", `{"default":[{"type":"insecureAcceptAnything"}]}`),
		RegistriesConf:    writeFile(f, dir, "registries.conf", "unqualified-search-registries = []\n"),
		ShortNameAliases:  filepath.Join(dir, "aliases.conf"),
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	seq := 0
	f.Fuzz(func(t *testing.T, mt byte, top, config, layer []byte) {
		seq++
		layout := filepath.Join(dir, fmt.Sprintf("layout-%d", seq))
		defer os.RemoveAll(layout)
		writeLayout(t, layout, fuzzMediaTypes[int(mt)%len(fuzzMediaTypes)], top, config, layer)

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		img, err := s.Pull(ctx, "oci:"+layout+":fuzz", PullOptions{})
		if err != nil {
			if !errors.Is(err, ErrBadImage) && !errors.Is(err, ErrDigestMismatch) && !errors.Is(err, ErrPlatform) &&
				!errors.Is(err, ErrUnknownTag) && !errors.Is(err, ErrNotFound) {
				t.Fatalf("pull failed with an error of no kind (CRI would say Unknown): %v", err)
			}
		} else {
			id := fmt.Sprintf("fuzz-%d", seq)
			if _, err := s.CreateRootfs(id, img.ID, nil); err != nil {
				t.Errorf("root filesystem of the image just pulled: %v", err)
			}
			if err := s.RemoveRootfs(id); err != nil {
				t.Fatalf("remove the root filesystem: %v", err)
			}
			if err := s.Remove(img.ID); err != nil {
				t.Fatalf("remove the image just pulled: %v", err)
			}
		}
		for _, d := range sentinel.Changes() {
			t.Errorf("outside the store: %s", d)
		}
		if imgs, err := s.List(); err != nil || len(imgs) != 0 {
			t.Fatalf("images left after the pull (error %v): %v, %v", err, imgs, err)
		}
	})
}

// writeLayout writes an OCI layout tagged "fuzz" holding the blobs, with
// the placeholders in top and config filled in.
func writeLayout(t testing.TB, dir, mediaType string, top, config, layer []byte) {
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		t.Fatal(err)
	}
	put := func(b []byte) digest.Digest {
		d := digest.FromBytes(b)
		if err := os.WriteFile(filepath.Join(blobs, d.Encoded()), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return d
	}
	arch := goruntime.GOARCH
	layerD := put(layer)
	config = bytes.ReplaceAll(config, []byte("@DIFFID@"), []byte(layerD))
	config = bytes.ReplaceAll(config, []byte("@ARCH@"), []byte(arch))
	configD := put(config)
	fill := func(b []byte) []byte {
		r := strings.NewReplacer("@CONFIG@", configD.String(), "@CONFIGSIZE@", fmt.Sprint(len(config)),
			"@LAYER@", layerD.String(), "@LAYERSIZE@", fmt.Sprint(len(layer)), "@ARCH@", arch)
		return []byte(r.Replace(string(b)))
	}
	// An index points at the seed manifest, filled in the same way.
	inner := fill([]byte(seedManifest))
	innerD := put(inner)
	top = bytes.ReplaceAll(fill(top), []byte("@MANIFEST@"), []byte(innerD))
	top = bytes.ReplaceAll(top, []byte("@MANIFESTSIZE@"), []byte(fmt.Sprint(len(inner))))
	topD := put(top)
	index := fmt.Sprintf(`{"schemaVersion":2,"manifests":[{"mediaType":%q,"digest":%q,"size":%d,"annotations":{"org.opencontainers.image.ref.name":"fuzz"}}]}`,
		mediaType, topD, len(top))
	writeFile(t, dir, "index.json", index)
	writeFile(t, dir, "oci-layout", `{"imageLayoutVersion":"1.0.0"}`)
}

func writeFile(t testing.TB, dir, name, content string) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// hostileLayer aims a symlink at the sentinel beside the store (from a
// layer at store/layers/<id> or store/tmp/<id>) and writes through it.
func hostileLayer(t testing.TB) []byte {
	return tarOf(t, []hostile{
		{name: "a", typ: tar.TypeSymlink, linkname: "../../../outside"},
		{name: "a/victim/x", content: "x"},
		{name: "b", typ: tar.TypeLink, linkname: "a/sentinel"},
	})
}

// fuzzLayer is a small valid layer: a directory and a file.
func fuzzLayer(t testing.TB) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "bin/hello", Typeflag: tar.TypeReg, Mode: 0o755, Size: 5},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("hello"))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
