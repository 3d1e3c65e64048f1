package runtime

import (
	"encoding/json"
	"slices"
	"testing"
)

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

func TestDefaultSpecIsHardened(t *testing.T) {
	s, err := DefaultSpec()
	if err != nil {
		t.Fatal(err)
	}
	if !s.Process.NoNewPrivileges || s.Linux.Seccomp == nil || len(s.Linux.MaskedPaths) == 0 || len(s.Linux.ReadonlyPaths) == 0 {
		t.Fatalf("default spec not hardened: %+v", s)
	}
	// The profile allows what the default capabilities need and nothing
	// that needs CAP_SYS_ADMIN.
	var allowed []string
	for _, sc := range s.Linux.Seccomp.Syscalls {
		if sc.Action == "SCMP_ACT_ALLOW" && len(sc.Args) == 0 {
			allowed = append(allowed, sc.Names...)
		}
	}
	for _, name := range []string{"read", "write", "execve", "chown", "kill"} {
		if !slices.Contains(allowed, name) {
			t.Errorf("%s not allowed", name)
		}
	}
	for _, name := range []string{"mount", "unshare", "keyctl", "reboot", "bpf", "setns"} {
		if slices.Contains(allowed, name) {
			t.Errorf("%s allowed without conditions", name)
		}
	}
	// Fresh copies: callers may edit them.
	s.Linux.MaskedPaths[0] = "x"
	if defaultMaskedPaths[0] == "x" {
		t.Fatal("DefaultSpec shares its slices with the package defaults")
	}
}

func TestResolvePathsIndependentOfWorkingDirectory(t *testing.T) {
	s, _ := DefaultSpec()
	s.Mounts = append(s.Mounts,
		specMount("/data", "bind", "data", "rbind"),
		specMount("/abs", "none", "/srv", "bind"),
		specMount("/t", "tmpfs", "tmpfs"))
	r := resolvePaths(s, "/bundles/b1")
	if r.Root.Path != "/bundles/b1/rootfs" {
		t.Errorf("root %s", r.Root.Path)
	}
	got := map[string]string{}
	for _, m := range r.Mounts {
		got[m.Destination] = m.Source
	}
	if got["/data"] != "/bundles/b1/data" || got["/abs"] != "/srv" || got["/t"] != "tmpfs" {
		t.Errorf("mount sources %v", got)
	}
	if s.Root.Path != "rootfs" || s.Mounts[len(s.Mounts)-3].Source != "data" {
		t.Error("resolvePaths changed its input")
	}
}
