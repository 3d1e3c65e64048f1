package cri_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/testutil"
)

// TestImageStoreFaults: a disk that fills up, a registry that goes away
// in the middle of a layer and a layer corrupted on the way each fail
// PullImage with their own status code, no image is listed, nothing of
// the pull stays on disk, and the next pull works.
func TestImageStoreFaults(t *testing.T) {
	// A registry of the test's own, serving a 12 MiB layer that does
	// not compress, behind a proxy that can slow or corrupt blobs.
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	layout := testutil.BuildOCI(t, t.TempDir(), "latest", testutil.ImageSpec{Layers: []testutil.Layer{
		{Files: []testutil.File{{Path: "big.bin", Content: testutil.Incompressible(12 << 20)}}},
	}})
	reg.Push(t, layout, "big:v1")
	proxy := newBlobProxy(t, reg.Addr)
	regConf := testutil.RegistriesConf(t, "", suite.reg.Addr, reg.Addr, proxy.addr)
	big := proxy.addr + "/big:v1"

	noImage := func(t *testing.T, d *daemon, ref string) {
		t.Helper()
		resp, err := d.Img.ImageStatus(ctxT(t), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		if err != nil || resp.Image != nil {
			t.Errorf("%s after the failed pull: %v %v", ref, err, resp.GetImage())
		}
	}
	pullCode := func(d *daemon, ref string) (codes.Code, error) {
		_, err := d.Img.PullImage(ctxT(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		return status.Code(err), err
	}

	t.Run("disk-full", func(t *testing.T) {
		d := startDaemon(t, daemonOptions{registriesConf: regConf, rootSize: "8m"})
		used := func() int64 {
			var st syscall.Statfs_t
			if err := syscall.Statfs(d.Dir+"/root", &st); err != nil {
				t.Fatal(err)
			}
			return int64(st.Blocks-st.Bfree) * st.Bsize
		}
		before := used()
		if code, err := pullCode(d, big); code != codes.ResourceExhausted || !strings.Contains(err.Error(), "space") {
			t.Errorf("pull onto a full disk: %v, want ResourceExhausted saying so", err)
		}
		noImage(t, d, big)
		if after := used(); after > before+256<<10 {
			t.Errorf("the failed pull left %d KiB on the disk", (after-before)>>10)
		}
		d.pull(t, suite.busybox)
	})

	t.Run("registry-gone", func(t *testing.T) {
		d := startDaemon(t, daemonOptions{registriesConf: regConf})
		// The registry stops when 2 MiB of the layer have gone through.
		proxy.set(func(body io.ReadCloser) io.ReadCloser {
			return &testutil.CutAfter{R: body, N: 2 << 20, Cut: reg.Stop}
		})
		if code, err := pullCode(d, big); code != codes.Unavailable {
			t.Errorf("pull with the registry gone: %v, want Unavailable", err)
		}
		noImage(t, d, big)
		proxy.set(nil)
		reg.Restart(t)
		d.pull(t, big)
	})

	t.Run("corrupted-blob", func(t *testing.T) {
		d := startDaemon(t, daemonOptions{registriesConf: regConf})
		proxy.set(func(body io.ReadCloser) io.ReadCloser { return &testutil.FlipByte{R: body, At: 1 << 20} })
		if code, err := pullCode(d, big); code != codes.DataLoss || !strings.Contains(err.Error(), "digest") {
			t.Errorf("pull of a corrupted layer: %v, want DataLoss naming the digest", err)
		}
		noImage(t, d, big)
		proxy.set(nil)
		d.pull(t, big)
	})
}

// blobProxy forwards to a registry, passing blob bodies through onBlob
// when it is set.
type blobProxy struct {
	addr   string
	onBlob atomic.Pointer[func(io.ReadCloser) io.ReadCloser]
}

// set makes f (nil: none) the filter of blob bodies.
func (p *blobProxy) set(f func(io.ReadCloser) io.ReadCloser) {
	if f == nil {
		p.onBlob.Store(nil)
		return
	}
	p.onBlob.Store(&f)
}

func newBlobProxy(t *testing.T, target string) *blobProxy {
	t.Helper()
	p := &blobProxy{}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	rp.ModifyResponse = func(r *http.Response) error {
		if f := p.onBlob.Load(); f != nil && r.Request.Method == http.MethodGet && strings.Contains(r.Request.URL.Path, "/blobs/") {
			r.Body = (*f)(r.Body)
		}
		return nil
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	p.addr = strings.TrimPrefix(srv.URL, "http://")
	return p
}
