package cri_test

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cri/adminapi"
	"github.com/berth-runtime/berth/internal/testutil"
)

func TestImageService(t *testing.T) {
	d := startDaemon(t)
	ctx := ctxT(t)

	id := d.pull(t, suite.busybox)
	if !strings.HasPrefix(id, "sha256:") {
		t.Fatalf("image ref %q is not an image id", id)
	}
	list, err := d.Img.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Images) != 1 || list.Images[0].Id != id || len(list.Images[0].RepoTags) != 1 ||
		list.Images[0].RepoTags[0] != suite.busybox || len(list.Images[0].RepoDigests) == 0 || list.Images[0].Size == 0 {
		t.Fatalf("ListImages: %+v", list.Images)
	}
	for _, ref := range []string{suite.busybox, id, strings.TrimPrefix(id, "sha256:")[:12], list.Images[0].RepoDigests[0]} {
		st, err := d.Img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}, Verbose: true})
		if err != nil {
			t.Fatalf("ImageStatus %s: %v", ref, err)
		}
		if st.Image == nil || st.Image.Id != id {
			t.Errorf("ImageStatus %s: %+v", ref, st.Image)
			continue
		}
		var info map[string]any
		if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil || info["imageSpec"] == nil {
			t.Errorf("ImageStatus %s verbose info: %v %q", ref, err, st.Info["info"])
		}
	}
	st, err := d.Img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: suite.reg.Addr + "/nothing:here"}})
	if err != nil || st.Image != nil {
		t.Errorf("ImageStatus of a missing image: %v %+v (want no error and no image)", err, st.Image)
	}
	filtered, err := d.Img.ListImages(ctx, &runtimeapi.ListImagesRequest{Filter: &runtimeapi.ImageFilter{Image: &runtimeapi.ImageSpec{Image: suite.reg.Addr + "/nothing:here"}}})
	if err != nil || len(filtered.Images) != 0 {
		t.Errorf("ListImages filtered on a missing image: %v %d", err, len(filtered.Images))
	}

	tools := d.pull(t, suite.tools)
	st, err = d.Img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: tools}})
	if err != nil || st.Image.GetUsername() != "user" || st.Image.GetUid() != nil {
		t.Errorf("image user: %v %+v", err, st.Image)
	}

	fs, err := d.Img.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(fs.ImageFilesystems) != 1 || fs.ImageFilesystems[0].UsedBytes.GetValue() == 0 || fs.ImageFilesystems[0].InodesUsed.GetValue() == 0 ||
		len(fs.ContainerFilesystems) != 1 {
		t.Errorf("ImageFsInfo: %+v", fs)
	}

	// Unknown images, unreachable registries, local files: errors with
	// codes a client can act on.
	for _, c := range []struct {
		ref  string
		code codes.Code
	}{
		{suite.reg.Addr + "/busybox:no-such-tag", codes.NotFound},
		{suite.reg.Addr + "/no-such-repo:latest", codes.NotFound},
		{"127.0.0.1:1/busybox:latest", codes.Unavailable},
		{"oci-archive:/etc/passwd", codes.InvalidArgument},
		{"Not A Reference!", codes.InvalidArgument},
		{"", codes.InvalidArgument},
	} {
		_, err := d.Img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: c.ref}})
		wantCode(t, err, c.code, "PullImage "+c.ref)
	}

	// Removing by one name removes the image with all its names; again is
	// not an error.
	for i := 0; i < 2; i++ {
		if _, err := d.Img.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: suite.busybox}}); err != nil {
			t.Fatalf("RemoveImage (%d): %v", i, err)
		}
	}
	st, err = d.Img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: id}})
	if err != nil || st.Image != nil {
		t.Errorf("image after RemoveImage: %v %+v", err, st.Image)
	}

	// Pulled again by digest alone: the same image, known by that digest.
	digestRef := list.Images[0].RepoDigests[0]
	if got := d.pull(t, digestRef); got != id {
		t.Errorf("pull by digest %s: %s, want %s", digestRef, got, id)
	}
	st, err = d.Img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: digestRef}})
	if err != nil || st.Image.GetId() != id || !slices.Contains(st.Image.GetRepoDigests(), digestRef) {
		t.Errorf("ImageStatus by digest after a pull by digest: %v %+v", err, st.Image)
	}
}

// TestImageInUse: an image removed while a container uses it goes from
// the list, and the container keeps its root filesystem.
func TestImageInUse(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("inuse")
	pod := d.runPod(t, podCfg)
	c := d.run(t, pod, podCfg, containerConfig("c", "", "sleep", "3600"))
	if _, err := d.Img.RemoveImage(ctxT(t), &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: suite.busybox}}); err != nil {
		t.Fatal(err)
	}
	if out := d.mustExec(t, c, "cat", "/etc/passwd"); !strings.Contains(out, "root:") {
		t.Errorf("container lost its files: %q", out)
	}
	// A new container of it needs a pull first.
	_, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: containerConfig("d", "", "true"), SandboxConfig: podCfg})
	wantCode(t, err, codes.NotFound, "CreateContainer of a removed image")
}

