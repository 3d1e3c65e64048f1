package main

import (
	"encoding/json"

	"github.com/urfave/cli"

	"github.com/berth-runtime/berth/runtime"
)

var featuresCommand = cli.Command{
	Name:  "features",
	Usage: "show the enabled features",
	Description: `Show the enabled features.
   The result is parsable as a JSON.
   See https://github.com/opencontainers/runtime-spec/blob/main/features.md for the type definition.`,
	Action: func(ctx *cli.Context) error {
		if err := checkArgs(ctx, 0, exactArgs); err != nil {
			return err
		}
		enc := json.NewEncoder(ctx.App.Writer)
		enc.SetIndent("", "    ")
		return enc.Encode(runtime.Features(ctx.App.Version))
	},
}
