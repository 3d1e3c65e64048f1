// Command berthctl is a small CRI client for people and tests, in the
// manner of crictl: pods, containers, images, exec, logs and stats over
// berthd's socket, with per-layer progress bars while it pulls.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli"
	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/clidocs"
	"github.com/berth-runtime/berth/internal/version"
)

const defaultEndpoint = "unix:///run/berth/berth.sock"

func main() {
	app := cli.NewApp()
	app.Name = "berthctl"
	app.Usage = "talk to berthd (or any CRI runtime) over its socket"
	app.Version = version.Version
	// Combined short flags (-it, -si), as crictl and docker take them.
	app.UseShortOptionHandling = true
	// berthctl completion bash|zsh prints scripts that ask for these.
	app.EnableBashCompletion = true
	app.Flags = []cli.Flag{
		cli.StringFlag{Name: "runtime-endpoint, r", Value: defaultEndpoint, EnvVar: "BERTH_ENDPOINT,CONTAINER_RUNTIME_ENDPOINT", Usage: "CRI endpoint"},
		cli.DurationFlag{Name: "timeout, t", Value: 2 * time.Minute, Usage: "timeout of each call (pulls: no timeout)"},
	}
	app.Commands = []cli.Command{
		versionCommand, infoCommand,
		pullCommand, importCommand, exportCommand, imagesCommand, rmiCommand, inspectiCommand,
		runpCommand, podsCommand, inspectpCommand, stoppCommand, rmpCommand,
		createCommand, startCommand, psCommand, inspectCommand, updateCommand, stopCommand, rmCommand,
		execCommand, attachCommand, portForwardCommand, logsCommand, statsCommand,
		statspCommand, imagefsinfoCommand, eventsCommand, completionCommand,
	}
	app.CommandNotFound = func(ctx *cli.Context, name string) {
		fmt.Fprintf(os.Stderr, "berthctl: no command %q; see berthctl --help\n", name)
		os.Exit(2)
	}
	clidocs.Add(app)
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "berthctl:", err)
		os.Exit(1)
	}
}

// socketOwners says who may use a socket and how to become one of them.
func socketOwners(fi os.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "run berthctl as root"
	}
	owner, group := fmt.Sprint(st.Uid), fmt.Sprint(st.Gid)
	if u, err := user.LookupId(owner); err == nil {
		owner = u.Username
	}
	if g, err := user.LookupGroupId(group); err == nil {
		group = g.Name
	}
	return fmt.Sprintf("the socket is user %s's and group %s's (mode %04o): run berthctl as root or as a member of group %s (berthd's socket_group)",
		owner, group, fi.Mode().Perm(), group)
}

// clients are the CRI services on one connection.
type clients struct {
	rt   runtimeapi.RuntimeServiceClient
	img  runtimeapi.ImageServiceClient
	conn *grpc.ClientConn
	// socket is the CRI socket's path, for the admin side channel.
	socket  string
	timeout time.Duration
}

func connect(ctx *cli.Context) (*clients, error) {
	ep := ctx.GlobalString("runtime-endpoint")
	socket := strings.TrimPrefix(ep, "unix://")
	if strings.Contains(socket, "://") {
		return nil, fmt.Errorf("endpoint %q: only unix:// endpoints are supported", ep)
	}
	fi, err := os.Stat(socket)
	if errors.Is(err, fs.ErrPermission) {
		return nil, fmt.Errorf("endpoint %s: permission denied on the socket's directory: run berthctl as root", ep)
	}
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w (is berthd running?)", ep, err)
	}
	// Connecting needs write permission; say whose socket it is rather
	// than let gRPC report a bare "connect: permission denied".
	if unix.Access(socket, unix.W_OK) != nil {
		return nil, fmt.Errorf("endpoint %s: permission denied: %s", ep, socketOwners(fi))
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		return nil, err
	}
	return &clients{
		rt: runtimeapi.NewRuntimeServiceClient(conn), img: runtimeapi.NewImageServiceClient(conn),
		conn: conn, socket: socket, timeout: ctx.GlobalDuration("timeout"),
	}, nil
}

