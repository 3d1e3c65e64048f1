// Package lazy serves the files of eStargz layers from their registry on
// demand: a layer's table of contents (TOC) is fetched first and checked
// against the digest its manifest names, and each chunk of a file is
// fetched with a range request when first read and checked against the
// TOC's digest for it before a byte of it is served; MountLayer serves a
// Layer over FUSE, as the lower directory of an overlay. With a blob file
// (WithBlobFile) what was fetched stays on disk, Prefetch fetches what
// the image marks for prefetch, and FetchAll makes the whole layer local.
// The process that keeps the mounts across berthd's restarts, and pulls
// that use them, build on it.
package lazy

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"
)

// TOCDigest returns the digest of the layer's TOC from its descriptor's
// annotations (estargz's containerd.io/snapshot/stargz/toc.digest), and
// whether the layer is marked as eStargz at all.
func TOCDigest(annotations map[string]string) (digest.Digest, bool, error) {
	v, ok := annotations[estargz.TOCJSONDigestAnnotation]
	if !ok {
		return "", false, nil
	}
	d, err := digest.Parse(v)
	if err != nil {
		return "", true, fmt.Errorf("layer annotation %s: %w", estargz.TOCJSONDigestAnnotation, err)
	}
	return d, true, nil
}

// ErrCorrupt is wrapped by the errors of data that does not match the
// digests that vouch for it.
var ErrCorrupt = errors.New("content does not match its digest")

// cacheBytes bounds the verified chunks a Layer keeps in memory.
const cacheBytes = 32 << 20

// maxChunkSize bounds what one chunk may claim to be (estargz writes 4
// MiB by default): a hostile TOC cannot make a read allocate more.
const maxChunkSize = 64 << 20

// Layer is an eStargz layer read lazily from its blob.
type Layer struct {
	fetch    Fetcher
	size     int64
	r        *estargz.Reader
	verifier estargz.TOCEntryVerifier

	fetched atomic.Int64 // bytes fetched from the blob, TOC included
	// lastRead is when a file was last read (Unix nanoseconds), for the
	// background fetch to keep out of the way of a container's reads.
	lastRead atomic.Int64
	group    singleflight.Group

	// blobPath and file: the blob file (WithBlobFile), if any;
	// syncEvery: FetchAll's sync interval (WithSyncEvery); resumed: the
	// bytes of it a previous process had fetched (FetchAll goes on).
	blobPath  string
	file      *os.File
	syncEvery int64
	resumed   int64
	pmu       sync.Mutex // blobPath's changes and the progress file

	mu    sync.Mutex
	cache map[chunkKey][]byte // verified chunks
	order []chunkKey          // cache's keys, oldest first
	held  int64               // bytes in cache
	// local: the verified spans of the blob file, sorted and disjoint;
	// complete once FetchAll verified the whole blob; streamed: how far
	// FetchAll has written (not yet verified).
	local    []span
	complete bool
	streamed int64
}

// Open reads the layer's footer and TOC from its blob of size bytes (a
// few range requests at its end) and verifies the TOC against tocDigest.
// A blob that is not eStargz, or whose TOC does not match, is an error.
func Open(ctx context.Context, f Fetcher, size int64, tocDigest digest.Digest, opts ...Option) (_ *Layer, err error) {
	if size <= 0 {
		return nil, fmt.Errorf("open eStargz layer: blob size %d", size)
	}
	l := &Layer{fetch: f, size: size, cache: map[chunkKey][]byte{}}
	for _, o := range opts {
		o(l)
	}
	if l.blobPath != "" {
		if err := l.openBlobFile(); err != nil {
			return nil, fmt.Errorf("open eStargz layer: %w", err)
		}
		defer func() {
			if err != nil {
				l.file.Close()
			}
		}()
	}
	ra := &readerAt{ctx: ctx, l: l}
	if err := ra.loadTail(); err != nil {
		return nil, fmt.Errorf("open eStargz layer: %w", err)
	}
	r, err := openTOC(io.NewSectionReader(ra, 0, size))
	if err != nil {
		return nil, fmt.Errorf("open eStargz layer: %w", err)
	}
	v, err := guard(func() (estargz.TOCEntryVerifier, error) { return r.VerifyTOC(tocDigest) })
	if err != nil {
		return nil, fmt.Errorf("open eStargz layer: %w: %w", ErrCorrupt, err)
	}
	l.r, l.verifier = r, v
	l.keepLocal(ra.tailOff, ra.tail)
	return l, nil
}

