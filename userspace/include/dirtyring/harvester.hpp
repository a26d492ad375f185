// Harvests every ring of a backend into the caller's hands, in batches,
// then resets.  Thread-safe: vCPU threads handling a ring-full exit and a
// collector thread may call harvest() concurrently; calls are serialized.
//
// A page's content may be read for migration only after the reset that
// follows its harvest (a write between the read and the reset would not be
// logged again).  So whoever reads pages harvested by any thread does it in
// `after_reset`, which runs under the same lock: by then every harvest that
// handed those pages out has reset them.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <utility>

#include "dirtyring/ring_backend.hpp"
#include "dirtyring/ring_view.hpp"

namespace dirtyring {

class Harvester {
public:
    // Pages handed to the callback at once; no allocation per entry.
    static constexpr std::size_t kBatch = 512;
    using Sink = std::function<void(std::span<const DirtyPage>)>;

    explicit Harvester(RingBackend& backend) : backend_(backend) {}

    // Collects all DIRTY entries of all rings, hands them to `sink` in
    // batches, resets the backend, then calls `after_reset`.  Returns the
    // number of pages.
    std::uint64_t harvest(const Sink& sink, const std::function<void()>& after_reset = {});

    // The same, for hot paths that do not want a std::function.
    template <typename F>
    std::uint64_t harvest_with(F&& sink) {
        return harvest_with(std::forward<F>(sink), [] {});
    }

    template <typename F, typename G>
    std::uint64_t harvest_with(F&& sink, G&& after_reset) {
        std::lock_guard lock(mutex_);
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
        if (total) backend_.reset();
        after_reset();
        return total;
    }

private:
    RingBackend& backend_;
    std::mutex mutex_;
    std::array<DirtyPage, kBatch> batch_{};
};

}  // namespace dirtyring
