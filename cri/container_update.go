package cri

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// UpdateContainerResources changes a running container's limits.
func (s *Server) UpdateContainerResources(ctx context.Context, req *runtimeapi.UpdateContainerResourcesRequest) (*runtimeapi.UpdateContainerResourcesResponse, error) {
	c, err := s.findContainer(req.GetContainerId())
	if err != nil {
		return nil, toStatus(err)
	}
	r := req.GetLinux()
	if r == nil {
		return nil, toStatus(invalidf("linux resources are required"))
	}
	if err := validateResources("linux", r); err != nil {
		return nil, toStatus(err)
	}
	unlock := s.locks.lock(c.ID)
	defer unlock()
	if c, err = s.findContainer(c.ID); err != nil {
		return nil, toStatus(err)
	}
	if c.State != containerRunning && c.State != containerCreated {
		return nil, toStatus(preconditionf("container %s is %s", c.ID, c.State))
	}
	lr, err := linuxResources(r)
	if err != nil {
		return nil, toStatus(err)
	}
	rc, err := s.rt.Load(c.ID)
	if err != nil {
		return nil, toStatus(err)
	}
	if err := rc.Update(lr); err != nil {
		return nil, toStatus(fmt.Errorf("update resources of %s: %w", c.ID, err))
	}
	// What the request leaves zero stays as it was, in the cgroup
	// (runtime.Update merges) and so in the status.
	merged := &runtimeapi.LinuxContainerResources{}
	if cur := c.resources(); cur != nil {
		merged = proto.Clone(cur).(*runtimeapi.LinuxContainerResources)
	}
	if len(r.GetHugepageLimits()) > 0 {
		merged.HugepageLimits = nil
	}
	proto.Merge(merged, r)
	if c.Resources, err = proto.Marshal(merged); err != nil {
		return nil, toStatus(err)
	}
	if err := s.store.putContainer(c); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.UpdateContainerResourcesResponse{}, nil
}
