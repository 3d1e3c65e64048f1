// Package cri is berthd's CRI server: the Kubernetes runtime.v1
// RuntimeService and ImageService on a Unix socket, over berth's image
// store, runtime, networking and per-pod shims. It is the only package
// that knows Kubernetes types.
//
// Each RPC lives in a file named after its object and verb:
// sandbox_{run,stop,remove,status,list,stats,metrics,update,portforward}.go,
// container_{create,start,stop,remove,status,list,stats,update,log,exec,
// attach}.go, image_{pull,list,status,remove,fsinfo}.go,
// runtime_{status,config}.go, events.go and checkpoint.go. Shared parts:
// spec_pod.go and spec_container.go (OCI specs), store.go (state),
// shims.go and shim_events.go (the per-pod shims and what they report),
// restart.go (recovery at start), stream.go (the Stream* chunking),
// stdio.go and streaming.go (exec, attach and port-forward plumbing),
// validate.go and errors.go (requests in, gRPC codes out).
//
// RPCs validate their request, take the lock of the one object they
// change (never a global one across slow work), and choose gRPC status
// codes only at the end (toStatus).
package cri

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-streaming/pkg/streaming"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/internal/shim"
	"github.com/berth-runtime/berth/network"
	"github.com/berth-runtime/berth/runtime"
)

// Server implements runtime.v1's RuntimeService and ImageService.
type Server struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer

	cfg     Config
	log     *slog.Logger
	onReady []func()
	version string

	images *image.Store
	// rt is every handler's runtime, each container routed to its
	// pod's (handlers.go).
	rt       runtimes
	handlers map[string]*handler
	store    *store
	locks    *idLocks
	shims    *shimManager
	net      *network.Manager
	stream   streaming.Server
	events   *eventHub
	metric   *metrics
	stats    *statsCache

	// rroSupported: the kernel can make mounts recursively read-only.
	rroSupported bool
	// apparmor: the kernel enforces AppArmor profiles.
	apparmor bool
	// cdi holds the CDI specs devices are injected from.
	cdi *cdi.Cache

	mu      sync.Mutex
	podCIDR string
}

// New builds the server: opens the image store and the metadata, and
// reconciles them with what runs (after a restart or a crash).
func New(cfg Config, log *slog.Logger, version string) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	for _, d := range []string{cfg.Root, cfg.State, cfg.runtimeRoot(), filepath.Join(cfg.State, "pods"), filepath.Join(cfg.State, "containers"), filepath.Join(cfg.State, "shim")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, err
		}
	}
	// The state and the root are the host's business only.
	for _, d := range []string{cfg.Root, cfg.State} {
		if err := os.Chmod(d, 0o711); err != nil {
			return nil, err
		}
	}
	images, err := image.Open(image.Options{
		Root: cfg.Root, RegistriesConf: cfg.RegistriesConf, RegistriesConfDir: cfg.RegistriesConfDir,
		AuthFile: cfg.AuthFile, PolicyFile: cfg.PolicyFile, DenyDevices: cfg.DenyDeviceNodes,
		UserAgent: "berth/" + version, Logger: log, Lazy: lazyOptions(&cfg, log),
	})
	if err != nil {
		return nil, err
	}
	rt, err := runtime.New(runtime.Options{Root: cfg.runtimeRoot(), CgroupDriver: cgroups.Driver(cfg.CgroupDriver), Logger: log})
	if err != nil {
		images.Close()
		return nil, err
	}
	st, err := openStore(filepath.Join(cfg.Root, "cri.db"))
	if err != nil {
		images.Close()
		return nil, err
	}
	netm, err := network.NewManager(network.Options{
		NetNSDir: cfg.netnsDir(), ConfDir: cfg.CNIConfDir, BinDirs: cfg.CNIBinDirs, ConfTemplate: cfg.CNIConfTemplate,
		Timeout: cfg.CNITimeout.Duration, Logger: log,
	})
	if err != nil {
		images.Close()
		st.close()
		return nil, err
	}
	cdiCache, err := newCDICache(cfg.CDISpecDirs)
	if err != nil {
		images.Close()
		st.close()
		return nil, err
	}
	s := &Server{
		cfg: cfg, log: log, version: version,
		images: images, store: st, locks: newIDLocks(),
		shims: newShimManager(&cfg, log), net: netm, events: newEventHub(),
		metric: newMetrics(), stats: newStatsCache(), rroSupported: recursiveReadOnlySupported(),
		apparmor: runtime.AppArmorEnabled(), cdi: cdiCache,
	}
	s.rt = runtimes{s}
	s.handlers = newHandlers(&s.cfg, rt, s.rroSupported)
	s.shims.onEvent = s.handleShimEvent
	s.shims.onConnect = s.handleShimConnect
	s.shims.onGone = s.handleShimGone
	s.registerStateMetrics()
	if cidr := st.getMeta("podCIDR"); cidr != "" {
		s.podCIDR = cidr
		if err := netm.SetPodCIDR(cidr); err != nil {
			// Pods still get the configuration in place, if any.
			log.Warn("pod CIDR", "cidr", cidr, "error", err)
		}
	}
	s.recover(context.Background())
	return s, nil
}

