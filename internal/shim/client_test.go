package shim

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestCallsHaveDeadlines: a shim that accepts but never answers (stuck,
// or stopped) holds no call but Wait past its deadline, also when the
// caller's context has none.
func TestCallsHaveDeadlines(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "stuck.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var conns []net.Conn
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // never answered
			mu.Unlock()
		}
	}()
	c := &Client{Socket: sock, Timeout: 300 * time.Millisecond}
	for name, call := range map[string]func() error{
		"state":  func() error { _, err := c.State(context.Background()); return err },
		"kill":   func() error { return c.Kill(context.Background(), "x", "", 9) },
		"forget": func() error { return c.Forget(context.Background(), "x", "") },
		"attach": func() error { _, err := c.Attach(context.Background(), "x"); return err },
		"events": func() error { return c.Events(context.Background(), nil, func(Event) {}) },
	} {
		start := time.Now()
		err := call()
		if err == nil {
			t.Errorf("%s: no error from a shim that never answers", name)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s: returned after %s", name, d)
		}
		if name == "events" && !errors.Is(err, ErrUnavailable) {
			t.Errorf("events: %v, want ErrUnavailable (the watcher counts those)", err)
		}
	}
}
