// Package testutil holds what berth's end-to-end suites share: where the
// built binaries are, busybox bundles, running commands with timeouts,
// and the leak checks and clean-up every suite ends with.
package testutil

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	bcgroups "github.com/berth-runtime/berth/cgroups"
	bruntime "github.com/berth-runtime/berth/runtime"
)

// CgroupRoot is the only cgroup the tests create cgroups under.
const CgroupRoot = "/berth-test"

// CgroupParent is this test process's own cgroup below CgroupRoot, named
// by its binary and pid: suites running side by side (go test -p 2, or
// two checkouts) never see or remove each other's cgroups. Main checks
// it is empty after the tests and removes it, and CgroupRoot with it
// once no other suite uses it.
var CgroupParent = cgroupParent()

// cgroupParentEnv passes CgroupParent to the processes a test process
// starts, itself re-executed as a helper among them.
const cgroupParentEnv = "BERTH_TEST_CGROUP_PARENT"

func cgroupParent() string {
	if p := os.Getenv(cgroupParentEnv); p != "" {
		return p
	}
	p := fmt.Sprintf("%s/%s-%d", CgroupRoot, filepath.Base(os.Args[0]), os.Getpid())
	os.Setenv(cgroupParentEnv, p)
	return p
}

// T is the part of testing.TB the helpers use, so that programs other
// than tests (the benchmarks) can use them too.
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	TempDir() string
	Cleanup(func())
}

// RepoRoot is the directory holding go.mod, found upwards from the working
// directory (go test runs in the package's directory). Source paths from
// runtime.Caller are no use here: -trimpath makes them module-relative.
func RepoRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return "."
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}

// BinDir is where the binaries under test are: $BERTH_BIN_DIR, or bin/.
func BinDir() string {
	if d := os.Getenv("BERTH_BIN_DIR"); d != "" {
		return d
	}
	return filepath.Join(RepoRoot(), "bin")
}

// Bin returns the path of a built binary, failing the test if it is
// missing.
func Bin(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(BinDir(), name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s not built (%v): run `make build` first, or set BERTH_BIN_DIR", p, err)
	}
	return p
}

// RequireRoot skips a test that needs root when not run as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: end-to-end tests create namespaces, cgroups and mounts")
	}
}

// Slow marks a test that make test runs and make test-quick leaves out
// (go test -short): chaos, churn, noisy neighbours and the like, which
// take minutes and test what an edit rarely breaks.
func Slow(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("slow: make test runs it, make test-quick (-short) does not")
	}
}

// RequireCommand fails the test when a program the test drives is not
// installed; `make test` installs them all.
func RequireCommand(t T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed; `make test` installs it (hack/install-deps.sh test)", name)
	}
	return p
}

// RequireCRIU fails a test when criu is not installed and skips it where
// `criu check` fails (the kernel lacks what CRIU needs; the skip names
// the failed check): checkpoints are then tested in the VM tier.
func RequireCRIU(t testing.TB) {
	t.Helper()
	RequireCommand(t, "criu")
	if err := criuCheck(); err != nil {
		t.Skipf("CRIU cannot work with this kernel (%v); make test-vm tests checkpoints", err)
	}
}

var criuCheck = sync.OnceValue(bruntime.CheckCRIU)

var busyboxOnce = sync.OnceValues(func() (string, error) {
	p, err := exec.LookPath("busybox")
	if err != nil {
		return "", errors.New("busybox not found; install busybox-static")
	}
	f, err := elf.Open(p)
	if err != nil {
		return "", fmt.Errorf("busybox %s: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return "", fmt.Errorf("busybox %s is dynamically linked; install busybox-static", p)
		}
	}
	return p, nil
})

// BusyboxRootfs fills dir with a root filesystem of static busybox: every
// applet as a symlink in /bin, and the directories programs expect.
func BusyboxRootfs(t T, dir string) {
	t.Helper()
	if err := MakeBusyboxRootfs(dir); err != nil {
		t.Fatal(err)
	}
}

