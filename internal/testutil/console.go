package testutil

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ConsoleSocket is a listening AF_UNIX socket to pass as --console-socket:
// the runtime sends the master end of the container's pty over it.
type ConsoleSocket struct {
	Path string
	l    *net.UnixListener
}

// NewConsoleSocket listens on a socket in a temporary directory.
func NewConsoleSocket(t testing.TB) *ConsoleSocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "console.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return &ConsoleSocket{Path: path, l: l}
}

// ReceiveMaster accepts the runtime's connection and returns the pty
// master it sends.
func (c *ConsoleSocket) ReceiveMaster(t testing.TB) *os.File {
	t.Helper()
	if err := c.l.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	conn, err := c.l.AcceptUnix()
	if err != nil {
		t.Fatalf("console socket: %v", err)
	}
	defer conn.Close()
	f, err := recvFd(conn)
	if err != nil {
		t.Fatalf("console socket: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func recvFd(conn *net.UnixConn) (*os.File, error) {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, errors.New("no control message with a file descriptor")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return nil, fmt.Errorf("want one file descriptor, got %d (%v)", len(fds), err)
	}
	// Non-blocking before os.NewFile, so that reads honour deadlines.
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		return nil, err
	}
	return os.NewFile(uintptr(fds[0]), string(buf[:n])), nil
}

// ReadUntil reads from a pty master until the output contains want or the
// timeout passes; it returns everything read.
func ReadUntil(t testing.TB, f *os.File, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var out []byte
	buf := make([]byte, 4096)
	for time.Now().Before(deadline) {
		_ = f.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := f.Read(buf)
		out = append(out, buf[:n]...)
		if strings.Contains(string(out), want) {
			return string(out)
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
	}
	t.Fatalf("pty output %q never contained %q", out, want)
	return ""
}