// Close releases the stores; running pods and containers stay.
func (s *Server) Close() error {
	s.net.Close()
	err := errors.Join(s.images.Close(), s.store.close())
	return err
}

// OnReady registers f to run once Serve answers on the socket (after
// recovery): berthd tells systemd it is ready there.
func (s *Server) OnReady(f func()) { s.onReady = append(s.onReady, f) }

// Serve serves the CRI on the socket, and the streaming server, until
// ctx ends. Containers keep running after it returns.
func (s *Server) Serve(ctx context.Context, extra ...func(*grpc.Server)) error {
	if err := os.MkdirAll(filepath.Dir(s.cfg.Socket), 0o711); err != nil {
		return err
	}
	_ = os.Remove(s.cfg.Socket)
	ln, err := net.Listen("unix", s.cfg.Socket)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.Socket, err)
	}
	if err := s.secureSocket(); err != nil {
		ln.Close()
		return err
	}
	stream, streamLn, err := s.newStreamServer()
	if err != nil {
		ln.Close()
		return err
	}
	s.stream = stream
	streamSrv := serveStreams(stream, streamLn)
	defer streamSrv.Close()
	gs := grpc.NewServer(
		grpc.ChainUnaryInterceptor(s.recoverUnary, s.metric.unary),
		grpc.ChainStreamInterceptor(s.recoverStream, s.metric.stream),
		grpc.MaxRecvMsgSize(16<<20), grpc.MaxSendMsgSize(16<<20),
	)
	runtimeapi.RegisterRuntimeServiceServer(gs, s)
	runtimeapi.RegisterImageServiceServer(gs, s)
	for _, f := range extra {
		f(gs)
	}
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(ln) }()
	s.log.Info("serving the CRI", "socket", s.cfg.Socket, "version", s.version, "streaming", streamLn.Addr().String())
	// What a fresh node lacks, in one line each (the image store says
	// so of registries.conf and policy.json).
	if err := s.net.Status(); err != nil {
		s.log.Info("pods get loopback only until a CNI network is configured", "reason", err)
	}
	if s.apparmor {
		s.log.Info("AppArmor is enabled: containers without a profile of their own run under " + runtime.DefaultAppArmorProfile)
	}
	// Recovery ran in New, the socket listens: a caller that connects now
	// is answered.
	for _, f := range s.onReady {
		f()
	}
	select {
	case <-ctx.Done():
		s.log.Info("shutting down; pods and containers keep running")
		stopped := make(chan struct{})
		go func() { gs.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			gs.Stop()
		}
		return nil
	case err := <-errc:
		return err
	}
}

// secureSocket makes the socket root's, 0660, with the configured group.
func (s *Server) secureSocket() error {
	gid := 0
	if s.cfg.SocketGroup != "" {
		g, err := user.LookupGroup(s.cfg.SocketGroup)
		if err != nil {
			return fmt.Errorf("socket group %q: %w", s.cfg.SocketGroup, err)
		}
		gid, _ = strconv.Atoi(g.Gid)
	}
	if err := os.Chown(s.cfg.Socket, 0, gid); err != nil {
		return err
	}
	return os.Chmod(s.cfg.Socket, 0o660)
}

// recoverUnary turns a panic in an RPC into an Internal error: the daemon
// never dies of a request.
func (s *Server) recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic in RPC", "method", info.FullMethod, "panic", r)
			err = toStatus(fmt.Errorf("internal error in %s: %v", info.FullMethod, r))
			resp = nil
		}
	}()
	return h(ctx, req)
}

func (s *Server) recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic in RPC", "method", info.FullMethod, "panic", r)
			err = toStatus(fmt.Errorf("internal error in %s: %v", info.FullMethod, r))
		}
	}()
	return h(srv, ss)
}

// shimFor returns the client of a pod's shim.
func (s *Server) shimFor(podID string) *shim.Client { return s.shims.client(podID) }

// Images gives access to the image store (pull progress, for berthd's
// side channel).
func (s *Server) Images() *image.Store { return s.images }

// Config returns the effective configuration.
func (s *Server) Config() Config { return s.cfg }
