// SPDX-License-Identifier: LGPL-2.1-or-later
// Ownership of one file descriptor.
#pragma once

#include <utility>

namespace dirtyring {

// Closes its descriptor when destroyed; move-only. -1 means "none".
class UniqueFd {
public:
    UniqueFd() noexcept = default;
    explicit UniqueFd(int fd) noexcept : fd_(fd) {}
    UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
    UniqueFd& operator=(UniqueFd&& other) noexcept {
        reset(other.release());
        return *this;
    }
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    ~UniqueFd() { reset(); }

    int get() const noexcept { return fd_; }
    explicit operator bool() const noexcept { return fd_ >= 0; }

    // Gives up ownership without closing.
    [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }

    // Closes the current descriptor (errors from close are not reported:
    // the descriptor is gone either way) and owns `fd` instead.
    void reset(int fd = -1) noexcept;

private:
    int fd_ = -1;
};

}  // namespace dirtyring
