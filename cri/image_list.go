package cri

import (
	"context"
	"strconv"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/image"
)

// ListImages lists stored images, or the one the filter names.
func (s *Server) ListImages(ctx context.Context, req *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	list, err := s.listImages(req.GetFilter())
	if err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.ListImagesResponse{Images: list}, nil
}

func (s *Server) listImages(f *runtimeapi.ImageFilter) ([]*runtimeapi.Image, error) {
	if ref := f.GetImage().GetImage(); ref != "" {
		img, err := s.images.Get(ref)
		if err != nil {
			if image.IsNotFound(err) {
				return nil, nil
			}
			return nil, err
		}
		return []*runtimeapi.Image{s.criImage(img)}, nil
	}
	imgs, err := s.images.List()
	if err != nil {
		return nil, err
	}
	out := make([]*runtimeapi.Image, 0, len(imgs))
	for i := range imgs {
		out = append(out, s.criImage(&imgs[i]))
	}
	return out, nil
}

// StreamImages sends the list in chunks.
func (s *Server) StreamImages(req *runtimeapi.StreamImagesRequest, stream runtimeapi.ImageService_StreamImagesServer) error {
	list, err := s.listImages(req.GetFilter())
	if err != nil {
		return toStatus(err)
	}
	return sendChunks(list, func(chunk []*runtimeapi.Image) *runtimeapi.StreamImagesResponse {
		return &runtimeapi.StreamImagesResponse{Images: chunk}
	}, stream.Send)
}

// criImage is the CRI view of a stored image.
func (s *Server) criImage(img *image.Image) *runtimeapi.Image {
	out := &runtimeapi.Image{
		Id: img.ID, RepoTags: img.Names, RepoDigests: img.RepoDigests, Size: uint64(max(img.Size, 0)),
		Spec: &runtimeapi.ImageSpec{Image: img.ID},
	}
	if cfg, err := s.images.Config(img); err == nil {
		u, _, _ := strings.Cut(cfg.Config.User, ":")
		if n, err := strconv.ParseInt(u, 10, 64); err == nil {
			out.Uid = &runtimeapi.Int64Value{Value: n}
		} else {
			out.Username = u
		}
	}
	return out
}

// lookupImage finds the image a request names. A missing image is
// (nil, nil): ImageStatus and RemoveImage answer it as success.
func (s *Server) lookupImage(spec *runtimeapi.ImageSpec) (*image.Image, error) {
	ref := spec.GetImage()
	if ref == "" {
		return nil, invalidf("image.image is required")
	}
	img, err := s.images.Get(ref)
	if image.IsNotFound(err) {
		return nil, nil
	}
	return img, err
}
