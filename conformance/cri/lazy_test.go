package cri_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/conformance/internal/berthd"
	"github.com/berth-runtime/berth/cri/adminapi"
	"github.com/berth-runtime/berth/image/lazy"
	"github.com/berth-runtime/berth/internal/lazyhelper"
	"github.com/berth-runtime/berth/internal/testutil"
)

func sha256Hex(s string) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(s))) }

// lazyImage is an image of the busybox layer and an eStargz layer with
// an 8 MiB file, pushed to the suite's registry.
type lazyImage struct {
	repoTag           string
	big, middle, tail string
	layer             v1.Descriptor // the eStargz layer's
}

// pushLazyImage pushes the image, its files' content made from seed.
func pushLazyImage(t *testing.T, repoTag string, seed uint64) lazyImage {
	t.Helper()
	img := lazyImage{repoTag: repoTag, big: testutil.IncompressibleFrom(seed, 8<<20),
		middle: testutil.IncompressibleFrom(seed+1, 256<<10), tail: testutil.IncompressibleFrom(seed+2, 100<<10)}
	layout := testutil.BuildOCI(t, t.TempDir(), "v1", testutil.ImageSpec{
		Layers: []testutil.Layer{suite.base, {Compression: "estargz", EStargzChunkSize: 256 << 10, Files: []testutil.File{
			{Path: "data/", Type: '5'},
			{Path: "data/hello", Content: "hello from a lazy layer\n"},
			{Path: "data/big", Content: img.big},
			{Path: "data/middle", Content: img.middle},
			{Path: "data/tail", Content: img.tail},
		}}},
		Config: v1.ImageConfig{Cmd: []string{"sleep", "3600"}, Env: []string{"PATH=/bin"}},
	})
	suite.reg.Push(t, layout, repoTag)
	img.layer = suite.reg.Manifest(t, repoTag).Layers[1]
	return img
}

// startLazyDaemon starts a berthd with [lazy_pull] as it is by default
// (on), pulling through a proxy that holds the fetch of img's whole
// eStargz layer until the test releases it, and returns the image's
// reference through the proxy.
func startLazyDaemon(t *testing.T, img lazyImage) (*daemon, *testutil.BlobProxy, string) {
	t.Helper()
	proxy := testutil.StartBlobProxy(t, suite.reg.Addr)
	proxy.Hold(img.layer.Digest.String())
	d := startDaemon(t, daemonOptions{registriesConf: testutil.RegistriesConf(t, "", suite.reg.Addr, proxy.Addr)})
	return d, proxy, proxy.Addr + "/" + img.repoTag
}

// lazyStatus is berth-lazy's view of the daemon's lazily served layers.
func lazyStatus(t *testing.T, d *daemon) []lazy.LayerStatus {
	t.Helper()
	st, err := lazyhelper.NewClient(filepath.Join(d.State, "lazy.sock")).Status(context.Background())
	if err != nil {
		t.Fatalf("berth-lazy's status: %v", err)
	}
	return st
}

