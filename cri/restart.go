package cri

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/berth-runtime/berth/internal/shim"
)

// recover brings the records and the host back in line after berthd
// stopped, however it stopped: work cut short is finished or undone,
// exits that happened meanwhile are recorded, live shims are watched
// again, and whatever no record owns is removed.
func (s *Server) recover(ctx context.Context) {
	start := time.Now()
	for _, c := range s.store.listContainers() {
		switch c.State {
		case containerCreating:
			s.log.Info("recovery: removing a container whose creation was cut short", "container", c.ID)
			c.State = containerRemoving
			if err := s.store.putContainer(c); err == nil {
				s.logErr("recovery: remove container", c.ID, s.finishRemoveContainer(c))
			}
		case containerRemoving:
			s.log.Info("recovery: finishing the removal of a container", "container", c.ID)
			s.logErr("recovery: remove container", c.ID, s.finishRemoveContainer(c))
		}
	}
	for _, sb := range s.store.listSandboxes() {
		switch sb.State {
		case sandboxCreating, sandboxRemoving:
			s.log.Info("recovery: removing a pod sandbox", "pod", sb.ID, "state", sb.State)
			s.logErr("recovery: remove pod sandbox", sb.ID, s.removeSandboxLocked(ctx, sb))
		default:
			if sb.Stopping {
				s.log.Info("recovery: finishing the stop of a pod sandbox", "pod", sb.ID)
				err := s.stopSandboxLocked(ctx, sb)
				if err == nil {
					continue
				}
				s.log.Warn("recovery: stop pod sandbox", "pod", sb.ID, "error", err)
			}
			s.recoverPod(sb)
		}
	}
	s.removeOrphans()
	s.log.Info("recovered state", "pods", len(s.store.listSandboxes()), "containers", len(s.store.listContainers()), "took", time.Since(start).Round(time.Millisecond))
}

// recoverPod records what happened to a pod's processes while berthd was
// away and watches its shim again.
func (s *Server) recoverPod(sb *sandbox) {
	if _, err := os.Stat(s.shims.socket(sb.ID)); err != nil && sb.State != sandboxReady && !s.podRuns(sb.ID) {
		// Stopped before; its shim is gone as it should be.
		return
	}
	if err := s.reconcilePod(sb.ID); err != nil {
		// Gone only if its process is: a shim that runs but does not
		// answer yet is watched until it does.
		if alive, _ := s.shims.alive(sb.ID); errors.Is(err, shim.ErrUnavailable) && !alive {
			s.handleShimGone(sb.ID)
			return
		}
		s.log.Warn("recovery: reconcile pod", "pod", sb.ID, "error", err)
	}
	s.shims.watch(sb.ID)
}

func (s *Server) logErr(msg, id string, err error) {
	if err != nil {
		s.log.Warn(msg, "id", id, "error", err)
	}
}

// podRuns reports whether any container of the pod is recorded as
// created or running.
func (s *Server) podRuns(podID string) bool {
	for _, c := range s.store.podContainers(podID) {
		if c.State == containerRunning || c.State == containerCreated {
			return true
		}
	}
	return false
}

// reconcilePod reads the shim's view of the pod and records every exit
// berthd has not seen.
func (s *Server) reconcilePod(podID string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := s.shimFor(podID).State(ctx)
	if err != nil {
		return err
	}
	known := map[string]shim.ProcessStatus{}
	for _, p := range st.Containers {
		known[p.ID] = p
	}
	for _, c := range s.store.podContainers(podID) {
		if (c.State != containerRunning && c.State != containerCreated) || c.Restore != "" {
			continue // a container to restore has no process yet
		}
		p, ok := known[c.ID]
		switch {
		case ok && p.Exit != nil:
			s.exitContainer(c.ID, p.Exit, "")
		case !ok:
			s.stopUnknown(podID, c.ID)
		}
	}
	switch p, ok := known[podID]; {
	case ok && p.Exit != nil:
		s.pauseExited(podID)
	case !ok:
		s.pauseUnknown(podID)
	}
	return nil
}

// shimKnows asks the pod's shim afresh whether it keeps a process, and
// its exit if it ended.
func (s *Server) shimKnows(podID, id string) (known bool, exit *shim.Exit, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := s.shimFor(podID).State(ctx)
	if err != nil {
		return false, nil, err
	}
	for _, p := range st.Containers {
		if p.ID == id {
			return true, p.Exit, nil
		}
	}
	return false, nil, nil
}

