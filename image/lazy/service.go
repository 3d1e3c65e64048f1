package lazy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moby/sys/mountinfo"
	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/pkg/blobinfocache/none"
	"go.podman.io/image/v5/types"
	"golang.org/x/sys/unix"
)

// Remote says where a layer's blob is and how to reach it: what a pull
// resolved and used, so that the lazy fetches go where the pull went,
// with its credentials, mirrors and registry configuration.
type Remote struct {
	// Ref is the image the pull fetched, with its transport and by
	// digest: docker://registry.example/app@sha256:...
	Ref string `json:"ref"`
	// Username, Password, IdentityToken and RegistryToken are the
	// pull's own credentials (the CRI's AuthConfig); empty for
	// auth.json's.
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	IdentityToken string `json:"identityToken,omitempty"`
	RegistryToken string `json:"registryToken,omitempty"`
	// The pull's containers/image configuration files; empty for
	// containers/image's defaults.
	RegistriesConf    string `json:"registriesConf,omitempty"`
	RegistriesConfDir string `json:"registriesConfDir,omitempty"`
	AuthFile          string `json:"authFile,omitempty"`
	UserAgent         string `json:"userAgent,omitempty"`
}

func (r Remote) hasCredentials() bool {
	return r.Username != "" || r.Password != "" || r.IdentityToken != "" || r.RegistryToken != ""
}

// LayerRequest asks a Service to serve one eStargz layer.
type LayerRequest struct {
	// Blob and Size are the layer's descriptor; TOC its TOC's digest
	// (TOCDigest of the descriptor's annotations).
	Blob   digest.Digest `json:"blob"`
	Size   int64         `json:"size"`
	TOC    digest.Digest `json:"toc"`
	Remote Remote        `json:"remote"`
}

// LayerStatus is one served layer as Service.Status reports it.
type LayerStatus struct {
	Blob digest.Digest `json:"blob"`
	// Dir is the layer's mount, an overlay lower directory; BlobFile
	// the blob being made local, whole and verified once Complete.
	Dir      string `json:"dir"`
	BlobFile string `json:"blobFile"`
	Size     int64  `json:"size"`
	// Local is how many bytes of the blob are on disk, verified.
	Local    int64 `json:"local"`
	Complete bool  `json:"complete"`
	// Error is the background fetch's last failure, while it retries.
	Error string `json:"error,omitempty"`
}

// OpenSource opens the image source a Remote names.
type OpenSource func(ctx context.Context, r Remote) (types.ImageSource, error)

// ServiceOptions configure a Service.
type ServiceOptions struct {
	// RunDir holds the mounts (RunDir/mnt/<blob>); StateDir the blob
	// files (StateDir/blobs/<blob>).
	RunDir, StateDir string
	Open             OpenSource
	// FetchTimeout bounds one range request (DefaultFetchTimeout if
	// zero); StallTimeout one wait for bytes of the background fetch
	// (a minute if zero); Retry the first wait before the background
	// fetch is tried again, doubled up to MaxRetry (a second and a
	// minute if zero).
	FetchTimeout, StallTimeout, Retry, MaxRetry time.Duration
	// Quiet: the background fetch of the whole blob starts once no file
	// of the layer has been read for this long (2 s if zero), and at
	// the latest a minute after the mount, so that it does not compete
	// with a starting container's own reads (stargz-snapshotter's
	// silence period).
	Quiet  time.Duration
	Logger *slog.Logger
	// Adopt are the FUSE connections of a previous process that
	// crashed, kept open by berthd: each is served again, where it is
	// mounted, by the first Mount of its blob; one that no Mount asks
	// for within AdoptTimeout (a minute if zero) is detached, and its
	// readers fail.
	Adopt        []Connection
	AdoptTimeout time.Duration
	// SyncEvery is how often the background fetch syncs a blob file and
	// records how far it got (DefaultSyncEvery if zero): the blob files
	// a previous process left are kept until AdoptTimeout, and a layer
	// asked for again meanwhile goes on with its fetch from there.
	SyncEvery int64
}

// Connection is a served layer's FUSE connection: a duplicate of its
// /dev/fuse descriptor and the kernel's INIT of it. A process that holds
// one keeps the layer's mount alive, its reads waiting, while no server
// runs; a new Service adopts it (ServiceOptions.Adopt).
type Connection struct {
	Blob digest.Digest
	Init []byte
	File *os.File
}

