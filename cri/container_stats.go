package cri

import (
	"context"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

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
	return sendChunks(list, func(chunk []*runtimeapi.ContainerStats) *runtimeapi.StreamContainerStatsResponse {
		return &runtimeapi.StreamContainerStatsResponse{ContainerStats: chunk}
	}, stream.Send)
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
			st.Io = ioUsage(cg.IOPressure, now)
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
