// SPDX-License-Identifier: LGPL-2.1-or-later
// The harvester against real KVM dirty rings on the host's /dev/kvm, with
// the minimal guest.  Skipped, with the reason, where KVM is unusable.
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "dirtyring/base/error.hpp"
#include "dirtyring/rings/harvester.hpp"
#include "harvested_pages.hpp"
#include "signal_storm.hpp"
#include "testing/kvm_guest.hpp"

namespace {

using dirtyring::DirtyPage;
using dirtyring::GuestProgram;
using dirtyring::Harvester;
using dirtyring::KvmGuest;
using dirtyring::testing_support::SignalStorm;

constexpr std::uint64_t kMemory = 16 << 20;  // 4096 pages

#define SKIP_WITHOUT_KVM()                                                   \
    do {                                                                     \
        if (auto why = KvmGuest::unavailable_reason()) GTEST_SKIP() << *why; \
    } while (0)

using Seen = dirtyring::testing_support::HarvestedPages;

class KvmHarvest : public testing::TestWithParam<unsigned> {};

TEST_P(KvmHarvest, ReturnsExactlyThePagesTheGuestWrote) {
    SKIP_WITHOUT_KVM();
    const unsigned vcpus = GetParam();
    KvmGuest guest({.vcpus = vcpus, .memory_bytes = kMemory, .ring_entries = 4096});
    Harvester harvester(guest.dirty_rings());
    Seen seen;
    const auto sink = [&](std::span<const DirtyPage> p) { seen.add(p); };
    std::map<std::uint64_t, int> expected;
    for (unsigned i = 0; i < vcpus; ++i) {
        // Interleaved pages, a different stride per vCPU.
        const GuestProgram program{300, KvmGuest::kFirstDataPage + i, vcpus + i, 32};
        guest.set_program(i, program);
        for (std::uint32_t n = 0; n < program.count; ++n)
            expected[program.first_page + n * program.stride] = 1;
    }
    std::vector<std::jthread> threads;
    for (unsigned i = 0; i < vcpus; ++i)
        threads.emplace_back([&, i] { guest.run_pass(i, harvester, sink); });
    threads.clear();
    harvester.harvest(sink);

    auto counts = seen.counts();
    // Exactly the pages written.  A page written by two vCPUs may be logged
    // by each (measured on these hosts' KVM: it logs per vCPU mapping), so
    // at most once per vCPU that wrote it.
    ASSERT_EQ(expected.size(), counts.size());
    for (const auto& [page, n] : counts) {
        ASSERT_TRUE(expected.count(page)) << "page " << page << " was not written";
        unsigned writers = 0;
        for (unsigned i = 0; i < vcpus; ++i) {
            const std::uint64_t first = KvmGuest::kFirstDataPage + i, stride = vcpus + i;
            writers +=
                page >= first && (page - first) % stride == 0 && (page - first) / stride < 300;
        }
        EXPECT_LE(1, n) << "page " << page;
        EXPECT_GE(static_cast<int>(writers), n) << "page " << page;
    }
}

INSTANTIATE_TEST_SUITE_P(Vcpus, KvmHarvest, testing::Values(2U, 4U), [](const auto& param_info) {
    return std::to_string(param_info.param) + "vcpus";
});

TEST(KvmHarvestRingFull, SmallRingFillsAndIsDrainedOnExit) {
    SKIP_WITHOUT_KVM();
    // 256 entries, KVM's minimum (one page); 64 reserved on these hosts.
    KvmGuest guest({.vcpus = 1, .memory_bytes = kMemory, .ring_entries = 256});
    Harvester harvester(guest.dirty_rings());
    Seen seen;
    guest.set_program(0, {2000, KvmGuest::kFirstDataPage, 1, 32});
    const unsigned full_exits =
        guest.run_pass(0, harvester, [&](std::span<const DirtyPage> p) { seen.add(p); });
    harvester.harvest([&](std::span<const DirtyPage> p) { seen.add(p); });
    EXPECT_LE(2000U / 256U, full_exits);
    auto counts = seen.counts();
    ASSERT_EQ(2000U, counts.size());
    for (const auto& [page, n] : counts) {
        EXPECT_EQ(1, n) << "page " << page;
        EXPECT_GE(page, KvmGuest::kFirstDataPage);
        EXPECT_LT(page, KvmGuest::kFirstDataPage + 2000);
    }
}

// A collector harvests, resets and copies into a shadow while the vCPUs
// keep writing; afterwards the shadow must equal guest memory, so a lost
// entry shows up as a difference (KVM's dirty_log_test, in C++).  With
// `signal_storm`, the collector takes a signal every 100 us meanwhile: KVM
// (since Linux 6.17) then stops its resets early and still returns their
// count, and the harvester must reset again before it lets a page be copied.
void expect_harvest_while_running_loses_nothing(bool signal_storm) {
    constexpr unsigned kVcpus = 2;
    constexpr unsigned kPasses = 30;
    KvmGuest guest({.vcpus = kVcpus, .memory_bytes = kMemory, .ring_entries = 1024});
    Harvester harvester(guest.dirty_rings());
    // vCPU 0 writes pages 2..1501, vCPU 1 pages 1002..2501: they overlap.
    guest.set_program(0, {1500, KvmGuest::kFirstDataPage, 1, 32});
    guest.set_program(1, {1500, KvmGuest::kFirstDataPage + 1000, 1, 16});
    // The host's own writes (program, mailboxes) are not logged: start from them.
    std::vector<std::uint8_t> shadow(kMemory);
    std::memcpy(shadow.data(), guest.memory(), kMemory);
    // Pages harvested by the vCPU threads on ring-full exits, not copied yet.
    std::mutex pending_mutex;
    std::vector<DirtyPage> pending;
    const auto add_pending = [&](std::span<const DirtyPage> p) {
        std::lock_guard lock(pending_mutex);
        pending.insert(pending.end(), p.begin(), p.end());
    };
    // One migration round: harvest, and copy every harvested page (ours and
    // the vCPU threads') only after the reset, under the harvester's lock.
    const auto collect = [&] {
        return harvester.harvest(add_pending, [&] {
            std::lock_guard lock(pending_mutex);
            for (const auto& p : pending)
                std::memcpy(shadow.data() + p.offset * KvmGuest::kPageSize,
                            guest.memory() + p.offset * KvmGuest::kPageSize, KvmGuest::kPageSize);
            pending.clear();
        });
    };
    std::atomic<unsigned> running{kVcpus};
    std::atomic<std::uint64_t> collected{0};
    {
        std::vector<std::jthread> vcpus;
        for (unsigned i = 0; i < kVcpus; ++i)
            vcpus.emplace_back([&, i] {
                for (unsigned pass = 0; pass < kPasses; ++pass)
                    guest.run_pass(i, harvester, add_pending);
                --running;
            });
        std::optional<SignalStorm> storm;
        if (signal_storm) storm.emplace(std::chrono::microseconds(100));
        // Collect until the vCPUs finished, and under a storm until one
        // signal at least was felt: work, not time.
        while (running.load() > 0 || (signal_storm && SignalStorm::delivered() == 0))
            collected += collect();
        collected += collect();
    }
    EXPECT_LT(std::uint64_t{kPasses}, collected.load());
    if (signal_storm) {
        const auto stats = harvester.stats();
        std::printf("signals %llu, harvests %llu, resets %llu (%llu again for marks left)\n",
                    static_cast<unsigned long long>(SignalStorm::delivered()),
                    static_cast<unsigned long long>(stats.harvests),
                    static_cast<unsigned long long>(stats.resets),
                    static_cast<unsigned long long>(stats.resets_for_marks));
        EXPECT_LT(0U, SignalStorm::delivered());
    }
    std::vector<std::uint64_t> differ;
    for (std::uint64_t page = 0; page < kMemory / KvmGuest::kPageSize; ++page)
        if (std::memcmp(shadow.data() + page * KvmGuest::kPageSize,
                        guest.memory() + page * KvmGuest::kPageSize, KvmGuest::kPageSize))
            differ.push_back(page);
    EXPECT_EQ(std::vector<std::uint64_t>{}, differ) << "pages written but never harvested";
}

TEST(KvmHarvestConcurrent, HarvestWhileRunningLosesNothing) {
    SKIP_WITHOUT_KVM();
    expect_harvest_while_running_loses_nothing(false);
}

TEST(KvmHarvestConcurrent, HarvestUnderASignalStormLosesNothing) {
    SKIP_WITHOUT_KVM();
    expect_harvest_while_running_loses_nothing(true);
}

struct BadGuest {
    const char* what;
    KvmGuest::Options options;
};

void PrintTo(const BadGuest& b, std::ostream* os) {
    *os << b.what;
}

class KvmGuestRejects : public testing::TestWithParam<BadGuest> {};

TEST_P(KvmGuestRejects, WithEinval) {
    SKIP_WITHOUT_KVM();
    try {
        KvmGuest guest(GetParam().options);
        FAIL() << "accepted";
    } catch (const dirtyring::Error& e) {
        EXPECT_EQ(EINVAL, e.errnum()) << e.what();
    }
}

INSTANTIATE_TEST_SUITE_P(
    BadOptions, KvmGuestRejects,
    testing::Values(BadGuest{"no vCPU", {.vcpus = 0}}, BadGuest{"65 vCPUs", {.vcpus = 65}},
                    BadGuest{"two pages of memory", {.memory_bytes = 8192}},
                    BadGuest{"unaligned memory", {.memory_bytes = (16 << 20) + 1}},
                    BadGuest{"ring not a power of two", {.ring_entries = 1000}},
                    BadGuest{"ring larger than KVM's maximum", {.ring_entries = 1U << 20}}),
    [](const auto& param_info) { return "case" + std::to_string(param_info.index); });

struct BadProgram {
    const char* what;
    GuestProgram program;
};

void PrintTo(const BadProgram& b, std::ostream* os) {
    *os << b.what;
}

class KvmGuestProgramRejects : public testing::TestWithParam<BadProgram> {};

TEST_P(KvmGuestProgramRejects, WithEinval) {
    SKIP_WITHOUT_KVM();
    KvmGuest guest({.vcpus = 1, .memory_bytes = kMemory});
    EXPECT_THROW(guest.set_program(0, GetParam().program), dirtyring::Error);
    EXPECT_THROW(guest.set_program(1, {1, KvmGuest::kFirstDataPage, 1, 1}), dirtyring::Error);
}

INSTANTIATE_TEST_SUITE_P(
    BadPrograms, KvmGuestProgramRejects,
    testing::Values(BadProgram{"writes the program page", {1, 0, 1, 1}},
                    BadProgram{"past the end", {2, 4095, 1, 1}},
                    BadProgram{"zero stride", {2, 2, 0, 1}}, BadProgram{"no exits", {2, 2, 1, 0}},
                    BadProgram{"exits too rarely for these hosts", {2, 2, 1, 33}}),
    [](const auto& param_info) { return "case" + std::to_string(param_info.index); });

}  // namespace
