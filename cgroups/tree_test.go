package cgroups_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// Exists, Pids and RemoveTree see a cgroup in whichever hierarchies it
// is in: one made by Create (which skips v1's devices hierarchy, the one
// libcontainer's Manager.Exists and GetAllPids look at), and a process in
// a child cgroup of only one v1 hierarchy.
func TestTree(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating cgroups needs root")
	}
	path := testutil.CgroupParent + "/tree"
	if cgroups.Exists(path) {
		t.Fatalf("%s exists before it is made", path)
	}
	if pids, err := cgroups.Pids(path); err != nil || len(pids) != 0 {
		t.Fatalf("Pids of a cgroup that does not exist: %v, %v", pids, err)
	}
	if err := cgroups.Create(path + "/child"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cgroups.RemoveTree(path); err != nil {
			t.Errorf("clean-up: %v", err)
		}
	})
	if !cgroups.Exists(path) || !cgroups.Exists(path+"/child") {
		t.Fatalf("Exists does not see %s made by Create", path)
	}
	if pids, err := cgroups.Pids(path); err != nil || len(pids) != 0 {
		t.Fatalf("Pids of an empty cgroup: %v, %v", pids, err)
	}

	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := false
	stop := func() {
		if !done {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			done = true
		}
	}
	t.Cleanup(stop)
	// One hierarchy: v2's, or v1's pids.
	procs := filepath.Join("/sys/fs/cgroup", path, "child", "cgroup.procs")
	if cgroups.HostMode() != cgroups.Unified {
		procs = filepath.Join("/sys/fs/cgroup/pids", path, "child", "cgroup.procs")
	}
	if err := os.WriteFile(procs, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	if pids, err := cgroups.Pids(path); err != nil || !slices.Equal(pids, []int{cmd.Process.Pid}) {
		t.Errorf("Pids = %v, %v; want [%d]", pids, err, cmd.Process.Pid)
	}
	if err := cgroups.RemoveTree(path); err == nil {
		t.Errorf("RemoveTree removed a cgroup with a process in it")
	}
	stop()
	if pids, err := cgroups.Pids(path); err != nil || len(pids) != 0 {
		t.Errorf("Pids after the process ended: %v, %v", pids, err)
	}
	if err := cgroups.RemoveTree(path); err != nil {
		t.Fatal(err)
	}
	if cgroups.Exists(path) {
		t.Errorf("%s exists after RemoveTree", path)
	}
}