// An eStargz image pulled lazily through the CRI: the pull ends before
// its big layer is fetched; a container reads the file at the end of
// that layer at once; kill -9 of berthd leaves the container's files
// whole; a registry cut makes reads of what is not local fail with EIO
// and not hang; once the layer is local berthd unpacks it and new
// containers use it with the registry gone.
func TestLazyPullThroughCRI(t *testing.T) {
	img := pushLazyImage(t, "lazy/cri:v1", 10)
	big, middle, tail, lazyLayer := img.big, img.middle, img.tail, img.layer

	d, proxy, ref := startLazyDaemon(t, img)
	// On by default, lazy pulling starts nothing on a node that pulls
	// no eStargz image, through a few rounds of berthd's reconcile (2 s).
	d.pull(t, suite.busybox)
	time.Sleep(5 * time.Second)
	if pid := d.LazyHelperPid(); pid != 0 {
		t.Errorf("berth-lazy (pid %d) runs on a node that pulled no eStargz image", pid)
	}
	if _, err := os.Stat(filepath.Join(d.State, "lazy.sock")); !os.IsNotExist(err) {
		t.Errorf("lazy.sock on a node that pulled no eStargz image: %v", err)
	}
	d.pull(t, ref)
	st := lazyStatus(t, d)
	if len(st) != 1 || st[0].Blob != lazyLayer.Digest || st[0].Complete || st[0].Local >= lazyLayer.Size/2 {
		t.Fatalf("after the pull, berth-lazy serves %+v; want the eStargz layer, mostly not local", st)
	}

	podCfg := d.podConfig("lazy")
	pod := d.runPod(t, podCfg)
	c1 := d.run(t, pod, podCfg, containerConfig("reader", ref))
	if got := d.mustExec(t, c1, "sha256sum", "/data/tail"); !strings.HasPrefix(got, sha256Hex(tail)) {
		t.Errorf("sha256sum of the layer's last file: %q", got)
	}
	if st := lazyStatus(t, d); st[0].Local >= lazyLayer.Size/2 {
		t.Errorf("reading the last file made %d of %d bytes local", st[0].Local, lazyLayer.Size)
	}
	// Progress, for people and for Prometheus.
	short := lazyLayer.Digest.Encoded()[:12]
	if out := d.berthctl(t, "images", "--pulling"); !strings.Contains(out, "LAZY LAYER") || !strings.Contains(out, short) {
		t.Errorf("berthctl images --pulling does not show the lazy layer:\n%s", out)
	}
	var listed []adminapi.LazyLayer
	if err := json.Unmarshal([]byte(d.berthctl(t, "images", "--lazy", "-o", "json")), &listed); err != nil ||
		len(listed) != 1 || listed[0].Digest != lazyLayer.Digest.String() || listed[0].Size != lazyLayer.Size || listed[0].Local == 0 {
		t.Errorf("berthctl images --lazy -o json: %+v, %v", listed, err)
	}
	if metrics := adminGet(t, d, adminapi.MetricsPath); !strings.Contains(metrics, fmt.Sprintf(`berth_lazy_layer_size_bytes{layer=%q} %s`, lazyLayer.Digest, strconv.FormatFloat(float64(lazyLayer.Size), 'g', -1, 64))) ||
		!strings.Contains(metrics, "berth_lazy_layer_local_bytes{layer=") {
		t.Errorf("metrics lack the lazy layer:\n%s", metrics)
	}

	// berthd crashes: the container's root filesystem is berth-lazy's.
	helper := d.LazyHelperPid()
	d.Restart(syscall.SIGKILL)
	if got := d.mustExec(t, c1, "sha256sum", "/data/big"); !strings.HasPrefix(got, sha256Hex(big)) {
		t.Errorf("sha256sum of the big file after berthd's crash: %q", got)
	}
	if now := d.LazyHelperPid(); now != helper {
		t.Errorf("berth-lazy is pid %d after berthd's crash; was %d", now, helper)
	}

	// The registry goes away: a read of what is not local fails, at
	// once, and the container runs on.
	proxy.Cut(true)
	_, stderr, code := d.execSync(t, c1, "cat", "/data/middle")
	if code == 0 || !strings.Contains(stderr, "Input/output error") {
		t.Errorf("reading a file not yet local with the registry cut: exit %d, %q; want an I/O error", code, stderr)
	}
	if got := d.mustExec(t, c1, "sha256sum", "/data/tail"); !strings.HasPrefix(got, sha256Hex(tail)) {
		t.Errorf("sha256sum of a file already read, with the registry cut: %q", got)
	}
	proxy.Cut(false)
	if got := d.mustExec(t, c1, "sha256sum", "/data/middle"); !strings.HasPrefix(got, sha256Hex(middle)) {
		t.Errorf("sha256sum of a file once the registry is back: %q", got)
	}

	// The background fetch goes on; the layer is unpacked, and the
	// mount let go of.
	proxy.Release()
	berthd.Eventually(t, 2*time.Minute, "the lazy layer unpacked and unmounted", func() error {
		if st := lazyStatus(t, d); len(st) != 0 {
			return fmt.Errorf("berth-lazy serves %+v", st)
		}
		return nil
	})
	if !strings.Contains(d.LogLines("lazy layer is local"), lazyLayer.Digest.String()) {
		t.Errorf("berthd did not log the layer made local")
	}
	// No pull, as a kubelet with the image present does not.
	proxy.Cut(true)
	created, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod, Config: containerConfig("after", ref), SandboxConfig: podCfg})
	if err != nil {
		t.Fatal(err)
	}
	c2 := created.ContainerId
	if _, err := d.RT.StartContainer(ctxT(t), &runtimeapi.StartContainerRequest{ContainerId: c2}); err != nil {
		t.Fatal(err)
	}
	if got := d.mustExec(t, c2, "sha256sum", "/data/big"); !strings.HasPrefix(got, sha256Hex(big)) {
		t.Errorf("sha256sum in a container made after the layer is local: %q", got)
	}
	if got := d.mustExec(t, c1, "sha256sum", "/data/big"); !strings.HasPrefix(got, sha256Hex(big)) {
		t.Errorf("sha256sum in the first container, its mount let go of: %q", got)
	}
	if _, err := d.RT.StopPodSandbox(ctxT(t), &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
}

