package kubelet_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/berth-runtime/berth/internal/lazyhelper"
	"github.com/berth-runtime/berth/internal/testutil"
)

// A kubelet's static pod from an eStargz image pulled lazily: Ready
// before the image's big layer is fetched, with the file at the end of
// that layer read; berthd killed while the layer is fetched in the
// background leaves the container running and its files whole; the
// layer ends up local.
func TestKubeletLazyPull(t *testing.T) {
	big, tail := testutil.IncompressibleFrom(21, 8<<20), testutil.IncompressibleFrom(22, 100<<10)
	layout := testutil.BuildOCI(t, t.TempDir(), "v1", testutil.ImageSpec{
		Layers: []testutil.Layer{suite.base, {Compression: "estargz", EStargzChunkSize: 256 << 10, Files: []testutil.File{
			{Path: "data/", Type: '5'},
			{Path: "data/big", Content: big},
			{Path: "data/tail", Content: tail},
		}}},
		Config: v1.ImageConfig{Env: []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}},
	})
	suite.reg.Push(t, layout, "lazy/kubelet:v1")
	layer := suite.reg.Manifest(t, "lazy/kubelet:v1").Layers[1]
	proxy := testutil.StartBlobProxy(t, suite.reg.Addr)
	proxy.Hold(layer.Digest.String())
	n := startNodeWith(t, nodeOptions{
		registriesConf: testutil.RegistriesConf(t, "", suite.reg.Addr, proxy.Addr),
		extra:          "[lazy_pull]\nenabled = true\n",
	})
	n.addPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "lazy"}, Spec: corev1.PodSpec{
		TerminationGracePeriodSeconds: ptr(int64(1)),
		Containers: []corev1.Container{{
			Name: "reader", Image: proxy.Addr + "/lazy/kubelet:v1", ImagePullPolicy: corev1.PullIfNotPresent,
			Command: sh("sha256sum /data/tail > /tmp/tail.sum && exec sleep 3600"),
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"test", "-s", "/tmp/tail.sum"}}},
				PeriodSeconds: 1},
		}},
	}})
	p := n.pod("lazy", 2*time.Minute, "ready", func(p corev1.Pod) error {
		if !podReady(p) {
			return errors.New("not ready")
		}
		return nil
	})
	id := criID(containerStatus(p, "reader"))
	want := func(s string) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(s))) }
	if got, err := n.execIn(id, "cat", "/tmp/tail.sum"); err != nil || !strings.HasPrefix(got, want(tail)) {
		t.Errorf("the container's sum of the layer's last file: %q, %v", got, err)
	}
	helper := lazyhelper.NewClient(filepath.Join(n.d.State, "lazy.sock"))
	st, err := helper.Status(context.Background())
	if err != nil || len(st) != 1 || st[0].Complete {
		t.Fatalf("with the pod ready, berth-lazy serves %+v, %v; want the layer, not yet local", st, err)
	}

	n.d.Restart(syscall.SIGKILL)
	if got, err := n.execIn(id, "sha256sum", "/data/big"); err != nil || !strings.HasPrefix(got, want(big)) {
		t.Errorf("sha256sum of the big file after berthd's crash: %q, %v", got, err)
	}
	proxy.Release()
	eventually(t, 2*time.Minute, "the lazy layer local", func() error {
		st, err := helper.Status(context.Background())
		if err != nil || len(st) != 0 {
			return fmt.Errorf("berth-lazy serves %+v, %v", st, err)
		}
		return nil
	})
	p = n.pod("lazy", time.Minute, "still running, never restarted", func(p corev1.Pod) error {
		cs := containerStatus(p, "reader")
		if cs == nil || cs.State.Running == nil || !podReady(p) {
			return errors.New("not running and ready")
		}
		return nil
	})
	if cs := containerStatus(p, "reader"); criID(cs) != id || cs.RestartCount != 0 {
		t.Errorf("the container is %s after %d restarts; want %s, never restarted", criID(cs), cs.RestartCount, id)
	}
	n.removePod("lazy")
}
