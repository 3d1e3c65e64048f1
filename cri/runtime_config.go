package cri

import (
	"context"
	"fmt"
	"net"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
)

// RuntimeConfig tells the kubelet the cgroup driver to use.
func (s *Server) RuntimeConfig(ctx context.Context, req *runtimeapi.RuntimeConfigRequest) (*runtimeapi.RuntimeConfigResponse, error) {
	driver := runtimeapi.CgroupDriver_CGROUPFS
	if cgroups.Driver(s.cfg.CgroupDriver) == cgroups.Systemd {
		driver = runtimeapi.CgroupDriver_SYSTEMD
	}
	return &runtimeapi.RuntimeConfigResponse{Linux: &runtimeapi.LinuxRuntimeConfiguration{CgroupDriver: driver}}, nil
}

// UpdateRuntimeConfig takes the node's pod CIDR for the default network.
func (s *Server) UpdateRuntimeConfig(ctx context.Context, req *runtimeapi.UpdateRuntimeConfigRequest) (*runtimeapi.UpdateRuntimeConfigResponse, error) {
	cidr := req.GetRuntimeConfig().GetNetworkConfig().GetPodCidr()
	if cidr == "" {
		return &runtimeapi.UpdateRuntimeConfigResponse{}, nil
	}
	for _, c := range strings.Split(cidr, ",") {
		if _, _, err := net.ParseCIDR(c); err != nil {
			return nil, toStatus(invalidf("pod_cidr %q: %v", c, err))
		}
	}
	if err := s.store.putMeta("podCIDR", cidr); err != nil {
		return nil, toStatus(err)
	}
	s.mu.Lock()
	s.podCIDR = cidr
	s.mu.Unlock()
	if err := s.net.SetPodCIDR(cidr); err != nil {
		return nil, toStatus(fmt.Errorf("%w: pod CIDR %s: %v", errPrecondition, cidr, err))
	}
	s.log.Info("pod CIDR set", "cidr", cidr)
	return &runtimeapi.UpdateRuntimeConfigResponse{}, nil
}

func (s *Server) currentPodCIDR() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.podCIDR
}
