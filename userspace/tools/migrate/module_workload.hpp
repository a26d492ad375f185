// SPDX-License-Identifier: LGPL-2.1-or-later
// The guest dirtyring-migrate migrates with the dirtyring module: threads
// instead of a CPU.  Each "vCPU" is a thread bound to a module vCPU that
// rewrites its share of the working set (a counter at the start of each
// page), at a set rate; an unbound I/O thread writes a region of its own, so
// the per-VM ring is used too.  On the source, memory is a module slot and a
// collector thread harvests whenever poll() on the VM fd says a ring is
// soft-full (writers past it wait in the kernel until then).  On the
// destination the same threads run on ordinary memory (userfaultfd-
// registered in postcopy), untracked: tracking is the source's job.
//
// Thread-safety: start/stop/harvest_into/save/restore from the migration
// thread; the collector and the migration thread harvest through one
// Harvester (which serializes).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "dirtyring/bitmap/dirty_bitmap.hpp"
#include "dirtyring/migration/migratable_guest.hpp"
#include "dirtyring/rings/device.hpp"
#include "dirtyring/rings/harvester.hpp"
#include "dirtyring/rings/module_vm.hpp"
#include "kvm_workload.hpp"
#include "writer_threads.hpp"

namespace dirtyring::migrate {

inline constexpr std::uint32_t kGuestThreads = 2;

class ModuleWorkload : public WriterThreads {
public:
    static std::unique_ptr<ModuleWorkload> source(const WorkloadConfig& config);
    static std::unique_ptr<ModuleWorkload> destination(const WorkloadConfig& config,
                                                       std::byte* memory, std::uint64_t pages,
                                                       unsigned vcpus);
    ModuleWorkload(const WorkloadConfig& config, std::byte* memory, std::uint64_t pages);
    ~ModuleWorkload() override;

    std::uint32_t kind() const noexcept override { return kGuestThreads; }
    std::byte* memory() noexcept override { return memory_; }
    std::uint64_t pages() const noexcept override { return pages_; }
    unsigned vcpus() const noexcept override { return config_.vcpus; }
    void start() override;
    void stop() override;
    std::uint64_t harvest_into(std::vector<std::uint64_t>& migration) override;
    std::vector<std::byte> save_vcpu(unsigned vcpu) override;
    void restore_vcpu(unsigned vcpu, std::span<const std::byte> state) override;
    // The counter vCPU `vcpu` writes next (stopped only), and at restore.
    std::uint64_t next_value(unsigned vcpu) const { return state_.at(vcpu).counter; }
    std::uint64_t restored_value(unsigned vcpu) const { return restored_.at(vcpu); }
    // Pages the per-VM ring gave (writes of the unbound I/O thread and
    // anything else not bound to a vCPU).
    std::uint64_t vm_ring_pages() const noexcept { return vm_ring_pages_.load(); }
    // Entries each ring took since the VM was created, vCPU rings first,
    // the per-VM ring last, as the module counts them; empty on the
    // destination (no module VM there).
    std::vector<std::uint64_t> ring_pages();

private:
    struct WriterState {
        std::uint64_t counter = 1;
        std::uint64_t position = 0;  // index into the writer's share
    };
    void writer_loop(std::stop_token stop, unsigned writer);
    void collector_loop(std::stop_token stop);
    void sink(std::span<const DirtyPage> pages);
    std::uint64_t share() const noexcept;

    WorkloadConfig config_;
    std::unique_ptr<ModuleVm> vm_;  // source only
    std::byte* memory_;
    std::uint64_t pages_;
    std::unique_ptr<DirtyBitmap> bitmap_;
    std::unique_ptr<Harvester> harvester_;
    std::vector<WriterState>
        state_;  // vCPUs, then the I/O thread; owned by its thread while running
    std::vector<std::uint64_t> restored_;
    std::atomic<std::uint64_t> vm_ring_pages_{0};
    std::vector<std::jthread> writers_;
    std::jthread collector_;
};

}  // namespace dirtyring::migrate
