// Package logrusbridge makes logrus, libcontainer's logger, write through
// a binary's slog logger, so that one process writes one log stream in
// one format.
package logrusbridge

import (
	"context"
	"io"
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
	attrs := make([]slog.Attr, 0, len(e.Data))
	for k, v := range e.Data {
		attrs = append(attrs, slog.Any(k, v))
	}
	h.l.LogAttrs(context.Background(), lv, e.Message, attrs...)
	return nil
}
