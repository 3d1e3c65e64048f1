package cri_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	ocg "github.com/opencontainers/cgroups"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/testutil"
)

// What nodes on cgroup v2 have and v1 nodes have not, each read back from
// the cgroup files on the host. The VM tier runs them (make test-vm);
// on a v1 host they skip.

func requireV2(t *testing.T) {
	t.Helper()
	if cgroups.HostMode() != cgroups.Unified {
		t.Skipf("needs cgroup v2 (this host: %s); make test-vm runs it", cgroups.HostMode())
	}
}

// hostCgroupDir is the directory of a running container's cgroup on the
// host (the unified hierarchy on v2, the memory one on v1).
func (d *daemon) hostCgroupDir(t *testing.T, id string) string {
	t.Helper()
	p, err := testutil.ProcessCgroup(d.ContainerPid(t, id))
	if err != nil {
		t.Fatal(err)
	}
	if cgroups.HostMode() == cgroups.Unified {
		return filepath.Join("/sys/fs/cgroup", p)
	}
	return filepath.Join("/sys/fs/cgroup/memory", p)
}

// TestOOMGroupKill: where the kubelet asks for whole-container OOM kills
// (memory.oom.group, its default on v2, singleProcessOOMKill: false),
// every process of the container dies with the one that ran out; where
// it does not, only that one.
func TestOOMGroupKill(t *testing.T) {
	requireV2(t)
	d := startDaemon(t)
	podCfg := d.podConfig("oomgroup")
	pod := d.runPod(t, podCfg)
	// The hog is a subshell, not the container's init: with the group
	// kill off, the init lives on and waits for its sleep.
	hog := "sleep 3600 & echo started; (x=$(head -c 200000000 /dev/zero | tr '\\0' x); echo survived); echo after; wait"
	limits := func(group string) *runtimeapi.LinuxContainerResources {
		r := &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 32 << 20, MemorySwapLimitInBytes: 32 << 20}
		if group != "" {
			r.Unified = map[string]string{"memory.oom.group": group}
		}
		return r
	}

	cfg := containerConfig("group", "", "sh", "-c", hog)
	cfg.Linux.Resources = limits("1")
	c := d.run(t, pod, podCfg, cfg)
	st := d.waitExited(t, c, 2*time.Minute)
	if st.Reason != "OOMKilled" || st.ExitCode != 137 {
		t.Errorf("memory.oom.group 1: reason %q code %d, want OOMKilled and 137 (the shell killed too)", st.Reason, st.ExitCode)
	}

	// Without the group kill, the shell survives its subshell's OOM kill
	// and waits for its sleep, which nobody killed.
	cfg = containerConfig("single", "", "sh", "-c", hog)
	cfg.Linux.Resources = limits("0")
	c = d.run(t, pod, podCfg, cfg)
	d.waitLog(t, podCfg, "single", "started")
	dir := d.hostCgroupDir(t, c)
	eventually(t, 2*time.Minute, "the hog OOM-killed", func() error {
		for _, line := range strings.Split(readCgroupFile(t, dir, "memory.events"), "\n") {
			if n, ok := strings.CutPrefix(line, "oom_kill "); ok && n != "0" {
				return nil
			}
		}
		return errNotYet
	})
	d.waitLog(t, podCfg, "single", "after")
	if got := readCgroupFile(t, dir, "memory.oom.group"); got != "0" {
		t.Errorf("memory.oom.group %s, want 0", got)
	}
	if st := d.status(t, c); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("memory.oom.group 0: the container is %s; only the hog should have died", st.State)
	}
}

