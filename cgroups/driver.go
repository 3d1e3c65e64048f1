package cgroups

import (
	"fmt"

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
