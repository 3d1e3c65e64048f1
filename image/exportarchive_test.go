package image_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/internal/testutil"
)

// An exported image is the image that was pulled: loaded into another
// store it has the same ID (its layers are the pulled tars, byte for
// byte: whiteouts, links and directories included), and skopeo, an
// independent reader that checks every blob against its digest, copies
// it out of either archive format.
func TestExportRoundTrip(t *testing.T) {
	s := localStore(t)
	dir := t.TempDir()
	spec := testutil.ImageSpec{
		Layers: []testutil.Layer{
			{Files: []testutil.File{
				{Path: "etc/", Type: tar.TypeDir, Mode: 0o700},
				{Path: "etc/conf", Content: "one"},
				{Path: "etc/gone", Content: "removed above"},
				{Path: "bin/", Type: tar.TypeDir},
				{Path: "bin/tool", Content: "#!/bin/sh\n", Mode: 0o755, UID: 7, GID: 8},
				{Path: "bin/link", Type: tar.TypeSymlink, Linkname: "tool"},
				{Path: "bin/hard", Type: tar.TypeLink, Linkname: "bin/tool"},
				{Path: "empty", Content: ""},
			}},
			{Files: []testutil.File{
				{Path: "etc/.wh.gone"},
				{Path: "etc/conf", Content: "two"},
				{Path: "opaque/", Type: tar.TypeDir},
				{Path: "opaque/.wh..wh..opq"},
			}},
		},
	}
	layout := testutil.BuildOCI(t, filepath.Join(dir, "layout"), "v1", spec)
	saved := filepath.Join(dir, "saved.tar")
	testutil.ExportDockerArchive(t, layout, saved, "example.test/round:v1")
	imgs, err := importFile(t, s, saved, image.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id := imgs[0].ID

	for _, format := range []string{image.FormatDockerArchive, image.FormatOCIArchive} {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			if err := s.Export(context.Background(), &buf, []string{"example.test/round:v1"}, image.ExportOptions{Format: format}); err != nil {
				t.Fatal(err)
			}
			other := localStore(t)
			got, err := other.Import(context.Background(), bytes.NewReader(buf.Bytes()), image.ImportOptions{})
			if err != nil {
				t.Fatalf("import of the export: %v", err)
			}
			if len(got) != 1 || got[0].ID != id || got[0].Names[0] != "example.test/round:v1" {
				t.Fatalf("export loaded as %+v, want %s named example.test/round:v1", got[0], id)
			}
			var again bytes.Buffer
			if err := s.Export(context.Background(), &again, []string{id}, image.ExportOptions{Format: format}); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again.Bytes(), buf.Bytes()) {
				t.Errorf("two exports of one image differ (by name, by ID: the names are the same here)")
			}

			skopeo := testutil.RequireCommand(t, "skopeo")
			archive := filepath.Join(t.TempDir(), "export.tar")
			must(t, os.WriteFile(archive, buf.Bytes(), 0o600))
			src := "docker-archive:" + archive
			if format == image.FormatOCIArchive {
				src = "oci-archive:" + archive + ":example.test/round:v1"
			}
			out, err := exec.Command(skopeo, "--insecure-policy", "copy", "-q", src, "dir:"+filepath.Join(t.TempDir(), "copy")).CombinedOutput()
			if err != nil {
				t.Fatalf("skopeo copy %s: %v: %s", src, err, out)
			}
			cfg, err := exec.Command(skopeo, "inspect", "--config", "--raw", src).Output()
			if err != nil {
				t.Fatalf("skopeo inspect --config %s: %v", src, err)
			}
			if d := digest.FromBytes(cfg).String(); d != id {
				t.Errorf("skopeo reads config %s, want %s", d, id)
			}
		})
	}

	// Errors before the first byte: nothing written.
	var buf bytes.Buffer
	if err := s.Export(context.Background(), &buf, []string{"example.test/none:v1"}, image.ExportOptions{}); !errors.Is(err, image.ErrNotFound) || buf.Len() != 0 {
		t.Errorf("export of a missing image: %v (%d bytes written), want ErrNotFound", err, buf.Len())
	}
	if err := s.Export(context.Background(), &buf, []string{id}, image.ExportOptions{Format: "zip"}); err == nil || buf.Len() != 0 {
		t.Errorf("export as zip: %v", err)
	}
	// A layer whose files changed on disk is not the layer any more.
	conf := filepath.Join(s.Root(), "layers", imgs[0].Layers[1].Encoded(), "etc", "conf")
	must(t, os.WriteFile(conf, []byte("owt"), 0o644))
	if err := s.Export(context.Background(), io.Discard, []string{id}, image.ExportOptions{}); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("export of a layer changed on disk: %v, want its checksum error", err)
	}
	must(t, os.WriteFile(conf, []byte("two"), 0o644))
	// A layer stored without its tar-split (by a berth before this one).
	splits, _ := filepath.Glob(filepath.Join(s.Root(), "tar-split", "*"))
	if len(splits) != 2 {
		t.Fatalf("tar-splits of a two-layer image: %v", splits)
	}
	must(t, os.Remove(splits[0]))
	if err := s.Export(context.Background(), &buf, []string{id}, image.ExportOptions{}); err == nil || !strings.Contains(err.Error(), "pull the image again") || buf.Len() != 0 {
		t.Errorf("export without a tar-split: %v (%d bytes written)", err, buf.Len())
	}
	// The collector takes a layer's tar-split with it.
	must(t, s.Remove(id))
	must(t, s.GC())
	if left, _ := os.ReadDir(filepath.Join(s.Root(), "tar-split")); len(left) != 0 {
		t.Errorf("tar-splits left after their layers went: %v", left)
	}
}

// A layer that writes through its own absolute symlink (unpacked inside
// the layer) gives its export no way out of the layer: the export has
// the layer's own bytes, never a host file's.
func TestExportSymlinkStaysInLayer(t *testing.T) {
	s := localStore(t)
	dir := t.TempDir()
	// A host directory outside the store, with a file the layer names.
	outside := t.TempDir()
	host := []byte("the host's own file, not the layer's")
	must(t, os.WriteFile(filepath.Join(outside, "secret"), host, 0o644))
	spec := simpleImage(
		testutil.File{Path: "a", Type: tar.TypeSymlink, Linkname: outside},
		testutil.File{Path: "a/secret", Content: "the layer's"},
	)
	layout := testutil.BuildOCI(t, filepath.Join(dir, "layout"), "v1", spec)
	saved := filepath.Join(dir, "saved.tar")
	testutil.ExportDockerArchive(t, layout, saved, "example.test/link:v1")
	if _, err := importFile(t, s, saved, image.ImportOptions{}); err != nil {
		t.Skipf("the unpack refuses the layer: %v", err)
	}
	var buf bytes.Buffer
	err := s.Export(context.Background(), &buf, []string{"example.test/link:v1"}, image.ExportOptions{})
	if bytes.Contains(buf.Bytes(), host) {
		t.Fatalf("the export holds the host's file (err %v)", err)
	}
	// Resolved in the layer, as the unpack resolved it: the layer's own.
	if err != nil || !bytes.Contains(buf.Bytes(), []byte("the layer's")) {
		t.Fatalf("export: %v, or the layer's file is missing", err)
	}
	if got, _ := os.ReadFile(filepath.Join(outside, "secret")); !bytes.Equal(got, host) {
		t.Fatalf("the host's file changed: %q", got)
	}
}
