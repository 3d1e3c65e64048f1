package image_test

import (
	"archive/tar"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/internal/testutil"
)

func TestPullByTagAndDigestAndLookups(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	spec := testutil.ImageSpec{
		Layers: []testutil.Layer{
			{Dir: busybox(t)},
			{Files: []testutil.File{{Path: "app/hello.txt", Content: "hello\n"}}},
		},
		Config: v1.ImageConfig{
			Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"cat /app/hello.txt"},
			Env: []string{"PATH=/bin", "GREETING=hi"}, WorkingDir: "/app", User: "1000:1000",
			ExposedPorts: map[string]struct{}{"8080/tcp": {}}, Volumes: map[string]struct{}{"/data": {}},
			StopSignal: "SIGQUIT",
		},
	}
	ref := e.push("team/app:v1", spec)
	img := e.pull(ref)

	if !slices.Contains(img.Names, ref) || len(img.Layers) != 2 || img.Size == 0 || !strings.HasPrefix(img.ID, "sha256:") {
		t.Fatalf("image %+v", img)
	}
	if len(img.RepoDigests) == 0 || !strings.HasPrefix(img.RepoDigests[0], e.reg.Addr+"/team/app@sha256:") {
		t.Fatalf("repo digests %v", img.RepoDigests)
	}
	cfg, err := e.store.Config(img)
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Config
	if c.WorkingDir != "/app" || c.User != "1000:1000" || c.StopSignal != "SIGQUIT" ||
		!slices.Equal(c.Entrypoint, []string{"/bin/sh", "-c"}) || len(c.ExposedPorts) != 1 || len(c.Volumes) != 1 {
		t.Fatalf("config %+v", c)
	}

	// Every way of naming it finds it.
	for _, name := range []string{ref, img.ID, strings.TrimPrefix(img.ID, "sha256:"), strings.TrimPrefix(img.ID, "sha256:")[:12], img.RepoDigests[0]} {
		got, err := e.store.Get(name)
		if err != nil || got.ID != img.ID {
			t.Errorf("Get(%q) = %v, %v", name, got, err)
		}
	}
	if _, err := e.store.Get(e.reg.Addr + "/team/app:v2"); !image.IsNotFound(err) {
		t.Errorf("Get of an unknown tag: %v", err)
	}

	// By digest: the same image, no new download.
	byDigest := e.pull(img.RepoDigests[0])
	if byDigest.ID != img.ID {
		t.Fatalf("pull by digest gave %s, want %s", byDigest.ID, img.ID)
	}
	imgs, _ := e.store.List()
	if len(imgs) != 1 {
		t.Fatalf("%d images after pulling the same one twice", len(imgs))
	}
	if u, err := e.store.Usage(); err != nil || u.Bytes < 500_000 || u.Inodes < 10 || u.Mountpoint != e.opts.Root {
		t.Fatalf("usage %+v, %v", u, err)
	}
}

