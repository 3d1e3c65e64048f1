package cri_test

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/conformance/internal/berthd"
)

// TestDaemonRestartAndCrash: containers outlive berthd, whether it stops
// cleanly or is killed; exits during the downtime are recorded, and logs
// keep flowing.
func TestDaemonRestartAndCrash(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			d := startDaemon(t)
			podCfg := d.podConfig("survivor")
			pod := d.runPod(t, podCfg)
			ticker := d.run(t, pod, podCfg, containerConfig("ticker", "", "sh", "-c",
				`i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.1; done`))
			short := d.run(t, pod, podCfg, containerConfig("short", "", "sh", "-c", "sleep 2; exit 3"))
			created := d.create(t, pod, podCfg, containerConfig("created", "", "sleep", "3600"))
			before := d.status(t, ticker)

			d.Stop(sig)
			// While berthd is down: short exits, ticker keeps logging.
			logPath := filepath.Join(podCfg.LogDirectory, "ticker.log")
			size := fileSize(logPath)
			time.Sleep(3 * time.Second)
			if fileSize(logPath) <= size {
				t.Errorf("no log lines while berthd was down")
			}
			d.Start()

			st := d.status(t, ticker)
			if st.State != runtimeapi.ContainerState_CONTAINER_RUNNING || st.StartedAt != before.StartedAt {
				t.Errorf("ticker after restart: %v started %d (was %d)", st.State, st.StartedAt, before.StartedAt)
			}
			d.mustExec(t, ticker, "true")
			sh := d.status(t, short)
			if sh.State != runtimeapi.ContainerState_CONTAINER_EXITED || sh.ExitCode != 3 || sh.FinishedAt == 0 || sh.Reason != "Error" {
				t.Errorf("short after restart: %v code %d finished %d reason %q", sh.State, sh.ExitCode, sh.FinishedAt, sh.Reason)
			}
			if cs := d.status(t, created); cs.State != runtimeapi.ContainerState_CONTAINER_CREATED {
				t.Errorf("created container after restart: %v", cs.State)
			}
			// It can still be started, and the pod still works.
			if _, err := d.RT.StartContainer(ctxT(t), &runtimeapi.StartContainerRequest{ContainerId: created}); err != nil {
				t.Errorf("start after restart: %v", err)
			}
			ps, err := d.RT.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
			if err != nil || ps.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
				t.Errorf("pod after restart: %v %v", err, ps.GetStatus().GetState())
			}
			// Log lines are numbered: none lost over the restart.
			data, _ := os.ReadFile(logPath)
			for i, m := range regexp.MustCompile(`tick (\d+)\n`).FindAllSubmatch(data, -1) {
				if string(m[1]) != strconv.Itoa(i) {
					t.Fatalf("tick %d is %s: log lines lost", i, m[1])
				}
			}
			if sig == syscall.SIGKILL && !bytes.Contains(readFile(d.LogFile), []byte("recovered state")) {
				t.Errorf("no recovery in the log")
			}
		})
	}
}

// TestShimKilled: when a pod's shim dies, its containers are reported
// exited, never running, and the pod can be removed without leaks.
func TestShimKilled(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("shimless")
	pod := d.runPod(t, podCfg)
	c := d.run(t, pod, podCfg, containerConfig("c", "", "sleep", "3600"))
	var shims []int
	for _, p := range berthd.ProcessesMentioning(d.State) {
		if cmd := readFile("/proc/" + strconv.Itoa(p) + "/cmdline"); bytes.Contains(cmd, []byte("berth-shim")) && bytes.Contains(cmd, []byte(pod)) {
			shims = append(shims, p)
		}
	}
	if len(shims) != 1 {
		t.Fatalf("shims of the pod: %v", shims)
	}
	if err := syscall.Kill(shims[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	st := d.waitExited(t, c, 30*time.Second)
	if st.ExitCode == 0 || !strings.Contains(st.Message, "shim") {
		t.Errorf("after the shim died: code %d message %q", st.ExitCode, st.Message)
	}
	eventually(t, 10*time.Second, "pod not ready", func() error {
		ps, err := d.RT.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
		if err != nil {
			return err
		}
		if ps.Status.State != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
			return errNotYet
		}
		return nil
	})
	if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
}

// TestShimUnreachableIsNotGone: a shim that runs but cannot be reached
// for a while (its socket away, as a shim too busy to accept looks) when
// berthd restarts is waited for, not declared dead: its pod and
// containers keep running, and berthd uses it again once it answers.
func TestShimUnreachableIsNotGone(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("unreachable")
	pod := d.runPod(t, podCfg)
	c := d.run(t, pod, podCfg, containerConfig("c", "", "sleep", "3600"))
	sock := filepath.Join(d.State, "shim", pod[:16]+".sock")
	d.Stop(syscall.SIGKILL)
	if err := os.Rename(sock, sock+".away"); err != nil {
		t.Fatal(err)
	}
	d.Start()
	// Longer than berthd's retries of a shim it cannot dial.
	time.Sleep(3 * time.Second)
	if st := d.status(t, c); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("container of an unreachable but running shim: %v %q", st.State, st.Message)
	}
	ps, err := d.RT.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
	if err != nil || ps.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Errorf("pod of an unreachable but running shim: %v %v", err, ps.GetStatus().GetState())
	}
	if err := os.Rename(sock+".away", sock); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "exec once the shim answers again", func() error {
		_, _, code := d.execSync(t, c, "true")
		if code != 0 {
			return errNotYet
		}
		return nil
	})
	if st := d.status(t, c); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("container after the shim answered again: %v", st.State)
	}
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func readFile(p string) []byte {
	data, _ := os.ReadFile(p)
	return data
}
