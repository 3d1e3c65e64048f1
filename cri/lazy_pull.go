package cri

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"

	digest "github.com/opencontainers/go-digest"

	"github.com/berth-runtime/berth/image"
	"github.com/berth-runtime/berth/image/lazy"
	"github.com/berth-runtime/berth/internal/lazyhelper"
)

// lazyOptions is the image store's lazy pulling as [lazy_pull] says.
func lazyOptions(cfg *Config, log *slog.Logger) image.LazyOptions {
	if !cfg.LazyPull.Enabled {
		if why := cfg.LazyPull.offBecause; why != "" {
			log.Warn("lazy pulling of eStargz images is off: eStargz images are pulled whole", "reason", why)
		}
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

	// kept are duplicates of berth-lazy's FUSE connections, by blob:
	// while berthd holds one, a crash of berth-lazy leaves the layer's
	// mount alive (its readers wait), and the next berth-lazy, given
	// them at its start, serves them again.
	keptMu sync.Mutex
	kept   map[digest.Digest]lazy.Connection
}

func (m *lazyMounter) Mount(ctx context.Context, req lazy.LayerRequest) (dir string, err error) {
	err = m.call(ctx, func() error {
		dir, err = m.client.Mount(ctx, req)
		return err
	})
	if err == nil {
		m.keep(ctx, []digest.Digest{req.Blob})
	}
	return dir, err
}

// Status lists what berth-lazy serves. It starts berth-lazy only to
// serve the connections berthd kept from a berth-lazy that crashed: with
// lazy pulling on by default, a node that never mounted a lazy layer
// runs no berth-lazy, and one whose berth-lazy stopped has none to list.
func (m *lazyMounter) Status(ctx context.Context) (st []lazy.LayerStatus, err error) {
	st, err = m.client.Status(ctx)
	if errors.Is(err, lazyhelper.ErrUnavailable) {
		m.keptMu.Lock()
		kept := len(m.kept)
		m.keptMu.Unlock()
		if kept == 0 {
			return nil, nil
		}
		if err = m.start(ctx); err == nil {
			st, err = m.client.Status(ctx)
		}
	}
	if err == nil {
		served := make([]digest.Digest, len(st))
		for i, s := range st {
			served[i] = s.Blob
		}
		m.keep(ctx, served)
		m.forget(served)
	}
	return st, err
}

// keep fetches berth-lazy's connections if one of the served blobs has
// none kept.
func (m *lazyMounter) keep(ctx context.Context, served []digest.Digest) {
	m.keptMu.Lock()
	defer m.keptMu.Unlock()
	if m.kept == nil {
		m.kept = map[digest.Digest]lazy.Connection{}
	}
	if !slices.ContainsFunc(served, func(b digest.Digest) bool { _, ok := m.kept[b]; return !ok }) {
		return
	}
	conns, err := m.client.Connections(ctx)
	if err != nil {
		m.log.Warn("keep berth-lazy's FUSE connections: a crash of berth-lazy would break the containers reading its layers", "error", err)
		return
	}
	for _, c := range conns {
		if old, ok := m.kept[c.Blob]; ok {
			old.File.Close()
		}
		m.kept[c.Blob] = c
	}
}

// forget closes the kept connections of blobs berth-lazy no longer serves.
func (m *lazyMounter) forget(served []digest.Digest) {
	m.keptMu.Lock()
	defer m.keptMu.Unlock()
	for b, c := range m.kept {
		if !slices.Contains(served, b) {
			c.File.Close()
			delete(m.kept, b)
		}
	}
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
	m.keptMu.Lock()
	var conns []lazy.Connection
	for _, c := range m.kept {
		conns = append(conns, c)
	}
	m.keptMu.Unlock()
	var files []*os.File
	if len(conns) > 0 {
		// Descriptors 4 on: 3 is the ready pipe.
		args = append(args, "--adopt", lazyhelper.AdoptFlag(conns, 4))
		for _, c := range conns {
			files = append(files, c.File)
		}
	}
	cmd := exec.Command(m.cfg.LazyPull.HelperPath, args...)
	cmd.ExtraFiles = files
	if err := startDetached(ctx, cmd, "berth-lazy", logPath); err != nil {
		return err
	}
	m.log.Info("started berth-lazy, the server of lazily pulled layers", "pid", cmd.Process.Pid, "log", logPath, "adopted", len(conns))
	return nil
}
