package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli"

	"github.com/berth-runtime/berth/cri/adminapi"
)

var exportCommand = cli.Command{
	Name:  "export",
	Usage: "write images to a docker-archive or oci-archive that berthctl import, docker load, podman load and ctr import read",
	Description: `The archive holds each image as it was pulled: its config and its
   layers byte for byte (uncompressed, as docker save writes them), so that
   the image keeps its ID wherever it is loaded. An image named by a name is
   recorded under that name, one named by ID under all of its names.`,
	ArgsUsage: "IMAGE...",
	Flags: []cli.Flag{
		cli.StringFlag{Name: "output, o", Usage: "the archive's file (default: standard output, unless it is a terminal)"},
		cli.StringFlag{Name: "format", Value: "docker-archive", Usage: "docker-archive or oci-archive"},
	},
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		if ctx.NArg() == 0 {
			return errors.New("export takes one image or more")
		}
		out := ctx.String("output")
		var w io.Writer = os.Stdout
		var f *os.File
		if out == "" {
			if isTerminal(os.Stdout) {
				return errors.New("refusing to write an archive to a terminal: give --output or redirect")
			}
		} else {
			// A temporary file beside it, renamed at the end: no half
			// archive under the name asked for.
			var err error
			f, err = os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
			if err != nil {
				return err
			}
			defer os.Remove(f.Name())
			defer f.Close()
			w = f
		}
		start := time.Now()
		n, err := adminClient(c.socket).exportArchive(w, ctx.Args(), ctx.String("format"))
		if err != nil {
			return err
		}
		if f != nil {
			if err := f.Sync(); err != nil {
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			if err := os.Rename(f.Name(), out); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "wrote %s (%s) in %s\n", out, humanBytes(uint64(n)), time.Since(start).Round(time.Millisecond))
		}
		return nil
	}),
}

// exportArchive copies the archive berthd writes to w: no time limit, as
// a large archive takes what it takes. An error berthd meets after the
// archive started comes as the response's trailer.
func (a *admin) exportArchive(w io.Writer, refs []string, format string) (int64, error) {
	q := url.Values{"ref": refs, "format": {format}}
	hc := *a.http
	hc.Timeout = 0
	resp, err := hc.Get("http://berthd" + adminapi.ExportPath + "?" + q.Encode())
	if err != nil {
		return 0, fmt.Errorf("berthd's side channel (berthctl export needs berthd, as root): %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return 0, fmt.Errorf("export: %s", strings.TrimSpace(string(msg)))
	}
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("export: %w", err)
	}
	if msg := resp.Trailer.Get(adminapi.ExportErrorTrailer); msg != "" {
		return n, fmt.Errorf("export: %s", msg)
	}
	return n, nil
}
