package cri_test

import (
	"fmt"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/testutil"
)

// TestPullHostileImage: images whose layers aim symlinks at a host
// directory, pulled through CRI PullImage as a kubelet would, change
// nothing outside berthd's root, and the containers made of them do not
// see the host directory's owner or mode.
func TestPullHostileImage(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("hostile")
	pod := d.runPod(t, podCfg)
	sentinel := testutil.NewSentinel(t)
	for i, c := range testutil.HostileImpliedDirImages(sentinel) {
		t.Run(c.Name, func(t *testing.T) {
			spec := c.Spec
			// Busybox underneath, to look from inside.
			spec.Layers = append([]testutil.Layer{suite.base}, spec.Layers...)
			spec.Config.Env = []string{"PATH=/bin"}
			ref := testutil.BuildOCI(t, t.TempDir(), "v1", spec)
			repoTag := fmt.Sprintf("hostile%d:v1", i)
			suite.reg.Push(t, ref, repoTag)
			id := d.run(t, pod, podCfg, containerConfig(fmt.Sprintf("hostile%d", i), suite.reg.Addr+"/"+repoTag, "sleep", "3600"))
			sentinel.Check(t)
			if c.Inside != "" {
				out := strings.TrimSpace(d.mustExec(t, id, "stat", "-c", "%u %a", "/"+c.Inside))
				if out == fmt.Sprintf("%d %o", testutil.SentinelUID, testutil.SentinelMode) {
					t.Errorf("/%s in the container has the host directory's owner and mode: %s", c.Inside, out)
				}
			}
			if _, err := d.RT.StopContainer(ctxT(t), &runtimeapi.StopContainerRequest{ContainerId: id}); err != nil {
				t.Fatal(err)
			}
			if _, err := d.RT.RemoveContainer(ctxT(t), &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Img.RemoveImage(ctxT(t), &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: suite.reg.Addr + "/" + repoTag}}); err != nil {
				t.Fatal(err)
			}
			sentinel.Check(t)
		})
	}
}
