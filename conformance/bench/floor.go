package bench

import (
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// floorSource is the physical floor of a container start: clone with new
// pid, mount, uts, ipc and network namespaces, chroot, exec. No cgroups,
// no mounts, no security: every runtime's figure is read against it.
//
//go:embed floorsrc/floor.c
var floorSource []byte

// BuildFloor compiles the floor program into dir with the machine's gcc.
func BuildFloor(dir string) (string, error) {
	src := filepath.Join(dir, "floor.c")
	if err := os.WriteFile(src, floorSource, 0o644); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "floor")
	out, err := exec.Command("gcc", "-O2", "-static", "-o", bin, src).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("gcc floor.c: %v: %s", err, out)
	}
	return bin, nil
}
