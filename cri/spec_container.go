package cri

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/moby/profiles/seccomp"
	"github.com/moby/sys/capability"
	"github.com/moby/sys/devices"
	"github.com/moby/sys/mountinfo"
	"github.com/moby/sys/user"
	imgspec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/runtime"
)

// specInput is what a container's spec is made of.
type specInput struct {
	id     string
	sb     *sandbox
	cfg    *runtimeapi.ContainerConfig
	image  *imgspec.ImageConfig
	rootfs string
	// nsPid is the process whose pid namespace a POD or TARGET container
	// joins; pausePid holds the pod's other namespaces.
	pausePid int
	nsPid    int
	// imageVolumes are the host paths of the image volumes, by their
	// index in the config's mounts.
	imageVolumes map[int]string
}

// resolvedUser is who the container's process runs as.
type resolvedUser struct {
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
}

// containerSpec builds a container's OCI spec from the image config, the
// CRI config and berth's defaults, joining the pause process's
// namespaces.
func (s *Server) containerSpec(in specInput) (*specs.Spec, *resolvedUser, error) {
	cfg := in.cfg
	proc, usr, err := containerProcess(in)
	if err != nil {
		return nil, nil, err
	}
	spec := &specs.Spec{
		Version: runtime.SpecVersion,
		Root:    &specs.Root{Path: in.rootfs, Readonly: cfg.GetLinux().GetSecurityContext().GetReadonlyRootfs()},
		Process: proc,
		Linux: &specs.Linux{
			CgroupsPath: s.cgroupsPath(in.sb.CgroupParent, in.id),
			Resources:   &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}},
		},
		Annotations: containerAnnotations(in),
	}
	if err := s.containerMounts(spec, in); err != nil {
		return nil, nil, err
	}
	if err := containerNamespaces(spec, in, in.sb.config.GetLinux().GetSecurityContext().GetNamespaceOptions()); err != nil {
		return nil, nil, err
	}
	if uids, gids := podUserns(in.sb.config); uids != nil {
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace, Path: s.usernsFile(in.sb.ID)})
		spec.Linux.UIDMappings, spec.Linux.GIDMappings = uids, gids
	}
	if err := s.containerSecurity(spec, in); err != nil {
		return nil, nil, err
	}
	if err := addDevices(spec, cfg.Devices); err != nil {
		return nil, nil, err
	}
	if err := s.injectCDIDevices(spec, cfg); err != nil {
		return nil, nil, err
	}
	if err := applyResources(spec, cfg.GetLinux().GetResources()); err != nil {
		return nil, nil, err
	}
	return spec, usr, nil
}

// containerProcess is the container's process: the command, environment,
// working directory and user, from the request over the image's config.
func containerProcess(in specInput) (*specs.Process, *resolvedUser, error) {
	cfg, sbCfg := in.cfg, in.sb.config
	args, err := processArgs(cfg, in.image)
	if err != nil {
		return nil, nil, err
	}
	env := []string{runtime.DefaultPath, "HOSTNAME=" + podHostname(sbCfg)}
	env = append(env, in.image.Env...)
	for _, kv := range cfg.Envs {
		env = append(env, kv.Key+"="+string(kv.Value))
	}
	cwd := "/"
	if cfg.WorkingDir != "" {
		cwd = cfg.WorkingDir
	} else if in.image.WorkingDir != "" {
		cwd = in.image.WorkingDir
	}
	usr, err := resolveUser(in.rootfs, cfg, sbCfg, in.image.User)
	if err != nil {
		return nil, nil, err
	}
	return &specs.Process{
		Terminal:        cfg.Tty,
		Args:            args,
		Env:             mergeEnv(env),
		Cwd:             cwd,
		User:            specs.User{UID: usr.UID, GID: usr.GID, AdditionalGids: usr.Groups},
		NoNewPrivileges: cfg.GetLinux().GetSecurityContext().GetNoNewPrivs(),
	}, usr, nil
}

