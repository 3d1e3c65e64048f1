package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Case is one comparison: the same figure measured for several runtimes.
type Case struct {
	Group  string    `json:"group"`
	Name   string    `json:"name"`
	Unit   string    `json:"unit"`
	Target string    `json:"target,omitempty"`
	Note   string    `json:"note,omitempty"`
	Series []*Series `json:"series"`
}

// Find returns the case's series for a runtime, or nil.
func (c *Case) Find(runtime string) *Series {
	for _, s := range c.Series {
		if s.Runtime == runtime {
			return s
		}
	}
	return nil
}

// SeriesFor returns the case's series for a runtime, adding it if new.
func (c *Case) SeriesFor(runtime string) *Series {
	for _, s := range c.Series {
		if s.Runtime == runtime {
			return s
		}
	}
	s := &Series{Runtime: runtime}
	c.Series = append(c.Series, s)
	return s
}

// Results is everything one `make bench` measured.
type Results struct {
	Started  time.Time         `json:"started"`
	Finished time.Time         `json:"finished"`
	Machine  Machine           `json:"machine"`
	Versions map[string]string `json:"versions"`
	Notes    []string          `json:"notes,omitempty"`
	// Partial runs (only some groups) do not replace REPORT.md.
	Partial bool    `json:"partial,omitempty"`
	Cases   []*Case `json:"cases"`
}

// Note records something a reader of the report must know.
func (r *Results) Note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// Write stores the raw figures as JSON, the report as Markdown and the
// charts as SVG in dir: <date>.json, <date>.md, <date>-<group>.svg, and
// REPORT.md as a copy of the newest report of every group.
func (r *Results) Write(dir string) (report string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	stamp := r.Started.UTC().Format("2006-01-02T150405Z")
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, stamp+".json"), data, 0o644); err != nil {
		return "", err
	}
	charts, err := r.plot(dir, stamp)
	if err != nil {
		return "", fmt.Errorf("charts: %w", err)
	}
	md := r.markdown(stamp, charts)
	report = filepath.Join(dir, stamp+".md")
	if err := os.WriteFile(report, []byte(md), 0o644); err != nil {
		return "", err
	}
	if !r.Partial {
		if err := os.WriteFile(filepath.Join(dir, "REPORT.md"), []byte(md), 0o644); err != nil {
			return "", err
		}
	}
	return report, nil
}
