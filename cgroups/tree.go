package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"slices"

	ocg "github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"
)

// newFsManager returns a cgroupfs manager for the cgroup at path, a path
// relative to the hierarchy roots as in an OCI cgroupsPath
// ("/kubepods/burstable/pod123"). Devices are never touched through it.
func newFsManager(path string) (ocg.Manager, error) {
	m, err := manager.New(&ocg.Cgroup{Path: path, Resources: &ocg.Resources{SkipDevices: true}})
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", path, err)
	}
	return m, nil
}

// Exists reports whether the cgroup at path exists in any hierarchy.
// (libcontainer's Manager.Exists looks at v1's devices hierarchy only,
// where a cgroup made with Create, which skips devices, never is.)
func Exists(path string) bool {
	dirs, err := existingDirs(path)
	return err == nil && len(dirs) > 0
}

// Pids returns every process in the cgroup at path and below it, in any
// hierarchy: a process is counted even where it left some of v1's.
func Pids(path string) ([]int, error) {
	dirs, err := existingDirs(path)
	if err != nil {
		return nil, err
	}
	seen := map[int]bool{}
	var pids []int
	for _, dir := range dirs {
		in, err := ocg.GetAllPids(dir)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed meanwhile
			}
			return nil, fmt.Errorf("cgroup %s: %w", path, err)
		}
		for _, pid := range in {
			if !seen[pid] {
				seen[pid] = true
				pids = append(pids, pid)
			}
		}
	}
	slices.Sort(pids)
	return pids, nil
}

// existingDirs is the cgroup's directory in each hierarchy it exists in
// (v2's one, or v1's several).
func existingDirs(path string) ([]string, error) {
	m, err := newFsManager(path)
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, dir := range m.GetPaths() {
		if dir != "" && ocg.PathExists(dir) && !slices.Contains(dirs, dir) {
			dirs = append(dirs, dir)
		}
	}
	slices.Sort(dirs)
	return dirs, nil
}

// Create makes the cgroup at path in every hierarchy (all of v1's, or the
// one of v2) without moving any process into it.
func Create(path string) error {
	m, err := newFsManager(path)
	if err != nil {
		return err
	}
	if err := m.Apply(-1); err != nil {
		return fmt.Errorf("create cgroup %s: %w", path, err)
	}
	return nil
}

// RemoveTree removes the cgroup at path and every cgroup below it, in
// every hierarchy. It fails while any process is still inside; a path
// that does not exist is not an error.
func RemoveTree(path string) error {
	m, err := newFsManager(path)
	if err != nil {
		return err
	}
	if err := m.Destroy(); err != nil {
		return fmt.Errorf("remove cgroup %s: %w", path, err)
	}
	return nil
}
