// SPDX-License-Identifier: LGPL-2.1-or-later
// Harvest cost on real KVM guests: the library (Harvester over KVM's dirty
// ring into a DirtyBitmap, reset included) against, in the same run,
//   - a bare loop over the mmapped ring (acquire load, bit set in a flat
//     bitmap, release store) plus KVM_RESET_DIRTY_RINGS, on a second VM;
//   - KVM_GET_DIRTY_LOG (the bitmap interface, which re-protects too) on a
//     third VM.
// The three VMs run the same guest program, one pass per iteration; only
// the harvests are timed.  Results are ratios (counters), never pass/fail.
#include <benchmark/benchmark.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdio>
#include <vector>

#include "dirtyring/base/error.hpp"
#include "dirtyring/base/mapping.hpp"
#include "dirtyring/bitmap/dirty_bitmap.hpp"
#include "dirtyring/rings/harvester.hpp"
#include "testing/kvm_guest.hpp"

namespace {

using dirtyring::DirtyBitmap;
using dirtyring::DirtyGfn;
using dirtyring::DirtyPage;
using dirtyring::GuestProgram;
using dirtyring::Harvester;
using dirtyring::KvmGuest;
using dirtyring::Mapping;
using Clock = std::chrono::steady_clock;

// Exact on these hosts with exits every 32 writes (DESIGN.md).
constexpr std::uint32_t kRingEntries = 4096;
constexpr std::uint64_t kGiB = 1ULL << 30;

double seconds(Clock::duration d) {
    return std::chrono::duration<double>(d).count();
}

// What one pass of a guest cost its harvester, and what it harvested.
struct PassCost {
    Clock::duration harvest{};
    std::uint64_t pages = 0;
};

// Runs vCPU 0 to the end of its pass, calling `harvest` (timed) on every
// ring-full exit and once at the end.
template <typename F>
PassCost run_pass(KvmGuest& guest, F&& harvest) {
    PassCost cost;
    const auto timed = [&] {
        const auto t0 = Clock::now();
        cost.pages += harvest();
        cost.harvest += Clock::now() - t0;
    };
    for (bool done = false; !done;) {
        switch (guest.run(0)) {
            case KvmGuest::Exit::Pass:
                done = true;
                break;
            case KvmGuest::Exit::Batch:
                break;
            case KvmGuest::Exit::RingFull:
                timed();
                break;
        }
    }
    timed();
    return cost;
}

// The bare loop: what a VMM writes by hand.
class BareRing {
public:
    explicit BareRing(KvmGuest& guest)
        : vm_fd_(guest.vm_fd()),
          ring_(kRingEntries * sizeof(DirtyGfn), PROT_READ | PROT_WRITE, MAP_SHARED,
                guest.vcpu_fd(0), KVM_DIRTY_LOG_PAGE_OFFSET * ::sysconf(_SC_PAGESIZE),
                "bare KVM dirty ring"),
          bitmap_(guest.memory_bytes() / KvmGuest::kPageSize / 64 + 1) {}

    // What a migration round does between harvests (untimed here).
    void clear_bitmap() { std::fill(bitmap_.begin(), bitmap_.end(), 0); }

    std::uint64_t harvest() {
        auto* entries = ring_.as<DirtyGfn>();
        std::uint64_t n = 0;
        for (;;) {
            DirtyGfn& e = entries[fetch_ & (kRingEntries - 1)];
            const std::uint32_t flags = __atomic_load_n(&e.flags, __ATOMIC_ACQUIRE);
            if (!(flags & dirtyring::kGfnDirty) || (flags & dirtyring::kGfnReset)) break;
            bitmap_[e.offset / 64] |= 1ULL << (e.offset % 64);
            __atomic_store_n(&e.flags, flags | dirtyring::kGfnReset, __ATOMIC_RELEASE);
            ++fetch_;
            ++n;
        }
        if (n && ::ioctl(vm_fd_, KVM_RESET_DIRTY_RINGS, 0) < 0)
            dirtyring::throw_errno("KVM_RESET_DIRTY_RINGS");
        return n;
    }

private:
    int vm_fd_;
    Mapping ring_;
    std::uint32_t fetch_ = 0;
    std::vector<std::uint64_t> bitmap_;
};

class DirtyLog {
public:
    explicit DirtyLog(KvmGuest& guest)
        : vm_fd_(guest.vm_fd()), bitmap_((guest.memory_bytes() / KvmGuest::kPageSize + 63) / 64) {}

