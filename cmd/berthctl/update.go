package main

import (
	"errors"
	"fmt"

	"github.com/urfave/cli"
	"k8s.io/apimachinery/pkg/api/resource"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var updateCommand = cli.Command{
	Name:      "update",
	Usage:     "update running containers' resources (what is not given is left as it is)",
	ArgsUsage: "CONTAINER-ID...",
	Flags: []cli.Flag{
		cli.Int64Flag{Name: "cpu-period", Usage: "CPU CFS period in µs"},
		cli.Int64Flag{Name: "cpu-quota", Usage: "CPU CFS quota in µs per period"},
		cli.Int64Flag{Name: "cpu-share", Usage: "CPU shares (relative weight)"},
		cli.StringFlag{Name: "cpuset-cpus", Usage: "CPUs allowed (0-3, 0,1)"},
		cli.StringFlag{Name: "cpuset-mems", Usage: "memory nodes allowed (0-3, 0,1)"},
		cli.StringFlag{Name: "memory", Usage: "memory limit: bytes or a quantity (96Mi, 1Gi)"},
	},
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		if ctx.NArg() == 0 {
			return errors.New("update takes one container id or more")
		}
		r, err := updateResources(ctx)
		if err != nil {
			return err
		}
		for _, id := range ctx.Args() {
			cctx, cancel := c.ctx()
			_, err := c.rt.UpdateContainerResources(cctx, &runtimeapi.UpdateContainerResourcesRequest{ContainerId: id, Linux: r})
			cancel()
			if err != nil {
				return fmt.Errorf("update %s: %w", id, err)
			}
			fmt.Println(id)
		}
		return nil
	}),
}

// updateResources are the resources the flags give; at least one.
func updateResources(ctx *cli.Context) (*runtimeapi.LinuxContainerResources, error) {
	r := &runtimeapi.LinuxContainerResources{
		CpuPeriod:  ctx.Int64("cpu-period"),
		CpuQuota:   ctx.Int64("cpu-quota"),
		CpuShares:  ctx.Int64("cpu-share"),
		CpusetCpus: ctx.String("cpuset-cpus"),
		CpusetMems: ctx.String("cpuset-mems"),
	}
	if m := ctx.String("memory"); m != "" {
		q, err := resource.ParseQuantity(m)
		if err != nil || q.Sign() <= 0 {
			return nil, fmt.Errorf("--memory %q: not a size in bytes or a quantity such as 96Mi", m)
		}
		r.MemoryLimitInBytes = q.Value()
	}
	if r.CpuPeriod == 0 && r.CpuQuota == 0 && r.CpuShares == 0 && r.CpusetCpus == "" && r.CpusetMems == "" && r.MemoryLimitInBytes == 0 {
		return nil, errors.New("update needs a resource to change (--memory, --cpu-quota, ...; see berthctl update --help)")
	}
	return r, nil
}
