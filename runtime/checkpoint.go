package runtime

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/opencontainers/runc/libcontainer"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// CheckpointOptions are how CRIU dumps (Checkpoint) and restores
// (Restore) a container: runc's checkpoint and restore flags.
type CheckpointOptions struct {
	// ImagePath is the directory of CRIU's image files (required).
	ImagePath string
	// WorkPath is where CRIU writes its logs; ImagePath when empty.
	WorkPath string
	// ParentPath is a pre-dump's image directory, relative to ImagePath.
	ParentPath string
	// LeaveRunning keeps the container running after a dump.
	LeaveRunning    bool
	TCPEstablished  bool
	TCPSkipInFlight bool
	LinkRemap       bool
	ExtUnixSockets  bool
	ShellJob        bool
	FileLocks       bool
	PreDump         bool
	AutoDedup       bool
	LazyPages       bool
	// StatusFD gets a \0 once a lazy-pages dump is ready (-1: none).
	StatusFD int
	// PageServer is ADDRESS:PORT of a CRIU page server, if any.
	PageServer string
	// ManageCgroupsMode is soft, full, strict, ignore, or "" (CRIU's).
	ManageCgroupsMode string
	// EmptyNamespaces are namespaces (only "network") that are created
	// on restore but whose properties are not restored. The network
	// namespace is never dumped: the runtime does not own its devices.
	EmptyNamespaces []string
	// LSMProfile (TYPE:NAME) and LSMMountContext replace the dumped
	// ones on restore.
	LSMProfile, LSMMountContext string
}

// criuOpts checks o and converts it to libcontainer's form.
func (o CheckpointOptions) criuOpts() (*libcontainer.CriuOpts, error) {
	if o.ImagePath == "" {
		return nil, withKind(ErrInvalidSpec, errors.New("checkpoint: no image path"))
	}
	if o.ParentPath != "" && filepath.IsAbs(o.ParentPath) {
		return nil, withKind(ErrInvalidSpec, errors.New("checkpoint: the parent path must be relative to the image path"))
	}
	lo := &libcontainer.CriuOpts{
		ImagesDirectory:         o.ImagePath,
		WorkDirectory:           o.WorkPath,
		ParentImage:             o.ParentPath,
		LeaveRunning:            o.LeaveRunning,
		TcpEstablished:          o.TCPEstablished,
		TcpSkipInFlight:         o.TCPSkipInFlight,
		LinkRemap:               o.LinkRemap,
		ExternalUnixConnections: o.ExtUnixSockets,
		ShellJob:                o.ShellJob,
		FileLocks:               o.FileLocks,
		PreDump:                 o.PreDump,
		AutoDedup:               o.AutoDedup,
		LazyPages:               o.LazyPages,
		StatusFd:                o.StatusFD,
		ManageCgroupsMode:       o.ManageCgroupsMode,
		LsmProfile:              o.LSMProfile,
		LsmMountContext:         o.LSMMountContext,
		EmptyNs:                 unix.CLONE_NEWNET,
	}
	for _, ns := range o.EmptyNamespaces {
		if specs.LinuxNamespaceType(ns) != specs.NetworkNamespace {
			return nil, withKind(ErrInvalidSpec, fmt.Errorf("checkpoint: empty namespace %q is not supported (only network)", ns))
		}
	}
	if o.PageServer != "" {
		host, port, err := net.SplitHostPort(o.PageServer)
		n, perr := strconv.ParseUint(port, 10, 16)
		if err != nil || host == "" || perr != nil || n == 0 {
			return nil, withKind(ErrInvalidSpec, fmt.Errorf("checkpoint: page server %q is not ADDRESS:PORT", o.PageServer))
		}
		lo.PageServer = libcontainer.CriuPageServerInfo{Address: host, Port: int32(n)}
	}
	return lo, nil
}

// Checkpoint dumps a running or paused container's processes with CRIU
// into o.ImagePath. Unless o.LeaveRunning or o.PreDump, the processes
// end with the dump and the container is deleted, as runc does.
func (c *Container) Checkpoint(o CheckpointOptions) error {
	status, err := c.Status()
	if err != nil {
		return err
	}
	if status != StatusRunning && status != StatusPaused {
		return withKind(ErrState, fmt.Errorf("container %s cannot be checkpointed in the %s state", c.ID(), status))
	}
	lo, err := o.criuOpts()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.ImagePath, 0o700); err != nil {
		return fmt.Errorf("container %s: checkpoint: %w", c.ID(), err)
	}
	if err := c.c.Checkpoint(lo); err != nil {
		return fmt.Errorf("container %s: checkpoint: %w", c.ID(), criuLog(err, o, "dump.log"))
	}
	if !o.LeaveRunning && !o.PreDump {
		return c.destroy()
	}
	return nil
}

// Restore brings a container, created from the bundle it was dumped
// from, back from CRIU's images in o.ImagePath; p carries the stdio
// that replaces the dumped process's pipes. This is `runc restore`.
func (c *Container) Restore(p *Process, o CheckpointOptions) error {
	lo, err := o.criuOpts()
	if err != nil {
		return err
	}
	p.Init = true
	if err := c.c.Restore(p, lo); err != nil {
		return fmt.Errorf("container %s: restore: %w", c.ID(), criuLog(err, o, "restore.log"))
	}
	return nil
}

// criuLog adds the first error line of CRIU's log, the cause (the last
// is "Dumping FAILED"), to err: libcontainer says only that CRIU failed.
func criuLog(err error, o CheckpointOptions, name string) error {
	dir := o.WorkPath
	if dir == "" {
		dir = o.ImagePath
	}
	b, rerr := os.ReadFile(filepath.Join(dir, name))
	if rerr != nil {
		return translate(err)
	}
	if lines := errorLines(b); len(lines) > 0 {
		return fmt.Errorf("%w (%s: %s)", translate(err), name, lines[0])
	}
	return translate(err)
}

// errorLines are CRIU's "Error (file:line): ..." lines of a log.
func errorLines(log []byte) []string {
	var lines []string
	for line := range bytes.Lines(log) {
		if bytes.Contains(line, []byte("Error (")) {
			lines = append(lines, strings.TrimSpace(string(line)))
		}
	}
	return lines
}

// CheckCRIU runs `criu check`, which tests what the kernel offers CRIU;
// its error names the first failed check.
func CheckCRIU() error {
	path, err := exec.LookPath("criu")
	if err != nil {
		return fmt.Errorf("criu is not installed: %w", err)
	}
	out, err := exec.Command(path, "check").CombinedOutput()
	if lines := errorLines(out); len(lines) > 0 {
		return fmt.Errorf("criu check: %s", lines[0])
	}
	if err != nil {
		return fmt.Errorf("criu check: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}
