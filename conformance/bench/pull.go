package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/testutil"
)

// PullBench compares pulling and unpacking a multi-layer image from a
// registry on 127.0.0.1 through CRI PullImage, berthd's and containerd
// 2.x's (which unpacks into its overlayfs snapshotter), with skopeo copy +
// umoci unpack as a reference without a daemon.
type PullBench struct {
	Scratch *testutil.Scratch
	// BinDir holds the built berth binaries; Peers containerd's build.
	BinDir string
	Peers  Peers
	Rounds int
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
	// Daemons for pulls only: no CNI configuration, no pause image used.
	setup := func(dir string, sync bool) daemonSetup {
		return daemonSetup{dir: dir, cniBin: dir, cniConf: dir, registry: reg.Addr, regConf: conf,
			pause: reg.Addr + "/bench/pause:none", syncLayers: sync, removeDir: true}
	}
	disk := newDiskMeter(s.TempDir())
	pullers := []puller{
		&criPuller{daemon: "berth", scratch: s, disk: disk, start: func(ctx context.Context, dir string) (*criDaemon, error) {
			return startBerthdCRI(ctx, b.BinDir, setup(dir, false)) // syncs its layers always
		}},
		&criPuller{daemon: "containerd", scratch: s, disk: disk, start: func(ctx context.Context, dir string) (*criDaemon, error) {
			return startContainerdCRI(ctx, b.Peers, setup(dir, false))
		}},
		&criPuller{daemon: "containerd sync_fs", scratch: s, disk: disk, start: func(ctx context.Context, dir string) (*criDaemon, error) {
			return startContainerdCRI(ctx, b.Peers, setup(dir, true))
		}},
	}
	if p, err := exec.LookPath("skopeo"); err == nil {
		if u, err := exec.LookPath("umoci"); err == nil {
			pullers = append(pullers, &skopeoPuller{skopeo: p, umoci: u, scratch: s, disk: disk})
		}
	}
	note := fmt.Sprintf("An image of %d layers of many files, %d MiB unpacked (%.0f MB of gzip blobs), from docker-registry on 127.0.0.1. ", len(benchLayerSizes(b.SizeMB)), b.SizeMB, float64(compressed)/1e6)
	cold := &Case{Group: "Image pull", Name: "pull + unpack, cold", Unit: "ms",
		Target: "berth at most 0.5× containerd, syncing as containerd sync_fs does",
		Note: note + "Cold: nothing of the image present. berth and containerd: CRI PullImage to a daemon started on an empty root (not timed), as a kubelet pulls, after a sync (not timed) so that no pull writes back what another left dirty; skopeo+umoci: `skopeo copy` to an OCI layout, then `umoci unpack`, for reference. " +
			"What each keeps differs: berth keeps the unpacked layers only, each synced to disk (syncfs) before its record commits; containerd keeps the compressed blobs, fsynced as each is committed, and unpacks them into overlayfs snapshots, which it syncs only with `image_pull_with_sync_fs = true` (default off): the column `containerd sync_fs` is that setting, the durable pull berth does."}
	warm := &Case{Group: "Image pull", Name: "pull again, layers present", Unit: "ms",
		Note: "The same pull with every layer already stored: what a kubelet with imagePullPolicy Always costs. skopeo+umoci re-copies into the same layout (blobs skipped) and unpacks again, as umoci has no layer store."}
	written := &Case{Group: "Image pull: disk writes", Name: "written to disk by a cold pull", Unit: "MiB",
		Note: "What the block device holding the daemons' roots wrote during the cold pull and the sync after it (/sys/dev/block/…/stat): the layers each runtime keeps, its metadata and journal. With the disk as the bound, the pull takes as long as this takes to write."}
	for round := 0; round < b.Rounds && ctx.Err() == nil; round++ {
		for _, p := range rotated(pullers, round) {
			d, err := p.cold(ctx, ref)
			record(cold.SeriesFor(p.name()), d, err, b.Log)
			if n := p.written(); err == nil && n >= 0 {
				written.SeriesFor(p.name()).AddValue(float64(n) / (1 << 20))
			}
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
	if disk.stat != "" {
		res.Cases = append(res.Cases, written)
	}
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
	// written is what the last pull wrote to the disk, in bytes, or -1.
	written() int64
	close()
}

// diskMeter reads how much a block device has written: the device that
// holds the pulls' directories, from /sys/dev/block/<major>:<minor>/stat.
type diskMeter struct {
	stat string // "" where the directory is on no block device
	last int64
}

func newDiskMeter(dir string) *diskMeter {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return &diskMeter{}
	}
	p := fmt.Sprintf("/sys/dev/block/%d:%d/stat", unix.Major(st.Dev), unix.Minor(st.Dev))
	if _, err := os.Stat(p); err != nil {
		return &diskMeter{}
	}
	return &diskMeter{stat: p}
}

// sectors is the device's count of 512-byte sectors written, or -1.
func (m *diskMeter) sectors() int64 {
	if m.stat == "" {
		return -1
	}
	data, err := os.ReadFile(m.stat)
	f := strings.Fields(string(data))
	if err != nil || len(f) < 7 {
		return -1
	}
	n, err := strconv.ParseInt(f[6], 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// measure times pull after a sync, and records what it wrote to the disk,
// its deferred writeback included (a sync after it, not timed).
func (m *diskMeter) measure(pull func() error) (time.Duration, error) {
	settleDisk()
	before := m.sectors()
	start := time.Now()
	err := pull()
	d := time.Since(start)
	settleDisk()
	m.last = -1
	if after := m.sectors(); before >= 0 && after >= before {
		m.last = (after - before) * 512
	}
	return d, err
}

// criPuller pulls through a CRI daemon's PullImage, as a kubelet does:
// a cold pull on a daemon started fresh on an empty root each round, the
// warm pulls on the first of them, kept.
type criPuller struct {
	daemon  string
	start   func(ctx context.Context, dir string) (*criDaemon, error)
	scratch *testutil.Scratch
	disk    *diskMeter
	warmD   *criDaemon
}

func (p *criPuller) name() string   { return p.daemon }
func (p *criPuller) written() int64 { return p.disk.last }

func (p *criPuller) cold(ctx context.Context, ref string) (time.Duration, error) {
	d, err := p.start(ctx, p.scratch.TempDir())
	if err != nil {
		return 0, err
	}
	dur, err := pullOver(ctx, p.disk, d, ref)
	if p.warmD == nil && err == nil {
		p.warmD = d
	} else {
		d.stop()
	}
	return dur, err
}

func (p *criPuller) warm(ctx context.Context, ref string) (time.Duration, error) {
	if p.warmD == nil {
		return 0, fmt.Errorf("%s: no cold pull succeeded", p.daemon)
	}
	return pullOver(ctx, p.disk, p.warmD, ref)
}

func (p *criPuller) close() {
	if p.warmD != nil {
		p.warmD.stop()
	}
}

// pullOver times one CRI PullImage.
func pullOver(ctx context.Context, disk *diskMeter, d *criDaemon, ref string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	return disk.measure(func() error {
		_, err := d.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		return err
	})
}

// settleDisk writes back what is dirty, untimed, before a timed pull:
// otherwise a pull that syncs (berth's, containerd's with sync_fs) also
// writes back what the runtime before it left unsynced, or removed.
func settleDisk() { unix.Sync() }

// skopeoPuller copies with skopeo, then unpacks with umoci.
type skopeoPuller struct {
	skopeo, umoci string
	scratch       *testutil.Scratch
	disk          *diskMeter
	warmLayout    string
}

func (p *skopeoPuller) name() string   { return "skopeo+umoci" }
func (p *skopeoPuller) written() int64 { return p.disk.last }

func (p *skopeoPuller) pull(ctx context.Context, ref, layout string) (time.Duration, error) {
	bundle := filepath.Join(p.scratch.TempDir(), "bundle")
	defer os.RemoveAll(filepath.Dir(bundle))
	return p.disk.measure(func() error {
		if err := run(ctx, p.skopeo, "copy", "--insecure-policy", "--src-tls-verify=false", "docker://"+ref, "oci:"+layout+":v1"); err != nil {
			return err
		}
		return run(ctx, p.umoci, "unpack", "--image", layout+":v1", bundle)
	})
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
