package testutil

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
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
}

// StartBlobProxy starts a proxy to the registry at addr until the
// test's clean-up, which also releases what it holds.
func StartBlobProxy(t T, addr string) *BlobProxy {
	t.Helper()
	p := &BlobProxy{}
	u, _ := url.Parse("http://" + addr)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{DisableKeepAlives: true}
	rp.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) }
	rp.ModifyResponse = func(r *http.Response) error {
		p.mu.Lock()
		corrupt := p.corrupt
		p.mu.Unlock()
		if corrupt && r.Request.Header.Get("Range") != "" && strings.Contains(r.Request.URL.Path, "/blobs/") {
			r.Body = &FlipByte{R: r.Body, At: 100}
		}
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