// TestSwapLimit: the kubelet's LimitedSwap gives a container a memory and
// swap limit (MemorySwapLimitInBytes is memory plus swap); v2 has the
// swap alone in memory.swap.max, and stats report the swap used.
func TestSwapLimit(t *testing.T) {
	requireV2(t)
	if !hostHasSwap(t) {
		t.Skip("no swap on this host (the VM tier makes a swap file)")
	}
	if !cgroups.SwapAccounting() {
		t.Skip("this kernel does not account swap per cgroup")
	}
	d := startDaemon(t)
	podCfg := d.podConfig("swap")
	pod := d.runPod(t, podCfg)
	// 48 MB of tmpfs (the pod's /dev/shm, swappable and charged to
	// the writer) in a 32 MiB container with 32 MiB of swap: swapped,
	// alive.
	cfg := containerConfig("swapper", "", "sh", "-c", "head -c 48000000 /dev/zero > /dev/shm/fill && echo filled; sleep 3600")
	cfg.Linux.Resources = &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 32 << 20, MemorySwapLimitInBytes: 64 << 20}
	c := d.run(t, pod, podCfg, cfg)
	eventually(t, 2*time.Minute, "the swapper filled its tmpfs", func() error {
		if !strings.Contains(string(readFile(filepath.Join(podCfg.LogDirectory, "swapper.log"))), " filled\n") {
			return errNotYet
		}
		return nil
	})
	dir := d.hostCgroupDir(t, c)
	if got := readCgroupFile(t, dir, "memory.swap.max"); got != strconv.Itoa(32<<20) {
		t.Errorf("memory.swap.max %s, want %d (swap only)", got, 32<<20)
	}
	used, _ := strconv.ParseUint(readCgroupFile(t, dir, "memory.swap.current"), 10, 64)
	if used == 0 {
		t.Fatal("memory.swap.current 0: nothing was swapped")
	}
	resp, err := d.RT.ContainerStats(ctxT(t), &runtimeapi.ContainerStatsRequest{ContainerId: c})
	if err != nil {
		t.Fatal(err)
	}
	swap := resp.Stats.GetSwap()
	if got := swap.GetSwapUsageBytes().GetValue(); got == 0 || got > 32<<20 {
		t.Errorf("stats swap usage %d, cgroup says %d", got, used)
	}
	if got := swap.GetSwapAvailableBytes().GetValue(); got > 32<<20 {
		t.Errorf("stats swap available %d, more than the limit", got)
	}
}

func hostHasSwap(t *testing.T) bool {
	t.Helper()
	data, err := os.ReadFile("/proc/swaps")
	if err != nil {
		t.Fatal(err)
	}
	return len(strings.Split(strings.TrimSpace(string(data)), "\n")) > 1
}

// TestPressureAndIOStats: container and pod stats carry the pressure
// stall information (PSI) of cpu, memory and io, as the kernel has it in
// the cgroup: the totals in nanoseconds, never ahead of what the cgroup
// file said just after.
func TestPressureAndIOStats(t *testing.T) {
	requireV2(t)
	d := startDaemon(t)
	podCfg := d.podConfig("psi")
	pod := d.runPod(t, podCfg)
	// Two busy loops on a tenth of a CPU stall on cpu; a page-cache
	// writer in 32 MiB stalls on memory and io.
	cfg := containerConfig("stall", "", "sh", "-c",
		"while true; do :; done & while true; do :; done & while true; do head -c 40000000 /dev/zero > /tmp/f; rm /tmp/f; done")
	cfg.Linux.Resources = &runtimeapi.LinuxContainerResources{CpuQuota: 10000, CpuPeriod: 100000, MemoryLimitInBytes: 32 << 20}
	c := d.run(t, pod, podCfg, cfg)
	dir := d.hostCgroupDir(t, c)

	var cs *runtimeapi.ContainerStats
	eventually(t, time.Minute, "cpu pressure in the container's stats", func() error {
		resp, err := d.RT.ContainerStats(ctxT(t), &runtimeapi.ContainerStatsRequest{ContainerId: c})
		if err != nil {
			return err
		}
		cs = resp.Stats
		if cs.GetCpu().GetPsi().GetSome().GetTotal() == 0 {
			return errNotYet
		}
		return nil
	})
	for _, r := range []struct {
		name string
		psi  *runtimeapi.PsiStats
	}{{"cpu", cs.GetCpu().GetPsi()}, {"memory", cs.GetMemory().GetPsi()}, {"io", cs.GetIo().GetPsi()}} {
		if r.psi == nil || r.psi.Some == nil || r.psi.Full == nil {
			t.Errorf("%s pressure missing from the container's stats: %+v", r.name, r.psi)
			continue
		}
		after := pressureTotal(t, readCgroupFile(t, dir, r.name+".pressure"))
		if got := time.Duration(r.psi.Some.Total); got > after {
			t.Errorf("%s pressure: stats say %v stalled, the cgroup file %v later", r.name, got, after)
		}
	}
	if cs.GetIo().GetTimestamp() == 0 {
		t.Error("io stats without a timestamp")
	}

	ps, err := d.RT.PodSandboxStats(ctxT(t), &runtimeapi.PodSandboxStatsRequest{PodSandboxId: pod})
	if err != nil {
		t.Fatal(err)
	}
	lx := ps.Stats.GetLinux()
	if lx.GetCpu().GetPsi() == nil || lx.GetMemory().GetPsi() == nil || lx.GetIo().GetPsi() == nil {
		t.Fatalf("pressure missing from the pod's stats: cpu %+v memory %+v io %+v", lx.GetCpu().GetPsi(), lx.GetMemory().GetPsi(), lx.GetIo().GetPsi())
	}
	// The pod's cgroup holds the container's: it stalled at least as long.
	if pod, ctr := lx.GetCpu().GetPsi().GetSome().GetTotal(), cs.GetCpu().GetPsi().GetSome().GetTotal(); pod < ctr {
		t.Errorf("pod cpu pressure %d below its container's %d", pod, ctr)
	}
}

