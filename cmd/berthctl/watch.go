package main

import (
	"bytes"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/urfave/cli"
	"golang.org/x/sys/unix"
)

// watchFlags are the flags of the listings that can be watched (pods, ps,
// stats, statsp), as crictl's -w.
var watchFlags = []cli.Flag{
	cli.BoolFlag{Name: "watch, w", Usage: "list again every --interval until interrupted, printing each listing that changed"},
	cli.DurationFlag{Name: "interval", Value: 2 * time.Second, Usage: "how often --watch lists"},
}

// watched runs a listing once, or with --watch every --interval until
// SIGINT or SIGTERM: on a terminal each listing that changed replaces the
// last on the screen; elsewhere (a log, a pipe) it follows it after a
// blank line.
func watched(list func(*cli.Context) error) func(*cli.Context) error {
	return func(ctx *cli.Context) error {
		if !ctx.Bool("watch") {
			return list(ctx)
		}
		interval := ctx.Duration("interval")
		if interval <= 0 {
			return fmt.Errorf("--interval %s: must be positive", interval)
		}
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, unix.SIGINT, unix.SIGTERM)
		defer signal.Stop(sigs)
		tty := isTerminal(os.Stdout)
		var last string
		for {
			var buf bytes.Buffer
			stdout = &buf
			err := list(ctx)
			stdout = os.Stdout
			if err != nil {
				return err
			}
			if s := buf.String(); s != last {
				switch {
				case tty:
					fmt.Print("\x1b[H\x1b[2J") // home, clear
				case last != "":
					fmt.Println()
				}
				fmt.Print(s)
				last = s
			}
			select {
			case <-sigs:
				return nil
			case <-time.After(interval):
			}
		}
	}
}
