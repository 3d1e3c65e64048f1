// Command results turns the ginkgo JUnit reports of hack/upstream/run.sh
// into conformance/upstream/RESULTS.md: one row per runtime (passed,
// failed, skipped, selected), every failure with its triage, the specs
// whose result differs between the runtimes, and a trimmed JUnit report
// per runtime (the selected specs only; ginkgo's lists every spec of
// e2e.test).
//
//	results -focus RE -skip-file skip.txt -triage triage.txt -out RESULTS.md \
//	    -junit-dir conformance/upstream berth=OUT/berth containerd=OUT/containerd
//
// It exits 1 when berth fails a spec that is not triaged as the
// environment's or a stand-in image's, or fails a spec containerd passed:
// the bar, "no failure is berth's".
package main

import (
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
)

func main() {
	focus := flag.String("focus", `\[NodeConformance\]`, "the ginkgo focus of the run (regular expression)")
	exclude := flag.String("exclude", "", "specs left out of the run besides skip.txt's (regular expression)")
	skipFile := flag.String("skip-file", "conformance/upstream/skip.txt", "the run's skip patterns, one per line with its reason")
	triageFile := flag.String("triage", "conformance/upstream/triage.txt", "known failures: CLASS REGEXP # reason")
	out := flag.String("out", "conformance/upstream/RESULTS.md", "the report to write")
	junitDir := flag.String("junit-dir", "", "where to write junit-RUNTIME.xml (the selected specs); empty: none")
	title := flag.String("title", "", "a line under the heading: what ran, where")
	by := flag.String("by", "make e2e-upstream", "the command that made the runs")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: results [flags] RUNTIME=REPORTDIR...")
		os.Exit(2)
	}
	ok, err := run(*focus, *exclude, *skipFile, *triageFile, *out, *junitDir, "`"+*by+"`", *title, flag.Args())
	if err != nil {
		fmt.Fprintf(os.Stderr, "results: %v\n", err)
		os.Exit(2)
	}
	if !ok {
		fmt.Fprintf(os.Stderr, "results: berth has failures that are its own (see %s)\n", *out)
		os.Exit(1)
	}
}

func run(focus, exclude, skipFile, triageFile, out, junitDir, by, title string, args []string) (bool, error) {
	focusRE, err := regexp.Compile(focus)
	if err != nil {
		return false, fmt.Errorf("focus: %w", err)
	}
	var excludeRE *regexp.Regexp
	if exclude != "" {
		if excludeRE, err = regexp.Compile(exclude); err != nil {
			return false, fmt.Errorf("exclude: %w", err)
		}
	}
	skips, err := readPatterns(skipFile, false)
	if err != nil {
		return false, err
	}
	triage, err := readPatterns(triageFile, true)
	if err != nil {
		return false, err
	}
	var runs []*runResult
	for _, a := range args {
		name, dir, found := strings.Cut(a, "=")
		if !found {
			return false, fmt.Errorf("argument %q: want RUNTIME=REPORTDIR", a)
		}
		suites, err := readJUnit(filepath.Join(dir, "junit.xml"))
		if err != nil {
			return false, fmt.Errorf("%s: %w", name, err)
		}
		// run.sh's second pass, the [Serial] specs on one process.
		serial, err := readJUnit(filepath.Join(dir, "junit-serial.xml"))
		switch {
		case err == nil:
			suites.Suites = append(suites.Suites, serial.Suites...)
		case !errors.Is(err, fs.ErrNotExist):
			return false, fmt.Errorf("%s: %w", name, err)
		}
		r := classify(name, suites, focusRE, excludeRE, skips, triage)
		runs = append(runs, r)
		if junitDir != "" {
			if err := writeJUnit(filepath.Join(junitDir, "junit-"+name+".xml"), r.selected); err != nil {
				return false, err
			}
		}
	}
	f, err := os.Create(out)
	if err != nil {
		return false, err
	}
	ok := report(f, by, title, focus, exclude, runs)
	return ok, f.Close()
}

