package shim

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/cgroups/oomwatch"
	"github.com/berth-runtime/berth/internal/crilog"
	"github.com/berth-runtime/berth/internal/reaper"
	"github.com/berth-runtime/berth/internal/unixsock"
)

// Config configures a shim.
type Config struct {
	// Socket is the Unix socket to serve on.
	Socket string
	// StateDir holds the shim's temporary files (console sockets, pid
	// files, the runtime's logs).
	StateDir string
	// Runtime is the berth OCI CLI; RuntimeRoot its --root.
	Runtime     string
	RuntimeRoot string
	// SystemdCgroup is passed on as --systemd-cgroup.
	SystemdCgroup bool
	Logger        *slog.Logger
}

// Server is a running shim.
type Server struct {
	cfg    Config
	log    *slog.Logger
	reaper *reaper.Reaper
	ln     *unixsock.Listener
	oom    oomwatch.Watcher

	mu         sync.Mutex
	containers map[string]*proc
	execs      map[string]*proc
	watchers   map[chan Event]struct{}
	stopping   bool
	idle       chan struct{}
	consoleSeq atomic.Int64
}

// proc is a container's init or an exec'd process.
type proc struct {
	status ProcessStatus
	done   chan struct{} // closed once exited and output drained
	// pidfd is the process's descriptor until it exits (-1 before it
	// runs, after, or where the kernel has none): kill signals through it.
	pidfd int
	// oom counts OOM kills in a container's cgroup while it runs.
	oom *oomwatch.Watch

	// Container stdio, kept for logs and attach.
	stdin     *os.File
	stdinOnce bool
	console   *os.File
	log       *crilog.File
	outTee    crilog.Tee
	errTee    crilog.Tee
	ioDone    sync.WaitGroup
}

// NewServer starts listening; Serve answers.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	// Started without a search of $PATH.
	if !filepath.IsAbs(cfg.Runtime) {
		return nil, fmt.Errorf("runtime %q: want an absolute path", cfg.Runtime)
	}
	r, err := reaper.Start()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, err
	}
	_ = os.Remove(cfg.Socket)
	if err := os.MkdirAll(filepath.Dir(cfg.Socket), 0o700); err != nil {
		return nil, err
	}
	ln, err := unixsock.Listen(cfg.Socket)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(cfg.Socket, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return &Server{
		cfg: cfg, log: cfg.Logger, reaper: r, ln: ln,
		containers: map[string]*proc{}, execs: map[string]*proc{},
		watchers: map[chan Event]struct{}{}, idle: make(chan struct{}),
	}, nil
}

// Serve answers requests until Shutdown has been asked for and nothing is
// left running.
func (s *Server) Serve() error {
	go func() {
		<-s.idle
		s.ln.Close()
	}()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.isStopping() {
				return nil
			}
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			s.log.Warn("accept", "error", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go s.handle(c)
	}
}

func (s *Server) isStopping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopping
}

func (s *Server) handle(c *unixsock.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	var req Request
	if err := readJSON(br, &req); err != nil {
		_ = writeJSON(c, &Response{Error: "bad request: " + err.Error()})
		return
	}
	var (
		resp  *Response
		files []*os.File
		err   error
	)
	switch req.Op {
	case OpCreate:
		resp, err = s.create(req)
	case OpExec:
		resp, files, err = s.exec(req)
	case OpAttach:
		resp, files, err = s.attach(req)
	case OpWait:
		resp, err = s.wait(c, req)
	case OpState:
		resp = &Response{State: s.state()}
	case OpEvents:
		s.events(c)
		return
	case OpReopenLog:
		err = s.reopenLog(req.ID)
		resp = &Response{}
	case OpCloseStdin:
		err = s.closeStdin(req.ID)
		resp = &Response{}
	case OpForget:
		s.forget(req.ID, req.ExecID)
		resp = &Response{}
	case OpShutdown:
		s.shutdown()
		resp = &Response{}
	case OpKill:
		err = s.kill(req.ID, req.ExecID, unix.Signal(req.Signal))
		resp = &Response{}
	default:
		err = fmt.Errorf("unknown operation %q", req.Op)
	}
	if err != nil {
		_ = writeJSON(c, errorResponse(err))
		closeAll(files)
		return
	}
	if err := writeJSON(c, resp, files...); err != nil {
		s.log.Warn("reply", "op", req.Op, "error", err)
	}
	// The descriptors now live in berthd; ours go.
	closeAll(files)
}

