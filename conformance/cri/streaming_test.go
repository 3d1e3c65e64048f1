package cri_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/grpc/codes"
	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	utilexec "k8s.io/client-go/util/exec"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// streamURL runs an exec or attach URL as the kubelet's clients do, with
// in as stdin, and returns stdout, stderr and the command's error.
func streamURL(t *testing.T, rawURL string, in string, tty bool) (string, string, error) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	if u.Hostname() != "127.0.0.1" {
		t.Errorf("streaming server on %s, want loopback", u.Host)
	}
	ex, err := remotecommand.NewSPDYExecutor(&restclient.Config{}, "POST", u)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	opts := remotecommand.StreamOptions{Stdout: &stdout, Tty: tty}
	if !tty {
		opts.Stderr = &stderr
	}
	if in != "" {
		opts.Stdin = strings.NewReader(in)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = ex.StreamWithContext(ctx, opts)
	return stdout.String(), stderr.String(), err
}

func TestExecAndExecSync(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("exec")
	pod := d.runPod(t, podCfg)
	c := d.run(t, pod, podCfg, containerConfig("c", "", "sleep", "3600"))
	ctx := ctxT(t)

	out, errOut, code := d.execSync(t, c, "sh", "-c", "echo out; echo err >&2; exit 7")
	if out != "out\n" || errOut != "err\n" || code != 7 {
		t.Errorf("ExecSync: %q %q %d", out, errOut, code)
	}
	start := time.Now()
	_, err := d.RT.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: c, Cmd: []string{"sleep", "30"}, Timeout: 1})
	wantCode(t, err, codes.DeadlineExceeded, "ExecSync past its timeout")
	if time.Since(start) > 20*time.Second {
		t.Errorf("ExecSync timeout of 1s took %s", time.Since(start))
	}
	// The timed-out process is gone.
	if out := d.mustExec(t, c, "ps", "-o", "args"); strings.Contains(out, "sleep 30") {
		t.Errorf("timed-out exec still runs:\n%s", out)
	}
	// A missing binary: the caller learns it failed, and why.
	resp0, err := d.RT.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: c, Cmd: []string{"/no/such/binary"}, Timeout: 10})
	if err == nil && resp0.ExitCode == 0 {
		t.Errorf("exec of a missing binary succeeded")
	} else if err != nil && !strings.Contains(err.Error(), "/no/such/binary") {
		t.Errorf("exec of a missing binary: %v", err)
	}

	// Exec through the streaming server: stdin in, both outputs back, the
	// exit code as the kubelet sees it.
	resp, err := d.RT.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: c, Cmd: []string{"sh", "-c", "cat; echo done >&2; exit 3"},
		Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, err = streamURL(t, resp.Url, "hello stdin\n", false)
	var ce utilexec.CodeExitError
	if out != "hello stdin\n" || errOut != "done\n" || !errors.As(err, &ce) || ce.Code != 3 {
		t.Errorf("Exec: stdout %q stderr %q err %v", out, errOut, err)
	}

	// With a terminal.
	resp, err = d.RT.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: c, Cmd: []string{"sh", "-c", "tty; stty size"}, Tty: true, Stdout: true})
	if err != nil {
		t.Fatal(err)
	}
	out, _, err = streamURL(t, resp.Url, "", true)
	if err != nil || !strings.Contains(out, "/dev/pts/") {
		t.Errorf("Exec with a tty: %q %v", out, err)
	}

	// Requests that cannot work.
	for _, req := range []*runtimeapi.ExecRequest{
		{ContainerId: c, Stdout: true},
		{ContainerId: c, Cmd: []string{"true"}},
		{ContainerId: c, Cmd: []string{"true"}, Tty: true, Stdout: true, Stderr: true},
	} {
		_, err := d.RT.Exec(ctx, req)
		wantCode(t, err, codes.InvalidArgument, "Exec "+req.String())
	}
	_, err = d.RT.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: "no-such-container", Cmd: []string{"true"}, Stdout: true})
	wantCode(t, err, codes.NotFound, "Exec in an unknown container")
	_, err = d.RT.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: "no-such-container", Cmd: []string{"true"}})
	wantCode(t, err, codes.NotFound, "ExecSync in an unknown container")

	// A stopped container cannot be exec'd into.
	if _, err := d.RT.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: c, Timeout: 5}); err != nil {
		t.Fatal(err)
	}
	_, err = d.RT.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: c, Cmd: []string{"true"}})
	wantCode(t, err, codes.FailedPrecondition, "ExecSync in an exited container")
}

