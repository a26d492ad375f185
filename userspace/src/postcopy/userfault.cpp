// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/postcopy/userfault.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <string>

#include "dirtyring/base/error.hpp"

namespace dirtyring {
namespace {

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

// EAGAIN means a concurrent mm change (fork, mremap, madvise) is in
// progress: transient, but bounded so that a stuck mm is still reported.
constexpr int kMaxAgain = 100000;

std::string range_text(const void* addr, std::size_t length) {
    return std::to_string(reinterpret_cast<std::uintptr_t>(addr)) + "+" + std::to_string(length);
}

uffdio_range range_of(void* addr, std::size_t length) {
    uffdio_range r{};
    r.start = reinterpret_cast<std::uintptr_t>(addr);
    r.len = length;
    return r;
}

}  // namespace

Userfaultfd::Userfaultfd() {
    UniqueFd dev(::open("/dev/userfaultfd", O_RDWR | O_CLOEXEC));
    if (dev) {
        fd_.reset(::ioctl(dev.get(), USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK));
        if (!fd_) throw_errno("USERFAULTFD_IOC_NEW");
    } else {
        fd_.reset(static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
        if (!fd_) throw_errno("userfaultfd (no /dev/userfaultfd either)");
    }
    uffdio_api api{};
    api.api = UFFD_API;
    api.features = UFFD_FEATURE_THREAD_ID;
    if (::ioctl(fd_.get(), UFFDIO_API, &api)) throw_errno("UFFDIO_API with UFFD_FEATURE_THREAD_ID");
    constexpr std::uint64_t need = (1ULL << _UFFDIO_REGISTER) | (1ULL << _UFFDIO_UNREGISTER);
    if ((api.ioctls & need) != need) throw Error(ENOTSUP, "userfaultfd lacks UFFDIO_REGISTER");
}

void Userfaultfd::register_missing(void* addr, std::size_t length) {
    uffdio_register reg{};
    reg.range = range_of(addr, length);
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (::ioctl(fd_.get(), UFFDIO_REGISTER, &reg))
        throw_errno("UFFDIO_REGISTER " + range_text(addr, length));
    constexpr std::uint64_t need =
        (1ULL << _UFFDIO_COPY) | (1ULL << _UFFDIO_ZEROPAGE) | (1ULL << _UFFDIO_WAKE);
    if ((reg.ioctls & need) != need) {
        unregister(addr, length);
        throw Error(ENOTSUP, "userfaultfd: no UFFDIO_COPY/ZEROPAGE/WAKE on " +
                                 range_text(addr, length) + " (not anonymous memory?)");
    }
}

void Userfaultfd::unregister(void* addr, std::size_t length) {
    uffdio_range r = range_of(addr, length);
    if (::ioctl(fd_.get(), UFFDIO_UNREGISTER, &r))
        throw_errno("UFFDIO_UNREGISTER " + range_text(addr, length));
}

Userfaultfd::Placed Userfaultfd::copy(void* dst, const void* src, std::size_t length) {
    std::size_t done = 0;
    for (int again = 0;;) {
        uffdio_copy c{};
        c.dst = reinterpret_cast<std::uintptr_t>(dst) + done;
        c.src = reinterpret_cast<std::uintptr_t>(src) + done;
        c.len = length - done;
        if (::ioctl(fd_.get(), UFFDIO_COPY, &c) == 0) return Placed::Copied;
        const int err = errno;
        // c.copy: bytes copied before the error, or a negative errno.
        if (c.copy > 0) done += static_cast<std::size_t>(c.copy);
        if (err == EEXIST) {
            wake(dst, length);
            return Placed::Existed;
        }
        if (err != EAGAIN || ++again > kMaxAgain)
            throw Error(err, "UFFDIO_COPY to " + range_text(dst, length));
        if (done >= length) return Placed::Copied;
    }
}

Userfaultfd::Placed Userfaultfd::zeropage(void* dst, std::size_t length) {
    std::size_t done = 0;
    for (int again = 0;;) {
        uffdio_zeropage z{};
        z.range = range_of(static_cast<std::uint8_t*>(dst) + done, length - done);
        if (::ioctl(fd_.get(), UFFDIO_ZEROPAGE, &z) == 0) return Placed::Copied;
        const int err = errno;
        if (z.zeropage > 0) done += static_cast<std::size_t>(z.zeropage);
        if (err == EEXIST) {
            wake(dst, length);
            return Placed::Existed;
        }
        if (err != EAGAIN || ++again > kMaxAgain)
            throw Error(err, "UFFDIO_ZEROPAGE at " + range_text(dst, length));
        if (done >= length) return Placed::Copied;
    }
}

void Userfaultfd::wake(void* addr, std::size_t length) {
    uffdio_range r = range_of(addr, length);
    if (::ioctl(fd_.get(), UFFDIO_WAKE, &r)) throw_errno("UFFDIO_WAKE " + range_text(addr, length));
}

std::size_t Userfaultfd::read_faults(std::span<UserFault> out) {
    std::array<uffd_msg, 64> msgs;
    const std::size_t want = std::min(out.size(), msgs.size());
    for (;;) {
        const ssize_t n = ::read(fd_.get(), msgs.data(), want * sizeof(uffd_msg));
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return 0;
            throw_errno("read userfaultfd");
        }
        std::size_t faults = 0;
        for (std::size_t i = 0; i < static_cast<std::size_t>(n) / sizeof(uffd_msg); ++i) {
            if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
            const auto& pf = msgs[i].arg.pagefault;
            out[faults++] = UserFault{pf.address, static_cast<pid_t>(pf.feat.ptid),
                                      (pf.flags & UFFD_PAGEFAULT_FLAG_WRITE) != 0};
        }
        return faults;
    }
}

}  // namespace dirtyring
