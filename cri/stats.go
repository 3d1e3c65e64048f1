package cri

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	ocg "github.com/opencontainers/cgroups"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
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

// writableUsage is the size of a container's writable layer, measured at
// most every ttl.
func (s *Server) writableUsage(id string) (int64, int64, error) {
	c := s.stats
	c.mu.Lock()
	d, ok := c.disk[id]
	c.mu.Unlock()
	if ok && c.clock().Sub(d.at) < c.ttl {
		return d.bytes, d.inodes, nil
	}
	b, i, err := s.images.RootfsUsage(id)
	if err != nil {
		return 0, 0, err
	}
	c.mu.Lock()
	c.disk[id] = diskSample{b, i, c.clock()}
	c.mu.Unlock()
	return b, i, nil
}

// cgroupStats reads a runtime container's cgroup figures.
func (s *Server) cgroupStats(id string) (*ocg.Stats, error) {
	rc, err := s.rt.Load(id)
	if err != nil {
		return nil, err
	}
	st, err := rc.Stats()
	if err != nil {
		return nil, err
	}
	if st.CgroupStats == nil {
		return nil, fmt.Errorf("container %s: no cgroup statistics", id)
	}
	return st.CgroupStats, nil
}

// memStat reads a memory.stat figure under its v2 or v1 name.
func memStat(m *ocg.MemoryStats, v2, v1 string) uint64 {
	if v, ok := m.Stats[v2]; ok {
		return v
	}
	return m.Stats[v1]
}

// usage converts cgroup statistics to the CRI's CPU and memory figures.
func (s *Server) usage(key string, cg *ocg.Stats, at time.Time) (*runtimeapi.CpuUsage, *runtimeapi.MemoryUsage, *runtimeapi.SwapUsage) {
	ts := at.UnixNano()
	total := cg.CpuStats.CpuUsage.TotalUsage
	cpu := &runtimeapi.CpuUsage{
		Timestamp: ts, UsageCoreNanoSeconds: &runtimeapi.UInt64Value{Value: total},
		UsageNanoCores: s.stats.nanoCores(key, total, at),
	}
	m := &cg.MemoryStats
	usage := m.Usage.Usage
	inactive := memStat(m, "inactive_file", "total_inactive_file")
	ws := uint64(0)
	if usage > inactive {
		ws = usage - inactive
	}
	mem := &runtimeapi.MemoryUsage{
		Timestamp: ts, WorkingSetBytes: &runtimeapi.UInt64Value{Value: ws}, UsageBytes: &runtimeapi.UInt64Value{Value: usage},
		RssBytes:        &runtimeapi.UInt64Value{Value: memStat(m, "anon", "total_rss")},
		PageFaults:      &runtimeapi.UInt64Value{Value: memStat(m, "pgfault", "total_pgfault")},
		MajorPageFaults: &runtimeapi.UInt64Value{Value: memStat(m, "pgmajfault", "total_pgmajfault")},
	}
	if limit := m.Usage.Limit; limit > 0 && limit < 1<<62 {
		avail := uint64(0)
		if limit > ws {
			avail = limit - ws
		}
		mem.AvailableBytes = &runtimeapi.UInt64Value{Value: avail}
	}
	swap := &runtimeapi.SwapUsage{Timestamp: ts}
	if m.SwapOnlyUsage.Usage > 0 || m.SwapOnlyUsage.Limit > 0 {
		swap.SwapUsageBytes = &runtimeapi.UInt64Value{Value: m.SwapOnlyUsage.Usage}
		if l := m.SwapOnlyUsage.Limit; l > 0 && l < 1<<62 {
			swap.SwapAvailableBytes = &runtimeapi.UInt64Value{Value: l - min(l, m.SwapOnlyUsage.Usage)}
		}
	}
	return cpu, mem, swap
}

// containerStats gathers one container's figures; a container without a
// cgroup (created, exited) reports its attributes and disk use only.
func (s *Server) containerStats(c *container) *runtimeapi.ContainerStats {
	now := time.Now()
	st := &runtimeapi.ContainerStats{
		Attributes: &runtimeapi.ContainerAttributes{Id: c.ID, Metadata: c.config.Metadata, Labels: c.config.Labels, Annotations: c.config.Annotations},
	}
	if c.State == containerRunning {
		if cg, err := s.cgroupStats(c.ID); err == nil {
			st.Cpu, st.Memory, st.Swap = s.usage(c.ID, cg, now)
		}
	}
	if b, i, err := s.writableUsage(c.ID); err == nil {
		st.WritableLayer = &runtimeapi.FilesystemUsage{
			Timestamp: now.UnixNano(), FsId: &runtimeapi.FilesystemIdentifier{Mountpoint: s.cfg.Root},
			UsedBytes: &runtimeapi.UInt64Value{Value: uint64(b)}, InodesUsed: &runtimeapi.UInt64Value{Value: uint64(i)},
		}
	}
	return st
}

