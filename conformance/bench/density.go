package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// memory is what a set of processes holds, in bytes: resident (RSS) and
// proportional (PSS: shared pages divided among their sharers).
type memory struct{ rss, pss int64 }

func (m *memory) add(o memory) { m.rss += o.rss; m.pss += o.pss }

// processMemory reads a process's RSS and PSS from smaps_rollup.
func processMemory(pid int) (memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return memory{}, err
	}
	defer f.Close()
	var m memory
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "Rss:":
			m.rss = kb << 10
		case "Pss:":
			m.pss = kb << 10
		}
	}
	return m, sc.Err()
}

// podOverhead sums the memory of what a runtime adds per pod: its shims
// (berth-shim; containerd-shim-runc-v2) and the pause processes in its
// pods' cgroups. The workload itself (the same sleep for both) is not
// counted.
func podOverhead(d *criDaemon) (mem memory, shims, pauses int, err error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return memory{}, 0, 0, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		switch {
		case d.shim(exe, string(cmdline)):
			shims++
		case strings.TrimSpace(string(comm)) == "pause" && inCgroup(pid, d.cgroupParent):
			pauses++
		default:
			continue
		}
		m, err := processMemory(pid)
		if err != nil {
			continue // gone meanwhile
		}
		mem.add(m)
	}
	return mem, shims, pauses, nil
}

// inCgroup reports whether a process is in a cgroup below parent in the
// memory hierarchy (v1) or the unified one.
func inCgroup(pid int, parent string) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) == 3 && (f[1] == "memory" || f[1] == "") && strings.HasPrefix(f[2], parent+"/") {
			return true
		}
	}
	return false
}

// densityFigures are the density benchmark's cases.
type densityFigures struct {
	pods int
	// perPod: RSS per pod at the numbers of pods it names.
	perPod                                               map[int]*Case
	create, teardown, pss, daemonMem, answers, recovered *Case
}

// memPoint is where the per-pod PSS is read: the kubelet's default
// max-pods, or all pods if fewer.
func (f *densityFigures) memPoint() int { return min(110, f.pods) }

// density starts pods pods with one sleeping container each through every
// daemon in turn, rounds times with the first daemon alternating, and
// measures the time it takes, the memory each pod costs at a few points
// on the way, and a restart of the daemon at the peak.
func (b *PodBench) density(ctx context.Context, daemons []*criDaemon, image string, pods, rounds int) []*Case {
	f := &densityFigures{pods: pods, perPod: map[int]*Case{}}
	note := fmt.Sprintf("%d pods, each with one `sleep` container, started one after another through each daemon in turn, %d rounds with the first daemon alternating. ", pods, rounds)
	f.create = &Case{Group: "Density", Name: fmt.Sprintf("start %d pods, one after another", pods), Unit: "s",
		Note: note + "RunPodSandbox + CreateContainer + StartContainer for each, in a row."}
	// A few, the kubelet's default max-pods (110) and the scale asked.
	points := []int{min(10, pods), f.memPoint(), pods}
	slices.Sort(points)
	points = slices.Compact(points)
	for _, n := range points {
		f.perPod[n] = &Case{Group: "Density", Name: fmt.Sprintf("RSS per pod at %d pods", n), Unit: "MiB",
			Note: "Resident memory of the processes the runtime adds per pod: its shim (berth-shim; containerd-shim-runc-v2) and the pause process, summed and divided by the pods; the workload is not counted. Shared pages count in every process (RSS)."}
	}
	f.perPod[f.memPoint()].Target = "at most 3.5 MiB at 110 pods (a C conmon and a pause: 2.8 MiB)"
	f.pss = &Case{Group: "Density", Name: fmt.Sprintf("PSS per pod at %d pods", f.memPoint()), Unit: "MiB",
		Target: "at most 1.0 MiB",
		Note:   "The same processes' proportional memory: pages shared between the shims (their binary's text) divided among them."}
	f.daemonMem = &Case{Group: "Density", Name: fmt.Sprintf("daemon RSS with %d pods", pods), Unit: "MiB",
		Note: "berthd; containerd (with its CRI plugin)."}
	f.teardown = &Case{Group: "Density", Name: fmt.Sprintf("stop and remove %d pods, one after another", pods), Unit: "s"}
	restartNote := fmt.Sprintf("With %d pods running, the daemon is killed (SIGKILL; its shims and pods go on) and started again; the time from the kill ", pods)
	f.answers = &Case{Group: "Density", Name: fmt.Sprintf("restart with %d pods: until Status answers", pods), Unit: "ms",
		Note: restartNote + "until the CRI Status call answers."}
	f.recovered = &Case{Group: "Density", Name: fmt.Sprintf("restart with %d pods: until every pod is listed", pods), Unit: "ms",
		Target: "0 errors",
		Note:   restartNote + "until ListPodSandbox shows every pod READY and ListContainers every container RUNNING, as before the kill."}
	for round := 0; round < rounds && ctx.Err() == nil; round++ {
		for _, d := range rotated(daemons, round) {
			b.densityRound(ctx, d, image, f)
		}
	}
	cases := []*Case{f.create, f.teardown}
	for _, n := range points {
		cases = append(cases, f.perPod[n])
	}
	return append(cases, f.pss, f.daemonMem, f.answers, f.recovered)
}

