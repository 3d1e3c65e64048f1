package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/urfave/cli"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var logsCommand = cli.Command{
	Name:      "logs",
	Usage:     "print a container's log (read from its CRI log file)",
	ArgsUsage: "CONTAINER-ID",
	Flags: []cli.Flag{
		cli.BoolFlag{Name: "follow, f", Usage: "keep printing as the log grows, across rotations"},
		cli.IntFlag{Name: "tail", Value: -1, Usage: "only the last N lines"},
		cli.BoolFlag{Name: "timestamps", Usage: "show each line's timestamp"},
	},
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		if ctx.NArg() != 1 {
			return errors.New("logs takes one container id")
		}
		id := ctx.Args().First()
		status := func() (*runtimeapi.ContainerStatus, error) {
			cctx, cancel := c.ctx()
			defer cancel()
			resp, err := c.rt.ContainerStatus(cctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
			if err != nil {
				return nil, err
			}
			return resp.Status, nil
		}
		st, err := status()
		if err != nil {
			return err
		}
		if st.LogPath == "" {
			return fmt.Errorf("container %s has no log path", id)
		}
		w := &logWriter{timestamps: ctx.Bool("timestamps")}
		return followLog(st.LogPath, ctx.Int("tail"), ctx.Bool("follow"), w, func() bool {
			st, err := status()
			return err == nil && st.State == runtimeapi.ContainerState_CONTAINER_RUNNING
		})
	}),
}

// logWriter prints CRI log lines: "<time> <stream> <P|F> <content>",
// partial lines joined.
type logWriter struct {
	timestamps bool
	partial    map[string][]byte
}

func (w *logWriter) line(l []byte) {
	ts, rest, ok := bytes.Cut(l, []byte(" "))
	if !ok {
		return
	}
	stream, rest, ok := bytes.Cut(rest, []byte(" "))
	if !ok {
		return
	}
	tag, content, _ := bytes.Cut(rest, []byte(" "))
	if w.partial == nil {
		w.partial = map[string][]byte{}
	}
	key := string(stream)
	if string(tag) == "P" {
		w.partial[key] = append(w.partial[key], content...)
		return
	}
	content = append(w.partial[key], content...)
	delete(w.partial, key)
	out := os.Stdout
	if key == "stderr" {
		out = os.Stderr
	}
	if w.timestamps {
		fmt.Fprintf(out, "%s %s\n", ts, content)
	} else {
		fmt.Fprintf(out, "%s\n", content)
	}
}

// followLog prints the log, the last tail lines if tail >= 0, and with
// follow keeps reading while running() holds, reopening the file when
// the kubelet rotates it.
func followLog(path string, tail int, follow bool, w *logWriter, running func() bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer func() { f.Close() }()
	if tail >= 0 {
		lines, err := lastLines(f, tail)
		if err != nil {
			return err
		}
		for _, l := range lines {
			w.line(l)
		}
		// Without follow, the last lines are all: reading on would add
		// whatever the container wrote meanwhile.
		if !follow {
			return nil
		}
	}
	r := bufio.NewReader(f)
	var pending []byte
	lastCheck := time.Now()
	for {
		chunk, err := r.ReadBytes('\n')
		pending = append(pending, chunk...)
		if err == nil {
			w.line(bytes.TrimSuffix(pending, []byte("\n")))
			pending = pending[:0]
			continue
		}
		if !errors.Is(err, io.EOF) {
			return err
		}
		if !follow {
			return nil
		}
		if rotated(f, path) {
			nf, err := os.Open(path)
			if err == nil {
				// Whatever the old file still had is read; the new one
				// starts from its beginning.
				f.Close()
				f, r, pending = nf, bufio.NewReader(nf), pending[:0]
				continue
			}
		}
		if time.Since(lastCheck) > time.Second {
			lastCheck = time.Now()
			if !running() {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rotated reports whether path now names another file than f.
func rotated(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(path)
	if err != nil {
		return false
	}
	sa, ok1 := a.Sys().(*syscall.Stat_t)
	sb, ok2 := b.Sys().(*syscall.Stat_t)
	return ok1 && ok2 && sa.Ino != sb.Ino
}

// lastLines returns the last n lines and leaves f at its end.
func lastLines(f *os.File, n int) ([][]byte, error) {
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	if len(data) == 0 {
		return nil, nil
	}
	if n < len(lines) {
		lines = lines[len(lines)-n:]
	}
	return lines, nil
}
