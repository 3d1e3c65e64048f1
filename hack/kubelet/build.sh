#!/usr/bin/env bash
# build.sh OUTDIR: build the kubelet from the k8s.io/kubernetes Go module
# whose minor matches the k8s.io/cri-api berth uses, into OUTDIR/kubelet,
# unless that version is there already. Only the Go module proxy is used.
#
# k8s.io/kubernetes points its k8s.io/* staging modules at ./staging with
# replace directives, which do not apply to a module that requires it: a
# throwaway module here gets the same replaces, aimed at the published
# staging modules of the same release (v0.X.Y for v1.X.Y).
set -euo pipefail
out=${1:?usage: build.sh OUTDIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
unset GOFLAGS
api=$(cd "$root" && go list -m -f '{{.Version}}' k8s.io/cri-api)
version=v1.${api#v0.}
if [ -x "$out/kubelet" ] && [ "$(cat "$out/.berth-kubelet-version" 2>/dev/null)" = "$version" ]; then
	exit 0
fi
echo "building kubelet $version into $out (first time: several minutes)" >&2
mkdir -p "$out"
work="$out/src"
rm -rf "$work"
mkdir -p "$work"
modfile=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
[ -f "$modfile" ] || { echo "k8s.io/kubernetes@$version: no go.mod from the module proxy" >&2; exit 1; }
goversion=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$modfile")
{
	echo "module berth.local/kubelet-build"
	echo
	echo "go $goversion"
	echo
	echo "require k8s.io/kubernetes $version"
	echo
	echo "replace ("
	sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/.*$#\t\1 => \1 v0.'"${version#v1.}"'#p' "$modfile"
	echo ")"
} >"$work/go.mod"
cat >"$work/tools.go" <<GO
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kubelet"
GO
cd "$work"
minor=${version#v1.}
minor=${minor%%.*}
ldflags="-s -w"
# What the release build stamps in: the kubelet reports it to the runtime
# and in its logs.
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$out/kubelet" k8s.io/kubernetes/cmd/kubelet
echo "$version" >"$out/.berth-kubelet-version"
rm -rf "$work"
