package runtime

import (
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/moby/sys/capability"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

var oomProbe = sync.OnceValues(func() (current int, canLower bool) {
	data, err := os.ReadFile("/proc/self/oom_score_adj")
	if err == nil {
		current, _ = strconv.Atoi(strings.TrimSpace(string(data)))
	}
	return current, hasEffectiveCap(capability.CAP_SYS_RESOURCE)
})

var oomWarnOnce sync.Once

// RestrictOOMScoreAdj does what containerd's restrict_oom_score_adj does,
// found out at run time: without CAP_SYS_RESOURCE (nested and rootless
// nodes) the kernel refuses an oom_score_adj below the caller's own, so
// such a value is raised to the caller's, with one warning per process,
// instead of failing the container. berthd applies it to the specs it
// writes, for whichever OCI runtime runs them; berth's CLI again.
func RestrictOOMScoreAdj(spec *specs.Spec, log *slog.Logger) {
	if spec.Process == nil || spec.Process.OOMScoreAdj == nil {
		return
	}
	current, canLower := oomProbe()
	want := *spec.Process.OOMScoreAdj
	if canLower || want >= current {
		return
	}
	oomWarnOnce.Do(func() {
		log.Warn("no CAP_SYS_RESOURCE: raising oom_score_adj to this process's own value",
			"requested", want, "used", current)
	})
	p := *spec.Process
	p.OOMScoreAdj = &current
	spec.Process = &p
}

// hasEffectiveCap reports whether this process has c in its effective
// set.
func hasEffectiveCap(c capability.Cap) bool {
	self, err := capability.NewPid2(0)
	if err != nil || self.Load() != nil {
		return false
	}
	return self.Get(capability.EFFECTIVE, c)
}
