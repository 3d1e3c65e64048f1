package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	ocg "github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/types"
	"github.com/urfave/cli"

	"github.com/berth-runtime/berth/runtime"
)

var eventsCommand = cli.Command{
	Name:  "events",
	Usage: "display container events such as OOM notifications, cpu, memory, and IO usage statistics",
	ArgsUsage: `<container-id>

Where "<container-id>" is the name for the instance of the container.`,
	Description: `The events command displays information about the container. By default the
information is displayed once every 5 seconds.`,
	Flags: []cli.Flag{
		cli.DurationFlag{Name: "interval", Value: 5 * time.Second, Usage: "set the stats collection interval"},
		cli.BoolFlag{Name: "stats", Usage: "display the container's stats then exit"},
	},
	Action: func(ctx *cli.Context) error {
		if err := checkArgs(ctx, 1, exactArgs); err != nil {
			return err
		}
		interval := ctx.Duration("interval")
		if interval <= 0 {
			return errors.New("duration interval must be greater than 0")
		}
		_, c, err := loadContainer(ctx)
		if err != nil {
			return err
		}
		status, err := c.Status()
		if err != nil {
			return err
		}
		if status == runtime.StatusStopped {
			return fmt.Errorf("container with id %s is not running", c.ID())
		}
		enc := json.NewEncoder(os.Stdout)
		if ctx.Bool("stats") {
			s, err := c.Stats()
			if err != nil {
				return err
			}
			return enc.Encode(&types.Event{Type: "stats", ID: c.ID(), Data: convertStats(s)})
		}
		return streamEvents(c, interval, enc)
	},
}

// streamEvents prints stats every interval and each OOM kill, until the
// container's cgroup goes away.
func streamEvents(c *runtime.Container, interval time.Duration, enc *json.Encoder) error {
	oom, err := c.NotifyOOM()
	if err != nil {
		return err
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case _, ok := <-oom:
			if !ok {
				return nil
			}
			if err := enc.Encode(&types.Event{Type: "oom", ID: c.ID()}); err != nil {
				return err
			}
		case <-tick.C:
			s, err := c.Stats()
			if err != nil {
				logger.Error("read stats", "container", c.ID(), "error", err)
				continue
			}
			if err := enc.Encode(&types.Event{Type: "stats", ID: c.ID(), Data: convertStats(s)}); err != nil {
				return err
			}
		}
	}
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
