package bench

import (
	"context"
	_ "embed"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/lazyhelper"
	"github.com/berth-runtime/berth/internal/testutil"
)

// lazyServerSource is the benchmark image's entry point: it reads the
// files it is given, then answers HTTP on 127.0.0.1.
//
//go:embed lazysrc/lazysrv.c
var lazyServerSource []byte

// LazyBench compares the time from PullImage to a container's first HTTP
// answer, for an image of SizeMB whose entry point reads a few MB of it
// before it serves: berthd pulling it lazily ([lazy_pull]), berthd and
// containerd 2.x pulling it whole (containerd's users without the stargz
// snapshotter). It counts the blob bytes each fetched from the registry
// by the first answer, and berth's by the end of its background fetch.
type LazyBench struct {
	Scratch *testutil.Scratch
	// BinDir holds the built berth binaries; Peers containerd's build.
	BinDir string
	Peers  Peers
	Rounds int
	SizeMB int
	Log    func(format string, args ...any)
}

// The files the entry point reads before it serves: eight of 512 KiB in
// the image's first data layer (benchImage's names).
func lazyReads() []string {
	var out []string
	for fi := 5; len(out) < 8; fi += 6 {
		out = append(out, fmt.Sprintf("/l0/d%d/f%d", fi%32, fi))
	}
	return out
}