// ContainerStats reports one container.
func (s *Server) ContainerStats(ctx context.Context, req *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	c, err := s.findContainer(req.GetContainerId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.ContainerStatsResponse{Stats: s.containerStats(c)}, nil
}

func (s *Server) listContainerStats(f *runtimeapi.ContainerStatsFilter) []*runtimeapi.ContainerStats {
	var out []*runtimeapi.ContainerStats
	for _, c := range s.store.listContainers() {
		if c.State != containerRunning {
			continue
		}
		if f != nil {
			if f.Id != "" && !strings.HasPrefix(c.ID, f.Id) {
				continue
			}
			if f.PodSandboxId != "" && !strings.HasPrefix(c.PodID, f.PodSandboxId) {
				continue
			}
			if !matchLabels(c.config.Labels, f.LabelSelector) {
				continue
			}
		}
		out = append(out, s.containerStats(c))
	}
	return out
}

// ListContainerStats reports the running containers that match.
func (s *Server) ListContainerStats(ctx context.Context, req *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	out := s.listContainerStats(req.GetFilter())
	// The kubelet lists regularly: a good moment to drop samples that a
	// call racing a removal left.
	s.stats.prune(s.store.known)
	return &runtimeapi.ListContainerStatsResponse{Stats: out}, nil
}

// StreamContainerStats sends the stats in chunks.
func (s *Server) StreamContainerStats(req *runtimeapi.StreamContainerStatsRequest, stream runtimeapi.RuntimeService_StreamContainerStatsServer) error {
	list := s.listContainerStats(req.GetFilter())
	for len(list) > 0 {
		n := min(len(list), streamChunk)
		if err := stream.Send(&runtimeapi.StreamContainerStatsResponse{ContainerStats: list[:n]}); err != nil {
			return err
		}
		list = list[n:]
	}
	return nil
}

// podStats sums the pause and container cgroups of a pod and reads its
// interfaces' counters.
func (s *Server) podStats(sb *sandbox) *runtimeapi.PodSandboxStats {
	now := time.Now()
	cfg := sb.config
	st := &runtimeapi.PodSandboxStats{
		Attributes: &runtimeapi.PodSandboxAttributes{Id: sb.ID, Metadata: cfg.Metadata, Labels: cfg.Labels, Annotations: cfg.Annotations},
		Linux:      &runtimeapi.LinuxPodSandboxStats{},
	}
	sum := ocg.NewStats()
	var procs uint64
	add := func(id string) {
		cg, err := s.cgroupStats(id)
		if err != nil {
			return
		}
		sum.CpuStats.CpuUsage.TotalUsage += cg.CpuStats.CpuUsage.TotalUsage
		sum.MemoryStats.Usage.Usage += cg.MemoryStats.Usage.Usage
		for k, v := range cg.MemoryStats.Stats {
			sum.MemoryStats.Stats[k] += v
		}
		procs += cg.PidsStats.Current
	}
	if sb.State == sandboxReady {
		add(sb.ID)
	}
	for _, c := range s.store.podContainers(sb.ID) {
		if c.State == containerRunning {
			add(c.ID)
			st.Linux.Containers = append(st.Linux.Containers, s.containerStats(c))
		}
	}
	if sb.State == sandboxReady {
		st.Linux.Cpu, st.Linux.Memory, _ = s.usage("pod:"+sb.ID, sum, now)
		st.Linux.Process = &runtimeapi.ProcessUsage{Timestamp: now.UnixNano(), ProcessCount: &runtimeapi.UInt64Value{Value: procs}}
		if sb.PausePid > 0 && sb.NetNS != "" {
			st.Linux.Network = netUsage(sb.PausePid, now)
		}
	}
	return st
}

// netUsage reads /proc/<pid>/net/dev: the pod's interfaces, eth0 as
// the default one.
func netUsage(pid int, now time.Time) *runtimeapi.NetworkUsage {
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/dev", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	nu := &runtimeapi.NetworkUsage{Timestamp: now.UnixNano()}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		name = strings.TrimSpace(name)
		fields := strings.Fields(rest)
		if name == "lo" || len(fields) < 16 {
			continue
		}
		num := func(i int) *runtimeapi.UInt64Value {
			v, _ := strconv.ParseUint(fields[i], 10, 64)
			return &runtimeapi.UInt64Value{Value: v}
		}
		iu := &runtimeapi.NetworkInterfaceUsage{Name: name, RxBytes: num(0), RxErrors: num(2), TxBytes: num(8), TxErrors: num(10)}
		nu.Interfaces = append(nu.Interfaces, iu)
		if name == "eth0" {
			nu.DefaultInterface = iu
		}
	}
	return nu
}

