package image_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/internal/testutil"
)

// A container's changes come out as an OCI layer would carry them: new
// and changed files with their content and owner, a deleted file as a
// whiteout (and in the deleted list), a directory replaced as an opaque
// one, and a symlink to the host's /etc as a symlink, never followed.
func TestRootfsDiff(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	ref := e.push("diff:v1", simpleImage(
		testutil.File{Path: "etc/", Type: tar.TypeDir},
		testutil.File{Path: "etc/keep", Content: "image"},
		testutil.File{Path: "etc/gone", Content: "image"},
		testutil.File{Path: "data/", Type: tar.TypeDir},
		testutil.File{Path: "data/old", Content: "image"},
	))
	e.pull(ref)
	r, err := e.store.CreateRootfs("c1", ref, nil)
	must(t, err)
	t.Cleanup(func() { _ = e.store.RemoveRootfs("c1") })
	in := func(p string) string { return filepath.Join(r.Path, p) }
	must(t, os.WriteFile(in("etc/keep"), []byte("changed"), 0o640))
	must(t, os.Chmod(in("etc/keep"), 0o640))
	must(t, os.Chown(in("etc/keep"), 1000, 1001))
	must(t, os.Remove(in("etc/gone")))
	must(t, os.RemoveAll(in("data")))
	must(t, os.Mkdir(in("data"), 0o755))
	must(t, os.WriteFile(in("data/new"), []byte("new"), 0o644))
	must(t, os.Symlink("/etc", in("hostetc")))

	var buf bytes.Buffer
	deleted, err := e.store.RootfsDiff("c1", &buf)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*tar.Header{}
	content := map[string]string{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		must(t, err)
		got[h.Name] = h
		b, _ := io.ReadAll(tr)
		content[h.Name] = string(b)
	}
	if h := got["etc/keep"]; h == nil || content["etc/keep"] != "changed" || h.Uid != 1000 || h.Gid != 1001 || h.Mode&0o777 != 0o640 {
		t.Errorf("etc/keep: %+v %q", h, content["etc/keep"])
	}
	if got["etc/.wh.gone"] == nil || got["data/.wh..wh..opq"] == nil || content["data/new"] != "new" {
		t.Errorf("whiteouts or new file missing: %v", slices.Sorted(maps.Keys(got)))
	}
	if h := got["hostetc"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "/etc" {
		t.Errorf("hostetc: %+v", h)
	}
	if _, ok := got["hostetc/passwd"]; ok {
		t.Errorf("the diff followed a symlink out of the container")
	}
	if !slices.Equal(deleted, []string{"/etc/gone"}) {
		t.Errorf("deleted %v, want [/etc/gone]", deleted)
	}

	// Applied to a fresh root filesystem of the same image, the diff
	// gives the same view: what a restore from a checkpoint does.
	r2, err := e.store.CreateRootfs("c2", ref, nil)
	must(t, err)
	t.Cleanup(func() { _ = e.store.RemoveRootfs("c2") })
	var again bytes.Buffer
	_, err = e.store.RootfsDiff("c1", &again)
	must(t, err)
	must(t, e.store.ApplyRootfsDiff("c2", &again, deleted))
	in2 := func(p string) string { return filepath.Join(r2.Path, p) }
	if b, err := os.ReadFile(in2("etc/keep")); err != nil || string(b) != "changed" {
		t.Errorf("etc/keep after apply: %q %v", b, err)
	}
	if fi, err := os.Stat(in2("etc/keep")); err != nil || fi.Mode().Perm() != 0o640 || fi.Sys().(*syscall.Stat_t).Uid != 1000 {
		t.Errorf("etc/keep's mode or owner after apply: %v %v", fi, err)
	}
	for _, gone := range []string{"etc/gone", "data/old"} {
		if _, err := os.Lstat(in2(gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after apply (%v)", gone, err)
		}
	}
	if b, _ := os.ReadFile(in2("data/new")); string(b) != "new" {
		t.Errorf("data/new after apply: %q", b)
	}
	if l, err := os.Readlink(in2("hostetc")); err != nil || l != "/etc" {
		t.Errorf("hostetc after apply: %q %v", l, err)
	}

	if _, err := e.store.RootfsDiff("../c1", io.Discard); err == nil {
		t.Errorf("a diff of an id with a path in it")
	}
	if _, err := e.store.RootfsDiff("none", io.Discard); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("diff of a missing rootfs: %v", err)
	}
}

// A hostile diff (a symlink out of the root filesystem and a file
// written through it, a ".." name, a hard link to a host file, deleted
// files outside) changes nothing outside the root filesystem.
func TestApplyRootfsDiffStaysInside(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	ref := e.push("hostile:v1", simpleImage(testutil.File{Path: "etc/", Type: tar.TypeDir}))
	e.pull(ref)
	_, err := e.store.CreateRootfs("h1", ref, nil)
	must(t, err)
	t.Cleanup(func() { _ = e.store.RemoveRootfs("h1") })
	outside := t.TempDir()
	sentinel := filepath.Join(outside, "keep")
	must(t, os.WriteFile(sentinel, []byte("host"), 0o644))

	entries := []*tar.Header{
		{Typeflag: tar.TypeSymlink, Name: "escape", Linkname: outside},
		{Typeflag: tar.TypeReg, Name: "escape/pwned", Mode: 0o644},
		{Typeflag: tar.TypeReg, Name: "../../../../" + outside + "/dotdot", Mode: 0o644},
		{Typeflag: tar.TypeLink, Name: "hard", Linkname: "escape/keep"},
		{Typeflag: tar.TypeReg, Name: "escape/.wh.keep", Mode: 0o644},
	}
	for _, h := range entries {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		must(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "escape", Linkname: outside}))
		must(t, tw.WriteHeader(h))
		must(t, tw.Close())
		_ = e.store.ApplyRootfsDiff("h1", &buf, nil)
	}
	_ = e.store.ApplyRootfsDiff("h1", bytes.NewReader(nil), []string{outside + "/keep", "../../" + outside + "/keep", "escape/keep"})
	names, _ := os.ReadDir(outside)
	if b, err := os.ReadFile(sentinel); err != nil || string(b) != "host" || len(names) != 1 {
		t.Fatalf("a hostile diff reached the host: %v, sentinel %q %v", names, b, err)
	}
}

// A checkpoint archive holds plain files and directories only: CRIU reads
// them without os.Root, so a symlink or a device in one is refused.
func TestExtractFilesPlainOnly(t *testing.T) {
	for _, h := range []*tar.Header{
		{Typeflag: tar.TypeSymlink, Name: "checkpoint/pages-1.img", Linkname: "/etc/shadow"},
		{Typeflag: tar.TypeLink, Name: "checkpoint/core-1.img", Linkname: "config.dump"},
		{Typeflag: tar.TypeChar, Name: "checkpoint/dev", Devmajor: 1, Devminor: 1},
	} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		must(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "config.dump", Mode: 0o600}))
		must(t, tw.WriteHeader(h))
		must(t, tw.Close())
		dir := t.TempDir()
		root, err := os.OpenRoot(dir)
		must(t, err)
		if err := image.ExtractFiles(root, &buf); err == nil {
			t.Errorf("a %q entry was extracted from a checkpoint archive", h.Typeflag)
		}
		root.Close()
		if _, err := os.Lstat(filepath.Join(dir, h.Name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s was made", h.Name)
		}
	}
}