// Bounds of a TOC: estargz reads and decodes whatever size the footer
// claims, which a hostile layer sets to its whole blob, or to a gzip bomb.
const (
	maxTOCBytes = 64 << 20  // compressed, with the footer
	maxTOCJSON  = 512 << 20 // decompressed
)

// openTOC is estargz.Open, guarded.
func openTOC(sr *io.SectionReader) (*estargz.Reader, error) {
	return guard(func() (*estargz.Reader, error) { return estargz.Open(sr) })
}

// guard runs one of estargz's parsers, which panic on some hostile
// footers (a TOC size below zero, a footer's fields out of range: slices
// out of bounds; FuzzOpen found both): a layer's bytes are input, and
// input never panics berth.
func guard[T any](parse func() (T, error)) (v T, err error) {
	defer func() {
		if p := recover(); p != nil {
			var zero T
			v, err = zero, fmt.Errorf("%w: malformed footer or TOC (%v)", ErrCorrupt, p)
		}
	}()
	return parse()
}

// readerAt is the blob as estargz.Open reads it: its footer and TOC,
// which loadTail has fetched in one request.
type readerAt struct {
	ctx     context.Context
	l       *Layer
	tailOff int64
	tail    []byte
}

// loadTail fetches the TOC and footer, once it knows from the footer
// where the TOC starts and that it is within bounds, compressed and not.
func (ra *readerAt) loadTail() error {
	size := ra.l.size
	if size < estargz.FooterSize {
		return fmt.Errorf("%w: a blob of %d bytes has no eStargz footer", ErrCorrupt, size)
	}
	footer, _, err := ra.l.readRange(ra.ctx, size-estargz.FooterSize, estargz.FooterSize, false)
	if err != nil {
		return err
	}
	tocOff, err := guard(func() (int64, error) {
		off, _, err := estargz.OpenFooter(io.NewSectionReader(bytes.NewReader(footer), 0, int64(len(footer))))
		return off, err
	})
	if err != nil {
		return fmt.Errorf("%w: not eStargz: %w", ErrCorrupt, err)
	}
	if tocOff < 0 || tocOff >= size || size-tocOff > maxTOCBytes {
		return fmt.Errorf("%w: TOC at %d of a %d-byte blob (at most %d bytes from its end)", ErrCorrupt, tocOff, size, maxTOCBytes)
	}
	tail, _, err := ra.l.readRange(ra.ctx, tocOff, size-tocOff, false)
	if err != nil {
		return err
	}
	zr, err := gzip.NewReader(bytes.NewReader(tail))
	if err != nil {
		return fmt.Errorf("%w: TOC: %w", ErrCorrupt, err)
	}
	defer zr.Close()
	n, err := io.Copy(io.Discard, io.LimitReader(zr, maxTOCJSON+1))
	if err != nil {
		return fmt.Errorf("%w: TOC: %w", ErrCorrupt, err)
	}
	if n > maxTOCJSON {
		return fmt.Errorf("%w: TOC of more than %d bytes", ErrCorrupt, maxTOCJSON)
	}
	ra.tailOff, ra.tail = tocOff, tail
	return nil
}

