package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"go.podman.io/image/v5/pkg/blobinfocache/none"
	"go.podman.io/image/v5/pkg/compression"
	"go.podman.io/image/v5/types"

	"github.com/berth-runtime/berth/image/lazy"
)

// layerJob is one layer a pull needs.
type layerJob struct {
	src     types.ImageSource
	info    types.BlobInfo
	chainID digest.Digest
	parent  digest.Digest
	diffID  digest.Digest
	leaseID string
	tracker *layerTracker
	// lowersReady waits until every layer below this one is stored and
	// returns their directories, nearest first.
	lowersReady func(context.Context) ([]string, error)
	// remote: where to serve the layer lazily from, if it is eStargz;
	// nil for an ordinary fetch.
	remote *lazy.Remote
}

// haveLayer leases the layer if the store has it, atomically: GC cannot
// take it between the check and the lease.
func (s *Store) haveLayer(chainID digest.Digest, leaseID string) (bool, error) {
	var ok bool
	err := s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketLayers).Get([]byte(chainID)) == nil {
			return nil
		}
		ok = true
		return leaseLayer(tx, leaseID, chainID)
	})
	return ok, err
}

// fetchLayer makes the layer present and leased. Pulls of several images
// that share the layer fetch it once: the others wait for that fetch and
// lease its result. A fetch whose own pull gave up is retried.
func (s *Store) fetchLayer(ctx context.Context, job layerJob) error {
	for attempt := 0; ; attempt++ {
		if ok, err := s.haveLayer(job.chainID, job.leaseID); err != nil || ok {
			if ok {
				job.tracker.set(LayerExists)
			}
			return err
		}
		_, err, shared := s.layers.Do(string(job.chainID), func() (any, error) {
			return nil, s.fetchLayerOnce(ctx, job)
		})
		if err == nil {
			if ok, err := s.haveLayer(job.chainID, job.leaseID); err != nil || ok {
				if ok && !shared {
					job.tracker.set(LayerDone)
				} else if ok {
					job.tracker.set(LayerExists)
				}
				return err
			}
			// Stored and collected again before we leased it: fetch again.
			if attempt >= 2 {
				return fmt.Errorf("layer %s: removed again as soon as it was stored", job.chainID)
			}
			continue
		}
		if err != nil && (!shared || ctx.Err() != nil || attempt >= 2) {
			return err
		}
	}
}