// stdio is a process's standard streams: the ends the process gets and
// the ends the shim keeps.
type stdio struct {
	child   [3]*os.File // stdin, stdout, stderr of the process
	stdin   *os.File    // write end kept for the process's stdin
	stdout  *os.File    // read ends kept
	stderr  *os.File
	sock    string // console socket path (tty)
	sockLn  *unixsock.Listener
	console chan consoleResult
}

type consoleResult struct {
	f   *os.File
	err error
}

func (s *Server) newStdio(name string, withStdin, tty bool) (*stdio, error) {
	io := &stdio{}
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	if tty {
		io.child = [3]*os.File{devnull, devnull, devnull}
		// Socket paths end at 108 bytes: a short name, not the id.
		io.sock = filepath.Join(s.cfg.StateDir, fmt.Sprintf("c%d.sock", s.consoleSeq.Add(1)))
		_ = os.Remove(io.sock)
		ln, err := unixsock.Listen(io.sock)
		if err != nil {
			devnull.Close()
			return nil, err
		}
		io.sockLn = ln
		io.console = make(chan consoleResult, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				io.console <- consoleResult{err: err}
				return
			}
			defer c.Close()
			f, err := recvFd(c)
			io.console <- consoleResult{f, err}
		}()
		return io, nil
	}
	io.child[0] = devnull
	if withStdin {
		r, w, err := os.Pipe()
		if err != nil {
			devnull.Close()
			return nil, err
		}
		io.child[0], io.stdin = r, w
		devnull.Close()
	}
	for i, keep := range []**os.File{&io.stdout, &io.stderr} {
		r, w, err := os.Pipe()
		if err != nil {
			io.closeAll()
			return nil, err
		}
		io.child[i+1], *keep = w, r
	}
	return io, nil
}

// closeChild closes the process's ends once it holds its own copies.
func (io *stdio) closeChild() {
	seen := map[*os.File]bool{}
	for _, f := range io.child {
		if f != nil && !seen[f] {
			seen[f] = true
			f.Close()
		}
	}
	if io.sockLn != nil {
		io.sockLn.Close()
		os.Remove(io.sock)
	}
}

func (io *stdio) closeAll() {
	io.closeChild()
	for _, f := range []*os.File{io.stdin, io.stdout, io.stderr} {
		if f != nil {
			f.Close()
		}
	}
}

// runRuntime runs the berth CLI with the process's stdio and waits for it
// (through the reaper: this process reaps everything). Its errors come
// from its JSON log file.
func (s *Server) runRuntime(ctx context.Context, io *stdio, logName string, args ...string) error {
	logFile := filepath.Join(s.cfg.StateDir, logName+".runtime.log")
	_ = os.Remove(logFile)
	defer os.Remove(logFile)
	global := []string{"--root", s.cfg.RuntimeRoot, "--log", logFile, "--log-format", "json"}
	if s.cfg.SystemdCgroup {
		global = append(global, "--systemd-cgroup")
	}
	// os.StartProcess, not os/exec: the reaper waits for it, and os/exec
	// is 0.16 MB of the shim's binary, which every pod maps.
	argv := append([]string{s.cfg.Runtime}, append(global, args...)...)
	proc, err := os.StartProcess(s.cfg.Runtime, argv, &os.ProcAttr{
		Dir: "/", Files: []*os.File{io.child[0], io.child[1], io.child[2]},
	})
	if err != nil {
		return fmt.Errorf("start %s: %w", s.cfg.Runtime, err)
	}
	var exit reaper.Exit
	select {
	case exit = <-s.reaper.Subscribe(proc.Pid):
	case <-ctx.Done():
		_ = proc.Kill()
		exit = <-s.reaper.Subscribe(proc.Pid)
	}
	// Reaped already: this only lets go of its pidfd.
	_ = proc.Release()
	if exit.Status != 0 {
		return fmt.Errorf("%s", runtimeError(logFile, exit.Status))
	}
	return nil
}

