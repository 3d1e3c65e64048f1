package runtime

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/utils"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/cgroups"
)

// Container is one container under a Runtime's root.
type Container struct {
	c  *libcontainer.Container
	rt *Runtime
}

// ID returns the container id.
func (c *Container) ID() string { return c.c.ID() }

// Status returns created, running, paused or stopped.
func (c *Container) Status() (string, error) {
	s, err := c.c.Status()
	if err != nil {
		return "", fmt.Errorf("container %s: status: %w", c.ID(), err)
	}
	return s.String(), nil
}

// State returns the container's state in runc's JSON shape.
func (c *Container) State() (*State, error) {
	status, err := c.Status()
	if err != nil {
		return nil, err
	}
	st, err := c.c.State()
	if err != nil {
		return nil, fmt.Errorf("container %s: state: %w", c.ID(), err)
	}
	pid := st.InitProcessPid
	if status == StatusStopped {
		pid = 0
	}
	bundle, annotations := utils.Annotations(st.Config.Labels)
	return &State{
		OCIVersion:  st.Config.Version,
		ID:          st.ID,
		Pid:         pid,
		Status:      status,
		Bundle:      bundle,
		Rootfs:      st.Config.Rootfs,
		Created:     st.Created,
		Annotations: annotations,
		Owner:       owner(filepath.Join(c.rt.root, c.ID())),
	}, nil
}

// Bundle returns the bundle directory the container was created from.
func (c *Container) Bundle() string {
	b, _ := utils.SearchLabels(c.c.Config().Labels, "bundle")
	return b
}

// RootUID and RootGID are the host ids of the container's root, which
// own the pipes handed to its processes.
func (c *Container) RootUID() (int, error) { cfg := c.c.Config(); return cfg.HostRootUID() }

// RootGID: see RootUID.
func (c *Container) RootGID() (int, error) { cfg := c.c.Config(); return cfg.HostRootGID() }

// Start starts the container's init process (p.Init is set), which then
// waits for Exec; this is `runc create`.
func (c *Container) Start(p *Process) error {
	p.Init = true
	if err := c.c.Start(p); err != nil {
		return fmt.Errorf("container %s: start init: %w", c.ID(), translate(err))
	}
	return nil
}

// Run starts the init process and lets it exec the user process at once;
// this is `runc run`.
func (c *Container) Run(p *Process) error {
	p.Init = true
	if err := c.c.Run(p); err != nil {
		return fmt.Errorf("container %s: run: %w", c.ID(), translate(err))
	}
	return nil
}

// Exec lets a created container's init exec the user process; this is
// `runc start`.
func (c *Container) Exec() error {
	status, err := c.Status()
	if err != nil {
		return err
	}
	switch status {
	case StatusCreated:
	case StatusStopped:
		return withKind(ErrState, fmt.Errorf("container %s: cannot start a container that has stopped", c.ID()))
	case StatusRunning:
		return withKind(ErrState, fmt.Errorf("container %s: cannot start an already running container", c.ID()))
	default:
		return withKind(ErrState, fmt.Errorf("container %s: cannot start a container in the %s state", c.ID(), status))
	}
	if err := c.c.Exec(); err != nil {
		return fmt.Errorf("container %s: start: %w", c.ID(), translate(err))
	}
	return nil
}

// Execute starts an additional process in a running container; this is
// `runc exec`.
func (c *Container) Execute(p *Process, allowPaused bool) error {
	status, err := c.Status()
	if err != nil {
		return err
	}
	switch {
	case status == StatusStopped:
		return withKind(ErrState, fmt.Errorf("container %s: cannot exec in a stopped container", c.ID()))
	case status == StatusPaused && !allowPaused:
		return withKind(ErrState, fmt.Errorf("container %s: cannot exec in a paused container (use --ignore-paused to override)", c.ID()))
	}
	p.Init = false
	if err := c.c.Run(p); err != nil {
		return fmt.Errorf("container %s: exec: %w", c.ID(), translate(err))
	}
	return nil
}

// Signal sends sig to the container's init. SIGKILL to a container that
// shares its pid namespace kills every process in its cgroup.
func (c *Container) Signal(sig unix.Signal) error {
	if err := c.c.Signal(sig); err != nil {
		return fmt.Errorf("container %s: signal %s: %w", c.ID(), unix.SignalName(sig), translate(err))
	}
	return nil
}

