package cri

import "strings"

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
