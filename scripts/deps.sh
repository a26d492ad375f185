#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Installs every Debian package the project needs. Idempotent: does nothing
# when all are installed; refreshes the package lists only when they are
# missing or older than a day.
set -euo pipefail

packages=(
	# module build and the kernel the tests boot
	build-essential bc kmod libelf-dev
	linux-image-amd64 linux-headers-amd64 linux-source-6.1 xz-utils
	# QEMU runner
	qemu-system-x86 busybox-static cpio
	# user space
	cmake pkgconf libgtest-dev libgmock-dev libbenchmark-dev liburcu-dev
	libnl-3-dev libnl-genl-3-dev libxxhash-dev nlohmann-json3-dev python3
	# lint and model checks
	clang-format spin
	# patches/ (an in-tree build of the series) and DKMS
	flex bison libssl-dev python3-docutils python3-yaml python3-ply python3-git dkms
)

missing=()
for p in "${packages[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	[[ $status == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
	echo "deps: missing Debian packages: ${missing[*]}" >&2
	echo "deps: run 'make deps' as root, or apt-get install them" >&2
	exit 1
fi

lists=/var/lib/apt/lists
if [[ -z $(find "$lists" -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1) ]]; then
	echo "deps: refreshing package lists"
	apt-get update -qq
fi
echo "deps: installing ${missing[*]}"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
