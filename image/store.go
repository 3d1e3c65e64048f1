package image

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"go.podman.io/image/v5/signature"
	"go.podman.io/image/v5/types"
	"golang.org/x/sync/singleflight"

	"github.com/berth-runtime/berth/image/lazy"
)

// Options configure a Store. Every field is optional.
type Options struct {
	// Root is the store's directory; default /var/lib/berth.
	Root string
	// RegistriesConf is the registries.conf path; default
	// DefaultRegistriesConf. A missing file at the default path means
	// containers/image's defaults (a fresh node has none unless
	// containers-common is installed); any other path must exist.
	RegistriesConf string
	// RegistriesConfDir is the registries.conf.d drop-in directory;
	// default /etc/containers/registries.conf.d.
	RegistriesConfDir string
	// AuthFile is the auth.json path; default: containers/image's search
	// (${XDG_RUNTIME_DIR}/containers/auth.json, ...).
	AuthFile string
	// PolicyFile is the signature policy path; default
	// DefaultPolicyFile. Where no file exists at the default path, every
	// image is accepted (and a line says so once); any other path must
	// exist.
	PolicyFile string
	// ShortNameAliases is the short-name alias cache; default
	// containers/image's.
	ShortNameAliases string
	// OS, Arch and Variant choose the platform of multi-platform images;
	// default this node's.
	OS, Arch, Variant string
	// MaxParallelLayers bounds the layers fetched at once per pull;
	// default 6.
	MaxParallelLayers int
	// DenyDevices refuses layers that contain device nodes.
	DenyDevices bool
	// UserAgent is sent to registries.
	UserAgent string
	// Lazy turns lazy pulling of eStargz images on (lazypull.go).
	Lazy LazyOptions
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// DefaultRoot is where the store lives unless Options.Root says otherwise.
const DefaultRoot = "/var/lib/berth"

// The configuration files of containers/image at their usual places,
// which a node without containers-common lacks.
const (
	DefaultRegistriesConf    = "/etc/containers/registries.conf"
	DefaultRegistriesConfDir = "/etc/containers/registries.conf.d"
	DefaultPolicyFile        = "/etc/containers/policy.json"
)

// The paths whose absence means the defaults; variables for the tests,
// as this host's may exist.
var defaultRegistriesConf, defaultPolicyFile = DefaultRegistriesConf, DefaultPolicyFile

// Store holds images, their layers, and containers' root filesystems. It
// is safe for concurrent use; one process at a time may open a root
// (bbolt's file lock enforces it).
type Store struct {
	opts Options
	root string
	db   *bolt.DB
	log  *slog.Logger

	layers singleflight.Group // one fetch per chain ID at a time

	mu       sync.Mutex
	shared   map[string]*sharedPull  // pulls in progress, by reference and credentials
	inflight map[string]*pullTracker // their progress, by pull id

	// imageMountMu orders the mounts and unmounts of image mounts.
	imageMountMu sync.Mutex

	// lazyMu: held for reading from the moment a lazy layer's mount is
	// handed out until the overlay on it is mounted, for writing while
	// one is unmounted; it guards lazyCreds, the pulls' credentials by
	// blob, lazyMounting, the layers pulls are mounting (not recorded
	// yet), and lazyRetry, the layers whose unpack failed. lazyStop ends
	// lazyLoop, which closes lazyDone.
	lazyMu       sync.RWMutex
	lazyCreds    map[digest.Digest]lazy.Remote
	lazyMounting map[digest.Digest]int
	lazyRetry    map[digest.Digest]retry
	lazyStop     chan struct{}
	lazyDone     chan struct{}
	lazyStopOnce sync.Once

	policyOnce sync.Once
	policy     *signature.Policy
	policyErr  error
}

// Open opens (creating if needed) the store at opts.Root, and finishes or
// undoes what a crash left half done: pulls in progress, layers without
// metadata, temporary files.
func Open(opts Options) (*Store, error) {
	if opts.Root == "" {
		opts.Root = DefaultRoot
	}
	if opts.MaxParallelLayers <= 0 {
		opts.MaxParallelLayers = 6
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.RegistriesConf == "" {
		opts.RegistriesConf = DefaultRegistriesConf
	}
	if opts.RegistriesConfDir == "" {
		opts.RegistriesConfDir = DefaultRegistriesConfDir
	}
	if opts.PolicyFile == "" {
		opts.PolicyFile = DefaultPolicyFile
	}
	if err := checkConfigFiles(opts); err != nil {
		return nil, err
	}
	root, err := filepath.Abs(opts.Root)
	if err != nil {
		return nil, err
	}
	s := &Store{opts: opts, root: root, log: opts.Logger, inflight: map[string]*pullTracker{}, shared: map[string]*sharedPull{}}
	for _, d := range []string{root, s.path("blobs", "sha256"), s.path("layers"), s.path("tar-split"), s.path("containers"), s.path("tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, storeIOError("create store", err)
		}
	}
	// The root of a container in a user namespace is an unprivileged uid
	// that must pass through to its root filesystem; it cannot list.
	if err := os.Chmod(s.path("containers"), 0o711); err != nil {
		return nil, storeIOError("create store", err)
	}
	db, err := bolt.Open(s.path("meta.db"), 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("image store %s is in use by another process", root)
		}
		return nil, storeIOError("open image metadata", err)
	}
	s.db = db
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, storeIOError("initialise image metadata", err)
	}
	if err := s.recover(); err != nil {
		db.Close()
		return nil, err
	}
	if opts.Lazy.Mounter != nil {
		s.lazyStop, s.lazyDone = make(chan struct{}), make(chan struct{})
		go s.lazyLoop(s.lazyStop, s.lazyDone)
	}
	return s, nil
}

