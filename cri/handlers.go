package cri

import (
	"maps"
	"slices"

	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/runtime"
	"github.com/berth-runtime/berth/runtime/ocicli"
)

// Runtime handlers (a RuntimeClass's handler, the CRI's runtime_handler):
// berth's own runtime by default, and the OCI runtimes berth.toml names
// ([runtimes.NAME]: runc, crun, ...). A pod's shim creates its pause and
// containers with its handler's binary; berthd asks the same binary for
// the rest (ocicli), as containerd's runc shim and CRI-O do.

// ociContainer is what berthd asks of a created container's runtime.
type ociContainer interface {
	ID() string
	Status() (string, error)
	State() (*runtime.State, error)
	Exec() error
	Signal(unix.Signal) error
	Delete(force bool) error
	Update(*specs.LinuxResources) error
	Stats() (cgroups.Stats, error)
	CgroupPaths() map[string]string
	Processes() ([]int, error)
	Checkpoint(runtime.CheckpointOptions) error
}

// ociRuntime is a handler's runtime, as berthd uses it.
type ociRuntime interface {
	Load(id string) (ociContainer, error)
	List() ([]runtime.State, error)
	Remains(id string) (bool, error)
}

// nativeRuntime is berth's own runtime, in this process (libcontainer).
type nativeRuntime struct{ *runtime.Runtime }

func (n nativeRuntime) Load(id string) (ociContainer, error) {
	c, err := n.Runtime.Load(id)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// cliRuntime is another OCI runtime, through its command line.
type cliRuntime struct{ *ocicli.Runtime }

func (c cliRuntime) Load(id string) (ociContainer, error) {
	ct, err := c.Runtime.Load(id)
	if err != nil {
		return nil, err
	}
	return ct, nil
}

// handler is a configured runtime handler.
type handler struct {
	name string
	rt   ociRuntime
	// path and root are the binary and its --root the pod's shim runs.
	path, root string
	features   *runtimeapi.RuntimeHandlerFeatures
	// version names the runtime in Status's verbose info.
	version string
	// ociVersion, if set, replaces the specs' ociVersion.
	ociVersion string
}

// newHandlers makes berth's own handler ("" and "berth") and one for
// each [runtimes.NAME] of the configuration, asking each runtime what it
// supports (`features`, as containerd does): a runtime that cannot say
// gets neither recursive read-only mounts nor user namespaces.
func newHandlers(cfg *Config, native *runtime.Runtime, rro bool) map[string]*handler {
	own := &handler{
		name: defaultHandler, rt: nativeRuntime{native}, path: cfg.RuntimePath, root: cfg.runtimeRoot(),
		features: &runtimeapi.RuntimeHandlerFeatures{RecursiveReadOnlyMounts: rro, UserNamespaces: true},
		version:  "berth (built in)",
	}
	hs := map[string]*handler{"": own, defaultHandler: own}
	for name, rc := range cfg.Runtimes {
		cli := &ocicli.Runtime{Path: rc.Path, Root: rc.Root, SystemdCgroup: cgroups.Driver(cfg.CgroupDriver) == cgroups.Systemd}
		h := &handler{name: name, rt: cliRuntime{cli}, path: rc.Path, root: rc.Root, features: &runtimeapi.RuntimeHandlerFeatures{}, version: cli.Version(), ociVersion: rc.OCIVersion}
		if f, err := cli.Features(); err == nil {
			h.features.RecursiveReadOnlyMounts = rro && slices.Contains(f.MountOptions, "rro")
			if f.Linux != nil && slices.Contains(f.Linux.Namespaces, "user") && f.Linux.MountExtensions != nil &&
				f.Linux.MountExtensions.IDMap != nil && f.Linux.MountExtensions.IDMap.Enabled != nil && *f.Linux.MountExtensions.IDMap.Enabled {
				h.features.UserNamespaces = true
			}
		}
		hs[name] = h
	}
	return hs
}

// handlerNames are the handlers Status lists: "" (the default) first.
func (s *Server) handlerNames() []string { return slices.Sorted(maps.Keys(s.handlers)) }

// handlerFor is a RunPodSandbox's handler; an unknown one is the
// client's mistake.
func (s *Server) handlerFor(name string) (*handler, error) {
	h, ok := s.handlers[name]
	if !ok {
		known := s.handlerNames()[1:]
		return nil, invalidf("unknown runtime handler %q: berthd has %q (add others as [runtimes.NAME] in berth.toml)", name, known)
	}
	return h, nil
}

// podHandler is the handler of the pod podID (or of the pod of the
// container podID names): berth's own where the record is gone.
func (s *Server) podHandler(id string) *handler {
	if c, ok := s.store.getContainer(id); ok {
		id = c.PodID
	}
	if sb, ok := s.store.getSandbox(id); ok {
		if h, ok := s.handlers[sb.RuntimeHandler]; ok {
			return h
		}
	}
	return s.handlers[""]
}

// runtimes routes berthd's runtime calls to the handler of each
// container's pod (restart's recovery asks each handler itself).
type runtimes struct{ s *Server }

func (r runtimes) Load(id string) (ociContainer, error) { return r.s.podHandler(id).rt.Load(id) }

func (r runtimes) Remains(id string) (bool, error) { return r.s.podHandler(id).rt.Remains(id) }

// distinctHandlers are the handlers, berth's own once.
func (s *Server) distinctHandlers() []*handler {
	var hs []*handler
	for _, n := range s.handlerNames() {
		if h := s.handlers[n]; !slices.Contains(hs, h) {
			hs = append(hs, h)
		}
	}
	return hs
}
