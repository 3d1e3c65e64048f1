package cri_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/testutil"
)

// TestImportArchive: an air-gapped node loads images from files. berthctl
// import sends a docker-archive (as `docker save` writes) to berthd, which
// loads it under its tag; a pod runs it with no registry. The CRI keeps
// refusing file references, and a file that is no image archive is
// refused with a clear error.
func TestImportArchive(t *testing.T) {
	d := startDaemon(t)
	rootfs := t.TempDir()
	testutil.BusyboxRootfs(t, rootfs)
	layout := testutil.BuildOCI(t, t.TempDir(), "latest", testutil.ImageSpec{
		Layers: []testutil.Layer{{Dir: rootfs}, {Files: []testutil.File{{Path: "etc/imported", Content: "from a file\n"}}}},
		Config: v1.ImageConfig{Cmd: []string{"cat", "/etc/imported"}},
	})
	archive := filepath.Join(t.TempDir(), "saved.tar")
	testutil.ExportDockerArchive(t, layout, archive, "airgap.example/tool:v1")

	out := d.berthctl(t, "import", archive)
	if !strings.Contains(out, "airgap.example/tool:v1") {
		t.Fatalf("berthctl import: %q", out)
	}
	st, err := d.Img.ImageStatus(ctxT(t), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "airgap.example/tool:v1"}})
	if err != nil || st.Image == nil {
		t.Fatalf("ImageStatus of the imported image: %v %+v", err, st)
	}
	podCfg := d.podConfig("airgap")
	pod := d.runPod(t, podCfg)
	cfg := containerConfig("tool", "airgap.example/tool:v1")
	// The image is there: no pull (the name resolves to no registry).
	resp, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: cfg, SandboxConfig: podCfg})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.RT.StartContainer(ctxT(t), &runtimeapi.StartContainerRequest{ContainerId: resp.ContainerId}); err != nil {
		t.Fatal(err)
	}
	if st := d.waitExited(t, resp.ContainerId, time.Minute); st.ExitCode != 0 {
		t.Fatalf("the imported image's container exited %d", st.ExitCode)
	}
	if log := string(readFile(filepath.Join(podCfg.LogDirectory, "tool.log"))); !strings.Contains(log, " from a file\n") {
		t.Errorf("the container's log: %q", log)
	}

	// The CRI still pulls from registries only.
	_, err = d.Img.PullImage(ctxT(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "docker-archive:" + archive}})
	wantCode(t, err, codes.InvalidArgument, "PullImage of a file")

	bad := filepath.Join(t.TempDir(), "not-an-archive.tar")
	if err := os.WriteFile(bad, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, err := d.berthctlErr(t, "import", bad); err == nil || !strings.Contains(errOut, "not a tar archive") {
		t.Errorf("import of a file that is no archive: %v %q", err, errOut)
	}
}