func TestRootfsIsOverlayWithWhiteouts(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	ref := e.push("wh:v1", testutil.ImageSpec{Layers: []testutil.Layer{
		{Files: []testutil.File{
			{Path: "a", Type: tar.TypeDir},
			{Path: "a/x", Content: "x"}, {Path: "a/y", Content: "y"},
			{Path: "b", Type: tar.TypeDir},
			{Path: "b/old", Content: "old"},
		}},
		{Files: []testutil.File{
			{Path: "a/.wh.x"},
			{Path: "b", Type: tar.TypeDir},
			{Path: "b/.wh..wh..opq"},
			{Path: "b/new", Content: "new"},
		}},
	}})
	img := e.pull(ref)

	// In the top layer: overlay's own forms, no .wh. files.
	top := filepath.Join(e.opts.Root, "layers", img.Layers[1].Encoded())
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(top, "a", "x"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Fatalf("whiteout of a/x is not a 0:0 character device: %+v, %v", st, err)
	}
	buf := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(top, "b"), "trusted.overlay.opaque", buf); err != nil || string(buf[:n]) != "y" {
		t.Fatalf("b is not opaque: %q, %v", buf[:n], err)
	}
	for _, wh := range []string{"a/.wh.x", "b/.wh..wh..opq"} {
		if _, err := os.Lstat(filepath.Join(top, wh)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s kept in the layer", wh)
		}
	}

	r, err := e.store.CreateRootfs("c1", ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	exists := func(p string) bool { _, err := os.Lstat(filepath.Join(r.Path, p)); return err == nil }
	if exists("a/x") || !exists("a/y") || exists("b/old") || !exists("b/new") {
		t.Fatalf("overlay view: a/x %v a/y %v b/old %v b/new %v", exists("a/x"), exists("a/y"), exists("b/old"), exists("b/new"))
	}
	// Writes go to the container's layer only.
	if err := os.WriteFile(filepath.Join(r.Path, "a", "y"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(filepath.Join(e.opts.Root, "layers", img.Layers[0].Encoded(), "a", "y")); string(data) != "y" {
		t.Fatalf("a write through the rootfs changed the shared layer: %q", data)
	}
	if b, in, err := e.store.RootfsUsage("c1"); err != nil || b == 0 || in == 0 {
		t.Fatalf("rootfs usage %d bytes %d inodes, %v", b, in, err)
	}
	if _, err := e.store.CreateRootfs("c1", ref, nil); !errors.Is(err, image.ErrRootfsExists) {
		t.Fatalf("second rootfs with the same id: %v", err)
	}
	// An unmounted rootfs (after a reboot) mounts again.
	if err := unix.Unmount(r.Path, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.MountRootfs("c1"); err != nil || !exists("b/new") {
		t.Fatalf("remount: %v", err)
	}
	if err := e.store.RemoveRootfs("c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(e.opts.Root, "containers", "c1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("rootfs directory left after removal")
	}
	if err := e.store.RemoveRootfs("c1"); err != nil {
		t.Fatalf("removing a removed rootfs: %v", err)
	}
	if err := e.store.Remove(ref); err != nil {
		t.Fatal(err)
	}
	e.assertEmpty()
}

func TestUnpackKeepsMetadata(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	ref := e.push("meta:v1", testutil.ImageSpec{Layers: []testutil.Layer{
		{Files: []testutil.File{
			{Path: "home", Type: tar.TypeDir},
			{Path: "home/u", Type: tar.TypeDir, Mode: 0o700, UID: 1000, GID: 1000},
			{Path: "bin", Type: tar.TypeDir},
			{Path: "bin/tool", Content: "#!/bin/sh\n", Mode: 0o4755},
			{Path: "bin/link", Type: tar.TypeSymlink, Linkname: "tool"},
			// Tar writers repeat the target's metadata on link entries,
			// and unpackers apply it to the shared inode.
			{Path: "bin/hard", Type: tar.TypeLink, Linkname: "bin/tool", Mode: 0o4755},
			{Path: "dev", Type: tar.TypeDir},
			{Path: "dev/null", Type: tar.TypeChar, Mode: 0o666, Major: 1, Minor: 3},
			{Path: "pipe", Type: tar.TypeFifo, Mode: 0o600},
			{Path: "attr", Content: "x", Xattrs: map[string]string{"user.berth": "yes"}},
		}},
		// The file's parent directory is implied, not in this tar: it must
		// keep the lower layer's owner and mode, not become root:0755.
		{Files: []testutil.File{{Path: "home/u/notes", Content: "n", UID: 1000, GID: 1000}}},
	}})
	img := e.pull(ref)
	l0 := filepath.Join(e.opts.Root, "layers", img.Layers[0].Encoded())
	l1 := filepath.Join(e.opts.Root, "layers", img.Layers[1].Encoded())

	var st, st2 unix.Stat_t
	must(t, unix.Lstat(filepath.Join(l0, "home/u"), &st))
	if st.Uid != 1000 || st.Mode&0o7777 != 0o700 {
		t.Errorf("home/u: uid %d mode %o", st.Uid, st.Mode&0o7777)
	}
	must(t, unix.Lstat(filepath.Join(l0, "bin/tool"), &st))
	must(t, unix.Lstat(filepath.Join(l0, "bin/hard"), &st2))
	if st.Mode&0o7777 != 0o4755 || st.Ino != st2.Ino || st.Mtim.Sec != 1700000000 {
		t.Errorf("bin/tool mode %o ino %d/%d mtime %d", st.Mode&0o7777, st.Ino, st2.Ino, st.Mtim.Sec)
	}
	if target, _ := os.Readlink(filepath.Join(l0, "bin/link")); target != "tool" {
		t.Errorf("symlink target %q", target)
	}
	must(t, unix.Lstat(filepath.Join(l0, "dev/null"), &st))
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(uint64(st.Rdev)) != 1 || unix.Minor(uint64(st.Rdev)) != 3 {
		t.Errorf("dev/null: mode %o rdev %d", st.Mode, st.Rdev)
	}
	must(t, unix.Lstat(filepath.Join(l0, "pipe"), &st))
	if st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("pipe mode %o", st.Mode)
	}
	buf := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(l0, "attr"), "user.berth", buf); err != nil || string(buf[:n]) != "yes" {
		t.Errorf("xattr %q %v", buf[:n], err)
	}
	must(t, unix.Lstat(filepath.Join(l1, "home/u"), &st))
	if st.Uid != 1000 || st.Gid != 1000 || st.Mode&0o7777 != 0o700 {
		t.Errorf("implied home/u in the upper layer: uid %d gid %d mode %o, want 1000 1000 700", st.Uid, st.Gid, st.Mode&0o7777)
	}
}

func TestDenyDevices(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{}, func(o *image.Options) { o.DenyDevices = true })
	ref := e.push("dev:v1", simpleImage(testutil.File{Path: "sda", Type: tar.TypeBlock, Major: 8, Minor: 0}))
	err := e.pullErr(ref, image.PullOptions{})
	if !strings.Contains(err.Error(), "device node /sda") {
		t.Fatalf("pull of a layer with a block device: %v", err)
	}
	e.assertEmpty()
}

