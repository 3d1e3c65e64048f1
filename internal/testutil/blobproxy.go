package testutil

import (
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// BlobProxy forwards a new port on 127.0.0.1 to a registry. It can hold
// the requests for whole blobs (not ranges of them), cut every request,
// as a registry that goes away does, and corrupt what it serves of
// ranges, as a hostile registry would: for tests of lazy pulls, whose
// background fetch must not finish before the test says so.
type BlobProxy struct {
	// Addr is host:port.
	Addr string

	mu sync.Mutex
	// hold, while non-nil, holds the whole-blob requests for held (every
	// blob if empty).
	hold    chan struct{}
	held    []string
	cut     bool
	corrupt bool
	// cutAt: while non-zero, a blob's bytes from there on are not sent
	// (the connection breaks); ranges lists the Range headers of the
	// blob requests, "" for a whole blob.
	cutAt  int64
	ranges []string
}

// StartBlobProxy starts a proxy to the registry at addr until the
// test's clean-up, which also releases what it holds.
func StartBlobProxy(t T, addr string) *BlobProxy {
	t.Helper()
	p := &BlobProxy{}
	u, _ := url.Parse("http://" + addr)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{DisableKeepAlives: true}
	rp.ErrorLog = log.New(io.Discard, "", 0) // cuts are the point
	rp.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) }
	rp.ModifyResponse = func(r *http.Response) error {
		p.mu.Lock()
		corrupt := p.corrupt
		p.mu.Unlock()
		if corrupt && r.Request.Header.Get("Range") != "" && strings.Contains(r.Request.URL.Path, "/blobs/") {
			r.Body = &FlipByte{R: r.Body, At: 100}
		}
		p.mu.Lock()
		cutAt := p.cutAt
		p.mu.Unlock()
		if cutAt > 0 && strings.Contains(r.Request.URL.Path, "/blobs/") && r.StatusCode/100 == 2 {
			start := rangeStart(r.Request.Header.Get("Range"))
			r.Body = struct {
				io.Reader
				io.Closer
			}{io.MultiReader(io.LimitReader(r.Body, max(0, cutAt-start)), errorReader{}), r.Body}
		}
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			p.mu.Lock()
			p.ranges = append(p.ranges, r.Header.Get("Range"))
			p.mu.Unlock()
		}
		if hold := p.holds(r); hold != nil {
			select {
			case <-hold:
			case <-r.Context().Done():
				return
			}
		}
		p.mu.Lock()
		cut := p.cut
		p.mu.Unlock()
		if cut {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		p.Release()
		srv.Close()
	})
	p.Addr = strings.TrimPrefix(srv.URL, "http://")
	return p
}

// Hold makes requests for the whole of these blobs (digests; every blob
// if none) wait until Release.
func (p *BlobProxy) Hold(blobs ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hold == nil {
		p.hold = make(chan struct{})
	}
	p.held = blobs
}

// holds returns what r must wait on, or nil.
func (p *BlobProxy) holds(r *http.Request) chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, blob, ok := strings.Cut(r.URL.Path, "/blobs/")
	if p.hold == nil || !ok || r.Header.Get("Range") != "" {
		return nil
	}
	if len(p.held) == 0 || slices.Contains(p.held, blob) {
		return p.hold
	}
	return nil
}

// Release lets the held requests, and those to come, through.
func (p *BlobProxy) Release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hold != nil {
		close(p.hold)
		p.hold = nil
	}
}

// CorruptRanges flips a byte of every range of a blob served while on.
func (p *BlobProxy) CorruptRanges(on bool) {
	p.mu.Lock()
	p.corrupt = on
	p.mu.Unlock()
}

// Cut answers every request with 502 Bad Gateway while on.
func (p *BlobProxy) Cut(on bool) {
	p.mu.Lock()
	p.cut = on
	p.mu.Unlock()
}

// CutAt breaks every blob response before the blob's byte n (at once
// for a range from there on), as a connection that drops in the middle
// of a fetch; 0 turns it off.
func (p *BlobProxy) CutAt(n int64) {
	p.mu.Lock()
	p.cutAt = n
	p.mu.Unlock()
}

// Ranges are the Range headers of the blob requests so far, "" for a
// request of a whole blob.
func (p *BlobProxy) Ranges() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.ranges)
}

// rangeStart is where a Range header's (bytes=START-[END]) bytes start;
// 0 without one.
func rangeStart(h string) int64 {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return 0
	}
	start, _, _ := strings.Cut(spec, "-")
	n, err := strconv.ParseInt(start, 10, 64)
	if err != nil {
		return 0
	}
	return n
}

type errorReader struct{}

func (errorReader) Read([]byte) (int, error) { return 0, errors.New("blob proxy: connection cut") }
