// SPDX-License-Identifier: LGPL-2.1-or-later
// Test support: a thread-safe count of harvested pages of slot 0, for
// harvest sinks that run on several threads (vCPU threads on ring-full
// exits, a collector).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <span>

#include "dirtyring/rings/ring_view.hpp"

namespace dirtyring::testing_support {

class HarvestedPages {
public:
    void add(std::span<const DirtyPage> pages) {
        std::lock_guard lock(mutex_);
        for (const auto& p : pages) {
            EXPECT_EQ(0U, p.slot);
            ++count_[p.offset];
        }
    }
    // How often each page was harvested.
    std::map<std::uint64_t, int> counts() {
        std::lock_guard lock(mutex_);
        return count_;
    }

private:
    std::mutex mutex_;
    std::map<std::uint64_t, int> count_;
};

}  // namespace dirtyring::testing_support