func TestAttachStdinOnce(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("attach")
	pod := d.runPod(t, podCfg)
	cfg := containerConfig("cat", "", "sh", "-c", "echo ready; cat; echo stdin closed")
	cfg.Stdin, cfg.StdinOnce = true, true
	c := d.run(t, pod, podCfg, cfg)
	ctx := ctxT(t)

	resp, err := d.RT.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: c, Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := streamURL(t, resp.Url, "line one\nline two\n", false)
	if err != nil {
		t.Fatalf("attach: %v (stdout %q)", err, out)
	}
	// What was written before the attach went to the log, not to us; what
	// cat echoes comes back, and closing stdin ends it (stdin_once).
	if !strings.Contains(out, "line one\nline two\n") {
		t.Errorf("attach stdout %q", out)
	}
	st := d.waitExited(t, c, 30*time.Second)
	if st.ExitCode != 0 || st.Reason != "Completed" {
		t.Errorf("after stdin closed: code %d reason %q", st.ExitCode, st.Reason)
	}
	_, err = d.RT.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: c, Stdout: true})
	wantCode(t, err, codes.FailedPrecondition, "Attach to an exited container")
}

// runWeb runs a web server answering "pong" on port 8080 of the pod and
// waits until it listens: client-go's forwarder gives up at the first
// failed connection (as kubectl port-forward does).
func (d *daemon) runWeb(t *testing.T, pod string, podCfg *runtimeapi.PodSandboxConfig) string {
	t.Helper()
	web := d.run(t, pod, podCfg, containerConfig("web", "", "sh", "-c",
		"mkdir -p /www && echo pong > /www/index.html && exec httpd -f -p 8080 -h /www"))
	eventually(t, 20*time.Second, "httpd listening in the pod", func() error {
		if out, _, code := d.execSync(t, web, "wget", "-q", "-O-", "http://127.0.0.1:8080/index.html"); code != 0 || out != "pong\n" {
			return errNotYet
		}
		return nil
	})
	return web
}

func TestPortForward(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("portforward")
	pod := d.runPod(t, podCfg)
	d.runWeb(t, pod, podCfg)
	ctx := ctxT(t)

	resp, err := d.RT.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: pod, Port: []int32{8080}})
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(resp.Url)
	if err != nil {
		t.Fatal(err)
	}
	transport, upgrader, err := spdy.RoundTripperFor(&restclient.Config{})
	if err != nil {
		t.Fatal(err)
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, "POST", u)
	stop, ready := make(chan struct{}), make(chan struct{})
	var pfOut, pfErr bytes.Buffer
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:8080"}, stop, ready, &pfOut, &pfErr)
	if err != nil {
		t.Fatal(err)
	}
	fwDone := make(chan error, 1)
	go func() { fwDone <- fw.ForwardPorts() }()
	defer func() {
		close(stop)
		<-fwDone
	}()
	select {
	case <-ready:
	case err := <-fwDone:
		t.Fatalf("port forward: %v %s", err, pfErr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("port forward not ready")
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		t.Fatalf("ports: %v %v", ports, err)
	}
	local := "http://127.0.0.1:" + strconv.Itoa(int(ports[0].Local)) + "/index.html"
	// Two requests: each is a new stream over the same connection.
	for i := 0; i < 2; i++ {
		r, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Get(local)
		if err != nil {
			t.Fatalf("GET through the port forward: %v (%s)", err, pfErr.String())
		}
		body, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != 200 || string(body) != "pong\n" {
			t.Errorf("GET through the port forward: %s %q", r.Status, body)
		}
	}

	_, err = d.RT.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: pod, Port: []int32{70000}})
	wantCode(t, err, codes.InvalidArgument, "PortForward to port 70000")
	_, err = d.RT.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: "no-such-pod", Port: []int32{80}})
	wantCode(t, err, codes.NotFound, "PortForward to an unknown pod")
}

