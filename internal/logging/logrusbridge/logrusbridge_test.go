package logrusbridge

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/sirupsen/logrus"
)

func TestBridge(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	Bridge(l, slog.LevelWarn)
	t.Cleanup(func() { Bridge(slog.Default(), slog.LevelInfo) })

	gone := &os.PathError{Op: "openat2", Path: "/sys/fs/cgroup/x.scope/memory.events", Err: syscall.ENOENT}
	logrus.WithError(gone).Warn("unable to get oom kill count")
	if buf.Len() != 0 {
		t.Errorf("the OOM count of a removed cgroup was logged at warning level: %q", buf.String())
	}

	logrus.WithError(errors.New("permission denied")).Warn("unable to get oom kill count")
	logrus.WithField("id", "c1").Warn("something else")
	logrus.Debug("not shown")
	out := buf.String()
	for _, want := range []string{`level=WARN msg="unable to get oom kill count" error="permission denied"`, `level=WARN msg="something else" id=c1`} {
		if !strings.Contains(out, want) {
			t.Errorf("log %q lacks %q", out, want)
		}
	}
	if strings.Contains(out, "not shown") {
		t.Errorf("a debug entry passed a warning-level bridge: %q", out)
	}
}
