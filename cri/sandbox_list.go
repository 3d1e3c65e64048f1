package cri

import (
	"context"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ListPodSandbox lists sandboxes matching every filter field.
func (s *Server) ListPodSandbox(ctx context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	return &runtimeapi.ListPodSandboxResponse{Items: s.listSandboxes(req.GetFilter())}, nil
}

func (s *Server) listSandboxes(f *runtimeapi.PodSandboxFilter) []*runtimeapi.PodSandbox {
	var out []*runtimeapi.PodSandbox
	for _, sb := range s.store.listSandboxes() {
		if sb.State == sandboxCreating {
			continue
		}
		st := s.sandboxStatus(sb)
		if f != nil {
			if f.Id != "" && !strings.HasPrefix(sb.ID, f.Id) {
				continue
			}
			if f.State != nil && f.State.State != st.State {
				continue
			}
			if !matchLabels(sb.config.Labels, f.LabelSelector) {
				continue
			}
		}
		out = append(out, &runtimeapi.PodSandbox{
			Id: sb.ID, Metadata: st.Metadata, State: st.State, CreatedAt: st.CreatedAt,
			Labels: st.Labels, Annotations: st.Annotations, RuntimeHandler: sb.RuntimeHandler,
		})
	}
	return out
}

// StreamPodSandboxes sends the list in chunks.
func (s *Server) StreamPodSandboxes(req *runtimeapi.StreamPodSandboxesRequest, stream runtimeapi.RuntimeService_StreamPodSandboxesServer) error {
	list := s.listSandboxes(req.GetFilter())
	return sendChunks(list, func(chunk []*runtimeapi.PodSandbox) *runtimeapi.StreamPodSandboxesResponse {
		return &runtimeapi.StreamPodSandboxesResponse{PodSandboxes: chunk}
	}, stream.Send)
}
