#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# make demo: a default live migration, end to end, with no arguments.
#   - where /dev/kvm works: dirtyring-migrate on the host, a real KVM guest
#     migrated between two processes;
#   - otherwise: in Debian's kernel booted by QEMU with dirtyring.ko loaded,
#     the same tool with the module backend (threads dirtying module memory).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
tool=build/cxx/tools/migrate/dirtyring-migrate

if backend=$("$tool" --print-backend 2>/dev/null) && [[ $backend == kvm ]]; then
	echo "== dirtyring-migrate on this host's KVM ($tool)"
	exec "$tool" --json build/demo-report.json
fi
echo "== /dev/kvm is unusable here: dirtyring-migrate with the module backend, in QEMU"
exec selftests/qemu/run --demo --program --workdir build/demo \
	build/cxx/tools/migrate/dirtyring-migrate-static
