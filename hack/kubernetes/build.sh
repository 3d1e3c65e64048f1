#!/usr/bin/env bash
# build.sh OUTDIR COMPONENT...: build Kubernetes components from the Go
# module proxy into OUTDIR, each unless that version is there already.
#
#   kubelet kubeadm kubectl kube-apiserver kube-controller-manager
#   kube-scheduler kube-proxy   from k8s.io/kubernetes at the release whose
#                               minor matches berth's k8s.io/cri-api
#   agnhost                     k8s.io/kubernetes/test/images/agnhost, the
#                               upstream end-to-end tests' image's program
#   sample-device-plugin        k8s.io/kubernetes/test/images/sample-device-plugin,
#                               the device plugin some [DRA] specs deploy
#   ginkgo                      the ginkgo CLI at the version k8s.io/kubernetes
#                               requires, which runs e2e.test in parallel
#   e2e.test                    the upstream end-to-end tests (go test -c of
#                               k8s.io/kubernetes/test/e2e)
#   etcd                        go.etcd.io/etcd/server/v3 at the version that
#                               release's kubeadm deploys
#   coredns                     github.com/coredns/coredns, likewise
#
# k8s.io/kubernetes (and etcd's server module) point their sibling modules
# at ./staging or ../ with replace directives, which do not apply to a
# module that requires them: a throwaway module here gets the same
# replaces, aimed at the published modules of the same release (v0.X.Y for
# v1.X.Y).
set -euo pipefail
out=${1:?usage: build.sh OUTDIR COMPONENT...}
shift
[ $# -gt 0 ] || { echo "usage: build.sh OUTDIR COMPONENT..." >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
unset GOFLAGS
api=$(cd "$root" && go list -m -f '{{.Version}}' k8s.io/cri-api)
version=v1.${api#v0.}
minor=${version#v1.}
minor=${minor%%.*}
mkdir -p "$out"
# (absolute: the builds run in a directory of their own)
out=$(cd "$out" && pwd)
# Each build's module directory is this process's: make test builds the
# upstream test binaries in the background while other targets call
# this script.
trap 'rm -rf "$out"/src-*."$$"' EXIT

# gomod MODULE@VERSION prints the path of that module's go.mod.
gomod() {
	local f
	f=$(go mod download -json "$1" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
	[ -f "$f" ] || { echo "$1: no go.mod from the module proxy" >&2; exit 1; }
	echo "$f"
}

# kubeadm's constants name the etcd and CoreDNS versions it deploys.
kubeadm_constant() {
	local dir
	dir=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
	sed -n "s/^\s*$1 = \"\(.*\)\"$/\1/p" "$dir/cmd/kubeadm/app/constants/constants.go"
}

# fresh NAME VERSION: true when OUTDIR/NAME is that version already.
fresh() {
	[ -x "$out/$1" ] && [ "$(cat "$out/.version-$1" 2>/dev/null)" = "$2" ]
}

# What the release build stamps in: components report it to each other
# (the kubelet to the runtime, kubeadm checks skew, e2e.test the cluster's).
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

k8s=()
want_etcd= want_coredns= want_e2e=
for c in "$@"; do
	case "$c" in
	kubelet | kubeadm | kubectl | kube-apiserver | kube-controller-manager | kube-scheduler | kube-proxy | agnhost | sample-device-plugin | ginkgo)
		fresh "$c" "$version" || k8s+=("$c")
		;;
	e2e.test) fresh e2e.test "$version" || want_e2e=1 ;;
	etcd) want_etcd=1 ;;
	coredns) want_coredns=1 ;;
	*)
		echo "build.sh: unknown component $c" >&2
		exit 2
		;;
	esac
done

# throwaway DIR MODULE: a module in DIR that requires MODULE@VERSION ($2)
# with the replaces of its go.mod turned into published versions.
throwaway() {
	local dir=$1 module=$2 v=$3 modfile goversion
	modfile=$(gomod "$module@$v")
	goversion=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$modfile")
	rm -rf "$dir"
	mkdir -p "$dir"
	{
		echo "module berth.local/build"
		echo
		echo "go $goversion"
		echo
		echo "require $module $v"
		echo
		echo "replace ("
		# k8s.io/kubernetes: ./staging/src/k8s.io/X => k8s.io/X v0.Y.Z
		sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/.*$#\t\1 => \1 v0.'"${v#v1.}"'#p' "$modfile"
		# etcd: go.etcd.io/etcd/X/v3 => ../X  =>  the same version
		sed -n 's#^\s*\(go.etcd.io/etcd/[a-z0-9/]*\) => \.\./.*$#\t\1 => \1 '"$v"'#p' "$modfile"
		echo ")"
	} >"$dir/go.mod"
}

if [ ${#k8s[@]} -gt 0 ]; then
	echo "building ${k8s[*]} $version into $out (first time: several minutes)" >&2
	work="$out/src-kubernetes.$$"
	throwaway "$work" k8s.io/kubernetes "$version"
	pkgs=()
	for c in "${k8s[@]}"; do
		case "$c" in
		agnhost | sample-device-plugin) pkgs+=("k8s.io/kubernetes/test/images/$c") ;;
		ginkgo) pkgs+=(github.com/onsi/ginkgo/v2/ginkgo) ;;
		*) pkgs+=("k8s.io/kubernetes/cmd/$c") ;;
		esac
	done
	# Static like the release binaries: the server components go into
	# images that hold nothing else.
	(cd "$work" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}")
	for c in "${k8s[@]}"; do echo "$version" >"$out/.version-$c"; done
	rm -rf "$work"
fi

if [ -n "$want_e2e" ]; then
	echo "building e2e.test $version into $out (first time: several minutes)" >&2
	work="$out/src-e2e.$$"
	throwaway "$work" k8s.io/kubernetes "$version"
	(cd "$work" && CGO_ENABLED=0 GOFLAGS=-mod=mod go test -c -trimpath -ldflags "$ldflags" -o "$out/e2e.test" k8s.io/kubernetes/test/e2e)
	echo "$version" >"$out/.version-e2e.test"
	rm -rf "$work"
fi

if [ -n "$want_etcd" ]; then
	tag=$(kubeadm_constant DefaultEtcdVersion) # 3.7.0-0
	v=v${tag%-*}
	if ! fresh etcd "$tag"; then
		echo "building etcd $v into $out" >&2
		work="$out/src-etcd.$$"
		throwaway "$work" go.etcd.io/etcd/server/v3 "$v"
		(cd "$work" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3)
		echo "$tag" >"$out/.version-etcd"
		rm -rf "$work"
	fi
fi

if [ -n "$want_coredns" ]; then
	tag=$(kubeadm_constant CoreDNSVersion) # v1.14.6
	if ! fresh coredns "$tag"; then
		echo "building coredns $tag into $out" >&2
		work="$out/src-coredns.$$"
		throwaway "$work" github.com/coredns/coredns "$tag"
		(cd "$work" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$out/coredns" github.com/coredns/coredns)
		echo "$tag" >"$out/.version-coredns"
		rm -rf "$work"
	fi
fi
