package oci_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/testutil"
)

// runningContainer starts a detached busybox container that sleeps, and
// deletes it when the test ends.
func runningContainer(t *testing.T, b *cli, id string) *testutil.Bundle {
	t.Helper()
	bundle := testutil.NewBundle(t, id, "sleep", "300")
	b.deleteOnCleanup(id)
	b.ok("run", "-d", "-b", bundle.Dir, id)
	return bundle
}

func TestExec(t *testing.T) {
	b := newBerth(t)
	runningContainer(t, b, "exec")

	r := b.run("exec", "--env", "FOO=bar", "--env", "BAZ=qux", "--cwd", "/tmp", "--user", "1000:1000", "exec",
		"sh", "-c", `echo "$FOO $BAZ $(pwd) $(id -u):$(id -g)"`)
	if r.ExitCode != 0 || r.Stdout != "bar qux /tmp 1000:1000\n" {
		t.Fatalf("exec: %s", r)
	}
	// The process's exit code is berth's, and arguments after the id are
	// the command's even when they look like flags.
	if r := b.run("exec", "exec", "sh", "-c", "exit 7"); r.ExitCode != 7 {
		t.Fatalf("exec exit code: %s", r)
	}
	if r := b.run("exec", "exec", "ls", "-d", "/"); r.ExitCode != 0 || r.Stdout != "/\n" {
		t.Fatalf("flag-like args: %s", r)
	}
	// stdin reaches the process.
	if r := b.runIn("", []byte("piped\n"), "exec", "exec", "cat"); r.Stdout != "piped\n" {
		t.Fatalf("exec stdin: %s", r)
	}
	// Additional gids and the same pid namespace as init.
	if r := b.run("exec", "-g", "2000", "exec", "sh", "-c", "id -G; ps -o pid,comm | grep -c sleep"); r.Stdout != "0 2000\n1\n" {
		t.Fatalf("exec gids and pidns: %s", r)
	}
}

func TestExecProcessFile(t *testing.T) {
	b := newBerth(t)
	runningContainer(t, b, "execp")
	p := specs.Process{
		Args: []string{"sh", "-c", "echo $X $(pwd)"},
		Env:  []string{"PATH=/bin", "X=from-file"},
		Cwd:  "/etc",
	}
	data, _ := json.Marshal(p)
	path := filepath.Join(t.TempDir(), "process.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := b.run("exec", "--process", path, "execp"); r.ExitCode != 0 || r.Stdout != "from-file /etc\n" {
		t.Fatalf("exec -p: %s", r)
	}
	if err := os.WriteFile(path, []byte(`{"args": []}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := b.run("exec", "-p", path, "execp"); r.ExitCode != 255 || !strings.Contains(r.Stderr, "args must not be empty") {
		t.Fatalf("bad process file: %s", r)
	}
}

func TestExecDetachedWithPidFile(t *testing.T) {
	b := newBerth(t)
	runningContainer(t, b, "execd")
	pidFile := filepath.Join(t.TempDir(), "exec.pid")
	b.ok("exec", "-d", "--pid-file", pidFile, "execd", "sleep", "200")
	pid, err := strconv.Atoi(readTrim(t, pidFile))
	if err != nil || !testutil.Alive(pid) {
		t.Fatalf("pid file %q: process not alive (%v)", readTrim(t, pidFile), err)
	}
	var pids []int
	if err := json.Unmarshal([]byte(b.ok("ps", "-f", "json", "execd").Stdout), &pids); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range pids {
		found = found || p == pid
	}
	if !found {
		t.Fatalf("exec'd pid %d not in ps %v", pid, pids)
	}
}

func TestExecRefusedInStoppedAndPausedContainers(t *testing.T) {
	b := newBerth(t)
	runningContainer(t, b, "execs")
	b.ok("pause", "execs")
	if r := b.run("exec", "execs", "true"); r.ExitCode != 255 || !strings.Contains(r.Stderr, "paused") {
		t.Fatalf("exec in paused: %s", r)
	}
	b.ok("resume", "execs")
	b.ok("kill", "execs", "KILL")
	b.waitStatus("execs", "stopped")
	if r := b.run("exec", "execs", "true"); r.ExitCode != 255 || !strings.Contains(r.Stderr, "stopped") {
		t.Fatalf("exec in stopped: %s", r)
	}
	if r := b.run("exec", "nope", "true"); r.ExitCode != 255 || !strings.Contains(r.Stderr, "does not exist") {
		t.Fatalf("exec in unknown: %s", r)
	}
}

func TestExecCannotBeExecuted(t *testing.T) {
	b := newBerth(t)
	runningContainer(t, b, "execx")
	r := b.run("exec", "execx", "/nonexistent")
	if r.ExitCode != 255 || !strings.Contains(r.Stderr, "/nonexistent") {
		t.Fatalf("exec of a missing binary: %s", r)
	}
	if st := b.state("execx"); st.Status != "running" {
		t.Fatalf("container %s after failed exec", st.Status)
	}
}
