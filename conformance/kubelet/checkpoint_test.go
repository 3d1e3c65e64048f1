package kubelet_test

import (
	"archive/tar"
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bruntime "github.com/berth-runtime/berth/runtime"
)

// TestKubeletCheckpoint is the kubelet's checkpoint API on berth, with the
// checks of the kubelet's own node e2e test ([Feature:CheckpointContainer]
// in test/e2e_node/checkpoint_container.go), which needs a cluster's API
// server to reach the node: POST /checkpoint/NAMESPACE/POD/CONTAINER on
// the kubelet's authenticated port answers with the archive it wrote
// under its root, the archive holds spec.dump, config.dump and CRIU's
// checkpoint/inventory.img, and the kubelet counts one checkpoint_container
// operation and no error. The container keeps running. Where the kernel
// cannot run CRIU, the kubelet's answer is the 500 with the message that
// test knows as "no checkpoint support".
func TestKubeletCheckpoint(t *testing.T) {
	n := startNode(t)
	n.addPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "checkpoint"}, Spec: corev1.PodSpec{
		TerminationGracePeriodSeconds: ptr(int64(1)),
		Containers: []corev1.Container{{
			Name: "counter", Image: suite.busybox, ImagePullPolicy: corev1.PullIfNotPresent,
			Command: sh("i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done"),
		}},
	}})
	p := n.pod("checkpoint", 2*time.Minute, "running", func(p corev1.Pod) error {
		if !podReady(p) {
			return errors.New("not ready")
		}
		return nil
	})
	id := criID(containerStatus(p, "counter"))
	if got := n.checkpointOps(t); got != [2]int{0, 0} {
		t.Fatalf("before any checkpoint the kubelet counts %d checkpoints and %d errors", got[0], got[1])
	}

	code, body := n.post(t, "/checkpoint/default/checkpoint-berth-node/counter?timeout=120")
	if cerr := bruntime.CheckCRIU(); cerr != nil {
		const noSupport = "(rpc error: code = Unknown desc = checkpoint/restore support not available)"
		if code != http.StatusInternalServerError || !strings.Contains(body, noSupport) {
			t.Fatalf("checkpoint where CRIU cannot work (%v): %d %q; want 500 with %q", cerr, code, body, noSupport)
		}
		t.Skipf("CRIU cannot work with this kernel (%v): the kubelet answers as its test expects of a node without checkpoint support; make test-vm checkpoints", cerr)
	}
	if code != http.StatusOK {
		t.Fatalf("checkpoint: %d %s", code, body)
	}
	var answer struct{ Items []string }
	if err := json.Unmarshal([]byte(body), &answer); err != nil || len(answer.Items) != 1 {
		t.Fatalf("checkpoint answer %q: %v", body, err)
	}
	archive := answer.Items[0]
	if dir := filepath.Join(n.dir, "root", "checkpoints") + "/"; !strings.HasPrefix(archive, dir) {
		t.Errorf("archive %s is not under the kubelet's %s", archive, dir)
	}
	names := archiveNames(t, archive)
	for _, want := range []string{"spec.dump", "config.dump", "checkpoint/inventory.img"} {
		if !names[want] {
			t.Errorf("%s not in the archive %s", want, archive)
		}
	}
	if got := n.checkpointOps(t); got != [2]int{1, 0} {
		t.Errorf("after one checkpoint the kubelet counts %d checkpoints and %d errors; want 1 and 0", got[0], got[1])
	}
	if ctl := os.Getenv("BERTH_CHECKPOINTCTL"); ctl != "" {
		out, err := exec.Command(ctl, "show", archive).CombinedOutput()
		if err != nil || !strings.Contains(string(out), id[:12]) {
			t.Errorf("checkpointctl show: %v\n%s", err, out)
		}
	}

	// The forensic checkpoint leaves the container running, counting.
	before, err := n.execIn(id, "cat", "/tmp/count")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the counter counts on", func() error {
		now, err := n.execIn(id, "cat", "/tmp/count")
		if err != nil || now == before {
			return fmt.Errorf("count %q then %q (%v)", before, now, err)
		}
		return nil
	})
	if cs := containerStatus(n.pod("checkpoint", time.Minute, "ready", func(p corev1.Pod) error {
		if !podReady(p) {
			return errors.New("not ready")
		}
		return nil
	}), "counter"); cs.RestartCount != 0 || criID(cs) != id {
		t.Errorf("after the checkpoint: container %s, %d restarts; want %s, none", criID(cs), cs.RestartCount, id)
	}
}

// post sends an empty POST to the kubelet's authenticated API, as the API
// server's node proxy does, and returns the status and body.
func (n *node) post(t *testing.T, path string) (int, string) {
	t.Helper()
	r, err := n.secureClient().Post(fmt.Sprintf("https://127.0.0.1:%d%s", n.securePort, path), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	data, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return r.StatusCode, string(data)
}

// secureClient reaches the kubelet's own API, served with the
// self-signed certificate it made in its cert dir.
func (n *node) secureClient() *http.Client {
	return &http.Client{Timeout: 3 * time.Minute, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // the kubelet's self-signed certificate, on 127.0.0.1
	}}
}

// checkpointOps is what the kubelet's metrics count of checkpoint_container
// operations: done, and failed.
func (n *node) checkpointOps(t *testing.T) [2]int {
	t.Helper()
	r, err := n.secureClient().Get(fmt.Sprintf("https://127.0.0.1:%d/metrics", n.securePort))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var ops [2]int
	sc := bufio.NewScanner(r.Body)
	for sc.Scan() {
		line := sc.Text()
		for i, metric := range []string{"kubelet_runtime_operations_total{", "kubelet_runtime_operations_errors_total{"} {
			if !strings.HasPrefix(line, metric) || !strings.Contains(line, `operation_type="checkpoint_container"`) {
				continue
			}
			v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			if err != nil {
				t.Fatalf("kubelet metric %q: %v", line, err)
			}
			ops[i] = int(v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return ops
}

// archiveNames lists the names in a tar archive.
func archiveNames(t *testing.T, path string) map[string]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	names := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatalf("archive %s: %v", path, err)
		}
		names[h.Name] = true
	}
}
