package cluster_test

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// summary is the part of the kubelet's /stats/summary the tests read.
type summary struct {
	Node struct {
		Runtime struct {
			ImageFs struct {
				UsedBytes     uint64 `json:"usedBytes"`
				CapacityBytes uint64 `json:"capacityBytes"`
			} `json:"imageFs"`
		} `json:"runtime"`
	} `json:"node"`
	Pods []struct {
		PodRef struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"podRef"`
		Containers []struct {
			Name   string `json:"name"`
			Memory struct {
				WorkingSetBytes uint64 `json:"workingSetBytes"`
			} `json:"memory"`
			Rootfs struct {
				UsedBytes uint64 `json:"usedBytes"`
			} `json:"rootfs"`
		} `json:"containers"`
	} `json:"pods"`
}

func statsSummary(t testing.TB, node string) summary {
	t.Helper()
	var s summary
	out := kubectl(t, "get", "--raw", "/api/v1/nodes/"+node+"/proxy/stats/summary")
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("stats summary of %s: %v", node, err)
	}
	return s
}

// containerCgroup finds a container's memory cgroup directory by its ID.
func containerCgroup(t testing.TB, id string) string {
	t.Helper()
	root := "/sys/fs/cgroup/memory/" + suite.cgroup
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		root = "/sys/fs/cgroup/" + suite.cgroup
	}
	found := ""
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && strings.Contains(d.Name(), id) {
			found = p
			return filepath.SkipAll
		}
		return nil
	})
	if found == "" {
		t.Fatalf("no memory cgroup for container %s under %s", id, root)
	}
	return found
}

// cgroupWorkingSet is what the kubelet calls the working set: usage less
// inactive file pages, read from the cgroup files themselves.
func cgroupWorkingSet(t testing.TB, dir string) uint64 {
	t.Helper()
	usageFile, inactiveKey := "memory.usage_in_bytes", "total_inactive_file"
	if _, err := os.Stat(filepath.Join(dir, "memory.current")); err == nil {
		usageFile, inactiveKey = "memory.current", "inactive_file"
	}
	data, err := os.ReadFile(filepath.Join(dir, usageFile))
	if err != nil {
		t.Fatal(err)
	}
	usage, _ := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	stat, err := os.ReadFile(filepath.Join(dir, "memory.stat"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(stat), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == inactiveKey {
			inactive, _ := strconv.ParseUint(f[1], 10, 64)
			if inactive < usage {
				return usage - inactive
			}
		}
	}
	return usage
}

// TestStatsSummary: the kubelet's /stats/summary, from berth through the
// CRI stats calls, agrees with the container's cgroup and sees its
// writable layer grow; the image filesystem is the one berth reports.
func TestStatsSummary(t *testing.T) {
	requireCluster(t)
	ns := namespace(t)
	apply(t, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: user, namespace: %[1]s}
spec:
  nodeName: berth-node2
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: %[2]s
    command: [sh, -c, 'head -c 40000000 /dev/zero > /dev/shm/mem; head -c 8000000 /dev/zero > /layer; exec sleep 3600']
`, ns, suite.busybox))
	waitReady(t, ns, "user")
	var p corev1.Pod
	getJSON(t, &p, "pod", "-n", ns, "user")
	id := strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "berth://")
	cg := containerCgroup(t, id)
	eventually(t, time.Minute, "stats of the pod", func() string {
		s := statsSummary(t, "berth-node2")
		if s.Node.Runtime.ImageFs.UsedBytes == 0 || s.Node.Runtime.ImageFs.CapacityBytes == 0 {
			return fmt.Sprintf("image filesystem %+v", s.Node.Runtime.ImageFs)
		}
		for _, ps := range s.Pods {
			if ps.PodRef.Namespace != ns || len(ps.Containers) != 1 {
				continue
			}
			c := ps.Containers[0]
			ws := cgroupWorkingSet(t, cg)
			if c.Memory.WorkingSetBytes < 40e6 || ws < 40e6 {
				return fmt.Sprintf("working set %d in the summary, %d in the cgroup; 40 MB are in its tmpfs", c.Memory.WorkingSetBytes, ws)
			}
			if diff := int64(c.Memory.WorkingSetBytes) - int64(ws); diff > 4e6 || diff < -4e6 {
				return fmt.Sprintf("working set %d in the summary, %d in the cgroup", c.Memory.WorkingSetBytes, ws)
			}
			if c.Rootfs.UsedBytes < 8e6 {
				return fmt.Sprintf("writable layer %d bytes, 8 MB written", c.Rootfs.UsedBytes)
			}
			return ""
		}
		return "pod not in the summary"
	})
}

