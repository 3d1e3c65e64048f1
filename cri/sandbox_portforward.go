package cri

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/network"
)

// PortForward returns the streaming URL of a port forward.
func (s *Server) PortForward(ctx context.Context, req *runtimeapi.PortForwardRequest) (*runtimeapi.PortForwardResponse, error) {
	sb, err := s.findSandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, toStatus(err)
	}
	if sb.State != sandboxReady {
		return nil, toStatus(preconditionf("pod sandbox %s is not ready", sb.ID))
	}
	for _, p := range req.Port {
		if p <= 0 || p > 65535 {
			return nil, toStatus(invalidf("port %d is not a TCP port", p))
		}
	}
	req.PodSandboxId = sb.ID
	resp, err := s.stream.GetPortForward(req)
	if err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}

func (r streamRuntime) PortForward(ctx context.Context, podID string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	sb, err := r.s.findSandbox(podID)
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var conn net.Conn
	dial := func() error {
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		conn, err = d.DialContext(dctx, "tcp4", addr)
		return err
	}
	if sb.NetNS != "" {
		err = (&network.NetNS{Path: sb.NetNS}).Do(dial)
	} else {
		err = dial()
	}
	if err != nil {
		return fmt.Errorf("port forward to %s in pod %s: %w", addr, sb.ID, err)
	}
	defer conn.Close()
	errc := make(chan error, 2)
	go func() {
		_, err := io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		errc <- err
	}()
	go func() {
		_, err := io.Copy(stream, conn)
		errc <- err
	}()
	select {
	case <-errc:
		// One side is done; give the other a moment to flush.
		select {
		case <-errc:
		case <-time.After(time.Second):
		}
	case <-ctx.Done():
	}
	return nil
}
