package cri

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/shim"
)

// shimManager starts a berth-shim per pod and keeps watching each for
// exits, reconnecting after berthd restarts.
type shimManager struct {
	cfg *Config
	log *slog.Logger
	// onEvent gets every exit a shim reports; onConnect runs each time
	// the event stream is (re)established, to catch up on exits missed
	// meanwhile; onGone gets a shim that stopped answering for good.
	onEvent   func(podID string, ev shim.Event)
	onConnect func(podID string)
	onGone    func(podID string)

	mu       sync.Mutex
	watching map[string]context.CancelFunc
}

func newShimManager(cfg *Config, log *slog.Logger) *shimManager {
	return &shimManager{cfg: cfg, log: log, watching: map[string]context.CancelFunc{}}
}

// Shim paths are short: Unix socket paths end at 108 bytes.
func (m *shimManager) socket(podID string) string {
	return filepath.Join(m.cfg.State, "shim", podID[:16]+".sock")
}

func (m *shimManager) stateDir(podID string) string {
	return filepath.Join(m.cfg.State, "shim", podID[:16])
}

// pidFile records the shim's pid and start time (/proc/<pid>/stat's
// field 22), so that berthd, restarted or not, can tell a shim that does
// not answer from one that is gone.
func (m *shimManager) pidFile(podID string) string {
	return filepath.Join(m.cfg.State, "shim", podID[:16]+".pid")
}

func (m *shimManager) recordPid(podID string, pid int) error {
	start, err := procStartTime(pid)
	if err != nil {
		return err
	}
	return os.WriteFile(m.pidFile(podID), []byte(fmt.Sprintf("%d %d\n", pid, start)), 0o600)
}

// alive reports whether the pod's shim process is running; known is false
// when berthd has no record of it (a shim started before the record).
func (m *shimManager) alive(podID string) (alive, known bool) {
	data, err := os.ReadFile(m.pidFile(podID))
	if err != nil {
		return false, false
	}
	var pid int
	var start uint64
	if _, err := fmt.Sscanf(string(data), "%d %d", &pid, &start); err != nil || pid <= 0 {
		return false, false
	}
	now, err := procStartTime(pid)
	return err == nil && now == start, true
}

// procStartTime is a live (not zombie) process's start time in clock
// ticks since boot: with the pid, it names one process for good.
func procStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces and parentheses: fields count from
	// the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	if f[0] == "Z" || f[0] == "X" {
		return 0, fmt.Errorf("process %d has exited", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

func (m *shimManager) client(podID string) *shim.Client {
	return &shim.Client{Socket: m.socket(podID)}
}

// start starts the pod's shim, which runs the OCI runtime at runtimePath
// with runtimeRoot (the pod's handler's), and waits until it serves.
func (m *shimManager) start(ctx context.Context, podID, runtimePath, runtimeRoot string) (*shim.Client, error) {
	args := []string{
		"--id", podID, "--socket", m.socket(podID), "--state-dir", m.stateDir(podID),
		"--runtime", runtimePath, "--runtime-root", runtimeRoot, "--ready-fd", "3",
	}
	if cgroups.Driver(m.cfg.CgroupDriver) == cgroups.Systemd {
		args = append(args, "--systemd-cgroup")
	}
	if m.cfg.LogLevel == "debug" {
		args = append(args, "--debug")
	}
	cmd := exec.Command(m.cfg.ShimPath, args...)
	// One P: a shim runs per pod, and copying a pod's output needs no
	// parallel Go code (conmon is one thread). Set before the shim's
	// runtime starts, not by runtime.GOMAXPROCS in it: the second P's
	// caches, once made, stay (measured: 290 KiB of anonymous memory per
	// shim on this 2-core machine, 80 KiB more than the environment).
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	if err := startDetached(ctx, cmd, "shim", m.stateDir(podID)+"/shim.log"); err != nil {
		return nil, err
	}
	if err := m.recordPid(podID, cmd.Process.Pid); err != nil {
		m.log.Warn("record shim pid", "pod", podID, "error", err)
	}
	m.watch(podID)
	return m.client(podID), nil
}

// watch follows the shim's exit events until unwatch; a broken stream is
// retried, and a shim gone for good is reported once.
func (m *shimManager) watch(podID string) {
	m.mu.Lock()
	if _, ok := m.watching[podID]; ok {
		m.mu.Unlock()
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.watching[podID] = cancel
	m.mu.Unlock()
	go func() {
		c := m.client(podID)
		failures := 0
		for ctx.Err() == nil {
			err := c.Events(ctx, func() {
				failures = 0
				m.onConnect(podID)
			}, func(ev shim.Event) { m.onEvent(podID, ev) })
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, shim.ErrUnavailable) {
				// A shim that does not answer but runs is busy (or
				// stopped), not gone: its pod is not killed for it.
				alive, known := m.alive(podID)
				switch {
				case alive:
					if failures == 0 || failures%50 == 0 {
						m.log.Warn("shim does not answer, but runs; waiting for it", "pod", podID, "error", err)
					}
					failures++
					time.Sleep(min(time.Duration(failures)*200*time.Millisecond, 2*time.Second))
					continue
				case known:
					failures = 3 // its process is gone: no point in asking again
				default:
					failures++
				}
				if failures >= 3 {
					m.log.Warn("shim gone", "pod", podID, "error", err)
					m.mu.Lock()
					delete(m.watching, podID)
					m.mu.Unlock()
					m.onGone(podID)
					return
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
}

func (m *shimManager) unwatch(podID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cancel, ok := m.watching[podID]; ok {
		cancel()
		delete(m.watching, podID)
	}
}

// stop asks the shim to exit once its containers are gone.
func (m *shimManager) stop(ctx context.Context, podID string) {
	m.unwatch(podID)
	c := m.client(podID)
	if err := c.Shutdown(ctx); err != nil && !errors.Is(err, shim.ErrUnavailable) {
		m.log.Warn("stop shim", "pod", podID, "error", err)
	}
	// Its directory and socket go with it; make sure of it.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(m.socket(podID)); errors.Is(err, os.ErrNotExist) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = os.Remove(m.socket(podID))
	_ = os.Remove(m.pidFile(podID))
	_ = os.RemoveAll(m.stateDir(podID))
}

// startDetached starts cmd (a shim, berth-lazy: a process that outlives
// berthd) in a session of its own, so that no signal aimed at berthd's
// process group or terminal reaches it, and waits until it writes a byte
// to its descriptor 3 (--ready-fd 3). berthd reaps what it started;
// after a restart, init does. log is where to look if it fails.
func startDetached(ctx context.Context, cmd *exec.Cmd, name, log string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	// The ready pipe is fd 3; the caller's ExtraFiles follow it.
	cmd.ExtraFiles = append([]*os.File{w}, cmd.ExtraFiles...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Dir = "/"
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	w.Close()
	go func() { _ = cmd.Wait() }()
	ready := make(chan error, 1)
	go func() {
		_, err := r.Read(make([]byte, 1))
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			_ = cmd.Process.Kill()
			return fmt.Errorf("%s exited before it served: see %s", name, log)
		}
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		return fmt.Errorf("%s did not start within 20s", name)
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		return ctx.Err()
	}
	return nil
}