// Delete removes a stopped or created container and everything the host
// holds for it (cgroups, state). With force, a running or paused
// container is killed first.
func (c *Container) Delete(force bool) error {
	status, err := c.Status()
	if err != nil {
		return err
	}
	switch {
	case force, status == StatusCreated:
		// Even a stopped container may have processes left in its cgroup
		// when it had no pid namespace of its own.
		return c.kill()
	case status == StatusStopped:
		return c.destroy()
	}
	return withKind(ErrState, fmt.Errorf("cannot delete container %s that is not stopped: %s", c.ID(), status))
}

// killWait bounds how long Delete waits for a SIGKILLed init to vanish.
const killWait = 10 * time.Second

func (c *Container) kill() error {
	if status, _ := c.Status(); status == StatusPaused {
		// A frozen process cannot act on SIGKILL until thawed; libcontainer
		// thaws on SIGKILL, but resume first so the state file agrees.
		_ = c.c.Resume()
	}
	_ = c.c.Signal(unix.SIGKILL)
	deadline := time.Now().Add(killWait)
	for delay := time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		if err := c.c.Signal(unix.Signal(0)); err != nil {
			return c.destroy()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("container %s: init still running %s after SIGKILL", c.ID(), killWait)
		}
		time.Sleep(delay)
	}
}

func (c *Container) destroy() error {
	if err := c.c.Destroy(); err != nil {
		return fmt.Errorf("container %s: delete: %w", c.ID(), err)
	}
	return nil
}

// Pause freezes every process of the container.
func (c *Container) Pause() error {
	if err := c.c.Pause(); err != nil {
		return fmt.Errorf("container %s: pause: %w", c.ID(), translate(err))
	}
	return nil
}

// Resume thaws a paused container.
func (c *Container) Resume() error {
	if err := c.c.Resume(); err != nil {
		if errors.Is(err, libcontainer.ErrNotPaused) {
			return withKind(ErrState, fmt.Errorf("container %s is not paused", c.ID()))
		}
		return fmt.Errorf("container %s: resume: %w", c.ID(), translate(err))
	}
	return nil
}

// Processes lists the host pids of every process in the container.
func (c *Container) Processes() ([]int, error) {
	pids, err := c.c.Processes()
	if err != nil {
		return nil, fmt.Errorf("container %s: processes: %w", c.ID(), err)
	}
	return pids, nil
}

// Stats reads the container's cgroup statistics.
func (c *Container) Stats() (cgroups.Stats, error) {
	s, err := c.c.Stats()
	if err != nil {
		return cgroups.Stats{}, fmt.Errorf("container %s: stats: %w", c.ID(), err)
	}
	if s.CgroupStats == nil {
		return cgroups.Stats{}, fmt.Errorf("container %s: no cgroup statistics", c.ID())
	}
	return cgroups.FromLibrary(s.CgroupStats), nil
}

// Update changes the resource limits of a created, running or paused
// container; fields the update leaves unset keep their values.
func (c *Container) Update(r *specs.LinuxResources) error {
	cfg := c.c.Config()
	res := *cfg.Cgroups.Resources
	cg := *cfg.Cgroups
	cg.Resources = &res
	cfg.Cgroups = &cg
	if err := cgroups.MergeResources(cfg.Cgroups.Resources, r); err != nil {
		return fmt.Errorf("container %s: update: %w", c.ID(), err)
	}
	if err := c.c.Set(cfg); err != nil {
		return fmt.Errorf("container %s: update: %w", c.ID(), translate(err))
	}
	return nil
}

// NotifyOOM returns a channel that receives a value on each OOM kill in
// the container and is closed when the container's cgroup goes away.
func (c *Container) NotifyOOM() (<-chan struct{}, error) {
	ch, err := c.c.NotifyOOM()
	if err != nil {
		return nil, fmt.Errorf("container %s: oom notifications: %w", c.ID(), err)
	}
	return ch, nil
}

// CgroupPaths returns the container's cgroup directories, by controller
// (v1) or under the key "" (v2).
func (c *Container) CgroupPaths() map[string]string {
	st, err := c.c.State()
	if err != nil {
		return nil
	}
	return st.CgroupPaths
}

// HasStateDir reports whether the container's state directory exists.
func (c *Container) HasStateDir() bool {
	_, err := os.Stat(filepath.Join(c.rt.root, c.ID()))
	return err == nil
}