func TestMultiPlatformIndex(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	plat := func(arch, variant string) testutil.ImageSpec {
		s := simpleImage(testutil.File{Path: "arch", Content: arch + variant})
		s.Platform = v1.Platform{OS: "linux", Architecture: arch, Variant: variant}
		return s
	}
	ref := testutil.BuildOCIIndex(t, t.TempDir(), "t", plat("arm64", "v8"), plat("amd64", ""), plat("s390x", ""))
	e.reg.Push(t, ref, "multi:v1")
	name := e.reg.Addr + "/multi:v1"

	img := e.pull(name)
	top := filepath.Join(e.opts.Root, "layers", img.Layers[0].Encoded(), "arch")
	if data, _ := os.ReadFile(top); string(data) != "amd64" {
		t.Fatalf("this amd64 node got the %q variant", data)
	}
	if len(img.RepoDigests) != 2 {
		t.Fatalf("repo digests of index and manifest: %v", img.RepoDigests)
	}

	e.reopen(func(o *image.Options) { o.Arch, o.Variant = "arm64", "v8" })
	img = e.pull(name)
	if data, _ := os.ReadFile(filepath.Join(e.opts.Root, "layers", img.Layers[0].Encoded(), "arch")); string(data) != "arm64v8" {
		t.Fatalf("arm64 node got %q", data)
	}

	e.reopen(func(o *image.Options) { o.Arch, o.Variant = "riscv64", "" })
	if err := e.pullErr(name, image.PullOptions{}); !errors.Is(err, image.ErrPlatform) {
		t.Fatalf("no variant for riscv64: %v", err)
	}
}

func TestCompressions(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	ref := e.push("comp:v1", testutil.ImageSpec{Layers: []testutil.Layer{
		{Compression: "gzip", Files: []testutil.File{{Path: "g", Content: "gzip"}}},
		{Compression: "zstd", Files: []testutil.File{{Path: "z", Content: "zstd"}}},
		{Compression: "none", Files: []testutil.File{{Path: "n", Content: "none"}}},
	}})
	img := e.pull(ref)
	for i, f := range []string{"g", "z", "n"} {
		if _, err := os.Stat(filepath.Join(e.opts.Root, "layers", img.Layers[i].Encoded(), f)); err != nil {
			t.Errorf("layer %d: %v", i, err)
		}
	}
}