// TestEphemeralStorageEviction: a pod writing past its ephemeral-storage
// limit into its writable layer (measured by berth) is evicted.
func TestEphemeralStorageEviction(t *testing.T) {
	requireCluster(t)
	ns := namespace(t)
	apply(t, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: filler, namespace: %[1]s}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: %[2]s
    resources: {limits: {ephemeral-storage: 10Mi}}
    command: [sh, -c, 'head -c 40000000 /dev/zero > /fill; exec sleep 3600']
`, ns, suite.busybox))
	eventually(t, 2*time.Minute, "filler evicted", func() string {
		var p corev1.Pod
		getJSON(t, &p, "pod", "-n", ns, "filler")
		if p.Status.Phase != corev1.PodFailed || p.Status.Reason != "Evicted" {
			return fmt.Sprintf("%s %s %s", p.Status.Phase, p.Status.Reason, p.Status.Message)
		}
		if !strings.Contains(p.Status.Message, "ephemeral") {
			return "evicted for something else: " + p.Status.Message
		}
		return ""
	})
}

// TestImageGC: with its image filesystem (as berth reports it in
// ImageFsInfo) past the kubelet's threshold, the kubelet removes through
// berth the images no container uses, and keeps those in use.
//
// The threshold is the eviction one (imagefs.available), whose manager
// reclaims images within seconds; the imageGCHighThresholdPercent loop
// runs every five minutes, and its first run after a start fails on every
// runtime until cAdvisor has the file system's capacity.
func TestImageGC(t *testing.T) {
	requireCluster(t)
	berthctl(t, 2, "pull", suite.busybox2)
	if tags := nodeImages(t, 2); !slices.Contains(tags, suite.busybox2) {
		t.Fatalf("busybox:2 not listed after its pull: %v", tags)
	}

	// The node's kubelet with a threshold this file system is past (less
	// than 99% free), then put back.
	cfgPath := filepath.Join(suite.dir, "node2", "binds", "var", "lib", "kubelet", "config.yaml")
	orig, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(orig, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["evictionHard"] = map[string]string{"imagefs.available": "99%", "nodefs.available": "1%", "memory.available": "1Mi"}
	// The kubelet spares images it first saw less than imageMinimumGCAge
	// (default 2m) ago, and a restarted kubelet has just seen them all.
	cfg["imageMinimumGCAge"] = "1s"
	gc, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	restartKubelet := func(config []byte) {
		t.Helper()
		if err := os.WriteFile(cfgPath, config, 0o644); err != nil {
			t.Fatal(err)
		}
		signalNodeDaemon(t, 2, "kubelet.pid", syscall.SIGTERM)
		time.Sleep(3 * time.Second)
		kubectl(t, "wait", "--for=condition=Ready", "node/berth-node2", "--timeout=120s")
	}
	restartKubelet(gc)
	t.Cleanup(func() {
		restartKubelet(orig)
		// The new kubelet sees no pressure; the taint goes with it.
		eventually(t, 2*time.Minute, "disk pressure over", func() string {
			var n corev1.Node
			getJSON(t, &n, "node", "berth-node2")
			for _, taint := range n.Spec.Taints {
				if taint.Key == "node.kubernetes.io/disk-pressure" {
					return "tainted"
				}
			}
			return ""
		})
	})

	eventually(t, 2*time.Minute, "busybox:2 collected", func() string {
		if tags := nodeImages(t, 2); slices.Contains(tags, suite.busybox2) {
			return fmt.Sprintf("still listed: %v", tags)
		}
		return ""
	})
	// kube-proxy, critical, is never evicted: its image stays.
	if tags, want := nodeImages(t, 2), registry+"/k8s/kube-proxy:"+k8sVersion(t); !slices.Contains(tags, want) {
		t.Errorf("%s is in use but was removed: %v", want, tags)
	}
}

// nodeImages lists the tags of node n's images, from its berthd.
func nodeImages(t testing.TB, n int) []string {
	t.Helper()
	var list struct {
		Images []struct {
			RepoTags []string `json:"repoTags"`
		} `json:"images"`
	}
	out := berthctl(t, n, "images", "-o", "json")
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("berthctl images on node %d: %v\n%s", n, err, out)
	}
	var tags []string
	for _, i := range list.Images {
		tags = append(tags, i.RepoTags...)
	}
	return tags
}

// k8sVersion is the release the cluster runs (v1.37.2).
func k8sVersion(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(suite.k8sBin, ".version-kubeadm"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}
