package oci_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/testutil"
)

// The OCI runtime-tools validation suite (github.com/opencontainers/
// runtime-tools/validation), built by hack/runtime-tools/build.sh, run
// against berth and against runc as the reference: berth must pass every
// assertion runc passes.

// Environment of the test binary re-executed as the RUNTIME the suite
// calls (see rtvWrapper).
const (
	rtvExecEnv = "BERTH_RTV_EXEC" // the real runtime binary
	rtvRootEnv = "BERTH_RTV_ROOT" // its --root
)

// rtvCgroup holds the cgroups of validations that leave cgroupsPath to the
// runtime; rtvRelCgroup is where validations with a relative cgroupsPath
// run, so that their cgroups land below it.
const (
	rtvCgroup    = testutil.CgroupParent + "/rtv"
	rtvRelCgroup = testutil.CgroupParent + "/rtv-rel"
)

// Validations that create cgroups at an absolute path of their own
// ("/cgrouptest") outside the tests' parent: not run. Resource limits are
// covered by this suite's own tests.
var rtvOutsideParent = []string{
	"delete_resources",
	"linux_cgroups_blkio", "linux_cgroups_cpus", "linux_cgroups_devices", "linux_cgroups_hugetlb",
	"linux_cgroups_memory", "linux_cgroups_network", "linux_cgroups_pids",
}

// Where berth differs from Debian's runc 1.1.5, because libcontainer
// (runc 1.2 and later) is stricter; checked against a runc 1.5.2 built
// from the module, which fails these exactly as berth does. Each entry is
// the error berth must print, so that no other failure hides behind it.
var rtvLibcontainerDiffs = map[string]string{
	// A FIFO has no device numbers; the suite asks for 8:666 on one.
	"linux_devices": "new p device inode /dev/test3 has incorrect major:minor",
	// A bind mount carrying tmpfs options ("mode=755,size=1k").
	"mounts": "bind mounts cannot have any filesystem-specific options applied",
	// RLIMIT_AS of 1 GiB is applied before the seccomp filter is built,
	// and the Go init's reserved address space is already past it.
	"process_rlimits": "error adding seccomp filter rule",
}

func init() {
	// Re-executed as the suite's RUNTIME: put the container's cgroup
	// under the tests' parent and its state under the test's root, then
	// become the real runtime.
	if real := os.Getenv(rtvExecEnv); real != "" {
		rtvWrapper(real, os.Getenv(rtvRootEnv), os.Args[1:])
	}
}

func rtvWrapper(real, root string, args []string) {
	sub, bundle, id := "", "", ""
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "create" || a == "run":
			sub = a
		case (a == "--bundle" || a == "-b") && i+1 < len(args):
			bundle = args[i+1]
		case strings.HasPrefix(a, "--bundle="):
			bundle = strings.TrimPrefix(a, "--bundle=")
		}
	}
	if sub != "" && len(args) > 0 {
		id = args[len(args)-1]
		if bundle == "" {
			bundle, _ = os.Getwd()
		}
		if err := defaultCgroupsPath(filepath.Join(bundle, "config.json"), rtvCgroup+"/"+id); err != nil {
			fmt.Fprintln(os.Stderr, "rtv wrapper:", err)
			os.Exit(1)
		}
	}
	argv := append([]string{filepath.Base(real), "--root", root}, args...)
	err := syscall.Exec(real, argv, os.Environ())
	fmt.Fprintln(os.Stderr, "rtv wrapper: exec", real, err)
	os.Exit(1)
}

// defaultCgroupsPath sets linux.cgroupsPath where the spec has none,
// keeping every other field as it is.
func defaultCgroupsPath(config, path string) error {
	data, err := os.ReadFile(config)
	if err != nil {
		return err
	}
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		return err
	}
	linux, _ := spec["linux"].(map[string]any)
	if linux == nil {
		linux = map[string]any{}
		spec["linux"] = linux
	}
	if p, _ := linux["cgroupsPath"].(string); p != "" {
		return nil
	}
	linux["cgroupsPath"] = path
	if data, err = json.Marshal(spec); err != nil {
		return err
	}
	return os.WriteFile(config, data, 0o644)
}

