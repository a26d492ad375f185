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

if backend=$("$tool" --print-backend 2>/dev/null) && [[ $backend == kvm ]]; then
	echo "== 1/2 dirtyring-migrate on this host's KVM ($tool)"
	"$tool" --json build/demo-report.json
	echo "== 2/2 dirtyring-migrate with the module backend, in QEMU"
else
	echo "== /dev/kvm is unusable here: dirtyring-migrate with the module backend, in QEMU"
fi
exec selftests/qemu/run --demo --program --workdir build/demo \
	build/cxx/tools/migrate/dirtyring-migrate-static
