package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/opencontainers/cgroups/systemd"

	bcgroups "github.com/berth-runtime/berth/cgroups"
)

// driverEnv chooses the cgroup driver the suites run berth with; the VM
// tier sets it to systemd for its runs on a systemd host.
const driverEnv = "BERTH_TEST_CGROUP_DRIVER"

// CgroupDriver is the cgroup driver the suites run berth with: cgroupfs,
// unless $BERTH_TEST_CGROUP_DRIVER says systemd.
func CgroupDriver() bcgroups.Driver {
	if os.Getenv(driverEnv) == string(bcgroups.Systemd) {
		return bcgroups.Systemd
	}
	return bcgroups.Cgroupfs
}

// SystemdSlice is this test process's own slice, what CgroupParent is to
// the cgroupfs driver: berthtest-<binary><pid>.slice, in berthtest.slice.
// systemd removes a slice once nothing is in it.
var SystemdSlice = systemdSlice()

func systemdSlice() string {
	// A slice name's dashes are its path: keep letters and digits.
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return -1
	}, filepath.Base(CgroupParent))
	return "berthtest-" + name + ".slice"
}

// SubSlice is a slice inside this process's slice: name must be letters
// and digits.
func SubSlice(name string) string {
	return strings.TrimSuffix(SystemdSlice, ".slice") + "-" + name + ".slice"
}

// SlicePath is the cgroup path of a slice ("a-b.slice" is
// /a.slice/a-b.slice).
func SlicePath(slice string) string {
	p, err := systemd.ExpandSlice(slice)
	if err != nil {
		panic(fmt.Sprintf("slice %q: %v", slice, err))
	}
	return p
}

// ContainerCgroupsPath is the OCI cgroupsPath of a container id below this
// process's parent, in the form the driver wants: a path for cgroupfs,
// slice:prefix:name for systemd (a scope berth-<id>.scope).
func ContainerCgroupsPath(id string) string {
	if CgroupDriver() == bcgroups.Systemd {
		return SystemdSlice + ":berth:" + id
	}
	return CgroupParent + "/" + id
}

// ProcessCgroup is the cgroup path of a process, in the memory hierarchy
// on v1 and the unified one on v2: where its container's limits are,
// whichever driver put it there.
func ProcessCgroup(pid int) (string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	unified := bcgroups.HostMode() == bcgroups.Unified
	for _, line := range strings.Split(string(data), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if unified && parts[0] == "0" {
			return parts[2], nil
		}
		if !unified && strings.Contains(","+parts[1]+",", ",memory,") {
			return parts[2], nil
		}
	}
	return "", fmt.Errorf("no cgroup of pid %d in %q", pid, data)
}

// StartSlice makes a slice exist (systemctl start: a slice needs no unit
// file), for a component that wants its cgroup root there already (the
// kubelet's cgroupRoot).
func StartSlice(slice string) error {
	if out, err := exec.Command("systemctl", "start", slice).CombinedOutput(); err != nil {
		return fmt.Errorf("systemctl start %s: %v: %s", slice, err, out)
	}
	return nil
}

// StopSlice stops a slice and everything in it (systemd then removes
// its cgroup): systemd keeps a started slice, empty or not, and a slice
// named as a parent is started with what it holds. One that is not
// loaded is stopped already.
func StopSlice(slice string) error {
	if out, err := exec.Command("systemctl", "stop", slice).CombinedOutput(); err != nil && !strings.Contains(string(out), "not loaded") {
		return fmt.Errorf("systemctl stop %s: %v: %s", slice, err, out)
	}
	return nil
}
