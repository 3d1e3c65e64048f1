package cgroups

import (
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// SwapAccounting reports whether the host accounts swap per cgroup, so
// that a swap limit can be set (memory.swap.max on v2,
// memory.memsw.limit_in_bytes on v1, absent when the kernel was booted
// without swapaccount).
func SwapAccounting() bool {
	if HostMode() == Unified {
		for _, f := range []string{"/sys/fs/cgroup/init.scope/memory.swap.max", "/sys/fs/cgroup/system.slice/memory.swap.max"} {
			if _, err := os.Stat(f); err == nil {
				return true
			}
		}
		return false
	}
	_, err := os.Stat("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
	return err == nil
}

// HugetlbAvailable reports whether the hugetlb controller is where
// libcontainer will look for it (in hybrid mode it may sit on the v2
// hierarchy, out of reach).
func HugetlbAvailable() bool {
	if HostMode() == Unified {
		data, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
		return err == nil && slices.Contains(strings.Fields(string(data)), "hugetlb")
	}
	var st unix.Statfs_t
	return unix.Statfs("/sys/fs/cgroup/hugetlb", &st) == nil && st.Type == unix.CGROUP_SUPER_MAGIC
}
