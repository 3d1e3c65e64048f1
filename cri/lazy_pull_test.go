package cri

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/berth-runtime/berth/image/lazy"
	"github.com/berth-runtime/berth/internal/lazyhelper"
)

// TestLazyPullDefault: lazy pulling is on by default, and turns itself off
// on a node that cannot serve it unless the configuration asks for it.
func TestLazyPullDefault(t *testing.T) {
	if !DefaultConfig().LazyPull.Enabled {
		t.Fatal("[lazy_pull] is off by default")
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		name, toml string
		wantOn     bool
		wantErr    string
		wantWhy    string
	}{
		{"default, no helper", "[lazy_pull]\nhelper_path = \"/nonexistent/berth-lazy\"\n", false, "", "/nonexistent/berth-lazy"},
		{"explicit, no helper", "[lazy_pull]\nenabled = true\nhelper_path = \"/nonexistent/berth-lazy\"\n", false, "/nonexistent/berth-lazy", ""},
		{"explicit off", "[lazy_pull]\nenabled = false\nhelper_path = \"/nonexistent/berth-lazy\"\n", false, "", ""},
		{"default, helper", "[lazy_pull]\nhelper_path = \"/bin/sh\"\n", fuseDevice() == nil, "", ""},
	} {
		path := filepath.Join(dir, "berth.toml")
		if err := os.WriteFile(path, []byte(tc.toml), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := LoadConfig(path, true)
		if err != nil {
			t.Fatal(err)
		}
		err = cfg.validateLazyPull()
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: %v, want an error naming %s", tc.name, err, tc.wantErr)
			}
			continue
		case err != nil:
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		lp := cfg.LazyPull
		if lp.Enabled != tc.wantOn || !strings.Contains(lp.offBecause, tc.wantWhy) || (tc.wantWhy == "") != (lp.offBecause == "") {
			t.Errorf("%s: enabled %v (%q), want %v (%q)", tc.name, lp.Enabled, lp.offBecause, tc.wantOn, tc.wantWhy)
		}
	}
}

// TestLazyMounterStartsOnlyWhenNeeded: the store's reconcile round asks
// for the status every 2 s; on a node without lazy layers that must not
// start berth-lazy, but after a crash of berth-lazy with connections kept
// it must, so that they are served again.
func TestLazyMounterStartsOnlyWhenNeeded(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "started")
	helper := filepath.Join(dir, "berth-lazy")
	// A stand-in that records its start and exits without serving.
	if err := os.WriteFile(helper, []byte("#!/bin/sh\necho \"$@\" > "+marker+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Root: dir, State: dir, LazyPull: LazyPullConfig{Enabled: true, HelperPath: helper}}
	m := &lazyMounter{cfg: &cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil)), client: lazyhelper.NewClient(cfg.lazySocket())}
	ctx := context.Background()
	st, err := m.Status(ctx)
	if err != nil || len(st) != 0 {
		t.Fatalf("status without berth-lazy: %v, %v; want none", st, err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a status call started berth-lazy with no lazy layer on the node")
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	blob := digest.FromString("layer")
	m.kept = map[digest.Digest]lazy.Connection{blob: {Blob: blob, File: w}}
	defer w.Close()
	if _, err := m.Status(ctx); err == nil {
		t.Fatal("status succeeded with a stand-in berth-lazy that does not serve")
	}
	args, err := os.ReadFile(marker)
	if err != nil {
		t.Fatalf("berth-lazy was not started to serve the kept connections: %v", err)
	}
	if !strings.Contains(string(args), "--adopt") {
		t.Errorf("berth-lazy started with %q, want --adopt", args)
	}
	if _, ok := m.kept[blob]; !ok {
		t.Error("a failed start dropped the kept connection")
	}
}