// pattern is one line of skip.txt or triage.txt.
type pattern struct {
	class  string // triage only: berth, image or environment
	re     *regexp.Regexp
	reason string
}

var triageClasses = []string{"berth", "image", "environment"}

// readPatterns reads "REGEXP # reason" lines (skip.txt) or "CLASS REGEXP #
// reason" lines (triage.txt); # starts a comment line too.
func readPatterns(path string, classed bool) ([]pattern, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ps []pattern
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var p pattern
		if idx := strings.LastIndex(line, " # "); idx >= 0 {
			p.reason = strings.TrimSpace(line[idx+3:])
			line = strings.TrimSpace(line[:idx])
		}
		if classed {
			class, rest, _ := strings.Cut(line, " ")
			if !slices.Contains(triageClasses, class) {
				return nil, fmt.Errorf("%s:%d: class %q is not one of %v", path, i+1, class, triageClasses)
			}
			p.class, line = class, strings.TrimSpace(rest)
		}
		if p.reason == "" {
			return nil, fmt.Errorf("%s:%d: no reason (\" # why\")", path, i+1)
		}
		if p.re, err = regexp.Compile(line); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, i+1, err)
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// The JUnit report as ginkgo v2 writes it.
type junitSuites struct {
	XMLName xml.Name     `xml:"testsuites"`
	Suites  []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name      string      `xml:"name,attr"`
	Tests     int         `xml:"tests,attr"`
	Failures  int         `xml:"failures,attr"`
	Skipped   int         `xml:"skipped,attr"`
	Time      float64     `xml:"time,attr"`
	Timestamp string      `xml:"timestamp,attr,omitempty"`
	Cases     []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Status    string        `xml:"status,attr"`
	Time      float64       `xml:"time,attr"`
	Skipped   *junitMessage `xml:"skipped,omitempty"`
	Error     *junitMessage `xml:"error,omitempty"`
	Failure   *junitMessage `xml:"failure,omitempty"`
	SystemErr string        `xml:"system-err,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr,omitempty"`
	Text    string `xml:",chardata"`
}

func readJUnit(path string) (*junitSuites, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s junitSuites
	if err := xml.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return &s, nil
}

// spec is one selected spec's result on one runtime.
type spec struct {
	name    string
	status  string // passed, failed, skipped
	message string // the failure's or the skip's
	// skipReason is the reason of the skip.txt line that skipped it.
	skipReason string
	triage     *pattern
}

type runResult struct {
	runtime  string
	duration time.Duration
	specs    map[string]*spec
	selected []junitCase
	// skippedBy counts the selected specs each skip.txt pattern skipped.
	skippedBy map[string]int
}

func (r *runResult) count(status string) int {
	n := 0
	for _, s := range r.specs {
		if s.status == status {
			n++
		}
	}
	return n
}

// specName is the spec's full text: ginkgo names test cases "[It] <text>
// [label, label]"; the labels repeat the text's tags and go.
func specName(c junitCase) (string, bool) {
	name, ok := strings.CutPrefix(c.Name, "[It] ")
	if i := strings.LastIndex(name, " ["); ok && i >= 0 && strings.HasSuffix(name, "]") && strings.Contains(name[i:], ", ") {
		name = name[:i]
	}
	return name, ok
}

