#!/usr/bin/env bash
# deps-check.sh: every direct dependency of berth and of the tool modules
# in hack/ (CNI plugins, gotestsum, runtime-tools), and the builds the
# suites use (the Kubernetes release, containerd, runc), beside the
# newest version the Go module proxy serves today. Fails when a module
# berth requires is deprecated (a "// Deprecated:" line in its newest
# go.mod), or has moved to another path (the list below: the old path's
# last release carries no such line, and gets no fixes).
#
# Not part of make test: the proxy's answer changes by the day.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
unset GOFLAGS
status=0

# Paths whose projects moved, and where to: the containers libraries went
# to one repository in 2025 (go.podman.io).
moved=(
	"github.com/containers/image/v5 go.podman.io/image/v5"
	"github.com/containers/storage go.podman.io/storage"
	"github.com/containers/common go.podman.io/common"
)

# list DIR LABEL: a row per direct requirement of the module in DIR.
list() {
	local dir=$1 label=$2
	# The direct requirements first (no network), then the proxy asked
	# of those alone: asking of all would ask of modules it refuses.
	local direct
	direct=$(cd "$dir" && go list -m -f '{{if and (not .Main) (not .Indirect)}}{{.Path}}{{end}}' all)
	# shellcheck disable=SC2086
	(cd "$dir" && go list -e -m -u -f '{{.Path}}|{{.Version}}|{{with .Update}}{{.Version}}{{end}}|{{.Deprecated}}' $direct) |
		while IFS='|' read -r path version update deprecated; do
			[ -n "$path" ] || continue
			newest=${update:-$version}
			mark=""
			[ -n "$update" ] && mark="update"
			if [ -n "$deprecated" ]; then
				mark="DEPRECATED: $deprecated"
			fi
			printf '%-14s %-55s %-38s %-38s %s\n' "$label" "$path" "$version" "$newest" "$mark"
		done
}

printf '%-14s %-55s %-38s %-38s %s\n' "module" "requires" "version" "newest served" ""
list "$root" berth >"$root/.cache/deps-check.txt.tmp" 2>&1 || status=1
for m in checkpointctl cni-plugins gotestsum runtime-tools; do
	list "$root/hack/$m" "$m" >>"$root/.cache/deps-check.txt.tmp" 2>&1 || status=1
done

# The builds of hack/kubernetes and hack/containerd, by the version each
# chooses and the newest of its series.
newest() { go list -m -versions "$1" | tr ' ' '\n' | grep -E "^$2" | sort -V | tail -1; }
api=$(cd "$root" && go list -m -f '{{.Version}}' k8s.io/cri-api)
k8s=v1.${api#v0.}
minor=${k8s%.*}
printf '%-14s %-55s %-38s %-38s\n' build k8s.io/kubernetes "$k8s" "$(newest k8s.io/kubernetes "$minor\.[0-9]+$")" >>"$root/.cache/deps-check.txt.tmp"
printf '%-14s %-55s %-38s %-38s\n' build github.com/containerd/containerd/v2 "v2.4 series" "$(newest github.com/containerd/containerd/v2 'v2\.[0-9]+\.[0-9]+$')" >>"$root/.cache/deps-check.txt.tmp"
runc=$(cd "$root" && go list -m -f '{{.Version}}' github.com/opencontainers/runc)
printf '%-14s %-55s %-38s %-38s\n' build github.com/opencontainers/runc "$runc" "$(newest github.com/opencontainers/runc 'v1\.[0-9]+\.[0-9]+$')" >>"$root/.cache/deps-check.txt.tmp"

mv "$root/.cache/deps-check.txt.tmp" "$root/.cache/deps-check.txt"
cat "$root/.cache/deps-check.txt"
if grep -q 'DEPRECATED:' "$root/.cache/deps-check.txt"; then
	echo "deps-check: a required module is deprecated (above): move to its maintained path" >&2
	status=1
fi
for dir in "$root" "$root"/hack/*/; do
	[ -f "$dir/go.mod" ] || continue
	all=$(cd "$dir" && go list -m -f '{{.Path}}' all)
	label=$(basename "$dir")
	[ "$dir" = "$root" ] && label=berth
	for m in "${moved[@]}"; do
		if grep -qx "${m% *}" <<<"$all"; then
			echo "deps-check: $label requires ${m% *}, which moved to ${m#* } (its old path gets no fixes)" >&2
			status=1
		fi
	done
done
exit $status
