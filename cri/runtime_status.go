package cri

import (
	"context"
	"errors"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/network"
	"github.com/berth-runtime/berth/runtime"
)

// Version names the runtime.
func (s *Server) Version(ctx context.Context, req *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{
		Version: "0.1.0", RuntimeName: "berth", RuntimeVersion: s.version, RuntimeApiVersion: criAPIVersion,
	}, nil
}

// criAPIVersion is the CRI version berth speaks.
const criAPIVersion = "v1"

// Status reports whether the runtime and the network are ready, and what
// berth supports.
func (s *Server) Status(ctx context.Context, req *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	netCond := &runtimeapi.RuntimeCondition{Type: runtimeapi.NetworkReady, Status: true}
	if err := s.net.Status(); err != nil {
		netCond.Status = false
		netCond.Reason = "NetworkPluginNotReady"
		if !errors.Is(err, network.ErrNotReady) {
			netCond.Reason = "NetworkPluginError"
		}
		netCond.Message = err.Error()
	}
	resp := &runtimeapi.StatusResponse{
		Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
			{Type: runtimeapi.RuntimeReady, Status: true},
			netCond,
		}},
		RuntimeHandlers: s.runtimeHandlers(),
		Features:        &runtimeapi.RuntimeFeatures{SupplementalGroupsPolicy: true, MountOptions: true},
	}
	if req.Verbose {
		cfg := s.cfg
		handlers := map[string]string{}
		for _, h := range s.distinctHandlers() {
			handlers[h.name] = h.version
		}
		resp.Info = map[string]string{
			"runtimeHandlers": jsonString(handlers),
			"config":          jsonString(cfg),
			"podCIDR":         s.currentPodCIDR(),
			"cgroups":         cgroups.HostMode().String(),
			"apparmor":        "not enabled on this node",
		}
		if s.apparmor {
			resp.Info["apparmor"] = "enabled; RuntimeDefault is " + runtime.DefaultAppArmorProfile
		}
	}
	return resp, nil
}

// recursiveReadOnlySupported: rro mounts need mount_setattr (Linux 5.12).
func recursiveReadOnlySupported() bool {
	err := unix.MountSetattr(-1, "", unix.AT_EMPTY_PATH, &unix.MountAttr{})
	return !errors.Is(err, unix.ENOSYS)
}

// runtimeHandlers lists every handler with what it supports.
func (s *Server) runtimeHandlers() []*runtimeapi.RuntimeHandler {
	var list []*runtimeapi.RuntimeHandler
	for _, n := range s.handlerNames() {
		list = append(list, &runtimeapi.RuntimeHandler{Name: n, Features: s.handlers[n].features})
	}
	return list
}