// Run measures each runtime in turn, round by round, and adds the cases.
func (b *LazyBench) Run(ctx context.Context, res *Results) error {
	s := b.Scratch
	server, err := buildLazyServer(s.TempDir())
	if err != nil {
		return err
	}
	var reg *testutil.Registry
	var compressed int64
	var pause string
	spec := benchImage(b.SizeMB)
	for i := range spec.Layers {
		spec.Layers[i].Compression = "estargz"
	}
	spec.Layers = append(spec.Layers, testutil.Layer{Compression: "estargz", Files: []testutil.File{
		{Path: "lazysrv", Content: server, Mode: 0o755}}})
	spec.Config = v1.ImageConfig{Entrypoint: []string{"/lazysrv"}}
	if err := testutil.Guard(func() {
		reg = testutil.StartRegistry(s, testutil.RegistryOptions{})
		dir := s.TempDir()
		layout := testutil.BuildOCI(s, dir, "bench", spec)
		reg.Push(s, layout, "bench/lazy:v1")
		compressed = dirSize(filepath.Join(dir, "blobs"))
		os.RemoveAll(dir)
		pause = pushPause(s, reg, b.BinDir)
	}); err != nil {
		return err
	}
	proxy, err := startCountingProxy(reg.Addr)
	if err != nil {
		return err
	}
	defer proxy.close()
	ref := proxy.addr + "/bench/lazy:v1"
	b.Log("lazy pull benchmark image pushed: %s, %d MiB unpacked, %.0f MB of eStargz blobs", ref, b.SizeMB, float64(compressed)/1e6)
	conf := ""
	if err := testutil.Guard(func() { conf = testutil.RegistriesConf(s, "", proxy.addr) }); err != nil {
		return err
	}
	setup := func(dir string, extra string) daemonSetup {
		return daemonSetup{dir: dir, cniBin: dir, cniConf: dir, registry: proxy.addr, regConf: conf,
			pause: strings.Replace(pause, reg.Addr, proxy.addr, 1), removeDir: true, extra: extra}
	}
	type runner struct {
		name  string
		lazy  bool
		start func(ctx context.Context, dir string) (*criDaemon, error)
	}
	// A node has its sandbox image: containerd pulls it before the
	// timing starts (berth needs none).
	prePull := []string{strings.Replace(pause, reg.Addr, proxy.addr, 1)}
	runners := []runner{
		{name: "berth", lazy: true, start: func(ctx context.Context, dir string) (*criDaemon, error) {
			return startBerthdCRI(ctx, b.BinDir, setup(dir, "")) // [lazy_pull] is on by default
		}},
		{name: "berth, whole pull", start: func(ctx context.Context, dir string) (*criDaemon, error) {
			return startBerthdCRI(ctx, b.BinDir, setup(dir, "[lazy_pull]\nenabled = false\n"))
		}},
		{name: "containerd", start: func(ctx context.Context, dir string) (*criDaemon, error) {
			return startContainerdCRI(ctx, b.Peers, setup(dir, ""))
		}},
	}
	note := fmt.Sprintf("An image of %d eStargz layers, %d MiB unpacked (%.0f MB of blobs), from docker-registry on 127.0.0.1 through a proxy that counts the blob bytes it serves. Its entry point reads %d files of 512 KiB (4 MiB) from the first data layer, then answers HTTP on 127.0.0.1 (a host-network pod). ",
		len(spec.Layers), b.SizeMB, float64(compressed)/1e6, len(lazyReads()))
	answer := &Case{Group: "Lazy pull", Name: "PullImage to the first HTTP answer", Unit: "ms",
		Target: "berth (lazy) at most 0.2× containerd",
		Note:   note + "Timed from PullImage, on a daemon started on an empty root (not timed), through RunPodSandbox, CreateContainer and StartContainer, until the first HTTP answer. berth: `[lazy_pull]` on, the pull ends once each layer's TOC is read and the files are fetched as they are read; `berth, whole pull` and containerd (overlayfs snapshotter, as without the stargz snapshotter) fetch and unpack every layer first."}
	fetched := &Case{Group: "Lazy pull: bytes", Name: "blob bytes fetched by the first answer", Unit: "MiB",
		Note: "What the registry sent (blob bodies, ranges included) between PullImage and the first answer."}
	total := &Case{Group: "Lazy pull: bytes", Name: "blob bytes fetched in all", Unit: "MiB",
		Note: "berth: by the end of the background fetch, when every lazy layer is local and unpacked; the others: by the first answer, as their pulls fetch everything first."}
	local := &Case{Group: "Lazy pull", Name: "PullImage until the whole image is local", Unit: "ms",
		Note: "berth (lazy): until berth-lazy has fetched every layer and berthd has unpacked it; the others: their pull."}
	for round := 0; round < b.Rounds && ctx.Err() == nil; round++ {
		for _, r := range rotated(runners, round) {
			f, err := b.once(ctx, r.name, r.start, r.lazy, ref, prePull, proxy)
			record(answer.SeriesFor(r.name), f.answer, err, b.Log)
			if err != nil {
				continue
			}
			fetched.SeriesFor(r.name).AddValue(mib(f.bytesAtAnswer))
			total.SeriesFor(r.name).AddValue(mib(f.bytesInAll))
			local.SeriesFor(r.name).AddValue(float64(f.allLocal) / float64(time.Millisecond))
		}
	}
	res.Cases = append(res.Cases, answer, local, fetched, total)
	return ctx.Err()
}

// lazyFigures are one round's figures of one runtime.
type lazyFigures struct {
	answer, allLocal          time.Duration
	bytesAtAnswer, bytesInAll int64
}

