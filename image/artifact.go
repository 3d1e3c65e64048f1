package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
	"go.podman.io/image/v5/pkg/blobinfocache/none"
	"go.podman.io/image/v5/types"
)

// An OCI artifact is a manifest whose config is not an image's: model
// weights, configuration bundles, anything shipped through a registry.
// It runs nowhere, but an image volume mounts it (KEP-4639), as CRI-O
// does: each of its layers is a file, named by its title annotation.
// berth stores an artifact as one layer directory holding those files;
// its record's ID is its manifest's digest (artifacts often share the
// empty config), and Config refuses it.

// isArtifact reports whether a manifest is an OCI artifact's.
func isArtifact(manifest []byte, mimeType string) (*v1.Manifest, bool) {
	if mimeType != v1.MediaTypeImageManifest {
		return nil, false
	}
	var m v1.Manifest
	if err := json.Unmarshal(manifest, &m); err != nil {
		return nil, false
	}
	if m.ArtifactType == "" && m.Config.MediaType == v1.MediaTypeImageConfig {
		return nil, false
	}
	return &m, true
}

// artifactFileName is a layer's file name: its title where that is one
// plain file name, else its digest.
func artifactFileName(l v1.Descriptor) string {
	t := l.Annotations[v1.AnnotationTitle]
	if t == "" || t == "." || t == ".." || len(t) > 255 || strings.ContainsAny(t, "/\x00") {
		return l.Digest.Encoded()
	}
	return t
}

// pullArtifact stores an artifact's layers as files of one layer
// directory, and records it.
func (s *Store) pullArtifact(ctx context.Context, src types.ImageSource, c candidate, topDigest digest.Digest, manifest []byte, m *v1.Manifest, sp *sharedPull, o PullOptions) (*Image, error) {
	manifestDigest := digest.FromBytes(manifest)
	names := map[string]bool{}
	for i, l := range m.Layers {
		if err := l.Digest.Validate(); err != nil {
			return nil, withKind(ErrBadImage, fmt.Errorf("artifact layer %d: digest %q: %w", i, l.Digest, err))
		}
		n := artifactFileName(l)
		if names[n] {
			return nil, withKind(ErrBadImage, fmt.Errorf("artifact layers %q: two files of one name", n))
		}
		names[n] = true
	}
	// The layer holds what the manifest lists: one layer per manifest.
	chainID := digest.FromString("berth-artifact:" + manifestDigest.String())
	what := c.name
	if what == "" {
		what = c.src.StringWithinTransport()
	}
	tr := &pullTracker{id: newID(), ref: what, started: time.Now()}
	for _, l := range m.Layers {
		tr.layers = append(tr.layers, &layerTracker{digest: l.Digest, size: l.Size})
	}
	defer s.track(tr)()
	leaseID, err := s.newLease()
	if err != nil {
		return nil, err
	}
	failed := true
	defer func() {
		if err := s.dropLease(leaseID); err != nil {
			s.log.Warn("drop pull lease", "image", what, "error", err)
		}
		if failed {
			if err := s.GC(); err != nil {
				s.log.Warn("clean up after failed pull", "image", what, "error", err)
			}
		}
	}()
	stop := s.reportProgress(tr, o.ProgressInterval, sp)
	ok, err := s.haveLayer(chainID, leaseID)
	if err == nil && !ok {
		_, err, _ = s.layers.Do(string(chainID), func() (any, error) {
			return nil, s.fetchArtifact(ctx, src, m, tr, chainID, manifestDigest, leaseID)
		})
		if err == nil {
			if ok, err = s.haveLayer(chainID, leaseID); err == nil && !ok {
				err = fmt.Errorf("artifact %s: removed as soon as it was stored", manifestDigest)
			}
		}
	}
	stop()
	if err != nil {
		return nil, err
	}
	if err := s.writeBlob(manifestDigest, manifest); err != nil {
		return nil, err
	}
	rec := (&pulledImage{manifestDigest: manifestDigest, configDigest: manifestDigest}).record(c, topDigest)
	rec.Layers = []digest.Digest{chainID}
	rec.Artifact = true
	img, err := s.commit(rec)
	if err != nil {
		return nil, err
	}
	failed = false
	return img, nil
}

// fetchArtifact downloads an artifact's layers as files, each checked
// against its digest and size, and records them as one layer (leased).
func (s *Store) fetchArtifact(ctx context.Context, src types.ImageSource, m *v1.Manifest, tr *pullTracker, chainID, manifestDigest digest.Digest, leaseID string) (retErr error) {
	tmp, err := s.tempDir("artifact")
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			os.RemoveAll(tmp)
		}
	}()
	root, err := os.OpenRoot(tmp)
	if err != nil {
		return err
	}
	defer root.Close()
	var size int64
	for i, l := range m.Layers {
		t := tr.layers[i]
		t.set(LayerDownloading)
		if err := s.fetchArtifactFile(ctx, src, root, l, t); err != nil {
			t.set(LayerFailed)
			return err
		}
		t.set(LayerDone)
		size += l.Size
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := syncTree(tmp); err != nil {
		return storeIOError("artifact "+manifestDigest.String(), err)
	}
	rec := layerRecord{ChainID: chainID, DiffID: manifestDigest, Size: size, Inodes: int64(len(m.Layers)) + 1}
	err = s.db.Update(func(tx *bolt.Tx) error {
		if err := os.Rename(tmp, s.layerPath(chainID)); err != nil {
			return err
		}
		if err := syncDir(s.path("layers")); err != nil {
			return err
		}
		if err := putJSON(tx.Bucket(bucketLayers), string(chainID), &rec); err != nil {
			return err
		}
		return leaseLayer(tx, leaseID, chainID)
	})
	if err != nil {
		return storeIOError("store artifact "+manifestDigest.String(), err)
	}
	return nil
}

// fetchArtifactFile writes one layer as a file inside root.
func (s *Store) fetchArtifactFile(ctx context.Context, src types.ImageSource, root *os.Root, l v1.Descriptor, t *layerTracker) error {
	rc, _, err := src.GetBlob(ctx, types.BlobInfo{Digest: l.Digest, Size: l.Size, MediaType: l.MediaType}, none.NoCache)
	if err != nil {
		return classifyPullError(fmt.Errorf("fetch artifact layer %s: %w", l.Digest, err))
	}
	defer rc.Close()
	f, err := root.OpenFile(artifactFileName(l), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return storeIOError("artifact layer "+l.Digest.String(), err)
	}
	defer f.Close()
	verifier := l.Digest.Verifier()
	// One byte past the size tells a blob longer than the manifest says.
	n, err := io.Copy(io.MultiWriter(f, verifier), io.LimitReader(&countingReader{r: rc, n: &t.done}, l.Size+1))
	if err != nil {
		if isDiskFull(err) {
			return storeIOError("artifact layer "+l.Digest.String(), err)
		}
		return classifyPullError(fmt.Errorf("fetch artifact layer %s: %w", l.Digest, err))
	}
	if n != l.Size || !verifier.Verified() {
		return withKind(ErrDigestMismatch, fmt.Errorf("artifact layer %s: downloaded %d bytes that do not match its digest and size %d", l.Digest, n, l.Size))
	}
	return nil
}

// errArtifact: an artifact has no config to run.
var errArtifact = errors.New("an OCI artifact, not a runnable image: it can be an image volume, not a container's image")