// containerSecurity applies the security context: capabilities, masked
// and read-only paths, the AppArmor profile, and either the privileged
// set-up or a seccomp profile.
func (s *Server) containerSecurity(spec *specs.Spec, in specInput) error {
	sc := in.cfg.GetLinux().GetSecurityContext()
	caps, err := s.capabilities(sc)
	if err != nil {
		return err
	}
	spec.Process.Capabilities = caps
	spec.Linux.MaskedPaths, spec.Linux.ReadonlyPaths = maskedPaths(sc, podUsesUserns(in.sb.config))
	if spec.Process.ApparmorProfile, err = s.apparmorProfile(sc); err != nil {
		return err
	}
	if sc.GetPrivileged() {
		return makePrivileged(spec)
	}
	spec.Linux.Seccomp, err = s.seccompProfile(spec, sc.GetSeccomp(), sc.GetSeccompProfilePath())
	return err
}

// containerAnnotations are the request's annotations and the ones
// containerd sets, which tools made for containerd read.
func containerAnnotations(in specInput) map[string]string {
	cfg, sbCfg := in.cfg, in.sb.config
	ann := maps.Clone(cfg.Annotations)
	if ann == nil {
		ann = map[string]string{}
	}
	maps.Copy(ann, map[string]string{
		"io.kubernetes.cri.container-type":    "container",
		"io.kubernetes.cri.container-name":    cfg.Metadata.Name,
		"io.kubernetes.cri.sandbox-id":        in.sb.ID,
		"io.kubernetes.cri.sandbox-name":      sbCfg.Metadata.GetName(),
		"io.kubernetes.cri.sandbox-namespace": sbCfg.Metadata.GetNamespace(),
		"io.kubernetes.cri.sandbox-uid":       sbCfg.Metadata.GetUid(),
		"io.kubernetes.cri.image-name":        cfg.Image.GetImage(),
	})
	return ann
}

// processArgs merges command and args with the image's entrypoint and
// cmd as Kubernetes defines it: a command replaces the entrypoint and
// drops the image's cmd; args alone replace the cmd.
func processArgs(cfg *runtimeapi.ContainerConfig, img *imgspec.ImageConfig) ([]string, error) {
	command, args := cfg.Command, cfg.Args
	if len(command) == 0 {
		if len(args) == 0 {
			args = img.Cmd
		}
		command = img.Entrypoint
	}
	all := append(slices.Clone(command), args...)
	if len(all) == 0 {
		return nil, invalidf("no command: neither the container config nor the image gives one")
	}
	return all, nil
}

// mergeEnv keeps the last value of each variable at its first position.
func mergeEnv(env []string) []string {
	idx := map[string]int{}
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			continue
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	return out
}

// resolveUser finds the uid, gid and groups of the container's process
// in the image's /etc/passwd and /etc/group, opened inside the root
// filesystem so that no symlink in the image can point them elsewhere.
func resolveUser(rootfs string, cfg *runtimeapi.ContainerConfig, sbCfg *runtimeapi.PodSandboxConfig, imageUser string) (*resolvedUser, error) {
	sc := cfg.GetLinux().GetSecurityContext()
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return nil, fmt.Errorf("open root filesystem: %w", err)
	}
	defer root.Close()
	users, err := readPasswd(root)
	if err != nil {
		return nil, err
	}
	var (
		u         = &resolvedUser{}
		name      string
		groupSpec string
		found     *user.User
	)
	switch {
	case sc.GetRunAsUser() != nil:
		u.UID = uint32(sc.GetRunAsUser().Value)
	case sc.GetRunAsUsername() != "":
		name = sc.GetRunAsUsername()
	default:
		spec, grp, _ := strings.Cut(imageUser, ":")
		groupSpec = grp
		if n, err := strconv.ParseUint(spec, 10, 32); err == nil {
			u.UID = uint32(n)
		} else {
			name = spec
		}
	}
	if name != "" {
		for i := range users {
			if users[i].Name == name {
				found = &users[i]
				break
			}
		}
		if found == nil {
			return nil, invalidf("user %q is not in the image's /etc/passwd", name)
		}
		u.UID = uint32(found.Uid)
	} else {
		for i := range users {
			if uint32(users[i].Uid) == u.UID {
				found = &users[i]
				break
			}
		}
	}
	if found != nil {
		u.GID = uint32(found.Gid)
		name = found.Name
	}
	groups, err := readGroups(root)
	if err != nil {
		return nil, err
	}
	switch {
	case sc.GetRunAsGroup() != nil:
		u.GID = uint32(sc.GetRunAsGroup().Value)
	case groupSpec != "":
		if n, err := strconv.ParseUint(groupSpec, 10, 32); err == nil {
			u.GID = uint32(n)
		} else {
			i := slices.IndexFunc(groups, func(g user.Group) bool { return g.Name == groupSpec })
			if i < 0 {
				return nil, invalidf("group %q of the image's user is not in its /etc/group", groupSpec)
			}
			u.GID = uint32(groups[i].Gid)
		}
	}
	gids := []uint32{u.GID}
	policy := sc.GetSupplementalGroupsPolicy()
	if policy == runtimeapi.SupplementalGroupsPolicy_Merge && name != "" {
		for _, g := range groups {
			if g.Name != name && slices.Contains(g.List, name) {
				gids = append(gids, uint32(g.Gid))
			}
		}
	}
	for _, g := range sc.GetSupplementalGroups() {
		gids = append(gids, uint32(g))
	}
	slices.Sort(gids[1:])
	u.Groups = slices.Compact(gids)
	return u, nil
}

