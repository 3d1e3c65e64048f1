package cri

import (
	"os/exec"
	"strings"
	"testing"
)

func TestValidateRuntimes(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	for _, tc := range []struct {
		name    string
		rt      RuntimeConfig
		wantErr string
	}{
		{"berth", RuntimeConfig{Path: sh}, "DNS label"},
		{"Bad_Name", RuntimeConfig{Path: sh}, "DNS label"},
		{"nopath", RuntimeConfig{}, "runtime_path is required"},
		{"missing", RuntimeConfig{Path: "/nonexistent/runc"}, "no such file"},
		{"relroot", RuntimeConfig{Path: sh, Root: "rel"}, "absolute"},
	} {
		c := Config{State: "/run/berth", Runtimes: map[string]RuntimeConfig{tc.name: tc.rt}}
		if err := c.validateRuntimes(); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("[runtimes.%s] %+v: %v, want %q", tc.name, tc.rt, err, tc.wantErr)
		}
	}
	c := Config{State: "/run/berth", Runtimes: map[string]RuntimeConfig{"shell": {Path: "sh"}}}
	if err := c.validateRuntimes(); err != nil {
		t.Fatal(err)
	}
	if got := c.Runtimes["shell"]; got.Path != sh || got.Root != "/run/berth/runtimes/shell" {
		t.Errorf("filled in: %+v, want path %s and root /run/berth/runtimes/shell", got, sh)
	}
}