// MakeBusyboxRootfs is BusyboxRootfs for programs that are not tests.
func MakeBusyboxRootfs(dir string) error {
	bb, err := busyboxOnce()
	if err != nil {
		return err
	}
	for _, d := range []string{"bin", "dev", "etc", "proc", "sys", "tmp", "root", "var/run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		return err
	}
	applets, err := appletsOnce()
	if err != nil {
		return err
	}
	for _, a := range applets {
		if a == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\nuser:x:1000:1000:user:/tmp:/bin/sh\n",
		"etc/group":  "root:x:0:\nnogroup:x:65534:\nuser:x:1000:\nextra:x:2000:user\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

var appletsOnce = sync.OnceValues(func() ([]string, error) {
	bb, err := busyboxOnce()
	if err != nil {
		return nil, err
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	return strings.Fields(string(out)), nil
})

// Bundle is an OCI bundle in a temporary directory.
type Bundle struct {
	Dir  string
	ID   string
	Spec *specs.Spec
}

// NewBundle makes a busybox bundle running args (non-interactive) with
// berth's hardened default spec, its cgroup under CgroupParent.
func NewBundle(t testing.TB, id string, args ...string) *Bundle {
	t.Helper()
	dir := t.TempDir()
	BusyboxRootfs(t, filepath.Join(dir, "rootfs"))
	spec, err := bruntime.DefaultSpec()
	if err != nil {
		t.Fatal(err)
	}
	spec.Process.Terminal = false
	// Tests write into their rootfs; each has its own copy.
	spec.Root.Readonly = false
	if len(args) > 0 {
		spec.Process.Args = args
	}
	spec.Linux.CgroupsPath = ContainerCgroupsPath(id)
	b := &Bundle{Dir: dir, ID: id, Spec: spec}
	b.Save(t)
	return b
}

// Save writes the bundle's spec to config.json.
func (b *Bundle) Save(t testing.TB) {
	t.Helper()
	data, err := json.MarshalIndent(b.Spec, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b.Dir, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Rootfs is the bundle's root filesystem directory.
func (b *Bundle) Rootfs() string { return filepath.Join(b.Dir, "rootfs") }

// Result is what a finished command did.
type Result struct {
	Stdout   string
	Stderr   string
	ExitCode int
}

func (r Result) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.ExitCode, r.Stdout, r.Stderr)
}

// CommandTimeout bounds every command the suites run, so a hang fails the
// test instead of stalling CI.
const CommandTimeout = 2 * time.Minute

// Cmd describes a command to run.
type Cmd struct {
	Path  string
	Args  []string
	Dir   string
	Stdin []byte
	Env   []string
}

// Run runs the command to completion. Only failing to start it at all
// fails the test; its exit code is the caller's to check. Output goes
// through files, not pipes: a detached container keeps the command's
// stdio open after the command has exited.
func (c Cmd) Run(t testing.TB) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Path, c.Args...)
	cmd.Dir = c.Dir
	if c.Env != nil {
		cmd.Env = append(os.Environ(), c.Env...)
	}
	stdout, stderr := tempFile(t), tempFile(t)
	defer stdout.Close()
	defer stderr.Close()
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if c.Stdin != nil {
		cmd.Stdin = bytes.NewReader(c.Stdin)
	}
	// A new process group, so that a timeout kills what the command
	// started too (only processes this test started).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	res := Result{Stdout: readAll(t, stdout), Stderr: readAll(t, stderr)}
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("%s %s: timed out after %s; stdout %q stderr %q", c.Path, strings.Join(c.Args, " "), CommandTimeout, res.Stdout, res.Stderr)
	case err == nil:
	case errors.As(err, &exitErr):
		res.ExitCode = exitErr.ExitCode()
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			res.ExitCode = 128 + int(ws.Signal())
		}
	default:
		t.Fatalf("%s %s: %v", c.Path, strings.Join(c.Args, " "), err)
	}
	return res
}

func tempFile(t testing.TB) *os.File {
	t.Helper()
	f, err := os.CreateTemp("", "berth-test-out-*")
	if err != nil {
		t.Fatal(err)
	}
	// Unlinked at once: nothing to clean up, even after a crash.
	os.Remove(f.Name())
	return f
}

func readAll(t testing.TB, f *os.File) string {
	t.Helper()
	if _, err := f.Seek(0, 0); err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// Alive reports whether pid is a live process: not gone and not a zombie
// waiting for its parent (a detached container's init is reparented to
// the host's init, which reaps it when it gets to it).
func Alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	state := s[i+2]
	return state != 'Z' && state != 'X'
}

// Main runs a suite's tests, then checks that they left no cgroup under
// CgroupParent, and removes it. A leak fails the run.
func Main(m *testing.M) {
	MainWith(m, nil)
}

