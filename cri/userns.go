package cri

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Pods with hostUsers: false run in a user namespace of their own, with
// the id mappings the kubelet chose. berthd pins the namespace (and the
// pod's network namespace, which must belong to it for the pod to mount
// sysfs) before the pause process starts; the pause process and every
// container join it, and containers' root filesystems are the image's
// layers id-mapped through it, so that files owned by root in the image
// are root's inside and an unprivileged uid's on the host.

// podUserns returns a pod's id mappings, or nil ones when it uses the
// host's user namespace.
func podUserns(cfg *runtimeapi.PodSandboxConfig) (uids, gids []specs.LinuxIDMapping) {
	u := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetUsernsOptions()
	// Nil is the host's: POD is the enum's zero value.
	if u == nil || u.Mode != runtimeapi.NamespaceMode_POD {
		return nil, nil
	}
	return idMappings(u.Uids), idMappings(u.Gids)
}

// podUsesUserns: the pod has a user namespace of its own.
func podUsesUserns(cfg *runtimeapi.PodSandboxConfig) bool {
	uids, _ := podUserns(cfg)
	return uids != nil
}

// idMappings converts CRI id mappings; none is nil.
func idMappings(ms []*runtimeapi.IDMapping) []specs.LinuxIDMapping {
	if len(ms) == 0 {
		return nil
	}
	out := make([]specs.LinuxIDMapping, 0, len(ms))
	for _, m := range ms {
		out = append(out, specs.LinuxIDMapping{ContainerID: m.ContainerId, HostID: m.HostId, Size: m.Length})
	}
	return out
}

// usernsFile is where a pod's user namespace is pinned.
func (s *Server) usernsFile(podID string) string {
	return filepath.Join(s.cfg.podDir(podID), "userns")
}

// pinUserns creates the pod's user namespace with its mappings and a
// network namespace owned by it (a pod in a user namespace never has the
// host's network: validation refuses it); the user namespace is bound at
// usernsFile, and the network namespace's path in the helper process is
// given to adoptNet before the helper goes.
func (s *Server) pinUserns(podID string, uids, gids []specs.LinuxIDMapping, adoptNet func(nsPath string) error) error {
	conv := func(ms []specs.LinuxIDMapping) []syscall.SysProcIDMap {
		var out []syscall.SysProcIDMap
		for _, m := range ms {
			out = append(out, syscall.SysProcIDMap{ContainerID: int(m.ContainerID), HostID: int(m.HostID), Size: int(m.Size)})
		}
		return out
	}
	// The pause binary sleeps: a helper that only holds the namespaces
	// while they are bound. Containers call setgroups, so it stays allowed.
	helper := exec.Command(s.cfg.PausePath)
	helper.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWUSER | unix.CLONE_NEWNET, UidMappings: conv(uids), GidMappings: conv(gids),
		GidMappingsEnableSetgroups: true, Pdeathsig: syscall.SIGKILL,
	}
	if err := helper.Start(); err != nil {
		return fmt.Errorf("create the pod's user namespace: %w", err)
	}
	defer func() {
		_ = helper.Process.Kill()
		_ = helper.Wait()
	}()
	file := s.usernsFile(podID)
	f, err := os.OpenFile(file, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("pin the pod's user namespace: %w", err)
	}
	f.Close()
	if err := unix.Mount(fmt.Sprintf("/proc/%d/ns/user", helper.Process.Pid), file, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("pin the pod's user namespace at %s: %w", file, err)
	}
	return adoptNet(fmt.Sprintf("/proc/%d/ns/net", helper.Process.Pid))
}

// unpinUserns unbinds a pod's user namespace; one never pinned is fine.
func (s *Server) unpinUserns(podID string) error {
	err := unix.Unmount(s.usernsFile(podID), unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unpin the user namespace of pod %s: %w", podID, err)
	}
	return nil
}
