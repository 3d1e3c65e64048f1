package cri

import (
	"context"
	"os"
	"path/filepath"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/runtime"
)

// PodSandboxStatus reports a sandbox, with its containers' statuses.
func (s *Server) PodSandboxStatus(ctx context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	sb, err := s.findSandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &runtimeapi.PodSandboxStatusResponse{Status: s.sandboxStatus(sb), Timestamp: time.Now().UnixNano()}
	for _, c := range s.store.podContainers(sb.ID) {
		if c.State != containerCreating {
			resp.ContainersStatuses = append(resp.ContainersStatuses, s.containerStatus(c))
		}
	}
	if req.Verbose {
		info := map[string]any{
			"pid": sb.PausePid, "state": sb.State, "netNamespace": sb.NetNS, "ips": sb.IPs,
			"cgroupParent": sb.CgroupParent, "cniAdded": sb.CNIAdded, "shimSocket": s.shims.socket(sb.ID),
			"config": jsonRaw(mustJSON(sb.config)),
		}
		if data, err := os.ReadFile(filepath.Join(s.cfg.podDir(sb.ID), "pause", runtime.ConfigFile)); err == nil {
			info["runtimeSpec"] = jsonRaw(data)
		}
		resp.Info = map[string]string{"info": jsonString(info)}
	}
	return resp, nil
}

// sandboxStatus is the CRI view of a sandbox record.
func (s *Server) sandboxStatus(sb *sandbox) *runtimeapi.PodSandboxStatus {
	cfg := sb.config
	st := &runtimeapi.PodSandboxStatus{
		Id: sb.ID, Metadata: cfg.Metadata, State: runtimeapi.PodSandboxState_SANDBOX_NOTREADY,
		CreatedAt: nanos(sb.CreatedAt), Labels: cfg.Labels, Annotations: cfg.Annotations,
		RuntimeHandler: sb.RuntimeHandler,
		Linux: &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{
			Options: cfg.GetLinux().GetSecurityContext().GetNamespaceOptions(),
		}},
	}
	if sb.State == sandboxReady {
		st.State = runtimeapi.PodSandboxState_SANDBOX_READY
	}
	if len(sb.IPs) > 0 {
		st.Network = &runtimeapi.PodSandboxNetworkStatus{Ip: sb.IPs[0]}
		for _, ip := range sb.IPs[1:] {
			st.Network.AdditionalIps = append(st.Network.AdditionalIps, &runtimeapi.PodIP{Ip: ip})
		}
	}
	return st
}
