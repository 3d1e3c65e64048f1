package cluster_test

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestNodes: both nodes registered and Ready with berth as their runtime
// (a semantic version the kubelet parsed), their InternalIP on the
// cluster's bridge, and every pod the API server places on a node is a
// sandbox that node's berthd runs.
func TestNodes(t *testing.T) {
	requireCluster(t)
	var list corev1.NodeList
	getJSON(t, &list, "nodes")
	if len(list.Items) != nodes {
		t.Fatalf("%d nodes, want %d", len(list.Items), nodes)
	}
	runtimeVersion := regexp.MustCompile(`^berth://\d+\.\d+\.\d+(\+[0-9A-Za-z.-]+)?$`)
	for i, n := range list.Items {
		want := fmt.Sprintf("berth-node%d", i+1)
		if n.Name != want {
			t.Errorf("node %d is %q, want %q", i, n.Name, want)
		}
		if !ready(n.Status.Conditions) {
			t.Errorf("node %s not Ready: %+v", n.Name, n.Status.Conditions)
		}
		if v := n.Status.NodeInfo.ContainerRuntimeVersion; !runtimeVersion.MatchString(v) {
			t.Errorf("node %s runtime %q, want berth://<semantic version>", n.Name, v)
		}
		ip := ""
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				ip = a.Address
			}
		}
		if want := fmt.Sprintf("10.210.0.1%d", i+1); ip != want {
			t.Errorf("node %s InternalIP %q, want %q", n.Name, ip, want)
		}
		if n.Spec.PodCIDR == "" {
			t.Errorf("node %s has no pod CIDR", n.Name)
		}
		// What berthd says of itself is what the node shows.
		if v := berthctl(t, i+1, "version"); !strings.Contains(v, strings.TrimPrefix(n.Status.NodeInfo.ContainerRuntimeVersion, "berth://")) {
			t.Errorf("node %s shows %s; berthd says %s", n.Name, n.Status.NodeInfo.ContainerRuntimeVersion, v)
		}
	}

	// Every running pod of kube-system is a ready sandbox on its node.
	var pods corev1.PodList
	getJSON(t, &pods, "pods", "-n", "kube-system")
	for i := range nodes {
		node := fmt.Sprintf("berth-node%d", i+1)
		sandboxes := berthctl(t, i+1, "pods", "--state", "ready", "-o", "json")
		for _, p := range pods.Items {
			if p.Spec.NodeName != node || p.Status.Phase != corev1.PodRunning {
				continue
			}
			// A static pod's mirror has a UID of its own; the kubelet's
			// (the sandbox's) is in its annotation.
			uid := string(p.UID)
			if m := p.Annotations["kubernetes.io/config.mirror"]; m != "" {
				uid = m
			}
			if !strings.Contains(sandboxes, uid) {
				t.Errorf("pod %s (%s) runs on %s by the API server, but that node's berthd has no ready sandbox for it", p.Name, uid, node)
			}
		}
	}
	// The control plane runs on berth as static pods on the first node.
	var names []string
	for _, p := range pods.Items {
		if p.Spec.NodeName == "berth-node1" && p.Status.Phase == corev1.PodRunning {
			names = append(names, p.Name)
		}
	}
	for _, c := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		if !slices.Contains(names, c+"-berth-node1") {
			t.Errorf("%s is not running on berth-node1 (running there: %v)", c, names)
		}
	}
}

func ready(conds []corev1.NodeCondition) bool {
	for _, c := range conds {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