func classify(runtime string, s *junitSuites, focus, exclude *regexp.Regexp, skips, triage []pattern) *runResult {
	r := &runResult{runtime: runtime, specs: map[string]*spec{}, skippedBy: map[string]int{}}
	index := map[string]int{} // spec name → its place in r.selected
	for _, suite := range s.Suites {
		r.duration += time.Duration(suite.Time * float64(time.Second))
		for _, c := range suite.Cases {
			name, ok := specName(c)
			if !ok || !focus.MatchString(name) || (exclude != nil && exclude.MatchString(name)) {
				continue
			}
			sp := &spec{name: name}
			switch c.Status {
			case "passed":
				sp.status = "passed"
				c.SystemErr = "" // the log is kept for failures only
			case "skipped", "pending":
				sp.status = "skipped"
				c.SystemErr = ""
				if c.Skipped != nil {
					sp.message = strings.TrimPrefix(strings.TrimPrefix(c.Skipped.Message, "skipped"), " - ")
				}
				if sp.message == "" {
					for _, p := range skips {
						if p.re.MatchString(name) {
							sp.message = "skip.txt: " + p.reason
							sp.skipReason = p.reason
							break
						}
					}
				}
			default: // failed, panicked, timedout, interrupted, aborted
				sp.status = "failed"
				c.SystemErr = logTail(c.SystemErr)
				if c.Failure != nil {
					sp.message = c.Failure.Message
				} else if c.Error != nil {
					sp.message = c.Error.Message
				}
				if sp.message == "" {
					sp.message = c.Status
				}
				for i := range triage {
					if triage[i].re.MatchString(name) {
						sp.triage = &triage[i]
						break
					}
				}
			}
			// A spec is in every pass's report, skipped by the passes
			// that did not select it; the one that ran it tells.
			if _, ok := r.specs[name]; ok {
				if sp.status != "skipped" {
					r.specs[name] = sp
					r.selected[index[name]] = c
				}
				continue
			}
			index[name] = len(r.selected)
			r.specs[name] = sp
			r.selected = append(r.selected, c)
		}
	}
	for _, sp := range r.specs {
		if sp.status == "skipped" && sp.skipReason != "" {
			r.skippedBy[sp.skipReason]++
		}
	}
	return r
}

// maxLog bounds a failure's log in the trimmed reports: a spec's log can
// be megabytes (the DRA specs' proxy polling), and its end has the
// failure and the namespace's dump.
const maxLog = 64 << 10

// logTail is the last maxLog bytes of log, saying what was cut.
func logTail(log string) string {
	if len(log) <= maxLog {
		return log
	}
	return fmt.Sprintf("[the first %d bytes of the log are cut]\n", len(log)-maxLog) + log[len(log)-maxLog:]
}

