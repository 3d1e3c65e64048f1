package lazy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// Option configures Open.
type Option func(*Layer)

// WithBlobFile keeps the blob's bytes that have been fetched and verified
// in the file at path (created, sparse, the blob's size): what was read
// once is read from disk after, and FetchAll makes the whole layer local,
// so that its reads no longer need the registry.
func WithBlobFile(path string) Option {
	return func(l *Layer) { l.blobPath = path }
}

// span is a byte range [start, end) of the blob.
type span struct{ start, end int64 }

// openBlobFile creates the blob file.
func (l *Layer) openBlobFile() error {
	f, err := os.OpenFile(l.blobPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("blob file: %w", err)
	}
	if err := f.Truncate(l.size); err != nil {
		f.Close()
		return fmt.Errorf("blob file: %w", err)
	}
	l.file = f
	return nil
}

// Close closes the blob file; reads fail after it.
func (l *Layer) Close() error {
	if l.file == nil {
		return nil
	}
	return l.file.Close()
}

// Local is how many bytes of the blob are on disk, verified; Complete
// says whether that is all of it.
func (l *Layer) Local() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n int64
	for _, s := range l.local {
		n += s.end - s.start
	}
	return max(n, l.streamed)
}

// Complete reports whether FetchAll has made the whole blob local.
func (l *Layer) Complete() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.complete
}

// readRange returns the blob's bytes [off, off+n): from the blob file
// when they are there, else from the registry.
func (l *Layer) readRange(ctx context.Context, off, n int64) ([]byte, error) {
	if l.file != nil && l.covered(off, off+n) {
		data := make([]byte, n)
		if _, err := l.file.ReadAt(data, off); err == nil {
			return data, nil
		}
	}
	return l.fetchRemote(ctx, off, n)
}

// keepLocal writes verified bytes of the blob to the blob file. A write
// that fails (a full disk) only means they are fetched again next time.
func (l *Layer) keepLocal(off int64, data []byte) {
	if l.file == nil {
		return
	}
	if _, err := l.file.WriteAt(data, off); err != nil {
		return
	}
	l.mu.Lock()
	l.local = addSpan(l.local, span{off, off + int64(len(data))})
	l.mu.Unlock()
}

// forget drops a range of the blob file that failed its check: it is
// fetched again.
func (l *Layer) forget(off, end int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.complete = false
	var out []span
	for _, s := range l.local {
		if s.end <= off || s.start >= end {
			out = append(out, s)
			continue
		}
		if s.start < off {
			out = append(out, span{s.start, off})
		}
		if s.end > end {
			out = append(out, span{end, s.end})
		}
	}
	l.local = out
}

func (l *Layer) covered(start, end int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	i, _ := slices.BinarySearchFunc(l.local, start, func(s span, v int64) int {
		switch {
		case s.end <= v:
			return -1
		case s.start > v:
			return 1
		}
		return 0
	})
	return i < len(l.local) && l.local[i].start <= start && l.local[i].end >= end
}

// addSpan adds s to sorted, disjoint spans, merging what touches it.
func addSpan(spans []span, s span) []span {
	out := make([]span, 0, len(spans)+1)
	for _, o := range spans {
		switch {
		case o.end < s.start:
			out = append(out, o)
		case o.start > s.end:
			if s.start >= 0 {
				out = append(out, s)
				s.start = -1
			}
			out = append(out, o)
		default:
			s = span{min(s.start, o.start), max(s.end, o.end)}
		}
	}
	if s.start >= 0 {
		out = append(out, s)
	}
	return out
}

// chunkFromFile is a chunk decoded from the blob file, or nil when it is
// not there or no longer matches (then it is fetched again).
func (l *Layer) chunkFromFile(ce *estargz.TOCEntry) []byte {
	start, end := ce.Offset, ce.NextOffset()
	if l.file == nil || !l.covered(start, end) {
		return nil
	}
	compressed := make([]byte, end-start)
	if _, err := l.file.ReadAt(compressed, start); err != nil {
		return nil
	}
	data, err := l.decodeChunk(ce, compressed)
	if err != nil {
		l.forget(start, end)
		return nil
	}
	return data
}