func TestAuth(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{Auth: true})
	ref := e.push("private/app:v1", simpleImage(testutil.File{Path: "secret", Content: "s"}))

	if err := e.pullErr(ref, image.PullOptions{Auth: &image.Auth{}}); !errors.Is(err, image.ErrUnauthorized) {
		t.Fatalf("without credentials: %v", err)
	}
	if err := e.pullErr(ref, image.PullOptions{Auth: &image.Auth{Username: e.reg.User, Password: "wrong"}}); !errors.Is(err, image.ErrUnauthorized) {
		t.Fatalf("wrong password: %v", err)
	}
	e.assertEmpty()
	e.pull(ref, image.PullOptions{Auth: &image.Auth{Username: e.reg.User, Password: e.reg.Password}})

	// From auth.json, as a node's configuration would give them.
	authFile := filepath.Join(t.TempDir(), "auth.json")
	enc := b64(e.reg.User + ":" + e.reg.Password)
	must(t, os.WriteFile(authFile, []byte(`{"auths":{"`+e.reg.Addr+`":{"auth":"`+enc+`"}}}`), 0o600))
	e.reopen(func(o *image.Options) { o.AuthFile = authFile; o.Root = t.TempDir() })
	if _, err := e.store.Pull(context.Background(), ref, image.PullOptions{}); err != nil {
		t.Fatalf("with auth.json: %v", err)
	}
}

func TestPullErrors(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	e.push("exists:v1", simpleImage(testutil.File{Path: "f", Content: "f"}))
	closed := "127.0.0.1:1" // nothing listens on port 1
	e.insecure(`
[[registry]]
location = "`+e.reg.Addr+`/blocked"
blocked = true
`, closed)
	cases := []struct {
		ref  string
		kind error
	}{
		// distribution 2.8 answers "manifest unknown" for an unknown
		// repository too; Docker Hub says "name unknown".
		{e.reg.Addr + "/nope:v1", image.ErrUnknownTag},
		{e.reg.Addr + "/exists:v2", image.ErrUnknownTag},
		{e.reg.Addr + "/exists@sha256:" + strings.Repeat("a", 64), image.ErrUnknownTag},
		{closed + "/x:v1", image.ErrUnreachable},
		{"UPPER/case", image.ErrInvalidReference},
		{"", image.ErrInvalidReference},
		{e.reg.Addr + "/blocked/app:v1", image.ErrBlocked},
		{"oci:/does/not/exist:t", nil},
	}
	for _, tc := range cases {
		err := e.pullErr(tc.ref, image.PullOptions{})
		if tc.kind != nil && !errors.Is(err, tc.kind) {
			t.Errorf("pull %q: %v, want %v", tc.ref, err, tc.kind)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("pull %q: error spans lines: %q", tc.ref, err)
		}
	}
	e.assertEmpty()

	// A signature policy that rejects everything.
	e.reopen(func(o *image.Options) { o.PolicyFile = writePolicy(t, `{"default":[{"type":"reject"}]}`) })
	if err := e.pullErr(e.reg.Addr+"/exists:v1", image.PullOptions{}); !errors.Is(err, image.ErrBlocked) {
		t.Fatalf("policy reject: %v", err)
	}
	e.assertEmpty()
}

func TestMirrorAndShortNames(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	e.push("library/tool:v1", simpleImage(testutil.File{Path: "tool", Content: "t"}))
	// registry.invalid never resolves (RFC 6761); the mirror on 127.0.0.1
	// must serve it without that name ever being looked up.
	e.insecure(`unqualified-search-registries = ["` + e.reg.Addr + `"]

[aliases]
"short" = "` + e.reg.Addr + `/library/tool"

[[registry]]
prefix = "registry.invalid/library"
location = "registry.invalid/library"
[[registry.mirror]]
location = "` + e.reg.Addr + `/library"
insecure = true
`)
	img := e.pull("registry.invalid/library/tool:v1")
	if !slices.Contains(img.Names, "registry.invalid/library/tool:v1") {
		t.Fatalf("mirrored image recorded as %v", img.Names)
	}
	img = e.pull("short:v1")
	if !slices.Contains(img.Names, e.reg.Addr+"/library/tool:v1") {
		t.Fatalf("alias resolved to %v", img.Names)
	}
	if got, err := e.store.Get("short:v1"); err != nil || got.ID != img.ID {
		t.Fatalf("Get by alias: %v, %v", got, err)
	}
	img = e.pull("library/tool:v1")
	if !slices.Contains(img.Names, e.reg.Addr+"/library/tool:v1") {
		t.Fatalf("unqualified search resolved to %v", img.Names)
	}
}

