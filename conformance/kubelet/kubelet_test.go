package kubelet_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	ocg "github.com/opencontainers/cgroups"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/testutil"
)

// TestKubelet runs static pods on berth through the real kubelet and
// checks each through the kubelet's own view and through berthd: probes,
// restarts, init containers, volumes, OOM kills, log rotation, teardown,
// and both daemons restarting under running pods.
func TestKubelet(t *testing.T) {
	n := startNode(t)
	img := suite.busybox

	// A web server gated by a startup probe, Ready by an HTTP probe, Live
	// by a TCP one.
	n.addPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: corev1.PodSpec{
		TerminationGracePeriodSeconds: ptr(int64(2)),
		Containers: []corev1.Container{{
			Name: "web", Image: img, ImagePullPolicy: corev1.PullIfNotPresent,
			Command: sh("sleep 2; mkdir -p /www && echo pong > /www/index.html && exec httpd -f -p 8080 -h /www"),
			StartupProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"test", "-f", "/www/index.html"}}},
				PeriodSeconds: 1, FailureThreshold: 60},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/index.html", Port: intstr.FromInt32(8080)}},
				PeriodSeconds: 1},
			LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}},
				PeriodSeconds: 2},
		}},
	}})
	// An exec liveness probe that starts failing: the kubelet restarts.
	n.addPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "flaky"}, Spec: corev1.PodSpec{
		TerminationGracePeriodSeconds: ptr(int64(1)),
		Containers: []corev1.Container{{
			Name: "app", Image: img, ImagePullPolicy: corev1.PullIfNotPresent,
			Command: sh("touch /tmp/healthy; sleep 3; rm /tmp/healthy; exec sleep 3600"),
			LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"cat", "/tmp/healthy"}}},
				PeriodSeconds: 1, FailureThreshold: 1},
		}},
	}})
	// An init container, two containers talking over localhost through an
	// emptyDir and env from the manifest, and one over its memory limit.
	data := []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	n.addPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "multi"}, Spec: corev1.PodSpec{
		TerminationGracePeriodSeconds: ptr(int64(1)),
		Volumes:                       []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		InitContainers: []corev1.Container{{
			Name: "init", Image: img, ImagePullPolicy: corev1.PullIfNotPresent, VolumeMounts: data,
			Command: sh("echo written-by-init > /data/init.txt"),
		}},
		Containers: []corev1.Container{
			{
				Name: "server", Image: img, ImagePullPolicy: corev1.PullIfNotPresent, VolumeMounts: data,
				Env:     []corev1.EnvVar{{Name: "GREETING", Value: "hello-from-the-manifest"}},
				Command: sh("mkdir -p /www && cp /data/init.txt /www/ && echo $GREETING > /www/greeting.txt && exec httpd -f -p 8081 -h /www"),
			},
			{
				Name: "client", Image: img, ImagePullPolicy: corev1.PullIfNotPresent, VolumeMounts: data,
				Command: sh("while true; do { wget -q -O- http://127.0.0.1:8081/init.txt; wget -q -O- http://127.0.0.1:8081/greeting.txt; } > /data/seen.tmp && mv /data/seen.tmp /data/seen.txt; sleep 1; done"),
			},
			{
				Name: "hog", Image: img, ImagePullPolicy: corev1.PullIfNotPresent,
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("32Mi")}},
				Command:   sh("sleep 1; x=$(head -c 200000000 /dev/zero | tr '\\0' x); echo survived"),
			},
		},
	}})
	// Fast logs: the kubelet rotates them at containerLogMaxSize (20 KiB).
	n.addPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "logger"}, Spec: corev1.PodSpec{
		TerminationGracePeriodSeconds: ptr(int64(1)),
		Containers: []corev1.Container{{
			Name: "log", Image: img, ImagePullPolicy: corev1.PullIfNotPresent,
			Command: sh("i=0; while true; do echo \"line $i of a container that logs a lot, padded to make the file grow\"; i=$((i+1)); usleep 5000; done"),
		}},
	}})

	// hostUsers: false: the kubelet allocates the mappings and asks for an
	// id-mapped emptyDir.
	n.addPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "userns"}, Spec: corev1.PodSpec{
		TerminationGracePeriodSeconds: ptr(int64(1)),
		HostUsers:                     ptr(false),
		Volumes:                       []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		Containers: []corev1.Container{{
			Name: "app", Image: img, ImagePullPolicy: corev1.PullIfNotPresent, VolumeMounts: data,
			Command: sh("touch /data/written-as-root && exec sleep 3600"),
		}},
	}})

	// Guaranteed: the kubelet puts a pod cgroup with the pod's limits
	// under its kubepods, and asks berth for the container's.
	guaranteed := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("200m"), corev1.ResourceMemory: resource.MustParse("64Mi")}
	n.addPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "limits"}, Spec: corev1.PodSpec{
		TerminationGracePeriodSeconds: ptr(int64(1)),
		Containers: []corev1.Container{{
			Name: "app", Image: img, ImagePullPolicy: corev1.PullIfNotPresent, Command: sh("exec sleep 3600"),
			Resources: corev1.ResourceRequirements{Requests: guaranteed, Limits: guaranteed},
		}},
	}})

	// Burstable: under LimitedSwap a share of the node's swap, in
	// proportion to its memory request, were it not a static pod (those
	// are critical, and the kubelet gives them none).
	n.addPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "burstable"}, Spec: corev1.PodSpec{
		TerminationGracePeriodSeconds: ptr(int64(1)),
		Containers: []corev1.Container{{
			Name: "app", Image: img, ImagePullPolicy: corev1.PullIfNotPresent, Command: sh("exec sleep 3600"),
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
			},
		}},
	}})

	web := n.pod("web", 3*time.Minute, "Ready through its probes", func(p corev1.Pod) error {
		cs := containerStatus(p, "web")
		if !podReady(p) || cs == nil || !cs.Ready || cs.Started == nil || !*cs.Started {
			return fmt.Errorf("not ready")
		}
		return nil
	})
	if web.Status.PodIP == "" {
		t.Errorf("web: no pod IP in the kubelet's view")
	}

	t.Run("probes", func(t *testing.T) {
		// Live and ready for a while: the TCP liveness probe passes.
		time.Sleep(5 * time.Second)
		p := n.pod("web", time.Minute, "still ready", func(p corev1.Pod) error {
			if !podReady(p) {
				return fmt.Errorf("not ready")
			}
			return nil
		})
		if cs := containerStatus(p, "web"); cs.RestartCount != 0 {
			t.Errorf("web restarted %d times", cs.RestartCount)
		}
		// berthd agrees: one running container, the one the kubelet names.
		cs := containerStatus(p, "web")
		st, err := n.d.RT.ContainerStatus(context.Background(), &runtimeapi.ContainerStatusRequest{ContainerId: criID(cs)})
		if err != nil || st.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Errorf("berthd's view of %s: %v %v", cs.ContainerID, err, st.GetStatus().GetState())
		}
	})

	t.Run("liveness-restart", func(t *testing.T) {
		p := n.pod("flaky", 3*time.Minute, "restarted twice by its liveness probe", func(p corev1.Pod) error {
			cs := containerStatus(p, "app")
			if cs == nil || cs.RestartCount < 2 {
				return fmt.Errorf("restart count below 2")
			}
			return nil
		})
		// berthd holds the exited attempts and the current one.
		list, err := n.d.RT.ListContainers(context.Background(), &runtimeapi.ListContainersRequest{
			Filter: &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"io.kubernetes.pod.name": p.Name}}})
		if err != nil {
			t.Fatal(err)
		}
		attempts := map[uint32]bool{}
		for _, c := range list.Containers {
			attempts[c.Metadata.Attempt] = true
		}
		if len(attempts) < 2 {
			t.Errorf("berthd has attempts %v of the restarted container", attempts)
		}
	})

	t.Run("init-volume-env-oom", func(t *testing.T) {
		p := n.pod("multi", 3*time.Minute, "init done, server and client running, hog OOM-killed", func(p corev1.Pod) error {
			if cs := containerStatus(p, "init"); cs == nil || cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 0 {
				return fmt.Errorf("init container not done")
			}
			for _, c := range []string{"server", "client"} {
				if cs := containerStatus(p, c); cs == nil || cs.State.Running == nil {
					return fmt.Errorf("%s not running", c)
				}
			}
			cs := containerStatus(p, "hog")
			if cs == nil {
				return fmt.Errorf("no hog")
			}
			for _, term := range []*corev1.ContainerStateTerminated{cs.State.Terminated, cs.LastTerminationState.Terminated} {
				if term != nil && term.Reason == "OOMKilled" {
					return nil
				}
			}
			return fmt.Errorf("hog not OOMKilled yet")
		})
		client := criID(containerStatus(p, "client"))
		eventually(t, time.Minute, "the client saw the server over localhost", func() error {
			out, err := n.execIn(client, "cat", "/data/seen.txt")
			if err != nil {
				return err
			}
			if out != "written-by-init\nhello-from-the-manifest\n" {
				return fmt.Errorf("seen %q", out)
			}
			return nil
		})
	})

	t.Run("cgroup-v2", func(t *testing.T) {
		if cgroups.HostMode() != cgroups.Unified {
			t.Skipf("needs cgroup v2 (this host: %s); make test-vm runs it", cgroups.HostMode())
		}
		// The kubelet, left to its defaults, took berthd's driver.
		if data, _ := os.ReadFile(n.log); !strings.Contains(string(data), "Using cgroup driver setting received from the CRI runtime") {
			t.Error("the kubelet did not take its cgroup driver from berthd (RuntimeConfig)")
		}
		p := n.pod("limits", 2*time.Minute, "running", func(p corev1.Pod) error {
			if cs := containerStatus(p, "app"); cs == nil || cs.State.Running == nil {
				return fmt.Errorf("not running")
			}
			return nil
		})
		id := criID(containerStatus(p, "app"))
		pid := n.d.ContainerPid(t, id)
		rel, err := testutil.ProcessCgroup(pid)
		if err != nil {
			t.Fatal(err)
		}
		ctr := filepath.Join("/sys/fs/cgroup", rel)
		pod := filepath.Dir(ctr)
		if !strings.Contains(filepath.Base(pod), "pod") {
			t.Fatalf("the container's cgroup %s is not in a pod cgroup", rel)
		}
		// 200m is 204 shares, 20 ms of every 100.
		want := map[string]string{
			pod + "/cpu.max":          "20000 100000",
			pod + "/memory.max":       "67108864",
			ctr + "/cpu.max":          "20000 100000",
			ctr + "/cpu.weight":       strconv.FormatUint(ocg.ConvertCPUSharesToCgroupV2Value(204), 10),
			ctr + "/memory.max":       "67108864",
			ctr + "/memory.oom.group": "1", // singleProcessOOMKill: false, the v2 default
		}
		if testutil.CgroupDriver() == cgroups.Systemd && !strings.HasSuffix(ctr, ".scope") {
			t.Errorf("under the systemd driver the container's cgroup is %s, not a scope", ctr)
		}
		// LimitedSwap: none for a Guaranteed pod's container; none for
		// a Burstable static pod's either (critical): the kubelet asks
		// for memory.swap.max 0 as it would for NoSwap. (A swap limit
		// through the CRI: cri's TestSwapLimit.)
		want[ctr+"/memory.swap.max"] = "0"
		for f, v := range want {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Error(err)
				continue
			}
			if got := strings.TrimSpace(string(data)); got != v {
				t.Errorf("%s: %q, want %q", f, got, v)
			}
		}
		b := n.pod("burstable", 2*time.Minute, "running", func(p corev1.Pod) error {
			if cs := containerStatus(p, "app"); cs == nil || cs.State.Running == nil {
				return fmt.Errorf("not running")
			}
			return nil
		})
		rel, err = testutil.ProcessCgroup(n.d.ContainerPid(t, criID(containerStatus(b, "app"))))
		if err != nil {
			t.Fatal(err)
		}
		if data, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", rel, "memory.swap.max")); err != nil || strings.TrimSpace(string(data)) != "0" {
			t.Errorf("a Burstable static pod's container's memory.swap.max under LimitedSwap: %q %v, want 0", data, err)
		}
	})

	t.Run("user-namespace", func(t *testing.T) {
		p := n.pod("userns", 2*time.Minute, "running", func(p corev1.Pod) error {
			if cs := containerStatus(p, "app"); cs == nil || cs.State.Running == nil {
				return fmt.Errorf("not running")
			}
			return nil
		})
		app := criID(containerStatus(p, "app"))
		out, err := n.execIn(app, "cat", "/proc/self/uid_map")
		if err != nil {
			t.Fatal(err)
		}
		var inside, host, length uint64
		if _, err := fmt.Sscan(out, &inside, &host, &length); err != nil || inside != 0 || host == 0 || length < 65536 {
			t.Errorf("uid_map in a hostUsers: false pod: %q (%v)", out, err)
		}
		if out, err := n.execIn(app, "stat", "-c", "%u", "/data/written-as-root", "/bin/busybox"); err != nil || out != "0\n0\n" {
			t.Errorf("owners inside (the emptyDir and the image id-mapped): %q %v", out, err)
		}
	})

	t.Run("log-rotation", func(t *testing.T) {
		p := n.pod("logger", time.Minute, "running", func(p corev1.Pod) error {
			if cs := containerStatus(p, "log"); cs == nil || cs.State.Running == nil {
				return fmt.Errorf("not running")
			}
			return nil
		})
		dir := filepath.Join(n.podLogs, fmt.Sprintf("%s_%s_%s", p.Namespace, p.Name, p.UID), "log")
		eventually(t, 2*time.Minute, "the kubelet rotated the log", func() error {
			entries, err := os.ReadDir(dir)
			if err != nil {
				return err
			}
			var names []string
			rotated := false
			for _, e := range entries {
				names = append(names, e.Name())
				if strings.HasPrefix(e.Name(), "0.log.") {
					rotated = true
				}
			}
			if !rotated {
				return fmt.Errorf("files %v", names)
			}
			return nil
		})
		// Lines keep coming into the reopened file, in CRI format: berthd
		// writes to the new 0.log, not the renamed one.
		cur := filepath.Join(dir, "0.log")
		lastLine := func() (string, error) {
			data, err := os.ReadFile(cur)
			if err != nil {
				return "", err
			}
			lines := strings.Split(strings.TrimSpace(string(data)), "\n")
			last := lines[len(lines)-1]
			if f := strings.SplitN(last, " ", 4); len(f) != 4 || f[1] != "stdout" || f[2] != "F" || !strings.HasPrefix(f[3], "line ") {
				return "", fmt.Errorf("last line %q", last)
			}
			return last, nil
		}
		var first string
		eventually(t, 30*time.Second, "a line in the reopened log", func() (err error) {
			first, err = lastLine()
			return err
		})
		eventually(t, 30*time.Second, "more lines in the reopened log", func() error {
			last, err := lastLine()
			if err == nil && last == first {
				return fmt.Errorf("no line after %q", first)
			}
			return err
		})
		// The kubelet keeps at most containerLogMaxFiles (2) files.
		if entries, _ := os.ReadDir(dir); len(entries) > 3 {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Errorf("log files %v: rotation does not keep up", names)
		}
	})

	// The same pods, the same containers, before and after a restart.
	snapshot := func() map[string]string {
		pods, err := n.pods()
		if err != nil {
			t.Fatal(err)
		}
		ids := map[string]string{}
		for name, p := range pods {
			for _, c := range []string{"web", "server", "client", "log"} {
				if cs := containerStatus(p, c); cs != nil && cs.State.Running != nil {
					ids[name+"/"+c] = cs.ContainerID
				}
			}
		}
		return ids
	}
	sameAfter := func(t *testing.T, what string, before map[string]string) {
		t.Helper()
		n.pod("web", 2*time.Minute, "ready again "+what, func(p corev1.Pod) error {
			if !podReady(p) {
				return fmt.Errorf("not ready")
			}
			return nil
		})
		eventually(t, time.Minute, "the kubelet sees the same containers "+what, func() error {
			after := snapshot()
			for k, id := range before {
				if after[k] != id {
					return fmt.Errorf("%s: %s before, %q after", k, id, after[k])
				}
			}
			return nil
		})
		for k, id := range before {
			_, cid, _ := strings.Cut(id, "://")
			st, err := n.d.RT.ContainerStatus(context.Background(), &runtimeapi.ContainerStatusRequest{ContainerId: cid})
			if err != nil || st.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
				t.Errorf("%s %s: berthd says %v %v", what, k, err, st.GetStatus().GetState())
			}
		}
	}

	t.Run("kubelet-restart", func(t *testing.T) {
		before := snapshot()
		if len(before) < 4 {
			t.Fatalf("running containers before: %v", before)
		}
		n.stop()
		time.Sleep(2 * time.Second)
		n.start()
		sameAfter(t, "after a kubelet restart", before)
	})

	t.Run("berthd-kill9", func(t *testing.T) {
		before := snapshot()
		n.d.Stop(syscall.SIGKILL)
		time.Sleep(2 * time.Second)
		n.d.Start()
		sameAfter(t, "after berthd was killed", before)
	})

	t.Run("manifest-removed", func(t *testing.T) {
		pods, err := n.pods()
		if err != nil {
			t.Fatal(err)
		}
		uid := string(pods["web"].UID)
		n.removePod("web")
		eventually(t, 3*time.Minute, "the web pod's sandbox is removed", func() error {
			list, err := n.d.RT.ListPodSandbox(context.Background(), &runtimeapi.ListPodSandboxRequest{
				Filter: &runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{"io.kubernetes.pod.uid": uid}}})
			if err != nil {
				return err
			}
			for _, sb := range list.Items {
				return fmt.Errorf("sandbox %s is %v", sb.Id, sb.State)
			}
			return nil
		})
		list, err := n.d.RT.ListContainers(context.Background(), &runtimeapi.ListContainersRequest{
			Filter: &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"io.kubernetes.pod.uid": uid}}})
		if err != nil || len(list.Containers) != 0 {
			t.Errorf("containers of the removed pod: %v %v", err, list.GetContainers())
		}
		if _, err := os.Stat(filepath.Join(n.podLogs, fmt.Sprintf("default_web-berth-node_%s", uid))); err == nil {
			t.Logf("note: the kubelet keeps the removed pod's log directory until its GC")
		}
	})
}
