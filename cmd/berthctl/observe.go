package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/urfave/cli"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The commands that watch a node, as crictl's: pod stats, the image
// filesystem, and the container event stream.

var statspCommand = cli.Command{
	Name:      "statsp",
	Usage:     "show pods' resource use",
	ArgsUsage: "[POD-ID]",
	Flags: []cli.Flag{
		outputFlag, watchFlags[0], watchFlags[1],
		cli.StringSliceFlag{Name: "label", Usage: "key=value (repeatable)"},
	},
	Action: watched(withClients(func(ctx *cli.Context, c *clients) error {
		f := &runtimeapi.PodSandboxStatsFilter{}
		if ctx.NArg() > 0 {
			f.Id = ctx.Args().First()
		}
		var err error
		if f.LabelSelector, err = labelFlags(ctx.StringSlice("label")); err != nil {
			return err
		}
		cctx, cancel := c.ctx()
		defer cancel()
		resp, err := c.rt.ListPodSandboxStats(cctx, &runtimeapi.ListPodSandboxStatsRequest{Filter: f})
		if err != nil {
			return err
		}
		if o := ctx.String("output"); o == "json" || o == "yaml" {
			return printMessage(o, resp)
		}
		t := newTable("POD", "NAME", "NAMESPACE", "CPU %", "MEM", "CONTAINERS")
		for _, s := range resp.Stats {
			l := s.GetLinux()
			md := s.GetAttributes().GetMetadata()
			t.row(short(s.GetAttributes().GetId()), md.GetName(), md.GetNamespace(), cpuPercent(l.GetCpu().GetUsageNanoCores()),
				humanBytes(l.GetMemory().GetWorkingSetBytes().GetValue()), fmt.Sprint(len(l.GetContainers())))
		}
		t.flush()
		return nil
	})),
}

var imagefsinfoCommand = cli.Command{
	Name:  "imagefsinfo",
	Usage: "show the file systems that hold images and containers' writable layers",
	Flags: []cli.Flag{outputFlag},
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		cctx, cancel := c.ctx()
		defer cancel()
		resp, err := c.img.ImageFsInfo(cctx, &runtimeapi.ImageFsInfoRequest{})
		if err != nil {
			return err
		}
		if o := ctx.String("output"); o == "json" || o == "yaml" {
			return printMessage(o, resp)
		}
		t := newTable("FOR", "MOUNTPOINT", "USED", "INODES")
		for _, u := range resp.ImageFilesystems {
			t.row("images", u.GetFsId().GetMountpoint(), humanBytes(u.GetUsedBytes().GetValue()), fmt.Sprint(u.GetInodesUsed().GetValue()))
		}
		for _, u := range resp.ContainerFilesystems {
			t.row("containers", u.GetFsId().GetMountpoint(), humanBytes(u.GetUsedBytes().GetValue()), fmt.Sprint(u.GetInodesUsed().GetValue()))
		}
		t.flush()
		return nil
	}),
}

var eventsCommand = cli.Command{
	Name:  "events",
	Usage: "stream container events (created, started, stopped, deleted) until interrupted",
	Flags: []cli.Flag{
		cli.StringFlag{Name: "output, o", Usage: "table (a line each) or json (an object each)"},
		cli.IntFlag{Name: "count", Usage: "stop after this many events (0: never)"},
	},
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		sctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
		defer stop()
		stream, err := c.rt.GetContainerEvents(sctx, &runtimeapi.GetEventsRequest{})
		if err != nil {
			return err
		}
		return printEvents(os.Stdout, stream, ctx.String("output"), ctx.Int("count"))
	}),
}

// printEvents writes each event as it comes: a line, or a JSON object
// per line. It ends after count events (if not 0), or when the stream
// does; an interrupt is a normal end.
func printEvents(w io.Writer, stream runtimeapi.RuntimeService_GetContainerEventsClient, format string, count int) error {
	for n := 0; count == 0 || n < count; n++ {
		ev, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(stream.Context().Err(), context.Canceled) {
				return nil
			}
			return err
		}
		if format == "json" {
			// CREATED is the enum's zero value: shown, not omitted.
			data, err := protojson.MarshalOptions{EmitDefaultValues: true}.Marshal(ev)
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "%s\n", data)
			continue
		}
		pod := ev.GetPodSandboxStatus().GetMetadata()
		fmt.Fprintf(w, "%s  %-8s  container %s  pod %s (%s/%s)\n",
			time.Unix(0, ev.CreatedAt).Format(time.RFC3339Nano),
			strings.TrimSuffix(strings.TrimPrefix(ev.ContainerEventType.String(), "CONTAINER_"), "_EVENT"),
			short(ev.ContainerId), short(ev.PodSandboxStatus.GetId()), pod.GetNamespace(), pod.GetName())
	}
	return nil
}