// Close closes the metadata database.
func (s *Store) Close() error {
	s.lazyStopOnce.Do(func() {
		if s.lazyStop != nil {
			close(s.lazyStop)
			<-s.lazyDone
		}
	})
	return s.db.Close()
}

// Root returns the store's directory.
func (s *Store) Root() string { return s.root }

func (s *Store) path(elem ...string) string {
	return filepath.Join(append([]string{s.root}, elem...)...)
}

func (s *Store) layerPath(chainID digest.Digest) string {
	return s.path("layers", chainID.Encoded())
}

func (s *Store) blobPath(d digest.Digest) string {
	return s.path("blobs", d.Algorithm().String(), d.Encoded())
}

// recover runs at Open: no pull is in progress yet, so every lease is
// left over from a crash; dropping them and collecting garbage removes
// whatever those pulls had stored. Temporary files go too.
func (s *Store) recover() error {
	if err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLeases)
		var keys [][]byte
		_ = b.ForEach(func(k, _ []byte) error {
			keys = append(keys, append([]byte(nil), k...))
			return nil
		})
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return storeIOError("drop stale pulls", err)
	}
	if err := os.RemoveAll(s.path("tmp")); err != nil {
		return storeIOError("clean temporary files", err)
	}
	if err := os.MkdirAll(s.path("tmp"), 0o700); err != nil {
		return storeIOError("clean temporary files", err)
	}
	return s.GC()
}

// newID returns a random identifier for temporary names and leases.
func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// tempDir makes a directory under the store's tmp/, on the same file
// system as the layers, so that finished work is renamed into place.
func (s *Store) tempDir(prefix string) (string, error) {
	d := s.path("tmp", prefix+"-"+newID())
	if err := os.Mkdir(d, 0o700); err != nil {
		return "", storeIOError("temporary directory", err)
	}
	return d, nil
}

