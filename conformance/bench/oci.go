package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/testutil"
	bruntime "github.com/berth-runtime/berth/runtime"
)

// CgroupParent holds every cgroup the benchmarks create.
const CgroupParent = "/berth-test/bench"

// OCIRuntime is one runc-compatible CLI under test, with its own state
// root.
type OCIRuntime struct {
	Name string
	Bin  string
	Root string
}

func (r OCIRuntime) command(args ...string) *exec.Cmd {
	return exec.Command(r.Bin, append([]string{"--root", r.Root}, args...)...)
}

// do runs a command; its output is only kept for the error message. The
// output goes to a file, not a pipe: a created or detached container
// keeps its stdio open after the command has exited.
func (r OCIRuntime) do(args ...string) error {
	out, err := os.CreateTemp("", "berth-bench-out-")
	if err != nil {
		return err
	}
	os.Remove(out.Name())
	defer out.Close()
	cmd := r.command(args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		msg, _ := os.ReadFile("/proc/self/fd/" + strconv.Itoa(int(out.Fd())))
		return fmt.Errorf("%s %s: %v: %s", r.Name, strings.Join(args, " "), err, strings.TrimSpace(string(msg)))
	}
	return nil
}

// timed runs a command and returns how long it took.
func (r OCIRuntime) timed(args ...string) (time.Duration, error) {
	start := time.Now()
	err := r.do(args...)
	return time.Since(start), err
}

// OCIBench compares container starts of OCI runtime CLIs.
type OCIBench struct {
	Runtimes []OCIRuntime
	// Floor is the path of the floor program (see BuildFloor).
	Floor  string
	Rounds int
	// Work is a scratch directory for bundles.
	Work string
	Log  func(format string, args ...any)
}

// bundle writes a busybox bundle running args with the given spec.
func (b *OCIBench) bundle(name string, spec *specs.Spec, cgroup string, args ...string) (string, error) {
	dir := filepath.Join(b.Work, name)
	if err := testutil.MakeBusyboxRootfs(filepath.Join(dir, "rootfs")); err != nil {
		return "", err
	}
	spec.Version = "1.0.2" // the newest that all peers (crun 1.8) accept
	spec.Root.Path = "rootfs"
	spec.Process.Terminal = false
	spec.Process.Args = args
	spec.Linux.CgroupsPath = cgroup
	data, err := json.MarshalIndent(spec, "", "\t")
	if err != nil {
		return "", err
	}
	return dir, os.WriteFile(filepath.Join(dir, "config.json"), data, 0o644)
}

