package cri

import (
	"bytes"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/moby/sys/capability"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
)

// Requests are checked before anything is created, so that a bad one is
// an InvalidArgument with the field named, never a half-made pod.

const maxNameLen = 253

// checkText refuses what would break the files and names berth writes:
// control characters (a newline in a DNS search domain would add lines
// to resolv.conf) and overlong values.
func checkText(field, v string, max int) error {
	if len(v) > max {
		return invalidf("%s is %d bytes long; at most %d", field, len(v), max)
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f {
			return invalidf("%s %q contains a control character", field, v)
		}
	}
	return nil
}

func validatePodConfig(cfg *runtimeapi.PodSandboxConfig, driver cgroups.Driver) error {
	if cfg == nil {
		return invalidf("config is required")
	}
	md := cfg.GetMetadata()
	if md == nil || md.Name == "" {
		return invalidf("metadata.name is required")
	}
	for field, v := range map[string]string{"metadata.name": md.Name, "metadata.namespace": md.Namespace, "metadata.uid": md.Uid} {
		if err := checkText(field, v, maxNameLen); err != nil {
			return err
		}
		if strings.ContainsAny(v, "_/") {
			// Sandbox names join these with "_"; ids name directories.
			return invalidf("%s %q must not contain '_' or '/'", field, v)
		}
	}
	if err := checkText("hostname", cfg.Hostname, 64); err != nil {
		return err
	}
	if strings.ContainsAny(cfg.Hostname, "/ ") {
		return invalidf("hostname %q is not a valid host name", cfg.Hostname)
	}
	if d := cfg.LogDirectory; d != "" && !filepath.IsAbs(d) {
		return invalidf("log_directory %q must be an absolute path", d)
	}
	if err := validateDNS(cfg.GetDnsConfig()); err != nil {
		return err
	}
	for i, pm := range cfg.PortMappings {
		if pm.ContainerPort < 0 || pm.ContainerPort > 65535 || pm.HostPort < 0 || pm.HostPort > 65535 {
			return invalidf("port_mappings[%d]: ports must be within 0-65535 (container %d, host %d)", i, pm.ContainerPort, pm.HostPort)
		}
		if pm.HostIp != "" && net.ParseIP(pm.HostIp) == nil {
			return invalidf("port_mappings[%d]: host_ip %q is not an IP address", i, pm.HostIp)
		}
		if _, ok := runtimeapi.Protocol_name[int32(pm.Protocol)]; !ok {
			return invalidf("port_mappings[%d]: unknown protocol %d", i, pm.Protocol)
		}
	}
	lx := cfg.GetLinux()
	if err := validateCgroupParent(lx.GetCgroupParent(), driver); err != nil {
		return err
	}
	sc := lx.GetSecurityContext()
	ns := sc.GetNamespaceOptions()
	if err := validateNamespaceOptions("linux.security_context.namespace_options", ns, false); err != nil {
		return err
	}
	if err := validateSysctls(lx.GetSysctls(), ns); err != nil {
		return err
	}
	if err := validateProfile("linux.security_context.seccomp", sc.GetSeccomp(), sc.GetSeccompProfilePath()); err != nil {
		return err
	}
	if sc.GetRunAsGroup() != nil && sc.GetRunAsUser() == nil {
		return invalidf("linux.security_context.run_as_group needs run_as_user")
	}
	if err := validateResources("linux.overhead", lx.GetOverhead()); err != nil {
		return err
	}
	return validateResources("linux.resources", lx.GetResources())
}

func validateDNS(d *runtimeapi.DNSConfig) error {
	for _, s := range d.GetServers() {
		if net.ParseIP(s) == nil {
			return invalidf("dns_config.servers: %q is not an IP address", s)
		}
	}
	for _, s := range d.GetSearches() {
		if err := checkText("dns_config.searches", s, maxNameLen); err != nil {
			return err
		}
		if s == "" || strings.ContainsAny(s, " \t") {
			return invalidf("dns_config.searches: %q is not a domain", s)
		}
	}
	for _, o := range d.GetOptions() {
		if err := checkText("dns_config.options", o, maxNameLen); err != nil {
			return err
		}
		if o == "" || strings.ContainsAny(o, " \t") {
			return invalidf("dns_config.options: %q is not a resolver option", o)
		}
	}
	return nil
}

