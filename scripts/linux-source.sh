#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Extracts from Debian's linux-source-6.1 tarball the few files the build
# needs (kselftest harness, checkpatch) into a cache directory, once: reading
# the xz stream costs about 10 s, so every file is taken in one pass and the
# result is stamped.
#
# usage: linux-source.sh CACHE_DIR
# After it: CACHE_DIR/kselftest_harness.h, CACHE_DIR/kselftest.h,
#           CACHE_DIR/include/ (an empty directory: lets sources written for
#           the kernel tree include "../kselftest_harness.h"),
#           CACHE_DIR/scripts/checkpatch.pl with its data files.
set -euo pipefail
cache=$1
tarball=$(ls /usr/src/linux-source-6.1.tar.* 2>/dev/null | head -1)
[[ -n $tarball ]] || { echo "linux-source: /usr/src/linux-source-6.1.tar.* missing (make deps)" >&2; exit 1; }
stamp=$cache/.stamp
if [[ -f $stamp && $stamp -nt $tarball ]]; then
	exit 0
fi
top=linux-source-6.1
files=(
	tools/testing/selftests/kselftest_harness.h
	tools/testing/selftests/kselftest.h
	scripts/checkpatch.pl
	scripts/spelling.txt
	scripts/const_structs.checkpatch
)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "linux-source: extracting ${#files[@]} files from $tarball"
tar -xf "$tarball" -C "$tmp" "${files[@]/#/$top/}"
mkdir -p "$cache/scripts" "$cache/include"
cp "$tmp/$top/tools/testing/selftests/"kselftest*.h "$cache/"
cp "$tmp/$top/scripts/"{checkpatch.pl,spelling.txt,const_structs.checkpatch} "$cache/scripts/"
touch "$stamp"
