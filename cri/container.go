package cri

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/shim"
	"github.com/berth-runtime/berth/runtime"
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

// StopContainer sends the stop signal, waits up to the timeout, then
// kills. An unknown or stopped container is success.
func (s *Server) StopContainer(ctx context.Context, req *runtimeapi.StopContainerRequest) (*runtimeapi.StopContainerResponse, error) {
	if req.GetContainerId() == "" {
		return nil, toStatus(invalidf("container_id is required"))
	}
	c, err := s.findContainer(req.GetContainerId())
	if err != nil {
		if errors.Is(err, errNotFound) {
			return &runtimeapi.StopContainerResponse{}, nil
		}
		return nil, toStatus(err)
	}
	if err := s.stopContainer(ctx, c.ID, time.Duration(req.GetTimeout())*time.Second); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.StopContainerResponse{}, nil
}

// killWait bounds how long berthd waits for a SIGKILLed container to be
// reported gone.
const killWait = 10 * time.Second

func (s *Server) stopContainer(ctx context.Context, id string, timeout time.Duration) error {
	unlock := s.locks.lock(id)
	defer unlock()
	c, ok := s.store.getContainer(id)
	if !ok {
		return nil
	}
	return s.stopContainerLocked(ctx, c, timeout)
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
func (s *Server) killAll(rc *runtime.Container) {
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
	case s.oomKilled(c.ID):
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
// which stays until the container is deleted.
func (s *Server) oomKilled(id string) bool {
	rc, err := s.rt.Load(id)
	if err != nil {
		return false
	}
	paths := rc.CgroupPaths()
	file := filepath.Join(paths["memory"], "memory.oom_control")
	if cgroups.HostMode() == cgroups.Unified {
		file = filepath.Join(paths[""], "memory.events")
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n > 0
		}
	}
	return false
}

// RemoveContainer removes a container, killing it if it runs. An unknown
// id is success.
func (s *Server) RemoveContainer(ctx context.Context, req *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	if req.GetContainerId() == "" {
		return nil, toStatus(invalidf("container_id is required"))
	}
	c, err := s.findContainer(req.GetContainerId())
	if err != nil {
		if errors.Is(err, errNotFound) {
			return &runtimeapi.RemoveContainerResponse{}, nil
		}
		return nil, toStatus(err)
	}
	if err := s.removeContainer(ctx, c.ID); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.RemoveContainerResponse{}, nil
}

func (s *Server) removeContainer(ctx context.Context, id string) error {
	unlock := s.locks.lock(id)
	defer unlock()
	c, ok := s.store.getContainer(id)
	if !ok {
		return nil
	}
	return s.removeContainerLocked(ctx, c)
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

// criState maps a record's state to the CRI's.
func criState(st string) runtimeapi.ContainerState {
	switch st {
	case containerCreated:
		return runtimeapi.ContainerState_CONTAINER_CREATED
	case containerRunning:
		return runtimeapi.ContainerState_CONTAINER_RUNNING
	case containerExited:
		return runtimeapi.ContainerState_CONTAINER_EXITED
	}
	return runtimeapi.ContainerState_CONTAINER_UNKNOWN
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// resources are the container's resources: those of its last update, or
// those it was created with.
func (c *container) resources() *runtimeapi.LinuxContainerResources {
	if len(c.Resources) > 0 {
		r := &runtimeapi.LinuxContainerResources{}
		if proto.Unmarshal(c.Resources, r) == nil {
			return r
		}
	}
	return c.config.GetLinux().GetResources()
}

// containerStatus is the CRI view of a container record.
func (s *Server) containerStatus(c *container) *runtimeapi.ContainerStatus {
	cfg := c.config
	st := &runtimeapi.ContainerStatus{
		Id: c.ID, Metadata: cfg.Metadata, State: criState(c.State),
		CreatedAt: nanos(c.CreatedAt), StartedAt: nanos(c.StartedAt), FinishedAt: nanos(c.FinishedAt),
		ExitCode: c.ExitCode, Image: &runtimeapi.ImageSpec{Image: cfg.Image.GetImage(), UserSpecifiedImage: cfg.Image.GetUserSpecifiedImage(), Annotations: cfg.Image.GetAnnotations()},
		ImageRef: c.ImageRef, ImageId: c.ImageID, Reason: c.Reason, Message: c.Message,
		Labels: cfg.Labels, Annotations: cfg.Annotations, Mounts: cfg.Mounts, LogPath: c.LogPath,
		StopSignal: cfg.StopSignal,
	}
	if c.State == containerExited || c.State == containerRemoving {
		st.State = runtimeapi.ContainerState_CONTAINER_EXITED
	}
	if res := c.resources(); res != nil {
		st.Resources = &runtimeapi.ContainerResources{Linux: res}
	}
	if c.User != nil {
		lu := &runtimeapi.LinuxContainerUser{Uid: int64(c.User.UID), Gid: int64(c.User.GID)}
		for _, g := range c.User.Groups {
			lu.SupplementalGroups = append(lu.SupplementalGroups, int64(g))
		}
		st.User = &runtimeapi.ContainerUser{Linux: lu}
	}
	return st
}

// ContainerStatus reports a container, with its spec and pid when verbose.
func (s *Server) ContainerStatus(ctx context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	c, err := s.findContainer(req.GetContainerId())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &runtimeapi.ContainerStatusResponse{Status: s.containerStatus(c)}
	if req.Verbose {
		info := map[string]any{"pid": c.Pid, "sandboxID": c.PodID, "state": c.State, "user": c.User, "stopSignal": c.StopSignal}
		if data, err := os.ReadFile(filepath.Join(s.cfg.containerDir(c.ID), runtime.ConfigFile)); err == nil {
			info["runtimeSpec"] = jsonRaw(data)
		}
		resp.Info = map[string]string{"info": jsonString(info)}
	}
	return resp, nil
}

// ListContainers lists containers matching every filter field.
func (s *Server) ListContainers(ctx context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	return &runtimeapi.ListContainersResponse{Containers: s.listContainers(req.GetFilter())}, nil
}

func (s *Server) listContainers(f *runtimeapi.ContainerFilter) []*runtimeapi.Container {
	var out []*runtimeapi.Container
	for _, c := range s.store.listContainers() {
		if c.State == containerCreating {
			continue
		}
		st := s.containerStatus(c)
		if f != nil {
			if f.Id != "" && !strings.HasPrefix(c.ID, f.Id) {
				continue
			}
			if f.PodSandboxId != "" && !strings.HasPrefix(c.PodID, f.PodSandboxId) {
				continue
			}
			if f.State != nil && f.State.State != st.State {
				continue
			}
			if !matchLabels(c.config.Labels, f.LabelSelector) {
				continue
			}
		}
		out = append(out, &runtimeapi.Container{
			Id: c.ID, PodSandboxId: c.PodID, Metadata: st.Metadata, Image: st.Image, ImageRef: c.ImageRef,
			ImageId: c.ImageID, State: st.State, CreatedAt: st.CreatedAt, Labels: st.Labels, Annotations: st.Annotations,
		})
	}
	return out
}

// StreamContainers sends the list in chunks.
func (s *Server) StreamContainers(req *runtimeapi.StreamContainersRequest, stream runtimeapi.RuntimeService_StreamContainersServer) error {
	list := s.listContainers(req.GetFilter())
	for len(list) > 0 {
		n := min(len(list), streamChunk)
		if err := stream.Send(&runtimeapi.StreamContainersResponse{Containers: list[:n]}); err != nil {
			return err
		}
		list = list[n:]
	}
	return nil
}

// streamChunk is how many items a Stream* response carries.
const streamChunk = 500

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
