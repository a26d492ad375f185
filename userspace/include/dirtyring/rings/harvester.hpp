// SPDX-License-Identifier: LGPL-2.1-or-later
// Harvests every ring of a backend into the caller's hands, in batches,
// then resets.  Thread-safe: vCPU threads handling a ring-full exit and a
// collector thread may call harvest() concurrently; calls are serialized.
//
// A page's content may be read for migration only after the reset that
// follows its harvest (a write between the read and the reset would not be
// logged again).  So whoever reads pages harvested by any thread does it in
// `after_reset`, which runs under the same lock: by then every harvest that
// handed those pages out has reset them.
//
// What a harvest promises:
//  - No page reaches `after_reset` before its entry was reset.  The
//    backend retries a reset a signal interrupted; on top of that the
//    harvester checks, ring by ring, that the last entry it marked is no
//    longer marked RESET, and resets again while one is (a kernel may stop
//    a reset early on a signal and still report success).  A reset that
//    keeps leaving marks without resetting anything throws Error (EIO):
//    neither a hang nor pages handed out too early.
//  - Complete once the writers stopped: one harvest returns every page
//    dirtied before the stop.  The module parks pages whose writer found
//    its ring completely full, and only a reset moves them into the per-VM
//    ring, after this harvest read it; so while a reset reports parked
//    pages moved, the harvester harvests and resets again.  Those extra
//    passes are bounded by what the first reset reported parked (divided by
//    what one reset can move, plus two), so writers that keep running
//    cannot hold a harvest forever; whatever they add meanwhile waits for
//    the next harvest.  A backend that parks pages is reset by every
//    harvest, even one that found every ring empty.
//  - `after_reset` runs once, after the last pass.  When a reset throws,
//    it does not run: the pages the sink received are not reset.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <utility>

#include "dirtyring/rings/ring_backend.hpp"
#include "dirtyring/rings/ring_view.hpp"

namespace dirtyring {

class Harvester {
public:
    // Pages handed to the callback at once; no allocation per entry.
    static constexpr std::size_t kBatch = 512;
    // Resets in a row that reset nothing while an entry this harvester
    // marked is still marked, before it gives up with Error (EIO).  More
    // than one: a reset that a signal stops before its first entry resets
    // nothing, and is fine to retry.
    static constexpr unsigned kMaxStalledResets = 8;
    using Sink = std::function<void(std::span<const DirtyPage>)>;

    // What the harvests so far did.
    struct Stats {
        std::uint64_t harvests = 0;
        std::uint64_t resets = 0;            // backend resets, every one
        std::uint64_t resets_for_marks = 0;  // of them, again for marks a reset left
        std::uint64_t interrupted = 0;       // reset calls cut short by EINTR, retried
        std::uint64_t extra_passes = 0;      // harvest-and-reset passes for parked pages
        std::uint64_t relogged = 0;          // pages held at re-arm, logged again at once
    };

    explicit Harvester(RingBackend& backend) : backend_(backend) {}

    Stats stats() {
        std::lock_guard lock(mutex_);
        return stats_;
    }

    // Collects all DIRTY entries of all rings, hands them to `sink` in
    // batches, resets the backend (again, for parked pages the reset moved
    // into a ring, see above), then calls `after_reset`.  Returns the number
    // of pages.  Throws Error when a reset fails.
    std::uint64_t harvest(const Sink& sink, const std::function<void()>& after_reset = {});

    // The same, for hot paths that do not want a std::function.
    template <typename F>
    std::uint64_t harvest_with(F&& sink) {
        return harvest_with(std::forward<F>(sink), [] {});
    }

    template <typename F, typename G>
    std::uint64_t harvest_with(F&& sink, G&& after_reset) {
        std::lock_guard lock(mutex_);
        ++stats_.harvests;
        std::uint64_t total = collect_all(sink);
        if (total != 0 || backend_.parked_pages_per_reset() != 0) {
            ResetResult reset = reset_verified();
            const std::uint64_t passes = max_extra_passes(reset);
            for (std::uint64_t pass = 0; reset.harvest_again() && pass < passes; ++pass) {
                ++stats_.extra_passes;
                total += collect_all(sink);
                reset = reset_verified();
            }
        }
        after_reset();
        return total;
    }

private:
    template <typename F>
    std::uint64_t collect_all(F& sink) {
        std::uint64_t total = 0;
        for (RingView& ring : backend_.rings()) {
            for (;;) {
                const std::size_t n = ring.collect(batch_);
                if (n == 0) break;
                sink(std::span<const DirtyPage>(batch_.data(), n));
                total += n;
                if (n < batch_.size()) break;
            }
        }
        return total;
    }

    // backend_.reset(), then again while a ring's last mark is still there.
    ResetResult reset_verified();
    // Harvest-and-reset passes after the first reset, for parked pages.
    std::uint64_t max_extra_passes(const ResetResult& first) const noexcept;

    RingBackend& backend_;
    std::mutex mutex_;
    Stats stats_;  // under mutex_
    std::array<DirtyPage, kBatch> batch_{};
};

}  // namespace dirtyring
