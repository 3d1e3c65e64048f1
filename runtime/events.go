package runtime

import (
	"fmt"

	ocg "github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/types"
)

// Event and EventStats are what `berth events` prints: runc's events
// JSON, which engines parse, re-exported so that no package but this one
// imports runc's.
type (
	Event      = types.Event
	EventStats = types.Stats
)

// EventStats reads the container's cgroup figures as runc's events
// JSON has them; nil when the container has no cgroup statistics.
func (c *Container) EventStats() (*EventStats, error) {
	s, err := c.c.Stats()
	if err != nil {
		return nil, fmt.Errorf("container %s: stats: %w", c.ID(), err)
	}
	return convertStats(s), nil
}

// convertStats turns libcontainer's figures into runc's events JSON.
func convertStats(ls *libcontainer.Stats) *types.Stats {
	cg := ls.CgroupStats
	if cg == nil {
		return nil
	}
	var s types.Stats
	s.Pids.Current = cg.PidsStats.Current
	s.Pids.Limit = cg.PidsStats.Limit

	u := cg.CpuStats.CpuUsage
	s.CPU.Usage.Kernel = u.UsageInKernelmode
	s.CPU.Usage.User = u.UsageInUsermode
	s.CPU.Usage.Total = u.TotalUsage
	s.CPU.Usage.Percpu = u.PercpuUsage
	s.CPU.Usage.PercpuKernel = u.PercpuUsageInKernelmode
	s.CPU.Usage.PercpuUser = u.PercpuUsageInUsermode
	s.CPU.Throttling.Periods = cg.CpuStats.ThrottlingData.Periods
	s.CPU.Throttling.ThrottledPeriods = cg.CpuStats.ThrottlingData.ThrottledPeriods
	s.CPU.Throttling.ThrottledTime = cg.CpuStats.ThrottlingData.ThrottledTime
	s.CPU.PSI = cg.CpuStats.PSI
	s.CPUSet = types.CPUSet(cg.CPUSetStats)

	m := cg.MemoryStats
	s.Memory.Cache = m.Cache
	s.Memory.Kernel = memoryEntry(m.KernelUsage)
	s.Memory.KernelTCP = memoryEntry(m.KernelTCPUsage)
	s.Memory.Swap = memoryEntry(m.SwapUsage)
	s.Memory.Usage = memoryEntry(m.Usage)
	s.Memory.Raw = m.Stats
	s.Memory.PSI = m.PSI

	b := cg.BlkioStats
	s.Blkio.IoServiceBytesRecursive = blkioEntries(b.IoServiceBytesRecursive)
	s.Blkio.IoServicedRecursive = blkioEntries(b.IoServicedRecursive)
	s.Blkio.IoQueuedRecursive = blkioEntries(b.IoQueuedRecursive)
	s.Blkio.IoServiceTimeRecursive = blkioEntries(b.IoServiceTimeRecursive)
	s.Blkio.IoWaitTimeRecursive = blkioEntries(b.IoWaitTimeRecursive)
	s.Blkio.IoMergedRecursive = blkioEntries(b.IoMergedRecursive)
	s.Blkio.IoTimeRecursive = blkioEntries(b.IoTimeRecursive)
	s.Blkio.SectorsRecursive = blkioEntries(b.SectorsRecursive)
	s.Blkio.PSI = b.PSI

	s.Hugetlb = make(map[string]types.Hugetlb, len(cg.HugetlbStats))
	for k, v := range cg.HugetlbStats {
		s.Hugetlb[k] = types.Hugetlb{Usage: v.Usage, Max: v.MaxUsage, Failcnt: v.Failcnt}
	}
	s.NetworkInterfaces = ls.Interfaces
	return &s
}

func memoryEntry(c ocg.MemoryData) types.MemoryEntry {
	return types.MemoryEntry{Limit: c.Limit, Usage: c.Usage, Max: c.MaxUsage, Failcnt: c.Failcnt}
}

func blkioEntries(c []ocg.BlkioStatEntry) []types.BlkioEntry {
	out := make([]types.BlkioEntry, 0, len(c))
	for _, e := range c {
		out = append(out, types.BlkioEntry(e))
	}
	return out
}
