package runtime

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	// Lets the cgroup managers write device rules (v1 devices.allow,
	// v2 eBPF); without it libcontainer refuses to start containers.
	_ "github.com/opencontainers/cgroups/devices"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-runtime/berth/cgroups"
)

// Options configures a Runtime.
type Options struct {
	// Root is the state directory, one subdirectory per container. It
	// should be on a tmpfs (/run/...), as containers do not survive a
	// reboot.
	Root string
	// CgroupDriver selects cgroupfs or systemd management of the
	// containers' cgroups.
	CgroupDriver cgroups.Driver
	// Logger receives warnings (clamped oom_score_adj, ...). Nil means
	// slog.Default().
	Logger *slog.Logger
}

// Runtime creates and finds the containers under one state directory.
// It is safe for concurrent use by several goroutines, and several
// processes may share a root as runc processes do: libcontainer keeps all
// state in files.
type Runtime struct {
	root   string
	driver cgroups.Driver
	log    *slog.Logger
}

// New checks the options and returns a Runtime.
func New(o Options) (*Runtime, error) {
	if o.Root == "" {
		return nil, errors.New("runtime: state root not set")
	}
	root, err := filepath.Abs(o.Root)
	if err != nil {
		return nil, fmt.Errorf("runtime: state root %s: %w", o.Root, err)
	}
	if root == "/" {
		return nil, errors.New("runtime: state root must not be /")
	}
	driver := o.CgroupDriver
	if driver == "" {
		driver = cgroups.Cgroupfs
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Runtime{root: root, driver: driver, log: log}, nil
}

// Root returns the state directory.
func (r *Runtime) Root() string { return r.root }

// CreateOptions describe a container to create from a bundle.
type CreateOptions struct {
	// Bundle is the bundle directory; relative paths in the spec are
	// resolved against it.
	Bundle string
	// Spec is the bundle's spec; nil loads Bundle/config.json.
	Spec *specs.Spec
	// NoPivotRoot uses MS_MOVE+chroot instead of pivot_root, for a rootfs
	// on a ramdisk.
	NoPivotRoot bool
	// NoNewKeyring keeps the caller's session keyring.
	NoNewKeyring bool
}

// Create records a new container; nothing runs until a process is
// started with Start or Run. Create fails without leaving anything behind.
func (r *Runtime) Create(id string, o CreateOptions) (*Container, error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	bundle, err := filepath.Abs(o.Bundle)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", o.Bundle, err)
	}
	spec := o.Spec
	if spec == nil {
		if spec, err = LoadSpec(bundle); err != nil {
			return nil, err
		}
	} else if err := ValidateSpec(spec, bundle); err != nil {
		return nil, fmt.Errorf("bundle %s: %w", bundle, err)
	}
	if _, err := os.Stat(filepath.Join(r.root, id)); err == nil {
		return nil, withKind(ErrExist, fmt.Errorf("container %s already exists", id))
	}
	spec = resolvePaths(spec, bundle)
	RestrictOOMScoreAdj(spec, r.log)
	if err := checkDriverPath(r.driver, spec); err != nil {
		return nil, err
	}
	config, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		CgroupName:       id,
		UseSystemdCgroup: r.driver == cgroups.Systemd,
		NoPivotRoot:      o.NoPivotRoot,
		NoNewKeyring:     o.NoNewKeyring,
		Spec:             spec,
	})
	if err != nil {
		return nil, withKind(ErrInvalidSpec, fmt.Errorf("container %s: %w", id, err))
	}
	// specconv records the working directory as the bundle; the bundle
	// is what the caller named, whatever its working directory.
	for i, l := range config.Labels {
		if strings.HasPrefix(l, "bundle=") {
			config.Labels[i] = "bundle=" + bundle
		}
	}
	c, err := libcontainer.Create(r.root, id, config)
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, translate(err))
	}
	return &Container{c: c, rt: r}, nil
}

