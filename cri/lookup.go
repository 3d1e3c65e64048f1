package cri

import "strings"

// Ids may be given in full or as a unique prefix, as crictl users type
// them from its truncated output (containerd accepts the same).

func (s *Server) findSandbox(id string) (*sandbox, error) {
	if id == "" {
		return nil, invalidf("pod_sandbox_id is required")
	}
	if sb, ok := s.store.getSandbox(id); ok {
		return sb, nil
	}
	var match *sandbox
	for _, sb := range s.store.listSandboxes() {
		if strings.HasPrefix(sb.ID, id) {
			if match != nil {
				return nil, invalidf("pod sandbox id prefix %q is ambiguous", id)
			}
			match = sb
		}
	}
	if match == nil {
		return nil, notFoundf("pod sandbox %q", id)
	}
	return match, nil
}

func (s *Server) findContainer(id string) (*container, error) {
	if id == "" {
		return nil, invalidf("container_id is required")
	}
	if c, ok := s.store.getContainer(id); ok {
		return c, nil
	}
	var match *container
	for _, c := range s.store.listContainers() {
		if strings.HasPrefix(c.ID, id) {
			if match != nil {
				return nil, invalidf("container id prefix %q is ambiguous", id)
			}
			match = c
		}
	}
	if match == nil {
		return nil, notFoundf("container %q", id)
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
