package cri

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cri/adminapi"
	"github.com/berth-runtime/berth/image"
)

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

// LazyLayers lists the layers served lazily, for the side channel and
// the metrics.
func (s *Server) LazyLayers(ctx context.Context) ([]adminapi.LazyLayer, error) {
	ll, err := s.images.LazyLayers(ctx)
	if err != nil {
		return nil, err
	}
	out := []adminapi.LazyLayer{}
	for _, l := range ll {
		out = append(out, adminapi.LazyLayer{Digest: l.Blob.String(), Size: l.Size, Local: l.Local, Error: l.Error})
	}
	return out, nil
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
