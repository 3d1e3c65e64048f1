package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"

	"github.com/urfave/cli"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var osStderr = os.Stderr

// exitCode makes berthctl exit with the command's status.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// exitWithCommand exits with the status of the command run in the
// container (exec, attach), or returns err as it is.
func exitWithCommand(err error) error {
	var code exitCode
	if errors.As(err, &code) {
		os.Exit(int(code))
	}
	return err
}

var execCommand = cli.Command{
	Name:      "exec",
	Usage:     "run a command in a running container",
	ArgsUsage: "CONTAINER-ID COMMAND [ARG...]",
	Flags: []cli.Flag{
		cli.BoolFlag{Name: "interactive, i", Usage: "keep stdin open"},
		cli.BoolFlag{Name: "tty, t", Usage: "allocate a terminal"},
		cli.BoolFlag{Name: "sync, s", Usage: "run through ExecSync (no streaming)"},
		cli.Int64Flag{Name: "timeout", Usage: "seconds before a --sync command is killed (0: none)"},
	},
	SkipFlagParsing: false,
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		if ctx.NArg() < 2 {
			return errors.New("exec takes a container id and a command")
		}
		id, cmd := ctx.Args().First(), []string(ctx.Args()[1:])
		var err error
		if ctx.Bool("sync") {
			err = execSync(c, id, cmd, ctx.Int64("timeout"))
		} else {
			err = execStream(c, id, cmd, ctx.Bool("interactive"), ctx.Bool("tty"))
		}
		return exitWithCommand(err)
	}),
}

var attachCommand = cli.Command{
	Name:      "attach",
	Usage:     "attach to a running container's stdio",
	ArgsUsage: "CONTAINER-ID",
	Flags: []cli.Flag{
		cli.BoolFlag{Name: "stdin, i", Usage: "pass stdin to the container"},
		cli.BoolFlag{Name: "tty, t", Usage: "the container has a terminal"},
	},
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		if ctx.NArg() != 1 {
			return errors.New("attach takes a container id")
		}
		stdin, tty := ctx.Bool("stdin"), ctx.Bool("tty")
		if tty && !isTerminal(os.Stdin) {
			tty = false
		}
		cctx, cancel := c.ctx()
		resp, err := c.rt.Attach(cctx, &runtimeapi.AttachRequest{ContainerId: ctx.Args().First(), Stdin: stdin, Tty: tty, Stdout: true, Stderr: !tty})
		cancel()
		if err != nil {
			return err
		}
		err = stream(resp.Url, stdin, tty)
		return exitWithCommand(err)
	}),
}

func execSync(c *clients, id string, cmd []string, timeout int64) error {
	cctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.rt.ExecSync(cctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: timeout})
	if err != nil {
		return err
	}
	_, _ = os.Stdout.Write(resp.Stdout)
	_, _ = os.Stderr.Write(resp.Stderr)
	if resp.ExitCode != 0 {
		return exitCode(resp.ExitCode)
	}
	return nil
}

func execStream(c *clients, id string, cmd []string, stdin, tty bool) error {
	if tty && !isTerminal(os.Stdin) {
		tty = false
	}
	cctx, cancel := c.ctx()
	resp, err := c.rt.Exec(cctx, &runtimeapi.ExecRequest{ContainerId: id, Cmd: cmd, Stdin: stdin, Tty: tty, Stdout: true, Stderr: !tty})
	cancel()
	if err != nil {
		return err
	}
	return stream(resp.Url, stdin, tty)
}

// stream connects the local stdio to a streaming URL (exec or attach),
// with the local terminal in raw mode for a tty.
func stream(rawURL string, stdin, tty bool) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return err
	}
	executor, err := remotecommand.NewSPDYExecutor(&restclient.Config{TLSClientConfig: restclient.TLSClientConfig{Insecure: true}}, "POST", u)
	if err != nil {
		return err
	}
	opts := remotecommand.StreamOptions{Stdout: os.Stdout, Tty: tty}
	if !tty {
		opts.Stderr = os.Stderr
	}
	if stdin {
		opts.Stdin = os.Stdin
	}
	if tty {
		fd := int(os.Stdin.Fd())
		state, err := term.MakeRaw(fd)
		if err != nil {
			return err
		}
		defer func() { _ = term.Restore(fd, state) }()
		opts.TerminalSizeQueue = newSizeQueue(fd)
	}
	err = executor.StreamWithContext(context.Background(), opts)
	var ce utilexec.CodeExitError
	if errors.As(err, &ce) {
		return exitCode(ce.Code)
	}
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// sizeQueue reports the terminal's size, then every change (SIGWINCH).
type sizeQueue struct {
	fd int
	ch chan os.Signal
	// first reports the initial size before any SIGWINCH.
	first bool
}

func newSizeQueue(fd int) *sizeQueue {
	q := &sizeQueue{fd: fd, ch: make(chan os.Signal, 1), first: true}
	signal.Notify(q.ch, unix.SIGWINCH)
	return q
}

func (q *sizeQueue) Next() *remotecommand.TerminalSize {
	if !q.first {
		if _, ok := <-q.ch; !ok {
			return nil
		}
	}
	q.first = false
	w, h, err := term.GetSize(q.fd)
	if err != nil {
		return nil
	}
	return &remotecommand.TerminalSize{Width: uint16(w), Height: uint16(h)}
}
