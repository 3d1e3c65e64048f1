#!/usr/bin/env bash
# run.sh RUNTIME OUTDIR [FOCUS]: the upstream end-to-end tests (e2e.test of
# berth's Kubernetes release) against a two-node cluster of hack/cluster on
# RUNTIME (berth or containerd), with the upstream test images of
# images.sh; the JUnit report and ginkgo's log go to OUTDIR/RUNTIME.
#
# FOCUS defaults to the [NodeConformance] specs. The specs this cluster
# cannot have are skipped by conformance/upstream/skip.txt, one pattern
# per line with its reason; nothing is skipped because berth fails it.
#
# It fails only when the tests could not run (cluster, images, no JUnit
# report); which failed specs matter is hack/upstream/results' call.
set -euo pipefail
runtime=${1:?usage: run.sh berth|containerd OUTDIR [FOCUS]}
out=${2:?usage: run.sh berth|containerd OUTDIR [FOCUS]}
focus=${3:-'\[NodeConformance\]'}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
K8S_BIN_DIR=${K8S_BIN_DIR:-$root/.cache/kubernetes}
PARALLEL=${PARALLEL:-4}
export K8S_BIN_DIR
export CLUSTER_DIR=${CLUSTER_DIR:-/var/lib/berth-upstream}
registry=10.210.0.1:5000
report=$out/$runtime
mkdir -p "$report"

cluster() { CLUSTER_RUNTIME=$runtime "$root/hack/cluster/cluster.sh" "$@"; }
trap 'cluster down >"$report/cluster-down.log" 2>&1 || echo "cluster down failed: see $report/cluster-down.log" >&2' EXIT
skip=$(grep -v '^\s*#' "$root/conformance/upstream/skip.txt" | grep -v '^\s*$' | sed 's/\s*#.*$//' | paste -sd'|')
# UPSTREAM_EXCLUDE narrows the run (upstream's node jobs leave out
# [Slow]|[Serial]|[Flaky]); unlike skip.txt it is a choice of what to run.
skip=$skip${UPSTREAM_EXCLUDE:+|$UPSTREAM_EXCLUDE}
# The specs this run selects, by e2e.test's own list.
"$K8S_BIN_DIR/e2e.test" --list-tests 2>/dev/null | sed 's/^ *[^ ]*: //' | grep -E -- "$focus" |
	{ if [ -n "$skip" ]; then grep -vE -- "$skip"; else cat; fi; } >"$report/selected.txt" || true
[ -s "$report/selected.txt" ] || { echo "upstream e2e on $runtime: focus $focus selects no spec" >&2; exit 1; }
# images.sh builds the images only some specs use for those selected.
export UPSTREAM_SELECTED=$report/selected.txt

cluster up 2 >"$report/cluster-up.log" 2>&1 || { tail -30 "$report/cluster-up.log" >&2; exit 1; }
"$here/images.sh" "$registry" >"$report/images.log" 2>&1 || { tail -30 "$report/images.log" >&2; exit 1; }

# Every registry the framework names is the cluster's; the invalid one is
# an address where nothing listens.
cat >"$report/repo-list.yaml" <<YAML
promoterE2eRegistry: $registry/e2e-test-images
buildImageRegistry: $registry/build-image
gcEtcdRegistry: $registry/k8s
gcRegistry: $registry/k8s
sigStorageRegistry: $registry/sig-storage
privateRegistry: $registry/private
dockerLibraryRegistry: $registry/library
cloudProviderGcpRegistry: $registry/cloud-provider-gcp
invalidRegistry: 10.210.0.1:5001/invalid
YAML
# ginkgo runs specs on PARALLEL processes; the [Serial] ones (a label
# as well as a tag) run after them on one, as the certification program
# runs them, in a second pass with its own report (junit-serial.xml).
# pass PHASE LABEL-FILTER PROCS REPORT: one ginkgo run.
pass() {
	local phase=$1 labels=$2 procs=$3 junit=$4
	echo "upstream e2e on $runtime ($phase): focus $focus${UPSTREAM_EXCLUDE:+, without $UPSTREAM_EXCLUDE}, $procs in parallel" >&2
	rm -f "$report/$junit"
	set +e
	KUBE_TEST_REPO_LIST=$report/repo-list.yaml "$K8S_BIN_DIR/ginkgo" -p --procs="$procs" \
		--focus="$focus" ${skip:+--skip="$skip"} --label-filter="$labels" --no-color --timeout=3h \
		${FLAKE_ATTEMPTS:+--flake-attempts="$FLAKE_ATTEMPTS"} \
		--junit-report="$junit" --output-dir="$report" \
		"$K8S_BIN_DIR/e2e.test" -- \
		--kubeconfig="$CLUSTER_DIR/kubeconfig" --provider=skeleton --kubectl-path="$K8S_BIN_DIR/kubectl" \
		--report-dir="$report" >"$report/ginkgo-$phase.log" 2>&1
	rc=$?
	set -e
	grep -E '^(Ran [0-9]+ of|FAIL!|SUCCESS!|Test Suite (Passed|Failed)|Ginkgo ran)' "$report/ginkgo-$phase.log" >&2 || tail -5 "$report/ginkgo-$phase.log" >&2
	[ -s "$report/$junit" ] || { echo "upstream e2e on $runtime ($phase): no JUnit report (ginkgo exit $rc): see $report/ginkgo-$phase.log" >&2; exit 1; }
	echo "upstream e2e on $runtime ($phase): ginkgo exit $rc, report in $report/$junit" >&2
}
rm -f "$report/junit-serial.xml"
pass parallel '!Serial' "$PARALLEL" junit.xml
if grep -q '\[Serial\]' "$report/selected.txt"; then
	pass serial 'Serial' 1 junit-serial.xml
fi
