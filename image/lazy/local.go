package lazy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// Option configures Open.
type Option func(*Layer)

// WithBlobFile keeps the blob's bytes that have been fetched and verified
// in the file at path (created, sparse, the blob's size): what was read
// once is read from disk after, and FetchAll makes the whole layer local,
// so that its reads no longer need the registry. A blob file a previous
// process left at path, with its progress file (path.fetched), is taken
// up: FetchAll goes on where that process's last sync was.
func WithBlobFile(path string) Option {
	return func(l *Layer) { l.blobPath = path }
}

// WithSyncEvery makes FetchAll sync the blob file, and record how far it
// got, every n bytes of the blob instead of every DefaultSyncEvery.
func WithSyncEvery(n int64) Option {
	return func(l *Layer) { l.syncEvery = n }
}

// DefaultSyncEvery is how often FetchAll syncs the blob file: what a
// crash loses of the background fetch, for one sync per 64 MiB.
const DefaultSyncEvery = 64 << 20

// span is a byte range [start, end) of the blob.
type span struct{ start, end int64 }

// progressPath is the file that records how much of the blob file
// FetchAll wrote and synced, as a decimal number.
func progressPath(blobPath string) string { return blobPath + ".fetched" }

// MoveBlobFile renames the blob file and its progress file, so that
// another Layer of the blob can start at the old path while this one
// drains; this one's progress is recorded beside the new path.
func (l *Layer) MoveBlobFile(path string) error {
	l.pmu.Lock()
	defer l.pmu.Unlock()
	if err := os.Rename(l.blobPath, path); err != nil {
		return err
	}
	if err := os.Rename(progressPath(l.blobPath), progressPath(path)); err != nil && !errors.Is(err, os.ErrNotExist) {
		os.Remove(progressPath(l.blobPath))
	}
	l.blobPath = path
	return nil
}

