// SPDX-License-Identifier: LGPL-2.1-or-later
// ModuleVm and the Harvester against the real module, in the QEMU-booted
// kernel (only built into dirtyring_guest_tests: on the host there is no
// module, and these tests must not pass there by skipping).
#include <gtest/gtest.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "dirtyring/base/error.hpp"
#include "dirtyring/rings/device.hpp"
#include "dirtyring/rings/harvester.hpp"
#include "dirtyring/rings/module_vm.hpp"
#include "harvested_pages.hpp"
#include "signal_storm.hpp"
#include "stall_watch.hpp"

namespace {

using namespace std::chrono_literals;
using dirtyring::Device;
using dirtyring::DirtyPage;
using dirtyring::Harvester;
using dirtyring::ModuleVcpu;
using dirtyring::ModuleVm;
using dirtyring::testing_support::StallWatch;
constexpr std::uint64_t kPage = ModuleVm::kPageSize;

// Stores `value` into 64-bit word `word` of `page`: a tracked first write
// when the page is clean.
void write_word(std::span<std::uint8_t> memory, std::uint64_t page, unsigned word,
                std::uint64_t value) {
    auto* p = reinterpret_cast<std::uint64_t*>(memory.data() + page * kPage) + word;
    std::atomic_ref<std::uint64_t>(*p).store(value, std::memory_order_relaxed);
}

std::uint64_t read_word(std::span<std::uint8_t> memory, std::uint64_t page, unsigned word) {
    auto* p = reinterpret_cast<std::uint64_t*>(memory.data() + page * kPage) + word;
    return std::atomic_ref<std::uint64_t>(*p).load(std::memory_order_relaxed);
}

using Seen = dirtyring::testing_support::HarvestedPages;

// Every page in [0, pages) harvested, and a page harvested again only for
// a store in flight across a reset: the fault logged the page, the reset
// re-armed it before the store retired (while its writer waited at the soft
// limit, or on its way back to user mode), and the retried store logged it
// again, or the reset saw the fault's reference and relogged it.  That race
// needs no wait, so counting waits and relogs cannot bound it, and a
// harvest's extra pass resets again at once and can catch the retried store
// a second time.  What bounds it: writer w stores pages [w * pages_each,
// (w + 1) * pages_each) one at a time, so each reset catches at most one
// store of each writer.
void expect_each_page_once_but_in_flight(const std::map<std::uint64_t, int>& counts,
                                         std::uint64_t pages, std::uint64_t pages_each,
                                         std::uint64_t resets) {
    ASSERT_EQ(pages, counts.size());
    EXPECT_EQ(pages - 1, counts.rbegin()->first);
    std::vector<std::uint64_t> duplicates(pages / pages_each + 1, 0);
    for (const auto& [page, n] : counts) {
        EXPECT_LE(1, n) << "page " << page;
        duplicates[page / pages_each] += static_cast<std::uint64_t>(n - 1);
    }
    for (std::size_t w = 0; w < duplicates.size(); ++w)
        EXPECT_LE(duplicates[w], resets) << "writer " << w;
}

std::uint64_t total_waits(const ModuleVm& vm) {
    std::uint64_t waits = vm.ring_status().waits;
    for (std::uint32_t i = 0; i < vm.vcpu_count(); ++i) waits += vm.vcpu(i).ring_status().waits;
    return waits;
}

std::uint64_t total_overflows(const ModuleVm& vm) {
    std::uint64_t n = vm.ring_status().overflows;
    for (std::uint32_t i = 0; i < vm.vcpu_count(); ++i) n += vm.vcpu(i).ring_status().overflows;
    return n;
}

// --- exact pages, per ring ----------------------------------------------------

class ModuleHarvest : public testing::TestWithParam<std::uint32_t> {};

// Writer w < vcpus is bound to vCPU w; writer `vcpus` is bound to nothing.
// Each writes its own pages (some twice); every ring must hold exactly its
// writer's pages, and the harvester must return exactly all of them, once,
// in this cycle and again after the reset re-protected them.
TEST_P(ModuleHarvest, ReturnsExactlyThePagesEachRingsWriterWrote) {
    const std::uint32_t vcpus = GetParam();
    const std::uint32_t writers = vcpus + 1;
    constexpr std::uint64_t kPages = 4096;
    ModuleVm vm(Device::open(),
                {.vcpu_ring_entries = 4096, .vm_ring_entries = 4096, .vcpus = vcpus});
    vm.add_slot(0, kPages);
    const auto memory = vm.slot_memory(0);
    ASSERT_EQ(kPages * kPage, memory.size());
    ASSERT_EQ(vcpus + 1, vm.rings().size());

    // Writer w: pages w, w + writers, ... below kPages - 1000 (the rest stay
    // clean), each written twice.
    std::vector<std::vector<std::uint64_t>> pages(writers);
    for (std::uint64_t page = 0; page < kPages - 1000; ++page)
        pages[page % writers].push_back(page);
    const auto write_all = [&](std::uint64_t value) {
        std::vector<std::jthread> threads;
        for (std::uint32_t w = 0; w < writers; ++w)
            threads.emplace_back([&, w] {
                ModuleVcpu::Binding binding;
                if (w < vcpus) binding = vm.vcpu(w).bind();
                for (int round = 0; round < 2; ++round)
                    for (const auto page : pages[w]) write_word(memory, page, 0, value + w);
            });
    };
    write_all(1);

    // Per ring: rings() is the vCPUs in id order, then the VM ring.
    for (std::uint32_t r = 0; r < writers; ++r) {
        std::vector<DirtyPage> got(kPages);
        got.resize(vm.rings()[r].collect(got));
        std::vector<std::uint64_t> offsets;
        for (const auto& p : got) offsets.push_back(p.offset);
        std::sort(offsets.begin(), offsets.end());
        EXPECT_EQ(pages[r], offsets) << "ring " << r;
    }
    EXPECT_EQ(kPages - 1000, vm.reset().entries);
    for (std::uint32_t i = 0; i < vcpus; ++i) {
        EXPECT_EQ(pages[i].size(), vm.vcpu(i).ring_status().pushed) << "vCPU " << i;
        EXPECT_FALSE(vm.vcpu(i).ring_status().bound) << "vCPU " << i;
    }
    EXPECT_EQ(pages[vcpus].size(), vm.ring_status().pushed);

    // Second cycle, through the Harvester: the reset made every page
    // trackable again.
    write_all(100);
    Harvester harvester(vm);
    Seen seen;
    const auto sink = [&](std::span<const DirtyPage> p) { seen.add(p); };
    EXPECT_EQ(kPages - 1000, harvester.harvest(sink));
    EXPECT_EQ(0U, harvester.harvest(sink));
    const auto counts = seen.counts();
    ASSERT_EQ(kPages - 1000, counts.size());
    for (const auto& [page, n] : counts) {
        EXPECT_LT(page, kPages - 1000);
        EXPECT_EQ(1, n) << "page " << page;
    }
}

INSTANTIATE_TEST_SUITE_P(Vcpus, ModuleHarvest, testing::Values(2U, 4U), [](const auto& param_info) {
    return std::to_string(param_info.param) + "vcpus";
});

// --- ring full: writers wait, harvests release them ---------------------------

// A bound writer that fills its 128-entry ring waits at the soft limit,
// poll() says so, and each harvest lets it go on: nothing deadlocks, no
// page is lost.
TEST(ModuleRingFull, WriterWaitsAtSoftLimitUntilHarvested) {
    constexpr std::uint64_t kPages = 1000;
    ModuleVm vm(Device::open(), {.vcpu_ring_entries = 128, .vm_ring_entries = 128, .vcpus = 1});
    vm.add_slot(0, kPages);
    const auto memory = vm.slot_memory(0);
    EXPECT_FALSE(vm.poll(0ms).harvestable);

    std::atomic<std::uint64_t> written{0};
    std::jthread writer([&] {
        auto binding = vm.vcpu(0).bind();
        for (std::uint64_t page = 0; page < kPages; ++page) {
            write_word(memory, page, 0, page);
            ++written;
        }
    });
    Harvester harvester(vm);
    Seen seen;
    unsigned soft_full_seen = 0;
    StallWatch stall("the writer, held at its soft limit, never released");
    while (written.load() < kPages) {
        // Let the writer run into its soft limit before harvesting.
        while (!vm.vcpu(0).ring_status().soft_full && written.load() < kPages) {
            stall.check(written.load());
            std::this_thread::sleep_for(1ms);
        }
        if (written.load() < kPages) {
            ++soft_full_seen;
            EXPECT_TRUE(vm.poll(0ms).soft_full);
            // The writer is held: it does not write on into the reserve.
            const auto before = written.load();
            std::this_thread::sleep_for(20ms);
            const auto status = vm.vcpu(0).ring_status();
            EXPECT_TRUE(status.soft_full);
            EXPECT_LE(status.used, status.soft_limit + 1);
            EXPECT_LE(written.load(), before + 1);
        }
        harvester.harvest([&](std::span<const DirtyPage> p) { seen.add(p); });
    }
    writer.join();
    harvester.harvest([&](std::span<const DirtyPage> p) { seen.add(p); });
    EXPECT_LE(kPages / 128, soft_full_seen);
    const auto status = vm.vcpu(0).ring_status();
    EXPECT_LE(kPages / 128, status.waits);
    EXPECT_EQ(0U, status.overflows);
    expect_each_page_once_but_in_flight(seen.counts(), kPages, kPages, harvester.stats().resets);
}

// Two bound writers and an unbound one outrun a harvester polling the VM
// fd, on 128-entry rings: they are held at the soft limit and released by
// the harvests until all their pages are written and harvested, once each.
TEST(ModuleRingFull, WritersOutrunningTheHarvesterAreReleased) {
    constexpr std::uint32_t kWriters = 3;  // vCPU 0, vCPU 1, no vCPU
    constexpr std::uint64_t kPagesEach = 3000;
    ModuleVm vm(Device::open(), {.vcpu_ring_entries = 128, .vm_ring_entries = 128, .vcpus = 2});
    vm.add_slot(0, kWriters * kPagesEach);
    const auto memory = vm.slot_memory(0);
    std::atomic<std::uint32_t> running{kWriters};
    Harvester harvester(vm);
    Seen seen;
    const auto sink = [&](std::span<const DirtyPage> p) { seen.add(p); };
    {
        std::vector<std::jthread> threads;
        for (std::uint32_t w = 0; w < kWriters; ++w)
            threads.emplace_back([&, w] {
                ModuleVcpu::Binding binding;
                if (w < 2) binding = vm.vcpu(w).bind();
                for (std::uint64_t i = 0; i < kPagesEach; ++i)
                    write_word(memory, w * kPagesEach + i, 0, i + 1);
                --running;
            });
        StallWatch stall("writers held at the soft limit, never released");
        std::uint64_t harvested = 0;
        while (running.load() > 0) {
            stall.check(harvested);
            // Harvest late, so that the writers outrun the harvester.
            if (vm.poll(100ms).harvestable) {
                std::this_thread::sleep_for(5ms);
                harvested += harvester.harvest(sink);
            }
        }
    }
    harvester.harvest(sink);
    EXPECT_LT(0U, total_waits(vm)) << "the writers never outran the harvester";
    EXPECT_EQ(0U, total_overflows(vm));
    expect_each_page_once_but_in_flight(seen.counts(), kWriters * kPagesEach, kPagesEach,
                                        harvester.stats().resets);
}

// --- harvest while writers keep running ---------------------------------------

// Writers (two bound, one not) keep writing counters into overlapping pages
// in random order while a collector harvests and, after each reset, copies
// every harvested page into a shadow.  At the end the shadow must equal the
// memory (a lost entry leaves a stale word), and the harvested pages must be
// exactly the pages written (the writers' own record).
TEST(ModuleHarvestConcurrent, HarvestWhileWritersRunLosesNothing) {
    constexpr std::uint32_t kWriters = 3;
    constexpr std::uint64_t kPages = 2048;
    constexpr unsigned kWritesEach = 60000;
    constexpr std::uint64_t kMinRounds = 20;
    ModuleVm vm(Device::open(), {.vcpu_ring_entries = 1024, .vm_ring_entries = 512, .vcpus = 2});
    vm.add_slot(0, kPages);
    const auto memory = vm.slot_memory(0);
    Harvester harvester(vm);

    // Writer w writes word w of pages [w * 512, w * 512 + 1024): ranges overlap.
    std::vector<std::vector<bool>> written(kWriters, std::vector<bool>(kPages));
    std::vector<std::uint64_t> shadow(kPages * kWriters);
    std::vector<bool> harvested(kPages);
    std::mutex pending_mutex;
    std::vector<DirtyPage> pending;
    const auto collect = [&] {
        return harvester.harvest(
            [&](std::span<const DirtyPage> p) {
                std::lock_guard lock(pending_mutex);
                pending.insert(pending.end(), p.begin(), p.end());
            },
            [&] {
                std::lock_guard lock(pending_mutex);
                for (const auto& p : pending) {
                    harvested[p.offset] = true;
                    for (unsigned w = 0; w < kWriters; ++w)
                        shadow[p.offset * kWriters + w] = read_word(memory, p.offset, w);
                }
                pending.clear();
            });
    };
    std::atomic<std::uint32_t> running{kWriters};
    std::atomic<std::uint64_t> rounds{0};
    {
        std::vector<std::jthread> threads;
        for (std::uint32_t w = 0; w < kWriters; ++w)
            threads.emplace_back([&, w] {
                ModuleVcpu::Binding binding;
                if (w < 2) binding = vm.vcpu(w).bind();
                std::mt19937_64 rng(w);
                // Write on until the collector has run enough rounds alongside.
                for (unsigned i = 1; i <= kWritesEach || rounds.load() < kMinRounds; ++i) {
                    const std::uint64_t page = w * 512 + rng() % 1024;
                    written[w][page] = true;
                    write_word(memory, page, w, i);
                }
                --running;
            });
        while (running.load() > 0) {
            collect();
            ++rounds;
        }
    }
    collect();
    EXPECT_LE(kMinRounds, rounds.load());
    std::uint64_t stale = 0, unwritten = 0, missed = 0;
    for (std::uint64_t page = 0; page < kPages; ++page) {
        bool any = false;
        for (unsigned w = 0; w < kWriters; ++w) {
            any = any || written[w][page];
            stale += shadow[page * kWriters + w] != read_word(memory, page, w);
        }
        missed += any && !harvested[page];
        unwritten += !any && harvested[page];
    }
    EXPECT_EQ(0U, stale) << "words written but never harvested after their write";
    EXPECT_EQ(0U, missed) << "pages written, never harvested";
    EXPECT_EQ(0U, unwritten) << "pages harvested, never written";
}

// --- harvest under a signal storm ---------------------------------------------

using dirtyring::testing_support::SignalStorm;

// A harvester over `vm` that, in after_reset, copies the first `words`
// words of every harvested page of slot 0 into a shadow: what a migration
// sends.  After the writers stopped and one more harvest, the shadow must
// equal the memory: a page handed out before its reset, or left behind
// (parked), leaves a stale word.
class ShadowCopy {
public:
    ShadowCopy(ModuleVm& vm, std::uint64_t pages, unsigned words)
        : harvester_(vm),
          memory_(vm.slot_memory(0)),
          words_(words),
          shadow_(pages * words),
          harvested_(pages) {}

