#!/usr/bin/env bash
# build.sh OUT: build gotestsum from the Go module proxy into OUT (a
# file), unless OUT is already this version.
set -euo pipefail
out=${1:?usage: build.sh OUT}
cd "$(dirname "$0")"
unset GOFLAGS
version=$(go list -m -f '{{.Version}}' gotest.tools/gotestsum)
if [ -x "$out" ] && [ -f "$out.version" ] && [ "$(cat "$out.version")" = "$version" ]; then
	exit 0
fi
echo "building gotestsum $version into $out" >&2
mkdir -p "$(dirname "$out")"
CGO_ENABLED=0 go build -trimpath -o "$out" gotest.tools/gotestsum
echo "$version" >"$out.version"