// PodSandboxStats reports one pod.
func (s *Server) PodSandboxStats(ctx context.Context, req *runtimeapi.PodSandboxStatsRequest) (*runtimeapi.PodSandboxStatsResponse, error) {
	sb, err := s.findSandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.PodSandboxStatsResponse{Stats: s.podStats(sb)}, nil
}

func (s *Server) listPodStats(f *runtimeapi.PodSandboxStatsFilter) []*runtimeapi.PodSandboxStats {
	var out []*runtimeapi.PodSandboxStats
	for _, sb := range s.store.listSandboxes() {
		if sb.State == sandboxCreating || sb.State == sandboxRemoving {
			continue
		}
		if f != nil {
			if f.Id != "" && !strings.HasPrefix(sb.ID, f.Id) {
				continue
			}
			if !matchLabels(sb.config.Labels, f.LabelSelector) {
				continue
			}
		}
		out = append(out, s.podStats(sb))
	}
	return out
}

// ListPodSandboxStats reports the pods that match.
func (s *Server) ListPodSandboxStats(ctx context.Context, req *runtimeapi.ListPodSandboxStatsRequest) (*runtimeapi.ListPodSandboxStatsResponse, error) {
	return &runtimeapi.ListPodSandboxStatsResponse{Stats: s.listPodStats(req.GetFilter())}, nil
}

// StreamPodSandboxStats sends the stats in chunks.
func (s *Server) StreamPodSandboxStats(req *runtimeapi.StreamPodSandboxStatsRequest, stream runtimeapi.RuntimeService_StreamPodSandboxStatsServer) error {
	list := s.listPodStats(req.GetFilter())
	for len(list) > 0 {
		n := min(len(list), streamChunk)
		if err := stream.Send(&runtimeapi.StreamPodSandboxStatsResponse{PodSandboxStats: list[:n]}); err != nil {
			return err
		}
		list = list[n:]
	}
	return nil
}

// The cAdvisor-style metrics berth reports through ListPodSandboxMetrics,
// with cAdvisor's names and labels so that dashboards keep working.
var (
	containerLabels = []string{"container", "id", "image", "name", "namespace", "pod"}
	podNetLabels    = []string{"interface", "namespace", "pod"}
	metricDescs     = []*runtimeapi.MetricDescriptor{
		{Name: "container_cpu_usage_seconds_total", Help: "Cumulative cpu time consumed in seconds.", LabelKeys: containerLabels},
		{Name: "container_memory_usage_bytes", Help: "Current memory usage in bytes, including all memory regardless of when it was accessed.", LabelKeys: containerLabels},
		{Name: "container_memory_working_set_bytes", Help: "Current working set in bytes.", LabelKeys: containerLabels},
		{Name: "container_memory_rss", Help: "Size of RSS in bytes.", LabelKeys: containerLabels},
		{Name: "container_processes", Help: "Number of processes running inside the container.", LabelKeys: containerLabels},
		{Name: "container_start_time_seconds", Help: "Start time of the container since unix epoch in seconds.", LabelKeys: containerLabels},
		{Name: "container_network_receive_bytes_total", Help: "Cumulative count of bytes received.", LabelKeys: podNetLabels},
		{Name: "container_network_transmit_bytes_total", Help: "Cumulative count of bytes transmitted.", LabelKeys: podNetLabels},
		{Name: "container_network_receive_errors_total", Help: "Cumulative count of errors encountered while receiving.", LabelKeys: podNetLabels},
		{Name: "container_network_transmit_errors_total", Help: "Cumulative count of errors encountered while transmitting.", LabelKeys: podNetLabels},
	}
)