// densityRound is one daemon's share of a density round: pods started
// one by one, memory at the points f names, the restart at the peak,
// then every pod removed.
func (b *PodBench) densityRound(ctx context.Context, d *criDaemon, image string, f *densityFigures) {
	var started []*benchPod
	start := time.Now()
	failed := false
	for i := 0; i < f.pods && ctx.Err() == nil; i++ {
		p, err := b.startPod(ctx, d, image, fmt.Sprintf("density-%d", i))
		if err != nil {
			b.Log("%s: density pod %d: %v", d.name, i, err)
			f.create.SeriesFor(d.name).Errors++
			failed = true
			break
		}
		started = append(started, p)
		c, ok := f.perPod[len(started)]
		if !ok {
			continue
		}
		m, shims, pauses, err := podOverhead(d)
		if err != nil || shims == 0 || pauses != len(started) {
			b.Log("%s: at %d pods found %d shims and %d pause processes: %v", d.name, len(started), shims, pauses, err)
			c.SeriesFor(d.name).Errors++
			continue
		}
		c.SeriesFor(d.name).AddValue(mib(m.rss) / float64(len(started)))
		if len(started) == f.memPoint() {
			f.pss.SeriesFor(d.name).AddValue(mib(m.pss) / float64(len(started)))
		}
	}
	if !failed && len(started) == f.pods {
		f.create.SeriesFor(d.name).AddValue(time.Since(start).Seconds())
		if m, err := processMemory(d.pid); err == nil {
			f.daemonMem.SeriesFor(d.name).AddValue(mib(m.rss))
		}
		answers, recovered, err := b.restartWith(ctx, d, started)
		if err != nil {
			b.Log("%s: restart with %d pods: %v", d.name, len(started), err)
			f.recovered.SeriesFor(d.name).Errors++
		} else {
			f.answers.SeriesFor(d.name).Add(answers)
			f.recovered.SeriesFor(d.name).Add(recovered)
		}
	}
	start = time.Now()
	for _, p := range started {
		if _, err := b.removePod(context.Background(), d, p); err != nil {
			b.Log("%s: remove density pod: %v", d.name, err)
			failed = true
		}
	}
	if !failed {
		f.teardown.SeriesFor(d.name).AddValue(time.Since(start).Seconds())
	}
}