// runtimeError is the last error the CLI logged.
func runtimeError(path string, status int) string {
	data, _ := os.ReadFile(path)
	msg := ""
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var entry struct{ Level, Msg string }
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Level == "error" {
			msg = entry.Msg
		}
	}
	if msg == "" {
		msg = fmt.Sprintf("exit status %d", status)
	}
	return msg
}

func readPid(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}

func (s *Server) create(req Request) (*Response, error) {
	c := req.Create
	if c == nil || req.ID == "" || c.Bundle == "" {
		return nil, errors.New("create: id and bundle required")
	}
	s.mu.Lock()
	if _, ok := s.containers[req.ID]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("container %s exists in this shim", req.ID)
	}
	p := &proc{status: ProcessStatus{ID: req.ID}, done: make(chan struct{}), stdinOnce: c.StdinOnce, pidfd: -1}
	s.containers[req.ID] = p
	s.mu.Unlock()
	fail := func(err error) (*Response, error) {
		s.mu.Lock()
		delete(s.containers, req.ID)
		s.mu.Unlock()
		return nil, err
	}
	io, err := s.newStdio(req.ID, c.Stdin, c.TTY)
	if err != nil {
		return fail(err)
	}
	if c.LogPath != "" {
		if p.log, err = crilog.Open(c.LogPath); err != nil {
			io.closeAll()
			return fail(err)
		}
	}
	pidFile := filepath.Join(s.cfg.StateDir, req.ID+".pid")
	args := []string{"create", "--bundle", c.Bundle, "--pid-file", pidFile}
	if r := c.Restore; r != nil {
		args = []string{"restore", "--detach", "--bundle", c.Bundle, "--pid-file", pidFile, "--image-path", r.ImagePath}
		if r.WorkPath != "" {
			args = append(args, "--work-path", r.WorkPath)
		}
	}
	if c.TTY {
		args = append(args, "--console-socket", io.sock)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = s.runRuntime(ctx, io, req.ID, append(args, req.ID)...)
	io.closeChild()
	var console *os.File
	if err == nil && c.TTY {
		select {
		case r := <-io.console:
			console, err = r.f, r.err
		case <-time.After(10 * time.Second):
			err = errors.New("no console received from the runtime")
		}
	}
	var pid int
	if err == nil {
		pid, err = readPid(pidFile)
	}
	os.Remove(pidFile)
	if err != nil {
		io.closeAll()
		if console != nil {
			console.Close()
		}
		if p.log != nil {
			p.log.Close()
		}
		return fail(fmt.Errorf("create container %s: %w", req.ID, err))
	}
	// p is visible to state() and attach() since it was reserved: what
	// they read is written under the lock.
	pidfd := openPidfd(pid)
	// Watched from now: once the container has exited, its cgroup may
	// be gone (systemd removes an empty scope) before anyone reads it.
	oom, err := s.oom.Watch(pid)
	if err != nil {
		s.log.Warn("no OOM watch: an OOM kill of this container will be reported as an error", "container", req.ID, "error", err)
	}
	s.mu.Lock()
	p.status.Pid, p.status.Since, p.stdin, p.console, p.pidfd, p.oom = pid, time.Now(), io.stdin, console, pidfd, oom
	s.mu.Unlock()
	exitCh := s.reaper.Subscribe(pid)
	s.copyOutput(p, io, console)
	go s.monitor(p, exitCh)
	return &Response{Pid: pid}, nil
}

