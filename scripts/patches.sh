#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make patches: the module as an in-tree Linux patch series, generated from
# this tree onto Debian's linux-source-6.1 (scripts/linux-tree.sh), into
# patches/ (or OUT_DIR).  Never edit patches/ by hand: edit this tree and
# run `make patches`; `make check` fails when patches/ is stale.
#
# What goes where, and the commit messages (upstream/*.txt):
#   1 include/uapi/linux/dirtyring.h, its ioctl type in ioctl-number.rst
#   2 drivers/virt/dirtyring/ (kmod/, Kconfig), hooked into drivers/virt/
#   3 Documentation/virt/dirtyring.rst, Documentation/netlink/specs/
#   4 tools/testing/selftests/dirtyring/ (selftests/dirtyring/), TARGETS
# Patch 1 creates the MAINTAINERS entry; each patch adds its files to it.
# The identity and dates are fixed, so the same tree gives the same bytes.
#
# usage: patches.sh [OUT_DIR]   (prints the work tree's path last)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:-$top/patches}")
cache=$top/build/linux-tree
work=$top/build/patches-work

"$top/scripts/linux-tree.sh" "$cache"
rm -rf "$work"
git clone -q --shared -b base "$cache/linux" "$work"
cd "$work"
git checkout -q -b dirtyring

export GIT_AUTHOR_NAME="dirtyring maintainers" GIT_AUTHOR_EMAIL=maintainers@dirtyring.invalid
export GIT_COMMITTER_NAME=$GIT_AUTHOR_NAME GIT_COMMITTER_EMAIL=$GIT_AUTHOR_EMAIL
export GIT_AUTHOR_DATE='2024-01-01T00:00:00Z' GIT_COMMITTER_DATE='2024-01-01T00:00:00Z'
commit() {
	# -f: Debian's .gitignore ignores everything at the top level.
	git add -A -f
	{ cat "$top/upstream/$1"; echo; echo "Signed-off-by: $GIT_AUTHOR_NAME <$GIT_AUTHOR_EMAIL>"; } |
		git commit -q -F -
}
# sources DIR PATTERN...: the files of this tree (tracked or about to be),
# never what a build left there (kbuild's *.mod.c).
sources() {
	local dir=$1
	shift
	git -C "$top" ls-files -co --exclude-standard "${@/#/$dir/}"
}
# maintain PATH: PATH in the MAINTAINERS entry (patch 1 creates it).
maintain() {
	"$top/scripts/patches-maintainers.py" "$GIT_AUTHOR_NAME <$GIT_AUTHOR_EMAIL>" "$1"
}
# insert FILE AFTER_REGEX TEXT: TEXT as lines after the first line matching.
insert() {
	python3 - "$@" <<'EOF'
import re, sys
path, pattern, text = sys.argv[1:]
lines = open(path).read().split("\n")
for i, line in enumerate(lines):
    if re.search(pattern, line):
        lines[i + 1:i + 1] = text.split("\n")
        break
else:
    sys.exit(f"patches: no line matches {pattern!r} in {path}")
open(path, "w").write("\n".join(lines))
EOF
}

# 1: the uAPI header.
cp "$top/include/uapi/linux/dirtyring.h" include/uapi/linux/
insert Documentation/userspace-api/ioctl/ioctl-number.rst '^0xDB  ' \
	'0xDC  00-2F  uapi/linux/dirtyring.h                                    dirtyring driver'
maintain include/uapi/linux/dirtyring.h
commit 1-uapi.txt

# 2: the driver.  Its Makefile is kmod/Kbuild without the out-of-tree part.
d=drivers/virt/dirtyring
mkdir -p "$d"
sources kmod '*.[ch]' | xargs -I{} cp "$top/{}" "$d/"
cp "$top/Kconfig" "$d/Kconfig"
sed '/^# out of tree: begin/,/^# out of tree: end/d' "$top/kmod/Kbuild" > "$d/Makefile"
insert drivers/virt/Kconfig '^source "drivers/virt/acrn/Kconfig"' \
	$'\nsource "drivers/virt/dirtyring/Kconfig"'
insert drivers/virt/Makefile '^obj-\$\(CONFIG_ACRN_HSM\)' \
	'obj-$(CONFIG_DIRTYRING)	+= dirtyring/'
maintain drivers/virt/dirtyring/
commit 2-driver.txt

# 3: documentation.
cp "$top/Documentation/virt/dirtyring.rst" Documentation/virt/
mkdir -p Documentation/netlink/specs
cp "$top/Documentation/netlink/specs/dirtyring.yaml" Documentation/netlink/specs/
insert Documentation/virt/index.rst '^   acrn/index' '   dirtyring'
maintain Documentation/netlink/specs/dirtyring.yaml
maintain Documentation/virt/dirtyring.rst
commit 3-docs.txt

# 4: the kselftests.
t=tools/testing/selftests/dirtyring
mkdir -p "$t"
sources selftests/dirtyring '*.[ch]' Makefile | xargs -I{} cp "$top/{}" "$t/"
make -s -C "$top/selftests/dirtyring" list list-bench | tr ' ' '\n' | sed '/^$/d; s|^|/|' > "$t/.gitignore"
insert tools/testing/selftests/Makefile '^TARGETS \+= damon$' 'TARGETS += dirtyring'
maintain tools/testing/selftests/dirtyring/
commit 4-selftests.txt

git config branch.dirtyring.description "$(cat "$top/upstream/cover.txt")"
rm -rf "$out"
mkdir -p "$out"
# A fixed abbreviation: git's default grows with the repository's objects.
git -c core.abbrev=12 format-patch -q --no-signature --cover-letter --cover-from-description=subject \
	--base=base -o "$out" base..dirtyring
echo "$work"