func (c *clients) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), c.timeout)
}

// withClients wraps an action with a connection.
func withClients(fn func(*cli.Context, *clients) error) func(*cli.Context) error {
	return func(ctx *cli.Context) error {
		c, err := connect(ctx)
		if err != nil {
			return err
		}
		defer c.conn.Close()
		return fn(ctx, c)
	}
}

// stdout is where listings go: os.Stdout, or a buffer while --watch
// compares one listing with the last.
var stdout io.Writer = os.Stdout

var outputFlag = cli.StringFlag{Name: "output, o", Usage: "table, json or yaml"}

// printMessage writes a protobuf message as JSON or YAML.
func printMessage(format string, m proto.Message) error {
	data, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: false}.Marshal(m)
	if err != nil {
		return err
	}
	return printJSON(format, data)
}

// printJSON writes JSON as is, or as YAML.
func printJSON(format string, data []byte) error {
	switch format {
	case "", "json":
		fmt.Fprintln(stdout, strings.TrimSpace(string(data)))
		return nil
	case "yaml":
		var v any
		if err := json.Unmarshal(data, &v); err != nil {
			return err
		}
		out, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		fmt.Fprint(stdout, string(out))
		return nil
	}
	return fmt.Errorf("output format %q: want table, json or yaml", format)
}

// table writes aligned columns.
type table struct{ w *tabwriter.Writer }

func newTable(header ...string) *table {
	t := &table{w: tabwriter.NewWriter(stdout, 0, 8, 3, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cols ...string) { fmt.Fprintln(t.w, strings.Join(cols, "\t")) }
func (t *table) flush()             { t.w.Flush() }

// short truncates an id to the 13 characters crictl shows.
func short(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 13 {
		return id[:13]
	}
	return id
}

// ago renders a creation time as "5 minutes ago".
func ago(nanos int64) string {
	if nanos == 0 {
		return "-"
	}
	d := time.Since(time.Unix(0, nanos))
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d seconds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d minutes ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d hours ago", int(d.Hours()))
	}
	return fmt.Sprintf("%d days ago", int(d.Hours()/24))
}

// cpuPercent is a CPU rate in nanocores as a percentage of one core, or
// "-" before the runtime has two samples to compute it from.
func cpuPercent(nanoCores *runtimeapi.UInt64Value) string {
	if nanoCores == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f", float64(nanoCores.Value)/1e7)
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// readConfig reads a CRI config message from a JSON or YAML file, with
// the protobuf field names in either snake_case or camelCase.
func readConfig(path string, m proto.Message) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	trimmed := strings.TrimSpace(string(data))
	if !strings.HasPrefix(trimmed, "{") {
		var v any
		if err := yaml.Unmarshal(data, &v); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if data, err = json.Marshal(v); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	if err := protojson.Unmarshal(data, m); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

var versionCommand = cli.Command{
	Name:  "version",
	Usage: "show the runtime's name and version",
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		cctx, cancel := c.ctx()
		defer cancel()
		v, err := c.rt.Version(cctx, &runtimeapi.VersionRequest{Version: "v1"})
		if err != nil {
			return err
		}
		fmt.Printf("Version:  %s\nRuntimeName:  %s\nRuntimeVersion:  %s\nRuntimeApiVersion:  %s\nberthctl:  %s\n",
			v.Version, v.RuntimeName, v.RuntimeVersion, v.RuntimeApiVersion, version.Version)
		return nil
	}),
}

var infoCommand = cli.Command{
	Name:  "info",
	Usage: "show the runtime's status and configuration",
	Flags: []cli.Flag{outputFlag},
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		cctx, cancel := c.ctx()
		defer cancel()
		st, err := c.rt.Status(cctx, &runtimeapi.StatusRequest{Verbose: true})
		if err != nil {
			return err
		}
		return printMessage(ctx.String("output"), st)
	}),
}