// Service serves eStargz layers over FUSE, one mount per blob, and makes
// each local in the background: what it marks for prefetch first, then
// the whole blob, retried until it is there. It is the heart of
// berth-lazy, the per-node process that holds the mounts while berthd
// restarts.
type Service struct {
	opts ServiceOptions
	log  *slog.Logger

	// mu guards layers, which Status reads, and changing: a blob's
	// lock, held through a Mount or Unmount of it, which may wait on a
	// registry or the kernel; the layers of one image mount side by
	// side.
	mu       sync.Mutex
	layers   map[digest.Digest]*served
	changing map[digest.Digest]*blobLock
	// draining counts unmounted layers still served to an overlay.
	draining sync.WaitGroup
	// orphans are the connections of ServiceOptions.Adopt not adopted
	// yet, by blob; guarded by mu.
	orphans map[digest.Digest]Connection
	// leftBlobs: a previous process left blob files; sweep drops the
	// orphans and those blob files nobody asked for by AdoptTimeout.
	leftBlobs bool
	sweep     *time.Timer
}

// blobLock is a blob's lock, and how many hold or wait for it.
type blobLock struct {
	sync.Mutex
	users int
}

// lock takes blob's lock and returns its release.
func (s *Service) lock(blob digest.Digest) (unlock func()) {
	s.mu.Lock()
	l, ok := s.changing[blob]
	if !ok {
		l = &blobLock{}
		s.changing[blob] = l
	}
	l.users++
	s.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		s.mu.Lock()
		if l.users--; l.users == 0 {
			delete(s.changing, blob)
		}
		s.mu.Unlock()
	}
}

// served is one mounted layer and its background fetch.
type served struct {
	req    LayerRequest
	layer  *Layer
	mount  *Mount
	file   string
	cancel context.CancelFunc
	done   chan struct{}
	// mounted is when the layer was mounted.
	mounted time.Time

	mu sync.Mutex
	// src and fetch: the source of the request's Remote (replaced when
	// a Mount names another); retired: the sources it replaced, closed
	// when the layer goes, as a fetch may still use one.
	src     types.ImageSource
	fetch   Fetcher
	retired []types.ImageSource
	lastErr string
}

// Fetch reads through the layer's current source.
func (sv *served) Fetch(ctx context.Context, off, n int64) ([]byte, error) {
	sv.mu.Lock()
	f := sv.fetch
	sv.mu.Unlock()
	return f.Fetch(ctx, off, n)
}

// stream streams the blob from off to its end through the current source.
func (sv *served) stream(ctx context.Context, off int64) (io.ReadCloser, error) {
	sv.mu.Lock()
	f := sv.fetch
	sv.mu.Unlock()
	st, ok := f.(Streamer)
	if !ok {
		return nil, errors.New("the layer's source cannot stream a byte range")
	}
	return st.Stream(ctx, off)
}

func (sv *served) remote() Remote {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	return sv.req.Remote
}

func (sv *served) source() types.ImageSource {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	return sv.src
}

func (sv *served) setErr(err string) {
	sv.mu.Lock()
	sv.lastErr = err
	sv.mu.Unlock()
}

func (sv *served) closeSources() {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	for _, src := range append(sv.retired, sv.src) {
		src.Close()
	}
	sv.retired, sv.src = nil, nil
}

// ErrUnknownLayer: the Service serves no layer of that blob.
var ErrUnknownLayer = errors.New("no such lazily served layer")

