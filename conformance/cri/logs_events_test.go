package cri_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/internal/testutil"
)

// criLogLine is the kubelet's log format.
var criLogLine = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d) (stdout|stderr) (F|P) `)

// TestLogsAndRotation: every line in the kubelet's format, long lines
// split as partial, and ReopenContainerLog after the kubelet renamed the
// file starts a new one without losing lines.
func TestLogsAndRotation(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("logs")
	pod := d.runPod(t, podCfg)
	// A 40 KiB line (the shim splits at 16 KiB, as the kubelet expects),
	// then one line every 50ms, numbered.
	script := `head -c 40000 /dev/zero | tr '\0' x; echo; i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.05; done`
	c := d.run(t, pod, podCfg, containerConfig("ticker", "", "sh", "-c", script))
	logPath := filepath.Join(podCfg.LogDirectory, "ticker.log")
	eventually(t, 10*time.Second, "ticks in the log", func() error {
		data, _ := os.ReadFile(logPath)
		if !strings.Contains(string(data), "tick 5\n") {
			return errNotYet
		}
		return nil
	})
	data, _ := os.ReadFile(logPath)
	var long strings.Builder
	partials := 0
	for i, l := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		m := criLogLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("line %d not in CRI format: %.100q", i, l)
		}
		if m[3] != "stdout" {
			t.Errorf("line %d on %s", i, m[3])
		}
		text := l[len(m[0]):]
		if strings.HasPrefix(text, "x") {
			long.WriteString(text)
			if m[4] == "P" {
				partials++
			}
		}
	}
	if long.Len() != 40000 || partials == 0 {
		t.Errorf("long line: %d bytes in %d partial lines", long.Len(), partials)
	}

	// The kubelet's rotation: rename, then ask for a new file.
	rotated := logPath + ".1"
	if err := os.Rename(logPath, rotated); err != nil {
		t.Fatal(err)
	}
	if _, err := d.RT.ReopenContainerLog(ctxT(t), &runtimeapi.ReopenContainerLogRequest{ContainerId: c}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "ticks in the new log", func() error {
		data, err := os.ReadFile(logPath)
		if err != nil || strings.Count(string(data), "tick") < 3 {
			return errNotYet
		}
		return nil
	})
	// No tick lost or doubled across the two files.
	old, _ := os.ReadFile(rotated)
	cur, _ := os.ReadFile(logPath)
	ticks := regexp.MustCompile(`tick (\d+)\n`).FindAllStringSubmatch(string(old)+string(cur), -1)
	for i, m := range ticks {
		if m[1] != fmt.Sprint(i) {
			t.Fatalf("tick %d is %q: lines lost or doubled across the rotation", i, m[1])
		}
	}

	// berthctl reads the same file back as plain text.
	out, err := exec.Command(testutil.Bin(t, "berthctl"), "-r", "unix://"+d.Socket, "logs", "--tail", "2", c).CombinedOutput()
	if err != nil || !regexp.MustCompile(`^tick \d+\ntick \d+\n$`).Match(out) {
		t.Errorf("berthctl logs --tail 2: %v %q", err, out)
	}

	if _, err := d.RT.StopContainer(ctxT(t), &runtimeapi.StopContainerRequest{ContainerId: c, Timeout: 5}); err != nil {
		t.Fatal(err)
	}
	_, err = d.RT.ReopenContainerLog(ctxT(t), &runtimeapi.ReopenContainerLogRequest{ContainerId: c})
	wantCode(t, err, codes.FailedPrecondition, "ReopenContainerLog of a stopped container")
	_, err = d.RT.ReopenContainerLog(ctxT(t), &runtimeapi.ReopenContainerLogRequest{ContainerId: "no-such"})
	wantCode(t, err, codes.NotFound, "ReopenContainerLog of an unknown container")
}

// TestContainerEvents follows GetContainerEvents through a container's
// and a pod's life.
func TestContainerEvents(t *testing.T) {
	d := startDaemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stream, err := d.RT.GetContainerEvents(ctx, &runtimeapi.GetEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan *runtimeapi.ContainerEventResponse, 100)
	go func() {
		defer close(events)
		for {
			ev, err := stream.Recv()
			if err != nil {
				return
			}
			events <- ev
		}
	}()
	podCfg := d.podConfig("events")
	pod := d.runPod(t, podCfg)
	c := d.run(t, pod, podCfg, containerConfig("short", "", "sh", "-c", "sleep 0.5; exit 4"))
	d.waitExited(t, c, 30*time.Second)
	if _, err := d.RT.RemoveContainer(ctxT(t), &runtimeapi.RemoveContainerRequest{ContainerId: c}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.RT.StopPodSandbox(ctxT(t), &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}

	want := []struct {
		typ       runtimeapi.ContainerEventType
		container string
	}{
		{runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT, pod},
		{runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT, pod},
		{runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT, c},
		{runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT, c},
		{runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT, c},
		{runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT, c},
		{runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT, pod},
		{runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT, pod},
	}
	var got []string
	timeout := time.After(30 * time.Second)
	for len(got) < len(want) {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("event stream ended after %v", got)
			}
			got = append(got, fmt.Sprintf("%v %s", ev.ContainerEventType, ev.ContainerId))
			i := len(got) - 1
			if ev.ContainerEventType != want[i].typ || ev.ContainerId != want[i].container {
				t.Errorf("event %d: %s, want %v %s", i, got[i], want[i].typ, want[i].container)
			}
			if ev.CreatedAt == 0 || ev.PodSandboxStatus == nil || ev.PodSandboxStatus.Id != pod {
				t.Errorf("event %d lacks its time or pod: %+v", i, ev)
			}
			if ev.ContainerId == c && ev.ContainerEventType == runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT {
				if len(ev.ContainersStatuses) != 1 || ev.ContainersStatuses[0].ExitCode != 4 {
					t.Errorf("stopped event statuses: %+v", ev.ContainersStatuses)
				}
			}
		case <-timeout:
			t.Fatalf("events so far: %v", got)
		}
	}
}