func readPasswd(root *os.Root) ([]user.User, error) {
	return readImageFile(root, "etc/passwd", user.ParsePasswd)
}

func readGroups(root *os.Root) ([]user.Group, error) {
	return readImageFile(root, "etc/group", user.ParseGroup)
}

// readImageFile parses one of the image's account files (16 MiB at most);
// a missing file is no entries.
func readImageFile[T any](root *os.Root, name string, parse func(io.Reader) ([]T, error)) ([]T, error) {
	f, err := root.Open(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("image /%s: %w", name, err)
	}
	defer f.Close()
	entries, err := parse(io.LimitReader(bufio.NewReader(f), 16<<20))
	if err != nil {
		return nil, fmt.Errorf("image /%s: %w", name, err)
	}
	return entries, nil
}

// Paths the pod provides to each container unless the CRI mounts them.
const (
	etcHostname = "/etc/hostname"
	etcHosts    = "/etc/hosts"
	etcResolv   = "/etc/resolv.conf"
	devShm      = "/dev/shm"
)

// containerMounts: kernel filesystems, the pod's files, then the CRI
// mounts, parents before children.
func (s *Server) containerMounts(spec *specs.Spec, in specInput) error {
	cfg := in.cfg
	sc := cfg.GetLinux().GetSecurityContext()
	requested := map[string]bool{}
	for _, m := range cfg.Mounts {
		requested[filepath.Clean(m.ContainerPath)] = true
	}
	var mounts []specs.Mount
	for _, m := range runtime.DefaultMounts() {
		dst := filepath.Clean(m.Destination)
		if requested[dst] || dst == devShm || (requested["/dev"] && strings.HasPrefix(dst, "/dev/")) {
			continue
		}
		mounts = append(mounts, m)
	}
	podDir := s.cfg.podDir(in.sb.ID)
	ro := sc.GetReadonlyRootfs()
	for _, f := range []struct{ dst, src string }{
		{etcHostname, filepath.Join(podDir, "hostname")},
		{etcHosts, filepath.Join(podDir, "hosts")},
		{etcResolv, filepath.Join(podDir, "resolv.conf")},
	} {
		if requested[f.dst] {
			continue
		}
		mounts = append(mounts, bindMount(f.src, f.dst, ro, "rprivate"))
	}
	if !requested[devShm] {
		src := filepath.Join(podDir, "shm")
		if in.sb.config.GetLinux().GetSecurityContext().GetNamespaceOptions().GetIpc() == runtimeapi.NamespaceMode_NODE {
			src = devShm
		}
		mounts = append(mounts, bindMount(src, devShm, false, "rprivate", "nosuid", "nodev", "noexec"))
	}
	var criMounts []specs.Mount
	for i, m := range cfg.Mounts {
		src, ok := in.imageVolumes[i]
		if !ok {
			var err error
			if src, err = hostPathSource(m.HostPath); err != nil {
				return fmt.Errorf("mounts[%d]: %w", i, err)
			}
		}
		var propagation string
		switch m.Propagation {
		case runtimeapi.MountPropagation_PROPAGATION_PRIVATE:
			propagation = "rprivate"
		case runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER:
			if err := checkPropagation(src, "master:", "shared:"); err != nil {
				return fmt.Errorf("mounts[%d]: host-to-container propagation: %w", i, err)
			}
			propagation = "rslave"
			if spec.Linux.RootfsPropagation != "rshared" {
				spec.Linux.RootfsPropagation = "rslave"
			}
		case runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL:
			if !sc.GetPrivileged() {
				return invalidf("mounts[%d]: bidirectional propagation needs a privileged container", i)
			}
			if err := checkPropagation(src, "shared:"); err != nil {
				return fmt.Errorf("mounts[%d]: bidirectional propagation: %w", i, err)
			}
			propagation = "rshared"
			spec.Linux.RootfsPropagation = "rshared"
		}
		bm := bindMount(src, m.ContainerPath, m.Readonly, propagation, m.MountOptions...)
		// Id-mapped as the kubelet asks for a pod in a user namespace:
		// files owned by root on the host are root's in the container.
		bm.UIDMappings, bm.GIDMappings = idMappings(m.UidMappings), idMappings(m.GidMappings)
		if m.RecursiveReadOnly {
			bm.Options = slices.DeleteFunc(bm.Options, func(o string) bool { return o == "ro" })
			bm.Options = append(bm.Options, "rro")
		}
		criMounts = append(criMounts, bm)
	}
	// Parents first, so that no mount hides a deeper one.
	sort.SliceStable(criMounts, func(i, j int) bool {
		return depth(criMounts[i].Destination) < depth(criMounts[j].Destination)
	})
	spec.Mounts = append(mounts, criMounts...)
	return nil
}

