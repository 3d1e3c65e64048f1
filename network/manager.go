package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
)

// Options configure a Manager.
type Options struct {
	// NetNSDir holds the pods' network namespace bind mounts.
	NetNSDir string
	// ConfDir holds CNI network configurations; BinDirs the plugins.
	ConfDir string
	BinDirs []string
	// ConfTemplate, when the file exists, is rendered into ConfDir for
	// the node's pod CIDR (see RenderTemplate).
	ConfTemplate string
	// Timeout bounds one CNI plugin call.
	Timeout time.Duration
	Logger  *slog.Logger
}

// Pod is what the network needs to know of a pod.
type Pod struct {
	ID        string
	Name      string
	Namespace string
	UID       string
	// NetNS is the pod's network namespace path.
	NetNS string
	// PortMappings are hostPort mappings (portmap plugin).
	PortMappings []PortMapping
	// Bandwidth limits, bits per second (bandwidth plugin); 0 is none.
	IngressBandwidth, EgressBandwidth int64
	// DNS is passed to plugins that configure it.
	DNS *DNS
	// CgroupParent is passed to plugins that want it.
	CgroupParent string
}

// PortMapping maps a host port to a pod port.
type PortMapping struct {
	HostPort      int32
	ContainerPort int32
	Protocol      string // tcp, udp, sctp
	HostIP        string
}

// DNS is a pod's DNS configuration.
type DNS struct {
	Servers  []string
	Searches []string
	Options  []string
}

// Manager gives pods network namespaces and, through CNI, interfaces.
type Manager struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	podCIDR string
	cni     *cniNetwork // nil until a usable configuration is found
}

// NewManager makes the namespace directory and loads the CNI
// configuration if there is one.
func NewManager(o Options) (*Manager, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Minute
	}
	if err := os.MkdirAll(o.NetNSDir, 0o711); err != nil {
		return nil, fmt.Errorf("netns directory: %w", err)
	}
	return &Manager{opts: o, log: o.Logger}, nil
}

// Close stops watching the configuration.
func (m *Manager) Close() {}

// SetPodCIDR records the node's pod CIDRs (UpdateRuntimeConfig,
// comma-separated): plugins with the ipRanges capability get them, and
// the configuration template, if there is one, is rendered for them.
func (m *Manager) SetPodCIDR(cidr string) error {
	m.mu.Lock()
	m.podCIDR = cidr
	m.mu.Unlock()
	return m.renderTemplate(cidr)
}

// NewNetNS creates a pod's network namespace.
func (m *Manager) NewNetNS(podID string) (*NetNS, error) {
	return NewNetNS(m.opts.NetNSDir, podID)
}

// AdoptNetNS keeps the network namespace at nsPath as the pod's.
func (m *Manager) AdoptNetNS(podID, nsPath string) (*NetNS, error) {
	return AdoptNetNS(m.opts.NetNSDir, podID, nsPath)
}

// RemoveNetNS removes a pod's namespace bind mount; a missing one is fine.
func (m *Manager) RemoveNetNS(path string) error {
	if path == "" {
		return nil
	}
	if filepath.Dir(path) != filepath.Clean(m.opts.NetNSDir) {
		return fmt.Errorf("refusing to remove %s: not under %s", path, m.opts.NetNSDir)
	}
	return (&NetNS{Path: path}).Remove()
}

// ErrNotReady: no usable CNI configuration.
var ErrNotReady = errors.New("network not ready")

// Status reports whether pods can get a network, and why not.
func (m *Manager) Status() error {
	_, err := m.network()
	return err
}

// Setup runs CNI ADD for a pod and returns its IPs, primary first.
func (m *Manager) Setup(ctx context.Context, pod Pod) ([]string, error) {
	n, err := m.network()
	if err != nil {
		return nil, err
	}
	return n.add(ctx, pod)
}

// Teardown runs CNI DEL for a pod; it succeeds when the pod's network is
// already gone, the namespace included. DEL uses the configuration the
// pod's ADD used, from libcni's cache, as the CNI spec asks: the files in
// ConfDir may have changed or gone since, and a DEL with another
// configuration (another IPAM range or data directory) would release
// nothing and leak the pod's IP and interfaces. Only a pod that has no
// cached ADD (made before the cache, say) is torn down with the current
// configuration.
func (m *Manager) Teardown(ctx context.Context, pod Pod) error {
	done, err := m.teardownCached(ctx, pod)
	if done || err != nil {
		return err
	}
	n, err := m.network()
	if err != nil {
		if errors.Is(err, ErrNotReady) {
			return nil
		}
		return err
	}
	return n.del(ctx, pod)
}

// cniCacheDir is where libcni keeps each ADD's configuration and result.
func (o Options) cniCacheDir() string {
	return filepath.Join(filepath.Dir(o.NetNSDir), "cni-cache")
}

// teardownCached runs DEL for every network the pod was added to, each
// with the configuration and arguments cached at its ADD. done is false
// when the cache has none of the pod's.
func (m *Manager) teardownCached(ctx context.Context, pod Pod) (done bool, err error) {
	cni := libcni.NewCNIConfigWithCacheDir(m.opts.BinDirs, m.opts.cniCacheDir(), &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}})
	atts, err := cni.GetCachedAttachments(pod.ID)
	if err != nil || len(atts) == 0 {
		return false, nil
	}
	for _, a := range atts {
		list, err := libcni.ConfListFromBytes(a.Config)
		if err != nil {
			// A cached entry that is no list: libcni caches single
			// configurations as themselves.
			c, cerr := libcni.ConfFromBytes(a.Config)
			if cerr != nil {
				return true, fmt.Errorf("CNI DEL of pod %s: cached configuration of network %s: %w", pod.ID, a.Network, err)
			}
			if list, err = libcni.ConfListFromConf(c); err != nil {
				return true, fmt.Errorf("CNI DEL of pod %s: cached configuration of network %s: %w", pod.ID, a.Network, err)
			}
		}
		rt := &libcni.RuntimeConf{
			ContainerID: a.ContainerID, NetNS: pod.NetNS, IfName: a.IfName,
			Args: a.CniArgs, CapabilityArgs: a.CapabilityArgs,
		}
		dctx, cancel := context.WithTimeout(ctx, m.opts.Timeout)
		err = cni.DelNetworkList(dctx, list, rt)
		cancel()
		if err != nil {
			return true, fmt.Errorf("CNI DEL (cached configuration of network %s): %w", a.Network, timeoutErr(dctx, err))
		}
	}
	return true, nil
}

// network returns the CNI network to use: the lexically first usable
// configuration in ConfDir, reloaded when the directory changes.
func (m *Manager) network() (*cniNetwork, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, err := loadCNI(m.opts, m.cni)
	if err != nil {
		m.cni = nil
		return nil, err
	}
	n.podCIDR = m.currentPodCIDR
	m.cni = n
	return n, nil
}

func (m *Manager) currentPodCIDR() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.podCIDR
}