// openPidfd opens a descriptor of the process, so that a signal sent
// later reaches it or nothing, never a process that reused its pid; -1
// where the kernel has no pidfds (before Linux 5.3).
func openPidfd(pid int) int {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1
	}
	unix.CloseOnExec(fd)
	return fd
}

// copyOutput logs the container's output, and tees it to attach clients.
// console is the container's terminal, or nil: passed in, since monitor
// clears p.console when the container exits.
func (s *Server) copyOutput(p *proc, io *stdio, console *os.File) {
	type stream struct {
		name string
		r    *os.File
		tee  *crilog.Tee
	}
	var streams []stream
	if console != nil {
		streams = append(streams, stream{"stdout", console, &p.outTee})
	} else {
		streams = append(streams, stream{"stdout", io.stdout, &p.outTee}, stream{"stderr", io.stderr, &p.errTee})
	}
	for _, st := range streams {
		p.ioDone.Add(1)
		go func() {
			defer p.ioDone.Done()
			defer st.tee.CloseAll()
			if p.log != nil {
				if err := p.log.Copy(st.name, st.r, st.tee); err != nil && !errors.Is(err, os.ErrClosed) && !errors.Is(err, unix.EIO) {
					s.log.Warn("container output", "container", p.status.ID, "stream", st.name, "error", err)
				}
			} else {
				discard(st.r, st.tee)
			}
			// The console is monitor's to close.
			if st.r != console {
				st.r.Close()
			}
		}()
	}
}

