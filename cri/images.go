package cri

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cri/adminapi"
	"github.com/berth-runtime/berth/image"
)

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
	for len(list) > 0 {
		n := min(len(list), streamChunk)
		if err := stream.Send(&runtimeapi.StreamImagesResponse{Images: list[:n]}); err != nil {
			return err
		}
		list = list[n:]
	}
	return nil
}

// ImageStatus reports an image; a missing one is a nil image, not an
// error, as the CRI says.
func (s *Server) ImageStatus(ctx context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	ref := req.GetImage().GetImage()
	if ref == "" {
		return nil, toStatus(invalidf("image.image is required"))
	}
	img, err := s.images.Get(ref)
	if err != nil {
		if image.IsNotFound(err) {
			return &runtimeapi.ImageStatusResponse{}, nil
		}
		return nil, toStatus(err)
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

// PullImage pulls an image, logging per-layer progress as it goes (the
// CRI shows only "pulling" and "done").
func (s *Server) PullImage(ctx context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	ref := req.GetImage().GetImage()
	if ref == "" {
		return nil, toStatus(invalidf("image.image is required"))
	}
	if image.LocalTransport(ref) {
		return nil, toStatus(invalidf("image %q: the CRI pulls from registries only, not from the node's files", ref))
	}
	auth, err := pullAuth(req.GetAuth())
	if err != nil {
		return nil, toStatus(err)
	}
	log := s.log.With("image", ref)
	start := time.Now()
	img, err := s.images.Pull(ctx, ref, image.PullOptions{
		Auth:             auth,
		ProgressInterval: s.cfg.PullProgressInterval.Duration,
		Progress: func(p image.PullStatus) {
			done, total := p.Bytes()
			var parts []string
			for _, l := range p.Layers {
				parts = append(parts, fmt.Sprintf("%s %s %d/%d", l.Digest.Encoded()[:12], l.State, l.Done, l.Size))
			}
			log.Info("pulling", "bytes", done, "total", total, "layers", strings.Join(parts, ", "))
		},
	})
	if err != nil {
		log.Warn("pull failed", "error", err)
		return nil, toStatus(err)
	}
	s.metric.pulled.Inc()
	s.metric.pullBytes.Add(float64(img.Size))
	log.Info("pulled", "id", img.ID, "took", time.Since(start).Round(time.Millisecond))
	return &runtimeapi.PullImageResponse{ImageRef: img.ID}, nil
}

// pullAuth turns CRI credentials into the image store's; "auth" is
// base64 "user:password", as in Docker's config.
func pullAuth(a *runtimeapi.AuthConfig) (*image.Auth, error) {
	if a == nil {
		return nil, nil
	}
	out := &image.Auth{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
	if a.Auth != "" && a.Username == "" {
		raw, err := base64.StdEncoding.DecodeString(a.Auth)
		if err != nil {
			return nil, invalidf("auth.auth is not base64: %v", err)
		}
		user, pass, ok := strings.Cut(string(raw), ":")
		if !ok {
			return nil, invalidf("auth.auth must encode user:password")
		}
		out.Username, out.Password = user, pass
	}
	if *out == (image.Auth{}) {
		return nil, nil
	}
	return out, nil
}

// RemoveImage removes an image with all its names; a missing image is
// success.
func (s *Server) RemoveImage(ctx context.Context, req *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	ref := req.GetImage().GetImage()
	if ref == "" {
		return nil, toStatus(invalidf("image.image is required"))
	}
	img, err := s.images.Get(ref)
	if err != nil {
		if image.IsNotFound(err) {
			return &runtimeapi.RemoveImageResponse{}, nil
		}
		return nil, toStatus(err)
	}
	// By id: every tag goes, as the CRI says.
	if err := s.images.Remove(img.ID); err != nil && !image.IsNotFound(err) {
		return nil, toStatus(err)
	}
	return &runtimeapi.RemoveImageResponse{}, nil
}

// ImageFsInfo reports what images and containers' writable layers use.
func (s *Server) ImageFsInfo(ctx context.Context, req *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	u, err := s.images.Usage()
	if err != nil {
		return nil, toStatus(err)
	}
	now := time.Now().UnixNano()
	resp := &runtimeapi.ImageFsInfoResponse{ImageFilesystems: []*runtimeapi.FilesystemUsage{{
		Timestamp: now, FsId: &runtimeapi.FilesystemIdentifier{Mountpoint: u.Mountpoint},
		UsedBytes: &runtimeapi.UInt64Value{Value: uint64(u.Bytes)}, InodesUsed: &runtimeapi.UInt64Value{Value: uint64(u.Inodes)},
	}}}
	var bytes, inodes int64
	for _, c := range s.store.listContainers() {
		b, i, err := s.writableUsage(c.ID)
		if err != nil && !errors.Is(err, image.ErrNotFound) {
			continue
		}
		bytes += b
		inodes += i
	}
	resp.ContainerFilesystems = []*runtimeapi.FilesystemUsage{{
		Timestamp: now, FsId: &runtimeapi.FilesystemIdentifier{Mountpoint: u.Mountpoint},
		UsedBytes: &runtimeapi.UInt64Value{Value: uint64(bytes)}, InodesUsed: &runtimeapi.UInt64Value{Value: uint64(inodes)},
	}}
	return resp, nil
}

// Pulls lists the pulls in flight, for the admin side channel.
func (s *Server) Pulls() []adminapi.Pull {
	out := []adminapi.Pull{}
	for _, p := range s.images.Pulls() {
		ap := adminapi.Pull{Ref: p.Ref, ID: p.ID, Started: p.Started}
		for _, l := range p.Layers {
			ap.Layers = append(ap.Layers, adminapi.Layer{Digest: l.Digest.String(), Size: l.Size, Done: l.Done, State: l.State.String()})
		}
		out = append(out, ap)
	}
	return out
}
