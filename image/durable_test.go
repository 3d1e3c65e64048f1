package image_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/internal/testutil"
)

// Each layer is synced with its files complete and before the store
// lists the image: after a power cut the store never lists a layer whose
// files are empty or missing. (A power cut itself needs device-mapper's
// dm-flakey or dm-log-writes, which this kernel does not have.)
func TestLayersSyncedBeforeListed(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	ref := e.push("durable/img:1", testutil.ImageSpec{Layers: []testutil.Layer{
		{Files: []testutil.File{{Path: "a/first", Content: "one\n"}}},
		{Files: []testutil.File{{Path: "b/second", Content: "two\n"}}},
	}})
	type syncCall struct {
		dir     string
		content string
		listed  bool
	}
	var (
		mu     sync.Mutex
		syncs  []syncCall
		failed error
	)
	restore := image.SetSyncFS(func(fd int) error {
		dir, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
		s := syncCall{dir: dir}
		for _, f := range []string{"a/first", "b/second"} {
			if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil {
				s.content += string(b)
			}
		}
		_, lerr := e.store.Get(ref)
		s.listed = lerr == nil
		mu.Lock()
		syncs = append(syncs, s)
		if err != nil && failed == nil {
			failed = err
		}
		mu.Unlock()
		return unix.Syncfs(fd)
	})
	defer restore()
	img := e.pull(ref)
	if failed != nil {
		t.Fatal(failed)
	}
	if len(syncs) != len(img.Layers) {
		t.Fatalf("%d syncs for %d layers: %+v", len(syncs), len(img.Layers), syncs)
	}
	var contents []string
	for _, s := range syncs {
		if s.listed {
			t.Errorf("layer %s synced after the image was listed", s.dir)
		}
		// Still in the store's tmp: a layer moves into layers/ in the
		// transaction that records it.
		if !strings.HasPrefix(s.dir, filepath.Join(e.opts.Root, "tmp")+"/") {
			t.Errorf("synced %s, not a layer being unpacked in %s/tmp: synced after its record committed?", s.dir, e.opts.Root)
		}
		contents = append(contents, s.content)
	}
	// Synced with its files written: each layer's own file was there.
	if strings.Join(contents, "") != "one\ntwo\n" && strings.Join(contents, "") != "two\none\n" {
		t.Errorf("layer contents at their syncs: %q", contents)
	}
}