// validateCgroupParent checks the form of a pod's cgroup parent for the
// driver (cgroups.Driver.PodParent).
func validateCgroupParent(p string, driver cgroups.Driver) error {
	if p == "" {
		return nil
	}
	if err := checkText("linux.cgroup_parent", p, 4096); err != nil {
		return err
	}
	if _, err := driver.PodParent(p); err != nil {
		return invalidf("linux.cgroup_parent: %v", err)
	}
	return nil
}

// validateNamespaceOptions checks the modes; TARGET is for containers only.
func validateNamespaceOptions(field string, ns *runtimeapi.NamespaceOption, container bool) error {
	for name, m := range map[string]runtimeapi.NamespaceMode{"network": ns.GetNetwork(), "pid": ns.GetPid(), "ipc": ns.GetIpc()} {
		if _, ok := runtimeapi.NamespaceMode_name[int32(m)]; !ok {
			return invalidf("%s.%s: unknown mode %d", field, name, m)
		}
		if m == runtimeapi.NamespaceMode_TARGET && (name != "pid" || !container) {
			return invalidf("%s.%s: mode TARGET is only for a container's pid namespace", field, name)
		}
	}
	if ns.GetPid() == runtimeapi.NamespaceMode_TARGET && ns.GetTargetId() == "" {
		return invalidf("%s.pid: mode TARGET needs target_id", field)
	}
	return validateUserns(field+".userns_options", ns)
}

// validateUserns checks a pod's user namespace: NODE, or POD with one uid
// and one gid mapping (as the kubelet sends) of container ids 0..65535
// at least, onto host ids other than root's, in namespaces of the pod's
// own (a user namespace cannot own the host's network or pid namespace).
func validateUserns(field string, ns *runtimeapi.NamespaceOption) error {
	u := ns.GetUsernsOptions()
	if u == nil {
		// None given is the host's (POD is the enum's zero value).
		return nil
	}
	switch u.GetMode() {
	case runtimeapi.NamespaceMode_NODE:
		if len(u.GetUids()) > 0 || len(u.GetGids()) > 0 {
			return invalidf("%s: mode NODE takes no id mappings", field)
		}
		return nil
	case runtimeapi.NamespaceMode_POD:
	default:
		return invalidf("%s: mode %s: a user namespace is per pod (POD) or the host's (NODE)", field, u.GetMode())
	}
	for name, ms := range map[string][]*runtimeapi.IDMapping{"uids": u.GetUids(), "gids": u.GetGids()} {
		if len(ms) != 1 {
			return invalidf("%s.%s: want one mapping, got %d", field, name, len(ms))
		}
		m := ms[0]
		switch {
		case m.ContainerId != 0 || m.Length < 65536:
			return invalidf("%s.%s: the mapping must cover container ids 0-65535, got %d-%d", field, name, m.ContainerId, uint64(m.ContainerId)+uint64(m.Length)-1)
		case m.HostId == 0:
			return invalidf("%s.%s: mapping the container's root onto the host's defeats the user namespace", field, name)
		case uint64(m.HostId)+uint64(m.Length) > 1<<32-1:
			return invalidf("%s.%s: host ids %d+%d run past the last id", field, name, m.HostId, m.Length)
		}
	}
	for name, m := range map[string]runtimeapi.NamespaceMode{"network": ns.GetNetwork(), "pid": ns.GetPid(), "ipc": ns.GetIpc()} {
		if m == runtimeapi.NamespaceMode_NODE {
			return invalidf("%s: a pod in a user namespace cannot use the host's %s namespace", field, name)
		}
	}
	return nil
}

var sysctlName = regexp.MustCompile(`^[a-z0-9_]+([./][a-z0-9_\-]+)+$`)

