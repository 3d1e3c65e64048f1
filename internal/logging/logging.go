// Package logging builds the slog logger every berth binary uses, and
// routes libcontainer's logrus output into it so that one process writes
// one log stream in one format.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/sirupsen/logrus"
)

// Options selects where and how a binary logs.
type Options struct {
	// Path is a file to append to; empty means stderr.
	Path string
	// Format is "text" or "json". JSON lines carry lower-case levels
	// ("error", "warning") as runc's logrus output does, because engines
	// such as podman parse the runtime's --log file.
	Format string
	// Level is the lowest level written.
	Level slog.Level
}

// New returns a logger for the options and a function that closes its
// file. It also makes logrus (libcontainer's logger) write through it.
func New(o Options) (*slog.Logger, func() error, error) {
	var (
		w     io.Writer = os.Stderr
		close           = func() error { return nil }
	)
	if o.Path != "" {
		f, err := os.OpenFile(o.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, nil, fmt.Errorf("open log file: %w", err)
		}
		w, close = f, f.Close
	}
	hopts := &slog.HandlerOptions{Level: o.Level, ReplaceAttr: lowerLevel}
	var h slog.Handler
	switch o.Format {
	case "", "text":
		h = slog.NewTextHandler(w, hopts)
	case "json":
		h = slog.NewJSONHandler(w, hopts)
	default:
		_ = close()
		return nil, nil, fmt.Errorf("invalid log-format %q (want text or json)", o.Format)
	}
	l := slog.New(h)
	Bridge(l, o.Level)
	return l, close, nil
}

func lowerLevel(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.LevelKey {
		if lv, ok := a.Value.Any().(slog.Level); ok {
			s := strings.ToLower(lv.String())
			if s == "warn" {
				s = "warning"
			}
			return slog.String(slog.LevelKey, s)
		}
	}
	return a
}

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
