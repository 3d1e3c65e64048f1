#!/bin/bash
# guest.sh OUT: runs inside the VM (berth-vm.service, from the host's
# read-only share of the checkout), as root on a booted systemd node.
# Copies the host's builds onto the guest's own disk, prepares the node
# (swap), then runs every line of OUT/plan, one test binary each, its
# test2json stream into OUT/<name>.json for the host to report; progress
# lines go to the console, which the host shows.
set -uo pipefail
out=${1:?usage: guest.sh OUT}
repo=$(cd "$(dirname "$0")/../.." && pwd)
say() { echo "berth-vm: $*" >/dev/console; echo "berth-vm: $*"; }

exec >>"$out/guest.log" 2>&1
say "guest up after $(cut -d' ' -f1 /proc/uptime) s: $(uname -r), systemd $(systemctl --version | sed -n '1s/systemd \([0-9]*\).*/\1/p'), cgroup $(stat -fc %T /sys/fs/cgroup), apparmor $(cat /sys/module/apparmor/parameters/enabled 2>/dev/null || echo no)"
{
	echo "== uname"; uname -a
	echo "== cgroup.controllers"; cat /sys/fs/cgroup/cgroup.controllers
	echo "== systemctl is-system-running"; systemctl is-system-running
	echo "== failed units"; systemctl --failed --no-legend
	echo "== aa-status"; aa-status 2>&1 | head -5
	echo "== free"; free -m
} >"$out/node.txt" 2>&1

# Builds onto the guest's disk: libcontainer re-executes the runtime, and
# the suites compare binaries and mount trees; a 9p path is neither a
# node's nor fast. Each is copied when a run first needs it.
opt=/opt/berth stage=$(cat "$out/stage")
mkdir -p "$opt"
need() {
	for p in "$@"; do
		[ -e "$opt/$p" ] || { mkdir -p "$(dirname "$opt/$p")" && cp -a "$stage/$p" "$opt/$p"; } || return 1
	done
}
need bin cni-bin test2json checkpointctl

# Swap, for the kubelet's LimitedSwap: a file, as a node would have one.
if [ ! -e /swapfile ]; then
	fallocate -l 1G /swapfile && chmod 600 /swapfile && mkswap -q /swapfile && swapon /swapfile
fi

# Under emulation the tests whose timing matters wait longer.
[ "$(cat "$out/accel" 2>/dev/null)" = tcg ] && export BERTH_TEST_TIME_SCALE=5
export BERTH_BIN_DIR=$opt/bin BERTH_CNI_BIN=$opt/cni-bin BERTH_RUNTIME_TOOLS=$opt/runtime-tools BERTH_CHECKPOINTCTL=$opt/checkpointctl \
	BERTH_KUBELET=$opt/kubernetes/kubelet PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

rc=0
# plan lines: NAME PACKAGE TIMEOUT [VAR=value ...] -- [test flags ...];
# a value under /opt/berth (BERTH_BIN_DIR=/opt/berth/bin-old, say) is a
# part of the stage, copied for the run.
while read -r name pkg timeout rest; do
	case "$name" in '' | '#'*) continue ;; esac
	env=() args=()
	set -- $rest
	while [ $# -gt 0 ] && [ "$1" != -- ]; do
		# A value under /opt/berth names a part of the stage to copy.
		case "${1#*=}" in /opt/berth/*) need "${1#*=/opt/berth/}" ;; esac
		env+=("$1")
		shift
	done
	[ "${1:-}" = -- ] && shift
	args=("$@")
	bin=$opt/tests/$(basename "$pkg").test
	start=$SECONDS
	need "tests/$(basename "$pkg").test"
	case "$pkg" in
	conformance/oci) need runtime-tools ;;
	conformance/kubelet) need kubernetes/kubelet ;;
	esac
	say "run $name (${args[*]})"
	(cd "$repo/$pkg" && env "${env[@]}" timeout -k 30 "$timeout" \
		"$opt/test2json" -t -p "vm/$name" "$bin" -test.v=test2json -test.count=1 -test.timeout="$timeout" "${args[@]}") \
		>"$out/$name.json" 2>"$out/$name.stderr"
	r=$?
	pass=$(grep -c '"Action":"pass","Package":"[^"]*","Test"' "$out/$name.json")
	fail=$(grep -c '"Action":"fail","Package":"[^"]*","Test"' "$out/$name.json")
	skip=$(grep -c '"Action":"skip","Package":"[^"]*","Test"' "$out/$name.json")
	say "$name: exit $r after $((SECONDS - start)) s ($pass passed, $fail failed, $skip skipped)"
	[ $r -eq 0 ] || rc=1
done <"$out/plan"
journalctl -b --no-pager -o short-monotonic >"$out/journal.txt" 2>&1
exit $rc
