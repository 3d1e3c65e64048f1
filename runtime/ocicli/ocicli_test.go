package ocicli_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/testutil"
	"github.com/berth-runtime/berth/runtime"
	"github.com/berth-runtime/berth/runtime/ocicli"
)

// A container that Debian's runc created, driven through the package as
// berthd drives a runtime handler's: state, start, processes, stats
// from its cgroup, an update, signals, deletion.
func TestRuncContainer(t *testing.T) {
	testutil.RequireRoot(t)
	runc := testutil.RequireCommand(t, "runc")
	rt := &ocicli.Runtime{Path: runc, Root: t.TempDir(), SystemdCgroup: testutil.CgroupDriver() == cgroups.Systemd}
	if _, err := rt.Load("none"); !errors.Is(err, runtime.ErrNotExist) {
		t.Fatalf("Load of a container runc has not: %v, want ErrNotExist", err)
	}

	bundle := t.TempDir()
	testutil.BusyboxRootfs(t, filepath.Join(bundle, "rootfs"))
	out, err := exec.Command(runc, "spec", "--bundle", bundle).CombinedOutput()
	if err != nil {
		t.Fatalf("runc spec: %v: %s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	id := "ocicli-" + filepath.Base(bundle)
	spec.Process.Terminal = false
	spec.Process.Args = []string{"sh", "-c", "sleep 600 & exec sleep 601"}
	spec.Linux.CgroupsPath = testutil.ContainerCgroupsPath(id)
	if data, err = json.Marshal(&spec); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	create := exec.Command(runc, "--root", rt.Root, "create", "--bundle", bundle, id)
	if rt.SystemdCgroup {
		create.Args = slices.Insert(create.Args, 1, "--systemd-cgroup")
	}
	// Its stdio is the container's: a file, not a pipe that the
	// container would hold open.
	log, err := os.Create(filepath.Join(t.TempDir(), "create.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	create.Stdout, create.Stderr = log, log
	if err := create.Run(); err != nil {
		out, _ := os.ReadFile(log.Name())
		t.Fatalf("runc create: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if _, err := rt.Remains(id); err != nil {
			t.Errorf("clean-up: %v", err)
		}
	})

	c, err := rt.Load(id)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := c.State(); err != nil || st.Status != runtime.StatusCreated || st.Pid <= 0 || st.Bundle != bundle {
		t.Fatalf("state of the created container: %+v %v", st, err)
	}
	if err := c.Exec(); err != nil {
		t.Fatal(err)
	}
	var pids []int
	eventually(t, "both processes", func() bool {
		pids, err = c.Processes()
		return err == nil && len(pids) == 2
	})
	stats, err := c.Stats()
	if err != nil || stats.MemoryUsage == 0 || stats.Processes != 2 {
		t.Errorf("stats: %+v %v, want memory in use and 2 pids", stats, err)
	}
	limit := int64(48 << 20)
	if err := c.Update(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}); err != nil {
		t.Fatal(err)
	}
	if stats, err = c.Stats(); err != nil || stats.MemoryLimit != uint64(limit) {
		t.Errorf("memory limit after the update: %d %v, want %d", stats.MemoryLimit, err, limit)
	}
	if list, err := rt.List(); err != nil || len(list) != 1 || list[0].ID != id || list[0].Status != runtime.StatusRunning {
		t.Errorf("list: %+v %v", list, err)
	}
	if err := c.Signal(unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the container stopped", func() bool {
		s, _ := c.Status()
		return s == runtime.StatusStopped
	})
	if err := c.Delete(false); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Load(id); !errors.Is(err, runtime.ErrNotExist) {
		t.Errorf("Load after delete: %v", err)
	}
	// Gone, or a zombie until whoever inherited it reaps it.
	eventually(t, "the container's processes gone", func() bool {
		for _, p := range pids {
			if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p)); err == nil && !strings.Contains(string(stat), ") Z ") {
				return false
			}
		}
		return true
	})
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(testutil.Scaled(10 * time.Second))
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, testutil.Scaled(10*time.Second))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMain checks for and removes the cgroups the tests leave.
func TestMain(m *testing.M) { testutil.Main(m) }
