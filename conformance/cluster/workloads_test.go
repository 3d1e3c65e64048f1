package cluster_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
)

// TestJobs: a Job runs to completion over parallel pods; a failing Job
// backs off and fails after its backoff limit.
func TestJobs(t *testing.T) {
	requireCluster(t)
	ns := namespace(t)
	apply(t, fmt.Sprintf(`apiVersion: batch/v1
kind: Job
metadata: {name: ok, namespace: %[1]s}
spec:
  completions: 4
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: %[2]s, command: [sh, -c, 'echo done on $HOSTNAME']}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: bad, namespace: %[1]s}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: %[2]s, command: [sh, -c, 'exit 7']}]
`, ns, suite.busybox))
	kubectl(t, "-n", ns, "wait", "--for=condition=Complete", "job/ok", "--timeout=180s")
	kubectl(t, "-n", ns, "wait", "--for=condition=Failed", "job/bad", "--timeout=180s")
	var job batchv1.Job
	getJSON(t, &job, "job", "-n", ns, "ok")
	if job.Status.Succeeded != 4 {
		t.Errorf("job ok: %d succeeded, want 4", job.Status.Succeeded)
	}
	getJSON(t, &job, "job", "-n", ns, "bad")
	if job.Status.Failed != 2 {
		t.Errorf("job bad: %d failed pods, want 2 (backoffLimit 1)", job.Status.Failed)
	}
	var pods corev1.PodList
	getJSON(t, &pods, "pods", "-n", ns, "-l", "job-name=bad")
	for _, p := range pods.Items {
		term := p.Status.ContainerStatuses[0].State.Terminated
		if term == nil || term.ExitCode != 7 {
			t.Errorf("pod %s of job bad: %+v, want exit code 7", p.Name, p.Status.ContainerStatuses[0].State)
		}
	}
}

// TestPodLifecycle: init containers and a sidecar (an init container
// that keeps running) in order; exec, TCP and HTTP probes; a container over its
// memory limit OOMKilled; preStop hooks and the grace period on deletion;
// an ephemeral container from kubectl debug; a pod in a user namespace.
func TestPodLifecycle(t *testing.T) {
	requireCluster(t)
	ns := namespace(t)
	// The preStop hook and the TERM trap write to a host directory of the
	// cluster's, which outlives the pod.
	out := filepath.Join(suite.dir, "prestop-"+ns)
	t.Cleanup(func() { os.RemoveAll(out) })
	apply(t, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: ordered, namespace: %[1]s}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{name: d, emptyDir: {}}]
  initContainers:
  - {name: init, image: %[2]s, volumeMounts: [{name: d, mountPath: /d}], command: [sh, -c, 'echo init >> /d/order']}
  - name: sidecar
    image: %[2]s
    restartPolicy: Always
    volumeMounts: [{name: d, mountPath: /d}]
    command: [sh, -c, 'echo sidecar >> /d/order; exec sleep 3600']
    startupProbe: {exec: {command: [grep, sidecar, /d/order]}, periodSeconds: 1}
  containers:
  - name: main
    image: %[2]s
    volumeMounts: [{name: d, mountPath: /d}]
    command: [sh, -c, 'echo main >> /d/order; mkdir /www; echo ok > /www/healthz; exec httpd -f -p 8080 -h /www']
    startupProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
    livenessProbe: {exec: {command: [test, -f, /www/healthz]}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: hog, namespace: %[1]s}
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: %[2]s
    resources: {limits: {memory: 32Mi}}
    command: [sh, -c, 'x=$(head -c 200000000 /dev/zero | tr "\0" x); echo survived']
---
apiVersion: v1
kind: Pod
metadata: {name: graceful, namespace: %[1]s}
spec:
  terminationGracePeriodSeconds: 30
  volumes: [{name: out, hostPath: {path: %[3]s, type: DirectoryOrCreate}}]
  containers:
  - name: c
    image: %[2]s
    volumeMounts: [{name: out, mountPath: /out}]
    command: [sh, -c, 'trap "echo term >> /out/log; exit 0" TERM; while true; do sleep 0.2; done']
    lifecycle:
      preStop: {exec: {command: [sh, -c, 'echo prestop >> /out/log']}}
---
apiVersion: v1
kind: Pod
metadata: {name: userns, namespace: %[1]s}
spec:
  hostUsers: false
  terminationGracePeriodSeconds: 1
  containers: [{name: c, image: %[2]s, command: [sleep, "3600"]}]
`, ns, suite.busybox, out))
	waitReady(t, ns, "ordered", "graceful", "userns")

	if order := kubectl(t, "-n", ns, "exec", "ordered", "-c", "main", "--", "cat", "/d/order"); order != "init\nsidecar\nmain\n" {
		t.Errorf("start order %q, want init, sidecar, main", order)
	}
	// The liveness probe fails once the file goes: the kubelet restarts
	// main (and only main).
	kubectl(t, "-n", ns, "exec", "ordered", "-c", "main", "--", "rm", "/www/healthz")
	eventually(t, time.Minute, "main restarted by its liveness probe", func() string {
		var p corev1.Pod
		getJSON(t, &p, "pod", "-n", ns, "ordered")
		for _, c := range p.Status.ContainerStatuses {
			if c.Name == "main" && c.RestartCount >= 1 && c.Ready {
				return ""
			}
		}
		return fmt.Sprintf("%+v", p.Status.ContainerStatuses)
	})

	eventually(t, 2*time.Minute, "hog OOMKilled", func() string {
		var p corev1.Pod
		getJSON(t, &p, "pod", "-n", ns, "hog")
		if len(p.Status.ContainerStatuses) == 0 {
			return "no status"
		}
		term := p.Status.ContainerStatuses[0].State.Terminated
		if term == nil || term.Reason != "OOMKilled" {
			return fmt.Sprintf("%+v", p.Status.ContainerStatuses[0].State)
		}
		return ""
	})

	// An ephemeral container in the running pod, sharing main's process
	// namespace as kubectl debug --target asks.
	kubectl(t, "-n", ns, "debug", "ordered", "--image="+suite.busybox, "-c", "dbg", "--target=main", "--", "sh", "-c", "ps; sleep 3600")
	eventually(t, time.Minute, "debug container's output", func() string {
		logs, _, err := kubectlErr("-n", ns, "logs", "ordered", "-c", "dbg")
		if err != nil || !strings.Contains(logs, "httpd") {
			return fmt.Sprintf("%v %q", err, logs)
		}
		return ""
	})

	// A user namespace: root in the pod is not root on the node.
	if m := strings.Fields(execIn(t, ns, "userns", "cat", "/proc/self/uid_map")); len(m) != 3 || m[0] != "0" || m[1] == "0" {
		t.Errorf("uid_map of a hostUsers: false pod: %v", m)
	}

	// Deletion: the preStop hook first, then TERM, within the grace period.
	kubectl(t, "-n", ns, "delete", "pod", "graceful", "--wait=true", "--timeout=60s")
	data, err := os.ReadFile(filepath.Join(out, "log"))
	if err != nil || string(data) != "prestop\nterm\n" {
		t.Errorf("preStop then TERM: %q %v", data, err)
	}
}
