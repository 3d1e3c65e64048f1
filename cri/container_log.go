package cri

import (
	"context"
	"fmt"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ReopenContainerLog makes the shim reopen the log file after the
// kubelet rotated it.
func (s *Server) ReopenContainerLog(ctx context.Context, req *runtimeapi.ReopenContainerLogRequest) (*runtimeapi.ReopenContainerLogResponse, error) {
	c, err := s.findContainer(req.GetContainerId())
	if err != nil {
		return nil, toStatus(err)
	}
	if c.State != containerRunning {
		return nil, toStatus(preconditionf("container %s is not running", c.ID))
	}
	if c.LogPath == "" {
		return nil, toStatus(preconditionf("container %s has no log path", c.ID))
	}
	if err := s.shimFor(c.PodID).ReopenLog(ctx, c.ID); err != nil {
		return nil, toStatus(fmt.Errorf("reopen log of %s: %w", c.ID, err))
	}
	return &runtimeapi.ReopenContainerLogResponse{}, nil
}
