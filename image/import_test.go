package image_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/internal/testutil"
)

// importFile imports the archive at path.
func importFile(t *testing.T, s *image.Store, path string, o image.ImportOptions) ([]*image.Image, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return s.Import(context.Background(), f, o)
}

// Archives as `docker save` and `podman save --format oci-archive` write
// them load under the names they give, or the one asked for; a root
// filesystem of the loaded image has its files.
func TestImportArchives(t *testing.T) {
	s := localStore(t)
	dir := t.TempDir()

	// docker-archive, two tags of one image.
	layout := testutil.BuildOCI(t, filepath.Join(dir, "layout"), "v1", simpleImage(testutil.File{Path: "loaded", Content: "from an archive"}))
	saved := filepath.Join(dir, "saved.tar")
	testutil.ExportDockerArchive(t, layout, saved, "example.test/saved:v1")
	imgs, err := importFile(t, s, saved, image.ImportOptions{})
	if err != nil || len(imgs) != 1 {
		t.Fatalf("import docker-archive: %v %v", imgs, err)
	}
	if got, err := s.Get("example.test/saved:v1"); err != nil || got.ID != imgs[0].ID {
		t.Fatalf("the loaded image by its tag: %v, %v", got, err)
	}
	if slices.ContainsFunc(imgs[0].Names, func(n string) bool { return strings.Contains(n, "archive") }) {
		t.Errorf("the temporary archive's path is a name: %v", imgs[0].Names)
	}
	rf, err := s.CreateRootfs("import-rootfs", "example.test/saved:v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(rf.Path, "loaded"))
	_ = s.RemoveRootfs("import-rootfs")
	if err != nil || string(data) != "from an archive" {
		t.Fatalf("file of the loaded image: %q %v", data, err)
	}

	// oci-archive whose index gives a full name.
	named := testutil.BuildOCI(t, filepath.Join(dir, "named"), "example.test/oci:v2", simpleImage(testutil.File{Path: "oci", Content: "o"}))
	ociTar := filepath.Join(dir, "oci.tar")
	writeTar(t, ociTar, strings.TrimSuffix(named, ":example.test/oci:v2"))
	if imgs, err := importFile(t, s, ociTar, image.ImportOptions{}); err != nil || !slices.Contains(imgs[0].Names, "example.test/oci:v2") {
		t.Fatalf("import oci-archive with a full name: %v %v", imgs, err)
	}

	// oci-archive whose index gives a tag only: the name asked for.
	tagged := testutil.BuildOCI(t, filepath.Join(dir, "tagged"), "v3", simpleImage(testutil.File{Path: "tag", Content: "t"}))
	tagTar := filepath.Join(dir, "tag.tar")
	writeTar(t, tagTar, strings.TrimSuffix(tagged, ":v3"))
	if _, err := importFile(t, s, tagTar, image.ImportOptions{}); err == nil || !strings.Contains(err.Error(), "has no name") {
		t.Fatalf("import of an unnamed image without a name: %v", err)
	}
	if imgs, err := importFile(t, s, tagTar, image.ImportOptions{Name: "example.test/given"}); err != nil || !slices.Contains(imgs[0].Names, "example.test/given:latest") {
		t.Fatalf("import with a name: %v %v", imgs, err)
	}

	// Not an archive of images: refused, nothing left.
	before, _ := s.List()
	for name, content := range map[string][]byte{
		"not a tar":     []byte("this is not a tar archive"),
		"a tar of what": testutil.TarDir(t, t.TempDir()),
	} {
		if _, err := s.Import(context.Background(), bytes.NewReader(content), image.ImportOptions{Name: "x"}); !errors.Is(err, image.ErrBadImage) {
			t.Errorf("import of %s: %v, want ErrBadImage", name, err)
		}
	}
	after, _ := s.List()
	if len(after) != len(before) {
		t.Errorf("images %d before bad imports, %d after", len(before), len(after))
	}
	if left, _ := os.ReadDir(filepath.Join(s.Root(), "tmp")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
