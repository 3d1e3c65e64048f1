package testutil

import (
	"fmt"
	"os"
)

// Scratch lets programs other than tests (a benchmark, a suite's TestMain)
// use the helpers: temporary directories under one root, clean-ups run by
// Close, and Fatal as a panic that Guard turns back into an error.
type Scratch struct {
	dir      string
	cleanups []func()
	errs     []string
}

// NewScratch makes a scratch area under dir.
func NewScratch(dir string) *Scratch { return &Scratch{dir: dir} }

type fatal struct{ msg string }

// Helper does nothing; it is there for the helpers' interface.
func (s *Scratch) Helper() {}

// Fatal stops the current Guard with an error.
func (s *Scratch) Fatal(args ...any) { panic(fatal{fmt.Sprint(args...)}) }

// Fatalf stops the current Guard with an error.
func (s *Scratch) Fatalf(format string, args ...any) { panic(fatal{fmt.Sprintf(format, args...)}) }

// TempDir makes a new directory in the scratch area.
func (s *Scratch) TempDir() string {
	d, err := os.MkdirTemp(s.dir, "t")
	if err != nil {
		s.Fatal(err)
	}
	return d
}

// Errorf records a failure found by a clean-up (something left behind);
// MainWith fails the suite with it.
func (s *Scratch) Errorf(format string, args ...any) {
	s.errs = append(s.errs, fmt.Sprintf(format, args...))
}

// Errors are the failures recorded by Errorf.
func (s *Scratch) Errors() []string { return s.errs }

// Cleanup registers f for Close.
func (s *Scratch) Cleanup(f func()) { s.cleanups = append(s.cleanups, f) }

// Close runs the clean-ups, last registered first.
func (s *Scratch) Close() {
	for i := len(s.cleanups) - 1; i >= 0; i-- {
		s.cleanups[i]()
	}
	s.cleanups = nil
}

// Guard runs fn and returns a Fatal inside it as an error.
func Guard(fn func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatal)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("%s", f.msg)
		}
	}()
	fn()
	return nil
}
