package cri

import (
	"context"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/network"
)

// criAPIVersion is the CRI version berth speaks.
const criAPIVersion = "v1"

// Version names the runtime.
func (s *Server) Version(ctx context.Context, req *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{
		Version: "0.1.0", RuntimeName: "berth", RuntimeVersion: s.version, RuntimeApiVersion: criAPIVersion,
	}, nil
}

// Status reports whether the runtime and the network are ready, and what
// berth supports.
func (s *Server) Status(ctx context.Context, req *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	netCond := &runtimeapi.RuntimeCondition{Type: runtimeapi.NetworkReady, Status: true}
	if err := s.net.Status(); err != nil {
		netCond.Status = false
		netCond.Reason = "NetworkPluginNotReady"
		if !errors.Is(err, network.ErrNotReady) {
			netCond.Reason = "NetworkPluginError"
		}
		netCond.Message = err.Error()
	}
	features := &runtimeapi.RuntimeHandlerFeatures{RecursiveReadOnlyMounts: s.rroSupported, UserNamespaces: true}
	resp := &runtimeapi.StatusResponse{
		Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
			{Type: runtimeapi.RuntimeReady, Status: true},
			netCond,
		}},
		RuntimeHandlers: []*runtimeapi.RuntimeHandler{
			{Name: "", Features: features},
			{Name: defaultHandler, Features: features},
		},
		Features: &runtimeapi.RuntimeFeatures{SupplementalGroupsPolicy: true, MountOptions: true},
	}
	if req.Verbose {
		cfg := s.cfg
		resp.Info = map[string]string{
			"config":  jsonString(cfg),
			"podCIDR": s.currentPodCIDR(),
			"cgroups": cgroupMode(),
		}
	}
	return resp, nil
}

func cgroupMode() string {
	switch cgroups.HostMode() {
	case cgroups.Unified:
		return "v2"
	case cgroups.Hybrid:
		return "v1 (hybrid)"
	}
	return "v1"
}

// recursiveReadOnlySupported: rro mounts need mount_setattr (Linux 5.12).
func recursiveReadOnlySupported() bool {
	err := unix.MountSetattr(-1, "", unix.AT_EMPTY_PATH, &unix.MountAttr{})
	return !errors.Is(err, unix.ENOSYS)
}

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
	for _, c := range splitComma(cidr) {
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

func splitComma(v string) []string {
	var out []string
	for _, p := range bytesSplit(v, ',') {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

func bytesSplit(s string, sep byte) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == sep {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// CheckpointContainer is not supported yet.
func (s *Server) CheckpointContainer(ctx context.Context, req *runtimeapi.CheckpointContainerRequest) (*runtimeapi.CheckpointContainerResponse, error) {
	return nil, status.Error(codes.Unimplemented, "checkpointing is not supported by berth: it is built without CRIU")
}

// CheckpointPod is not supported yet.
func (s *Server) CheckpointPod(ctx context.Context, req *runtimeapi.CheckpointPodRequest) (*runtimeapi.CheckpointPodResponse, error) {
	return nil, status.Error(codes.Unimplemented, "pod checkpointing is not supported by berth: it is built without CRIU")
}

// RestorePod is not supported yet.
func (s *Server) RestorePod(ctx context.Context, req *runtimeapi.RestorePodRequest) (*runtimeapi.RestorePodResponse, error) {
	return nil, status.Error(codes.Unimplemented, "restoring pods from checkpoints is not supported by berth: it is built without CRIU")
}
