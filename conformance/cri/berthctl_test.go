package cri_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-runtime/berth/internal/testutil"
)

// berthctl runs the client against the test daemon and returns stdout,
// failing the test on a non-zero exit.
func (d *daemon) berthctl(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := d.berthctlErr(t, args...)
	if err != nil {
		t.Fatalf("berthctl %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func (d *daemon) berthctlErr(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testutil.Bin(t, "berthctl"), append([]string{"-r", "unix://" + d.Socket, "--timeout", "90s"}, args...)...)
	// A hung client dumps its goroutines into the failure message.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// TestBerthctl is README's walk-through: pull with progress, a pod, a
// container, exec, logs, and everything removed again, all through the
// client.
func TestBerthctl(t *testing.T) {
	big := make([]byte, 3<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	rootfs := t.TempDir()
	testutil.BusyboxRootfs(t, rootfs)
	layout := testutil.BuildOCI(t, t.TempDir(), "v1", testutil.ImageSpec{Layers: []testutil.Layer{
		{Dir: rootfs},
		{Files: []testutil.File{{Path: "big", Content: string(big)}}, Compression: "none"},
	}})
	suite.reg.Push(t, layout, "walkthrough:v1")
	proxy := testutil.ThrottledProxy(t, suite.reg.Addr, 2<<20)
	d := startDaemon(t, daemonOptions{registriesConf: testutil.RegistriesConf(t, "", proxy, suite.reg.Addr)})
	ref := proxy + "/walkthrough:v1"

	_, progress, err := d.berthctlErr(t, "pull", ref)
	if err != nil {
		t.Fatalf("berthctl pull: %v\n%s", err, progress)
	}
	// A bar per layer, with byte counters.
	if !strings.Contains(progress, "MiB") || strings.Count(progress, "KiB")+strings.Count(progress, "MiB") < 2 {
		t.Errorf("no progress bars on stderr:\n%q", progress)
	}
	if out := d.berthctl(t, "images"); !strings.Contains(out, proxy+"/walkthrough") {
		t.Errorf("images:\n%s", out)
	}

	dir := t.TempDir()
	podJSON := filepath.Join(dir, "pod.json")
	ctrJSON := filepath.Join(dir, "container.json")
	writeJSON(t, podJSON, map[string]any{
		"metadata":      map[string]string{"name": "walk", "namespace": "default", "uid": "walk-uid"},
		"hostname":      "walk",
		"log_directory": filepath.Join(dir, "logs"),
		"linux":         map[string]any{},
	})
	writeJSON(t, ctrJSON, map[string]any{
		"metadata": map[string]string{"name": "hello"},
		"image":    map[string]string{"image": ref},
		"command":  []string{"sh", "-c", "echo hello from berth; exec sleep 3600"},
		"log_path": "hello.log",
	})
	pod := strings.TrimSpace(d.berthctl(t, "runp", podJSON))
	// The event stream, from before the container is made: its CREATED
	// and STARTED events.
	events := make(chan string, 1)
	go func() {
		out, errOut, err := d.berthctlErr(t, "events", "--count", "2", "-o", "json")
		events <- fmt.Sprintf("%s%s%v", out, errOut, err)
	}()
	time.Sleep(500 * time.Millisecond) // the stream is open
	ctr := strings.TrimSpace(d.berthctl(t, "create", pod, ctrJSON, podJSON))
	d.berthctl(t, "start", ctr)
	select {
	case out := <-events:
		if !strings.Contains(out, `"CONTAINER_CREATED_EVENT"`) || !strings.Contains(out, `"CONTAINER_STARTED_EVENT"`) || !strings.Contains(out, ctr) {
			t.Errorf("berthctl events: %s", out)
		}
	case <-time.After(45 * time.Second):
		t.Error("berthctl events --count 2 did not end")
	}
	if table := d.berthctl(t, "statsp"); !regexp.MustCompile(`walk +default +\S+ +\S+ +1\n`).MatchString(table) {
		t.Errorf("statsp:\n%s", table)
	}
	var fsinfo struct {
		ImageFilesystems []struct {
			FsID struct{ Mountpoint string } `json:"fsId"`
		} `json:"imageFilesystems"`
	}
	if out := d.berthctl(t, "imagefsinfo", "-o", "json"); json.Unmarshal([]byte(out), &fsinfo) != nil || len(fsinfo.ImageFilesystems) == 0 || fsinfo.ImageFilesystems[0].FsID.Mountpoint == "" {
		t.Errorf("imagefsinfo -o json:\n%s", out)
	}

	// The table shows the pod's name and namespace, as crictl's does.
	if table := d.berthctl(t, "ps"); !strings.Contains(table, "NAMESPACE") || !regexp.MustCompile(`hello .* walk +default\n`).MatchString(table) {
		t.Errorf("ps table without the pod's name and namespace:\n%s", table)
	}
	var listed []map[string]any
	psOut := d.berthctl(t, "ps", "-o", "json")
	var ps struct {
		Containers []map[string]any `json:"containers"`
	}
	if err := json.Unmarshal([]byte(psOut), &ps); err != nil {
		t.Fatalf("ps -o json: %v\n%s", err, psOut)
	}
	listed = ps.Containers
	if len(listed) != 1 || listed[0]["id"] != ctr || listed[0]["state"] != "CONTAINER_RUNNING" {
		t.Errorf("ps -o json: %s", psOut)
	}
	if out := d.berthctl(t, "pods"); !strings.Contains(out, pod[:13]) || !strings.Contains(out, "walk") {
		t.Errorf("pods:\n%s", out)
	}
	if out := d.berthctl(t, "exec", ctr, "cat", "/big"); len(out) != len(big) {
		t.Errorf("exec cat /big: %d bytes", len(out))
	}
	// Combined short flags, as crictl takes them (make run prints
	// "berthctl exec -it").
	if out := d.berthctl(t, "exec", "-si", ctr, "echo", "combined"); out != "combined\n" {
		t.Errorf("exec -si: %q", out)
	}
	if _, _, err := d.berthctlErr(t, "exec", ctr, "sh", "-c", "exit 5"); err == nil {
		t.Errorf("exec of a failing command: berthctl exited 0")
	} else if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 5 {
		t.Errorf("exec exit code: %v, want 5", err)
	}
	eventually(t, 10*time.Second, "berthctl logs", func() error {
		if out, _, _ := d.berthctlErr(t, "logs", ctr); out != "hello from berth\n" {
			return errNotYet
		}
		return nil
	})
	if out := d.berthctl(t, "inspect", ctr); !strings.Contains(out, "CONTAINER_RUNNING") {
		t.Errorf("inspect:\n%s", out)
	}
	if out := d.berthctl(t, "stats", "-o", "json"); !strings.Contains(out, ctr) {
		t.Errorf("stats:\n%s", out)
	}

	d.berthctl(t, "stop", "-t", "2", ctr)
	d.berthctl(t, "rm", ctr)
	d.berthctl(t, "stopp", pod)
	d.berthctl(t, "rmp", pod)
	d.berthctl(t, "rmi", ref)
	if out := d.berthctl(t, "ps", "-a", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("containers left: %s", out)
	}
	// A clear error for a missing pod.
	_, errOut, err := d.berthctlErr(t, "inspectp", "no-such-pod")
	if err == nil || !strings.Contains(errOut, "no-such-pod") {
		t.Errorf("inspectp of a missing pod: %v %q", err, errOut)
	}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestBerthctlWatchAttachPortForward: crictl's ps -w, attach and
// port-forward, as berthctl has them.
func TestBerthctlWatchAttachPortForward(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("ctl-streams")
	pod := d.runPod(t, podCfg)

	// ps -w lists again until SIGTERM; off a terminal each listing that
	// changed follows the last.
	var watchOut, watchErr syncBuffer
	watch := exec.Command(testutil.Bin(t, "berthctl"), "-r", "unix://"+d.Socket, "ps", "-w", "--interval", "200ms")
	watch.Stdout, watch.Stderr = &watchOut, &watchErr
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if watch.ProcessState == nil {
			_ = watch.Process.Kill()
			_ = watch.Wait()
		}
	})

	// attach -i: our stdin goes to the container (stdin_once: its end
	// ends cat), what cat echoes comes back.
	cfg := containerConfig("cat", "", "sh", "-c", "cat; echo stdin closed")
	cfg.Stdin, cfg.StdinOnce = true, true
	cat := d.run(t, pod, podCfg, cfg)
	eventually(t, 20*time.Second, "berthctl ps -w shows the new container", func() error {
		out := watchOut.String()
		if !strings.HasPrefix(out, "CONTAINER ") || !strings.Contains(out, "\n\nCONTAINER ") ||
			!regexp.MustCompile(`(?m)^`+cat[:13]+` .*RUNNING +cat `).MatchString(out) {
			return errNotYet
		}
		return nil
	})
	if err := watch.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := watch.Wait(); err != nil {
		t.Errorf("berthctl ps -w after SIGTERM: %v (%s)", err, watchErr.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	attach := exec.CommandContext(ctx, testutil.Bin(t, "berthctl"), "-r", "unix://"+d.Socket, "attach", "-i", cat)
	attach.Stdin = strings.NewReader("through attach\n")
	if out, err := attach.CombinedOutput(); err != nil || !strings.Contains(string(out), "through attach\n") {
		t.Errorf("berthctl attach -i: %v: %q", err, out)
	}
	if st := d.waitExited(t, cat, 30*time.Second); st.ExitCode != 0 {
		t.Errorf("cat after its stdin closed: exit %d %s", st.ExitCode, st.Reason)
	}

	// port-forward 0:8080 says where it listens, as kubectl and crictl
	// do, forwards until SIGTERM and then exits 0.
	d.runWeb(t, pod, podCfg)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var pfErr bytes.Buffer
	pf := exec.Command(testutil.Bin(t, "berthctl"), "-r", "unix://"+d.Socket, "port-forward", pod, "0:8080")
	pf.Stdout, pf.Stderr = w, &pfErr
	err = pf.Start()
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if pf.ProcessState == nil {
			_ = pf.Process.Kill()
			_ = pf.Wait()
		}
	})
	first := make(chan string, 1)
	go func() {
		// Read to the end: the forwarder writes a line per connection.
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			select {
			case first <- sc.Text():
			default:
			}
		}
		close(first)
	}()
	var line string
	select {
	case line = <-first:
	case <-time.After(30 * time.Second):
		t.Fatalf("berthctl port-forward printed nothing in 30s: %s", pfErr.String())
	}
	m := regexp.MustCompile(`^Forwarding from 127\.0\.0\.1:(\d+) -> 8080$`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("berthctl port-forward: first line %q (stderr %s)", line, pfErr.String())
	}
	resp, err := (&http.Client{Timeout: 20 * time.Second}).Get("http://127.0.0.1:" + m[1] + "/index.html")
	if err != nil {
		t.Fatalf("GET through berthctl port-forward: %v (%s)", err, pfErr.String())
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "pong\n" {
		t.Errorf("GET through berthctl port-forward: %s %q", resp.Status, body)
	}
	if err := pf.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := pf.Wait(); err != nil {
		t.Errorf("berthctl port-forward after SIGTERM: %v (%s)", err, pfErr.String())
	}

	if _, errOut, err := d.berthctlErr(t, "port-forward", pod, "0:http"); err == nil || !strings.Contains(errOut, `pod port "http"`) {
		t.Errorf("port-forward to a port that is not a number: %v %q", err, errOut)
	}
}

// TestBerthctlCompletion: the bash script of berthctl completion, sourced
// as users do, completes commands and a command's flags (zsh's asks
// berthctl the same way).
func TestBerthctlCompletion(t *testing.T) {
	bin := testutil.Bin(t, "berthctl")
	script := `source <("$BIN" completion bash) || exit 1
complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _berthctl_complete; echo "${COMPREPLY[*]}"; }
complete_words "$BIN" ima
complete_words "$BIN" ps --wa
complete_words "$BIN" -r unix:///nowhere port`
	cmd := exec.Command("bash", "-c", script)
	cmd.Env = append(os.Environ(), "BIN="+bin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash completion: %v\n%s", err, out)
	}
	if want := "images image imagefsinfo\n--watch\nport-forward\n"; string(out) != want {
		t.Errorf("bash completion:\n%s\nwant:\n%s", out, want)
	}
	if out, err := exec.Command(bin, "completion", "zsh").Output(); err != nil || !strings.HasPrefix(string(out), "#compdef berthctl\n") {
		t.Errorf("berthctl completion zsh: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "completion", "fish").CombinedOutput(); err == nil || !strings.Contains(string(out), "bash or zsh") {
		t.Errorf("berthctl completion fish: %v %q", err, out)
	}
}
