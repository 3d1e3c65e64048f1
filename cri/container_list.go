package cri

import (
	"context"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

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
	return sendChunks(list, func(chunk []*runtimeapi.Container) *runtimeapi.StreamContainersResponse {
		return &runtimeapi.StreamContainersResponse{Containers: chunk}
	}, stream.Send)
}
