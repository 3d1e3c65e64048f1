// Package reaper collects the exit status of every child of this process
// and of every orphan reparented to it (the process is made a child
// subreaper), and hands each exit to whoever waits for that pid.
//
// A process that reaps with wait4(-1) must not also let os/exec reap with
// wait4(pid): start children with Start, never call Wait, and take their
// exit from Subscribe.
//
// Exits are noticed through a pidfd of each subscribed process, on Go's
// poller, and by a sweep every few seconds for the rest (orphans nobody
// waits for). Only where the kernel's pidfds cannot be polled (before
// Linux 5.3) does it take SIGCHLD: os/signal cost berth-shim three of
// its threads (the template thread that its signal-mask goroutine's
// LockOSThread starts, and two that take over the P from that goroutine's
// thread), and one shim runs per pod.
package reaper

import (
	"errors"
	"os"
	"os/signal"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Exit is how a process ended.
type Exit struct {
	Pid int
	// Status is the exit code, or 128+signal when a signal killed it.
	Status int
	// Signal is the signal that killed it, or 0.
	Signal unix.Signal
	Time   time.Time
}

// unclaimedTTL bounds how long an exit nobody waited for is kept: long
// enough for a subscriber that learns the pid just after the exit.
const unclaimedTTL = 5 * time.Minute

// Reaper is the process-wide exit collector.
type Reaper struct {
	mu        sync.Mutex
	waiters   map[int][]chan Exit
	unclaimed map[int]Exit
	observers []func(Exit)

	// pidfds: exits are noticed through pidfds, not SIGCHLD.
	pidfds bool
	// kick asks the loop to reap now.
	kick chan struct{}
}

// sweepInterval is how often every child is reaped whether or not an
// exit was noticed: SIGCHLDs coalesce, and orphans have no pidfd watched.
var sweepInterval = 5 * time.Second

var (
	once    sync.Once
	global  *Reaper
	initErr error
)

// Start makes this process a child subreaper and starts reaping. It is
// idempotent and returns the process's one Reaper.
func Start() (*Reaper, error) {
	once.Do(func() {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			initErr = os.NewSyscallError("prctl(PR_SET_CHILD_SUBREAPER)", err)
			return
		}
		global = &Reaper{
			waiters: map[int][]chan Exit{}, unclaimed: map[int]Exit{},
			kick: make(chan struct{}, 1), pidfds: pidfdsPollable(),
		}
		var sigs chan os.Signal
		if !global.pidfds {
			sigs = make(chan os.Signal, 128)
			signal.Notify(sigs, unix.SIGCHLD)
		}
		go global.loop(sigs)
	})
	return global, initErr
}

func (r *Reaper) loop(sigs chan os.Signal) {
	tick := time.NewTicker(sweepInterval)
	defer tick.Stop()
	for {
		select {
		case <-sigs:
		case <-r.kick:
		case <-tick.C:
		}
		r.reapAll()
	}
}

// wake makes the loop reap soon.
func (r *Reaper) wake() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// openPidfd opens a pollable (non-blocking) pidfd of pid: with
// PIDFD_NONBLOCK from Linux 5.10, set by fcntl before that.
func openPidfd(pid int) (*os.File, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.EINVAL) {
		if fd, err = unix.PidfdOpen(pid, 0); err == nil {
			if err = unix.SetNonblock(fd, true); err != nil {
				unix.Close(fd)
			}
		}
	}
	if err != nil {
		return nil, os.NewSyscallError("pidfd_open", err)
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	// A file os.NewFile could not put on the poller takes no deadline.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// pidfdsPollable reports whether this kernel's pidfds can be polled.
func pidfdsPollable() bool {
	f, err := openPidfd(os.Getpid())
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// watch wakes the loop once pid has exited: a pidfd polls readable then.
func (r *Reaper) watch(pid int) {
	f, err := openPidfd(pid)
	if err != nil {
		// Gone, and reaped by a sweep meanwhile (the waiter has its exit
		// then), or not to be watched: reap now, and the sweep stays.
		r.wake()
		return
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		r.wake()
		return
	}
	go func() {
		defer f.Close()
		polled := false
		// The first call reads nothing, so that Read waits for the
		// poller; the second comes once the pidfd is readable.
		_ = rc.Read(func(uintptr) bool {
			done := polled
			polled = true
			return done
		})
		r.wake()
	}()
}

func (r *Reaper) reapAll() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			break
		}
		e := Exit{Pid: pid, Time: time.Now()}
		if ws.Signaled() {
			e.Signal = ws.Signal()
			e.Status = 128 + int(e.Signal)
		} else {
			e.Status = ws.ExitStatus()
		}
		r.deliver(e)
	}
	r.expire()
}

func (r *Reaper) deliver(e Exit) {
	r.mu.Lock()
	ws := r.waiters[e.Pid]
	delete(r.waiters, e.Pid)
	if len(ws) == 0 {
		r.unclaimed[e.Pid] = e
	}
	obs := r.observers
	r.mu.Unlock()
	for _, w := range ws {
		w <- e
	}
	for _, o := range obs {
		o(e)
	}
}

func (r *Reaper) expire() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for pid, e := range r.unclaimed {
		if time.Since(e.Time) > unclaimedTTL {
			delete(r.unclaimed, pid)
		}
	}
}

// Subscribe returns a channel that receives the exit of pid, also if it
// has happened already (within unclaimedTTL).
//
// An exit kept for pid is handed out only if no process with that pid
// exists now: one that does is alive (or a zombie not yet reaped), so the
// kept exit was an earlier process's whose pid has been reused. The check
// runs under the lock deliver takes, so an exit reaped meanwhile is
// either kept already or delivered to the waiter registered here.
func (r *Reaper) Subscribe(pid int) <-chan Exit {
	ch := make(chan Exit, 1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.unclaimed[pid]; ok {
		delete(r.unclaimed, pid)
		if !exists(pid) {
			ch <- e
			return ch
		}
	}
	r.waiters[pid] = append(r.waiters[pid], ch)
	if r.pidfds {
		// Registered first: an exit reaped from here on finds the waiter.
		r.watch(pid)
	}
	return ch
}

// exists reports whether a process with this pid exists (zombies too).
func exists(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// Observe calls fn with every exit, after the subscribers of its pid.
func (r *Reaper) Observe(fn func(Exit)) {
	r.mu.Lock()
	r.observers = append(r.observers, fn)
	r.mu.Unlock()
}

// Forget drops a subscription no one will read.
func (r *Reaper) Forget(pid int) {
	r.mu.Lock()
	delete(r.waiters, pid)
	delete(r.unclaimed, pid)
	r.mu.Unlock()
}
