package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	cimage "go.podman.io/image/v5/image"
	"go.podman.io/image/v5/manifest"
	"go.podman.io/image/v5/types"
	"golang.org/x/sync/errgroup"

	"github.com/berth-runtime/berth/image/lazy"
)

// Auth are credentials for one pull, as the CRI's AuthConfig carries
// them. Empty fields fall back to auth.json.
type Auth struct {
	Username      string
	Password      string
	IdentityToken string
	// RegistryToken is a bearer token sent as is.
	RegistryToken string
}

// PullOptions tune one pull.
type PullOptions struct {
	Auth *Auth
	// Progress, if set, is called with the pull's status every
	// ProgressInterval and once at the end.
	Progress         func(PullStatus)
	ProgressInterval time.Duration
}

// Pull fetches an image and records it under its name. name is a docker
// reference ("busybox", "registry:5000/app@sha256:…") or a transport
// reference ("oci:/path:tag", "oci-archive:…", "docker-archive:…").
// Concurrent pulls of the same name with the same credentials share one
// pull, which stops when every caller has given up. A pull that fails
// leaves nothing behind.
func (s *Store) Pull(ctx context.Context, name string, o PullOptions) (*Image, error) {
	key := name + "\x00" + authKey(o.Auth)
	s.mu.Lock()
	sp := s.shared[key]
	if sp == nil {
		pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		sp = &sharedPull{done: make(chan struct{}), cancel: cancel, progress: map[*PullOptions]func(PullStatus){}}
		s.shared[key] = sp
		go func() {
			img, err := s.pull(pctx, name, o, sp)
			s.mu.Lock()
			if s.shared[key] == sp {
				delete(s.shared, key)
			}
			sp.img, sp.err = img, err
			s.mu.Unlock()
			close(sp.done)
			cancel()
		}()
	}
	sp.waiters++
	if o.Progress != nil {
		sp.progress[&o] = o.Progress
	}
	s.mu.Unlock()
	select {
	case <-sp.done:
		return sp.img, sp.err
	case <-ctx.Done():
		s.mu.Lock()
		// A caller that left hears no more of the pull.
		delete(sp.progress, &o)
		if sp.waiters--; sp.waiters == 0 {
			sp.cancel()
			// A cancelled pull takes a while to unwind: the next caller
			// starts a pull of its own instead of joining this one.
			if s.shared[key] == sp {
				delete(s.shared, key)
			}
		}
		s.mu.Unlock()
		return nil, ctx.Err()
	}
}

// sharedPull is one pull and everyone waiting for it.
type sharedPull struct {
	done    chan struct{}
	img     *Image
	err     error
	waiters int
	cancel  context.CancelFunc
	// progress has the callback of each caller still waiting, keyed by
	// its options.
	progress map[*PullOptions]func(PullStatus)
}

// report calls every waiter's progress callback.
func (s *Store) report(sp *sharedPull, st PullStatus) {
	s.mu.Lock()
	fns := slices.Collect(maps.Values(sp.progress))
	s.mu.Unlock()
	for _, fn := range fns {
		fn(st)
	}
}

func authKey(a *Auth) string {
	if a == nil {
		return ""
	}
	h := sha256.Sum256([]byte(a.Username + "\x00" + a.Password + "\x00" + a.IdentityToken + "\x00" + a.RegistryToken))
	return hex.EncodeToString(h[:])
}

func (a *Auth) dockerAuth() *types.DockerAuthConfig {
	if a == nil || (a.Username == "" && a.Password == "" && a.IdentityToken == "") {
		return nil
	}
	return &types.DockerAuthConfig{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken}
}

// pull tries each place the name may resolve to, in order.
func (s *Store) pull(ctx context.Context, name string, o PullOptions, sp *sharedPull) (*Image, error) {
	sys := s.systemContext(o.Auth.dockerAuth())
	if o.Auth != nil && o.Auth.RegistryToken != "" {
		sys.DockerBearerRegistryToken = o.Auth.RegistryToken
	}
	cands, err := pullCandidates(sys, name)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, c := range cands {
		img, err := s.pullCandidate(ctx, sys, c, o, sp)
		if err == nil {
			return img, nil
		}
		errs = append(errs, err)
		// Only "not there" moves on to the next registry; anything else
		// is the answer.
		if !errors.Is(err, ErrUnknownImage) && !errors.Is(err, ErrUnknownTag) && !errors.Is(err, ErrUnauthorized) {
			break
		}
	}
	last := errs[len(errs)-1]
	if len(errs) == 1 {
		return nil, last
	}
	var before []string
	for _, e := range errs[:len(errs)-1] {
		before = append(before, e.Error())
	}
	return nil, fmt.Errorf("%w (tried before: %s)", last, strings.Join(before, "; "))
}

