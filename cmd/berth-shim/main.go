// Command berth-shim is the per-pod monitor berthd starts: the parent of
// the pod's processes, keeper of their stdio and logs, and recorder of
// their exits. It keeps running when berthd stops or crashes; berthd finds
// it again through its socket.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/berth-runtime/berth/internal/logging"
	"github.com/berth-runtime/berth/internal/shim"
)

func main() {
	var (
		socket      = flag.String("socket", "", "Unix socket to serve on")
		stateDir    = flag.String("state-dir", "", "directory for the shim's temporary files")
		runtimeBin  = flag.String("runtime", "/usr/local/bin/berth", "the OCI runtime binary: berth's, or a runtime handler's (runc, crun)")
		runtimeRoot = flag.String("runtime-root", "/run/berth/runtime", "the runtime's --root")
		systemd     = flag.Bool("systemd-cgroup", false, "pass --systemd-cgroup to the runtime")
		logPath     = flag.String("log", "", "log file (default: <state-dir>/shim.log)")
		debugLog    = flag.Bool("debug", false, "debug logging")
		readyFd     = flag.Int("ready-fd", -1, "file descriptor to write one byte to once serving")
		id          = flag.String("id", "", "the pod's id, for the logs")
	)
	flag.Parse()
	if *socket == "" || *stateDir == "" {
		fmt.Fprintln(os.Stderr, "berth-shim: --socket and --state-dir are required")
		os.Exit(2)
	}
	// One runs per pod: keep the heap small and collected early.
	debug.SetGCPercent(50)
	debug.SetMemoryLimit(8 << 20)

	if *logPath == "" {
		*logPath = *stateDir + "/shim.log"
	}
	if err := os.MkdirAll(*stateDir, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "berth-shim:", err)
		os.Exit(1)
	}
	level := slog.LevelInfo
	if *debugLog {
		level = slog.LevelDebug
	}
	logger, closeLog, err := logging.New(logging.Options{Path: *logPath, Format: "json", Level: level})
	if err != nil {
		fmt.Fprintln(os.Stderr, "berth-shim:", err)
		os.Exit(1)
	}
	defer closeLog()
	logger = logger.With("pod", *id)

	srv, err := shim.NewServer(shim.Config{
		Socket: *socket, StateDir: *stateDir,
		Runtime: *runtimeBin, RuntimeRoot: *runtimeRoot, SystemdCgroup: *systemd,
		Logger: logger,
	})
	if err != nil {
		logger.Error("start", "error", err)
		os.Exit(1)
	}
	// No signal is caught or ignored here. A terminal's and berthd's
	// process group's signals do not reach the shim, which has a session
	// of its own, nor a service manager's stop (berthd.service:
	// KillMode=process); a shim killed all the same is what berthd
	// handles when one dies. Ignoring would be inherited by every
	// container and exec'd process (SIGINT and SIGHUP even through Go
	// programs), and catching costs the three threads of os/signal.
	if *readyFd >= 0 {
		f := os.NewFile(uintptr(*readyFd), "ready")
		_, _ = f.Write([]byte{1})
		f.Close()
	}
	logger.Info("serving", "socket", *socket, "pid", os.Getpid())
	if err := srv.Serve(); err != nil {
		logger.Error("serve", "error", err)
		os.Exit(1)
	}
	logger.Info("stopped: nothing left to watch")
	os.RemoveAll(*stateDir)
	os.Remove(*socket)
}