func TestOtherTransports(t *testing.T) {
	s := localStore(t)
	layoutRef := testutil.BuildOCI(t, t.TempDir(), "v1", simpleImage(testutil.File{Path: "from-oci", Content: "o"}))
	img, err := s.Pull(context.Background(), "oci:"+layoutRef, image.PullOptions{})
	if err != nil {
		t.Fatalf("oci: %v", err)
	}
	if _, err := s.Get("oci:" + layoutRef); err != nil {
		t.Fatalf("Get oci: %v", err)
	}
	// oci-archive: the same layout as a tar.
	dir := strings.TrimSuffix(layoutRef, ":v1")
	archive := filepath.Join(t.TempDir(), "image.tar")
	writeTar(t, archive, dir)
	img2, err := s.Pull(context.Background(), "oci-archive:"+archive+":v1", image.PullOptions{})
	if err != nil || img2.ID != img.ID {
		t.Fatalf("oci-archive: %v, %v", img2, err)
	}
	// docker-archive: `docker save` format, recorded under its tag.
	saved := filepath.Join(t.TempDir(), "saved.tar")
	testutil.ExportDockerArchive(t, layoutRef, saved, "example.test/saved:v1")
	img3, err := s.Pull(context.Background(), "docker-archive:"+saved, image.PullOptions{})
	if err != nil || len(img3.Layers) != 1 {
		t.Fatalf("docker-archive: %v, %v", img3, err)
	}
	if got, err := s.Get("example.test/saved:v1"); err != nil || got.ID != img3.ID {
		t.Fatalf("docker-archive image by its tag: %v, %v", got, err)
	}
}

func TestDockerSchema2Manifest(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	layout := testutil.BuildOCI(t, t.TempDir(), "t", testutil.ImageSpec{Layers: []testutil.Layer{
		{Dir: busybox(t)}, {Files: []testutil.File{{Path: "docker-format", Content: "d"}}},
	}, Config: v1.ImageConfig{Cmd: []string{"sh"}, User: "nobody"}})
	e.reg.PushAs(t, layout, "docker/app:v1", "application/vnd.docker.distribution.manifest.v2+json")
	img := e.pull(e.reg.Addr + "/docker/app:v1")
	cfg, err := e.store.Config(img)
	must(t, err)
	if len(img.Layers) != 2 || cfg.Config.User != "nobody" {
		t.Fatalf("schema 2 image %+v, config %+v", img, cfg.Config)
	}
	data, err := os.ReadFile(filepath.Join(e.opts.Root, "blobs", "sha256", img.Manifest.Encoded()))
	must(t, err)
	if !strings.Contains(string(data), "application/vnd.docker.distribution.manifest.v2+json") {
		t.Fatalf("stored manifest is not Docker schema 2: %.200s", data)
	}
}

func TestConcurrentPullsShareOneDownload(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	big := make([]byte, 8<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	base := testutil.Layer{Files: []testutil.File{{Path: "base.bin", Content: string(big)}}}
	e.push("one:v1", testutil.ImageSpec{Layers: []testutil.Layer{base, {Files: []testutil.File{{Path: "one", Content: "1"}}}}})
	e.push("two:v1", testutil.ImageSpec{Layers: []testutil.Layer{base, {Files: []testutil.File{{Path: "two", Content: "2"}}}}})
	p := newProxy(t, e.reg.Addr)
	// Slow the base layer down so that every pull overlaps.
	p.onBlob = func(d string, body ioReadCloser) ioReadCloser { return slowReader(body, 64<<10, time.Millisecond) }
	e.insecure("", p.addr())

	refs := []string{p.addr() + "/one:v1", p.addr() + "/one:v1", p.addr() + "/one:v1", p.addr() + "/two:v1"}
	var wg sync.WaitGroup
	imgs := make([]*image.Image, len(refs))
	errs := make([]error, len(refs))
	for i, r := range refs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			imgs[i], errs[i] = e.store.Pull(context.Background(), r, image.PullOptions{})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("pull %s: %v", refs[i], err)
		}
	}
	if imgs[0].ID != imgs[1].ID || imgs[0].Layers[0] != imgs[3].Layers[0] {
		t.Fatal("pulls of the same image disagree")
	}
	layerDigest := baseLayerBlob(t, e, imgs[0])
	if n := p.count(layerDigest); n != 1 {
		t.Fatalf("the shared 8 MiB layer was downloaded %d times, want once", n)
	}

	// Pulled again later: present, nothing downloaded.
	var final image.PullStatus
	e.pull(p.addr()+"/two:v1", image.PullOptions{Progress: func(s image.PullStatus) { final = s }, ProgressInterval: 10 * time.Millisecond})
	if n := p.count(layerDigest); n != 1 {
		t.Fatalf("layer downloaded again for an image already present (%d)", n)
	}
	for _, l := range final.Layers {
		if l.State != image.LayerExists {
			t.Fatalf("layer %s state %s, want exists", l.Digest, l.State)
		}
	}
}

