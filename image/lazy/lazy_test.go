package lazy_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/types"

	"github.com/berth-runtime/berth/image/lazy"
	"github.com/berth-runtime/berth/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

const chunkSize = 64 << 10

var files = []testutil.File{
	{Path: "etc/", Type: '5'},
	{Path: "etc/hello", Content: "hello from a lazy layer\n"},
	{Path: "data/", Type: '5'},
	{Path: "data/big", Content: testutil.IncompressibleFrom(1, 40*chunkSize+123)},
	{Path: "data/link", Type: '2', Linkname: "big"},
	{Path: "data/hard", Type: '1', Linkname: "data/big"},
	{Path: "empty", Content: ""},
}

// registryLayer is an eStargz image's layer in a registry the test
// started, reached through a proxy that counts and can corrupt or stall
// what it serves.
type registryLayer struct {
	reg   *testutil.Registry
	proxy *rangeProxy
	src   types.ImageSource
	desc  v1.Descriptor
}

func pushLayer(t *testing.T, fs []testutil.File, prefetch ...string) *registryLayer {
	t.Helper()
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	ref := testutil.BuildOCI(t, t.TempDir(), "t", testutil.ImageSpec{Layers: []testutil.Layer{
		{Files: fs, Compression: "estargz", EStargzChunkSize: chunkSize, EStargzPrefetch: prefetch},
	}})
	reg.Push(t, ref, "lazy/test:1")
	p := newRangeProxy(t, reg.Addr)
	imgRef, err := docker.ParseReference("//" + p.addr + "/lazy/test:1")
	if err != nil {
		t.Fatal(err)
	}
	sys := &types.SystemContext{DockerInsecureSkipTLSVerify: types.OptionalBoolTrue}
	src, err := imgRef.NewImageSource(context.Background(), sys)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	raw, _, err := src.GetManifest(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var m v1.Manifest
	if err := json.Unmarshal(raw, &m); err != nil || len(m.Layers) != 1 {
		t.Fatalf("manifest %s: %v", raw, err)
	}
	return &registryLayer{reg: reg, proxy: p, src: src, desc: m.Layers[0]}
}

func (rl *registryLayer) open(t *testing.T, timeout time.Duration, opts ...lazy.Option) *lazy.Layer {
	t.Helper()
	toc, ok, err := lazy.TOCDigest(rl.desc.Annotations)
	if err != nil || !ok {
		t.Fatalf("layer annotations %v: %v, %v", rl.desc.Annotations, ok, err)
	}
	f, err := lazy.SourceFetcher(rl.src, types.BlobInfo{Digest: rl.desc.Digest, Size: rl.desc.Size}, timeout)
	if err != nil {
		t.Fatal(err)
	}
	l, err := lazy.Open(context.Background(), f, rl.desc.Size, toc, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// rangeProxy forwards to a registry, counts the blob bytes it serves, and
// corrupts or holds the responses to range requests when told to.
type rangeProxy struct {
	addr    string
	served  atomic.Int64
	mu      sync.Mutex
	corrupt func(rangeHeader string) bool
	stall   chan struct{} // while non-nil, range requests wait on it
	// while non-nil, requests for a whole blob wait on it
	stallWhole chan struct{}
	// whole counts the requests for a whole blob.
	whole atomic.Int32
}

func newRangeProxy(t *testing.T, target string) *rangeProxy {
	p := &rangeProxy{}
	u, _ := url.Parse("http://" + target)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(r *http.Response) error {
		if !strings.Contains(r.Request.URL.Path, "/blobs/") {
			return nil
		}
		p.mu.Lock()
		corrupt := p.corrupt != nil && p.corrupt(r.Request.Header.Get("Range"))
		p.mu.Unlock()
		body, err := io.ReadAll(r.Body)
		r.Body.Close()
		if err != nil {
			return err
		}
		p.served.Add(int64(len(body)))
		if corrupt && len(body) > 100 {
			body[len(body)/2] ^= 0xff
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		stall := p.stall
		if r.Header.Get("Range") == "" {
			stall = nil
			if strings.Contains(r.URL.Path, "/blobs/") {
				stall = p.stallWhole
				p.whole.Add(1)
			}
		}
		p.mu.Unlock()
		if stall != nil {
			select {
			case <-stall:
			case <-r.Context().Done():
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.addr = strings.TrimPrefix(srv.URL, "http://")
	return p
}

func readFile(t *testing.T, l *lazy.Layer, name string, off, n int64) string {
	t.Helper()
	p := make([]byte, n)
	got, err := l.ReadAt(context.Background(), name, p, off)
	if err != nil && !(errors.Is(err, io.EOF) && got > 0) {
		t.Fatalf("read %s at %d: %d, %v", name, off, got, err)
	}
	return string(p[:got])
}

// The TOC and the chunks a read needs are what is fetched: reading the
// end of a large file fetches its last chunk, not the layer.
func TestReadsFetchOnlyWhatTheyNeed(t *testing.T) {
	rl := pushLayer(t, files)
	l := rl.open(t, 0)
	size := rl.desc.Size
	if l.Fetched() > size/10 || rl.proxy.served.Load() > size/10 {
		t.Fatalf("opening fetched %d bytes (the proxy served %d) of a %d-byte layer; want its TOC only", l.Fetched(), rl.proxy.served.Load(), size)
	}
	big := files[3].Content
	if got := readFile(t, l, "data/big", int64(len(big))-100, 100); got != big[len(big)-100:] {
		t.Errorf("the end of data/big differs")
	}
	if got := readFile(t, l, "/etc/hello", 0, 100); got != files[1].Content {
		t.Errorf("etc/hello: %q", got)
	}
	// A read across a chunk boundary, through the hard link.
	if got := readFile(t, l, "data/hard", chunkSize-10, 20); got != big[chunkSize-10:chunkSize+10] {
		t.Errorf("data/hard across chunks differs")
	}
	// What the layer counts is what the registry served, and both are a
	// few chunks of 41.
	if served := rl.proxy.served.Load(); served != l.Fetched() || served > size/5 {
		t.Errorf("fetched %d, served %d of %d", l.Fetched(), served, size)
	}
	// Cached: read again, nothing more fetched.
	before := l.Fetched()
	readFile(t, l, "data/big", int64(len(big))-100, 100)
	if l.Fetched() != before {
		t.Errorf("a cached chunk was fetched again")
	}
	// At and past the end.
	if n, err := l.ReadAt(context.Background(), "data/big", make([]byte, 10), int64(len(big))); n != 0 || err != io.EOF {
		t.Errorf("read at the end: %d, %v", n, err)
	}
	if n, err := l.ReadAt(context.Background(), "empty", make([]byte, 10), 0); n != 0 || err != io.EOF {
		t.Errorf("read of an empty file: %d, %v", n, err)
	}
	for _, bad := range []string{"data", "data/link", "nothere"} {
		if _, err := l.ReadAt(context.Background(), bad, make([]byte, 1), 0); err == nil {
			t.Errorf("read of %s: no error", bad)
		}
	}
	// The whole file, and the listing.
	if got := readFile(t, l, "data/big", 0, int64(len(big))); got != big {
		t.Errorf("data/big differs")
	}
	var names []string
	if err := l.Walk(func(name string, e *estargz.TOCEntry) error {
		names = append(names, name+":"+e.Type)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{":dir", "data:dir", "data/big:reg", "data/hard:reg", "data/link:symlink", "empty:reg", "etc:dir", "etc/hello:reg"}
	slices.Sort(names)
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("walk: %v; want %v", names, want)
	}
}

// A registry that serves other bytes than the layer's gets none of them
// to a reader: the chunk fails its TOC digest, the read fails, nothing is
// cached, and the next read of it fetches it again.
func TestCorruptChunkIsRefused(t *testing.T) {
	rl := pushLayer(t, files)
	l := rl.open(t, 0)
	rl.proxy.mu.Lock()
	rl.proxy.corrupt = func(string) bool { return true }
	rl.proxy.mu.Unlock()
	p := make([]byte, 100)
	n, err := l.ReadAt(context.Background(), "data/big", p, 5*chunkSize)
	if !errors.Is(err, lazy.ErrCorrupt) || n != 0 || !bytes.Equal(p, make([]byte, 100)) {
		t.Fatalf("read of a corrupted chunk: %d, %v, %q", n, err, p[:8])
	}
	rl.proxy.mu.Lock()
	rl.proxy.corrupt = nil
	rl.proxy.mu.Unlock()
	if got := readFile(t, l, "data/big", 5*chunkSize, 100); got != files[3].Content[5*chunkSize:5*chunkSize+100] {
		t.Errorf("read after the registry mended differs")
	}
}

// A registry that stops answering fails a read after the fetch timeout;
// one that is gone fails it at once. Neither hangs the reader.
func TestRegistryGoneFailsReads(t *testing.T) {
	rl := pushLayer(t, files)
	l := rl.open(t, 2*time.Second)
	stall := make(chan struct{})
	rl.proxy.mu.Lock()
	rl.proxy.stall = stall
	rl.proxy.mu.Unlock()
	if _, err := l.ReadAt(context.Background(), "data/big", make([]byte, 10), 7*chunkSize); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("read from a registry that does not answer: %v; want the fetch timeout", err)
	}
	close(stall)
	rl.proxy.mu.Lock()
	rl.proxy.stall = nil
	rl.proxy.mu.Unlock()
	rl.reg.Stop()
	if _, err := l.ReadAt(context.Background(), "data/big", make([]byte, 10), 9*chunkSize); err == nil {
		t.Errorf("read from a stopped registry: no error")
	}
}

// A TOC that is not the one the manifest names is refused at Open.
func TestTOCDigestMismatch(t *testing.T) {
	rl := pushLayer(t, files)
	f, err := lazy.SourceFetcher(rl.src, types.BlobInfo{Digest: rl.desc.Digest, Size: rl.desc.Size}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lazy.Open(context.Background(), f, rl.desc.Size, digest.FromString("another TOC")); !errors.Is(err, lazy.ErrCorrupt) {
		t.Fatalf("open with another TOC digest: %v", err)
	}
	if _, ok, _ := lazy.TOCDigest(map[string]string{}); ok {
		t.Error("a layer without the annotation is eStargz")
	}
	if _, _, err := lazy.TOCDigest(map[string]string{estargz.TOCJSONDigestAnnotation: "sha256:nothex"}); err == nil {
		t.Error("a malformed TOC digest annotation is accepted")
	}
}

// memFetcher serves a blob from memory, as a registry would.
type memFetcher struct {
	blob  func(off, n int64) []byte
	calls atomic.Int64
}

func (m *memFetcher) Fetch(_ context.Context, off, n int64) ([]byte, error) {
	m.calls.Add(1)
	return m.blob(off, n), nil
}

func buildBlob(t testing.TB, fs []testutil.File, opts ...estargz.Option) ([]byte, digest.Digest) {
	t.Helper()
	raw := testutil.TarFiles(t, fs)
	b, err := estargz.Build(io.NewSectionReader(bytes.NewReader(raw), 0, int64(len(raw))), append(opts, estargz.WithChunkSize(chunkSize))...)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	data, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	return data, b.TOCDigest()
}

// A chunk that is well-formed gzip with other content than the TOC says
// (another layer's chunk at the same place) fails its digest: the check
// is the TOC's digest, not gzip's own.
func TestChunkDigestIsChecked(t *testing.T) {
	other := slices.Clone(files)
	other[3].Content = testutil.IncompressibleFrom(2, len(files[3].Content))
	// Stored, not compressed: the two blobs have the same layout.
	a, toc := buildBlob(t, files, estargz.WithCompressionLevel(gzip.NoCompression))
	b, _ := buildBlob(t, other, estargz.WithCompressionLevel(gzip.NoCompression))
	if len(a) != len(b) {
		t.Fatalf("blobs of %d and %d bytes: the layouts differ", len(a), len(b))
	}
	l, err := lazy.Open(context.Background(), &memFetcher{blob: func(off, n int64) []byte {
		if off+n >= int64(len(a))-4096 { // the TOC and footer: a's
			return a[off : off+n]
		}
		return b[off : off+n]
	}}, int64(len(a)), toc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.ReadAt(context.Background(), "data/big", make([]byte, 10), 0); !errors.Is(err, lazy.ErrCorrupt) {
		t.Fatalf("read of another layer's chunk: %v", err)
	}
	// Many readers of one chunk fetch it once.
	m := &memFetcher{blob: func(off, n int64) []byte { return a[off : off+n] }}
	l, err = lazy.Open(context.Background(), m, int64(len(a)), toc)
	if err != nil {
		t.Fatal(err)
	}
	opened := m.calls.Load()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := l.ReadAt(context.Background(), "data/big", make([]byte, 10), 3*chunkSize); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if calls := m.calls.Load() - opened; calls != 1 {
		t.Errorf("8 concurrent readers of one chunk made %d fetches", calls)
	}
}

// SourceFetcher refuses what it cannot serve: a source without ranged
// reads, and ranges that are not ranges.
func TestSourceFetcher(t *testing.T) {
	if _, err := lazy.SourceFetcher(noRanges{}, types.BlobInfo{}, 0); err == nil {
		t.Error("a source without GetBlobAt is accepted")
	}
	rl := pushLayer(t, files[:2])
	f, err := lazy.SourceFetcher(rl.src, types.BlobInfo{Digest: rl.desc.Digest, Size: rl.desc.Size}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]int64{{-1, 10}, {0, 0}} {
		if _, err := f.Fetch(context.Background(), r[0], r[1]); err == nil {
			t.Errorf("fetch %v: no error", r)
		}
	}
	data, err := f.Fetch(context.Background(), 10, 20)
	if err != nil || len(data) != 20 {
		t.Fatalf("fetch 20 bytes at 10: %d, %v", len(data), err)
	}
}

type noRanges struct{ types.ImageSource }

func (noRanges) Reference() types.ImageReference { return nil }

// FuzzOpen feeds hostile blobs to Open and to reads of every file they
// list: errors, never a panic, a hang or a name outside the layer.
func FuzzOpen(f *testing.F) {
	blob, _ := buildBlob(f, files[:3])
	f.Add(blob)
	small, _ := buildBlob(f, []testutil.File{{Path: "a", Content: "x"}, {Path: "b", Type: '1', Linkname: "a"}})
	f.Add(small)
	f.Fuzz(func(t *testing.T, data []byte) {
		m := &memFetcher{blob: func(off, n int64) []byte { return data[off : off+n] }}
		// First with a digest no TOC has: refused, whatever the blob.
		if _, err := lazy.Open(context.Background(), m, int64(len(data)), digest.FromString("no TOC")); err == nil {
			t.Fatal("a TOC that is not the one named is accepted")
		}
		// Then with its own, as a manifest would name it (estargz's own
		// Open panics on some of these blobs: lazy.Open must not).
		toc := tocDigestOf(data)
		if toc == "" {
			return
		}
		l, err := lazy.Open(context.Background(), m, int64(len(data)), toc)
		if err != nil {
			return
		}
		_ = l.Walk(func(name string, e *estargz.TOCEntry) error {
			if strings.HasPrefix(name, "/") || slices.Contains(strings.Split(name, "/"), "..") {
				t.Fatalf("entry %q is not inside the layer", name)
			}
			if e.Type == "reg" && e.Size <= 1<<20 {
				p := make([]byte, e.Size+1)
				_, _ = l.ReadAt(context.Background(), name, p, 0)
			}
			return nil
		})
	})
}

// tocDigestOf is the digest of the blob's TOC, or "" where estargz cannot
// read one (or panics trying).
func tocDigestOf(data []byte) (d digest.Digest) {
	defer func() {
		if recover() != nil {
			d = ""
		}
	}()
	r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(data), 0, int64(len(data))))
	if err != nil {
		return ""
	}
	return r.TOCDigest()
}