// validateSysctls allows only the namespaced sysctls of namespaces the pod
// has of its own: anything else would change the host.
func validateSysctls(sysctls map[string]string, ns *runtimeapi.NamespaceOption) error {
	for k, v := range sysctls {
		if !sysctlName.MatchString(k) {
			return invalidf("sysctl %q is not a sysctl name", k)
		}
		if err := checkText("sysctl "+k, v, 4096); err != nil {
			return err
		}
		name := strings.ReplaceAll(k, "/", ".")
		switch {
		case strings.HasPrefix(name, "net."):
			if ns.GetNetwork() == runtimeapi.NamespaceMode_NODE {
				return invalidf("sysctl %s: the pod shares the host's network namespace", k)
			}
		case name == "kernel.shmmax", name == "kernel.shmall", name == "kernel.shmmni", name == "kernel.shm_rmid_forced",
			name == "kernel.msgmax", name == "kernel.msgmnb", name == "kernel.msgmni", name == "kernel.sem",
			strings.HasPrefix(name, "fs.mqueue."):
			if ns.GetIpc() == runtimeapi.NamespaceMode_NODE {
				return invalidf("sysctl %s: the pod shares the host's IPC namespace", k)
			}
		default:
			return invalidf("sysctl %s is not namespaced: it would change the host", k)
		}
	}
	return nil
}

// validateProfile checks a seccomp profile choice.
func validateProfile(field string, p *runtimeapi.SecurityProfile, deprecatedPath string) error {
	if p != nil {
		switch p.ProfileType {
		case runtimeapi.SecurityProfile_RuntimeDefault, runtimeapi.SecurityProfile_Unconfined:
		case runtimeapi.SecurityProfile_Localhost:
			if !filepath.IsAbs(p.LocalhostRef) {
				return invalidf("%s: Localhost profile needs an absolute localhost_ref, got %q", field, p.LocalhostRef)
			}
		default:
			return invalidf("%s: unknown profile type %d", field, p.ProfileType)
		}
		return nil
	}
	switch {
	case deprecatedPath == "", deprecatedPath == "unconfined", deprecatedPath == "runtime/default", deprecatedPath == "docker/default":
	case strings.HasPrefix(deprecatedPath, "localhost/"):
		if !filepath.IsAbs(strings.TrimPrefix(deprecatedPath, "localhost")) {
			return invalidf("%s_profile_path %q: want localhost/<absolute path>", field, deprecatedPath)
		}
	default:
		return invalidf("%s_profile_path %q: want runtime/default, unconfined or localhost/<path>", field, deprecatedPath)
	}
	return nil
}

// validateAppArmor checks the form of an AppArmor choice; whether the
// node has the profile is apparmorProfile's question.
func validateAppArmor(p *runtimeapi.SecurityProfile, deprecated string) error {
	const field = "linux.security_context.apparmor"
	if p == nil {
		switch {
		case deprecated == "", deprecated == "unconfined", deprecated == "runtime/default":
		case strings.HasPrefix(deprecated, "localhost/") && len(deprecated) > len("localhost/"):
		default:
			return invalidf("%s_profile %q: want runtime/default, unconfined or localhost/<profile>", field, deprecated)
		}
		return nil
	}
	switch p.ProfileType {
	case runtimeapi.SecurityProfile_RuntimeDefault, runtimeapi.SecurityProfile_Unconfined:
		if p.LocalhostRef != "" {
			return invalidf("%s: localhost_ref is for Localhost profiles only", field)
		}
	case runtimeapi.SecurityProfile_Localhost:
		if strings.TrimPrefix(p.LocalhostRef, "localhost/") == "" {
			return invalidf("%s: a Localhost profile needs localhost_ref, the name of a loaded profile", field)
		}
	default:
		return invalidf("%s: unknown profile type %d", field, p.ProfileType)
	}
	return nil
}

var (
	hugepageSize = regexp.MustCompile(`^[0-9]+(KB|MB|GB|TB|kB)$`)
	unifiedKey   = regexp.MustCompile(`^[a-z0-9_]+\.[a-z0-9_.]+$`)
)

