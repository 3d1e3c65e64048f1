package cri_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// parseStatus reads the "Key:\tvalue" lines of /proc/<pid>/status.
func parseStatus(text string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(text, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// procStatus reads /proc/self/status inside a container (as the
// container's process sees it: execs share its user and privileges).
func (d *daemon) procStatus(t *testing.T, id string) map[string]string {
	t.Helper()
	return parseStatus(d.mustExec(t, id, "cat", "/proc/self/status"))
}

// hostStatus is the test process's own /proc/self/status field.
func hostStatus(t *testing.T, key string) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	v, ok := parseStatus(string(data))[key]
	if !ok {
		t.Fatalf("no %s in /proc/self/status", key)
	}
	return v
}

func int64p(v int64) *runtimeapi.Int64Value { return &runtimeapi.Int64Value{Value: v} }

// TestUsersAndGroups resolves users and groups as the kubelet expects:
// numeric ids, names from the image's /etc/passwd, supplemental groups
// merged from its /etc/group or not (Strict).
func TestUsersAndGroups(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("users")
	pod := d.runPod(t, podCfg)

	cases := []struct {
		name  string
		image string
		sc    func(*runtimeapi.LinuxContainerSecurityContext)
		// Uid/Gid lines start with the real id; Groups is a set.
		uid, gid string
		groups   []string
		user     string // what ContainerStatus reports
	}{
		{"numeric", "", func(sc *runtimeapi.LinuxContainerSecurityContext) {
			sc.RunAsUser, sc.RunAsGroup, sc.SupplementalGroups = int64p(1234), int64p(5678), []int64{4000}
		}, "1234", "5678", []string{"4000", "5678"}, "1234"},
		{"by-name", "", func(sc *runtimeapi.LinuxContainerSecurityContext) {
			sc.RunAsUsername = "user"
		}, "1000", "1000", []string{"1000", "2000"}, "1000"},
		{"image-user-merge", suite.tools, func(sc *runtimeapi.LinuxContainerSecurityContext) {}, "1000", "1000", []string{"1000", "2000"}, "1000"},
		{"image-user-strict", suite.tools, func(sc *runtimeapi.LinuxContainerSecurityContext) {
			sc.SupplementalGroupsPolicy = runtimeapi.SupplementalGroupsPolicy_Strict
			sc.SupplementalGroups = []int64{3000}
		}, "1000", "1000", []string{"1000", "3000"}, "1000"},
		{"root-default", "", func(sc *runtimeapi.LinuxContainerSecurityContext) {}, "0", "0", []string{"0"}, "0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := containerConfig(c.name, c.image, "sleep", "3600")
			if c.image == suite.tools {
				cfg.Args = []string{"sleep 3600"} // through the image's sh -c entrypoint
			}
			c.sc(cfg.Linux.SecurityContext)
			id := d.run(t, pod, podCfg, cfg)
			st := d.procStatus(t, id)
			if f := strings.Fields(st["Uid"]); len(f) == 0 || f[0] != c.uid {
				t.Errorf("Uid %q, want %s", st["Uid"], c.uid)
			}
			if f := strings.Fields(st["Gid"]); len(f) == 0 || f[0] != c.gid {
				t.Errorf("Gid %q, want %s", st["Gid"], c.gid)
			}
			groups := strings.Fields(st["Groups"])
			slices.Sort(groups)
			if !slices.Equal(groups, c.groups) {
				t.Errorf("Groups %v, want %v", groups, c.groups)
			}
			resp, err := d.RT.ContainerStatus(ctxT(t), &runtimeapi.ContainerStatusRequest{ContainerId: id})
			if err != nil {
				t.Fatal(err)
			}
			if u := resp.Status.GetUser().GetLinux(); u == nil || strconv.FormatInt(u.Uid, 10) != c.user {
				t.Errorf("status user %+v, want uid %s", u, c.user)
			}
		})
	}

	// A name the image does not know is the caller's mistake.
	cfg := containerConfig("ghost", "", "true")
	cfg.Linux.SecurityContext.RunAsUsername = "ghost"
	d.pull(t, suite.busybox)
	_, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: cfg, SandboxConfig: podCfg})
	wantCode(t, err, codes.InvalidArgument, "run_as_username not in /etc/passwd")
	if err != nil && !strings.Contains(err.Error(), "ghost") {
		t.Errorf("error does not name the user: %v", err)
	}
}