// report writes RESULTS.md and says whether berth's column is clean.
func report(w io.Writer, by, title, focus, exclude string, runs []*runResult) bool {
	ok := true
	fmt.Fprintf(w, "# Kubernetes' own end-to-end tests on berth and containerd\n\n")
	fmt.Fprintf(w, "Written by %s (hack/upstream/run.sh, hack/upstream/results).", by)
	if title != "" {
		fmt.Fprintf(w, " %s", title)
	}
	fmt.Fprintf(w, "\n\nFocus: `%s`", focus)
	if exclude != "" {
		fmt.Fprintf(w, ", without `%s`", exclude)
	}
	fmt.Fprintf(w, ". Skipped: what the cluster cannot have (`conformance/upstream/skip.txt`) and what the specs skip themselves.\n\n")
	fmt.Fprintf(w, "| runtime | passed | failed | skipped | selected | time |\n|---|---:|---:|---:|---:|---:|\n")
	for _, r := range runs {
		fmt.Fprintf(w, "| %s | %d | %d | %d | %d | %s |\n", r.runtime, r.count("passed"), r.count("failed"), r.count("skipped"), len(r.specs), r.duration.Round(time.Second))
	}

	fmt.Fprintf(w, "\n## Failures, triaged\n\n")
	fmt.Fprintf(w, "Triage (conformance/upstream/triage.txt): **berth** is berth's own, **image** a stand-in image that differs from the real one, **environment** this machine or cluster; **untriaged** is not known yet.\n")
	for _, r := range runs {
		fmt.Fprintf(w, "\n### %s\n\n", r.runtime)
		failed := r.sorted("failed")
		if len(failed) == 0 {
			fmt.Fprintf(w, "None.\n")
			continue
		}
		fmt.Fprintf(w, "| spec | triage | why |\n|---|---|---|\n")
		for _, s := range failed {
			class, why := "untriaged", brief(s.message)
			if s.triage != nil {
				class, why = s.triage.class, s.triage.reason
			}
			if r.runtime == "berth" && class != "environment" && class != "image" {
				ok = false
			}
			fmt.Fprintf(w, "| %s | %s | %s |\n", cell(s.name), class, cell(why))
		}
	}

	fmt.Fprintf(w, "\n## Where the runtimes differ\n\n")
	var diffs []string
	if len(runs) > 1 {
		names := map[string]bool{}
		for _, r := range runs {
			for n := range r.specs {
				names[n] = true
			}
		}
		for n := range names {
			var cells []string
			same := true
			for _, r := range runs {
				st := "not run"
				if s := r.specs[n]; s != nil {
					st = s.status
				}
				if st != statusOf(runs[0], n) {
					same = false
				}
				cells = append(cells, st)
			}
			if !same {
				diffs = append(diffs, fmt.Sprintf("| %s | %s |", cell(n), strings.Join(cells, " | ")))
			}
			if b, c := byRuntime(runs, "berth", n), byRuntime(runs, "containerd", n); b != nil && c != nil && b.status == "failed" && c.status == "passed" {
				ok = false
			}
		}
	}
	switch {
	case len(runs) == 1:
		fmt.Fprintf(w, "Only %s ran.\n", runs[0].runtime)
	case len(diffs) == 0:
		fmt.Fprintf(w, "Nowhere: every spec has the same result on each runtime.\n")
	default:
		sort.Strings(diffs)
		fmt.Fprintf(w, "| spec |")
		for _, r := range runs {
			fmt.Fprintf(w, " %s |", r.runtime)
		}
		fmt.Fprintf(w, "\n|---|%s\n", strings.Repeat("---|", len(runs)))
		for _, d := range diffs {
			fmt.Fprintln(w, d)
		}
	}

	fmt.Fprintf(w, "\n## Skipped\n\n")
	for _, r := range runs {
		fmt.Fprintf(w, "%s: %d skipped by skip.txt", r.runtime, sumValues(r.skippedBy))
		reasons := make([]string, 0, len(r.skippedBy))
		for reason, n := range r.skippedBy {
			reasons = append(reasons, fmt.Sprintf("%s (%d)", reason, n))
		}
		sort.Strings(reasons)
		if len(reasons) > 0 {
			fmt.Fprintf(w, ": %s", strings.Join(reasons, "; "))
		}
		own := 0
		for _, s := range r.specs {
			if s.status == "skipped" && !strings.HasPrefix(s.message, "skip.txt: ") {
				own++
			}
		}
		fmt.Fprintf(w, "; %d skipped themselves (their own check of the cluster).\n\n", own)
	}
	fmt.Fprintf(w, "The JUnit reports of the selected specs: `junit-<runtime>.xml` beside this file.\n")
	return ok
}

func statusOf(r *runResult, name string) string {
	if s := r.specs[name]; s != nil {
		return s.status
	}
	return "not run"
}

func byRuntime(runs []*runResult, runtime, name string) *spec {
	for _, r := range runs {
		if r.runtime == runtime {
			return r.specs[name]
		}
	}
	return nil
}

func (r *runResult) sorted(status string) []*spec {
	var out []*spec
	for _, s := range r.specs {
		if s.status == status {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func sumValues(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// brief is the start of a failure message, on one line.
func brief(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > 160 {
		s = string(r[:160]) + "…"
	}
	return s
}

// cell makes s safe in a Markdown table cell.
func cell(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}

// writeJUnit writes the selected specs as one suite.
func writeJUnit(path string, cases []junitCase) error {
	s := junitSuite{Name: "Kubernetes e2e suite", Cases: cases}
	for _, c := range cases {
		s.Tests++
		s.Time += c.Time
		switch c.Status {
		case "passed":
		case "skipped", "pending":
			s.Skipped++
		default:
			s.Failures++
		}
	}
	data, err := xml.MarshalIndent(junitSuites{Suites: []junitSuite{s}}, "", "  ")
	if err != nil {
		return err
	}
	data = append([]byte(xml.Header), append(data, '\n')...)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return errors.Join(fmt.Errorf("write %s", path), err)
	}
	return nil
}
