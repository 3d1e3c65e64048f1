package lazyhelper_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/image/lazy"
	"github.com/berth-runtime/berth/internal/lazyhelper"
	"github.com/berth-runtime/berth/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

var files = []testutil.File{
	{Path: "etc/", Type: '5'},
	{Path: "etc/hello", Content: "hello from berth-lazy\n"},
	{Path: "data/", Type: '5'},
	// Last in the blob: read only after the registry is cut, so its
	// chunks cannot have been fetched before.
	{Path: "data/tail", Content: testutil.IncompressibleFrom(7, 3<<20)},
}

// helper is a berth-lazy process this test started, and its
// directories.
type helper struct {
	t                        *testing.T
	socket, runDir, stateDir string
	cmd                      *exec.Cmd
	log                      string
	args                     []string // more flags
}

func newHelper(t *testing.T, args ...string) *helper {
	if os.Geteuid() != 0 {
		t.Skip("berth-lazy mounts FUSE: needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no /dev/fuse on this host: %v", err)
	}
	dir := t.TempDir()
	h := &helper{t: t, socket: filepath.Join(dir, "lazy.sock"), runDir: filepath.Join(dir, "run"),
		stateDir: filepath.Join(dir, "state"), log: filepath.Join(dir, "lazy.log"), args: args}
	t.Cleanup(func() {
		h.kill()
		// A killed helper leaves its mounts, dead: detach them.
		for _, m := range mountsUnder(t, h.runDir) {
			if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
				t.Errorf("detach %s: %v", m, err)
			}
		}
		if t.Failed() {
			log, _ := os.ReadFile(h.log)
			t.Logf("berth-lazy's log:\n%s", log)
		}
	})
	h.start()
	return h
}

