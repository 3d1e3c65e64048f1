package cri

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/shim"
	"github.com/berth-runtime/berth/network"
	"github.com/berth-runtime/berth/runtime"
)

// RunPodSandbox creates and starts a pod sandbox: its name reserved, its
// directory (hostname, resolv.conf, hosts, /dev/shm), its network
// namespace and CNI network, its shim, and the pause process holding its
// namespaces. Every step registers its undo before the next one runs, so
// a failure at any point leaves nothing behind.
func (s *Server) RunPodSandbox(ctx context.Context, req *runtimeapi.RunPodSandboxRequest) (*runtimeapi.RunPodSandboxResponse, error) {
	id, err := s.runPodSandbox(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	// The sandbox's own events, as containerd sends them: evented PLEG
	// learns of new pods from these.
	s.emit(id, id, runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT)
	s.emit(id, id, runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT)
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: id}, nil
}

// undo collects the undo steps of a half-done operation.
type undo []func()

func (u *undo) add(f func()) { *u = append(*u, f) }

// run undoes, last step first.
func (u undo) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

func (s *Server) runPodSandbox(ctx context.Context, req *runtimeapi.RunPodSandboxRequest) (_ string, retErr error) {
	cfg := req.GetConfig()
	if err := validatePodConfig(cfg, cgroups.Driver(s.cfg.CgroupDriver)); err != nil {
		return "", err
	}
	h, err := s.handlerFor(req.GetRuntimeHandler())
	if err != nil {
		return "", err
	}
	if podUsesUserns(cfg) && !h.features.UserNamespaces {
		return "", invalidf("runtime handler %q cannot run pods in user namespaces (its runtime has no idmapped mounts)", req.GetRuntimeHandler())
	}
	sb := &sandbox{
		ID: newID(), Name: sandboxName(cfg.Metadata), RuntimeHandler: req.GetRuntimeHandler(),
		State: sandboxCreating, CreatedAt: time.Now(), config: cfg,
	}
	sb.CgroupParent = s.podCgroupParent(sb.ID, cfg)
	if sb.Config, err = proto.Marshal(cfg); err != nil {
		return "", err
	}
	unlock := s.locks.lock(sb.ID)
	defer unlock()
	log := s.log.With("pod", sb.ID, "name", sb.Name)

	var u undo
	defer func() {
		if retErr != nil {
			log.Warn("RunPodSandbox failed; undoing", "error", retErr)
			u.run()
		}
	}()
	if err := s.reserveSandboxName(sb); err != nil {
		return "", err
	}
	u.add(func() { _ = s.store.releaseName(sb.Name, sb.ID) })

	// Recorded first, so that a crash from here on is undone at restart.
	if err := s.store.putSandbox(sb); err != nil {
		return "", err
	}
	u.add(func() { _ = s.store.deleteSandbox(sb.ID) })

	// The pod cgroup berth makes goes last: the pause process or a
	// failed create of it may have made it.
	if sb.CgroupParent == s.defaultPodCgroupParent(sb.ID) {
		u.add(func() {
			// An undo runs whether or not the caller is still there.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if err := removePodCgroup(ctx, s.cfg.CgroupDriver, sb.CgroupParent); err != nil {
				log.Warn("undo pod cgroup", "error", err)
			}
		})
	}
	if err := s.makePodDir(sb, cfg); err != nil {
		return "", err
	}
	u.add(func() { s.removePodDir(sb) })

	// The shim starts while the network is set up: neither needs the
	// other, and each waits mostly on processes of its own (the shim's
	// exec, the CNI plugins').
	var client *shim.Client
	var shimErr error
	shimUp := make(chan struct{})
	go func() {
		defer close(shimUp)
		client, shimErr = s.shims.start(ctx, sb.ID, h.path, h.root)
	}()
	u.add(func() {
		<-shimUp
		if shimErr == nil {
			s.shims.stop(context.Background(), sb.ID)
		}
	})
	if err := s.makePodNetNS(sb, cfg, &u); err != nil {
		return "", err
	}

	// Once the namespace exists, CNI ADD and the pause's create run side
	// by side too: the pause joins the namespace by its path and starts
	// (execs) only once both are done. Not with net.* sysctls: the pause
	// sets them as it is created, and they must come after CNI's own
	// (the tuning plugin's), as they do in containerd.
	var pauseUndo undo
	var pausePid int
	var pauseErr error
	pauseCreated := make(chan struct{})
	createPause := func() {
		defer close(pauseCreated)
		<-shimUp
		if shimErr != nil {
			pauseErr = shimErr
			return
		}
		pausePid, pauseErr = s.createPause(ctx, sb, cfg, client, &pauseUndo)
	}
	overlap := !hasNetSysctl(cfg)
	if overlap {
		go createPause()
	}
	netErr := s.addPodNetwork(ctx, sb, cfg, &u)
	if !overlap {
		if netErr != nil {
			return "", netErr
		}
		createPause()
	}
	<-pauseCreated
	// The pause's undo goes last, so that it runs first: its container
	// leaves before the network it was in.
	u = append(u, pauseUndo...)
	if netErr != nil {
		return "", netErr
	}
	if pauseErr != nil {
		return "", pauseErr
	}
	if err := s.startPause(sb, pausePid); err != nil {
		return "", err
	}
	sb.State = sandboxReady
	if err := s.store.putSandbox(sb); err != nil {
		return "", err
	}
	log.Info("pod sandbox ready", "pause", sb.PausePid, "ips", sb.IPs)
	return sb.ID, nil
}

