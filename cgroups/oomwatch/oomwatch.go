// Package oomwatch counts the kernel's OOM kills in containers' memory
// cgroups while the containers run, for the pod's shim to report with
// each container's exit.
//
// On v2 both of memory.events' counts are taken, as the larger change:
// "oom" (the cgroup hit its limit and the OOM killer was invoked, the
// count containerd's shim reports) comes first; "oom_kill" also counts a
// victim of a limit higher up (the pod's). Where the whole cgroup dies at
// once (memory.oom.group) systemd may remove it before either is read:
// the kernel holds back a notification that follows another within
// 10 ms, and drops it with the cgroup. v2 counts every event in the
// parent too (the pod's cgroup, which outlives its containers), so a
// container that died of SIGKILL with its cgroup gone and nothing seen
// takes the parent's kills that no watch of its siblings counted.
//
// Reading the count once the container has exited is not enough: under
// the systemd cgroup driver the container's cgroup is a transient scope,
// and systemd removes it as soon as its last process is gone, often
// before anyone reads it. So the count is taken when the kernel says it
// changed, as containerd's shim does: inotify on memory.events (cgroup
// v2), an eventfd registered on memory.oom_control (v1).
//
// It imports nothing beyond the standard library and x/sys: the shim
// links it, and one shim runs per pod. A Watcher holds one inotify
// instance for all its watches (the kernel allows root 128 by default),
// and its descriptors sit on Go's poller: waiting parks a goroutine, not
// a thread.
package oomwatch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Root is where the cgroup hierarchies are mounted.
const Root = "/sys/fs/cgroup"

// Watcher makes watches; the zero value is ready.
type Watcher struct {
	mu      sync.Mutex
	inotify *os.File       // v2's, made by the first watch
	byWD    map[int]*Watch // v2's watches by watch descriptor
	// counted is, by parent cgroup, how many kills the watches of its
	// children have counted (v2).
	counted map[string]uint64
	// noLoop: no inotify reader (tests of what Kills finds alone).
	noLoop bool
}

// Watch follows one memory cgroup.
type Watch struct {
	// file is the cgroup file the counts are read from: memory.events
	// (v2, oom and oom_kill) or memory.oom_control (v1, oom_kill).
	file string

	// v2: the Watcher's inotify instance and this watch's descriptor;
	// the parent cgroup's memory.events, its counts when the watch
	// started, and what the Watcher had counted of the parent by then.
	w            *Watcher
	wd           int
	parent       string
	parentBase   map[string]uint64
	countedStart uint64
	// v1: an eventfd registered on the open memory.oom_control, read by
	// a goroutine of the watch's own.
	efd, ctl *os.File
	done     chan struct{}

	// reading is held while a count is read and stored, so that Kills
	// waits for a read that is under way.
	reading sync.Mutex
	mu      sync.Mutex
	// base holds the counts when the watch started; kills is the
	// largest change seen since.
	base  map[string]uint64
	kills uint64
	// events counts v1's OOM notifications since the watch started.
	events uint64
}

// Watch watches the memory cgroup that process pid is in now.
func (wr *Watcher) Watch(pid int) (*Watch, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, fmt.Errorf("oom watch: %w", err)
	}
	unified := false
	if _, err := os.Stat(filepath.Join(Root, "cgroup.controllers")); err == nil {
		unified = true
	}
	dir, err := memoryCgroup(data, unified)
	if err != nil {
		return nil, fmt.Errorf("oom watch of pid %d: %w", pid, err)
	}
	if unified {
		return wr.watchV2(dir)
	}
	return watchV1(dir)
}

// memoryCgroup finds the memory cgroup's directory in a /proc/PID/cgroup.
func memoryCgroup(procCgroup []byte, unified bool) (string, error) {
	for _, line := range strings.Split(string(procCgroup), "\n") {
		// hierarchy-id:controller-list:path
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if unified && parts[0] == "0" && parts[1] == "" {
			return filepath.Join(Root, parts[2]), nil
		}
		if !unified {
			for _, c := range strings.Split(parts[1], ",") {
				if c == "memory" {
					return filepath.Join(Root, "memory", parts[2]), nil
				}
			}
		}
	}
	return "", errors.New("no memory cgroup")
}

