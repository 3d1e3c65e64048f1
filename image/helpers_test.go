package image_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/internal/testutil"
)

// env is a store wired to a test registry.
type env struct {
	t     *testing.T
	reg   *testutil.Registry
	store *image.Store
	opts  image.Options
}

// newEnv starts a registry and opens a store configured for it (plain
// HTTP to 127.0.0.1, accept-anything policy, no host registries.conf.d).
func newEnv(t *testing.T, ro testutil.RegistryOptions, edit ...func(*image.Options)) *env {
	t.Helper()
	testutil.RequireRoot(t)
	e := &env{t: t, reg: testutil.StartRegistry(t, ro)}
	e.opts = image.Options{
		Root:              t.TempDir(),
		RegistriesConf:    testutil.RegistriesConf(t, "", e.reg.Addr),
		RegistriesConfDir: t.TempDir(),
		PolicyFile:        writePolicy(t, `{"default":[{"type":"insecureAcceptAnything"}]}`),
		ShortNameAliases:  filepath.Join(t.TempDir(), "aliases.conf"),
	}
	for _, f := range edit {
		f(&e.opts)
	}
	e.open()
	return e
}

func (e *env) open() {
	e.t.Helper()
	s, err := image.Open(e.opts)
	if err != nil {
		e.t.Fatal(err)
	}
	e.store = s
	e.t.Cleanup(func() {
		// Unmount whatever root filesystems a failed test left.
		if rs, err := s.Rootfses(); err == nil {
			for _, r := range rs {
				_ = s.RemoveRootfs(r.ID)
			}
		}
		s.Close()
	})
}

