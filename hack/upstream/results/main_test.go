package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A JUnit report shaped as ginkgo v2 writes it: the suite's setup nodes,
// a spec outside the focus, and specs that pass, fail, skip themselves
// and are skipped by skip.txt.
const junitXML = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="7" disabled="0" errors="0" failures="2" time="100">
  <testsuite name="Kubernetes e2e suite" package="/e2e" tests="7" skipped="3" failures="2" errors="0" time="100" timestamp="2026-12-01T09:00:00">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="5"></testcase>
    <testcase name="[It] [sig-node] Pods should run [NodeConformance] [sig-node, NodeConformance]" classname="Kubernetes e2e suite" status="passed" time="10"><system-err>long log</system-err></testcase>
    <testcase name="[It] [sig-node] Privileged should add a dummy link [NodeConformance]" classname="Kubernetes e2e suite" status="failed" time="10">
      <failure message="ip link add: not supported" type="failed">details</failure><system-err>log</system-err>
    </testcase>
    <testcase name="[It] [sig-node] Probes should restart [NodeConformance]" classname="Kubernetes e2e suite" status="RUNTIME" time="10">
      <failure message="container was not restarted" type="failed"></failure>
    </testcase>
    <testcase name="[It] [sig-node] Windows things [Feature:Windows] [NodeConformance]" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[It] [sig-node] Needs two nodes [NodeConformance]" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped - only 1 node"></skipped></testcase>
    <testcase name="[It] [sig-storage] Not in focus" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
  </testsuite>
</testsuites>`

func writeRun(t *testing.T, dir, runtime, status string) string {
	t.Helper()
	d := filepath.Join(dir, runtime)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "junit.xml"), []byte(strings.ReplaceAll(junitXML, "RUNTIME", status)), 0o644); err != nil {
		t.Fatal(err)
	}
	return runtime + "=" + d
}

func writeFile(t *testing.T, path, text string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestReport(t *testing.T) {
	dir := t.TempDir()
	skip := writeFile(t, filepath.Join(dir, "skip.txt"), "# comment\n\\[Feature:Windows\\]   # no Windows nodes\n")
	triage := writeFile(t, filepath.Join(dir, "triage.txt"), "environment dummy link # the kernel has no CONFIG_DUMMY\n")
	out := filepath.Join(dir, "RESULTS.md")

	// The probe spec fails on berth only: berth's column is not clean.
	ok, err := run(`\[NodeConformance\]`, `Not in focus`, skip, triage, out, dir, "`make e2e-upstream`", "", []string{
		writeRun(t, dir, "berth", "failed"), writeRun(t, dir, "containerd", "passed")})
	if err != nil {
		t.Fatal(err)
	}
	if ok {
		t.Error("berth failed a spec containerd passed, and the report says its column is clean")
	}
	md, _ := os.ReadFile(out)
	for _, want := range []string{
		"| berth | 1 | 2 | 2 | 5 | 1m40s |",
		"| containerd | 2 | 1 | 2 | 5 | 1m40s |",
		"| [sig-node] Privileged should add a dummy link [NodeConformance] | environment | the kernel has no CONFIG_DUMMY |",
		"| [sig-node] Probes should restart [NodeConformance] | untriaged | container was not restarted |",
		"| [sig-node] Probes should restart [NodeConformance] | failed | passed |",
		"berth: 1 skipped by skip.txt: no Windows nodes (1); 1 skipped themselves",
	} {
		if !strings.Contains(string(md), want) {
			t.Errorf("RESULTS.md lacks %q:\n%s", want, md)
		}
	}
	junit, err := os.ReadFile(filepath.Join(dir, "junit-berth.xml"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(junit), "Not in focus") || strings.Contains(string(junit), "long log") || !strings.Contains(string(junit), "<system-err>log</system-err>") {
		t.Errorf("trimmed JUnit report keeps specs out of focus or passed specs' logs, or drops a failure's:\n%s", junit)
	}

	// Both fail the probe spec, triaged as the environment's: clean.
	writeFile(t, triage, "environment dummy link # no CONFIG_DUMMY\nenvironment Probes # slow machine\n")
	ok, err = run(`\[NodeConformance\]`, `Not in focus`, skip, triage, out, "", "`make e2e-upstream`", "", []string{
		writeRun(t, dir, "berth", "timedout"), writeRun(t, dir, "containerd", "timedout")})
	if err != nil || !ok {
		t.Errorf("every berth failure is the environment's: ok %v, err %v", ok, err)
	}
}

func TestPatternsNeedAReason(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		text    string
		classed bool
	}{
		{"\\[Feature:Windows\\]\n", false},
		{"berth Probes\n", true},
		{"flaky Probes # a class that is not one\n", true},
		{"Probes[ # bad regexp\n", false},
	} {
		p := writeFile(t, filepath.Join(dir, "p.txt"), tc.text)
		if _, err := readPatterns(p, tc.classed); err == nil {
			t.Errorf("%q read without an error", tc.text)
		}
	}
}

// run.sh's second pass: the [Serial] specs in junit-serial.xml, skipped
// in junit.xml as the first pass's label filter leaves them, and every
// spec of e2e.test in both reports.
const serialXML = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="4" disabled="0" errors="0" failures="0" time="50">
  <testsuite name="Kubernetes e2e suite" package="/e2e" tests="4" skipped="3" failures="0" errors="0" time="50" timestamp="2026-12-01T10:00:00">
    <testcase name="[It] [sig-node] Pods should run [NodeConformance] [sig-node, NodeConformance]" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[It] [sig-node] Windows things [Feature:Windows] [NodeConformance]" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[It] [sig-apps] Daemon set should run [NodeConformance] [Serial] [sig-apps, NodeConformance, Serial]" classname="Kubernetes e2e suite" status="passed" time="40"></testcase>
  </testsuite>
</testsuites>`

