package cgroups

import (
	"context"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
	"github.com/opencontainers/cgroups/systemd"
)

// Driver names the component that owns the cgroup tree: berth writing the
// cgroupfs itself, or systemd through D-Bus. The names are the kubelet's
// (`cgroupDriver: cgroupfs|systemd`).
type Driver string

const (
	// Cgroupfs means berth creates and writes cgroup directories itself.
	Cgroupfs Driver = "cgroupfs"
	// Systemd means cgroups are systemd scopes and slices.
	Systemd Driver = "systemd"
)

// ParseDriver validates a driver name from a flag or config file.
func ParseDriver(s string) (Driver, error) {
	switch Driver(s) {
	case Cgroupfs, Systemd:
		return Driver(s), nil
	case "":
		return Cgroupfs, nil
	}
	return "", fmt.Errorf("unknown cgroup driver %q (want %q or %q)", s, Cgroupfs, Systemd)
}

// SystemdRunning reports whether systemd is PID 1 of this host, which the
// systemd driver needs.
func SystemdRunning() bool {
	return systemd.IsRunningSystemd()
}

// Check returns an error a person can act on if the driver cannot work on
// this host.
func (d Driver) Check() error {
	if d == Systemd && !SystemdRunning() {
		return fmt.Errorf("cgroup driver %q needs systemd as init, and this host does not run it (no /run/systemd/system); use %q", Systemd, Cgroupfs)
	}
	return nil
}

// PodParent checks a pod's cgroup parent for the driver and returns it in
// the form the driver places cgroups by. cgroupfs takes a clean absolute
// path ("/kubepods/besteffort/pod1234"). systemd takes a slice, given as
// its unit name ("kubepods-besteffort-pod1234.slice", the kubelet's form)
// or as a path whose last element is the slice ("/test.slice",
// "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234.slice",
// the forms of CRI test clients and hand-written pod configs): as
// containerd and CRI-O do, the last element is the slice, since systemd
// derives a slice's place in the tree from its name.
func (d Driver) PodParent(p string) (string, error) {
	if d == Systemd {
		slice := path.Base(p)
		if _, err := systemd.ExpandSlice(slice); err != nil || slice == "-.slice" {
			return "", fmt.Errorf("the systemd cgroup driver wants a slice, such as kubepods-besteffort-pod1234.slice or /test.slice (%q is none)", p)
		}
		return slice, nil
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.Contains(p, "..") {
		return "", fmt.Errorf("the cgroupfs driver wants a clean absolute path such as /kubepods/besteffort/pod1234 (%q is none)", p)
	}
	return p, nil
}

// sharedConn is berthd's one connection to systemd for the slices it
// stops (a connection per pod would cost a handshake and goroutines).
var sharedConn struct {
	sync.Mutex
	c *dbus.Conn
}

// systemdConn is the shared connection, made again if it was lost (a
// systemd re-exec, say). It is made with a context of its own: godbus
// closes a connection when the context it was made with ends, and the
// caller's (one request's) would close it under the others.
func systemdConn() (*dbus.Conn, error) {
	sharedConn.Lock()
	defer sharedConn.Unlock()
	if sharedConn.c != nil && sharedConn.c.Connected() {
		return sharedConn.c, nil
	}
	if sharedConn.c != nil {
		sharedConn.c.Close()
		sharedConn.c = nil
	}
	c, err := dbus.NewWithContext(context.Background())
	if err != nil {
		return nil, err
	}
	sharedConn.c = c
	return c, nil
}

// RemoveSlice stops a systemd slice that berth made for a pod (by naming
// it as the parent of the pod's scopes): systemd keeps a slice it
// started until someone stops it, empty or not, as the kubelet stops the
// pod slices it makes. A slice that is gone already is not an error.
func RemoveSlice(ctx context.Context, slice string) error {
	conn, err := systemdConn()
	if err != nil {
		return fmt.Errorf("stop %s: connect to systemd: %w", slice, err)
	}
	done := make(chan string, 1)
	if _, err := conn.StopUnitContext(ctx, slice, "replace", done); err != nil {
		var dbusErr godbus.Error
		if errors.As(err, &dbusErr) && dbusErr.Name == "org.freedesktop.systemd1.NoSuchUnit" {
			return nil
		}
		return fmt.Errorf("stop %s: %w", slice, err)
	}
	select {
	case result := <-done:
		if result != "done" {
			return fmt.Errorf("stop %s: systemd says %s", slice, result)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop %s: %w", slice, ctx.Err())
	}
}
