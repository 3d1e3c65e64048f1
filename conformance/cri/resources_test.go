package cri_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/testutil"
)

// cgroupValue reads a cgroup file of the container from inside it: v1
// shows the container's own cgroup at /sys/fs/cgroup/<controller>, v2
// (with a cgroup namespace) at /sys/fs/cgroup.
func (d *daemon) cgroupValue(t *testing.T, id, v1, v2 string) string {
	t.Helper()
	path := "/sys/fs/cgroup/" + v2
	if cgroups.HostMode() != cgroups.Unified {
		path = "/sys/fs/cgroup/" + v1
	}
	return strings.TrimSpace(d.mustExec(t, id, "cat", path))
}

func TestResources(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("resources")
	var podCgroup string
	podCfg.Linux.CgroupParent, podCgroup = d.KubeletPodParent("burstable", podCfg.Metadata.Uid)
	pod := d.runPod(t, podCfg)

	cfg := containerConfig("limited", "", "sleep", "3600")
	cfg.Linux.Resources = &runtimeapi.LinuxContainerResources{
		CpuShares: 512, CpuQuota: 50000, CpuPeriod: 100000, CpusetCpus: "0",
		MemoryLimitInBytes: 64 << 20, OomScoreAdj: 500,
	}
	c := d.run(t, pod, podCfg, cfg)

	if got := d.cgroupValue(t, c, "memory/memory.limit_in_bytes", "memory.max"); got != strconv.Itoa(64<<20) {
		t.Errorf("memory limit %s", got)
	}
	if cgroups.HostMode() != cgroups.Unified {
		if got := d.cgroupValue(t, c, "cpu/cpu.shares", ""); got != "512" {
			t.Errorf("cpu.shares %s", got)
		}
		if got := d.cgroupValue(t, c, "cpu/cpu.cfs_quota_us", ""); got != "50000" {
			t.Errorf("cpu.cfs_quota_us %s", got)
		}
	} else if got := d.cgroupValue(t, c, "", "cpu.max"); got != "50000 100000" {
		t.Errorf("cpu.max %s", got)
	}
	if got := d.cgroupValue(t, c, "cpuset/cpuset.cpus", "cpuset.cpus"); got != "0" {
		t.Errorf("cpuset.cpus %s", got)
	}
	if got := strings.TrimSpace(d.mustExec(t, c, "cat", "/proc/self/oom_score_adj")); got != "500" {
		t.Errorf("oom_score_adj %s", got)
	}
	// The pod's cgroup is where the kubelet asked for it.
	if !cgroups.Exists(podCgroup) {
		t.Errorf("pod cgroup %s missing", podCgroup)
	}

	// A live update.
	_, err := d.RT.UpdateContainerResources(ctxT(t), &runtimeapi.UpdateContainerResourcesRequest{ContainerId: c,
		Linux: &runtimeapi.LinuxContainerResources{CpuShares: 256, MemoryLimitInBytes: 96 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	if got := d.cgroupValue(t, c, "memory/memory.limit_in_bytes", "memory.max"); got != strconv.Itoa(96<<20) {
		t.Errorf("memory limit after update %s", got)
	}
	st, err := d.RT.ContainerStatus(ctxT(t), &runtimeapi.ContainerStatusRequest{ContainerId: c})
	if err != nil {
		t.Fatal(err)
	}
	if st.Status.GetResources().GetLinux().GetMemoryLimitInBytes() != 96<<20 {
		t.Errorf("status resources after update: %+v", st.Status.GetResources())
	}
	// berthctl update, as crictl's: what it does not name stays.
	d.berthctl(t, "update", "--memory", "80Mi", c)
	if got := d.cgroupValue(t, c, "memory/memory.limit_in_bytes", "memory.max"); got != strconv.Itoa(80<<20) {
		t.Errorf("memory limit after berthctl update %s", got)
	}
	if cgroups.HostMode() != cgroups.Unified {
		if got := d.cgroupValue(t, c, "cpu/cpu.shares", ""); got != "256" {
			t.Errorf("cpu.shares after an update of the memory only: %s", got)
		}
	}
	st, err = d.RT.ContainerStatus(ctxT(t), &runtimeapi.ContainerStatusRequest{ContainerId: c})
	if err != nil {
		t.Fatal(err)
	}
	if l := st.Status.GetResources().GetLinux(); l.GetMemoryLimitInBytes() != 80<<20 || l.GetCpuShares() != 256 || l.GetCpuQuota() != 50000 {
		t.Errorf("status resources after an update of the memory only: %+v", l)
	}
	if _, errOut, err := d.berthctlErr(t, "update", c); err == nil || !strings.Contains(errOut, "needs a resource") {
		t.Errorf("berthctl update without a resource: %v %q", err, errOut)
	}
	_, err = d.RT.UpdateContainerResources(ctxT(t), &runtimeapi.UpdateContainerResourcesRequest{ContainerId: c,
		Linux: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: -5}})
	wantCode(t, err, codes.InvalidArgument, "negative memory limit")

	// Stats: the container's and the pod's.
	d.mustExec(t, c, "sh", "-c", "head -c 20000000 /dev/zero > /tmp/fill; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")
	var cs *runtimeapi.ContainerStats
	eventually(t, 15*time.Second, "container stats", func() error {
		resp, err := d.RT.ContainerStats(ctxT(t), &runtimeapi.ContainerStatsRequest{ContainerId: c})
		if err != nil {
			return err
		}
		cs = resp.Stats
		if cs.GetCpu().GetUsageCoreNanoSeconds().GetValue() == 0 || cs.GetMemory().GetWorkingSetBytes().GetValue() == 0 ||
			cs.GetWritableLayer().GetUsedBytes().GetValue() < 20000000 {
			return errNotYet
		}
		return nil
	})
	if cs.Attributes.GetId() != c || cs.Attributes.GetMetadata().GetName() != "limited" {
		t.Errorf("stats attributes %+v", cs.Attributes)
	}
	list, err := d.RT.ListContainerStats(ctxT(t), &runtimeapi.ListContainerStatsRequest{Filter: &runtimeapi.ContainerStatsFilter{PodSandboxId: pod}})
	if err != nil || len(list.Stats) != 1 || list.Stats[0].Attributes.Id != c {
		t.Errorf("ListContainerStats: %v %+v", err, list)
	}
	ps, err := d.RT.PodSandboxStats(ctxT(t), &runtimeapi.PodSandboxStatsRequest{PodSandboxId: pod})
	if err != nil {
		t.Fatal(err)
	}
	if ps.Stats.GetLinux().GetMemory().GetWorkingSetBytes().GetValue() == 0 || ps.Stats.GetLinux().GetProcess().GetProcessCount().GetValue() < 2 ||
		len(ps.Stats.GetLinux().GetContainers()) != 1 {
		t.Errorf("PodSandboxStats: %+v", ps.Stats)
	}
	descs, err := d.RT.ListMetricDescriptors(ctxT(t), &runtimeapi.ListMetricDescriptorsRequest{})
	if err != nil || len(descs.GetDescriptors()) == 0 {
		t.Fatalf("ListMetricDescriptors: %v %+v", err, descs)
	}
	described := map[string]*runtimeapi.MetricDescriptor{}
	for _, md := range descs.Descriptors {
		if md.Name == "" || md.Help == "" {
			t.Errorf("descriptor without a name or help: %+v", md)
		}
		described[md.Name] = md
	}
	pm, err := d.RT.ListPodSandboxMetrics(ctxT(t), &runtimeapi.ListPodSandboxMetricsRequest{})
	if err != nil || len(pm.PodMetrics) != 1 || pm.PodMetrics[0].PodSandboxId != pod || len(pm.PodMetrics[0].ContainerMetrics) != 1 {
		t.Fatalf("ListPodSandboxMetrics: %v %+v", err, pm)
	}
	// Every metric reported is described, with the labels it carries.
	var reported []*runtimeapi.Metric
	reported = append(reported, pm.PodMetrics[0].Metrics...)
	for _, cm := range pm.PodMetrics[0].ContainerMetrics {
		reported = append(reported, cm.Metrics...)
	}
	if len(reported) == 0 {
		t.Fatal("ListPodSandboxMetrics reported no metric")
	}
	for _, m := range reported {
		md, ok := described[m.Name]
		if !ok {
			t.Errorf("metric %s is reported but not described by ListMetricDescriptors", m.Name)
			continue
		}
		if len(m.LabelValues) != len(md.LabelKeys) {
			t.Errorf("metric %s has %d label values, its descriptor %d keys (%v)", m.Name, len(m.LabelValues), len(md.LabelKeys), md.LabelKeys)
		}
	}

	// The kubelet owns the pod cgroups it names: after the pod is gone it
	// removes them, and so does this test.
	if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
	if err := d.RemoveKubeletCgroups(); err != nil {
		t.Errorf("remove the kubelet's cgroups: %v (a process left in them?)", err)
	}
}

// TestOOMKilled: a container over its memory limit is killed by the
// kernel, and the kubelet learns why.
func TestOOMKilled(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("oom")
	pod := d.runPod(t, podCfg)
	cfg := containerConfig("hog", "", "sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' x); echo survived")
	cfg.Linux.Resources = &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 32 << 20, MemorySwapLimitInBytes: 32 << 20}
	c := d.run(t, pod, podCfg, cfg)
	st := d.waitExited(t, c, 60*time.Second)
	if st.Reason != "OOMKilled" || st.ExitCode == 0 {
		data, _ := os.ReadFile(st.LogPath)
		t.Errorf("reason %q code %d, want OOMKilled; log:\n%s", st.Reason, st.ExitCode, data)
	}
}

// TestStopSignalAndTimeout: the image's stop signal is sent first; a
// container that ignores it is killed after the timeout.
func TestStopSignalAndTimeout(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("stopsig")
	pod := d.runPod(t, podCfg)
	ctx := ctxT(t)

	// tools' stop signal is SIGUSR1: the trap answers it with exit 42.
	c := d.run(t, pod, podCfg, containerConfig("graceful", suite.tools,
		`trap "exit 42" USR1; trap "exit 15" TERM; echo trapped; while true; do sleep 0.1; done`))
	d.waitLog(t, podCfg, "graceful", "trapped")
	if _, err := d.RT.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: c, Timeout: 30}); err != nil {
		t.Fatal(err)
	}
	if st := d.status(t, c); st.ExitCode != 42 {
		t.Errorf("exit code %d after stop, want 42 (the image's SIGUSR1)", st.ExitCode)
	}

	// One that ignores SIGTERM: SIGKILL after 1s.
	stubborn := d.run(t, pod, podCfg, containerConfig("stubborn", "", "sh", "-c", `trap "" TERM; echo trapped; while true; do sleep 0.1; done`))
	d.waitLog(t, podCfg, "stubborn", "trapped")
	if _, err := d.RT.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: stubborn, Timeout: 1}); err != nil {
		t.Fatal(err)
	}
	if st := d.status(t, stubborn); st.ExitCode != 137 || st.State != runtimeapi.ContainerState_CONTAINER_EXITED {
		t.Errorf("after stop with timeout: %v code %d, want 137", st.State, st.ExitCode)
	}
	// Stopping again, and stopping an unknown container, succeed.
	for _, id := range []string{stubborn, "no-such-container"} {
		if _, err := d.RT.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 1}); err != nil {
			t.Errorf("StopContainer %s again: %v", id, err)
		}
	}
}

