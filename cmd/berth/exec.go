package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/urfave/cli"

	"github.com/berth-runtime/berth/runtime"
)

var execCommand = cli.Command{
	Name:  "exec",
	Usage: "execute new process inside the container",
	ArgsUsage: `<container-id> <command> [command options]  || -p process.json <container-id>

Where "<container-id>" is the name for the instance of the container and
"<command>" is the command to be executed in the container.
"<command>" can't be empty unless a "-p" flag provided.

EXAMPLE:
       # berth exec <container-id> ps`,
	Flags: []cli.Flag{
		cli.StringFlag{Name: "console-socket", Usage: "path to an AF_UNIX socket which will receive a file descriptor referencing the master end of the console's pseudoterminal"},
		cli.StringFlag{Name: "cwd", Usage: "current working directory in the container"},
		cli.StringSliceFlag{Name: "env, e", Usage: "set environment variables"},
		cli.BoolFlag{Name: "tty, t", Usage: "allocate a pseudo-TTY"},
		cli.StringFlag{Name: "user, u", Usage: "UID (format: <uid>[:<gid>])"},
		// A string slice: urfave/cli v1.22's Int64SliceFlag records each
		// value twice.
		cli.StringSliceFlag{Name: "additional-gids, g", Usage: "additional gids"},
		cli.StringFlag{Name: "process, p", Usage: "path to the process.json"},
		cli.BoolFlag{Name: "detach,d", Usage: "detach from the container's process"},
		cli.StringFlag{Name: "pid-file", Usage: "specify the file to write the process id to"},
		cli.StringFlag{Name: "process-label", Usage: "set the asm process label for the process commonly used with selinux"},
		cli.StringFlag{Name: "apparmor", Usage: "set the apparmor profile for the process"},
		cli.BoolFlag{Name: "no-new-privs", Usage: "set the no new privileges value for the process"},
		cli.StringSliceFlag{Name: "cap, c", Value: &cli.StringSlice{}, Usage: "add a capability to the bounding set for the process"},
		cli.IntFlag{Name: "preserve-fds", Usage: "Pass N additional file descriptors to the container (stdio + $LISTEN_FDS + N in total)"},
		cli.StringSliceFlag{Name: "cgroup", Usage: "run the process in an (existing) sub-cgroup(s). Format is [<controller>:]<cgroup>."},
		cli.BoolFlag{Name: "ignore-paused", Usage: "allow exec in a paused container"},
	},
	Action: func(ctx *cli.Context) error {
		if err := checkArgs(ctx, 1, minArgs); err != nil {
			return err
		}
		status, err := execProcess(ctx)
		if err != nil {
			// runc exits 255 when exec itself fails, so that callers can
			// tell it from the process's own exit code.
			fatalWithCode(fmt.Errorf("exec failed: %w", err), 255)
		}
		os.Exit(status)
		return nil
	},
	// Arguments after the id belong to the command, not to berth.
	SkipArgReorder: true,
}

func execProcess(ctx *cli.Context) (int, error) {
	pidFile, err := absPidFile(ctx)
	if err != nil {
		return -1, err
	}
	_, c, err := loadContainer(ctx)
	if err != nil {
		return -1, err
	}
	p, err := execSpec(ctx, c)
	if err != nil {
		return -1, err
	}
	sub, err := subCgroupPaths(ctx.StringSlice("cgroup"))
	if err != nil {
		return -1, err
	}
	r := &runner{
		container:     c,
		action:        actExec,
		detach:        ctx.Bool("detach"),
		consoleSocket: ctx.String("console-socket"),
		pidFile:       pidFile,
		preserveFDs:   ctx.Int("preserve-fds"),
		allowPaused:   ctx.Bool("ignore-paused"),
		subCgroups:    sub,
	}
	return r.run(p)
}

// execSpec is the process to exec: --process, or the container's own
// process from its bundle with the command line's changes.
func execSpec(ctx *cli.Context, c *runtime.Container) (*specs.Process, error) {
	if path := ctx.String("process"); path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("process file: %w", err)
		}
		var p specs.Process
		if err := json.Unmarshal(data, &p); err != nil {
			return nil, fmt.Errorf("process file %s: %w", path, err)
		}
		return &p, runtime.ValidateProcess(&p)
	}
	spec, err := runtime.LoadSpec(c.Bundle())
	if err != nil {
		return nil, err
	}
	p := spec.Process
	args := ctx.Args()
	if len(args) < 2 {
		return nil, errors.New("exec args cannot be empty")
	}
	p.Args = args[1:]
	if cwd := ctx.String("cwd"); cwd != "" {
		p.Cwd = cwd
	}
	if ap := ctx.String("apparmor"); ap != "" {
		p.ApparmorProfile = ap
	}
	if l := ctx.String("process-label"); l != "" {
		p.SelinuxLabel = l
	}
	if caps := ctx.StringSlice("cap"); len(caps) > 0 {
		if p.Capabilities == nil {
			p.Capabilities = &specs.LinuxCapabilities{}
		}
		for _, c := range caps {
			p.Capabilities.Bounding = append(p.Capabilities.Bounding, c)
			p.Capabilities.Effective = append(p.Capabilities.Effective, c)
			p.Capabilities.Permitted = append(p.Capabilities.Permitted, c)
			// Ambient needs inheritable; add it only where the spec has some.
			if p.Capabilities.Inheritable != nil {
				p.Capabilities.Ambient = append(p.Capabilities.Ambient, c)
			}
		}
	}
	p.Env = append(p.Env, ctx.StringSlice("env")...)
	p.Terminal = ctx.Bool("tty")
	if ctx.IsSet("no-new-privs") {
		p.NoNewPrivileges = ctx.Bool("no-new-privs")
	}
	if u := ctx.String("user"); u != "" {
		uid, gid, hasGid := strings.Cut(u, ":")
		n, err := strconv.ParseUint(uid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("bad uid %q: %w", uid, err)
		}
		p.User.UID = uint32(n)
		if hasGid {
			g, err := strconv.ParseUint(gid, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("bad gid %q: %w", gid, err)
			}
			p.User.GID = uint32(g)
		}
	}
	for _, g := range ctx.StringSlice("additional-gids") {
		gid, err := strconv.ParseUint(g, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("additional-gids must be a positive number, not %q", g)
		}
		p.User.AdditionalGids = append(p.User.AdditionalGids, uint32(gid))
	}
	return p, runtime.ValidateProcess(p)
}

// subCgroupPaths parses --cgroup: one path (v2), or controller[,controller]:path
// entries (v1).
func subCgroupPaths(args []string) (map[string]string, error) {
	if len(args) == 0 {
		return nil, nil
	}
	paths := make(map[string]string, len(args))
	for _, a := range args {
		ctrls, path, ok := strings.Cut(a, ":")
		if !ok {
			if len(args) != 1 {
				return nil, fmt.Errorf("invalid --cgroup argument: %s (missing <controller>: prefix)", a)
			}
			paths[""] = filepath.Clean(a)
			continue
		}
		for ctrl := range strings.SplitSeq(ctrls, ",") {
			if ctrl == "" {
				return nil, fmt.Errorf("invalid --cgroup argument: %s (empty <controller> prefix)", a)
			}
			if _, dup := paths[ctrl]; dup {
				return nil, fmt.Errorf("invalid --cgroup argument(s): controller %s specified multiple times", ctrl)
			}
			paths[ctrl] = path
		}
	}
	return paths, nil
}
