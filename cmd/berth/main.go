// Command berth is a runc-compatible OCI runtime: it runs containers from
// OCI bundles with the same commands, flags, JSON output and exit codes as
// runc, so any engine that accepts a runc-compatible runtime can use it.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/clidocs"
	"github.com/berth-runtime/berth/internal/logging"
	"github.com/berth-runtime/berth/internal/logging/logrusbridge"
	"github.com/berth-runtime/berth/internal/version"
	"github.com/berth-runtime/berth/runtime"
)

// DefaultRoot is where container state lives unless --root says otherwise;
// berthd's shims use the same root, so `berth list` shows CRI containers.
const DefaultRoot = "/run/berth/runtime"

const usage = `runc-compatible OCI container runtime

berth runs containers from OCI bundles: a directory with a config.json
(see "berth spec") and a root filesystem.

    # berth run [-b bundle] <container-id>`

func main() {
	// libcontainer hands this process's $GOMAXPROCS to the container's
	// init, whose first act is runtime.GOMAXPROCS(1): starting it with 1
	// spares it a stop-the-world resize and two threads.
	if os.Getenv("GOMAXPROCS") == "" {
		os.Setenv("GOMAXPROCS", "1")
	}
	app := cli.NewApp()
	app.Name = "berth"
	app.Usage = usage
	app.Version = version.Version
	cli.VersionPrinter = printVersion
	app.Flags = []cli.Flag{
		cli.BoolFlag{Name: "debug", Usage: "enable debug logging"},
		cli.StringFlag{Name: "log", Usage: "set the log file to write berth logs to (default is '/dev/stderr')"},
		cli.StringFlag{Name: "log-format", Value: "text", Usage: "set the log format ('text' (default), or 'json')"},
		cli.StringFlag{Name: "root", Value: DefaultRoot, Usage: "root directory for storage of container state (this should be located in tmpfs)"},
		cli.BoolFlag{Name: "systemd-cgroup", Usage: "enable systemd cgroup support, expects cgroupsPath to be of form \"slice:prefix:name\" for e.g. \"system.slice:berth:434234\""},
		cli.StringFlag{Name: "rootless", Value: "auto", Usage: "ignore cgroup permission errors ('true', 'false', or 'auto'); berth runs as root only, the flag is accepted for compatibility"},
		cli.StringFlag{Name: "criu", Hidden: true, Usage: "accepted for compatibility and ignored: criu is the one in $PATH, as for runc 1.2 and later"},
	}
	app.Commands = []cli.Command{
		checkpointCommand,
		createCommand,
		deleteCommand,
		eventsCommand,
		execCommand,
		featuresCommand,
		killCommand,
		listCommand,
		pauseCommand,
		psCommand,
		restoreCommand,
		resumeCommand,
		runCommand,
		specCommand,
		startCommand,
		stateCommand,
		updateCommand,
	}
	app.Before = setup
	// urfave/cli prints usage errors itself; route them to stderr.
	cli.ErrWriter = os.Stderr
	clidocs.Add(app)
	if err := app.Run(os.Args); err != nil {
		fatal(err)
	}
}

// logger is the process's logger, set up by setup.
var logger = slog.New(slog.NewTextHandler(os.Stderr, nil))

// logToStderr is false when --log sends logs to a file, so that errors
// are printed to stderr as well.
var logToStderr = true

func setup(ctx *cli.Context) error {
	if root := ctx.GlobalString("root"); ctx.GlobalIsSet("root") {
		abs, err := filepath.Abs(root)
		if err != nil {
			return err
		}
		if abs == "/" {
			return errors.New("option --root argument should not be set to /")
		}
		if err := ctx.GlobalSet("root", abs); err != nil {
			return err
		}
	}
	level := slog.LevelWarn
	if ctx.GlobalBool("debug") {
		level = slog.LevelDebug
	}
	l, _, err := logging.New(logging.Options{
		Path:   ctx.GlobalString("log"),
		Format: ctx.GlobalString("log-format"),
		Level:  level,
	})
	if err != nil {
		return err
	}
	logrusbridge.Bridge(l, level)
	logger = l
	logToStderr = ctx.GlobalString("log") == ""
	slog.SetDefault(l)
	return nil
}

// newRuntime returns the runtime for the global flags.
func newRuntime(ctx *cli.Context) (*runtime.Runtime, error) {
	driver := cgroups.Cgroupfs
	if ctx.GlobalBool("systemd-cgroup") {
		driver = cgroups.Systemd
	}
	return runtime.New(runtime.Options{
		Root:         ctx.GlobalString("root"),
		CgroupDriver: driver,
		Logger:       logger,
	})
}

// loadContainer loads the container named by the first argument.
func loadContainer(ctx *cli.Context) (*runtime.Runtime, *runtime.Container, error) {
	rt, err := newRuntime(ctx)
	if err != nil {
		return nil, nil, err
	}
	c, err := rt.Load(ctx.Args().First())
	if err != nil {
		return nil, nil, err
	}
	return rt, c, nil
}

// fatal reports err as one line and exits 1, as runc does.
func fatal(err error) { fatalWithCode(err, 1) }

// The line on stderr is for people; the --log file, when there is one,
// gets the structured entry that engines parse.
func fatalWithCode(err error, code int) {
	msg := strings.ReplaceAll(err.Error(), "\n", "; ")
	if !logToStderr {
		logger.Error(msg)
	}
	fmt.Fprintln(os.Stderr, "berth: "+msg)
	os.Exit(code)
}

func printVersion(ctx *cli.Context) {
	w := ctx.App.Writer
	fmt.Fprintln(w, "berth version", ctx.App.Version)
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				fmt.Fprintln(w, "commit:", s.Value)
			}
		}
		fmt.Fprintln(w, "go:", bi.GoVersion)
	}
	fmt.Fprintln(w, "spec:", runtime.SpecVersion)
	if maj, minor, micro := runtime.SeccompVersion(); maj+minor+micro > 0 {
		fmt.Fprintf(w, "libseccomp: %d.%d.%d\n", maj, minor, micro)
	}
}

// Argument count checks, with runc's messages.
const (
	exactArgs = iota
	minArgs
	maxArgs
)

func checkArgs(ctx *cli.Context, expected, kind int) error {
	var err error
	name := ctx.Command.Name
	switch kind {
	case exactArgs:
		if ctx.NArg() != expected {
			err = fmt.Errorf("%q requires exactly %d argument(s)", name, expected)
		}
	case minArgs:
		if ctx.NArg() < expected {
			err = fmt.Errorf("%q requires a minimum of %d argument(s)", name, expected)
		}
	case maxArgs:
		if ctx.NArg() > expected {
			err = fmt.Errorf("%q requires a maximum of %d argument(s)", name, expected)
		}
	}
	if err != nil {
		fmt.Fprint(os.Stderr, "Incorrect Usage.\n\n")
		_ = cli.ShowCommandHelp(ctx, name)
	}
	return err
}
