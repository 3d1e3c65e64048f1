package bench

import (
	"os"
	"os/exec"
	"syscall"
	"time"
)

// daemonProcess is a daemon a benchmark started (berthd, containerd),
// logging to a file; it dies with the benchmark.
type daemonProcess struct {
	cmd *exec.Cmd
	log string
	// done is closed when the process has exited, err then set.
	done chan struct{}
	err  error
}

// startProcess starts bin with args, its output into the file log; env
// nil is this process's environment.
func startProcess(log, bin string, env []string, args ...string) (*daemonProcess, error) {
	logf, err := os.Create(log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	p := &daemonProcess{cmd: exec.Command(bin, args...), log: log, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.Env = env
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *daemonProcess) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM and kills the daemon if it has not exited after
// grace.
func (p *daemonProcess) stop(grace time.Duration) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// logText is what the daemon has logged.
func (p *daemonProcess) logText() string {
	data, _ := os.ReadFile(p.log)
	return string(data)
}

// kill ends the daemon at once, as a crash would.
func (p *daemonProcess) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}
