package cri

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/runtime"
)

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
