// Package logging builds the slog logger every berth binary uses. Binaries
// that link libcontainer also route its logrus output into it
// (logging/logrusbridge), so that one process writes one log stream in
// one format; the shim does not, and stays without logrus.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
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
// file.
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
	return slog.New(h), close, nil
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
