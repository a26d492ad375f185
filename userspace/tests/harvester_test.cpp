// SPDX-License-Identifier: LGPL-2.1-or-later
// The Harvester over an in-memory backend whose resets misbehave the ways
// kernels do: stopped early by a signal yet reporting success (KVM since
// Linux 6.17), pages parked by a full ring that only a reset moves into a
// ring (the module's overflow), a reset that never resets anything.  The
// promises under test (harvester.hpp): no page reaches after_reset before
// its entry was reset; one harvest after the writers stopped returns every
// page; a reset that makes no progress is an Error, not a hang.
#include "dirtyring/rings/harvester.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <deque>
#include <functional>
#include <set>
#include <span>
#include <vector>

#include "dirtyring/base/error.hpp"
#include "dirtyring/rings/ring_backend.hpp"
#include "dirtyring/rings/ring_view.hpp"

namespace {

using dirtyring::DirtyGfn;
using dirtyring::DirtyPage;
using dirtyring::Harvester;
using dirtyring::kGfnDirty;
using dirtyring::kGfnReset;
using dirtyring::ResetResult;
using dirtyring::RingView;

// Rings in memory with a producer and a reset that follow the module: a
// page is logged by its first write after it was armed; a write that finds
// its ring completely full parks the page; a reset re-arms the pages of the
// marked entries in ring order up to the first unmarked one, then moves
// parked pages into the last ring (the "per-VM ring") while it is below its
// soft limit.  The knobs make the reset misbehave.  Single-threaded.
class FakeBackend : public dirtyring::RingBackend {
public:
    FakeBackend(unsigned rings, std::uint32_t entries, std::uint64_t pages, bool parks = true)
        : entries_(entries), parks_(parks), armed_(pages, true), rings_(rings) {
        views_.reserve(rings);
        for (auto& ring : rings_) {
            ring.gfns.resize(entries);
            views_.emplace_back(ring.gfns.data(), entries);
        }
    }

    // A write to `page` by a writer logging into ring `r`.
    void write(unsigned r, std::uint64_t page) {
        if (!armed_.at(page)) return;  // logged already in this cycle
        armed_[page] = false;
        Ring& ring = rings_.at(r);
        if (ring.used() == entries_) {
            parked_.push_back(page);
            return;
        }
        push(ring, page);
    }
    // A write by a writer that found its ring full: the page is parked.
    void park(std::uint64_t page) {
        if (!armed_.at(page)) return;
        armed_[page] = false;
        parked_.push_back(page);
    }

    std::span<RingView> rings() override { return views_; }

    ResetResult reset() override {
        ++resets;
        ResetResult result;
        if (stalled_resets) {
            --stalled_resets;
            return result;  // "done", having reset nothing
        }
        const std::uint64_t limit = partial_resets ? partial_limit : UINT64_MAX;
        if (partial_resets) --partial_resets;
        for (Ring& ring : rings_) {
            for (std::uint64_t n = 0; n < limit && ring.reset_index != ring.dirty_index; ++n) {
                DirtyGfn& e = ring.gfns[ring.reset_index & (entries_ - 1)];
                std::atomic_ref<std::uint32_t> flags(e.flags);
                if ((flags.load(std::memory_order_acquire) & kGfnReset) == 0) break;
                armed_.at(e.offset) = true;
                flags.store(0, std::memory_order_release);
                ++ring.reset_index;
                ++result.entries;
            }
        }
        if (during_reset) during_reset();
        Ring& vm = rings_.back();
        while (!parked_.empty() && vm.used() < soft_limit()) {
            push(vm, parked_.front());
            parked_.pop_front();
            ++result.moved;
        }
        result.pending = parked_.size();
        return result;
    }

    std::uint64_t parked_pages_per_reset() const noexcept override {
        return parks_ ? soft_limit() : 0;
    }

    bool armed(std::uint64_t page) const { return armed_.at(page); }
    std::uint64_t parked() const { return parked_.size(); }
    // Entries pushed and not reset yet, over every ring.
    std::uint64_t unreset() const {
        std::uint64_t n = 0;
        for (const Ring& ring : rings_) n += ring.used();
        return n;
    }

    // Knobs: the next `partial_resets` resets reset at most `partial_limit`
    // entries per ring; the next `stalled_resets` reset nothing; both
    // report success.  `during_reset` runs after a reset's ring walk, before
    // it moves parked pages (writers that keep running).
    unsigned partial_resets = 0;
    std::uint64_t partial_limit = 1;
    unsigned stalled_resets = 0;
    std::function<void()> during_reset;
    unsigned resets = 0;

