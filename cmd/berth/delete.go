package main

import (
	"errors"

	"github.com/urfave/cli"

	"github.com/berth-runtime/berth/runtime"
)

var deleteCommand = cli.Command{
	Name:  "delete",
	Usage: "delete any resources held by the container often used with detached container",
	ArgsUsage: `<container-id>

Where "<container-id>" is the name for the instance of the container.`,
	Flags: []cli.Flag{
		cli.BoolFlag{Name: "force, f", Usage: "Forcibly deletes the container if it is still running (uses SIGKILL)"},
	},
	Action: func(ctx *cli.Context) error {
		if err := checkArgs(ctx, 1, exactArgs); err != nil {
			return err
		}
		rt, err := newRuntime(ctx)
		if err != nil {
			return err
		}
		id := ctx.Args().First()
		force := ctx.Bool("force")
		c, err := rt.Load(id)
		if errors.Is(err, runtime.ErrNotExist) {
			// A create cut short may have left a state directory without
			// state; remove it. As with runc, only --force makes an
			// unknown id a success.
			if _, rerr := rt.Remains(id); rerr != nil {
				logger.Warn("remove remains", "container", id, "error", rerr)
			}
			if force {
				return nil
			}
			return err
		}
		if err != nil {
			return err
		}
		return c.Delete(force)
	},
}