func validateResources(field string, r *runtimeapi.LinuxContainerResources) error {
	if r == nil {
		return nil
	}
	switch {
	case r.CpuPeriod < 0, r.CpuShares < 0, r.MemoryLimitInBytes < 0:
		return invalidf("%s: cpu_period, cpu_shares and memory_limit_in_bytes must not be negative", field)
	case r.CpuQuota < -1:
		return invalidf("%s: cpu_quota %d: want -1 (no limit) or a positive number", field, r.CpuQuota)
	case r.OomScoreAdj < -1000 || r.OomScoreAdj > 1000:
		return invalidf("%s: oom_score_adj %d is outside -1000..1000", field, r.OomScoreAdj)
	case r.CpuPeriod != 0 && (r.CpuPeriod < 1000 || r.CpuPeriod > 1000000):
		return invalidf("%s: cpu_period %d is outside 1000..1000000 microseconds", field, r.CpuPeriod)
	case r.MemorySwapLimitInBytes < -1:
		return invalidf("%s: memory_swap_limit_in_bytes %d: want -1 (unlimited) or a size", field, r.MemorySwapLimitInBytes)
	}
	for _, h := range r.HugepageLimits {
		if !hugepageSize.MatchString(h.PageSize) {
			return invalidf("%s: hugepage page_size %q: want a size such as 2MB or 1GB", field, h.PageSize)
		}
	}
	if len(r.Unified) > 0 && cgroups.HostMode() != cgroups.Unified {
		return invalidf("%s: unified cgroup settings need cgroup v2; this host runs cgroup v1", field)
	}
	for k := range r.Unified {
		if !unifiedKey.MatchString(k) {
			return invalidf("%s: unified key %q is not a cgroup v2 file name", field, k)
		}
	}
	return nil
}

// capabilityName normalizes a CRI capability name (with or without the
// CAP_ prefix) to CAP_X form, and refuses names the kernel does not know;
// ALL stays ALL.
func capabilityName(name string) (string, error) {
	n := strings.ToUpper(strings.TrimSpace(name))
	if n == "ALL" {
		return n, nil
	}
	n = strings.TrimPrefix(n, "CAP_")
	for _, c := range capability.ListKnown() {
		if strings.ToUpper(c.String()) == n {
			return "CAP_" + n, nil
		}
	}
	return "", invalidf("unknown capability %q", name)
}

func validateContainerConfig(cfg *runtimeapi.ContainerConfig, sandboxCfg *runtimeapi.PodSandboxConfig) error {
	if cfg == nil {
		return invalidf("config is required")
	}
	for _, check := range []func(*runtimeapi.ContainerConfig, *runtimeapi.PodSandboxConfig) error{
		validateContainerIdentity, validateContainerProcess, validateContainerDevices,
		func(cfg *runtimeapi.ContainerConfig, _ *runtimeapi.PodSandboxConfig) error {
			return validateResources("linux.resources", cfg.GetLinux().GetResources())
		},
		validateContainerSecurity,
	} {
		if err := check(cfg, sandboxCfg); err != nil {
			return err
		}
	}
	return nil
}

// validateContainerIdentity checks the container's name, image and log
// path.
func validateContainerIdentity(cfg *runtimeapi.ContainerConfig, _ *runtimeapi.PodSandboxConfig) error {
	md := cfg.GetMetadata()
	if md == nil || md.Name == "" {
		return invalidf("metadata.name is required")
	}
	if err := checkText("metadata.name", md.Name, maxNameLen); err != nil {
		return err
	}
	if strings.ContainsAny(md.Name, "_/") {
		return invalidf("metadata.name %q must not contain '_' or '/'", md.Name)
	}
	if cfg.GetImage().GetImage() == "" {
		return invalidf("image.image is required")
	}
	if lp := cfg.LogPath; lp != "" {
		if filepath.IsAbs(lp) || strings.HasPrefix(filepath.Clean(lp), "..") {
			return invalidf("log_path %q must be relative to the pod's log_directory, without '..'", lp)
		}
	}
	return nil
}