    std::uint64_t harvest() {
        kvm_dirty_log log{};
        log.slot = 0;
        log.dirty_bitmap = bitmap_.data();
        if (::ioctl(vm_fd_, KVM_GET_DIRTY_LOG, &log)) dirtyring::throw_errno("KVM_GET_DIRTY_LOG");
        return 0;  // counted outside the timing
    }
    std::uint64_t dirty() const {
        std::uint64_t n = 0;
        for (const auto w : bitmap_) n += static_cast<std::uint64_t>(std::popcount(w));
        return n;
    }

private:
    int vm_fd_;
    std::vector<std::uint64_t> bitmap_;
};

// args: slot size in GiB, dirty pages per pass, stride between them (1:
// neighbours, as guests often dirty; 65: never two in one bitmap word).
void BM_Harvest(benchmark::State& state) {
    if (auto why = KvmGuest::unavailable_reason()) {
        state.SkipWithError(why->c_str());
        return;
    }
    const std::uint64_t slot_bytes = static_cast<std::uint64_t>(state.range(0)) * kGiB;
    const std::uint64_t slot_pages = slot_bytes / KvmGuest::kPageSize;
    // The 32-bit guest writes the low part only, whatever the slot size.
    const auto dirty = static_cast<std::uint32_t>(std::min<std::uint64_t>(
        static_cast<std::uint64_t>(state.range(1)),
        (std::min<std::uint64_t>(slot_pages, 1ULL << 20) - KvmGuest::kFirstDataPage) /
            static_cast<std::uint64_t>(state.range(2))));
    const auto stride = static_cast<std::uint32_t>(state.range(2));
    const GuestProgram program{dirty, KvmGuest::kFirstDataPage, stride, 32};

    KvmGuest lib_guest({.memory_bytes = slot_bytes, .ring_entries = kRingEntries});
    KvmGuest bare_guest({.memory_bytes = slot_bytes, .ring_entries = kRingEntries});
    KvmGuest log_guest({.memory_bytes = slot_bytes, .dirty_log_bitmap = true});
    for (KvmGuest* g : {&lib_guest, &bare_guest, &log_guest}) g->set_program(0, program);

    Harvester harvester(lib_guest.dirty_rings());
    DirtyBitmap bitmap(slot_pages);
    const auto lib_harvest = [&] {
        return harvester.harvest_with(
            [&](std::span<const DirtyPage> pages) { bitmap.set_batch(pages); });
    };
    BareRing bare(bare_guest);
    DirtyLog log(log_guest);

    // Warm-up pass: the first touch of each page allocates it.
    run_pass(lib_guest, lib_harvest);
    run_pass(bare_guest, [&] { return bare.harvest(); });
    run_pass(log_guest, [&] { return log.harvest(); });

    Clock::duration lib_time{}, bare_time{}, log_time{};
    std::uint64_t lib_pages = 0, bare_pages = 0, log_pages = 0;
    std::vector<std::uint64_t> migration;
    for (auto _ : state) {
        // Start each round from clean bitmaps, as migration rounds do after
        // their sync: every harvested page sets a fresh bit.
        bitmap.sync_and_clear(migration);
        bare.clear_bitmap();
        const PassCost l = run_pass(lib_guest, lib_harvest);
        const PassCost b = run_pass(bare_guest, [&] { return bare.harvest(); });
        const PassCost d = run_pass(log_guest, [&] { return log.harvest(); });
        state.SetIterationTime(seconds(l.harvest));
        lib_time += l.harvest;
        bare_time += b.harvest;
        log_time += d.harvest;
        lib_pages += l.pages;
        bare_pages += b.pages;
        log_pages += log.dirty();
    }
    const double n = static_cast<double>(state.iterations());
    state.counters["pages"] = static_cast<double>(lib_pages) / n;
    state.counters["bare_pages"] = static_cast<double>(bare_pages) / n;
    state.counters["log_pages"] = static_cast<double>(log_pages) / n;
    state.counters["lib_ms"] = seconds(lib_time) * 1e3 / n;
    state.counters["bare_ms"] = seconds(bare_time) * 1e3 / n;
    state.counters["getlog_ms"] = seconds(log_time) * 1e3 / n;
    state.counters["lib/bare"] = seconds(lib_time) / seconds(bare_time);
    state.counters["lib/getlog"] = seconds(lib_time) / seconds(log_time);
}

// About 2600 dirty pages whatever the slot size, then 1%, 10%, 100% of 1 GiB.
// About 2600 dirty pages whatever the slot size, then 1%, 10%, 100% of
// 1 GiB; iterations fixed so that each case takes seconds, not minutes
// (each iteration runs three guest passes).
BENCHMARK(BM_Harvest)
    ->ArgNames({"slot_GiB", "dirty", "stride"})
    ->Args({1, 2600, 1})
    ->Args({16, 2600, 1})
    ->Args({64, 2600, 1})
    ->Args({1, 2600, 65})
    ->Args({1, 2621, 1})
    ->Iterations(300)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Harvest)
    ->ArgNames({"slot_GiB", "dirty", "stride"})
    ->Args({1, 26214, 1})
    ->Iterations(30)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Harvest)
    ->ArgNames({"slot_GiB", "dirty", "stride"})
    ->Args({1, 262144, 1})
    ->Iterations(4)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
