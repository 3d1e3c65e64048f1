package main

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/urfave/cli"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var createCommand = cli.Command{
	Name:      "create",
	Usage:     "create a container in a pod, pulling its image if missing",
	ArgsUsage: "POD-ID CONTAINER-CONFIG POD-CONFIG",
	Flags:     []cli.Flag{cli.BoolFlag{Name: "no-pull", Usage: "do not pull a missing image"}},
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		if ctx.NArg() != 3 {
			return errors.New("create takes a pod id, a container config and the pod config")
		}
		var cfg runtimeapi.ContainerConfig
		if err := readConfig(ctx.Args()[1], &cfg); err != nil {
			return err
		}
		var podCfg runtimeapi.PodSandboxConfig
		if err := readConfig(ctx.Args()[2], &podCfg); err != nil {
			return err
		}
		if !ctx.Bool("no-pull") && cfg.Image.GetImage() != "" {
			cctx, cancel := c.ctx()
			st, err := c.img.ImageStatus(cctx, &runtimeapi.ImageStatusRequest{Image: cfg.Image})
			cancel()
			if err != nil {
				return err
			}
			if st.Image == nil {
				if _, err := pullWithProgress(c, &runtimeapi.PullImageRequest{Image: cfg.Image, SandboxConfig: &podCfg}, isTerminal(osStderr), 5*time.Second); err != nil {
					return fmt.Errorf("pull %s: %w", cfg.Image.Image, err)
				}
			}
		}
		cctx, cancel := c.ctx()
		defer cancel()
		resp, err := c.rt.CreateContainer(cctx, &runtimeapi.CreateContainerRequest{PodSandboxId: ctx.Args()[0], Config: &cfg, SandboxConfig: &podCfg})
		if err != nil {
			return err
		}
		fmt.Println(resp.ContainerId)
		return nil
	}),
}

// eachContainer runs fn for every id argument.
func eachContainer(verb string, fn func(c *clients, id string) error) func(*cli.Context) error {
	return withClients(func(ctx *cli.Context, c *clients) error {
		if ctx.NArg() == 0 {
			return fmt.Errorf("%s takes one container id or more", verb)
		}
		for _, id := range ctx.Args() {
			if err := fn(c, id); err != nil {
				return fmt.Errorf("%s %s: %w", verb, id, err)
			}
			fmt.Println(id)
		}
		return nil
	})
}

var startCommand = cli.Command{
	Name:      "start",
	Usage:     "start created containers",
	ArgsUsage: "CONTAINER-ID...",
	Action: eachContainer("start", func(c *clients, id string) error {
		cctx, cancel := c.ctx()
		defer cancel()
		_, err := c.rt.StartContainer(cctx, &runtimeapi.StartContainerRequest{ContainerId: id})
		return err
	}),
}

var stopTimeout int64

var stopCommand = cli.Command{
	Name:      "stop",
	Usage:     "stop containers: the stop signal, then SIGKILL after the timeout",
	ArgsUsage: "CONTAINER-ID...",
	Flags:     []cli.Flag{cli.Int64Flag{Name: "timeout, t", Value: 10, Usage: "seconds before SIGKILL", Destination: &stopTimeout}},
	Action: eachContainer("stop", func(c *clients, id string) error {
		cctx, cancel := c.ctx()
		defer cancel()
		_, err := c.rt.StopContainer(cctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: stopTimeout})
		return err
	}),
}

var rmCommand = cli.Command{
	Name:      "rm",
	Usage:     "remove containers (killing them if they run)",
	ArgsUsage: "CONTAINER-ID...",
	Action: eachContainer("rm", func(c *clients, id string) error {
		cctx, cancel := c.ctx()
		defer cancel()
		_, err := c.rt.RemoveContainer(cctx, &runtimeapi.RemoveContainerRequest{ContainerId: id})
		return err
	}),
}

