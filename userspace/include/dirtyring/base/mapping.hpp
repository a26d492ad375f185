// SPDX-License-Identifier: LGPL-2.1-or-later
// Ownership of one mmap()ed range.
#pragma once

#include <cstddef>
#include <utility>

namespace dirtyring {

// Unmaps its range when destroyed; move-only.
class Mapping {
public:
    Mapping() noexcept = default;
    // mmap(nullptr, length, prot, flags, fd, offset); throws Error on failure,
    // naming `what`.
    Mapping(std::size_t length, int prot, int flags, int fd, long offset, const char* what);
    Mapping(Mapping&& other) noexcept
        : addr_(std::exchange(other.addr_, nullptr)), length_(std::exchange(other.length_, 0)) {}
    Mapping& operator=(Mapping&& other) noexcept;
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping() { reset(); }

    // Anonymous private memory, zero-filled.
    static Mapping anonymous(std::size_t length, const char* what);

    void* get() const noexcept { return addr_; }
    template <typename T>
    T* as() const noexcept {
        return static_cast<T*>(addr_);
    }
    std::size_t size() const noexcept { return length_; }
    explicit operator bool() const noexcept { return addr_ != nullptr; }

    void reset() noexcept;

private:
    void* addr_ = nullptr;
    std::size_t length_ = 0;
};

}  // namespace dirtyring
