// Package lazyhelper is berth-lazy's API and its client: berth-lazy is
// the per-node process that serves lazily pulled eStargz layers over
// FUSE (image/lazy's Service) and holds their mounts while berthd
// restarts or is upgraded, as the shims hold the pods' processes.
//
// The API is HTTP with JSON bodies on a root-only Unix socket:
//
//	POST   /layers         a lazy.LayerRequest → {"dir": mount directory}
//	GET    /layers         → []lazy.LayerStatus
//	DELETE /layers/{blob}  unmount; 409 while an overlay uses the layer
package lazyhelper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/image/lazy"
)

// DefaultSocket is where berth-lazy listens unless told otherwise.
const DefaultSocket = "/run/berth/lazy.sock"

// MountResponse answers POST /layers.
type MountResponse struct {
	Dir string `json:"dir"`
}

type errorBody struct {
	Error string `json:"error"`
}

// maxRequest bounds a request body: a LayerRequest is a few hundred bytes.
const maxRequest = 64 << 10

// Handler serves the API over svc.
func Handler(svc *lazy.Service, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /layers", func(w http.ResponseWriter, r *http.Request) {
		var req lazy.LayerRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, maxRequest))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			reply(w, http.StatusBadRequest, errorBody{"bad layer request: " + err.Error()})
			return
		}
		dir, err := svc.Mount(r.Context(), req)
		if err != nil {
			log.Warn("mount a lazy layer", "blob", req.Blob, "error", err)
			reply(w, http.StatusBadGateway, errorBody{err.Error()})
			return
		}
		log.Info("serving a lazy layer", "blob", req.Blob, "dir", dir)
		reply(w, http.StatusOK, MountResponse{Dir: dir})
	})
	mux.HandleFunc("GET /layers", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, svc.Status())
	})
	mux.HandleFunc("DELETE /layers/{blob}", func(w http.ResponseWriter, r *http.Request) {
		blob := digest.Digest(r.PathValue("blob"))
		err := svc.Unmount(blob)
		switch {
		case errors.Is(err, lazy.ErrUnknownLayer):
			reply(w, http.StatusNotFound, errorBody{err.Error()})
		case err != nil:
			reply(w, http.StatusConflict, errorBody{err.Error()})
		default:
			log.Info("stopped serving a lazy layer", "blob", blob)
			reply(w, http.StatusOK, struct{}{})
		}
	})
	return mux
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// Listen makes socket's directory and listens on it, for root only.
func Listen(socket string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return nil, err
	}
	return listenRootOnly("unix", socket)
}

// listenRootOnly listens on socket, replacing a stale one. The socket is
// born root-only, not chmod'ed after.
func listenRootOnly(network, socket string) (net.Listener, error) {
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	old := unix.Umask(0o177)
	ln, err := net.Listen(network, socket)
	unix.Umask(old)
	return ln, err
}

// ErrUnavailable: berth-lazy does not answer (it is not running).
var ErrUnavailable = errors.New("berth-lazy unavailable")

// ErrBusy: the layer's mount is in use.
var ErrBusy = errors.New("lazy layer in use")

// Client talks to berth-lazy.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client of the berth-lazy listening on socket.
func NewClient(socket string) *Client {
	var d net.Dialer
	return &Client{socket: socket, http: &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "unix", socket)
			},
			DisableKeepAlives: true,
		},
		// A mount reads the layer's TOC from the registry.
		Timeout: 2 * time.Minute,
	}}
}

// Mount asks for the layer to be served and returns its mount directory.
func (c *Client) Mount(ctx context.Context, req lazy.LayerRequest) (string, error) {
	var resp MountResponse
	if err := c.do(ctx, http.MethodPost, "/layers", req, &resp); err != nil {
		return "", fmt.Errorf("lazy layer %s: %w", req.Blob, err)
	}
	return resp.Dir, nil
}

// Status lists the served layers.
func (c *Client) Status(ctx context.Context) ([]lazy.LayerStatus, error) {
	var st []lazy.LayerStatus
	if err := c.do(ctx, http.MethodGet, "/layers", nil, &st); err != nil {
		return nil, fmt.Errorf("lazy layers: %w", err)
	}
	return st, nil
}

