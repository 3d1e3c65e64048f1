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

// fullBlob opens the layer's blob from off as the Service does: the
// pull's GetBlob from the start, a range request from elsewhere.
func (rl *registryLayer) fullBlob(ctx context.Context, off int64) (io.ReadCloser, error) {
	info := types.BlobInfo{Digest: rl.desc.Digest, Size: rl.desc.Size}
	if off == 0 {
		rc, _, err := rl.src.GetBlob(ctx, info, none.NoCache)
		return rc, err
	}
	f, err := lazy.SourceFetcher(rl.src, info, 0)
	if err != nil {
		return nil, err
	}
	return f.(lazy.Streamer).Stream(ctx, off)
}

// cutAfter is an open for FetchAll whose stream breaks after n bytes.
func (rl *registryLayer) cutAfter(n int64) func(context.Context, int64) (io.ReadCloser, error) {
	return func(ctx context.Context, off int64) (io.ReadCloser, error) {
		rc, err := rl.fullBlob(ctx, off)
		if err != nil {
			return nil, err
		}
		return struct {
			io.Reader
			io.Closer
		}{io.MultiReader(io.LimitReader(rc, n), errReader{errors.New("connection reset")}), rc}, nil
	}
}

// crashAfter leaves at path the blob file of a layer whose background
// fetch broke after n bytes, synced every 256 KiB, and whose process then
// died.
func (rl *registryLayer) crashAfter(t *testing.T, path string, n int64) {
	t.Helper()
	l := rl.open(t, 0, lazy.WithBlobFile(path), lazy.WithSyncEvery(256<<10))
	if err := l.FetchAll(context.Background(), rl.desc.Digest, rl.cutAfter(n)); err == nil {
		t.Fatal("FetchAll of a stream cut short succeeded")
	}
	l.Close()
}