func TestPullWithCredentials(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{Auth: true})
	layout := testutil.BuildOCI(t, t.TempDir(), "v1", testutil.ImageSpec{Layers: []testutil.Layer{{Files: []testutil.File{{Path: "hello", Content: "hi"}}}}})
	reg.Push(t, layout, "private:v1")
	conf := testutil.RegistriesConf(t, "", reg.Addr, suite.reg.Addr)
	d := startDaemon(t, daemonOptions{registriesConf: conf})
	ref := reg.Addr + "/private:v1"
	ctx := ctxT(t)

	_, err := d.Img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	wantCode(t, err, codes.Unauthenticated, "pull without credentials")
	_, err = d.Img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref},
		Auth: &runtimeapi.AuthConfig{Username: reg.User, Password: "wrong"}})
	wantCode(t, err, codes.Unauthenticated, "pull with a wrong password")
	if _, err := d.Img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref},
		Auth: &runtimeapi.AuthConfig{Username: reg.User, Password: reg.Password}}); err != nil {
		t.Fatalf("pull with username and password: %v", err)
	}
	if _, err := d.Img.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		t.Fatal(err)
	}
	auth := base64.StdEncoding.EncodeToString([]byte(reg.User + ":" + reg.Password))
	if _, err := d.Img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref},
		Auth: &runtimeapi.AuthConfig{Auth: auth, ServerAddress: reg.Addr}}); err != nil {
		t.Fatalf("pull with an auth string: %v", err)
	}
	_, err = d.Img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref},
		Auth: &runtimeapi.AuthConfig{Auth: "%%%"}})
	wantCode(t, err, codes.InvalidArgument, "pull with a malformed auth string")
}

// TestPullProgress pulls through a slow link and watches the progress
// the CRI cannot show: the side channel, the metrics, the log and
// `berthctl images --pulling`.
func TestPullProgress(t *testing.T) {
	big := make([]byte, 6<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	layout := testutil.BuildOCI(t, t.TempDir(), "v1", testutil.ImageSpec{Layers: []testutil.Layer{
		{Files: []testutil.File{{Path: "small", Content: "small"}}},
		{Files: []testutil.File{{Path: "big", Content: string(big)}}, Compression: "none"},
	}})
	suite.reg.Push(t, layout, "big:v1")
	proxy := testutil.ThrottledProxy(t, suite.reg.Addr, 2<<20)
	conf := testutil.RegistriesConf(t, "", proxy, suite.reg.Addr)
	d := startDaemon(t, daemonOptions{registriesConf: conf})
	ref := proxy + "/big:v1"

	done := make(chan error, 1)
	go func() {
		_, err := d.Img.PullImage(ctxT(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		done <- err
	}()
	admin := d.adminClient()
	var seen adminapi.Pull
	eventually(t, 30*time.Second, "a pull in flight with bytes done", func() error {
		pulls, err := d.pullsInFlight()
		if err != nil {
			return err
		}
		for _, p := range pulls {
			for _, l := range p.Layers {
				if p.Ref == ref && l.Size > 1<<20 && l.Done > 0 && l.Done < l.Size {
					seen = p
					return nil
				}
			}
		}
		return errNotYet
	})
	if len(seen.Layers) != 2 {
		t.Errorf("pull in flight: %+v", seen)
	}
	// The same figures in the metrics.
	resp, err := admin.Get("http://berthd" + adminapi.MetricsPath)
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), `berth_image_pull_in_flight_bytes_done{image="`+ref+`"}`) {
		t.Errorf("metrics lack the pull in flight:\n%s", grepLines(string(metrics), "berth_image"))
	}
	out, err := exec.Command(testutil.Bin(t, "berthctl"), "-r", "unix://"+d.Socket, "images", "--pulling").CombinedOutput()
	if err != nil || !strings.Contains(string(out), ref) {
		t.Errorf("berthctl images --pulling: %v\n%s", err, out)
	}
	if err := <-done; err != nil {
		t.Fatalf("pull: %v", err)
	}
	// Every pull logs its progress while it runs, the kubelet's too.
	logData, _ := os.ReadFile(d.LogFile)
	if !strings.Contains(string(logData), `msg=pulling`) || !strings.Contains(string(logData), "downloading") {
		t.Errorf("no progress in the log:\n%s", grepLines(string(logData), "pull"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