func TestRuntimeToolsValidation(t *testing.T) {
	testutil.RequireRoot(t)
	dir := os.Getenv("BERTH_RUNTIME_TOOLS")
	if dir == "" {
		dir = filepath.Join(testutil.RepoRoot(), ".cache", "runtime-tools")
	}
	if _, err := os.Stat(filepath.Join(dir, "runtimetest")); err != nil {
		t.Fatalf("runtime-tools validation suite not built in %s: run hack/runtime-tools/build.sh %s (make test does)", dir, dir)
	}
	berth := testutil.Bin(t, "berth")
	runc := testutil.RequireCommand(t, "runc")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	for _, f := range []string{"runtimetest", "rootfs-amd64.tar.gz"} {
		data, err := os.ReadFile(filepath.Join(dir, f))
		must(t, err)
		must(t, os.WriteFile(filepath.Join(work, f), data, 0o755))
	}
	t.Cleanup(func() {
		for _, cg := range []string{rtvCgroup, rtvRelCgroup} {
			if err := cgroups.RemoveTree(cg); err != nil {
				t.Errorf("remove %s: %v", cg, err)
			}
		}
	})
	must(t, cgroups.Create(rtvRelCgroup))

	entries, err := os.ReadDir(dir)
	must(t, err)
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.Contains(name, ".") || name == "runtimetest" || slices.Contains(rtvOutsideParent, name) {
			continue
		}
		t.Run(name, func(t *testing.T) {
			run := func(runtime, root string) (failed []string, out string) {
				cmd := testutil.Cmd{
					Path: filepath.Join(dir, name),
					Dir:  work,
					Env:  []string{"RUNTIME=" + self, rtvExecEnv + "=" + runtime, rtvRootEnv + "=" + root},
				}
				if strings.Contains(name, "cgroups_relative") {
					// Relative cgroup paths are relative to the runtime's own
					// cgroup: run the validation inside ours.
					cmd.Args = append([]string{"-c", `for p in /sys/fs/cgroup/*` + rtvRelCgroup + `/cgroup.procs /sys/fs/cgroup` + rtvRelCgroup + `/cgroup.procs; do [ -f "$p" ] && echo $$ > "$p" 2>/dev/null; done; exec "$@"`, "sh"}, cmd.Path)
					cmd.Path = "/bin/sh"
				}
				r := cmd.Run(t)
				return tapFailures(r.Stdout + r.Stderr), r.Stdout + r.Stderr
			}
			want, _ := run(runc, t.TempDir())
			got, out := run(berth, t.TempDir())
			if msg, ok := rtvLibcontainerDiffs[name]; ok {
				if !strings.Contains(out, msg) {
					t.Fatalf("expected libcontainer's stricter error %q; berth's output:\n%s", msg, out)
				}
				t.Logf("known difference from runc 1.1.5 (runc >= 1.2 behaves as berth): %s", msg)
				return
			}
			for _, f := range got {
				if !slices.Contains(want, f) {
					t.Errorf("berth fails %q, which runc passes", f)
				}
			}
			if t.Failed() {
				t.Logf("berth's output:\n%s", out)
			}
			if len(want) > 0 {
				t.Logf("runc fails too, so not held against berth: %q", want)
			}
		})
	}
}

var (
	tapNotOK = regexp.MustCompile(`(?m)^not ok \d+ - (.*)$`)
	// A validation that cannot even start prints no TAP plan: that counts
	// as one failure.
	tapPlan = regexp.MustCompile(`(?m)^1\.\.\d+$`)
)

// tapFailures returns the descriptions of the failed TAP assertions,
// without the numbers (which shift between runs).
func tapFailures(out string) []string {
	var failed []string
	for _, m := range tapNotOK.FindAllStringSubmatch(out, -1) {
		if !strings.Contains(m[1], "# TODO") {
			failed = append(failed, strings.TrimSpace(m[1]))
		}
	}
	if !tapPlan.MatchString(out) {
		failed = append(failed, "the validation printed no TAP plan")
	}
	return failed
}
