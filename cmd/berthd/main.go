// Command berthd is berth's CRI daemon: the Kubernetes runtime.v1
// RuntimeService and ImageService on a Unix socket, for a kubelet,
// crictl or berthctl.
//
//	berthd [flags]          serve
//	berthd config [flags]   print the effective configuration
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/urfave/cli"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/cri"
	"github.com/berth-runtime/berth/cri/adminapi"
	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/internal/clidocs"
	"github.com/berth-runtime/berth/internal/logging"
	"github.com/berth-runtime/berth/internal/logging/logrusbridge"
	"github.com/berth-runtime/berth/internal/version"
)

func main() {
	app := cli.NewApp()
	app.Name = "berthd"
	app.Usage = "the berth CRI daemon"
	app.Version = version.Version
	app.Flags = flags()
	app.Action = serve
	app.Commands = []cli.Command{{
		Name:   "config",
		Usage:  "print the effective configuration (file, then flags) as TOML",
		Flags:  flags(),
		Action: printConfig,
	}}
	clidocs.Add(app)
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "berthd:", err)
		os.Exit(1)
	}
}

func flags() []cli.Flag {
	return []cli.Flag{
		cli.StringFlag{Name: "config", Value: cri.DefaultConfigPath, Usage: "configuration file (TOML)"},
		cli.StringFlag{Name: "root", Usage: "images, layers and metadata (default /var/lib/berth)"},
		cli.StringFlag{Name: "state", Usage: "sockets and runtime state (default /run/berth)"},
		cli.StringFlag{Name: "socket", Usage: "CRI socket (default /run/berth/berth.sock)"},
		cli.StringFlag{Name: "cgroup-driver", Usage: "cgroupfs or systemd"},
		cli.StringFlag{Name: "cgroup-parent", Usage: "parent cgroup of pods that bring none"},
		cli.StringFlag{Name: "cni-conf-dir", Usage: "CNI network configurations"},
		cli.StringSliceFlag{Name: "cni-bin-dir", Usage: "CNI plugin directory (repeatable)"},
		cli.StringFlag{Name: "registries-conf", Usage: "registries.conf path"},
		cli.StringFlag{Name: "auth-file", Usage: "auth.json path"},
		cli.StringFlag{Name: "signature-policy", Usage: "policy.json path"},
		cli.StringFlag{Name: "stream-address", Usage: "exec/attach/port-forward server address"},
		cli.StringFlag{Name: "metrics-address", Usage: "serve Prometheus /metrics on this TCP address"},
		cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error"},
		cli.StringFlag{Name: "log-format", Usage: "text or json"},
	}
}

// loadConfig reads the file, then lays the flags given over it.
func loadConfig(ctx *cli.Context) (cri.Config, error) {
	cfg, err := cri.LoadConfig(ctx.String("config"), ctx.IsSet("config"))
	if err != nil {
		return cfg, err
	}
	for flag, field := range map[string]*string{
		"root": &cfg.Root, "state": &cfg.State, "socket": &cfg.Socket,
		"cgroup-driver": &cfg.CgroupDriver, "cgroup-parent": &cfg.CgroupParent,
		"cni-conf-dir": &cfg.CNIConfDir, "registries-conf": &cfg.RegistriesConf,
		"auth-file": &cfg.AuthFile, "signature-policy": &cfg.PolicyFile,
		"stream-address": &cfg.StreamAddress, "metrics-address": &cfg.MetricsAddress,
		"log-level": &cfg.LogLevel, "log-format": &cfg.LogFormat,
	} {
		if ctx.IsSet(flag) {
			*field = ctx.String(flag)
		}
	}
	if ctx.IsSet("cni-bin-dir") {
		cfg.CNIBinDirs = ctx.StringSlice("cni-bin-dir")
	}
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func printConfig(ctx *cli.Context) error {
	cfg, err := loadConfig(ctx)
	if err != nil {
		return err
	}
	fmt.Print(cfg.String())
	return nil
}

func serve(ctx *cli.Context) error {
	if ctx.NArg() > 0 {
		return fmt.Errorf("unknown command %q", ctx.Args().First())
	}
	cfg, err := loadConfig(ctx)
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return err
	}
	log, closeLog, err := logging.New(logging.Options{Format: cfg.LogFormat, Level: level})
	if err != nil {
		return err
	}
	defer closeLog()
	logrusbridge.Bridge(log, level)
	// berthd's death must not take its pods along: no signal to its
	// process group reaches the shims (they have sessions of their own),
	// and a closed terminal or log pipe is no reason to stop. Caught, not
	// ignored: the shims and plugins berthd starts must not inherit an
	// ignored SIGHUP, which every container would inherit from them.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGHUP, unix.SIGPIPE)
	go func() {
		for sig := range sigs {
			log.Debug("signal ignored", "signal", sig)
		}
	}()

	if err := checkOverlay(); err != nil {
		return err
	}
	srv, err := cri.New(cfg, log, version.Version)
	if err != nil {
		return err
	}
	defer srv.Close()
	// Type=notify: systemd (and so a kubelet ordered after berthd) learns
	// that berthd answers once it does. Without NOTIFY_SOCKET, a no-op.
	srv.OnReady(func() {
		if ok, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
			log.Warn("tell systemd berthd is ready", "error", err)
		} else if ok {
			log.Info("told systemd berthd is ready")
		}
	})

	runCtx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stop()

	admin, err := serveAdmin(cfg, srv, log)
	if err != nil {
		return err
	}
	defer admin.Close()
	if cfg.MetricsAddress != "" {
		ln, err := net.Listen("tcp", cfg.MetricsAddress)
		if err != nil {
			return fmt.Errorf("metrics address: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", srv.MetricsHandler())
		ms := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = ms.Serve(ln) }()
		defer ms.Close()
		log.Info("serving metrics", "address", ln.Addr().String())
	}
	return srv.Serve(runCtx)
}

