// SPDX-License-Identifier: LGPL-2.1-or-later
// Test support: a signal every `period` at the thread that made the storm,
// with a handler that does nothing but count, installed without
// SA_RESTART: every interruptible call of that thread (a ring reset above
// all) returns early with EINTR, or stops early, again and again.  The
// handler stays installed after the storm, so a signal still pending then
// is harmless.
#pragma once

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>

#include "dirtyring/base/error.hpp"

namespace dirtyring::testing_support {

class SignalStorm {
public:
    explicit SignalStorm(std::chrono::microseconds period, int signo = SIGUSR1) {
        struct sigaction sa {};
        sa.sa_handler = count;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = 0;  // no SA_RESTART
        if (::sigaction(signo, &sa, nullptr)) throw_errno("sigaction");
        sigevent sev{};
        sev.sigev_notify = SIGEV_THREAD_ID;
        sev.sigev_signo = signo;
        sev._sigev_un._tid = ::gettid();
        if (::timer_create(CLOCK_MONOTONIC, &sev, &timer_)) throw_errno("timer_create");
        const auto ns = std::chrono::nanoseconds(period).count();
        itimerspec its{};
        its.it_interval.tv_sec = ns / 1000000000;
        its.it_interval.tv_nsec = ns % 1000000000;
        its.it_value = its.it_interval;
        if (::timer_settime(timer_, 0, &its, nullptr)) {
            ::timer_delete(timer_);
            throw_errno("timer_settime");
        }
    }
    ~SignalStorm() { ::timer_delete(timer_); }
    SignalStorm(const SignalStorm&) = delete;
    SignalStorm& operator=(const SignalStorm&) = delete;

    // Signals handled so far, by every storm of the process.
    static std::uint64_t delivered() noexcept { return delivered_.load(); }

private:
    static void count(int) { delivered_.fetch_add(1, std::memory_order_relaxed); }

    static inline std::atomic<std::uint64_t> delivered_{0};
    timer_t timer_{};
};

}  // namespace dirtyring::testing_support
