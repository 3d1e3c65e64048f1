// Package logrusbridge makes logrus, libcontainer's logger, write through
// a binary's slog logger, so that one process writes one log stream in
// one format.
package logrusbridge

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"

	"github.com/sirupsen/logrus"
)

// Bridge sends every logrus entry to l at the matching level. logrus
// itself then writes nothing.
func Bridge(l *slog.Logger, level slog.Level) {
	logrus.SetOutput(io.Discard)
	logrus.SetLevel(toLogrus(level))
	logrus.StandardLogger().ReplaceHooks(logrus.LevelHooks{})
	logrus.AddHook(&hook{l: l})
}

func toLogrus(l slog.Level) logrus.Level {
	switch {
	case l <= slog.LevelDebug:
		return logrus.DebugLevel
	case l <= slog.LevelInfo:
		return logrus.InfoLevel
	case l <= slog.LevelWarn:
		return logrus.WarnLevel
	}
	return logrus.ErrorLevel
}

type hook struct{ l *slog.Logger }

func (h *hook) Levels() []logrus.Level { return logrus.AllLevels }

func (h *hook) Fire(e *logrus.Entry) error {
	var lv slog.Level
	switch e.Level {
	case logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel:
		lv = slog.LevelError
	case logrus.WarnLevel:
		lv = slog.LevelWarn
	case logrus.InfoLevel:
		lv = slog.LevelInfo
	default:
		lv = slog.LevelDebug
	}
	if lv == slog.LevelWarn && goneCgroup(e) {
		lv = slog.LevelDebug
	}
	attrs := make([]slog.Attr, 0, len(e.Data))
	for k, v := range e.Data {
		attrs = append(attrs, slog.Any(k, v))
	}
	h.l.LogAttrs(context.Background(), lv, e.Message, attrs...)
	return nil
}

// goneCgroup reports libcontainer's warning that it could not read the
// OOM kill count of a container whose start failed because the cgroup is
// already gone: with the systemd driver, systemd removes the scope as soon
// as its last process exits, before libcontainer looks
// (opencontainers/runc#5071). The start's own error is what the user
// needs; this line, at warning level, would only confuse them.
func goneCgroup(e *logrus.Entry) bool {
	if e.Message != "unable to get oom kill count" {
		return false
	}
	err, ok := e.Data[logrus.ErrorKey].(error)
	return ok && errors.Is(err, fs.ErrNotExist)
}
