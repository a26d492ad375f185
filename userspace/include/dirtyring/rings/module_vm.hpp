// SPDX-License-Identifier: LGPL-2.1-or-later
// A VM of the dirtyring module, as a RingBackend: owns the VM fd, the
// mapping of the per-VM ring, the mapping of each memory slot and its vCPUs
// (ModuleVcpu).  Its rings() are every vCPU's ring plus the per-VM ring, so
// a Harvester harvests it as it harvests KVM's rings.
//
// The rings are enabled by the constructor: the uAPI wants ENABLE_RINGS
// before any vCPU or mmap, so a VM without rings would be good for nothing.
//
// Thread-safety: add_slot, slot_memory, vcpu, ring_status, poll and reset
// from any threads.  create_vcpu changes rings(): call it before a
// Harvester runs over the VM, never concurrently with a harvest (the
// constructor's Options::vcpus covers the usual case).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "dirtyring/base/mapping.hpp"
#include "dirtyring/base/unique_fd.hpp"
#include "dirtyring/rings/device.hpp"
#include "dirtyring/rings/module_vcpu.hpp"
#include "dirtyring/rings/ring_backend.hpp"
#include "dirtyring/rings/ring_status.hpp"
#include "dirtyring/rings/ring_view.hpp"

namespace dirtyring {

class ModuleVm : public RingBackend {
public:
    // The module's limits (include/uapi/linux/dirtyring.h).
    static constexpr std::uint64_t kPageSize = 4096;
    static constexpr std::uint32_t kMaxVcpus = 64;
    static constexpr std::uint32_t kMaxSlots = 32;
    static constexpr std::uint64_t kMaxSlotSize = 1ULL << 38;  // bytes (256 GiB)
    static constexpr std::uint64_t kMaxSlotPages = kMaxSlotSize / kPageSize;
    static constexpr std::uint32_t kRingMinEntries = 128;
    static constexpr std::uint32_t kRingMaxEntries = 65536;
    static constexpr std::uint32_t kRingReservedEntries = 64;

    struct Options {
        // Entries per vCPU ring and of the per-VM ring: powers of two in
        // [kRingMinEntries, kRingMaxEntries].
        std::uint32_t vcpu_ring_entries = 4096;
        std::uint32_t vm_ring_entries = 4096;
        // vCPUs 0..vcpus-1, created at once.
        std::uint32_t vcpus = 0;
    };

    // What poll() of the VM fd reports.
    struct Readiness {
        bool harvestable = false;  // some ring holds entries not reset yet (EPOLLIN)
        bool soft_full = false;    // some ring is past its soft limit (EPOLLPRI)
    };

    // Creates a VM on the device, enables its rings and creates the vCPUs;
    // throws Error with the module's errno (EINVAL for bad ring sizes or
    // more than kMaxVcpus vCPUs, EMFILE/ENOSPC past the VM limits).
    ModuleVm(const Device& device, const Options& options);
    ~ModuleVm() override;
    ModuleVm(const ModuleVm&) = delete;
    ModuleVm& operator=(const ModuleVm&) = delete;

    // Adds memory slot `slot` of `pages` zero-filled pages and maps it
    // (shared, so every write is tracked).  EINVAL for a bad id or size,
    // EEXIST for an id in use, ENOSPC past the module's max_pinned_mb.
    void add_slot(std::uint32_t slot, std::uint64_t pages);

    // The memory of a slot added with add_slot; EINVAL for any other.
    std::span<std::uint8_t> slot_memory(std::uint32_t slot) const;

    // Creates vCPU `id`; EINVAL past kMaxVcpus, EEXIST for an id in use.
    // See the thread-safety note above.
    ModuleVcpu& create_vcpu(std::uint32_t id);

    // vCPU `id`, created earlier; EINVAL otherwise.
    ModuleVcpu& vcpu(std::uint32_t id) const;
    std::uint32_t vcpu_count() const noexcept { return static_cast<std::uint32_t>(vcpus_.size()); }

    // The per-VM ring's status (writers bound to no vCPU).
    RingStatus ring_status() const;

    // Waits up to `timeout` (negative: forever) for the VM fd to become
    // readable; nothing ready on timeout or when a signal interrupted.
    Readiness poll(std::chrono::milliseconds timeout) const;

    // RingBackend: each vCPU's ring in creation order, then the per-VM ring.
    std::span<RingView> rings() override { return views_; }
    // DIRTYRING_RESET_RINGS, called again while a signal interrupts it
    // (EINTR), so it returns only once every entry marked when it was called
    // is reset; the counts add up over those calls.  Also the only thing that
    // moves pages parked by a full ring into the per-VM ring (moved), while
    // that ring is below its soft limit.  Throws Error on any other failure.
    ResetResult reset() override;
    // The per-VM ring's soft limit: what one reset moves at most.
    std::uint64_t parked_pages_per_reset() const noexcept override {
        return options_.vm_ring_entries - kRingReservedEntries;
    }

    // DIRTYRING_CHECK_EXTENSION on the VM fd (see Device::check_extension).
    std::uint64_t check_extension(Capability cap) const;

    int fd() const noexcept { return fd_.get(); }

private:
    Options options_;
    UniqueFd fd_;
    Mapping vm_ring_;
    std::vector<std::unique_ptr<ModuleVcpu>> vcpus_;  // creation order
    std::array<ModuleVcpu*, kMaxVcpus> by_id_{};
    std::vector<RingView> views_;  // vCPU rings, then the VM ring
    mutable std::mutex slots_mutex_;
    std::array<Mapping, kMaxSlots> slots_;  // under slots_mutex_
};

}  // namespace dirtyring
