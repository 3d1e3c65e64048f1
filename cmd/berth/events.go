package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli"

	"github.com/berth-runtime/berth/runtime"
)

var eventsCommand = cli.Command{
	Name:  "events",
	Usage: "display container events such as OOM notifications, cpu, memory, and IO usage statistics",
	ArgsUsage: `<container-id>

Where "<container-id>" is the name for the instance of the container.`,
	Description: `The events command displays information about the container. By default the
information is displayed once every 5 seconds.`,
	Flags: []cli.Flag{
		cli.DurationFlag{Name: "interval", Value: 5 * time.Second, Usage: "set the stats collection interval"},
		cli.BoolFlag{Name: "stats", Usage: "display the container's stats then exit"},
	},
	Action: func(ctx *cli.Context) error {
		if err := checkArgs(ctx, 1, exactArgs); err != nil {
			return err
		}
		interval := ctx.Duration("interval")
		if interval <= 0 {
			return errors.New("duration interval must be greater than 0")
		}
		_, c, err := loadContainer(ctx)
		if err != nil {
			return err
		}
		status, err := c.Status()
		if err != nil {
			return err
		}
		if status == runtime.StatusStopped {
			return fmt.Errorf("container with id %s is not running", c.ID())
		}
		enc := json.NewEncoder(os.Stdout)
		if ctx.Bool("stats") {
			s, err := c.EventStats()
			if err != nil {
				return err
			}
			return enc.Encode(&runtime.Event{Type: "stats", ID: c.ID(), Data: s})
		}
		return streamEvents(c, interval, enc)
	},
}

// streamEvents prints stats every interval and each OOM kill, until the
// container's cgroup goes away.
func streamEvents(c *runtime.Container, interval time.Duration, enc *json.Encoder) error {
	oom, err := c.NotifyOOM()
	if err != nil {
		return err
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case _, ok := <-oom:
			if !ok {
				return nil
			}
			if err := enc.Encode(&runtime.Event{Type: "oom", ID: c.ID()}); err != nil {
				return err
			}
		case <-tick.C:
			s, err := c.EventStats()
			if err != nil {
				logger.Error("read stats", "container", c.ID(), "error", err)
				continue
			}
			if err := enc.Encode(&runtime.Event{Type: "stats", ID: c.ID(), Data: s}); err != nil {
				return err
			}
		}
	}
}
