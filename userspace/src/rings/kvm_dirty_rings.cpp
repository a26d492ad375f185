// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/rings/kvm_dirty_rings.hpp"

#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <string>

#include "dirtyring/base/error.hpp"

namespace dirtyring {

bool KvmDirtyRings::enable(int kvm_fd, int vm_fd, std::uint32_t entries) {
    const auto bytes = static_cast<std::uint64_t>(entries) * sizeof(DirtyGfn);
    if (!std::has_single_bit(entries))
        throw Error(EINVAL, "KVM dirty ring: " + std::to_string(entries) +
                                " entries is not a power of two");
    bool acq_rel = true;
    int max = ::ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING_ACQ_REL);
    if (max <= 0) {
        acq_rel = false;
        max = ::ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING);
    }
    if (max <= 0) throw Error(ENOTSUP, "KVM has no dirty ring (KVM_CAP_DIRTY_LOG_RING)");
    if (bytes > static_cast<std::uint64_t>(max))
        throw Error(EINVAL, "KVM dirty ring: " + std::to_string(entries) +
                                " entries exceed KVM's maximum of " +
                                std::to_string(static_cast<unsigned>(max) / sizeof(DirtyGfn)));
    kvm_enable_cap cap{};
    cap.cap = acq_rel ? KVM_CAP_DIRTY_LOG_RING_ACQ_REL : KVM_CAP_DIRTY_LOG_RING;
    cap.args[0] = bytes;
    if (::ioctl(vm_fd, KVM_ENABLE_CAP, &cap)) throw_errno("KVM_ENABLE_CAP dirty ring");
    return acq_rel;
}

KvmDirtyRings::KvmDirtyRings(int vm_fd, std::span<const int> vcpu_fds, std::uint32_t entries)
    : vm_fd_(vm_fd) {
    const auto page = static_cast<long>(::sysconf(_SC_PAGESIZE));
    maps_.reserve(vcpu_fds.size());
    views_.reserve(vcpu_fds.size());
    for (const int fd : vcpu_fds) {
        maps_.emplace_back(entries * sizeof(DirtyGfn), PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                           KVM_DIRTY_LOG_PAGE_OFFSET * page, "KVM dirty ring");
        views_.emplace_back(maps_.back().as<DirtyGfn>(), entries);
    }
}

ResetResult KvmDirtyRings::reset() {
    // Since Linux 6.17 KVM stops a reset on a pending signal and returns the
    // count reset so far, as if it were done (the Harvester sees the marks
    // left and resets again).  Retrying EINTR covers a KVM that reports it.
    ResetResult result;
    for (;;) {
        const int n = ::ioctl(vm_fd_, KVM_RESET_DIRTY_RINGS, 0);
        if (n >= 0) {
            result.entries += static_cast<std::uint64_t>(n);
            return result;
        }
        if (errno != EINTR) throw_errno("KVM_RESET_DIRTY_RINGS");
        ++result.interrupted;
    }
}

}  // namespace dirtyring
