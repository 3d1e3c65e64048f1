#!/usr/bin/env bash
# build.sh OUT: build checkpointctl from the Go module proxy into OUT (a
# file), unless OUT is already this version.
set -euo pipefail
out=${1:?usage: build.sh OUT}
cd "$(dirname "$0")"
unset GOFLAGS
version=$(go list -m -f '{{.Version}}' github.com/checkpoint-restore/checkpointctl)
if [ -x "$out" ] && [ -f "$out.version" ] && [ "$(cat "$out.version")" = "$version" ]; then
	exit 0
fi
echo "building checkpointctl $version into $out" >&2
mkdir -p "$(dirname "$out")"
CGO_ENABLED=0 go build -trimpath -o "$out" github.com/checkpoint-restore/checkpointctl
echo "$version" >"$out.version"
