// SPDX-License-Identifier: LGPL-2.1-or-later
// Keeps one writer thread of a migrated guest at its share of the dirty
// rate, in a sleep that a stop request ends at once (the switch-over's
// downtime starts with stopping the writers: it must not wait out a sleep).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <stop_token>

namespace dirtyring::migrate {

class Pacer {
public:
    // writes_per_second: 0 means flat out.
    explicit Pacer(double writes_per_second)
        : rate_(writes_per_second), start_(std::chrono::steady_clock::now()) {}

    // `writes` more were made: sleeps until they are due at the rate, or
    // until `stop` is requested.
    void wrote(std::uint64_t writes, std::stop_token stop) {
        written_ += writes;
        if (rate_ <= 0) return;
        const auto due = start_ + std::chrono::nanoseconds(static_cast<std::int64_t>(
                                      static_cast<double>(written_) / rate_ * 1e9));
        std::unique_lock lock(mutex_);
        cv_.wait_until(lock, stop, due, [] { return false; });
    }

private:
    double rate_;
    std::chrono::steady_clock::time_point start_;
    std::uint64_t written_ = 0;
    std::mutex mutex_;
    std::condition_variable_any cv_;
};

}  // namespace dirtyring::migrate
