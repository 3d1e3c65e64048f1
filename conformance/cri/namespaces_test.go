package cri_test

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// nsOf is a container's namespace of a kind, as readlink shows it.
func (d *daemon) nsOf(t *testing.T, id, kind string) string {
	t.Helper()
	return strings.TrimSpace(d.mustExec(t, id, "readlink", "/proc/self/ns/"+kind))
}

func hostNS(t *testing.T, kind string) string {
	t.Helper()
	ns, err := os.Readlink("/proc/self/ns/" + kind)
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// podWithNamespaces runs a pod whose namespaces follow opts.
func (d *daemon) podWithNamespaces(t *testing.T, name string, opts *runtimeapi.NamespaceOption) (string, *runtimeapi.PodSandboxConfig) {
	t.Helper()
	cfg := d.podConfig(name)
	cfg.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: opts}
	return d.runPod(t, cfg), cfg
}

// withNamespaces is a container config with namespace options (the
// kubelet repeats the pod's in every container).
func withNamespaces(cfg *runtimeapi.ContainerConfig, opts *runtimeapi.NamespaceOption) *runtimeapi.ContainerConfig {
	cfg.Linux.SecurityContext.NamespaceOptions = opts
	return cfg
}

func TestNamespaces(t *testing.T) {
	d := startDaemon(t)

	t.Run("pod-shares-net-ipc-uts", func(t *testing.T) {
		// What the kubelet sends without shareProcessNamespace (the zero
		// value of a mode is POD).
		opts := &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER}
		pod, cfg := d.podWithNamespaces(t, "shared", opts)
		a := d.run(t, pod, cfg, withNamespaces(containerConfig("a", "", "sleep", "3600"), opts))
		b := d.run(t, pod, cfg, withNamespaces(containerConfig("b", "", "sleep", "3601"), opts))
		other, otherCfg := d.podWithNamespaces(t, "other", opts)
		c := d.run(t, other, otherCfg, withNamespaces(containerConfig("c", "", "sleep", "3600"), opts))
		for _, kind := range []string{"net", "ipc", "uts"} {
			na, nb, nc := d.nsOf(t, a, kind), d.nsOf(t, b, kind), d.nsOf(t, c, kind)
			if na != nb || na == nc || na == hostNS(t, kind) {
				t.Errorf("%s: a %s b %s other pod %s host %s", kind, na, nb, nc, hostNS(t, kind))
			}
		}
		// Container pid namespaces are their own by default.
		if d.nsOf(t, a, "pid") == d.nsOf(t, b, "pid") {
			t.Errorf("containers share a pid namespace without asking")
		}
		if out := d.mustExec(t, a, "cat", "/proc/1/cmdline"); !strings.HasPrefix(out, "sleep\x003600") {
			t.Errorf("pid 1 of a is %q", out)
		}
		if out := d.mustExec(t, a, "hostname"); out != "shared\n" {
			t.Errorf("hostname %q", out)
		}
		// The loopback interface is up in every pod.
		if out := d.mustExec(t, a, "cat", "/sys/class/net/lo/operstate"); strings.TrimSpace(out) == "down" {
			t.Errorf("lo is down")
		}
	})

	t.Run("pid-pod", func(t *testing.T) {
		opts := &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_POD}
		pod, cfg := d.podWithNamespaces(t, "pidpod", opts)
		a := d.run(t, pod, cfg, withNamespaces(containerConfig("a", "", "sleep", "3600"), opts))
		d.run(t, pod, cfg, withNamespaces(containerConfig("b", "", "sleep", "3601"), opts))
		out := d.mustExec(t, a, "ps", "-o", "pid,args")
		if !strings.Contains(out, "sleep 3601") || !strings.Contains(out, "pause") {
			t.Errorf("pod pid namespace: ps shows\n%s", out)
		}
		if pid1 := d.mustExec(t, a, "cat", "/proc/1/cmdline"); !strings.Contains(pid1, "pause") {
			t.Errorf("pid 1 is %q, want the pause process", pid1)
		}
		// The pod's orphans are pause's to reap: a shell's background
		// sleep outlives the shell, is adopted by pid 1, exits, and leaves
		// no zombie.
		d.mustExec(t, a, "sh", "-c", "sleep 1 </dev/null >/dev/null 2>&1 & exit 0")
		adopted, stats := false, ""
		deadline := time.Now().Add(10 * time.Second)
		for {
			stats = d.mustExec(t, a, "sh", "-c", "for f in /proc/[0-9]*/stat; do cat $f; echo; done 2>/dev/null")
			orphan, zombie := strings.Contains(stats, "(sleep) S 1 "), strings.Contains(stats, ") Z ")
			adopted = adopted || orphan
			if adopted && !orphan && !zombie {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("orphan adopted by pid 1: %v; its processes after 10s:\n%s", adopted, stats)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("pid-target", func(t *testing.T) {
		opts := &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER}
		pod, cfg := d.podWithNamespaces(t, "pidtarget", opts)
		target := d.run(t, pod, cfg, withNamespaces(containerConfig("target", "", "sleep", "3600"), opts))
		dbg := d.run(t, pod, cfg, withNamespaces(containerConfig("debug", "", "sleep", "3601"),
			&runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_TARGET, TargetId: target}))
		if d.nsOf(t, dbg, "pid") != d.nsOf(t, target, "pid") {
			t.Errorf("debug container is not in its target's pid namespace")
		}
	})

	t.Run("sysctls", func(t *testing.T) {
		// Namespaced sysctls of the pod's net and IPC namespaces: set in
		// the pod, not on the host.
		sysctls := map[string]string{"net.ipv4.ip_unprivileged_port_start": "79", "kernel.shm_rmid_forced": "1"}
		cfg := d.podConfig("sysctls")
		cfg.Linux.Sysctls = sysctls
		pod := d.runPod(t, cfg)
		c := d.run(t, pod, cfg, containerConfig("c", "", "sleep", "3600"))
		for k, v := range sysctls {
			p := "/proc/sys/" + strings.ReplaceAll(k, ".", "/")
			if out := d.mustExec(t, c, "cat", p); out != v+"\n" {
				t.Errorf("%s in the pod: %q, want %s", k, out, v)
			}
			if host, _ := os.ReadFile(p); string(host) == v+"\n" {
				t.Errorf("%s on the host is the pod's %s too", k, v)
			}
		}
	})

	t.Run("host-namespaces", func(t *testing.T) {
		opts := &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_NODE, Ipc: runtimeapi.NamespaceMode_NODE}
		pod, cfg := d.podWithNamespaces(t, "hostns", opts)
		c := d.run(t, pod, cfg, withNamespaces(containerConfig("c", "", "sleep", "3600"), opts))
		for _, kind := range []string{"net", "pid", "ipc"} {
			if got, want := d.nsOf(t, c, kind), hostNS(t, kind); got != want {
				t.Errorf("%s namespace %s, want the host's %s", kind, got, want)
			}
		}
		// The host's processes are visible: this test's own, say.
		d.mustExec(t, c, "test", "-d", "/proc/"+strconv.Itoa(os.Getpid()))
		st, err := d.RT.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
		if err != nil {
			t.Fatal(err)
		}
		if st.Status.GetLinux().GetNamespaces().GetOptions().GetNetwork() != runtimeapi.NamespaceMode_NODE {
			t.Errorf("status namespaces %+v", st.Status.GetLinux())
		}
	})
}
