// Package ocicli drives an OCI runtime other than berth's own (runc,
// crun) through its command line, as containerd's runc shim and CRI-O
// do: what berthd asks of a runtime handler's containers once the shim
// has created them (state, start, signals, updates, deletion). Statistics
// come from the container's cgroup, found from its init's pid, read as
// berth reads its own containers'.
package ocicli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/runtime"
)

// Runtime is an OCI runtime binary and its state root.
type Runtime struct {
	// Path is the runtime binary; Root its --root.
	Path, Root string
	// SystemdCgroup passes --systemd-cgroup, as to the shim's calls.
	SystemdCgroup bool
}

// callTimeout bounds one call of the runtime; a runtime that hangs
// (a frozen cgroup, say) must not hang berthd.
const callTimeout = time.Minute

// run calls the runtime and returns its standard output; its standard
// error is the error's text.
func (r *Runtime) run(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	global := []string{"--root", r.Root}
	if r.SystemdCgroup {
		global = append(global, "--systemd-cgroup")
	}
	cmd := exec.CommandContext(ctx, r.Path, append(global, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		err := fmt.Errorf("%s %s: %s", r.Path, args[0], msg)
		switch {
		case strings.Contains(msg, "does not exist"), strings.Contains(msg, "No such file or directory"):
			return nil, fmt.Errorf("%w: %w", runtime.ErrNotExist, err)
		case strings.Contains(msg, "not running"), strings.Contains(msg, "process already finished"):
			return nil, fmt.Errorf("%w: %w", runtime.ErrNotRunning, err)
		}
		return nil, err
	}
	return stdout.Bytes(), nil
}

// Features asks the runtime what it supports (`runc features`, runc
// 1.1 and later, crun 1.5 and later); an error for an older one.
func (r *Runtime) Features() (*features.Features, error) {
	out, err := r.run("features")
	if err != nil {
		return nil, err
	}
	var f features.Features
	if err := json.Unmarshal(out, &f); err != nil {
		return nil, fmt.Errorf("%s features: %w", r.Path, err)
	}
	return &f, nil
}

// Version is the first line of the runtime's --version; a runtime that
// does not answer within callTimeout is "unknown", as one that fails.
func (r *Runtime) Version() string {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, r.Path, "--version").Output()
	if err != nil {
		return "unknown"
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

// Load finds a container of the runtime.
func (r *Runtime) Load(id string) (*Container, error) {
	c := &Container{rt: r, id: id}
	if _, err := c.State(); err != nil {
		return nil, err
	}
	return c, nil
}

// List lists the runtime's containers.
func (r *Runtime) List() ([]runtime.State, error) {
	out, err := r.run("list", "--format", "json")
	if err != nil {
		return nil, err
	}
	var list []runtime.State
	// runc prints null for none.
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, fmt.Errorf("%s list: %w", r.Path, err)
	}
	return list, nil
}

// Remains removes what the runtime keeps of a container it no longer
// lists as loadable; gone is fine.
func (r *Runtime) Remains(id string) (bool, error) {
	_, err := r.run("delete", "--force", id)
	if err != nil && !errors.Is(err, runtime.ErrNotExist) {
		return false, err
	}
	return err == nil, nil
}

// Container is a container of the runtime.
type Container struct {
	rt *Runtime
	id string
}

// ID is the container's id.
func (c *Container) ID() string { return c.id }

// State is `runtime state`.
func (c *Container) State() (*runtime.State, error) {
	out, err := c.rt.run("state", c.id)
	if err != nil {
		return nil, err
	}
	var st runtime.State
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("%s state %s: %w", c.rt.Path, c.id, err)
	}
	return &st, nil
}

// Status is the state's status.
func (c *Container) Status() (string, error) {
	st, err := c.State()
	if err != nil {
		return "", err
	}
	return st.Status, nil
}

// Exec starts the created container's process (`runtime start`).
func (c *Container) Exec() error {
	_, err := c.rt.run("start", c.id)
	return err
}

// Signal sends sig to the container's init.
func (c *Container) Signal(sig unix.Signal) error {
	_, err := c.rt.run("kill", c.id, strconv.Itoa(int(sig)))
	return err
}

// Delete removes the container; force kills it first.
func (c *Container) Delete(force bool) error {
	args := []string{"delete"}
	if force {
		args = append(args, "--force")
	}
	_, err := c.rt.run(append(args, c.id)...)
	return err
}

// Update changes the container's resources (`runtime update
// --resources FILE`); what r leaves unset keeps its value.
func (c *Container) Update(r *specs.LinuxResources) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	// A file, not "-": crun reads no standard input there.
	f, err := os.CreateTemp("", "berth-update-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	_, err = c.rt.run("update", "--resources", f.Name(), c.id)
	return err
}

// Checkpoint dumps the container with CRIU (`runtime checkpoint`); the
// flags are runc's, which crun shares.
func (c *Container) Checkpoint(o runtime.CheckpointOptions) error {
	args := []string{"checkpoint", "--image-path", o.ImagePath}
	for _, f := range []struct {
		on   bool
		flag string
	}{
		{o.LeaveRunning, "--leave-running"}, {o.TCPEstablished, "--tcp-established"},
		{o.TCPSkipInFlight, "--tcp-skip-in-flight"}, {o.LinkRemap, "--link-remap"},
		{o.ExtUnixSockets, "--ext-unix-sk"}, {o.ShellJob, "--shell-job"},
		{o.FileLocks, "--file-locks"}, {o.PreDump, "--pre-dump"},
		{o.AutoDedup, "--auto-dedup"}, {o.LazyPages, "--lazy-pages"},
	} {
		if f.on {
			args = append(args, f.flag)
		}
	}
	for _, f := range [][2]string{{"--work-path", o.WorkPath}, {"--parent-path", o.ParentPath},
		{"--page-server", o.PageServer}, {"--manage-cgroups-mode", o.ManageCgroupsMode}} {
		if f[1] != "" {
			args = append(args, f[0], f[1])
		}
	}
	for _, ns := range o.EmptyNamespaces {
		args = append(args, "--empty-ns", ns)
	}
	_, err := c.rt.run(append(args, c.id)...)
	return err
}

// Processes are the pids in the container (`runtime ps`).
func (c *Container) Processes() ([]int, error) {
	out, err := c.rt.run("ps", "--format", "json", c.id)
	if err != nil {
		return nil, err
	}
	var pids []int
	if err := json.Unmarshal(out, &pids); err != nil {
		return nil, fmt.Errorf("%s ps %s: %w", c.rt.Path, c.id, err)
	}
	return pids, nil
}

// CgroupPaths are the cgroup directories of the container's init while
// it runs; nil once it has stopped.
func (c *Container) CgroupPaths() map[string]string {
	st, err := c.State()
	if err != nil || st.Pid <= 0 {
		return nil
	}
	paths, err := cgroups.ProcessPaths(st.Pid)
	if err != nil {
		return nil
	}
	return paths
}

// Stats reads the container's cgroup.
func (c *Container) Stats() (cgroups.Stats, error) {
	paths := c.CgroupPaths()
	if paths == nil {
		return cgroups.Stats{}, fmt.Errorf("container %s: not running: no cgroup to read", c.id)
	}
	return cgroups.StatsOf(paths)
}
