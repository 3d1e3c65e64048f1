package cri

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	"github.com/berth-runtime/berth/internal/shim"
	"github.com/berth-runtime/berth/runtime"
)

// ExecSync runs a command and returns its output and exit code; a timeout
// kills it and answers DeadlineExceeded, which the kubelet reads as a
// probe timeout.
func (s *Server) ExecSync(ctx context.Context, req *runtimeapi.ExecSyncRequest) (*runtimeapi.ExecSyncResponse, error) {
	c, err := s.runningContainer(req.GetContainerId())
	if err != nil {
		return nil, toStatus(err)
	}
	if req.Timeout < 0 {
		return nil, toStatus(invalidf("timeout must not be negative"))
	}
	var stdout, stderr limitedBuffer
	stdout.n, stderr.n = maxExecSyncOutput, maxExecSyncOutput
	code, err := s.execStreams(ctx, c, req.Cmd, nil, &stdout, &stderr, false, nil, time.Duration(req.Timeout)*time.Second)
	if err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.ExecSyncResponse{Stdout: stdout.buf.Bytes(), Stderr: stderr.buf.Bytes(), ExitCode: int32(code)}, nil
}

// Exec returns the streaming URL of an exec.
func (s *Server) Exec(ctx context.Context, req *runtimeapi.ExecRequest) (*runtimeapi.ExecResponse, error) {
	if _, err := s.runningContainer(req.GetContainerId()); err != nil {
		return nil, toStatus(err)
	}
	if len(req.Cmd) == 0 {
		return nil, toStatus(invalidf("cmd is required"))
	}
	if !req.Stdin && !req.Stdout && !req.Stderr {
		return nil, toStatus(invalidf("one of stdin, stdout and stderr must be set"))
	}
	if req.Tty && req.Stderr {
		return nil, toStatus(invalidf("tty and stderr cannot both be set: a terminal has one output"))
	}
	resp, err := s.stream.GetExec(req)
	if err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}

func (r streamRuntime) Exec(ctx context.Context, id string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	c, err := r.s.runningContainer(id)
	if err != nil {
		return err
	}
	code, err := r.s.execStreams(ctx, c, cmd, in, out, errw, tty, resize, 0)
	if err != nil {
		return err
	}
	if code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command %q exited with %d", strings.Join(cmd, " "), code), Code: code}
	}
	return nil
}

// execStreams runs cmd in the container through its pod's shim and
// connects the process's stdio to the given streams.
func (s *Server) execStreams(ctx context.Context, c *container, cmd []string, in io.Reader, out, errw io.Writer, tty bool, resize <-chan remotecommand.TerminalSize, timeout time.Duration) (int, error) {
	proc, err := s.execProcess(c, cmd, tty)
	if err != nil {
		return 0, err
	}
	client := s.shimFor(c.PodID)
	execID := newID()[:32]
	pid, stdio, err := client.Exec(ctx, c.ID, execID, shim.ExecRequest{Process: proc, TTY: tty, Stdin: in != nil})
	if err != nil {
		return 0, runtimeFailure(fmt.Errorf("exec in %s: %w", c.ID, err))
	}
	defer stdio.Close()
	defer func() { _ = client.Forget(context.Background(), c.ID, execID) }()

	// A pipe's write end is closed at the client's end-of-file; a console
	// stays open (the terminal's own EOF character is in the stream).
	copies := pumpStdio(ctx, stdio, in, out, errw, resize, func(input *os.File) {
		if input == stdio.Stdin {
			_ = input.Close()
		}
	})
	wctx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	exit, err := client.Wait(wctx, c.ID, execID)
	if err != nil {
		// Timed out or abandoned: the process must not outlive the call.
		// The shim kills it through its pidfd: the pid may have been
		// reaped and reused meanwhile.
		kctx, cancel := context.WithTimeout(context.Background(), shim.DefaultTimeout)
		if err := client.Kill(kctx, c.ID, execID, unix.SIGKILL); err != nil {
			s.log.Warn("kill exec", "container", c.ID, "exec", execID, "pid", pid, "error", err)
		}
		cancel()
		// The shim socket's deadline can fire a moment before the
		// context's own timer: either means the timeout passed.
		timedOut := errors.Is(wctx.Err(), context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
		if timeout > 0 && timedOut && ctx.Err() == nil {
			return 0, status.Errorf(codes.DeadlineExceeded, "command %q timed out after %s", strings.Join(cmd, " "), timeout)
		}
		return 0, err
	}
	drained := make(chan struct{})
	go func() { copies.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(drainAfterExit):
		// Closing our ends stops the copies.
		stdio.Close()
		<-drained
	}
	return exit.Code, nil
}

// execProcess is the process of an exec: the container's own process
// settings (user, capabilities, environment, ...) with another command.
func (s *Server) execProcess(c *container, cmd []string, tty bool) (*specs.Process, error) {
	if len(cmd) == 0 {
		return nil, invalidf("cmd is required")
	}
	for _, a := range cmd {
		if strings.ContainsRune(a, 0) {
			return nil, invalidf("cmd contains a NUL byte")
		}
	}
	data, err := os.ReadFile(filepath.Join(s.cfg.containerDir(c.ID), runtime.ConfigFile))
	if err != nil {
		return nil, fmt.Errorf("container %s spec: %w", c.ID, err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("container %s spec: %w", c.ID, err)
	}
	p := *spec.Process
	p.Args = cmd
	p.Terminal = tty
	p.ConsoleSize = nil
	// The container's OOM score was set once, for all its processes.
	p.OOMScoreAdj = nil
	return &p, nil
}

// runningContainer finds a container that can run an exec.
func (s *Server) runningContainer(id string) (*container, error) {
	c, err := s.findContainer(id)
	if err != nil {
		return nil, err
	}
	if c.State != containerRunning {
		return nil, preconditionf("container %s is not running (%s)", c.ID, c.State)
	}
	return c, nil
}

// limitedBuffer keeps the first n bytes written to it.
type limitedBuffer struct {
	buf bytes.Buffer
	n   int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.n - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// resizeLoop applies terminal size changes to a console.
func resizeLoop(ctx context.Context, console *os.File, resize <-chan remotecommand.TerminalSize) {
	for {
		select {
		case size, ok := <-resize:
			if !ok {
				return
			}
			if size.Width == 0 || size.Height == 0 {
				continue
			}
			_ = unix.IoctlSetWinsize(int(console.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: size.Height, Col: size.Width})
		case <-ctx.Done():
			return
		}
	}
}

// maxExecSyncOutput bounds what ExecSync keeps of each stream; the rest
// is read and dropped so the process never blocks on a full pipe.
const maxExecSyncOutput = 16 << 20

// drainAfterExit bounds how long output is read after an exec'd process
// exited: a child it left behind may hold the pipe open.
const drainAfterExit = 2 * time.Second