func depth(p string) int {
	return strings.Count(filepath.Clean(p), "/")
}

func bindMount(src, dst string, readonly bool, propagation string, extra ...string) specs.Mount {
	opts := []string{"rbind", propagation}
	if readonly {
		opts = append(opts, "ro")
	} else {
		opts = append(opts, "rw")
	}
	return specs.Mount{Source: src, Destination: dst, Type: "bind", Options: append(opts, extra...)}
}

// checkPropagation makes sure the mount holding path propagates as asked:
// its optional fields have one of the wanted tags.
func checkPropagation(path string, want ...string) error {
	infos, err := mountinfo.GetMounts(mountinfo.ParentsFilter(path))
	if err != nil {
		return err
	}
	if len(infos) == 0 {
		return fmt.Errorf("no mount holds %s", path)
	}
	sort.Slice(infos, func(i, j int) bool { return len(infos[i].Mountpoint) > len(infos[j].Mountpoint) })
	for _, opt := range strings.Fields(infos[0].Optional) {
		for _, w := range want {
			if strings.HasPrefix(opt, w) {
				return nil
			}
		}
	}
	return preconditionf("%s is on mount %s, which is not a shared mount (see mount --make-shared)", path, infos[0].Mountpoint)
}

// containerNamespaces joins the pause process's namespaces, per the
// container's namespace options.
func containerNamespaces(spec *specs.Spec, in specInput, podNS *runtimeapi.NamespaceOption) error {
	ns := in.cfg.GetLinux().GetSecurityContext().GetNamespaceOptions()
	proc := func(pid int, name string) string { return fmt.Sprintf("/proc/%d/ns/%s", pid, name) }
	list := []specs.LinuxNamespace{{Type: specs.MountNamespace}}
	if podNS.GetNetwork() != runtimeapi.NamespaceMode_NODE {
		list = append(list,
			specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: in.sb.NetNS},
			specs.LinuxNamespace{Type: specs.UTSNamespace, Path: proc(in.pausePid, "uts")})
	}
	if podNS.GetIpc() != runtimeapi.NamespaceMode_NODE {
		list = append(list, specs.LinuxNamespace{Type: specs.IPCNamespace, Path: proc(in.pausePid, "ipc")})
	}
	switch ns.GetPid() {
	case runtimeapi.NamespaceMode_POD:
		if podNS.GetPid() == runtimeapi.NamespaceMode_NODE {
			return invalidf("linux.security_context.namespace_options.pid: POD, but the pod uses the host's pid namespace")
		}
		list = append(list, specs.LinuxNamespace{Type: specs.PIDNamespace, Path: proc(in.nsPid, "pid")})
	case runtimeapi.NamespaceMode_TARGET:
		list = append(list, specs.LinuxNamespace{Type: specs.PIDNamespace, Path: proc(in.nsPid, "pid")})
	case runtimeapi.NamespaceMode_CONTAINER:
		list = append(list, specs.LinuxNamespace{Type: specs.PIDNamespace})
	}
	// A cgroup namespace hides the host's hierarchy; on v1 it would break
	// what containers expect, as containerd finds.
	if cgroups.HostMode() == cgroups.Unified && !in.cfg.GetLinux().GetSecurityContext().GetPrivileged() {
		list = append(list, specs.LinuxNamespace{Type: specs.CgroupNamespace})
	}
	spec.Linux.Namespaces = list
	return nil
}

