// SPDX-License-Identifier: LGPL-2.1-or-later
// Test support: tells a hang from a slow machine.  A loop that drives
// writers calls check() with a count of the work done so far (pages
// written or harvested); only when that count has not moved for a whole
// window is the test stuck.  A time limit on the whole loop would instead
// fail a debug kernel on a busy machine that is merely slow.
//
// A writer stuck in the kernel cannot be joined, and a test that returns
// with its threads still waiting hangs in their destructors until the
// runner's timeout, which then names no reason.  So a stall ends the
// process at once, with the reason and the test's name on stderr.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

namespace dirtyring::testing_support {

class StallWatch {
public:
    explicit StallWatch(std::string what, std::chrono::seconds window = std::chrono::seconds(180))
        : what_(std::move(what)), window_(window), since_(std::chrono::steady_clock::now()) {}

    void check(std::uint64_t progress) {
        const auto now = std::chrono::steady_clock::now();
        if (progress != last_) {
            last_ = progress;
            since_ = now;
            return;
        }
        if (now - since_ < window_) return;
        const auto* test = testing::UnitTest::GetInstance()->current_test_info();
        std::fprintf(stderr, "FATAL: %s.%s: %s: no progress in %llds (stuck at %llu)\n",
                     test ? test->test_suite_name() : "?", test ? test->name() : "?", what_.c_str(),
                     static_cast<long long>(window_.count()),
                     static_cast<unsigned long long>(progress));
        std::fflush(stderr);
        std::abort();
    }

private:
    std::string what_;
    std::chrono::seconds window_;
    std::chrono::steady_clock::time_point since_;
    std::uint64_t last_ = 0;
};

}  // namespace dirtyring::testing_support