// NewService makes the Service's directories and detaches the mounts a
// previous process left there: their server is gone, so every read of
// them fails, and their directories are needed again.
func NewService(opts ServiceOptions) (*Service, error) {
	if opts.Open == nil || !filepath.IsAbs(opts.RunDir) || !filepath.IsAbs(opts.StateDir) {
		return nil, errors.New("lazy layer service: Open and absolute RunDir and StateDir are required")
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = time.Minute
	}
	if opts.Quiet <= 0 {
		opts.Quiet = 2 * time.Second
	}
	if opts.Retry <= 0 {
		opts.Retry = time.Second
	}
	if opts.MaxRetry < opts.Retry {
		opts.MaxRetry = max(time.Minute, opts.Retry)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.AdoptTimeout <= 0 {
		opts.AdoptTimeout = time.Minute
	}
	s := &Service{opts: opts, log: opts.Logger, layers: map[digest.Digest]*served{}, changing: map[digest.Digest]*blobLock{}, orphans: map[digest.Digest]Connection{}}
	for _, c := range opts.Adopt {
		if err := c.Blob.Validate(); err != nil || c.File == nil {
			return nil, fmt.Errorf("lazy layer service: connection to adopt of blob %q: %v", c.Blob, err)
		}
		s.orphans[c.Blob] = c
	}
	for _, d := range []string{s.mountsDir(), s.blobsDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("lazy layer service: %w", err)
		}
	}
	if err := s.detachStale(); err != nil {
		return nil, err
	}
	for blob, c := range s.orphans {
		// A connection whose mount is gone (its berth-lazy stopped
		// cleanly, or someone unmounted it) has nothing to adopt: an
		// adoption would serve a directory that is not mounted.
		dir := s.mountDir(blob)
		if mounted, err := mountinfo.Mounted(dir); err != nil || !mounted {
			c.File.Close()
			delete(s.orphans, blob)
			os.Remove(dir)
			s.log.Info("a kept FUSE connection has no mount any more; not adopted", "blob", blob)
		}
	}
	if len(s.orphans) > 0 || s.leftBlobs {
		s.sweep = time.AfterFunc(opts.AdoptTimeout, func() {
			s.dropOrphans()
			s.sweepBlobs()
		})
	}
	return s, nil
}

// dropOrphans detaches the mounts of connections nobody asked for: their
// readers get ENOTCONN instead of waiting on.
func (s *Service) dropOrphans() {
	s.mu.Lock()
	orphans := s.orphans
	s.orphans = map[digest.Digest]Connection{}
	s.mu.Unlock()
	for blob, c := range orphans {
		s.dropOrphan(blob, c, "a lazy layer of the previous berth-lazy was not asked for again")
	}
}

func (s *Service) dropOrphan(blob digest.Digest, c Connection, why string) {
	dir := s.mountDir(blob)
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		s.log.Warn("detach an unadopted lazy layer", "mount", dir, "error", err)
	}
	c.File.Close()
	os.Remove(dir)
	s.log.Warn(why+"; containers above it fail to read its files", "blob", blob)
}

// takeOrphan returns the connection of blob left to adopt, if any.
func (s *Service) takeOrphan(blob digest.Digest) (Connection, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.orphans[blob]
	delete(s.orphans, blob)
	return c, ok
}

// Connections are duplicates of the served layers' FUSE connections, for
// a keeper that hands them to the next process after a crash; the caller
// closes their files.
func (s *Service) Connections() ([]Connection, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Connection
	for blob, sv := range s.layers {
		dev, init := sv.mount.Dev()
		f, err := dupFile(int(dev.Fd()))
		if err != nil {
			for _, c := range out {
				c.File.Close()
			}
			return nil, err
		}
		out = append(out, Connection{Blob: blob, Init: init, File: f})
	}
	return out, nil
}

func (s *Service) mountsDir() string { return filepath.Join(s.opts.RunDir, "mnt") }
func (s *Service) blobsDir() string  { return filepath.Join(s.opts.StateDir, "blobs") }

// mountDir is where blob's layer is mounted.
func (s *Service) mountDir(blob digest.Digest) string {
	return filepath.Join(s.mountsDir(), blob.Encoded())
}

