package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/internal/testutil"
)

// PullBench compares pulling and unpacking a multi-layer image from a
// registry on 127.0.0.1: berth's image store, skopeo copy + umoci unpack,
// and containerd (its own pull, which unpacks into its overlay
// snapshotter).
type PullBench struct {
	Scratch *testutil.Scratch
	Rounds  int
	// SizeMB is the unpacked size of the image.
	SizeMB int
	Log    func(format string, args ...any)
}

// Run measures cold pulls (nothing present) and warm ones (every layer
// present already) and adds both cases to res.
func (b *PullBench) Run(ctx context.Context, res *Results) error {
	s := b.Scratch
	var reg *testutil.Registry
	var ref string
	var compressed int64
	if err := testutil.Guard(func() {
		reg = testutil.StartRegistry(s, testutil.RegistryOptions{})
		dir := s.TempDir()
		layout := testutil.BuildOCI(s, dir, "bench", benchImage(b.SizeMB))
		reg.Push(s, layout, "bench/big:v1")
		ref = reg.Addr + "/bench/big:v1"
		compressed = dirSize(filepath.Join(dir, "blobs"))
		os.RemoveAll(dir)
	}); err != nil {
		return err
	}
	b.Log("pull benchmark image pushed: %s, %d MB unpacked", ref, b.SizeMB)
	conf := ""
	if err := testutil.Guard(func() { conf = testutil.RegistriesConf(s, "", reg.Addr) }); err != nil {
		return err
	}
	pullers := []puller{&berthPuller{conf: conf, scratch: s}}
	if p, err := exec.LookPath("skopeo"); err == nil {
		if u, err := exec.LookPath("umoci"); err == nil {
			pullers = append(pullers, &skopeoPuller{skopeo: p, umoci: u, scratch: s})
		}
	}
	if c, err := exec.LookPath("containerd"); err == nil {
		if ctr, err := exec.LookPath("ctr"); err == nil {
			pullers = append(pullers, &containerdPuller{containerd: c, ctr: ctr, scratch: s})
		}
	}
	note := fmt.Sprintf("An image of %d layers of many files, %d MiB unpacked (%.0f MB of gzip blobs), from docker-registry on 127.0.0.1. ", len(benchLayerSizes(b.SizeMB)), b.SizeMB, float64(compressed)/1e6)
	cold := &Case{Group: "Image pull", Name: "pull + unpack, cold", Unit: "ms",
		Target: "berth faster than every peer",
		Note:   note + "Cold: nothing of the image present. berth: `image.Store.Pull` into a new store; skopeo+umoci: `skopeo copy` to an OCI layout, then `umoci unpack`; containerd: `ctr images pull` into a fresh containerd (overlayfs snapshotter)."}
	warm := &Case{Group: "Image pull", Name: "pull again, layers present", Unit: "ms",
		Note: "The same pull with every layer already stored: what a kubelet with imagePullPolicy Always costs. skopeo+umoci re-copies into the same layout (blobs skipped) and unpacks again, as umoci has no layer store."}
	for round := 0; round < b.Rounds && ctx.Err() == nil; round++ {
		for _, p := range rotated(pullers, round) {
			d, err := p.cold(ctx, ref)
			record(cold.SeriesFor(p.name()), d, err, b.Log)
		}
	}
	for round := 0; round < b.Rounds && ctx.Err() == nil; round++ {
		for _, p := range rotated(pullers, round) {
			d, err := p.warm(ctx, ref)
			record(warm.SeriesFor(p.name()), d, err, b.Log)
		}
	}
	for _, p := range pullers {
		p.close()
	}
	res.Cases = append(res.Cases, cold, warm)
	return ctx.Err()
}

// benchLayerSizes splits the image into layers of decreasing size, as
// real images are (a base, then smaller application layers).
func benchLayerSizes(totalMB int) []int {
	shares := []int{30, 20, 15, 10, 10, 5, 5, 5}
	out := make([]int, len(shares))
	for i, sh := range shares {
		out[i] = totalMB * sh / 100
	}
	return out
}

// benchImage builds layers of many files with realistic compressibility
// (about half incompressible bytes, half text).
func benchImage(totalMB int) testutil.ImageSpec {
	var spec testutil.ImageSpec
	seed := uint32(2463534242)
	next := func() uint32 {
		seed ^= seed << 13
		seed ^= seed >> 17
		seed ^= seed << 5
		return seed
	}
	words := strings.Fields("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu container runtime kernel namespace cgroup overlay layer image")
	for li, mb := range benchLayerSizes(totalMB) {
		var files []testutil.File
		left := mb << 20
		for fi := 0; left > 0; fi++ {
			size := min(left, 16<<10<<(fi%6)) // 16 KiB … 512 KiB
			buf := make([]byte, 0, size)
			for len(buf) < size/2 {
				v := next()
				buf = append(buf, byte(v), byte(v>>8), byte(v>>16), byte(v>>24))
			}
			for len(buf) < size {
				buf = append(buf, words[next()%uint32(len(words))]...)
				buf = append(buf, ' ')
			}
			files = append(files, testutil.File{Path: fmt.Sprintf("l%d/d%d/f%d", li, fi%32, fi), Content: string(buf[:size])})
			left -= size
		}
		spec.Layers = append(spec.Layers, testutil.Layer{Files: files})
	}
	return spec
}

