package cri_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/testutil"
)

// TestNoisyNeighbours: while one pod's CNI plugin hangs, a container
// ignores SIGTERM through its whole grace period, another forks until its
// pod's pids limit stops it and a third writes logs as fast as it can,
// berthd keeps answering every other call, and each of them ends as it
// should.
func TestNoisyNeighbours(t *testing.T) {
	testutil.Slow(t)
	n := newFaultNetwork(t, "bn", 218)
	d := startDaemon(t, daemonOptions{cniConfDir: n.confDir, extra: n.daemonExtra("1m")})
	n.withFault(t, false)
	pod := func(name string) (string, *runtimeapi.PodSandboxConfig) {
		cfg := d.podConfig(name)
		return d.runPod(t, cfg), cfg
	}
	quietPod, quietCfg := pod("quiet")
	quiet := d.run(t, quietPod, quietCfg, containerConfig("quiet", "", "sleep", "3600"))

	stubbornPod, stubbornCfg := pod("stubborn")
	stubborn := d.run(t, stubbornPod, stubbornCfg, containerConfig("stubborn", "", "sh", "-c",
		`trap 'echo ignoring TERM' TERM; echo ready; while true; do sleep 0.2; done`))

	// A pids limit on the pod's cgroup, as the kubelet's podPidsLimit.
	const pidsLimit = 64
	bombPod, bombCfg := pod("forkbomb")
	podCgroup := podCgroupPath(t, d, bombPod)
	writeCgroup(t, podCgroup, "pids.max", strconv.Itoa(pidsLimit))
	// The shell execs its sleep: a fork after the bomb's start fails at
	// the pids limit, and would end the container (exit 2).
	bomb := d.run(t, bombPod, bombCfg, containerConfig("bomb", "", "sh", "-c", `f() { f | f & }; f; exec sleep 3600`))

	floodPod, floodCfg := pod("flood")
	flood := d.run(t, floodPod, floodCfg, containerConfig("flood", "", "yes", "a log line written as fast as the container can"))
	floodLog := filepath.Join(floodCfg.LogDirectory, "flood.log")

	// The slow CNI plugin: a pod whose network setup hangs.
	n.withFault(t, true)
	n.setMode(t, "block-add")
	slowDone := make(chan error, 1)
	go func() {
		_, err := d.RT.RunPodSandbox(context.Background(), &runtimeapi.RunPodSandboxRequest{Config: d.podConfig("slow-network")})
		slowDone <- err
	}()
	pluginPid := n.blocked(t)

	// The stubborn container's grace period runs out in the storm.
	const grace = 8
	stopDone := make(chan error, 1)
	go func() {
		_, err := d.RT.StopContainer(context.Background(), &runtimeapi.StopContainerRequest{ContainerId: stubborn, Timeout: grace})
		stopDone <- err
	}()
	// The flood's log is rotated as the kubelet would, so that it cannot
	// fill the disk.
	rotateStop := make(chan struct{})
	var rotations, rotatedBytes int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-rotateStop:
				return
			case <-time.After(time.Second):
			}
			rotatedBytes += fileSize(floodLog)
			if err := os.Rename(floodLog, floodLog+".1"); err != nil {
				t.Errorf("rotate the flood's log: %v", err)
				return
			}
			if _, err := d.RT.ReopenContainerLog(ctxT(t), &runtimeapi.ReopenContainerLogRequest{ContainerId: flood}); err != nil {
				t.Errorf("ReopenContainerLog under the flood: %v", err)
				return
			}
			_ = os.Remove(floodLog + ".1")
			rotations++
		}
	}()

	// Meanwhile every other call is answered, each well within its time.
	var slowest time.Duration
	var calls int
	deadline := time.Now().Add(time.Duration(grace-2) * time.Second)
	for time.Now().Before(deadline) {
		for name, call := range map[string]func(ctx context.Context) error{
			"Version": func(ctx context.Context) error {
				_, err := d.RT.Version(ctx, &runtimeapi.VersionRequest{})
				return err
			},
			"ListPodSandbox": func(ctx context.Context) error {
				_, err := d.RT.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
				return err
			},
			"ListContainers": func(ctx context.Context) error {
				_, err := d.RT.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
				return err
			},
			"ContainerStatus": func(ctx context.Context) error {
				_, err := d.RT.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: quiet})
				return err
			},
			"ExecSync": func(ctx context.Context) error {
				r, err := d.RT.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: quiet, Cmd: []string{"echo", "ok"}, Timeout: 10})
				if err == nil && string(r.Stdout) != "ok\n" {
					err = fmt.Errorf("exec answered %q", r.Stdout)
				}
				return err
			},
			"ListContainerStats": func(ctx context.Context) error {
				_, err := d.RT.ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{})
				return err
			},
		} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			start := time.Now()
			err := call(ctx)
			cancel()
			if err != nil {
				t.Errorf("%s during the storm: %v", name, err)
			}
			slowest = max(slowest, time.Since(start))
			calls++
		}
	}
	t.Logf("%d calls answered during the storm, the slowest in %v", calls, slowest)

	// The stubborn container was killed when its grace period ran out.
	if err := <-stopDone; err != nil {
		t.Errorf("StopContainer of the container ignoring SIGTERM: %v", err)
	}
	if st := d.status(t, stubborn); st.State != runtimeapi.ContainerState_CONTAINER_EXITED || st.ExitCode != 137 {
		t.Errorf("container ignoring SIGTERM after its grace period: %v, exit code %d", st.State, st.ExitCode)
	}
	if data, _ := os.ReadFile(filepath.Join(stubbornCfg.LogDirectory, "stubborn.log")); !strings.Contains(string(data), "ignoring TERM") {
		t.Errorf("the stubborn container never saw SIGTERM; its log: %q", data)
	}
	// The fork bomb stayed within its pod's limit, and still runs.
	if got := readCgroup(t, podCgroup, "pids.current"); got > pidsLimit {
		t.Errorf("fork bomb pod has %d processes, over its limit of %d", got, pidsLimit)
	}
	if events := readCgroupFile(t, podCgroup, "pids.events"); !strings.Contains(events, "max") {
		t.Errorf("the fork bomb never reached its pids limit: pids.events %q", events)
	}
	if st := d.status(t, bomb); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("fork bomb container: %v", st.State)
	}
	// The flood was logged, in CRI format, through every rotation.
	close(rotateStop)
	wg.Wait()
	if rotations < 3 || rotatedBytes == 0 {
		t.Errorf("flood log: %d rotations, %d bytes", rotations, rotatedBytes)
	}
	checkCRILogLine(t, floodLog, "a log line written as fast as the container can")
	t.Logf("flood: %d MiB logged in %d rotations", rotatedBytes>>20, rotations)

	// The slow pod fails once its plugin gives up, and leaves nothing.
	n.setMode(t, "")
	n.release(t, pluginPid)
	if err := <-slowDone; err == nil {
		t.Errorf("RunPodSandbox succeeded though its CNI plugin failed")
	}
	// The noisy pods stop and go like any other.
	for _, p := range []string{bombPod, floodPod, stubbornPod, quietPod} {
		if _, err := d.RT.StopPodSandbox(ctxT(t), &runtimeapi.StopPodSandboxRequest{PodSandboxId: p}); err != nil {
			t.Errorf("stop pod %s: %v", p, err)
		}
		if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p}); err != nil {
			t.Errorf("remove pod %s: %v", p, err)
		}
	}
	if pods := listPods(t, d); len(pods) != 0 {
		t.Errorf("pods left: %v", pods)
	}
}

