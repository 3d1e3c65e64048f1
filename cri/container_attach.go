package cri

import (
	"context"
	"fmt"
	"io"
	"os"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
)

// Attach returns the streaming URL of an attach.
func (s *Server) Attach(ctx context.Context, req *runtimeapi.AttachRequest) (*runtimeapi.AttachResponse, error) {
	if _, err := s.runningContainer(req.GetContainerId()); err != nil {
		return nil, toStatus(err)
	}
	if !req.Stdin && !req.Stdout && !req.Stderr {
		return nil, toStatus(invalidf("one of stdin, stdout and stderr must be set"))
	}
	resp, err := s.stream.GetAttach(req)
	if err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}

func (r streamRuntime) Attach(ctx context.Context, id string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	c, err := r.s.runningContainer(id)
	if err != nil {
		return err
	}
	client := r.s.shimFor(c.PodID)
	stdio, err := client.Attach(ctx, c.ID)
	if err != nil {
		return fmt.Errorf("attach to %s: %w", c.ID, err)
	}
	defer stdio.Close()
	copies := pumpStdio(ctx, stdio, in, out, errw, resize, func(input *os.File) {
		// The client closed its stdin: with stdin_once, so does the
		// container's. Our copy of the pipe's write end goes first, or
		// the container would never see end-of-file.
		if c.config.StdinOnce {
			if input == stdio.Stdin {
				_ = input.Close()
			}
			_ = client.CloseStdin(context.Background(), c.ID)
		}
	})
	done := make(chan struct{})
	go func() { copies.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}
