package cri

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"k8s.io/apimachinery/pkg/util/validation"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/berth-runtime/berth/cgroups"
	"github.com/berth-runtime/berth/image"
)

// Config is berthd's configuration: /etc/berth/berth.toml, every key
// optional, flags on top. Its TOML keys are the field tags.
type Config struct {
	// Root holds images, layers and the metadata database.
	Root string `toml:"root"`
	// State holds sockets, runtime state, shims' files and network
	// namespace mounts; it should be a tmpfs.
	State string `toml:"state"`
	// Socket is the CRI gRPC socket.
	Socket string `toml:"socket"`
	// SocketGroup, if set, owns the socket (mode 0660).
	SocketGroup string `toml:"socket_group"`

	// CgroupDriver is cgroupfs or systemd, as the kubelet's.
	CgroupDriver string `toml:"cgroup_driver"`
	// CgroupParent holds the cgroups of pods that come without one of
	// their own (the kubelet always gives one): a path for cgroupfs, a
	// slice for systemd.
	CgroupParent string `toml:"cgroup_parent"`

	// RuntimePath, ShimPath and PausePath are the berth binaries; by
	// default found next to berthd's own binary, then in $PATH.
	RuntimePath string `toml:"runtime_path"`
	ShimPath    string `toml:"shim_path"`
	PausePath   string `toml:"pause_path"`

	// CNIConfDir and CNIBinDirs are where CNI configs and plugins are.
	CNIConfDir string   `toml:"cni_conf_dir"`
	CNIBinDirs []string `toml:"cni_bin_dirs"`
	// CNIConfTemplate, if the file exists, is rendered into CNIConfDir
	// when the kubelet sets the node's pod CIDR, as containerd's
	// conf_template (`make install` installs a bridge network's).
	CNIConfTemplate string `toml:"cni_conf_template"`
	// CNITimeout bounds each CNI plugin call.
	CNITimeout Duration `toml:"cni_timeout"`

	// Image pulls: registries.conf, its drop-in directory, auth.json and
	// the signature policy. A registries.conf or policy missing at its
	// default path means the defaults; one named elsewhere must exist.
	RegistriesConf    string `toml:"registries_conf"`
	RegistriesConfDir string `toml:"registries_conf_dir"`
	AuthFile          string `toml:"auth_file"`
	PolicyFile        string `toml:"signature_policy"`
	// PullProgressInterval is how often pulls log their progress.
	PullProgressInterval Duration `toml:"pull_progress_interval"`

	// LogLevel is debug, info, warn or error; LogFormat text or json.
	LogLevel  string `toml:"log_level"`
	LogFormat string `toml:"log_format"`

	// MetricsAddress serves Prometheus /metrics there; empty: off.
	MetricsAddress string `toml:"metrics_address"`
	// StreamAddress is the exec/attach/port-forward server's address;
	// port 0 picks one. Loopback unless you mean it.
	StreamAddress string `toml:"stream_address"`
	// StreamIdleTimeout closes idle streams.
	StreamIdleTimeout Duration `toml:"stream_idle_timeout"`

	// DefaultCapabilities replaces the containerd default capability set.
	DefaultCapabilities []string `toml:"default_capabilities"`
	// SeccompProfile is a JSON profile used for RuntimeDefault instead of
	// the built-in Docker/containerd default.
	SeccompProfile string `toml:"seccomp_profile"`
	// DenyDeviceNodes refuses image layers that contain device nodes.
	DenyDeviceNodes bool `toml:"deny_device_nodes"`
	// CDISpecDirs are where CDI specs are read from, the later ones
	// taking precedence (device plugins and DRA drivers write to
	// /var/run/cdi).
	CDISpecDirs []string `toml:"cdi_spec_dirs"`

	// LazyPull serves the layers of eStargz images from their registry
	// as containers read them ([lazy_pull]).
	LazyPull LazyPullConfig `toml:"lazy_pull"`

	// Runtimes are runtime handlers besides berth's own ("berth", and
	// the default ""): OCI runtimes such as runc or crun, by the name a
	// RuntimeClass's handler gives ([runtimes.runc]).
	Runtimes map[string]RuntimeConfig `toml:"runtimes"`
}

