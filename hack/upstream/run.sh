#!/usr/bin/env bash
# run.sh RUNTIME OUTDIR [FOCUS]: the upstream end-to-end tests (e2e.test of
# berth's Kubernetes release) against a two-node cluster of hack/cluster on
# RUNTIME (berth or containerd), with the upstream test images of
# images.sh; the JUnit report and ginkgo's log go to OUTDIR/RUNTIME.
#
# FOCUS defaults to the [NodeConformance] specs. The specs this cluster
# cannot have are skipped by conformance/upstream/skip.txt, one pattern
# per line with its reason; nothing is skipped because berth fails it.
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
skip=$(grep -v '^\s*#' "$root/conformance/upstream/skip.txt" | grep -v '^\s*$' | sed 's/\s*#.*$//' | paste -sd'|')

echo "upstream e2e on $runtime: focus $focus, $PARALLEL in parallel" >&2
set +e
KUBE_TEST_REPO_LIST=$report/repo-list.yaml "$K8S_BIN_DIR/ginkgo" -p --procs="$PARALLEL" \
	--focus="$focus" ${skip:+--skip="$skip"} --no-color --timeout=2h \
	--junit-report=junit.xml --output-dir="$report" \
	"$K8S_BIN_DIR/e2e.test" -- \
	--kubeconfig="$CLUSTER_DIR/kubeconfig" --provider=skeleton \
	--report-dir="$report" >"$report/ginkgo.log" 2>&1
rc=$?
set -e
tail -5 "$report/ginkgo.log" >&2
exit $rc
