// SPDX-License-Identifier: LGPL-2.1-or-later
// The guest dirtyring-migrate migrates on a host with KVM: the library's
// minimal KVM guest, one thread per vCPU, each vCPU rewriting its share of a
// working set at a set rate, its dirty ring harvested into a DirtyBitmap.
//
// Thread-safety: start/stop/harvest_into/save/restore from the migration
// thread; vCPU threads harvest on ring-full exits (Harvester serializes).
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
#include "dirtyring/rings/harvester.hpp"
#include "testing/kvm_guest.hpp"
#include "writer_threads.hpp"

namespace dirtyring::migrate {

inline constexpr std::uint32_t kGuestKvm = 1;

struct WorkloadConfig {
    unsigned vcpus = 2;
    std::uint64_t memory_bytes = 64 << 20;
    std::uint64_t working_set_pages = 4096;  // rewritten over and over, split among vCPUs
    std::uint64_t dirty_rate = 10000;        // page writes per second, all vCPUs; 0: flat out
    std::uint32_t ring_entries = 4096;
    // Pages between a vCPU's consecutive writes: above 1, each vCPU's share
    // is spread over `stride` times as much memory, so that no page it
    // touches neighbours the previous one (a scattered touch order for
    // postcopy; the guest program walks its pages in address order).
    std::uint32_t stride = 1;
};

class KvmWorkload : public WriterThreads {
public:
    // A new guest with its program loaded, its dirty ring on, not running.
    static std::unique_ptr<KvmWorkload> source(const WorkloadConfig& config);
    // A guest over migrated memory: vCPUs wait for restore_vcpu().
    static std::unique_ptr<KvmWorkload> destination(const WorkloadConfig& config, std::byte* memory,
                                                    std::uint64_t pages, unsigned vcpus);
    ~KvmWorkload() override;

    std::uint32_t kind() const noexcept override { return kGuestKvm; }
    std::byte* memory() noexcept override { return reinterpret_cast<std::byte*>(guest_->memory()); }
    std::uint64_t pages() const noexcept override {
        return guest_->memory_bytes() / KvmGuest::kPageSize;
    }
    unsigned vcpus() const noexcept override { return guest_->vcpus(); }
    void start() override;
    void stop() override;
    std::uint64_t harvest_into(std::vector<std::uint64_t>& migration) override;
    std::vector<std::byte> save_vcpu(unsigned vcpu) override;
    void restore_vcpu(unsigned vcpu, std::span<const std::byte> state) override;

    // The counter the vCPU writes next (stopped vCPUs only), and what it was
    // when restore_vcpu() gave the vCPU its state.
    std::uint32_t next_value(unsigned vcpu) { return guest_->next_value(vcpu); }
    std::uint32_t restored_value(unsigned vcpu) const { return restored_.at(vcpu); }

    // Use source() or destination().
    KvmWorkload(const WorkloadConfig& config, std::unique_ptr<KvmGuest> guest);

private:
    void vcpu_loop(std::stop_token stop, unsigned vcpu);

    WorkloadConfig config_;
    std::unique_ptr<KvmGuest> guest_;
    std::unique_ptr<DirtyBitmap> bitmap_;
    std::unique_ptr<Harvester> harvester_;
    std::vector<std::jthread> threads_;
    std::vector<std::uint32_t> restored_;
};

}  // namespace dirtyring::migrate