// detachStale detaches the FUSE mounts under the mount directory and
// removes the directories and blob files of layers no longer served; the
// mounts of connections to adopt stay.
func (s *Service) detachStale() error {
	mounts, err := mountsUnder(s.mountsDir())
	if err != nil {
		return fmt.Errorf("lazy layer service: %w", err)
	}
	keep := map[string]bool{}
	for blob := range s.orphans {
		keep[blob.Encoded()] = true
	}
	for _, m := range mounts {
		if filepath.Dir(m) == s.mountsDir() && keep[filepath.Base(m)] {
			continue
		}
		// Lazily: an overlay above it keeps a reference until its
		// container goes.
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("lazy layer service: detach %s: %w", m, err)
		}
		s.log.Warn("detached the mount of a lazy layer whose server is gone; containers above it fail to read its files", "mount", m)
	}
	for _, d := range []string{s.mountsDir(), s.blobsDir()} {
		entries, err := os.ReadDir(d)
		if err != nil {
			return fmt.Errorf("lazy layer service: %w", err)
		}
		for _, e := range entries {
			if d == s.mountsDir() && keep[e.Name()] {
				continue
			}
			// Blob files and their progress stay for a while: a layer
			// asked for again goes on with its fetch (sweepBlobs).
			if _, ok := blobOfFile(e.Name()); ok && d == s.blobsDir() && e.Type().IsRegular() {
				s.leftBlobs = true
				continue
			}
			if err := os.RemoveAll(filepath.Join(d, e.Name())); err != nil {
				return fmt.Errorf("lazy layer service: %w", err)
			}
		}
	}
	return nil
}

// blobOfFile is the blob whose blob file (its encoded digest) or progress
// file name is; false for other names.
func blobOfFile(name string) (digest.Digest, bool) {
	blob := digest.NewDigestFromEncoded(digest.SHA256, strings.TrimSuffix(name, ".fetched"))
	return blob, blob.Validate() == nil
}

// sweepBlobs removes the blob files a previous process left that no
// layer took up since the start.
func (s *Service) sweepBlobs() {
	entries, err := os.ReadDir(s.blobsDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		blob, ok := blobOfFile(name)
		if !ok {
			continue
		}
		unlock := s.lock(blob)
		s.mu.Lock()
		_, served := s.layers[blob]
		s.mu.Unlock()
		if !served {
			if err := os.Remove(filepath.Join(s.blobsDir(), name)); err == nil {
				s.log.Info("removed a lazy layer's blob file that the previous berth-lazy left and no one asked for again", "file", name)
			}
		}
		unlock()
	}
}

// mountsUnder lists the mount points below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range mounts {
		if m.Mountpoint != dir {
			out = append(out, m.Mountpoint)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out, nil
}

// Mount serves the layer and returns its mount directory. A layer that
// is served already is served on, with the request's Remote for its
// fetches from then on (a kubelet's credentials expire), unless the
// request has no credentials and the served layer has.
func (s *Service) Mount(ctx context.Context, req LayerRequest) (string, error) {
	if err := req.Blob.Validate(); err != nil {
		return "", fmt.Errorf("lazy layer: blob digest: %w", err)
	}
	if err := req.TOC.Validate(); err != nil {
		return "", fmt.Errorf("lazy layer %s: TOC digest: %w", req.Blob, err)
	}
	if req.Size <= 0 {
		return "", fmt.Errorf("lazy layer %s: size %d", req.Blob, req.Size)
	}
	defer s.lock(req.Blob)()
	s.mu.Lock()
	sv, ok := s.layers[req.Blob]
	s.mu.Unlock()
	if ok {
		if sv.req.TOC != req.TOC || sv.req.Size != req.Size {
			return "", fmt.Errorf("lazy layer %s: served with TOC %s and size %d, asked with %s and %d", req.Blob, sv.req.TOC, sv.req.Size, req.TOC, req.Size)
		}
		// A request without credentials (berthd's after a restart, which
		// keeps none on disk) does not replace a pull's own.
		if cur := sv.remote(); cur != req.Remote && (req.Remote.hasCredentials() || !cur.hasCredentials()) {
			if err := s.setSource(ctx, sv, req.Remote); err != nil {
				return "", fmt.Errorf("lazy layer %s: %w", req.Blob, err)
			}
		}
		return sv.mount.Dir, nil
	}
	sv, err := s.serve(ctx, req)
	if err != nil {
		return "", fmt.Errorf("lazy layer %s: %w", req.Blob, err)
	}
	var bg context.Context
	bg, sv.cancel = context.WithCancel(context.Background())
	s.mu.Lock()
	s.layers[req.Blob] = sv
	s.mu.Unlock()
	go s.complete(bg, sv)
	return sv.mount.Dir, nil
}

