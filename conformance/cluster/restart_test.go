package cluster_test

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// TestRuntimeAndKubeletRestart: berthd SIGKILLed and started again, then
// separately the kubelet: every pod keeps running with the same container
// IDs and restart counts, and the node goes on running new pods.
func TestRuntimeAndKubeletRestart(t *testing.T) {
	requireCluster(t)
	ns := namespace(t)
	apply(t, webDeployment(ns, "web", suite.busybox, 4))
	kubectl(t, "-n", ns, "rollout", "status", "deployment/web", "--timeout=180s")
	snapshot := func() map[string]string {
		t.Helper()
		got := map[string]string{}
		for _, p := range podsOf(t, ns, "web") {
			for _, c := range p.Status.ContainerStatuses {
				got[p.Name] = fmt.Sprintf("%s restarts=%d ready=%v", c.ContainerID, c.RestartCount, c.Ready)
			}
		}
		return got
	}
	before := snapshot()
	kubeSystem := func() map[string]string {
		var list corev1.PodList
		getJSON(t, &list, "pods", "-n", "kube-system", "--field-selector", "spec.nodeName=berth-node2")
		got := map[string]string{}
		for _, p := range list.Items {
			for _, c := range p.Status.ContainerStatuses {
				got[p.Name+"/"+c.Name] = fmt.Sprintf("%s restarts=%d", c.ContainerID, c.RestartCount)
			}
		}
		return got
	}
	systemBefore := kubeSystem()

	same := func(what string) {
		t.Helper()
		eventually(t, 2*time.Minute, "pods unchanged after "+what, func() string {
			after := snapshot()
			for name, s := range before {
				if after[name] != s {
					return fmt.Sprintf("%s: was %s, now %s", name, s, after[name])
				}
			}
			sys := kubeSystem()
			for name, s := range systemBefore {
				if sys[name] != s {
					return fmt.Sprintf("kube-system %s: was %s, now %s", name, s, sys[name])
				}
			}
			return ""
		})
		// berthd lists the same containers as running.
		ps := berthctl(t, 2, "ps", "-q", "--no-trunc")
		for name, s := range before {
			id := strings.TrimPrefix(strings.Fields(s)[0], "berth://")
			var p corev1.Pod
			getJSON(t, &p, "pod", "-n", ns, name)
			if p.Spec.NodeName == "berth-node2" && !strings.Contains(ps, id) {
				t.Errorf("after %s: container %s of %s not running on berthd", what, id, name)
			}
		}
	}

	signalNodeDaemon(t, 2, "runtime.pid", syscall.SIGKILL)
	time.Sleep(2 * time.Second) // the kubelet sees the runtime gone
	if out, err := clusterScript("start", "2"); err != nil {
		t.Fatalf("cluster start 2: %v\n%s", err, out)
	}
	kubectl(t, "wait", "--for=condition=Ready", "node/berth-node2", "--timeout=120s")
	same("berthd was killed and restarted")

	// The kubelet: kubelet-loop.sh starts it again, as systemd would.
	signalNodeDaemon(t, 2, "kubelet.pid", syscall.SIGKILL)
	time.Sleep(3 * time.Second)
	kubectl(t, "wait", "--for=condition=Ready", "node/berth-node2", "--timeout=120s")
	same("the kubelet was killed and restarted")

	// The node still runs new pods.
	kubectl(t, "-n", ns, "scale", "deployment/web", "--replicas=8")
	kubectl(t, "-n", ns, "rollout", "status", "deployment/web", "--timeout=180s")
}
