package runtime

import (
	"fmt"
	"slices"

	mobyseccomp "github.com/moby/profiles/seccomp"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// defaultCapabilities is the capability set containerd, CRI-O and Docker
// give a container that asks for nothing special.
var defaultCapabilities = []string{
	"CAP_CHOWN",
	"CAP_DAC_OVERRIDE",
	"CAP_FSETID",
	"CAP_FOWNER",
	"CAP_MKNOD",
	"CAP_NET_RAW",
	"CAP_SETGID",
	"CAP_SETUID",
	"CAP_SETFCAP",
	"CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT",
	"CAP_KILL",
	"CAP_AUDIT_WRITE",
}

// defaultMaskedPaths are made unreadable inside a container: they leak
// host information or allow attacks on the host kernel.
var defaultMaskedPaths = []string{
	"/proc/acpi",
	"/proc/asound",
	"/proc/interrupts",
	"/proc/kcore",
	"/proc/keys",
	"/proc/latency_stats",
	"/proc/timer_list",
	"/proc/timer_stats",
	"/proc/sched_debug",
	"/proc/scsi",
	"/sys/firmware",
	"/sys/devices/virtual/powercap",
}

// defaultReadonlyPaths are mounted read-only inside a container.
var defaultReadonlyPaths = []string{
	"/proc/bus",
	"/proc/fs",
	"/proc/irq",
	"/proc/sys",
	"/proc/sysrq-trigger",
}

// DefaultCapabilities returns a copy of the capability set containerd,
// CRI-O and Docker give a container that asks for nothing special.
func DefaultCapabilities() []string { return slices.Clone(defaultCapabilities) }

// DefaultMaskedPaths returns a copy of the paths made unreadable inside a
// container.
func DefaultMaskedPaths() []string { return slices.Clone(defaultMaskedPaths) }

// DefaultReadonlyPaths returns a copy of the paths mounted read-only
// inside a container.
func DefaultReadonlyPaths() []string { return slices.Clone(defaultReadonlyPaths) }

// DefaultPath is the PATH of a container whose image sets none.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// DefaultMounts are the kernel filesystems every container gets.
func DefaultMounts() []specs.Mount {
	return []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
	}
}

// DefaultSpec returns the hardened spec `berth spec` writes: the default
// capability set, masked and read-only kernel paths, the Docker/containerd
// default seccomp profile, no_new_privs, and fresh pid, mount, ipc, uts
// and network namespaces. The process is an interactive `sh`, as runc's.
func DefaultSpec() (*specs.Spec, error) {
	caps := DefaultCapabilities()
	spec := &specs.Spec{
		Version:  specs.Version,
		Root:     &specs.Root{Path: "rootfs", Readonly: true},
		Hostname: "berth",
		Process: &specs.Process{
			Terminal: true,
			Args:     []string{"sh"},
			Env:      []string{DefaultPath, "TERM=xterm"},
			Cwd:      "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  caps,
				Permitted: slices.Clone(caps),
				Effective: slices.Clone(caps),
			},
			Rlimits: []specs.POSIXRlimit{
				{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024},
			},
			NoNewPrivileges: true,
		},
		Mounts: DefaultMounts(),
		Linux: &specs.Linux{
			MaskedPaths:   DefaultMaskedPaths(),
			ReadonlyPaths: DefaultReadonlyPaths(),
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.NetworkNamespace},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
			},
		},
	}
	profile, err := DefaultSeccomp(spec)
	if err != nil {
		return nil, err
	}
	spec.Linux.Seccomp = profile
	return spec, nil
}

// DefaultSeccomp returns the default seccomp profile of Docker and
// containerd for the spec: syscalls that need a capability are allowed
// only when the spec's bounding set holds it.
func DefaultSeccomp(spec *specs.Spec) (*specs.LinuxSeccomp, error) {
	p, err := mobyseccomp.GetDefaultProfile(spec)
	if err != nil {
		return nil, fmt.Errorf("default seccomp profile: %w", err)
	}
	return p, nil
}

// ExampleSpec is runc's `spec` example (no seccomp filter, runc's default
// capabilities), for comparisons with runc on the same spec.
func ExampleSpec() *specs.Spec { return specconv.Example() }
