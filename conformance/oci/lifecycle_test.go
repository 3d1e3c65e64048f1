package oci_test

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/testutil"
	bruntime "github.com/berth-runtime/berth/runtime"
)

func specMount(dst, typ, src string, opts ...string) specs.Mount {
	return specs.Mount{Destination: dst, Type: typ, Source: src, Options: opts}
}

// TestLifecycle walks one container through create, start, ps, pause,
// resume, kill and delete, checking state and list at every step.
func TestLifecycle(t *testing.T) {
	b := newBerth(t)
	const id = "life"
	bundle := testutil.NewBundle(t, id, "sh", "-c", "trap 'echo term; exit 0' TERM; while true; do sleep 0.1; done")
	bundle.Spec.Annotations = map[string]string{"org.example.note": "hello"}
	bundle.Save(t)
	b.deleteOnCleanup(id)

	b.ok("create", "-b", bundle.Dir, id)
	st := b.state(id)
	if st.Status != "created" || st.Pid <= 0 || st.ID != id || st.Bundle != bundle.Dir ||
		st.Rootfs != bundle.Rootfs() || st.OCIVersion == "" || st.Annotations["org.example.note"] != "hello" ||
		time.Since(st.Created) > time.Minute || st.Owner != "root" {
		t.Fatalf("state after create: %+v", st)
	}
	// The init waits for start: it runs berth's init, not the user's sh.
	if comm := readTrim(t, "/proc/"+strconv.Itoa(st.Pid)+"/comm"); comm == "sh" {
		t.Fatalf("user process runs before start")
	}
	checkList(t, b, id, "created")

	b.ok("start", id)
	b.waitStatus(id, "running")
	if r := b.run("start", id); r.ExitCode != 1 || !strings.Contains(r.Stderr, "already running") {
		t.Fatalf("second start: %s", r)
	}

	var pids []int
	if err := json.Unmarshal([]byte(b.ok("ps", "--format", "json", id).Stdout), &pids); err != nil || !slices.Contains(pids, st.Pid) {
		t.Fatalf("ps json %v (err %v) lacks init pid %d", pids, err, st.Pid)
	}
	table := b.ok("ps", id).Stdout
	if !strings.Contains(table, "PID") || !strings.Contains(table, "sleep") && !strings.Contains(table, "sh") {
		t.Fatalf("ps table:\n%s", table)
	}

	b.ok("pause", id)
	if st := b.state(id); st.Status != "paused" {
		t.Fatalf("after pause: %s", st.Status)
	}
	// v1: freezer.state FROZEN; v2: cgroup.freeze 1.
	if f := cgroupFile(t, id, "freezer", "freezer.state", "cgroup.freeze"); readTrim(t, f) != "FROZEN" && readTrim(t, f) != "1" {
		t.Fatalf("freezer %s: %q, want FROZEN or 1", f, readTrim(t, f))
	}
	b.ok("resume", id)
	b.waitStatus(id, "running")
	if r := b.run("resume", id); r.ExitCode != 1 || !strings.Contains(r.Stderr, "not paused") {
		t.Fatalf("resume of running container: %s", r)
	}

	if r := b.run("delete", id); r.ExitCode != 1 || !strings.Contains(r.Stderr, "not stopped") {
		t.Fatalf("delete of running container: %s", r)
	}
	b.ok("kill", id) // SIGTERM by default; the trap exits 0
	b.waitStatus(id, "stopped")
	if st := b.state(id); st.Pid != 0 {
		t.Fatalf("stopped container reports pid %d", st.Pid)
	}
	if r := b.run("start", id); r.ExitCode != 1 || !strings.Contains(r.Stderr, "stopped") {
		t.Fatalf("start of stopped container: %s", r)
	}
	b.ok("delete", id)
	assertGone(t, b, id)
	if out := b.ok("list", "-q").Stdout; out != "" {
		t.Fatalf("list after delete: %q", out)
	}
}

