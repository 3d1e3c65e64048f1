package main

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/urfave/cli"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var runpCommand = cli.Command{
	Name:      "runp",
	Usage:     "run a pod sandbox from a PodSandboxConfig (JSON or YAML)",
	ArgsUsage: "POD-CONFIG",
	Flags:     []cli.Flag{cli.StringFlag{Name: "runtime", Usage: "runtime handler"}},
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		if ctx.NArg() != 1 {
			return errors.New("runp takes a pod config file")
		}
		var cfg runtimeapi.PodSandboxConfig
		if err := readConfig(ctx.Args().First(), &cfg); err != nil {
			return err
		}
		cctx, cancel := c.ctx()
		defer cancel()
		resp, err := c.rt.RunPodSandbox(cctx, &runtimeapi.RunPodSandboxRequest{Config: &cfg, RuntimeHandler: ctx.String("runtime")})
		if err != nil {
			return err
		}
		fmt.Println(resp.PodSandboxId)
		return nil
	}),
}

// labelFlags parses repeated key=value flags.
func labelFlags(values []string) (map[string]string, error) {
	out := map[string]string{}
	for _, l := range values {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			return nil, fmt.Errorf("label %q: want key=value", l)
		}
		out[k] = v
	}
	return out, nil
}

var podsCommand = cli.Command{
	Name:  "pods",
	Usage: "list pod sandboxes",
	Flags: []cli.Flag{
		outputFlag, watchFlags[0], watchFlags[1],
		cli.BoolFlag{Name: "quiet, q", Usage: "only ids"},
		cli.StringFlag{Name: "id", Usage: "id or id prefix"},
		cli.StringFlag{Name: "state, s", Usage: "ready or notready"},
		cli.StringFlag{Name: "name", Usage: "name regular expression"},
		cli.StringFlag{Name: "namespace", Usage: "namespace regular expression"},
		cli.StringSliceFlag{Name: "label", Usage: "key=value (repeatable)"},
		cli.BoolFlag{Name: "no-trunc", Usage: "full ids"},
	},
	Action: watched(withClients(func(ctx *cli.Context, c *clients) error {
		f := &runtimeapi.PodSandboxFilter{Id: ctx.String("id")}
		switch strings.ToLower(ctx.String("state")) {
		case "":
		case "ready":
			f.State = &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY}
		case "notready":
			f.State = &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_NOTREADY}
		default:
			return fmt.Errorf("state %q: want ready or notready", ctx.String("state"))
		}
		var err error
		if f.LabelSelector, err = labelFlags(ctx.StringSlice("label")); err != nil {
			return err
		}
		nameRe, err := regexp.Compile(ctx.String("name"))
		if err != nil {
			return err
		}
		nsRe, err := regexp.Compile(ctx.String("namespace"))
		if err != nil {
			return err
		}
		cctx, cancel := c.ctx()
		defer cancel()
		resp, err := c.rt.ListPodSandbox(cctx, &runtimeapi.ListPodSandboxRequest{Filter: f})
		if err != nil {
			return err
		}
		items := resp.Items[:0]
		for _, p := range resp.Items {
			if nameRe.MatchString(p.Metadata.GetName()) && nsRe.MatchString(p.Metadata.GetNamespace()) {
				items = append(items, p)
			}
		}
		resp.Items = items
		if o := ctx.String("output"); o == "json" || o == "yaml" {
			return printMessage(o, resp)
		}
		id := short
		if ctx.Bool("no-trunc") {
			id = func(s string) string { return s }
		}
		if ctx.Bool("quiet") {
			for _, p := range resp.Items {
				fmt.Fprintln(stdout, p.Id)
			}
			return nil
		}
		t := newTable("POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME")
		for _, p := range resp.Items {
			rt := p.RuntimeHandler
			if rt == "" {
				rt = "(default)"
			}
			t.row(id(p.Id), ago(p.CreatedAt), strings.TrimPrefix(p.State.String(), "SANDBOX_"), p.Metadata.GetName(),
				p.Metadata.GetNamespace(), fmt.Sprint(p.Metadata.GetAttempt()), rt)
		}
		t.flush()
		return nil
	})),
}

var inspectpCommand = cli.Command{
	Name:      "inspectp",
	Usage:     "show a pod sandbox's status",
	ArgsUsage: "POD-ID",
	Flags:     []cli.Flag{outputFlag},
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		if ctx.NArg() != 1 {
			return errors.New("inspectp takes one pod id")
		}
		cctx, cancel := c.ctx()
		defer cancel()
		resp, err := c.rt.PodSandboxStatus(cctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: ctx.Args().First(), Verbose: true})
		if err != nil {
			return err
		}
		return printMessage(ctx.String("output"), resp)
	}),
}

var stoppCommand = cli.Command{
	Name:      "stopp",
	Usage:     "stop pod sandboxes",
	ArgsUsage: "POD-ID...",
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		if ctx.NArg() == 0 {
			return errors.New("stopp takes one pod id or more")
		}
		for _, id := range ctx.Args() {
			cctx, cancel := c.ctx()
			_, err := c.rt.StopPodSandbox(cctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id})
			cancel()
			if err != nil {
				return fmt.Errorf("stop pod %s: %w", id, err)
			}
			fmt.Printf("Stopped sandbox %s\n", id)
		}
		return nil
	}),
}

var rmpCommand = cli.Command{
	Name:      "rmp",
	Usage:     "remove pod sandboxes (stopping them first)",
	ArgsUsage: "POD-ID...",
	Flags:     []cli.Flag{cli.BoolFlag{Name: "all, a", Usage: "remove every pod"}},
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		ids := []string(ctx.Args())
		if ctx.Bool("all") {
			cctx, cancel := c.ctx()
			resp, err := c.rt.ListPodSandbox(cctx, &runtimeapi.ListPodSandboxRequest{})
			cancel()
			if err != nil {
				return err
			}
			for _, p := range resp.Items {
				ids = append(ids, p.Id)
			}
		} else if len(ids) == 0 {
			return errors.New("rmp takes one pod id or more, or --all")
		}
		for _, id := range ids {
			cctx, cancel := c.ctx()
			_, err := c.rt.RemovePodSandbox(cctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id})
			cancel()
			if err != nil {
				return fmt.Errorf("remove pod %s: %w", id, err)
			}
			fmt.Printf("Removed sandbox %s\n", id)
		}
		return nil
	}),
}
