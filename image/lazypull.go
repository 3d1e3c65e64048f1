package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"go.podman.io/image/v5/docker/reference"
	"go.podman.io/image/v5/types"
	"golang.org/x/sync/errgroup"

	"github.com/berth-runtime/berth/image/lazy"
)

// LazyMounter serves eStargz layers lazily: berth-lazy's client, or an
// in-process lazy.Service.
type LazyMounter interface {
	// Mount serves the layer (again, if it is served already) and
	// returns its directory.
	Mount(ctx context.Context, req lazy.LayerRequest) (string, error)
	// Status lists the served layers. It need not start a server that
	// does not run (none is served then); the store's reconcile round
	// calls it every Interval, on nodes that pull no eStargz image too.
	Status(ctx context.Context) ([]lazy.LayerStatus, error)
	// Unmount stops serving a layer at its directory (overlays on it
	// keep it served until they go); it fails while a file is open
	// there, and wraps lazy.ErrUnknownLayer for a layer not served.
	Unmount(ctx context.Context, blob digest.Digest) error
}

// LazyOptions turn lazy pulling on: the layers of eStargz images are
// mounted from their registry instead of fetched before the pull ends,
// and made local behind the containers that use them.
type LazyOptions struct {
	// Mounter serves the layers.
	Mounter LazyMounter
	// Registries are the registries whose images are pulled lazily, as
	// host[:port]; empty means every registry.
	Registries []string
	// Interval is how often the store looks for layers that became
	// local; default 2 s.
	Interval time.Duration
}

// lazyLayer is what a layer record keeps of a layer served lazily: enough
// to mount it again. The pull's own credentials are kept in memory only.
type lazyLayer struct {
	Blob   digest.Digest `json:"blob"`
	Size   int64         `json:"size"`
	TOC    digest.Digest `json:"toc"`
	Remote lazy.Remote   `json:"remote"`
}

// lazyRemote returns where the layers of the image a pull chose are
// fetched lazily from, or nil when the pull is not lazy: no mounter, not
// a registry, or a registry not in the list.
func (s *Store) lazyRemote(sys *types.SystemContext, c candidate, manifest digest.Digest, auth *Auth) *lazy.Remote {
	if s.opts.Lazy.Mounter == nil || c.src.Transport().Name() != "docker" || c.name == "" {
		return nil
	}
	named, err := reference.ParseNormalizedNamed(c.name)
	if err != nil {
		return nil
	}
	if r := s.opts.Lazy.Registries; len(r) > 0 && !slices.Contains(r, reference.Domain(named)) {
		return nil
	}
	byDigest, err := reference.WithDigest(reference.TrimNamed(named), manifest)
	if err != nil {
		return nil
	}
	r := &lazy.Remote{
		Ref:               "docker://" + byDigest.String(),
		RegistriesConf:    sys.SystemRegistriesConfPath,
		RegistriesConfDir: sys.SystemRegistriesConfDirPath,
		AuthFile:          sys.AuthFilePath,
		UserAgent:         sys.DockerRegistryUserAgent,
	}
	if auth != nil {
		r.Username, r.Password, r.IdentityToken, r.RegistryToken = auth.Username, auth.Password, auth.IdentityToken, auth.RegistryToken
	}
	return r
}

// withoutCredentials is r as a record may keep it.
func withoutCredentials(r lazy.Remote) lazy.Remote {
	r.Username, r.Password, r.IdentityToken, r.RegistryToken = "", "", "", ""
	return r
}

