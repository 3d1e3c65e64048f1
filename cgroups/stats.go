package cgroups

import (
	ocg "github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/fs"
	"github.com/opencontainers/cgroups/fs2"
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
}

// Add sums another cgroup's usage into s (a pod's pause and containers);
// limits are not summed.
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