// Unmount stops serving a layer; ErrBusy while an overlay uses it,
// lazy.ErrUnknownLayer for one not served.
func (c *Client) Unmount(ctx context.Context, blob digest.Digest) error {
	if err := blob.Validate(); err != nil {
		return fmt.Errorf("unmount lazy layer: %w", err)
	}
	if err := c.do(ctx, http.MethodDelete, "/layers/"+blob.String(), nil, nil); err != nil {
		return fmt.Errorf("unmount lazy layer %s: %w", blob, err)
	}
	return nil
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = strings.NewReader(string(data))
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://berth-lazy"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		_ = json.Unmarshal(data, &e)
		if e.Error == "" {
			e.Error = resp.Status
		}
		switch resp.StatusCode {
		case http.StatusNotFound:
			return fmt.Errorf("%w: %s", lazy.ErrUnknownLayer, e.Error)
		case http.StatusConflict:
			return fmt.Errorf("%w: %s", ErrBusy, e.Error)
		}
		return errors.New(e.Error)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

// ConnectionSocket is where berth-lazy hands out duplicates of its FUSE
// connections, beside its API socket: a SOCK_SEQPACKET socket, one
// message per connection (a JSON connectionHeader with the descriptor),
// then end of file. HTTP cannot carry descriptors.
func ConnectionSocket(socket string) string {
	return strings.TrimSuffix(socket, ".sock") + "-fuse.sock"
}

type connectionHeader struct {
	Blob digest.Digest `json:"blob"`
	Init []byte        `json:"init"`
}

// ListenConnections listens on the connection socket, root's alone.
func ListenConnections(socket string) (*net.UnixListener, error) {
	ln, err := listenRootOnly("unixpacket", socket)
	if err != nil {
		return nil, err
	}
	return ln.(*net.UnixListener), nil
}

// ServeConnections sends each client of ln the Service's connections,
// until ln is closed.
func ServeConnections(ln *net.UnixListener, svc *lazy.Service, log *slog.Logger) error {
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go func() {
			defer conn.Close()
			if err := sendConnections(conn, svc); err != nil {
				log.Warn("hand out FUSE connections", "error", err)
			}
		}()
	}
}

func sendConnections(conn *net.UnixConn, svc *lazy.Service) error {
	conns, err := svc.Connections()
	if err != nil {
		return err
	}
	defer func() {
		for _, c := range conns {
			c.File.Close()
		}
	}()
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	for _, c := range conns {
		hdr, err := json.Marshal(connectionHeader{Blob: c.Blob, Init: c.Init})
		if err != nil {
			return err
		}
		if _, _, err := conn.WriteMsgUnix(hdr, unix.UnixRights(int(c.File.Fd())), nil); err != nil {
			return err
		}
	}
	return nil
}

// Connections fetches duplicates of berth-lazy's FUSE connections; the
// caller closes their files.
func (c *Client) Connections(ctx context.Context) ([]lazy.Connection, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", ConnectionSocket(c.socket))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	conn := nc.(*net.UnixConn)
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	} else {
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	}
	var out []lazy.Connection
	fail := func(err error) ([]lazy.Connection, error) {
		for _, c := range out {
			c.File.Close()
		}
		return nil, fmt.Errorf("FUSE connections of berth-lazy: %w", err)
	}
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4))
	for {
		n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
		if errors.Is(err, io.EOF) || err == nil && n == 0 && oobn == 0 {
			return out, nil
		}
		if err != nil {
			return fail(err)
		}
		var fds []int
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if got, err := unix.ParseUnixRights(&m); err == nil {
					fds = append(fds, got...)
				}
			}
		}
		var hdr connectionHeader
		err = json.Unmarshal(buf[:n], &hdr)
		if err == nil && len(fds) != 1 {
			err = fmt.Errorf("%d descriptors with one connection", len(fds))
		}
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			return fail(err)
		}
		unix.CloseOnExec(fds[0])
		out = append(out, lazy.Connection{Blob: hdr.Blob, Init: hdr.Init, File: os.NewFile(uintptr(fds[0]), "/dev/fuse")})
	}
}

// adoptEntry is one connection berth-lazy's --adopt names: the
// connection's header and the descriptor it inherited it as.
type adoptEntry struct {
	connectionHeader
	Fd int `json:"fd"`
}

// AdoptFlag is the --adopt value for connections given to berth-lazy as
// its descriptors from firstFd on, in their order (exec.Cmd.ExtraFiles).
func AdoptFlag(conns []lazy.Connection, firstFd int) string {
	entries := make([]adoptEntry, len(conns))
	for i, c := range conns {
		entries[i] = adoptEntry{connectionHeader{c.Blob, c.Init}, firstFd + i}
	}
	b, _ := json.Marshal(entries)
	return string(b)
}

// ParseAdoptFlag is the connections an --adopt value names.
func ParseAdoptFlag(v string) ([]lazy.Connection, error) {
	var entries []adoptEntry
	if err := json.Unmarshal([]byte(v), &entries); err != nil {
		return nil, fmt.Errorf("--adopt: %w", err)
	}
	out := make([]lazy.Connection, 0, len(entries))
	for _, e := range entries {
		if e.Fd < 3 {
			return nil, fmt.Errorf("--adopt: descriptor %d of %s", e.Fd, e.Blob)
		}
		unix.CloseOnExec(e.Fd)
		out = append(out, lazy.Connection{Blob: e.Blob, Init: e.Init, File: os.NewFile(uintptr(e.Fd), "/dev/fuse")})
	}
	return out, nil
}