// ListMetricDescriptors describes the metrics of ListPodSandboxMetrics.
func (s *Server) ListMetricDescriptors(ctx context.Context, req *runtimeapi.ListMetricDescriptorsRequest) (*runtimeapi.ListMetricDescriptorsResponse, error) {
	return &runtimeapi.ListMetricDescriptorsResponse{Descriptors: metricDescs}, nil
}

func (s *Server) podMetrics() []*runtimeapi.PodSandboxMetrics {
	var out []*runtimeapi.PodSandboxMetrics
	for _, sb := range s.store.listSandboxes() {
		if sb.State != sandboxReady {
			continue
		}
		md := sb.config.Metadata
		pm := &runtimeapi.PodSandboxMetrics{PodSandboxId: sb.ID}
		metric := func(name string, t runtimeapi.MetricType, v uint64, labels ...string) *runtimeapi.Metric {
			return &runtimeapi.Metric{Name: name, MetricType: t, LabelValues: labels, Value: &runtimeapi.UInt64Value{Value: v}}
		}
		if nu := netUsage(sb.PausePid, time.Now()); nu != nil && sb.NetNS != "" {
			for _, i := range nu.Interfaces {
				pm.Metrics = append(pm.Metrics,
					metric("container_network_receive_bytes_total", runtimeapi.MetricType_COUNTER, i.RxBytes.Value, i.Name, md.Namespace, md.Name),
					metric("container_network_transmit_bytes_total", runtimeapi.MetricType_COUNTER, i.TxBytes.Value, i.Name, md.Namespace, md.Name),
					metric("container_network_receive_errors_total", runtimeapi.MetricType_COUNTER, i.RxErrors.Value, i.Name, md.Namespace, md.Name),
					metric("container_network_transmit_errors_total", runtimeapi.MetricType_COUNTER, i.TxErrors.Value, i.Name, md.Namespace, md.Name))
			}
		}
		for _, c := range s.store.podContainers(sb.ID) {
			if c.State != containerRunning {
				continue
			}
			cg, err := s.cgroupStats(c.ID)
			if err != nil {
				continue
			}
			labels := []string{c.config.Metadata.Name, c.ID, c.config.Image.GetImage(), c.Name, md.Namespace, md.Name}
			_, mem, _ := s.usage("metrics:"+c.ID, cg, time.Now())
			cm := &runtimeapi.ContainerMetrics{ContainerId: c.ID, Metrics: []*runtimeapi.Metric{
				// A CRI Metric's value is an integer: CPU time in
				// cAdvisor's unit (seconds) is truncated to whole seconds.
				// ContainerStats' UsageCoreNanoSeconds has it exactly.
				metric("container_cpu_usage_seconds_total", runtimeapi.MetricType_COUNTER, cg.CpuStats.CpuUsage.TotalUsage/1e9, labels...),
				metric("container_memory_usage_bytes", runtimeapi.MetricType_GAUGE, mem.UsageBytes.Value, labels...),
				metric("container_memory_working_set_bytes", runtimeapi.MetricType_GAUGE, mem.WorkingSetBytes.Value, labels...),
				metric("container_memory_rss", runtimeapi.MetricType_GAUGE, mem.RssBytes.Value, labels...),
				metric("container_processes", runtimeapi.MetricType_GAUGE, cg.PidsStats.Current, labels...),
				metric("container_start_time_seconds", runtimeapi.MetricType_GAUGE, uint64(c.StartedAt.Unix()), labels...),
			}}
			pm.ContainerMetrics = append(pm.ContainerMetrics, cm)
		}
		out = append(out, pm)
	}
	return out
}

// ListPodSandboxMetrics reports the metrics of every ready pod.
func (s *Server) ListPodSandboxMetrics(ctx context.Context, req *runtimeapi.ListPodSandboxMetricsRequest) (*runtimeapi.ListPodSandboxMetricsResponse, error) {
	return &runtimeapi.ListPodSandboxMetricsResponse{PodMetrics: s.podMetrics()}, nil
}

// StreamPodSandboxMetrics sends the metrics in chunks.
func (s *Server) StreamPodSandboxMetrics(req *runtimeapi.StreamPodSandboxMetricsRequest, stream runtimeapi.RuntimeService_StreamPodSandboxMetricsServer) error {
	list := s.podMetrics()
	for len(list) > 0 {
		n := min(len(list), streamChunk)
		if err := stream.Send(&runtimeapi.StreamPodSandboxMetricsResponse{PodSandboxMetrics: list[:n]}); err != nil {
			return err
		}
		list = list[n:]
	}
	return nil
}
