#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make check's patches tier: patches/ is what `make patches` makes of this
# tree now; it applies with `git am` to a pristine linux-source-6.1, one
# patch at a time; the tree builds after each (the uAPI header compiled on
# its own, the driver with CONFIG_DIRTYRING=y and =m, the documentation
# parsed, the kselftests built against the installed headers); every patch
# passes checkpatch.pl --strict; get_maintainer.pl finds the entry.
#
# usage: patches-check.sh   (prints PASS/FAIL lines)
set -uo pipefail
# Debian's Python, whose packages (ply, git, docutils, yaml) the checks use.
export PATH=/usr/bin:$PATH
top=$(cd "$(dirname "$0")/.." && pwd)
b=$top/build/patches-check
cache=$top/build/linux-tree
jobs=$(nproc)

report() { printf '%s\tpatches/%s\t%s\n' "$1" "$2" "${3-}"; }
# check NAME CMD...: one result line; the command's output on failure.
check() {
	local name=$1 log
	shift
	log=$b/log/${name//\//_}.log
	if "$@" > "$log" 2>&1; then
		report PASS "$name"
	else
		report FAIL "$name" "$(tail -3 "$log" | tr '\n\t' '  ')"
		tail -30 "$log" >&2
		return 1
	fi
}

rm -rf "$b"
mkdir -p "$b/log"
"$top/scripts/linux-tree.sh" "$cache" >&2 || { report FAIL linux-tree "no pristine tree"; exit 1; }

check up-to-date bash -c "'$top/scripts/patches.sh' '$b/regen' >/dev/null && diff -ru '$top/patches' '$b/regen'"

mapfile -t series < <(ls "$top"/patches/0*.patch | grep -v /0000-cover-letter)
[[ ${#series[@]} -gt 0 ]] || { report FAIL series "patches/ is empty"; exit 1; }

src=$b/linux
git clone -q --shared -b base "$cache/linux" "$src"
git -C "$src" config user.name check
git -C "$src" config user.email check@dirtyring.invalid
obj=$b/obj
kmake() { make -s -C "$src" O="$obj" -j"$jobs" "$@"; }

# A small configuration with what the driver needs, the driver as $1.
configure() {
	[[ -f $obj/.config ]] || kmake allnoconfig
	"$src/scripts/config" --file "$obj/.config" -e 64BIT -e MODULES -e NET \
		-e VIRT_DRIVERS "--$1" DIRTYRING
	kmake olddefconfig
	grep -qx "CONFIG_DIRTYRING=$2" "$obj/.config"
}

header() {
	kmake headers &&
	echo '#include <linux/dirtyring.h>' |
		gcc -fsyntax-only -Wall -Werror -isystem "$obj/usr/include" -x c -
}

driver() {
	configure enable y && kmake drivers/virt/dirtyring/ &&
	test -f "$obj/drivers/virt/dirtyring/built-in.a" &&
	configure module m && kmake drivers/virt/dirtyring/dirtyring.ko &&
	modinfo "$obj/drivers/virt/dirtyring/dirtyring.ko" | grep -q '^license: *GPL'
}

docs() {
	grep -qx '   dirtyring' "$src/Documentation/virt/index.rst" &&
	python3 -m docutils --halt=warning --report=warning \
		"$src/Documentation/virt/dirtyring.rst" /dev/null &&
	python3 -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' \
		"$src/Documentation/netlink/specs/dirtyring.yaml"
}

kselftests() {
	kmake headers && mkdir -p "$b/kselftests" &&
	make -s -C "$src/tools/testing/selftests/dirtyring" OUTPUT="$b/kselftests" \
		KHDR_INCLUDES="-isystem $obj/usr/include" &&
	for t in $(make -s -C "$top/selftests/dirtyring" list); do
		test -x "$b/kselftests/$t" || { echo "$t was not built"; exit 1; }
	done &&
	grep -qx 'TARGETS += dirtyring' "$src/tools/testing/selftests/Makefile"
}

maintainers() {
	(cd "$src" && ./scripts/get_maintainer.pl --no-git -f include/uapi/linux/dirtyring.h) |
		grep -q 'maintainers@dirtyring.invalid'
}

for p in "${series[@]}"; do
	n=$(basename "$p" .patch)
	n=${n:0:4}
	check "apply:$n" git -C "$src" am -q "$p" || exit 1
	check "checkpatch:$n" bash -c "cd '$src' && ./scripts/checkpatch.pl --strict --terse -q '$p'"
	# What each step adds must build; what came before must still build.
	check "build:$n:header" header
	[[ -d $src/drivers/virt/dirtyring ]] && check "build:$n:driver" driver
	[[ -f $src/Documentation/virt/dirtyring.rst ]] && check "build:$n:docs" docs
	[[ -d $src/tools/testing/selftests/dirtyring ]] && check "build:$n:kselftests" kselftests
	grep -q '^DIRTYRING DRIVER$' "$src/MAINTAINERS" && check "build:$n:maintainers" maintainers
done
exit 0
