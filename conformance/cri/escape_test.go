package cri_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/conformance/internal/berthd"
	"github.com/berth-runtime/berth/cri/adminapi"
)

// TestVolumePathDotDot: a container_path climbing out with .. resolves
// inside the container's root, like any other; the host's directory of
// the same name is left alone.
func TestVolumePathDotDot(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("dotdot")
	pod := d.runPod(t, podCfg)
	hostDir, volume := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(volume, "from-volume"), []byte("volume\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := containerConfig("dotdot", "", "sleep", "3600")
	cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/../../../../../.." + hostDir, HostPath: volume}}
	id := d.run(t, pod, podCfg, cfg)
	if m := berthd.MountsUnder(hostDir); len(m) > 0 {
		t.Fatalf("the volume was mounted on the host's %s: %v", hostDir, m)
	}
	if out := d.mustExec(t, id, "cat", hostDir+"/from-volume"); out != "volume\n" {
		t.Errorf("the volume inside the container at %s: %q", hostDir, out)
	}
}

// TestStateNotReadableByOthers: the CRI and admin sockets are root's
// (0660 and 0600), and another user can neither list berthd's state and
// root nor read the pods' and containers' files in them.
func TestStateNotReadableByOthers(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("private")
	pod := d.runPod(t, podCfg)
	ctr := d.run(t, pod, podCfg, containerConfig("private", "", "sleep", "3600"))
	for path, want := range map[string]os.FileMode{d.Socket: 0o660, adminapi.SocketFor(d.Socket): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != want || st.Uid != 0 {
			t.Errorf("%s: mode %v owner %d, want %v root", path, fi.Mode().Perm(), st.Uid, want)
		}
	}
	root := filepath.Join(d.Dir, "root")
	// The test's temporary directory is the test's; berthd's root below it
	// is what is checked, reached as root would be.
	for _, dir := range []string{d.State, root, filepath.Join(d.State, "pods", pod), filepath.Join(d.State, "containers", ctr), filepath.Join(d.State, "shim"), filepath.Join(root, "containers", ctr)} {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o044 != 0 {
			t.Errorf("%s is readable by others: %v", dir, fi.Mode().Perm())
		}
	}
	// As nobody: listing fails, and so does connecting to the socket
	// (which needs write permission on it).
	for _, args := range [][]string{{"ls", d.State}, {"ls", root}, {"ls", filepath.Join(root, "containers")}, {"sh", "-c", "echo > " + d.Socket}} {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Errorf("as nobody, %v succeeded: %s", args, out)
		} else if !strings.Contains(strings.ToLower(string(out)), "permission denied") && !strings.Contains(string(out), "No such device") {
			t.Errorf("as nobody, %v failed otherwise: %s", args, out)
		}
	}
}
