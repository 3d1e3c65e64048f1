package cri_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/testutil"
	bruntime "github.com/berth-runtime/berth/runtime"
)

// Runtime handlers: berth.toml's [runtimes.NAME] are OCI runtimes (here
// Debian's runc and crun) that a pod names as its runtime_handler (a
// RuntimeClass's handler). A pod on one is the runtime's: its pause and
// containers are that runtime's containers under the handler's root,
// and what the kubelet does with them (exec, stats, updates, stop, a
// restart of berthd in between, removal) goes through that runtime.
func TestRuntimeHandlers(t *testing.T) {
	runtimes := map[string]string{}
	var extra strings.Builder
	for _, name := range []string{"runc", "crun"} {
		p, err := exec.LookPath(name)
		if err != nil {
			t.Logf("no %s on this node: its handler is not tested (hack/install-deps.sh installs it)", name)
			continue
		}
		if name == "crun" && cgroups.HostMode() == cgroups.Hybrid {
			if c, _ := os.ReadFile("/sys/fs/cgroup/unified/cgroup.controllers"); len(strings.TrimSpace(string(c))) > 0 {
				t.Logf("crun refuses a hybrid node whose v2 hierarchy has controllers (here: %s): its handler is tested in the VM tier (cgroup v2)", strings.TrimSpace(string(c)))
				continue
			}
		}
		runtimes[name] = p
		fmt.Fprintf(&extra, "[runtimes.%s]\nruntime_path = %q\n", name, p)
		// A crun older than 1.9 (Debian 12's 1.8) has no `features` and
		// refuses a spec newer than 1.1.
		if name == "crun" && exec.Command(p, "features").Run() != nil {
			extra.WriteString("oci_version = \"1.1.0\"\n")
		}
	}
	if len(runtimes) == 0 {
		t.Skip("neither runc nor crun is installed: hack/install-deps.sh test installs both")
	}
	d := startDaemon(t, daemonOptions{extra: extra.String()})

	st, err := d.RT.Status(ctxT(t), &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	features := map[string]*runtimeapi.RuntimeHandlerFeatures{}
	for _, h := range st.RuntimeHandlers {
		listed = append(listed, h.Name)
		features[h.Name] = h.Features
	}
	for _, want := range append([]string{"", "berth"}, slices.Sorted(maps.Keys(runtimes))...) {
		if !slices.Contains(listed, want) {
			t.Errorf("Status lists handlers %q, without %q", listed, want)
		}
	}
	t.Logf("handlers: %s", st.Info["runtimeHandlers"])

	_, err = d.RT.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{Config: d.podConfig("nohandler"), RuntimeHandler: "kata"})
	wantCode(t, err, codes.InvalidArgument, "RunPodSandbox with a handler berthd has not")

	for name, path := range runtimes {
		t.Run(name, func(t *testing.T) {
			root := filepath.Join(d.State, "runtimes", name)
			// What the runtime itself lists under the handler's root.
			list := func() map[string]string {
				t.Helper()
				out, err := exec.Command(path, "--root", root, "list", "--format", "json").Output()
				if err != nil {
					t.Fatalf("%s list: %v", name, err)
				}
				var states []struct{ ID, Status string }
				if err := json.Unmarshal(out, &states); err != nil {
					t.Fatalf("%s list: %v: %s", name, err, out)
				}
				m := map[string]string{}
				for _, s := range states {
					m[s.ID] = s.Status
				}
				return m
			}

			// A runtime without idmapped mounts (runc before 1.2) says so
			// in Status, and a pod in a user namespace is refused on it.
			if !features[name].GetUserNamespaces() {
				userns := d.podConfig("userns-" + name)
				ids := []*runtimeapi.IDMapping{{HostId: 1 << 20, ContainerId: 0, Length: 65536}}
				userns.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{
					UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD, Uids: ids, Gids: ids},
				}}
				_, err := d.RT.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{Config: userns, RuntimeHandler: name})
				wantCode(t, err, codes.InvalidArgument, "a pod in a user namespace on a handler without them")
			}

			podCfg := d.podConfig("handler-" + name)
			resp, err := d.RT.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{Config: podCfg, RuntimeHandler: name})
			if err != nil {
				t.Fatalf("RunPodSandbox on %s: %v", name, err)
			}
			pod := resp.PodSandboxId
			ps, err := d.RT.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
			if err != nil || ps.Status.RuntimeHandler != name {
				t.Fatalf("PodSandboxStatus: %v, handler %q", err, ps.GetStatus().GetRuntimeHandler())
			}
			ctr := d.run(t, pod, podCfg, containerConfig("app", "", "sh", "-c", "echo started; exec sleep 600"))
			if got := list(); got[pod] != "running" || got[ctr] != "running" {
				t.Fatalf("%s lists %v: want the pause %s and the container %s running", name, got, pod[:12], ctr[:12])
			}

			// In the pod's pid namespace (the CRI's default), whose init
			// is the pause process.
			if out := d.mustExec(t, ctr, "sh", "-c", "echo exec in $(cat /proc/1/comm)"); out != "exec in pause\n" {
				t.Errorf("exec: %q", out)
			}
			pid := d.ContainerPid(t, ctr)
			stats, err := d.RT.ContainerStats(ctxT(t), &runtimeapi.ContainerStatsRequest{ContainerId: ctr})
			if err != nil || stats.Stats.GetMemory().GetWorkingSetBytes().GetValue() == 0 || stats.Stats.GetCpu().GetUsageCoreNanoSeconds() == nil {
				t.Errorf("ContainerStats of a container of %s: %v %+v", name, err, stats.GetStats())
			}

			// An update reaches the container's cgroup.
			if _, err := d.RT.UpdateContainerResources(ctxT(t), &runtimeapi.UpdateContainerResourcesRequest{
				ContainerId: ctr, Linux: &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 50000, MemoryLimitInBytes: 64 << 20},
			}); err != nil {
				t.Fatalf("UpdateContainerResources: %v", err)
			}
			paths, err := cgroups.ProcessPaths(pid)
			if err != nil {
				t.Fatal(err)
			}
			limit := filepath.Join(paths["memory"], "memory.limit_in_bytes")
			if cgroups.HostMode() == cgroups.Unified {
				limit = filepath.Join(paths[""], "memory.max")
			}
			if data, err := os.ReadFile(limit); err != nil || strings.TrimSpace(string(data)) != fmt.Sprint(64<<20) {
				t.Errorf("%s after the update: %q %v", limit, data, err)
			}

			// A checkpoint goes through the handler's own `checkpoint`,
			// where its build has CRIU (runc's always; crun's says
			// +CRIU) and the kernel lets CRIU work.
			if bruntime.CheckCRIU() == nil {
				version, _ := exec.Command(path, "--version").Output()
				archive := filepath.Join(t.TempDir(), "checkpoint.tar")
				_, err := d.RT.CheckpointContainer(ctxT(t), &runtimeapi.CheckpointContainerRequest{ContainerId: ctr, Location: archive})
				switch {
				case name == "runc" || strings.Contains(string(version), "+CRIU"):
					if err != nil {
						t.Errorf("CheckpointContainer on %s: %v", name, err)
					} else if _, ok := readArchive(t, archive)["checkpoint/inventory.img"]; !ok {
						t.Errorf("the checkpoint archive of %s has no CRIU images", name)
					}
				case err == nil:
					t.Errorf("CheckpointContainer on %s, built without CRIU, succeeded", name)
				}
			}

			// berthd killed and started again: the pod is still the
			// handler's, and berthd still drives it.
			d.Restart(syscall.SIGKILL)
			if st := d.status(t, ctr); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
				t.Fatalf("after berthd's restart the container is %s", st.State)
			}
			if out := d.mustExec(t, ctr, "echo", "again"); out != "again\n" {
				t.Errorf("exec after the restart: %q", out)
			}

			if _, err := d.RT.StopContainer(ctxT(t), &runtimeapi.StopContainerRequest{ContainerId: ctr, Timeout: 2}); err != nil {
				t.Fatal(err)
			}
			if st := d.waitExited(t, ctr, testutil.Scaled(30*time.Second)); st.ExitCode != 137 && st.ExitCode != 143 {
				t.Errorf("stopped container exited %d (%s)", st.ExitCode, st.Reason)
			}
			if _, err := d.RT.RemoveContainer(ctxT(t), &runtimeapi.RemoveContainerRequest{ContainerId: ctr}); err != nil {
				t.Fatal(err)
			}
			if _, err := d.RT.StopPodSandbox(ctxT(t), &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
				t.Fatal(err)
			}
			if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
				t.Fatal(err)
			}
			if left := list(); len(left) != 0 {
				t.Errorf("%s still lists %v after the pod was removed", name, left)
			}
		})
	}
}