    static constexpr std::uint32_t kReserved = 2;
    std::uint32_t soft_limit() const noexcept { return entries_ - kReserved; }

private:
    struct Ring {
        std::vector<DirtyGfn> gfns;
        std::uint32_t dirty_index = 0;
        std::uint32_t reset_index = 0;
        std::uint32_t used() const noexcept { return dirty_index - reset_index; }
    };

    void push(Ring& ring, std::uint64_t page) {
        DirtyGfn& e = ring.gfns[ring.dirty_index & (entries_ - 1)];
        ASSERT_EQ(0U, e.flags) << "pushed into an entry not reset";
        e.slot = 0;
        e.offset = page;
        std::atomic_ref<std::uint32_t>(e.flags).store(kGfnDirty, std::memory_order_release);
        ++ring.dirty_index;
    }

    std::uint32_t entries_;
    bool parks_;
    std::vector<bool> armed_;
    std::deque<std::uint64_t> parked_;
    std::vector<Ring> rings_;
    std::vector<RingView> views_;
};

// One harvest of `fake`, checking in after_reset that every page handed out
// by this harvest is armed again (its entry was reset).  Returns the pages.
struct Harvested {
    std::multiset<std::uint64_t> pages;
    unsigned after_reset_calls = 0;
    std::uint64_t still_marked_at_copy = 0;
};

Harvested harvest_once(Harvester& harvester, const FakeBackend& fake) {
    Harvested h;
    std::vector<std::uint64_t> pending;
    const std::uint64_t n = harvester.harvest(
        [&](std::span<const DirtyPage> batch) {
            for (const auto& p : batch) pending.push_back(p.offset);
        },
        [&] {
            ++h.after_reset_calls;
            for (const auto page : pending) h.still_marked_at_copy += !fake.armed(page);
        });
    h.pages.insert(pending.begin(), pending.end());
    EXPECT_EQ(pending.size(), n);
    return h;
}

std::multiset<std::uint64_t> range(std::uint64_t first, std::uint64_t end) {
    std::multiset<std::uint64_t> s;
    for (auto p = first; p < end; ++p) s.insert(p);
    return s;
}

// --- (a) a reset that stops early but reports success ---------------------

// Every reset resets one entry per ring for the first 5 calls, as a KVM
// reset stopped by a signal does while returning its count.  The harvest
// must not copy before the rest is reset, and must still finish.
TEST(HarvesterPartialReset, NeverCopiesBeforeTheEntryIsReset) {
    FakeBackend fake(3, 16, 64, /*parks=*/false);
    for (std::uint64_t page = 0; page < 30; ++page)
        fake.write(static_cast<unsigned>(page % 3), page);
    fake.partial_resets = 5;
    fake.partial_limit = 1;
    Harvester harvester(fake);
    const Harvested h = harvest_once(harvester, fake);
    EXPECT_EQ(range(0, 30), h.pages);
    EXPECT_EQ(1U, h.after_reset_calls);
    EXPECT_EQ(0U, h.still_marked_at_copy) << "pages handed to after_reset before their reset";
    EXPECT_EQ(0U, fake.unreset());
    EXPECT_EQ(6U, fake.resets);
    EXPECT_EQ(5U, harvester.stats().resets_for_marks);
}

// Resets that reset nothing a few times (a signal that arrived before the
// first entry) are retried, not an error.
TEST(HarvesterPartialReset, RetriesAResetThatDidNothingOnce) {
    FakeBackend fake(2, 16, 64, /*parks=*/false);
    for (std::uint64_t page = 0; page < 10; ++page)
        fake.write(static_cast<unsigned>(page % 2), page);
    fake.stalled_resets = 3;
    Harvester harvester(fake);
    const Harvested h = harvest_once(harvester, fake);
    EXPECT_EQ(range(0, 10), h.pages);
    EXPECT_EQ(0U, h.still_marked_at_copy);
    EXPECT_EQ(0U, fake.unreset());
    EXPECT_EQ(4U, fake.resets);
}

// An entry reset and then reused by the producer (DIRTY, never RESET) is
// not mistaken for a mark the reset left: no second reset.
TEST(HarvesterPartialReset, AnEntryReusedByTheProducerIsNotAMark) {
    FakeBackend fake(1, 8, 64, /*parks=*/false);
    for (std::uint64_t page = 0; page < 8; ++page) fake.write(0, page);  // the ring is full
    // The writer refills every freed entry while the reset runs.
    fake.during_reset = [&] {
        for (std::uint64_t page = 8; page < 16; ++page) fake.write(0, page);
    };
    Harvester harvester(fake);
    EXPECT_EQ(range(0, 8), harvest_once(harvester, fake).pages);
    EXPECT_EQ(1U, fake.resets);
    fake.during_reset = nullptr;
    EXPECT_EQ(range(8, 16), harvest_once(harvester, fake).pages);
}

// --- (b) parked pages: one harvest after the writers stopped gets them all -

// A vCPU ring of 16 entries took 16 pages and its writer parked 40 more;
// the per-VM ring (soft limit 14) takes parked pages only at a reset.  One
// harvest returns all 56, each re-armed before after_reset.
TEST(HarvesterParkedPages, OneHarvestReturnsThemAll) {
    FakeBackend fake(2, 16, 128);
    for (std::uint64_t page = 0; page < 56; ++page) fake.write(0, page);
    ASSERT_EQ(40U, fake.parked());
    Harvester harvester(fake);
    const Harvested h = harvest_once(harvester, fake);
    EXPECT_EQ(range(0, 56), h.pages);
    EXPECT_EQ(1U, h.after_reset_calls);
    EXPECT_EQ(0U, h.still_marked_at_copy);
    EXPECT_EQ(0U, fake.parked());
    EXPECT_EQ(0U, fake.unreset());
    // 14 + 14 + 12 parked pages moved by three resets: three more passes.
    EXPECT_EQ(3U, harvester.stats().extra_passes);
    EXPECT_EQ(0U, harvest_once(harvester, fake).pages.size());
}

// Only parked pages, every ring empty: the harvest still resets, so they
// are moved, harvested and reset in the same call.
TEST(HarvesterParkedPages, EveryRingEmptyStillResets) {
    FakeBackend fake(3, 16, 64);
    for (std::uint64_t page = 0; page < 20; ++page) fake.park(page);
    Harvester harvester(fake);
    const Harvested h = harvest_once(harvester, fake);
    EXPECT_EQ(range(0, 20), h.pages);
    EXPECT_EQ(0U, h.still_marked_at_copy);
    EXPECT_EQ(0U, fake.parked());
}

// A backend that parks nothing (KVM) is not reset when there was nothing to
// harvest.
TEST(HarvesterParkedPages, NothingToHarvestNoReset) {
    FakeBackend fake(2, 16, 64, /*parks=*/false);
    Harvester harvester(fake);
    EXPECT_EQ(0U, harvest_once(harvester, fake).pages.size());
    EXPECT_EQ(0U, fake.resets);
}

// Writers that keep parking pages during every reset cannot hold a harvest
// forever: the extra passes are bounded by what the first reset reported
// (14 parked, 14 per reset: one pass, plus two).
TEST(HarvesterParkedPages, WritersThatKeepParkingCannotLivelockIt) {
    FakeBackend fake(2, 16, 1 << 20);
    std::uint64_t next = 0;
    fake.during_reset = [&] {
        for (int i = 0; i < 14; ++i) fake.park(next++);
    };
    Harvester harvester(fake);
    const Harvested h = harvest_once(harvester, fake);
    EXPECT_EQ(1U + 3U, fake.resets);
    EXPECT_EQ(0U, h.still_marked_at_copy);
    EXPECT_EQ(3U * 14U, h.pages.size());
}

// --- (c) a reset that never makes progress ---------------------------------

TEST(HarvesterStuckReset, ThrowsInsteadOfHangingOrCopying) {
    FakeBackend fake(2, 16, 64, /*parks=*/false);
    for (std::uint64_t page = 0; page < 10; ++page)
        fake.write(static_cast<unsigned>(page % 2), page);
    fake.stalled_resets = UINT_MAX;
    Harvester harvester(fake);
    unsigned after_reset_calls = 0;
    try {
        harvester.harvest([](std::span<const DirtyPage>) {}, [&] { ++after_reset_calls; });
        FAIL() << "a harvest whose reset never resets anything returned";
    } catch (const dirtyring::Error& e) {
        EXPECT_EQ(EIO, e.errnum()) << e.what();
        EXPECT_NE(std::string(e.what()).find("RESET"), std::string::npos) << e.what();
    }
    EXPECT_EQ(0U, after_reset_calls);
    EXPECT_EQ(1U + Harvester::kMaxStalledResets, fake.resets);
    // Once the reset works again, the marks left are reset by the next
    // harvest and its pages come out in later harvests as written.
    fake.stalled_resets = 0;
    fake.write(0, 20);
    EXPECT_EQ(range(20, 21), harvest_once(harvester, fake).pages);
    EXPECT_EQ(0U, fake.unreset());
}

}  // namespace
