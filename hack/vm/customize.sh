#!/usr/bin/env bash
# customize.sh ROOTFS: mmdebstrap's customize hook for the VM image. The
# guest boots to multi-user.target as a node would, then berth-vm.service
# mounts the host's shares (virtio-9p) and runs the host's plan from them
# (hack/vm/guest.sh, read from the share so that the image need not be
# rebuilt when the plan changes), then powers the guest off.
set -euo pipefail
root=${1:?usage: customize.sh ROOTFS}

echo berth-vm >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tberth-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
printf 'LABEL=berth-vm\t/\text4\trw,discard,errors=remount-ro\t0\t1\n' >"$root/etc/fstab"
# No network card: nothing resolves, nothing leaves.
: >"$root/etc/resolv.conf"
# A fresh node's image configuration: containers-common (which podman
# brings) installs these, a node without it has none.
rm -f "$root/etc/containers/registries.conf" "$root/etc/containers/policy.json"
# A console login for a person debugging the image (no network, no sshd).
chroot "$root" passwd -qd root

# What slows a boot or writes behind the suites' backs.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
	fstrim.timer man-db.timer dpkg-db-backup.timer podman-auto-update.timer \
	podman-restart.service podman-clean-transient.service; do
	ln -sf /dev/null "$root/etc/systemd/system/$u"
done

# The initramfs finds the root disk and the shares without probing.
printf 'virtio_pci\nvirtio_blk\n9pnet_virtio\n9p\n' >>"$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all >/dev/null

install -m 0755 /dev/stdin "$root/usr/local/sbin/berth-vm-run" <<'RUN'
#!/bin/sh
# Mount the host's shares and run its plan; power off whatever happens,
# so that the host's qemu ends.
arg() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" /proc/cmdline; }
repo=$(arg berth.repo)
opts=trans=virtio,version=9p2000.L,msize=1048576
run() {
	[ -n "$repo" ] || { echo "berth-vm: no berth.repo= on the kernel command line"; return 1; }
	mkdir -p "$repo" /mnt/out
	mount -t 9p -o "$opts,ro" repo "$repo" || return 1
	mount -t 9p -o "$opts" out /mnt/out || return 1
	"$repo/hack/vm/guest.sh" /mnt/out
}
run; rc=$?
echo "$rc" >/mnt/out/rc 2>/dev/null
sync
echo "berth-vm: done ($rc), powering off"
systemctl --no-block poweroff
RUN

cat >"$root/etc/systemd/system/berth-vm.service" <<'UNIT'
[Unit]
Description=berth VM tier: the host's test plan
After=multi-user.target
ConditionKernelCommandLine=berth.repo

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/berth-vm-run
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/berth-vm.service "$root/etc/systemd/system/multi-user.target.wants/berth-vm.service"
