package cri_test

import (
	"archive/tar"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/conformance/internal/berthd"
	"github.com/berth-runtime/berth/internal/testutil"
)

// TestImageVolumes: an image mounted read-only into containers, as the
// kubelet asks for a pod's volumes[].image (KEP-4639, on by default since
// 1.35): its files at the path, or its sub path; one mount per image on
// the node, shared by every container that uses it and kept while one
// does, a RemoveImage of it included; sub paths resolved inside the
// image; errors that start with ImageVolumeMountFailed, as the kubelet
// reads them.
func TestImageVolumes(t *testing.T) {
	d := startDaemon(t)
	layout := testutil.BuildOCI(t, t.TempDir(), "v1", testutil.ImageSpec{Layers: []testutil.Layer{
		{Files: []testutil.File{
			{Path: "data/hello", Content: "from an image volume\n"},
			{Path: "data/sub/inner", Content: "inner\n"},
		}},
		// A second layer over the first, and a symlink that climbs out.
		{Files: []testutil.File{
			{Path: "data/second", Content: "second layer\n"},
			{Path: "escape", Type: tar.TypeSymlink, Linkname: "../../../../../../etc"},
		}},
	}})
	suite.reg.Push(t, layout, "volume:v1")
	volume := d.pull(t, suite.reg.Addr+"/volume:v1")

	podCfg := d.podConfig("imagevol")
	pod := d.runPod(t, podCfg)
	mount := func(dst, sub string) *runtimeapi.Mount {
		return &runtimeapi.Mount{ContainerPath: dst, Image: &runtimeapi.ImageSpec{Image: suite.reg.Addr + "/volume:v1"}, ImageSubPath: sub, Readonly: true}
	}
	whole := containerConfig("whole", "", "sleep", "3600")
	whole.Mounts = []*runtimeapi.Mount{mount("/vol", "")}
	a := d.run(t, pod, podCfg, whole)
	if out := d.mustExec(t, a, "sh", "-c", "cat /vol/data/hello /vol/data/second"); out != "from an image volume\nsecond layer\n" {
		t.Errorf("the image volume's files: %q", out)
	}
	if _, errOut, code := d.execSync(t, a, "sh", "-c", "echo x > /vol/data/new"); code == 0 || !strings.Contains(errOut, "Read-only") {
		t.Errorf("a write into the image volume: %d %q", code, errOut)
	}

	// Another pod's container, a sub path: the same mount underneath.
	podCfg2 := d.podConfig("imagevol2")
	pod2 := d.runPod(t, podCfg2)
	subCfg := containerConfig("sub", "", "sleep", "3600")
	subCfg.Mounts = []*runtimeapi.Mount{mount("/inner", "data/sub")}
	b := d.run(t, pod2, podCfg2, subCfg)
	if out := d.mustExec(t, b, "cat", "/inner/inner"); out != "inner\n" {
		t.Errorf("the sub path's file: %q", out)
	}
	if n := imageMounts(d); n != 1 {
		t.Errorf("%d image mounts for one image used by two containers, want 1", n)
	}

	// RemoveImage while containers use it: they keep their files.
	if _, err := d.Img.RemoveImage(ctxT(t), &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: volume}}); err != nil {
		t.Fatal(err)
	}
	if out := d.mustExec(t, a, "cat", "/vol/data/hello"); out != "from an image volume\n" {
		t.Errorf("after RemoveImage: %q", out)
	}

	// The sub path follows the image's symlinks inside the image only:
	// escape/passwd is the image's /etc/passwd, which it has not.
	suite.reg.Push(t, layout, "volume:v1")
	d.pull(t, suite.reg.Addr+"/volume:v1")
	bad := []struct {
		name string
		m    *runtimeapi.Mount
		code codes.Code
	}{
		{"sub path out through a symlink", mount("/etc-of-the-host", "escape/passwd"), codes.InvalidArgument},
		{"missing image", &runtimeapi.Mount{ContainerPath: "/x", Image: &runtimeapi.ImageSpec{Image: suite.reg.Addr + "/never-pulled:v1"}, Readonly: true}, codes.NotFound},
	}
	for _, tc := range bad {
		cfg := containerConfig("bad", "", "true")
		cfg.Mounts = []*runtimeapi.Mount{tc.m}
		_, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: cfg, SandboxConfig: podCfg})
		wantCode(t, err, tc.code, tc.name)
		if err != nil && !strings.Contains(err.Error(), "desc = ImageVolumeMountFailed: ") {
			t.Errorf("%s: %v, want ImageVolumeMountFailed first", tc.name, err)
		}
	}
	rw := mount("/rw", "")
	rw.Readonly = false
	cfg := containerConfig("rw", "", "true")
	cfg.Mounts = []*runtimeapi.Mount{rw}
	_, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: cfg, SandboxConfig: podCfg})
	wantCode(t, err, codes.InvalidArgument, "a writable image volume")

	// The last container gone, the mount goes (the harness checks that
	// no mount is left under berthd's root).
	for _, p := range []string{pod, pod2} {
		if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p}); err != nil {
			t.Fatal(err)
		}
	}
	if n := imageMounts(d); n != 0 {
		t.Errorf("%d image mounts after their containers are gone", n)
	}
}

// imageMounts counts the image mounts under berthd's root.
func imageMounts(d *daemon) int {
	n := 0
	for _, m := range berthd.MountsUnder(d.Dir) {
		if strings.Contains(m, "/image-mounts/") {
			n++
		}
	}
	return n
}

// TestArtifactVolume: an OCI artifact (model weights, say) pulled through
// the CRI and mounted as an image volume shows its files, named by their
// titles; it cannot be a container's image.
func TestArtifactVolume(t *testing.T) {
	d := startDaemon(t)
	layout := testutil.BuildOCIArtifact(t, t.TempDir(), "v1", "application/vnd.example.model",
		testutil.ArtifactFile{Title: "weights.bin", Content: "0123456789"},
		testutil.ArtifactFile{Title: "config.json", Content: `{"layers":2}`})
	suite.reg.Push(t, layout, "model:v1")
	ref := suite.reg.Addr + "/model:v1"
	d.pull(t, ref)

	podCfg := d.podConfig("artifact")
	pod := d.runPod(t, podCfg)
	cfg := containerConfig("reader", "", "sleep", "3600")
	cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/model", Image: &runtimeapi.ImageSpec{Image: ref}, Readonly: true}}
	c := d.run(t, pod, podCfg, cfg)
	if out := d.mustExec(t, c, "sh", "-c", "ls /model; cat /model/weights.bin"); out != "config.json\nweights.bin\n0123456789" {
		t.Errorf("the artifact's files: %q", out)
	}
	_, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, SandboxConfig: podCfg,
		Config: containerConfig("run-artifact", ref, "true")})
	wantCode(t, err, codes.InvalidArgument, "an artifact as a container's image")
}
