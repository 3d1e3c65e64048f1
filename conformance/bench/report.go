package bench

import (
	"fmt"
	"image/color"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// baseline is the runtime every ratio is taken for.
const baseline = "berth"

func (r *Results) markdown(stamp string, charts map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# berth benchmarks, %s\n\n", r.Started.UTC().Format("2006-01-02 15:04 MST"))
	m := r.Machine
	fmt.Fprintf(&b, "Machine: %d cores, %s, %s RAM, kernel %s, cgroup %s.  \n", m.Cores, m.CPU, m.Memory, m.Kernel, m.Cgroup)
	fmt.Fprintf(&b, "Raw figures: `%s.json`. Each figure alternates the runtimes round by round; medians with min–max.\n\n", stamp)
	if len(r.Versions) > 0 {
		b.WriteString("| component | version |\n|---|---|\n")
		for _, k := range sortedKeys(r.Versions) {
			fmt.Fprintf(&b, "| %s | %s |\n", k, r.Versions[k])
		}
		b.WriteString("\n")
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	if len(r.Notes) > 0 {
		b.WriteString("\n")
	}
	group := ""
	for _, c := range r.Cases {
		if c.Group != group {
			group = c.Group
			fmt.Fprintf(&b, "## %s\n\n", group)
			if chart, ok := charts[group]; ok {
				fmt.Fprintf(&b, "![%s](%s)\n\n", group, chart)
			}
		}
		fmt.Fprintf(&b, "### %s\n\n", c.Name)
		if c.Note != "" {
			fmt.Fprintf(&b, "%s\n\n", c.Note)
		}
		var base Summary
		if s := c.Find(baseline); s != nil {
			base = s.Summarize()
		}
		fmt.Fprintf(&b, "| runtime | median (%s) | min–max | p90 | p99 | n | errors | berth / runtime |\n|---|---:|---:|---:|---:|---:|---:|---:|\n", c.Unit)
		for _, s := range c.Series {
			sum := s.Summarize()
			ratio := "—"
			if s.Runtime != baseline && sum.Median > 0 && base.N > 0 {
				ratio = fmt.Sprintf("%.2f", base.Median/sum.Median)
			}
			fmt.Fprintf(&b, "| %s | %.1f | %.1f–%.1f | %.1f | %.1f | %d | %d | %s |\n",
				s.Runtime, sum.Median, sum.Min, sum.Max, sum.P90, sum.P99, sum.N, sum.Errors, ratio)
		}
		if c.Target != "" {
			fmt.Fprintf(&b, "\nTarget: %s.\n", c.Target)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// plot draws one box-plot chart per group: each case a cluster of boxes,
// one per runtime.
func (r *Results) plot(dir, stamp string) (map[string]string, error) {
	groups := map[string][]*Case{}
	var order []string
	for _, c := range r.Cases {
		if _, ok := groups[c.Group]; !ok {
			order = append(order, c.Group)
		}
		groups[c.Group] = append(groups[c.Group], c)
	}
	charts := map[string]string{}
	for _, g := range order {
		cases := groups[g]
		runtimes := runtimesOf(cases)
		p := plot.New()
		p.Title.Text = g
		p.Y.Label.Text = cases[0].Unit
		width := vg.Points(14)
		var names []string
		for ci, c := range cases {
			names = append(names, shortName(c.Name))
			for ri, rt := range runtimes {
				s := c.Find(rt)
				if s == nil || len(s.Samples) == 0 {
					continue
				}
				vals := make(plotter.Values, len(s.Samples))
				copy(vals, s.Samples)
				pos := float64(ci) + (float64(ri)-float64(len(runtimes)-1)/2)*0.2
				box, err := plotter.NewBoxPlot(width, pos, vals)
				if err != nil {
					return nil, err
				}
				box.FillColor = palette[ri%len(palette)]
				p.Add(box)
				if ci == 0 {
					p.Legend.Add(rt, swatch{palette[ri%len(palette)]})
				}
			}
		}
		p.NominalX(names...)
		p.Legend.Top = true
		p.Y.Min = 0
		name := fmt.Sprintf("%s-%s.svg", stamp, slug(g))
		w := vg.Length(120+110*len(cases)) * vg.Millimeter / 2.5
		if err := p.Save(w, 9*vg.Centimeter, filepath.Join(dir, name)); err != nil {
			return nil, err
		}
		charts[g] = name
	}
	return charts, nil
}

// slug makes a group's name a file name: lower-case words joined by "-".
func slug(s string) string {
	words := strings.FieldsFunc(strings.ToLower(s), func(r rune) bool {
		return (r < 'a' || r > 'z') && (r < '0' || r > '9')
	})
	return strings.Join(words, "-")
}

// swatch is a legend entry: a filled square of a runtime's colour.
type swatch struct{ c color.Color }

func (s swatch) Thumbnail(c *draw.Canvas) {
	pts := []vg.Point{{X: c.Min.X, Y: c.Min.Y}, {X: c.Min.X, Y: c.Max.Y}, {X: c.Max.X, Y: c.Max.Y}, {X: c.Max.X, Y: c.Min.Y}}
	c.FillPolygon(s.c, c.ClipPolygonY(pts))
}

var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
}

func runtimesOf(cases []*Case) []string {
	seen := map[string]bool{}
	var out []string
	for _, c := range cases {
		for _, s := range c.Series {
			if !seen[s.Runtime] {
				seen[s.Runtime] = true
				out = append(out, s.Runtime)
			}
		}
	}
	return out
}

func shortName(s string) string {
	if i := strings.Index(s, " ("); i > 0 {
		return s[:i]
	}
	return s
}
