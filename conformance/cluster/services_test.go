package cluster_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// clientPod is a busybox pod pinned to a node, sleeping, to run commands
// in with kubectl exec.
func clientPod(ns, name, node, image string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  nodeName: %[3]s
  terminationGracePeriodSeconds: 1
  containers:
  - name: sh
    image: %[4]s
    command: [sleep, "3600"]
`, ns, name, node, image)
}

// execIn runs a command in a pod's first container through the API
// server and returns its output.
func execIn(t testing.TB, ns, pod string, cmd ...string) string {
	t.Helper()
	return kubectl(t, append([]string{"-n", ns, "exec", pod, "--"}, cmd...)...)
}

func waitReady(t testing.TB, ns string, pods ...string) {
	t.Helper()
	args := []string{"-n", ns, "wait", "--for=condition=Ready", "--timeout=180s"}
	for _, p := range pods {
		args = append(args, "pod/"+p)
	}
	kubectl(t, args...)
}

// TestServices: pods reach pods on the other node directly; a ClusterIP
// Service through kube-proxy and by its DNS name (CoreDNS) reaches
// backends on both nodes from a pod on each; a NodePort Service answers on
// each node's address.
func TestServices(t *testing.T) {
	requireCluster(t)
	ns := namespace(t)
	apply(t, webDeployment(ns, "echo", suite.busybox, 4))
	apply(t, fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: echo, namespace: %[1]s}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-np, namespace: %[1]s}
spec:
  type: NodePort
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
`, ns))
	for n := 1; n <= nodes; n++ {
		apply(t, clientPod(ns, fmt.Sprintf("client%d", n), fmt.Sprintf("berth-node%d", n), suite.busybox))
	}
	kubectl(t, "-n", ns, "rollout", "status", "deployment/echo", "--timeout=180s")
	waitReady(t, ns, "client1", "client2")

	backends := map[string]corev1.Pod{}
	for _, p := range podsOf(t, ns, "echo") {
		backends[p.Name] = p
	}
	// Pod to pod, across nodes and on the same node, without NAT: each
	// backend answers its own name to each client.
	for n := 1; n <= nodes; n++ {
		client := fmt.Sprintf("client%d", n)
		for name, p := range backends {
			got := strings.TrimSpace(execIn(t, ns, client, "timeout", "10", "wget", "-q", "-O-", "http://"+p.Status.PodIP+":8080/index.html"))
			if got != name {
				t.Errorf("%s -> %s (%s on %s): %q", client, p.Status.PodIP, name, p.Spec.NodeName, got)
			}
		}
	}

	var svc corev1.Service
	getJSON(t, &svc, "service", "-n", ns, "echo")
	// Through the Service by ClusterIP and by DNS name, until backends on
	// both nodes have answered each client.
	for n := 1; n <= nodes; n++ {
		client := fmt.Sprintf("client%d", n)
		for _, target := range []string{svc.Spec.ClusterIP, "echo", "echo." + ns + ".svc.cluster.local"} {
			seen := map[string]bool{}
			eventually(t, time.Minute, fmt.Sprintf("%s -> %s reaching both nodes", client, target), func() string {
				got := strings.TrimSpace(execIn(t, ns, client, "timeout", "10", "wget", "-q", "-O-", "http://"+target+"/index.html"))
				p, ok := backends[got]
				if !ok {
					return fmt.Sprintf("answer %q is no backend", got)
				}
				seen[p.Spec.NodeName] = true
				if len(seen) < nodes {
					return fmt.Sprintf("only backends on %v so far", seen)
				}
				return ""
			})
		}
		// CoreDNS answers with the ClusterIP.
		if out := execIn(t, ns, client, "nslookup", "echo."+ns+".svc.cluster.local"); !strings.Contains(out, svc.Spec.ClusterIP) {
			t.Errorf("nslookup from %s: no %s in\n%s", client, svc.Spec.ClusterIP, out)
		}
	}

	// NodePort: from the host, on each node's address on the bridge.
	getJSON(t, &svc, "service", "-n", ns, "echo-np")
	port := svc.Spec.Ports[0].NodePort
	for n := 1; n <= nodes; n++ {
		url := fmt.Sprintf("http://10.210.0.1%d:%d/index.html", n, port)
		eventually(t, time.Minute, "NodePort "+url, func() string {
			c := http.Client{Timeout: 5 * time.Second}
			resp, err := c.Get(url)
			if err != nil {
				return err.Error()
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if _, ok := backends[strings.TrimSpace(string(body))]; !ok {
				return fmt.Sprintf("answer %q is no backend", body)
			}
			return ""
		})
	}
}
