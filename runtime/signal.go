package runtime

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ParseSignal accepts a signal as runc does: a number ("9"), a name
// ("KILL", "kill") or a name with the SIG prefix ("SIGKILL"), and real-
// time signals as "RTMIN+3".
func ParseSignal(s string) (unix.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("invalid signal number %d (want 1-64)", n)
		}
		return unix.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	for base, prefix := range map[int]string{sigRTMin: "SIGRTMIN", sigRTMax: "SIGRTMAX"} {
		if rt, ok := strings.CutPrefix(name, prefix); ok {
			if off, err := rtOffset(rt); err == nil && base+off >= sigRTMin && base+off <= sigRTMax {
				return unix.Signal(base + off), nil
			}
		}
	}
	return 0, fmt.Errorf("unknown signal %q", s)
}

// Linux's real-time signal range as the C library exposes it (glibc
// reserves the first two for its threads).
const (
	sigRTMin = 34
	sigRTMax = 64
)

func rtOffset(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	return strconv.Atoi(s)
}
