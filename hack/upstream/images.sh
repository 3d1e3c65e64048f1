#!/usr/bin/env bash
# images.sh REGISTRY: the images the upstream end-to-end tests ask for
# (k8s.io/kubernetes/test/utils/image), built here from upstream sources
# and Debian's packages and pushed to REGISTRY under the repositories that
# repo-list.yaml names, each with the tag the framework asks for and the
# same behaviour: entrypoint, user, ports, the files the specs read.
#
# The Debian-based ones start from a bookworm root filesystem made once by
# debootstrap (cached in .cache/upstream); agnhost, nonewprivs are built
# from the k8s.io/kubernetes module of berth's release.
set -euo pipefail
registry=${1:?usage: images.sh REGISTRY}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
K8S_BIN_DIR=${K8S_BIN_DIR:-$root/.cache/kubernetes}
MKIMAGE=${MKIMAGE:-$root/.cache/mkimage}
cache=${UPSTREAM_CACHE:-$root/.cache/upstream}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$cache"
e2e=$registry/e2e-test-images

k8s_src() {
	local v
	v=$(cat "$K8S_BIN_DIR/.version-kubeadm")
	GOFLAGS= go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p'
}

# base: a Debian bookworm root filesystem (minbase), made once.
base() {
	if [ ! -f "$cache/bookworm.tar" ]; then
		echo "images: debootstrap bookworm (once)" >&2
		rm -rf "$cache/bookworm"
		debootstrap --variant=minbase bookworm "$cache/bookworm" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
			{ tail -20 "$cache/debootstrap.log" >&2; exit 1; }
		rm -rf "$cache/bookworm/var/cache/apt/archives"/*.deb "$cache/bookworm/var/lib/apt/lists"/*
		tar -C "$cache/bookworm" -cf "$cache/bookworm.tar" .
		rm -rf "$cache/bookworm"
	fi
}

# debian_image DIR PACKAGE...: DIR holds the base with PACKAGES installed
# (cached per package list).
debian_image() {
	local dir=$1 key tarball
	shift
	key=$(echo "$*" | sha256sum | cut -c1-12)
	tarball=$cache/bookworm-$key.tar
	if [ ! -f "$tarball" ]; then
		base
		local work=$cache/work-$key
		rm -rf "$work"
		mkdir -p "$work"
		tar -C "$work" -xf "$cache/bookworm.tar"
		if [ $# -gt 0 ]; then
			cp /etc/resolv.conf "$work/etc/resolv.conf"
			echo "deb $mirror bookworm main" >"$work/etc/apt/sources.list"
			chroot "$work" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $* >/dev/null" ||
				{ echo "images: apt-get install $* failed" >&2; exit 1; }
			rm -rf "$work/var/cache/apt/archives"/*.deb "$work/var/lib/apt/lists"/*
			: >"$work/etc/resolv.conf"
		fi
		tar -C "$work" -cf "$tarball" .
		rm -rf "$work"
	fi
	mkdir -p "$dir"
	tar -C "$dir" -xf "$tarball"
}

# debian_deb SUITE PACKAGE: the path of PACKAGE's .deb from SUITE (amd64),
# downloaded once and checked against the suite's signed InRelease, as apt
# checks it.
debian_deb() {
	local suite=$1 pkg=$2 d=$cache/debs/$1 sum file want
	mkdir -p "$d"
	if [ ! -f "$d/$pkg.deb" ]; then
		curl -sSf -o "$d/InRelease" "$mirror/dists/$suite/InRelease"
		gpgv --quiet --keyring /usr/share/keyrings/debian-archive-keyring.gpg --output "$d/Release" "$d/InRelease" 2>/dev/null ||
			{ echo "images: $suite InRelease: bad signature" >&2; exit 1; }
		curl -sSf -o "$d/Packages.xz" "$mirror/dists/$suite/main/binary-amd64/Packages.xz"
		sum=$(awk '/^SHA256:/{s=1; next} /^[^ ]/{s=0} s && $3 == "main/binary-amd64/Packages.xz" {print $1}' "$d/Release")
		echo "$sum  $d/Packages.xz" | sha256sum -c --quiet - >&2 || { echo "images: $suite Packages.xz: checksum" >&2; exit 1; }
		read -r file want < <(xz -dc "$d/Packages.xz" | awk -v p="$pkg" '
			$0 == "Package: " p {m=1} m && /^Filename:/ {f=$2} m && /^SHA256:/ {s=$2} m && /^$/ {print f, s; exit}')
		[ -n "$file" ] || { echo "images: no $pkg in $suite" >&2; exit 1; }
		curl -sSf -o "$d/$pkg.deb.part" "$mirror/$file"
		echo "$want  $d/$pkg.deb.part" | sha256sum -c --quiet - >&2 || { echo "images: $file: checksum" >&2; exit 1; }
		mv "$d/$pkg.deb.part" "$d/$pkg.deb"
	fi
	echo "$d/$pkg.deb"
}

# busybox_rootfs DIR: busybox 1.37 (trixie's busybox-static; the image is
# 1.37, and bookworm's 1.35 ash drops environment variables whose names
# are not shell identifiers, such as the specs' data-1).
busybox_rootfs() {
	local dir=$1 bb=$cache/busybox-1.37
	if [ ! -x "$bb" ]; then
		local x
		x=$(mktemp -d)
		dpkg-deb -x "$(debian_deb trixie busybox-static)" "$x"
		cp "$x/usr/bin/busybox" "$bb" # (trixie is merged-/usr)
		rm -rf "$x"
	fi
	mkdir -p "$dir/bin" "$dir/etc" "$dir/tmp" "$dir/root" "$dir/home"
	chmod 1777 "$dir/tmp"
	cp "$bb" "$dir/bin/busybox"
	"$bb" --install -s "$dir/bin"
	# busybox --install links with absolute paths; make them relative.
	for l in "$dir"/bin/*; do [ -L "$l" ] && ln -sf busybox "$l"; done
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' >"$dir/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$dir/etc/group"
}

push() { "$MKIMAGE" -registry "$registry" "$@"; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
src=$(k8s_src)

# busybox 1.37.0-2: the busybox image.
busybox_rootfs "$stage/busybox"
push -rootfs "$stage/busybox" -config '{"Cmd":["sh"]}' "e2e-test-images/busybox:1.37.0-2"

# agnhost 2.66.1 (and 2.55, the "previous" one some specs upgrade from):
# the agnhost program on a base with the tools the specs run in it.
debian_image "$stage/agnhost" bash curl dnsutils netcat-openbsd iproute2 socat iputils-ping procps util-linux
cp "$K8S_BIN_DIR/agnhost" "$stage/agnhost/agnhost"
ln -s agnhost "$stage/agnhost/agnhost-2"
mkdir -p "$stage/agnhost/uploads"
cp "$src/test/images/agnhost/porter/localhost.crt" "$src/test/images/agnhost/porter/localhost.key" "$stage/agnhost/"
chroot "$stage/agnhost" sh -c 'groupadd -g 50000 group-defined-in-image && useradd -u 1000 -M -G group-defined-in-image user-defined-in-image'
agnhost_cfg='{"Entrypoint":["/agnhost"],"Cmd":["pause"],"ExposedPorts":{"80/tcp":{},"8080/tcp":{},"8081/tcp":{},"9376/tcp":{},"5000/tcp":{}}}'
push -rootfs "$stage/agnhost" -config "$agnhost_cfg" "e2e-test-images/agnhost:$(cat "$src/test/images/agnhost/VERSION")"
push -rootfs "$stage/agnhost" -config "$agnhost_cfg" "e2e-test-images/agnhost:2.55"

# nonroot 1.5: Debian with USER 1234.
debian_image "$stage/nonroot"
push -rootfs "$stage/nonroot" -config '{"User":"1234"}' "e2e-test-images/nonroot:1.5"

# nonewprivs 1.4: nnp, setuid root, printing its effective uid.
busybox_rootfs "$stage/nonewprivs"
mkdir -p "$stage/nonewprivs/usr/local/bin"
(cd "$stage" && cp "$src/test/images/nonewprivs/nnp.go" . && CGO_ENABLED=0 GOFLAGS= GO111MODULE=off go build -o "$stage/nonewprivs/usr/local/bin/nnp" nnp.go)
chmod 4755 "$stage/nonewprivs/usr/local/bin/nnp"
push -rootfs "$stage/nonewprivs" -config '{"Cmd":["nnp"]}' "e2e-test-images/nonewprivs:1.4"

# nginx 1.27.0-2: Debian's nginx serving nginx's own welcome page on 80.
debian_image "$stage/nginx" nginx-light
mkdir -p "$stage/nginx/usr/share/nginx/html" "$stage/nginx/etc/nginx/sites-enabled" "$stage/nginx/var/log/nginx" "$stage/nginx/var/lib/nginx"
cat >"$stage/nginx/usr/share/nginx/html/index.html" <<'HTML'
<!DOCTYPE html>
<html><head><title>Welcome to nginx!</title></head>
<body><h1>Welcome to nginx!</h1></body></html>
HTML
# (the package's own default site is a link to a file the minimal
# install leaves out)
rm -f "$stage/nginx/etc/nginx/sites-enabled/default"
cat >"$stage/nginx/etc/nginx/sites-enabled/default" <<'CONF'
server {
	listen 80 default_server;
	listen [::]:80 default_server;
	root /usr/share/nginx/html;
	index index.html;
}
CONF
push -rootfs "$stage/nginx" -config '{"Cmd":["nginx","-g","daemon off;"],"ExposedPorts":{"80/tcp":{}},"StopSignal":"SIGQUIT"}' "e2e-test-images/nginx:1.27.0-2"

# glibc-dns-testing 2.1.1: Debian with dnsutils (glibc's resolver).
debian_image "$stage/glibc" dnsutils
push -rootfs "$stage/glibc" "e2e-test-images/glibc-dns-testing:2.1.1"
