#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Prints the release of the kernel the tests boot: the one Debian's
# linux-image-amd64 metapackage depends on (not the host's running kernel).
set -euo pipefail
dep=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null) || {
	echo "kver: linux-image-amd64 is not installed (make deps)" >&2
	exit 1
}
dep=${dep%% *}
echo "${dep#linux-image-}"
