package image_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-runtime/berth/internal/testutil"
)

// An image mounted for image volumes: one mount for every user, its files
// read-only, sub paths inside it, gone with its last user; its layers
// kept while it is mounted, image removed or not.
func TestImageMounts(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	ref := e.push("vol:v1", simpleImage(
		testutil.File{Path: "data/file", Content: "in the image"},
		testutil.File{Path: "up", Type: '2', Linkname: "../../../../etc"},
	))
	img := e.pull(ref)
	a, err := e.store.MountImage(ref, "container-a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.store.MountImage(img.ID, "container-b")
	if err != nil || b.Path != a.Path {
		t.Fatalf("second user: %v %v, want the same mount %s", b, err, a.Path)
	}
	if data, err := os.ReadFile(filepath.Join(a.Path, "data", "file")); err != nil || string(data) != "in the image" {
		t.Fatalf("the image's file: %q %v", data, err)
	}
	if err := os.WriteFile(filepath.Join(a.Path, "new"), nil, 0o644); err == nil {
		t.Error("the image mount is writable")
	}
	if p, err := a.SubPath("data"); err != nil || p != filepath.Join(a.Path, "data") {
		t.Errorf("sub path data: %q %v", p, err)
	}
	// The image's symlink climbs out: resolved inside, it finds no etc.
	if p, err := a.SubPath("up/passwd"); err == nil {
		t.Errorf("sub path through a symlink out of the image: %q", p)
	}
	must(t, e.store.Remove(ref))
	must(t, e.store.UnmountImages("container-a"))
	if data, err := os.ReadFile(filepath.Join(b.Path, "data", "file")); err != nil || string(data) != "in the image" {
		t.Fatalf("after one user went and the image was removed: %q %v", data, err)
	}
	must(t, e.store.UnmountImages("container-b"))
	if _, err := os.Stat(b.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the mount point after its last user: %v", err)
	}
	e.assertEmpty()
}

// An OCI artifact (model weights, say): pulled as its files, mounted as
// an image volume, never a root filesystem.
func TestArtifact(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	layout := testutil.BuildOCIArtifact(t, t.TempDir(), "v1", "application/vnd.example.model",
		testutil.ArtifactFile{Title: "weights.bin", Content: "0123456789"},
		testutil.ArtifactFile{Title: "../escape", Content: "named by its digest"},
		testutil.ArtifactFile{Content: "untitled"})
	e.reg.Push(t, layout, "model:v1")
	ref := e.reg.Addr + "/model:v1"
	img := e.pull(ref)
	if !img.Artifact || len(img.Layers) != 1 {
		t.Fatalf("artifact record: %+v", img)
	}
	if _, err := e.store.Config(img); err == nil || !strings.Contains(err.Error(), "artifact") {
		t.Errorf("Config of an artifact: %v", err)
	}
	m, err := e.store.MountImage(ref, "model-user")
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(m.Path)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, en := range entries {
		names = append(names, en.Name())
	}
	if len(names) != 3 || !strings.Contains(strings.Join(names, " "), "weights.bin") {
		t.Errorf("the artifact's files: %v", names)
	}
	if data, err := os.ReadFile(filepath.Join(m.Path, "weights.bin")); err != nil || string(data) != "0123456789" {
		t.Errorf("weights.bin: %q %v", data, err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(m.Path), "escape")); err == nil {
		t.Error("a title with .. wrote outside the artifact")
	}
	must(t, e.store.UnmountImages("model-user"))
	// Pulled again: the same record, its files stored once.
	if again := e.pull(ref); again.ID != img.ID {
		t.Errorf("pulled again: %s, was %s", again.ID, img.ID)
	}
	must(t, e.store.Remove(ref))
	e.assertEmpty()
}
