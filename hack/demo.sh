#!/usr/bin/env bash
# demo.sh: make a busybox bundle and run a container from it with berth,
# the way a person new to berth would.
set -euo pipefail
berth=${1:-bin/berth}
dir=$(mktemp -d /tmp/berth-demo.XXXXXX)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/rootfs/bin"
cp /bin/busybox "$dir/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do
	[ "$a" = busybox ] || ln -s busybox "$dir/rootfs/bin/$a"
done
cat >"$dir/rootfs/demo.sh" <<'SH'
echo "hello from a berth container: hostname $(hostname), pid $$"
grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status
echo "network interfaces: $(ls /sys/class/net | tr '\n' ' ')"
SH
"$berth" spec --bundle "$dir"
# A non-interactive process, so that the demo runs without a terminal too.
sed -i 's/"terminal": true/"terminal": false/; s/"sh"$/"sh", "\/demo.sh"/' "$dir/config.json"
echo "+ berth run --bundle $dir demo-$$"
"$berth" run --bundle "$dir" "demo-$$"