// waitLog waits until a container's log has a line with text: a shell
// has set its traps only once it says so.
func (d *daemon) waitLog(t *testing.T, podCfg *runtimeapi.PodSandboxConfig, name, text string) {
	t.Helper()
	eventually(t, 20*time.Second, name+" logged "+text, func() error {
		if !strings.Contains(string(readFile(filepath.Join(podCfg.LogDirectory, name+".log"))), " "+text+"\n") {
			return errNotYet
		}
		return nil
	})
}

// TestCgroupParentForms: a pod's cgroup parent in every form the kubelet,
// CRI test clients and hand-written pod configs send for the driver, as
// containerd and CRI-O take them; the pod's processes land in it. The
// other driver's form is refused, saying what the driver wants.
func TestCgroupParentForms(t *testing.T) {
	d := startDaemon(t)
	type form struct {
		name, parent, path string
		remove             func() error
	}
	var ok []form
	var bad string
	if d.Driver == cgroups.Systemd {
		kubelet, kubeletPath := d.KubeletPodParent("besteffort", "forms-uid")
		hand := testutil.SubSlice(fmt.Sprintf("hand%dx1", os.Getpid()))
		bare := testutil.SubSlice(fmt.Sprintf("hand%dx2", os.Getpid()))
		ok = []form{
			{"the kubelet's expanded path", kubelet, kubeletPath, d.RemoveKubeletCgroups},
			{"a path to a slice", "/" + hand, testutil.SlicePath(hand), func() error { return testutil.StopSlice(hand) }},
			{"a slice name", bare, testutil.SlicePath(bare), func() error { return testutil.StopSlice(bare) }},
		}
		bad = "/kubepods/besteffort/podx"
	} else {
		parent, path := d.KubeletPodParent("besteffort", "forms-uid")
		ok = []form{{"the kubelet's path", parent, path, d.RemoveKubeletCgroups}}
		bad = "kubepods-besteffort-podx.slice"
	}
	for i, f := range ok {
		podCfg := d.podConfig(fmt.Sprintf("forms%d", i))
		podCfg.Linux.CgroupParent = f.parent
		pod := d.runPod(t, podCfg)
		c := d.run(t, pod, podCfg, containerConfig("c", "", "sleep", "3600"))
		got, err := testutil.ProcessCgroup(d.ContainerPid(t, c))
		if err != nil || !strings.HasPrefix(got, f.path+"/") {
			t.Errorf("%s %q: the container's cgroup is %q (%v), want one under %s", f.name, f.parent, got, err, f.path)
		}
		if d.Driver == cgroups.Systemd {
			// A scope of systemd's, its subtree delegated to the
			// container (runc's and the kubelet's expectation).
			unit := filepath.Base(got)
			out, err := exec.Command("systemctl", "show", "-p", "Delegate", "-p", "ActiveState", unit).CombinedOutput()
			if err != nil || !strings.HasSuffix(unit, ".scope") || !strings.Contains(string(out), "Delegate=yes") || !strings.Contains(string(out), "ActiveState=active") {
				t.Errorf("%s: the container's unit %s: %v %q, want an active scope with Delegate=yes", f.name, unit, err, out)
			}
		}
		if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
			t.Fatal(err)
		}
		// The parent is the kubelet's or the person's to remove.
		if err := f.remove(); err != nil {
			t.Error(err)
		}
	}
	podCfg := d.podConfig("forms-bad")
	podCfg.Linux.CgroupParent = bad
	_, err := d.RT.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{Config: podCfg})
	wantCode(t, err, codes.InvalidArgument, fmt.Sprintf("cgroup parent %q with the %s driver", bad, d.Driver))
	if err != nil && !strings.Contains(err.Error(), "driver wants") {
		t.Errorf("error for %q: %v", bad, err)
	}
}
