package cri

import (
	"context"
	"errors"
	"fmt"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/shim"
	"github.com/berth-runtime/berth/runtime"
)

// StopPodSandbox kills every process of the pod and releases its network.
// An unknown or stopped sandbox is success.
func (s *Server) StopPodSandbox(ctx context.Context, req *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	if err := s.onSandbox(req.GetPodSandboxId(), func(sb *sandbox) error { return s.stopSandboxLocked(ctx, sb) }); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

// stopSandboxLocked stops a sandbox whose lock the caller holds; running
// it again finishes what a failed or interrupted run left.
func (s *Server) stopSandboxLocked(ctx context.Context, sb *sandbox) error {
	log := s.log.With("pod", sb.ID, "name", sb.Name)
	if !sb.Stopping {
		sb.Stopping = true
		if err := s.store.putSandbox(sb); err != nil {
			return err
		}
	}
	for _, c := range s.store.podContainers(sb.ID) {
		if err := s.stopContainer(ctx, c.ID, 0); err != nil {
			return fmt.Errorf("stop container %s: %w", c.ID, err)
		}
	}
	if err := s.stopPause(sb); err != nil {
		return err
	}
	if sb.CNIAdded {
		if err := s.net.Teardown(ctx, s.networkPod(sb, sb.config)); err != nil {
			return fmt.Errorf("tear down pod network: %w", err)
		}
		sb.CNIAdded = false
		if err := s.store.putSandbox(sb); err != nil {
			return err
		}
	}
	if sb.NetNS != "" {
		if err := s.net.RemoveNetNS(sb.NetNS); err != nil {
			return fmt.Errorf("remove network namespace: %w", err)
		}
		sb.NetNS = ""
	}
	wasReady := sb.State == sandboxReady
	if sb.State != sandboxRemoving {
		sb.State = sandboxNotReady
	}
	sb.Stopping = false
	if err := s.store.putSandbox(sb); err != nil {
		return err
	}
	// Nothing of the pod runs any more: its shim may go.
	s.shims.stop(ctx, sb.ID)
	if wasReady {
		log.Info("pod sandbox stopped")
		s.emit(sb.ID, sb.ID, runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT)
	}
	return nil
}

// stopPause kills the pause process and waits until it is gone.
func (s *Server) stopPause(sb *sandbox) error {
	rc, err := s.rt.Load(sb.ID)
	if err != nil {
		if errors.Is(err, runtime.ErrNotExist) {
			return nil
		}
		return err
	}
	s.killAll(rc)
	ctx, cancel := context.WithTimeout(context.Background(), killWait)
	defer cancel()
	if _, err := s.shimFor(sb.ID).Wait(ctx, sb.ID, ""); err != nil && !errors.Is(err, shim.ErrUnavailable) && !errors.Is(err, shim.ErrNotFound) {
		return fmt.Errorf("stop pause process: %w", err)
	}
	// Without a shim to wait on, wait for the kernel.
	for ctx.Err() == nil {
		if st, err := rc.Status(); err != nil || st == runtime.StatusStopped {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return errors.New("pause process did not die")
}
