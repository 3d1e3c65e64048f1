package cri

import (
	"errors"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/shim"
	"github.com/berth-runtime/berth/runtime"
)

// handleShimEvent records a process exit a shim reported.
func (s *Server) handleShimEvent(podID string, ev shim.Event) {
	if ev.Type != "exit" || ev.Process.ExecID != "" || ev.Process.Exit == nil {
		// Exec exits are waited for by the call that started them.
		return
	}
	// Not on the stream's goroutine: recording takes the object's lock,
	// which a slow call may hold.
	go func() {
		if ev.Process.ID == podID {
			s.pauseExited(podID)
			return
		}
		s.exitContainer(ev.Process.ID, ev.Process.Exit, "")
	}()
}

// handleShimConnect catches up on exits missed while not watching.
func (s *Server) handleShimConnect(podID string) {
	if err := s.reconcilePod(podID); err != nil && !errors.Is(err, shim.ErrUnavailable) {
		s.log.Warn("reconcile pod", "pod", podID, "error", err)
	}
}

// handleShimGone deals with a pod whose shim died: its processes have no
// keeper any more, so they are stopped and recorded as exited, and the
// pod becomes not ready for the kubelet to replace.
func (s *Server) handleShimGone(podID string) {
	unlock := s.locks.lock(podID)
	defer unlock()
	sb, ok := s.store.getSandbox(podID)
	if !ok || (sb.State != sandboxReady && !s.podRuns(podID)) {
		return
	}
	s.log.Warn("berth-shim of the pod is gone; stopping what it kept", "pod", podID)
	for _, c := range s.store.podContainers(podID) {
		if c.State != containerRunning && c.State != containerCreated {
			continue
		}
		code := 137
		if rc, err := s.rt.Load(c.ID); err == nil {
			if st, err := rc.Status(); err == nil && st == runtime.StatusStopped {
				code = 255 // it ended on its own; the exit code died with the shim
			}
			s.killAll(rc)
		}
		s.exitContainer(c.ID, &shim.Exit{Code: code, At: time.Now()}, "berth-shim of the pod died")
	}
	if rc, err := s.rt.Load(podID); err == nil {
		s.killAll(rc)
	}
	if sb.State == sandboxReady {
		sb.State = sandboxNotReady
		if err := s.store.putSandbox(sb); err != nil {
			s.log.Warn("record pod state", "pod", podID, "error", err)
		}
		s.emit(podID, podID, runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT)
	}
}

// exitContainer records an exit under the container's lock.
func (s *Server) exitContainer(id string, exit *shim.Exit, message string) {
	unlock := s.locks.lock(id)
	defer unlock()
	c, ok := s.store.getContainer(id)
	if !ok || (c.State != containerRunning && c.State != containerCreated) {
		return
	}
	s.logErr("record container exit", id, s.recordExit(c, exit, message))
}

// pauseExited marks a pod whose pause process died not ready.
func (s *Server) pauseExited(podID string) {
	unlock := s.locks.lock(podID)
	defer unlock()
	sb, ok := s.store.getSandbox(podID)
	if !ok || sb.State != sandboxReady {
		return
	}
	s.pauseExitedLocked(sb)
}

func (s *Server) pauseExitedLocked(sb *sandbox) {
	s.log.Warn("pause process exited: pod sandbox is not ready", "pod", sb.ID)
	sb.State = sandboxNotReady
	if err := s.store.putSandbox(sb); err != nil {
		s.log.Warn("record pod state", "pod", sb.ID, "error", err)
		return
	}
	s.emit(sb.ID, sb.ID, runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT)
}
