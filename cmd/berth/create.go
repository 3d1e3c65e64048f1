package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli"

	"github.com/berth-runtime/berth/runtime"
)

var createCommand = cli.Command{
	Name:  "create",
	Usage: "create a container",
	ArgsUsage: `<container-id>

Where "<container-id>" is your name for the instance of the container that you
are starting. The name you provide for the container instance must be unique on
your host.`,
	Description: `The create command creates an instance of a container for a bundle. The bundle
is a directory with a specification file named "config.json" and a root
filesystem. The container's process waits until "berth start".`,
	Flags: []cli.Flag{
		cli.StringFlag{Name: "bundle, b", Usage: "path to the root of the bundle directory, defaults to the current directory"},
		cli.StringFlag{Name: "console-socket", Usage: "path to an AF_UNIX socket which will receive a file descriptor referencing the master end of the console's pseudoterminal"},
		cli.StringFlag{Name: "pid-file", Usage: "specify the file to write the process id to"},
		cli.BoolFlag{Name: "no-pivot", Usage: "do not use pivot root to jail process inside rootfs.  This should be used whenever the rootfs is on top of a ramdisk"},
		cli.BoolFlag{Name: "no-new-keyring", Usage: "do not create a new session keyring for the container.  This will cause the container to inherit the calling processes session key"},
		cli.IntFlag{Name: "preserve-fds", Usage: "Pass N additional file descriptors to the container (stdio + $LISTEN_FDS + N in total)"},
	},
	Action: func(ctx *cli.Context) error {
		if err := checkArgs(ctx, 1, exactArgs); err != nil {
			return err
		}
		status, err := startContainer(ctx, actCreate, runtime.CheckpointOptions{})
		if err != nil {
			return fmt.Errorf("create failed: %w", err)
		}
		os.Exit(status)
		return nil
	},
}
