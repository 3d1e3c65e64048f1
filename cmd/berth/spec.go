package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/urfave/cli"

	"github.com/berth-runtime/berth/runtime"
)

var specCommand = cli.Command{
	Name:  "spec",
	Usage: "create a new specification file",
	Description: `The spec command writes a new config.json for a bundle: a hardened
default with the default capability set, masked and read-only kernel paths,
the Docker/containerd default seccomp profile, no_new_privs, and fresh pid,
mount, ipc, uts and network namespaces. Its process is "sh" on a terminal;
edit "args" (and "terminal") to run something else.`,
	Flags: []cli.Flag{
		cli.StringFlag{Name: "bundle, b", Usage: "path to the root of the bundle directory"},
		cli.BoolFlag{Name: "rootless", Usage: "not supported: berth runs containers as root only"},
	},
	Action: func(ctx *cli.Context) error {
		if err := checkArgs(ctx, 0, exactArgs); err != nil {
			return err
		}
		if ctx.Bool("rootless") {
			return errors.New("--rootless is not supported: berth runs containers as root only")
		}
		spec, err := runtime.DefaultSpec()
		if err != nil {
			return err
		}
		path := filepath.Join(ctx.String("bundle"), runtime.ConfigFile)
		if _, err := os.Stat(path); err == nil {
			return fmt.Errorf("file %s exists. Remove it first", path)
		}
		data, err := json.MarshalIndent(spec, "", "\t")
		if err != nil {
			return err
		}
		return os.WriteFile(path, data, 0o666)
	},
}