// restartWith kills d and starts it again with pods running, and times
// how long until it answers Status and until it lists them all as they
// were.
func (b *PodBench) restartWith(ctx context.Context, d *criDaemon, pods []*benchPod) (answers, recovered time.Duration, err error) {
	want := map[string]bool{}
	for _, p := range pods {
		want[p.id] = true
	}
	start := time.Now()
	if err := d.restart(ctx); err != nil {
		return 0, 0, err
	}
	deadline := start.Add(5 * time.Minute)
	poll := func(ok func(context.Context) (bool, error)) error {
		for {
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			done, err := ok(cctx)
			cancel()
			if done {
				return nil
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("not after %s: %v", time.Since(start).Round(time.Second), err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if err := poll(func(ctx context.Context) (bool, error) {
		_, err := d.rt.Status(ctx, &runtimeapi.StatusRequest{})
		return err == nil, err
	}); err != nil {
		return 0, 0, fmt.Errorf("Status: %w", err)
	}
	answers = time.Since(start)
	if err := poll(func(ctx context.Context) (bool, error) {
		sb, err := d.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		if err != nil {
			return false, err
		}
		ready := 0
		for _, s := range sb.Items {
			if want[s.Id] && s.State == runtimeapi.PodSandboxState_SANDBOX_READY {
				ready++
			}
		}
		if ready != len(want) {
			return false, fmt.Errorf("%d of %d pods listed ready", ready, len(want))
		}
		cs, err := d.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
		if err != nil {
			return false, err
		}
		running := 0
		for _, c := range cs.Containers {
			if want[c.PodSandboxId] && c.State == runtimeapi.ContainerState_CONTAINER_RUNNING {
				running++
			}
		}
		if running != len(want) {
			return false, fmt.Errorf("%d of %d containers listed running", running, len(want))
		}
		return true, nil
	}); err != nil {
		return 0, 0, err
	}
	return answers, time.Since(start), nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// concurrency starts n pods in parallel, then removes them in parallel,
// while another client lists pods and containers in a loop; every call's
// latency and every error are recorded.
func (b *PodBench) concurrency(ctx context.Context, daemons []*criDaemon, image string, n, rounds int) []*Case {
	calls := []string{"RunPodSandbox", "CreateContainer", "StartContainer", "StopPodSandbox", "RemovePodSandbox", "ListPodSandbox", "ListContainers"}
	cases := map[string]*Case{}
	var out []*Case
	for _, c := range calls {
		cases[c] = &Case{Group: "Concurrency", Name: c, Unit: "ms",
			Note: fmt.Sprintf("Each call's latency while %d pods are started in parallel and then removed in parallel, %d times, with a client listing pods and containers every 10 ms meanwhile.", n, rounds)}
		out = append(out, cases[c])
	}
	cases["RunPodSandbox"].Target = "no errors, p99 below containerd's"
	var mu sync.Mutex
	add := func(call, runtime string, d time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		s := cases[call].SeriesFor(runtime)
		if err != nil {
			s.Errors++
			b.Log("%s: %s: %v", runtime, call, err)
			return
		}
		s.Add(d)
	}
	for round := 0; round < rounds && ctx.Err() == nil; round++ {
		for _, d := range rotated(daemons, round) {
			stopList := make(chan struct{})
			var listers sync.WaitGroup
			listers.Add(1)
			go func() {
				defer listers.Done()
				// At a fixed pace, so that a faster daemon is not also
				// asked more often: a hundred listings a second, what
				// a busy node's kubelet and agents add up to.
				tick := time.NewTicker(10 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stopList:
						return
					case <-tick.C:
					}
					t := time.Now()
					_, err := d.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
					add("ListPodSandbox", d.name, time.Since(t), err)
					t = time.Now()
					_, err = d.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
					add("ListContainers", d.name, time.Since(t), err)
				}
			}()
			pods := make([]*benchPod, n)
			var wg sync.WaitGroup
			for i := range pods {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					p, err := b.startPod(ctx, d, image, fmt.Sprintf("parallel-%d-%d", round, i))
					if err != nil {
						call, _, _ := strings.Cut(err.Error(), ":")
						add(call, d.name, 0, err)
						return
					}
					add("RunPodSandbox", d.name, p.run, nil)
					add("CreateContainer", d.name, p.create, nil)
					add("StartContainer", d.name, p.st, nil)
					pods[i] = p
				}(i)
			}
			wg.Wait()
			for _, p := range pods {
				if p == nil {
					continue
				}
				wg.Add(1)
				go func(p *benchPod) {
					defer wg.Done()
					stop, remove, err := b.removePodTimed(context.Background(), d, p)
					if err != nil {
						call, _, _ := strings.Cut(err.Error(), ":")
						add(call, d.name, 0, err)
						return
					}
					add("StopPodSandbox", d.name, stop, nil)
					add("RemovePodSandbox", d.name, remove, nil)
				}(p)
			}
			wg.Wait()
			close(stopList)
			listers.Wait()
		}
	}
	return out
}