// A crash of berth-lazy: berthd starts it again, with the FUSE connection
// berthd kept a duplicate of, and has it serve the layer again, whose
// background fetch goes on. The container running through the crash
// reads files it never read before it; containers created from then on
// work.
func TestLazyPullHelperCrash(t *testing.T) {
	img := pushLazyImage(t, "lazy/crash:v1", 20)
	d, proxy, ref := startLazyDaemon(t, img)
	d.pull(t, ref)
	podCfg := d.podConfig("lazy-crash")
	pod := d.runPod(t, podCfg)
	c1 := d.run(t, pod, podCfg, containerConfig("before", ref))
	if got := d.mustExec(t, c1, "sha256sum", "/data/tail"); !strings.HasPrefix(got, sha256Hex(img.tail)) {
		t.Errorf("sha256sum of the layer's last file: %q", got)
	}

	old := d.LazyHelperPid()
	if old == 0 {
		t.Fatal("no berth-lazy runs")
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	berthd.Eventually(t, time.Minute, "berth-lazy started again and serving the layer", func() error {
		pid := d.LazyHelperPid()
		if pid == 0 || pid == old {
			return fmt.Errorf("berth-lazy pid %d (was %d)", pid, old)
		}
		st, err := lazyhelper.NewClient(filepath.Join(d.State, "lazy.sock")).Status(context.Background())
		if err != nil || len(st) != 1 || st[0].Blob != img.layer.Digest {
			return fmt.Errorf("berth-lazy serves %+v, %v", st, err)
		}
		return nil
	})
	if !strings.Contains(d.LogLines("started berth-lazy"), "pid=") {
		t.Errorf("berthd did not log the restart of berth-lazy")
	}
	// berthd kept the connection and gave it to the new berth-lazy: the
	// running container reads what it never read before the crash.
	if got := d.mustExec(t, c1, "sha256sum", "/data/middle"); !strings.HasPrefix(got, sha256Hex(img.middle)) {
		t.Errorf("sha256sum of a file not read before the crash, in a container running through it: %q", got)
	}
	if logData, _ := os.ReadFile(filepath.Join(d.State, "berth-lazy.log")); !strings.Contains(string(logData), "adopted the mount of a lazy layer") {
		t.Errorf("berth-lazy's log does not say it adopted the mount:\n%s", logData)
	}

	c2 := d.run(t, pod, podCfg, containerConfig("after", ref))
	if got := d.mustExec(t, c2, "sha256sum", "/data/middle"); !strings.HasPrefix(got, sha256Hex(img.middle)) {
		t.Errorf("sha256sum in a container created after the crash: %q", got)
	}
	proxy.Release()
	berthd.Eventually(t, 2*time.Minute, "the lazy layer unpacked and unmounted", func() error {
		if st := lazyStatus(t, d); len(st) != 0 {
			return fmt.Errorf("berth-lazy serves %+v", st)
		}
		return nil
	})
	if got := d.mustExec(t, c2, "sha256sum", "/data/big"); !strings.HasPrefix(got, sha256Hex(img.big)) {
		t.Errorf("sha256sum of the big file once local: %q", got)
	}
}

// A hostile registry: a chunk that does not match the TOC's digest is
// refused, and not a byte of it reaches the container, which reads the
// file once the registry serves it right; a TOC that does not match the
// manifest's digest has its layer pulled whole instead.
func TestLazyPullHostileRegistry(t *testing.T) {
	img := pushLazyImage(t, "lazy/hostile:v1", 30)
	other := pushLazyImage(t, "lazy/hostile-toc:v1", 40)
	d, proxy, ref := startLazyDaemon(t, img)
	d.pull(t, ref)
	podCfg := d.podConfig("lazy-hostile")
	pod := d.runPod(t, podCfg)
	c := d.run(t, pod, podCfg, containerConfig("reader", ref))

	proxy.CorruptRanges(true)
	stdout, stderr, code := d.execSync(t, c, "cat", "/data/middle")
	if code == 0 || !strings.Contains(stderr, "Input/output error") || stdout != "" {
		t.Errorf("reading a file whose chunks the registry corrupts: exit %d, %d bytes out, %q; want EIO and nothing", code, len(stdout), stderr)
	}
	logData, _ := os.ReadFile(filepath.Join(d.State, "berth-lazy.log"))
	if !strings.Contains(string(logData), "content does not match its digest") {
		t.Errorf("berth-lazy's log does not say the chunk was refused:\n%s", logData)
	}
	// The TOC itself, corrupted: the layer is pulled whole.
	d.pull(t, proxy.Addr+"/"+other.repoTag)
	if st := lazyStatus(t, d); len(st) != 1 || st[0].Blob != img.layer.Digest {
		t.Errorf("after a pull whose TOC the registry corrupts, berth-lazy serves %+v; want only the first image's layer", st)
	}
	if !strings.Contains(d.LogLines("it cannot be served lazily"), other.layer.Digest.String()) {
		t.Errorf("berthd did not log the layer pulled whole")
	}
	proxy.CorruptRanges(false)
	if got := d.mustExec(t, c, "sha256sum", "/data/middle"); !strings.HasPrefix(got, sha256Hex(img.middle)) {
		t.Errorf("sha256sum once the registry serves it right: %q", got)
	}
	c2 := d.run(t, pod, podCfg, containerConfig("whole", proxy.Addr+"/"+other.repoTag))
	if got := d.mustExec(t, c2, "sha256sum", "/data/middle"); !strings.HasPrefix(got, sha256Hex(other.middle)) {
		t.Errorf("sha256sum in the image pulled whole: %q", got)
	}
}
