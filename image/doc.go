// Package image is everything between a registry and a container's root
// filesystem: pulling images (go.podman.io/image/v5 for
// transports, registries.conf, credentials, signature policy and
// manifests), a content-addressed store under one root directory
// (metadata in bbolt, small blobs by digest, layers unpacked once per
// chain ID in overlayfs form), and overlay root filesystems for
// containers (shared read-only layers under one upper and work directory
// per container).
//
// A pull streams every missing layer at once: download, digest check,
// decompression and unpack run as one pipeline per layer, so that the
// slowest of them, not their sum, sets the pace. Layers already present
// (same chain ID) are neither downloaded nor unpacked again, and two
// pulls of the same image share one download.
package image
