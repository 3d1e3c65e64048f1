package cri

import (
	"errors"
	"strings"
)

// Ids may be given in full or as a unique prefix, as crictl users type
// them from its truncated output (containerd accepts the same).

func (s *Server) findSandbox(id string) (*sandbox, error) {
	return findByID(id, "pod_sandbox_id", "pod sandbox", s.store.getSandbox, s.store.listSandboxes, func(sb *sandbox) string { return sb.ID })
}

func (s *Server) findContainer(id string) (*container, error) {
	return findByID(id, "container_id", "container", s.store.getContainer, s.store.listContainers, func(c *container) string { return c.ID })
}

// findByID finds a record by its full id, or else by a prefix that only
// it has.
func findByID[T any](id, field, kind string, get func(string) (*T, bool), list func() []*T, idOf func(*T) string) (*T, error) {
	if id == "" {
		return nil, invalidf("%s is required", field)
	}
	if v, ok := get(id); ok {
		return v, nil
	}
	var match *T
	for _, v := range list() {
		if strings.HasPrefix(idOf(v), id) {
			if match != nil {
				return nil, invalidf("%s id prefix %q is ambiguous", kind, id)
			}
			match = v
		}
	}
	if match == nil {
		return nil, notFoundf("%s %q", kind, id)
	}
	return match, nil
}

// matchLabels reports whether labels hold every selector pair.
func matchLabels(labels, selector map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// onSandbox and onContainer run f on the stored record an id (or a
// unique prefix) names, under the record's lock. An unknown id, or a
// record removed while the lock was awaited, is success: stop and remove
// are idempotent, as the CRI says.
func (s *Server) onSandbox(id string, f func(*sandbox) error) error {
	return onRecord(s, id, s.findSandbox, s.store.getSandbox, func(sb *sandbox) string { return sb.ID }, f)
}

func (s *Server) onContainer(id string, f func(*container) error) error {
	return onRecord(s, id, s.findContainer, s.store.getContainer, func(c *container) string { return c.ID }, f)
}

func onRecord[T any](s *Server, id string, find func(string) (*T, error), get func(string) (*T, bool), idOf func(*T) string, f func(*T) error) error {
	v, err := find(id)
	if errors.Is(err, errNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	full := idOf(v)
	unlock := s.locks.lock(full)
	defer unlock()
	if v, ok := get(full); ok {
		return f(v)
	}
	return nil
}
