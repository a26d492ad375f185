// SPDX-License-Identifier: LGPL-2.1-or-later
// Blocktime insert + resolve cost: the address table of Blocktime against
// the old design (one fault address per vCPU, every vCPU walked on each
// resolved page), for 1..1024 vCPUs, measured in the same run.  Every
// vCPU has a fault in flight (the worst case for the walk); each operation
// resolves one vCPU's page and faults it on the next page.
#include <benchmark/benchmark.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "dirtyring/postcopy/blocktime.hpp"

namespace {

constexpr std::uint64_t kBase = 0x7f0000000000, kPage = 4096;
constexpr int kOpsPerRound = 8192;

// The design blocktime had before per-address lists: one address per vCPU.
class OldBlocktime {
public:
    OldBlocktime(unsigned vcpus, dirtyring::Blocktime::Clock clock)
        : clock_(std::move(clock)), addr_(vcpus), start_(vcpus), total_(vcpus) {}
    void register_vcpu_thread(pid_t tid, unsigned vcpu) { vcpu_of_tid_[tid] = vcpu; }
    void fault_begin(std::uint64_t addr, pid_t tid) {
        const auto it = vcpu_of_tid_.find(tid);
        if (it == vcpu_of_tid_.end()) return;
        const std::uint64_t now = clock_();
        addr_[it->second] = addr;
        start_[it->second] = now;
    }
    unsigned fault_end(std::uint64_t addr) {
        const std::uint64_t now = clock_();
        unsigned resolved = 0;
        for (std::size_t i = 0; i < addr_.size(); ++i) {
            if (addr_[i] != addr) continue;
            addr_[i] = 0;
            total_[i] += now - start_[i];
            ++resolved;
        }
        return resolved;
    }

private:
    dirtyring::Blocktime::Clock clock_;
    std::unordered_map<pid_t, unsigned> vcpu_of_tid_;
    std::vector<std::uint64_t> addr_, start_, total_;
};

template <typename B>
double ns_per_op(B& bt, unsigned vcpus, std::uint64_t& next_page) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int op = 0; op < kOpsPerRound; ++op) {
        const unsigned v = static_cast<unsigned>(op) % vcpus;
        // vCPU v's page in flight is the one it faulted on `vcpus` ops ago.
        const std::uint64_t old = kBase + (next_page - vcpus) * kPage;
        benchmark::DoNotOptimize(bt.fault_end(old));
        bt.fault_begin(kBase + next_page * kPage, static_cast<pid_t>(1000 + v));
        ++next_page;
    }
    const auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::nano>(t1 - t0).count() / kOpsPerRound;
}

template <typename B>
B warmed(unsigned vcpus, std::uint64_t& next_page) {
    std::uint64_t now = 0;
    B bt(vcpus, [now]() mutable { return ++now; });
    for (unsigned v = 0; v < vcpus; ++v) bt.register_vcpu_thread(static_cast<pid_t>(1000 + v), v);
    for (unsigned v = 0; v < vcpus; ++v)
        bt.fault_begin(kBase + next_page++ * kPage, static_cast<pid_t>(1000 + v));
    return bt;
}

void BM_BlocktimeBeginEnd(benchmark::State& state) {
    const auto vcpus = static_cast<unsigned>(state.range(0));
    std::uint64_t next_new = 0, next_old = 0;
    auto fresh = warmed<dirtyring::Blocktime>(vcpus, next_new);
    auto old = warmed<OldBlocktime>(vcpus, next_old);
    double new_ns = 0, old_ns = 0;
    for (auto _ : state) {
        new_ns += ns_per_op(fresh, vcpus, next_new);
        old_ns += ns_per_op(old, vcpus, next_old);
    }
    const auto n = static_cast<double>(state.iterations());
    state.counters["new_ns_per_op"] = new_ns / n;
    state.counters["old_ns_per_op"] = old_ns / n;
    state.counters["old_over_new"] = old_ns / new_ns;
    state.SetItemsProcessed(state.iterations() * kOpsPerRound);
}
BENCHMARK(BM_BlocktimeBeginEnd)->Arg(1)->Arg(16)->Arg(128)->Arg(1024);

}  // namespace

BENCHMARK_MAIN();