// RemoveBlobFile removes the blob file and its progress file.
func (l *Layer) RemoveBlobFile() error {
	l.pmu.Lock()
	defer l.pmu.Unlock()
	os.Remove(progressPath(l.blobPath))
	if err := os.Remove(l.blobPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// openBlobFile opens the blob file a previous process left, with what
// its progress file says was written, or creates it.
func (l *Layer) openBlobFile() error {
	if l.syncEvery <= 0 {
		l.syncEvery = DefaultSyncEvery
	}
	if n := l.resumable(); n > 0 {
		f, err := os.OpenFile(l.blobPath, os.O_RDWR, 0)
		if err == nil {
			l.file, l.streamed, l.resumed = f, n, n
			return nil
		}
	}
	os.Remove(progressPath(l.blobPath))
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

// resumable is how many bytes of a blob file left by a previous process
// its progress file vouches for (written and synced by FetchAll; checked
// against the blob's digest once the rest is there), or 0.
func (l *Layer) resumable() int64 {
	data, err := os.ReadFile(progressPath(l.blobPath))
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil || n <= 0 || n > l.size {
		return 0
	}
	if fi, err := os.Stat(l.blobPath); err != nil || !fi.Mode().IsRegular() || fi.Size() != l.size {
		return 0
	}
	return n
}

// Resumed is how many bytes of the blob a previous process had fetched,
// which FetchAll does not fetch again.
func (l *Layer) Resumed() int64 { return l.resumed }

// recordProgress syncs the blob file and records that its first n bytes
// are written. A failure only means a crash loses more.
func (l *Layer) recordProgress(n int64) error {
	if err := l.file.Sync(); err != nil {
		return err
	}
	l.pmu.Lock()
	defer l.pmu.Unlock()
	p := progressPath(l.blobPath)
	if err := os.WriteFile(p+".tmp", []byte(strconv.FormatInt(n, 10)+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(p+".tmp", p)
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

// readRange returns the blob's bytes [off, off+n): from the blob file as
// far as they are there from off on (local says how many), the rest from
// the registry. With streamed, what the background fetch has written
// counts too, which is verified only once the whole blob is: for a
// caller that checks the bytes chunk by chunk against the TOC. The TOC
// is read without: bytes on disk that no longer match would fail its
// digest.
func (l *Layer) readRange(ctx context.Context, off, n int64, streamed bool) (data []byte, local int64, err error) {
	if l.file != nil {
		local = min(l.localFrom(off, streamed), n)
	}
	data = make([]byte, local, n)
	if local > 0 {
		if _, err := l.file.ReadAt(data, off); err != nil {
			data, local = data[:0], 0
		}
	}
	if local == n {
		return data, local, nil
	}
	rest, err := l.fetchRemote(ctx, off+local, n-local)
	if err != nil {
		return nil, 0, err
	}
	return append(data, rest...), local, nil
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

// covered reports whether the blob's bytes [start, end) are in the blob
// file, for a reader that checks each chunk against the TOC.
func (l *Layer) covered(start, end int64) bool {
	return start+l.localFrom(start, true) >= end
}

// localFrom is how many of the blob's bytes from off on are in the blob
// file without a gap: verified spans and, with streamed, the prefix the
// background fetch has written (in this process, or synced by an
// earlier one), which is verified only once the whole blob is.
func (l *Layer) localFrom(off int64, streamed bool) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	end := off
	if streamed && off < l.streamed {
		end = l.streamed
	}
	i, _ := slices.BinarySearchFunc(l.local, off, func(s span, v int64) int {
		switch {
		case s.end <= v:
			return -1
		case s.start > v:
			return 1
		}
		return 0
	})
	// Spans are disjoint and apart (addSpan merges what touches), but
	// the streamed prefix may end inside one, or reach past several.
	for ; i < len(l.local) && l.local[i].start <= end; i++ {
		end = max(end, l.local[i].end)
	}
	return end - off
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
// pull's own stream of it, from the offset given), writes it to the blob
// file, checks it against the blob's digest and syncs it. Reads are local
// from then on, and the file is the blob an ordinary pull would have
// fetched. A stream that breaks is taken up where it broke by the next
// FetchAll, which hashes again what is on disk and opens the rest; a
// blob that does not match its digest is dropped, whatever it overwrote,
// and the next FetchAll starts from its first byte.
func (l *Layer) FetchAll(ctx context.Context, blob digest.Digest, open func(ctx context.Context, off int64) (io.ReadCloser, error)) error {
	if l.file == nil {
		return errors.New("fetch the whole layer: no blob file (WithBlobFile)")
	}
	if l.Complete() {
		return nil
	}
	l.mu.Lock()
	off := l.streamed
	l.mu.Unlock()
	var rc io.ReadCloser = io.NopCloser(eofReader{})
	if off < l.size {
		var err error
		rc, err = open(ctx, off)
		if err != nil && off > 0 {
			// Perhaps a registry that takes no range requests: the
			// whole blob. If that fails too (the registry is away),
			// what is on disk stays for the next try.
			if whole, werr := open(ctx, 0); werr == nil {
				rc, err, off = whole, nil, 0
				l.restart()
			}
		}
		if err != nil {
			return fmt.Errorf("fetch the whole layer %s from byte %d: %w", blob, off, err)
		}
	}
	defer rc.Close()
	digester := blob.Algorithm().Digester()
	if off > 0 {
		if _, err := io.Copy(digester.Hash(), io.NewSectionReader(l.file, 0, off)); err != nil {
			l.restart()
			return fmt.Errorf("fetch the whole layer %s: read the %d bytes fetched before: %w", blob, off, err)
		}
	}
	from := off
	buf := make([]byte, 1<<20)
	synced := off
	for off < l.size {
		n, err := io.ReadFull(rc, buf[:min(int64(len(buf)), l.size-off)])
		if n > 0 {
			digester.Hash().Write(buf[:n])
			if _, werr := l.file.WriteAt(buf[:n], off); werr != nil {
				l.dropAll()
				return fmt.Errorf("fetch the whole layer %s: %w", blob, werr)
			}
			off += int64(n)
			l.mu.Lock()
			l.streamed = off
			l.mu.Unlock()
			if off-synced >= l.syncEvery && off < l.size {
				if err := l.recordProgress(off); err == nil {
					synced = off
				}
			}
		}
		if err != nil {
			// What was written stays: the next try goes on from here.
			return fmt.Errorf("fetch the whole layer %s at %d of %d bytes: %w", blob, off, l.size, err)
		}
	}
	if extra, _ := rc.Read(buf[:1]); extra > 0 || digester.Digest() != blob {
		l.dropAll()
		if from > 0 {
			return fmt.Errorf("fetch the whole layer %s (its first %d bytes fetched before): %w", blob, from, ErrCorrupt)
		}
		return fmt.Errorf("fetch the whole layer %s: %w", blob, ErrCorrupt)
	}
	if err := l.recordProgress(l.size); err != nil {
		l.dropAll()
		return fmt.Errorf("fetch the whole layer %s: %w", blob, err)
	}
	l.mu.Lock()
	l.local, l.complete, l.streamed = []span{{0, l.size}}, true, 0
	l.mu.Unlock()
	return nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// restart makes the next FetchAll start from the blob's first byte.
func (l *Layer) restart() {
	l.mu.Lock()
	l.streamed = 0
	l.mu.Unlock()
	l.removeProgress()
}

// removeProgress removes the progress file: nothing of the blob file is
// to be taken up by another process.
func (l *Layer) removeProgress() {
	l.pmu.Lock()
	os.Remove(progressPath(l.blobPath))
	l.pmu.Unlock()
}

// dropAll forgets every local byte: the blob file's content is no longer
// what was verified.
func (l *Layer) dropAll() {
	l.mu.Lock()
	l.local, l.complete, l.streamed = nil, false, 0
	l.mu.Unlock()
	l.removeProgress()
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
	region, local, err := l.readRange(ctx, 0, end, true)
	if err != nil {
		return fmt.Errorf("prefetch: %w", err)
	}
	err = l.prefetchFrom(region, end)
	if local > 0 && errors.Is(err, ErrCorrupt) {
		// Bytes on disk that no longer match (the registry's were
		// checked): the whole region from the registry.
		if region, err = l.fetchRemote(ctx, 0, end); err != nil {
			return fmt.Errorf("prefetch: %w", err)
		}
		err = l.prefetchFrom(region, end)
	}
	return err
}

// prefetchFrom keeps the chunks of the prefetch region [0, end), checked
// against the TOC.
func (l *Layer) prefetchFrom(region []byte, end int64) error {
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
