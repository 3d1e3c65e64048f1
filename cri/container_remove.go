package cri

import (
	"context"
	"errors"
	"fmt"
	"os"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/shim"
)

// RemoveContainer removes a container, killing it if it runs. An unknown
// id is success.
func (s *Server) RemoveContainer(ctx context.Context, req *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	if err := s.removeContainer(ctx, req.GetContainerId()); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.RemoveContainerResponse{}, nil
}

func (s *Server) removeContainer(ctx context.Context, id string) error {
	return s.onContainer(id, func(c *container) error { return s.removeContainerLocked(ctx, c) })
}

func (s *Server) removeContainerLocked(ctx context.Context, c *container) error {
	if err := s.stopContainerLocked(ctx, c, 0); err != nil {
		return err
	}
	// Recorded first: a crash from here on finishes the removal at restart.
	c.State = containerRemoving
	if err := s.store.putContainer(c); err != nil {
		return err
	}
	return s.finishRemoveContainer(c)
}

// finishRemoveContainer removes everything of a container in removal.
func (s *Server) finishRemoveContainer(c *container) error {
	if err := s.shimFor(c.PodID).Forget(context.Background(), c.ID, ""); err != nil && !errors.Is(err, shim.ErrUnavailable) {
		s.log.Debug("shim forget", "container", c.ID, "error", err)
	}
	s.deleteRuntimeContainer(c.ID)
	if err := s.images.RemoveRootfs(c.ID); err != nil {
		return fmt.Errorf("remove root filesystem of %s: %w", c.ID, err)
	}
	if err := s.images.UnmountImages(c.ID); err != nil {
		return fmt.Errorf("release the image volumes of %s: %w", c.ID, err)
	}
	if err := os.RemoveAll(s.cfg.containerDir(c.ID)); err != nil {
		return err
	}
	if err := s.store.releaseName("ctr:"+c.Name, c.ID); err != nil {
		return err
	}
	if err := s.store.deleteContainer(c.ID); err != nil {
		return err
	}
	s.stats.forget(c.ID)
	s.log.Info("container removed", "container", c.ID, "name", c.Name)
	s.emit(c.ID, c.PodID, runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT)
	return nil
}
