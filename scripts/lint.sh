#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# checkpatch --strict on the kernel side (module, uAPI header) and
# clang-format on user space. Prints one result line per file checked and
# exits 1 when any is unclean.
#
# usage: lint.sh LINUX_SOURCE_CACHE
set -uo pipefail
cache=$1
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
rc=0
report() {
	local status=$1 name=$2 detail=${3-}
	printf '%s\tlint/%s\t%s\n' "$status" "$name" "$detail"
	[[ $status == PASS ]] || rc=1
}

# Sources only (tracked or about to be), never kbuild's generated files.
files() { git ls-files -co --exclude-standard "$@"; }

mapfile -t kernel < <(files 'kmod/*.[ch]' 'include/uapi/*.h')
for f in "${kernel[@]}"; do
	out=$(perl "$cache/scripts/checkpatch.pl" --strict --no-tree --terse --show-types \
		--no-summary -f "$f" 2>&1)
	if [[ -z $out ]]; then report PASS "checkpatch:$f"
	else report FAIL "checkpatch:$f" "$(echo "$out" | head -3 | tr '\n' ' ')"
	fi
done

# The kselftests go to tools/, where the kernel's C99 types are the rule.
mapfile -t ksft < <(files 'selftests/dirtyring/*.[ch]')
for f in "${ksft[@]}"; do
	out=$(perl "$cache/scripts/checkpatch.pl" --strict --no-tree --terse --show-types \
		--no-summary --ignore PREFER_KERNEL_TYPES -f "$f" 2>&1)
	if [[ -z $out ]]; then report PASS "checkpatch:$f"
	else report FAIL "checkpatch:$f" "$(echo "$out" | head -3 | tr '\n' ' ')"
	fi
done

# Every source file carries the SPDX line of its licence (README: Licences).
spdx=$(/usr/bin/python3 scripts/spdx.py check)
echo "$spdx"
grep -q '^FAIL' <<< "$spdx" && rc=1

mapfile -t cxx < <(files 'userspace/*.cpp' 'userspace/*.hpp')
for f in "${cxx[@]}"; do
	if out=$(clang-format --dry-run -Werror "$f" 2>&1); then report PASS "clang-format:$f"
	else report FAIL "clang-format:$f" "$(echo "$out" | head -1)"
	fi
done
exit $rc
