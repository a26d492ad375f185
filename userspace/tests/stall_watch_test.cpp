// SPDX-License-Identifier: LGPL-2.1-or-later
// The guest tests' hang detector: it must end a stuck test, with its
// reason, and never a test whose work still moves.
#include "stall_watch.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace {

using dirtyring::testing_support::StallWatch;
using namespace std::chrono_literals;

TEST(StallWatchDeathTest, WorkThatStopsMovingEndsTheTestWithItsReason) {
    EXPECT_DEATH(
        {
            StallWatch stall("writers never released", 1s);
            for (;;) {
                stall.check(7);
                std::this_thread::sleep_for(10ms);
            }
        },
        "StallWatchDeathTest.WorkThatStopsMovingEndsTheTestWithItsReason: writers never "
        "released: no progress in 1s \\(stuck at 7\\)");
}

TEST(StallWatch, WorkThatMovesIsNeverAStall) {
    StallWatch stall("writers", 1s);
    // Slower than the window altogether, but moving at every check.
    for (std::uint64_t progress = 1; progress <= 30; ++progress) {
        stall.check(progress);
        std::this_thread::sleep_for(50ms);
    }
    SUCCEED();
}

}  // namespace
