package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli"

	"github.com/berth-runtime/berth/runtime"
)

var listCommand = cli.Command{
	Name:  "list",
	Usage: "lists containers started by berth with the given root",
	ArgsUsage: `

Where the given root is specified via the global option "--root"
(default: "` + DefaultRoot + `").`,
	Flags: []cli.Flag{
		cli.StringFlag{Name: "format, f", Value: "table", Usage: "select one of: table or json"},
		cli.BoolFlag{Name: "quiet, q", Usage: "display only container IDs"},
	},
	Action: func(ctx *cli.Context) error {
		if err := checkArgs(ctx, 0, exactArgs); err != nil {
			return err
		}
		rt, err := newRuntime(ctx)
		if err != nil {
			return err
		}
		if ctx.GlobalIsSet("root") {
			// A root named explicitly must exist, as with runc.
			if _, err := os.Stat(rt.Root()); err != nil {
				return err
			}
		}
		states, err := rt.List()
		if err != nil {
			return err
		}
		if ctx.Bool("quiet") {
			for _, s := range states {
				fmt.Println(s.ID)
			}
			return nil
		}
		switch ctx.String("format") {
		case "table":
			return printTable(states)
		case "json":
			// No containers prints null, as runc does.
			return json.NewEncoder(os.Stdout).Encode(states)
		}
		return errors.New("invalid format option")
	},
}

func printTable(states []runtime.State) error {
	w := tabwriter.NewWriter(os.Stdout, 12, 1, 3, ' ', 0)
	fmt.Fprint(w, "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER\n")
	for _, s := range states {
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\n", s.ID, s.Pid, s.Status, s.Bundle, s.Created.Format(time.RFC3339Nano), s.Owner)
	}
	return w.Flush()
}