// TestPrivilegesAndConfinement checks from inside each container what its
// security context promised.
func TestPrivilegesAndConfinement(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("confine")
	podCfg.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{Privileged: true}
	pod := d.runPod(t, podCfg)

	t.Run("read-only-rootfs", func(t *testing.T) {
		cfg := containerConfig("ro", "", "sleep", "3600")
		cfg.Linux.SecurityContext.ReadonlyRootfs = true
		id := d.run(t, pod, podCfg, cfg)
		if _, errOut, code := d.execSync(t, id, "touch", "/new-file"); code == 0 || !strings.Contains(errOut, "Read-only file system") {
			t.Errorf("touch on a read-only rootfs: code %d %q", code, errOut)
		}
		// The kubelet's own files stay writable where they should be.
		d.mustExec(t, id, "touch", "/dev/shm/ok")
	})

	t.Run("capabilities", func(t *testing.T) {
		cfg := containerConfig("caps", "", "sleep", "3600")
		cfg.Linux.SecurityContext.Capabilities = &runtimeapi.Capability{
			DropCapabilities: []string{"ALL"}, AddCapabilities: []string{"NET_BIND_SERVICE", "CAP_KILL"}}
		id := d.run(t, pod, podCfg, cfg)
		st := d.procStatus(t, id)
		// CAP_KILL is bit 5, CAP_NET_BIND_SERVICE bit 10.
		if st["CapEff"] != "0000000000000420" || st["CapBnd"] != "0000000000000420" {
			t.Errorf("CapEff %s CapBnd %s, want 0000000000000420", st["CapEff"], st["CapBnd"])
		}
		if _, _, code := d.execSync(t, id, "chown", "1:1", "/tmp"); code == 0 {
			t.Errorf("chown without CAP_CHOWN succeeded")
		}
	})

	t.Run("add-all-capabilities", func(t *testing.T) {
		// ALL is what berthd can grant: its bounding set, which here (no
		// CAP_SYS_RESOURCE) is not every capability the kernel knows.
		cfg := containerConfig("allcaps", "", "sleep", "3600")
		cfg.Linux.SecurityContext.Capabilities = &runtimeapi.Capability{AddCapabilities: []string{"ALL"}}
		id := d.run(t, pod, podCfg, cfg)
		if st, want := d.procStatus(t, id), hostStatus(t, "CapBnd"); st["CapEff"] != want || st["CapBnd"] != want {
			t.Errorf("add ALL: CapEff %s CapBnd %s, want berthd's bounding set %s", st["CapEff"], st["CapBnd"], want)
		}
		// One berthd lacks, named: InvalidArgument saying which.
		bnd, err := strconv.ParseUint(hostStatus(t, "CapBnd"), 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		missing := ""
		for bit, name := range map[uint]string{24: "CAP_SYS_RESOURCE", 21: "CAP_SYS_ADMIN", 16: "CAP_SYS_MODULE", 17: "CAP_SYS_RAWIO"} {
			if bnd&(1<<bit) == 0 {
				missing = name
				break
			}
		}
		if missing == "" {
			t.Skip("this node's bounding set has every capability tried: the refusal of a missing one cannot be shown here")
		}
		cfg = containerConfig("missingcap", "", "true")
		cfg.Linux.SecurityContext.Capabilities = &runtimeapi.Capability{AddCapabilities: []string{missing}}
		_, err = d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: cfg, SandboxConfig: podCfg})
		wantCode(t, err, codes.InvalidArgument, "a capability berthd lacks")
		if err != nil && !strings.Contains(err.Error(), missing) {
			t.Errorf("the error does not name %s: %v", missing, err)
		}
	})

	t.Run("runtime-errors-have-codes", func(t *testing.T) {
		// Requests that fail in the runtime's init (at CreateContainer or
		// StartContainer): a code the client can act on, never Unknown.
		createStart := func(cfg *runtimeapi.ContainerConfig) error {
			resp, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: cfg, SandboxConfig: podCfg})
			if err != nil {
				return err
			}
			_, err = d.RT.StartContainer(ctxT(t), &runtimeapi.StartContainerRequest{ContainerId: resp.ContainerId})
			return err
		}
		wantCode(t, createStart(containerConfig("nosuchprog", "", "/no/such/program")), codes.InvalidArgument, "a missing program")
		cfg := containerConfig("badcwd", "", "true")
		cfg.WorkingDir = "/etc/passwd"
		if err := createStart(cfg); err == nil || status.Code(err) == codes.Unknown {
			t.Errorf("a working directory that is a file: %v", err)
		}
	})

	t.Run("default-capabilities", func(t *testing.T) {
		id := d.run(t, pod, podCfg, containerConfig("defcaps", "", "sleep", "3600"))
		// Docker's and containerd's default set.
		if st := d.procStatus(t, id); st["CapEff"] != "00000000a80425fb" {
			t.Errorf("default CapEff %s, want 00000000a80425fb", st["CapEff"])
		}
		// Unprivileged, /sys is read-only, even in a privileged pod.
		if out := d.mustExec(t, id, "sh", "-c", "grep ' /sys ' /proc/self/mounts"); !strings.Contains(out, " ro,") {
			t.Errorf("unprivileged /sys: %q", out)
		}
	})

	t.Run("no-new-privs", func(t *testing.T) {
		cfg := containerConfig("nnp", "", "sleep", "3600")
		cfg.Linux.SecurityContext.NoNewPrivs = true
		id := d.run(t, pod, podCfg, cfg)
		if st := d.procStatus(t, id); st["NoNewPrivs"] != "1" {
			t.Errorf("NoNewPrivs %q", st["NoNewPrivs"])
		}
		// The tools image runs as uid 1000 and has a set-user-ID root
		// program: it works without no_new_privs, and not with it.
		for _, nnp := range []bool{false, true} {
			cfg := containerConfig(fmt.Sprintf("setuid-nnp-%v", nnp), suite.tools, "sleep 3600")
			cfg.Linux.SecurityContext.NoNewPrivs = nnp
			id := d.run(t, pod, podCfg, cfg)
			want := map[bool]string{false: "0\n", true: "1000\n"}[nnp]
			if out := d.mustExec(t, id, "/usr/local/bin/euid"); out != want {
				t.Errorf("no_new_privs %v: set-user-ID root program runs as %q, want %q", nnp, out, want)
			}
		}
	})

	t.Run("seccomp", func(t *testing.T) {
		// As root, with the default capabilities, in the tools image.
		// Without AppArmor, whose default profile denies some of the
		// same calls first (TestAppArmor).
		noAppArmor := &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
		def := containerConfig("seccomp-default", suite.tools, "sleep 3600")
		def.Linux.SecurityContext.Apparmor = noAppArmor
		def.Linux.SecurityContext.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
		def.Linux.SecurityContext.RunAsUser = &runtimeapi.Int64Value{Value: 0}
		unconfined := containerConfig("seccomp-unconfined", suite.tools, "sleep 3600")
		unconfined.Linux.SecurityContext.Apparmor = noAppArmor
		unconfined.Linux.SecurityContext.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
		unconfined.Linux.SecurityContext.RunAsUser = &runtimeapi.Int64Value{Value: 0}
		profile := filepath.Join(d.Dir, "no-mkdir.json")
		if err := os.WriteFile(profile, []byte(`{"defaultAction": "SCMP_ACT_ALLOW",
			"syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}`), 0o644); err != nil {
			t.Fatal(err)
		}
		local := containerConfig("seccomp-local", "", "sleep", "3600")
		local.Linux.SecurityContext.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: profile}

		defID := d.run(t, pod, podCfg, def)
		if st := d.procStatus(t, defID); st["Seccomp"] != "2" {
			t.Errorf("RuntimeDefault: Seccomp %q, want 2 (filter)", st["Seccomp"])
		}
		// Creating a user namespace needs CAP_SYS_ADMIN under the default
		// profile; unconfined, root may.
		if _, errOut, code := d.execSync(t, defID, "unshare", "-U", "true"); code == 0 {
			t.Errorf("RuntimeDefault allowed unshare(CLONE_NEWUSER)")
		} else if !strings.Contains(errOut, "Operation not permitted") {
			t.Errorf("RuntimeDefault: unshare failed otherwise: %q", errOut)
		}
		unID := d.run(t, pod, podCfg, unconfined)
		if st := d.procStatus(t, unID); st["Seccomp"] != "0" {
			t.Errorf("Unconfined: Seccomp %q, want 0", st["Seccomp"])
		}
		if out, errOut, code := d.execSync(t, unID, "unshare", "-U", "true"); code != 0 {
			t.Errorf("Unconfined: unshare -U: %d %s%s", code, out, errOut)
		}
		// keyctl and unshare are the profile's alone to deny: unconfined,
		// they work. mount and reboot need capabilities the default set
		// lacks as well.
		for id, want := range map[string]string{
			defID: "keyctl=EPERM\nmount=EPERM\nreboot=EPERM\nunshare=EPERM\n",
			unID:  "keyctl=ok\nmount=EPERM\nreboot=EPERM\nunshare=ok\n",
		} {
			if got := d.mustExec(t, id, "/usr/local/bin/syscalls"); got != want {
				t.Errorf("system calls in %s:\n%s\nwant\n%s", id, got, want)
			}
		}
		localID := d.run(t, pod, podCfg, local)
		if _, errOut, code := d.execSync(t, localID, "mkdir", "/tmp/denied"); code == 0 || !strings.Contains(errOut, "Operation not permitted") {
			t.Errorf("Localhost profile: mkdir: %d %q", code, errOut)
		}
		d.mustExec(t, localID, "touch", "/tmp/allowed")

		bad := containerConfig("seccomp-missing", "", "true")
		bad.Linux.SecurityContext.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "/no/such/profile.json"}
		_, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: bad, SandboxConfig: podCfg})
		if err == nil || !strings.Contains(err.Error(), "/no/such/profile.json") {
			t.Errorf("missing Localhost profile: %v", err)
		}
	})

	t.Run("masked-and-readonly-paths", func(t *testing.T) {
		// Masked files read as empty (/dev/null bound over them), masked
		// directories are empty: only paths this kernel has.
		var files, dirs []string
		for _, p := range []string{"/proc/kcore", "/proc/timer_list", "/proc/sched_debug"} {
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
				files = append(files, p)
			}
		}
		for _, p := range []string{"/proc/acpi", "/proc/scsi"} {
			if fi, err := os.Stat(p); err == nil && fi.IsDir() {
				dirs = append(dirs, p)
			}
		}
		if len(files) == 0 || len(dirs) == 0 {
			t.Fatalf("no maskable paths on this host: files %v dirs %v", files, dirs)
		}
		cfg := containerConfig("masked", "", "sleep", "3600")
		// Masking alone: AppArmor's default profile, where the node has
		// it, denies /proc/kcore too (TestAppArmor).
		cfg.Linux.SecurityContext.Apparmor = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
		cfg.Linux.SecurityContext.MaskedPaths = append(slices.Clone(files), dirs...)
		cfg.Linux.SecurityContext.ReadonlyPaths = []string{"/proc/sys"}
		id := d.run(t, pod, podCfg, cfg)
		for _, f := range files {
			if out := d.mustExec(t, id, "sh", "-c", "wc -c < "+f); strings.TrimSpace(out) != "0" {
				t.Errorf("masked %s has %s bytes", f, out)
			}
		}
		for _, dir := range dirs {
			if out := d.mustExec(t, id, "ls", "-A", dir); out != "" {
				t.Errorf("masked %s lists %q", dir, out)
			}
		}
		d.checkProcSysReadOnly(t, id)
	})

	t.Run("default-masked-and-readonly-paths", func(t *testing.T) {
		// What crictl and berthctl send: no lists. The runtime's defaults
		// apply, as containerd's and CRI-O's do.
		cfg := containerConfig("default-masked", "", "sleep", "3600")
		id := d.run(t, pod, podCfg, cfg)
		m := d.procMounts(t, id)
		for _, p := range []string{"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"} {
			// Masking skips what this kernel lacks (/proc/kcore, here).
			if _, err := os.Stat(p); err == nil && !m.has(p) {
				t.Errorf("%s is not masked in a container that asked for no masked paths", p)
			}
		}
		if !m.readOnly("/proc/sys") {
			t.Errorf("/proc/sys is not read-only in a container that asked for no read-only paths")
		}
		if out := d.mustExec(t, id, "sh", "-c", "wc -c < /proc/timer_list"); strings.TrimSpace(out) != "0" {
			t.Errorf("/proc/timer_list reads %s bytes", out)
		}
		if out := d.mustExec(t, id, "ls", "-A", "/sys/firmware"); out != "" {
			t.Errorf("/sys/firmware lists %q", out)
		}
		d.checkProcSysReadOnly(t, id)
	})

	t.Run("privileged", func(t *testing.T) {
		cfg := containerConfig("priv", "", "sleep", "3600")
		cfg.Linux.SecurityContext.Privileged = true
		cfg.Linux.SecurityContext.MaskedPaths = []string{"/proc/timer_list"}
		id := d.run(t, pod, podCfg, cfg)
		st := d.procStatus(t, id)
		if want := hostStatus(t, "CapBnd"); st["CapEff"] != want {
			t.Errorf("privileged CapEff %s, want the host's bounding set %s", st["CapEff"], want)
		}
		if st["Seccomp"] != "0" {
			t.Errorf("privileged Seccomp %q, want 0", st["Seccomp"])
		}
		// Host devices are there, /sys is writable, nothing is masked.
		d.mustExec(t, id, "test", "-c", "/dev/kmsg")
		if out := d.mustExec(t, id, "sh", "-c", "wc -c < /proc/timer_list"); strings.TrimSpace(out) == "0" {
			t.Errorf("privileged: /proc/timer_list masked")
		}
		if out := d.mustExec(t, id, "sh", "-c", "grep ' /sys ' /proc/self/mounts"); !strings.Contains(out, "rw") {
			t.Errorf("privileged /sys: %q", out)
			specs, _ := filepath.Glob(filepath.Join(d.Dir, "root", "*", id+"*", "config.json"))
			for _, f := range specs {
				t.Logf("%s:\n%s", f, grepLines(string(readFile(f)), "sys"))
			}
		}
	})

	t.Run("privileged-needs-privileged-pod", func(t *testing.T) {
		plainCfg := d.podConfig("plain")
		plain := d.runPod(t, plainCfg)
		cfg := containerConfig("priv", "", "true")
		cfg.Linux.SecurityContext.Privileged = true
		_, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: plain, Config: cfg, SandboxConfig: plainCfg})
		wantCode(t, err, codes.InvalidArgument, "privileged container in an unprivileged pod")
	})
}

