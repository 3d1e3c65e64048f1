package runtime

import (
	"fmt"

	"github.com/opencontainers/runc/libcontainer/capabilities"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
)

// SpecVersion is the OCI runtime-spec version berth implements.
var SpecVersion = specs.Version

// SeccompVersion returns the linked libseccomp's version, or zeros when
// berth was built without seccomp support.
func SeccompVersion() (major, minor, micro uint) {
	return seccomp.Version()
}

// Features describes what this build supports, in the runtime-spec
// features.json schema (`runc features`). The cgroup fields say what the
// code handles, not what this host runs.
func Features(version string) *features.Features {
	t, f := true, false
	feat := &features.Features{
		OCIVersionMin: "1.0.0",
		OCIVersionMax: specs.Version,
		Annotations: map[string]string{
			"io.github.berth-runtime.berth.version":            version,
			"org.opencontainers.runc.checkpoint.enabled":       "false",
			"io.github.berth-runtime.berth.libcontainer.based": "true",
		},
		Hooks:        configs.KnownHookNames(),
		MountOptions: specconv.KnownMountOptions(),
		Linux: &features.Linux{
			Namespaces:   specconv.KnownNamespaces(),
			Capabilities: capabilities.KnownCapabilities(),
			Cgroup: &features.Cgroup{
				V1:          &t,
				V2:          &t,
				Systemd:     &t,
				SystemdUser: &f,
				Rdma:        &t,
			},
			Apparmor:        &features.Apparmor{Enabled: &t},
			Selinux:         &features.Selinux{Enabled: &t},
			IntelRdt:        &features.IntelRdt{Enabled: &t},
			MountExtensions: &features.MountExtensions{IDMap: &features.IDMap{Enabled: &t}},
		},
		PotentiallyUnsafeConfigAnnotations: []string{"bundle", "org.systemd.property."},
	}
	if seccomp.Enabled {
		feat.Linux.Seccomp = &features.Seccomp{
			Enabled:        &t,
			Actions:        seccomp.KnownActions(),
			Operators:      seccomp.KnownOperators(),
			Archs:          seccomp.KnownArchs(),
			KnownFlags:     seccomp.KnownFlags(),
			SupportedFlags: seccomp.SupportedFlags(),
		}
		major, minor, micro := seccomp.Version()
		feat.Annotations["io.github.seccomp.libseccomp.version"] = fmt.Sprintf("%d.%d.%d", major, minor, micro)
	}
	return feat
}
