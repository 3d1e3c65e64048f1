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

// berthctl export writes what import loads back as the same image (its
// ID kept: the layers are the pulled tars), to a file or to standard
// output, in either format; an image berthd has not is a clear error and
// leaves no file.
func TestExportArchive(t *testing.T) {
	d := startDaemon(t)
	rootfs := t.TempDir()
	testutil.BusyboxRootfs(t, rootfs)
	layout := testutil.BuildOCI(t, t.TempDir(), "latest", testutil.ImageSpec{
		Layers: []testutil.Layer{{Dir: rootfs}, {Files: []testutil.File{{Path: "etc/exported", Content: "round trip\n"}}}},
		Config: v1.ImageConfig{Cmd: []string{"cat", "/etc/exported"}},
	})
	archive := filepath.Join(t.TempDir(), "saved.tar")
	testutil.ExportDockerArchive(t, layout, archive, "airgap.example/round:v1")
	id := strings.TrimSpace(d.berthctl(t, "import", "-q", archive))

	dir := t.TempDir()
	docker := filepath.Join(dir, "docker.tar")
	d.berthctl(t, "export", "-o", docker, "airgap.example/round:v1")
	oci := d.berthctl(t, "export", "--format", "oci-archive", id)
	if err := os.WriteFile(filepath.Join(dir, "oci.tar"), []byte(oci), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, f := range []string{docker, filepath.Join(dir, "oci.tar")} {
		d.berthctl(t, "rmi", id)
		if got := strings.TrimSpace(d.berthctl(t, "import", "-q", f)); got != id {
			t.Fatalf("%s loaded as %s, want %s", filepath.Base(f), got, id)
		}
		st, err := d.Img.ImageStatus(ctxT(t), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "airgap.example/round:v1"}})
		if err != nil || st.Image == nil || st.Image.Id != id {
			t.Fatalf("ImageStatus after loading %s: %v %+v", filepath.Base(f), err, st)
		}
	}
	podCfg := d.podConfig("roundtrip")
	pod := d.runPod(t, podCfg)
	resp, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: containerConfig("tool", id), SandboxConfig: podCfg})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.RT.StartContainer(ctxT(t), &runtimeapi.StartContainerRequest{ContainerId: resp.ContainerId}); err != nil {
		t.Fatal(err)
	}
	if st := d.waitExited(t, resp.ContainerId, time.Minute); st.ExitCode != 0 {
		t.Fatalf("the re-imported image's container exited %d", st.ExitCode)
	}

	missing := filepath.Join(dir, "missing.tar")
	if _, errOut, err := d.berthctlErr(t, "export", "-o", missing, "airgap.example/none:v1"); err == nil || !strings.Contains(errOut, "not found") {
		t.Errorf("export of an image berthd has not: %v %q", err, errOut)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*missing*")); len(left) != 0 {
		t.Errorf("a failed export left %v", left)
	}
}