// mountLazy serves the job's layer lazily and records it (leased). A
// layer that is not eStargz, or that the mounter cannot serve, returns
// false: it is fetched as usual.
func (s *Store) mountLazy(ctx context.Context, job layerJob) (bool, error) {
	if job.remote == nil {
		return false, nil
	}
	toc, ok, err := lazy.TOCDigest(job.info.Annotations)
	if err != nil {
		s.log.Warn("layer pulled whole: its eStargz TOC digest is malformed", "layer", job.info.Digest, "error", err)
		return false, nil
	}
	if !ok || job.info.Size <= 0 {
		return false, nil
	}
	req := lazy.LayerRequest{Blob: job.info.Digest, Size: job.info.Size, TOC: toc, Remote: *job.remote}
	// From the mount until the record is written, no record names the
	// layer: the reconcile round must not take it for one to let go of.
	done := s.mountingLazy(req.Blob)
	defer done()
	dir, err := s.opts.Lazy.Mounter.Mount(ctx, req)
	if err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		s.log.Warn("layer pulled whole: it cannot be served lazily", "layer", job.info.Digest, "error", err)
		return false, nil
	}
	s.rememberCredentials(req)
	// Until it is unpacked, the layer takes its blob's size on disk (as
	// berth-lazy fetches it): the image's size and ImageFsInfo count it
	// so, as containerd counts every layer by its blob.
	rec := layerRecord{
		ChainID: job.chainID, DiffID: job.diffID, Parent: job.parent, Compressed: job.info.Digest,
		Size: job.info.Size, Inodes: 1,
		Lazy: &lazyLayer{Blob: req.Blob, Size: req.Size, TOC: toc, Remote: withoutCredentials(req.Remote)},
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		if err := putJSON(tx.Bucket(bucketLayers), string(job.chainID), &rec); err != nil {
			return err
		}
		return leaseLayer(tx, job.leaseID, job.chainID)
	})
	if err != nil {
		return false, storeIOError(fmt.Sprintf("store lazy layer %s", job.info.Digest), err)
	}
	s.log.Info("layer served lazily", "layer", job.info.Digest, "dir", dir)
	return true, nil
}

// mountingLazy marks a pull's lazy layer as needed while no record
// names it yet; done unmarks it, once the record is written or the pull
// gave up on the layer.
func (s *Store) mountingLazy(blob digest.Digest) (done func()) {
	s.lazyMu.Lock()
	defer s.lazyMu.Unlock()
	if s.lazyMounting == nil {
		s.lazyMounting = map[digest.Digest]int{}
	}
	s.lazyMounting[blob]++
	return func() {
		s.lazyMu.Lock()
		defer s.lazyMu.Unlock()
		if s.lazyMounting[blob]--; s.lazyMounting[blob] <= 0 {
			delete(s.lazyMounting, blob)
		}
	}
}

func (s *Store) rememberCredentials(req lazy.LayerRequest) {
	s.lazyMu.Lock()
	defer s.lazyMu.Unlock()
	if s.lazyCreds == nil {
		s.lazyCreds = map[digest.Digest]lazy.Remote{}
	}
	s.lazyCreds[req.Blob] = req.Remote
}

// layerDirs returns the directories of layers (chain IDs) in the order
// given: a layer served lazily is mounted (again, after a berth-lazy
// restart) and its mount's directory returned. The caller holds
// lazyMu's read lock until its overlay is mounted, so that no mount it
// was given goes away in between.
func (s *Store) layerDirs(ctx context.Context, chainIDs []digest.Digest) ([]string, error) {
	dirs := make([]string, len(chainIDs))
	var lazyRecs map[digest.Digest]*lazyLayer
	if s.opts.Lazy.Mounter != nil {
		lazyRecs = map[digest.Digest]*lazyLayer{}
		err := s.db.View(func(tx *bolt.Tx) error {
			for _, c := range chainIDs {
				var rec layerRecord
				if ok, err := getJSON(tx.Bucket(bucketLayers), string(c), &rec); err != nil {
					return err
				} else if ok && rec.Lazy != nil {
					lazyRecs[c] = rec.Lazy
				}
			}
			return nil
		})
		if err != nil {
			return nil, storeIOError("read layers", err)
		}
	}
	for i, c := range chainIDs {
		ll, ok := lazyRecs[c]
		if !ok {
			dirs[i] = s.layerPath(c)
			continue
		}
		dir, err := s.mountRecord(ctx, ll)
		if err != nil {
			return nil, err
		}
		dirs[i] = dir
	}
	return dirs, nil
}

// mountRecord has the layer a record names served (again), with the
// pull's credentials while berthd remembers them. The caller holds
// lazyMu for reading.
func (s *Store) mountRecord(ctx context.Context, ll *lazyLayer) (string, error) {
	remote := ll.Remote
	if r, ok := s.lazyCreds[ll.Blob]; ok {
		remote = r
	}
	dir, err := s.opts.Lazy.Mounter.Mount(ctx, lazy.LayerRequest{Blob: ll.Blob, Size: ll.Size, TOC: ll.TOC, Remote: remote})
	if err != nil {
		return "", withKind(ErrUnreachable, fmt.Errorf("layer %s, served lazily: %w", ll.Blob, err))
	}
	return dir, nil
}

