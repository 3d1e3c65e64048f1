package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/docker/go-units"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/urfave/cli"
)

var updateCommand = cli.Command{
	Name:      "update",
	Usage:     "update container resource constraints",
	ArgsUsage: `<container-id>`,
	Flags: []cli.Flag{
		cli.StringFlag{Name: "resources, r", Usage: `path to the file containing the resources to update or '-' to read from the standard input

The accepted format is the OCI "linux.resources" object; values left out
are unchanged:

{
  "memory": { "limit": 0, "reservation": 0, "swap": 0 },
  "cpu": { "shares": 0, "quota": 0, "burst": 0, "period": 0,
           "realtimeRuntime": 0, "realtimePeriod": 0, "cpus": "", "mems": "", "idle": 0 },
  "blockIO": { "weight": 0 },
  "pids": { "limit": 0 }
}

Note: if data is to be read from a file or the standard input, all
other options are ignored.`},
		cli.IntFlag{Name: "blkio-weight", Usage: "Specifies per cgroup weight, range is from 10 to 1000"},
		cli.StringFlag{Name: "cpu-period", Usage: "CPU CFS period to be used for hardcapping (in usecs). 0 to use system default"},
		cli.StringFlag{Name: "cpu-quota", Usage: "CPU CFS hardcap limit (in usecs). Allowed cpu time in a given period"},
		cli.StringFlag{Name: "cpu-burst", Usage: "CPU CFS hardcap burst limit (in usecs). Allowed accumulated cpu time additionally for burst a given period"},
		cli.StringFlag{Name: "cpu-share", Usage: "CPU shares (relative weight vs. other containers)"},
		cli.StringFlag{Name: "cpu-rt-period", Usage: "CPU realtime period to be used for hardcapping (in usecs). 0 to use system default"},
		cli.StringFlag{Name: "cpu-rt-runtime", Usage: "CPU realtime hardcap limit (in usecs). Allowed cpu time in a given period"},
		cli.StringFlag{Name: "cpuset-cpus", Usage: "CPU(s) to use"},
		cli.StringFlag{Name: "cpuset-mems", Usage: "Memory node(s) to use"},
		cli.StringFlag{Name: "cpu-idle", Usage: "set cgroup SCHED_IDLE or not, 0: default behavior, 1: SCHED_IDLE"},
		cli.StringFlag{Name: "memory", Usage: "Memory limit (in bytes)"},
		cli.StringFlag{Name: "memory-reservation", Usage: "Memory reservation or soft_limit (in bytes)"},
		cli.StringFlag{Name: "memory-swap", Usage: "Total memory usage (memory + swap); set '-1' to enable unlimited swap"},
		cli.IntFlag{Name: "pids-limit", Usage: "Maximum number of pids allowed in the container"},
		cli.StringFlag{Name: "kernel-memory", Hidden: true, Usage: "(obsoleted; do not use)"},
		cli.StringFlag{Name: "kernel-memory-tcp", Hidden: true, Usage: "(obsoleted; do not use)"},
	},
	Action: func(ctx *cli.Context) error {
		if err := checkArgs(ctx, 1, exactArgs); err != nil {
			return err
		}
		r, err := updateResources(ctx)
		if err != nil {
			return err
		}
		_, c, err := loadContainer(ctx)
		if err != nil {
			return err
		}
		return c.Update(r)
	},
}

// updateResources reads the update from --resources or from the flags.
func updateResources(ctx *cli.Context) (*specs.LinuxResources, error) {
	r := &specs.LinuxResources{
		Memory:  &specs.LinuxMemory{},
		CPU:     &specs.LinuxCPU{},
		BlockIO: &specs.LinuxBlockIO{},
		Pids:    &specs.LinuxPids{},
	}
	if in := ctx.String("resources"); in != "" {
		var src io.Reader = os.Stdin
		if in != "-" {
			f, err := os.Open(in)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			src = f
		}
		if err := json.NewDecoder(src).Decode(r); err != nil {
			return nil, fmt.Errorf("resources %s: %w", in, err)
		}
		return r, nil
	}
	if v := ctx.Int("blkio-weight"); v != 0 {
		w := uint16(v)
		r.BlockIO.Weight = &w
	}
	r.CPU.Cpus = ctx.String("cpuset-cpus")
	r.CPU.Mems = ctx.String("cpuset-mems")
	for _, f := range []struct {
		flag string
		dst  **uint64
	}{
		{"cpu-burst", &r.CPU.Burst},
		{"cpu-period", &r.CPU.Period},
		{"cpu-rt-period", &r.CPU.RealtimePeriod},
		{"cpu-share", &r.CPU.Shares},
	} {
		if s := ctx.String(f.flag); s != "" {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("invalid value for %s: %w", f.flag, err)
			}
			*f.dst = &v
		}
	}
	for _, f := range []struct {
		flag string
		dst  **int64
	}{
		{"cpu-quota", &r.CPU.Quota},
		{"cpu-rt-runtime", &r.CPU.RealtimeRuntime},
		{"cpu-idle", &r.CPU.Idle},
	} {
		if s := ctx.String(f.flag); s != "" {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("invalid value for %s: %w", f.flag, err)
			}
			*f.dst = &v
		}
	}
	for _, f := range []struct {
		flag string
		dst  **int64
	}{
		{"memory", &r.Memory.Limit},
		{"memory-swap", &r.Memory.Swap},
		{"memory-reservation", &r.Memory.Reservation},
	} {
		if s := ctx.String(f.flag); s != "" {
			v := int64(-1)
			if s != "-1" {
				var err error
				if v, err = units.RAMInBytes(s); err != nil {
					return nil, fmt.Errorf("invalid value for %s: %w", f.flag, err)
				}
			}
			*f.dst = &v
		}
	}
	if ctx.String("kernel-memory") != "" || ctx.String("kernel-memory-tcp") != "" {
		logger.Warn("kernel memory settings are ignored")
	}
	if ctx.IsSet("pids-limit") {
		v := int64(ctx.Int("pids-limit"))
		r.Pids.Limit = &v
	}
	return r, nil
}