// GC removes layers that no image, container root filesystem or pull in
// progress uses, layer directories with no metadata, and unused blobs.
func (s *Store) GC() error {
	var doomed []string
	err := s.db.Update(func(tx *bolt.Tx) error {
		refs, err := layerRefs(tx)
		if err != nil {
			return err
		}
		known := map[string]bool{}
		layers := tx.Bucket(bucketLayers)
		var unused [][]byte
		_ = layers.ForEach(func(k, _ []byte) error {
			c := digest.Digest(k)
			if refs[c] == 0 {
				unused = append(unused, append([]byte(nil), k...))
			} else {
				known[c.Encoded()] = true
			}
			return nil
		})
		for _, k := range unused {
			if err := layers.Delete(k); err != nil {
				return err
			}
		}
		// Move the directories aside while holding the transaction, so
		// that a pull fetching the same layer again never meets them.
		entries, err := os.ReadDir(s.path("layers"))
		if err != nil {
			return err
		}
		for _, e := range entries {
			if known[e.Name()] {
				continue
			}
			dst := s.path("tmp", "gc-"+newID())
			if err := os.Rename(s.path("layers", e.Name()), dst); err != nil {
				return err
			}
			doomed = append(doomed, dst)
		}
		// A layer's tar-split goes with it (and one a crash left behind
		// before its layer was stored).
		splits, err := os.ReadDir(s.path("tar-split"))
		if err != nil {
			return err
		}
		for _, e := range splits {
			if !known[strings.TrimSuffix(e.Name(), ".json.gz")] {
				if err := os.Remove(s.path("tar-split", e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
			}
		}
		return s.gcBlobs(tx)
	})
	for _, d := range doomed {
		if rerr := os.RemoveAll(d); rerr != nil && err == nil {
			err = rerr
		}
	}
	if err != nil {
		return storeIOError("collect unused layers", err)
	}
	return nil
}

// gcBlobs removes manifests and configs no image refers to.
func (s *Store) gcBlobs(tx *bolt.Tx) error {
	keep := map[string]bool{}
	err := tx.Bucket(bucketImages).ForEach(func(_, v []byte) error {
		var img Image
		if err := json.Unmarshal(v, &img); err != nil {
			return err
		}
		keep[digest.Digest(img.ID).Encoded()] = true
		keep[img.Manifest.Encoded()] = true
		return nil
	})
	if err != nil {
		return err
	}
	dir := s.path("blobs", "sha256")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !keep[e.Name()] {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// systemContext is containers/image's configuration for one pull.
func (s *Store) systemContext(auth *types.DockerAuthConfig) *types.SystemContext {
	mode := types.ShortNameModePermissive
	sys := &types.SystemContext{
		SystemRegistriesConfPath:    s.registriesConf(),
		SystemRegistriesConfDirPath: s.opts.RegistriesConfDir,
		AuthFilePath:                s.opts.AuthFile,
		SignaturePolicyPath:         s.opts.PolicyFile,
		UserShortNameAliasConfPath:  s.opts.ShortNameAliases,
		ShortNameMode:               &mode,
		OSChoice:                    s.opts.OS,
		ArchitectureChoice:          s.opts.Arch,
		VariantChoice:               s.opts.Variant,
		BigFilesTemporaryDir:        s.path("tmp"),
		DockerRegistryUserAgent:     s.opts.UserAgent,
		DockerAuthConfig:            auth,
	}
	if sys.OSChoice == "" {
		sys.OSChoice = goruntime.GOOS
	}
	if sys.ArchitectureChoice == "" {
		sys.ArchitectureChoice = goruntime.GOARCH
	}
	return sys
}

// checkConfigFiles refuses a registries.conf or signature policy that the
// operator named and that does not exist, and says in one line each what
// a missing file at the default path means.
func checkConfigFiles(opts Options) error {
	for _, f := range []struct{ path, def, without string }{
		{opts.RegistriesConf, defaultRegistriesConf, "containers/image's defaults: short names from docker.io, no mirrors, no blocked registries"},
		{opts.PolicyFile, defaultPolicyFile, "every image is accepted (no signature policy)"},
	} {
		_, err := os.Stat(f.path)
		switch {
		case err == nil:
		case errors.Is(err, os.ErrNotExist) && f.path == f.def:
			opts.Logger.Info("no "+filepath.Base(f.path)+": "+f.without, "path", f.path)
		default:
			return fmt.Errorf("image store: %w", err)
		}
	}
	return nil
}

// registriesConf is the registries.conf for a pull. A missing file at the
// default path reads as an empty one: containers/image refuses a missing
// file it was given by name, and without a name it would prefer a
// registries.conf in $HOME, which a daemon should not. Checked at each
// pull, so that a file put there later is used.
func (s *Store) registriesConf() string {
	if s.opts.RegistriesConf == defaultRegistriesConf {
		if _, err := os.Stat(s.opts.RegistriesConf); errors.Is(err, os.ErrNotExist) {
			return os.DevNull
		}
	}
	return s.opts.RegistriesConf
}

// policyContext evaluates policy.json; without one at the default path,
// everything is allowed.
func (s *Store) policyContext() (*signature.PolicyContext, error) {
	s.policyOnce.Do(func() {
		if _, err := os.Stat(s.opts.PolicyFile); errors.Is(err, os.ErrNotExist) && s.opts.PolicyFile == defaultPolicyFile {
			s.policy = &signature.Policy{Default: signature.PolicyRequirements{signature.NewPRInsecureAcceptAnything()}}
			return
		}
		s.policy, s.policyErr = signature.NewPolicyFromFile(s.opts.PolicyFile)
	})
	if s.policyErr != nil {
		return nil, fmt.Errorf("signature policy %s: %w", s.opts.PolicyFile, s.policyErr)
	}
	return signature.NewPolicyContext(s.policy)
}

// withLease runs fn with a lease that keeps the layers it adds alive,
// then drops the lease (the layers stay only if fn recorded an image that
// uses them).
func (s *Store) newLease() (string, error) {
	id := newID()
	err := s.db.Update(func(tx *bolt.Tx) error {
		return putJSON(tx.Bucket(bucketLeases), id, &lease{Created: time.Now()})
	})
	if err != nil {
		return "", storeIOError("start pull", err)
	}
	return id, nil
}

func (s *Store) dropLease(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketLeases).Delete([]byte(id)) })
}

// leaseLayer adds a layer to a lease, in the transaction tx.
func leaseLayer(tx *bolt.Tx, leaseID string, chainID digest.Digest) error {
	b := tx.Bucket(bucketLeases)
	var l lease
	if _, err := getJSON(b, leaseID, &l); err != nil {
		return err
	}
	l.Layers = append(l.Layers, chainID)
	return putJSON(b, leaseID, &l)
}

var errNoSuchImage = errors.New("no such image")

// contextErr prefers the context's error, which says why work stopped.
func contextErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
