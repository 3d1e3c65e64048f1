package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"

	"github.com/containerd/console"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/runtime"
)

// tty holds what a process's stdio needs while berth runs: a console
// copied to and from berth's own terminal, and the files to close once the
// process has started or ended.
type tty struct {
	epoller     *console.Epoller
	console     *console.EpollConsole
	hostConsole console.Console
	closers     []io.Closer
	postStart   []io.Closer
	wg          sync.WaitGroup
	consoleC    chan error
}

// setupIO sets the process's stdio. Without a tty the process inherits
// berth's stdin, stdout and stderr directly: no copying, and the output
// is complete when the process ends. With a tty, a foreground berth
// copies between its own terminal and the container's console; a
// detached one passes the console to --console-socket.
func setupIO(p *runtime.Process, terminal, detach bool, sockpath string) (*tty, error) {
	t := &tty{}
	if !terminal {
		p.Stdin, p.Stdout, p.Stderr = os.Stdin, os.Stdout, os.Stderr
		return t, nil
	}
	if detach {
		conn, err := net.Dial("unix", sockpath)
		if err != nil {
			return nil, fmt.Errorf("console socket %s: %w", sockpath, err)
		}
		sock, err := conn.(*net.UnixConn).File()
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("console socket %s: %w", sockpath, err)
		}
		t.postStart = append(t.postStart, conn, sock)
		p.ConsoleSocket = sock
		return t, nil
	}
	if err := t.initHostConsole(); err != nil {
		return nil, err
	}
	parent, child, err := socketPair("console")
	if err != nil {
		return nil, err
	}
	p.ConsoleSocket = child
	t.postStart = append(t.postStart, parent, child)
	t.consoleC = make(chan error, 1)
	go func() { t.consoleC <- t.recvtty(parent) }()
	return t, nil
}

func socketPair(name string) (parent, child *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_LOCAL, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[1]), name+"-p"), os.NewFile(uintptr(fds[0]), name+"-c"), nil
}

func (t *tty) initHostConsole() error {
	for _, s := range []*os.File{os.Stderr, os.Stdout, os.Stdin} {
		c, err := console.ConsoleFromFile(s)
		if err == nil {
			t.hostConsole = c
			return nil
		}
		if !errors.Is(err, console.ErrNotAConsole) {
			return fmt.Errorf("unable to get console: %w", err)
		}
	}
	f, err := os.Open("/dev/tty")
	if err != nil {
		return fmt.Errorf("process.terminal is true but berth has no terminal: %w", err)
	}
	c, err := console.ConsoleFromFile(f)
	if err != nil {
		return fmt.Errorf("unable to get console: %w", err)
	}
	t.hostConsole = c
	return nil
}

// recvtty receives the container's console master and starts copying.
func (t *tty) recvtty(socket *os.File) (retErr error) {
	f, err := recvFile(socket)
	if err != nil {
		return err
	}
	cons, err := console.ConsoleFromFile(f)
	if err != nil {
		return err
	}
	if err := console.ClearONLCR(cons.Fd()); err != nil {
		return err
	}
	epoller, err := console.NewEpoller()
	if err != nil {
		return err
	}
	ec, err := epoller.Add(cons)
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			_ = ec.Close()
		}
	}()
	go func() { _ = epoller.Wait() }()
	go func() { _, _ = io.Copy(ec, os.Stdin) }()
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		_, _ = io.Copy(os.Stdout, ec)
	}()
	if err := t.hostConsole.SetRaw(); err != nil {
		return fmt.Errorf("failed to set the terminal from the stdin: %w", err)
	}
	go func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, os.Interrupt)
		<-c
		_ = t.hostConsole.Reset()
		os.Exit(0)
	}()
	t.epoller, t.console = epoller, ec
	t.closers = []io.Closer{ec}
	return nil
}

// recvFile receives one file descriptor sent with SCM_RIGHTS.
func recvFile(socket *os.File) (*os.File, error) {
	name := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(int(socket.Fd()), name, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("receive console: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, errors.New("receive console: no file descriptor in message")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return nil, errors.New("receive console: expected exactly one file descriptor")
	}
	return os.NewFile(uintptr(fds[0]), string(name[:n])), nil
}

func (t *tty) waitConsole() error {
	if t.consoleC != nil {
		return <-t.consoleC
	}
	return nil
}

// closePostStart closes berth's copies of files the process now holds.
func (t *tty) closePostStart() {
	for _, c := range t.postStart {
		_ = c.Close()
	}
	t.postStart = nil
}

// Close waits for output to drain and restores berth's terminal.
func (t *tty) Close() {
	t.closePostStart()
	if t.console != nil && t.epoller != nil {
		_ = t.console.Shutdown(t.epoller.CloseConsole)
	}
	t.wg.Wait()
	for _, c := range t.closers {
		_ = c.Close()
	}
	if t.hostConsole != nil {
		_ = t.hostConsole.Reset()
	}
}

func (t *tty) resize() error {
	if t.console == nil || t.hostConsole == nil {
		return nil
	}
	return t.console.ResizeFrom(t.hostConsole)
}
