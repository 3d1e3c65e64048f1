package cgroups

import (
	"fmt"

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

// Exists reports whether the cgroup at path exists.
func Exists(path string) bool {
	m, err := newFsManager(path)
	return err == nil && m.Exists()
}

// Pids returns every process in the cgroup at path and below it.
func Pids(path string) ([]int, error) {
	m, err := newFsManager(path)
	if err != nil {
		return nil, err
	}
	if !m.Exists() {
		return nil, nil
	}
	pids, err := m.GetAllPids()
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", path, err)
	}
	return pids, nil
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
