// SPDX-License-Identifier: LGPL-2.1-or-later
// What both guests of dirtyring-migrate keep about their writer threads:
// writes per thread (progress), the first error a thread died of, and the
// hook a postcopy destination attributes faults with.  Thread-safety:
// writer threads count and record; any thread reads.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>

#include "dirtyring/migration/migratable_guest.hpp"

namespace dirtyring::migrate {

class WriterThreads : public MigratableGuest {
public:
    std::exception_ptr failure() const override;
    std::uint64_t progress(unsigned writer) override {
        return writes_[writer].load(std::memory_order_relaxed);
    }
    void set_vcpu_thread_hook(VcpuThreadHook hook) override { hook_ = std::move(hook); }

    // Waits until every writer thread made `writes` writes (the guest went
    // once over its working set: its memory is no longer mostly zeros);
    // false on timeout or when a thread died.
    bool wait_first_pass(std::chrono::milliseconds timeout);

protected:
    WriterThreads(unsigned writers, std::uint64_t first_pass_writes);

    void count(unsigned writer, std::uint64_t writes) {
        writes_[writer].fetch_add(writes, std::memory_order_relaxed);
    }
    // From a writer thread's catch block.
    void record_failure();
    // From a vCPU thread, before it first runs its vCPU.
    void started_vcpu_thread(unsigned vcpu);

private:
    unsigned writers_;
    std::uint64_t first_pass_writes_;
    std::unique_ptr<std::atomic<std::uint64_t>[]> writes_;
    VcpuThreadHook hook_;
    mutable std::mutex failure_mutex_;
    std::exception_ptr failure_;
};

}  // namespace dirtyring::migrate
