package cri_test

import (
	"context"
	"crypto/rand"
	"slices"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/testutil"
)

// TestListFilters checks every filter of ListPodSandbox and
// ListContainers, as the kubelet and crictl use them.
func TestListFilters(t *testing.T) {
	d := startDaemon(t)
	ctx := ctxT(t)
	aCfg, bCfg := d.podConfig("list-a"), d.podConfig("list-b")
	bCfg.Labels["tier"] = "back"
	a, b := d.runPod(t, aCfg), d.runPod(t, bCfg)
	running := d.run(t, a, aCfg, containerConfig("running", "", "sleep", "3600"))
	created := d.create(t, a, aCfg, containerConfig("created", "", "true"))
	inB := d.run(t, b, bCfg, containerConfig("in-b", "", "sleep", "3600"))
	if _, err := d.RT.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: b}); err != nil {
		t.Fatal(err)
	}

	pods := func(f *runtimeapi.PodSandboxFilter) []string {
		t.Helper()
		resp, err := d.RT.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: f})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, p := range resp.Items {
			ids = append(ids, p.Id)
		}
		slices.Sort(ids)
		return ids
	}
	containers := func(f *runtimeapi.ContainerFilter) []string {
		t.Helper()
		resp, err := d.RT.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: f})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, c := range resp.Containers {
			ids = append(ids, c.Id)
		}
		slices.Sort(ids)
		return ids
	}
	sorted := func(ids ...string) []string { slices.Sort(ids); return ids }
	for _, c := range []struct {
		name string
		got  []string
		want []string
	}{
		{"all pods", pods(nil), sorted(a, b)},
		{"pod by id", pods(&runtimeapi.PodSandboxFilter{Id: b}), sorted(b)},
		{"pod by id prefix", pods(&runtimeapi.PodSandboxFilter{Id: a[:12]}), sorted(a)},
		{"ready pods", pods(&runtimeapi.PodSandboxFilter{State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY}}), sorted(a)},
		{"not ready pods", pods(&runtimeapi.PodSandboxFilter{State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_NOTREADY}}), sorted(b)},
		{"pods by label", pods(&runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{"tier": "back"}}), sorted(b)},
		{"pods by two labels", pods(&runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{"tier": "back", "app": "list-a"}}), nil},
		{"all containers", containers(nil), sorted(running, created, inB)},
		{"container by id prefix", containers(&runtimeapi.ContainerFilter{Id: created[:10]}), sorted(created)},
		{"containers of a pod", containers(&runtimeapi.ContainerFilter{PodSandboxId: a}), sorted(running, created)},
		{"running containers", containers(&runtimeapi.ContainerFilter{State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING}}), sorted(running)},
		{"created containers", containers(&runtimeapi.ContainerFilter{State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_CREATED}}), sorted(created)},
		{"exited containers", containers(&runtimeapi.ContainerFilter{State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_EXITED}}), sorted(inB)},
		{"containers by label", containers(&runtimeapi.ContainerFilter{LabelSelector: map[string]string{"container": "running"}}), sorted(running)},
		{"unknown pod", containers(&runtimeapi.ContainerFilter{PodSandboxId: "no-such-pod"}), nil},
	} {
		if !slices.Equal(c.got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, c.got, c.want)
		}
	}
}

// TestSlowPullBlocksNothing: while a pull crawls, the other calls answer.
func TestSlowPullBlocksNothing(t *testing.T) {
	testutil.Slow(t)
	big := make([]byte, 4<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	layout := testutil.BuildOCI(t, t.TempDir(), "v1", testutil.ImageSpec{Layers: []testutil.Layer{
		{Files: []testutil.File{{Path: "big", Content: string(big)}}, Compression: "none"},
	}})
	suite.reg.Push(t, layout, "crawl:v1")
	proxy := testutil.ThrottledProxy(t, suite.reg.Addr, 512<<10)
	d := startDaemon(t, daemonOptions{registriesConf: testutil.RegistriesConf(t, "", proxy, suite.reg.Addr)})
	podCfg := d.podConfig("busy")
	pod := d.runPod(t, podCfg)

	pulled := make(chan error, 1)
	go func() {
		_, err := d.Img.PullImage(ctxT(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: proxy + "/crawl:v1"}})
		pulled <- err
	}()
	eventually(t, 30*time.Second, "the pull in flight", func() error {
		pulls, err := d.pullsInFlight()
		if err != nil {
			return err
		}
		if len(pulls) == 0 {
			return errNotYet
		}
		return nil
	})
	// Every call below must answer while the pull (8 s at this rate) is
	// still running; 5 s each is far more than any of them needs.
	quick := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	if _, err := d.RT.ListPodSandbox(quick(), &runtimeapi.ListPodSandboxRequest{}); err != nil {
		t.Errorf("ListPodSandbox during a pull: %v", err)
	}
	if _, err := d.Img.ListImages(quick(), &runtimeapi.ListImagesRequest{}); err != nil {
		t.Errorf("ListImages during a pull: %v", err)
	}
	other := d.podConfig("during-pull")
	if _, err := d.RT.RunPodSandbox(quick(), &runtimeapi.RunPodSandboxRequest{Config: other}); err != nil {
		t.Errorf("RunPodSandbox during a pull: %v", err)
	}
	c := d.create(t, pod, podCfg, containerConfig("c", "", "sleep", "3600"))
	if _, err := d.RT.StartContainer(quick(), &runtimeapi.StartContainerRequest{ContainerId: c}); err != nil {
		t.Errorf("StartContainer during a pull: %v", err)
	}
	select {
	case err := <-pulled:
		t.Fatalf("the pull ended before the checks (%v): the proxy is not slow enough to show anything", err)
	default:
	}
	if err := <-pulled; err != nil {
		t.Fatalf("pull: %v", err)
	}
}
