// SPDX-License-Identifier: LGPL-2.1-or-later
// What MigrationSource and MigrationDestination need from a running guest,
// whatever runs it (a KVM guest, threads writing module memory).
//
// Dirty tracking: the guest harvests its rings into its own DirtyBitmap
// through its Harvester (vCPU threads may harvest too, on ring-full exits).
// harvest_into() runs a harvest and then, under the harvester's lock and
// after the reset, moves the bitmap into the migration bitmap: so every page
// it reports was re-protected before its content is read, and a write after
// the read is logged again.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace dirtyring {

class MigratableGuest {
public:
    virtual ~MigratableGuest() = default;

    // What the stream's header says the guest is, so the destination builds
    // the same kind: see the tool's guest kinds.
    virtual std::uint32_t kind() const noexcept = 0;
    virtual std::byte* memory() noexcept = 0;
    virtual std::uint64_t pages() const noexcept = 0;
    virtual unsigned vcpus() const noexcept = 0;

    // Starts every vCPU; stop() makes them stop writing and waits for them.
    virtual void start() = 0;
    virtual void stop() = 0;
    // The first error a vCPU thread died of, if any (the guest then stops).
    virtual std::exception_ptr failure() const = 0;

    // Harvests every ring and moves the pages dirtied since the last call
    // into `migration` (one bit per page); returns how many were newly set.
    virtual std::uint64_t harvest_into(std::vector<std::uint64_t>& migration) = 0;

    // vCPU state, taken while stopped and restored before start().
    virtual std::vector<std::byte> save_vcpu(unsigned vcpu) = 0;
    virtual void restore_vcpu(unsigned vcpu, std::span<const std::byte> state) = 0;

    // Writes the guest made so far, per vCPU: shows that it runs.
    virtual std::uint64_t progress(unsigned vcpu) = 0;

    // Called on each vCPU thread, with its thread id, before it first runs
    // the vCPU: a postcopy destination attributes its faults with it.
    using VcpuThreadHook = std::function<void(unsigned vcpu, pid_t tid)>;
    virtual void set_vcpu_thread_hook(VcpuThreadHook hook) = 0;
};

}  // namespace dirtyring
