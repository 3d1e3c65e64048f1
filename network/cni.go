package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// cniNetwork is one loaded CNI network configuration.
type cniNetwork struct {
	cni     *libcni.CNIConfig
	list    *libcni.NetworkConfigList
	file    string
	stamp   string // ConfDir's files and mtimes when loaded
	opts    Options
	podCIDR func() string
}

// confStamp fingerprints the configuration directory: a change reloads.
func confStamp(dir string) (string, []string, error) {
	files, err := libcni.ConfFiles(dir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return "", nil, err
	}
	sort.Strings(files)
	var b strings.Builder
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			continue
		}
		fmt.Fprintf(&b, "%s:%d:%d;", f, fi.ModTime().UnixNano(), fi.Size())
	}
	return b.String(), files, nil
}

// loadCNI loads the lexically first usable configuration (as the kubelet
// and other runtimes do), unless the directory is unchanged since prev.
func loadCNI(o Options, prev *cniNetwork) (*cniNetwork, error) {
	stamp, files, err := confStamp(o.ConfDir)
	if err != nil {
		return nil, fmt.Errorf("%w: CNI configuration directory %s: %v", ErrNotReady, o.ConfDir, err)
	}
	if prev != nil && prev.stamp == stamp {
		return prev, nil
	}
	var reasons []string
	for _, f := range files {
		list, err := readConfList(f)
		if err != nil {
			reasons = append(reasons, fmt.Sprintf("%s: %v", filepath.Base(f), err))
			continue
		}
		if missing := missingPlugins(list, o.BinDirs); len(missing) > 0 {
			reasons = append(reasons, fmt.Sprintf("%s: plugins %s not found in %s", filepath.Base(f), strings.Join(missing, ", "), strings.Join(o.BinDirs, ":")))
			continue
		}
		return &cniNetwork{
			cni:   libcni.NewCNIConfigWithCacheDir(o.BinDirs, o.cniCacheDir(), &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}}),
			list:  list,
			file:  f,
			stamp: stamp,
			opts:  o,
		}, nil
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%w: no CNI configuration in %s", ErrNotReady, o.ConfDir)
	}
	return nil, fmt.Errorf("%w: no usable CNI configuration in %s: %s", ErrNotReady, o.ConfDir, strings.Join(reasons, "; "))
}

func readConfList(path string) (*libcni.NetworkConfigList, error) {
	if strings.HasSuffix(path, ".conflist") {
		l, err := libcni.ConfListFromFile(path)
		if err != nil {
			return nil, err
		}
		if len(l.Plugins) == 0 {
			return nil, errors.New("no plugins")
		}
		return l, nil
	}
	c, err := libcni.ConfFromFile(path)
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromConf(c)
}

func missingPlugins(list *libcni.NetworkConfigList, dirs []string) []string {
	var missing []string
	for _, p := range list.Plugins {
		if _, err := invoke.FindInPath(p.Network.Type, dirs); err != nil {
			missing = append(missing, p.Network.Type)
		}
	}
	return missing
}

// runtimeConf is what libcni passes to plugins about the pod: the CNI
// args other runtimes pass, and capability arguments.
func (n *cniNetwork) runtimeConf(pod Pod, podCIDR string) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{
		ContainerID: pod.ID,
		NetNS:       pod.NetNS,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", pod.Namespace},
			{"K8S_POD_NAME", pod.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", pod.ID},
			{"K8S_POD_UID", pod.UID},
		},
		CapabilityArgs: map[string]any{},
	}
	if len(pod.PortMappings) > 0 {
		var pms []map[string]any
		for _, p := range pod.PortMappings {
			pm := map[string]any{"hostPort": p.HostPort, "containerPort": p.ContainerPort, "protocol": strings.ToLower(p.Protocol)}
			if p.HostIP != "" {
				pm["hostIP"] = p.HostIP
			}
			pms = append(pms, pm)
		}
		rt.CapabilityArgs["portMappings"] = pms
	}
	if pod.IngressBandwidth > 0 || pod.EgressBandwidth > 0 {
		bw := map[string]any{}
		if pod.IngressBandwidth > 0 {
			bw["ingressRate"], bw["ingressBurst"] = pod.IngressBandwidth, pod.IngressBandwidth/8
		}
		if pod.EgressBandwidth > 0 {
			bw["egressRate"], bw["egressBurst"] = pod.EgressBandwidth, pod.EgressBandwidth/8
		}
		rt.CapabilityArgs["bandwidth"] = bw
	}
	if pod.DNS != nil {
		rt.CapabilityArgs["dns"] = map[string]any{"servers": pod.DNS.Servers, "searches": pod.DNS.Searches, "options": pod.DNS.Options}
	}
	if podCIDR != "" {
		rt.CapabilityArgs["ipRanges"] = [][]map[string]string{{{"subnet": podCIDR}}}
	}
	if pod.CgroupParent != "" {
		rt.CapabilityArgs["cgroupPath"] = pod.CgroupParent
	}
	return rt
}

func (n *cniNetwork) add(ctx context.Context, pod Pod) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, n.opts.Timeout)
	defer cancel()
	res, err := n.cni.AddNetworkList(ctx, n.list, n.runtimeConf(pod, n.podCIDRValue()))
	if err != nil {
		return nil, fmt.Errorf("CNI ADD (%s, network %s): %w", filepath.Base(n.file), n.list.Name, timeoutErr(ctx, err))
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("CNI ADD (network %s) returned an unusable result: %w", n.list.Name, err)
	}
	return resultIPs(r), nil
}

func (n *cniNetwork) del(ctx context.Context, pod Pod) error {
	ctx, cancel := context.WithTimeout(ctx, n.opts.Timeout)
	defer cancel()
	if err := n.cni.DelNetworkList(ctx, n.list, n.runtimeConf(pod, n.podCIDRValue())); err != nil {
		return fmt.Errorf("CNI DEL (%s, network %s): %w", filepath.Base(n.file), n.list.Name, timeoutErr(ctx, err))
	}
	return nil
}

func (n *cniNetwork) podCIDRValue() string {
	if n.podCIDR == nil {
		return ""
	}
	return n.podCIDR()
}

func timeoutErr(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("plugin timed out: %w", err)
	}
	return err
}

// resultIPs orders the result's addresses: those on the pod's interface
// (eth0) first, IPv4 before IPv6 among them.
func resultIPs(r *current.Result) []string {
	type ip struct {
		addr  net.IP
		onPod bool
	}
	var ips []ip
	for _, c := range r.IPs {
		onPod := c.Interface == nil
		if c.Interface != nil && *c.Interface < len(r.Interfaces) {
			onPod = r.Interfaces[*c.Interface].Sandbox != ""
		}
		ips = append(ips, ip{c.Address.IP, onPod})
	}
	sort.SliceStable(ips, func(i, j int) bool {
		if ips[i].onPod != ips[j].onPod {
			return ips[i].onPod
		}
		return ips[i].addr.To4() != nil && ips[j].addr.To4() == nil
	})
	out := make([]string, 0, len(ips))
	for _, i := range ips {
		out = append(out, i.addr.String())
	}
	return out
}