// resolvePaths returns a copy of spec whose rootfs and bind-mount sources
// are absolute, so that nothing depends on the process's working
// directory (the shim creates containers of many bundles at once).
func resolvePaths(spec *specs.Spec, bundle string) *specs.Spec {
	s := *spec
	root := *s.Root
	if !filepath.IsAbs(root.Path) {
		root.Path = filepath.Join(bundle, root.Path)
	}
	s.Root = &root
	s.Mounts = slices.Clone(spec.Mounts)
	for i, m := range s.Mounts {
		if m.Source != "" && !filepath.IsAbs(m.Source) && isBind(m) {
			s.Mounts[i].Source = filepath.Join(bundle, m.Source)
		}
	}
	return &s
}

func isBind(m specs.Mount) bool {
	if m.Type == "bind" {
		return true
	}
	return slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}

// checkDriverPath rejects a cgroupsPath that the chosen driver cannot
// parse, before libcontainer would fail half-way.
func checkDriverPath(d cgroups.Driver, spec *specs.Spec) error {
	if err := d.Check(); err != nil {
		return err
	}
	if spec.Linux == nil || spec.Linux.CgroupsPath == "" {
		return nil
	}
	p := spec.Linux.CgroupsPath
	if d == cgroups.Systemd && strings.Count(p, ":") != 2 {
		return withKind(ErrInvalidSpec, fmt.Errorf("cgroupsPath %q: the systemd driver expects slice:prefix:name", p))
	}
	if d == cgroups.Cgroupfs && strings.Contains(p, ":") {
		return withKind(ErrInvalidSpec, fmt.Errorf("cgroupsPath %q looks like a systemd slice:prefix:name; use --systemd-cgroup or a path", p))
	}
	return nil
}

// Load returns the container with the id.
func (r *Runtime) Load(id string) (*Container, error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	c, err := libcontainer.Load(r.root, id)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, translate(err))
	}
	return &Container{c: c, rt: r}, nil
}

// Remains removes the state directory of a container whose creation was
// cut short before libcontainer wrote its state (runc delete does the
// same); it returns whether there was anything to remove.
func (r *Runtime) Remains(id string) (bool, error) {
	if err := ValidateID(id); err != nil {
		return false, err
	}
	dir := filepath.Join(r.root, id)
	if _, err := os.Stat(filepath.Join(dir, "state.json")); err == nil {
		return false, nil
	}
	if _, err := os.Stat(dir); err != nil {
		return false, nil
	}
	return true, os.RemoveAll(dir)
}

// List returns the state of every container under the root. A root that
// does not exist yet holds no containers. Containers that cannot be read
// (being deleted at this moment) are skipped.
func (r *Runtime) List() ([]State, error) {
	entries, err := os.ReadDir(r.root)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var states []State
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		c, err := r.Load(e.Name())
		if err != nil {
			continue
		}
		st, err := c.State()
		if err != nil {
			continue
		}
		states = append(states, *st)
	}
	return states, nil
}

// ValidateID accepts the ids libcontainer accepts (letters, digits, _ + -
// .), so that a bad id gets one clear message before any work is done.
func ValidateID(id string) error {
	if id == "" {
		return withKind(ErrInvalidSpec, errors.New("container id cannot be empty"))
	}
	if id == "." || id == ".." || len(id) > 1024 {
		return withKind(ErrInvalidSpec, fmt.Errorf("invalid container id %q", id))
	}
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '_' || c == '+' || c == '-' || c == '.':
		default:
			return withKind(ErrInvalidSpec, fmt.Errorf("invalid container id %q: only letters, digits and _ + - . are allowed", id))
		}
	}
	return nil
}

// owner names the user owning a state directory, as `runc list` does.
func owner(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	uid := strconv.Itoa(int(st.Uid))
	if u, err := user.LookupId(uid); err == nil {
		return u.Username
	}
	return "#" + uid
}
