package image_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/internal/testutil"
)

// TestRegistryStoppedHalfway stops the registry in the middle of a layer:
// the pull fails as unreachable, leaves nothing, and the next pull works.
func TestRegistryStoppedHalfway(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	e.push("big:v1", testutil.ImageSpec{Layers: []testutil.Layer{
		{Files: []testutil.File{{Path: "small", Content: "s"}}},
		{Files: []testutil.File{{Path: "big.bin", Content: testutil.Incompressible(16 << 20)}}},
	}})
	p := newProxy(t, e.reg.Addr)
	var once sync.Once
	p.onBlob = func(d string, body io.ReadCloser) io.ReadCloser {
		return &testutil.CutAfter{R: body, N: 2 << 20, Cut: func() { once.Do(e.reg.Stop) }}
	}
	e.insecure("", p.addr())
	name := p.addr() + "/big:v1"

	err := e.pullErr(name, image.PullOptions{})
	if !errors.Is(err, image.ErrUnreachable) {
		t.Fatalf("pull with the registry gone: %v, want unreachable", err)
	}
	e.assertEmpty()

	e.reg.Restart(t)
	p.onBlob = nil
	img := e.pull(name)
	if len(img.Layers) != 2 {
		t.Fatalf("retried pull: %+v", img)
	}
}

// TestCorruptedBlob flips one byte of a layer on the way, uncompressed
// and gzipped (where gzip's checksum notices before the digest does): a
// digest mismatch either way, nothing is kept, and a clean pull then
// works.
func TestCorruptedBlob(t *testing.T) {
	for _, compression := range []string{"none", "gzip"} {
		t.Run(compression, func(t *testing.T) {
			e := newEnv(t, testutil.RegistryOptions{})
			e.push("corrupt:v1", testutil.ImageSpec{Layers: []testutil.Layer{
				{Compression: compression, Files: []testutil.File{{Path: "data", Content: testutil.Incompressible(100000)}}},
			}})
			p := newProxy(t, e.reg.Addr)
			p.onBlob = func(d string, body io.ReadCloser) io.ReadCloser { return &testutil.FlipByte{R: body, At: 5000} }
			e.insecure("", p.addr())
			name := p.addr() + "/corrupt:v1"
			if err := e.pullErr(name, image.PullOptions{}); !errors.Is(err, image.ErrDigestMismatch) {
				t.Fatalf("corrupted layer: %v", err)
			}
			e.assertEmpty()
			p.onBlob = nil
			e.pull(name)
		})
	}
}

// TestDiskFull puts the store on a 4 MiB tmpfs and pulls more than fits.
func TestDiskFull(t *testing.T) {
	testutil.RequireRoot(t)
	root := t.TempDir()
	must(t, unix.Mount("tmpfs", root, "tmpfs", 0, "size=4m"))
	t.Cleanup(func() { _ = unix.Unmount(root, unix.MNT_DETACH) })
	e := newEnv(t, testutil.RegistryOptions{}, func(o *image.Options) { o.Root = root })
	ref := e.push("huge:v1", testutil.ImageSpec{Layers: []testutil.Layer{
		{Files: []testutil.File{{Path: "huge.bin", Content: testutil.Incompressible(8 << 20)}}},
	}})
	err := e.pullErr(ref, image.PullOptions{})
	if !errors.Is(err, image.ErrDiskFull) {
		t.Fatalf("pull onto a full disk: %v", err)
	}
	e.assertEmpty()
	small := e.push("small:v1", simpleImage(testutil.File{Path: "s", Content: "fits"}))
	e.pull(small)
}

// TestRecoversAfterCrash leaves what a killed berthd would (a lease of a
// pull in progress, a layer renamed into place without metadata, temporary
// files) and checks Open cleans it all.
func TestRecoversAfterCrash(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	keep := e.pull(e.push("keep:v1", simpleImage(testutil.File{Path: "k", Content: "k"})))
	e.store.Close()
	root := e.opts.Root
	must(t, os.MkdirAll(filepath.Join(root, "layers", strings.Repeat("ab", 32), "usr"), 0o755))
	must(t, os.MkdirAll(filepath.Join(root, "tmp", "layer-123", "etc"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "tmp", "blob-9"), []byte("x"), 0o600))
	e.open()
	entries, _ := os.ReadDir(filepath.Join(root, "layers"))
	if len(entries) != len(keep.Layers) {
		t.Fatalf("layers after recovery: %d entries, want %d", len(entries), len(keep.Layers))
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "tmp")); len(entries) != 0 {
		t.Fatalf("temporary files survived recovery: %d", len(entries))
	}
	if _, err := e.store.Get(keep.ID); err != nil {
		t.Fatalf("the stored image did not survive: %v", err)
	}
}

func TestStoreIsLockedAgainstASecondProcess(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	start := time.Now()
	_, err := image.Open(e.opts)
	if err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("second Open of the same root: %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("second Open hung")
	}
}

// TestPullCancelled cancels a slow pull: it stops, and nothing is kept.
func TestPullCancelled(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	ref := e.push("slow:v1", testutil.ImageSpec{Layers: []testutil.Layer{
		{Files: []testutil.File{{Path: "f", Content: testutil.Incompressible(4 << 20)}}},
	}})
	p := newProxy(t, e.reg.Addr)
	p.onBlob = func(d string, body io.ReadCloser) io.ReadCloser { return slowReader(body, 16<<10, 5*time.Millisecond) }
	e.insecure("", p.addr())
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for len(e.store.Pulls()) == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond)
		cancel()
	}()
	_, err := e.store.Pull(ctx, p.addr()+"/slow:v1", image.PullOptions{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled pull: %v", err)
	}
	// With its only caller gone, the pull stops too, and keeps nothing.
	deadline := time.Now().Add(time.Minute)
	for len(e.store.Pulls()) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	e.assertEmpty()
	_ = ref
}