// stopUnknown stops a container its shim does not know: the shim never
// made it, or forgot it, so whatever runs of it has no stdio keeper. A
// snapshot of the shim can predate a CreateContainer still running, so
// the verdict is taken again under the container's lock, which that call
// holds until the shim knows the container.
func (s *Server) stopUnknown(podID, id string) {
	unlock := s.locks.lock(id)
	defer unlock()
	c, ok := s.store.getContainer(id)
	if !ok || (c.State != containerRunning && c.State != containerCreated) || c.Restore != "" {
		return
	}
	known, exit, err := s.shimKnows(podID, id)
	switch {
	case err != nil:
		return // the shim is unreachable: its watcher deals with that
	case known && exit != nil:
		s.logErr("record container exit", id, s.recordExit(c, exit, ""))
		return
	case known:
		return
	}
	s.log.Warn("container unknown to its shim; stopping it", "container", id)
	if rc, err := s.rt.Load(id); err == nil {
		s.killAll(rc)
	}
	s.logErr("record container exit", id, s.recordExit(c, &shim.Exit{Code: 255, At: time.Now()}, "berth-shim of the pod does not know this container"))
}

// pauseUnknown marks a pod not ready when its shim does not know its
// pause process; as for containers, asked again under the pod's lock,
// which RunPodSandbox holds until the pause runs.
func (s *Server) pauseUnknown(podID string) {
	unlock := s.locks.lock(podID)
	defer unlock()
	sb, ok := s.store.getSandbox(podID)
	if !ok || sb.State != sandboxReady {
		return
	}
	if known, exit, err := s.shimKnows(podID, podID); err != nil || (known && exit == nil) {
		return
	}
	s.pauseExitedLocked(sb)
}

// removeOrphans removes what no record owns: runtime containers, root
// filesystems, network namespaces, pod and container directories and
// shims left by a crash between making a thing and recording it.
func (s *Server) removeOrphans() {
	owned := map[string]bool{}
	for _, sb := range s.store.listSandboxes() {
		owned[sb.ID] = true
	}
	for _, c := range s.store.listContainers() {
		owned[c.ID] = true
	}
	// Each handler's own: an orphan has no record to name its pod's.
	for _, h := range s.distinctHandlers() {
		states, err := h.rt.List()
		if err != nil {
			s.log.Warn("recovery: list containers", "handler", h.name, "error", err)
			continue
		}
		for _, st := range states {
			if !owned[st.ID] {
				s.log.Info("recovery: deleting an orphan container", "container", st.ID, "handler", h.name)
				if c, err := h.rt.Load(st.ID); err == nil {
					s.logErr("delete orphan container", st.ID, c.Delete(true))
				}
			}
		}
	}
	if list, err := s.images.Rootfses(); err == nil {
		for _, r := range list {
			if !owned[r.ID] {
				s.log.Info("recovery: removing an orphan root filesystem", "container", r.ID)
				s.logErr("remove orphan root filesystem", r.ID, s.images.RemoveRootfs(r.ID))
			}
		}
	}
	if users, err := s.images.ImageMountUsers(); err == nil {
		for _, u := range users {
			if !owned[u] {
				s.log.Info("recovery: releasing the image volumes of a container that is gone", "container", u)
				s.logErr("release image volumes", u, s.images.UnmountImages(u))
			}
		}
	}
	netns := map[string]bool{}
	for _, sb := range s.store.listSandboxes() {
		if sb.NetNS != "" {
			netns[sb.NetNS] = true
		}
	}
	if entries, err := os.ReadDir(s.cfg.netnsDir()); err == nil {
		for _, e := range entries {
			p := filepath.Join(s.cfg.netnsDir(), e.Name())
			if !netns[p] {
				s.log.Info("recovery: removing an orphan network namespace", "path", p)
				s.logErr("remove orphan netns", p, s.net.RemoveNetNS(p))
			}
		}
	}
	if entries, err := os.ReadDir(filepath.Join(s.cfg.State, "pods")); err == nil {
		for _, e := range entries {
			if !owned[e.Name()] {
				s.removePodDir(&sandbox{ID: e.Name()})
			}
		}
	}
	if entries, err := os.ReadDir(filepath.Join(s.cfg.State, "containers")); err == nil {
		for _, e := range entries {
			if !owned[e.Name()] {
				_ = os.RemoveAll(filepath.Join(s.cfg.State, "containers", e.Name()))
			}
		}
	}
	shortIDs := map[string]string{}
	for _, sb := range s.store.listSandboxes() {
		shortIDs[sb.ID[:16]] = sb.ID
	}
	if entries, err := os.ReadDir(filepath.Join(s.cfg.State, "shim")); err == nil {
		for _, e := range entries {
			short := strings.TrimSuffix(e.Name(), ".sock")
			if _, ok := shortIDs[short]; ok || len(short) != 16 {
				continue
			}
			// A shim of no pod: let it go once nothing of it runs.
			s.log.Info("recovery: stopping an orphan shim", "shim", short)
			s.shims.stop(context.Background(), short)
		}
	}
}