// localStore opens a store with no registry: for pulls of oci: layouts.
func localStore(t *testing.T) *image.Store {
	t.Helper()
	testutil.RequireRoot(t)
	s, err := image.Open(image.Options{Root: t.TempDir(), RegistriesConfDir: t.TempDir(), RegistriesConf: testutil.RegistriesConf(t, ""),
		PolicyFile: writePolicy(t, `{"default":[{"type":"insecureAcceptAnything"}]}`)})
	must(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func writePolicy(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// push builds an image and pushes it as repo:tag; it returns the
// reference to pull it by.
func (e *env) push(repoTag string, spec testutil.ImageSpec) string {
	e.t.Helper()
	ref := testutil.BuildOCI(e.t, e.t.TempDir(), "t", spec)
	e.reg.Push(e.t, ref, repoTag)
	return e.reg.Addr + "/" + repoTag
}

func (e *env) pull(ref string, o ...image.PullOptions) *image.Image {
	e.t.Helper()
	var opts image.PullOptions
	if len(o) > 0 {
		opts = o[0]
	}
	if e.reg.User != "" && opts.Auth == nil {
		opts.Auth = &image.Auth{Username: e.reg.User, Password: e.reg.Password}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	img, err := e.store.Pull(ctx, ref, opts)
	if err != nil {
		e.t.Fatalf("pull %s: %v", ref, err)
	}
	return img
}

func (e *env) pullErr(ref string, o image.PullOptions) error {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err := e.store.Pull(ctx, ref, o)
	if err == nil {
		e.t.Fatalf("pull %s succeeded, want an error", ref)
	}
	return err
}

// assertEmpty checks that the store holds nothing: no image, no layer
// directory, no temporary file.
func (e *env) assertEmpty() {
	e.t.Helper()
	imgs, err := e.store.List()
	if err != nil {
		e.t.Fatal(err)
	}
	if len(imgs) != 0 {
		e.t.Errorf("images left: %+v", imgs)
	}
	for _, d := range []string{"layers", "tmp", "containers"} {
		entries, _ := os.ReadDir(filepath.Join(e.opts.Root, d))
		if len(entries) != 0 {
			var names []string
			for _, en := range entries {
				names = append(names, en.Name())
			}
			e.t.Errorf("%s/ not empty: %v", d, names)
		}
	}
	if u, _ := e.store.Usage(); u.Bytes != 0 || u.Inodes != 0 {
		e.t.Errorf("usage %+v after everything was removed", u)
	}
}

// busybox returns a busybox root filesystem directory for a layer.
func busybox(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	testutil.BusyboxRootfs(t, dir)
	return dir
}

func simpleImage(files ...testutil.File) testutil.ImageSpec {
	return testutil.ImageSpec{
		Layers: []testutil.Layer{{Files: files}},
		Config: v1.ImageConfig{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}},
	}
}

// proxy sits between the store and the registry: it counts requests and
// can tamper with or cut what passes.
type proxy struct {
	srv   *httptest.Server
	mu    sync.Mutex
	blobs map[string]int // GET requests per blob digest
	// onBlob, if set, may replace the response body of a blob download.
	onBlob func(digest string, body io.ReadCloser) io.ReadCloser
	// hold, while non-nil, holds each request for the whole blob of
	// heldBlob (not ranges of it) until it is closed.
	hold     chan struct{}
	heldBlob string
	active   atomic.Int32
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	p := &proxy{blobs: map[string]int{}}
	u, _ := url.Parse("http://" + target)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		path := resp.Request.URL.Path
		if i := strings.Index(path, "/blobs/"); i >= 0 && resp.Request.Method == http.MethodGet {
			d := path[i+len("/blobs/"):]
			p.mu.Lock()
			p.blobs[d]++
			hook := p.onBlob
			p.mu.Unlock()
			if hook != nil {
				resp.Body = hook(d, resp.Body)
			}
		}
		return nil
	}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		hold, held := p.hold, p.heldBlob
		p.mu.Unlock()
		if hold != nil && r.Header.Get("Range") == "" && strings.HasSuffix(r.URL.Path, "/blobs/"+held) {
			select {
			case <-hold:
			case <-r.Context().Done():
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *proxy) addr() string { return strings.TrimPrefix(p.srv.URL, "http://") }

func (p *proxy) count(digest string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.blobs[digest]
}

// reopen closes the store and opens it again with changed options.
func (e *env) reopen(edit func(*image.Options)) {
	e.t.Helper()
	e.store.Close()
	if edit != nil {
		edit(&e.opts)
	}
	e.open()
}

// insecure rewrites registries.conf to allow plain HTTP to more
// addresses (proxies), with extra TOML on top.
func (e *env) insecure(extra string, addrs ...string) {
	e.t.Helper()
	all := append([]string{e.reg.Addr}, addrs...)
	e.reopen(func(o *image.Options) { o.RegistriesConf = testutil.RegistriesConf(e.t, extra, all...) })
}

type ioReadCloser = io.ReadCloser

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// writeTar tars a directory into a file (an oci-archive).
func writeTar(t *testing.T, path, dir string) {
	t.Helper()
	must(t, os.WriteFile(path, testutil.TarDir(t, dir), 0o644))
}

// slowReader hands out chunk bytes per pause: downloads that overlap.
func slowReader(r io.ReadCloser, chunk int, pause time.Duration) io.ReadCloser {
	return &slow{r: r, chunk: chunk, pause: pause}
}

type slow struct {
	r     io.ReadCloser
	chunk int
	pause time.Duration
}

func (s *slow) Read(p []byte) (int, error) {
	time.Sleep(s.pause)
	if len(p) > s.chunk {
		p = p[:s.chunk]
	}
	return s.r.Read(p)
}

func (s *slow) Close() error { return s.r.Close() }

// layerBlobs returns the compressed blob digests of an image's layers,
// from the manifest the store kept.
func layerBlobs(t *testing.T, e *env, img *image.Image) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e.opts.Root, "blobs", "sha256", img.Manifest.Encoded()))
	must(t, err)
	var m v1.Manifest
	must(t, json.Unmarshal(data, &m))
	var out []string
	for _, l := range m.Layers {
		out = append(out, l.Digest.String())
	}
	return out
}

func baseLayerBlob(t *testing.T, e *env, img *image.Image) string { return layerBlobs(t, e, img)[0] }
