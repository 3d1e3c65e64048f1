#!/usr/bin/env bash
# image.sh OUTDIR: the VM tier's Debian image, made from Debian's packages
# by mmdebstrap with the machine's own apt sources (no other download):
# OUTDIR/root.img (ext4), OUTDIR/vmlinuz and OUTDIR/initrd.img, the
# distribution kernel the image boots. Cached: a second run with the same
# recipe (this script and the package list) does nothing.
set -euo pipefail
out=${1:?usage: image.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
suite=${VM_SUITE:-bookworm}
size=${VM_IMAGE_SIZE:-6G}

# The node users run: systemd as PID 1 with D-Bus, the unified cgroup
# hierarchy (systemd 252's default), AppArmor on, the distribution kernel.
# The rest is what berth's suites drive (hack/install-deps.sh test), gcc
# for the static test programs the CRI suite builds, and make for the
# install target it tries.
pkgs=(systemd systemd-sysv dbus udev linux-image-amd64 initramfs-tools
	apparmor apparmor-utils kmod procps util-linux e2fsprogs iproute2 iptables
	busybox-static docker-registry runc crun criu skopeo umoci podman psmisc curl
	ca-certificates libseccomp2 conntrack ethtool socat gcc libc6-dev make)

recipe=$( (cat "$0" "$here/customize.sh"; echo "$suite $size ${pkgs[*]}") | sha256sum | cut -c1-16)
# One build at a time: make test starts one in the background, and the
# tier's own run waits for it here.
mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
flock 9
if [ -f "$out/root.img" ] && [ "$(cat "$out/.recipe" 2>/dev/null)" = "$recipe" ]; then
	exit 0
fi

for c in mmdebstrap mkfs.ext4 qemu-img; do
	command -v "$c" >/dev/null || { echo "image.sh: $c missing (hack/install-deps.sh vm)" >&2; exit 1; }
done

# The machine's apt sources, as apt reads them: whatever mirror works for
# apt here works for the image.
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
	[ -s "$f" ] && grep -qE '^[[:space:]]*(deb |Types:)' "$f" && sources+=("$f")
done
[ ${#sources[@]} -gt 0 ] || { echo "image.sh: no apt sources on this machine" >&2; exit 1; }

work=$(mktemp -d "${out%/}.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
echo "vm image: mmdebstrap $suite (${#pkgs[@]} packages) into $out (once per machine)" >&2
start=$SECONDS
mmdebstrap --quiet --variant=apt --components=main \
	--include="$(IFS=,; echo "${pkgs[*]}")" \
	--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--customize-hook="$here/customize.sh \"\$1\"" \
	"$suite" "$rootfs" "${sources[@]}"

mkdir -p "$out"
cp -L "$rootfs/vmlinuz" "$work/vmlinuz"
cp -L "$rootfs/initrd.img" "$work/initrd.img"
# Sparse: the file takes what the tree takes; the guest grows it.
mkfs.ext4 -q -F -L berth-vm -d "$rootfs" "$work/root.img" "$size"
mv "$work/vmlinuz" "$work/initrd.img" "$work/root.img" "$out/"
echo "$recipe" >"$out/.recipe"
echo "vm image: built in $((SECONDS - start)) s ($(du -sh --apparent-size "$out/root.img" | cut -f1) apparent, $(du -sh "$out/root.img" | cut -f1) used)" >&2
