package cri_test

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/testutil"
	bruntime "github.com/berth-runtime/berth/runtime"
)

// TestCheckpointContainer is the kubelet's forensic checkpoint: a
// running container is dumped by CRIU and keeps running, and the archive
// has what CRI-O's and containerd's have (and what the kubelet's own
// test looks for): CRIU's images, the container's config, spec and
// status, its changes to its image, and its log. Where the kernel cannot
// run CRIU, the error is the one the kubelet's test knows as "no
// checkpoint support".
func TestCheckpointContainer(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("checkpoint")
	pod := d.runPod(t, podCfg)
	id := d.run(t, pod, podCfg, containerConfig("counter", "", "sh", "-c",
		"echo changed > /data.txt; rm /bin/true; i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done"))
	d.mustExec(t, id, "test", "-e", "/data.txt")
	dir := t.TempDir()
	archive := filepath.Join(dir, "checkpoint-counter.tar")

	for _, loc := range []string{"", "relative.tar"} {
		_, err := d.RT.CheckpointContainer(ctxT(t), &runtimeapi.CheckpointContainerRequest{ContainerId: id, Location: loc})
		wantCode(t, err, codes.InvalidArgument, "CheckpointContainer to "+loc)
	}
	logLines := func(id string) int {
		b, _ := os.ReadFile(d.status(t, id).LogPath)
		return strings.Count(string(b), "\n")
	}
	atCheckpoint := logLines(id)
	_, err := d.RT.CheckpointContainer(ctxT(t), &runtimeapi.CheckpointContainerRequest{ContainerId: id, Location: archive})
	if cerr := bruntime.CheckCRIU(); cerr != nil {
		if s, _ := status.FromError(err); s.Code() != codes.Unknown || s.Message() != "checkpoint/restore support not available" {
			t.Fatalf("checkpoint where CRIU cannot work (%v): %v", cerr, err)
		}
		if _, err := os.Stat(archive); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a failed checkpoint left its archive: %v", err)
		}
		_, err = d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: containerConfig("restored", "/no/such/checkpoint.tar"), SandboxConfig: podCfg})
		if s, _ := status.FromError(err); s.Code() != codes.Unknown || s.Message() != "checkpoint/restore support not available" {
			t.Fatalf("restore where CRIU cannot work (%v): %v", cerr, err)
		}
		t.Skipf("CRIU cannot work with this kernel (%v): refused as the kubelet expects; make test-vm tests checkpoints", cerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	// It keeps running, and counting.
	before := logLines(id)
	time.Sleep(time.Second)
	if st := d.status(t, id); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING || logLines(id) <= before {
		t.Fatalf("after the checkpoint: state %s, log lines %d then %d", st.State, before, logLines(id))
	}

	files := readArchive(t, archive)
	for _, name := range []string{"checkpoint/inventory.img", "config.dump", "spec.dump", "status.dump", "rootfs-diff.tar", "deleted.files", "container.log", "dump.log"} {
		if _, ok := files[name]; !ok {
			t.Errorf("%s missing from the archive", name)
		}
	}
	var config struct {
		ID, Name, RootfsImageRef, RootfsImageName string
		Runtime                                   string `json:"runtime"`
	}
	if err := json.Unmarshal(files["config.dump"], &config); err != nil || config.ID != id || config.RootfsImageName != suite.busybox ||
		config.RootfsImageRef != d.status(t, id).ImageRef || config.Runtime != "berth" {
		t.Errorf("config.dump: %+v (%v)", config, err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(files["spec.dump"], &spec); err != nil || spec.Process == nil || !slices.Contains(spec.Process.Args, "sh") {
		t.Errorf("spec.dump: %v", err)
	}
	var deleted []string
	if err := json.Unmarshal(files["deleted.files"], &deleted); err != nil || !slices.Equal(deleted, []string{"/bin/true"}) {
		t.Errorf("deleted.files: %q (%v)", files["deleted.files"], err)
	}
	diff := tarEntries(t, files["rootfs-diff.tar"])
	if _, wh := diff["bin/.wh.true"]; diff["data.txt"] != "changed\n" || !wh {
		t.Errorf("rootfs-diff.tar has %v", slices.Sorted(maps.Keys(diff)))
	}

	// checkpointctl, the reader of CRI-O's and containerd's archives,
	// reads berth's (the VM tier has it; make checkpointctl builds it).
	if ctl := os.Getenv("BERTH_CHECKPOINTCTL"); ctl != "" {
		out, err := exec.Command(ctl, "show", archive).CombinedOutput()
		if err != nil || !strings.Contains(string(out), id[:12]) || !strings.Contains(string(out), "berth") {
			t.Errorf("checkpointctl show: %v\n%s", err, out)
		}
		t.Logf("checkpointctl show:\n%s", out)
	} else {
		t.Log("BERTH_CHECKPOINTCTL is not set: the archive is not shown to checkpointctl (the VM tier does)")
	}

	// Restored in another pod, as CRI-O does it: the archive's path as
	// the image. Its memory (the counter) and its files come back.
	pod2Cfg := d.podConfig("restored")
	pod2 := d.runPod(t, pod2Cfg)
	for _, bad := range []string{filepath.Join(dir, "missing.tar"), writeTar(t, dir, "config.dump", "{}")} {
		_, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod2, Config: containerConfig("bad", bad), SandboxConfig: pod2Cfg})
		if s, _ := status.FromError(err); s.Code() != codes.NotFound && s.Code() != codes.InvalidArgument {
			t.Errorf("restore from %s: %v", filepath.Base(bad), err)
		}
	}
	resp, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod2, Config: containerConfig("counter", archive), SandboxConfig: pod2Cfg})
	if err != nil {
		t.Fatal(err)
	}
	restored := resp.ContainerId
	if st := d.status(t, restored); st.State != runtimeapi.ContainerState_CONTAINER_CREATED || st.Image.GetImage() != suite.busybox {
		t.Fatalf("restored container before start: %s, image %q", st.State, st.Image.GetImage())
	}
	if _, err := d.RT.StartContainer(ctxT(t), &runtimeapi.StartContainerRequest{ContainerId: restored}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for logLines(restored) == 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(d.status(t, restored).LogPath)
	first, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(first)
	if n, err := strconv.Atoi(fields[len(fields)-1]); err != nil || n <= atCheckpoint {
		t.Fatalf("the restored counter printed %q first; at the checkpoint it was past %d", first, atCheckpoint)
	}
	if out := d.mustExec(t, restored, "cat", "/data.txt"); out != "changed\n" {
		t.Errorf("restored /data.txt: %q", out)
	}
	if _, _, code := d.execSync(t, restored, "test", "-e", "/bin/true"); code == 0 {
		t.Errorf("/bin/true, deleted before the checkpoint, is back")
	}
	if st := d.status(t, restored); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("restored container: %s", st.State)
	}

	// A checkpoint image, as a pod names it: the archive added to an
	// empty image, annotated as CRI-O reads it (buildah add; buildah
	// config --annotation). The image it was made from is pulled when
	// the node lacks it.
	data, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	layout := testutil.BuildOCI(t, t.TempDir(), "v1", testutil.ImageSpec{
		Layers:      []testutil.Layer{{Tar: data}},
		Annotations: map[string]string{"io.kubernetes.cri-o.annotations.checkpoint.name": "counter"},
	})
	suite.reg.Push(t, layout, "checkpoint-counter:v1")
	cpImage := d.pull(t, suite.reg.Addr+"/checkpoint-counter:v1")
	if _, err := d.Img.RemoveImage(ctxT(t), &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: suite.busybox}}); err != nil {
		t.Fatal(err)
	}
	if st, err := d.Img.ImageStatus(ctxT(t), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: suite.busybox}}); err != nil || st.Image != nil {
		t.Fatalf("ImageStatus of the removed image: %v %v", err, st.GetImage())
	}
	pod3Cfg := d.podConfig("from-image")
	pod3 := d.runPod(t, pod3Cfg)
	resp, err = d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod3, Config: containerConfig("counter", cpImage), SandboxConfig: pod3Cfg})
	if err != nil {
		t.Fatalf("CreateContainer from the checkpoint image: %v", err)
	}
	if _, err := d.RT.StartContainer(ctxT(t), &runtimeapi.StartContainerRequest{ContainerId: resp.ContainerId}); err != nil {
		t.Fatal(err)
	}
	if out := d.mustExec(t, resp.ContainerId, "cat", "/data.txt"); out != "changed\n" {
		t.Errorf("/data.txt restored from the checkpoint image: %q", out)
	}
	if st := d.status(t, resp.ContainerId); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING || st.Image.GetImage() != suite.busybox {
		t.Errorf("container restored from the checkpoint image: %s, image %q", st.State, st.Image.GetImage())
	}
	if st, err := d.Img.ImageStatus(ctxT(t), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: suite.busybox}}); err != nil || st.Image == nil {
		t.Errorf("the checkpoint's image was not pulled again: %v %v", err, st)
	}

	if _, err := d.RT.StopContainer(ctxT(t), &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 2}); err != nil {
		t.Fatal(err)
	}
	_, err = d.RT.CheckpointContainer(ctxT(t), &runtimeapi.CheckpointContainerRequest{ContainerId: id, Location: filepath.Join(dir, "stopped.tar")})
	wantCode(t, err, codes.FailedPrecondition, "CheckpointContainer of a stopped container")
}

// writeTar writes a tar of one file named name and returns its path.
func writeTar(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, "only-"+name+".tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(content))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(content)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func readArchive(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[strings.TrimSuffix(h.Name, "/")] = b
	}
}

func tarEntries(t *testing.T, data []byte) map[string]string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "x.tar")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for k, v := range readArchive(t, p) {
		out[k] = string(v)
	}
	return out
}
