package cri_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// appArmorEnabled: the kernel enforces AppArmor profiles (libcontainer's
// test).
func appArmorEnabled() bool {
	if _, err := os.Stat("/sys/kernel/security/apparmor"); err != nil {
		return false
	}
	data, err := os.ReadFile("/sys/module/apparmor/parameters/enabled")
	return err == nil && strings.HasPrefix(string(data), "Y")
}

// apparmorOf is the profile a container's process runs under, as the
// kernel tells it ("berth-default (enforce)", "unconfined").
func (d *daemon) apparmorOf(t *testing.T, id string) string {
	t.Helper()
	return strings.TrimSpace(d.mustExec(t, id, "cat", "/proc/self/attr/current"))
}

// TestAppArmor: RuntimeDefault, and no choice at all, run under berth's
// default profile (Docker's and containerd's, loaded by berthd);
// Unconfined and privileged containers under none; a Localhost profile
// the operator loaded confines the container and what is exec'd in it;
// a profile the node does not have is refused with a clear error.
func TestAppArmor(t *testing.T) {
	if !appArmorEnabled() {
		t.Skip("AppArmor is not enabled on this host (TestAppArmorNotEnabled tests the refusal); make test-vm runs it")
	}
	parser, err := exec.LookPath("apparmor_parser")
	if err != nil {
		t.Fatal("apparmor_parser is not installed (the apparmor package)")
	}
	d := startDaemon(t)
	st, err := d.RT.Status(ctxT(t), &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(st.Info["apparmor"], "enabled") {
		t.Errorf("Status says of AppArmor: %q", st.Info["apparmor"])
	}

	// A profile of the test's own, as an operator would load one: it
	// allows everything but writes under /tmp/denied.
	name := fmt.Sprintf("berth-test-deny-%d", os.Getpid())
	profile := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(profile, []byte(fmt.Sprintf(`#include <tunables/global>
profile %s flags=(attach_disconnected,mediate_deleted) {
  #include <abstractions/base>
  file,
  capability,
  network,
  signal,
  ptrace,
  umount,
  deny /tmp/denied/** w,
}
`, name)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(parser, "-Kr", profile).CombinedOutput(); err != nil {
		t.Fatalf("load the test's profile: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(parser, "-R", profile).CombinedOutput(); err != nil {
			t.Errorf("unload the test's profile: %v: %s", err, out)
		}
	})

	podCfg := d.podConfig("apparmor")
	pod := d.runPod(t, podCfg)
	// CAP_SYS_ADMIN, so that only the profile stands between the
	// container and a mount.
	withProfile := func(name string, p *runtimeapi.SecurityProfile) *runtimeapi.ContainerConfig {
		cfg := containerConfig(name, "", "sh", "-c", "mkdir -p /tmp/denied /tmp/mnt; sleep 3600")
		cfg.Linux.SecurityContext.Apparmor = p
		cfg.Linux.SecurityContext.Capabilities = &runtimeapi.Capability{AddCapabilities: []string{"SYS_ADMIN"}}
		return cfg
	}
	cases := []struct {
		name    string
		profile *runtimeapi.SecurityProfile
		want    string
	}{
		{"runtimedefault", &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}, "berth-default (enforce)"},
		{"none", nil, "berth-default (enforce)"},
		{"unconfined", &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}, "unconfined"},
		{"localhost", &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: name}, name + " (enforce)"},
	}
	ids := map[string]string{}
	for _, tc := range cases {
		c := d.run(t, pod, podCfg, withProfile(tc.name, tc.profile))
		ids[tc.name] = c
		if got := d.apparmorOf(t, c); got != tc.want {
			t.Errorf("%s: the container runs under %q, want %q", tc.name, got, tc.want)
		}
	}
	// The default profile refuses what Docker's refuses: mounts, even
	// with CAP_SYS_ADMIN; unconfined, the capability decides.
	for _, tc := range []struct {
		name string
		ok   bool
	}{{"runtimedefault", false}, {"none", false}, {"unconfined", true}} {
		_, errOut, code := d.execSync(t, ids[tc.name], "mount", "-t", "tmpfs", "none", "/tmp/mnt")
		if (code == 0) != tc.ok || (!tc.ok && !strings.Contains(errOut, "denied")) {
			t.Errorf("%s: a mount with CAP_SYS_ADMIN exited %d (%q), want allowed %v", tc.name, code, errOut, tc.ok)
		}
	}
	// The Localhost profile denies its writes, to the container's init
	// and to what is exec'd alike; others write there freely.
	for _, tc := range []struct {
		name string
		code int32
	}{{"localhost", 1}, {"runtimedefault", 0}, {"unconfined", 0}} {
		_, errOut, code := d.execSync(t, ids[tc.name], "sh", "-c", "echo x > /tmp/denied/f")
		if (code == 0) != (tc.code == 0) {
			t.Errorf("%s: write under /tmp/denied exited %d (%q)", tc.name, code, errOut)
		}
	}

	// A privileged container asks for every right: no default profile.
	privCfg := d.podConfig("apparmor-priv")
	privCfg.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{Privileged: true}
	privPod := d.runPod(t, privCfg)
	cfg := containerConfig("privileged", "", "sleep", "3600")
	cfg.Linux.SecurityContext.Privileged = true
	if got := d.apparmorOf(t, d.run(t, privPod, privCfg, cfg)); got != "unconfined" {
		t.Errorf("privileged container without a profile runs under %q, want unconfined", got)
	}

	// A profile the node does not have: refused, saying which.
	d.pull(t, suite.busybox)
	_, err = d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, SandboxConfig: podCfg,
		Config: withProfile("missing", &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "berth-no-such-profile"})})
	wantCode(t, err, codes.InvalidArgument, "a Localhost profile that is not loaded")
	if err != nil && !strings.Contains(err.Error(), `"berth-no-such-profile" is not loaded`) {
		t.Errorf("error for a missing profile: %v", err)
	}
}

// TestAppArmorNotEnabled: where the kernel enforces no AppArmor, asking
// for a profile is refused (the pod would run unprotected), Unconfined
// and no choice run as before.
func TestAppArmorNotEnabled(t *testing.T) {
	if appArmorEnabled() {
		t.Skip("AppArmor is enabled on this host (TestAppArmor tests it)")
	}
	d := startDaemon(t)
	podCfg := d.podConfig("noapparmor")
	pod := d.runPod(t, podCfg)
	cfg := containerConfig("default", "", "true")
	cfg.Linux.SecurityContext.Apparmor = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
	d.pull(t, suite.busybox)
	_, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, SandboxConfig: podCfg, Config: cfg})
	wantCode(t, err, codes.FailedPrecondition, "RuntimeDefault AppArmor on a node without AppArmor")
	if err != nil && !strings.Contains(err.Error(), "AppArmor is not enabled on this node") {
		t.Errorf("error: %v", err)
	}
	for _, p := range []*runtimeapi.SecurityProfile{nil, {ProfileType: runtimeapi.SecurityProfile_Unconfined}} {
		cfg := containerConfig("unconfined", "", "true")
		cfg.Linux.SecurityContext.Apparmor = p
		c := d.run(t, pod, podCfg, cfg)
		if st := d.waitExited(t, c, 30*time.Second); st.ExitCode != 0 {
			t.Errorf("AppArmor %v on a node without it: exit %d", p, st.ExitCode)
		}
		if _, err := d.RT.RemoveContainer(ctxT(t), &runtimeapi.RemoveContainerRequest{ContainerId: c}); err != nil {
			t.Fatal(err)
		}
	}
}
