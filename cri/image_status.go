package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ImageStatus reports an image; a missing one is a nil image, not an
// error, as the CRI says.
func (s *Server) ImageStatus(ctx context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	img, err := s.lookupImage(req.GetImage())
	if err != nil {
		return nil, toStatus(err)
	}
	if img == nil {
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	resp := &runtimeapi.ImageStatusResponse{Image: s.criImage(img)}
	if req.Verbose {
		info := map[string]any{"id": img.ID, "manifest": img.Manifest, "chainIDs": img.Layers, "pulled": img.Pulled}
		if cfg, err := s.images.Config(img); err == nil {
			info["imageSpec"] = cfg
		}
		resp.Info = map[string]string{"info": jsonString(info)}
	}
	return resp, nil
}