// rot overwrites three bytes of the file at path, at off.
func rot(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("rot"), off); err != nil {
		t.Fatal(err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// A background fetch that breaks goes on where it broke: in the same
// process from the last byte written, in a new one (a crash) from the
// last sync; the bytes before are hashed again from disk, not fetched,
// and a prefix that rotted on disk fails the digest and the next try
// starts over.
func TestFetchAllGoesOnWhereItStopped(t *testing.T) {
	rl := pushLayer(t, files)
	const mib = 1 << 20
	if rl.desc.Size < 2*mib+200 {
		t.Fatalf("the blob has %d bytes; the test cuts it after 2 MiB", rl.desc.Size)
	}
	var opened []int64
	recordOpen := func(ctx context.Context, off int64) (io.ReadCloser, error) {
		opened = append(opened, off)
		return rl.fullBlob(ctx, off)
	}
	checkBlob := func(path string) {
		t.Helper()
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprintf("sha256:%x", sha256.Sum256(data)); got != rl.desc.Digest.String() {
			t.Errorf("the blob file is %s; want %s", got, rl.desc.Digest)
		}
	}

	// In one process: from the byte where the stream broke.
	dir := t.TempDir()
	l := rl.open(t, 0, lazy.WithBlobFile(filepath.Join(dir, "one")))
	if err := l.FetchAll(context.Background(), rl.desc.Digest, rl.cutAfter(mib+100)); err == nil {
		t.Fatal("FetchAll of a stream cut short succeeded")
	}
	if l.Local() < mib+100 || l.Complete() {
		t.Errorf("after a cut at %d bytes: %d local, complete %v", mib+100, l.Local(), l.Complete())
	}
	// Reads of what the broken stream wrote come from the disk.
	fetched := l.Fetched()
	if got := readFile(t, l, "data/big", 0, mib/2); got != files[3].Content[:mib/2] {
		t.Errorf("the start of data/big, streamed before the cut, differs")
	}
	if n := l.Fetched() - fetched; n != 0 {
		t.Errorf("reading what the background fetch wrote before its cut fetched %d bytes", n)
	}
	served := rl.proxy.served.Load()
	if err := l.FetchAll(context.Background(), rl.desc.Digest, recordOpen); err != nil || !l.Complete() {
		t.Fatalf("FetchAll after the cut: %v (complete %v)", err, l.Complete())
	}
	if len(opened) != 1 || opened[0] != mib+100 {
		t.Errorf("the stream was opened again at %v; want at %d", opened, mib+100)
	}
	if got, want := rl.proxy.served.Load()-served, rl.desc.Size-(mib+100); got != want {
		t.Errorf("going on fetched %d bytes; want the %d left", got, want)
	}
	checkBlob(filepath.Join(dir, "one"))

	// A registry away when the fetch goes on: what is on disk stays. One
	// that takes no range requests: the whole blob from the start.
	l = rl.open(t, 0, lazy.WithBlobFile(filepath.Join(dir, "norange")))
	if err := l.FetchAll(context.Background(), rl.desc.Digest, rl.cutAfter(mib+100)); err == nil {
		t.Fatal("FetchAll of a stream cut short succeeded")
	}
	opened = nil
	away := func(_ context.Context, off int64) (io.ReadCloser, error) {
		opened = append(opened, off)
		return nil, errors.New("502 Bad Gateway")
	}
	if err := l.FetchAll(context.Background(), rl.desc.Digest, away); err == nil || l.Local() < mib+100 {
		t.Fatalf("FetchAll with the registry away: %v, %d bytes local; want an error and the %d bytes kept", err, l.Local(), mib+100)
	}
	if len(opened) != 2 || opened[0] != mib+100 || opened[1] != 0 {
		t.Errorf("with the registry away the blob was opened at %v; want at %d, then from the start", opened, mib+100)
	}
	opened = nil
	noRanges := func(ctx context.Context, off int64) (io.ReadCloser, error) {
		opened = append(opened, off)
		if off > 0 {
			return nil, errors.New("400 Bad Request")
		}
		return rl.fullBlob(ctx, 0)
	}
	if err := l.FetchAll(context.Background(), rl.desc.Digest, noRanges); err != nil || !l.Complete() {
		t.Fatalf("FetchAll from a registry without ranges: %v", err)
	}
	if len(opened) != 2 || opened[0] != mib+100 || opened[1] != 0 {
		t.Errorf("from a registry without ranges the blob was opened at %v; want at %d, then from the start", opened, mib+100)
	}
	checkBlob(filepath.Join(dir, "norange"))

	// Across processes: from the last sync (every 256 KiB here; the
	// stream is written a MiB at a time, so the sync at 2 MiB).
	blobFile := filepath.Join(dir, "two")
	rl.crashAfter(t, blobFile, 2*mib+100)
	l2 := rl.open(t, 0, lazy.WithBlobFile(blobFile), lazy.WithSyncEvery(256<<10))
	if l2.Resumed() != 2*mib || l2.Local() < 2*mib {
		t.Errorf("a new layer on the blob file takes up %d bytes (%d local); want the %d synced", l2.Resumed(), l2.Local(), 2*mib)
	}
	// So do reads of what the earlier process synced.
	fetched = l2.Fetched()
	if got := readFile(t, l2, "data/big", mib/4, mib); got != files[3].Content[mib/4:mib/4+mib] {
		t.Errorf("data/big's second MiB, synced by the earlier layer, differs")
	}
	if n := l2.Fetched() - fetched; n != 0 {
		t.Errorf("reading what the earlier layer synced fetched %d bytes", n)
	}
	opened = nil
	if err := l2.FetchAll(context.Background(), rl.desc.Digest, recordOpen); err != nil || !l2.Complete() {
		t.Fatalf("FetchAll of the new layer: %v", err)
	}
	if len(opened) != 1 || opened[0] != 2*mib {
		t.Errorf("the new layer opened the blob at %v; want at %d", opened, 2*mib)
	}
	checkBlob(blobFile)
	if got := readAll(t, l2, "data/big", len(files[3].Content)); got != files[3].Content {
		t.Errorf("data/big from the resumed blob differs")
	}
	l2.Close()

	// A complete blob file left behind is checked, not fetched.
	l3 := rl.open(t, 0, lazy.WithBlobFile(blobFile))
	opened = nil
	if err := l3.FetchAll(context.Background(), rl.desc.Digest, recordOpen); err != nil || !l3.Complete() || len(opened) != 0 {
		t.Errorf("FetchAll over a complete blob file left behind: %v, complete %v, opened at %v", err, l3.Complete(), opened)
	}
	l3.Close()

	// A prefix that rotted on disk: the digest fails, the next try
	// starts from the first byte.
	rotten := filepath.Join(dir, "three")
	rl.crashAfter(t, rotten, 2*mib+100)
	rot(t, rotten, mib/2)
	l5 := rl.open(t, 0, lazy.WithBlobFile(rotten))
	opened = nil
	if err := l5.FetchAll(context.Background(), rl.desc.Digest, recordOpen); !errors.Is(err, lazy.ErrCorrupt) {
		t.Fatalf("FetchAll over a rotten prefix: %v; want ErrCorrupt", err)
	}
	if l5.Local() != 0 {
		t.Errorf("after a rotten prefix %d bytes count as local", l5.Local())
	}
	if err := l5.FetchAll(context.Background(), rl.desc.Digest, recordOpen); err != nil || !l5.Complete() {
		t.Fatalf("FetchAll after a rotten prefix: %v", err)
	}
	if len(opened) != 2 || opened[0] != 2*mib || opened[1] != 0 {
		t.Errorf("opened at %v; want at %d, then from the start", opened, 2*mib)
	}
	checkBlob(rotten)
	l5.Close()

	// A read over the rotten bytes checks them against the TOC: the
	// chunk comes from the registry, and its verified bytes mend the
	// blob file, whose digest then matches.
	mended := filepath.Join(dir, "four")
	rl.crashAfter(t, mended, 2*mib+100)
	rot(t, mended, mib/2)
	l7 := rl.open(t, 0, lazy.WithBlobFile(mended))
	fetched = l7.Fetched()
	if got := readFile(t, l7, "data/big", 0, mib); got != files[3].Content[:mib] {
		t.Errorf("data/big over the rotten bytes differs")
	}
	if n := l7.Fetched() - fetched; n <= 0 || n > 2*64<<10 {
		t.Errorf("reading over 3 rotten bytes fetched %d bytes; want their chunk", n)
	}
	if err := l7.FetchAll(context.Background(), rl.desc.Digest, recordOpen); err != nil || !l7.Complete() {
		t.Fatalf("FetchAll over the mended prefix: %v", err)
	}
	checkBlob(mended)
	l7.Close()
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
	prefetched, region := l.Fetched(), l.Fetched()-opened
	if got := readAll(t, l, "etc/hello", 100); got != files[1].Content {
		t.Errorf("etc/hello: %q", got)
	}
	readFile(t, l, "data/big", int64(len(files[3].Content))-10, 10)
	if l.Fetched() != prefetched {
		t.Errorf("reading prefetched files fetched %d more bytes", l.Fetched()-prefetched)
	}

	// After a crash, the prefetch takes what the earlier process synced
	// from the disk and fetches only the rest of its region.
	blobFile := filepath.Join(t.TempDir(), "blob")
	rl.crashAfter(t, blobFile, 1<<20+100)
	l2 := rl.open(t, 0, lazy.WithBlobFile(blobFile))
	if l2.Resumed() != 1<<20 {
		t.Fatalf("the new layer takes up %d bytes; want %d", l2.Resumed(), 1<<20)
	}
	opened, served = l2.Fetched(), rl.proxy.served.Load()
	if err := l2.Prefetch(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n, want := l2.Fetched()-opened, region-(1<<20); n != want || rl.proxy.served.Load()-served != want {
		t.Errorf("the prefetch after a resume fetched %d bytes (the registry served %d); want its region's %d less the %d on disk",
			n, rl.proxy.served.Load()-served, region, 1<<20)
	}
	resumedFetch := l2.Fetched()
	if got := readFile(t, l2, "data/big", 0, int64(len(files[3].Content))); got != files[3].Content {
		t.Errorf("data/big after the resumed prefetch differs")
	}
	if l2.Fetched() != resumedFetch {
		t.Errorf("reading the prefetched data/big after a resume fetched %d more bytes", l2.Fetched()-resumedFetch)
	}
	l2.Close()

	// Bytes on disk that rotted: the prefetch takes its region from the
	// registry instead, and fails nothing.
	rotten := filepath.Join(t.TempDir(), "blob")
	rl.crashAfter(t, rotten, 1<<20+100)
	rot(t, rotten, 100<<10)
	l4 := rl.open(t, 0, lazy.WithBlobFile(rotten))
	if err := l4.Prefetch(context.Background()); err != nil {
		t.Fatalf("prefetch over rotten bytes: %v", err)
	}
	prefetched = l4.Fetched()
	if got := readFile(t, l4, "data/big", 0, int64(len(files[3].Content))); got != files[3].Content {
		t.Errorf("data/big after a prefetch over rotten bytes differs")
	}
	if l4.Fetched() != prefetched {
		t.Errorf("reading data/big after a prefetch over rotten bytes fetched %d more bytes", l4.Fetched()-prefetched)
	}
	l4.Close()

	// Without a landmark there is nothing to prefetch.
	plain := pushLayer(t, []testutil.File{{Path: "a", Content: "a"}})
	pl := plain.open(t, 0)
	before := pl.Fetched()
	if err := pl.Prefetch(context.Background()); err != nil || pl.Fetched() != before {
		t.Errorf("prefetch without a landmark: %v, %d bytes", err, pl.Fetched()-before)
	}
}
