package network

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NetNS is a network namespace that exists as long as its bind mount at
// Path does, whatever processes are in it.
type NetNS struct {
	Path string
}

// NewNetNS creates a network namespace bound at dir/name, with loopback
// up. Nothing is left behind if it fails.
func NewNetNS(dir, name string) (*NetNS, error) {
	ns, err := newNSFile(dir, name)
	if err != nil {
		return nil, err
	}
	errc := make(chan error, 1)
	// unshare(2) acts on the calling thread: a thread of its own, which
	// exits with the goroutine (it stays locked) and so never runs Go code
	// in the wrong namespace.
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("unshare network namespace: %w", err)
			}
			if err := unix.Mount("/proc/thread-self/ns/net", ns.Path, "", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("bind network namespace to %s: %w", ns.Path, err)
			}
			return loopbackUp()
		}()
	}()
	if err := <-errc; err != nil {
		_ = ns.Remove()
		return nil, err
	}
	return ns, nil
}

// AdoptNetNS binds the network namespace at nsPath (such as a process's
// /proc/<pid>/ns/net) at dir/name, so that it outlives the process, and
// brings its loopback up. Nothing is left behind if it fails.
func AdoptNetNS(dir, name, nsPath string) (*NetNS, error) {
	ns, err := newNSFile(dir, name)
	if err != nil {
		return nil, err
	}
	if err := unix.Mount(nsPath, ns.Path, "", unix.MS_BIND, ""); err != nil {
		_ = ns.Remove()
		return nil, fmt.Errorf("bind network namespace %s to %s: %w", nsPath, ns.Path, err)
	}
	if err := ns.Do(loopbackUp); err != nil {
		_ = ns.Remove()
		return nil, err
	}
	return ns, nil
}

// newNSFile makes the empty file a namespace is bound on, at dir/name.
func newNSFile(dir, name string) (*NetNS, error) {
	if name == "" || name == "." || name == ".." || filepath.Base(name) != name {
		return nil, fmt.Errorf("invalid network namespace name %q", name)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("netns directory: %w", err)
	}
	ns := &NetNS{Path: filepath.Join(dir, name)}
	f, err := os.OpenFile(ns.Path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", ns.Path, err)
	}
	return ns, f.Close()
}

func loopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find loopback: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring loopback up: %w", err)
	}
	return nil
}

// Do runs fn with the calling goroutine's thread inside the namespace.
func (ns *NetNS) Do(fn func() error) error {
	f, err := os.Open(ns.Path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns.Path, err)
	}
	defer f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread ends with this goroutine.
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", ns.Path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Remove unmounts and deletes the namespace's file; the namespace goes
// once no process is in it. Removing a removed namespace is not an error.
func (ns *NetNS) Remove() error {
	if err := unix.Unmount(ns.Path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", ns.Path, err)
	}
	if err := os.Remove(ns.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", ns.Path, err)
	}
	return nil
}

// IsNetNS reports whether path is a mounted network namespace.
func IsNetNS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}