// LazyPullConfig is [lazy_pull]: with it on, a pull of an eStargz image
// ends once each eStargz layer's table of contents is read; berth-lazy
// serves the layers' files over FUSE, fetching each from the registry on
// first read and the rest in the background, and berthd unpacks each
// layer once it is local. Other images pull as usual.
type LazyPullConfig struct {
	// Enabled is on by default. Left at its default, it turns itself
	// off (with a warning at start) on a node without /dev/fuse or
	// without berth-lazy; set explicitly, those are errors.
	Enabled bool `toml:"enabled"`
	// Registries are the registries (host[:port], as image names
	// give them) whose images are pulled lazily; empty means all.
	Registries []string `toml:"registries"`
	// HelperPath is the berth-lazy binary; by default found next to
	// berthd's own binary, then in $PATH.
	HelperPath string `toml:"helper_path"`

	// explicit is whether the file set enabled.
	explicit bool
	// offBecause is why lazy pulling, on by default, is off.
	offBecause string
}

// RuntimeConfig is a runtime handler's OCI runtime.
type RuntimeConfig struct {
	// Path is the runtime's binary (runc's command line: create, start,
	// state, kill, delete, exec, update, ps, list, features); a bare
	// name is looked up in $PATH.
	Path string `toml:"runtime_path"`
	// Root is its state directory (--root); by default
	// <state>/runtimes/<name>.
	Root string `toml:"runtime_root"`
	// OCIVersion, if set, is the ociVersion of the specs berthd writes
	// for the handler, for a runtime that refuses the newer one berth
	// writes (crun before 1.9 takes 1.0 and 1.1 only).
	OCIVersion string `toml:"oci_version"`
}

// Duration is a time.Duration written as "10s" in TOML.
type Duration struct{ time.Duration }

// UnmarshalText parses "1m30s".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText writes "1m30s".
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// DefaultConfigPath is where berthd looks for its configuration.
const DefaultConfigPath = "/etc/berth/berth.toml"

// DefaultConfig returns the configuration with every default filled in.
func DefaultConfig() Config {
	return Config{
		Root:                 "/var/lib/berth",
		State:                "/run/berth",
		Socket:               "/run/berth/berth.sock",
		CgroupDriver:         string(defaultDriver()),
		CNIConfDir:           "/etc/cni/net.d",
		CNIBinDirs:           []string{"/opt/cni/bin", "/usr/lib/cni"},
		CNIConfTemplate:      "/etc/berth/cni-bridge.conflist.template",
		CNITimeout:           Duration{time.Minute},
		RegistriesConf:       image.DefaultRegistriesConf,
		RegistriesConfDir:    image.DefaultRegistriesConfDir,
		PolicyFile:           image.DefaultPolicyFile,
		PullProgressInterval: Duration{5 * time.Second},
		LogLevel:             "info",
		LogFormat:            "text",
		StreamAddress:        "127.0.0.1:0",
		StreamIdleTimeout:    Duration{4 * time.Hour},
		CDISpecDirs:          slices.Clone(cdi.DefaultSpecDirs),
		LazyPull:             LazyPullConfig{Enabled: true},
	}
}

// defaultDriver is systemd where systemd runs the host, as the kubelet
// recommends, and cgroupfs elsewhere.
func defaultDriver() cgroups.Driver {
	if cgroups.SystemdRunning() {
		return cgroups.Systemd
	}
	return cgroups.Cgroupfs
}

// LoadConfig reads a TOML file over the defaults. A missing file at the
// default path is fine; a missing file named explicitly, a syntax error,
// or an unknown key is an error.
func LoadConfig(path string, explicit bool) (Config, error) {
	cfg := DefaultConfig()
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !explicit {
			return cfg, nil
		}
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	md, err := toml.Decode(string(data), &cfg)
	if err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return cfg, fmt.Errorf("config %s: unknown keys: %s", path, strings.Join(keys, ", "))
	}
	cfg.LazyPull.explicit = md.IsDefined("lazy_pull", "enabled")
	return cfg, nil
}

