package cri

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"k8s.io/cri-streaming/pkg/streaming"
)

// streamRuntime serves the streaming server's calls.
type streamRuntime struct{ s *Server }

// newStreamServer makes the kubelet's streaming server on the configured
// address (loopback by default); port 0 picks a free one.
func (s *Server) newStreamServer() (streaming.Server, net.Listener, error) {
	ln, err := net.Listen("tcp", s.cfg.StreamAddress)
	if err != nil {
		return nil, nil, fmt.Errorf("streaming server on %s: %w", s.cfg.StreamAddress, err)
	}
	cfg := streaming.DefaultConfig
	cfg.Addr = ln.Addr().String()
	if d := s.cfg.StreamIdleTimeout.Duration; d > 0 {
		cfg.StreamIdleTimeout = d
	}
	srv, err := streaming.NewServer(cfg, streamRuntime{s})
	if err != nil {
		ln.Close()
		return nil, nil, err
	}
	return srv, ln, nil
}

// serveStreams serves the streaming server on ln until it is closed.
func serveStreams(srv http.Handler, ln net.Listener) *http.Server {
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 30 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	return hs
}