// FetchAll makes the whole blob local: it reads the blob from open (the
// pull's own stream of it), writes it to the blob file, checks it against
// the blob's digest and syncs it. Reads are local from then on, and the
// file is the blob an ordinary pull would have fetched. A blob that does
// not match its digest is dropped, whatever it overwrote.
func (l *Layer) FetchAll(ctx context.Context, blob digest.Digest, open func(context.Context) (io.ReadCloser, error)) error {
	if l.file == nil {
		return errors.New("fetch the whole layer: no blob file (WithBlobFile)")
	}
	if l.Complete() {
		return nil
	}
	rc, err := open(ctx)
	if err != nil {
		return fmt.Errorf("fetch the whole layer %s: %w", blob, err)
	}
	defer rc.Close()
	verifier := blob.Verifier()
	buf := make([]byte, 1<<20)
	var off int64
	for off < l.size {
		n, err := io.ReadFull(rc, buf[:min(int64(len(buf)), l.size-off)])
		if n > 0 {
			verifier.Write(buf[:n])
			if _, werr := l.file.WriteAt(buf[:n], off); werr != nil {
				l.dropAll()
				return fmt.Errorf("fetch the whole layer %s: %w", blob, werr)
			}
			off += int64(n)
			l.mu.Lock()
			l.streamed = off
			l.mu.Unlock()
		}
		if err != nil {
			l.dropAll()
			return fmt.Errorf("fetch the whole layer %s at %d of %d bytes: %w", blob, off, l.size, err)
		}
	}
	if extra, _ := rc.Read(buf[:1]); extra > 0 || !verifier.Verified() {
		l.dropAll()
		return fmt.Errorf("fetch the whole layer %s: %w", blob, ErrCorrupt)
	}
	if err := l.file.Sync(); err != nil {
		l.dropAll()
		return fmt.Errorf("fetch the whole layer %s: %w", blob, err)
	}
	l.mu.Lock()
	l.local, l.complete, l.streamed = []span{{0, l.size}}, true, 0
	l.mu.Unlock()
	return nil
}

// dropAll forgets every local byte: the blob file's content is no longer
// what was verified.
func (l *Layer) dropAll() {
	l.mu.Lock()
	l.local, l.complete, l.streamed = nil, false, 0
	l.mu.Unlock()
}

// Prefetch fetches, in one request, what the image marks for prefetch
// (every chunk before eStargz's prefetch landmark: the files its entry
// point reads first) and keeps it verified, on disk with a blob file. A
// layer without the landmark has nothing to prefetch.
func (l *Layer) Prefetch(ctx context.Context) error {
	lm, ok := l.r.Lookup(estargz.PrefetchLandmark)
	if !ok {
		return nil
	}
	end := lm.Offset
	if end <= 0 || end > l.size {
		return fmt.Errorf("prefetch: %w: landmark at %d of a %d-byte blob", ErrCorrupt, end, l.size)
	}
	region, err := l.readRange(ctx, 0, end)
	if err != nil {
		return fmt.Errorf("prefetch: %w", err)
	}
	return l.Walk(func(name string, e *estargz.TOCEntry) error {
		if e.Type != "reg" || e.Size == 0 {
			return nil
		}
		for off := int64(0); off < e.Size; {
			ce, ok := l.r.ChunkEntryForOffset(e.Name, off)
			if !ok || ce.Offset >= end {
				return nil
			}
			if err := l.checkChunk(ce); err != nil || ce.NextOffset() > end {
				return fmt.Errorf("prefetch %s: %w: chunk at %d", name, ErrCorrupt, ce.Offset)
			}
			compressed := region[ce.Offset:ce.NextOffset()]
			data, err := l.decodeChunk(ce, compressed)
			if err != nil {
				return fmt.Errorf("prefetch %s: %w", name, err)
			}
			l.keep(chunkKey{ce.Offset, ce.InnerOffset}, data)
			l.keepLocal(ce.Offset, compressed)
			off = ce.ChunkOffset + ce.ChunkSize
		}
		return nil
	})
}
