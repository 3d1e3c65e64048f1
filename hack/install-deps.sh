#!/usr/bin/env bash
# install-deps.sh: install the Debian packages a stage needs, only if missing.
#
#   hack/install-deps.sh build   what `make build` needs (C headers for cgo)
#   hack/install-deps.sh test    + what the end-to-end tests drive
#   hack/install-deps.sh bench   + the peers the benchmarks compare with
#   hack/install-deps.sh vm      + what makes and boots the VM tier's image
#
# Everything comes from Debian's package registry; nothing is downloaded
# from anywhere else. Safe to run again: a stage that is complete costs
# one dpkg-query.
set -euo pipefail

stage=${1:-build}

build_pkgs=(libseccomp-dev pkg-config gcc libc6-dev make)
test_pkgs=(busybox-static runc crun criu podman iproute2 iptables procps psmisc
	docker-registry skopeo util-linux kmod curl debootstrap e2fsprogs)
bench_pkgs=(crun umoci)
vm_pkgs=(qemu-system-x86 qemu-utils mmdebstrap)

pkgs=("${build_pkgs[@]}")
case "$stage" in
build) ;;
test) pkgs+=("${test_pkgs[@]}") ;;
bench) pkgs+=("${test_pkgs[@]}" "${bench_pkgs[@]}") ;;
vm) pkgs+=("${test_pkgs[@]}" "${vm_pkgs[@]}") ;;
*)
	echo "usage: $0 build|test|bench|vm" >&2
	exit 2
	;;
esac

missing=()
for p in "${pkgs[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: missing packages ${missing[*]}; run as root to install them" >&2
	exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Package managers in a fresh VM: retry once with a refreshed index.
apt-get update -qq >/dev/null
# podman would otherwise pull in a systemd-managed network stack and start
# services; the tests only use it with --network none.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
