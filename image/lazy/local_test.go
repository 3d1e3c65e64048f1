package lazy_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"go.podman.io/image/v5/pkg/blobinfocache/none"
	"go.podman.io/image/v5/types"

	"github.com/berth-runtime/berth/image/lazy"
	"github.com/berth-runtime/berth/internal/testutil"
)

// fullBlob opens the layer's whole blob as the pull does.
func (rl *registryLayer) fullBlob(ctx context.Context) (io.ReadCloser, error) {
	rc, _, err := rl.src.GetBlob(ctx, types.BlobInfo{Digest: rl.desc.Digest, Size: rl.desc.Size}, none.NoCache)
	return rc, err
}

func readAll(t *testing.T, l *lazy.Layer, name string, size int) string {
	t.Helper()
	return readFile(t, l, name, 0, int64(size))
}

// FetchAll makes the layer local: the blob file is the blob, checked
// against its digest, and every read works with the registry gone.
func TestFetchAllMakesTheLayerLocal(t *testing.T) {
	rl := pushLayer(t, files)
	blobFile := filepath.Join(t.TempDir(), "blob")
	l := rl.open(t, 0, lazy.WithBlobFile(blobFile))
	if l.Local() == 0 || l.Local() > rl.desc.Size/10 {
		t.Errorf("after open %d of %d bytes local; want the TOC", l.Local(), rl.desc.Size)
	}
	readFile(t, l, "data/big", 3*chunkSize, 10)
	afterRead := l.Local()
	if err := l.FetchAll(context.Background(), rl.desc.Digest, rl.fullBlob); err != nil {
		t.Fatal(err)
	}
	if !l.Complete() || l.Local() != rl.desc.Size || afterRead >= l.Local() {
		t.Errorf("after FetchAll: complete %v, %d (%d before) of %d bytes local", l.Complete(), l.Local(), afterRead, rl.desc.Size)
	}
	data, err := os.ReadFile(blobFile)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprintf("sha256:%x", sha256.Sum256(data)); got != rl.desc.Digest.String() {
		t.Errorf("the blob file is %s; want %s", got, rl.desc.Digest)
	}
	// No registry from here on.
	rl.reg.Stop()
	fetched := l.Fetched()
	if got := readAll(t, l, "data/big", len(files[3].Content)); got != files[3].Content {
		t.Errorf("data/big from the local blob differs")
	}
	if got := readAll(t, l, "etc/hello", 100); got != files[1].Content {
		t.Errorf("etc/hello from the local blob: %q", got)
	}
	if l.Fetched() != fetched {
		t.Errorf("reads of a complete layer fetched %d bytes", l.Fetched()-fetched)
	}
	if err := l.FetchAll(context.Background(), rl.desc.Digest, rl.fullBlob); err != nil {
		t.Errorf("FetchAll of a complete layer: %v", err)
	}
}

// A whole blob that does not match its digest is dropped: nothing of it
// is served, reads fetch their chunks again, and a later FetchAll from a
// mended registry completes.
func TestFetchAllRefusesAnotherBlob(t *testing.T) {
	rl := pushLayer(t, files)
	l := rl.open(t, 0, lazy.WithBlobFile(filepath.Join(t.TempDir(), "blob")))
	rl.proxy.mu.Lock()
	rl.proxy.corrupt = func(rangeHeader string) bool { return rangeHeader == "" }
	rl.proxy.mu.Unlock()
	if err := l.FetchAll(context.Background(), rl.desc.Digest, rl.fullBlob); !errors.Is(err, lazy.ErrCorrupt) {
		t.Fatalf("FetchAll of a corrupted blob: %v", err)
	}
	if l.Complete() || l.Local() != 0 {
		t.Errorf("after a corrupted FetchAll: complete %v, %d bytes local", l.Complete(), l.Local())
	}
	if got := readAll(t, l, "data/big", len(files[3].Content)); got != files[3].Content {
		t.Errorf("data/big after a corrupted FetchAll differs")
	}
	rl.proxy.mu.Lock()
	rl.proxy.corrupt = nil
	rl.proxy.mu.Unlock()
	if err := l.FetchAll(context.Background(), rl.desc.Digest, rl.fullBlob); err != nil || !l.Complete() {
		t.Fatalf("FetchAll from the mended registry: %v", err)
	}
}

// A chunk whose bytes on disk rot is fetched again, not served.
func TestLocalChunkThatRotsIsFetchedAgain(t *testing.T) {
	rl := pushLayer(t, files)
	blobFile := filepath.Join(t.TempDir(), "blob")
	l := rl.open(t, 0, lazy.WithBlobFile(blobFile))
	if err := l.FetchAll(context.Background(), rl.desc.Digest, rl.fullBlob); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(blobFile, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Zeros over the middle of the blob: data/big's chunks.
	if _, err := f.WriteAt(make([]byte, 4096), rl.desc.Size/2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	fetched := l.Fetched()
	if got := readAll(t, l, "data/big", len(files[3].Content)); got != files[3].Content {
		t.Errorf("data/big over a rotten blob file differs")
	}
	if l.Fetched() == fetched || l.Complete() {
		t.Errorf("the rotten chunk was not fetched again (complete %v)", l.Complete())
	}
}

// Prefetch brings what the image marks for prefetch in one request:
// reading it afterwards fetches nothing; the rest is still lazy.
func TestPrefetch(t *testing.T) {
	rl := pushLayer(t, files, "etc/hello", "data/big")
	l := rl.open(t, 0)
	opened, served := l.Fetched(), rl.proxy.served.Load()
	if err := l.Prefetch(context.Background()); err != nil {
		t.Fatal(err)
	}
	if l.Fetched()-opened < int64(len(files[3].Content)) || rl.proxy.served.Load()-served != l.Fetched()-opened {
		t.Errorf("prefetch fetched %d bytes (the registry served %d); want data/big's %d", l.Fetched()-opened, rl.proxy.served.Load()-served, len(files[3].Content))
	}
	prefetched := l.Fetched()
	if got := readAll(t, l, "etc/hello", 100); got != files[1].Content {
		t.Errorf("etc/hello: %q", got)
	}
	readFile(t, l, "data/big", int64(len(files[3].Content))-10, 10)
	if l.Fetched() != prefetched {
		t.Errorf("reading prefetched files fetched %d more bytes", l.Fetched()-prefetched)
	}

	// Without a landmark there is nothing to prefetch.
	plain := pushLayer(t, []testutil.File{{Path: "a", Content: "a"}})
	pl := plain.open(t, 0)
	before := pl.Fetched()
	if err := pl.Prefetch(context.Background()); err != nil || pl.Fetched() != before {
		t.Errorf("prefetch without a landmark: %v, %d bytes", err, pl.Fetched()-before)
	}
}
