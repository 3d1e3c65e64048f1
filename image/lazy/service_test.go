package lazy_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/types"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/image/lazy"
)

// openDocker opens a Remote's docker:// reference, as berth-lazy does,
// over plain HTTP to the test's registry.
func openDocker(ctx context.Context, r lazy.Remote) (types.ImageSource, error) {
	ref, err := docker.ParseReference(strings.TrimPrefix(r.Ref, "docker:"))
	if err != nil {
		return nil, err
	}
	return ref.NewImageSource(ctx, &types.SystemContext{DockerInsecureSkipTLSVerify: types.OptionalBoolTrue})
}

func newService(t *testing.T, opts lazy.ServiceOptions) *lazy.Service {
	t.Helper()
	opts.RunDir, opts.StateDir = t.TempDir(), t.TempDir()
	if opts.Open == nil {
		opts.Open = openDocker
	}
	opts.Retry, opts.MaxRetry = 50*time.Millisecond, 200*time.Millisecond
	if opts.Quiet == 0 {
		opts.Quiet = 50 * time.Millisecond
	}
	s, err := lazy.NewService(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close the service: %v", err)
		}
	})
	return s
}

func (rl *registryLayer) request(t *testing.T) lazy.LayerRequest {
	t.Helper()
	toc, _, err := lazy.TOCDigest(rl.desc.Annotations)
	if err != nil {
		t.Fatal(err)
	}
	return lazy.LayerRequest{Blob: rl.desc.Digest, Size: rl.desc.Size, TOC: toc,
		Remote: lazy.Remote{Ref: "docker://" + rl.proxy.addr + "/lazy/test:1"}}
}

