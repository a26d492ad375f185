#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Reads every results file of make check ("STATUS<TAB>NAME<TAB>DETAIL") and
# prints the skipped tests with their reasons, the failures, and one line:
#   N passed, N failed[, N skipped]
# Exits 1 when anything failed or no test ran at all.
set -euo pipefail
dir=$1
cat "$dir"/*.tsv 2>/dev/null > "$dir/all" || true
pass=$(grep -c '^PASS' "$dir/all" || true)
fail=$(grep -c '^FAIL' "$dir/all" || true)
skip=$(grep -c '^SKIP' "$dir/all" || true)
if [[ $skip -gt 0 ]]; then
	echo "Skipped:"
	awk -F'\t' '$1 == "SKIP" { printf "  %s: %s\n", $2, $3 }' "$dir/all"
fi
if [[ $fail -gt 0 ]]; then
	echo "Failed:"
	awk -F'\t' '$1 == "FAIL" { printf "  %s: %s\n", $2, $3 }' "$dir/all"
fi
line="$pass passed, $fail failed"
[[ $skip -gt 0 ]] && line+=", $skip skipped"
echo "$line"
[[ $fail -eq 0 && $pass -gt 0 ]]
