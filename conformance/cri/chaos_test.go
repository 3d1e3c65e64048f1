package cri_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/conformance/internal/berthd"
	"github.com/berth-runtime/berth/internal/testutil"
)

// chaosKills is how many times TestChaosKill kills berthd.
const chaosKills = 32

// TestChaosKill kills berthd with SIGKILL at random moments, again and
// again, while a client runs and removes pods with networking, containers
// and logs, as a kubelet would. Afterwards what berthd lists is what the
// host holds, nothing the client removed is back, every container it
// started still runs and logs, and once everything is removed the host is
// as it was before.
func TestChaosKill(t *testing.T) {
	testutil.Slow(t)
	d, bridge, ipamDir := bridgeDaemon(t, "bk", 216)
	d.pull(t, suite.busybox)
	// The first pod makes the bridge; it stays, so it is not compared.
	warm := d.runPod(t, d.podConfig("chaos-warmup"))
	if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: warm}); err != nil {
		t.Fatal(err)
	}
	before := snapshotHost(t, bridge, ipamDir)
	filesBefore := stateFiles(t, d)

	// Pods that live through the whole test, logging all the time.
	type keeper struct{ pod, ctr, log string }
	var keepers []keeper
	for i := 0; i < 2; i++ {
		cfg := d.podConfig(fmt.Sprintf("chaos-keeper-%d", i))
		pod := d.runPod(t, cfg)
		ctr := d.run(t, pod, cfg, tickerConfig("ticker"))
		keepers = append(keepers, keeper{pod, ctr, filepath.Join(cfg.LogDirectory, "ticker.log")})
	}

	// The client has a connection of its own: it lives through the kills
	// and is never replaced under it.
	conn, err := grpc.NewClient("unix://"+d.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := &chaosClient{d: d, rt: runtimeapi.NewRuntimeServiceClient(conn), running: map[string]string{}, removed: map[string]bool{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); c.loop(stop) }()

	for kill := 0; kill < chaosKills; kill++ {
		time.Sleep(testutil.Scaled(time.Duration(200+rand.IntN(1300)) * time.Millisecond))
		d.Stop(syscall.SIGKILL)
		// Sometimes the client finds berthd gone for a while.
		time.Sleep(testutil.Scaled(time.Duration(rand.IntN(300)) * time.Millisecond))
		d.Start()
	}
	close(stop)
	wg.Wait()
	t.Logf("client: %d pods run, %d removed, %d calls failed while berthd was down or starting", c.runs, len(c.removed), c.failures)
	if c.runs < chaosKills/2 || len(c.removed) < chaosKills/4 {
		t.Errorf("the client got too little done to prove anything: %d pods run, %d removed", c.runs, len(c.removed))
	}

	// What was reported running still runs, and logs.
	for _, k := range keepers {
		if st := d.status(t, k.ctr); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Errorf("keeper %s: %v after the kills", k.ctr, st.State)
		}
		size := fileSize(k.log)
		berthd.Eventually(t, 10*time.Second, "keeper log grows", func() error {
			if fileSize(k.log) <= size {
				return fmt.Errorf("%s stays at %d bytes", k.log, size)
			}
			return nil
		})
	}
	pods := listPods(t, d)
	for ctr, pod := range c.running {
		if _, ok := pods[pod]; !ok {
			t.Errorf("pod %s, whose container %s was reported running and which the client never removed, is gone", pod, ctr)
			continue
		}
		if st := d.status(t, ctr); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Errorf("container %s was reported running and is %v (%s, exit code %d, %q); berthd's log of it and its pod:\n%s\n%s",
				ctr, st.State, st.Reason, st.ExitCode, st.Message, d.LogLines(ctr), d.LogLines(pod))
		} else {
			d.mustExec(t, ctr, "true")
		}
	}
	for pod := range c.removed {
		if _, ok := pods[pod]; ok {
			t.Errorf("pod %s was removed, and is listed again", pod)
		}
	}
	checkHostMatchesLists(t, d, ipamDir)

	// Everything removed, as a kubelet draining the node would: the host
	// is as before.
	for id := range pods {
		if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Errorf("remove pod %s: %v", id, err)
		}
	}
	before.assertSame(t, "after the chaos and removing every pod", snapshotHost(t, bridge, ipamDir))
	checkHostMatchesLists(t, d, ipamDir)
	if after := stateFiles(t, d); !slices.Equal(after, filesBefore) {
		t.Errorf("files under the state and root directories:\nbefore %v\nafter  %v", filesBefore, after)
	}
}

// tickerConfig is a container that logs a line every 50 ms.
func tickerConfig(name string) *runtimeapi.ContainerConfig {
	return containerConfig(name, "", "sh", "-c", `i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.05; done`)
}

// chaosClient runs and removes pods as fast as berthd lets it, keeping
// up to a few alive, and remembers what berthd told it.
type chaosClient struct {
	d  *daemon
	rt runtimeapi.RuntimeServiceClient

	mu       sync.Mutex
	running  map[string]string // container → pod, StartContainer succeeded
	removed  map[string]bool   // pods RemovePodSandbox succeeded for
	runs     int
	failures int
}

func (c *chaosClient) loop(stop <-chan struct{}) {
	var alive []string
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		if pod := c.runOne(i); pod != "" {
			alive = append(alive, pod)
		}
		// Remove the oldest beyond three (retried until it succeeds).
		for len(alive) > 3 {
			if !c.remove(alive[0]) {
				break
			}
			alive = alive[1:]
		}
		time.Sleep(time.Duration(rand.IntN(100)) * time.Millisecond)
	}
}

