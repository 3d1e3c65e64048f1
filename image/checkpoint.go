package image

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// What a restore from a checkpoint image reads of it.

// Annotations are the annotations of the image's manifest (an OCI
// manifest's; a Docker one has none).
func (s *Store) Annotations(img *Image) (map[string]string, error) {
	data, err := os.ReadFile(s.blobPath(img.Manifest))
	if err != nil {
		return nil, fmt.Errorf("image %s manifest: %w", img.ID, err)
	}
	var m struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, withKind(ErrBadImage, fmt.Errorf("image %s manifest: %w", img.ID, err))
	}
	return m.Annotations, nil
}

// CopyFiles copies the files of a one-layer image (a checkpoint image:
// a checkpoint archive added to an empty image) under root. Only plain
// files and directories are taken, as from a checkpoint archive.
func (s *Store) CopyFiles(img *Image, root *os.Root) error {
	if len(img.Layers) != 1 {
		return withKind(ErrBadImage, fmt.Errorf("image %s has %d layers: a checkpoint image has one", img.ID, len(img.Layers)))
	}
	src, err := os.OpenRoot(s.layerPath(img.Layers[0]))
	if err != nil {
		return fmt.Errorf("image %s: %w", img.ID, err)
	}
	defer src.Close()
	return fs.WalkDir(src.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case p == ".":
			return nil
		case d.IsDir():
			return root.Mkdir(p, 0o700)
		case !d.Type().IsRegular():
			return withKind(ErrBadImage, fmt.Errorf("image %s: %s is neither a file nor a directory", img.ID, p))
		}
		in, err := src.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(out, in)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		return err
	})
}
