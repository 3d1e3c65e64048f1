package shim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/berth-runtime/berth/internal/unixsock"
)

// Client talks to one shim.
type Client struct {
	Socket string
	// Timeout bounds each call but Wait and Events, whose callers decide
	// how long they wait: a shim that does not answer never holds a
	// caller (and the container lock it holds) forever. Zero is
	// DefaultTimeout; create and exec get CreateTimeout, since the shim
	// runs the runtime for them.
	Timeout time.Duration
}

// Default call deadlines. The shim gives the runtime two minutes to
// create a container or start an exec.
const (
	DefaultTimeout = 30 * time.Second
	CreateTimeout  = 2*time.Minute + 30*time.Second
)

// deadline is the call's own bound, for ops that have one.
func (c *Client) deadline(op string) time.Duration {
	switch op {
	case OpWait, OpEvents:
		return 0
	case OpCreate, OpExec:
		return max(c.Timeout, CreateTimeout)
	}
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultTimeout
}

// Stdio are the descriptors the shim handed over for a process.
type Stdio struct {
	Stdin   *os.File // nil unless the process has stdin
	Stdout  *os.File
	Stderr  *os.File // nil with a console
	Console *os.File // the console master, for tty processes
}

// Close closes every descriptor.
func (s *Stdio) Close() {
	closeAll([]*os.File{s.Stdin, s.Stdout, s.Stderr, s.Console})
}

// ErrUnavailable: the shim does not answer (it is not running).
var ErrUnavailable = errors.New("shim unavailable")

// ErrNotFound: the shim does not know the container or exec session.
var ErrNotFound = errors.New("unknown to the shim")

func (c *Client) dial(ctx context.Context) (*unixsock.Conn, error) {
	conn, err := unixsock.Dial(ctx, c.Socket)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return conn, nil
}

// call sends one request and reads one response.
func (c *Client) call(ctx context.Context, req *Request) (*Response, []*os.File, error) {
	if d := c.deadline(req.Op); d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := writeJSON(conn, req); err != nil {
		return nil, nil, fmt.Errorf("shim %s: %w", req.Op, err)
	}
	var br *bufio.Reader
	resp, files, err := readResponse(conn, &br)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, err
	}
	return resp, files, nil
}

// Create creates a container; it waits for `berth start`.
func (c *Client) Create(ctx context.Context, id string, r CreateRequest) (int, error) {
	resp, _, err := c.call(ctx, &Request{Op: OpCreate, ID: id, Create: &r})
	if err != nil {
		return 0, err
	}
	return resp.Pid, nil
}

// Exec starts a process in a container and returns its stdio.
func (c *Client) Exec(ctx context.Context, id, execID string, r ExecRequest) (int, *Stdio, error) {
	resp, files, err := c.call(ctx, &Request{Op: OpExec, ID: id, ExecID: execID, Exec: &r})
	if err != nil {
		return 0, nil, err
	}
	return resp.Pid, toStdio(resp.Fds, files), nil
}

// Attach returns new copies of a container's output and its stdin.
func (c *Client) Attach(ctx context.Context, id string) (*Stdio, error) {
	resp, files, err := c.call(ctx, &Request{Op: OpAttach, ID: id})
	if err != nil {
		return nil, err
	}
	return toStdio(resp.Fds, files), nil
}

func toStdio(names []string, files []*os.File) *Stdio {
	s := &Stdio{}
	for i, n := range names {
		switch n {
		case "stdin":
			s.Stdin = files[i]
		case "stdout":
			s.Stdout = files[i]
		case "stderr":
			s.Stderr = files[i]
		case "console":
			s.Console = files[i]
		}
	}
	return s
}

// Kill sends a signal to the container's init or an exec'd process; one
// that has exited already is not an error.
func (c *Client) Kill(ctx context.Context, id, execID string, sig syscall.Signal) error {
	_, _, err := c.call(ctx, &Request{Op: OpKill, ID: id, ExecID: execID, Signal: int(sig)})
	return err
}

// Wait blocks until the container's init or the exec'd process exits.
func (c *Client) Wait(ctx context.Context, id, execID string) (*Exit, error) {
	resp, _, err := c.call(ctx, &Request{Op: OpWait, ID: id, ExecID: execID})
	if err != nil {
		return nil, err
	}
	if resp.Exit == nil {
		return nil, errors.New("shim returned no exit status")
	}
	return resp.Exit, nil
}

// State lists what the shim watches.
func (c *Client) State(ctx context.Context) (*State, error) {
	resp, _, err := c.call(ctx, &Request{Op: OpState})
	if err != nil {
		return nil, err
	}
	return resp.State, nil
}

// ReopenLog reopens a container's log file.
func (c *Client) ReopenLog(ctx context.Context, id string) error {
	_, _, err := c.call(ctx, &Request{Op: OpReopenLog, ID: id})
	return err
}

// CloseStdin closes a container's stdin (stdin_once).
func (c *Client) CloseStdin(ctx context.Context, id string) error {
	_, _, err := c.call(ctx, &Request{Op: OpCloseStdin, ID: id})
	return err
}

// Forget drops a deleted container or a finished exec.
func (c *Client) Forget(ctx context.Context, id, execID string) error {
	_, _, err := c.call(ctx, &Request{Op: OpForget, ID: id, ExecID: execID})
	return err
}

// Shutdown lets the shim exit once nothing runs.
func (c *Client) Shutdown(ctx context.Context) error {
	_, _, err := c.call(ctx, &Request{Op: OpShutdown})
	return err
}

// Events streams exit events to fn until ctx ends or the shim goes away;
// it returns why it stopped. ready, if set, runs once the stream is
// established: a state read from then on misses no exit.
func (c *Client) Events(ctx context.Context, ready func(), fn func(Event)) error {
	conn, err := c.dial(context.Background())
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	// The stream waits as long as it must; its opening does not.
	_ = conn.SetDeadline(time.Now().Add(c.deadline(OpState)))
	if err := writeJSON(conn, &Request{Op: OpEvents}); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	var br *bufio.Reader
	if _, _, err := readResponse(conn, &br); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	_ = conn.SetDeadline(time.Time{})
	if ready != nil {
		ready()
	}
	for {
		var resp Response
		if err := readJSON(br, &resp); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		if resp.Event != nil {
			fn(*resp.Event)
		}
	}
}
