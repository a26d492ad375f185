// SPDX-License-Identifier: LGPL-2.1-or-later
// One userfaultfd in missing mode with UFFD_FEATURE_THREAD_ID: registration
// of ranges, non-blocking reads of page faults, and page placement.
//
// Owns the descriptor.  Thread-safety: read_faults() from one thread (the
// fault thread); copy(), zeropage() and wake() from any threads, also
// concurrently with it (the kernel serializes them); register and
// unregister while nothing else uses the range.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "dirtyring/base/unique_fd.hpp"

namespace dirtyring {

struct UserFault {
    std::uint64_t address;  // as the kernel reports it (not page-aligned)
    pid_t tid;              // the faulting thread
    bool write;
};

class Userfaultfd {
public:
    // Opens through /dev/userfaultfd, or the userfaultfd syscall where the
    // device is missing; non-blocking, close-on-exec.  Throws Error.
    Userfaultfd();

    int fd() const noexcept { return fd_.get(); }

    // Missing-mode registration; the kernel must offer UFFDIO_COPY and
    // UFFDIO_ZEROPAGE on the range.
    void register_missing(void* addr, std::size_t length);
    // Wakes every thread waiting on the range: their faults are retried
    // without userfaultfd.
    void unregister(void* addr, std::size_t length);

    enum class Placed { Copied, Existed };
    // Copies `length` bytes to `dst` (page multiples) and wakes the waiters.
    // Existed: the page was there already (EEXIST: placed by someone
    // else); its waiters are woken anyway.  EAGAIN (the mm is changing) is
    // retried.
    Placed copy(void* dst, const void* src, std::size_t length);
    Placed zeropage(void* dst, std::size_t length);
    void wake(void* addr, std::size_t length);

    // Page faults queued now, at most out.size(); 0 when none.  Other
    // events are not enabled, so never returned.
    std::size_t read_faults(std::span<UserFault> out);

private:
    UniqueFd fd_;
};

}  // namespace dirtyring
