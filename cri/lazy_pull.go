package cri

import (
	"context"
	"errors"
	"log/slog"
	"os/exec"
	"path/filepath"
	"sync"

	digest "github.com/opencontainers/go-digest"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/image/lazy"
	"github.com/berth-runtime/berth/internal/lazyhelper"
)

// lazyOptions is the image store's lazy pulling as [lazy_pull] says.
func lazyOptions(cfg *Config, log *slog.Logger) image.LazyOptions {
	if !cfg.LazyPull.Enabled {
		return image.LazyOptions{}
	}
	return image.LazyOptions{
		Mounter:    &lazyMounter{cfg: cfg, log: log, client: lazyhelper.NewClient(cfg.lazySocket())},
		Registries: cfg.LazyPull.Registries,
	}
}

func (c *Config) lazySocket() string { return filepath.Join(c.State, "lazy.sock") }

// lazyMounter is berth-lazy as the image store's mounter. berth-lazy
// runs apart from berthd, as the shims do, so that the root filesystems
// of running containers outlive berthd; it is started when none answers:
// when berthd starts, and again after berth-lazy crashed.
type lazyMounter struct {
	cfg    *Config
	log    *slog.Logger
	client *lazyhelper.Client
	mu     sync.Mutex // one start at a time
}

func (m *lazyMounter) Mount(ctx context.Context, req lazy.LayerRequest) (dir string, err error) {
	err = m.call(ctx, func() error {
		dir, err = m.client.Mount(ctx, req)
		return err
	})
	return dir, err
}

func (m *lazyMounter) Status(ctx context.Context) (st []lazy.LayerStatus, err error) {
	err = m.call(ctx, func() error {
		st, err = m.client.Status(ctx)
		return err
	})
	return st, err
}

func (m *lazyMounter) Unmount(ctx context.Context, blob digest.Digest) error {
	return m.call(ctx, func() error { return m.client.Unmount(ctx, blob) })
}

// call calls f, starting berth-lazy first if it does not answer.
func (m *lazyMounter) call(ctx context.Context, f func() error) error {
	err := f()
	if !errors.Is(err, lazyhelper.ErrUnavailable) {
		return err
	}
	if err := m.start(ctx); err != nil {
		return err
	}
	return f()
}

// start starts berth-lazy unless one answers, and waits until it serves.
func (m *lazyMounter) start(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, err := m.client.Status(ctx); err == nil {
		return nil
	}
	logPath := filepath.Join(m.cfg.State, "berth-lazy.log")
	args := []string{
		"--socket", m.cfg.lazySocket(), "--run-dir", filepath.Join(m.cfg.State, "lazy"),
		"--state-dir", filepath.Join(m.cfg.Root, "lazy"), "--log", logPath, "--ready-fd", "3",
	}
	if m.cfg.LogLevel == "debug" {
		args = append(args, "--debug")
	}
	cmd := exec.Command(m.cfg.LazyPull.HelperPath, args...)
	if err := startDetached(ctx, cmd, "berth-lazy", logPath); err != nil {
		return err
	}
	m.log.Info("started berth-lazy, the server of lazily pulled layers", "pid", cmd.Process.Pid, "log", logPath)
	return nil
}
