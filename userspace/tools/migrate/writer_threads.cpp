// SPDX-License-Identifier: LGPL-2.1-or-later
#include "writer_threads.hpp"

#include <unistd.h>

#include <thread>

namespace dirtyring::migrate {

WriterThreads::WriterThreads(unsigned writers, std::uint64_t first_pass_writes)
    : writers_(writers),
      first_pass_writes_(first_pass_writes),
      writes_(std::make_unique<std::atomic<std::uint64_t>[]>(writers)) {}

std::exception_ptr WriterThreads::failure() const {
    std::lock_guard lock(failure_mutex_);
    return failure_;
}

void WriterThreads::record_failure() {
    std::lock_guard lock(failure_mutex_);
    if (!failure_) failure_ = std::current_exception();
}

void WriterThreads::started_vcpu_thread(unsigned vcpu) {
    if (hook_) hook_(vcpu, ::gettid());
}

bool WriterThreads::wait_first_pass(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        bool done = true;
        for (unsigned i = 0; i < writers_; ++i) done &= progress(i) >= first_pass_writes_;
        if (done) return true;
        if (failure() || std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
}

}  // namespace dirtyring::migrate
