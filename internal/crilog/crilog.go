// Package crilog writes container output in the kubelet's CRI log format:
//
//	<RFC3339Nano timestamp> <stdout|stderr> <F|P> <content>
//
// one record per line of output; a line longer than MaxLine is split into
// partial (P) records ending with a full (F) one, as containerd and CRI-O
// split them, so that the kubelet can join them again.
package crilog

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// MaxLine is the longest content of one record.
const MaxLine = 16 * 1024

// File is a CRI log file shared by a container's streams. Reopen lets the
// kubelet rotate it.
type File struct {
	mu   sync.Mutex
	path string
	f    *os.File
	now  func() time.Time
}

// Open opens (creating) the log file for appending.
func Open(path string) (*File, error) {
	l := &File{path: path, now: time.Now}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *File) open() error {
	if err := os.MkdirAll(filepath.Dir(l.path), 0o755); err != nil {
		return fmt.Errorf("log directory: %w", err)
	}
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("open log %s: %w", l.path, err)
	}
	l.f = f
	return nil
}

// Reopen closes the file and opens the path again: after the kubelet has
// renamed the old file away, writes go to a new one.
func (l *File) Reopen() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	return l.open()
}

// Close closes the file.
func (l *File) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// record writes one record; partial marks it P.
func (l *File) record(stream string, partial bool, content []byte) error {
	tag := "F"
	if partial {
		tag = "P"
	}
	var b bytes.Buffer
	b.Grow(len(content) + 48)
	b.WriteString(l.now().Format(time.RFC3339Nano))
	b.WriteByte(' ')
	b.WriteString(stream)
	b.WriteByte(' ')
	b.WriteString(tag)
	b.WriteByte(' ')
	b.Write(content)
	b.WriteByte('\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return os.ErrClosed
	}
	_, err := l.f.Write(b.Bytes())
	return err
}

// CopyBuffer is the read size of one output stream: conmon's 8 KiB. Every
// running container holds one per stream in its pod's shim, so it is
// memory per pod; a busy writer costs a few more reads, not lost output.
const CopyBuffer = 8 * 1024

// Copy reads a stream of output and logs it until EOF; every extra writer
// (attach clients) gets the raw bytes too, after the complete lines among
// them are in the log, and is dropped once a write to it fails. It
// returns when r is exhausted.
func (l *File) Copy(stream string, r io.Reader, tee *Tee) error {
	buf := make([]byte, CopyBuffer)
	var line []byte
	for {
		n, err := r.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			for len(chunk) > 0 {
				i := bytes.IndexByte(chunk, '\n')
				if i < 0 {
					line = append(line, chunk...)
					chunk = nil
				} else {
					line = append(line, chunk[:i]...)
					chunk = chunk[i+1:]
					l.flush(stream, &line, false)
					continue
				}
				for len(line) >= MaxLine {
					_ = l.record(stream, true, line[:MaxLine])
					line = append(line[:0], line[MaxLine:]...)
				}
			}
			if tee != nil {
				tee.Write(buf[:n])
			}
		}
		if err != nil {
			// Output that ends without a newline ends with a partial
			// record, as containerd writes it: the kubelet adds no newline
			// to it (a termination message from the log is "DONE", not
			// "DONE\n").
			if len(line) > 0 {
				l.flush(stream, &line, true)
			}
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

func (l *File) flush(stream string, line *[]byte, partial bool) {
	for len(*line) > MaxLine {
		_ = l.record(stream, true, (*line)[:MaxLine])
		*line = (*line)[MaxLine:]
	}
	_ = l.record(stream, partial, *line)
	*line = (*line)[:0]
}

// Tee hands a stream's bytes to any number of attached writers (attach
// clients' pipes). Each writer has a queue of its own and a goroutine
// that empties it, so that a slow or stuck client never holds up the
// stream, its log or the container writing it: a client whose queue is
// full (teeQueue chunks behind) is dropped, its pipe closed after what
// it was sent.
type Tee struct {
	mu sync.Mutex
	ws []*teeWriter
}

// teeQueue is how many chunks (up to CopyBuffer each) a writer may fall
// behind before it is dropped: 2 MiB.
const teeQueue = 2 << 20 / CopyBuffer

type teeWriter struct {
	ch     chan []byte
	failed atomic.Bool
}

// Add attaches a writer.
func (t *Tee) Add(w io.WriteCloser) {
	tw := &teeWriter{ch: make(chan []byte, teeQueue)}
	go func() {
		defer w.Close()
		for p := range tw.ch {
			if tw.failed.Load() {
				continue
			}
			if _, err := w.Write(p); err != nil {
				tw.failed.Store(true)
			}
		}
	}()
	t.mu.Lock()
	t.ws = append(t.ws, tw)
	t.mu.Unlock()
}

// Write queues a copy of p for every writer, dropping those that failed
// or fell too far behind. It never blocks on a writer.
func (t *Tee) Write(p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.ws) == 0 {
		return
	}
	cp := bytes.Clone(p)
	kept := t.ws[:0]
	for _, w := range t.ws {
		if w.failed.Load() {
			close(w.ch)
			continue
		}
		select {
		case w.ch <- cp:
			kept = append(kept, w)
		default:
			w.failed.Store(true)
			close(w.ch)
		}
	}
	clear(t.ws[len(kept):])
	t.ws = kept
}

// CloseAll closes every writer once it has what it was sent: the stream
// has ended.
func (t *Tee) CloseAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, w := range t.ws {
		close(w.ch)
	}
	t.ws = nil
}
