package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestParseSpecErrors(t *testing.T) {
	cases := []struct {
		name, json, want string
	}{
		{"empty", "", "file is empty or truncated"},
		{"truncated", `{"process": {`, "file is empty or truncated"},
		{"null", "null", "config cannot be null"},
		{"syntax", "{\n \"a\": 1,\n \"b\": }", "invalid JSON at line 3, column 7"},
		{"first line", `{,}`, "invalid JSON at line 1, column 2"},
		{"type", `{"process": {"args": "sh"}}`, `field "process.args" wants []string, got string`},
		{"trailing", `{} {}`, "trailing data"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSpec([]byte(tc.json))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseSpec(%q) = %v, want %q", tc.json, err, tc.want)
			}
			if !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("error %v is not ErrInvalidSpec", err)
			}
		})
	}
}

func TestValidateSpec(t *testing.T) {
	bundle := t.TempDir()
	if err := os.Mkdir(filepath.Join(bundle, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	valid := func() *specs.Spec {
		s, err := DefaultSpec()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	cases := []struct {
		name string
		edit func(*specs.Spec)
		want string
	}{
		{"valid", func(*specs.Spec) {}, ""},
		{"no process", func(s *specs.Spec) { s.Process = nil }, "process property must not be empty"},
		{"no args", func(s *specs.Spec) { s.Process.Args = nil }, "process.args must not be empty"},
		{"relative cwd", func(s *specs.Spec) { s.Process.Cwd = "x" }, "must be an absolute path"},
		{"bad env", func(s *specs.Spec) { s.Process.Env = []string{"NOEQUALS"} }, "is not KEY=value"},
		{"no root", func(s *specs.Spec) { s.Root = nil }, "root.path must be set"},
		{"missing rootfs", func(s *specs.Spec) { s.Root.Path = "nope" }, "does not exist"},
		{"rootfs is a file", func(s *specs.Spec) { s.Root.Path = "file" }, "is not a directory"},
		{"no linux", func(s *specs.Spec) { s.Linux = nil }, "linux section is missing"},
		{"relative mount", func(s *specs.Spec) { s.Mounts[0].Destination = "proc" }, "is not an absolute path"},
	}
	if err := os.WriteFile(filepath.Join(bundle, "file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := valid()
			tc.edit(s)
			err := ValidateSpec(s, bundle)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("valid spec: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestValidateID(t *testing.T) {
	for _, id := range []string{"a", "abc-DEF_1.2+3", strings.Repeat("x", 1024)} {
		if err := ValidateID(id); err != nil {
			t.Errorf("ValidateID(%q) = %v", id, err)
		}
	}
	for _, id := range []string{"", ".", "..", "a/b", "../x", "a b", "a\x00", strings.Repeat("x", 1025), "ü"} {
		if err := ValidateID(id); err == nil {
			t.Errorf("ValidateID(%q) accepted", id)
		}
	}
}

// FuzzParseSpec: any bytes give a spec or an error, never a panic, and an
// accepted spec re-validates without panicking.
func FuzzParseSpec(f *testing.F) {
	s, _ := DefaultSpec()
	f.Add([]byte(`{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/"},"root":{"path":"rootfs"},"linux":{}}`))
	f.Add([]byte(`{"process": {"args": "sh"}}`))
	f.Add([]byte("{\n,}"))
	if data, err := jsonMarshal(s); err == nil {
		f.Add(data)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := ParseSpec(data)
		if err != nil {
			if spec != nil {
				t.Fatal("spec returned with an error")
			}
			return
		}
		_ = ValidateSpec(spec, dir)
		if spec.Process != nil {
			_, _ = NewProcess(spec.Process)
		}
	})
}
