// Package version holds berth's one version, shown by every binary and
// reported to the kubelet as the runtime's version: a semantic version
// (the release in the repository's VERSION file) with the commit as build
// metadata, "0.1.0+3cf05eb", so that nodes show "berth://0.1.0+3cf05eb"
// as they show "containerd://2.4.2" (the kubelet parses it as semver).
package version

// Version is set by the Makefile:
// -X github.com/berth-runtime/berth/internal/version.Version=<VERSION>+<commit>.
var Version = "0.1.0+dev"