func (wr *Watcher) watchV2(dir string) (*Watch, error) {
	w := &Watch{file: filepath.Join(dir, "memory.events"), w: wr, parent: filepath.Join(filepath.Dir(dir), "memory.events")}
	wr.mu.Lock()
	defer wr.mu.Unlock()
	if wr.inotify == nil {
		fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
		if err != nil {
			return nil, os.NewSyscallError("inotify_init1", err)
		}
		wr.inotify, wr.byWD, wr.counted = os.NewFile(uintptr(fd), "inotify"), map[int]*Watch{}, map[string]uint64{}
		if !wr.noLoop {
			go wr.loop(wr.inotify)
		}
	}
	var addErr error
	if err := wr.control(func(fd int) { w.wd, addErr = unix.InotifyAddWatch(fd, w.file, unix.IN_MODIFY) }); err != nil {
		return nil, err
	}
	if addErr != nil {
		return nil, fmt.Errorf("oom watch %s: %w", w.file, addErr)
	}
	w.begin()
	w.parentBase = readCounts(w.parent)
	w.countedStart = wr.counted[w.parent]
	wr.byWD[w.wd] = w
	return w, nil
}

// control runs f with the inotify descriptor, leaving it non-blocking
// (os.File.Fd would make it blocking).
func (wr *Watcher) control(f func(fd int)) error {
	rc, err := wr.inotify.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) { f(int(fd)) })
}

// loop reads the inotify events of every watch and reads each watch's
// count at once, while its cgroup still exists.
func (wr *Watcher) loop(f *os.File) {
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := f.Read(buf)
		if err != nil {
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			off += unix.SizeofInotifyEvent + int(ev.Len)
			wr.mu.Lock()
			w := wr.byWD[int(ev.Wd)]
			if ev.Mask&unix.IN_IGNORED != 0 {
				// The file is gone (the cgroup removed); the kernel
				// dropped the watch and may reuse its number.
				delete(wr.byWD, int(ev.Wd))
			}
			wr.mu.Unlock()
			if w != nil && ev.Mask&unix.IN_MODIFY != 0 {
				w.read()
			}
		}
	}
}

// pending is how many bytes of events wait in the inotify queue.
func (wr *Watcher) pending() int {
	n := 0
	// TIOCINQ is FIONREAD's name in x/sys.
	_ = wr.control(func(fd int) { n, _ = unix.IoctlGetInt(fd, unix.TIOCINQ) })
	return n
}