// serve opens and mounts the layer; what it made is undone on failure.
func (s *Service) serve(ctx context.Context, req LayerRequest) (_ *served, retErr error) {
	sv := &served{req: req, file: filepath.Join(s.blobsDir(), req.Blob.Encoded()), done: make(chan struct{}), mounted: time.Now()}
	if err := s.setSource(ctx, sv, req.Remote); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			sv.closeSources()
		}
	}()
	var err error
	sv.layer, err = Open(ctx, sv, req.Size, req.TOC, WithBlobFile(sv.file), WithSyncEvery(s.opts.SyncEvery))
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			sv.layer.Close()
			_ = sv.layer.RemoveBlobFile()
		}
	}()
	dir := s.mountDir(req.Blob)
	if c, ok := s.takeOrphan(req.Blob); ok {
		sv.mount, err = Adopt(dir, c.File, c.Init, sv.layer, s.log.With("blob", req.Blob))
		if err == nil {
			c.File.Close()
			s.log.Info("adopted the mount of a lazy layer from the previous berth-lazy", "blob", req.Blob, "dir", dir)
			return sv, nil
		}
		s.dropOrphan(req.Blob, c, "the mount of a lazy layer could not be adopted ("+err.Error()+"); mounting it anew")
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	sv.mount, err = MountLayer(dir, sv.layer, s.log.With("blob", req.Blob))
	if err != nil {
		os.Remove(dir)
		return nil, err
	}
	return sv, nil
}

// setSource opens the source r names and makes it the layer's.
func (s *Service) setSource(ctx context.Context, sv *served, r Remote) error {
	src, err := s.opts.Open(ctx, r)
	if err != nil {
		return err
	}
	f, err := SourceFetcher(src, types.BlobInfo{Digest: sv.req.Blob, Size: sv.req.Size}, s.opts.FetchTimeout)
	if err != nil {
		src.Close()
		return err
	}
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if sv.src != nil {
		sv.retired = append(sv.retired, sv.src)
	}
	sv.src, sv.fetch, sv.req.Remote = src, f, r
	return nil
}

// complete makes the layer local: the prefetch first, then the whole
// blob, tried again with a growing wait until it is there or the layer
// goes.
func (s *Service) complete(ctx context.Context, sv *served) {
	defer close(sv.done)
	log := s.log.With("blob", sv.req.Blob)
	if n := sv.layer.Resumed(); n > 0 {
		log.Info("the background fetch of a lazy layer goes on where the previous berth-lazy left it", "bytes", n, "of", sv.req.Size)
	}
	if err := sv.layer.Prefetch(ctx); err != nil && ctx.Err() == nil {
		log.Warn("prefetch of a lazy layer failed; its files are fetched as they are read", "error", err)
	}
	if !s.waitQuiet(ctx, sv) {
		return
	}
	wait := s.opts.Retry
	for {
		err := sv.layer.FetchAll(ctx, sv.req.Blob, func(ctx context.Context, off int64) (io.ReadCloser, error) {
			return s.openBlob(ctx, sv, off)
		})
		if err == nil {
			sv.setErr("")
			log.Info("lazy layer is local", "bytes", sv.req.Size)
			return
		}
		if ctx.Err() != nil {
			return
		}
		sv.setErr(err.Error())
		log.Warn("background fetch of a lazy layer failed; trying again", "error", err, "wait", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, s.opts.MaxRetry)
	}
}

// waitQuiet waits until no file of the layer has been read for Quiet, or
// a minute after the mount; false if the layer went meanwhile.
func (s *Service) waitQuiet(ctx context.Context, sv *served) bool {
	latest := sv.mounted.Add(time.Minute)
	for {
		last := sv.layer.LastRead()
		if last.Before(sv.mounted) {
			last = sv.mounted
		}
		wait := min(time.Until(last.Add(s.opts.Quiet)), time.Until(latest))
		if wait <= 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
		}
	}
}