// pullCandidate pulls one candidate name: choose the instance, check the
// policy, read and check manifest and config, fetch the missing layers
// under a lease, then write the blobs and commit the record.
func (s *Store) pullCandidate(ctx context.Context, sys *types.SystemContext, c candidate, o PullOptions, sp *sharedPull) (img *Image, retErr error) {
	what := c.name
	if what == "" {
		what = c.src.StringWithinTransport()
	}
	defer func() {
		if retErr != nil {
			retErr = classifyPullError(contextErr(ctx, fmt.Errorf("pull %s: %w", what, retErr)))
		}
	}()
	src, err := c.src.NewImageSource(ctx, sys)
	if err != nil {
		return nil, err
	}
	defer src.Close()

	topDigest, instance, err := chooseInstance(ctx, sys, src)
	if err != nil {
		return nil, err
	}
	unparsed := cimage.UnparsedInstance(src, instance)
	if err := s.checkPolicy(ctx, unparsed); err != nil {
		return nil, err
	}
	if mb, mt, err := unparsed.Manifest(ctx); err == nil {
		if m, ok := isArtifact(mb, manifest.NormalizedMIMEType(mt)); ok {
			return s.pullArtifact(ctx, src, c, topDigest, mb, m, sp, o)
		}
	}
	pi, err := readPulledImage(ctx, sys, unparsed)
	if err != nil {
		return nil, err
	}
	rec := pi.record(c, topDigest)

	tr := &pullTracker{id: newID(), ref: what, started: time.Now()}
	for _, l := range pi.layers {
		tr.layers = append(tr.layers, &layerTracker{digest: l.Digest, size: l.Size})
	}
	// Listed in Pulls until everything, clean-up included, is over.
	defer s.track(tr)()
	leaseID, err := s.newLease()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := s.dropLease(leaseID); err != nil {
			s.log.Warn("drop pull lease", "image", what, "error", err)
		}
		if retErr != nil {
			if err := s.GC(); err != nil {
				s.log.Warn("clean up after failed pull", "image", what, "error", err)
			}
		}
	}()
	remote := s.lazyRemote(sys, c, pi.manifestDigest, o.Auth)
	if err := s.fetchLayers(ctx, src, tr, pi.layers, pi.diffIDs, rec.Layers, leaseID, remote, o, sp); err != nil {
		return nil, err
	}
	if err := s.writeBlob(pi.manifestDigest, pi.manifest); err != nil {
		return nil, err
	}
	if err := s.writeBlob(pi.configDigest, pi.configBlob); err != nil {
		return nil, err
	}
	return s.commit(rec)
}

// chooseInstance reads the top manifest and, for a manifest list or image
// index, picks this node's platform: the top manifest's digest and the
// instance (nil for a single image).
func chooseInstance(ctx context.Context, sys *types.SystemContext, src types.ImageSource) (digest.Digest, *digest.Digest, error) {
	top, topType, err := src.GetManifest(ctx, nil)
	if err != nil {
		return "", nil, err
	}
	topDigest, err := manifest.Digest(top)
	if err != nil {
		return "", nil, withKind(ErrBadImage, err)
	}
	if !manifest.MIMETypeIsMultiImage(manifest.NormalizedMIMEType(topType)) {
		return topDigest, nil, nil
	}
	list, err := manifest.ListFromBlob(top, manifest.NormalizedMIMEType(topType))
	if err != nil {
		return "", nil, withKind(ErrBadImage, err)
	}
	d, err := list.ChooseInstance(sys)
	if err != nil {
		return "", nil, withKind(ErrPlatform, err)
	}
	return topDigest, &d, nil
}

// checkPolicy asks the signature policy (policy.json) whether the image
// may run here.
func (s *Store) checkPolicy(ctx context.Context, unparsed types.UnparsedImage) error {
	pc, err := s.policyContext()
	if err != nil {
		return err
	}
	defer pc.Destroy()
	if ok, err := pc.IsRunningImageAllowed(ctx, unparsed); !ok || err != nil {
		return withKind(ErrBlocked, fmt.Errorf("rejected by signature policy %s: %w", s.opts.PolicyFile, err))
	}
	return nil
}

