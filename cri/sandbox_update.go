package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// UpdatePodSandboxResources records the pod-level resources the kubelet
// has already applied to the pod cgroup (best effort, as the CRI says).
func (s *Server) UpdatePodSandboxResources(ctx context.Context, req *runtimeapi.UpdatePodSandboxResourcesRequest) (*runtimeapi.UpdatePodSandboxResourcesResponse, error) {
	if _, err := s.findSandbox(req.GetPodSandboxId()); err != nil {
		return nil, toStatus(err)
	}
	if err := validateResources("resources", req.GetResources()); err != nil {
		return nil, toStatus(err)
	}
	if err := validateResources("overhead", req.GetOverhead()); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.UpdatePodSandboxResourcesResponse{}, nil
}
