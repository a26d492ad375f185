// SPDX-License-Identifier: LGPL-2.1-or-later
// An in-process page source for postcopy tests: serves each request after a
// fixed delay from its own thread, as a socket-fed receiving thread would.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "dirtyring/base/error.hpp"
#include "dirtyring/postcopy/page_source.hpp"
#include "dirtyring/postcopy/postcopy.hpp"

namespace dirtyring_test {

// The content the source sends for a page: every 64-bit word names it.
inline std::uint64_t pattern(unsigned range, std::uint64_t offset, std::size_t word) {
    return (std::uint64_t{range} << 56) ^ (offset << 8) ^ word ^ 0x5a5a;
}

class DelayedSource : public dirtyring::PageSource {
public:
    enum class Mode { Serve, Drop, Throw };

    explicit DelayedSource(std::chrono::nanoseconds delay, Mode mode = Mode::Serve)
        : delay_(delay), mode_(mode) {}
    ~DelayedSource() override { shutdown(); }

    // Starts serving into `postcopy`; call shutdown() before it goes away.
    void attach(dirtyring::Postcopy& postcopy) {
        postcopy_ = &postcopy;
        worker_ = std::jthread([this](std::stop_token stop) { serve(stop); });
    }
    void shutdown() {
        worker_.request_stop();
        if (worker_.joinable()) worker_.join();
    }

    void request(const dirtyring::PageRequest& r) override {
        if (mode_ == Mode::Throw) throw dirtyring::Error(ECONNRESET, "test return path");
        std::lock_guard lock(mutex_);
        ++requests_[r.host];
        if (mode_ == Mode::Drop) return;
        queue_.push_back({r, std::chrono::steady_clock::now() + delay_});
        cv_.notify_all();
    }

    std::map<void*, int> requests() {
        std::lock_guard lock(mutex_);
        return requests_;
    }
    std::vector<dirtyring::Error> errors() {
        std::lock_guard lock(mutex_);
        return errors_;
    }

private:
    struct Pending {
        dirtyring::PageRequest request;
        std::chrono::steady_clock::time_point due;
    };

    void serve(std::stop_token stop) {
        const std::size_t page = postcopy_->page_size();
        std::vector<std::uint64_t> buffer(page / sizeof(std::uint64_t));
        for (;;) {
            Pending p;
            {
                std::unique_lock lock(mutex_);
                if (!cv_.wait(lock, stop, [&] { return !queue_.empty(); })) return;
                p = queue_.front();
                queue_.pop_front();
            }
            std::this_thread::sleep_until(p.due);
            for (std::size_t w = 0; w < buffer.size(); ++w)
                buffer[w] = pattern(p.request.range, p.request.offset, w);
            try {
                postcopy_->place_page(p.request.host, std::as_bytes(std::span(buffer)));
            } catch (const dirtyring::Error& e) {
                std::lock_guard lock(mutex_);
                errors_.push_back(e);
            }
        }
    }

    const std::chrono::nanoseconds delay_;
    const Mode mode_;
    dirtyring::Postcopy* postcopy_ = nullptr;
    std::mutex mutex_;
    std::condition_variable_any cv_;
    std::deque<Pending> queue_;
    std::map<void*, int> requests_;
    std::vector<dirtyring::Error> errors_;
    std::jthread worker_;
};

}  // namespace dirtyring_test
