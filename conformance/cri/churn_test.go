package cri_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/conformance/internal/berthd"
	"github.com/berth-runtime/berth/cri/adminapi"
	"github.com/berth-runtime/berth/internal/testutil"
)

// churnPods is how many short-lived pods TestChurn runs: 300, and
// fewer where the test time is stretched (an emulated VM, 15 times
// slower at this), enough that a leak of one thing per pod still shows.
var churnPods = int(300 * time.Second / testutil.Scaled(time.Second))

// TestChurn runs hundreds of short-lived pods, each with one container
// that exits at once, as fast as a few parallel clients can (a node full
// of CronJobs): afterwards no shim, pause or container process, mount,
// network namespace, IP or cgroup is left, and berthd's goroutines and
// heap are back near where they were.
func TestChurn(t *testing.T) {
	testutil.Slow(t)
	d, bridge, ipamDir := bridgeDaemon(t, "bu", 219)
	d.pull(t, suite.busybox)
	job := func(name string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cfg := d.podConfig(name)
		pod, err := d.RT.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
		if err != nil {
			return fmt.Errorf("run pod %s: %w", name, err)
		}
		ctr, err := d.RT.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod.PodSandboxId,
			Config: containerConfig("job", "", "sh", "-c", "echo done"), SandboxConfig: cfg})
		if err != nil {
			return fmt.Errorf("create container in %s: %w", name, err)
		}
		if _, err := d.RT.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ctr.ContainerId}); err != nil {
			return fmt.Errorf("start container in %s: %w", name, err)
		}
		for {
			st, err := d.RT.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctr.ContainerId})
			if err != nil {
				return fmt.Errorf("status of the container in %s: %w", name, err)
			}
			if st.Status.State == runtimeapi.ContainerState_CONTAINER_EXITED {
				if st.Status.ExitCode != 0 {
					return fmt.Errorf("container in %s exited %d", name, st.Status.ExitCode)
				}
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := d.RT.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.PodSandboxId}); err != nil {
			return fmt.Errorf("stop pod %s: %w", name, err)
		}
		if _, err := d.RT.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.PodSandboxId}); err != nil {
			return fmt.Errorf("remove pod %s: %w", name, err)
		}
		// The kubelet removes the pod's log directory with the pod.
		return os.RemoveAll(cfg.LogDirectory)
	}
	// A first round warms berthd up (pools, caches, the bridge).
	run := func(prefix string, count, workers int) {
		var wg sync.WaitGroup
		next := make(chan int)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					if err := job(fmt.Sprintf("%s-%d", prefix, i)); err != nil {
						t.Error(err)
					}
				}
			}()
		}
		for i := 0; i < count && !t.Failed(); i++ {
			next <- i
		}
		close(next)
		wg.Wait()
	}
	run("warm", 20, 3)
	before := snapshotHost(t, bridge, ipamDir)
	g0, heap0 := daemonFootprint(t, d)
	start := time.Now()
	run("cron", churnPods, 3)
	t.Logf("%d pods in %v", churnPods, time.Since(start).Round(time.Millisecond))

	// Nothing of them is left on the host.
	if pods := listPods(t, d); len(pods) != 0 {
		t.Errorf("pods left: %d", len(pods))
	}
	if procs := berthd.ProcessesMentioning(d.State); len(procs) > 0 {
		t.Errorf("shims left: %v", procs)
	}
	if pids, _ := cgroups.Pids(d.CgroupPath); len(pids) > 0 {
		t.Errorf("processes left in the pods' cgroups: %v", pids)
	}
	if left := berthd.CgroupChildren(d.CgroupPath); len(left) > 0 {
		t.Errorf("cgroups left: %v", left)
	}
	for _, dir := range []string{d.State, d.Dir} {
		if m := berthd.MountsUnder(dir); len(m) > 0 {
			t.Errorf("mounts left under %s: %v", dir, m)
		}
	}
	if ns, _ := os.ReadDir(filepath.Join(d.State, "netns")); len(ns) > 0 {
		t.Errorf("network namespaces left: %d", len(ns))
	}
	before.assertSame(t, "after the churn", snapshotHost(t, bridge, ipamDir))

	// berthd holds nothing per pod once the pod is gone. Goroutines of
	// gRPC connections and timers come and go: a few either way is noise,
	// one per pod is a leak.
	var g1 int
	var heap1 int64
	berthd.Eventually(t, testutil.Scaled(30*time.Second), "berthd's goroutines and heap back near the start", func() error {
		g1, heap1 = daemonFootprint(t, d)
		if g1 > g0+10 {
			return fmt.Errorf("%d goroutines, %d before %d pods; the most common:\n%s", g1, g0, churnPods,
				goroutineSummary(adminGet(t, d, "/debug/pprof/goroutine?debug=1")))
		}
		if heap1 > heap0+heap0/2+4<<20 {
			return fmt.Errorf("heap in use %d KiB, %d KiB before %d pods", heap1>>10, heap0>>10, churnPods)
		}
		return nil
	})
	t.Logf("berthd: goroutines %d → %d, heap in use %d → %d KiB", g0, g1, heap0>>10, heap1>>10)
}

// adminGet fetches a path from berthd's admin socket.
func adminGet(t *testing.T, d *daemon, path string) string {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", adminapi.SocketFor(d.Socket))
	}}}
	resp, err := client.Get("http://berthd" + path)
	if err != nil {
		t.Fatalf("admin socket %s: %v", path, err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		b.WriteString(sc.Text() + "\n")
	}
	return b.String()
}

// goroutineSummary is a goroutine profile (debug=1) in a line per stack
// that more than one goroutine is in: the count and the innermost
// functions.
func goroutineSummary(profile string) string {
	var out []string
	for _, block := range strings.Split(profile, "\n\n") {
		lines := strings.Split(strings.TrimSpace(block), "\n")
		var n int
		if len(lines) < 2 || strings.HasPrefix(lines[0], "goroutine profile") {
			continue
		}
		if _, err := fmt.Sscanf(lines[0], "%d @", &n); err != nil || n < 2 {
			continue
		}
		var funcs []string
		for _, l := range lines[1:] {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == "#" && len(funcs) < 4 {
				funcs = append(funcs, f[2])
			}
		}
		out = append(out, fmt.Sprintf("%d: %s", n, strings.Join(funcs, " < ")))
	}
	return strings.Join(out, "\n")
}

// daemonFootprint is berthd's goroutines and live heap after a GC.
func daemonFootprint(t *testing.T, d *daemon) (goroutines int, heapInuse int64) {
	t.Helper()
	g := adminGet(t, d, "/debug/pprof/goroutine?debug=1")
	if _, err := fmt.Sscanf(g, "goroutine profile: total %d", &goroutines); err != nil {
		t.Fatalf("goroutine profile: %v: %.100s", err, g)
	}
	h := adminGet(t, d, "/debug/pprof/heap?debug=1&gc=1")
	for _, l := range strings.Split(h, "\n") {
		if v, ok := strings.CutPrefix(l, "# HeapInuse = "); ok {
			heapInuse, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if heapInuse == 0 {
		t.Fatalf("no HeapInuse in the heap profile")
	}
	return goroutines, heapInuse
}