// maskedPaths are the paths a container's /proc and /sys hide or make
// read-only. The kubelet always sends its default lists, or empty ones
// for procMount: Unmasked, which Kubernetes allows only in a pod with a
// user namespace (hostUsers: false). Protobuf cannot tell an empty list
// from none, and other clients (crictl, berthctl) send none: outside a
// user namespace an empty list gets the runtime's defaults, so that root
// in a container never writes /proc/sys or reads /proc/kcore by
// omission. (containerd takes an empty list as empty, CRI-O as the
// defaults; this keeps the kubelet's Unmasked where it can be asked.)
func maskedPaths(sc *runtimeapi.LinuxContainerSecurityContext, userns bool) (masked, readonly []string) {
	masked, readonly = slices.Clone(sc.GetMaskedPaths()), slices.Clone(sc.GetReadonlyPaths())
	if userns {
		return masked, readonly
	}
	if len(masked) == 0 {
		masked = runtime.DefaultMaskedPaths()
	}
	if len(readonly) == 0 {
		readonly = runtime.DefaultReadonlyPaths()
	}
	return masked, readonly
}

// capabilities applies add/drop (with ALL) to the default set. ALL is
// every capability berthd can grant: its own bounding set, which on a
// nested or restricted node (no CAP_SYS_RESOURCE, say) lacks some; a
// child cannot be given more, and asking would fail the container's init.
// Naming one berthd lacks is a clear InvalidArgument instead.
func (s *Server) capabilities(sc *runtimeapi.LinuxContainerSecurityContext) (*specs.LinuxCapabilities, error) {
	base := s.cfg.DefaultCapabilities
	if len(base) == 0 {
		base = runtime.DefaultCapabilities()
	}
	grantable, err := grantableCapabilities()
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	for _, c := range base {
		n, err := capabilityName(c)
		if err != nil {
			return nil, fmt.Errorf("default_capabilities: %w", err)
		}
		// A default berthd cannot grant is the node's limit, not the
		// request's: left out, as the runtime-spec lets a runtime do.
		if grantable[n] {
			set[n] = true
		}
	}
	add, drop := sc.GetCapabilities().GetAddCapabilities(), sc.GetCapabilities().GetDropCapabilities()
	for _, c := range drop {
		n, _ := capabilityName(c)
		if n == "ALL" {
			clear(set)
			continue
		}
		delete(set, n)
	}
	for _, c := range add {
		n, _ := capabilityName(c)
		if n == "ALL" {
			maps.Copy(set, grantable)
			continue
		}
		if !grantable[n] {
			return nil, invalidf("capability %s cannot be granted on this node: berthd does not hold it in its bounding set (a nested or restricted node); drop it from add_capabilities", n)
		}
		set[n] = true
	}
	list := sortedKeys(set)
	caps := &specs.LinuxCapabilities{Bounding: list, Permitted: slices.Clone(list), Effective: slices.Clone(list)}
	for _, c := range sc.GetCapabilities().GetAddAmbientCapabilities() {
		n, _ := capabilityName(c)
		if n == "ALL" || !set[n] {
			return nil, invalidf("ambient capability %s must also be in the container's capabilities", c)
		}
		caps.Ambient = append(caps.Ambient, n)
		caps.Inheritable = append(caps.Inheritable, n)
	}
	return caps, nil
}

// grantableCapabilities are the capabilities this kernel knows that are
// in berthd's own bounding set: all a container can be given. They do not
// change while berthd runs.
var grantableCapabilities = sync.OnceValues(func() (map[string]bool, error) {
	known, err := capability.ListSupported()
	if err != nil {
		return nil, fmt.Errorf("capabilities of this kernel: %w", err)
	}
	self, err := capability.NewPid2(0)
	if err == nil {
		err = self.Load()
	}
	if err != nil {
		return nil, fmt.Errorf("capabilities of berthd: %w", err)
	}
	out := map[string]bool{}
	for _, c := range known {
		if self.Get(capability.BOUNDING, c) {
			out["CAP_"+strings.ToUpper(c.String())] = true
		}
	}
	return out, nil
})

