package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/image"
)

// RemoveImage removes an image with all its names; a missing image is
// success.
func (s *Server) RemoveImage(ctx context.Context, req *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	img, err := s.lookupImage(req.GetImage())
	if err != nil {
		return nil, toStatus(err)
	}
	if img == nil {
		return &runtimeapi.RemoveImageResponse{}, nil
	}
	// By id: every tag goes, as the CRI says.
	if err := s.images.Remove(img.ID); err != nil && !image.IsNotFound(err) {
		return nil, toStatus(err)
	}
	return &runtimeapi.RemoveImageResponse{}, nil
}