// MainWith is Main with suite-wide fixtures: setup runs first with a
// Scratch whose clean-ups run after the tests (and before the leak
// check); a setup error fails the suite without running it.
func MainWith(m *testing.M, setup func(*Scratch) error) {
	code := 0
	if setup != nil {
		dir, err := os.MkdirTemp("", "berth-suite-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "suite setup:", err)
			os.Exit(1)
		}
		s := NewScratch(dir)
		if err := Guard(func() {
			if err := setup(s); err != nil {
				s.Fatal(err)
			}
		}); err != nil {
			fmt.Fprintln(os.Stderr, "suite setup:", err)
			code = 1
		} else {
			code = m.Run()
		}
		s.Close()
		for _, e := range s.Errors() {
			fmt.Fprintln(os.Stderr, "suite clean-up:", e)
			code = 1
		}
		_ = os.RemoveAll(dir)
	} else {
		code = m.Run()
	}
	if os.Geteuid() == 0 {
		if err := checkCgroupLeaks(); err != nil {
			fmt.Fprintln(os.Stderr, "LEAK:", err)
			if code == 0 {
				code = 1
			}
		}
		if err := bcgroups.RemoveTree(CgroupParent); err != nil {
			fmt.Fprintln(os.Stderr, "clean up:", err)
			if code == 0 {
				code = 1
			}
		}
		RemoveCgroupIfUnused(CgroupRoot)
		if CgroupDriver() == bcgroups.Systemd {
			if err := StopSlice(SystemdSlice); err != nil {
				fmt.Fprintln(os.Stderr, "clean up:", err)
				if code == 0 {
					code = 1
				}
			}
			// berthtest.slice too, once no other suite has a slice in it.
			if entries, err := os.ReadDir("/sys/fs/cgroup/berthtest.slice"); err == nil && !hasDir(entries) {
				_ = StopSlice("berthtest.slice")
			}
		}
	}
	os.Exit(code)
}

func hasDir(entries []os.DirEntry) bool {
	for _, e := range entries {
		if e.IsDir() {
			return true
		}
	}
	return false
}

// RemoveCgroupIfUnused removes the cgroup path in every hierarchy where
// it has no child cgroup left (another suite's); rmdir refuses the others.
func RemoveCgroupIfUnused(path string) {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*" + path)
	dirs = append(dirs, "/sys/fs/cgroup"+path)
	for _, d := range dirs {
		_ = os.Remove(d)
	}
}

// checkCgroupLeaks lists cgroups left below CgroupParent in any hierarchy,
// and below SystemdSlice.
func checkCgroupLeaks() error {
	var leaks []string
	roots, _ := filepath.Glob("/sys/fs/cgroup/*" + CgroupParent)
	for _, p := range []string{CgroupParent, SlicePath(SystemdSlice)} {
		if fi, err := os.Stat("/sys/fs/cgroup" + p); err == nil && fi.IsDir() {
			roots = append(roots, "/sys/fs/cgroup"+p)
		}
	}
	for _, root := range roots {
		entries, err := os.ReadDir(root)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if e.IsDir() {
				leaks = append(leaks, filepath.Join(root, e.Name()))
			}
		}
	}
	if len(leaks) > 0 {
		return fmt.Errorf("cgroups left behind: %s", strings.Join(leaks, ", "))
	}
	return nil
}

// RemoveIfNew records which of paths exist now; the function it returns
// removes those that did not, with everything in them. For daemons under
// test that write to fixed host paths whatever they are told (the
// kubelet's device-plugin socket, containerd's CNI cache).
func RemoveIfNew(paths ...string) func() error {
	var created []string
	for _, p := range paths {
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			created = append(created, p)
		}
	}
	return func() error {
		var errs []error
		for _, p := range created {
			errs = append(errs, os.RemoveAll(p))
		}
		return errors.Join(errs...)
	}
}

// timeScaleEnv stretches the waits of tests whose timing matters (a
// chaos loop's kill intervals): the VM tier sets it where it emulates
// the CPU (3 to 7 times slower for exec-heavy work).
const timeScaleEnv = "BERTH_TEST_TIME_SCALE"

// Scaled is d stretched by $BERTH_TEST_TIME_SCALE (1 unless set).
func Scaled(d time.Duration) time.Duration {
	if f, err := strconv.ParseFloat(os.Getenv(timeScaleEnv), 64); err == nil && f > 0 {
		return time.Duration(float64(d) * f)
	}
	return d
}
