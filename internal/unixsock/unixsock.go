// Package unixsock is a Unix stream socket on Go's poller through os.File,
// with descriptor passing (SCM_RIGHTS): what berth-shim needs of package
// net, without it. net, with its resolver and address types, is 0.2 MB of
// the shim's binary, and every pod's shim maps its binary whole.
package unixsock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Conn is a connected socket. Read, Write, Close and SetDeadline are
// os.File's: a non-blocking descriptor wrapped by os.NewFile is pollable,
// so they wait on the poller and honour deadlines as net.Conn's do.
type Conn struct {
	*os.File
	rc syscall.RawConn
}

func newConn(fd int, name string) (*Conn, error) {
	f := os.NewFile(uintptr(fd), name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Conn{File: f, rc: rc}, nil
}

// Dial connects to the socket at path. A listener whose backlog is full
// answers EAGAIN; Dial tries again until ctx ends.
func Dial(ctx context.Context, path string) (*Conn, error) {
	for {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, os.NewSyscallError("socket", err)
		}
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
		if err == nil {
			c, err := newConn(fd, path)
			if err == nil {
				if dl, ok := ctx.Deadline(); ok {
					_ = c.SetDeadline(dl)
				}
			}
			return c, err
		}
		unix.Close(fd)
		if !errors.Is(err, unix.EAGAIN) {
			return nil, fmt.Errorf("dial %s: %w", path, os.NewSyscallError("connect", err))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dial %s: %w", path, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// WriteMsg writes b with the ancillary data oob (unix.UnixRights) in one
// sendmsg; n may be short of len(b), as with write.
func (c *Conn) WriteMsg(b, oob []byte) (n, oobn int, err error) {
	werr := c.rc.Write(func(fd uintptr) bool {
		n, err = unix.SendmsgN(int(fd), b, oob, nil, 0)
		return !errors.Is(err, unix.EAGAIN)
	})
	if werr != nil {
		return 0, 0, werr
	}
	if err != nil {
		return n, 0, os.NewSyscallError("sendmsg", err)
	}
	return n, len(oob), nil
}

// ReadMsg reads into b and the ancillary data into oob in one recvmsg.
// Descriptors received are close-on-exec (MSG_CMSG_CLOEXEC).
func (c *Conn) ReadMsg(b, oob []byte) (n, oobn int, err error) {
	rerr := c.rc.Read(func(fd uintptr) bool {
		n, oobn, _, _, err = unix.Recvmsg(int(fd), b, oob, unix.MSG_CMSG_CLOEXEC)
		return !errors.Is(err, unix.EAGAIN)
	})
	if rerr != nil {
		return 0, 0, rerr
	}
	if err != nil {
		return 0, 0, os.NewSyscallError("recvmsg", err)
	}
	return n, oobn, nil
}

// Listener accepts connections on a socket it created; Close removes the
// socket's path, as net.UnixListener's does.
type Listener struct {
	f      *os.File
	rc     syscall.RawConn
	path   string
	closed atomic.Bool
}

// Listen creates a socket at path and listens on it.
func Listen(path string) (*Listener, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen %s: %w", path, os.NewSyscallError("bind", err))
	}
	// The kernel caps the backlog at net.core.somaxconn.
	if err := unix.Listen(fd, 4096); err != nil {
		unix.Close(fd)
		os.Remove(path)
		return nil, fmt.Errorf("listen %s: %w", path, os.NewSyscallError("listen", err))
	}
	f := os.NewFile(uintptr(fd), path)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	return &Listener{f: f, rc: rc, path: path}, nil
}

// Accept waits for a connection. After Close it returns os.ErrClosed.
func (l *Listener) Accept() (*Conn, error) {
	for {
		var (
			nfd int
			err error
		)
		rerr := l.rc.Read(func(fd uintptr) bool {
			nfd, _, err = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			return !errors.Is(err, unix.EAGAIN)
		})
		switch {
		case l.closed.Load():
			if rerr == nil && err == nil {
				unix.Close(nfd)
			}
			return nil, os.ErrClosed
		case rerr != nil:
			return nil, rerr
		case errors.Is(err, unix.ECONNABORTED), errors.Is(err, unix.EINTR):
			// The client hung up before it was accepted.
			continue
		case err != nil:
			return nil, os.NewSyscallError("accept4", err)
		}
		return newConn(nfd, l.path)
	}
}

// Close stops Accept and removes the socket's path.
func (l *Listener) Close() error {
	if l.closed.Swap(true) {
		return os.ErrClosed
	}
	err := l.f.Close()
	os.Remove(l.path)
	return err
}
