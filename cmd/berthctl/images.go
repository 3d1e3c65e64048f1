package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/urfave/cli"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cri/adminapi"
)

var pullCommand = cli.Command{
	Name:      "pull",
	Usage:     "pull an image, with a progress bar per layer",
	ArgsUsage: "IMAGE",
	Flags: []cli.Flag{
		cli.StringFlag{Name: "creds", Usage: "USER[:PASSWORD] for the registry"},
		cli.StringFlag{Name: "auth", Usage: "base64 USER:PASSWORD, as in Docker's config"},
		cli.BoolFlag{Name: "quiet, q", Usage: "print only the image id"},
		cli.DurationFlag{Name: "progress-interval", Value: 5 * time.Second, Usage: "off a terminal: how often to print the total and its rate"},
	},
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		if ctx.NArg() != 1 {
			return errors.New("pull takes one image")
		}
		ref := ctx.Args().First()
		req := &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}
		if creds := ctx.String("creds"); creds != "" {
			user, pass, _ := strings.Cut(creds, ":")
			req.Auth = &runtimeapi.AuthConfig{Username: user, Password: pass}
		} else if a := ctx.String("auth"); a != "" {
			req.Auth = &runtimeapi.AuthConfig{Auth: a}
		}
		id, err := pullWithProgress(c, req, !ctx.Bool("quiet"), ctx.Duration("progress-interval"))
		if err != nil {
			return err
		}
		if ctx.Bool("quiet") {
			fmt.Println(id)
		} else {
			fmt.Printf("Image is up to date for %s\n", id)
		}
		return nil
	}),
}

// pullWithProgress pulls while drawing, from berthd's side channel, a bar
// per layer. Without the side channel (another runtime, no permission) it
// just waits.
func pullWithProgress(c *clients, req *runtimeapi.PullImageRequest, show bool, interval time.Duration) (string, error) {
	type result struct {
		id  string
		err error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := c.img.PullImage(context.Background(), req)
		if err != nil {
			done <- result{err: err}
			return
		}
		done <- result{id: resp.ImageRef}
	}()
	if !show {
		r := <-done
		return r.id, r.err
	}
	admin := adminClient(c.socket)
	var view progressView
	if isTerminal(os.Stderr) {
		view = newBarsView()
	} else {
		view = newLinesView(os.Stderr, req.Image.Image, interval)
	}
	ref := req.Image.Image
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case r := <-done:
			view.finish(r.err == nil)
			return r.id, r.err
		case <-tick.C:
			if pull, err := admin.pull(ref); err == nil && pull != nil {
				view.update(pull)
			}
		}
	}
}

// progressView shows a pull's progress from berthd's side channel.
type progressView interface {
	update(p *adminapi.Pull)
	finish(ok bool)
}

// barsView draws a bar per layer, as wide as the terminal allows.
type barsView struct {
	p      *mpb.Progress
	bars   map[string]*mpb.Bar
	states map[string]*atomic.Value
}

func newBarsView() *barsView {
	// What the decorators around a bar take: name, state, counters, rate.
	width := 40
	if w, _, err := term.GetSize(int(os.Stderr.Fd())); err == nil && w-75 > width {
		width = w - 75
	}
	return &barsView{
		p:    mpb.New(mpb.WithOutput(os.Stderr), mpb.WithWidth(width), mpb.WithRefreshRate(150*time.Millisecond)),
		bars: map[string]*mpb.Bar{}, states: map[string]*atomic.Value{},
	}
}

func (v *barsView) update(pull *adminapi.Pull) {
	for _, l := range pull.Layers {
		b, ok := v.bars[l.Digest]
		if !ok {
			st := &atomic.Value{}
			v.states[l.Digest] = st
			// Total 0: the bar completes only when told (SetTotal with
			// complete), not by itself when Done reaches a total
			// (mpb then ignores the completing SetTotal).
			b = v.p.AddBar(0,
				mpb.PrependDecorators(decor.Name(shortDigest(l.Digest), decor.WC{W: 13, C: decor.DindentRight}),
					decor.Any(func(decor.Statistics) string { s, _ := st.Load().(string); return s }, decor.WC{W: 12, C: decor.DindentRight})),
				mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f"), decor.Name(" "), decor.EwmaSpeed(decor.SizeB1024(0), "% .1f", 30)),
			)
			v.bars[l.Digest] = b
		}
		v.states[l.Digest].Store(l.State)
		switch l.State {
		case "exists", "done":
			b.SetTotal(-1, true)
		default:
			if l.Size > 0 {
				b.SetTotal(l.Size, false)
			}
			b.EwmaSetCurrent(l.Done, 200*time.Millisecond)
		}
	}
}