func TestProgressReported(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	data := strings.Repeat("0123456789abcdef", 1<<18) // 4 MiB
	ref := e.push("prog:v1", testutil.ImageSpec{Layers: []testutil.Layer{
		{Compression: "none", Files: []testutil.File{{Path: "a", Content: data}}},
		{Files: []testutil.File{{Path: "b", Content: "b"}}},
	}})
	var mu sync.Mutex
	var seen []image.PullStatus
	img := e.pull(ref, image.PullOptions{ProgressInterval: 5 * time.Millisecond, Progress: func(s image.PullStatus) {
		mu.Lock()
		seen = append(seen, s)
		mu.Unlock()
	}})
	mu.Lock()
	defer mu.Unlock()
	last := seen[len(seen)-1]
	if len(last.Layers) != len(img.Layers) {
		t.Fatalf("progress has %d layers, image %d", len(last.Layers), len(img.Layers))
	}
	for _, l := range last.Layers {
		if l.State != image.LayerDone || l.Done != l.Size || l.Size <= 0 || l.Started.IsZero() {
			t.Fatalf("final layer progress %+v", l)
		}
	}
	done, total := last.Bytes()
	if done != total || total < 4<<20 {
		t.Fatalf("bytes %d of %d", done, total)
	}
	if len(e.store.Pulls()) != 0 {
		t.Fatal("finished pull still listed as in flight")
	}
}

func TestRemoveAndSharedLayers(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	base := testutil.Layer{Files: []testutil.File{{Path: "base", Content: "b"}}}
	refA := e.push("a:v1", testutil.ImageSpec{Layers: []testutil.Layer{base, {Files: []testutil.File{{Path: "a", Content: "a"}}}}})
	refB := e.push("b:v1", testutil.ImageSpec{Layers: []testutil.Layer{base, {Files: []testutil.File{{Path: "b", Content: "b"}}}}})
	a, b := e.pull(refA), e.pull(refB)
	layerDir := func(d string) string { return filepath.Join(e.opts.Root, "layers", strings.TrimPrefix(d, "sha256:")) }

	// A second name for a: removing one name only untags.
	refA2 := e.push("a:alias", testutil.ImageSpec{Layers: []testutil.Layer{base, {Files: []testutil.File{{Path: "a", Content: "a"}}}}})
	if got := e.pull(refA2); got.ID != a.ID {
		t.Fatal("same content, different image ID")
	}
	must(t, e.store.Remove(refA2))
	if got, err := e.store.Get(refA); err != nil || got.ID != a.ID || slices.Contains(got.Names, refA2) {
		t.Fatalf("after untag: %+v, %v", got, err)
	}
	// A container keeps a's layers after a is removed.
	_, err := e.store.CreateRootfs("ctr", refA, nil)
	must(t, err)
	must(t, e.store.Remove(refA))
	if _, err := e.store.Get(refA); !image.IsNotFound(err) {
		t.Fatalf("removed image still found: %v", err)
	}
	for _, l := range a.Layers {
		if _, err := os.Stat(layerDir(l.String())); err != nil {
			t.Fatalf("layer %s of a running container removed", l)
		}
	}
	must(t, e.store.RemoveRootfs("ctr"))
	if _, err := os.Stat(layerDir(a.Layers[1].String())); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a's own layer outlived the image and the container")
	}
	if _, err := os.Stat(layerDir(b.Layers[0].String())); err != nil {
		t.Fatal("the shared base layer went with a while b still uses it")
	}
	must(t, e.store.Remove(b.ID))
	e.assertEmpty()
	if entries, _ := os.ReadDir(filepath.Join(e.opts.Root, "blobs", "sha256")); len(entries) != 0 {
		t.Fatalf("%d blobs left", len(entries))
	}
	if err := e.store.Remove(refB); !image.IsNotFound(err) {
		t.Fatalf("removing a removed image: %v", err)
	}
}

