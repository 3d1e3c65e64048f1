package cri

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
)

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
	return sendChunks(list, func(chunk []*runtimeapi.PodSandboxStats) *runtimeapi.StreamPodSandboxStatsResponse {
		return &runtimeapi.StreamPodSandboxStatsResponse{PodSandboxStats: chunk}
	}, stream.Send)
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
	var sum cgroups.Stats
	add := func(id string) {
		if cg, err := s.cgroupStats(id); err == nil {
			sum.Add(cg)
		}
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
		// Pressure is the pod cgroup's own: stalls do not add up.
		if cpu, mem, io, err := cgroups.PodPressure(cgroups.Driver(s.cfg.CgroupDriver), sb.CgroupParent); err == nil {
			st.Linux.Cpu.Psi, st.Linux.Memory.Psi, st.Linux.Io = psi(cpu), psi(mem), ioUsage(io, now)
		} else {
			s.log.Debug("pod pressure", "pod", sb.ID, "error", err)
		}
		st.Linux.Process = &runtimeapi.ProcessUsage{Timestamp: now.UnixNano(), ProcessCount: &runtimeapi.UInt64Value{Value: sum.Processes}}
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
