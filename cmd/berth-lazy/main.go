// Command berth-lazy serves lazily pulled eStargz layers over FUSE, one
// mount per layer, fetching their files from the registry as they are
// read and the rest in the background. It is one process per node,
// apart from berthd, so that a berthd restart, upgrade or crash leaves
// the root filesystems of running containers whole.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/image/lazy"
	"github.com/berth-runtime/berth/internal/lazyhelper"
	"github.com/berth-runtime/berth/internal/logging"
)

func main() {
	var (
		socket   = flag.String("socket", lazyhelper.DefaultSocket, "Unix socket to serve the API on")
		runDir   = flag.String("run-dir", "/run/berth/lazy", "directory for the layers' mounts")
		stateDir = flag.String("state-dir", "/var/lib/berth/lazy", "directory for the layers' blob files as they become local")
		logPath  = flag.String("log", "", "log file (default: stderr)")
		debugLog = flag.Bool("debug", false, "debug logging")
		readyFd  = flag.Int("ready-fd", -1, "file descriptor to write one byte to once serving")
		adopt    = flag.String("adopt", "", "FUSE connections of a crashed berth-lazy to serve again, as JSON (berthd passes them)")
		syncEach = flag.Int64("sync-every", lazy.DefaultSyncEvery, "sync a blob file, and record how far its background fetch got, every this many bytes (what a crash loses)")
	)
	flag.Parse()
	level := slog.LevelInfo
	if *debugLog {
		level = slog.LevelDebug
	}
	logger, closeLog, err := logging.New(logging.Options{Path: *logPath, Format: "json", Level: level})
	if err != nil {
		fmt.Fprintln(os.Stderr, "berth-lazy:", err)
		os.Exit(1)
	}
	defer closeLog()
	var conns []lazy.Connection
	if *adopt != "" {
		if conns, err = lazyhelper.ParseAdoptFlag(*adopt); err != nil {
			logger.Error("berth-lazy", "error", err)
			closeLog()
			os.Exit(1)
		}
	}
	if err := run(logger, *socket, *runDir, *stateDir, *readyFd, conns, *syncEach); err != nil {
		logger.Error("berth-lazy", "error", err)
		closeLog()
		os.Exit(1)
	}
}

func run(log *slog.Logger, socket, runDir, stateDir string, readyFd int, adopt []lazy.Connection, syncEvery int64) error {
	svc, err := lazy.NewService(lazy.ServiceOptions{
		RunDir: runDir, StateDir: stateDir, Open: image.LazySource, Logger: log, Adopt: adopt, SyncEvery: syncEvery,
	})
	if err != nil {
		return err
	}
	if len(adopt) > 0 {
		log.Info("kept FUSE connections of the previous berth-lazy, served again once their layers are asked for", "connections", len(adopt))
	}
	ln, err := lazyhelper.Listen(socket)
	if err != nil {
		return err
	}
	// berthd keeps duplicates of the FUSE connections from here, and
	// gives them to the next berth-lazy after a crash.
	connSocket := lazyhelper.ConnectionSocket(socket)
	cln, err := lazyhelper.ListenConnections(connSocket)
	if err != nil {
		return err
	}
	defer os.Remove(connSocket)
	go func() {
		if err := lazyhelper.ServeConnections(cln, svc, log); err != nil {
			log.Warn("connection socket", "error", err)
		}
	}()
	srv := &http.Server{Handler: lazyhelper.Handler(svc, log)}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	log.Info("serving", "socket", socket, "pid", os.Getpid())
	// For a node's tooling and the tests, which stop berth-lazy by it.
	pidFile := filepath.Join(runDir, "berth-lazy.pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	defer os.Remove(pidFile)
	if readyFd >= 0 {
		f := os.NewFile(uintptr(readyFd), "ready")
		_, _ = f.Write([]byte{1})
		f.Close()
	}

	// A stop unmounts every layer and waits until no container's root
	// filesystem is on one: leaving sooner would take the files from
	// under them. A layer with a file open in its directory stays
	// mounted, and the process with it.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	for {
		select {
		case err := <-done:
			return err
		case sig := <-sigs:
			if err := svc.Close(); err != nil {
				log.Warn("asked to stop, but layers are in use; serving on", "signal", sig.String(), "error", err)
				continue
			}
			log.Info("stopped", "signal", sig.String())
			if err := srv.Shutdown(context.Background()); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			cln.Close()
			os.Remove(socket)
			return nil
		}
	}
}