// seccompProfile turns a CRI seccomp choice into a filter. An unset
// profile is Unconfined, as the CRI defines; the kubelet sends
// RuntimeDefault where the pod or the node asks for it.
func (s *Server) seccompProfile(spec *specs.Spec, p *runtimeapi.SecurityProfile, deprecatedPath string) (*specs.LinuxSeccomp, error) {
	kind, ref := runtimeapi.SecurityProfile_Unconfined, ""
	if p != nil {
		kind, ref = p.ProfileType, p.LocalhostRef
	} else {
		switch {
		case deprecatedPath == "runtime/default" || deprecatedPath == "docker/default":
			kind = runtimeapi.SecurityProfile_RuntimeDefault
		case strings.HasPrefix(deprecatedPath, "localhost/"):
			kind, ref = runtimeapi.SecurityProfile_Localhost, strings.TrimPrefix(deprecatedPath, "localhost")
		}
	}
	switch kind {
	case runtimeapi.SecurityProfile_Unconfined:
		return nil, nil
	case runtimeapi.SecurityProfile_Localhost:
		return loadSeccomp(ref, spec)
	}
	if s.cfg.SeccompProfile != "" {
		return loadSeccomp(s.cfg.SeccompProfile, spec)
	}
	return runtime.DefaultSeccomp(spec)
}

// loadSeccomp reads a profile in the Docker/containerd JSON format.
func loadSeccomp(path string, spec *specs.Spec) (*specs.LinuxSeccomp, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, invalidf("seccomp profile %s does not exist", path)
		}
		return nil, fmt.Errorf("seccomp profile %s: %w", path, err)
	}
	prof, err := seccomp.LoadProfile(string(data), spec)
	if err != nil {
		return nil, invalidf("seccomp profile %s: %v", path, err)
	}
	return prof, nil
}

// addDevices adds host devices (a directory adds every device under it).
func addDevices(spec *specs.Spec, devs []*runtimeapi.Device) error {
	for i, d := range devs {
		perms := d.Permissions
		if perms == "" {
			perms = "rwm"
		}
		src, err := filepath.EvalSymlinks(d.HostPath)
		if err != nil {
			return invalidf("devices[%d]: host_path %s: %v", i, d.HostPath, err)
		}
		fi, err := os.Stat(src)
		if err != nil {
			return invalidf("devices[%d]: %v", i, err)
		}
		if fi.IsDir() {
			found, err := devices.GetDevices(src)
			if err != nil {
				return fmt.Errorf("devices[%d]: %w", i, err)
			}
			for _, dev := range found {
				dst := filepath.Join(d.ContainerPath, strings.TrimPrefix(dev.Path, src))
				addDevice(spec, rune(dev.Type), dev.Major, dev.Minor, dev.FileMode, dev.Uid, dev.Gid, dst, perms)
			}
			continue
		}
		dev, err := devices.DeviceFromPath(src, perms)
		if err != nil {
			return invalidf("devices[%d]: %s is not a device node: %v", i, d.HostPath, err)
		}
		addDevice(spec, rune(dev.Type), dev.Major, dev.Minor, dev.FileMode, dev.Uid, dev.Gid, d.ContainerPath, perms)
	}
	return nil
}

func addDevice(spec *specs.Spec, typ rune, major, minor int64, mode fs.FileMode, uid, gid uint32, dst, perms string) {
	t := string(typ)
	spec.Linux.Devices = append(spec.Linux.Devices, specs.LinuxDevice{
		Path: dst, Type: t, Major: major, Minor: minor, FileMode: &mode, UID: &uid, GID: &gid,
	})
	spec.Linux.Resources.Devices = append(spec.Linux.Resources.Devices, specs.LinuxDeviceCgroup{
		Allow: true, Type: t, Major: &major, Minor: &minor, Access: perms,
	})
}

