#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make demo: a default live migration, end to end, with no arguments, on
# both backends:
#   - where /dev/kvm works: dirtyring-migrate on the host, a real KVM guest
#     migrated between two processes;
#   - then, always: in Debian's kernel booted by QEMU with dirtyring.ko
#     loaded, the same tool with the module backend (threads bound to module
#     vCPUs and an unbound I/O thread dirtying module memory).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
tool=build/cxx/tools/migrate/dirtyring-migrate

mkdir -p build
rm -f build/demo-kvm.log build/demo-module.log
if backend=$("$tool" --print-backend 2>/dev/null) && [[ $backend == kvm ]]; then
	echo "== 1/2 dirtyring-migrate on this host's KVM ($tool)"
	"$tool" --json build/demo-report.json | tee build/demo-kvm.log
	echo "== 2/2 dirtyring-migrate with the module backend, in QEMU"
else
	echo "== /dev/kvm is unusable here: dirtyring-migrate with the module backend, in QEMU"
fi
selftests/qemu/run --demo --program --workdir build/demo \
	build/cxx/tools/migrate/dirtyring-migrate-static | tee build/demo-module.log

# Side by side: downtime against its estimate, rounds, pages, and for the
# module which rings the pages came through.
echo "== summary"
for run in kvm module; do
	[[ -f build/demo-$run.log ]] || continue
	line=$(grep -m1 '^summary: ' "build/demo-$run.log") ||
		{ echo "demo: the $run run printed no summary" >&2; exit 1; }
	printf '%-7s %s\n' "$run" "${line#summary: }"
done