// pulledImage is one image's manifest, config and layer list as read
// from the registry and checked, before any layer is fetched.
type pulledImage struct {
	manifest       []byte
	manifestDigest digest.Digest
	configBlob     []byte
	configDigest   digest.Digest
	created        *time.Time
	layers         []types.BlobInfo
	diffIDs        []digest.Digest
}

// readPulledImage reads the chosen image's manifest and config and checks
// that they agree on the layers and that every digest is well formed.
func readPulledImage(ctx context.Context, sys *types.SystemContext, unparsed *cimage.UnparsedImage) (*pulledImage, error) {
	im, err := cimage.FromUnparsedImage(ctx, sys, unparsed)
	if err != nil {
		return nil, malformed(err)
	}
	pi := &pulledImage{}
	if pi.manifest, _, err = im.Manifest(ctx); err != nil {
		return nil, malformed(err)
	}
	if pi.manifestDigest, err = manifest.Digest(pi.manifest); err != nil {
		return nil, withKind(ErrBadImage, err)
	}
	// ConfigBlob checks the config against its digest.
	if pi.configBlob, err = im.ConfigBlob(ctx); err != nil {
		return nil, malformed(err)
	}
	config, err := im.OCIConfig(ctx)
	if err != nil {
		return nil, withKind(ErrBadImage, err)
	}
	pi.created = config.Created
	pi.configDigest = im.ConfigInfo().Digest
	if pi.configDigest == "" {
		pi.configDigest = digest.FromBytes(pi.configBlob)
	}
	pi.layers = im.LayerInfos()
	pi.diffIDs = config.RootFS.DiffIDs
	if len(pi.diffIDs) != len(pi.layers) {
		return nil, withKind(ErrBadImage, fmt.Errorf("config lists %d layers, manifest %d", len(pi.diffIDs), len(pi.layers)))
	}
	for i, l := range pi.layers {
		if err := l.Digest.Validate(); err != nil {
			return nil, withKind(ErrBadImage, fmt.Errorf("manifest layer %d: digest %q: %w", i, l.Digest, err))
		}
		if err := pi.diffIDs[i].Validate(); err != nil {
			return nil, withKind(ErrBadImage, fmt.Errorf("config diff_ids[%d] %q: %w", i, pi.diffIDs[i], err))
		}
	}
	return pi, nil
}

// record is the store's record of the image: named as it was asked for
// (and by the digests of its top and chosen manifests), identified by its
// config's digest.
func (pi *pulledImage) record(c candidate, topDigest digest.Digest) *Image {
	names := []string{}
	digests := []string{}
	if c.name != "" {
		if isDigested(c.name) {
			digests = append(digests, c.name)
		} else {
			names = append(names, c.name)
		}
		digests = appendUnique(digests, repoDigest(c.name, topDigest), repoDigest(c.name, pi.manifestDigest))
	} else {
		names = append(names, c.src.Transport().Name()+":"+c.src.StringWithinTransport())
	}
	rec := &Image{
		ID:          pi.configDigest.String(),
		Names:       names,
		RepoDigests: digests,
		Manifest:    pi.manifestDigest,
		Layers:      chainIDs(pi.diffIDs),
		Pulled:      time.Now().UTC(),
	}
	if pi.created != nil {
		rec.Created = *pi.created
	}
	return rec
}

// fetchLayers fetches every missing layer at once (bounded), reporting
// progress as it goes.
func (s *Store) fetchLayers(ctx context.Context, src types.ImageSource, tr *pullTracker, layers []types.BlobInfo, diffIDs, chain []digest.Digest, leaseID string, remote *lazy.Remote, o PullOptions, sp *sharedPull) error {
	stop := s.reportProgress(tr, o.ProgressInterval, sp)
	defer stop()

	ready := make([]chan struct{}, len(layers))
	for i := range ready {
		ready[i] = make(chan struct{})
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.opts.MaxParallelLayers)
	// In order, bottom first: the lowest unfinished layer always has a
	// slot, so layers waiting for the ones below cannot starve them.
	for i := range layers {
		job := layerJob{
			src: src, info: layers[i], chainID: chain[i], diffID: diffIDs[i],
			leaseID: leaseID, tracker: tr.layers[i], remote: remote,
			lowersReady: func(ctx context.Context) ([]string, error) {
				var below []digest.Digest
				for j := i - 1; j >= 0; j-- {
					select {
					case <-ready[j]:
					case <-ctx.Done():
						return nil, ctx.Err()
					}
					below = append(below, chain[j])
				}
				s.lazyMu.RLock()
				defer s.lazyMu.RUnlock()
				return s.layerDirs(ctx, below)
			},
		}
		if i > 0 {
			job.parent = chain[i-1]
		}
		g.Go(func() error {
			if err := s.fetchLayer(gctx, job); err != nil {
				return err
			}
			close(ready[i])
			return nil
		})
	}
	return g.Wait()
}

