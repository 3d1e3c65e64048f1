package cri

import (
	"fmt"
	"slices"
	"sort"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
)

// newCDICache reads the CDI specs of the configured directories (device
// plugins and DRA drivers write them; vendors install them). It re-reads
// them before each injection instead of watching them: no inotify
// watcher per directory in berthd.
func newCDICache(dirs []string) (*cdi.Cache, error) {
	c, err := cdi.NewCache(cdi.WithSpecDirs(dirs...), cdi.WithAutoRefresh(false))
	if err != nil {
		return nil, fmt.Errorf("CDI spec directories %v: %w", dirs, err)
	}
	return c, nil
}

// cdiDeviceNames are the CDI devices a container asks for: the CRI's
// CDIDevices field (the kubelet's, for device plugins and DRA) and the
// cdi.k8s.io/ annotations (the older way), each once.
func cdiDeviceNames(cfg *runtimeapi.ContainerConfig) ([]string, error) {
	var names []string
	for i, d := range cfg.GetCDIDevices() {
		if _, _, _, err := parser.ParseQualifiedName(d.GetName()); err != nil {
			return nil, invalidf("CDI_devices[%d]: %v", i, err)
		}
		names = append(names, d.GetName())
	}
	_, fromAnnotations, err := cdi.ParseAnnotations(cfg.GetAnnotations())
	if err != nil {
		return nil, invalidf("annotations %s*: %v", cdi.AnnotationPrefix, err)
	}
	names = append(names, fromAnnotations...)
	sort.Strings(names)
	return slices.Compact(names), nil
}

// injectCDIDevices applies the edits of the container's CDI devices to
// its spec (device nodes with their cgroup rules, mounts, environment,
// hooks), as containerd and CRI-O do. A device no spec names is the
// request's error.
func (s *Server) injectCDIDevices(spec *specs.Spec, cfg *runtimeapi.ContainerConfig) error {
	names, err := cdiDeviceNames(cfg)
	if err != nil || len(names) == 0 {
		return err
	}
	// A broken spec file says so here; the others still serve.
	if err := s.cdi.Refresh(); err != nil {
		s.log.Warn("CDI specs with errors", "dirs", s.cfg.CDISpecDirs, "error", err)
	}
	unresolved, err := s.cdi.InjectDevices(spec, names...)
	if len(unresolved) > 0 {
		return invalidf("CDI devices %v: no CDI spec in %v names them", unresolved, s.cfg.CDISpecDirs)
	}
	if err != nil {
		return preconditionf("CDI devices %v: %v", names, err)
	}
	return nil
}