// defaultHandler is the only runtime handler berth has.
const defaultHandler = "berth"

// sandboxName is the unique name of a pod sandbox, as the kubelet knows it.
func sandboxName(m *runtimeapi.PodSandboxMetadata) string {
	return strings.Join([]string{m.Name, m.Namespace, m.Uid, fmt.Sprint(m.Attempt)}, "_")
}

func (s *Server) reserveSandboxName(sb *sandbox) error {
	holder, err := s.store.reserveName("pod:"+sb.Name, sb.ID)
	if err != nil {
		return err
	}
	if holder != "" {
		return fmt.Errorf("%w: pod sandbox name %q is held by %s; remove that sandbox first", errExists, sb.Name, holder)
	}
	return nil
}

// makePodDir writes the files the pod's containers share.
func (s *Server) makePodDir(sb *sandbox, cfg *runtimeapi.PodSandboxConfig) error {
	dir := s.cfg.podDir(sb.ID)
	pauseRoot := filepath.Join(dir, "pause", "rootfs")
	// The pause's mount points are made here, as root: in a user
	// namespace, the pause's root could not make them in a root-owned dir.
	for _, d := range []string{dir, filepath.Join(dir, "shm"), pauseRoot,
		filepath.Join(pauseRoot, "proc"), filepath.Join(pauseRoot, "dev"), filepath.Join(pauseRoot, "sys")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("pod directory: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(pauseRoot, "pause"), nil, 0o755); err != nil {
		return fmt.Errorf("pod directory: %w", err)
	}
	// Not listable by other users: containers reach its files through
	// their bind mounts, never through this path.
	if err := os.Chmod(dir, 0o711); err != nil {
		return fmt.Errorf("pod directory: %w", err)
	}
	resolv, err := resolvConf(cfg.DnsConfig)
	if err != nil {
		return err
	}
	files := map[string]string{
		"hostname":    podHostname(cfg) + "\n",
		"resolv.conf": resolv,
		"hosts":       "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("pod %s: %w", name, err)
		}
	}
	if cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetIpc() != runtimeapi.NamespaceMode_NODE {
		// One /dev/shm for the whole pod, as its IPC namespace is one.
		if err := unix.Mount("shm", filepath.Join(dir, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777,size=65536k"); err != nil {
			return fmt.Errorf("pod /dev/shm: %w", err)
		}
		sb.ShmMounted = true
	}
	return nil
}

// removePodDir unmounts /dev/shm and deletes the pod's directory.
func (s *Server) removePodDir(sb *sandbox) {
	dir := s.cfg.podDir(sb.ID)
	shm := filepath.Join(dir, "shm")
	if err := unix.Unmount(shm, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		s.log.Warn("unmount pod shm", "pod", sb.ID, "error", err)
	}
	if err := s.unpinUserns(sb.ID); err != nil {
		s.log.Warn("unpin the pod's user namespace", "pod", sb.ID, "error", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		s.log.Warn("remove pod directory", "pod", sb.ID, "error", err)
	}
}

// resolvConf renders the pod's resolv.conf: the kubelet's DNS config, or
// the host's when there is none.
func resolvConf(dns *runtimeapi.DNSConfig) (string, error) {
	if dns == nil || (len(dns.Servers) == 0 && len(dns.Searches) == 0 && len(dns.Options) == 0) {
		data, err := os.ReadFile("/etc/resolv.conf")
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("host resolv.conf: %w", err)
		}
		return string(data), nil
	}
	var b strings.Builder
	if len(dns.Searches) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(dns.Searches, " "))
	}
	for _, ns := range dns.Servers {
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	if len(dns.Options) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(dns.Options, " "))
	}
	return b.String(), nil
}

