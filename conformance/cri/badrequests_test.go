package cri_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestBadRequests sends what a buggy or hostile client might: every
// answer is an error with the right code and a message, and the daemon
// keeps serving.
func TestBadRequests(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("good")
	pod := d.runPod(t, podCfg)
	c := d.run(t, pod, podCfg, containerConfig("good", "", "sleep", "3600"))
	ctx := ctxT(t)

	podWith := func(f func(*runtimeapi.PodSandboxConfig)) *runtimeapi.PodSandboxConfig {
		cfg := d.podConfig("bad")
		f(cfg)
		return cfg
	}
	ctrWith := func(f func(*runtimeapi.ContainerConfig)) *runtimeapi.ContainerConfig {
		cfg := containerConfig("bad", "", "true")
		f(cfg)
		return cfg
	}
	runPod := func(cfg *runtimeapi.PodSandboxConfig) error {
		_, err := d.RT.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
		return err
	}
	create := func(podID string, cfg *runtimeapi.ContainerConfig) error {
		_, err := d.RT.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: cfg, SandboxConfig: podCfg})
		return err
	}
	cases := []struct {
		name string
		code codes.Code
		call func() error
	}{
		{"RunPodSandbox without config", codes.InvalidArgument, func() error { return runPod(nil) }},
		{"RunPodSandbox without a name", codes.InvalidArgument, func() error {
			return runPod(podWith(func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Name = "" }))
		}},
		{"RunPodSandbox with a taken name", codes.AlreadyExists, func() error { return runPod(d.podConfig("good")) }},
		{"RunPodSandbox with a bad hostname", codes.InvalidArgument, func() error {
			return runPod(podWith(func(c *runtimeapi.PodSandboxConfig) { c.Hostname = "a/b" }))
		}},
		{"RunPodSandbox with an unknown handler", codes.InvalidArgument, func() error {
			_, err := d.RT.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: d.podConfig("h"), RuntimeHandler: "kata"})
			return err
		}},
		{"RunPodSandbox with a user namespace mapping the host's root", codes.InvalidArgument, func() error {
			return runPod(podWith(func(c *runtimeapi.PodSandboxConfig) { c.Linux.SecurityContext = usernsContext(0, 65536, false) }))
		}},
		{"RunPodSandbox with a user namespace too small for the pause's uid", codes.InvalidArgument, func() error {
			return runPod(podWith(func(c *runtimeapi.PodSandboxConfig) { c.Linux.SecurityContext = usernsContext(1<<20, 1000, false) }))
		}},
		{"RunPodSandbox with a user namespace and the host's network", codes.InvalidArgument, func() error {
			return runPod(podWith(func(c *runtimeapi.PodSandboxConfig) { c.Linux.SecurityContext = usernsContext(1<<20, 65536, true) }))
		}},
		{"RunPodSandbox with a per-container user namespace", codes.InvalidArgument, func() error {
			return runPod(podWith(func(c *runtimeapi.PodSandboxConfig) {
				c.Linux.SecurityContext = usernsContext(1<<20, 65536, false)
				c.Linux.SecurityContext.NamespaceOptions.UsernsOptions.Mode = runtimeapi.NamespaceMode_CONTAINER
			}))
		}},
		{"RunPodSandbox with a host sysctl", codes.InvalidArgument, func() error {
			return runPod(podWith(func(c *runtimeapi.PodSandboxConfig) { c.Linux.Sysctls = map[string]string{"kernel.panic": "1"} }))
		}},
		{"RunPodSandbox with a relative log directory", codes.InvalidArgument, func() error {
			return runPod(podWith(func(c *runtimeapi.PodSandboxConfig) { c.LogDirectory = "relative/logs" }))
		}},
		{"RunPodSandbox with an escaping cgroup parent", codes.InvalidArgument, func() error {
			return runPod(podWith(func(c *runtimeapi.PodSandboxConfig) { c.Linux.CgroupParent = "/kubepods/../../etc" }))
		}},
		{"RunPodSandbox with bad DNS options", codes.InvalidArgument, func() error {
			return runPod(podWith(func(c *runtimeapi.PodSandboxConfig) {
				c.DnsConfig = &runtimeapi.DNSConfig{Servers: []string{"not-an-ip"}}
			}))
		}},
		{"CreateContainer in an unknown pod", codes.NotFound, func() error { return create("no-such-pod", containerConfig("x", "", "true")) }},
		{"CreateContainer without config", codes.InvalidArgument, func() error { return create(pod, nil) }},
		{"CreateContainer with a taken name", codes.AlreadyExists, func() error { return create(pod, containerConfig("good", "", "true")) }},
		{"CreateContainer of an image not pulled", codes.NotFound, func() error {
			return create(pod, ctrWith(func(c *runtimeapi.ContainerConfig) { c.Image.Image = suite.reg.Addr + "/busybox:never-pulled" }))
		}},
		{"CreateContainer without an image", codes.InvalidArgument, func() error {
			return create(pod, ctrWith(func(c *runtimeapi.ContainerConfig) { c.Image = nil }))
		}},
		{"CreateContainer with a relative mount", codes.InvalidArgument, func() error {
			return create(pod, ctrWith(func(c *runtimeapi.ContainerConfig) {
				c.Mounts = []*runtimeapi.Mount{{ContainerPath: "/data", HostPath: "relative"}}
			}))
		}},
		{"CreateContainer with an unknown capability", codes.InvalidArgument, func() error {
			return create(pod, ctrWith(func(c *runtimeapi.ContainerConfig) {
				c.Linux.SecurityContext.Capabilities = &runtimeapi.Capability{AddCapabilities: []string{"CAP_MAKE_COFFEE"}}
			}))
		}},
		{"CreateContainer with a negative memory limit", codes.InvalidArgument, func() error {
			return create(pod, ctrWith(func(c *runtimeapi.ContainerConfig) {
				c.Linux.Resources = &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: -1}
			}))
		}},
		{"CreateContainer with oom_score_adj 5000", codes.InvalidArgument, func() error {
			return create(pod, ctrWith(func(c *runtimeapi.ContainerConfig) {
				c.Linux.Resources = &runtimeapi.LinuxContainerResources{OomScoreAdj: 5000}
			}))
		}},
		{"CreateContainer with an escaping log path", codes.InvalidArgument, func() error {
			return create(pod, ctrWith(func(c *runtimeapi.ContainerConfig) { c.LogPath = "../../../etc/evil.log" }))
		}},
		{"CreateContainer with a user namespace its pod does not have", codes.InvalidArgument, func() error {
			return create(pod, ctrWith(func(c *runtimeapi.ContainerConfig) {
				c.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD}}
			}))
		}},
		{"StartContainer of an unknown id", codes.NotFound, func() error {
			_, err := d.RT.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: "no-such"})
			return err
		}},
		{"StartContainer twice", codes.FailedPrecondition, func() error {
			_, err := d.RT.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c})
			return err
		}},
		{"ContainerStatus of an unknown id", codes.NotFound, func() error {
			_, err := d.RT.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: "no-such"})
			return err
		}},
		{"ContainerStatus without an id", codes.InvalidArgument, func() error {
			_, err := d.RT.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{})
			return err
		}},
		{"PodSandboxStatus of an unknown id", codes.NotFound, func() error {
			_, err := d.RT.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: "no-such"})
			return err
		}},
		{"ContainerStats of an unknown id", codes.NotFound, func() error {
			_, err := d.RT.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: "no-such"})
			return err
		}},
		{"PodSandboxStats of an unknown id", codes.NotFound, func() error {
			_, err := d.RT.PodSandboxStats(ctx, &runtimeapi.PodSandboxStatsRequest{PodSandboxId: "no-such"})
			return err
		}},
		{"UpdateContainerResources without resources", codes.InvalidArgument, func() error {
			_, err := d.RT.UpdateContainerResources(ctx, &runtimeapi.UpdateContainerResourcesRequest{ContainerId: c})
			return err
		}},
		{"RemoveImage without an image", codes.InvalidArgument, func() error {
			_, err := d.Img.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{})
			return err
		}},
		{"ImageStatus without an image", codes.InvalidArgument, func() error {
			_, err := d.Img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{})
			return err
		}},
	}
	for _, tc := range cases {
		err := tc.call()
		wantCode(t, err, tc.code, tc.name)
		if err != nil && len(err.Error()) < 20 {
			t.Errorf("%s: message too terse to act on: %q", tc.name, err)
		}
	}

	// Idempotent calls: unknown ids are success.
	if _, err := d.RT.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: "no-such"}); err != nil {
		t.Errorf("StopPodSandbox of an unknown id: %v", err)
	}
	if _, err := d.RT.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: "no-such"}); err != nil {
		t.Errorf("RemovePodSandbox of an unknown id: %v", err)
	}
	if _, err := d.RT.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: "no-such"}); err != nil {
		t.Errorf("RemoveContainer of an unknown id: %v", err)
	}

	// Garbage on the socket: the connection is dropped, the daemon lives.
	for _, junk := range [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n"), bytes.Repeat([]byte{0xff}, 1<<16), {}} {
		conn, err := net.Dial("unix", d.Socket)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write(junk)
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, _ = conn.Read(make([]byte, 4096))
		conn.Close()
	}

	// Still serving, the good pod untouched, and no panic recovered.
	vctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := d.RT.Version(vctx, &runtimeapi.VersionRequest{}); err != nil {
		t.Fatalf("daemon stopped answering: %v", err)
	}
	if st := d.status(t, c); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("good container %v", st.State)
	}
	if log := string(readFile(d.LogFile)); strings.Contains(log, "panic") {
		t.Errorf("the daemon recovered from a panic:\n%s", grepLines(log, "panic"))
	}
}

