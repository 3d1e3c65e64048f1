package cri_test

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/conformance/internal/powercut"
	"github.com/berth-runtime/berth/internal/testutil"
)

// TestPowerCutDuringPulls: berthd's root on a disk whose power is cut in
// the middle of two pulls (powercut: the writes since the last flush
// lost, all or all but a prefix), then the machine "reboots": the file
// system is mounted from what the disk kept and berthd starts on it.
// What a PullImage answered before the cut is listed; every image listed
// runs a container that finds each of its files whole (sha256sum); the
// images cut half way pull again and run. The cut points are spread over
// the pulls, the kept prefix random: BERTH_POWERCUT_SEED replays a run.
func TestPowerCutDuringPulls(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.Slow(t)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("BERTH_POWERCUT_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("BERTH_POWERCUT_SEED: %v", err)
		}
	}
	t.Logf("seed %d (BERTH_POWERCUT_SEED replays it)", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	const layers, files, fileSize = 3, 12, 512 << 10
	images := make([]string, 3)
	for i := range images {
		images[i] = pushChecked(t, fmt.Sprintf("powercut/img%d:v1", i), layers, files, fileSize, rng)
	}
	// What the two pulls in flight write, measured on the first disk as
	// what the first pull wrote.
	var onePull int64
	const cuts = 5
	for i := range cuts {
		t.Run(fmt.Sprintf("cut-%d", i), func(t *testing.T) {
			// Spread over the pulls; the last right after they end.
			after := int64(float64(2*onePull) * (float64(i) + rng.Float64()) / (cuts - 1))
			if i == cuts-1 {
				after = 1 << 62
			}
			if w := powerCutOnce(t, images, after, rng); onePull == 0 {
				onePull = w
			}
		})
	}
}

// powerCutOnce: images[0] pulled whole, images[1:] pulled until after
// bytes reached the disk (or to their end), then the cut, the reboot and
// the checks. It returns what the first pull wrote.
func powerCutOnce(t *testing.T, images []string, after int64, rng *rand.Rand) (onePull int64) {
	dir := t.TempDir()
	disk := powercut.New(t, dir, 2<<30)
	dev := powercut.Format(t, disk, filepath.Join(dir, "root"))
	d := startDaemon(t, daemonOptions{root: dev.Dir})

	start := disk.Written()
	d.pull(t, images[0])
	base := disk.Written()
	onePull = base - start
	var wg sync.WaitGroup
	done := make(chan struct{})
	for _, ref := range images[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Cut off, or done before the cut: either is fine here.
			_, _ = d.Img.PullImage(ctxT(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		}()
	}
	go func() { wg.Wait(); close(done) }()
wait:
	for disk.Written()-base < after {
		select {
		case <-done:
			break wait
		case <-time.After(time.Millisecond):
		}
	}
	pending, kept, err := disk.Cut(-1, rng)
	if err != nil {
		t.Fatal(err)
	}
	d.Stop(syscall.SIGKILL)
	wg.Wait()
	t.Logf("cut after %d MB of the pulls' writes (%d flushes so far): %d writes pending, the first %d of them kept",
		(disk.Written()-base)>>20, disk.Flushes(), pending, kept)
	dev.Reboot(t)
	d.Start()

	listed := map[string]bool{}
	resp, err := d.Img.ListImages(ctxT(t), &runtimeapi.ListImagesRequest{})
	if err != nil {
		t.Fatalf("ListImages after the cut: %v", err)
	}
	for _, img := range resp.Images {
		for _, tag := range img.RepoTags {
			listed[tag] = true
		}
	}
	if !listed[images[0]] {
		t.Errorf("%s, pulled before the cut, is not listed after it: %v", images[0], resp.Images)
	}
	for i, ref := range images {
		if !listed[ref] {
			t.Logf("%s not listed after the cut: pulled again", ref)
			d.pull(t, ref)
		}
		// Created from what is stored: no pull on the way.
		checkImageWhole(t, d, fmt.Sprintf("check-%d", i), ref, listed[ref])
	}
	return onePull
}

// checkImageWhole runs sha256sum -c over every file the image's check
// list names, in a container of its own.
func checkImageWhole(t *testing.T, d *daemon, name, ref string, listedAfterCut bool) {
	t.Helper()
	podCfg := d.podConfig(name)
	pod := d.runPod(t, podCfg)
	cfg := containerConfig(name, ref, "sha256sum", "-c", "-s", "/check.sha256")
	cc, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: cfg, SandboxConfig: podCfg})
	if err != nil {
		t.Fatalf("%s (listed after the cut: %v): CreateContainer: %v", ref, listedAfterCut, err)
	}
	if _, err := d.RT.StartContainer(ctxT(t), &runtimeapi.StartContainerRequest{ContainerId: cc.ContainerId}); err != nil {
		t.Fatalf("%s (listed after the cut: %v): StartContainer: %v", ref, listedAfterCut, err)
	}
	if st := d.waitExited(t, cc.ContainerId, time.Minute); st.ExitCode != 0 {
		log, _ := os.ReadFile(st.LogPath)
		t.Errorf("%s (listed after the cut: %v): its files are not whole: sha256sum -c exited %d\n%s", ref, listedAfterCut, st.ExitCode, log)
	}
}

// pushChecked pushes an image of busybox and layers of random files, with
// /check.sha256 listing each file's digest, and returns its reference.
func pushChecked(t *testing.T, name string, layers, files, size int, rng *rand.Rand) string {
	t.Helper()
	var check strings.Builder
	spec := testutil.ImageSpec{Layers: []testutil.Layer{suite.base},
		Config: v1.ImageConfig{Cmd: []string{"sh"}, Env: []string{"PATH=/usr/bin:/bin"}}}
	buf := make([]byte, size)
	for l := range layers {
		var fs []testutil.File
		for f := range files {
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			path := fmt.Sprintf("data/l%d/f%d", l, f)
			fs = append(fs, testutil.File{Path: path, Content: string(buf)})
			fmt.Fprintf(&check, "%x  /%s\n", sha256.Sum256(buf), path)
		}
		spec.Layers = append(spec.Layers, testutil.Layer{Files: fs})
	}
	spec.Layers = append(spec.Layers, testutil.Layer{Files: []testutil.File{{Path: "check.sha256", Content: check.String()}}})
	layout := testutil.BuildOCI(t, t.TempDir(), "latest", spec)
	suite.reg.Push(t, layout, name)
	return suite.reg.Addr + "/" + name
}
