#!/usr/bin/env bash
# run.sh PLAN: boot the VM tier's Debian image (hack/vm/image.sh) and run
# the test plan hack/vm/plan.PLAN (or the plan file PLAN names) inside it
# (hack/vm/guest.sh); the guest
# powers itself off when the plan is done. The checkout is shared with the
# guest read-only over virtio-9p, at its own path; results come back in
# $VM_OUT (test2json streams, the guest's log and journal, the console).
# The guest has no network card. Exits non-zero when any run failed.
#
# Environment: VM_DIR (.cache/vm; each VM_DIR is a VM of its own: its
# image, disk, stage and results), VM_OUT ($VM_DIR/out), VM_MEM (MiB),
# VM_CPUS, VM_TIMEOUT (seconds for the whole boot and plan; default the
# plan's timeouts added up, and 10 minutes), VM_ACCEL (kvm or tcg;
# default: KVM where a stock kernel boots under it, else software
# emulation).
set -euo pipefail
plan=${1:?usage: run.sh PLAN}
repo=$(cd "$(dirname "$0")/../.." && pwd)
vm=${VM_DIR:-$repo/.cache/vm}
out=${VM_OUT:-$vm/out}
image=$vm/image
# The guest sees the checkout only: the stage (make vm-stage) is in it.
stage=$vm/stage
case "$stage" in "$repo"/*) ;; *) echo "run.sh: VM_DIR $vm is outside the checkout $repo, which is all the guest sees" >&2; exit 2 ;; esac
mem=${VM_MEM:-6144}
cpus=${VM_CPUS:-2}
planfile=$repo/hack/vm/plan.$plan
[ -f "$plan" ] && planfile=$plan
[ -f "$planfile" ] || { echo "run.sh: no plan hack/vm/plan.$plan" >&2; exit 2; }

# seconds DURATION: a plan's timeout (90s, 20m, 2h) in seconds.
seconds() {
	case "$1" in
	*h) echo $((${1%h} * 3600)) ;;
	*m) echo $((${1%m} * 60)) ;;
	*s) echo "${1%s}" ;;
	*) echo "run.sh: timeout $1: want s, m or h" >&2 && exit 2 ;;
	esac
}
timeout=${VM_TIMEOUT:-}
if [ -z "$timeout" ]; then
	timeout=600
	while read -r name _ t _; do
		case "$name" in '' | '#'*) continue ;; esac
		timeout=$((timeout + $(seconds "$t")))
	done <"$planfile"
fi

qemu_common() {
	echo -nographic -no-reboot -nic none -m "$mem" -smp "$cpus" \
		-kernel "$image/vmlinuz" -initrd "$image/initrd.img"
}

# KVM where it works: nested KVM on some hosts hangs or triple-faults a
# stock kernel before it prints a line, so a short boot decides, once per
# host kernel and qemu.
choose_accel() {
	if [ -n "${VM_ACCEL:-}" ]; then echo "$VM_ACCEL"; return; fi
	if ! [ -r /dev/kvm ] || ! [ -w /dev/kvm ]; then echo tcg; return; fi
	local key cache=$vm/accel
	key="$(uname -r) $(qemu-system-x86_64 --version | head -1) $(md5sum <"$image/vmlinuz" | cut -c1-8)"
	if [ -f "$cache" ] && [ "$(sed -n 1p "$cache")" = "$key" ]; then sed -n 2p "$cache"; return; fi
	local log=$vm/kvm-probe.log accel=tcg
	# shellcheck disable=SC2046
	timeout 30 qemu-system-x86_64 $(qemu_common) -accel kvm -cpu host \
		-append "console=ttyS0 panic=-1 init=/bin/false" >"$log" 2>&1 || true
	if grep -q 'Run /bin/false as init process\|Kernel panic' "$log"; then accel=kvm; fi
	printf '%s\n%s\n' "$key" "$accel" >"$cache"
	echo "$accel"
}

"$repo/hack/vm/image.sh" "$image"

rm -rf "$out"
mkdir -p "$out"
cp "$planfile" "$out/plan"
echo "$stage" >"$out/stage"
disk=$vm/run.qcow2
# Each run starts from the image as built: the guest writes to a
# copy-on-write layer that is thrown away.
qemu-img create -q -f qcow2 -b "$image/root.img" -F raw "$disk" 32G

accel=$(choose_accel)
echo "$accel" >"$out/accel"
accel_args=(-accel kvm -cpu host)
# One thread for all vCPUs was faster than multi-threaded TCG here.
[ "$accel" = kvm ] || accel_args=(-accel tcg,thread=single -cpu max)
echo "vm: plan $plan, $accel, $cpus vCPUs, $mem MiB; console in $out/console.log" >&2

start=$SECONDS
# shellcheck disable=SC2046
timeout -k 10 "$timeout" qemu-system-x86_64 $(qemu_common) "${accel_args[@]}" \
	-append "root=LABEL=berth-vm rw console=ttyS0 quiet panic=-1 berth.repo=$repo" \
	-drive "file=$disk,if=virtio,format=qcow2,cache=unsafe,discard=unmap" \
	-virtfs "local,path=$repo,mount_tag=repo,security_model=none,readonly=on" \
	-virtfs "local,path=$out,mount_tag=out,security_model=passthrough" \
	-serial "file:$out/console.log" -monitor none -display none </dev/null >"$out/qemu.log" 2>&1 &
qpid=$!
trap 'kill $qpid 2>/dev/null || true; wait $qpid 2>/dev/null || true; rm -f "$disk"' EXIT
# The guest's progress lines, as they come.
( tail -s 2 --pid=$qpid -F "$out/console.log" 2>/dev/null | grep --line-buffered -a 'berth-vm: ' | sed -u 's/^.*berth-vm: /vm: /' ) &
tpid=$!
qrc=0
wait $qpid || qrc=$?
wait $tpid 2>/dev/null || true
[ $qrc -ne 124 ] || echo "vm: timed out after $timeout s" >&2
echo "vm: guest ran $((SECONDS - start)) s" >&2

if [ ! -f "$out/rc" ]; then
	echo "vm: the guest did not finish its plan; the console's end:" >&2
	tail -n 40 "$out/console.log" >&2
	exit 1
fi
exit "$(cat "$out/rc")"