// fetchLayerOnce downloads, verifies and unpacks one layer as one
// stream, fits it onto the layers below, and records it (leased).
func (s *Store) fetchLayerOnce(ctx context.Context, job layerJob) (retErr error) {
	t := job.tracker
	if ok, err := s.mountLazy(ctx, job); err != nil || ok {
		return err
	}
	t.set(LayerDownloading)
	tmp, err := s.tempDir("layer")
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			t.set(LayerFailed)
			os.RemoveAll(tmp)
		}
	}()
	rc, _, err := job.src.GetBlob(ctx, job.info, none.NoCache)
	if err != nil {
		return classifyPullError(fmt.Errorf("fetch layer %s: %w", job.info.Digest, err))
	}
	defer rc.Close()

	// blob → count → verify the blob digest → decompress → verify the
	// diff ID → unpack, all streaming.
	verifier := job.info.Digest.Verifier()
	blob := io.TeeReader(&countingReader{r: rc, n: &t.done}, verifier)
	_, decompressor, blob, err := compression.DetectCompressionFormat(blob)
	if err != nil {
		return classifyPullError(fmt.Errorf("layer %s: %w", job.info.Digest, err))
	}
	plain := blob
	if decompressor != nil {
		d, err := decompressor(blob)
		if err != nil {
			return withKind(ErrBadImage, fmt.Errorf("layer %s: decompress: %w", job.info.Digest, err))
		}
		defer d.Close()
		plain = d
	}
	diff := digest.Canonical.Digester()
	tarStream := io.TeeReader(plain, diff.Hash())
	// Whether the rest of the blob arrives tells whose fault a failed
	// decompress or unpack is: a blob that does not match its digest was
	// corrupted (gzip's own checksum often notices first); one that does
	// is a malformed image (an archive that ends early included); one that
	// cannot be read to the end is a cut download.
	failed := func(err error) error {
		if ctx.Err() == nil && !isDiskFull(err) {
			if _, cerr := io.Copy(io.Discard, blob); cerr == nil {
				if !verifier.Verified() {
					return withKind(ErrDigestMismatch, fmt.Errorf("layer %s: downloaded content does not match its digest (%v)", job.info.Digest, err))
				}
				return withKind(ErrBadImage, fmt.Errorf("unpack layer %s: %w", job.info.Digest, err))
			}
		}
		return malformed(s.unpackError(ctx, job.info.Digest, err))
	}
	// The tar's tar-split, for an export to give it back (tarsplit.go).
	split := s.path("tmp", "tar-split-"+newID())
	splitRec, err := newTarSplitRecorder(split)
	if err != nil {
		return storeIOError("record layer "+job.info.Digest.String(), err)
	}
	splitDone := false
	finishSplit := func(err error) error {
		splitDone = true
		return splitRec.finish(err)
	}
	defer func() {
		if !splitDone {
			_ = finishSplit(errors.New("layer not stored"))
		}
		os.Remove(split)
	}()
	tarStream = io.TeeReader(tarStream, splitRec)
	res, err := unpack(ctx, tmp, tarStream, unpackOptions{denyDevices: s.opts.DenyDevices})
	if err != nil {
		return failed(err)
	}
	// The tar ends before its padding does; the digests cover all bytes.
	if _, err := io.Copy(io.Discard, tarStream); err != nil {
		return failed(err)
	}
	splitErr := finishSplit(nil)
	if _, err := io.Copy(io.Discard, blob); err != nil {
		return classifyPullError(fmt.Errorf("layer %s: %w", job.info.Digest, err))
	}
	if !verifier.Verified() {
		return withKind(ErrDigestMismatch, fmt.Errorf("layer %s: downloaded content does not match its digest", job.info.Digest))
	}
	if got := diff.Digest(); job.diffID != "" && got != job.diffID {
		return withKind(ErrDigestMismatch, fmt.Errorf("layer %s: unpacked content is %s, the image config says %s", job.info.Digest, got, job.diffID))
	}
	t.set(LayerFinishing)

	lowers, err := job.lowersReady(ctx)
	if err != nil {
		return err
	}
	if err := fixImpliedDirs(tmp, res.implied, lowers); err != nil {
		return storeIOError(fmt.Sprintf("layer %s", job.info.Digest), err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	// On disk before it is listed (durable.go).
	if err := syncTree(tmp); err != nil {
		return storeIOError(fmt.Sprintf("layer %s", job.info.Digest), err)
	}
	rec := layerRecord{
		ChainID: job.chainID, DiffID: diff.Digest(), Parent: job.parent,
		Compressed: job.info.Digest, Size: res.size, Inodes: res.inodes,
	}
	if splitErr != nil {
		// The layer works; only its export will be refused.
		s.log.Warn("layer stored without its tar-split: it cannot be exported", "layer", job.info.Digest, "error", splitErr)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		if splitErr == nil {
			if err := os.Rename(split, s.tarSplitPath(job.chainID)); err != nil {
				return err
			}
			if err := syncDir(s.path("tar-split")); err != nil {
				return err
			}
		}
		if err := os.Rename(tmp, s.layerPath(job.chainID)); err != nil {
			return err
		}
		if err := syncDir(s.path("layers")); err != nil {
			return err
		}
		if err := putJSON(tx.Bucket(bucketLayers), string(job.chainID), &rec); err != nil {
			return err
		}
		return leaseLayer(tx, job.leaseID, job.chainID)
	})
	if err != nil {
		return storeIOError(fmt.Sprintf("store layer %s", job.info.Digest), err)
	}
	return nil
}

// unpackError tells a failed download from a failed unpack: the tar
// reader sees a broken connection as a short archive.
func (s *Store) unpackError(ctx context.Context, d digest.Digest, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return withKind(ErrUnreachable, fmt.Errorf("layer %s: download cut short: %w", d, err))
	}
	return fmt.Errorf("unpack layer %s: %w", d, err)
}
