package main

import (
	"errors"

	"github.com/urfave/cli"

	"github.com/berth-runtime/berth/runtime"
)

var killCommand = cli.Command{
	Name:  "kill",
	Usage: "kill sends the specified signal (default: SIGTERM) to the container's init process",
	ArgsUsage: `<container-id> [signal]

Where "<container-id>" is the name for the instance of the container and
"[signal]" is the signal to be sent to the init process.

EXAMPLE:
       # berth kill ubuntu01 KILL`,
	Flags: []cli.Flag{
		cli.BoolFlag{Name: "all, a", Usage: "(obsoleted, do not use)", Hidden: true},
	},
	Action: func(ctx *cli.Context) error {
		if err := checkArgs(ctx, 1, minArgs); err != nil {
			return err
		}
		if err := checkArgs(ctx, 2, maxArgs); err != nil {
			return err
		}
		sigstr := ctx.Args().Get(1)
		if sigstr == "" {
			sigstr = "SIGTERM"
		}
		// Parse before loading: a bad signal is the user's mistake whatever
		// the container's state.
		sig, err := runtime.ParseSignal(sigstr)
		if err != nil {
			return err
		}
		_, c, err := loadContainer(ctx)
		if err != nil {
			return err
		}
		err = c.Signal(sig)
		if errors.Is(err, runtime.ErrNotRunning) && ctx.Bool("all") {
			return nil
		}
		return err
	},
}
