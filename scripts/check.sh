#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make check: runs every test tier, each writing result lines into
# build/results/<tier>.tsv, then prints the summary. A tier whose runner
# fails without naming a failed test still counts as one failure, so a
# crashed runner can never pass silently.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
results=build/results
rm -rf "$results"
mkdir -p "$results"

tier() {
	local name=$1
	shift
	local file=$results/$name.tsv start=$SECONDS rc=0
	echo "== $name"
	"$@" > "$file.raw" || rc=$?
	# Result lines go to the file, anything else the runner said to the user.
	grep -P '^(PASS|FAIL|SKIP)\t' "$file.raw" > "$file" || true
	grep -vP '^(PASS|FAIL|SKIP)\t' "$file.raw" || true
	rm -f "$file.raw"
	if [[ $rc -ne 0 ]] && ! grep -q '^FAIL' "$file"; then
		printf 'FAIL\t%s\trunner exited %d without naming a failed test\n' "$name" "$rc" >> "$file"
	fi
	if [[ ! -s $file ]]; then
		printf 'FAIL\t%s\tran no test\n' "$name" >> "$file"
	fi
	echo "   $(grep -c '^PASS' "$file") passed, $(grep -c '^FAIL' "$file") failed, $(grep -c '^SKIP' "$file") skipped in $((SECONDS - start)) s"
}

ctest_tier() {
	local dir=$1 tier=$2
	(cd "$dir" && ctest --output-on-failure --timeout 300 -j2 \
		--output-junit junit.xml > ctest.log 2>&1)
	local rc=$?
	[[ $rc -ne 0 ]] && tail -40 "$dir/ctest.log" >&2
	scripts/junit2results.py "$dir/junit.xml" "$tier"
	return $rc
}

qemu_tier() {
	mapfile -t tests < <(scripts/guest-tests.sh)
	selftests/qemu/run --with-kvm --with-loop --test-timeout 600 \
		--helper build/cxx/tools/stat/dirtyring-stat-static --results "$results/qemu.raw.tsv" "${tests[@]}" >&2
	local rc=$?
	cat "$results/qemu.raw.tsv"
	rm -f "$results/qemu.raw.tsv"
	return $rc
}

# The same guest tests on the debug kernel (lockdep, KASAN, UBSAN, kmemleak,
# DEBUG_VM, debug objects) built from patches/: any report fails.
qemu_debug_tier() {
	local built image ko rc=0
	built=$(scripts/debug-kernel.sh) ||
		{ printf 'FAIL\tqemu-debug/kernel\tthe debug kernel did not build\n'; return 1; }
	read -r image ko <<< "$built"
	printf 'PASS\tqemu-debug/kernel\t%s\n' "$image"
	mapfile -t tests < <(scripts/guest-tests.sh)
	selftests/qemu/run --kernel "$image" --module "$ko" --kmemleak --test-timeout 1200 \
		--workdir build/qemu-debug --helper build/cxx/tools/stat/dirtyring-stat-static \
		--results "$results/qemu-debug.raw.tsv" "${tests[@]}" >&2 || rc=$?
	sed 's|\tqemu/|\tqemu-debug/|' "$results/qemu-debug.raw.tsv"
	rm -f "$results/qemu-debug.raw.tsv"
	return $rc
}

tier lint scripts/lint.sh build/linux-source
tier cxx ctest_tier build/cxx cxx
tier cxx-asan ctest_tier build/cxx-asan cxx-asan
tier cxx-tsan ctest_tier build/cxx-tsan cxx-tsan
tier install userspace/tests/install_test.sh "$top" build/cxx
tier model selftests/model/run build/model
tier patches scripts/patches-check.sh
tier dkms scripts/dkms.sh check "$(scripts/kver.sh)" build/dkms-check
tier qemu-debug qemu_debug_tier
tier qemu qemu_tier

echo
scripts/summary.sh "$results"