func watchV1(dir string) (*Watch, error) {
	w := &Watch{file: filepath.Join(dir, "memory.oom_control"), done: make(chan struct{})}
	ctl, err := os.Open(w.file)
	if err != nil {
		return nil, fmt.Errorf("oom watch: %w", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		ctl.Close()
		return nil, os.NewSyscallError("eventfd", err)
	}
	w.ctl, w.efd = ctl, os.NewFile(uintptr(efd), "eventfd")
	reg := fmt.Sprintf("%d %d", efd, ctl.Fd())
	if err := os.WriteFile(filepath.Join(dir, "cgroup.event_control"), []byte(reg), 0); err != nil {
		ctl.Close()
		w.efd.Close()
		return nil, fmt.Errorf("oom watch %s: %w", dir, err)
	}
	w.begin()
	go w.loopV1()
	return w, nil
}

// counts are the fields of the cgroup file that tell of OOM kills (v1's
// memory.oom_control has no "oom").
var counts = []string{"oom", "oom_kill"}

// begin takes the counts as they are when the watch starts.
func (w *Watch) begin() {
	w.base = readCounts(w.file)
}

// readCounts reads the counts of a cgroup file; none where it cannot.
func readCounts(file string) map[string]uint64 {
	m := map[string]uint64{}
	if data, err := os.ReadFile(file); err == nil {
		for _, k := range counts {
			if n, ok := field(data, k); ok {
				m[k] = n
			}
		}
	}
	return m
}

// change is the largest rise of a count from base to now.
func change(base, now map[string]uint64) uint64 {
	var c uint64
	for k, n := range now {
		if n > base[k] {
			c = max(c, n-base[k])
		}
	}
	return c
}

// loopV1 takes the eventfd's notifications.
func (w *Watch) loopV1() {
	defer close(w.done)
	var buf [8]byte
	for {
		if _, err := w.efd.Read(buf[:]); err != nil {
			return
		}
		w.reading.Lock()
		if w.readLocked() {
			// v1 notifies when the cgroup goes under OOM, before the
			// victim is chosen, so the kill count read now is often
			// the old one; the eventfd also fires when the cgroup is
			// removed, when there is nothing to read. A notification
			// while the cgroup is there stands for a kill, as it does
			// for containerd.
			n := *(*uint64)(unsafe.Pointer(&buf[0]))
			w.mu.Lock()
			w.events += n
			w.kills = max(w.kills, w.events)
			w.mu.Unlock()
		}
		w.reading.Unlock()
	}
}

// read reads and stores the count; false when the file can no longer be
// read (the cgroup is gone).
func (w *Watch) read() bool {
	w.reading.Lock()
	defer w.reading.Unlock()
	return w.readLocked()
}

func (w *Watch) readLocked() bool {
	if _, err := os.Stat(w.file); err != nil {
		return false
	}
	now := readCounts(w.file)
	w.mu.Lock()
	rise := change(w.base, now)
	more := rise - min(rise, w.kills)
	w.kills = max(w.kills, rise)
	w.mu.Unlock()
	if more > 0 && w.w != nil {
		w.w.mu.Lock()
		w.w.counted[w.parent] += more
		w.w.mu.Unlock()
	}
	return true
}

func field(data []byte, key string) (uint64, bool) {
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, " ")
		if ok && k == key {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// settleTimeout bounds how long Kills waits for notifications already
// queued to be taken.
const settleTimeout = time.Second

// Kills is how many of the cgroup's processes the OOM killer has killed
// since the watch started, as far as the watch saw (at least one where
// the cgroup hit its limit and the OOM killer was invoked). Call it once
// the container's process has exited, saying whether SIGKILL ended it
// (as the OOM killer does): it waits until the notifications queued by
// then are taken and the read under way is stored, then reads the count
// once more if the cgroup is still there; if it is not, and a SIGKILL
// ended the container with nothing seen, it takes the kills of the
// parent that no watch of a sibling counted (v2).
func (w *Watch) Kills(sigkilled bool) uint64 {
	if w.w != nil {
		deadline := time.Now().Add(settleTimeout)
		for w.w.pending() > 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	} else {
		// v1: stop the watch's reader; a deadline in the past wakes it.
		_ = w.efd.SetReadDeadline(time.Unix(1, 0))
		<-w.done
	}
	there := w.read()
	n := w.seen()
	if n > 0 || there || !sigkilled || w.w == nil {
		return n
	}
	return w.w.unclaimed(w)
}

// unclaimed takes for w the kills of its parent since w started that the
// watches of its siblings did not count (nor another watch took).
func (wr *Watcher) unclaimed(w *Watch) uint64 {
	now := readCounts(w.parent)
	wr.mu.Lock()
	defer wr.mu.Unlock()
	rise, counted := change(w.parentBase, now), wr.counted[w.parent]-w.countedStart
	if rise <= counted {
		return 0
	}
	wr.counted[w.parent] += rise - counted
	w.mu.Lock()
	w.kills = rise - counted
	w.mu.Unlock()
	return rise - counted
}

// seen is the count so far, without reading.
func (w *Watch) seen() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.kills
}

// Close ends the watch and releases what it holds.
func (w *Watch) Close() {
	if w.w != nil {
		w.w.mu.Lock()
		if w.w.byWD[w.wd] == w {
			delete(w.w.byWD, w.wd)
			// Fails with EINVAL where the kernel dropped the watch.
			_ = w.w.control(func(fd int) { _, _ = unix.InotifyRmWatch(fd, uint32(w.wd)) })
		}
		w.w.mu.Unlock()
		return
	}
	_ = w.efd.SetReadDeadline(time.Unix(1, 0))
	<-w.done
	w.efd.Close()
	w.ctl.Close()
}
