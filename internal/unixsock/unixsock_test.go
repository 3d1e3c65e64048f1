package unixsock

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestRoundTrip: bytes and a descriptor go across, deadlines end a read
// that gets nothing, Close ends Accept and removes the path.
func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if st, err := os.Stat(path); err != nil || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket path: %v %v", st, err)
	}

	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
			served <- errors.New("server read: " + string(buf))
			return
		}
		r, w, err := os.Pipe()
		if err != nil {
			served <- err
			return
		}
		defer r.Close()
		if _, err := w.Write([]byte("via fd")); err != nil {
			served <- err
			return
		}
		w.Close()
		_, _, err = c.WriteMsg([]byte("x"), unix.UnixRights(int(r.Fd())))
		served <- err
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, err := c.ReadMsg(buf, oob)
	if err != nil || n != 1 || oobn == 0 {
		t.Fatalf("ReadMsg: n=%d oobn=%d %v", n, oobn, err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control messages: %v %v", msgs, err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("rights: %v %v", fds, err)
	}
	if flags, err := unix.FcntlInt(uintptr(fds[0]), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("received descriptor is not close-on-exec: %v %v", flags, err)
	}
	f := os.NewFile(uintptr(fds[0]), "received")
	got, err := io.ReadAll(f)
	f.Close()
	if err != nil || string(got) != "via fd" {
		t.Errorf("through the descriptor: %q %v", got, err)
	}

	// The server closed: EOF.
	if _, err := c.Read(buf); err != io.EOF {
		t.Errorf("read after the peer closed: %v, want EOF", err)
	}

	// A deadline ends a read that waits.
	c2, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_ = c2.SetDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c2.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read past the deadline: %v", err)
	}

	accepted := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				accepted <- err
				return
			}
			c.Close()
		}
	}()
	time.Sleep(20 * time.Millisecond)
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-accepted:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("Accept after Close: %v, want os.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still waits after Close")
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket path after Close: %v", err)
	}
	if _, err := Dial(ctx, path); err == nil {
		t.Error("Dial to a closed listener succeeded")
	}
}
