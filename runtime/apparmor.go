package runtime

import (
	"errors"
	"fmt"
	"os/exec"
	"sync"

	mobyapparmor "github.com/moby/profiles/apparmor"
	"github.com/opencontainers/runc/libcontainer/apparmor"
)

// DefaultAppArmorProfile is the name berth loads its default AppArmor
// profile under: the profile Docker, containerd (cri-containerd.apparmor.d)
// and Podman apply, from github.com/moby/profiles/apparmor.
const DefaultAppArmorProfile = "berth-default"

// AppArmorEnabled reports whether the kernel enforces AppArmor, so that
// a container's profile is applied (libcontainer's test).
func AppArmorEnabled() bool {
	return apparmor.IsEnabled()
}

// AppArmorProfileLoaded reports whether a profile of that name is loaded.
func AppArmorProfileLoaded(name string) (bool, error) {
	loaded, err := mobyapparmor.IsLoaded(name)
	if err != nil {
		return false, fmt.Errorf("apparmor profiles: %w", err)
	}
	return loaded, nil
}

var loadDefaultMu sync.Mutex

// LoadDefaultAppArmorProfile loads the default profile unless the kernel
// has it: once at the first container that needs it, and again should
// someone unload it (aa-teardown) meanwhile. It needs apparmor_parser.
func LoadDefaultAppArmorProfile() error {
	loadDefaultMu.Lock()
	defer loadDefaultMu.Unlock()
	loaded, err := AppArmorProfileLoaded(DefaultAppArmorProfile)
	if err != nil || loaded {
		return err
	}
	if _, err := exec.LookPath("apparmor_parser"); err != nil {
		return errors.New("the default AppArmor profile needs apparmor_parser to be loaded: install the apparmor package")
	}
	if err := mobyapparmor.InstallDefault(DefaultAppArmorProfile); err != nil {
		return fmt.Errorf("load the default AppArmor profile %s: %w", DefaultAppArmorProfile, err)
	}
	return nil
}
