package cri

import (
	"context"
	"io"
	"os"
	"sync"

	"k8s.io/cri-streaming/pkg/streaming/remotecommand"

	"github.com/berth-runtime/berth/internal/shim"
)

// pumpStdio connects a process's stdio, as the shim handed it over, to a
// client's streams; exec and attach share it. Output comes from stdout
// (an exec with a terminal has only the console) and stderr; input goes
// to the console if there is one, else to stdin, and when the client's
// input ends stdinEOF runs with the descriptor it went to. The returned
// group is done when both outputs have reached end-of-file.
func pumpStdio(ctx context.Context, stdio *shim.Stdio, in io.Reader, out, errw io.Writer, resize <-chan remotecommand.TerminalSize, stdinEOF func(input *os.File)) *sync.WaitGroup {
	var copies sync.WaitGroup
	copyOut := func(w io.Writer, r *os.File) {
		if r == nil {
			return
		}
		if w == nil {
			w = io.Discard
		}
		copies.Add(1)
		go func() {
			defer copies.Done()
			_, _ = io.Copy(w, r)
		}()
	}
	output := stdio.Stdout
	if output == nil {
		output = stdio.Console
	}
	copyOut(out, output)
	copyOut(errw, stdio.Stderr)

	input := stdio.Stdin
	if stdio.Console != nil {
		input = stdio.Console
		if resize != nil {
			go resizeLoop(ctx, stdio.Console, resize)
		}
	}
	if in != nil && input != nil {
		go func() {
			_, _ = io.Copy(input, in)
			if stdinEOF != nil {
				stdinEOF(input)
			}
		}()
	}
	return &copies
}
