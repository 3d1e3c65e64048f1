package cluster_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// protocols are kubectl's two stream protocols: WebSocket, its default
// today, and SPDY, which older clients and the kubelet's own proxy speak.
var protocols = []struct {
	name string
	env  []string
}{
	{"websocket", []string{"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=true", "KUBECTL_PORT_FORWARD_WEBSOCKETS=true"}},
	{"spdy", []string{"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false", "KUBECTL_PORT_FORWARD_WEBSOCKETS=false"}},
}

// stream is a long-running kubectl (logs -f, port-forward, attach) whose
// output is read as it comes.
type stream struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	lines  chan string
	stdin  io.WriteCloser
}

func startKubectl(t *testing.T, env []string, args ...string) *stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cmd := exec.CommandContext(ctx, filepath.Join(suite.k8sBin, "kubectl"), append([]string{"--kubeconfig", filepath.Join(suite.dir, "kubeconfig")}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &stream{cmd: cmd, cancel: cancel, lines: make(chan string, 1000), stdin: stdin}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	go func() {
		_ = cmd.Wait()
		pw.Close()
	}()
	t.Cleanup(s.stop)
	return s
}

// waitFor returns the first line matching re, failing after timeout.
func (s *stream) waitFor(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	var seen []string
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				t.Fatalf("kubectl %s ended without %s:\n%s", strings.Join(s.cmd.Args[3:], " "), re, strings.Join(seen, "\n"))
			}
			seen = append(seen, l)
			if m := re.FindStringSubmatch(l); m != nil {
				return m
			}
		case <-deadline:
			t.Fatalf("kubectl %s: no %s after %s:\n%s", strings.Join(s.cmd.Args[3:], " "), re, timeout, strings.Join(seen, "\n"))
		}
	}
}

func (s *stream) stop() {
	s.cancel()
	for range s.lines {
	}
}

// TestKubectlStreams: exec (with and without stdin), attach, logs -f and
// --previous, port-forward and cp, from kubectl through the API server
// and the kubelet to berthd's streaming server, over WebSocket and SPDY.
func TestKubectlStreams(t *testing.T) {
	requireCluster(t)
	ns := namespace(t)
	apply(t, webDeployment(ns, "web", suite.busybox, 1))
	apply(t, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: chatty, namespace: %[1]s}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: log
    image: %[2]s
    command: [sh, -c, 'i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done']
  - name: echo
    image: %[2]s
    stdin: true
    command: [sh, -c, 'while read l; do echo got $l; done']
---
apiVersion: v1
kind: Pod
metadata: {name: crasher, namespace: %[1]s}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{name: d, emptyDir: {}}]
  containers:
  - name: c
    image: %[2]s
    volumeMounts: [{name: d, mountPath: /d}]
    command: [sh, -c, 'n=$(cat /d/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /d/n; echo attempt $n; sleep 1; exit 1']
`, ns, suite.busybox))
	kubectl(t, "-n", ns, "rollout", "status", "deployment/web", "--timeout=180s")
	waitReady(t, ns, "chatty")
	web := podsOf(t, ns, "web")[0].Name

	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			run := func(stdin string, args ...string) (string, int) {
				t.Helper()
				cmd := exec.Command(filepath.Join(suite.k8sBin, "kubectl"), append([]string{"--kubeconfig", filepath.Join(suite.dir, "kubeconfig"), "-n", ns}, args...)...)
				cmd.Env = append(os.Environ(), p.env...)
				cmd.Stdin = strings.NewReader(stdin)
				out, err := cmd.CombinedOutput()
				code := 0
				if ee, ok := err.(*exec.ExitError); ok {
					code = ee.ExitCode()
				} else if err != nil {
					t.Fatal(err)
				}
				return string(out), code
			}
			// exec without stdin, with stdin, and an exit code.
			if out, code := run("", "exec", web, "--", "cat", "/www/index.html"); code != 0 || strings.TrimSpace(out) != web {
				t.Errorf("exec cat: %d %q", code, out)
			}
			if out, code := run("echo from-stdin\nexit 3\n", "exec", "-i", web, "--", "sh"); code != 3 || !strings.Contains(out, "from-stdin") {
				t.Errorf("exec -i sh: exit %d, output %q; want 3 and the echo", code, out)
			}
			// attach to a container reading its stdin.
			a := startKubectl(t, p.env, "-n", ns, "attach", "-i", "chatty", "-c", "echo")
			time.Sleep(time.Second) // attached before the line is sent
			fmt.Fprintf(a.stdin, "hello-%s\n", p.name)
			a.waitFor(t, regexp.MustCompile("got hello-"+p.name), time.Minute)
			a.stop()
			// port-forward from a local port to the pod's 8080.
			pf := startKubectl(t, p.env, "-n", ns, "port-forward", "pod/"+web, ":8080")
			port := pf.waitFor(t, regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 8080`), time.Minute)[1]
			for i := range 3 { // several connections over one forward
				resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://127.0.0.1:" + port + "/index.html")
				if err != nil {
					t.Fatalf("port-forward request %d: %v", i, err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if strings.TrimSpace(string(body)) != web {
					t.Errorf("port-forward request %d: %q", i, body)
				}
			}
			pf.stop()
		})
	}

	// logs -f follows: lines written after it started arrive.
	f := startKubectl(t, nil, "-n", ns, "logs", "-f", "chatty", "-c", "log", "--tail=1")
	first := f.waitFor(t, regexp.MustCompile(`^line (\d+)$`), time.Minute)[1]
	var later string
	for later == "" || later == first {
		later = f.waitFor(t, regexp.MustCompile(`^line (\d+)$`), 30*time.Second)[1]
	}
	f.stop()

	// logs --previous: the last run's output, once the container restarted.
	eventually(t, 2*time.Minute, "crasher restarted", func() string {
		out, _, err := kubectlErr("-n", ns, "logs", "crasher", "--previous")
		if err != nil || !strings.Contains(out, "attempt ") {
			return fmt.Sprintf("%v %q", err, out)
		}
		cur, _, _ := kubectlErr("-n", ns, "logs", "crasher")
		if cur == out {
			return fmt.Sprintf("previous and current logs are the same: %q", out)
		}
		return ""
	})

	// cp both ways (tar through exec).
	local := filepath.Join(t.TempDir(), "in.txt")
	if err := os.WriteFile(local, []byte("copied in\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kubectl(t, "-n", ns, "cp", local, web+":/tmp/in.txt")
	if out := execIn(t, ns, web, "cat", "/tmp/in.txt"); out != "copied in\n" {
		t.Errorf("cp in: %q", out)
	}
	back := filepath.Join(t.TempDir(), "out.txt")
	kubectl(t, "-n", ns, "cp", web+":/www/index.html", back)
	if data, err := os.ReadFile(back); err != nil || strings.TrimSpace(string(data)) != web {
		t.Errorf("cp out: %q %v", data, err)
	}
}
