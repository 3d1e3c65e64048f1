package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/urfave/cli"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/berth-runtime/berth/cri/adminapi"
)

var importCommand = cli.Command{
	Name:  "import",
	Usage: "load the images of a docker-archive or oci-archive (docker save, podman save, skopeo copy, ctr export) into berthd, with progress",
	Description: `An air-gapped node loads its images from files: berthctl sends the
   archive to berthd's side channel, which pulls each of its images from it as
   from a registry (signature policy, layer checks, a durable store) and
   records them under the names the archive gives them, or --name. The CRI
   pulls from registries only.`,
	ArgsUsage: "FILE",
	Flags: []cli.Flag{
		cli.StringFlag{Name: "name", Usage: "the name of an archive's only image, where the archive names none"},
		cli.BoolFlag{Name: "quiet, q", Usage: "print only the image ids"},
	},
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		if ctx.NArg() != 1 {
			return errors.New("import takes one archive")
		}
		f, err := os.Open(ctx.Args().First())
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		var sent atomic.Int64
		body := &countingReader{r: f, n: &sent}
		stop := showUpload(fi.Name(), fi.Size(), &sent, !ctx.Bool("quiet"))
		imported, err := adminClient(c.socket).importArchive(body, fi.Size(), ctx.String("name"))
		stop(err == nil)
		if err != nil {
			return err
		}
		for _, img := range imported {
			if ctx.Bool("quiet") {
				fmt.Println(img.ID)
			} else {
				fmt.Printf("Imported %s as %s\n", img.ID, strings.Join(img.Names, ", "))
			}
		}
		return nil
	}),
}

// importArchive sends an archive to berthd's side channel: no time limit,
// as a large archive takes what it takes.
func (a *admin) importArchive(body io.Reader, size int64, name string) ([]adminapi.ImportedImage, error) {
	u := "http://berthd" + adminapi.ImportPath
	if name != "" {
		u += "?name=" + url.QueryEscape(name)
	}
	req, err := http.NewRequest(http.MethodPost, u, body)
	if err != nil {
		return nil, err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/x-tar")
	hc := *a.http
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("berthd's side channel (berthctl import needs berthd, as root): %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return nil, fmt.Errorf("import: %s", strings.TrimSpace(string(msg)))
	}
	var out []adminapi.ImportedImage
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

// countingReader counts what the upload has sent, for its bar.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// showUpload draws the archive's upload as a bar on a terminal, and as a
// line at the end elsewhere; the function it returns ends it.
func showUpload(name string, size int64, sent *atomic.Int64, show bool) func(ok bool) {
	if !show {
		return func(bool) {}
	}
	start := time.Now()
	if !isTerminal(os.Stderr) {
		return func(ok bool) {
			if ok {
				fmt.Fprintf(os.Stderr, "sent %s (%s) in %s; loaded\n", name, humanBytes(uint64(size)), time.Since(start).Round(time.Millisecond))
			}
		}
	}
	p := mpb.New(mpb.WithOutput(os.Stderr), mpb.WithRefreshRate(150*time.Millisecond))
	bar := p.AddBar(size,
		mpb.PrependDecorators(decor.Name(name, decor.WC{W: len(name) + 1, C: decor.DindentRight})),
		mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f"), decor.Name(" "), decor.EwmaSpeed(decor.SizeB1024(0), "% .1f", 30)))
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				bar.SetCurrent(sent.Load())
			}
		}
	}()
	return func(ok bool) {
		close(done)
		if ok {
			bar.SetCurrent(size)
		} else {
			bar.Abort(false)
		}
		p.Wait()
	}
}