// validateContainerProcess checks the process: environment, command and
// working directory.
func validateContainerProcess(cfg *runtimeapi.ContainerConfig, _ *runtimeapi.PodSandboxConfig) error {
	for i, kv := range cfg.Envs {
		if kv.Key == "" || strings.ContainsAny(kv.Key, "=\x00") {
			return invalidf("envs[%d]: key %q must be non-empty, without '='", i, kv.Key)
		}
		if bytes.IndexByte(kv.Value, 0) >= 0 {
			return invalidf("envs[%d] (%s): value contains a NUL byte", i, kv.Key)
		}
	}
	for i, a := range append(append([]string{}, cfg.Command...), cfg.Args...) {
		if strings.ContainsRune(a, 0) {
			return invalidf("command/args[%d] contains a NUL byte", i)
		}
	}
	if wd := cfg.WorkingDir; wd != "" && !filepath.IsAbs(wd) {
		return invalidf("working_dir %q must be an absolute path", wd)
	}
	return nil
}

// validateContainerDevices checks what the container gets from the host:
// mounts and devices.
func validateContainerDevices(cfg *runtimeapi.ContainerConfig, sandboxCfg *runtimeapi.PodSandboxConfig) error {
	podUserns := sandboxCfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetUsernsOptions()
	for i, m := range cfg.Mounts {
		if err := validateMount(fmt.Sprintf("mounts[%d]", i), m, podUserns != nil && podUserns.Mode == runtimeapi.NamespaceMode_POD); err != nil {
			return err
		}
	}
	for i, d := range cfg.Devices {
		if !filepath.IsAbs(d.HostPath) || !filepath.IsAbs(d.ContainerPath) {
			return invalidf("devices[%d]: host_path %q and container_path %q must be absolute", i, d.HostPath, d.ContainerPath)
		}
		if strings.Trim(d.Permissions, "rwm") != "" {
			return invalidf("devices[%d]: permissions %q: want a combination of r, w and m", i, d.Permissions)
		}
	}
	if _, err := cdiDeviceNames(cfg); err != nil {
		return err
	}
	if _, ok := runtimeapi.Signal_name[int32(cfg.StopSignal)]; !ok {
		return invalidf("stop_signal: unknown signal %d", cfg.StopSignal)
	}
	return nil
}

// validateContainerSecurity checks the security context against itself
// and against the pod's.
func validateContainerSecurity(cfg *runtimeapi.ContainerConfig, sandboxCfg *runtimeapi.PodSandboxConfig) error {
	sc := cfg.GetLinux().GetSecurityContext()
	podUserns := sandboxCfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetUsernsOptions()
	if sc.GetRunAsUser() != nil && sc.GetRunAsUsername() != "" {
		return invalidf("linux.security_context: run_as_user and run_as_username are exclusive")
	}
	if sc.GetRunAsGroup() != nil && sc.GetRunAsUser() == nil && sc.GetRunAsUsername() == "" {
		return invalidf("linux.security_context.run_as_group needs run_as_user or run_as_username")
	}
	if u := sc.GetRunAsUser(); u != nil && (u.Value < 0 || u.Value > 1<<32-2) {
		return invalidf("linux.security_context.run_as_user %d is not a uid", u.Value)
	}
	if g := sc.GetRunAsGroup(); g != nil && (g.Value < 0 || g.Value > 1<<32-2) {
		return invalidf("linux.security_context.run_as_group %d is not a gid", g.Value)
	}
	for _, g := range sc.GetSupplementalGroups() {
		if g < 0 || g > 1<<32-2 {
			return invalidf("linux.security_context.supplemental_groups: %d is not a gid", g)
		}
	}
	if err := checkText("linux.security_context.run_as_username", sc.GetRunAsUsername(), 256); err != nil {
		return err
	}
	for _, list := range [][]string{sc.GetCapabilities().GetAddCapabilities(), sc.GetCapabilities().GetDropCapabilities(), sc.GetCapabilities().GetAddAmbientCapabilities()} {
		for _, c := range list {
			if _, err := capabilityName(c); err != nil {
				return fmt.Errorf("linux.security_context.capabilities: %w", err)
			}
		}
	}
	if sc.GetPrivileged() && !sandboxCfg.GetLinux().GetSecurityContext().GetPrivileged() {
		return invalidf("linux.security_context.privileged: the pod sandbox is not privileged, so its containers may not be")
	}
	for _, p := range append(append([]string{}, sc.GetMaskedPaths()...), sc.GetReadonlyPaths()...) {
		if !filepath.IsAbs(p) {
			return invalidf("linux.security_context: masked and read-only paths must be absolute, got %q", p)
		}
	}
	if err := validateProfile("linux.security_context.seccomp", sc.GetSeccomp(), sc.GetSeccompProfilePath()); err != nil {
		return err
	}
	if err := validateAppArmor(sc.GetApparmor(), sc.GetApparmorProfile()); err != nil {
		return err
	}
	if err := validateNamespaceOptions("linux.security_context.namespace_options", sc.GetNamespaceOptions(), true); err != nil {
		return err
	}
	// A container is in its pod's user namespace: the kubelet repeats it.
	hostUserns := func(u *runtimeapi.UserNamespace) bool { return u == nil || u.Mode == runtimeapi.NamespaceMode_NODE }
	if u := sc.GetNamespaceOptions().GetUsernsOptions(); u != nil && !proto.Equal(u, podUserns) && !(hostUserns(u) && hostUserns(podUserns)) {
		return invalidf("linux.security_context.namespace_options.userns_options: differ from the pod's; a container is in its pod's user namespace")
	}
	return nil
}

