// Command mkimage pushes a directory tree to a registry as a one-layer
// image: how `make cluster` packages the Kubernetes components it builds.
//
//	mkimage -registry 10.210.0.1:5000 -rootfs DIR -config '{"Entrypoint":["/coredns"]}' k8s/coredns:v1.14.6
//
// The config is an OCI image config's "config" object; PATH is set when
// it names no environment.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-runtime/berth/internal/testutil"
)

func main() {
	registry := flag.String("registry", "", "registry host:port (plain HTTP)")
	rootfs := flag.String("rootfs", "", "directory tree of the image's one layer")
	config := flag.String("config", "{}", "image config (JSON)")
	flag.Parse()
	if *registry == "" || *rootfs == "" || flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: mkimage -registry HOST:PORT -rootfs DIR [-config JSON] REPO:TAG")
		os.Exit(2)
	}
	if err := run(*registry, *rootfs, *config, flag.Arg(0)); err != nil {
		fmt.Fprintf(os.Stderr, "mkimage %s: %v\n", flag.Arg(0), err)
		os.Exit(1)
	}
}

func run(registry, rootfs, config, repoTag string) error {
	var cfg v1.ImageConfig
	if err := json.Unmarshal([]byte(config), &cfg); err != nil {
		return fmt.Errorf("parse -config: %w", err)
	}
	if len(cfg.Env) == 0 {
		cfg.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	tmp, err := os.MkdirTemp("", "mkimage")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	s := testutil.NewScratch(tmp)
	defer s.Close()
	return testutil.Guard(func() {
		ref := testutil.BuildOCI(s, s.TempDir(), "latest", testutil.ImageSpec{
			Config: cfg,
			Layers: []testutil.Layer{{Dir: rootfs}},
		})
		(&testutil.Registry{Addr: registry}).Push(s, ref, repoTag)
	})
}
