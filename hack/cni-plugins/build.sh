#!/usr/bin/env bash
# build.sh OUTDIR: build the standard CNI plugins from the Go module proxy
# (no other download) into OUTDIR, unless OUTDIR already holds this
# version of every one of them.
set -euo pipefail
out=${1:?usage: build.sh OUTDIR}
cd "$(dirname "$0")"
# Not berth's build tags or flags: this is another module.
unset GOFLAGS
version=$(go list -m -f '{{.Version}}' github.com/containernetworking/plugins)
plugins=(ipam/host-local main/bridge main/loopback meta/bandwidth meta/firewall meta/portmap meta/tuning)
complete=1
for p in "${plugins[@]}"; do
	[ -x "$out/$(basename "$p")" ] || complete=0
done
if [ "$complete" = 1 ] && [ -f "$out/.berth-cni-version" ] && [ "$(cat "$out/.berth-cni-version")" = "$version" ]; then
	exit 0
fi
echo "building CNI plugins $version into $out" >&2
mkdir -p "$out"
pkgs=()
for p in "${plugins[@]}"; do
	pkgs+=("github.com/containernetworking/plugins/plugins/$p")
done
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$version" -o "$out/" "${pkgs[@]}"
echo "$version" >"$out/.berth-cni-version"