func (c *chaosClient) call(what string, err error) bool {
	if err != nil {
		c.mu.Lock()
		c.failures++
		c.mu.Unlock()
		if status.Code(err) != codes.Unavailable {
			// Unavailable is berthd down or starting; anything else is
			// worth seeing when the test fails.
			c.d.t.Logf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
		return false
	}
	return true
}

// runOne runs a pod with a logging container, and returns the pod's id
// if RunPodSandbox succeeded, whatever happened to the container.
func (c *chaosClient) runOne(i int) string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := c.d.podConfig(fmt.Sprintf("chaos-%d", i))
	resp, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if !c.call("RunPodSandbox", err) {
		// A kubelet would look for a half-made sandbox by name and remove
		// it; berthd undoes one itself when it starts again.
		return ""
	}
	pod := resp.PodSandboxId
	c.mu.Lock()
	c.runs++
	c.mu.Unlock()
	cr, err := c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: tickerConfig("app"), SandboxConfig: cfg})
	if !c.call("CreateContainer", err) {
		return pod
	}
	if _, err := c.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cr.ContainerId}); c.call("StartContainer", err) {
		c.mu.Lock()
		c.running[cr.ContainerId] = pod
		c.mu.Unlock()
	}
	return pod
}

// remove stops and removes a pod; false if berthd did not confirm it.
func (c *chaosClient) remove(pod string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// From the moment it is asked, the stop may happen (berthd finishes
	// one a kill interrupted): the pod's containers are no longer
	// expected to run.
	c.mu.Lock()
	for ctr, p := range c.running {
		if p == pod {
			delete(c.running, ctr)
		}
	}
	c.mu.Unlock()
	if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); !c.call("StopPodSandbox", err) {
		return false
	}
	if _, err := c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); !c.call("RemovePodSandbox", err) {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.removed[pod] = true
	return true
}

// listPods returns berthd's pods by id.
func listPods(t *testing.T, d *daemon) map[string]*runtimeapi.PodSandbox {
	t.Helper()
	resp, err := d.RT.ListPodSandbox(ctxT(t), &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*runtimeapi.PodSandbox{}
	for _, p := range resp.Items {
		out[p.Id] = p
	}
	return out
}

// checkHostMatchesLists compares what berthd lists with what the host
// holds: every shim, network namespace, IP allocation, cgroup and mount
// of the test daemon belongs to a listed pod or container, and every
// ready pod has its shim, network namespace and IP.
func checkHostMatchesLists(t *testing.T, d *daemon, ipamDir string) {
	t.Helper()
	pods := listPods(t, d)
	ctrs, err := d.RT.ListContainers(ctxT(t), &runtimeapi.ListContainersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for id := range pods {
		ids[id] = true
	}
	for _, c := range ctrs.Containers {
		ids[c.Id] = true
		if _, ok := pods[c.PodSandboxId]; !ok {
			t.Errorf("container %s is listed in pod %s, which is not", c.Id, c.PodSandboxId)
		}
	}
	owner := func(s string) string {
		for id := range ids {
			if strings.Contains(s, id) || strings.Contains(s, "pod"+id[:16]) {
				return id
			}
		}
		return ""
	}
	shims := map[string]bool{}
	for _, pid := range berthd.ProcessesMentioning(d.State) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		line := strings.ReplaceAll(string(cmdline), "\x00", " ")
		if id := owner(line); id != "" {
			shims[id] = true
		} else {
			t.Errorf("process %d of no listed pod: %s", pid, line)
		}
	}
	netns, _ := os.ReadDir(filepath.Join(d.State, "netns"))
	nsOf := map[string]bool{}
	for _, e := range netns {
		if id := owner(e.Name()); id != "" {
			nsOf[id] = true
		} else {
			t.Errorf("network namespace %s of no listed pod", e.Name())
		}
	}
	ips := map[string]bool{}
	for _, p := range snapshotHost(t, "", ipamDir).ipam {
		ips[filepath.Base(p)] = true
	}
	for id, p := range pods {
		if p.State != runtimeapi.PodSandboxState_SANDBOX_READY {
			continue
		}
		if !shims[id] {
			t.Errorf("ready pod %s has no shim", id)
		}
		if !nsOf[id] {
			t.Errorf("ready pod %s has no network namespace", id)
		}
		st, err := d.RT.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id})
		if err != nil {
			t.Fatal(err)
		}
		ip := st.Status.GetNetwork().GetIp()
		if !ips[ip] {
			t.Errorf("ready pod %s: its IP %q is not allocated in host-local's store", id, ip)
		}
		delete(ips, ip)
	}
	if len(ips) > 0 {
		t.Errorf("IP allocations of no ready pod: %v", ips)
	}
	for _, cg := range berthd.CgroupChildren(d.CgroupPath) {
		if owner(cg) == "" {
			t.Errorf("cgroup %s of no listed pod or container", cg)
		}
	}
	for _, dir := range []string{d.State, d.Dir} {
		for _, m := range berthd.MountsUnder(dir) {
			if owner(m) == "" {
				t.Errorf("mount %s of no listed pod or container", m)
			}
		}
	}
}

// stateFiles lists the files under berthd's state and root directories,
// leaving out the image store's layers and blobs, which pulls add.
func stateFiles(t *testing.T, d *daemon) []string {
	t.Helper()
	var out []string
	for _, dir := range []string{d.State, filepath.Join(d.Dir, "root")} {
		_ = filepath.WalkDir(dir, func(p string, de os.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			rel, _ := filepath.Rel(d.Dir, p)
			if strings.HasPrefix(p, d.State) {
				rel = "state/" + strings.TrimPrefix(p, d.State)
			}
			switch {
			case strings.HasPrefix(rel, "root/layers"), strings.HasPrefix(rel, "root/blobs"):
				return filepath.SkipDir
			}
			out = append(out, rel)
			return nil
		})
	}
	slices.Sort(out)
	return out
}
