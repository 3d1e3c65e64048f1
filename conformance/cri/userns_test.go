package cri_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestUserNamespaces: a pod with hostUsers: false runs in a user
// namespace with the kubelet's mappings. Its root is root inside and an
// unprivileged uid on the host; the image's files, id-mapped, are root's
// inside; what the container writes belongs to its mapped uid on disk,
// and through an id-mapped volume to the host's owner; host files root
// alone may read stay unreadable.
func TestUserNamespaces(t *testing.T) {
	d, _, _ := bridgeDaemon(t, "bs", 220)
	// What a kubelet allocates: a multiple of 65536, 65536 long.
	host := uint32(65536 * (200 + os.Getpid()%100))
	userns := &runtimeapi.UserNamespace{
		Mode: runtimeapi.NamespaceMode_POD,
		Uids: []*runtimeapi.IDMapping{{HostId: host, ContainerId: 0, Length: 65536}},
		Gids: []*runtimeapi.IDMapping{{HostId: host, ContainerId: 0, Length: 65536}},
	}
	podCfg := d.podConfig("userns")
	podCfg.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{UsernsOptions: userns}}
	pod := d.runPod(t, podCfg)

	// Volumes: one id-mapped as the kubelet asks for, one not, holding a
	// file only the host's root may read.
	mapped, plain := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(plain, "secret"), []byte("host root only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := containerConfig("userns", "", "sleep", "3600")
	cfg.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{UsernsOptions: userns}
	cfg.Mounts = []*runtimeapi.Mount{
		{ContainerPath: "/mapped", HostPath: mapped, UidMappings: userns.Uids, GidMappings: userns.Gids},
		{ContainerPath: "/plain", HostPath: plain},
	}
	ctr := d.run(t, pod, podCfg, cfg)

	if out := d.mustExec(t, ctr, "cat", "/proc/self/uid_map"); strings.Join(strings.Fields(out), " ") != fmt.Sprintf("0 %d 65536", host) {
		t.Errorf("uid_map inside: %q", out)
	}
	if out := d.mustExec(t, ctr, "id", "-u"); out != "0\n" {
		t.Errorf("id -u inside: %q", out)
	}
	// On the host, the container's root is the mapped uid.
	resp, err := d.RT.ContainerStatus(ctxT(t), &runtimeapi.ContainerStatusRequest{ContainerId: ctr, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var info struct{ Pid int }
	if err := json.Unmarshal([]byte(resp.Info["info"]), &info); err != nil || info.Pid == 0 {
		t.Fatalf("verbose status: %v %q", err, resp.Info["info"])
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", info.Pid))
	if uids := parseStatus(string(status))["Uid"]; strings.Join(strings.Fields(uids), " ") != strings.TrimSpace(strings.Repeat(fmt.Sprintf("%d ", host), 4)) {
		t.Errorf("the container's root on the host: Uid %q, want %d", uids, host)
	}
	// The image's files are root's inside, through the id-mapped layers;
	// new files too, and on disk they are the mapped uid's.
	if out := d.mustExec(t, ctr, "stat", "-c", "%u:%g", "/bin/busybox", "/"); out != "0:0\n0:0\n" {
		t.Errorf("owners of the image's files inside: %q", out)
	}
	d.mustExec(t, ctr, "touch", "/created")
	upper := filepath.Join(d.Dir, "root", "containers", ctr, "upper", "created")
	if fi, err := os.Stat(upper); err != nil || fi.Sys().(*syscall.Stat_t).Uid != host {
		t.Errorf("a file the container made, on disk: %v %v", err, fi)
	}
	// The id-mapped volume: the host's root is the container's.
	if out := d.mustExec(t, ctr, "stat", "-c", "%u", "/mapped"); out != "0\n" {
		t.Errorf("owner of the id-mapped volume inside: %q", out)
	}
	d.mustExec(t, ctr, "touch", "/mapped/from-container")
	if fi, err := os.Stat(filepath.Join(mapped, "from-container")); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("a file written through the id-mapped volume, on the host: %v %v", err, fi)
	}
	// The plain volume: the container's root is nobody to the host.
	if _, errOut, code := d.execSync(t, ctr, "cat", "/plain/secret"); code == 0 || !strings.Contains(errOut, "Permission denied") {
		t.Errorf("the container's root read a file only the host's root may: %d %q", code, errOut)
	}
	// The pod's network namespace belongs to the user namespace, so that
	// its sysfs can be mounted; CNI wired it as any other.
	if out := d.mustExec(t, ctr, "cat", "/sys/class/net/lo/operstate", "/sys/class/net/eth0/operstate"); out != "unknown\nup\n" {
		t.Errorf("loopback and eth0 inside: %q", out)
	}
	st, err := d.RT.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
	if err != nil {
		t.Fatal(err)
	}
	if ip := st.Status.GetNetwork().GetIp(); ip == "" || !strings.Contains(d.mustExec(t, ctr, "ip", "-4", "addr", "show", "eth0"), ip+"/") {
		t.Errorf("the pod's IP %q is not on eth0", ip)
	}
	// procMount: Unmasked, which Kubernetes allows only with a user
	// namespace, arrives as empty lists: nothing is masked. The kubelet's
	// default lists are applied as sent.
	if m := d.procMounts(t, ctr); m.has("/proc/keys") || m.has("/proc/sys") {
		t.Errorf("an Unmasked container in a user namespace has masked or read-only /proc paths")
	}
	masked := containerConfig("userns-masked", "", "sleep", "3600")
	masked.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{UsernsOptions: userns}
	masked.Linux.SecurityContext.MaskedPaths = []string{"/proc/keys"}
	masked.Linux.SecurityContext.ReadonlyPaths = []string{"/proc/sys"}
	if m := d.procMounts(t, d.run(t, pod, podCfg, masked)); !m.has("/proc/keys") || !m.readOnly("/proc/sys") {
		t.Errorf("the kubelet's masked and read-only paths were not applied in a user namespace")
	}
	// A container in another user namespace than its pod's is refused.
	other := containerConfig("other", "", "true")
	other.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_NODE}}
	if _, err := d.RT.CreateContainer(ctxT(t), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: other, SandboxConfig: podCfg}); err == nil {
		t.Errorf("a container outside its pod's user namespace was created")
	}
	if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
}