// checkOverlay makes sure the kernel has overlayfs, which every
// container's root filesystem is: the unit's "modprobe overlay" may fail
// quietly, and a node where no container can start should say so at once.
func checkOverlay() error {
	data, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return fmt.Errorf("check for overlayfs: %w", err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(strings.TrimPrefix(l, "nodev")) == "overlay" {
			return nil
		}
	}
	return errors.New("the kernel has no overlay file system, which every container's root filesystem needs: load its module (modprobe overlay; CONFIG_OVERLAY_FS)")
}

// serveAdmin serves GET /pulls (pulls in flight, per layer), POST
// /images/import and GET /images/export (image archives), GET /metrics
// and Go's profiles (/debug/pprof/) on a root-only Unix socket.
func serveAdmin(cfg cri.Config, srv *cri.Server, log *slog.Logger) (*http.Server, error) {
	path := adminapi.SocketFor(cfg.Socket)
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+adminapi.PullsPath, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(srv.Pulls())
	})
	mux.HandleFunc("GET "+adminapi.LazyPath, func(w http.ResponseWriter, r *http.Request) {
		ll, err := srv.LazyLayers(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(ll)
	})
	mux.HandleFunc("POST "+adminapi.ImportPath, func(w http.ResponseWriter, r *http.Request) {
		imported, err := srv.ImportImages(r.Context(), r.Body, r.URL.Query().Get("name"))
		if err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, image.ErrBadImage) || errors.Is(err, image.ErrInvalidReference) || errors.Is(err, image.ErrBlocked) {
				code = http.StatusBadRequest
			}
			http.Error(w, err.Error(), code)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(imported)
	})
	mux.HandleFunc("GET "+adminapi.ExportPath, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		ew := &exportWriter{w: w}
		w.Header().Set("Trailer", adminapi.ExportErrorTrailer)
		err := srv.ExportImages(r.Context(), ew, q["ref"], q.Get("format"))
		switch {
		case err == nil:
		case ew.started:
			w.Header().Set(adminapi.ExportErrorTrailer, err.Error())
		default:
			code := http.StatusInternalServerError
			switch {
			case errors.Is(err, image.ErrNotFound):
				code = http.StatusNotFound
			case errors.Is(err, image.ErrBadImage) || errors.Is(err, image.ErrInvalidReference):
				code = http.StatusBadRequest
			}
			http.Error(w, err.Error(), code)
		}
	})
	mux.Handle("GET "+adminapi.MetricsPath, srv.MetricsHandler())
	// Go's profiles, as containerd's debug socket has them: root only.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("admin socket", "error", err)
		}
	}()
	return hs, nil
}

// exportWriter starts an export's response at its first byte: until
// then an error can still be the response's status.
type exportWriter struct {
	w       http.ResponseWriter
	started bool
}

func (e *exportWriter) Write(p []byte) (int, error) {
	if !e.started {
		e.started = true
		e.w.Header().Set("Content-Type", "application/x-tar")
		e.w.WriteHeader(http.StatusOK)
	}
	return e.w.Write(p)
}