// Validate checks the configuration and fills in binary paths.
func (c *Config) Validate() error {
	if _, err := cgroups.ParseDriver(c.CgroupDriver); err != nil {
		return err
	}
	if err := cgroups.Driver(c.CgroupDriver).Check(); err != nil {
		return err
	}
	if c.CgroupParent == "" {
		c.CgroupParent = "/berth"
		if cgroups.Driver(c.CgroupDriver) == cgroups.Systemd {
			c.CgroupParent = "berth.slice"
		}
	}
	parent, err := cgroups.Driver(c.CgroupDriver).PodParent(c.CgroupParent)
	if err != nil {
		return fmt.Errorf("cgroup_parent: %w", err)
	}
	c.CgroupParent = parent
	for name, p := range map[string]string{"root": c.Root, "state": c.State, "socket": c.Socket} {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("%s %q must be an absolute path", name, p)
		}
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.LogLevel) {
		return fmt.Errorf("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("log_format %q: want text or json", c.LogFormat)
	}
	for _, b := range []struct {
		field *string
		name  string
	}{{&c.RuntimePath, "berth"}, {&c.ShimPath, "berth-shim"}, {&c.PausePath, "pause"}} {
		if *b.field == "" {
			if *b.field, err = findBinary(b.name); err != nil {
				return err
			}
		} else if _, err := os.Stat(*b.field); err != nil {
			return fmt.Errorf("%s binary: %w", b.name, err)
		}
		// The shim runs the runtime by its path, from "/".
		if *b.field, err = filepath.Abs(*b.field); err != nil {
			return fmt.Errorf("%s binary: %w", b.name, err)
		}
	}
	if err := c.validateLazyPull(); err != nil {
		return err
	}
	return c.validateRuntimes()
}

// validateLazyPull checks [lazy_pull] and finds berth-lazy when it is on.
func (c *Config) validateLazyPull() error {
	lp := &c.LazyPull
	if !lp.Enabled {
		return nil
	}
	for _, r := range lp.Registries {
		if r == "" || strings.ContainsAny(r, "/@ ") {
			return fmt.Errorf("lazy_pull.registries: %q is not a registry's host[:port]", r)
		}
	}
	var err error
	if lp.HelperPath == "" {
		lp.HelperPath, err = findBinary("berth-lazy")
	} else {
		_, err = os.Stat(lp.HelperPath)
	}
	if err == nil {
		err = fuseDevice()
	}
	if err != nil {
		if lp.explicit {
			return fmt.Errorf("lazy_pull: %w", err)
		}
		lp.Enabled, lp.offBecause = false, err.Error()
		return nil
	}
	lp.HelperPath, err = filepath.Abs(lp.HelperPath)
	return err
}

// fuseDevice checks that FUSE file systems can be served here: nodes in
// containers (kind's) often have no /dev/fuse.
func fuseDevice() error {
	fi, err := os.Stat("/dev/fuse")
	if err != nil {
		return fmt.Errorf("FUSE: %w", err)
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		return errors.New("FUSE: /dev/fuse is not a character device")
	}
	return nil
}

// validateRuntimes checks the [runtimes.NAME] handlers and fills in
// their paths and roots.
func (c *Config) validateRuntimes() error {
	for name, rc := range c.Runtimes {
		if name == defaultHandler || len(validation.IsDNS1123Label(name)) > 0 {
			return fmt.Errorf("runtimes.%s: a handler's name is a DNS label (a RuntimeClass's handler), and not %q", name, defaultHandler)
		}
		if rc.Path == "" {
			return fmt.Errorf("runtimes.%s: runtime_path is required", name)
		}
		p, err := exec.LookPath(rc.Path)
		if err != nil {
			return fmt.Errorf("runtimes.%s: %w", name, err)
		}
		if rc.Path, err = filepath.Abs(p); err != nil {
			return fmt.Errorf("runtimes.%s: %w", name, err)
		}
		if rc.Root == "" {
			rc.Root = filepath.Join(c.State, "runtimes", name)
		}
		if !filepath.IsAbs(rc.Root) {
			return fmt.Errorf("runtimes.%s: runtime_root %q must be an absolute path", name, rc.Root)
		}
		c.Runtimes[name] = rc
	}
	return nil
}

// findBinary looks next to this executable, then in libexec, then $PATH.
func findBinary(name string) (string, error) {
	if self, err := os.Executable(); err == nil {
		dir := filepath.Dir(self)
		for _, p := range []string{filepath.Join(dir, name), filepath.Join(dir, "..", "libexec", "berth", name)} {
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
				return p, nil
			}
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s binary not found next to berthd or in $PATH; install it (make install) or set its path in the config", name)
}

// String renders the configuration as TOML (`berthd config`).
func (c Config) String() string {
	var b bytes.Buffer
	enc := toml.NewEncoder(&b)
	if err := enc.Encode(c); err != nil {
		return "# " + err.Error()
	}
	return b.String()
}

// path helpers for the state directory.
func (c *Config) runtimeRoot() string     { return filepath.Join(c.State, "runtime") }
func (c *Config) netnsDir() string        { return filepath.Join(c.State, "netns") }
func (c *Config) podDir(id string) string { return filepath.Join(c.State, "pods", id) }
func (c *Config) containerDir(id string) string {
	return filepath.Join(c.State, "containers", id)
}
