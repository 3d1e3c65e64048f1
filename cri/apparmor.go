package cri

import (
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-runtime/berth/runtime"
)

// apparmorProfile chooses a container's AppArmor profile, as containerd
// does: Unconfined is none; RuntimeDefault, and no choice at all
// (kubernetes#51746), is berth's default profile, loaded at the first
// container that needs it, except for privileged containers, which get
// none; Localhost is a profile the operator loaded (apparmor_parser),
// refused while the kernel does not have it. Where the kernel enforces
// no AppArmor, only Unconfined (or no choice) is accepted.
func (s *Server) apparmorProfile(sc *runtimeapi.LinuxContainerSecurityContext) (string, error) {
	sp := sc.GetApparmor()
	if sp == nil {
		sp = deprecatedAppArmor(sc.GetApparmorProfile())
	}
	if !s.apparmor {
		if sp != nil && sp.ProfileType != runtimeapi.SecurityProfile_Unconfined {
			return "", preconditionf("linux.security_context.apparmor: %s asked for, but AppArmor is not enabled on this node", sp.ProfileType)
		}
		return "", nil
	}
	if sp == nil {
		sp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
	}
	switch sp.ProfileType {
	case runtimeapi.SecurityProfile_Unconfined:
		return "", nil
	case runtimeapi.SecurityProfile_RuntimeDefault:
		if sc.GetPrivileged() {
			return "", nil
		}
		if err := runtime.LoadDefaultAppArmorProfile(); err != nil {
			return "", preconditionf("linux.security_context.apparmor: %v", err)
		}
		return runtime.DefaultAppArmorProfile, nil
	case runtimeapi.SecurityProfile_Localhost:
		name := strings.TrimPrefix(sp.LocalhostRef, "localhost/")
		loaded, err := runtime.AppArmorProfileLoaded(name)
		if err != nil {
			return "", err
		}
		if !loaded {
			return "", invalidf("linux.security_context.apparmor: AppArmor profile %q is not loaded on this node (load it with apparmor_parser)", name)
		}
		return name, nil
	}
	return "", invalidf("linux.security_context.apparmor: unknown profile type %d", sp.ProfileType)
}

// deprecatedAppArmor reads the apparmor_profile string of older kubelets
// ("runtime/default", "unconfined", "localhost/<name>"); nil for none.
func deprecatedAppArmor(p string) *runtimeapi.SecurityProfile {
	switch {
	case p == "":
		return nil
	case p == "unconfined":
		return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
	case strings.HasPrefix(p, "localhost/"):
		return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: strings.TrimPrefix(p, "localhost/")}
	}
	return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
}