func (v *barsView) finish(ok bool) {
	for d, b := range v.bars {
		if ok {
			v.states[d].Store("done")
			b.SetTotal(-1, true)
		} else {
			b.Abort(false)
		}
	}
	v.p.Wait()
}

// linesView writes plain lines where there is no terminal (a CI log, a
// pipe, a file): one per layer state change, and the total with its
// rate every interval. No cursor movement, nothing redrawn.
type linesView struct {
	w        io.Writer
	ref      string
	interval time.Duration
	states   map[string]string
	last     time.Time
	lastDone int64
	start    time.Time
}

func newLinesView(w io.Writer, ref string, interval time.Duration) *linesView {
	now := time.Now()
	return &linesView{w: w, ref: ref, interval: interval, states: map[string]string{}, last: now, start: now}
}

func (v *linesView) update(pull *adminapi.Pull) {
	var done, total int64
	for _, l := range pull.Layers {
		if v.states[l.Digest] != l.State {
			v.states[l.Digest] = l.State
			fmt.Fprintf(v.w, "%s %s %s\n", shortDigest(l.Digest), l.State, sizeOf(l.Size))
		}
		done += l.Done
		if l.Size > 0 {
			total += l.Size
		}
	}
	if now := time.Now(); now.Sub(v.last) >= v.interval {
		rate := float64(done-v.lastDone) / now.Sub(v.last).Seconds()
		fmt.Fprintf(v.w, "pulling %s: %s of %s, %s/s\n", v.ref, sizeOf(done), sizeOf(total), sizeOf(int64(rate)))
		v.last, v.lastDone = now, done
	}
}

func (v *linesView) finish(ok bool) {
	verdict := "done"
	if !ok {
		verdict = "failed"
	}
	fmt.Fprintf(v.w, "pull of %s %s after %s\n", v.ref, verdict, time.Since(v.start).Round(100*time.Millisecond))
}

func shortDigest(d string) string {
	name := strings.TrimPrefix(d, "sha256:")
	if len(name) > 12 {
		name = name[:12]
	}
	return name
}

// sizeOf is humanBytes for a size that may be unknown (-1): "?".
func sizeOf(n int64) string {
	if n < 0 {
		return "?"
	}
	return humanBytes(uint64(n))
}

// admin is a client of berthd's side channel.
type admin struct{ http *http.Client }