// makePrivileged: every capability and host device, no seccomp, no masked
// paths, writable /sys and cgroups, as other runtimes do it.
func makePrivileged(spec *specs.Spec) error {
	// Every capability berthd itself holds, not every one the kernel
	// knows: in a nested or restricted node (no CAP_SYS_RESOURCE, say) a
	// child cannot be given more, and asking would fail the start.
	grantable, err := grantableCapabilities()
	if err != nil {
		return err
	}
	all := sortedKeys(grantable)
	spec.Process.Capabilities = &specs.LinuxCapabilities{Bounding: all, Permitted: slices.Clone(all), Effective: slices.Clone(all)}
	spec.Linux.Seccomp = nil
	spec.Linux.MaskedPaths, spec.Linux.ReadonlyPaths = nil, nil
	for i, m := range spec.Mounts {
		if m.Destination == "/sys" || m.Destination == "/sys/fs/cgroup" {
			spec.Mounts[i].Options = slices.DeleteFunc(slices.Clone(m.Options), func(o string) bool { return o == "ro" })
			spec.Mounts[i].Options = append(spec.Mounts[i].Options, "rw")
		}
	}
	host, err := devices.HostDevices()
	if err != nil {
		return fmt.Errorf("host devices: %w", err)
	}
	for _, d := range host {
		if strings.HasPrefix(d.Path, "/dev/pts/") || d.Path == "/dev/console" || d.Path == "/dev/ptmx" {
			continue
		}
		mode, uid, gid := d.FileMode, d.Uid, d.Gid
		spec.Linux.Devices = append(spec.Linux.Devices, specs.LinuxDevice{
			Path: d.Path, Type: string(rune(d.Type)), Major: d.Major, Minor: d.Minor, FileMode: &mode, UID: &uid, GID: &gid,
		})
	}
	spec.Linux.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}
	return nil
}

// applyResources maps CRI resources onto the spec; limits the host
// cannot enforce (no swap accounting, no hugetlb controller) are left
// out, as containerd tolerates them.
func applyResources(spec *specs.Spec, r *runtimeapi.LinuxContainerResources) error {
	if r == nil {
		return nil
	}
	lr, err := linuxResources(r)
	if err != nil {
		return err
	}
	lr.Devices = spec.Linux.Resources.Devices
	spec.Linux.Resources = lr
	if r.OomScoreAdj != 0 {
		adj := int(r.OomScoreAdj)
		spec.Process.OOMScoreAdj = &adj
	}
	return nil
}

// linuxResources converts CRI resources to OCI ones.
func linuxResources(r *runtimeapi.LinuxContainerResources) (*specs.LinuxResources, error) {
	lr := &specs.LinuxResources{CPU: &specs.LinuxCPU{}, Memory: &specs.LinuxMemory{}}
	if r.CpuPeriod != 0 {
		lr.CPU.Period = ptr(uint64(r.CpuPeriod))
	}
	if r.CpuQuota != 0 {
		lr.CPU.Quota = ptr(r.CpuQuota)
	}
	if r.CpuShares != 0 {
		lr.CPU.Shares = ptr(uint64(r.CpuShares))
	}
	lr.CPU.Cpus, lr.CPU.Mems = r.CpusetCpus, r.CpusetMems
	if r.MemoryLimitInBytes != 0 {
		lr.Memory.Limit = ptr(r.MemoryLimitInBytes)
	}
	if r.MemorySwapLimitInBytes != 0 && cgroups.SwapAccounting() {
		lr.Memory.Swap = ptr(r.MemorySwapLimitInBytes)
	}
	if len(r.HugepageLimits) > 0 && cgroups.HugetlbAvailable() {
		for _, h := range r.HugepageLimits {
			lr.HugepageLimits = append(lr.HugepageLimits, specs.LinuxHugepageLimit{Pagesize: h.PageSize, Limit: h.Limit})
		}
	}
	if len(r.Unified) > 0 {
		lr.Unified = maps.Clone(r.Unified)
	}
	return lr, nil
}

// hostPathSource resolves a mount's host path, making it a directory if
// it is missing, as containerd and CRI-O do (and Docker before them): a
// hostPath volume without a type (kube-proxy's /lib/modules) reaches the
// runtime unchecked, and Kubernetes expects it to be made.
func hostPathSource(p string) (string, error) {
	src, err := filepath.EvalSymlinks(p)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return "", fmt.Errorf("create missing host_path %s: %w", p, err)
		}
		src, err = filepath.EvalSymlinks(p)
	}
	if err != nil {
		return "", fmt.Errorf("host_path %s: %w", p, err)
	}
	return src, nil
}
