// Package oci_test drives the built berth binary through every OCI CLI
// command, against busybox bundles, as runc's integration tests drive runc.
package oci_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/testutil"
	bruntime "github.com/berth-runtime/berth/runtime"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// cli runs one OCI runtime binary (berth, or runc for comparison) with its
// own state root, and the suite's cgroup driver (testutil.CgroupDriver).
type cli struct {
	t    *testing.T
	bin  string
	root string
}

func newBerth(t *testing.T) *cli {
	t.Helper()
	testutil.RequireRoot(t)
	return &cli{t: t, bin: testutil.Bin(t, "berth"), root: t.TempDir()}
}

// global are the flags before the command: the state root and the driver.
func (c *cli) global(args []string) []string {
	g := []string{"--root", c.root}
	if testutil.CgroupDriver() == cgroups.Systemd {
		g = append(g, "--systemd-cgroup")
	}
	return append(g, args...)
}

// run runs the binary with the global flags and args.
func (c *cli) run(args ...string) testutil.Result {
	c.t.Helper()
	return testutil.Cmd{Path: c.bin, Args: c.global(args)}.Run(c.t)
}

// runIn is run with a working directory and stdin.
func (c *cli) runIn(dir string, stdin []byte, args ...string) testutil.Result {
	c.t.Helper()
	return testutil.Cmd{Path: c.bin, Args: c.global(args), Dir: dir, Stdin: stdin}.Run(c.t)
}

// ok runs a command that must succeed.
func (c *cli) ok(args ...string) testutil.Result {
	c.t.Helper()
	r := c.run(args...)
	if r.ExitCode != 0 {
		c.t.Fatalf("%s %s: %s", filepath.Base(c.bin), strings.Join(args, " "), r)
	}
	return r
}

// deleteOnCleanup force-deletes the container when the test ends, passed
// or failed, so that no process, cgroup or state outlives it.
func (c *cli) deleteOnCleanup(id string) {
	c.t.Cleanup(func() {
		testutil.Cmd{Path: c.bin, Args: c.global([]string{"delete", "--force", id})}.Run(c.t)
	})
}

// state returns the parsed `state` output.
func (c *cli) state(id string) bruntime.State {
	c.t.Helper()
	r := c.ok("state", id)
	var st bruntime.State
	if err := json.Unmarshal([]byte(r.Stdout), &st); err != nil {
		c.t.Fatalf("state %s: %v in %q", id, err, r.Stdout)
	}
	return st
}

// waitStatus polls until the container reaches the status.
func (c *cli) waitStatus(id, want string) {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := c.state(id)
		if st.Status == want {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("container %s: status %s, want %s", id, st.Status, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitFile polls until a file exists inside the running container: the
// container's way of saying it is ready.
func (c *cli) waitFile(id, path string) {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for c.run("exec", id, "test", "-e", path).ExitCode != 0 {
		if time.Now().After(deadline) {
			c.t.Fatalf("container %s never created %s", id, path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// containerCgroup is the cgroup path of a container of the suite's
// bundles (testutil.ContainerCgroupsPath): the systemd driver makes it a
// scope, berth-<id>.scope, in the slice.
func containerCgroup(id string) string {
	if testutil.CgroupDriver() == cgroups.Systemd {
		return testutil.SlicePath(testutil.SystemdSlice) + "/berth-" + id + ".scope"
	}
	return testutil.CgroupParent + "/" + id
}

// cgroupFile returns the path of a cgroup file of the container, for v1
// (controller hierarchy) or v2 (unified).
func cgroupFile(t *testing.T, id, v1Controller, v1File, v2File string) string {
	t.Helper()
	rel := containerCgroup(id)
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return filepath.Join("/sys/fs/cgroup", rel, v2File)
	}
	return filepath.Join("/sys/fs/cgroup", v1Controller, rel, v1File)
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// assertGone checks that nothing of the container is left on the host:
// no state directory and no cgroup in any hierarchy.
func assertGone(t *testing.T, c *cli, id string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(c.root, id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state directory of %s left behind (%v)", id, err)
	}
	matches, _ := filepath.Glob("/sys/fs/cgroup/*" + containerCgroup(id))
	if m2, _ := filepath.Glob("/sys/fs/cgroup" + containerCgroup(id)); len(m2) > 0 {
		matches = append(matches, m2...)
	}
	if len(matches) > 0 {
		t.Errorf("cgroups of %s left behind: %v", id, matches)
	}
}
