package main

import (
	"os"
	"os/signal"

	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/runtime"
)

// signalBufferSize is large so that a burst of SIGCHLDs or forwarded
// signals is never dropped while the loop is busy.
const signalBufferSize = 2048

// signalHandler forwards signals to a foreground container, resizes its
// tty on SIGWINCH and reaps children (berth is their subreaper) until the
// container's process exits.
type signalHandler struct {
	signals chan os.Signal
	ready   chan struct{} // closed once every signal is caught
}

// newSignalHandler starts catching signals. It must run before the
// process starts so that no SIGCHLD is missed.
func newSignalHandler(subreaper bool) *signalHandler {
	if subreaper {
		// Orphaned grandchildren of the container (when it has no pid
		// namespace) are reparented to us and reaped below.
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			logger.Warn("cannot become subreaper", "error", err)
		}
	}
	s := make(chan os.Signal, signalBufferSize)
	// Catching all ~65 signals costs a system call each: only SIGCHLD is
	// needed before the container starts, the rest can be set up while it
	// does (runc does the same).
	signal.Notify(s, unix.SIGCHLD)
	ready := make(chan struct{})
	go func() {
		signal.Notify(s)
		close(ready)
	}()
	return &signalHandler{signals: s, ready: ready}
}

// forward runs the loop and returns the process's exit status: its exit
// code, or 128+signal when a signal killed it.
func (h *signalHandler) forward(p *runtime.Process, t *tty) (int, error) {
	pid, err := p.Pid()
	if err != nil {
		return -1, err
	}
	<-h.ready
	_ = t.resize()
	for s := range h.signals {
		switch s {
		case unix.SIGWINCH:
			_ = t.resize()
		case unix.SIGCHLD:
			for _, e := range reap() {
				if e.pid == pid {
					// Wait releases the process and flushes stdio copies.
					_, _ = p.Wait()
					return e.status, nil
				}
			}
		case unix.SIGURG:
			// The Go runtime's preemption signal, not the user's.
		default:
			us := s.(unix.Signal)
			logger.Debug("forwarding signal", "signal", unix.SignalName(us), "pid", pid)
			if err := p.Signal(s); err != nil {
				logger.Error("forward signal", "signal", unix.SignalName(us), "error", err)
			}
		}
	}
	return -1, nil
}

type exit struct {
	pid    int
	status int
}

// reap collects every exited child without blocking.
func reap() []exit {
	var exits []exit
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return exits
		}
		exits = append(exits, exit{pid: pid, status: exitStatus(ws)})
	}
}

func exitStatus(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}
