#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# The debug kernel: Debian's linux-source-6.1 with the series of this tree
# applied (scripts/patches.sh: what patches/ holds once committed), built
# from allnoconfig plus selftests/qemu/debug.config (lockdep, KASAN, UBSAN,
# kmemleak, DEBUG_VM, debug objects; dirtyring as a module).  Cached in
# build/debug-kernel, keyed by the configuration and the series: a second
# run with neither changed builds nothing, one with a changed series
# rebuilds only what the series touches.
#
# usage: debug-kernel.sh   (prints the kernel image and the module)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
b=$top/build/debug-kernel
src=$b/src obj=$b/obj
fragment=$top/selftests/qemu/debug.config
"$top/scripts/linux-tree.sh" "$top/build/linux-tree" >&2

"$top/scripts/patches.sh" "$b/series" > /dev/null
mapfile -t series < <(ls "$b"/series/0*.patch | grep -v /0000-cover-letter)
key=$( { cat "$top/build/linux-tree/version" "$fragment" "${series[@]}"; } | sha256sum | cut -c1-16)
image=$obj/arch/x86/boot/bzImage ko=$obj/drivers/virt/dirtyring/dirtyring.ko
if [[ -f $b/key && $(cat "$b/key") == "$key" && -f $image && -f $ko ]]; then
	echo "$image $ko"
	exit 0
fi
rm -f "$b/key"

[[ -d $src/.git ]] || git clone -q --shared -b base "$top/build/linux-tree/linux" "$src"
git -C "$src" am --abort >/dev/null 2>&1 || true
# Back to the pristine tree touching only what differs, so make rebuilds
# only what the series changed.
git -C "$src" checkout -q -f -B debug base
git -C "$src" clean -fdq
git -C "$src" -c user.name=debug -c user.email=debug@dirtyring.invalid \
	am -q "${series[@]}"

mkdir -p "$obj"
make -s -C "$src" O="$obj" KCONFIG_ALLCONFIG="$fragment" allnoconfig >&2
# Every option of the fragment must have survived (a missing dependency
# would drop one silently).
missing=$(grep -E '^CONFIG_' "$fragment" | while IFS= read -r line; do
	want=${line%%=*} value=${line#*=}
	if [[ $value == n ]]; then
		grep -q "^$want=" "$obj/.config" && echo "$line"
	else
		grep -qxF "$line" "$obj/.config" || echo "$line"
	fi
done)
if [[ -n $missing ]]; then
	echo "debug-kernel: the configuration lost: $missing" >&2
	exit 1
fi
echo "debug-kernel: building (key $key), $(nproc) jobs" >&2
start=$SECONDS
make -s -C "$src" O="$obj" -j"$(nproc)" bzImage modules >&2
echo "debug-kernel: built in $((SECONDS - start)) s" >&2
echo "$key" > "$b/key"
echo "$image $ko"
