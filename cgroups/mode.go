package cgroups

import (
	ocg "github.com/opencontainers/cgroups"
)

// Mode is the cgroup layout of the host.
type Mode int

const (
	// Legacy is cgroup v1 only.
	Legacy Mode = iota + 1
	// Hybrid is cgroup v1 controllers with an empty v2 hierarchy mounted
	// at /sys/fs/cgroup/unified (the layout of this project's CI).
	Hybrid
	// Unified is cgroup v2 only, the layout of most current nodes.
	Unified
)

// HostMode reports the cgroup layout of the running host.
func HostMode() Mode {
	switch {
	case ocg.IsCgroup2UnifiedMode():
		return Unified
	case ocg.IsCgroup2HybridMode():
		return Hybrid
	default:
		return Legacy
	}
}

// Version is 2 for Unified and 1 otherwise: in hybrid mode every
// controller lives in a v1 hierarchy.
func (m Mode) Version() int {
	if m == Unified {
		return 2
	}
	return 1
}

func (m Mode) String() string {
	switch m {
	case Legacy:
		return "v1"
	case Hybrid:
		return "v1 (hybrid)"
	case Unified:
		return "v2"
	}
	return "unknown"
}
