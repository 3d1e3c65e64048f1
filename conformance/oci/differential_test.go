package oci_test

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/berth-runtime/berth/internal/testutil"
)

// newRunc returns Debian's runc, the reference implementation, with its
// own state root.
func newRunc(t *testing.T) *cli {
	t.Helper()
	testutil.RequireRoot(t)
	return &cli{t: t, bin: testutil.RequireCommand(t, "runc"), root: t.TempDir()}
}

// TestDifferentialAgainstRunc runs the same bundles through runc and berth
// and compares what a caller sees: exit code, stdout and stderr.
func TestDifferentialAgainstRunc(t *testing.T) {
	berth, runc := newBerth(t), newRunc(t)
	cases := []struct {
		name  string
		args  []string
		stdin string
		edit  func(b *testutil.Bundle)
		// outputDiffers: only the exit code is compared (error texts are
		// each runtime's own).
		outputDiffers bool
	}{
		{name: "stdout", args: []string{"echo", "hello world"}},
		{name: "exit code", args: []string{"sh", "-c", "exit 42"}},
		{name: "stderr", args: []string{"sh", "-c", "echo to-stderr >&2; exit 1"}},
		{name: "stdin", args: []string{"sh", "-c", "wc -l"}, stdin: "a\nb\nc\n"},
		{name: "environment", args: []string{"sh", "-c", "env | sort"}},
		{name: "identity", args: []string{"sh", "-c", "id; hostname; pwd"}},
		{name: "user and cwd", args: []string{"sh", "-c", "id; pwd"}, edit: func(b *testutil.Bundle) {
			b.Spec.Process.User.UID, b.Spec.Process.User.GID = 1000, 1000
			b.Spec.Process.Cwd = "/tmp"
		}},
		{name: "capabilities and protections", args: []string{"sh", "-c", "grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status"}},
		{name: "masked paths", args: []string{"sh", "-c", "for f in keys timer_list; do wc -c < /proc/$f; done"}},
		{name: "readonly paths", args: []string{"sh", "-c", "grep -E ' /proc/(sys|bus|fs|irq) ' /proc/self/mounts | cut -d' ' -f2,4 | cut -d, -f1 | sort"}},
		{name: "mounts", args: []string{"sh", "-c", "cut -d' ' -f2,3 /proc/self/mounts | grep -v '^/proc/' | sort"}},
		{name: "namespaces", args: []string{"sh", "-c", "echo pid $$; ls /sys/class/net"}},
		{name: "readonly rootfs", args: []string{"sh", "-c", "touch /x"}, edit: func(b *testutil.Bundle) { b.Spec.Root.Readonly = true }, outputDiffers: true},
		{name: "rlimits", args: []string{"sh", "-c", "ulimit -n; ulimit -Hn"}},
		{name: "missing binary", args: []string{"/nonexistent"}, outputDiffers: true},
		{name: "seccomp denial", args: []string{"unshare", "-U", "true"}, outputDiffers: true},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bundle := testutil.NewBundle(t, "diff", tc.args...)
			if tc.edit != nil {
				tc.edit(bundle)
				bundle.Save(t)
			}
			id := fmt.Sprintf("diff%d", i)
			var stdin []byte
			if tc.stdin != "" {
				stdin = []byte(tc.stdin)
			}
			want := runc.runIn(bundle.Dir, stdin, "run", id)
			want.Stderr = withoutRuncWarnings(want.Stderr)
			got := berth.runIn(bundle.Dir, stdin, "run", id)
			if got.ExitCode != want.ExitCode {
				t.Fatalf("exit code: berth %d, runc %d\nberth: %s\nrunc:  %s", got.ExitCode, want.ExitCode, got, want)
			}
			if tc.outputDiffers {
				return
			}
			if got.Stdout != want.Stdout || got.Stderr != want.Stderr {
				t.Fatalf("output differs\nberth: %s\nrunc:  %s", got, want)
			}
		})
	}
}