// checkCRILogLine checks that the log's first complete line is in the CRI
// format (time stream tag message) and carries the message.
func checkCRILogLine(t *testing.T, path, msg string) {
	t.Helper()
	// The last rotation may have just made the file: the container's
	// next line reaches it when the container is next scheduled, which
	// under a fork bomb and emulation can take a while.
	var data []byte
	deadline := time.Now().Add(testutil.Scaled(10 * time.Second))
	for {
		var err error
		if data, err = os.ReadFile(path); err != nil {
			t.Error(err)
			return
		}
		if bytes.Contains(data, []byte("\n")) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	line, _, ok := bytes.Cut(data, []byte("\n"))
	if !ok {
		t.Errorf("%s: no line after %v", path, testutil.Scaled(10*time.Second))
		return
	}
	fields := strings.SplitN(string(line), " ", 4)
	if len(fields) != 4 || fields[1] != "stdout" || (fields[2] != "F" && fields[2] != "P") || fields[3] != msg {
		t.Errorf("%s: first line %q is not a CRI log line of %q", path, line, msg)
	}
	if _, err := time.Parse(time.RFC3339Nano, fields[0]); err != nil {
		t.Errorf("%s: first line %q: %v", path, line, err)
	}
}

// podCgroupPath is the pids hierarchy's directory of a pod's cgroup.
func podCgroupPath(t *testing.T, d *daemon, pod string) string {
	t.Helper()
	rel := d.PodCgroupPath(pod)
	for _, p := range []string{"/sys/fs/cgroup/pids" + rel, "/sys/fs/cgroup" + rel} {
		if _, err := os.Stat(filepath.Join(p, "pids.max")); err == nil {
			return p
		}
	}
	t.Fatalf("no pids cgroup for pod %s (%s, cgroup %s)", pod, rel, cgroups.HostMode())
	return ""
}

func writeCgroup(t *testing.T, dir, file, value string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readCgroupFile(t *testing.T, dir, file string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

func readCgroup(t *testing.T, dir, file string) int {
	t.Helper()
	n, err := strconv.Atoi(readCgroupFile(t, dir, file))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
