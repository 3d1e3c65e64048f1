package oci_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/internal/testutil"
	bruntime "github.com/berth-runtime/berth/runtime"
)

// TestSpecWritesHardenedDefault checks `berth spec` output as a file.
func TestSpecWritesHardenedDefault(t *testing.T) {
	b := newBerth(t)
	dir := t.TempDir()
	b.ok("spec", "--bundle", dir)
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s specs.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Process.Capabilities.Bounding, bruntime.DefaultCapabilities()) {
		t.Errorf("bounding set %v", s.Process.Capabilities.Bounding)
	}
	if !s.Process.NoNewPrivileges {
		t.Error("noNewPrivileges is off")
	}
	if s.Linux.Seccomp == nil || s.Linux.Seccomp.DefaultAction != specs.ActErrno || len(s.Linux.Seccomp.Syscalls) < 10 {
		t.Errorf("seccomp %+v", s.Linux.Seccomp)
	}
	for _, p := range []string{"/proc/kcore", "/proc/keys", "/sys/firmware"} {
		if !slices.Contains(s.Linux.MaskedPaths, p) {
			t.Errorf("%s not masked", p)
		}
	}
	if !slices.Contains(s.Linux.ReadonlyPaths, "/proc/sys") {
		t.Error("/proc/sys not read-only")
	}
	var ns []string
	for _, n := range s.Linux.Namespaces {
		ns = append(ns, string(n.Type))
	}
	slices.Sort(ns)
	if want := []string{"ipc", "mount", "network", "pid", "uts"}; !slices.Equal(ns, want) {
		t.Errorf("namespaces %v, want %v", ns, want)
	}
	if r := b.run("spec", "--bundle", dir); r.ExitCode != 1 || !strings.Contains(r.Stderr, "exists") {
		t.Fatalf("spec over an existing config.json: %s", r)
	}
}

// TestDefaultSpecProtectsFromInside runs the default spec and checks each
// protection from inside the container.
func TestDefaultSpecProtectsFromInside(t *testing.T) {
	b := newBerth(t)
	script := `
grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\t'
for f in keys timer_list interrupts; do
	m=unmounted; grep -q " /proc/$f " /proc/self/mountinfo && m=mounted
	e=missing; [ -e /proc/$f ] && e=present
	echo $f=$e,$m,$(cat /proc/$f 2>/dev/null | wc -c)
done
echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo sysctl=writable || echo sysctl=readonly
unshare -n true 2>/dev/null && echo unshare=allowed || echo unshare=denied
mkdir -p /mnt && mount -t tmpfs none /mnt 2>/dev/null && echo mount=allowed || echo mount=denied
echo interfaces=$(ls /sys/class/net)
echo pid=$$
echo ok
`
	for _, f := range []string{"keys", "timer_list", "interrupts"} {
		if data, err := os.ReadFile("/proc/" + f); err != nil || len(data) == 0 {
			t.Fatalf("the host's /proc/%s is empty or missing (%v): masking it cannot be shown", f, err)
		}
	}
	bundle := testutil.NewBundle(t, "hardened", "sh", "-c", script)
	r := b.run("run", "-b", bundle.Dir, "hardened")
	if r.ExitCode != 0 {
		t.Fatalf("run: %s", r)
	}
	for _, want := range []string{
		// containerd's default set: 0xa80425fb
		"CapEff:00000000a80425fb",
		"CapBnd:00000000a80425fb",
		"NoNewPrivs:1",
		"Seccomp:2",
		// Masked: there, a mount (/dev/null over them) and empty inside,
		// though the host's have content (checked below; this kernel has
		// no /proc/kcore).
		"keys=present,mounted,0",
		"timer_list=present,mounted,0",
		"interrupts=present,mounted,0",
		"sysctl=readonly",
		"unshare=denied",
		"mount=denied",
		"interfaces=lo",
		"pid=1",
		"ok",
	} {
		if !strings.Contains(r.Stdout, want+"\n") {
			t.Errorf("inside the container: missing %q in\n%s", want, r.Stdout)
		}
	}
}

// TestSeccompDeniesWithEPERM checks the default profile answers a denied
// syscall with EPERM while ordinary programs keep working.
func TestSeccompDeniesWithEPERM(t *testing.T) {
	b := newBerth(t)
	// A capability the profile would otherwise tie syscalls to: with
	// CAP_SYS_ADMIN unshare is allowed by caps but still filtered for
	// CLONE_NEWUSER.
	bundle := testutil.NewBundle(t, "seccomp", "sh", "-c", "unshare -U true; echo rc=$?; ls / > /dev/null && echo ls-ok")
	r := b.run("run", "-b", bundle.Dir, "seccomp")
	if !strings.Contains(r.Stderr, "Operation not permitted") || !strings.Contains(r.Stdout, "rc=1") || !strings.Contains(r.Stdout, "ls-ok") {
		t.Fatalf("unshare -U under the default profile: %s", r)
	}
	// Without the profile the same call gets through.
	bundle.Spec.Linux.Seccomp = nil
	bundle.Save(t)
	r = b.run("run", "-b", bundle.Dir, "seccomp")
	if strings.Contains(r.Stderr, "Operation not permitted") {
		t.Fatalf("without seccomp unshare -U still fails with EPERM: %s", r)
	}
}
