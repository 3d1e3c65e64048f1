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

// randomish is incompressible-looking content, so that compressed sizes
// stay near the raw ones.
func randomish(n int) string {
	b := make([]byte, n)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return string(b)
}

// TestRegistryStoppedHalfway stops the registry in the middle of a layer:
// the pull fails as unreachable, leaves nothing, and the next pull works.
func TestRegistryStoppedHalfway(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	e.push("big:v1", testutil.ImageSpec{Layers: []testutil.Layer{
		{Files: []testutil.File{{Path: "small", Content: "s"}}},
		{Files: []testutil.File{{Path: "big.bin", Content: randomish(16 << 20)}}},
	}})
	p := newProxy(t, e.reg.Addr)
	var once sync.Once
	p.onBlob = func(d string, body io.ReadCloser) io.ReadCloser {
		return &cutAfter{r: body, n: 2 << 20, cut: func() { once.Do(e.reg.Stop) }}
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

// cutAfter serves n bytes, then calls cut and fails like a dropped
// connection.
type cutAfter struct {
	r   io.ReadCloser
	n   int
	cut func()
}

func (c *cutAfter) Read(p []byte) (int, error) {
	if c.n <= 0 {
		c.cut()
		return 0, io.ErrUnexpectedEOF
	}
	if len(p) > c.n {
		p = p[:c.n]
	}
	n, err := c.r.Read(p)
	c.n -= n
	return n, err
}

func (c *cutAfter) Close() error { return c.r.Close() }

// TestCorruptedBlob flips one byte of a layer on the way: the digest
// check catches it, nothing is kept, and a clean pull then works.
func TestCorruptedBlob(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	ref := e.push("corrupt:v1", testutil.ImageSpec{Layers: []testutil.Layer{
		{Compression: "none", Files: []testutil.File{{Path: "data", Content: strings.Repeat("a", 100000)}}},
	}})
	p := newProxy(t, e.reg.Addr)
	p.onBlob = func(d string, body io.ReadCloser) io.ReadCloser { return &flipByte{r: body, at: 5000} }
	e.insecure("", p.addr())
	name := p.addr() + "/corrupt:v1"
	if err := e.pullErr(name, image.PullOptions{}); !errors.Is(err, image.ErrDigestMismatch) {
		t.Fatalf("corrupted layer: %v", err)
	}
	e.assertEmpty()
	_ = ref
	p.onBlob = nil
	e.pull(name)
}

type flipByte struct {
	r   io.ReadCloser
	at  int
	pos int
}

func (f *flipByte) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if f.at >= f.pos && f.at < f.pos+n {
		p[f.at-f.pos] ^= 0xff
	}
	f.pos += n
	return n, err
}

func (f *flipByte) Close() error { return f.r.Close() }

// TestDiskFull puts the store on a 4 MiB tmpfs and pulls more than fits.
func TestDiskFull(t *testing.T) {
	testutil.RequireRoot(t)
	root := t.TempDir()
	must(t, unix.Mount("tmpfs", root, "tmpfs", 0, "size=4m"))
	t.Cleanup(func() { _ = unix.Unmount(root, unix.MNT_DETACH) })
	e := newEnv(t, testutil.RegistryOptions{}, func(o *image.Options) { o.Root = root })
	ref := e.push("huge:v1", testutil.ImageSpec{Layers: []testutil.Layer{
		{Files: []testutil.File{{Path: "huge.bin", Content: randomish(8 << 20)}}},
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
		{Files: []testutil.File{{Path: "f", Content: randomish(4 << 20)}}},
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
