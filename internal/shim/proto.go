// Package shim is berth-shim, the small per-pod monitor that outlives
// berthd, and the client berthd talks to it with.
//
// The shim is the parent (child subreaper) of its pod's processes: it
// creates containers and runs exec'd processes through the berth OCI CLI,
// keeps their stdio, writes CRI log files, records exit codes and times,
// and hands stdio file descriptors to berthd for exec and attach streams.
// It links no gRPC, no Kubernetes, no libcontainer, and not net or os/exec
// (make lint checks): one runs per pod, and each maps its binary whole.
//
// The protocol is one request per connection on a Unix socket: a JSON
// line from the client, a JSON line back, with file descriptors attached
// (SCM_RIGHTS) where the response names them. Wait and Events keep their
// connection open.
package shim

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/internal/unixsock"
)

// Operations.
const (
	OpCreate     = "create"
	OpExec       = "exec"
	OpAttach     = "attach"
	OpWait       = "wait"
	OpState      = "state"
	OpEvents     = "events"
	OpReopenLog  = "reopen-log"
	OpCloseStdin = "close-stdin"
	OpForget     = "forget"
	OpShutdown   = "shutdown"
	OpKill       = "kill"
)

// Request is what the client sends.
type Request struct {
	Op string `json:"op"`
	// ID is a container id; ExecID an exec session id.
	ID     string         `json:"id,omitempty"`
	ExecID string         `json:"execID,omitempty"`
	Create *CreateRequest `json:"create,omitempty"`
	Exec   *ExecRequest   `json:"exec,omitempty"`
	// Signal is what OpKill sends.
	Signal int `json:"signal,omitempty"`
}

// CreateRequest creates a container (`berth create`); its process waits
// for `berth start`.
type CreateRequest struct {
	Bundle    string `json:"bundle"`
	Stdin     bool   `json:"stdin,omitempty"`
	StdinOnce bool   `json:"stdinOnce,omitempty"`
	TTY       bool   `json:"tty,omitempty"`
	// LogPath is the CRI log file; empty discards output.
	LogPath string `json:"logPath,omitempty"`
	// Restore, if set, restores the container from a checkpoint
	// (`berth restore --detach`) instead: it runs when created.
	Restore *RestoreRequest `json:"restore,omitempty"`
}

// RestoreRequest names the CRIU images a container is restored from.
type RestoreRequest struct {
	ImagePath string `json:"imagePath"`
	// WorkPath gets CRIU's restore.log.
	WorkPath string `json:"workPath,omitempty"`
}

// ExecRequest runs a process in a container (`berth exec`).
type ExecRequest struct {
	Process *specs.Process `json:"process"`
	TTY     bool           `json:"tty,omitempty"`
	Stdin   bool           `json:"stdin,omitempty"`
}

// Response is what the shim answers.
type Response struct {
	Error string `json:"error,omitempty"`
	// Code says what kind of error Error is, for the client to act on
	// without reading the text.
	Code ErrorCode `json:"code,omitempty"`
	Pid  int       `json:"pid,omitempty"`
	// Fds names the file descriptors attached to this response, in order:
	// "stdin" (write end), "stdout", "stderr" (read ends) or "console".
	Fds   []string       `json:"fds,omitempty"`
	Exit  *Exit          `json:"exit,omitempty"`
	State *State         `json:"state,omitempty"`
	Event *Event         `json:"event,omitempty"`
	Exec  *ProcessStatus `json:"execStatus,omitempty"`
}

// Exit is how a process ended.
type Exit struct {
	Code int       `json:"code"`
	At   time.Time `json:"at"`
	// Signal is the signal that killed it, or 0.
	Signal int `json:"signal,omitempty"`
	// OOMKilled: the kernel's OOM killer killed a process of the
	// container's cgroup while the container ran (containers only).
	OOMKilled bool `json:"oomKilled,omitempty"`
}

// ProcessStatus is one process the shim watches.
type ProcessStatus struct {
	ID     string    `json:"id"`
	ExecID string    `json:"execID,omitempty"`
	Pid    int       `json:"pid"`
	Since  time.Time `json:"since"`
	Exit   *Exit     `json:"exit,omitempty"`
}

// State is everything the shim watches.
type State struct {
	Pid        int             `json:"pid"`
	Containers []ProcessStatus `json:"containers"`
	Execs      []ProcessStatus `json:"execs"`
}

