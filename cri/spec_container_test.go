package cri

import (
	"errors"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/shim"
	"github.com/berth-runtime/berth/runtime"
)

func TestMaskedPaths(t *testing.T) {
	kubelet := &runtimeapi.LinuxContainerSecurityContext{MaskedPaths: []string{"/proc/kcore"}, ReadonlyPaths: []string{"/proc/sys"}}
	for _, c := range []struct {
		name       string
		sc         *runtimeapi.LinuxContainerSecurityContext
		userns     bool
		masked, ro []string
	}{
		{"none sent: the defaults", &runtimeapi.LinuxContainerSecurityContext{}, false, runtime.DefaultMaskedPaths(), runtime.DefaultReadonlyPaths()},
		{"no security context: the defaults", nil, false, runtime.DefaultMaskedPaths(), runtime.DefaultReadonlyPaths()},
		{"the kubelet's lists", kubelet, false, kubelet.MaskedPaths, kubelet.ReadonlyPaths},
		{"the kubelet's lists, user namespace", kubelet, true, kubelet.MaskedPaths, kubelet.ReadonlyPaths},
		{"empty in a user namespace: Unmasked", &runtimeapi.LinuxContainerSecurityContext{}, true, nil, nil},
		{"only masked sent", &runtimeapi.LinuxContainerSecurityContext{MaskedPaths: []string{"/x"}}, false, []string{"/x"}, runtime.DefaultReadonlyPaths()},
	} {
		masked, ro := maskedPaths(c.sc, c.userns)
		if !slices.Equal(masked, c.masked) || !slices.Equal(ro, c.ro) {
			t.Errorf("%s: masked %v readonly %v, want %v %v", c.name, masked, ro, c.masked, c.ro)
		}
	}
	// The defaults are copies: a container's spec never edits them.
	masked, _ := maskedPaths(nil, false)
	masked[0] = "/changed"
	if runtime.DefaultMaskedPaths()[0] == "/changed" {
		t.Fatal("maskedPaths returned the shared default slice")
	}
}

func TestCapabilities(t *testing.T) {
	grantable, err := grantableCapabilities()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{}
	caps := func(add, drop []string) ([]string, error) {
		c, err := s.capabilities(&runtimeapi.LinuxContainerSecurityContext{
			Capabilities: &runtimeapi.Capability{AddCapabilities: add, DropCapabilities: drop}})
		if err != nil {
			return nil, err
		}
		return c.Bounding, nil
	}
	all, err := caps([]string{"ALL"}, nil)
	if err != nil {
		t.Fatalf("add ALL: %v", err)
	}
	if !slices.Equal(all, sortedKeys(grantable)) {
		t.Errorf("add ALL gives %v, want berthd's bounding set %v", all, sortedKeys(grantable))
	}
	got, err := caps([]string{"net_bind_service", "CAP_KILL"}, []string{"ALL"})
	if err != nil || !slices.Equal(got, []string{"CAP_KILL", "CAP_NET_BIND_SERVICE"}) {
		t.Errorf("drop ALL, add two: %v %v", got, err)
	}
	def, err := caps(nil, nil)
	if err != nil || len(def) != len(runtime.DefaultCapabilities()) {
		t.Errorf("defaults: %v %v", def, err)
	}
	// A capability berthd lacks (none here if it holds all: then the
	// case cannot be made and is skipped).
	for _, c := range []string{"CAP_SYS_RESOURCE", "CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_BPF", "CAP_PERFMON"} {
		if grantable[c] {
			continue
		}
		_, err := caps([]string{c}, nil)
		if !errors.Is(err, errInvalid) || status.Code(toStatus(err)) != codes.InvalidArgument {
			t.Errorf("add %s, which berthd lacks: %v, want InvalidArgument", c, err)
		}
		return
	}
	t.Log("berthd holds every capability tried: the missing-capability case is not made here")
}

func TestRuntimeFailureCodes(t *testing.T) {
	for msg, want := range map[string]codes.Code{
		`exec: "nosuch": executable file not found in $PATH`:           codes.InvalidArgument,
		"mount /x to rootfs: no such file or directory":                codes.InvalidArgument,
		"unable to apply caps: operation not permitted":                codes.PermissionDenied,
		"fork/exec: resource temporarily unavailable":                  codes.ResourceExhausted,
		"write /sys/fs/cgroup/x/cgroup.procs: no space left on device": codes.ResourceExhausted,
		"container init was OOM-killed (memory limit too low?)":        codes.FailedPrecondition,
		"something the kernel said that no rule knows":                 codes.FailedPrecondition,
	} {
		if got := status.Code(toStatus(runtimeFailure(errors.New(msg)))); got != want {
			t.Errorf("%q: %v, want %v", msg, got, want)
		}
	}
	// Errors that have a kind keep it.
	if got := status.Code(toStatus(runtimeFailure(notFoundf("container x")))); got != codes.NotFound {
		t.Errorf("not found through runtimeFailure: %v", got)
	}
	if got := status.Code(toStatus(runtimeFailure(shim.ErrUnavailable))); got != codes.Unavailable {
		t.Errorf("shim unavailable: %v", got)
	}
	if runtimeFailure(nil) != nil {
		t.Error("runtimeFailure(nil) is not nil")
	}
}

// TestStatsCacheForgets: the samples of a removed container or pod go,
// by forget at removal and by prune for one a racing call put back.
func TestStatsCacheForgets(t *testing.T) {
	c := newStatsCache()
	now := time.Now()
	for _, k := range []string{"c1", "metrics:c1", "pod:p1", "c2"} {
		c.nanoCores(k, 1, now)
	}
	c.disk["c1"] = diskSample{}
	c.forget("c1")
	c.forget("p1")
	if n := c.size(); n != 1 {
		t.Fatalf("%d samples after forgetting c1 and p1, want 1 (c2)", n)
	}
	// c2 removed while a stats call was under way: prune drops it.
	c.prune(func(id string) bool { return id == "c3" })
	if n := c.size(); n != 0 {
		t.Fatalf("%d samples after pruning unknown ids", n)
	}
}
