package cgroups

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	ocg "github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/fs"
	"github.com/opencontainers/cgroups/fs2"
	"github.com/opencontainers/cgroups/systemd"
)

// Stats are the figures of one cgroup that berth reports (CRI stats and
// metrics), named the same on v1 and v2.
type Stats struct {
	// CPUNanos is the cumulative CPU time of the cgroup.
	CPUNanos uint64
	// MemoryUsage counts page cache too; MemoryLimit is 0 or huge when
	// there is none.
	MemoryUsage, MemoryLimit uint64
	// InactiveFile is the page cache the kernel reclaims first: usage
	// minus it is the working set, what the kubelet evicts by.
	InactiveFile uint64
	// RSS is anonymous memory (v2 anon, v1 total_rss).
	RSS                         uint64
	PageFaults, MajorPageFaults uint64
	// SwapUsage and SwapLimit are the swap alone, without memory.
	SwapUsage, SwapLimit uint64
	// Processes is the number of tasks (pids.current).
	Processes uint64
	// CPUPressure, MemoryPressure and IOPressure are the cgroup's
	// pressure stall information; nil where the kernel keeps none for
	// it (cgroup v1, kernels before 4.20).
	CPUPressure, MemoryPressure, IOPressure *Pressure
}

// Pressure is the pressure stall information (PSI) of one resource:
// how long some (or all) of the cgroup's tasks waited for it.
type Pressure struct {
	Some, Full PressureFigures
}

// PressureFigures are the averages (percent of wall time over 10, 60 and
// 300 s) and the total time stalled.
type PressureFigures struct {
	Avg10, Avg60, Avg300 float64
	Total                time.Duration
}

// Add sums another cgroup's usage into s (a pod's pause and containers);
// limits and pressure are not summed (PodPressure reads a pod's).
func (s *Stats) Add(o Stats) {
	s.CPUNanos += o.CPUNanos
	s.MemoryUsage += o.MemoryUsage
	s.InactiveFile += o.InactiveFile
	s.RSS += o.RSS
	s.PageFaults += o.PageFaults
	s.MajorPageFaults += o.MajorPageFaults
	s.Processes += o.Processes
}

// FromLibrary converts the statistics of github.com/opencontainers/cgroups
// (what libcontainer reads) into berth's.
func FromLibrary(st *ocg.Stats) Stats {
	m := &st.MemoryStats
	// memory.stat names differ: v2 first, then v1's hierarchical totals.
	stat := func(v2, v1 string) uint64 {
		if v, ok := m.Stats[v2]; ok {
			return v
		}
		return m.Stats[v1]
	}
	return Stats{
		CPUNanos:        st.CpuStats.CpuUsage.TotalUsage,
		MemoryUsage:     m.Usage.Usage,
		MemoryLimit:     m.Usage.Limit,
		InactiveFile:    stat("inactive_file", "total_inactive_file"),
		RSS:             stat("anon", "total_rss"),
		PageFaults:      stat("pgfault", "total_pgfault"),
		MajorPageFaults: stat("pgmajfault", "total_pgmajfault"),
		SwapUsage:       m.SwapOnlyUsage.Usage,
		SwapLimit:       m.SwapOnlyUsage.Limit,
		Processes:       st.PidsStats.Current,
		CPUPressure:     pressureFromLibrary(st.CpuStats.PSI),
		MemoryPressure:  pressureFromLibrary(m.PSI),
		IOPressure:      pressureFromLibrary(st.BlkioStats.PSI),
	}
}

// OOMKillCount is how many processes the kernel's OOM killer killed in a
// cgroup, given its paths by controller ("" for the v2 directory), as
// libcontainer reports them.
func OOMKillCount(paths map[string]string) (uint64, error) {
	if HostMode() == Unified {
		return fs2.OOMKillCount(paths[""])
	}
	return fs.OOMKillCount(paths["memory"])
}

// pressureFromLibrary converts a PSI file as the library reads it.
func pressureFromLibrary(p *ocg.PSIStats) *Pressure {
	if p == nil {
		return nil
	}
	conv := func(d ocg.PSIData) PressureFigures {
		// The kernel counts the total in microseconds.
		return PressureFigures{Avg10: d.Avg10, Avg60: d.Avg60, Avg300: d.Avg300, Total: time.Duration(d.Total) * time.Microsecond}
	}
	return &Pressure{Some: conv(p.Some), Full: conv(p.Full)}
}

