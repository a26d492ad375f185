// SPDX-License-Identifier: LGPL-2.1-or-later
// vCPU blocktime accounting of postcopy faults (destination side), and its
// report in the names and units of QEMU's query-migrate (10.1).
//
// Blocktime owns: the thread id -> vCPU map, per page address the list of
// (vCPU, fault time) waiting on it, per vCPU its counters, and the
// all-vCPUs-blocked time.  Times are nanoseconds of an injected clock.
//
// Thread-safety: none; the owner serializes every call (Postcopy does it
// under its own lock, which it needs anyway to keep page state and
// accounting consistent).  BlocktimeReport is a plain value.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace dirtyring {

struct BlocktimeReport {
    // Bucket N counts latencies in [2^N, 2^(N+1)) us; below 1 us goes to 0,
    // beyond the last bucket to the last (QEMU's postcopy-latency-dist).
    static constexpr std::size_t kLatencyBuckets = 24;

    // Time during which every vCPU was blocked at once.
    std::uint64_t blocktime_ns = 0;
    // Per vCPU: time with at least one fault in flight.
    std::vector<std::uint64_t> vcpu_blocktime_ns;
    std::vector<std::uint64_t> vcpu_faults;
    std::vector<std::uint64_t> vcpu_faults_resolved;
    std::vector<std::uint32_t> vcpu_faults_in_flight;
    // Sum over resolved faults of (resolution - fault) time: each fault's
    // own latency, so two faults of one vCPU in flight at once (its thread
    // and, under KVM, an async page-fault worker) count in full each, and
    // vcpu_latency_ns() is the mean time a fault of that vCPU waited.  QEMU
    // 10.1 instead divides a vCPU's blocktime (overlaps counted once) by
    // its fault count, which reads lower whenever faults overlap; the two
    // agree when a vCPU has one fault in flight at a time.
    std::vector<std::uint64_t> vcpu_latency_total_ns;
    std::uint64_t non_vcpu_faults = 0;
    std::uint64_t non_vcpu_faults_resolved = 0;
    std::uint64_t non_vcpu_latency_total_ns = 0;
    std::array<std::uint64_t, kLatencyBuckets> latency_dist{};

    // Averages over resolved faults, 0 without any.
    std::uint64_t latency_ns() const;
    std::uint64_t vcpu_latency_ns(unsigned vcpu) const;
    std::uint64_t non_vcpu_latency_ns() const;

    // The query-migrate members: postcopy-blocktime and
    // postcopy-vcpu-blocktime in ms; postcopy-latency, postcopy-vcpu-latency
    // and postcopy-non-vcpu-latency in ns; postcopy-latency-dist; plus
    // postcopy-vcpu-faults and postcopy-non-vcpu-faults (ours).
    std::string to_json() const;
};

class Blocktime {
public:
    // Nanoseconds, never decreasing (a decrease is reported as an error).
    using Clock = std::function<std::uint64_t()>;
    static Clock monotonic_clock();

    // vcpus: 1..kMaxVcpus.
    static constexpr unsigned kMaxVcpus = 1u << 16;
    explicit Blocktime(unsigned vcpus, Clock clock = monotonic_clock());

    // tid > 0 runs vCPU `vcpu` from now on; a tid names one vCPU at most
    // (re-registering it for the same vCPU is harmless; for another one,
    // EEXIST, since one live thread cannot run two vCPUs).
    void register_vcpu_thread(pid_t tid, unsigned vcpu);
    // Thread `tid` runs no vCPU any more (it exits, or a restarted vCPU
    // gets a new thread): its later faults are a non-vCPU thread's, and the
    // kernel may hand the tid to a thread that registers for any vCPU.
    // Faults it has in flight stay charged to the vCPU that took them.
    // ENOENT for a tid that is not registered.
    void unregister_vcpu_thread(pid_t tid);
    std::optional<unsigned> vcpu_of(pid_t tid) const;

    // Thread `tid` faulted on page `addr` (a page address: never ~0).
    // Returns the vCPU, or nothing for a non-vCPU thread.
    std::optional<unsigned> fault_begin(std::uint64_t addr, pid_t tid);
    // Page `addr` was placed: every fault waiting on it is resolved.
    // Returns how many; 0 for a page nobody faulted on (background pages).
    unsigned fault_end(std::uint64_t addr);

    unsigned vcpus() const noexcept { return static_cast<unsigned>(vcpus_.size()); }
    unsigned vcpus_blocked() const noexcept { return blocked_; }
    BlocktimeReport report() const;

private:
    static constexpr std::uint32_t kNil = ~std::uint32_t{0};
    static constexpr std::uint64_t kEmpty = ~std::uint64_t{0};
    static constexpr std::int32_t kNonVcpu = -1;

    struct Vcpu {
        std::uint64_t faults = 0;
        std::uint64_t resolved = 0;
        std::uint32_t in_flight = 0;
        std::uint64_t blocked_since = 0;
        std::uint64_t blocked_ns = 0;
        std::uint64_t latency_ns = 0;
    };
    // One waiter on one address; pooled, linked by index.
    struct Waiter {
        std::uint64_t fault_time;
        std::int32_t vcpu;
        std::uint32_t next;
    };
    // Open addressing, linear probing, deletion by backward shift: no
    // tombstones, so lookups stay short however many pages came and went.
    struct Slot {
        std::uint64_t addr = kEmpty;
        std::uint32_t head = kNil;
    };

    std::uint64_t now();
    std::size_t slot_of(std::uint64_t addr) const noexcept;
    std::size_t find(std::uint64_t addr) const noexcept;
    void erase_slot(std::size_t i) noexcept;
    void grow_table();
    std::uint32_t new_waiter(std::uint64_t time, std::int32_t vcpu, std::uint32_t next);

    Clock clock_;
    std::uint64_t last_time_ = 0;
    std::vector<Vcpu> vcpus_;
    std::unordered_map<pid_t, unsigned> vcpu_of_tid_;
    std::vector<Slot> table_;
    std::size_t used_ = 0;
    std::vector<Waiter> waiters_;
    std::uint32_t free_ = kNil;
    unsigned blocked_ = 0;
    std::uint64_t all_blocked_since_ = 0;
    std::uint64_t all_blocked_ns_ = 0;
    std::uint64_t non_vcpu_faults_ = 0;
    std::uint64_t non_vcpu_resolved_ = 0;
    std::uint64_t non_vcpu_latency_ns_ = 0;
    std::array<std::uint64_t, BlocktimeReport::kLatencyBuckets> latency_dist_{};
};

}  // namespace dirtyring
