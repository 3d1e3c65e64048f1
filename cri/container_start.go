package cri

import (
	"context"
	"fmt"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// StartContainer starts a created container.
func (s *Server) StartContainer(ctx context.Context, req *runtimeapi.StartContainerRequest) (*runtimeapi.StartContainerResponse, error) {
	c, err := s.findContainer(req.GetContainerId())
	if err != nil {
		return nil, toStatus(err)
	}
	unlock := s.locks.lock(c.ID)
	defer unlock()
	c, ok := s.store.getContainer(c.ID)
	if !ok {
		return nil, toStatus(notFoundf("container %s", req.GetContainerId()))
	}
	if c.State != containerCreated {
		return nil, toStatus(preconditionf("container %s is %s, not created", c.ID, c.State))
	}
	if c.Restore != "" {
		if err := s.restoreInShim(ctx, c); err != nil {
			return nil, toStatus(err)
		}
		return &runtimeapi.StartContainerResponse{}, nil
	}
	rc, err := s.rt.Load(c.ID)
	if err != nil {
		return nil, toStatus(fmt.Errorf("start container %s: %w", c.ID, err))
	}
	if err := rc.Exec(); err != nil {
		return nil, toStatus(runtimeFailure(fmt.Errorf("start container %s: %w", c.ID, err)))
	}
	c.State = containerRunning
	c.StartedAt = time.Now()
	if err := s.store.putContainer(c); err != nil {
		return nil, toStatus(err)
	}
	s.log.Info("container started", "container", c.ID, "name", c.Name, "pid", c.Pid)
	s.emit(c.ID, c.PodID, runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT)
	return &runtimeapi.StartContainerResponse{}, nil
}