// TestCancelledSharedPull: when every caller of a pull has given up, the
// next caller of the same image starts a pull of its own (it does not
// join the cancelled one and get Canceled), and a caller that left hears
// no more progress.
func TestCancelledSharedPull(t *testing.T) {
	e := newEnv(t, testutil.RegistryOptions{})
	big := make([]byte, 8<<20)
	for i := range big {
		big[i] = byte(i * 13)
	}
	e.push("slow:v1", testutil.ImageSpec{Layers: []testutil.Layer{{Compression: "none", Files: []testutil.File{{Path: "big", Content: string(big)}}}}})
	p := newProxy(t, e.reg.Addr)
	p.onBlob = func(d string, body ioReadCloser) ioReadCloser { return slowReader(body, 32<<10, 5*time.Millisecond) }
	e.insecure("", p.addr())
	ref := p.addr() + "/slow:v1"

	// The first caller's progress callback blocks once the caller has
	// left: a pull that still calls it cannot finish.
	gate := make(chan struct{})
	defer close(gate)
	ctxA, cancelA := context.WithCancel(context.Background())
	started := make(chan struct{})
	var startOnce sync.Once
	var afterReturn atomic.Int32
	var returned atomic.Bool
	progressA := func(image.PullStatus) {
		startOnce.Do(func() { close(started) })
		if returned.Load() {
			afterReturn.Add(1)
		}
		if ctxA.Err() != nil {
			<-gate
		}
	}
	errA := make(chan error, 1)
	go func() {
		_, err := e.store.Pull(ctxA, ref, image.PullOptions{Progress: progressA, ProgressInterval: 5 * time.Millisecond})
		returned.Store(true)
		errA <- err
	}()
	select {
	case <-started:
	case <-time.After(time.Minute):
		t.Fatal("the first pull never reported progress")
	}
	cancelA()
	if err := <-errA; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled pull: %v", err)
	}
	resB := make(chan error, 1)
	go func() {
		_, err := e.store.Pull(context.Background(), ref, image.PullOptions{})
		resB <- err
	}()
	select {
	case err := <-resB:
		if err != nil {
			t.Fatalf("a pull after the only caller of the same pull gave up: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("a pull after a cancelled one of the same image never finished")
	}
	if n := afterReturn.Load(); n > 1 {
		t.Errorf("the caller that left got %d progress calls after it returned", n)
	}
}

// A node without containers-common has no registries.conf and no
// policy.json at their default paths: pulls use the defaults (and a
// drop-in still applies). A file the operator named elsewhere and that
// is missing stays an error.
func TestMissingDefaultConfigFiles(t *testing.T) {
	dir := t.TempDir()
	defaultConf, defaultPolicy := filepath.Join(dir, "registries.conf"), filepath.Join(dir, "policy.json")
	t.Cleanup(image.SetDefaultConfigPaths(defaultConf, defaultPolicy))

	e := newEnv(t, testutil.RegistryOptions{})
	ref := e.push("fresh:v1", simpleImage(testutil.File{Path: "f", Content: "f"}))
	dropIns := t.TempDir()
	if err := os.WriteFile(filepath.Join(dropIns, "50-test.conf"), []byte("[[registry]]\nlocation = \""+e.reg.Addr+"\"\ninsecure = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.reopen(func(o *image.Options) {
		o.RegistriesConf, o.PolicyFile, o.RegistriesConfDir = defaultConf, defaultPolicy, dropIns
	})
	if img := e.pull(ref); !slices.Contains(img.Names, ref) {
		t.Fatalf("pulled %v", img.Names)
	}

	// A registries.conf put at the default path later is read by the
	// next pull: here, one whose search registry resolves a short name.
	if err := os.WriteFile(defaultConf, []byte("unqualified-search-registries = [\""+e.reg.Addr+"\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if img := e.pull("fresh:v1"); !slices.Contains(img.Names, ref) {
		t.Fatalf("short name through the registries.conf written later: %v", img.Names)
	}

	for name, edit := range map[string]func(*image.Options){
		"registries.conf": func(o *image.Options) { o.RegistriesConf = filepath.Join(dir, "named.conf") },
		"policy":          func(o *image.Options) { o.PolicyFile = filepath.Join(dir, "named.json") },
	} {
		opts := e.opts
		opts.Root = t.TempDir()
		edit(&opts)
		if s, err := image.Open(opts); err == nil || !errors.Is(err, os.ErrNotExist) {
			if s != nil {
				s.Close()
			}
			t.Errorf("missing %s named explicitly: %v, want a not-exist error", name, err)
		}
	}
}
