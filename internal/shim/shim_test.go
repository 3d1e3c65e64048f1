package shim_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/shim"
	"github.com/berth-runtime/berth/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// harness runs a berth-shim process with its own runtime root.
type harness struct {
	t      *testing.T
	client *shim.Client
	root   string // the runtime's --root
	berth  string
	cmd    *exec.Cmd
}

func startShim(t *testing.T) *harness {
	t.Helper()
	testutil.RequireRoot(t)
	dir := t.TempDir()
	h := &harness{t: t, root: filepath.Join(dir, "runtime"), berth: testutil.Bin(t, "berth")}
	sock := filepath.Join(dir, "shim.sock")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	h.cmd = exec.Command(testutil.Bin(t, "berth-shim"), "--socket", sock, "--state-dir", filepath.Join(dir, "state"),
		"--runtime", h.berth, "--runtime-root", h.root, "--ready-fd", "3", "--id", "test")
	h.cmd.ExtraFiles = []*os.File{w}
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	ready := make([]byte, 1)
	if _, err := r.Read(ready); err != nil {
		t.Fatalf("shim never became ready: %v", err)
	}
	r.Close()
	h.client = &shim.Client{Socket: sock}
	t.Cleanup(h.stop)
	return h
}

// stop deletes whatever containers are left, then the shim.
func (h *harness) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if st, err := h.client.State(ctx); err == nil {
		for _, c := range st.Containers {
			_ = exec.Command(h.berth, "--root", h.root, "delete", "--force", c.ID).Run()
			_ = h.client.Forget(ctx, c.ID, "")
		}
	}
	_ = h.client.Shutdown(ctx)
	done := make(chan struct{})
	go func() { _ = h.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = h.cmd.Process.Kill()
		<-done
		h.t.Error("shim did not exit after shutdown")
	}
}

