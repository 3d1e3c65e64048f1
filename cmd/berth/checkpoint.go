package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/urfave/cli"

	"github.com/berth-runtime/berth/runtime"
)

// criuFlags are the flags checkpoint and restore share, as runc has them.
var criuFlags = []cli.Flag{
	cli.StringFlag{Name: "image-path", Usage: "path for criu image files (default: ./checkpoint)"},
	cli.StringFlag{Name: "work-path", Usage: "path for saving work files and logs"},
	cli.BoolFlag{Name: "tcp-established", Usage: "allow open tcp connections"},
	cli.BoolFlag{Name: "ext-unix-sk", Usage: "allow external unix sockets"},
	cli.BoolFlag{Name: "shell-job", Usage: "allow shell jobs"},
	cli.BoolFlag{Name: "file-locks", Usage: "handle file locks, for safety"},
	cli.BoolFlag{Name: "lazy-pages", Usage: "use userfaultfd to lazily restore memory pages"},
	cli.StringFlag{Name: "manage-cgroups-mode", Usage: "cgroups mode: soft|full|strict|ignore (default: soft)"},
	cli.StringSliceFlag{Name: "empty-ns", Usage: "create a namespace, but don't restore its properties"},
	cli.BoolFlag{Name: "auto-dedup", Usage: "enable auto deduplication of memory images"},
}

var checkpointCommand = cli.Command{
	Name:  "checkpoint",
	Usage: "checkpoint a running container",
	ArgsUsage: `<container-id>

Where "<container-id>" is the name for the instance of the container to be
checkpointed.`,
	Description: `The checkpoint command saves the state of the container instance with CRIU.
Unless --leave-running is given, the container stops and is deleted.`,
	Flags: append([]cli.Flag{
		cli.StringFlag{Name: "parent-path", Usage: "path for previous criu image files in pre-dump"},
		cli.BoolFlag{Name: "leave-running", Usage: "leave the process running after checkpointing"},
		cli.BoolFlag{Name: "tcp-skip-in-flight", Usage: "skip in-flight tcp connections"},
		cli.BoolFlag{Name: "link-remap", Usage: "allow one to link unlinked files back when possible"},
		cli.IntFlag{Name: "status-fd", Value: -1, Usage: "criu writes \\0 to this FD once lazy-pages is ready"},
		cli.StringFlag{Name: "page-server", Usage: "ADDRESS:PORT of the page server"},
		cli.BoolFlag{Name: "pre-dump", Usage: "dump container's memory information only, leave the container running after this"},
	}, criuFlags...),
	Action: func(ctx *cli.Context) error {
		if err := checkArgs(ctx, 1, exactArgs); err != nil {
			return err
		}
		o, err := checkpointOptions(ctx)
		if err != nil {
			return err
		}
		_, c, err := loadContainer(ctx)
		if err != nil {
			return err
		}
		return c.Checkpoint(o)
	},
}

var restoreCommand = cli.Command{
	Name:  "restore",
	Usage: "restore a container from a previous checkpoint",
	ArgsUsage: `<container-id>

Where "<container-id>" is the name for the instance of the container to be
restored.`,
	Description: `Restores the saved state of the container instance that was previously saved
using the berth (or runc) checkpoint command, from the bundle it ran from.`,
	Flags: append([]cli.Flag{
		cli.StringFlag{Name: "bundle, b", Usage: "path to the root of the bundle directory, defaults to the current directory"},
		cli.StringFlag{Name: "console-socket", Usage: "path to an AF_UNIX socket which will receive a file descriptor referencing the master end of the console's pseudoterminal"},
		cli.BoolFlag{Name: "detach, d", Usage: "detach from the container's process"},
		cli.StringFlag{Name: "pid-file", Usage: "specify the file to write the process id to"},
		cli.BoolFlag{Name: "no-subreaper", Usage: "disable the use of the subreaper used to reap reparented processes"},
		cli.BoolFlag{Name: "no-pivot", Usage: "do not use pivot root to jail process inside rootfs.  This should be used whenever the rootfs is on top of a ramdisk"},
		cli.StringFlag{Name: "lsm-profile", Usage: "Specify an LSM profile to be used during restore in the form of TYPE:NAME."},
		cli.StringFlag{Name: "lsm-mount-context", Usage: "Specify an LSM mount context to be used during restore."},
	}, criuFlags...),
	Action: func(ctx *cli.Context) error {
		if err := checkArgs(ctx, 1, exactArgs); err != nil {
			return err
		}
		o, err := checkpointOptions(ctx)
		if err != nil {
			return err
		}
		status, err := startContainer(ctx, actRestore, o)
		if err != nil {
			return fmt.Errorf("restore failed: %w", err)
		}
		// The container's exit status, for a supervisor in the foreground.
		os.Exit(status)
		return nil
	},
}

// checkpointOptions reads the flags of checkpoint or restore; paths are
// made absolute before anything changes directory.
func checkpointOptions(ctx *cli.Context) (runtime.CheckpointOptions, error) {
	image := ctx.String("image-path")
	if image == "" {
		image = "checkpoint"
	}
	image, err := filepath.Abs(image)
	if err != nil {
		return runtime.CheckpointOptions{}, err
	}
	work := ctx.String("work-path")
	if work != "" {
		if work, err = filepath.Abs(work); err != nil {
			return runtime.CheckpointOptions{}, err
		}
	}
	statusFD := -1 // restore has no --status-fd
	if ctx.IsSet("status-fd") {
		statusFD = ctx.Int("status-fd")
	}
	return runtime.CheckpointOptions{
		ImagePath:         image,
		WorkPath:          work,
		ParentPath:        ctx.String("parent-path"),
		LeaveRunning:      ctx.Bool("leave-running"),
		TCPEstablished:    ctx.Bool("tcp-established"),
		TCPSkipInFlight:   ctx.Bool("tcp-skip-in-flight"),
		LinkRemap:         ctx.Bool("link-remap"),
		ExtUnixSockets:    ctx.Bool("ext-unix-sk"),
		ShellJob:          ctx.Bool("shell-job"),
		FileLocks:         ctx.Bool("file-locks"),
		PreDump:           ctx.Bool("pre-dump"),
		AutoDedup:         ctx.Bool("auto-dedup"),
		LazyPages:         ctx.Bool("lazy-pages"),
		StatusFD:          statusFD,
		PageServer:        ctx.String("page-server"),
		ManageCgroupsMode: ctx.String("manage-cgroups-mode"),
		EmptyNamespaces:   ctx.StringSlice("empty-ns"),
		LSMProfile:        ctx.String("lsm-profile"),
		LSMMountContext:   ctx.String("lsm-mount-context"),
	}, nil
}
