package cri

import (
	"context"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

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
				metric("container_cpu_usage_seconds_total", runtimeapi.MetricType_COUNTER, cg.CPUNanos/1e9, labels...),
				metric("container_memory_usage_bytes", runtimeapi.MetricType_GAUGE, mem.UsageBytes.Value, labels...),
				metric("container_memory_working_set_bytes", runtimeapi.MetricType_GAUGE, mem.WorkingSetBytes.Value, labels...),
				metric("container_memory_rss", runtimeapi.MetricType_GAUGE, mem.RssBytes.Value, labels...),
				metric("container_processes", runtimeapi.MetricType_GAUGE, cg.Processes, labels...),
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
	return sendChunks(list, func(chunk []*runtimeapi.PodSandboxMetrics) *runtimeapi.StreamPodSandboxMetricsResponse {
		return &runtimeapi.StreamPodSandboxMetricsResponse{PodSandboxMetrics: chunk}
	}, stream.Send)
}
