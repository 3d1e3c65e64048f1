package cluster_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// webDeployment is a Deployment of busybox httpd servers that answer
// with their pod's name, spread over the nodes.
func webDeployment(ns, name, image string, replicas int) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  replicas: %[4]d
  selector: {matchLabels: {app: %[2]s}}
  strategy: {rollingUpdate: {maxUnavailable: "50%%", maxSurge: "50%%"}}
  template:
    metadata: {labels: {app: %[2]s}}
    spec:
      terminationGracePeriodSeconds: 1
      # Over both nodes, as evenly as they go: each revision's pods by
      # themselves (pod-template-hash), or a rollout would place the new
      # pods beside the old ones it is about to remove.
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: %[2]s}}, matchLabelKeys: [pod-template-hash]}
      containers:
      - name: web
        image: %[3]s
        command: [sh, -c, 'mkdir -p /www && echo $HOSTNAME > /www/index.html && exec httpd -f -p 8080 -h /www']
        ports: [{containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /index.html, port: 8080}
          periodSeconds: 1
`, ns, name, image, replicas)
}

// podsOf lists the pods of an app label.
func podsOf(t testing.TB, ns, app string) []corev1.Pod {
	t.Helper()
	var list corev1.PodList
	getJSON(t, &list, "pods", "-n", ns, "-l", "app="+app)
	return list.Items
}

// berthContainers counts, per node, the running containers berthd has
// for pods of namespace ns, by image.
func berthContainers(t testing.TB, ns string) map[int]map[string]int {
	t.Helper()
	got := map[int]map[string]int{}
	for n := 1; n <= nodes; n++ {
		var list struct {
			Containers []struct {
				Image struct {
					// The kubelet creates containers by image ID and
					// passes the name it was given along.
					UserSpecifiedImage string `json:"userSpecifiedImage"`
				} `json:"image"`
				Labels map[string]string `json:"labels"`
			} `json:"containers"`
		}
		out := berthctl(t, n, "ps", "-o", "json", "--label", "io.kubernetes.pod.namespace="+ns)
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			t.Fatalf("berthctl ps on node %d: %v\n%s", n, err, out)
		}
		got[n] = map[string]int{}
		for _, c := range list.Containers {
			got[n][c.Image.UserSpecifiedImage]++
		}
	}
	return got
}

// TestDeployment: 20 replicas over both nodes, scaled, rolled to a new
// image version and back, each step checked in the API server and in
// both berthds; a rollout to a missing image reports berth's pull error.
func TestDeployment(t *testing.T) {
	requireCluster(t)
	ns := namespace(t)
	apply(t, webDeployment(ns, "web", suite.busybox, 20))
	rollout := func() {
		t.Helper()
		kubectl(t, "-n", ns, "rollout", "status", "deployment/web", "--timeout=300s")
	}
	rollout()
	// check: n pods Ready of image, each a running container on its
	// node's berthd, and nothing else; spread over the nodes where the
	// scheduler placed them all (not after a scale-down, whose choice of
	// pods to remove need not keep them even).
	check := func(n int, image string, spread bool) {
		t.Helper()
		eventually(t, 2*time.Minute, fmt.Sprintf("%d pods of %s", n, image), func() string {
			pods := podsOf(t, ns, "web")
			perNode := map[string]int{}
			for _, p := range pods {
				if p.DeletionTimestamp != nil {
					return fmt.Sprintf("pod %s still terminating", p.Name)
				}
				if p.Spec.Containers[0].Image != image || p.Status.Phase != corev1.PodRunning {
					return fmt.Sprintf("pod %s: %s %s", p.Name, p.Spec.Containers[0].Image, p.Status.Phase)
				}
				perNode[p.Spec.NodeName]++
			}
			if len(pods) != n {
				return fmt.Sprintf("%d pods", len(pods))
			}
			berth := berthContainers(t, ns)
			for i := 1; i <= nodes; i++ {
				node := fmt.Sprintf("berth-node%d", i)
				if got := berth[i][image]; got != perNode[node] || len(berth[i]) > 1 && perNode[node] > 0 {
					return fmt.Sprintf("%s: API server has %d pods, berthd runs %v", node, perNode[node], berth[i])
				}
			}
			if spread && (perNode["berth-node1"] == 0 || perNode["berth-node2"] == 0) {
				return fmt.Sprintf("not spread over the nodes: %v", perNode)
			}
			return ""
		})
	}
	check(20, suite.busybox, true)

	kubectl(t, "-n", ns, "scale", "deployment/web", "--replicas=6")
	rollout()
	check(6, suite.busybox, false)

	kubectl(t, "-n", ns, "set", "image", "deployment/web", "web="+suite.busybox2)
	rollout()
	check(6, suite.busybox2, true)
	kubectl(t, "-n", ns, "rollout", "undo", "deployment/web")
	rollout()
	check(6, suite.busybox, true)

	// A missing image: the new pods report berth's pull error; the old
	// ones keep serving (maxUnavailable leaves some).
	missing := registry + "/e2e/missing:1"
	kubectl(t, "-n", ns, "set", "image", "deployment/web", "web="+missing)
	eventually(t, 2*time.Minute, "pull error reported", func() string {
		for _, p := range podsOf(t, ns, "web") {
			if p.Spec.Containers[0].Image != missing || len(p.Status.ContainerStatuses) == 0 {
				continue
			}
			w := p.Status.ContainerStatuses[0].State.Waiting
			if w == nil || (w.Reason != "ErrImagePull" && w.Reason != "ImagePullBackOff") {
				continue
			}
			if !strings.Contains(w.Message, "e2e/missing") {
				return fmt.Sprintf("pod %s: %s without the image's name: %q", p.Name, w.Reason, w.Message)
			}
			t.Logf("pod %s: %s: %s", p.Name, w.Reason, w.Message)
			return ""
		}
		return "no pod of the missing image reports a pull error yet"
	})
	var ready int
	for _, p := range podsOf(t, ns, "web") {
		if p.Spec.Containers[0].Image == suite.busybox && p.Status.Phase == corev1.PodRunning {
			ready++
		}
	}
	if ready < 3 {
		t.Errorf("%d pods of the old image left running, want at least 3", ready)
	}
}
