package image

import (
	"fmt"
	"regexp"
	"strings"

	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/docker"
	dockerarchive "go.podman.io/image/v5/docker/archive"
	"go.podman.io/image/v5/docker/reference"
	_ "go.podman.io/image/v5/oci/archive"
	_ "go.podman.io/image/v5/oci/layout"
	"go.podman.io/image/v5/pkg/shortnames"
	"go.podman.io/image/v5/transports"
	"go.podman.io/image/v5/types"
)

// transports berth pulls from. docker:// is the default for a bare name.
var transportPrefixes = []string{"docker://", "oci:", "oci-archive:", "docker-archive:"}

// candidate is one place to pull an image from, and the name to record
// it under.
type candidate struct {
	src  types.ImageReference
	name string // "" for a reference with no docker name (an OCI layout)
}

// Normalize returns the name Kubernetes knows an image by:
// "busybox" → "docker.io/library/busybox:latest", "repo@sha256:…" kept.
func Normalize(name string) (string, error) {
	named, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return "", withKind(ErrInvalidReference, fmt.Errorf("%q: %w", name, err))
	}
	return reference.TagNameOnly(named).String(), nil
}

// parseTransportRef parses "transport:reference" for the transports berth
// links in (only those: no docker-daemon, no containers-storage).
func parseTransportRef(name string) (types.ImageReference, error) {
	tname, rest, ok := strings.Cut(name, ":")
	if !ok {
		return nil, fmt.Errorf("%q has no transport prefix", name)
	}
	t := transports.Get(tname)
	if t == nil {
		return nil, fmt.Errorf("unsupported transport %q", tname)
	}
	return t.ParseReference(rest)
}

// archiveTag is the first tag a docker-archive records for its image.
func archiveTag(sys *types.SystemContext, ref types.ImageReference) string {
	if ref.Transport().Name() != "docker-archive" {
		return ""
	}
	r, _, err := dockerarchive.NewReaderForReference(sys, ref)
	if err != nil {
		return ""
	}
	defer r.Close()
	tags, err := r.ManifestTagsForReference(ref)
	if err != nil || len(tags) == 0 {
		return ""
	}
	n, err := Normalize(tags[0])
	if err != nil {
		return ""
	}
	return n
}

// hasTransport reports whether name starts with a transport prefix.
func hasTransport(name string) bool {
	for _, t := range transportPrefixes {
		if strings.HasPrefix(name, t) {
			return true
		}
	}
	return false
}

// pullCandidates lists where to pull name from, in order: the name
// itself if it has a transport or a registry; else short-name aliases and
// unqualified-search registries from registries.conf; else docker.io.
func pullCandidates(sys *types.SystemContext, name string) ([]candidate, error) {
	if hasTransport(name) {
		ref, err := parseTransportRef(name)
		if err != nil {
			return nil, withKind(ErrInvalidReference, fmt.Errorf("%q: %w", name, err))
		}
		c := candidate{src: ref}
		if named := ref.DockerReference(); named != nil {
			c.name = reference.TagNameOnly(named).String()
		} else if tag := archiveTag(sys, ref); tag != "" {
			// A `docker save` archive names its image, as `docker load`
			// would record it.
			c.name = tag
		}
		return []candidate{c}, nil
	}
	if strings.TrimSpace(name) == "" {
		return nil, withKind(ErrInvalidReference, fmt.Errorf("empty image name"))
	}
	var names []reference.Named
	if shortnames.IsShortName(name) {
		if resolved, err := shortnames.Resolve(sys, name); err == nil {
			for _, c := range resolved.PullCandidates {
				names = append(names, c.Value)
			}
		}
	}
	if len(names) == 0 {
		named, err := reference.ParseNormalizedNamed(name)
		if err != nil {
			return nil, withKind(ErrInvalidReference, fmt.Errorf("%q: %w", name, err))
		}
		names = append(names, reference.TagNameOnly(named))
	}
	out := make([]candidate, 0, len(names))
	for _, n := range names {
		ref, err := docker.NewReference(n)
		if err != nil {
			return nil, withKind(ErrInvalidReference, fmt.Errorf("%q: %w", n, err))
		}
		out = append(out, candidate{src: ref, name: n.String()})
	}
	return out, nil
}

var (
	hexID       = regexp.MustCompile(`^[a-f0-9]{64}$`)
	hexIDPrefix = regexp.MustCompile(`^[a-f0-9]{3,63}$`)
)

// lookupKeys are the ways a user's string can name a stored image: an
// image ID (full, or with sha256:), names in their normalized forms
// (docker.io, then registries.conf aliases and search registries), and an
// ID prefix as the last resort.
type lookupKeys struct {
	id       string   // full image ID, "sha256:<hex>"
	names    []string // names and repo digests
	idPrefix string   // hex prefix of an image ID
}

func keysFor(sys *types.SystemContext, s string) lookupKeys {
	var k lookupKeys
	switch {
	case strings.HasPrefix(s, "sha256:") && hexID.MatchString(s[7:]):
		k.id = s
		return k
	case hexID.MatchString(s):
		k.id = "sha256:" + s
		// A 64-hex string is also a valid (if odd) repository name.
	case hexIDPrefix.MatchString(s):
		k.idPrefix = s
	}
	if hasTransport(s) {
		if cands, err := pullCandidates(sys, s); err == nil && cands[0].name != "" {
			k.names = append(k.names, cands[0].name)
		}
		k.names = append(k.names, s)
		return k
	}
	if n, err := Normalize(s); err == nil {
		k.names = append(k.names, n)
	}
	if shortnames.IsShortName(s) {
		if local, err := shortnames.ResolveLocally(sys, s); err == nil {
			for _, n := range local {
				k.names = append(k.names, n.String())
			}
		}
	}
	return k
}

// repoDigest returns "repo@digest" for a recorded name.
func repoDigest(name string, d digest.Digest) string {
	named, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return ""
	}
	canonical, err := reference.WithDigest(reference.TrimNamed(named), d)
	if err != nil {
		return ""
	}
	return canonical.String()
}

// isDigested reports whether a recorded name is repo@digest rather than
// repo:tag.
func isDigested(name string) bool {
	named, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return false
	}
	_, ok := named.(reference.Canonical)
	return ok
}

// LocalTransport reports whether name reads from the node's file system
// ("oci:", "oci-archive:", "docker-archive:") rather than a registry.
// Such names must not come from a pod spec: they would let whoever writes
// one read the host's files through the runtime.
func LocalTransport(name string) bool {
	tname, _, ok := strings.Cut(name, ":")
	if !ok || strings.ContainsAny(tname, "./") {
		return false
	}
	t := transports.Get(tname)
	return t != nil && t.Name() != "docker"
}