func (ra *readerAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= ra.l.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), ra.l.size-off)
	if off >= ra.tailOff && ra.tail != nil {
		copy(p, ra.tail[off-ra.tailOff:])
	} else {
		data, _, err := ra.l.readRange(ra.ctx, off, n, false)
		if err != nil {
			return 0, err
		}
		copy(p, data)
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// LastRead is when a file of the layer was last read; zero if never.
func (l *Layer) LastRead() time.Time {
	if n := l.lastRead.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Fetched is how many bytes of the blob this Layer has fetched.
func (l *Layer) Fetched() int64 { return l.fetched.Load() }

// Lookup returns the TOC's entry for name, a path inside the layer
// ("etc/passwd" or "/etc/passwd"); "" or "/" is the root directory.
func (l *Layer) Lookup(name string) (*estargz.TOCEntry, bool) {
	name = clean(name)
	if landmark(name) {
		return nil, false
	}
	return l.r.Lookup(name)
}

// landmark reports eStargz's marker files at the layer's root, which are
// the format's and not the image's: they are not served, as the
// stargz-snapshotter does not serve them.
func landmark(name string) bool {
	return name == estargz.PrefetchLandmark || name == estargz.NoPrefetchLandmark
}

// clean makes name the TOC's form of a path: relative to the layer's
// root, never above it.
func clean(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

// Walk calls fn for every entry of the layer, parents before children
// and children in name order, with the entry's path relative to the
// layer's root ("" for the root). A directory reached twice (through a hard link to it, which a hostile
// TOC can name) is walked once.
func (l *Layer) Walk(fn func(name string, e *estargz.TOCEntry) error) error {
	root, ok := l.r.Lookup("")
	if !ok {
		return errors.New("eStargz layer has no root directory")
	}
	return l.walk("", root, map[*estargz.TOCEntry]bool{}, fn)
}

func (l *Layer) walk(name string, e *estargz.TOCEntry, seen map[*estargz.TOCEntry]bool, fn func(string, *estargz.TOCEntry) error) error {
	if err := fn(name, e); err != nil {
		return err
	}
	if e.Type != "dir" || seen[e] {
		return nil
	}
	seen[e] = true
	children := map[string]*estargz.TOCEntry{}
	e.ForeachChild(func(base string, child *estargz.TOCEntry) bool {
		if name != "" || !landmark(base) {
			children[base] = child
		}
		return true
	})
	for _, base := range slices.Sorted(maps.Keys(children)) {
		if err := l.walk(path.Join(name, base), children[base], seen, fn); err != nil {
			return err
		}
	}
	return nil
}

// ReadAt reads len(p) bytes of the regular file name at off, fetching
// and verifying the chunks it needs that are not cached. It returns
// io.EOF at the file's end, as io.ReaderAt does. No byte of a chunk that
// does not match its digest is copied to p.
func (l *Layer) ReadAt(ctx context.Context, name string, p []byte, off int64) (int, error) {
	l.lastRead.Store(time.Now().UnixNano())
	name = clean(name)
	e, ok := l.Lookup(name)
	if !ok {
		return 0, fmt.Errorf("read %s: no such file in the layer", name)
	}
	if e.Type != "reg" {
		return 0, fmt.Errorf("read %s: not a regular file (%s)", name, e.Type)
	}
	if off < 0 {
		return 0, fmt.Errorf("read %s: negative offset", name)
	}
	n := 0
	for n < len(p) {
		at := off + int64(n)
		if at >= e.Size {
			return n, io.EOF
		}
		// (e.Name: a hard link's chunks are listed under its target's.)
		ce, ok := l.r.ChunkEntryForOffset(e.Name, at)
		if !ok {
			return n, fmt.Errorf("read %s at %d: %w: no chunk in the TOC", name, at, ErrCorrupt)
		}
		data, err := l.chunk(ctx, ce)
		if err != nil {
			return n, fmt.Errorf("read %s at %d: %w", name, at, err)
		}
		in := at - ce.ChunkOffset
		if in < 0 || in >= int64(len(data)) {
			return n, fmt.Errorf("read %s at %d: %w: chunk at %d of %d bytes", name, at, ErrCorrupt, ce.ChunkOffset, len(data))
		}
		n += copy(p[n:], data[in:])
	}
	return n, nil
}

// chunk returns the verified uncompressed content of a chunk, from the
// cache or fetched once however many readers want it at the same time.
func (l *Layer) chunk(ctx context.Context, ce *estargz.TOCEntry) ([]byte, error) {
	key := chunkKey{ce.Offset, ce.InnerOffset}
	l.mu.Lock()
	data, ok := l.cache[key]
	l.mu.Unlock()
	if ok {
		return data, nil
	}
	v, err, _ := l.group.Do(fmt.Sprint(key.offset, "+", key.inner), func() (any, error) {
		// A reader that missed the cache just before another's fetch
		// ended and left the group finds the chunk here, not in a
		// second fetch.
		l.mu.Lock()
		data, ok := l.cache[key]
		l.mu.Unlock()
		if ok {
			return data, nil
		}
		// Shared by every reader waiting for it: one reader giving up
		// does not fail the others (the Fetcher bounds its time).
		data, err := l.fetchChunk(context.WithoutCancel(ctx), ce)
		if err != nil {
			return nil, err
		}
		l.keep(key, data)
		return data, nil
	})
	if err != nil {
		return nil, err
	}
	return v.([]byte), nil
}

// fetchChunk fetches a chunk's compressed bytes (one gzip member of the
// blob) and returns its content once it matches the TOC's digest.
func (l *Layer) fetchChunk(ctx context.Context, ce *estargz.TOCEntry) ([]byte, error) {
	if err := l.checkChunk(ce); err != nil {
		return nil, err
	}
	if data := l.chunkFromFile(ce); data != nil {
		return data, nil
	}
	compressed, err := l.fetchRemote(ctx, ce.Offset, ce.NextOffset()-ce.Offset)
	if err != nil {
		return nil, err
	}
	data, err := l.decodeChunk(ce, compressed)
	if err != nil {
		return nil, err
	}
	l.keepLocal(ce.Offset, compressed)
	return data, nil
}

// fetchRemote fetches bytes of the blob from the registry.
func (l *Layer) fetchRemote(ctx context.Context, off, n int64) ([]byte, error) {
	data, err := l.fetch.Fetch(ctx, off, n)
	if err != nil {
		return nil, err
	}
	l.fetched.Add(int64(len(data)))
	return data, nil
}

// checkChunk refuses a chunk whose TOC entry points outside the blob or
// claims more than a chunk may be.
func (l *Layer) checkChunk(ce *estargz.TOCEntry) error {
	start, end := ce.Offset, ce.NextOffset()
	if start < 0 || end <= start || end > l.size || ce.ChunkSize <= 0 || ce.ChunkSize > maxChunkSize || ce.InnerOffset < 0 {
		return fmt.Errorf("%w: chunk at %d..%d of %d bytes in a blob of %d", ErrCorrupt, start, end, ce.ChunkSize, l.size)
	}
	return nil
}

// decodeChunk decompresses a chunk from its compressed bytes (which start
// at ce.Offset) and returns its content if it matches the TOC's digest.
func (l *Layer) decodeChunk(ce *estargz.TOCEntry, compressed []byte) ([]byte, error) {
	start := ce.Offset
	verifier, err := l.verifier.Verifier(ce)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		return nil, fmt.Errorf("chunk at %d: %w: %w", start, ErrCorrupt, err)
	}
	defer zr.Close()
	if _, err := io.CopyN(io.Discard, zr, ce.InnerOffset); err != nil {
		return nil, fmt.Errorf("chunk at %d: %w: %w", start, ErrCorrupt, err)
	}
	data := make([]byte, ce.ChunkSize)
	if _, err := io.ReadFull(zr, data); err != nil {
		return nil, fmt.Errorf("chunk at %d: %w: %w", start, ErrCorrupt, err)
	}
	if _, err := verifier.Write(data); err != nil || !verifier.Verified() {
		return nil, fmt.Errorf("chunk at %d: %w", start, ErrCorrupt)
	}
	return data, nil
}

// chunkKey names a chunk: the offset of its gzip member in the blob, and
// its offset inside the member's content.
type chunkKey struct{ offset, inner int64 }

// keep caches a verified chunk, evicting the oldest beyond cacheBytes.
func (l *Layer) keep(key chunkKey, data []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.cache[key]; ok {
		return
	}
	l.cache[key] = data
	l.order = append(l.order, key)
	l.held += int64(len(data))
	for l.held > cacheBytes && len(l.order) > 1 {
		old := l.order[0]
		l.order = l.order[1:]
		l.held -= int64(len(l.cache[old]))
		delete(l.cache, old)
	}
}