func (h *harness) berthDo(args ...string) {
	h.t.Helper()
	out, err := exec.Command(h.berth, append([]string{"--root", h.root}, args...)...).CombinedOutput()
	if err != nil {
		h.t.Fatalf("berth %v: %v: %s", args, err, out)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func TestCreateStartLogsAndExit(t *testing.T) {
	h := startShim(t)
	b := testutil.NewBundle(t, "shim-log", "sh", "-c", "echo out-line; echo err-line >&2; printf partial; exit 3")
	logPath := filepath.Join(t.TempDir(), "logs", "0.log")
	var events []shim.Event
	var mu sync.Mutex
	evCtx, stopEvents := context.WithCancel(context.Background())
	defer stopEvents()
	go h.client.Events(evCtx, nil, func(e shim.Event) { mu.Lock(); events = append(events, e); mu.Unlock() })
	time.Sleep(50 * time.Millisecond)

	pid, err := h.client.Create(ctx(t), "shim-log", shim.CreateRequest{Bundle: b.Dir, LogPath: logPath})
	if err != nil || pid <= 0 {
		t.Fatalf("create: %d, %v", pid, err)
	}
	h.berthDo("start", "shim-log")
	exit, err := h.client.Wait(ctx(t), "shim-log", "")
	if err != nil || exit.Code != 3 {
		t.Fatalf("wait: %+v, %v", exit, err)
	}
	data, _ := os.ReadFile(logPath)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	got := map[string]bool{}
	for _, l := range lines {
		f := strings.SplitN(l, " ", 4)
		if len(f) != 4 {
			t.Fatalf("log line %q is not CRI format", l)
		}
		if _, err := time.Parse(time.RFC3339Nano, f[0]); err != nil {
			t.Fatalf("log timestamp %q: %v", f[0], err)
		}
		got[f[1]+" "+f[2]+" "+f[3]] = true
	}
	for _, want := range []string{"stdout F out-line", "stderr F err-line", "stdout P partial"} {
		if !got[want] {
			t.Errorf("log lacks %q:\n%s", want, data)
		}
	}
	st, err := h.client.State(ctx(t))
	if err != nil || len(st.Containers) != 1 || st.Containers[0].Exit == nil || st.Containers[0].Exit.Code != 3 {
		t.Fatalf("state %+v, %v", st, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(events)
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no exit event")
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	if e := events[0]; e.Type != "exit" || e.Process.ID != "shim-log" || e.Process.Exit.Code != 3 {
		t.Fatalf("event %+v", e)
	}
	mu.Unlock()
}

func TestCreateFailureIsReported(t *testing.T) {
	h := startShim(t)
	b := testutil.NewBundle(t, "shim-bad", "/no/such/binary")
	_, err := h.client.Create(ctx(t), "shim-bad", shim.CreateRequest{Bundle: b.Dir})
	if err == nil || !strings.Contains(err.Error(), "/no/such/binary") {
		t.Fatalf("create of a missing binary: %v", err)
	}
	st, _ := h.client.State(ctx(t))
	if len(st.Containers) != 0 {
		t.Fatalf("failed container kept: %+v", st)
	}
}

func TestExecAttachAndReopen(t *testing.T) {
	h := startShim(t)
	b := testutil.NewBundle(t, "shim-exec", "sh", "-c", "while read l; do echo got:$l; done")
	logPath := filepath.Join(t.TempDir(), "0.log")
	if _, err := h.client.Create(ctx(t), "shim-exec", shim.CreateRequest{Bundle: b.Dir, LogPath: logPath, Stdin: true}); err != nil {
		t.Fatal(err)
	}
	h.berthDo("start", "shim-exec")

	// Exec: output through the handed-over descriptors, exit code by Wait.
	proc := &specs.Process{Args: []string{"sh", "-c", "cat; echo to-err >&2; exit 5"}, Cwd: "/", Env: []string{"PATH=/bin"}}
	pid, io, err := h.client.Exec(ctx(t), "shim-exec", "x1", shim.ExecRequest{Process: proc, Stdin: true})
	if err != nil || pid <= 0 {
		t.Fatalf("exec: %v", err)
	}
	io.Stdin.Write([]byte("through-stdin\n"))
	io.Stdin.Close()
	out, _ := ioReadAll(io.Stdout)
	errOut, _ := ioReadAll(io.Stderr)
	if out != "through-stdin\n" || errOut != "to-err\n" {
		t.Fatalf("exec output %q %q", out, errOut)
	}
	if exit, err := h.client.Wait(ctx(t), "shim-exec", "x1"); err != nil || exit.Code != 5 {
		t.Fatalf("exec exit %+v %v", exit, err)
	}

	// Exec with a tty: one console.
	pid, tio, err := h.client.Exec(ctx(t), "shim-exec", "x2", shim.ExecRequest{Process: &specs.Process{Args: []string{"tty"}, Cwd: "/", Env: []string{"PATH=/bin"}}, TTY: true})
	if err != nil || tio.Console == nil {
		t.Fatalf("exec tty: %v %+v", err, tio)
	}
	line, _ := bufio.NewReader(tio.Console).ReadString('\n')
	if !strings.HasPrefix(line, "/dev/pts/") {
		t.Fatalf("tty exec printed %q", line)
	}
	// Closed after the exit: a console closed while tty has printed but
	// not yet exited hangs it up (SIGHUP, 129).
	exit, err := h.client.Wait(ctx(t), "shim-exec", "x2")
	tio.Close()
	if err != nil || exit.Code != 0 {
		t.Fatalf("tty exec exit %+v %v", exit, err)
	}

	// Attach: stdin reaches the container, its output comes back, and the
	// log has it too.
	aio, err := h.client.Attach(ctx(t), "shim-exec")
	if err != nil || aio.Stdin == nil || aio.Stdout == nil {
		t.Fatalf("attach: %v %+v", err, aio)
	}
	aio.Stdin.Write([]byte("hello\n"))
	line, _ = bufio.NewReader(aio.Stdout).ReadString('\n')
	if line != "got:hello\n" {
		t.Fatalf("attached output %q", line)
	}
	// Reopen after a rotation, then more output lands in the new file.
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	if err := h.client.ReopenLog(ctx(t), "shim-exec"); err != nil {
		t.Fatal(err)
	}
	aio.Stdin.Write([]byte("after\n"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(logPath)
		if strings.Contains(string(data), "got:after") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reopened log: %q", data)
		}
		time.Sleep(20 * time.Millisecond)
	}
	old, _ := os.ReadFile(logPath + ".1")
	if !strings.Contains(string(old), "got:hello") {
		t.Fatalf("rotated log %q", old)
	}
	aio.Close()
	// Closing stdin ends the container's read loop: exit 0.
	if err := h.client.CloseStdin(ctx(t), "shim-exec"); err != nil {
		t.Fatal(err)
	}
	if exit, err := h.client.Wait(ctx(t), "shim-exec", ""); err != nil || exit.Code != 0 {
		t.Fatalf("container exit after stdin closed: %+v %v", exit, err)
	}
}

func ioReadAll(f *os.File) (string, error) {
	defer f.Close()
	data, err := io.ReadAll(f)
	return string(data), err
}

// TestConcurrentStateDuringCreate: state, attach and kill calls racing
// the creation of containers (with and without a terminal) and execs.
// Run against a shim built with -race (make test's race pass), it shows
// that everything those calls read is written under the shim's lock.
func TestConcurrentStateDuringCreate(t *testing.T) {
	h := startShim(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				st, err := h.client.State(c)
				if err == nil {
					for _, p := range st.Containers {
						if io, err := h.client.Attach(c, p.ID); err == nil {
							io.Close()
						}
					}
				}
				cancel()
			}
		}()
	}
	for i := 0; i < 4; i++ {
		id := fmt.Sprintf("race-%d", i)
		b := testutil.NewBundle(t, id, "sleep", "60")
		if i%2 == 1 {
			b.Spec.Process.Terminal = true
			b.Save(t)
		}
		if _, err := h.client.Create(ctx(t), id, shim.CreateRequest{Bundle: b.Dir, TTY: i%2 == 1}); err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
		h.berthDo("start", id)
		if _, _, err := h.client.Exec(ctx(t), id, id+"-x", shim.ExecRequest{Process: &specs.Process{Args: []string{"sleep", "60"}, Cwd: "/", Env: []string{"PATH=/bin"}}}); err != nil {
			t.Fatalf("exec in %s: %v", id, err)
		}
		if err := h.client.Kill(ctx(t), id, id+"-x", syscall.SIGKILL); err != nil {
			t.Fatalf("kill the exec in %s: %v", id, err)
		}
		if exit, err := h.client.Wait(ctx(t), id, id+"-x"); err != nil || exit.Signal != int(syscall.SIGKILL) {
			t.Fatalf("exec in %s after kill: %+v %v", id, exit, err)
		}
		if err := h.client.Kill(ctx(t), id, "", syscall.SIGKILL); err != nil {
			t.Fatalf("kill %s: %v", id, err)
		}
		if _, err := h.client.Wait(ctx(t), id, ""); err != nil {
			t.Fatalf("wait %s: %v", id, err)
		}
		// Killing what has exited is no error, and reaches nothing.
		if err := h.client.Kill(ctx(t), id, "", syscall.SIGKILL); err != nil {
			t.Fatalf("kill %s after its exit: %v", id, err)
		}
	}
	close(stop)
	wg.Wait()
}