    std::uint64_t harvest() {
        return harvester_.harvest(
            [&](std::span<const DirtyPage> p) {
                pending_.insert(pending_.end(), p.begin(), p.end());
            },
            [&] {
                for (const auto& p : pending_) {
                    harvested_.at(p.offset) = true;
                    for (unsigned w = 0; w < words_; ++w)
                        shadow_[p.offset * words_ + w] = read_word(memory_, p.offset, w);
                }
                pending_.clear();
            });
    }

    std::uint64_t stale_words() const {
        std::uint64_t stale = 0;
        for (std::uint64_t page = 0; page < harvested_.size(); ++page)
            for (unsigned w = 0; w < words_; ++w)
                stale += shadow_[page * words_ + w] != read_word(memory_, page, w);
        return stale;
    }
    bool harvested(std::uint64_t page) const { return harvested_.at(page); }
    Harvester::Stats stats() { return harvester_.stats(); }

    void print_stats(std::uint64_t signals) {
        const auto s = stats();
        std::printf(
            "signals %llu, harvests %llu, resets %llu (%llu again for marks left, "
            "%llu calls interrupted), %llu extra passes for parked pages\n",
            static_cast<unsigned long long>(signals), static_cast<unsigned long long>(s.harvests),
            static_cast<unsigned long long>(s.resets),
            static_cast<unsigned long long>(s.resets_for_marks),
            static_cast<unsigned long long>(s.interrupted),
            static_cast<unsigned long long>(s.extra_passes));
    }

private:
    Harvester harvester_;
    std::span<std::uint8_t> memory_;
    unsigned words_;
    std::vector<DirtyPage> pending_;  // only the harvesting thread touches these
    std::vector<std::uint64_t> shadow_;
    std::vector<bool> harvested_;
};

// Writers (two bound, one not) write counters into overlapping pages while
// the harvesting thread takes a signal every 100 us, and copies harvested
// pages after each reset.  After the writers stop, one harvest, still under
// the storm, must leave the shadow equal to the memory.  Two shapes: small
// rings, so the writers keep waiting for resets that signals cut short; and
// large rings harvested every few milliseconds, so that a reset has more
// than the 1024 entries after which the module checks for a signal.
struct StormCase {
    const char* name;
    std::uint32_t ring_entries;       // per vCPU and of the VM ring
    std::uint64_t pages_each;         // pages each writer writes, overlapping the next's by half
    std::chrono::microseconds pause;  // between harvests
    unsigned writes_each;             // at least, and on until
    std::uint64_t min_rounds;         // harvests ran alongside
};

void PrintTo(const StormCase& c, std::ostream* os) {
    *os << c.name;
}

class HarvesterUnderSignalStorm : public testing::TestWithParam<StormCase> {};

TEST_P(HarvesterUnderSignalStorm, ShadowEqualsMemoryAfterTheLastHarvest) {
    const StormCase& c = GetParam();
    constexpr std::uint32_t kWriters = 3;
    const std::uint64_t pages = (kWriters + 1) * c.pages_each / 2;
    ModuleVm vm(
        Device::open(),
        {.vcpu_ring_entries = c.ring_entries, .vm_ring_entries = c.ring_entries, .vcpus = 2});
    vm.add_slot(0, pages);
    const auto memory = vm.slot_memory(0);
    ShadowCopy copy(vm, pages, kWriters);
    std::vector<std::vector<bool>> written(kWriters, std::vector<bool>(pages));
    std::atomic<std::uint32_t> running{kWriters};
    std::atomic<std::uint64_t> rounds{0};
    const std::uint64_t signals_before = SignalStorm::delivered();
    {
        SignalStorm storm(std::chrono::microseconds(100));
        {
            std::vector<std::jthread> threads;
            for (std::uint32_t w = 0; w < kWriters; ++w)
                threads.emplace_back([&, w] {
                    ModuleVcpu::Binding binding;
                    if (w < 2) binding = vm.vcpu(w).bind();
                    std::mt19937_64 rng(w + 100);
                    // Work, not time: on until the collector ran its rounds
                    // and the storm was felt, however fast the machine.
                    for (unsigned i = 1; i <= c.writes_each || rounds.load() < c.min_rounds ||
                                         SignalStorm::delivered() - signals_before < 100;
                         ++i) {
                        const std::uint64_t page = w * c.pages_each / 2 + rng() % c.pages_each;
                        written[w][page] = true;
                        write_word(memory, page, w, i);
                    }
                    --running;
                });
            StallWatch stall("writers held for a reset, never released");
            std::uint64_t harvested = 0;
            while (running.load() > 0) {
                stall.check(harvested);
                if (c.pause.count()) std::this_thread::sleep_for(c.pause);
                harvested += copy.harvest();
                ++rounds;
            }
        }
        copy.harvest();  // the one harvest after the stop, still under the storm
    }
    const std::uint64_t signals = SignalStorm::delivered() - signals_before;
    copy.print_stats(signals);
    EXPECT_LE(100U, signals) << "the storm did not happen";
    EXPECT_LE(c.min_rounds, rounds.load());
    EXPECT_EQ(0U, copy.stale_words()) << "words written but never copied after their write";
    std::uint64_t missed = 0, unwritten = 0;
    for (std::uint64_t page = 0; page < pages; ++page) {
        bool any = false;
        for (unsigned w = 0; w < kWriters; ++w) any = any || written[w][page];
        missed += any && !copy.harvested(page);
        unwritten += !any && copy.harvested(page);
    }
    EXPECT_EQ(0U, missed) << "pages written, never harvested";
    EXPECT_EQ(0U, unwritten) << "pages harvested, never written";
    EXPECT_EQ(0U, copy.harvest()) << "the last harvest left pages behind";
}

INSTANTIATE_TEST_SUITE_P(Shapes, HarvesterUnderSignalStorm,
                         testing::Values(StormCase{"small_rings", 256, 1024,
                                                   std::chrono::microseconds(0), 20000, 20},
                                         StormCase{"long_resets", 4096, 2048,
                                                   std::chrono::microseconds(2000), 10000, 10}),
                         [](const auto& param_info) { return std::string(param_info.param.name); });

// Another process writes (process_vm_writev) far more pages than the
// per-VM ring holds: it never waits, so the module parks what does not
// fit.  One harvest, under the storm, must return every page, parked ones
// included, each copied after its reset.
TEST(HarvesterParkedUnderSignalStorm, OneHarvestReturnsPagesParkedByAnotherProcess) {
    constexpr std::uint64_t kPages = 1000;
    ModuleVm vm(Device::open(), {.vcpu_ring_entries = 128, .vm_ring_entries = 128, .vcpus = 1});
    vm.add_slot(0, kPages);
    const auto memory = vm.slot_memory(0);
    ShadowCopy copy(vm, kPages, 1);
    const pid_t parent = ::getpid();
    const pid_t child = ::fork();
    ASSERT_LE(0, child);
    if (child == 0) {
        for (std::uint64_t page = 0; page < kPages; ++page) {
            std::uint64_t value = page + 1;
            iovec local{&value, sizeof(value)};
            iovec remote{memory.data() + page * kPage, sizeof(value)};
            if (::process_vm_writev(parent, &local, 1, &remote, 1, 0) != sizeof(value)) ::_exit(1);
        }
        ::_exit(0);
    }
    int status = 0;
    ASSERT_EQ(child, ::waitpid(child, &status, 0));
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "process_vm_writev into module memory failed in the child";
    EXPECT_LT(0U, total_overflows(vm)) << "nothing was parked: the test proves nothing";
    std::uint64_t harvested = 0;
    const std::uint64_t signals_before = SignalStorm::delivered();
    {
        SignalStorm storm(std::chrono::microseconds(100));
        harvested = copy.harvest();
    }
    copy.print_stats(SignalStorm::delivered() - signals_before);
    EXPECT_EQ(kPages, harvested);
    EXPECT_LT(0U, copy.stats().extra_passes);
    std::uint64_t missed = 0, unwritten = 0;
    for (std::uint64_t page = 0; page < kPages; ++page) {
        missed += !copy.harvested(page);
        unwritten += read_word(memory, page, 0) != page + 1;
    }
    EXPECT_EQ(0U, missed) << "pages written, not harvested by the one harvest";
    EXPECT_EQ(0U, unwritten) << "pages the other process did not write";
    EXPECT_EQ(0U, copy.stale_words());
    EXPECT_EQ(0U, copy.harvest());
}

// --- poll ----------------------------------------------------------------------

TEST(ModuleVmPoll, ReportsHarvestableUntilHarvested) {
    ModuleVm vm(Device::open(), {.vcpu_ring_entries = 128, .vm_ring_entries = 128});
    vm.add_slot(3, 4);
    const auto ready0 = vm.poll(0ms);
    EXPECT_FALSE(ready0.harvestable || ready0.soft_full);
    write_word(vm.slot_memory(3), 2, 0, 7);  // no vCPU: the VM ring
    const auto ready1 = vm.poll(1000ms);
    EXPECT_TRUE(ready1.harvestable);
    EXPECT_FALSE(ready1.soft_full);
    Harvester harvester(vm);
    std::vector<DirtyPage> got;
    harvester.harvest([&](std::span<const DirtyPage> p) { got.assign(p.begin(), p.end()); });
    EXPECT_EQ((std::vector<DirtyPage>{{3, 2}}), got);
    const auto ready2 = vm.poll(0ms);
    EXPECT_FALSE(ready2.harvestable || ready2.soft_full);
}

// --- bad input ----------------------------------------------------------------

struct BadCall {
    const char* what;
    int errnum;
    std::function<void(const Device&)> call;
};

void PrintTo(const BadCall& b, std::ostream* os) {
    *os << b.what;
}

class ModuleVmRejects : public testing::TestWithParam<BadCall> {};

TEST_P(ModuleVmRejects, WithErrno) {
    const auto device = Device::open();
    try {
        GetParam().call(device);
        FAIL() << "accepted";
    } catch (const dirtyring::Error& e) {
        EXPECT_EQ(GetParam().errnum, e.errnum()) << e.what();
    }
}

ModuleVm small_vm(const Device& d, std::uint32_t vcpus = 1) {
    return {d, {.vcpu_ring_entries = 128, .vm_ring_entries = 128, .vcpus = vcpus}};
}

INSTANTIATE_TEST_SUITE_P(
    BadInput, ModuleVmRejects,
    testing::Values(
        BadCall{"vCPU ring not a power of two", EINVAL,
                [](const Device& d) { ModuleVm(d, {.vcpu_ring_entries = 1000}); }},
        BadCall{"vCPU ring below the minimum", EINVAL,
                [](const Device& d) { ModuleVm(d, {.vcpu_ring_entries = 64}); }},
        BadCall{"VM ring above the maximum", EINVAL,
                [](const Device& d) { ModuleVm(d, {.vm_ring_entries = 1U << 17}); }},
        BadCall{"VM ring of zero entries", EINVAL,
                [](const Device& d) { ModuleVm(d, {.vm_ring_entries = 0}); }},
        BadCall{"65 vCPUs", EINVAL,
                [](const Device& d) {
                    ModuleVm(d, {.vcpu_ring_entries = 128, .vm_ring_entries = 128, .vcpus = 65});
                }},
        BadCall{"slot id past the last", EINVAL,
                [](const Device& d) { small_vm(d).add_slot(ModuleVm::kMaxSlots, 1); }},
        BadCall{"slot of zero pages", EINVAL, [](const Device& d) { small_vm(d).add_slot(0, 0); }},
        BadCall{"slot larger than the module's maximum", EINVAL,
                [](const Device& d) { small_vm(d).add_slot(0, ModuleVm::kMaxSlotPages + 1); }},
        BadCall{"slot larger than max_pinned_mb", ENOSPC,
                [](const Device& d) { small_vm(d).add_slot(0, ModuleVm::kMaxSlotPages / 2); }},
        BadCall{"slot id in use", EEXIST,
                [](const Device& d) {
                    auto vm = small_vm(d);
                    vm.add_slot(1, 1);
                    vm.add_slot(1, 1);
                }},
        BadCall{"memory of a slot never added", EINVAL,
                [](const Device& d) {
                    auto vm = small_vm(d);
                    vm.add_slot(1, 1);
                    (void)vm.slot_memory(2);
                }},
        BadCall{"memory of slot id past the last", EINVAL,
                [](const Device& d) { (void)small_vm(d).slot_memory(~0U); }},
        BadCall{"vCPU id in use", EEXIST, [](const Device& d) { small_vm(d).create_vcpu(0); }},
        BadCall{"vCPU id past the last", EINVAL,
                [](const Device& d) { small_vm(d).create_vcpu(ModuleVm::kMaxVcpus); }},
        BadCall{"vCPU never created", EINVAL, [](const Device& d) { (void)small_vm(d).vcpu(1); }},
        BadCall{"bind a vCPU twice from one thread", EALREADY,
                [](const Device& d) {
                    auto vm = small_vm(d);
                    auto b = vm.vcpu(0).bind();
                    auto again = vm.vcpu(0).bind();
                }},
        BadCall{"bind a second vCPU from one thread", EBUSY,
                [](const Device& d) {
                    auto vm = small_vm(d, 2);
                    auto b = vm.vcpu(0).bind();
                    auto other = vm.vcpu(1).bind();
                }},
        BadCall{"bind a vCPU another thread holds", EBUSY,
                [](const Device& d) {
                    auto vm = small_vm(d);
                    auto b = vm.vcpu(0).bind();
                    std::exception_ptr error;
                    std::thread([&] {
                        try {
                            auto mine = vm.vcpu(0).bind();
                        } catch (...) {
                            error = std::current_exception();
                        }
                    }).join();
                    if (error) std::rethrow_exception(error);
                }}),
    [](const auto& param_info) { return "case" + std::to_string(param_info.index); });

// --- lifetimes ------------------------------------------------------------------

// A binding unbinds when it goes, whichever thread ends it, and outliving
// its VM is harmless.
TEST(ModuleVcpuBinding, UnbindsOnDestructionFromAnyThread) {
    auto vm = std::make_unique<ModuleVm>(
        Device::open(),
        ModuleVm::Options{.vcpu_ring_entries = 128, .vm_ring_entries = 128, .vcpus = 1});
    ModuleVcpu::Binding binding = vm->vcpu(0).bind();
    EXPECT_TRUE(vm->vcpu(0).ring_status().bound);
    std::thread([b = std::move(binding)]() mutable { b.reset(); }).join();
    EXPECT_FALSE(vm->vcpu(0).ring_status().bound);
    // Bindable again, by this thread; then the VM goes first.
    binding = vm->vcpu(0).bind();
    vm.reset();
    binding.reset();
}

}  // namespace