// pressureTotal reads the "some" total of a PSI file (microseconds).
func pressureTotal(t *testing.T, data string) time.Duration {
	t.Helper()
	for _, line := range strings.Split(data, "\n") {
		if !strings.HasPrefix(line, "some ") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "total="); ok {
				us, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return time.Duration(us) * time.Microsecond
			}
		}
	}
	t.Fatalf("no some total in %q", data)
	return 0
}

// TestCPUWeightAndMax: the kubelet's CPU shares and quota land in v2's
// cpu.weight (converted as runc converts them) and cpu.max, and an
// update moves both.
func TestCPUWeightAndMax(t *testing.T) {
	requireV2(t)
	d := startDaemon(t)
	podCfg := d.podConfig("cpuweight")
	pod := d.runPod(t, podCfg)
	cfg := containerConfig("weighted", "", "sleep", "3600")
	cfg.Linux.Resources = &runtimeapi.LinuxContainerResources{CpuShares: 512, CpuQuota: 25000, CpuPeriod: 100000}
	c := d.run(t, pod, podCfg, cfg)
	dir := d.hostCgroupDir(t, c)
	if got, want := readCgroupFile(t, dir, "cpu.weight"), strconv.FormatUint(ocg.ConvertCPUSharesToCgroupV2Value(512), 10); got != want {
		t.Errorf("cpu.weight %s for 512 shares, want %s", got, want)
	}
	if got := readCgroupFile(t, dir, "cpu.max"); got != "25000 100000" {
		t.Errorf("cpu.max %q", got)
	}
	if _, err := d.RT.UpdateContainerResources(ctxT(t), &runtimeapi.UpdateContainerResourcesRequest{ContainerId: c,
		Linux: &runtimeapi.LinuxContainerResources{CpuShares: 2048, CpuQuota: 200000, CpuPeriod: 100000}}); err != nil {
		t.Fatal(err)
	}
	if got, want := readCgroupFile(t, dir, "cpu.weight"), strconv.FormatUint(ocg.ConvertCPUSharesToCgroupV2Value(2048), 10); got != want {
		t.Errorf("cpu.weight %s after an update to 2048 shares, want %s", got, want)
	}
	if got := readCgroupFile(t, dir, "cpu.max"); got != "200000 100000" {
		t.Errorf("cpu.max after the update %q", got)
	}
}

// TestDeviceController: a container opens the devices it was given and
// the defaults, and nothing else, however it gets a node for it: the
// device controller (an eBPF program on v2, devices.list on v1) refuses.
func TestDeviceController(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("devices")
	pod := d.runPod(t, podCfg)
	cfg := containerConfig("dev", "", "sleep", "3600")
	// /dev/loop-control (10:237) given as /dev/given.
	cfg.Devices = []*runtimeapi.Device{{HostPath: "/dev/loop-control", ContainerPath: "/dev/given", Permissions: "rw"}}
	c := d.run(t, pod, podCfg, cfg)
	if _, errOut, code := d.execSync(t, c, "sh", "-c", "exec 3<>/dev/given && exec 3<>/dev/null"); code != 0 {
		t.Errorf("opening a given device and a default one: %d %s", code, errOut)
	}
	// A node of a device never given (1:1, /dev/mem), made in the
	// container: mknod is allowed (CAP_MKNOD), opening it is not.
	out, errOut, code := d.execSync(t, c, "sh", "-c", "mknod /tmp/mem c 1 1 && (exec 3</tmp/mem); echo $?")
	if code != 0 || strings.TrimSpace(out) == "0" || !strings.Contains(errOut, "not permitted") {
		t.Errorf("open of /dev/mem's node made in the container: %q %q %d, want refused", out, errOut, code)
	}
}
