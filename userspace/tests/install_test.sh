#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Installs libdirtyring into a scratch DESTDIR and builds the example
# consumer against it twice, through the CMake package and through
# pkg-config, then runs both. Prints result lines for make check.
#
# usage: install_test.sh SOURCE_TOP CMAKE_BUILD_DIR
set -uo pipefail
top=$1
build=$2
# Not the prefix the build was configured with (/usr/local): what is
# installed must follow the prefix given at install time.
prefix=/opt/dr
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
dest=$scratch/dest
root=$dest$prefix
example=$top/userspace/examples/consumer

check() {
	local name=$1
	shift
	local log=$scratch/$name.log
	if "$@" > "$log" 2>&1; then
		printf 'PASS\tinstall/%s\t\n' "$name"
	else
		printf 'FAIL\tinstall/%s\t%s\n' "$name" "$(tail -3 "$log" | tr '\n' ' ')"
	fi
}

installed() {
	DESTDIR=$dest cmake --install "$build" --prefix "$prefix" &&
		for f in include/dirtyring/rings/device.hpp lib/libdirtyring.a lib/libdirtyring.so \
			lib/pkgconfig/dirtyring.pc lib/cmake/dirtyring/dirtyringConfig.cmake; do
			[[ -e $root/$f ]] || { echo "missing $root/$f"; return 1; }
		done
}

runs() { LD_LIBRARY_PATH=$root/lib "$1" | grep '^consumer: '; }

via_cmake() {
	cmake -S "$example" -B "$scratch/cmake" -DCMAKE_PREFIX_PATH="$root" &&
		cmake --build "$scratch/cmake" &&
		runs "$scratch/cmake/consumer"
}

via_pkg_config() {
	local flags
	local pc="pkg-config --with-path=$root/lib/pkgconfig"
	[[ $($pc --variable=prefix dirtyring) -ef $root ]] ||
		{ echo "dirtyring.pc: prefix $($pc --variable=prefix dirtyring), not $root"; return 1; }
	flags=$($pc --cflags --libs dirtyring) &&
		c++ -o "$scratch/consumer-pc" "$example/main.cpp" $flags &&
		runs "$scratch/consumer-pc"
}

check files installed
check cmake-package via_cmake
check pkg-config via_pkg_config
