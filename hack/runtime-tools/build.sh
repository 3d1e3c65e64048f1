#!/usr/bin/env bash
# build.sh OUTDIR: build the OCI runtime-tools validation programs, the
# runtimetest binary they copy into bundles, and their rootfs tarball,
# from the Go module proxy (no other download). Skipped if OUTDIR is
# complete for this module version.
set -euo pipefail
out=${1:?usage: build.sh OUTDIR}
cd "$(dirname "$0")"
version=$(go list -m -f '{{.Version}}' github.com/opencontainers/runtime-tools)
if [ -f "$out/.version" ] && [ "$(cat "$out/.version")" = "$version" ]; then
	exit 0
fi
mkdir -p "$out"
# go list -m leaves .Dir empty until the module is in the cache: fetch it.
go mod download github.com/opencontainers/runtime-tools
src=$(go list -m -f '{{.Dir}}' github.com/opencontainers/runtime-tools)
[ -n "$src" ] || { echo "build.sh: runtime-tools module not found" >&2; exit 1; }
echo "building runtime-tools $version validation suite into $out" >&2
go build -o "$out/" github.com/opencontainers/runtime-tools/validation/...
CGO_ENABLED=0 go build -o "$out/runtimetest" github.com/opencontainers/runtime-tools/cmd/runtimetest
install -m 0644 "$src/rootfs-amd64.tar.gz" "$out/rootfs-amd64.tar.gz"
echo "$version" >"$out/.version"