func adminClient(criSocket string) *admin {
	path := adminapi.SocketFor(criSocket)
	return &admin{http: &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

func (a *admin) lazyLayers() ([]adminapi.LazyLayer, error) {
	resp, err := a.http.Get("http://berthd" + adminapi.LazyPath)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("side channel: %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	var out []adminapi.LazyLayer
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

func (a *admin) pulls() ([]adminapi.Pull, error) {
	resp, err := a.http.Get("http://berthd" + adminapi.PullsPath)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("side channel: %s", resp.Status)
	}
	var out []adminapi.Pull
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

// pull finds the pull of ref in flight, if any.
func (a *admin) pull(ref string) (*adminapi.Pull, error) {
	list, err := a.pulls()
	if err != nil {
		return nil, err
	}
	for i := range list {
		if list[i].Ref == ref {
			return &list[i], nil
		}
	}
	return nil, nil
}

var imagesCommand = cli.Command{
	Name:      "images",
	Aliases:   []string{"image", "img"},
	Usage:     "list images, or with --pulling the pulls in flight",
	ArgsUsage: "[REPOSITORY[:TAG]]",
	Flags: []cli.Flag{
		outputFlag,
		cli.BoolFlag{Name: "quiet, q", Usage: "only image ids"},
		cli.BoolFlag{Name: "pulling", Usage: "show pulls in progress (also the kubelet's), per layer, and the layers pulled lazily that are not local yet"},
		cli.BoolFlag{Name: "lazy", Usage: "show the layers pulled lazily that are not local yet ([lazy_pull])"},
		cli.BoolFlag{Name: "digests", Usage: "show digests"},
	},
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		if ctx.Bool("pulling") {
			return showPulls(ctx, c)
		}
		if ctx.Bool("lazy") {
			return showLazy(ctx, c, false)
		}
		cctx, cancel := c.ctx()
		defer cancel()
		req := &runtimeapi.ListImagesRequest{}
		if ctx.NArg() > 0 {
			req.Filter = &runtimeapi.ImageFilter{Image: &runtimeapi.ImageSpec{Image: ctx.Args().First()}}
		}
		resp, err := c.img.ListImages(cctx, req)
		if err != nil {
			return err
		}
		switch ctx.String("output") {
		case "json", "yaml":
			return printMessage(ctx.String("output"), resp)
		case "", "table":
		default:
			return fmt.Errorf("output format %q: want table, json or yaml", ctx.String("output"))
		}
		if ctx.Bool("quiet") {
			for _, img := range resp.Images {
				fmt.Println(img.Id)
			}
			return nil
		}
		t := newTable("IMAGE", "TAG", "DIGEST", "IMAGE ID", "SIZE")
		for _, img := range resp.Images {
			digest := "<none>"
			if len(img.RepoDigests) > 0 {
				_, d, _ := strings.Cut(img.RepoDigests[0], "@")
				digest = short(d)
			}
			names := img.RepoTags
			if len(names) == 0 {
				names = []string{"<none>:<none>"}
			}
			for _, n := range names {
				repo, tag := n, "<none>"
				if i := strings.LastIndex(n, ":"); i > strings.LastIndex(n, "/") {
					repo, tag = n[:i], n[i+1:]
				}
				t.row(repo, tag, digest, short(img.Id), humanBytes(img.Size))
			}
		}
		t.flush()
		return nil
	}),
}

func showPulls(ctx *cli.Context, c *clients) error {
	list, err := adminClient(c.socket).pulls()
	if err != nil {
		return fmt.Errorf("berthd side channel (%s): %w", adminapi.SocketFor(c.socket), err)
	}
	if f := ctx.String("output"); f == "json" || f == "yaml" {
		data, err := json.MarshalIndent(list, "", "  ")
		if err != nil {
			return err
		}
		return printJSON(f, data)
	}
	t := newTable("IMAGE", "LAYERS", "DOWNLOADED", "ELAPSED")
	for _, p := range list {
		var done, total int64
		finished := 0
		for _, l := range p.Layers {
			if l.State == "done" || l.State == "exists" {
				finished++
			}
			if l.State != "exists" {
				done += l.Done
				total += max(l.Size, 0)
			}
		}
		t.row(p.Ref, fmt.Sprintf("%d/%d", finished, len(p.Layers)),
			fmt.Sprintf("%s / %s", humanBytes(uint64(done)), humanBytes(uint64(total))), time.Since(p.Started).Round(time.Second).String())
	}
	t.flush()
	return showLazy(ctx, c, true)
}

// showLazy lists the layers served lazily; after the pulls' table, only
// if there are any.
func showLazy(ctx *cli.Context, c *clients, afterPulls bool) error {
	list, err := adminClient(c.socket).lazyLayers()
	if err != nil {
		return fmt.Errorf("berthd side channel (%s): %w", adminapi.SocketFor(c.socket), err)
	}
	if f := ctx.String("output"); !afterPulls && (f == "json" || f == "yaml") {
		data, err := json.MarshalIndent(list, "", "  ")
		if err != nil {
			return err
		}
		return printJSON(f, data)
	}
	if afterPulls && len(list) == 0 {
		return nil
	}
	if afterPulls {
		fmt.Println()
	}
	t := newTable("LAZY LAYER", "LOCAL", "ERROR")
	for _, l := range list {
		pct := 0.0
		if l.Size > 0 {
			pct = 100 * float64(l.Local) / float64(l.Size)
		}
		t.row(short(l.Digest), fmt.Sprintf("%s / %s (%.0f%%)", humanBytes(uint64(l.Local)), humanBytes(uint64(l.Size)), pct), l.Error)
	}
	t.flush()
	return nil
}

var rmiCommand = cli.Command{
	Name:      "rmi",
	Usage:     "remove images (all their names)",
	ArgsUsage: "IMAGE...",
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		if ctx.NArg() == 0 {
			return errors.New("rmi takes one image or more")
		}
		for _, ref := range ctx.Args() {
			cctx, cancel := c.ctx()
			st, err := c.img.ImageStatus(cctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
			if err == nil && st.Image == nil {
				cancel()
				return fmt.Errorf("no such image %s", ref)
			}
			_, err = c.img.RemoveImage(cctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
			cancel()
			if err != nil {
				return fmt.Errorf("remove %s: %w", ref, err)
			}
			fmt.Println("Deleted:", ref)
		}
		return nil
	}),
}

var inspectiCommand = cli.Command{
	Name:      "inspecti",
	Usage:     "show an image's status",
	ArgsUsage: "IMAGE",
	Flags:     []cli.Flag{outputFlag},
	Action: withClients(func(ctx *cli.Context, c *clients) error {
		if ctx.NArg() != 1 {
			return errors.New("inspecti takes one image")
		}
		cctx, cancel := c.ctx()
		defer cancel()
		resp, err := c.img.ImageStatus(cctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ctx.Args().First()}, Verbose: true})
		if err != nil {
			return err
		}
		if resp.Image == nil {
			return fmt.Errorf("no such image %s", ctx.Args().First())
		}
		return printMessage(ctx.String("output"), resp)
	}),
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }
