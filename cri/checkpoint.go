package cri

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CheckpointContainer is not supported yet.
func (s *Server) CheckpointContainer(ctx context.Context, req *runtimeapi.CheckpointContainerRequest) (*runtimeapi.CheckpointContainerResponse, error) {
	return nil, status.Error(codes.Unimplemented, "checkpointing is not supported by berth: it is built without CRIU")
}

// CheckpointPod is not supported yet.
func (s *Server) CheckpointPod(ctx context.Context, req *runtimeapi.CheckpointPodRequest) (*runtimeapi.CheckpointPodResponse, error) {
	return nil, status.Error(codes.Unimplemented, "pod checkpointing is not supported by berth: it is built without CRIU")
}

// RestorePod is not supported yet.
func (s *Server) RestorePod(ctx context.Context, req *runtimeapi.RestorePodRequest) (*runtimeapi.RestorePodResponse, error) {
	return nil, status.Error(codes.Unimplemented, "restoring pods from checkpoints is not supported by berth: it is built without CRIU")
}