func checkList(t *testing.T, b *cli, id, status string) {
	t.Helper()
	if q := b.ok("list", "-q").Stdout; q != id+"\n" {
		t.Fatalf("list -q: %q", q)
	}
	table := b.ok("list").Stdout
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "ID PID STATUS BUNDLE CREATED OWNER" {
		t.Fatalf("list table:\n%s", table)
	}
	if f := strings.Fields(lines[1]); f[0] != id || f[2] != status {
		t.Fatalf("list row %q", lines[1])
	}
	var states []bruntime.State
	if err := json.Unmarshal([]byte(b.ok("list", "--format", "json").Stdout), &states); err != nil {
		t.Fatal(err)
	}
	if len(states) != 1 || states[0].ID != id || states[0].Status != status {
		t.Fatalf("list json: %+v", states)
	}
}

func TestListEmptyAndBadFormat(t *testing.T) {
	b := newBerth(t)
	if r := b.ok("list", "--format", "json"); strings.TrimSpace(r.Stdout) != "null" {
		t.Fatalf("empty list json: %q", r.Stdout)
	}
	if r := b.run("list", "--format", "yaml"); r.ExitCode != 1 || !strings.Contains(r.Stderr, "invalid format") {
		t.Fatalf("bad format: %s", r)
	}
	missing := filepath.Join(t.TempDir(), "nope")
	if r := (&cli{t: t, bin: b.bin, root: missing}).run("list"); r.ExitCode != 1 {
		t.Fatalf("list with a missing explicit root: %s", r)
	}
}

func TestKillSignals(t *testing.T) {
	b := newBerth(t)
	const id = "kill"
	bundle := testutil.NewBundle(t, id, "sh", "-c", "trap 'echo usr1 >> /tmp/log' USR1; touch /tmp/ready; while true; do sleep 0.1; done")
	b.deleteOnCleanup(id)
	b.ok("run", "-d", "-b", bundle.Dir, id)
	b.waitFile(id, "/tmp/ready")
	// Standard signals do not queue: send each form of the name once the
	// previous one has been handled.
	for i, sig := range []string{"USR1", "SIGUSR1", "usr1", "10"} {
		b.ok("kill", id, sig)
		deadline := time.Now().Add(10 * time.Second)
		for {
			// The first trap may not have made the log yet.
			r := b.run("exec", id, "cat", "/tmp/log")
			if r.ExitCode == 0 && strings.Count(r.Stdout, "usr1") == i+1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after kill %s: trap log %q, want %d lines", sig, r.Stdout, i+1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if r := b.run("kill", id, "SIGNOPE"); r.ExitCode != 1 || !strings.Contains(r.Stderr, `unknown signal "SIGNOPE"`) {
		t.Fatalf("bad signal: %s", r)
	}
	b.ok("kill", id, "KILL")
	b.waitStatus(id, "stopped")
	if r := b.run("kill", id, "KILL"); r.ExitCode != 1 || !strings.Contains(r.Stderr, "not running") {
		t.Fatalf("kill of stopped container: %s", r)
	}
	b.ok("kill", "--all", id, "KILL")
}

func TestDeleteForce(t *testing.T) {
	b := newBerth(t)
	bundle := testutil.NewBundle(t, "delf", "sleep", "300")
	b.deleteOnCleanup("delf")
	b.ok("run", "-d", "-b", bundle.Dir, "delf")
	pid := b.state("delf").Pid
	b.ok("delete", "--force", "delf")
	assertGone(t, b, "delf")
	if testutil.Alive(pid) {
		t.Fatalf("process %d still exists after delete --force", pid)
	}
	// A created (never started) container can be deleted without --force.
	b.ok("create", "-b", bundle.Dir, "delf")
	b.ok("delete", "delf")
	assertGone(t, b, "delf")
	// An unknown id: an error, and success with --force.
	if r := b.run("delete", "nope"); r.ExitCode != 1 || !strings.Contains(r.Stderr, "does not exist") {
		t.Fatalf("delete unknown: %s", r)
	}
	b.ok("delete", "--force", "nope")
}