// checkProcSysReadOnly writes /proc/sys/vm/overcommit_memory's own value
// back (harmless to the host if it ever got through) and wants EROFS.
func (d *daemon) checkProcSysReadOnly(t *testing.T, id string) {
	t.Helper()
	f := "/proc/sys/vm/overcommit_memory"
	if _, errOut, code := d.execSync(t, id, "sh", "-c", "v=$(cat "+f+") && echo $v > "+f); code == 0 || !strings.Contains(errOut, "Read-only") {
		t.Errorf("write to read-only /proc/sys: %d %q", code, errOut)
	}
}

// mountTable is a container's own mount table: mount point → options.
type mountTable map[string]string

func (m mountTable) has(p string) bool { _, ok := m[p]; return ok }

func (m mountTable) readOnly(p string) bool {
	return m.has(p) && slices.Contains(strings.Split(m[p], ","), "ro")
}

// procMounts reads /proc/self/mountinfo inside a container (the host's
// table cannot see the container's mount namespace).
func (d *daemon) procMounts(t *testing.T, id string) mountTable {
	t.Helper()
	m := mountTable{}
	for _, l := range strings.Split(d.mustExec(t, id, "cat", "/proc/self/mountinfo"), "\n") {
		if f := strings.Fields(l); len(f) > 5 {
			m[f[4]] = f[5]
		}
	}
	return m
}