// Run measures every OCI case and adds it to res.
func (b *OCIBench) Run(ctx context.Context, res *Results) error {
	// Whatever happens, no benchmark container outlives the benchmark.
	defer func() {
		for _, rt := range b.Runtimes {
			for _, id := range []string{"bench-run", "bench-life", "bench-exec"} {
				_ = rt.do("delete", "--force", id)
			}
		}
	}()
	minimal, err := b.bundle("minimal", bruntime.ExampleSpec(), CgroupParent+"/run", "/bin/true")
	if err != nil {
		return err
	}
	hardSpec, err := bruntime.DefaultSpec()
	if err != nil {
		return err
	}
	hardened, err := b.bundle("hardened", hardSpec, CgroupParent+"/run", "/bin/true")
	if err != nil {
		return err
	}

	runMin := &Case{Group: "OCI start", Name: "run /bin/true (runc's example spec, no seccomp)", Unit: "ms",
		Target: "berth at most 1.5× crun and below runc, in every case of this group",
		Note:   "`<runtime> run` of a busybox bundle whose process is /bin/true, from exec of the CLI to its exit. The spec is runc's `spec` example (no seccomp filter). `floor` is clone() into new pid, mount, uts, ipc and net namespaces + chroot + exec, by a C program of the benchmark's own."}
	runHard := &Case{Group: "OCI start", Name: "run /bin/true (berth's hardened spec, default seccomp)", Unit: "ms",
		Note: "The same with `berth spec`'s hardened default: the Docker/containerd seccomp profile (x86_64, x86 and x32), masked and read-only paths, no_new_privs."}
	lifecycle := &Case{Group: "OCI start", Name: "create + start + delete (runc's example spec)", Unit: "ms",
		Note: "Three invocations, as an engine such as containerd or podman makes them: `create`, `start`, `delete --force`."}
	for round := 0; round < b.Rounds && ctx.Err() == nil; round++ {
		d, err := b.timedFloor(filepath.Join(minimal, "rootfs"))
		record(runMin.SeriesFor("floor"), d, err, b.Log)
		for _, rt := range rotated(b.Runtimes, round) {
			d, err := rt.timed("run", "-b", minimal, "bench-run")
			record(runMin.SeriesFor(rt.Name), d, err, b.Log)
			if err != nil {
				_ = rt.do("delete", "--force", "bench-run")
			}
			d, err = rt.timed("run", "-b", hardened, "bench-run")
			record(runHard.SeriesFor(rt.Name), d, err, b.Log)
			if err != nil {
				_ = rt.do("delete", "--force", "bench-run")
			}
			d, err = b.createStartDelete(rt, minimal)
			record(lifecycle.SeriesFor(rt.Name), d, err, b.Log)
		}
	}
	execCase, err := b.execCase(ctx)
	if err != nil {
		return err
	}
	res.Cases = append(res.Cases, runMin, runHard, lifecycle, execCase)
	return ctx.Err()
}

func (b *OCIBench) timedFloor(rootfs string) (time.Duration, error) {
	start := time.Now()
	out, err := exec.Command(b.Floor, rootfs).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("floor: %v: %s", err, out)
	}
	return time.Since(start), nil
}

func (b *OCIBench) createStartDelete(rt OCIRuntime, bundle string) (time.Duration, error) {
	start := time.Now()
	if err := rt.do("create", "-b", bundle, "bench-life"); err != nil {
		_ = rt.do("delete", "--force", "bench-life")
		return 0, err
	}
	if err := rt.do("start", "bench-life"); err != nil {
		_ = rt.do("delete", "--force", "bench-life")
		return 0, err
	}
	if err := rt.do("delete", "--force", "bench-life"); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// execCase measures `exec /bin/true` into a running container.
func (b *OCIBench) execCase(ctx context.Context) (*Case, error) {
	c := &Case{Group: "OCI start", Name: "exec /bin/true into a running container", Unit: "ms",
		Note: "`<runtime> exec <id> /bin/true` into a container that sleeps, from exec of the CLI to its exit."}
	var started []OCIRuntime
	defer func() {
		for _, rt := range started {
			_ = rt.do("delete", "--force", "bench-exec")
		}
	}()
	for _, rt := range b.Runtimes {
		bundle, err := b.bundle("exec-"+rt.Name, bruntime.ExampleSpec(), CgroupParent+"/exec-"+rt.Name, "sleep", "3600")
		if err != nil {
			return nil, err
		}
		if err := rt.do("run", "-d", "-b", bundle, "bench-exec"); err != nil {
			return nil, err
		}
		started = append(started, rt)
	}
	for round := 0; round < b.Rounds && ctx.Err() == nil; round++ {
		for _, rt := range rotated(b.Runtimes, round) {
			d, err := rt.timed("exec", "bench-exec", "/bin/true")
			record(c.SeriesFor(rt.Name), d, err, b.Log)
		}
	}
	return c, nil
}

func record(s *Series, d time.Duration, err error, log func(string, ...any)) {
	if err != nil {
		s.Errors++
		log("%s: %v", s.Runtime, err)
		return
	}
	s.Add(d)
}

// rotated changes which runtime goes first from round to round, so that
// none always runs right after a particular other.
func rotated[T any](xs []T, round int) []T {
	out := make([]T, len(xs))
	for i := range xs {
		out[i] = xs[(i+round)%len(xs)]
	}
	return out
}
