package cri

import (
	"context"
	"io"
	"time"

	"github.com/berth-runtime/berth/cri/adminapi"
	"github.com/berth-runtime/berth/image"
)

// ImportImages loads the images of an archive, for the admin side
// channel (berthctl import): the CRI pulls from registries only, and an
// air-gapped node loads its images from files.
func (s *Server) ImportImages(ctx context.Context, r io.Reader, name string) ([]adminapi.ImportedImage, error) {
	start := time.Now()
	imgs, err := s.images.Import(ctx, r, image.ImportOptions{Name: name})
	out := []adminapi.ImportedImage{}
	for _, img := range imgs {
		out = append(out, adminapi.ImportedImage{ID: img.ID, Names: img.Names})
		s.metric.pulled.Inc()
		s.metric.pullBytes.Add(float64(img.Size))
		s.log.Info("imported", "image", img.Names, "id", img.ID, "took", time.Since(start).Round(time.Millisecond))
	}
	if err != nil {
		s.log.Warn("import failed", "error", err)
	}
	return out, err
}

// ExportImages writes the images refs name to w as one archive (format:
// docker-archive, the default, or oci-archive), for berthctl export on
// the side channel.
func (s *Server) ExportImages(ctx context.Context, w io.Writer, refs []string, format string) error {
	start := time.Now()
	err := s.images.Export(ctx, w, refs, image.ExportOptions{Format: format})
	if err != nil {
		s.log.Warn("export failed", "images", refs, "error", err)
		return err
	}
	s.log.Info("exported", "images", refs, "format", format, "took", time.Since(start).Round(time.Millisecond))
	return nil
}