// withoutRuncWarnings drops runc's own warnings from a container's stderr:
// Debian's runc 1.1 warns, under the systemd driver, of each default
// device rule whose device the host lacks ("skipping device
// /dev/char/10:200 for systemd"), where libcontainer 1.5 says nothing.
func withoutRuncWarnings(stderr string) string {
	var keep []string
	for _, line := range strings.SplitAfter(stderr, "\n") {
		if strings.HasPrefix(line, "time=") && strings.Contains(line, " level=warning msg=") {
			continue
		}
		keep = append(keep, line)
	}
	return strings.Join(keep, "")
}

// TestDifferentialStateShape compares the JSON of state, list and ps.
func TestDifferentialStateShape(t *testing.T) {
	berth, runc := newBerth(t), newRunc(t)
	bundle := testutil.NewBundle(t, "shape", "sleep", "300")
	bundle.Spec.Annotations = map[string]string{"a": "b"}
	bundle.Save(t)
	for _, c := range []*cli{berth, runc} {
		c.deleteOnCleanup("shape")
		c.ok("create", "-b", bundle.Dir, "shape")
	}
	var bs, rs map[string]any
	mustJSON(t, berth.ok("state", "shape").Stdout, &bs)
	mustJSON(t, runc.ok("state", "shape").Stdout, &rs)
	compareShape(t, "state", bs, rs)
	for _, k := range []string{"id", "status", "bundle", "rootfs", "annotations"} {
		if !reflect.DeepEqual(bs[k], rs[k]) {
			t.Errorf("state %s: berth %v, runc %v", k, bs[k], rs[k])
		}
	}

	var bl, rl []map[string]any
	mustJSON(t, berth.ok("list", "--format", "json").Stdout, &bl)
	mustJSON(t, runc.ok("list", "--format", "json").Stdout, &rl)
	if len(bl) != 1 || len(rl) != 1 {
		t.Fatalf("list: berth %v, runc %v", bl, rl)
	}
	compareShape(t, "list", bl[0], rl[0])
	if bl[0]["owner"] != rl[0]["owner"] || bl[0]["status"] != rl[0]["status"] {
		t.Errorf("list owner/status: berth %v/%v, runc %v/%v", bl[0]["owner"], bl[0]["status"], rl[0]["owner"], rl[0]["status"])
	}
	bt := strings.Fields(strings.SplitN(berth.ok("list").Stdout, "\n", 2)[0])
	rt := strings.Fields(strings.SplitN(runc.ok("list").Stdout, "\n", 2)[0])
	if !slices.Equal(bt, rt) {
		t.Errorf("list table header: berth %v, runc %v", bt, rt)
	}

	for _, c := range []*cli{berth, runc} {
		c.ok("start", "shape")
		c.waitStatus("shape", "running")
	}
	var bp, rp []int
	mustJSON(t, berth.ok("ps", "-f", "json", "shape").Stdout, &bp)
	mustJSON(t, runc.ok("ps", "-f", "json", "shape").Stdout, &rp)
	if len(bp) != len(rp) {
		t.Errorf("ps: berth %v, runc %v", bp, rp)
	}
	for _, c := range []*cli{berth, runc} {
		c.ok("kill", "shape", "KILL")
		c.waitStatus("shape", "stopped")
	}
	mustJSON(t, berth.ok("state", "shape").Stdout, &bs)
	mustJSON(t, runc.ok("state", "shape").Stdout, &rs)
	if bs["pid"] != rs["pid"] || bs["status"] != rs["status"] {
		t.Errorf("stopped state: berth pid %v status %v, runc pid %v status %v", bs["pid"], bs["status"], rs["pid"], rs["status"])
	}
}

func mustJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("%v in %q", err, s)
	}
}

// compareShape checks both objects have the same keys with values of the
// same JSON types.
func compareShape(t *testing.T, what string, got, want map[string]any) {
	t.Helper()
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("%s: berth lacks key %q", what, k)
			continue
		}
		if reflect.TypeOf(g) != reflect.TypeOf(w) {
			t.Errorf("%s: key %q is %T in berth, %T in runc", what, k, g, w)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: berth has key %q that runc has not", what, k)
		}
	}
}