// LazyLayer is a layer served lazily, as LazyLayers reports it.
type LazyLayer struct {
	Blob digest.Digest
	// Size is the blob's; Local how much of it is on this node.
	Size, Local int64
	// Error is why the background fetch is being tried again.
	Error string
}

// LazyLayers lists the layers the store serves lazily and how much of
// each is local, by blob digest; nil without lazy pulling.
func (s *Store) LazyLayers(ctx context.Context) ([]LazyLayer, error) {
	if s.opts.Lazy.Mounter == nil {
		return nil, nil
	}
	st, err := s.opts.Lazy.Mounter.Status(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]LazyLayer, 0, len(st))
	for _, l := range st {
		out = append(out, LazyLayer{Blob: l.Blob, Size: l.Size, Local: l.Local, Error: l.Error})
	}
	return out, nil
}

// lazyLoop makes complete lazy layers ordinary ones and lets go of the
// mounts nothing uses any more, until stop is closed.
func (s *Store) lazyLoop(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	interval := s.opts.Lazy.Interval
	if interval <= 0 {
		interval = 2 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := s.reconcileLazy(ctx); err != nil {
			s.log.Warn("lazy layers", "error", err)
		}
		cancel()
	}
}

// reconcileLazy is one round of lazyLoop.
func (s *Store) reconcileLazy(ctx context.Context) error {
	st, err := s.opts.Lazy.Mounter.Status(ctx)
	if err != nil {
		return err
	}
	byBlob, recs, err := s.lazyRecords()
	if err != nil {
		return storeIOError("read layers", err)
	}
	var (
		mu   sync.Mutex
		errs []error
	)
	// Unpacked side by side, as a pull unpacks its layers.
	var g errgroup.Group
	g.SetLimit(s.opts.MaxParallelLayers)
	served := map[digest.Digest]bool{}
	for _, l := range st {
		served[l.Blob] = true
		chains := byBlob[l.Blob]
		if l.Complete && len(chains) > 0 {
			if !s.lazyRetryDue(l.Blob) {
				continue
			}
			for _, c := range chains {
				g.Go(func() error {
					if err := s.makeLocal(ctx, c, l.BlobFile); err != nil {
						s.lazyFailed(l.Blob)
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
					return nil
				})
			}
			continue
		}
		if len(chains) == 0 {
			s.releaseLazy(ctx, l.Blob)
		}
	}
	_ = g.Wait()
	// A layer berth-lazy does not serve (it was restarted) is served
	// again, so that its background fetch goes on.
	for blob, ll := range recs {
		if served[blob] {
			continue
		}
		s.lazyMu.RLock()
		_, err := s.mountRecord(ctx, ll)
		s.lazyMu.RUnlock()
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// lazyRetryDue reports whether a layer whose unpack failed may be tried
// again: a blob that does not unpack as its image says (a diff ID that
// does not match, say) would fail every round, each time reading the
// whole blob, so the wait grows from a minute to an hour.
func (s *Store) lazyRetryDue(blob digest.Digest) bool {
	s.lazyMu.RLock()
	defer s.lazyMu.RUnlock()
	r, ok := s.lazyRetry[blob]
	return !ok || time.Now().After(r.next)
}

func (s *Store) lazyFailed(blob digest.Digest) {
	s.lazyMu.Lock()
	defer s.lazyMu.Unlock()
	if s.lazyRetry == nil {
		s.lazyRetry = map[digest.Digest]retry{}
	}
	r := s.lazyRetry[blob]
	r.wait = min(max(2*r.wait, time.Minute), time.Hour)
	r.next = time.Now().Add(r.wait)
	s.lazyRetry[blob] = r
}

// retry is when a failed unpack of a lazy layer is tried again.
type retry struct {
	wait time.Duration
	next time.Time
}

// releaseLazy unmounts a layer no record needs (it is unpacked, or
// collected). Overlays on it keep it served until they go; a file open
// in its directory keeps it mounted until a later round. The round's
// view is checked again under the lock: a pull may have mounted the
// layer since, or written its record.
func (s *Store) releaseLazy(ctx context.Context, blob digest.Digest) {
	s.lazyMu.Lock()
	defer s.lazyMu.Unlock()
	if s.lazyMounting[blob] > 0 {
		return
	}
	if _, recs, err := s.lazyRecords(); err != nil || recs[blob] != nil {
		if err != nil {
			s.log.Warn("lazy layer kept: the layer records cannot be read", "layer", blob, "error", err)
		}
		return
	}
	err := s.opts.Lazy.Mounter.Unmount(ctx, blob)
	switch {
	case err == nil:
		delete(s.lazyCreds, blob)
		s.log.Info("lazy layer unmounted: no record needs it; root filesystems on it keep it served until they go", "layer", blob)
	case errors.Is(err, lazy.ErrUnknownLayer):
	default:
		s.log.Debug("lazy layer still in use", "layer", blob, "error", err)
	}
}

// lazyRecords returns the layer records served lazily: their chain IDs
// and what they keep of the layer, by blob.
func (s *Store) lazyRecords() (chains map[digest.Digest][]digest.Digest, layers map[digest.Digest]*lazyLayer, err error) {
	chains, layers = map[digest.Digest][]digest.Digest{}, map[digest.Digest]*lazyLayer{}
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketLayers).ForEach(func(k, v []byte) error {
			var rec layerRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("layer record %s: %w", k, err)
			}
			if rec.Lazy != nil {
				chains[rec.Lazy.Blob] = append(chains[rec.Lazy.Blob], rec.ChainID)
				layers[rec.Lazy.Blob] = rec.Lazy
			}
			return nil
		})
	})
	return chains, layers, err
}

