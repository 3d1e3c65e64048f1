package cri

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/runtime"
)

// pauseUID is the user the pause process runs as: nobody, as the
// Kubernetes pause image's.
const pauseUID = 65535

// sandboxOOMScoreAdj keeps the pause process last in line for the OOM
// killer, as the kubelet asks of infrastructure containers.
const sandboxOOMScoreAdj = -998

// pauseSpec is the spec of a pod's pause process: the built-in pause
// binary bind-mounted read-only into an empty root, no capabilities,
// holding the pod's namespaces.
func (s *Server) pauseSpec(sb *sandbox, cfg *runtimeapi.PodSandboxConfig) (*specs.Spec, error) {
	nsOpts := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions()
	oom := sandboxOOMScoreAdj
	spec := &specs.Spec{
		Version:  runtime.SpecVersion,
		Root:     &specs.Root{Path: filepath.Join(s.cfg.podDir(sb.ID), "pause", "rootfs"), Readonly: true},
		Hostname: cfg.Hostname,
		Process: &specs.Process{
			Args:            []string{"/pause"},
			Cwd:             "/",
			Env:             []string{runtime.DefaultPath},
			User:            specs.User{UID: pauseUID, GID: pauseUID},
			Capabilities:    &specs.LinuxCapabilities{},
			NoNewPrivileges: true,
			OOMScoreAdj:     &oom,
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/pause", Type: "bind", Source: s.cfg.PausePath, Options: []string{"rbind", "ro", "nosuid", "nodev"}},
		},
		Linux: &specs.Linux{
			CgroupsPath:   s.cgroupsPath(sb.CgroupParent, sb.ID),
			Sysctl:        cfg.GetLinux().GetSysctls(),
			MaskedPaths:   runtime.DefaultMaskedPaths(),
			ReadonlyPaths: runtime.DefaultReadonlyPaths(),
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
				// The pause process needs next to nothing.
				CPU: &specs.LinuxCPU{Shares: ptr(uint64(2))},
			},
			Namespaces: []specs.LinuxNamespace{{Type: specs.MountNamespace}},
		},
	}
	if nsOpts.GetNetwork() != runtimeapi.NamespaceMode_NODE {
		spec.Linux.Namespaces = append(spec.Linux.Namespaces,
			specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: sb.NetNS},
			specs.LinuxNamespace{Type: specs.UTSNamespace})
		// sysfs has one superblock per network namespace, and the first
		// mount decides whether it is read-only for every later one. The
		// pause process mounts it first, writable in a privileged pod, so
		// that privileged containers get a writable /sys whatever their
		// unprivileged siblings (read-only per mount) did before them.
		opt := "ro"
		if cfg.GetLinux().GetSecurityContext().GetPrivileged() {
			opt = "rw"
		}
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs",
			Options: []string{"nosuid", "noexec", "nodev", opt}})
	} else {
		spec.Hostname = ""
	}
	if nsOpts.GetIpc() != runtimeapi.NamespaceMode_NODE {
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.IPCNamespace})
	}
	if nsOpts.GetPid() != runtimeapi.NamespaceMode_NODE {
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.PIDNamespace})
	}
	if uids, gids := podUserns(cfg); uids != nil {
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace, Path: s.usernsFile(sb.ID)})
		spec.Linux.UIDMappings, spec.Linux.GIDMappings = uids, gids
	}
	sc := cfg.GetLinux().GetSecurityContext()
	profile, err := s.seccompProfile(spec, sc.GetSeccomp(), sc.GetSeccompProfilePath())
	if err != nil {
		return nil, err
	}
	spec.Linux.Seccomp = profile
	spec.Annotations = map[string]string{
		"io.kubernetes.cri.container-type": "sandbox",
		"io.kubernetes.cri.sandbox-id":     sb.ID,
		"io.kubernetes.cri.sandbox-name":   cfg.Metadata.GetName(),
		"io.kubernetes.cri.sandbox-uid":    cfg.Metadata.GetUid(),
	}
	return spec, nil
}

// writeSpec writes config.json into a bundle directory for the handler's
// runtime: its oom_score_adj one this node lets any OCI runtime set, its
// ociVersion the handler's.
func writeSpec(bundle string, spec *specs.Spec, h *handler, log *slog.Logger) error {
	runtime.RestrictOOMScoreAdj(spec, log)
	if h.ociVersion != "" {
		spec.Version = h.ociVersion
	}
	if err := os.MkdirAll(bundle, 0o711); err != nil {
		return err
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	tmp := filepath.Join(bundle, ".config.json")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(bundle, runtime.ConfigFile))
}

func ptr[T any](v T) *T { return &v }

// bandwidth reads the kubernetes.io/{ingress,egress}-bandwidth
// annotations ("10M") into bits per second.
func bandwidth(ann map[string]string) (ingress, egress int64) {
	return parseQuantity(ann["kubernetes.io/ingress-bandwidth"]), parseQuantity(ann["kubernetes.io/egress-bandwidth"])
}

// parseQuantity parses the Kubernetes quantities the bandwidth
// annotations use: a number with an optional k, M, G, T suffix (decimal)
// or Ki, Mi, Gi, Ti (binary).
func parseQuantity(q string) int64 {
	if q == "" {
		return 0
	}
	mult := int64(1)
	for _, s := range []struct {
		suffix string
		m      int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}, {"k", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}} {
		if len(q) > len(s.suffix) && q[len(q)-len(s.suffix):] == s.suffix {
			q, mult = q[:len(q)-len(s.suffix)], s.m
			break
		}
	}
	n, err := strconv.ParseInt(q, 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n * mult
}

// podHostname is the pod's host name, for its /etc/hostname and its
// containers' HOSTNAME: the one the kubelet asks for, or the node's when
// it asks for none or the pod shares the node's network.
func podHostname(cfg *runtimeapi.PodSandboxConfig) string {
	if cfg.GetHostname() != "" && cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork() != runtimeapi.NamespaceMode_NODE {
		return cfg.GetHostname()
	}
	h, _ := os.Hostname()
	return h
}
