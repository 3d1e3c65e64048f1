package cri

import (
	"strings"
	"sync"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
)

// statsCache keeps what stats need between calls: the previous CPU sample
// of each cgroup (for usage_nano_cores) and writable-layer sizes, which
// take a walk of the layer to measure.
type statsCache struct {
	mu    sync.Mutex
	cpu   map[string]cpuSample
	disk  map[string]diskSample
	ttl   time.Duration
	clock func() time.Time
}

type cpuSample struct {
	total uint64
	at    time.Time
}

type diskSample struct {
	bytes, inodes int64
	at            time.Time
}

func newStatsCache() *statsCache {
	return &statsCache{cpu: map[string]cpuSample{}, disk: map[string]diskSample{}, ttl: 10 * time.Second, clock: time.Now}
}

// nanoCores turns a cumulative CPU time into a rate since the last call.
func (c *statsCache) nanoCores(id string, total uint64, at time.Time) *runtimeapi.UInt64Value {
	c.mu.Lock()
	defer c.mu.Unlock()
	prev, ok := c.cpu[id]
	c.cpu[id] = cpuSample{total, at}
	if !ok || total < prev.total || !at.After(prev.at) {
		return nil
	}
	rate := float64(total-prev.total) / at.Sub(prev.at).Seconds()
	return &runtimeapi.UInt64Value{Value: uint64(rate)}
}

// Key prefixes of the CPU samples that are not a container's own: a pod's
// sum, and the metrics endpoint's (sampled at its own pace).
var statsKeyPrefixes = []string{"pod:", "metrics:"}

// statsID is the container or pod id a cache key is about.
func statsID(key string) string {
	for _, p := range statsKeyPrefixes {
		if rest, ok := strings.CutPrefix(key, p); ok {
			return rest
		}
	}
	return key
}

// forget drops every sample of a removed container or pod.
func (c *statsCache) forget(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.cpu, id)
	delete(c.disk, id)
	for _, p := range statsKeyPrefixes {
		delete(c.cpu, p+id)
	}
}

// prune drops the samples of ids that are neither a container nor a pod
// any more: a stats call that was under way while one was removed may
// have put its sample back after forget.
func (c *statsCache) prune(known func(id string) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.cpu {
		if !known(statsID(k)) {
			delete(c.cpu, k)
		}
	}
	for k := range c.disk {
		if !known(k) {
			delete(c.disk, k)
		}
	}
}

// size is how many samples the cache holds.
func (c *statsCache) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cpu) + len(c.disk)
}

// cgroupStats reads a runtime container's cgroup figures.
func (s *Server) cgroupStats(id string) (cgroups.Stats, error) {
	rc, err := s.rt.Load(id)
	if err != nil {
		return cgroups.Stats{}, err
	}
	return rc.Stats()
}

// usage converts cgroup statistics to the CRI's CPU and memory figures.
func (s *Server) usage(key string, cg cgroups.Stats, at time.Time) (*runtimeapi.CpuUsage, *runtimeapi.MemoryUsage, *runtimeapi.SwapUsage) {
	ts := at.UnixNano()
	cpu := &runtimeapi.CpuUsage{
		Timestamp: ts, UsageCoreNanoSeconds: &runtimeapi.UInt64Value{Value: cg.CPUNanos},
		UsageNanoCores: s.stats.nanoCores(key, cg.CPUNanos, at),
		Psi:            psi(cg.CPUPressure),
	}
	ws := cg.MemoryUsage - min(cg.MemoryUsage, cg.InactiveFile)
	mem := &runtimeapi.MemoryUsage{
		Timestamp: ts, WorkingSetBytes: &runtimeapi.UInt64Value{Value: ws}, UsageBytes: &runtimeapi.UInt64Value{Value: cg.MemoryUsage},
		RssBytes:        &runtimeapi.UInt64Value{Value: cg.RSS},
		PageFaults:      &runtimeapi.UInt64Value{Value: cg.PageFaults},
		MajorPageFaults: &runtimeapi.UInt64Value{Value: cg.MajorPageFaults},
		Psi:             psi(cg.MemoryPressure),
	}
	if limit := cg.MemoryLimit; limit > 0 && limit < 1<<62 {
		mem.AvailableBytes = &runtimeapi.UInt64Value{Value: limit - min(limit, ws)}
	}
	swap := &runtimeapi.SwapUsage{Timestamp: ts}
	if cg.SwapUsage > 0 || cg.SwapLimit > 0 {
		swap.SwapUsageBytes = &runtimeapi.UInt64Value{Value: cg.SwapUsage}
		if l := cg.SwapLimit; l > 0 && l < 1<<62 {
			swap.SwapAvailableBytes = &runtimeapi.UInt64Value{Value: l - min(l, cg.SwapUsage)}
		}
	}
	return cpu, mem, swap
}

// ioUsage is the CRI's io figure: pressure alone, where the kernel keeps
// it (cgroup v2); nil otherwise, as containerd reports.
func ioUsage(p *cgroups.Pressure, at time.Time) *runtimeapi.IoUsage {
	if p == nil {
		return nil
	}
	return &runtimeapi.IoUsage{Timestamp: at.UnixNano(), Psi: psi(p)}
}

// psi converts pressure stall information; the CRI counts the total
// stalled time in nanoseconds.
func psi(p *cgroups.Pressure) *runtimeapi.PsiStats {
	if p == nil {
		return nil
	}
	conv := func(f cgroups.PressureFigures) *runtimeapi.PsiData {
		return &runtimeapi.PsiData{Total: uint64(f.Total.Nanoseconds()), Avg10: f.Avg10, Avg60: f.Avg60, Avg300: f.Avg300}
	}
	return &runtimeapi.PsiStats{Some: conv(p.Some), Full: conv(p.Full)}
}
