package cri

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/internal/shim"
	"github.com/berth-runtime/berth/runtime"
)

// StopPodSandbox kills every process of the pod and releases its network.
// An unknown or stopped sandbox is success.
func (s *Server) StopPodSandbox(ctx context.Context, req *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	if req.GetPodSandboxId() == "" {
		return nil, toStatus(invalidf("pod_sandbox_id is required"))
	}
	sb, err := s.findSandbox(req.GetPodSandboxId())
	if err != nil {
		if errors.Is(err, errNotFound) {
			return &runtimeapi.StopPodSandboxResponse{}, nil
		}
		return nil, toStatus(err)
	}
	unlock := s.locks.lock(sb.ID)
	defer unlock()
	sb, ok := s.store.getSandbox(sb.ID)
	if !ok {
		return &runtimeapi.StopPodSandboxResponse{}, nil
	}
	if err := s.stopSandboxLocked(ctx, sb); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

// stopSandboxLocked stops a sandbox whose lock the caller holds; running
// it again finishes what a failed or interrupted run left.
func (s *Server) stopSandboxLocked(ctx context.Context, sb *sandbox) error {
	log := s.log.With("pod", sb.ID, "name", sb.Name)
	if !sb.Stopping {
		sb.Stopping = true
		if err := s.store.putSandbox(sb); err != nil {
			return err
		}
	}
	for _, c := range s.store.podContainers(sb.ID) {
		if err := s.stopContainer(ctx, c.ID, 0); err != nil {
			return fmt.Errorf("stop container %s: %w", c.ID, err)
		}
	}
	if err := s.stopPause(sb); err != nil {
		return err
	}
	if sb.CNIAdded {
		if err := s.net.Teardown(ctx, s.networkPod(sb, sb.config)); err != nil {
			return fmt.Errorf("tear down pod network: %w", err)
		}
		sb.CNIAdded = false
		if err := s.store.putSandbox(sb); err != nil {
			return err
		}
	}
	if sb.NetNS != "" {
		if err := s.net.RemoveNetNS(sb.NetNS); err != nil {
			return fmt.Errorf("remove network namespace: %w", err)
		}
		sb.NetNS = ""
	}
	wasReady := sb.State == sandboxReady
	if sb.State != sandboxRemoving {
		sb.State = sandboxNotReady
	}
	sb.Stopping = false
	if err := s.store.putSandbox(sb); err != nil {
		return err
	}
	// Nothing of the pod runs any more: its shim may go.
	s.shims.stop(ctx, sb.ID)
	if wasReady {
		log.Info("pod sandbox stopped")
		s.emit(sb.ID, sb.ID, runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT)
	}
	return nil
}

// stopPause kills the pause process and waits until it is gone.
func (s *Server) stopPause(sb *sandbox) error {
	rc, err := s.rt.Load(sb.ID)
	if err != nil {
		if errors.Is(err, runtime.ErrNotExist) {
			return nil
		}
		return err
	}
	s.killAll(rc)
	ctx, cancel := context.WithTimeout(context.Background(), killWait)
	defer cancel()
	if _, err := s.shimFor(sb.ID).Wait(ctx, sb.ID, ""); err != nil && !errors.Is(err, shim.ErrUnavailable) && !errors.Is(err, shim.ErrNotFound) {
		return fmt.Errorf("stop pause process: %w", err)
	}
	// Without a shim to wait on, wait for the kernel.
	for ctx.Err() == nil {
		if st, err := rc.Status(); err != nil || st == runtime.StatusStopped {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return errors.New("pause process did not die")
}

// RemovePodSandbox removes a pod and everything in it, stopping it first.
// An unknown sandbox is success.
func (s *Server) RemovePodSandbox(ctx context.Context, req *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	if req.GetPodSandboxId() == "" {
		return nil, toStatus(invalidf("pod_sandbox_id is required"))
	}
	sb, err := s.findSandbox(req.GetPodSandboxId())
	if err != nil {
		if errors.Is(err, errNotFound) {
			return &runtimeapi.RemovePodSandboxResponse{}, nil
		}
		return nil, toStatus(err)
	}
	unlock := s.locks.lock(sb.ID)
	defer unlock()
	sb, ok := s.store.getSandbox(sb.ID)
	if !ok {
		return &runtimeapi.RemovePodSandboxResponse{}, nil
	}
	if err := s.removeSandboxLocked(ctx, sb); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.RemovePodSandboxResponse{}, nil
}

func (s *Server) removeSandboxLocked(ctx context.Context, sb *sandbox) error {
	sb.State = sandboxRemoving
	if err := s.store.putSandbox(sb); err != nil {
		return err
	}
	if err := s.stopSandboxLocked(ctx, sb); err != nil {
		return err
	}
	for _, c := range s.store.podContainers(sb.ID) {
		if err := s.removeContainer(ctx, c.ID); err != nil {
			return fmt.Errorf("remove container %s: %w", c.ID, err)
		}
	}
	s.deleteRuntimeContainer(sb.ID)
	s.removePodDir(sb)
	if parent := sb.CgroupParent; parent == s.defaultPodCgroupParent(sb.ID) {
		if err := removePodCgroup(s.cfg.CgroupDriver, parent); err != nil {
			return fmt.Errorf("remove pod cgroup %s: %w", parent, err)
		}
	}
	if err := s.store.releaseName("pod:"+sb.Name, sb.ID); err != nil {
		return err
	}
	// The DELETED event carries the pod's last status: the record is
	// gone once it is sent.
	var last *runtimeapi.PodSandboxStatus
	if s.events.subscribers() > 0 {
		last = s.sandboxStatus(sb)
	}
	if err := s.store.deleteSandbox(sb.ID); err != nil {
		return err
	}
	s.stats.forget(sb.ID)
	s.log.Info("pod sandbox removed", "pod", sb.ID, "name", sb.Name)
	if last != nil {
		s.publish(&runtimeapi.ContainerEventResponse{ContainerId: sb.ID, PodSandboxStatus: last,
			ContainerEventType: runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT, CreatedAt: time.Now().UnixNano()})
	}
	return nil
}

// removePodCgroup removes the pod cgroup berth made when the kubelet gave
// none (with the kubelet, the kubelet owns pod cgroups).
func removePodCgroup(driver, parent string) error {
	if cgroups.Driver(driver) == cgroups.Systemd {
		// systemd removes an empty transient slice itself.
		return nil
	}
	return cgroups.RemoveTree(parent)
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

// ListPodSandbox lists sandboxes matching every filter field.
func (s *Server) ListPodSandbox(ctx context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	return &runtimeapi.ListPodSandboxResponse{Items: s.listSandboxes(req.GetFilter())}, nil
}

func (s *Server) listSandboxes(f *runtimeapi.PodSandboxFilter) []*runtimeapi.PodSandbox {
	var out []*runtimeapi.PodSandbox
	for _, sb := range s.store.listSandboxes() {
		if sb.State == sandboxCreating {
			continue
		}
		st := s.sandboxStatus(sb)
		if f != nil {
			if f.Id != "" && !strings.HasPrefix(sb.ID, f.Id) {
				continue
			}
			if f.State != nil && f.State.State != st.State {
				continue
			}
			if !matchLabels(sb.config.Labels, f.LabelSelector) {
				continue
			}
		}
		out = append(out, &runtimeapi.PodSandbox{
			Id: sb.ID, Metadata: st.Metadata, State: st.State, CreatedAt: st.CreatedAt,
			Labels: st.Labels, Annotations: st.Annotations, RuntimeHandler: sb.RuntimeHandler,
		})
	}
	return out
}

// StreamPodSandboxes sends the list in chunks.
func (s *Server) StreamPodSandboxes(req *runtimeapi.StreamPodSandboxesRequest, stream runtimeapi.RuntimeService_StreamPodSandboxesServer) error {
	list := s.listSandboxes(req.GetFilter())
	for len(list) > 0 {
		n := min(len(list), streamChunk)
		if err := stream.Send(&runtimeapi.StreamPodSandboxesResponse{PodSandboxes: list[:n]}); err != nil {
			return err
		}
		list = list[n:]
	}
	return nil
}

// UpdatePodSandboxResources records the pod-level resources the kubelet
// has already applied to the pod cgroup (best effort, as the CRI says).
func (s *Server) UpdatePodSandboxResources(ctx context.Context, req *runtimeapi.UpdatePodSandboxResourcesRequest) (*runtimeapi.UpdatePodSandboxResourcesResponse, error) {
	if _, err := s.findSandbox(req.GetPodSandboxId()); err != nil {
		return nil, toStatus(err)
	}
	if err := validateResources("resources", req.GetResources()); err != nil {
		return nil, toStatus(err)
	}
	if err := validateResources("overhead", req.GetOverhead()); err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.UpdatePodSandboxResourcesResponse{}, nil
}

func mustJSON(v any) []byte {
	data, err := json.Marshal(v)
	if err != nil {
		return []byte("null")
	}
	return data
}

// jsonRaw embeds JSON as is in a verbose info document.
type jsonRaw []byte

func (j jsonRaw) MarshalJSON() ([]byte, error) {
	if !json.Valid(j) {
		return json.Marshal(string(j))
	}
	return j, nil
}

func jsonString(v any) string { return string(mustJSON(v)) }