func TestSerialPass(t *testing.T) {
	dir := t.TempDir()
	skip := writeFile(t, filepath.Join(dir, "skip.txt"), "\\[Feature:Windows\\]   # no Windows nodes\n")
	triage := writeFile(t, filepath.Join(dir, "triage.txt"), "environment dummy link # no CONFIG_DUMMY\nenvironment Probes # slow machine\n")
	out := filepath.Join(dir, "RESULTS.md")
	arg := writeRun(t, dir, "berth", "failed")
	parallel := strings.Replace(junitXML, "</testsuite>",
		`<testcase name="[It] [sig-apps] Daemon set should run [NodeConformance] [Serial] [sig-apps, NodeConformance, Serial]" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase></testsuite>`, 1)
	writeFile(t, filepath.Join(dir, "berth", "junit.xml"), strings.ReplaceAll(parallel, "RUNTIME", "failed"))
	writeFile(t, filepath.Join(dir, "berth", "junit-serial.xml"), serialXML)
	ok, err := run(`\[NodeConformance\]`, `Not in focus`, skip, triage, out, dir, "`make e2e-upstream`", "", []string{arg})
	if err != nil || !ok {
		t.Fatalf("ok %v, err %v", ok, err)
	}
	md, _ := os.ReadFile(out)
	for _, want := range []string{
		// The serial spec counts once, as passed; the two passes' times add.
		"| berth | 2 | 2 | 2 | 6 | 2m30s |",
		// Skipped by skip.txt in both reports, counted once.
		"berth: 1 skipped by skip.txt: no Windows nodes (1); 1 skipped themselves",
	} {
		if !strings.Contains(string(md), want) {
			t.Errorf("RESULTS.md lacks %q:\n%s", want, md)
		}
	}
	junit, _ := os.ReadFile(filepath.Join(dir, "junit-berth.xml"))
	if n := strings.Count(string(junit), "Daemon set should run"); n != 1 || !strings.Contains(string(junit), `status="passed" time="40"`) {
		t.Errorf("the serial spec is in the trimmed report %d times, or not as passed:\n%s", n, junit)
	}
}

func TestLogTail(t *testing.T) {
	if got := logTail("short"); got != "short" {
		t.Errorf("a short log changed: %q", got)
	}
	long := strings.Repeat("x", maxLog) + "the failure"
	got := logTail(long)
	if !strings.HasSuffix(got, "the failure") || !strings.HasPrefix(got, "[the first 11 bytes of the log are cut]") || len(got) > maxLog+64 {
		t.Errorf("logTail of %d bytes: %d bytes, starting %q", len(long), len(got), got[:50])
	}
}
