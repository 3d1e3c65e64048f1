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
# apt_mirror: the Debian mirror this machine's apt uses for bookworm (one-
# line sources.list files or deb822 .sources), so that this script works
# wherever apt does and names no host itself.
apt_mirror() {
	local f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		# deb [options] URI SUITE COMPONENT...
		awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
			if ($(i + 1) == "bookworm") { print $i; exit } }' "$f"
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		# Paragraphs of "Key: value" lines: Types deb, Suites with bookworm.
		awk 'BEGIN { RS = ""; FS = "\n" }
			{ types = uris = suites = ""
			  for (i = 1; i <= NF; i++) {
				if ($i ~ /^Types:/) types = $i
				if ($i ~ /^URIs:/) uris = $i
				if ($i ~ /^Suites:/) suites = $i
			  }
			  if (types ~ /[ \t]deb([ \t]|$)/ && suites ~ /[ \t]bookworm([ \t]|$)/) {
				split(uris, u, /[ \t]+/); print u[2]; exit
			  } }' "$f"
	done
}
mirror=${DEBIAN_MIRROR:-$(apt_mirror | head -1)}
[ -n "$mirror" ] || { echo "images.sh: no bookworm source in this machine's apt sources; set DEBIAN_MIRROR" >&2; exit 1; }
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

# debian_index SUITE PATH: the file PATH of SUITE (main/source/Sources.xz),
# downloaded and checked against the suite's signed InRelease, as apt
# checks it.
debian_index() {
	local suite=$1 path=$2 d=$cache/debian/$1 sum
	mkdir -p "$d"
	curl -sSf -o "$d/InRelease" "$mirror/dists/$suite/InRelease"
	gpgv --quiet --keyring /usr/share/keyrings/debian-archive-keyring.gpg --output "$d/Release" "$d/InRelease" 2>/dev/null ||
		{ echo "images: $suite InRelease: bad signature" >&2; exit 1; }
	curl -sSf -o "$d/index" "$mirror/dists/$suite/$path"
	sum=$(awk -v p="$path" '/^SHA256:/{s=1; next} /^[^ ]/{s=0} s && $3 == p {print $1}' "$d/Release")
	echo "$sum  $d/index" | sha256sum -c --quiet - >&2 || { echo "images: $suite $path: checksum" >&2; exit 1; }
	echo "$d/index"
}

# debian_source SUITE PACKAGE DIR: the source package's files (.dsc,
# orig and debian tarballs) into DIR, each checked against the signed
# Sources index.
debian_source() {
	local suite=$1 pkg=$2 dir=$3 index sum name pool
	index=$(debian_index "$suite" main/source/Sources.xz)
	xz -dc "$index" >"$index.txt"
	mkdir -p "$dir"
	pool=$(awk -v p="$pkg" '$0 == "Package: " p {m=1} m && /^Directory:/ {print $2; exit}' "$index.txt")
	[ -n "$pool" ] || { echo "images: no source package $pkg in $suite" >&2; exit 1; }
	awk -v p="$pkg" '
		$0 == "Package: " p {m=1; next} /^Package:/ {m=0}
		m && /^Checksums-Sha256:/ {s=1; next} m && /^[^ ]/ {s=0}
		m && s {print $1, $3}' "$index.txt" | while read -r sum name; do
		curl -sSf -o "$dir/$name" "$mirror/$pool/$name"
		echo "$sum  $dir/$name" | sha256sum -c --quiet - >&2 || { echo "images: $pool/$name: checksum" >&2; exit 1; }
	done
}

# busybox_rootfs DIR: busybox 1.37, as the upstream image has it: built
# from Debian trixie's source package with its static configuration and
# patches, except the two that make ash drop environment variables whose
# names are not shell identifiers (upstream busybox keeps them, and the
# specs read variables such as data-1 through `sh -c env`).
busybox_rootfs() {
	local dir=$1 bb=$cache/busybox-1.37
	if [ ! -x "$bb" ]; then
		echo "images: build busybox 1.37 (once)" >&2
		local x p
		x=$(mktemp -d)
		debian_source trixie busybox "$x"
		tar -C "$x" -xjf "$x"/busybox_*.orig.tar.bz2
		tar -C "$x"/busybox-*/ -xJf "$x"/busybox_*.debian.tar.xz
		(
			cd "$x"/busybox-*/
			for p in $(grep -v '^\s*#' debian/patches/series); do
				case $p in revert-9c143ce52da11ec3d21a3491c3749841d3dc10f0.patch | temp-deb-installer-hack.patch) continue ;; esac
				patch -p1 -s <"debian/patches/$p"
			done
			cp debian/config/pkg/static .config
			make -s -j"$(nproc)" busybox </dev/null >"$cache/busybox-build.log" 2>&1 ||
				{ tail -20 "$cache/busybox-build.log" >&2; exit 1; }
		)
		cp "$x"/busybox-*/busybox "$bb"
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

