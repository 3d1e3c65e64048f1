package oci_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/testutil"
)

// TestBadInput feeds berth broken bundles and wrong requests. Each must
// fail with exit code 1 and one clear line on stderr, and leave no state
// directory, cgroup or mount behind.
// badInputCase is one bundle TestBadInput breaks.
type badInputCase struct {
	name    string
	id      string
	prepare func(t *testing.T, bundle *testutil.Bundle) // may break the bundle
	args    func(bundle *testutil.Bundle) []string
	want    string
}

func TestBadInput(t *testing.T) {
	b := newBerth(t)
	cases := []badInputCase{
		{
			name:    "missing config.json",
			prepare: func(t *testing.T, bd *testutil.Bundle) { must(t, os.Remove(filepath.Join(bd.Dir, "config.json"))) },
			want:    "config.json not found",
		},
		{
			name:    "malformed config.json",
			prepare: writeConfig(`{"ociVersion": "1.0.2", "process": {`),
			want:    "truncated",
		},
		{
			name:    "syntax error with position",
			prepare: writeConfig("{\n  \"ociVersion\": \"1.0.2\",\n  \"process\": {,}\n}"),
			want:    "invalid JSON at line 3, column 15",
		},
		{
			name:    "wrong type",
			prepare: writeConfig(`{"ociVersion": "1.0.2", "process": {"args": "sh"}}`),
			want:    `field "process.args" wants []string`,
		},
		{
			name:    "null config",
			prepare: writeConfig(`null`),
			want:    "config cannot be null",
		},
		{
			name:    "rootfs does not exist",
			prepare: func(t *testing.T, bd *testutil.Bundle) { must(t, os.RemoveAll(bd.Rootfs())) },
			want:    "rootfs " + "%ROOTFS%" + " does not exist",
		},
		{
			name: "bundle does not exist",
			args: func(bd *testutil.Bundle) []string { return []string{"run", "-b", bd.Dir + "/nope"} },
			want: "does not exist",
		},
		{
			name: "process cannot be found",
			prepare: func(t *testing.T, bd *testutil.Bundle) {
				bd.Spec.Process.Args = []string{"/nonexistent"}
				bd.Save(t)
			},
			want: "/nonexistent",
		},
		{
			name: "process is not executable",
			prepare: func(t *testing.T, bd *testutil.Bundle) {
				bd.Spec.Process.Args = []string{"/etc/passwd"}
				bd.Save(t)
			},
			want: "permission denied",
		},
		{
			name: "process cannot be found by create",
			prepare: func(t *testing.T, bd *testutil.Bundle) {
				bd.Spec.Process.Args = []string{"nosuchcommand"}
				bd.Save(t)
			},
			args: func(bd *testutil.Bundle) []string { return []string{"create", "-b", bd.Dir} },
			want: "executable file not found",
		},
		{
			name: "empty args",
			prepare: func(t *testing.T, bd *testutil.Bundle) {
				bd.Spec.Process.Args = nil
				bd.Save(t)
			},
			want: "process.args must not be empty",
		},
		{
			name: "relative cwd",
			prepare: func(t *testing.T, bd *testutil.Bundle) {
				bd.Spec.Process.Cwd = "tmp"
				bd.Save(t)
			},
			want: "must be an absolute path",
		},
		mismatchedCgroupsPath(),
		{
			name: "unknown rlimit",
			prepare: func(t *testing.T, bd *testutil.Bundle) {
				bd.Spec.Process.Rlimits[0].Type = "RLIMIT_BOGUS"
				bd.Save(t)
			},
			want: "RLIMIT_BOGUS",
		},
		{
			name: "invalid id",
			id:   "bad/id",
			want: `invalid container id "bad/id"`,
		},
		{name: "start unknown id", args: fixed("start", "ghost"), want: "does not exist"},
		{name: "state unknown id", args: fixed("state", "ghost"), want: "does not exist"},
		{name: "kill unknown id", args: fixed("kill", "ghost", "KILL"), want: "does not exist"},
		{name: "pause unknown id", args: fixed("pause", "ghost"), want: "does not exist"},
		{name: "ps unknown id", args: fixed("ps", "ghost"), want: "does not exist"},
		{name: "events unknown id", args: fixed("events", "--stats", "ghost"), want: "does not exist"},
		{name: "update unknown id", args: fixed("update", "--memory", "1M", "ghost"), want: "does not exist"},
		{name: "invalid signal", args: fixed("kill", "ghost", "SIGBOGUS"), want: `unknown signal "SIGBOGUS"`},
		{name: "signal number out of range", args: fixed("kill", "ghost", "99"), want: "invalid signal number 99"},
		{name: "bad log format", args: fixed("--log-format", "xml", "list"), want: "invalid log-format"},
	}
	before := mountTable(t)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := tc.id
			if id == "" {
				id = "bad" + string(rune('a'+i))
			}
			bundle := testutil.NewBundle(t, "bad-input", "true")
			if tc.prepare != nil {
				tc.prepare(t, bundle)
			}
			args := []string{"run", "-b", bundle.Dir}
			if tc.args != nil {
				args = tc.args(bundle)
			}
			if args[0] == "run" || args[0] == "create" {
				args = append(args, id)
			}
			r := b.run(args...)
			want := strings.ReplaceAll(tc.want, "%ROOTFS%", bundle.Rootfs())
			stderr := strings.TrimSpace(r.Stderr)
			if r.ExitCode != 1 || !strings.Contains(stderr, want) {
				t.Fatalf("berth %s: %s; want exit 1 and %q on stderr", strings.Join(args, " "), r, want)
			}
			if strings.Contains(stderr, "\n") || !strings.HasPrefix(stderr, "berth: ") {
				t.Errorf("stderr is not one 'berth: ' line: %q", r.Stderr)
			}
			if !strings.Contains(id, "/") {
				assertGone(t, b, id)
			}
		})
	}
	if after := mountTable(t); !slices.Equal(before, after) {
		t.Errorf("mount table changed:\nbefore %v\nafter  %v", before, after)
	}
}