// makePodNetNS gives the pod its network namespace (owned by the pod's
// user namespace, if it has one); host-network pods get none.
func (s *Server) makePodNetNS(sb *sandbox, cfg *runtimeapi.PodSandboxConfig, u *undo) error {
	if cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork() == runtimeapi.NamespaceMode_NODE {
		return nil
	}
	var ns *network.NetNS
	var err error
	if uids, gids := podUserns(cfg); uids != nil {
		u.add(func() {
			if err := s.unpinUserns(sb.ID); err != nil {
				s.log.Warn("undo user namespace", "pod", sb.ID, "error", err)
			}
		})
		err = s.pinUserns(sb.ID, uids, gids, func(nsPath string) (err error) {
			ns, err = s.net.AdoptNetNS(sb.ID, nsPath)
			return err
		})
	} else {
		ns, err = s.net.NewNetNS(sb.ID)
	}
	if err != nil {
		return err
	}
	sb.NetNS = ns.Path
	u.add(func() { _ = s.net.RemoveNetNS(ns.Path) })
	return s.store.putSandbox(sb)
}

// addPodNetwork runs CNI ADD in the pod's network namespace. It writes
// only the sandbox's network fields (CNIAdded, IPs): the pause's create
// may read the others meanwhile.
func (s *Server) addPodNetwork(ctx context.Context, sb *sandbox, cfg *runtimeapi.PodSandboxConfig, u *undo) error {
	if sb.NetNS == "" {
		return nil
	}
	if err := s.net.Status(); err != nil {
		if errors.Is(err, network.ErrNotReady) {
			// No CNI configuration: the pod has loopback only, and
			// Status reports NetworkReady false with the reason.
			s.log.Warn("no CNI network: pod gets loopback only", "pod", sb.ID, "reason", err)
			return nil
		}
		return err
	}
	// Recorded before ADD runs: a crash during ADD still gets its DEL.
	sb.CNIAdded = true
	if err := s.store.putSandbox(sb); err != nil {
		return err
	}
	pod := s.networkPod(sb, cfg)
	u.add(func() {
		if err := s.net.Teardown(context.Background(), pod); err != nil {
			s.log.Warn("undo CNI ADD", "pod", sb.ID, "error", err)
		}
	})
	ips, err := s.net.Setup(ctx, pod)
	if err != nil {
		return err
	}
	sb.IPs = ips
	return s.store.putSandbox(sb)
}

// hasNetSysctl says whether the pod sets a sysctl of its network
// namespace.
func hasNetSysctl(cfg *runtimeapi.PodSandboxConfig) bool {
	for k := range cfg.GetLinux().GetSysctls() {
		if strings.HasPrefix(k, "net.") || strings.HasPrefix(k, "net/") {
			return true
		}
	}
	return false
}

