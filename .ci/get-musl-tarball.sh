#!/usr/bin/env bash
# Usage: .ci/get-musl-tarball.sh DEST_DIR
#
# Puts musl-1.2.3.tar.gz (the upstream release, byte-identical to the
# distribution's musl_1.2.3.orig.tar.gz) into DEST_DIR, for tests/musl.rs
# (KRAFT_TEST_MUSL_DIR=DEST_DIR) and `cargo xtask sysroot musl`
# (KRAFT_ARCHIVE_DIR=DEST_DIR).
#
# It asks apt for the musl *source* package using a private deb-src list
# derived from this machine's own apt sources (one-line `.list` files and
# deb822 `.sources` files, `deb` turned into `deb-src`), with private
# lists and cache directories in a temp dir: the system's apt
# configuration and state are not touched, and no host name is written
# here. The tarball is checked against the recipe's sha256.
set -euo pipefail

SHA256=7d5b0b6062521e4627e099e4c9dc8248d32a30285e959b7eecaa780cf8cfd4a4
VERSION=1.2.3
dest=${1:?usage: $0 DEST_DIR}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

if [ -f "$dest/musl-$VERSION.tar.gz" ] && echo "$SHA256  $dest/musl-$VERSION.tar.gz" | sha256sum -c --quiet - 2>/dev/null; then
    echo "$dest/musl-$VERSION.tar.gz already present and verified"
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/sources.list.d" "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/download"

etc=$(apt-config shell X Dir::Etc/d | sed -n "s/^X='\(.*\)'$/\1/p")
etc=${etc:-/etc/apt}
n=0
# One-line format: `deb [options] URI suite components` -> `deb-src ...`.
for list in "$etc/sources.list" "$etc"/sources.list.d/*.list; do
    [ -f "$list" ] || continue
    n=$((n + 1))
    sed -n -E 's/^[[:space:]]*deb([[:space:]]+)/deb-src\1/p' "$list" > "$tmp/sources.list.d/$n.list"
done
# deb822 format: `Types: deb [deb-src]` -> `Types: deb-src`.
for sources in "$etc"/sources.list.d/*.sources; do
    [ -f "$sources" ] || continue
    n=$((n + 1))
    sed -E 's/^([Tt]ypes:).*$/\1 deb-src/' "$sources" > "$tmp/sources.list.d/$n.sources"
done
if [ "$n" -eq 0 ]; then
    echo "error: no apt sources found under $etc" >&2
    exit 1
fi

apt_opts=(
    -o "Dir::Etc::SourceList=/dev/null"
    -o "Dir::Etc::SourceParts=$tmp/sources.list.d"
    -o "Dir::State::Lists=$tmp/lists"
    -o "Dir::Cache=$tmp/cache"
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=$(id -un)"
)
apt-get "${apt_opts[@]}" -q update >&2
(cd "$tmp/download" && apt-get "${apt_opts[@]}" -q source --download-only "musl" >&2)

orig="$tmp/download/musl_$VERSION.orig.tar.gz"
if [ ! -f "$orig" ]; then
    echo "error: the musl source package of this distribution is not version $VERSION:" >&2
    ls "$tmp/download" >&2
    exit 1
fi
echo "$SHA256  $orig" | sha256sum -c --quiet - || {
    echo "error: $orig does not have sha256 $SHA256" >&2
    exit 1
}
mv "$orig" "$dest/musl-$VERSION.tar.gz"
echo "$dest/musl-$VERSION.tar.gz"