// PodPressure reads the pressure stall information of a pod's cgroup
// parent (a path for cgroupfs, a slice for systemd), which a sum of its
// containers' figures cannot give. On cgroup v1 every figure is nil.
func PodPressure(d Driver, parent string) (cpu, memory, io *Pressure, err error) {
	if HostMode() != Unified {
		return nil, nil, nil, nil
	}
	rel := parent
	if d == Systemd {
		if rel, err = systemd.ExpandSlice(parent); err != nil {
			return nil, nil, nil, err
		}
	}
	dir := filepath.Join("/sys/fs/cgroup", rel)
	var ps [3]*Pressure
	for i, f := range []string{"cpu.pressure", "memory.pressure", "io.pressure"} {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if errors.Is(err, os.ErrNotExist) {
			if _, err := os.Stat(dir); err != nil {
				return nil, nil, nil, fmt.Errorf("pod cgroup: %w", err)
			}
			// No PSI for this cgroup (CONFIG_PSI off, cgroup.pressure 0).
			continue
		}
		if err != nil {
			return nil, nil, nil, fmt.Errorf("pod cgroup: %w", err)
		}
		if ps[i], err = parsePressure(string(data)); err != nil {
			return nil, nil, nil, fmt.Errorf("pod cgroup %s/%s: %w", dir, f, err)
		}
	}
	return ps[0], ps[1], ps[2], nil
}

// parsePressure reads a PSI file:
//
//	some avg10=0.00 avg60=0.00 avg300=0.00 total=0
//	full avg10=0.00 avg60=0.00 avg300=0.00 total=0
func parsePressure(data string) (*Pressure, error) {
	var p Pressure
	for _, line := range strings.Split(strings.TrimSpace(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		var f *PressureFigures
		switch fields[0] {
		case "some":
			f = &p.Some
		case "full":
			f = &p.Full
		default:
			return nil, fmt.Errorf("unknown line %q", line)
		}
		for _, kv := range fields[1:] {
			k, v, _ := strings.Cut(kv, "=")
			var err error
			switch k {
			case "avg10":
				f.Avg10, err = strconv.ParseFloat(v, 64)
			case "avg60":
				f.Avg60, err = strconv.ParseFloat(v, 64)
			case "avg300":
				f.Avg300, err = strconv.ParseFloat(v, 64)
			case "total":
				var us uint64
				us, err = strconv.ParseUint(v, 10, 64)
				f.Total = time.Duration(us) * time.Microsecond
			}
			if err != nil {
				return nil, fmt.Errorf("%q: %w", kv, err)
			}
		}
	}
	return &p, nil
}

// ProcessPaths are the cgroup directories a running process is in, by
// controller (v1) or under "" (v2), as libcontainer keeps them for its
// own containers: how berth finds the cgroup of a container another OCI
// runtime made.
func ProcessPaths(pid int) (map[string]string, error) {
	rel, err := ocg.ParseCgroupFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, err
	}
	if HostMode() == Unified {
		p, ok := rel[""]
		if !ok {
			return nil, fmt.Errorf("process %d: no cgroup v2 path", pid)
		}
		return map[string]string{"": filepath.Join("/sys/fs/cgroup", p)}, nil
	}
	paths := map[string]string{}
	for subsys, p := range rel {
		if subsys == "" || strings.HasPrefix(subsys, "name=") {
			continue
		}
		// A comounted pair (cpu,cpuacct) is one directory for each.
		for _, s := range strings.Split(subsys, ",") {
			mnt, err := ocg.FindCgroupMountpoint("", s)
			if err != nil {
				continue
			}
			paths[s] = filepath.Join(mnt, p)
		}
	}
	return paths, nil
}

// StatsOf reads the figures of a cgroup given its paths (ProcessPaths).
func StatsOf(paths map[string]string) (Stats, error) {
	var (
		st  *ocg.Stats
		err error
	)
	cfg := &ocg.Cgroup{Resources: &ocg.Resources{}}
	if HostMode() == Unified {
		var m *fs2.Manager
		if m, err = fs2.NewManager(cfg, paths[""]); err == nil {
			st, err = m.GetStats()
		}
	} else {
		var m ocg.Manager
		if m, err = fs.NewManager(cfg, paths); err == nil {
			st, err = m.GetStats()
		}
	}
	if err != nil {
		return Stats{}, err
	}
	return FromLibrary(st), nil
}
