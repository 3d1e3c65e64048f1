package cgroups

import (
	"errors"
	"slices"

	ocg "github.com/opencontainers/cgroups"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// MergeResources applies an OCI resources update to a container's current
// limits. Only what the update sets changes: a nil pointer, a zero number
// where zero means "unset", or an empty string keeps the current value.
// This is the contract of `runc update` and of the CRI's
// UpdateContainerResources. Devices are never changed by an update.
func MergeResources(dst *ocg.Resources, r *specs.LinuxResources) error {
	if dst == nil {
		return errors.New("merge resources: container has no cgroup configuration")
	}
	if r == nil {
		return nil
	}
	mergeMemory(dst, r.Memory)
	mergeCPU(dst, r.CPU)
	if r.Pids != nil && r.Pids.Limit != nil {
		limit := *r.Pids.Limit
		dst.PidsLimit = &limit
	}
	mergeBlockIO(dst, r.BlockIO)
	for _, h := range r.HugepageLimits {
		i := slices.IndexFunc(dst.HugetlbLimit, func(l *ocg.HugepageLimit) bool { return l.Pagesize == h.Pagesize })
		if i >= 0 {
			dst.HugetlbLimit[i].Limit = h.Limit
			continue
		}
		dst.HugetlbLimit = append(dst.HugetlbLimit, &ocg.HugepageLimit{Pagesize: h.Pagesize, Limit: h.Limit})
	}
	if len(r.Unified) > 0 {
		if dst.Unified == nil {
			dst.Unified = make(map[string]string, len(r.Unified))
		}
		for k, v := range r.Unified {
			dst.Unified[k] = v
		}
	}
	// An update never touches device rules: other components (device
	// plugins) may have added some that berth does not know of.
	dst.SkipDevices = true
	return nil
}

func mergeMemory(dst *ocg.Resources, m *specs.LinuxMemory) {
	if m == nil {
		return
	}
	if m.Limit != nil {
		dst.Memory = *m.Limit
		// Lifting the limit without saying anything of swap would leave
		// the old memsw limit below the new memory limit, which the kernel
		// refuses; 0 means "do not write swap".
		if *m.Limit == -1 && m.Swap == nil {
			dst.MemorySwap = 0
		}
	}
	if m.Reservation != nil {
		dst.MemoryReservation = *m.Reservation
	}
	if m.Swap != nil {
		dst.MemorySwap = *m.Swap
	}
	if m.Swappiness != nil {
		s := *m.Swappiness
		dst.MemorySwappiness = &s
	}
	if m.DisableOOMKiller != nil {
		dst.OomKillDisable = *m.DisableOOMKiller
	}
	if m.CheckBeforeUpdate != nil {
		dst.MemoryCheckBeforeUpdate = *m.CheckBeforeUpdate
	}
}

func mergeCPU(dst *ocg.Resources, c *specs.LinuxCPU) {
	if c == nil {
		return
	}
	// Quota and period only make sense together, and the systemd and v2
	// drivers need both: one given alone keeps the other's current value.
	if c.Period != nil && *c.Period != 0 {
		dst.CpuPeriod = *c.Period
	}
	if c.Quota != nil && *c.Quota != 0 {
		dst.CpuQuota = *c.Quota
	}
	if c.Burst != nil {
		b := *c.Burst
		dst.CpuBurst = &b
	}
	if c.Shares != nil && *c.Shares != 0 {
		dst.CpuShares = *c.Shares
		dst.CpuWeight = ocg.ConvertCPUSharesToCgroupV2Value(*c.Shares)
	}
	if c.RealtimePeriod != nil {
		dst.CpuRtPeriod = *c.RealtimePeriod
	}
	if c.RealtimeRuntime != nil {
		dst.CpuRtRuntime = *c.RealtimeRuntime
	}
	if c.Cpus != "" {
		dst.CpusetCpus = c.Cpus
	}
	if c.Mems != "" {
		dst.CpusetMems = c.Mems
	}
	if c.Idle != nil {
		idle := *c.Idle
		dst.CPUIdle = &idle
	}
}

func mergeBlockIO(dst *ocg.Resources, b *specs.LinuxBlockIO) {
	if b == nil {
		return
	}
	if b.Weight != nil {
		dst.BlkioWeight = *b.Weight
	}
	if b.LeafWeight != nil {
		dst.BlkioLeafWeight = *b.LeafWeight
	}
	for _, wd := range b.WeightDevice {
		i := slices.IndexFunc(dst.BlkioWeightDevice, func(d *ocg.WeightDevice) bool {
			return d.Major == wd.Major && d.Minor == wd.Minor
		})
		if i < 0 {
			dst.BlkioWeightDevice = append(dst.BlkioWeightDevice, ocg.NewWeightDevice(wd.Major, wd.Minor, 0, 0))
			i = len(dst.BlkioWeightDevice) - 1
		}
		if wd.Weight != nil {
			dst.BlkioWeightDevice[i].Weight = *wd.Weight
		}
		if wd.LeafWeight != nil {
			dst.BlkioWeightDevice[i].LeafWeight = *wd.LeafWeight
		}
	}
	dst.BlkioThrottleReadBpsDevice = upsertThrottle(dst.BlkioThrottleReadBpsDevice, b.ThrottleReadBpsDevice)
	dst.BlkioThrottleWriteBpsDevice = upsertThrottle(dst.BlkioThrottleWriteBpsDevice, b.ThrottleWriteBpsDevice)
	dst.BlkioThrottleReadIOPSDevice = upsertThrottle(dst.BlkioThrottleReadIOPSDevice, b.ThrottleReadIOPSDevice)
	dst.BlkioThrottleWriteIOPSDevice = upsertThrottle(dst.BlkioThrottleWriteIOPSDevice, b.ThrottleWriteIOPSDevice)
}

func upsertThrottle(devs []*ocg.ThrottleDevice, updates []specs.LinuxThrottleDevice) []*ocg.ThrottleDevice {
	for _, td := range updates {
		i := slices.IndexFunc(devs, func(d *ocg.ThrottleDevice) bool { return d.Major == td.Major && d.Minor == td.Minor })
		if i >= 0 {
			devs[i].Rate = td.Rate
			continue
		}
		devs = append(devs, ocg.NewThrottleDevice(td.Major, td.Minor, td.Rate))
	}
	return devs
}