// usernsContext is a pod security context with a user namespace mapping
// container ids 0..length-1 onto host ids from host.
func usernsContext(host, length uint32, hostNetwork bool) *runtimeapi.LinuxSandboxSecurityContext {
	m := []*runtimeapi.IDMapping{{HostId: host, ContainerId: 0, Length: length}}
	ns := &runtimeapi.NamespaceOption{UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD, Uids: m, Gids: m}}
	if hostNetwork {
		ns.Network = runtimeapi.NamespaceMode_NODE
	}
	return &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: ns}
}

// TestMissingHostPathIsMade: a mount whose host path is missing gets a new
// directory there, as containerd and CRI-O do: the kubelet passes hostPath
// volumes without a type unchecked (kube-proxy's /lib/modules).
func TestMissingHostPathIsMade(t *testing.T) {
	d := startDaemon(t)
	podCfg := d.podConfig("hostpath")
	pod := d.runPod(t, podCfg)
	missing := filepath.Join(t.TempDir(), "not", "there")
	cfg := containerConfig("c", "", "sh", "-c", "echo written > /data/f; sleep 3600")
	cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/data", HostPath: missing}}
	c := d.run(t, pod, podCfg, cfg)
	d.mustExec(t, c, "sh", "-c", "for i in $(seq 100); do test -f /data/f && exit 0; sleep 0.1; done; exit 1")
	if data, err := os.ReadFile(filepath.Join(missing, "f")); err != nil || string(data) != "written\n" {
		t.Errorf("the container's write in the made host path: %q %v", data, err)
	}
}