// start starts berth-lazy, with the connections to adopt as its
// descriptors 3 on.
func (h *helper) start(adopt ...lazy.Connection) {
	h.t.Helper()
	args := append([]string{"--socket", h.socket, "--run-dir", h.runDir, "--state-dir", h.stateDir, "--log", h.log}, h.args...)
	if len(adopt) > 0 {
		args = append(args, "--adopt", lazyhelper.AdoptFlag(adopt, 3))
	}
	h.cmd = exec.Command(testutil.Bin(h.t, "berth-lazy"), args...)
	for _, c := range adopt {
		h.cmd.ExtraFiles = append(h.cmd.ExtraFiles, c.File)
	}
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := h.cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	c := lazyhelper.NewClient(h.socket)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := c.Status(context.Background()); err == nil {
			return
		} else if time.Now().After(deadline) {
			h.t.Fatalf("berth-lazy does not answer: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill kills the helper this test started, by its PID.
func (h *helper) kill() {
	if h.cmd == nil {
		return
	}
	_ = h.cmd.Process.Kill()
	_ = h.cmd.Wait()
	h.cmd = nil
}

// logged reports whether a line of the helper's log has every part.
func (h *helper) logged(parts ...string) bool {
	data, _ := os.ReadFile(h.log)
	for line := range strings.SplitSeq(string(data), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

func mountsUnder(t *testing.T, dir string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for line := range strings.SplitSeq(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

// pushLayer pushes a one-layer eStargz image and returns the request for
// its layer, through a registries.conf that makes the registry plain HTTP.
func pushLayer(t *testing.T) (*testutil.Registry, lazy.LayerRequest) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	ref := testutil.BuildOCI(t, t.TempDir(), "t", testutil.ImageSpec{Layers: []testutil.Layer{
		{Files: files, Compression: "estargz", EStargzChunkSize: 64 << 10},
	}})
	reg.Push(t, ref, "lazy/helper:1")
	m := reg.Manifest(t, "lazy/helper:1")
	if len(m.Layers) != 1 {
		t.Fatalf("manifest with %d layers", len(m.Layers))
	}
	toc, ok, err := lazy.TOCDigest(m.Layers[0].Annotations)
	if err != nil || !ok {
		t.Fatalf("no TOC digest in %v: %v", m.Layers[0].Annotations, err)
	}
	return reg, lazy.LayerRequest{Blob: m.Layers[0].Digest, Size: m.Layers[0].Size, TOC: toc, Remote: lazy.Remote{
		Ref:            "docker://" + reg.Addr + "/lazy/helper:1",
		RegistriesConf: testutil.RegistriesConf(t, "", reg.Addr),
	}}
}

func waitStatus(t *testing.T, c *lazyhelper.Client, what string, ok func(lazy.LayerStatus) bool) lazy.LayerStatus {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := c.Status(context.Background())
		if err == nil && len(st) == 1 && ok(st[0]) {
			return st[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %+v, %v", what, st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// berth-lazy serves a layer through its API; with the registry cut, a
// read of what is not local fails with EIO instead of hanging, and the
// background fetch goes on once the registry is back.
func TestHelperServesThroughRegistryCut(t *testing.T) {
	h := newHelper(t)
	reg, req := pushLayer(t)
	// The background fetch must not finish before the cut: the proxy
	// holds it until then.
	proxy := testutil.StartBlobProxy(t, reg.Addr)
	proxy.Hold()
	req.Remote.Ref = "docker://" + proxy.Addr + "/lazy/helper:1"
	req.Remote.RegistriesConf = testutil.RegistriesConf(t, "", proxy.Addr)
	c := lazyhelper.NewClient(h.socket)
	ctx := context.Background()
	dir, err := c.Mount(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "etc/hello")); err != nil || string(got) != files[1].Content {
		t.Fatalf("etc/hello: %q, %v", got, err)
	}
	if st := waitStatus(t, c, "the layer listed", func(lazy.LayerStatus) bool { return true }); st.Dir != dir || st.Size != req.Size || st.Complete {
		t.Errorf("status before the cut: %+v", st)
	}

	reg.Stop()
	proxy.Release()
	if _, err := os.ReadFile(filepath.Join(dir, "data/tail")); !errors.Is(err, syscall.EIO) {
		t.Errorf("data/tail with the registry cut: %v; want EIO", err)
	}
	waitStatus(t, c, "the background fetch's error", func(st lazy.LayerStatus) bool { return st.Error != "" })
	if !h.logged(`"msg":"lazy read failed"`, `"file":"data/tail"`, "502 Bad Gateway") {
		t.Errorf("no log line names the failed read and why")
	}
	reg.Restart(t)
	st := waitStatus(t, c, "the layer to be local", func(st lazy.LayerStatus) bool { return st.Complete })
	if st.Local != req.Size || st.Error != "" {
		t.Errorf("status once local: %+v", st)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "data/tail")); err != nil || string(got) != files[3].Content {
		t.Errorf("data/tail once local: %d bytes, %v", len(got), err)
	}

	busy, err := os.Open(filepath.Join(dir, "etc/hello"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Unmount(ctx, req.Blob); !errors.Is(err, lazyhelper.ErrBusy) {
		t.Errorf("unmount with a file open: %v; want ErrBusy", err)
	}
	busy.Close()
	if err := c.Unmount(ctx, req.Blob); err != nil {
		t.Fatal(err)
	}
	if err := c.Unmount(ctx, req.Blob); !errors.Is(err, lazy.ErrUnknownLayer) {
		t.Errorf("second unmount: %v; want ErrUnknownLayer", err)
	}
	if m := mountsUnder(t, h.runDir); len(m) != 0 {
		t.Errorf("mounts left after unmount: %v", m)
	}
}

// mountedLayer starts berth-lazy and has it mount a pushed layer.
func mountedLayer(t *testing.T) (*helper, *lazyhelper.Client, lazy.LayerRequest, string) {
	h := newHelper(t)
	_, req := pushLayer(t)
	c := lazyhelper.NewClient(h.socket)
	dir, err := c.Mount(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return h, c, req, dir
}

// After a crash of berth-lazy its mounts are dead; the next one detaches
// them, so that the layers can be served again at the same places.
func TestHelperRestartAfterCrash(t *testing.T) {
	h, c, req, dir := mountedLayer(t)
	h.kill()
	if _, err := os.ReadFile(filepath.Join(dir, "etc/hello")); !errors.Is(err, syscall.ENOTCONN) {
		t.Errorf("read from the dead helper's mount: %v; want ENOTCONN", err)
	}
	if _, err := c.Status(context.Background()); !errors.Is(err, lazyhelper.ErrUnavailable) {
		t.Errorf("status with no helper: %v; want ErrUnavailable", err)
	}
	h.start()
	if m := mountsUnder(t, h.runDir); len(m) != 0 {
		t.Errorf("the restarted helper left the dead mounts: %v", m)
	}
	st, err := c.Status(context.Background())
	if err != nil || len(st) != 0 {
		t.Errorf("status of the restarted helper: %+v, %v", st, err)
	}
	again, err := c.Mount(context.Background(), req)
	if err != nil || again != dir {
		t.Fatalf("mount after the restart: %q, %v; want %q", again, err, dir)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "etc/hello")); err != nil || string(got) != files[1].Content {
		t.Errorf("etc/hello after the restart: %q, %v", got, err)
	}
	if !h.logged("detached the mount of a lazy layer whose server is gone", dir) {
		t.Errorf("the restarted helper did not log the detach")
	}
}

// A crash of berth-lazy in the middle of a background fetch: the next
// berth-lazy, asked for the layer again, goes on from the last sync of
// the blob file instead of fetching the blob again from its first byte.
func TestHelperResumesFetchAfterCrash(t *testing.T) {
	const mib = 1 << 20
	h := newHelper(t, "--sync-every", strconv.Itoa(256<<10))
	reg, req := pushLayer(t)
	if req.Size < 2*mib+200 {
		t.Fatalf("the blob has %d bytes; the test cuts it after 2 MiB", req.Size)
	}
	proxy := testutil.StartBlobProxy(t, reg.Addr)
	req.Remote.Ref = "docker://" + proxy.Addr + "/lazy/helper:1"
	req.Remote.RegistriesConf = testutil.RegistriesConf(t, "", proxy.Addr)
	c := lazyhelper.NewClient(h.socket)
	ctx := context.Background()
	if _, err := c.Mount(ctx, req); err != nil {
		t.Fatal(err)
	}
	// The background fetch starts 2 s after the mount; every try of it
	// breaks after 2 MiB and 100 bytes, synced at 2 MiB (it writes a MiB
	// at a time).
	proxy.CutAt(2*mib + 100)
	waitStatus(t, c, "the background fetch to break after 2 MiB", func(st lazy.LayerStatus) bool { return st.Error != "" && st.Local >= 2*mib })
	h.kill()

	h.start()
	proxy.CutAt(0)
	before := len(proxy.Ranges())
	dir, err := c.Mount(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	st := waitStatus(t, c, "the layer to be local", func(st lazy.LayerStatus) bool { return st.Complete })
	data, err := os.ReadFile(st.BlobFile)
	if err != nil {
		t.Fatal(err)
	}
	if got := digest.FromBytes(data); got != req.Blob {
		t.Errorf("the blob file is %s; want %s", got, req.Blob)
	}
	ranges := proxy.Ranges()[before:]
	want := fmt.Sprintf("bytes=%d-", 2*mib)
	if slices.Contains(ranges, "") || !slices.ContainsFunc(ranges, func(r string) bool { return strings.HasPrefix(r, want) }) {
		t.Errorf("the new berth-lazy asked the registry for %q; want a range from %s and no whole blob", ranges, want)
	}
	if !h.logged("goes on where the previous berth-lazy left it", fmt.Sprintf(`"bytes":%d`, 2*mib)) {
		t.Errorf("the new berth-lazy did not log where it went on from")
	}
	if got, err := os.ReadFile(filepath.Join(dir, "data/tail")); err != nil || string(got) != files[3].Content {
		t.Errorf("data/tail once local: %d bytes, %v", len(got), err)
	}
}

// A crash of berth-lazy with its connections kept (as berthd keeps them):
// the mount stays, a read of it waits instead of failing, and the next
// berth-lazy, given the connections, serves it again where it is once the
// layer is asked for.
func TestHelperAdoptsKeptConnections(t *testing.T) {
	h, c, req, dir := mountedLayer(t)
	// A file read and closed: the kernel learns that the layer wants no
	// FLUSH. Otherwise the close-on-exec of the file kept open below, in
	// the child that becomes the next berth-lazy, would wait for the
	// server that child is about to be.
	if got, err := os.ReadFile(filepath.Join(dir, "etc/hello")); err != nil || string(got) != files[1].Content {
		t.Fatalf("etc/hello: %q, %v", got, err)
	}
	hello, err := os.Open(filepath.Join(dir, "etc/hello"))
	if err != nil {
		t.Fatal(err)
	}
	defer hello.Close()
	kept, err := c.Connections(context.Background())
	if err != nil || len(kept) != 1 || kept[0].Blob != req.Blob || len(kept[0].Init) == 0 {
		t.Fatalf("connections of berth-lazy: %+v, %v; want the one of %s", kept, err, req.Blob)
	}
	defer kept[0].File.Close()
	h.kill()

	read := make(chan error, 1)
	go func() {
		b, err := os.ReadFile(filepath.Join(dir, "data/tail"))
		if err == nil && string(b) != files[3].Content {
			err = fmt.Errorf("data/tail: %d bytes, not the layer's", len(b))
		}
		read <- err
	}()
	h.start(kept...)
	if m := mountsUnder(t, h.runDir); len(m) != 1 || m[0] != dir {
		t.Errorf("mounts of the new berth-lazy before the layer is asked for: %v; want %s kept", m, dir)
	}
	select {
	case err := <-read:
		t.Fatalf("a read of the kept mount ended before the layer was asked for: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	again, err := c.Mount(context.Background(), req)
	if err != nil || again != dir {
		t.Fatalf("mount after the restart: %q, %v; want %q", again, err, dir)
	}
	select {
	case err := <-read:
		if err != nil {
			t.Errorf("the read waiting through the crash: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the read waiting through the crash did not end a minute after the adoption")
	}
	b := make([]byte, 64)
	if n, err := hello.ReadAt(b, 0); string(b[:n]) != files[1].Content {
		t.Errorf("etc/hello, opened before the crash: %q, %v", b[:n], err)
	}
	if !h.logged("adopted the mount of a lazy layer", req.Blob.String()) {
		t.Errorf("the new berth-lazy did not log the adoption")
	}
}

// Requests that are not layer requests are refused with a clear error.
func TestHelperRefusesBadRequests(t *testing.T) {
	h := newHelper(t)
	c := lazyhelper.NewClient(h.socket)
	_, err := c.Mount(context.Background(), lazy.LayerRequest{Blob: "sha256:../../x", Size: 1, TOC: "sha256:x"})
	if err == nil || !strings.Contains(err.Error(), "blob digest") {
		t.Errorf("mount of a bad digest: %v", err)
	}
	if err := c.Unmount(context.Background(), "../x"); err == nil {
		t.Errorf("unmount of a bad digest succeeded")
	}
}
