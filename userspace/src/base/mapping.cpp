// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/base/mapping.hpp"

#include <sys/mman.h>

#include <string>

#include "dirtyring/base/error.hpp"

namespace dirtyring {

Mapping::Mapping(std::size_t length, int prot, int flags, int fd, long offset, const char* what)
    : length_(length) {
    void* addr = ::mmap(nullptr, length, prot, flags, fd, offset);
    if (addr == MAP_FAILED) throw_errno(std::string("mmap ") + what);
    addr_ = addr;
}

Mapping Mapping::anonymous(std::size_t length, const char* what) {
    return Mapping(length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0, what);
}

Mapping& Mapping::operator=(Mapping&& other) noexcept {
    if (this != &other) {
        reset();
        addr_ = std::exchange(other.addr_, nullptr);
        length_ = std::exchange(other.length_, 0);
    }
    return *this;
}

void Mapping::reset() noexcept {
    if (addr_) ::munmap(addr_, length_);
    addr_ = nullptr;
    length_ = 0;
}

}  // namespace dirtyring
