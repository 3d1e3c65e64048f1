#!/usr/bin/env bash
# package.sh tarball|deb OUTDIR: berth as operators install it.
#
#   tarball  berth-<version>-linux-<arch>.tar.gz and SHA256SUMS, laid out as
#            containerd's cri-containerd-cni release (extract at /):
#            usr/local/bin (the five binaries), opt/cni/bin (the CNI
#            plugins built by hack/cni-plugins), etc/systemd/system/
#            berthd.service, etc/berth/berth.toml (every key, commented
#            out), etc/berth/cni-bridge.conflist.template and
#            etc/cni/net.d/10-berth-bridge.conflist, and the manual pages in
#            usr/local/share/man/man8.
#   deb      berth_<version>_<arch>.deb built with dpkg-deb: /usr/bin,
#            /lib/systemd/system/berthd.service, /etc/berth as conffiles,
#            the manual pages in /usr/share/man/man8 (gzipped, as Debian's
#            policy asks), and a postinst that neither starts nor enables
#            berthd.
#
# Environment: BIN_DIR (built binaries), CNI_BIN (plugins, tarball only),
# VERSION (0.1.0+3cf05eb), MAN_DIR (the pages of make docs; generated
# here when unset).
set -euo pipefail
kind=${1:?usage: package.sh tarball|deb OUTDIR}
out=${2:?usage: package.sh tarball|deb OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
BIN_DIR=${BIN_DIR:-$root/bin}
CNI_BIN=${CNI_BIN:-$root/.cache/cni-bin}
VERSION=${VERSION:?VERSION is required}
binaries=(berth berth-shim pause berthd berthctl berth-lazy)
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
mkdir -p "$out"
out=$(cd "$out" && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
if [ -z "${MAN_DIR:-}" ]; then
	MAN_DIR=$stage/man
	"$root/hack/docs/build.sh" "$MAN_DIR" >/dev/null
fi
pages=(berth.8 berthd.8 berthctl.8)

# berth.toml: berthd's defaults for a berth installed in BINDIR, every key
# commented out (berthd derives the paths of its helpers from its own).
default_config() {
	local bindir=$1 tmp
	tmp=$(mktemp -d)
	for b in "${binaries[@]}"; do cp "$BIN_DIR/$b" "$tmp/"; done
	{
		echo "# berthd's configuration. Every key is optional; these are the defaults."
		echo "# Uncomment and edit a key to change it; berthd --help and README say more."
		"$tmp/berthd" --config /nonexistent config | sed -e "s|$tmp|$bindir|g" -e 's/^/# /'
	}
	rm -rf "$tmp"
}

# unit BINDIR: contrib/berthd.service with berthd in BINDIR.
unit() { sed "s|^ExecStart=/usr/local/bin/berthd|ExecStart=$1/berthd|" "$root/contrib/berthd.service"; }

case "$kind" in
tarball)
	name=berth-$VERSION-linux-$arch
	d=$stage/$name
	install -d "$d/usr/local/bin" "$d/opt/cni/bin" "$d/etc/systemd/system" "$d/etc/berth" "$d/etc/cni/net.d"
	for b in "${binaries[@]}"; do install -m 0755 "$BIN_DIR/$b" "$d/usr/local/bin/"; done
	for p in "$CNI_BIN"/*; do install -m 0755 "$p" "$d/opt/cni/bin/"; done
	unit /usr/local/bin >"$d/etc/systemd/system/berthd.service"
	default_config /usr/local/bin >"$d/etc/berth/berth.toml"
	install -m 0644 "$root/contrib/cni/bridge.conflist.template" "$d/etc/berth/cni-bridge.conflist.template"
	install -m 0644 "$root/contrib/cni/10-berth-bridge.conflist" "$d/etc/cni/net.d/"
	install -d "$d/usr/local/share/man/man8"
	for p in "${pages[@]}"; do install -m 0644 "$MAN_DIR/$p" "$d/usr/local/share/man/man8/"; done
	# Reproducible: fixed owners and times, sorted names.
	tar -C "$d" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -czf "$out/$name.tar.gz" .
	(cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256sum" && cat berth-*.tar.gz.sha256sum >SHA256SUMS)
	echo "$out/$name.tar.gz"
	;;
deb)
	# Debian versions take no '-' in the upstream part without a revision.
	v=${VERSION//-/.}
	d=$stage/deb
	install -d "$d/DEBIAN" "$d/usr/bin" "$d/lib/systemd/system" "$d/etc/berth" "$d/usr/share/doc/berth"
	for b in "${binaries[@]}"; do install -m 0755 "$BIN_DIR/$b" "$d/usr/bin/"; done
	unit /usr/bin >"$d/lib/systemd/system/berthd.service"
	chmod 0644 "$d/lib/systemd/system/berthd.service"
	default_config /usr/bin >"$d/etc/berth/berth.toml"
	install -m 0644 "$root/contrib/cni/bridge.conflist.template" "$d/etc/berth/cni-bridge.conflist.template"
	install -m 0644 "$root/README.md" "$d/usr/share/doc/berth/README.md"
	install -d "$d/usr/share/man/man8"
	for p in "${pages[@]}"; do gzip -9n <"$MAN_DIR/$p" >"$d/usr/share/man/man8/$p.gz"; done
	printf '/etc/berth/berth.toml\n/etc/berth/cni-bridge.conflist.template\n' >"$d/DEBIAN/conffiles"
	cat >"$d/DEBIAN/control" <<EOF
Package: berth
Version: $v
Architecture: $arch
Maintainer: berth maintainers <maintainers@berth-runtime.invalid>
Section: admin
Priority: optional
Depends: libc6, libseccomp2, iptables
Recommends: containernetworking-plugins
Installed-Size: $(du -sk "$d" | cut -f1)
Homepage: https://github.com/berth-runtime/berth
Description: container runtime for Kubernetes nodes (CRI)
 berthd serves the kubelet's Container Runtime Interface on
 /run/berth/berth.sock: images pulled and unpacked into overlay root
 file systems, pod sandboxes and containers through libcontainer, pod
 networks through CNI. berth runs OCI bundles as runc does; berthctl
 talks to any CRI runtime as crictl does.
EOF
	# Nothing starts or is enabled on its own: the operator does it
	# (systemctl enable --now berthd) once the node is configured.
	cat >"$d/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
exit 0
EOF
	chmod 0755 "$d/DEBIAN/postinst"
	deb=$out/berth_${v}_$arch.deb
	dpkg-deb --root-owner-group -Zgzip --build "$d" "$deb" >/dev/null
	echo "$deb"
	;;
*)
	echo "usage: package.sh tarball|deb OUTDIR" >&2
	exit 2
	;;
esac
