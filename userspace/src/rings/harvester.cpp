// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/rings/harvester.hpp"

#include <algorithm>
#include <cerrno>
#include <string>

#include "dirtyring/base/error.hpp"

namespace dirtyring {

std::uint64_t Harvester::harvest(const Sink& sink, const std::function<void()>& after_reset) {
    return harvest_with([&](std::span<const DirtyPage> pages) { sink(pages); },
                        [&] {
                            if (after_reset) after_reset();
                        });
}

namespace {

// The first ring whose last marked entry is still marked, or -1.
long first_pending_ring(std::span<RingView> rings) noexcept {
    for (std::size_t i = 0; i < rings.size(); ++i)
        if (rings[i].last_mark_pending()) return static_cast<long>(i);
    return -1;
}

}  // namespace

ResetResult Harvester::reset_verified() {
    ++stats_.resets;
    ResetResult sum = backend_.reset();
    const std::span<RingView> rings = backend_.rings();
    // A backend that resets at least one entry per call is done within the
    // rings' capacity; past it, it is not resetting what it says it is.
    std::uint64_t budget = kMaxStalledResets;
    for (const RingView& ring : rings) budget += ring.size();
    std::uint64_t retries = 0;
    unsigned stalled = 0;
    for (long ring = first_pending_ring(rings); ring >= 0; ring = first_pending_ring(rings)) {
        if (stalled == kMaxStalledResets || retries == budget) {
            const RingView& view = rings[static_cast<std::size_t>(ring)];
            throw Error(EIO, "dirty ring reset: entry " + std::to_string(view.fetch_index() - 1U) +
                                 " of ring " + std::to_string(ring) +
                                 " is still marked RESET after " + std::to_string(retries) +
                                 " more resets, the last " + std::to_string(stalled) +
                                 " resetting nothing; its pages are not handed out for copying");
        }
        ++retries;
        ++stats_.resets;
        ++stats_.resets_for_marks;
        const ResetResult again = backend_.reset();
        sum.entries += again.entries;
        sum.moved += again.moved;
        sum.relogged += again.relogged;
        sum.pending = again.pending;
        sum.interrupted += again.interrupted;
        stalled = again.entries ? 0 : stalled + 1;
    }
    stats_.interrupted += sum.interrupted;
    stats_.relogged += sum.relogged;
    return sum;
}

std::uint64_t Harvester::max_extra_passes(const ResetResult& first) const noexcept {
    const std::uint64_t per_reset = std::max<std::uint64_t>(backend_.parked_pages_per_reset(), 1);
    const std::uint64_t parked = first.moved + first.pending;
    return parked / per_reset + (parked % per_reset != 0) + 2;
}

}  // namespace dirtyring