// dirSize sums the sizes of the files under dir.
func dirSize(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

type puller interface {
	name() string
	cold(ctx context.Context, ref string) (time.Duration, error)
	warm(ctx context.Context, ref string) (time.Duration, error)
	close()
}

// berthPuller pulls with berth's image store, in this process.
type berthPuller struct {
	conf    string
	scratch *testutil.Scratch
	warmS   *image.Store
}

func (p *berthPuller) name() string { return "berth" }

func (p *berthPuller) open() (*image.Store, string, error) {
	root := p.scratch.TempDir()
	s, err := image.Open(image.Options{
		Root: root, RegistriesConf: p.conf, RegistriesConfDir: p.scratch.TempDir(),
		PolicyFile: "/nonexistent/policy.json",
	})
	return s, root, err
}

func (p *berthPuller) cold(ctx context.Context, ref string) (time.Duration, error) {
	s, root, err := p.open()
	if err != nil {
		return 0, err
	}
	start := time.Now()
	_, err = s.Pull(ctx, ref, image.PullOptions{})
	d := time.Since(start)
	if p.warmS == nil && err == nil {
		p.warmS = s // kept for the warm rounds
	} else {
		s.Close()
		os.RemoveAll(root)
	}
	return d, err
}

func (p *berthPuller) warm(ctx context.Context, ref string) (time.Duration, error) {
	start := time.Now()
	_, err := p.warmS.Pull(ctx, ref, image.PullOptions{})
	return time.Since(start), err
}

func (p *berthPuller) close() {
	if p.warmS != nil {
		root := p.warmS.Root()
		p.warmS.Close()
		os.RemoveAll(root)
	}
}

// skopeoPuller copies with skopeo, then unpacks with umoci.
type skopeoPuller struct {
	skopeo, umoci string
	scratch       *testutil.Scratch
	warmLayout    string
}

func (p *skopeoPuller) name() string { return "skopeo+umoci" }

func (p *skopeoPuller) pull(ctx context.Context, ref, layout string) (time.Duration, error) {
	bundle := filepath.Join(p.scratch.TempDir(), "bundle")
	defer os.RemoveAll(filepath.Dir(bundle))
	start := time.Now()
	if err := run(ctx, p.skopeo, "copy", "--insecure-policy", "--src-tls-verify=false", "docker://"+ref, "oci:"+layout+":v1"); err != nil {
		return 0, err
	}
	if err := run(ctx, p.umoci, "unpack", "--image", layout+":v1", bundle); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func (p *skopeoPuller) cold(ctx context.Context, ref string) (time.Duration, error) {
	layout := filepath.Join(p.scratch.TempDir(), "oci")
	d, err := p.pull(ctx, ref, layout)
	if p.warmLayout == "" && err == nil {
		p.warmLayout = layout
	} else {
		os.RemoveAll(filepath.Dir(layout))
	}
	return d, err
}

func (p *skopeoPuller) warm(ctx context.Context, ref string) (time.Duration, error) {
	return p.pull(ctx, ref, p.warmLayout)
}

func (p *skopeoPuller) close() {
	if p.warmLayout != "" {
		os.RemoveAll(filepath.Dir(p.warmLayout))
	}
}

// containerdPuller runs Debian's containerd on a private root and socket
// and pulls with ctr.
type containerdPuller struct {
	containerd, ctr string
	scratch         *testutil.Scratch
	warmD           *containerdDaemon
}

func (p *containerdPuller) name() string { return "containerd" }

func (p *containerdPuller) cold(ctx context.Context, ref string) (time.Duration, error) {
	d, err := startContainerd(ctx, p.containerd, p.scratch.TempDir())
	if err != nil {
		return 0, err
	}
	dur, err := p.pullWith(ctx, d, ref)
	if p.warmD == nil && err == nil {
		p.warmD = d
	} else {
		d.stop()
	}
	return dur, err
}

func (p *containerdPuller) pullWith(ctx context.Context, d *containerdDaemon, ref string) (time.Duration, error) {
	start := time.Now()
	err := run(ctx, p.ctr, "--address", d.sock, "--namespace", "bench", "images", "pull", "--plain-http", "--platform", "linux/amd64", ref)
	return time.Since(start), err
}

func (p *containerdPuller) warm(ctx context.Context, ref string) (time.Duration, error) {
	return p.pullWith(ctx, p.warmD, ref)
}

func (p *containerdPuller) close() {
	if p.warmD != nil {
		p.warmD.stop()
	}
}

// containerdDaemon is a containerd started by a benchmark.
type containerdDaemon struct {
	proc *daemonProcess
	dir  string
	sock string
}

// startContainerd starts containerd with root, state and sockets in dir,
// the CRI plugin as the caller configures it (off when cri is "").
func startContainerd(ctx context.Context, bin, dir string, criConfig ...string) (*containerdDaemon, error) {
	d := &containerdDaemon{dir: dir, sock: filepath.Join(dir, "containerd.sock")}
	cri := `disabled_plugins = ["io.containerd.grpc.v1.cri"]`
	if len(criConfig) > 0 {
		cri = criConfig[0]
	}
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
%s
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), cri, d.sock, d.sock+".ttrpc", filepath.Join(dir, "opt"))
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		return nil, err
	}
	proc, err := startProcess(filepath.Join(dir, "containerd.log"), bin, "--config", cfg)
	if err != nil {
		return nil, err
	}
	d.proc = proc
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(d.sock); err == nil {
			return d, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			log := proc.logText()
			d.stop()
			return nil, fmt.Errorf("containerd did not start: %s", log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop stops the daemon (the process this benchmark started) and
// removes its directory; its snapshots hold no mounts when idle.
func (d *containerdDaemon) stop() {
	d.proc.stop(10 * time.Second)
	os.RemoveAll(d.dir)
}

func run(ctx context.Context, bin string, args ...string) error {
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", filepath.Base(bin), strings.Join(args, " "), err, lastLine(out))
	}
	return nil
}

func lastLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}
