package cri

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// metrics are berthd's Prometheus metrics: calls and latencies per RPC,
// pods and containers by state, image pulls (also those in flight, which
// the CRI itself cannot show).
type metrics struct {
	reg       *prometheus.Registry
	calls     *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	pulled    prometheus.Counter
	pullBytes prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_cri_requests_total", Help: "CRI calls by method and gRPC status code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "berth_cri_request_duration_seconds", Help: "CRI call latency by method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"method"}),
		pulled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_image_pulls_total", Help: "Images pulled.",
		}),
		pullBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_image_pull_bytes_total", Help: "Bytes downloaded by finished image pulls.",
		}),
	}
	m.reg.MustRegister(m.calls, m.latency, m.pulled, m.pullBytes,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// methodName is the RPC's short name: "RunPodSandbox".
func methodName(full string) string {
	return full[strings.LastIndexByte(full, '/')+1:]
}

func (m *metrics) observe(method string, start time.Time, err error) {
	m.calls.WithLabelValues(method, status.Code(err).String()).Inc()
	m.latency.WithLabelValues(method).Observe(time.Since(start).Seconds())
}

func (m *metrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	m.observe(methodName(info.FullMethod), start, err)
	return resp, err
}

func (m *metrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	start := time.Now()
	err := h(srv, ss)
	m.observe(methodName(info.FullMethod), start, err)
	return err
}

// stateCollector reports pods, containers and pulls in flight when
// scraped, from the server's records.
type stateCollector struct {
	s                      *Server
	pods, containers       *prometheus.Desc
	pullDone, pullExpected *prometheus.Desc
	pullsInFlight          *prometheus.Desc
	lazyLocal, lazySize    *prometheus.Desc
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.pods
	ch <- c.containers
	ch <- c.pullDone
	ch <- c.pullExpected
	ch <- c.pullsInFlight
	ch <- c.lazyLocal
	ch <- c.lazySize
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	pods := map[string]int{}
	for _, sb := range c.s.store.listSandboxes() {
		pods[sb.State]++
	}
	for _, st := range []string{sandboxCreating, sandboxReady, sandboxNotReady, sandboxRemoving} {
		ch <- prometheus.MustNewConstMetric(c.pods, prometheus.GaugeValue, float64(pods[st]), st)
	}
	ctrs := map[string]int{}
	for _, ct := range c.s.store.listContainers() {
		ctrs[ct.State]++
	}
	for _, st := range []string{containerCreating, containerCreated, containerRunning, containerExited, containerRemoving} {
		ch <- prometheus.MustNewConstMetric(c.containers, prometheus.GaugeValue, float64(ctrs[st]), st)
	}
	pulls := c.s.images.Pulls()
	ch <- prometheus.MustNewConstMetric(c.pullsInFlight, prometheus.GaugeValue, float64(len(pulls)))
	for _, p := range pulls {
		done, total := p.Bytes()
		ch <- prometheus.MustNewConstMetric(c.pullDone, prometheus.GaugeValue, float64(done), p.Ref)
		ch <- prometheus.MustNewConstMetric(c.pullExpected, prometheus.GaugeValue, float64(total), p.Ref)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// berth-lazy not answering is in berthd's log; the scrape goes on.
	lazy, _ := c.s.LazyLayers(ctx)
	for _, l := range lazy {
		ch <- prometheus.MustNewConstMetric(c.lazyLocal, prometheus.GaugeValue, float64(l.Local), l.Digest)
		ch <- prometheus.MustNewConstMetric(c.lazySize, prometheus.GaugeValue, float64(l.Size), l.Digest)
	}
}

func (s *Server) registerStateMetrics() {
	s.metric.reg.MustRegister(&stateCollector{
		s:             s,
		pods:          prometheus.NewDesc("berth_pod_sandboxes", "Pod sandboxes by state.", []string{"state"}, nil),
		containers:    prometheus.NewDesc("berth_containers", "Containers by state.", []string{"state"}, nil),
		pullDone:      prometheus.NewDesc("berth_image_pull_in_flight_bytes_done", "Bytes downloaded so far by a pull in progress.", []string{"image"}, nil),
		pullExpected:  prometheus.NewDesc("berth_image_pull_in_flight_bytes_expected", "Bytes a pull in progress will download, as far as its manifest says.", []string{"image"}, nil),
		pullsInFlight: prometheus.NewDesc("berth_image_pulls_in_flight", "Image pulls in progress.", nil, nil),
		lazyLocal:     prometheus.NewDesc("berth_lazy_layer_local_bytes", "Bytes of a lazily served layer's blob on this node, verified.", []string{"layer"}, nil),
		lazySize:      prometheus.NewDesc("berth_lazy_layer_size_bytes", "Size of a lazily served layer's blob.", []string{"layer"}, nil),
	})
}

// MetricsHandler serves /metrics.
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.metric.reg, promhttp.HandlerOpts{})
}