// TestStreamingWebSocket: exec, attach and port-forward over WebSocket,
// the protocols the API server speaks to a runtime's streaming server
// when it proxies rather than redirects (v4.channel.k8s.io).
func TestStreamingWebSocket(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("websocket")
	pod := d.runPod(t, podCfg)
	ticker := d.run(t, pod, podCfg, containerConfig("ticker", "", "sh", "-c", "while true; do echo tick; sleep 0.2; done"))
	web := d.runWeb(t, pod, podCfg)
	ctx := ctxT(t)
	wsExec := func(rawURL string, opts remotecommand.StreamOptions, timeout time.Duration) error {
		ex, err := remotecommand.NewWebSocketExecutorForProtocols(&restclient.Config{}, "GET", rawURL, "v4.channel.k8s.io")
		if err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return ex.StreamWithContext(sctx, opts)
	}

	t.Run("exec", func(t *testing.T) {
		resp, err := d.RT.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: web, Cmd: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}, Stdout: true, Stderr: true})
		if err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		err = wsExec(resp.Url, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}, time.Minute)
		var exitErr utilexec.ExitError
		if !errors.As(err, &exitErr) || exitErr.ExitStatus() != 3 {
			t.Errorf("exit: %v, want status 3", err)
		}
		if stdout.String() != "out\n" || stderr.String() != "err\n" {
			t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
		}
	})

	t.Run("attach", func(t *testing.T) {
		resp, err := d.RT.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: ticker, Stdout: true})
		if err != nil {
			t.Fatal(err)
		}
		// The ticker never ends: the attach is cut after a while and must
		// have seen its output meanwhile.
		var stdout syncBuffer
		_ = wsExec(resp.Url, remotecommand.StreamOptions{Stdout: &stdout}, 3*time.Second)
		if !strings.Contains(stdout.String(), "tick\n") {
			t.Errorf("attach stdout %q", stdout.String())
		}
	})

	t.Run("port-forward", func(t *testing.T) {
		resp, err := d.RT.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: pod, Port: []int32{8080}})
		if err != nil {
			t.Fatal(err)
		}
		wsURL := "ws" + strings.TrimPrefix(resp.Url, "http")
		dialer := websocket.Dialer{Subprotocols: []string{"v4.channel.k8s.io"}, HandshakeTimeout: 10 * time.Second}
		conn, _, err := dialer.Dial(wsURL, nil)
		if err != nil {
			t.Fatalf("dial %s: %v", wsURL, err)
		}
		defer conn.Close()
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		// Each channel (0 data, 1 error) opens with the port, little endian.
		for i := 0; i < 2; i++ {
			_, msg, err := conn.ReadMessage()
			if err != nil || len(msg) != 3 || binary.LittleEndian.Uint16(msg[1:]) != 8080 {
				t.Fatalf("channel header %d: %v %v", i, msg, err)
			}
		}
		if err := conn.WriteMessage(websocket.BinaryMessage, append([]byte{0}, "GET /index.html HTTP/1.0\r\n\r\n"...)); err != nil {
			t.Fatal(err)
		}
		var data, errs bytes.Buffer
		for {
			_, msg, err := conn.ReadMessage()
			if err != nil || len(msg) == 0 {
				break
			}
			switch msg[0] {
			case 0:
				data.Write(msg[1:])
			case 1:
				errs.Write(msg[1:])
			}
			if strings.Contains(data.String(), "\r\n\r\npong\n") {
				break
			}
		}
		if !strings.HasPrefix(data.String(), "HTTP/1.") || !strings.Contains(data.String(), "pong\n") || errs.Len() != 0 {
			t.Errorf("through the WebSocket port forward: %q, errors %q", data.String(), errs.String())
		}
	})
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader in two
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
