package runtime

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"sync"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// capSysResource is CAP_SYS_RESOURCE's bit number.
const capSysResource = 24

var oomProbe = sync.OnceValues(func() (current int, canLower bool) {
	data, err := os.ReadFile("/proc/self/oom_score_adj")
	if err == nil {
		current, _ = strconv.Atoi(strings.TrimSpace(string(data)))
	}
	return current, hasEffectiveCap(capSysResource)
})

var oomWarnOnce sync.Once

// restrictOOMScoreAdj does what containerd's restrict_oom_score_adj does,
// found out at run time: without CAP_SYS_RESOURCE (nested and rootless
// nodes) the kernel refuses an oom_score_adj below the caller's own, so
// such a value is raised to the caller's, with one warning per process,
// instead of failing the container.
func (r *Runtime) restrictOOMScoreAdj(spec *specs.Spec) {
	if spec.Process == nil || spec.Process.OOMScoreAdj == nil {
		return
	}
	current, canLower := oomProbe()
	want := *spec.Process.OOMScoreAdj
	if canLower || want >= current {
		return
	}
	oomWarnOnce.Do(func() {
		r.log.Warn("no CAP_SYS_RESOURCE: raising oom_score_adj to this process's own value",
			"requested", want, "used", current)
	})
	p := *spec.Process
	p.OOMScoreAdj = &current
	spec.Process = &p
}

// hasEffectiveCap reads the effective capability set of this process.
func hasEffectiveCap(bit uint) bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "CapEff:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<bit) != 0
		}
	}
	return false
}