func (s *Store) reportProgress(tr *pullTracker, interval time.Duration, sp *sharedPull) (stop func()) {
	if interval <= 0 {
		interval = 5 * time.Second
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				s.report(sp, tr.snapshot())
				return
			case <-t.C:
				st := tr.snapshot()
				s.report(sp, st)
				// Every pull, the kubelet's too, shows its progress in the
				// log: the CRI itself only says "pulling" and "done".
				d, total := st.Bytes()
				s.log.Info("pulling", "image", tr.ref, "bytes", d, "total", total, "layers", len(st.Layers))
			}
		}
	}()
	return func() { close(done); <-finished }
}

// chainIDs computes the chain IDs of a stack of diff IDs, bottom first:
// ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
func chainIDs(diffIDs []digest.Digest) []digest.Digest {
	out := make([]digest.Digest, len(diffIDs))
	for i, d := range diffIDs {
		if i == 0 {
			out[i] = d
			continue
		}
		out[i] = digest.FromString(out[i-1].String() + " " + d.String())
	}
	return out
}

// writeBlob stores a small blob by digest, atomically.
func (s *Store) writeBlob(d digest.Digest, data []byte) error {
	if digest.FromBytes(data) != d && d.Algorithm() == digest.Canonical {
		return withKind(ErrDigestMismatch, fmt.Errorf("blob %s: content does not match its digest", d))
	}
	path := s.blobPath(d)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if err := writeFileSynced(s.path("tmp"), path, data); err != nil {
		return storeIOError("store blob "+d.String(), err)
	}
	return nil
}

// commit records the image and points its names at it; a name held by
// another image moves (that image keeps its other names).
func (s *Store) commit(rec *Image) (*Image, error) {
	var out Image
	err := s.db.Update(func(tx *bolt.Tx) error {
		images := tx.Bucket(bucketImages)
		var size int64
		for _, l := range rec.Layers {
			var lr layerRecord
			ok, err := getJSON(tx.Bucket(bucketLayers), string(l), &lr)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("layer %s vanished before the image was recorded", l)
			}
			size += lr.Size
		}
		var existing Image
		found, err := getJSON(images, rec.ID, &existing)
		if err != nil {
			return err
		}
		if found {
			existing.Names = appendUnique(existing.Names, rec.Names...)
			existing.RepoDigests = appendUnique(existing.RepoDigests, rec.RepoDigests...)
			existing.Pulled = rec.Pulled
			out = existing
		} else {
			out = *rec
		}
		out.Size = size
		if err := putNames(tx, out.ID, append(slices.Clone(rec.Names), rec.RepoDigests...)); err != nil {
			return err
		}
		return putJSON(images, out.ID, &out)
	})
	if err != nil {
		return nil, storeIOError("record image", err)
	}
	return &out, nil
}

// putNames points names at the image id, taking each from the image that
// had it.
func putNames(tx *bolt.Tx, id string, list []string) error {
	names := tx.Bucket(bucketNames)
	for _, n := range list {
		if prev := names.Get([]byte(n)); prev != nil && string(prev) != id {
			if err := dropName(tx, string(prev), n); err != nil {
				return err
			}
		}
		if err := names.Put([]byte(n), []byte(id)); err != nil {
			return err
		}
	}
	return nil
}

// dropName removes name from the image id's record.
func dropName(tx *bolt.Tx, id, name string) error {
	images := tx.Bucket(bucketImages)
	var img Image
	ok, err := getJSON(images, id, &img)
	if err != nil || !ok {
		return err
	}
	img.Names = slices.DeleteFunc(img.Names, func(n string) bool { return n == name })
	img.RepoDigests = slices.DeleteFunc(img.RepoDigests, func(n string) bool { return n == name })
	return putJSON(images, id, &img)
}

func appendUnique(list []string, items ...string) []string {
	for _, it := range items {
		if it != "" && !slices.Contains(list, it) {
			list = append(list, it)
		}
	}
	return list
}
