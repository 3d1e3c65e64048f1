package cluster_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/berth-runtime/berth/internal/testutil"
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

// TestSecondClusterRefused: a second cluster on the machine (another
// checkout's make test, say) stops at once and names the one that is up,
// since the names a cluster takes are the machine's; and its down leaves
// the first cluster running.
func TestSecondClusterRefused(t *testing.T) {
	requireCluster(t)
	if os.Getenv("BERTH_CLUSTER_DIR") != "" {
		t.Skip("BERTH_CLUSTER_DIR: the cluster is not the suite's own, its owner may be named otherwise")
	}
	other := t.TempDir()
	env := append(slices.Clone(suite.env), "CLUSTER_DIR="+other)
	run := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(testutil.RepoRoot(), "hack", "cluster", "cluster.sh"), args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("up", "1")
	if err == nil {
		t.Fatalf("a second cluster came up:\n%s", out)
	}
	first, err := filepath.EvalSymlinks(suite.dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := "another cluster is up on this machine (CLUSTER_DIR=" + first + ")"; !strings.Contains(out, want) {
		t.Errorf("second up says:\n%s\nwant %q", out, want)
	}
	if out, err := run("down"); err != nil {
		t.Fatalf("second cluster's down: %v\n%s", err, out)
	}
	// The first cluster is whole: its nodes' namespaces and its API.
	for n := 1; n <= nodes; n++ {
		if _, err := os.Stat(fmt.Sprintf("/run/berth-cluster/node%d.mnt", n)); err != nil {
			t.Errorf("node %d's mount namespace after the second down: %v", n, err)
		}
	}
	eventually(t, time.Minute, "nodes Ready after the second down", func() string {
		var list corev1.NodeList
		getJSON(t, &list, "nodes")
		for _, n := range list.Items {
			if !ready(n.Status.Conditions) {
				return n.Name + " not Ready"
			}
		}
		return ""
	})
}
