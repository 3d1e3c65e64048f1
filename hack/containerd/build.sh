#!/usr/bin/env bash
# build.sh OUTDIR: containerd (the newest v2.4.x release: containerd,
# containerd-shim-runc-v2, ctr) and runc, from the Go module proxy into
# OUTDIR, unless those versions are there already. berth's peers in the
# upstream tests and the benchmarks. runc is the newer of the release
# containerd pins (script/setup/runc-version) and the one berth's
# libcontainer comes from: runc's patch releases carry security fixes,
# and the peer should have them as berth does.
set -euo pipefail
out=${1:?usage: build.sh OUTDIR}
unset GOFLAGS
series=${CONTAINERD_SERIES:-v2.4}
version=$(go list -m -versions github.com/containerd/containerd/v2 | tr ' ' '\n' | grep "^$series\.[0-9]*$" | sort -V | tail -1)
[ -n "$version" ] || { echo "no containerd $series.x on the module proxy" >&2; exit 1; }
dir=$(go mod download -json "github.com/containerd/containerd/v2@$version" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
runc=$(cat "$dir/script/setup/runc-version")
berth_runc=$(cd "$(dirname "$0")/../.." && go list -m -f '{{.Version}}' github.com/opencontainers/runc)
runc=$(printf '%s\n%s\n' "$runc" "$berth_runc" | sort -V | tail -1)
want="containerd $version runc $runc"
if [ -x "$out/containerd" ] && [ -x "$out/runc" ] && [ "$(cat "$out/.version" 2>/dev/null)" = "$want" ]; then
	exit 0
fi
echo "building containerd $version and runc $runc into $out" >&2
mkdir -p "$out"
# containerd's own release tags: no snapshotters this node has no use for.
tags="no_btrfs no_devmapper no_zfs"
ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$version"
GOBIN=$out CGO_ENABLED=0 go install -trimpath -tags "$tags" -ldflags "$ldflags" \
	"github.com/containerd/containerd/v2/cmd/containerd@$version" \
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$version" \
	"github.com/containerd/containerd/v2/cmd/ctr@$version"
# runc as its release is built: seccomp through libseccomp (cgo).
GOBIN=$out go install -trimpath -tags seccomp -ldflags "-s -w -X main.version=${runc#v}" \
	"github.com/opencontainers/runc@$runc"
echo "$want" >"$out/.version"
