package cri

import (
	"context"
	"fmt"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
)

// RemovePodSandbox removes a pod and everything in it, stopping it first.
// An unknown sandbox is success.
func (s *Server) RemovePodSandbox(ctx context.Context, req *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	if err := s.onSandbox(req.GetPodSandboxId(), func(sb *sandbox) error { return s.removeSandboxLocked(ctx, sb) }); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.RemovePodSandboxResponse{}, nil
}

func (s *Server) removeSandboxLocked(ctx context.Context, sb *sandbox) error {
	sb.State = sandboxRemoving
	if err := s.store.putSandbox(sb); err != nil {
		return err
	}
	if err := s.stopSandboxLocked(ctx, sb); err != nil {
		return err
	}
	for _, c := range s.store.podContainers(sb.ID) {
		if err := s.removeContainer(ctx, c.ID); err != nil {
			return fmt.Errorf("remove container %s: %w", c.ID, err)
		}
	}
	s.deleteRuntimeContainer(sb.ID)
	s.removePodDir(sb)
	if parent := sb.CgroupParent; parent == s.defaultPodCgroupParent(sb.ID) {
		if err := removePodCgroup(ctx, s.cfg.CgroupDriver, parent); err != nil {
			return fmt.Errorf("remove pod cgroup %s: %w", parent, err)
		}
	}
	if err := s.store.releaseName("pod:"+sb.Name, sb.ID); err != nil {
		return err
	}
	// The DELETED event carries the pod's last status: the record is
	// gone once it is sent.
	var last *runtimeapi.PodSandboxStatus
	if s.events.subscribers() > 0 {
		last = s.sandboxStatus(sb)
	}
	if err := s.store.deleteSandbox(sb.ID); err != nil {
		return err
	}
	s.stats.forget(sb.ID)
	s.log.Info("pod sandbox removed", "pod", sb.ID, "name", sb.Name)
	if last != nil {
		s.publish(&runtimeapi.ContainerEventResponse{ContainerId: sb.ID, PodSandboxStatus: last,
			ContainerEventType: runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT, CreatedAt: time.Now().UnixNano()})
	}
	return nil
}

// removePodCgroup removes the pod cgroup berth made when the kubelet gave
// none (with the kubelet, the kubelet owns pod cgroups). Under systemd
// that is a slice, which stays until it is stopped.
func removePodCgroup(ctx context.Context, driver, parent string) error {
	if cgroups.Driver(driver) == cgroups.Systemd {
		return cgroups.RemoveSlice(ctx, parent)
	}
	return cgroups.RemoveTree(parent)
}
