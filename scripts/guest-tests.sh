#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Prints the paths of every test binary that runs in the QEMU-booted kernel:
# the kselftests, then the static user-space tests of the library.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
for t in $(make -s -C "$top/selftests/dirtyring" list); do
	echo "$top/build/selftests/$t"
done
echo "$top/build/cxx/tests/dirtyring_guest_tests"
echo "$top/build/cxx/tests/dirtyring_stat_guest_tests"