// networkPod is what the network manager needs of a sandbox.
func (s *Server) networkPod(sb *sandbox, cfg *runtimeapi.PodSandboxConfig) network.Pod {
	p := network.Pod{
		ID: sb.ID, Name: cfg.Metadata.GetName(), Namespace: cfg.Metadata.GetNamespace(), UID: cfg.Metadata.GetUid(),
		NetNS: sb.NetNS, CgroupParent: sb.CgroupParent,
	}
	for _, pm := range cfg.PortMappings {
		if pm.HostPort <= 0 {
			continue
		}
		p.PortMappings = append(p.PortMappings, network.PortMapping{
			HostPort: pm.HostPort, ContainerPort: pm.ContainerPort,
			Protocol: strings.ToLower(pm.Protocol.String()), HostIP: pm.HostIp,
		})
	}
	if d := cfg.DnsConfig; d != nil {
		p.DNS = &network.DNS{Servers: d.Servers, Searches: d.Searches, Options: d.Options}
	}
	p.IngressBandwidth, p.EgressBandwidth = bandwidth(cfg.Annotations)
	return p
}

// podCgroupParent is the kubelet's pod cgroup (validated, in the form
// the driver places cgroups by), or one berth makes for the pod under
// its configured parent.
func (s *Server) podCgroupParent(id string, cfg *runtimeapi.PodSandboxConfig) string {
	if p := cfg.GetLinux().GetCgroupParent(); p != "" {
		if parent, err := cgroups.Driver(s.cfg.CgroupDriver).PodParent(p); err == nil {
			return parent
		}
		return p
	}
	return s.defaultPodCgroupParent(id)
}

func (s *Server) defaultPodCgroupParent(id string) string {
	if cgroups.Driver(s.cfg.CgroupDriver) == cgroups.Systemd {
		return strings.TrimSuffix(s.cfg.CgroupParent, ".slice") + "-pod" + id[:16] + ".slice"
	}
	return filepath.Join(s.cfg.CgroupParent, "pod"+id[:16])
}

// cgroupsPath places a container (or the pause) under the pod's cgroup.
func (s *Server) cgroupsPath(parent, id string) string {
	if cgroups.Driver(s.cfg.CgroupDriver) == cgroups.Systemd {
		return parent + ":berth:" + id
	}
	return filepath.Join(parent, "berth-"+id)
}

// createPause creates the pause process of the sandbox; it waits for
// startPause to exec it. It reads the sandbox and writes none of it.
func (s *Server) createPause(ctx context.Context, sb *sandbox, cfg *runtimeapi.PodSandboxConfig, client *shim.Client, u *undo) (pid int, err error) {
	spec, err := s.pauseSpec(sb, cfg)
	if err != nil {
		return 0, err
	}
	bundle := filepath.Join(s.cfg.podDir(sb.ID), "pause")
	if err := writeSpec(bundle, spec, s.handlers[sb.RuntimeHandler], s.log); err != nil {
		return 0, err
	}
	// Registered first: a create that fails half-way leaves runtime state.
	u.add(func() { s.deleteRuntimeContainer(sb.ID) })
	if pid, err = client.Create(ctx, sb.ID, shim.CreateRequest{Bundle: bundle}); err != nil {
		return 0, runtimeFailure(fmt.Errorf("create pause: %w", err))
	}
	return pid, nil
}

// startPause execs the created pause process.
func (s *Server) startPause(sb *sandbox, pid int) error {
	c, err := s.rt.Load(sb.ID)
	if err != nil {
		return err
	}
	if err := c.Exec(); err != nil {
		return runtimeFailure(fmt.Errorf("start pause: %w", err))
	}
	sb.PausePid = pid
	return nil
}

// deleteRuntimeContainer force-deletes a runtime container; gone is fine.
func (s *Server) deleteRuntimeContainer(id string) {
	c, err := s.rt.Load(id)
	if err != nil {
		if !errors.Is(err, runtime.ErrNotExist) {
			s.log.Warn("load container for deletion", "container", id, "error", err)
		}
		if _, err := s.rt.Remains(id); err != nil {
			s.log.Warn("remove remains", "container", id, "error", err)
		}
		return
	}
	if err := c.Delete(true); err != nil {
		s.log.Warn("delete container", "container", id, "error", err)
	}
}
