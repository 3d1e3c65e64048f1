package cri_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestPodAndContainerLifecycle runs a pod with a container through every
// state and checks what the CRI reports at each step.
func TestPodAndContainerLifecycle(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("lifecycle")
	podID := d.runPod(t, podCfg)

	ps, err := d.RT.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: podID})
	if err != nil {
		t.Fatal(err)
	}
	if ps.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Fatalf("pod state %v, want ready", ps.Status.State)
	}

	id := d.run(t, podID, podCfg, containerConfig("web", "", "sh", "-c", "echo started; echo to-stderr >&2; exec sleep 3600"))
	st := d.status(t, id)
	if st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("container state %v, want running", st.State)
	}
	if st.StartedAt == 0 || st.CreatedAt == 0 || st.FinishedAt != 0 {
		t.Errorf("times: created %d started %d finished %d", st.CreatedAt, st.StartedAt, st.FinishedAt)
	}
	if out := d.mustExec(t, id, "sh", "-c", "echo $FROM_IMAGE $HOSTNAME; cat /etc/hostname"); out != "yes lifecycle\nlifecycle\n" {
		t.Errorf("exec output %q", out)
	}
	logPath := filepath.Join(podCfg.LogDirectory, "web.log")
	eventually(t, 10*time.Second, "log lines", func() error {
		data, _ := os.ReadFile(logPath)
		if !strings.Contains(string(data), " stdout F started\n") || !strings.Contains(string(data), " stderr F to-stderr\n") {
			return errNotYet
		}
		return nil
	})

	if _, err := d.RT.StopContainer(ctxT(t), &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 10}); err != nil {
		t.Fatal(err)
	}
	st = d.status(t, id)
	if st.State != runtimeapi.ContainerState_CONTAINER_EXITED || st.ExitCode != 143 || st.Reason != "Error" {
		t.Errorf("after stop: state %v code %d reason %q", st.State, st.ExitCode, st.Reason)
	}
	if _, err := d.RT.RemoveContainer(ctxT(t), &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.RT.StopPodSandbox(ctxT(t), &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatal(err)
	}
}

// TestSignalsNotIgnoredInContainers: a container's processes start with
// the default action for the signals berthd and the shim must not stop
// on. An ignored signal is inherited across exec, so a shim that ignored
// SIGINT made every container, and every shell exec'd into one, deaf to
// Ctrl-C.
func TestSignalsNotIgnoredInContainers(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("signals")
	podID := d.runPod(t, podCfg)
	id := d.run(t, podID, podCfg, containerConfig("sleeper", "", "sleep", "3600"))
	for _, c := range []struct{ who, path string }{
		{"the container's init", "/proc/1/status"},
		{"an exec'd process", "/proc/self/status"},
	} {
		v := parseStatus(d.mustExec(t, id, "cat", c.path))["SigIgn"]
		ignored, err := strconv.ParseUint(v, 16, 64)
		if err != nil {
			t.Fatalf("%s: SigIgn %q: %v", c.who, v, err)
		}
		for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGPIPE} {
			if ignored&(1<<(sig-1)) != 0 {
				t.Errorf("%s ignores %v (SigIgn %x)", c.who, sig, ignored)
			}
		}
	}
}