// TestIDInUse checks that a second create with the same id fails without
// harming the first container.
func TestIDInUse(t *testing.T) {
	b := newBerth(t)
	bundle := testutil.NewBundle(t, "dup", "sleep", "300")
	b.deleteOnCleanup("dup")
	b.ok("run", "-d", "-b", bundle.Dir, "dup")
	pid := b.state("dup").Pid
	r := b.run("create", "-b", bundle.Dir, "dup")
	if r.ExitCode != 1 || !strings.Contains(r.Stderr, "already exists") {
		t.Fatalf("second create: %s", r)
	}
	if st := b.state("dup"); st.Status != "running" || st.Pid != pid {
		t.Fatalf("first container after a failed duplicate create: %+v", st)
	}
}

// TestSystemdDriver runs a container under the systemd cgroup driver where
// systemd is PID 1, and checks the clear error where it is not.
func TestSystemdDriver(t *testing.T) {
	b := newBerth(t)
	bundle := testutil.NewBundle(t, "sysd", "true")
	bundle.Spec.Linux.CgroupsPath = "system.slice:berth-test:sysd"
	bundle.Save(t)
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		r := b.run("--systemd-cgroup", "run", "-b", bundle.Dir, "sysd")
		if r.ExitCode != 1 || !strings.Contains(r.Stderr, "needs systemd as init") {
			t.Fatalf("systemd driver without systemd: %s", r)
		}
		assertGone(t, b, "sysd")
		t.Skip("systemd is not PID 1 on this host: only the error path of the systemd driver was tested")
	}
	b.ok("--systemd-cgroup", "run", "-b", bundle.Dir, "sysd")
}

// mismatchedCgroupsPath is a cgroupsPath of the other driver's form.
func mismatchedCgroupsPath() badInputCase {
	if testutil.CgroupDriver() == cgroups.Systemd {
		return badInputCase{
			name: "cgroupfs cgroupsPath with the systemd driver",
			prepare: func(t *testing.T, bd *testutil.Bundle) {
				bd.Spec.Linux.CgroupsPath = "/berth-test/x"
				bd.Save(t)
			},
			want: "the systemd driver expects slice:prefix:name",
		}
	}
	return badInputCase{
		name: "systemd cgroupsPath with the cgroupfs driver",
		prepare: func(t *testing.T, bd *testutil.Bundle) {
			bd.Spec.Linux.CgroupsPath = "system.slice:berth:x"
			bd.Save(t)
		},
		want: "looks like a systemd slice:prefix:name",
	}
}

func fixed(args ...string) func(*testutil.Bundle) []string {
	return func(*testutil.Bundle) []string { return args }
}

func writeConfig(content string) func(*testing.T, *testutil.Bundle) {
	return func(t *testing.T, bd *testutil.Bundle) {
		must(t, os.WriteFile(filepath.Join(bd.Dir, "config.json"), []byte(content), 0o644))
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// mountTable returns the host's mount points.
func mountTable(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			points = append(points, f[4])
		}
	}
	slices.Sort(points)
	return points
}
