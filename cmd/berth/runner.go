package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"github.com/urfave/cli"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/runtime"
)

// action is what a runner does with its process.
type action int

const (
	actCreate  action = iota + 1 // start init, wait for `berth start`
	actRun                       // start init and the user process
	actExec                      // start an extra process
	actRestore                   // restore init from a checkpoint
)

// runner starts one process in a container and, unless detached, stays
// with it: forwards signals, copies a tty, and returns its exit status.
type runner struct {
	container     *runtime.Container
	action        action
	detach        bool
	consoleSocket string
	pidFile       string
	preserveFDs   int
	// destroy deletes the container when the foreground run ends or the
	// start fails (`run` without --keep, `create`).
	destroy     bool
	subreaper   bool
	allowPaused bool
	subCgroups  map[string]string
	// checkpoint is where actRestore restores from.
	checkpoint runtime.CheckpointOptions
}

func (r *runner) run(spec *specs.Process) (status int, err error) {
	defer func() {
		if err != nil && r.destroy {
			if derr := r.container.Delete(true); derr != nil {
				logger.Warn("clean up after failed start", "container", r.container.ID(), "error", derr)
			}
		}
	}()
	detach := r.detach || r.action == actCreate
	if detach && spec.Terminal && r.consoleSocket == "" {
		return -1, errors.New("cannot allocate tty if berth will detach without setting console socket")
	}
	if (!detach || !spec.Terminal) && r.consoleSocket != "" {
		return -1, errors.New("cannot use console socket if berth will not detach or allocate tty")
	}
	p, err := runtime.NewProcess(spec)
	if err != nil {
		return -1, err
	}
	p.SubCgroupPaths = r.subCgroups
	p.LogLevel = strconv.Itoa(int(logrus.GetLevel()))
	if err := r.addExtraFiles(p); err != nil {
		return -1, err
	}
	var signals *signalHandler
	if !detach {
		signals = newSignalHandler(r.subreaper)
	}
	t, err := setupIO(p, spec.Terminal, detach, r.consoleSocket)
	if err != nil {
		return -1, err
	}
	defer t.Close()

	switch r.action {
	case actCreate:
		err = r.container.Start(p)
	case actRun:
		err = r.container.Run(p)
	case actExec:
		err = r.container.Execute(p, r.allowPaused)
	case actRestore:
		err = r.container.Restore(p, r.checkpoint)
	}
	if err != nil {
		return -1, err
	}
	if err := t.waitConsole(); err != nil {
		terminate(p)
		return -1, err
	}
	t.closePostStart()
	if r.pidFile != "" {
		if err := writePidFile(r.pidFile, p); err != nil {
			terminate(p)
			return -1, err
		}
	}
	if detach {
		return 0, nil
	}
	status, err = signals.forward(p, t)
	if err != nil {
		terminate(p)
		return -1, err
	}
	if r.destroy {
		if err := r.container.Delete(true); err != nil {
			return status, err
		}
	}
	return status, nil
}

// addExtraFiles passes systemd socket-activation fds and --preserve-fds
// on to the process, as runc does.
func (r *runner) addExtraFiles(p *runtime.Process) error {
	if r.action != actExec {
		if n, err := strconv.Atoi(os.Getenv("LISTEN_FDS")); err == nil && n > 0 && os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()) {
			for fd := 3; fd < 3+n; fd++ {
				p.ExtraFiles = append(p.ExtraFiles, os.NewFile(uintptr(fd), "LISTEN_FD_"+strconv.Itoa(fd)))
			}
			p.Env = append(p.Env, "LISTEN_FDS="+strconv.Itoa(n), "LISTEN_PID=1")
		}
	}
	base := 3 + len(p.ExtraFiles)
	for fd := base; fd < base+r.preserveFDs; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			return fmt.Errorf("unable to use preserved fd %d (of %d): not open", fd-base, r.preserveFDs)
		}
		p.ExtraFiles = append(p.ExtraFiles, os.NewFile(uintptr(fd), "PreserveFD:"+strconv.Itoa(fd)))
	}
	return nil
}

func terminate(p *runtime.Process) {
	_ = p.Signal(unix.SIGKILL)
	_, _ = p.Wait()
}

// writePidFile writes the pid atomically (temp file + rename), so that a
// reader never sees a half-written number.
func writePidFile(path string, p *runtime.Process) error {
	pid, err := p.Pid()
	if err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path))
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL|os.O_SYNC, 0o666)
	if err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	_, err = f.WriteString(strconv.Itoa(pid))
	f.Close()
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pid file: %w", err)
	}
	return os.Rename(tmp, path)
}

// absPidFile makes --pid-file absolute before anything changes directory.
func absPidFile(ctx *cli.Context) (string, error) {
	p := ctx.String("pid-file")
	if p == "" {
		return "", nil
	}
	return filepath.Abs(p)
}

// bundleDir returns --bundle or the working directory.
func bundleDir(ctx *cli.Context) (string, error) {
	if b := ctx.String("bundle"); b != "" {
		return filepath.Abs(b)
	}
	return os.Getwd()
}

// startContainer is create, run and restore: load the bundle, create
// the container, start its init (or restore it from cp).
func startContainer(ctx *cli.Context, act action, cp runtime.CheckpointOptions) (int, error) {
	id := ctx.Args().First()
	pidFile, err := absPidFile(ctx)
	if err != nil {
		return -1, err
	}
	bundle, err := bundleDir(ctx)
	if err != nil {
		return -1, err
	}
	spec, err := runtime.LoadSpec(bundle)
	if err != nil {
		return -1, err
	}
	rt, err := newRuntime(ctx)
	if err != nil {
		return -1, err
	}
	c, err := rt.Create(id, runtime.CreateOptions{
		Bundle:       bundle,
		Spec:         spec,
		NoPivotRoot:  ctx.Bool("no-pivot"),
		NoNewKeyring: ctx.Bool("no-new-keyring"),
	})
	if err != nil {
		return -1, err
	}
	r := &runner{
		container:     c,
		action:        act,
		detach:        ctx.Bool("detach"),
		consoleSocket: ctx.String("console-socket"),
		pidFile:       pidFile,
		preserveFDs:   ctx.Int("preserve-fds"),
		destroy:       !ctx.Bool("keep"),
		subreaper:     !ctx.Bool("no-subreaper"),
		checkpoint:    cp,
	}
	return r.run(spec.Process)
}