# selects RE: whether the run's specs (UPSTREAM_SELECTED, a file of their
# names, from run.sh) include one matching RE; without the file, every
# image is built. The images only some specs use are built for them.
selects() { [ -z "${UPSTREAM_SELECTED:-}" ] || grep -qE -- "$1" "$UPSTREAM_SELECTED"; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
src=$(k8s_src)

# busybox 1.37.0-2: the busybox image.
busybox_rootfs "$stage/busybox"
push -rootfs "$stage/busybox" -config '{"Cmd":["sh"]}' "e2e-test-images/busybox:1.37.0-2"

# agnhost 2.66.1 (and 2.55, the "previous" one some specs upgrade from):
# the agnhost program on a base with the tools the specs run in it.
agnhost_pkgs="bash curl dnsutils netcat-openbsd iproute2 socat iputils-ping procps util-linux"
# shellcheck disable=SC2086 # a list of package names
debian_image "$stage/agnhost" $agnhost_pkgs
cp "$K8S_BIN_DIR/agnhost" "$stage/agnhost/agnhost"
ln -s agnhost "$stage/agnhost/agnhost-2"
mkdir -p "$stage/agnhost/uploads"
cp "$src/test/images/agnhost/porter/localhost.crt" "$src/test/images/agnhost/porter/localhost.key" "$stage/agnhost/"
chroot "$stage/agnhost" sh -c 'groupadd -g 50000 group-defined-in-image && useradd -u 1000 -M -G group-defined-in-image user-defined-in-image'
agnhost_cfg='{"Entrypoint":["/agnhost"],"Cmd":["pause"],"ExposedPorts":{"80/tcp":{},"8080/tcp":{},"8081/tcp":{},"9376/tcp":{},"5000/tcp":{}}}'
push -rootfs "$stage/agnhost" -config "$agnhost_cfg" "e2e-test-images/agnhost:$(cat "$src/test/images/agnhost/VERSION")"
push -rootfs "$stage/agnhost" -config "$agnhost_cfg" "e2e-test-images/agnhost:2.55"

# kitten 1.8 and nautilus 1.8 (kubectl's Update Demo, the ImageVolume
# specs): agnhost serving its picture and data.json from / with
# test-webserver, as upstream's Dockerfiles add them to the agnhost
# image. The ImageVolume spec reads the image's /etc/os-release for
# "Alpine Linux", upstream's base: the stand-in's says what it is.
if selects 'ImageVolume|Update Demo'; then
	for pic in kitten nautilus; do
		mkdir -p "$stage/$pic"
		cp -a "$stage/agnhost/." "$stage/$pic/"
		cp "$src/test/images/$pic/html/$pic.jpg" "$src/test/images/$pic/html/data.json" "$stage/$pic/"
		rm -f "$stage/$pic/etc/os-release"
		{ cat "$stage/agnhost/usr/lib/os-release"; echo "# berth's stand-in (hack/upstream/images.sh) for upstream's image on Alpine Linux"; } >"$stage/$pic/etc/os-release"
		push -rootfs "$stage/$pic" -config '{"Entrypoint":["/agnhost"],"Cmd":["test-webserver"],"ExposedPorts":{"80/tcp":{}}}' "e2e-test-images/$pic:1.8"
		rm -rf "$stage/$pic"
	done
fi

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
nginx_cfg='{"Cmd":["nginx","-g","daemon off;"],"ExposedPorts":{"80/tcp":{}},"StopSignal":"SIGQUIT"}'
push -rootfs "$stage/nginx" -config "$nginx_cfg" "e2e-test-images/nginx:1.27.0-2"
# nginx 1.28.0-2 ("nginx-new", what the Deployment specs roll over to):
# the same server under the newer tag; the specs tell them apart by name.
echo '<!-- 1.28.0-2 -->' >>"$stage/nginx/usr/share/nginx/html/index.html"
push -rootfs "$stage/nginx" -config "$nginx_cfg" "e2e-test-images/nginx:1.28.0-2"

# glibc-dns-testing 2.1.1: Debian with dnsutils (glibc's resolver).
debian_image "$stage/glibc" dnsutils
push -rootfs "$stage/glibc" "e2e-test-images/glibc-dns-testing:2.1.1"

# hostpathplugin v1.17.1, as the [DRA] specs use it: a container that
# sleeps, in which the specs exec "/hostpathplugin --endpoint=SOCKET
# --proxy-endpoint=tcp://:PORT" to bridge the kubelet's connections to
# the driver running in e2e.test. The CSI driver itself (never used
# there) is not served by the module proxy; the bridge is socat, in the
# mode the specs' proxy package documents: "UNIX-LISTEN:...,fork
# TCP-LISTEN:PORT,reuseport", one TCP connection per accepted one.
if selects '\[DRA\]'; then
	# agnhost's base (socat among its tools), cached once for both.
	# shellcheck disable=SC2086
	debian_image "$stage/hostpath" $agnhost_pkgs
	cat >"$stage/hostpath/hostpathplugin" <<'SH'
#!/bin/sh
# berth's stand-in for hostpathplugin's proxy mode (hack/upstream/images.sh).
endpoint= port=
for a in "$@"; do
	case $a in
	--endpoint=*) endpoint=${a#--endpoint=} endpoint=${endpoint#unix://} ;;
	--proxy-endpoint=tcp://*) port=${a##*:} ;;
	esac
done
[ -n "$endpoint" ] && [ -n "$port" ] || { echo "hostpathplugin: only --endpoint=PATH --proxy-endpoint=tcp://:PORT is served" >&2; exit 2; }
mkdir -p "$(dirname "$endpoint")"
exec socat "UNIX-LISTEN:$endpoint,fork,unlink-early" "TCP-LISTEN:$port,reuseport"
SH
	chmod 755 "$stage/hostpath/hostpathplugin"
	push -rootfs "$stage/hostpath" -config '{"Entrypoint":["/hostpathplugin"]}' "sig-storage/hostpathplugin:v1.17.1"
	rm -rf "$stage/hostpath"

	# sample-device-plugin 1.8.0 (the tag its DaemonSet manifest names;
	# 1.7, the one --list-images names, too), which the [DRA] specs of
	# extended resources deploy: the program of the Kubernetes module of
	# berth's release on a busybox base, as upstream's is on alpine.
	"$root/hack/kubernetes/build.sh" "$K8S_BIN_DIR" sample-device-plugin
	busybox_rootfs "$stage/sample-device-plugin"
	cp "$K8S_BIN_DIR/sample-device-plugin" "$stage/sample-device-plugin/sampledeviceplugin"
	sdp_cfg='{"Entrypoint":["/sampledeviceplugin","-alsologtostderr"]}'
	push -rootfs "$stage/sample-device-plugin" -config "$sdp_cfg" "e2e-test-images/sample-device-plugin:1.8.0"
	push -rootfs "$stage/sample-device-plugin" -config "$sdp_cfg" "e2e-test-images/sample-device-plugin:1.7"
fi

# sample-apiserver 1.29.2 (the Aggregator spec, beside the etcd image the
# cluster already has): k8s.io/sample-apiserver v0.29.2 from the module
# proxy, built once (a minute and a half of compiling), on a busybox base
# as upstream's is on alpine.
if selects '^\[sig-api-machinery\] Aggregator'; then
	sas=$cache/sample-apiserver-v0.29.2
	if [ ! -x "$sas" ]; then
		echo "images: build sample-apiserver v0.29.2 (once)" >&2
		d=$(GOFLAGS= go mod download -json k8s.io/sample-apiserver@v0.29.2 | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
		(cd "$d" && CGO_ENABLED=0 GOFLAGS= go build -trimpath -ldflags=-s -o "$sas.tmp" .)
		mv "$sas.tmp" "$sas"
	fi
	busybox_rootfs "$stage/sample-apiserver"
	cp "$sas" "$stage/sample-apiserver/sample-apiserver"
	push -rootfs "$stage/sample-apiserver" -config '{"Entrypoint":["/sample-apiserver"]}' "e2e-test-images/sample-apiserver:1.29.2"
fi