// openBlob streams the blob from off to its end (a range request when
// off is not 0); a registry that sends nothing for StallTimeout, before
// its answer or within it, ends the stream with an error instead of a
// wait without end.
func (s *Service) openBlob(ctx context.Context, sv *served, off int64) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancel(ctx)
	st := &stallReader{cancel: cancel, timeout: s.opts.StallTimeout}
	st.timer = time.AfterFunc(st.timeout, st.stall)
	var (
		rc  io.ReadCloser
		err error
	)
	if off == 0 {
		rc, _, err = sv.source().GetBlob(ctx, types.BlobInfo{Digest: sv.req.Blob, Size: sv.req.Size}, none.NoCache)
	} else {
		rc, err = sv.stream(ctx, off)
	}
	if err != nil {
		st.timer.Stop()
		cancel()
		return nil, st.explain(err)
	}
	st.rc = rc
	st.timer.Reset(st.timeout)
	return st, nil
}

type stallReader struct {
	rc      io.ReadCloser
	cancel  context.CancelFunc
	timeout time.Duration
	timer   *time.Timer
	stalled atomic.Bool
}

func (st *stallReader) stall() {
	st.stalled.Store(true)
	st.cancel()
}

func (st *stallReader) explain(err error) error {
	if st.stalled.Load() {
		return fmt.Errorf("the registry sent nothing for %s: %w", st.timeout, err)
	}
	return err
}

func (st *stallReader) Read(p []byte) (int, error) {
	n, err := st.rc.Read(p)
	if n > 0 {
		st.timer.Reset(st.timeout)
	}
	if err != nil && err != io.EOF {
		err = st.explain(err)
	}
	return n, err
}

func (st *stallReader) Close() error {
	st.timer.Stop()
	st.cancel()
	return st.rc.Close()
}

// Status lists the served layers, by blob digest.
func (s *Service) Status() []LayerStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]LayerStatus, 0, len(s.layers))
	for _, sv := range s.layers {
		sv.mu.Lock()
		lastErr := sv.lastErr
		sv.mu.Unlock()
		out = append(out, LayerStatus{
			Blob: sv.req.Blob, Dir: sv.mount.Dir, BlobFile: sv.file, Size: sv.req.Size,
			Local: sv.layer.Local(), Complete: sv.layer.Complete(), Error: lastErr,
		})
	}
	slices.SortFunc(out, func(a, b LayerStatus) int { return strings.Compare(string(a.Blob), string(b.Blob)) })
	return out
}

// Unmount stops serving the layer at its directory. It fails while a
// file of the mount is open there; an overlay mounted on it keeps the
// layer served, from its blob file and the registry, until the last
// such overlay is unmounted: a container whose root filesystem it is
// reads on. The blob file goes then (whoever wanted the complete blob
// has taken it).
func (s *Service) Unmount(blob digest.Digest) error {
	defer s.lock(blob)()
	s.mu.Lock()
	sv, ok := s.layers[blob]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownLayer, blob)
	}
	if err := sv.mount.Detach(); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.layers, blob)
	s.mu.Unlock()
	sv.cancel()
	// Aside, for a new Mount of the blob; the layer keeps it open.
	aside := fmt.Sprintf("%s.draining-%d", sv.file, time.Now().UnixNano())
	if err := sv.layer.MoveBlobFile(aside); err != nil {
		s.log.Warn("move a lazy layer's blob file aside", "error", err)
	}
	if err := os.Remove(sv.mount.Dir); err != nil {
		s.log.Warn("remove a lazy layer's mount directory", "error", err)
	}
	s.draining.Add(1)
	go func() {
		defer s.draining.Done()
		<-sv.done
		sv.mount.Drained()
		sv.layer.Close()
		sv.closeSources()
		if err := sv.layer.RemoveBlobFile(); err != nil {
			s.log.Warn("remove a lazy layer's blob file", "error", err)
		}
		s.log.Debug("lazy layer's last user is gone", "blob", blob)
	}()
	return nil
}

// Close unmounts every layer it can and waits until the overlays on them
// are gone; layers with a file open stay served, and their errors are
// returned.
func (s *Service) Close() error {
	if s.sweep != nil {
		s.sweep.Stop()
	}
	s.dropOrphans()
	s.mu.Lock()
	blobs := make([]digest.Digest, 0, len(s.layers))
	for b := range s.layers {
		blobs = append(blobs, b)
	}
	s.mu.Unlock()
	var errs []error
	for _, b := range blobs {
		if err := s.Unmount(b); err != nil && !errors.Is(err, ErrUnknownLayer) {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		s.draining.Wait()
	}
	return errors.Join(errs...)
}
