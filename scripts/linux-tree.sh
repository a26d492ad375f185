#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# A pristine Linux tree from Debian's linux-source-6.1 tarball, as a git
# repository with one commit: the base of patches/ (scripts/patches.sh) and
# of the debug kernel.  Extracted once and reused while the tarball is the
# same; nothing ever writes to it afterwards (users clone it).
#
# usage: linux-tree.sh CACHE_DIR
# After it: CACHE_DIR/linux is the repository, its HEAD the pristine tree,
#           CACHE_DIR/version the tarball's package version.
set -euo pipefail
cache=$1
tarball=$(ls /usr/src/linux-source-6.1.tar.* 2>/dev/null | head -1)
[[ -n $tarball ]] || { echo "linux-tree: /usr/src/linux-source-6.1.tar.* missing (make deps)" >&2; exit 1; }
version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
tree=$cache/linux
if [[ -f $cache/version && $(cat "$cache/version") == "$version" && -d $tree/.git ]]; then
	exit 0
fi
rm -rf "$tree" "$cache/version"
mkdir -p "$cache"
echo "linux-tree: extracting $tarball ($version), once"
tmp=$cache/extract.$$
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
tar -xf "$tarball" -C "$tmp"
mv "$tmp/linux-source-6.1" "$tree"
# The base commit is the same on every machine: fixed identity and date.
export GIT_AUTHOR_NAME=linux-source GIT_AUTHOR_EMAIL=linux-source@debian.invalid
export GIT_COMMITTER_NAME=linux-source GIT_COMMITTER_EMAIL=linux-source@debian.invalid
export GIT_AUTHOR_DATE='2024-01-01T00:00:00Z' GIT_COMMITTER_DATE='2024-01-01T00:00:00Z'
git -C "$tree" init -q -b base
git -C "$tree" config core.autocrlf false
git -C "$tree" add -A -f .
git -C "$tree" commit -q -m "Linux from Debian linux-source-6.1 $version"
echo "$version" > "$cache/version"