// waitStatus polls the layer's status until ok says it is what the test
// waits for; the background fetch runs on its own.
func waitStatus(t *testing.T, s *lazy.Service, what string, ok func(lazy.LayerStatus) bool) lazy.LayerStatus {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := s.Status()
		if len(st) == 1 && ok(st[0]) {
			return st[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: status %+v", what, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A served layer is mounted, readable at once, made local in the
// background (the blob file is then the blob), and gone with Unmount,
// which refuses while the mount is in use.
func TestServiceServesAndCompletes(t *testing.T) {
	requireFUSE(t)
	rl := pushLayer(t, files)
	s := newService(t, lazy.ServiceOptions{})
	req := rl.request(t)
	dir, err := s.Mount(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "etc/hello")); err != nil || string(got) != files[1].Content {
		t.Fatalf("etc/hello through the mount: %q, %v", got, err)
	}
	again, err := s.Mount(context.Background(), req)
	if err != nil || again != dir {
		t.Errorf("a second Mount of the layer: %q, %v; want %q", again, err, dir)
	}
	st := waitStatus(t, s, "the layer to be local", func(st lazy.LayerStatus) bool { return st.Complete })
	if st.Local != rl.desc.Size || st.Dir != dir || st.Error != "" {
		t.Errorf("complete layer's status %+v", st)
	}
	blob, err := os.ReadFile(st.BlobFile)
	if err != nil || rl.desc.Digest.Algorithm().FromBytes(blob) != rl.desc.Digest {
		t.Errorf("the blob file is not the blob (%v)", err)
	}
	rl.reg.Stop()
	if got, err := os.ReadFile(filepath.Join(dir, "data/big")); err != nil || string(got) != files[3].Content {
		t.Errorf("data/big with the registry gone: %d bytes, %v", len(got), err)
	}

	busy, err := os.Open(filepath.Join(dir, "etc/hello"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Unmount(req.Blob); err == nil {
		t.Errorf("Unmount of a layer with an open file succeeded")
	}
	busy.Close()
	if err := s.Unmount(req.Blob); err != nil {
		t.Fatal(err)
	}
	if len(s.Status()) != 0 {
		t.Errorf("status after Unmount: %+v", s.Status())
	}
	for _, p := range []string{dir, st.BlobFile} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after Unmount: %v", p, err)
		}
	}
	if err := s.Unmount(req.Blob); !errors.Is(err, lazy.ErrUnknownLayer) {
		t.Errorf("a second Unmount: %v", err)
	}
}

// The background fetch is tried again until it succeeds: after a blob
// that does not match its digest, and after a registry that answers
// nothing; its status says why it is not done.
func TestServiceRetriesTheBackgroundFetch(t *testing.T) {
	requireFUSE(t)
	rl := pushLayer(t, files)
	s := newService(t, lazy.ServiceOptions{StallTimeout: 300 * time.Millisecond})
	stall := make(chan struct{})
	rl.proxy.mu.Lock()
	rl.proxy.corrupt = func(rangeHeader string) bool { return rangeHeader == "" }
	rl.proxy.mu.Unlock()
	dir, err := s.Mount(context.Background(), rl.request(t))
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, s, "a corrupt blob's error", func(st lazy.LayerStatus) bool {
		return strings.Contains(st.Error, "does not match")
	})
	rl.proxy.mu.Lock()
	rl.proxy.corrupt, rl.proxy.stallWhole = nil, stall
	rl.proxy.mu.Unlock()
	waitStatus(t, s, "a stalled registry's error", func(st lazy.LayerStatus) bool {
		return strings.Contains(st.Error, "sent nothing")
	})
	// Reads go on meanwhile: they fetch ranges.
	if got, err := os.ReadFile(filepath.Join(dir, "etc/hello")); err != nil || string(got) != files[1].Content {
		t.Errorf("etc/hello while the background fetch fails: %q, %v", got, err)
	}
	rl.proxy.mu.Lock()
	rl.proxy.stallWhole = nil
	rl.proxy.mu.Unlock()
	close(stall)
	st := waitStatus(t, s, "the layer to be local", func(st lazy.LayerStatus) bool { return st.Complete })
	if st.Error != "" {
		t.Errorf("complete layer still reports %q", st.Error)
	}
}

// Bad requests are refused before anything is opened.
func TestServiceRefusesBadRequests(t *testing.T) {
	s := newService(t, lazy.ServiceOptions{})
	good := lazy.LayerRequest{Blob: digest.Digest("sha256:" + strings.Repeat("a", 64)), Size: 10, TOC: digest.Digest("sha256:" + strings.Repeat("b", 64))}
	for name, mod := range map[string]func(*lazy.LayerRequest){
		"path in digest": func(r *lazy.LayerRequest) { r.Blob = "sha256:../../etc" },
		"no TOC":         func(r *lazy.LayerRequest) { r.TOC = "" },
		"no size":        func(r *lazy.LayerRequest) { r.Size = 0 },
		"not docker":     func(r *lazy.LayerRequest) { r.Remote.Ref = "oci:/etc" },
	} {
		r := good
		mod(&r)
		if _, err := s.Mount(context.Background(), r); err == nil {
			t.Errorf("%s: Mount succeeded", name)
		}
	}
	if len(s.Status()) != 0 {
		t.Errorf("status after bad requests: %+v", s.Status())
	}
}

// A Mount of a served layer with other credentials has its fetches use
// them from then on; one without credentials keeps the pull's.
func TestServiceKeepsTheNewestCredentials(t *testing.T) {
	requireFUSE(t)
	rl := pushLayer(t, files)
	var opened []lazy.Remote
	s := newService(t, lazy.ServiceOptions{Open: func(ctx context.Context, r lazy.Remote) (types.ImageSource, error) {
		opened = append(opened, r)
		return openDocker(ctx, r)
	}})
	req := rl.request(t)
	req.Remote.Username, req.Remote.Password = "kubelet", "first"
	mount := func(user, password string) {
		t.Helper()
		r := req
		r.Remote.Username, r.Remote.Password = user, password
		if _, err := s.Mount(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	mount("kubelet", "first")
	mount("", "")
	mount("kubelet", "first")
	mount("kubelet", "second")
	var passwords []string
	for _, r := range opened {
		passwords = append(passwords, r.Password)
	}
	if strings.Join(passwords, ",") != "first,second" {
		t.Errorf("sources opened with passwords %q; want first, then second", passwords)
	}
	if got, err := os.ReadFile(filepath.Join(s.Status()[0].Dir, "etc/hello")); err != nil || string(got) != files[1].Content {
		t.Errorf("etc/hello after the credentials changed: %q, %v", got, err)
	}
}

// The background fetch of the whole blob keeps out of the way of a
// container's reads: it starts once the layer has not been read for the
// quiet time.
func TestServiceBackgroundFetchWaitsForQuiet(t *testing.T) {
	requireFUSE(t)
	rl := pushLayer(t, files)
	s := newService(t, lazy.ServiceOptions{Quiet: 700 * time.Millisecond})
	dir, err := s.Mount(context.Background(), rl.request(t))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 8; i++ {
		// Past the page cache, so that each read reaches the layer.
		f, err := os.Open(filepath.Join(dir, "data/big"))
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			t.Fatal(err)
		}
		if _, err := f.ReadAt(make([]byte, 10), int64(i%4)*10*chunkSize); err != nil {
			t.Fatal(err)
		}
		f.Close()
		time.Sleep(200 * time.Millisecond)
	}
	if n := rl.proxy.whole.Load(); n != 0 {
		t.Errorf("%d requests for the whole blob while the layer was being read", n)
	}
	waitStatus(t, s, "the layer to be local once quiet", func(st lazy.LayerStatus) bool { return st.Complete })
	if n := rl.proxy.whole.Load(); n != 1 {
		t.Errorf("%d requests for the whole blob; want 1", n)
	}
}

// Mounts of one layer at once serve it once; of two layers, both.
func TestServiceConcurrentMounts(t *testing.T) {
	requireFUSE(t)
	a, b := pushLayer(t, files), pushLayer(t, mountFiles)
	s := newService(t, lazy.ServiceOptions{})
	dirs := make([]string, 8)
	errs := make([]error, 8)
	var wg sync.WaitGroup
	for i := range dirs {
		req := a.request(t)
		if i%2 == 1 {
			req = b.request(t)
		}
		wg.Go(func() { dirs[i], errs[i] = s.Mount(context.Background(), req) })
	}
	wg.Wait()
	for i := range dirs {
		if errs[i] != nil || dirs[i] != dirs[i%2] {
			t.Errorf("mount %d: %q, %v; want %q", i, dirs[i], errs[i], dirs[i%2])
		}
	}
	if st := s.Status(); len(st) != 2 || dirs[0] == dirs[1] {
		t.Errorf("status after concurrent mounts: %+v", st)
	}
}

// A connection to adopt whose mount is gone (its berth-lazy stopped
// cleanly) is not adopted: the directory would be served unmounted.
func TestServiceDropsConnectionsWithoutMount(t *testing.T) {
	run, state := t.TempDir(), t.TempDir()
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	blob := digest.FromString("gone")
	s, err := lazy.NewService(lazy.ServiceOptions{RunDir: run, StateDir: state,
		Open:  func(context.Context, lazy.Remote) (types.ImageSource, error) { return nil, errors.New("not used") },
		Adopt: []lazy.Connection{{Blob: blob, Init: []byte{1}, File: f}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := f.Stat(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("the connection without a mount is still held: %v", err)
	}
}

// The blob files a previous process left stay until AdoptTimeout, for a
// layer asked for again to go on with its fetch; then those nobody asked
// for go. Files of layers that were draining go at once.
func TestServiceSweepsLeftBlobFiles(t *testing.T) {
	run, state := t.TempDir(), t.TempDir()
	blobs := filepath.Join(state, "blobs")
	if err := os.MkdirAll(blobs, 0o700); err != nil {
		t.Fatal(err)
	}
	left := digest.FromString("left behind").Encoded()
	for _, name := range []string{left, left + ".fetched", left + ".draining-1", left + ".fetched.tmp"} {
		if err := os.WriteFile(filepath.Join(blobs, name), []byte("1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s, err := lazy.NewService(lazy.ServiceOptions{RunDir: run, StateDir: state, AdoptTimeout: 100 * time.Millisecond,
		Open: func(context.Context, lazy.Remote) (types.ImageSource, error) { return nil, errors.New("not used") }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	names := func() []string {
		entries, err := os.ReadDir(blobs)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range entries {
			out = append(out, e.Name())
		}
		return out
	}
	if got := names(); !slices.Equal(got, []string{left, left + ".fetched"}) {
		t.Errorf("blob files at the start: %v; want the blob file and its progress only", got)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(names()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("blob files nobody asked for are still there: %v", names())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