func validateMount(field string, m *runtimeapi.Mount, podUserns bool) error {
	if m.GetImage().GetImage() != "" {
		// An image volume: the image's files, read-only, as the kubelet
		// asks for them (containerd checks the same).
		if m.HostPath != "" {
			return invalidf("%s: an image volume has no host_path (got %q)", field, m.HostPath)
		}
		if !m.Readonly {
			return invalidf("%s: an image volume is read-only: readonly must be set", field)
		}
		if !filepath.IsAbs(m.ContainerPath) {
			return invalidf("%s: container_path %q must be absolute", field, m.ContainerPath)
		}
		if len(m.UidMappings) > 0 || len(m.GidMappings) > 0 {
			return invalidf("%s: id-mapped image volumes are not supported", field)
		}
		return nil
	}
	if m.ImageSubPath != "" {
		return invalidf("%s: image_sub_path is for image volumes", field)
	}
	if len(m.UidMappings) > 0 || len(m.GidMappings) > 0 {
		if !podUserns {
			return invalidf("%s: id-mapped mounts are for pods in a user namespace", field)
		}
		if len(m.UidMappings) != 1 || len(m.GidMappings) != 1 {
			return invalidf("%s: an id-mapped mount wants one uid and one gid mapping", field)
		}
	}
	if !filepath.IsAbs(m.ContainerPath) {
		return invalidf("%s: container_path %q must be absolute", field, m.ContainerPath)
	}
	if !filepath.IsAbs(m.HostPath) {
		return invalidf("%s: host_path %q must be absolute", field, m.HostPath)
	}
	if _, ok := runtimeapi.MountPropagation_name[int32(m.Propagation)]; !ok {
		return invalidf("%s: unknown propagation %d", field, m.Propagation)
	}
	if m.RecursiveReadOnly {
		if !m.Readonly {
			return invalidf("%s: recursive_read_only needs readonly (host_path %s)", field, m.HostPath)
		}
		if m.Propagation != runtimeapi.MountPropagation_PROPAGATION_PRIVATE {
			return invalidf("%s: recursive_read_only needs private propagation, got %s (host_path %s)", field, m.Propagation, m.HostPath)
		}
	}
	for _, o := range m.MountOptions {
		if !allowedMountOptions[o] {
			return invalidf("%s: mount option %q is not allowed (allowed: %s)", field, o, strings.Join(sortedKeys(allowedMountOptions), ", "))
		}
	}
	return nil
}

// allowedMountOptions are the bind-mount flags a CRI mount may add.
var allowedMountOptions = map[string]bool{
	"nosuid": true, "nodev": true, "noexec": true, "noatime": true, "nodiratime": true,
	"relatime": true, "strictatime": true, "suid": true, "dev": true, "exec": true,
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