var psCommand = cli.Command{
	Name:  "ps",
	Usage: "list containers (running ones unless --all)",
	Flags: []cli.Flag{
		outputFlag, watchFlags[0], watchFlags[1],
		cli.BoolFlag{Name: "all, a", Usage: "every state"},
		cli.BoolFlag{Name: "quiet, q", Usage: "only ids"},
		cli.StringFlag{Name: "id", Usage: "id or id prefix"},
		cli.StringFlag{Name: "pod, p", Usage: "pod id or prefix"},
		cli.StringFlag{Name: "state, s", Usage: "created, running, exited or unknown"},
		cli.StringFlag{Name: "name", Usage: "name regular expression"},
		cli.StringSliceFlag{Name: "label", Usage: "key=value (repeatable)"},
		cli.BoolFlag{Name: "no-trunc", Usage: "full ids"},
	},
	Action: watched(withClients(func(ctx *cli.Context, c *clients) error {
		f := &runtimeapi.ContainerFilter{Id: ctx.String("id"), PodSandboxId: ctx.String("pod")}
		if st := strings.ToUpper(ctx.String("state")); st != "" {
			v, ok := runtimeapi.ContainerState_value["CONTAINER_"+st]
			if !ok {
				return fmt.Errorf("state %q: want created, running, exited or unknown", ctx.String("state"))
			}
			f.State = &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState(v)}
		} else if !ctx.Bool("all") {
			f.State = &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING}
		}
		var err error
		if f.LabelSelector, err = labelFlags(ctx.StringSlice("label")); err != nil {
			return err
		}
		nameRe, err := regexp.Compile(ctx.String("name"))
		if err != nil {
			return err
		}
		cctx, cancel := c.ctx()
		defer cancel()
		resp, err := c.rt.ListContainers(cctx, &runtimeapi.ListContainersRequest{Filter: f})
		if err != nil {
			return err
		}
		list := resp.Containers[:0]
		for _, ct := range resp.Containers {
			if nameRe.MatchString(ct.Metadata.GetName()) {
				list = append(list, ct)
			}
		}
		resp.Containers = list
		if o := ctx.String("output"); o == "json" || o == "yaml" {
			return printMessage(o, resp)
		}
		if ctx.Bool("quiet") {
			for _, ct := range resp.Containers {
				fmt.Fprintln(stdout, ct.Id)
			}
			return nil
		}
		id := short
		if ctx.Bool("no-trunc") {
			id = func(s string) string { return s }
		}
		// The pod's name and namespace, as crictl shows them (for the
		// kubelet's pods, the Kubernetes pod's).
		pods := map[string]*runtimeapi.PodSandboxMetadata{}
		if pl, err := c.rt.ListPodSandbox(cctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			for _, p := range pl.Items {
				pods[p.Id] = p.Metadata
			}
		}
		t := newTable("CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD", "NAMESPACE")
		for _, ct := range resp.Containers {
			pod := pods[ct.PodSandboxId]
			t.row(id(ct.Id), ct.Image.GetImage(), ago(ct.CreatedAt), strings.TrimPrefix(ct.State.String(), "CONTAINER_"),
				ct.Metadata.GetName(), fmt.Sprint(ct.Metadata.GetAttempt()), id(ct.PodSandboxId), pod.GetName(), pod.GetNamespace())
		}
		t.flush()
		return nil
	})),
}

var inspectCommand = cli.Command{
	Name:      "inspect",
	Usage:     "show a container's status",
	ArgsUsage: "CONTAINER-ID",
	Flags:     []cli.Flag{outputFlag},
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		if ctx.NArg() != 1 {
			return errors.New("inspect takes one container id")
		}
		cctx, cancel := c.ctx()
		defer cancel()
		resp, err := c.rt.ContainerStatus(cctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctx.Args().First(), Verbose: true})
		if err != nil {
			return err
		}
		return printMessage(ctx.String("output"), resp)
	}),
}

var statsCommand = cli.Command{
	Name:      "stats",
	Usage:     "show running containers' resource use",
	ArgsUsage: "[CONTAINER-ID]",
	Flags: []cli.Flag{
		outputFlag, watchFlags[0], watchFlags[1],
		cli.StringFlag{Name: "pod, p", Usage: "pod id or prefix"},
		cli.StringSliceFlag{Name: "label", Usage: "key=value (repeatable)"},
	},
	Action: watched(withClients(func(ctx *cli.Context, c *clients) error {
		f := &runtimeapi.ContainerStatsFilter{PodSandboxId: ctx.String("pod")}
		if ctx.NArg() > 0 {
			f.Id = ctx.Args().First()
		}
		var err error
		if f.LabelSelector, err = labelFlags(ctx.StringSlice("label")); err != nil {
			return err
		}
		cctx, cancel := c.ctx()
		defer cancel()
		resp, err := c.rt.ListContainerStats(cctx, &runtimeapi.ListContainerStatsRequest{Filter: f})
		if err != nil {
			return err
		}
		if o := ctx.String("output"); o == "json" || o == "yaml" {
			return printMessage(o, resp)
		}
		t := newTable("CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES")
		for _, s := range resp.Stats {
			t.row(short(s.Attributes.GetId()), s.Attributes.GetMetadata().GetName(), cpuPercent(s.Cpu.GetUsageNanoCores()),
				humanBytes(s.Memory.GetWorkingSetBytes().GetValue()), humanBytes(s.WritableLayer.GetUsedBytes().GetValue()),
				fmt.Sprint(s.WritableLayer.GetInodesUsed().GetValue()))
		}
		t.flush()
		return nil
	})),
}
