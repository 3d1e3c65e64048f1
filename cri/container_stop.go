package cri

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/shim"
	"github.com/berth-runtime/berth/runtime"
)

// StopContainer sends the stop signal, waits up to the timeout, then
// kills. An unknown or stopped container is success.
func (s *Server) StopContainer(ctx context.Context, req *runtimeapi.StopContainerRequest) (*runtimeapi.StopContainerResponse, error) {
	if err := s.stopContainer(ctx, req.GetContainerId(), time.Duration(req.GetTimeout())*time.Second); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.StopContainerResponse{}, nil
}

// killWait bounds how long berthd waits for a SIGKILLed container to be
// reported gone.
const killWait = 10 * time.Second

func (s *Server) stopContainer(ctx context.Context, id string, timeout time.Duration) error {
	return s.onContainer(id, func(c *container) error { return s.stopContainerLocked(ctx, c, timeout) })
}

// stopContainerLocked stops a container whose lock the caller holds.
func (s *Server) stopContainerLocked(ctx context.Context, c *container, timeout time.Duration) error {
	if c.State != containerRunning && c.State != containerCreated {
		return nil
	}
	log := s.log.With("container", c.ID, "name", c.Name)
	rc, err := s.rt.Load(c.ID)
	if err != nil {
		if errors.Is(err, runtime.ErrNotExist) {
			return s.recordExit(c, &shim.Exit{Code: 255, At: time.Now()}, "container state is gone")
		}
		return err
	}
	client := s.shimFor(c.PodID)
	if timeout > 0 && c.State == containerRunning {
		sig, err := runtime.ParseSignal(c.StopSignal)
		if err != nil {
			sig = unix.SIGTERM
		}
		if err := rc.Signal(sig); err == nil {
			wctx, cancel := context.WithTimeout(ctx, timeout)
			exit, err := client.Wait(wctx, c.ID, "")
			cancel()
			if err == nil {
				return s.recordExit(c, exit, "")
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			log.Info("container did not stop in time; killing", "signal", c.StopSignal, "timeout", timeout)
		} else if !errors.Is(err, runtime.ErrNotRunning) {
			log.Warn("stop signal", "error", err)
		}
	}
	s.killAll(rc)
	wctx, cancel := context.WithTimeout(context.Background(), killWait)
	defer cancel()
	exit, err := client.Wait(wctx, c.ID, "")
	if err != nil {
		if errors.Is(err, shim.ErrUnavailable) || errors.Is(err, shim.ErrNotFound) {
			// No shim to tell the exit code: the processes are gone (or
			// about to be), and that is what matters.
			return s.recordExit(c, &shim.Exit{Code: 137, At: time.Now(), Signal: int(unix.SIGKILL)}, "berth-shim of the pod is gone; the container was killed")
		}
		return fmt.Errorf("stop container %s: %w", c.ID, err)
	}
	return s.recordExit(c, exit, "")
}

// killAll kills the container's init and every process in its cgroup:
// with a pod-wide pid namespace, its children do not die with it.
func (s *Server) killAll(rc ociContainer) {
	if err := rc.Signal(unix.SIGKILL); err != nil && !errors.Is(err, runtime.ErrNotRunning) {
		s.log.Debug("kill container", "container", rc.ID(), "error", err)
	}
	pids, err := rc.Processes()
	if err != nil {
		return
	}
	for _, pid := range pids {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
}

// recordExit marks a container exited (once) with the reason the CRI
// expects: OOMKilled, Completed or Error.
func (s *Server) recordExit(c *container, exit *shim.Exit, message string) error {
	if c.State == containerExited || c.State == containerRemoving {
		return nil
	}
	c.State = containerExited
	c.ExitCode = int32(exit.Code)
	c.FinishedAt = exit.At
	if c.FinishedAt.IsZero() {
		c.FinishedAt = time.Now()
	}
	if c.StartedAt.IsZero() {
		// Killed before it started: the CRI still wants a start time no
		// later than the finish.
		c.StartedAt = c.FinishedAt
	}
	switch {
	case exit.OOMKilled || s.oomKilled(c.ID):
		c.Reason = "OOMKilled"
	case exit.Code == 0:
		c.Reason = "Completed"
	default:
		c.Reason = "Error"
	}
	c.Message = message
	if err := s.store.putContainer(c); err != nil {
		return err
	}
	s.log.Info("container exited", "container", c.ID, "name", c.Name, "code", c.ExitCode, "reason", c.Reason)
	s.emit(c.ID, c.PodID, runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT)
	return nil
}

// oomKilled reads the kernel's OOM kill count of the container's cgroup,
// where it is still there: a shim older than the exit's OOMKilled, or a
// container whose shim could not watch its cgroup. (Under the systemd
// driver the cgroup is gone with the last process; the shim's watch is
// what counts there.)
func (s *Server) oomKilled(id string) bool {
	rc, err := s.rt.Load(id)
	if err != nil {
		return false
	}
	n, err := cgroups.OOMKillCount(rc.CgroupPaths())
	return err == nil && n > 0
}
