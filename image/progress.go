package image

import (
	"io"
	"sort"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// LayerState is where one layer of a pull is.
type LayerState int32

const (
	// LayerWaiting: not started yet.
	LayerWaiting LayerState = iota
	// LayerDownloading: bytes are streaming in and being unpacked.
	LayerDownloading
	// LayerFinishing: downloaded and unpacked; being verified and fitted
	// onto the layers below.
	LayerFinishing
	// LayerDone: stored.
	LayerDone
	// LayerExists: already in the store; nothing to download.
	LayerExists
	// LayerFailed: the pull failed.
	LayerFailed
)

func (s LayerState) String() string {
	return [...]string{"waiting", "downloading", "finishing", "done", "exists", "failed"}[s]
}

// LayerProgress is one layer of a pull in progress.
type LayerProgress struct {
	// Digest is the (compressed) blob digest from the manifest.
	Digest digest.Digest
	// Size is the blob's size in bytes, or -1 when the manifest does not
	// say.
	Size int64
	// Done counts the bytes downloaded so far.
	Done  int64
	State LayerState
	// Started is when the download began.
	Started time.Time
}

// PullStatus is a pull in progress: what the CRI's PullImage does not
// show.
type PullStatus struct {
	ID      string
	Ref     string
	Started time.Time
	Layers  []LayerProgress
}

// Bytes returns the bytes done and the total, over all layers to
// download (layers already present count for neither).
func (p PullStatus) Bytes() (done, total int64) {
	for _, l := range p.Layers {
		if l.State == LayerExists {
			continue
		}
		done += l.Done
		if l.Size > 0 {
			total += l.Size
		}
	}
	return done, total
}

// pullTracker is the live, concurrently updated side of a PullStatus.
type pullTracker struct {
	id, ref string
	started time.Time
	layers  []*layerTracker
}

type layerTracker struct {
	digest  digest.Digest
	size    int64
	done    atomic.Int64
	state   atomic.Int32
	started atomic.Int64 // unix nanoseconds
}

func (t *layerTracker) set(s LayerState) {
	if s == LayerDownloading {
		t.started.Store(time.Now().UnixNano())
	}
	t.state.Store(int32(s))
}

func (p *pullTracker) snapshot() PullStatus {
	st := PullStatus{ID: p.id, Ref: p.ref, Started: p.started}
	for _, l := range p.layers {
		lp := LayerProgress{Digest: l.digest, Size: l.size, Done: l.done.Load(), State: LayerState(l.state.Load())}
		if ns := l.started.Load(); ns != 0 {
			lp.Started = time.Unix(0, ns)
		}
		st.Layers = append(st.Layers, lp)
	}
	return st
}

// Pulls lists the pulls in progress, oldest first, also those that the
// kubelet started: the side channel for `berthctl images --pulling`.
func (s *Store) Pulls() []PullStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]PullStatus, 0, len(s.inflight))
	for _, p := range s.inflight {
		out = append(out, p.snapshot())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out
}

func (s *Store) track(p *pullTracker) func() {
	s.mu.Lock()
	s.inflight[p.id] = p
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.inflight, p.id)
		s.mu.Unlock()
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}
