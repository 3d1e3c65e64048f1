package image

import (
	"errors"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/types"
)

func TestNormalize(t *testing.T) {
	good := map[string]string{
		"busybox":                      "docker.io/library/busybox:latest",
		"busybox:1.36":                 "docker.io/library/busybox:1.36",
		"library/busybox":              "docker.io/library/busybox:latest",
		"docker.io/busybox":            "docker.io/library/busybox:latest",
		"user/app":                     "docker.io/user/app:latest",
		"quay.io/org/app:v1":           "quay.io/org/app:v1",
		"localhost:5000/app":           "localhost:5000/app:latest",
		"127.0.0.1:5000/a/b/c:t":       "127.0.0.1:5000/a/b/c:t",
		"busybox@sha256:" + hex64("a"): "docker.io/library/busybox@sha256:" + hex64("a"),
	}
	for in, want := range good {
		got, err := Normalize(in)
		if err != nil || got != want {
			t.Errorf("Normalize(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "UPPER", "a b", "busybox@sha256:short", ":tag", "a//b"} {
		if _, err := Normalize(in); !errors.Is(err, ErrInvalidReference) {
			t.Errorf("Normalize(%q) = %v, want ErrInvalidReference", in, err)
		}
	}
}

func TestChainIDs(t *testing.T) {
	a, b, c := digest.FromString("a"), digest.FromString("b"), digest.FromString("c")
	got := chainIDs([]digest.Digest{a, b, c})
	ab := digest.FromString(a.String() + " " + b.String())
	abc := digest.FromString(ab.String() + " " + c.String())
	if got[0] != a || got[1] != ab || got[2] != abc {
		t.Fatalf("chain IDs %v", got)
	}
}

func TestLookupKeys(t *testing.T) {
	id := "sha256:" + hex64("b")
	sys := &types.SystemContext{SystemRegistriesConfPath: "/nonexistent", SystemRegistriesConfDirPath: "/nonexistent"}
	if k := keysFor(sys, id); k.id != id || len(k.names) != 0 {
		t.Errorf("keys of an ID: %+v", k)
	}
	if k := keysFor(sys, hex64("b")); k.id != id {
		t.Errorf("keys of a bare hex ID: %+v", k)
	}
	if k := keysFor(sys, "abc123"); k.idPrefix != "abc123" || len(k.names) == 0 {
		t.Errorf("keys of a short hex string (prefix and name): %+v", k)
	}
	if k := keysFor(sys, "busybox"); len(k.names) == 0 || k.names[0] != "docker.io/library/busybox:latest" {
		t.Errorf("keys of a short name: %+v", k)
	}
}

func hex64(c string) string {
	s := ""
	for len(s) < 64 {
		s += c
	}
	return s
}

// FuzzReference: no user string makes reference handling panic.
func FuzzReference(f *testing.F) {
	for _, s := range []string{"busybox", "a/b:c", "oci:/x:y", "docker://a/b", "sha256:" + hex64("1"), "abc", "docker-archive:/t.tar", "x@sha256:" + hex64("f")} {
		f.Add(s)
	}
	sys := &types.SystemContext{SystemRegistriesConfPath: "/nonexistent", SystemRegistriesConfDirPath: "/nonexistent"}
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = Normalize(s)
		_ = keysFor(sys, s)
		_, _ = pullCandidates(sys, s)
		_ = isDigested(s)
	})
}
