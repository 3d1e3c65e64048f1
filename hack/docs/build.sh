#!/usr/bin/env bash
# build.sh OUTDIR: the manual pages of berth, berthd and berthctl
# (OUTDIR/<name>.8), generated from their command definitions: each is
# built once without the urfave_cli_no_docs tag, which keeps the
# generator out of the release binaries, and asked for its page.
set -euo pipefail
out=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
GO=${GO:-go}
tags='seccomp netgo osusergo containers_image_openpgp'
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for b in berth berthd berthctl; do
	(cd "$root" && GOFLAGS= "$GO" build -trimpath -tags "$tags" -o "$tmp/$b" "./cmd/$b")
	"$tmp/$b" man >"$out/$b.8"
	echo "$out/$b.8"
done