// once starts a daemon on an empty root, pulls and serves, and stops it.
func (b *LazyBench) once(ctx context.Context, name string, start func(context.Context, string) (*criDaemon, error), lazy bool, ref string, prePull []string, proxy *countingProxy) (f lazyFigures, err error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	dir := b.Scratch.TempDir()
	d, err := start(ctx, dir)
	if err != nil {
		return f, err
	}
	defer d.stop()
	port, err := freeLoopbackPort()
	if err != nil {
		return f, err
	}
	for _, img := range prePull {
		if _, err := d.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: img}}); err != nil {
			return f, fmt.Errorf("%s: pull %s: %w", name, img, err)
		}
	}
	settleDisk()
	proxy.served.Store(0)
	t0 := time.Now()
	if _, err := d.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		return f, fmt.Errorf("%s: PullImage: %w", name, err)
	}
	pulled := time.Since(t0)
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "lazy", Namespace: "bench", Uid: "lazy-" + d.name},
		LogDirectory: filepath.Join(dir, "logs"),
		Linux: &runtimeapi.LinuxPodSandboxConfig{CgroupParent: d.cgroupParent, SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}},
	}
	pod, err := d.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		return f, fmt.Errorf("%s: RunPodSandbox: %w", name, err)
	}
	podReady := time.Since(t0)
	cc, err := d.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod.PodSandboxId, SandboxConfig: cfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "server"},
			Image:    &runtimeapi.ImageSpec{Image: ref},
			Args:     append([]string{fmt.Sprint(port)}, lazyReads()...),
			LogPath:  "server.log",
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}},
		}})
	if err != nil {
		return f, fmt.Errorf("%s: CreateContainer: %w", name, err)
	}
	created := time.Since(t0)
	if _, err := d.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cc.ContainerId}); err != nil {
		return f, fmt.Errorf("%s: StartContainer: %w", name, err)
	}
	started := time.Since(t0)
	if err := waitHTTP(ctx, fmt.Sprintf("http://127.0.0.1:%d/", port)); err != nil {
		return f, fmt.Errorf("%s: %w (its log: %s)", name, err, lastLines(string(readFile(filepath.Join(dir, "logs", "server.log"))), 5))
	}
	f.answer = time.Since(t0)
	f.bytesAtAnswer = proxy.served.Load()
	f.allLocal = pulled
	if lazy {
		sock := filepath.Join(dir, "state", "lazy.sock")
		if err := waitAllLocal(ctx, sock); err != nil {
			return f, fmt.Errorf("%s: %w", name, err)
		}
		f.allLocal = time.Since(t0)
	}
	f.bytesInAll = proxy.served.Load()
	ms := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	b.Log("%s: pulled %s, pod ready %s, created %s, started %s, first answer %s (%.1f MiB fetched), all local %s (%.1f MiB)", name,
		ms(pulled), ms(podReady), ms(created), ms(started), ms(f.answer), mib(f.bytesAtAnswer), ms(f.allLocal), mib(f.bytesInAll))
	return f, nil
}

// waitAllLocal waits until berth-lazy serves nothing: every lazy layer
// fetched, unpacked by berthd and let go of.
func waitAllLocal(ctx context.Context, sock string) error {
	c := lazyhelper.NewClient(sock)
	for {
		st, err := c.Status(ctx)
		if err == nil && len(st) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("lazy layers not local: %+v, %v", st, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitHTTP polls url until it answers 200.
func waitHTTP(ctx context.Context, url string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no HTTP answer on %s: %v", url, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func readFile(p string) []byte {
	data, _ := os.ReadFile(p)
	return data
}

// buildLazyServer compiles the entry point with the machine's gcc and
// returns the binary.
func buildLazyServer(dir string) (string, error) {
	src := filepath.Join(dir, "lazysrv.c")
	if err := os.WriteFile(src, lazyServerSource, 0o644); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "lazysrv")
	if out, err := exec.Command("gcc", "-static", "-Os", "-o", bin, src).CombinedOutput(); err != nil {
		return "", fmt.Errorf("gcc lazysrv.c: %v: %s", err, out)
	}
	data, err := os.ReadFile(bin)
	return string(data), err
}

// countingProxy forwards to a registry on 127.0.0.1 and counts the blob
// bytes it serves.
type countingProxy struct {
	addr   string
	served atomic.Int64
	close  func()
}

func startCountingProxy(registry string) (*countingProxy, error) {
	p := &countingProxy{}
	u, err := url.Parse("http://" + registry)
	if err != nil {
		return nil, err
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(r *http.Response) error {
		if strings.Contains(r.Request.URL.Path, "/blobs/") {
			r.Body = &countingBody{ReadCloser: r.Body, n: &p.served}
		}
		return nil
	}
	srv := httptest.NewServer(rp)
	p.addr, p.close = strings.TrimPrefix(srv.URL, "http://"), srv.Close
	return p, nil
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}