func discard(r *os.File, tee *crilog.Tee) {
	buf := make([]byte, crilog.CopyBuffer)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			tee.Write(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// drainTimeout bounds how long output is drained after the init exits:
// a daemonized grandchild may keep the pipes open forever.
const drainTimeout = 2 * time.Second

func (s *Server) monitor(p *proc, exitCh <-chan reaper.Exit) {
	e := <-exitCh
	// The OOM count first, before the output drains: under the systemd
	// driver the scope goes as soon as systemd sees it empty, and its
	// kill notification may still be held back by the kernel's rate
	// limit then.
	oomKilled := false
	if p.oom != nil {
		oomKilled = p.oom.Kills(e.Signal == unix.SIGKILL) > 0
		p.oom.Close()
	}
	drained := make(chan struct{})
	go func() { p.ioDone.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(drainTimeout):
	}
	s.mu.Lock()
	p.status.Exit = &Exit{Code: e.Status, At: e.Time, Signal: int(e.Signal), OOMKilled: oomKilled}
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
	if p.console != nil {
		p.console.Close()
		p.console = nil
	}
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
	st := p.status
	s.mu.Unlock()
	close(p.done)
	s.log.Info("exited", "container", st.ID, "exec", st.ExecID, "pid", st.Pid, "status", e.Status)
	s.publish(Event{Type: "exit", Process: st})
	s.maybeIdle()
}

func (s *Server) exec(req Request) (*Response, []*os.File, error) {
	x := req.Exec
	if x == nil || x.Process == nil || req.ID == "" || req.ExecID == "" {
		return nil, nil, errors.New("exec: container id, exec id and process required")
	}
	s.mu.Lock()
	if _, ok := s.execs[req.ExecID]; ok {
		s.mu.Unlock()
		return nil, nil, fmt.Errorf("exec %s exists", req.ExecID)
	}
	p := &proc{status: ProcessStatus{ID: req.ID, ExecID: req.ExecID}, done: make(chan struct{}), pidfd: -1}
	s.execs[req.ExecID] = p
	s.mu.Unlock()
	fail := func(err error) (*Response, []*os.File, error) {
		s.mu.Lock()
		delete(s.execs, req.ExecID)
		s.mu.Unlock()
		return nil, nil, err
	}
	proc := *x.Process
	proc.Terminal = x.TTY
	data, err := json.Marshal(&proc)
	if err != nil {
		return fail(err)
	}
	specFile := filepath.Join(s.cfg.StateDir, req.ExecID+".process.json")
	if err := os.WriteFile(specFile, data, 0o600); err != nil {
		return fail(err)
	}
	defer os.Remove(specFile)
	io, err := s.newStdio(req.ExecID, x.Stdin, x.TTY)
	if err != nil {
		return fail(err)
	}
	pidFile := filepath.Join(s.cfg.StateDir, req.ExecID+".pid")
	args := []string{"exec", "--detach", "--pid-file", pidFile, "--process", specFile}
	if x.TTY {
		args = append(args, "--tty", "--console-socket", io.sock)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = s.runRuntime(ctx, io, req.ExecID, append(args, req.ID)...)
	io.closeChild()
	var console *os.File
	if err == nil && x.TTY {
		select {
		case r := <-io.console:
			console, err = r.f, r.err
		case <-time.After(10 * time.Second):
			err = errors.New("no console received from the runtime")
		}
	}
	var pid int
	if err == nil {
		pid, err = readPid(pidFile)
	}
	os.Remove(pidFile)
	if err != nil {
		io.closeAll()
		return fail(fmt.Errorf("exec in container %s: %w", req.ID, err))
	}
	pidfd := openPidfd(pid)
	s.mu.Lock()
	p.status.Pid, p.status.Since, p.pidfd = pid, time.Now(), pidfd
	s.mu.Unlock()
	go s.monitor(p, s.reaper.Subscribe(pid))
	resp := &Response{Pid: pid}
	var files []*os.File
	if console != nil {
		resp.Fds, files = []string{"console"}, []*os.File{console}
	} else {
		if io.stdin != nil {
			resp.Fds, files = append(resp.Fds, "stdin"), append(files, io.stdin)
		}
		resp.Fds = append(resp.Fds, "stdout", "stderr")
		files = append(files, io.stdout, io.stderr)
	}
	return resp, files, nil
}

// attach hands berthd new read ends of the container's output and, if it
// has one, a copy of its stdin (or of its console).
func (s *Server) attach(req Request) (*Response, []*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.containers[req.ID]
	if !ok {
		return nil, nil, fmt.Errorf("container %s: %w", req.ID, ErrNotFound)
	}
	if p.status.Exit != nil {
		return nil, nil, fmt.Errorf("container %s has exited", req.ID)
	}
	resp := &Response{}
	var files []*os.File
	dup := func(f *os.File) (*os.File, error) {
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		return os.NewFile(uintptr(fd), f.Name()), nil
	}
	if p.console != nil {
		in, err := dup(p.console)
		if err != nil {
			return nil, nil, err
		}
		r, w, err := os.Pipe()
		if err != nil {
			in.Close()
			return nil, nil, err
		}
		p.outTee.Add(w)
		resp.Fds, files = []string{"console", "stdout"}, []*os.File{in, r}
		return resp, files, nil
	}
	if p.stdin != nil {
		in, err := dup(p.stdin)
		if err != nil {
			return nil, nil, err
		}
		resp.Fds, files = append(resp.Fds, "stdin"), append(files, in)
	}
	for _, st := range []struct {
		name string
		tee  *crilog.Tee
	}{{"stdout", &p.outTee}, {"stderr", &p.errTee}} {
		r, w, err := os.Pipe()
		if err != nil {
			closeAll(files)
			return nil, nil, err
		}
		st.tee.Add(w)
		resp.Fds, files = append(resp.Fds, st.name), append(files, r)
	}
	return resp, files, nil
}

func (s *Server) lookup(id, execID string) (*proc, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if execID != "" {
		if p, ok := s.execs[execID]; ok {
			return p, nil
		}
		return nil, fmt.Errorf("exec %s: %w", execID, ErrNotFound)
	}
	if p, ok := s.containers[id]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("container %s: %w", id, ErrNotFound)
}

func (s *Server) wait(c *unixsock.Conn, req Request) (*Response, error) {
	p, err := s.lookup(req.ID, req.ExecID)
	if err != nil {
		return nil, err
	}
	// A client that hangs up stops waiting.
	gone := make(chan struct{})
	go func() {
		buf := make([]byte, 1)
		_, _ = c.Read(buf)
		close(gone)
	}()
	select {
	case <-p.done:
	case <-gone:
		return nil, errors.New("client went away")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := p.status
	return &Response{Pid: st.Pid, Exit: st.Exit}, nil
}

func (s *Server) state() *State {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &State{Pid: os.Getpid()}
	for _, p := range s.containers {
		st.Containers = append(st.Containers, p.status)
	}
	for _, p := range s.execs {
		st.Execs = append(st.Execs, p.status)
	}
	slices.SortFunc(st.Containers, func(a, b ProcessStatus) int { return strings.Compare(a.ID, b.ID) })
	slices.SortFunc(st.Execs, func(a, b ProcessStatus) int { return strings.Compare(a.ExecID, b.ExecID) })
	return st
}

// events streams exit events until the client hangs up.
func (s *Server) events(c *unixsock.Conn) {
	ch := make(chan Event, 256)
	s.mu.Lock()
	s.watchers[ch] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.watchers, ch)
		s.mu.Unlock()
	}()
	if err := writeJSON(c, &Response{}); err != nil {
		return
	}
	gone := make(chan struct{})
	go func() {
		buf := make([]byte, 1)
		_, _ = c.Read(buf)
		close(gone)
	}()
	for {
		select {
		case ev := <-ch:
			if err := writeJSON(c, &Response{Event: &ev}); err != nil {
				return
			}
		case <-gone:
			return
		}
	}
}

func (s *Server) publish(ev Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.watchers {
		select {
		case ch <- ev:
		default:
			// A watcher that does not keep up re-reads the state when it
			// reconnects; the shim never blocks on it.
		}
	}
}

func (s *Server) reopenLog(id string) error {
	p, err := s.lookup(id, "")
	if err != nil {
		return err
	}
	if p.log == nil {
		return fmt.Errorf("container %s has no log file", id)
	}
	return p.log.Reopen()
}

func (s *Server) closeStdin(id string) error {
	p, err := s.lookup(id, "")
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
	return nil
}

// kill signals a container's init or an exec'd process through its
// pidfd, under the lock monitor closes it with: the signal reaches that
// process, or none if it has exited, never one that reused its pid.
func (s *Server) kill(id, execID string, sig unix.Signal) error {
	p, err := s.lookup(id, execID)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case p.status.Exit != nil || p.status.Pid == 0:
		return nil
	case p.pidfd >= 0:
		err = unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
	default:
		// No pidfds (before Linux 5.3): the pid, as runc does.
		err = unix.Kill(p.status.Pid, sig)
	}
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// forget drops a deleted container or a finished exec.
func (s *Server) forget(id, execID string) {
	s.mu.Lock()
	var p *proc
	if execID != "" {
		p = s.execs[execID]
		delete(s.execs, execID)
	} else {
		p = s.containers[id]
		delete(s.containers, id)
	}
	s.mu.Unlock()
	if p != nil && p.log != nil {
		go func() {
			// Let the output drain before the log closes.
			select {
			case <-p.done:
			case <-time.After(drainTimeout):
			}
			p.log.Close()
		}()
	}
	s.maybeIdle()
}

// shutdown makes the shim exit once nothing it watches is running.
func (s *Server) shutdown() {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	s.maybeIdle()
}

func (s *Server) maybeIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.stopping {
		return
	}
	for _, p := range s.containers {
		if p.status.Exit == nil {
			return
		}
	}
	select {
	case <-s.idle:
	default:
		close(s.idle)
	}
}

// recvFd receives one file descriptor (a console master from the runtime).
func recvFd(c *unixsock.Conn) (*os.File, error) {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, err := c.ReadMsg(buf, oob)
	if err != nil {
		return nil, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, errors.New("console socket: no file descriptor received")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return nil, errors.New("console socket: expected one file descriptor")
	}
	return os.NewFile(uintptr(fds[0]), "console"), nil
}