// Event tells of an exit.
type Event struct {
	Type    string        `json:"type"` // "exit"
	Process ProcessStatus `json:"process"`
}

// maxMessage bounds one JSON line.
const maxMessage = 4 << 20

// readJSON reads one JSON line of at most maxMessage bytes. Readers are
// small (every pod's event stream keeps one open for its lifetime); a
// long line is gathered piecewise.
func readJSON(r *bufio.Reader, v any) error {
	var long []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
		if len(long)+len(chunk) > maxMessage {
			return fmt.Errorf("message longer than %d bytes", maxMessage)
		}
		switch {
		case err == nil && long == nil:
			return json.Unmarshal(chunk, v)
		case err == nil:
			return json.Unmarshal(append(long, chunk...), v)
		}
		long = append(long, chunk...)
	}
}

func writeJSON(c *unixsock.Conn, v any, fds ...*os.File) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	data = append(data, '\n')
	var oob []byte
	if len(fds) > 0 {
		ints := make([]int, len(fds))
		for i, f := range fds {
			ints[i] = int(f.Fd())
		}
		oob = unix.UnixRights(ints...)
	}
	n, oobn, err := c.WriteMsg(data, oob)
	if err != nil {
		return err
	}
	if oobn != len(oob) {
		return errors.New("file descriptors not sent")
	}
	for n < len(data) {
		m, err := c.Write(data[n:])
		if err != nil {
			return err
		}
		n += m
	}
	return nil
}

// readResponse reads one response line and the descriptors sent with it.
func readResponse(c *unixsock.Conn, br **bufio.Reader) (*Response, []*os.File, error) {
	var files []*os.File
	if *br == nil {
		// The first read takes the ancillary data: descriptors travel with
		// the first byte of the response.
		buf := make([]byte, 64*1024)
		oob := make([]byte, unix.CmsgSpace(4*8))
		n, oobn, err := c.ReadMsg(buf, oob)
		if err != nil {
			return nil, nil, err
		}
		if oobn > 0 {
			msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				return nil, nil, err
			}
			for _, m := range msgs {
				fds, err := unix.ParseUnixRights(&m)
				if err != nil {
					return nil, nil, err
				}
				for _, fd := range fds {
					files = append(files, os.NewFile(uintptr(fd), "shim-fd"))
				}
			}
		}
		// A copy: the 64 KiB read buffer is not kept for the connection's
		// life (an event stream lives as long as its pod).
		*br = bufio.NewReader(&prefixReader{prefix: bytes.Clone(buf[:n]), r: c})
	}
	var resp Response
	if err := readJSON(*br, &resp); err != nil {
		closeAll(files)
		return nil, nil, err
	}
	if resp.Error != "" {
		closeAll(files)
		return &resp, nil, responseError(&resp)
	}
	if len(files) != len(resp.Fds) {
		closeAll(files)
		return nil, nil, fmt.Errorf("shim sent %d file descriptors for %v", len(files), resp.Fds)
	}
	return &resp, files, nil
}

type prefixReader struct {
	prefix []byte
	r      *unixsock.Conn
}

func (p *prefixReader) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.r.Read(b)
}

func closeAll(files []*os.File) {
	for _, f := range files {
		if f != nil {
			f.Close()
		}
	}
}

// ErrorCode is the kind of a shim's error, carried across the socket so
// that the client gets its sentinel back (errors.Is) rather than text.
type ErrorCode string

// CodeNotFound: the shim does not know the container or exec session
// (ErrNotFound).
const CodeNotFound ErrorCode = "notFound"

// errorResponse is the shim's answer to a failed request.
func errorResponse(err error) *Response {
	r := &Response{Error: err.Error()}
	if errors.Is(err, ErrNotFound) {
		r.Code = CodeNotFound
	}
	return r
}

// remoteError is an error the shim answered: its text, and the sentinel
// its code stands for (nil for none).
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// responseError turns a shim's error answer back into an error.
func responseError(r *Response) error {
	var kind error
	switch {
	case r.Code == CodeNotFound:
		kind = ErrNotFound
	case r.Code == "" && strings.HasSuffix(r.Error, " not found in this shim"):
		// A shim started by an earlier berthd (shims outlive berthd's
		// upgrades) sends no code, only this text.
		kind = ErrNotFound
	}
	return &remoteError{msg: r.Error, kind: kind}
}