// makeLocal unpacks a lazy layer's complete blob as a pull would have
// (checked against its digest and diff ID, with its tar-split) and makes
// its record an ordinary one: root filesystems mounted from then on use
// the unpacked layer.
func (s *Store) makeLocal(ctx context.Context, chainID digest.Digest, blobFile string) error {
	var rec layerRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		_, err := getJSON(tx.Bucket(bucketLayers), string(chainID), &rec)
		return err
	})
	if err != nil || rec.Lazy == nil {
		return err
	}
	leaseID, err := s.newLease()
	if err != nil {
		return err
	}
	defer func() {
		if err := s.dropLease(leaseID); err != nil {
			s.log.Warn("drop lease", "error", err)
		}
	}()
	var parents []digest.Digest
	err = s.db.View(func(tx *bolt.Tx) error {
		for p := rec.Parent; p != ""; {
			parents = append(parents, p)
			var pr layerRecord
			if _, err := getJSON(tx.Bucket(bucketLayers), string(p), &pr); err != nil {
				return err
			}
			p = pr.Parent
		}
		return nil
	})
	if err != nil {
		return err
	}
	job := layerJob{
		src:     blobFileSource{path: blobFile},
		info:    types.BlobInfo{Digest: rec.Lazy.Blob, Size: rec.Lazy.Size},
		chainID: chainID, parent: rec.Parent, diffID: rec.DiffID, leaseID: leaseID,
		tracker: &layerTracker{digest: rec.Lazy.Blob, size: rec.Lazy.Size},
		lowersReady: func(ctx context.Context) ([]string, error) {
			s.lazyMu.RLock()
			defer s.lazyMu.RUnlock()
			return s.layerDirs(ctx, parents)
		},
	}
	_, err, _ = s.layers.Do(string(chainID), func() (any, error) {
		return nil, s.fetchLayerOnce(ctx, job)
	})
	if err != nil {
		return fmt.Errorf("make lazy layer %s local: %w", rec.Lazy.Blob, err)
	}
	s.log.Info("lazy layer is local: new root filesystems use it unpacked", "layer", rec.Lazy.Blob, "chainID", chainID)
	return nil
}

// blobFileSource gives a complete blob file as a layer's source.
type blobFileSource struct {
	types.ImageSource
	path string
}

func (b blobFileSource) GetBlob(context.Context, types.BlobInfo, types.BlobInfoCache) (io.ReadCloser, int64, error) {
	f, err := os.Open(b.path)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

// topFirst is a list of layers, bottom first, in overlay's order.
func topFirst(chainIDs []digest.Digest) []digest.Digest {
	out := slices.Clone(chainIDs)
	slices.Reverse(out)
	return out
}
