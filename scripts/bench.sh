#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make bench: every benchmark, each reporting ratios against a baseline
# measured in the same run (never a pass/fail on speed).
#   - the module, in the QEMU-booted kernel: first-write cost and
#     harvest/reset cost against soft-dirty (selftests/dirtyring/ring_bench.c),
#     and the first-write cost of statistics, against the module built
#     without them (stats_bench.c);
#   - libdirtyring's Google Benchmark programs, on the host.
# Output is also saved under build/bench/.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
out=build/bench
mkdir -p "$out"
rc=0

mapfile -t benches < <(for b in $(make -s -C selftests/dirtyring list-bench); do
	echo "$top/build/selftests/$b"; done)
echo "== module benchmarks (QEMU, TCG: absolute times are emulated, ratios are the result)"
# stats_bench swaps the module for its DR_NO_STATS build and back.
selftests/qemu/run --bench --mem 4096 --test-timeout 1200 --workdir "$out/qemu" \
	--helper build/kmod-nostats/dirtyring-nostats.ko \
	--env DR_STATS_KO=/lib/dirtyring.ko --env DR_NOSTATS_KO=/tests/dirtyring-nostats.ko \
	"${benches[@]}" | tee "$out/module.txt" || rc=1

for b in build/cxx/bench/*; do
	[[ -x $b && -f $b ]] || continue
	echo "== $(basename "$b")"
	"$b" --benchmark_counters_tabular=true | tee "$out/$(basename "$b").txt" || rc=1
done
exit $rc
