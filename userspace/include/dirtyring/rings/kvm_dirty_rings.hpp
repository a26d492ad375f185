// SPDX-License-Identifier: LGPL-2.1-or-later
// Upstream KVM's dirty rings as a RingBackend: one ring per vCPU, mmapped at
// KVM_DIRTY_LOG_PAGE_OFFSET of each vCPU fd, reset with KVM_RESET_DIRTY_RINGS.
// The VM must have the ring enabled (enable()) before its vCPUs exist.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "dirtyring/base/mapping.hpp"
#include "dirtyring/rings/ring_backend.hpp"

namespace dirtyring {

class KvmDirtyRings : public RingBackend {
public:
    // Enables the dirty ring on a VM with no vCPUs yet: KVM_CAP_DIRTY_LOG_RING_ACQ_REL
    // where the kernel has it, else KVM_CAP_DIRTY_LOG_RING.  entries: a power
    // of two, within what KVM reports.  Returns whether acquire/release was used.
    static bool enable(int kvm_fd, int vm_fd, std::uint32_t entries);

    // Maps the ring of each vCPU fd (not owned; they must outlive this).
    KvmDirtyRings(int vm_fd, std::span<const int> vcpu_fds, std::uint32_t entries);

    std::span<RingView> rings() override { return views_; }
    // KVM_RESET_DIRTY_RINGS, retried on EINTR.  KVM parks nothing: moved and
    // pending are always 0, and a harvest that found nothing skips it.
    ResetResult reset() override;

private:
    int vm_fd_;
    std::vector<Mapping> maps_;
    std::vector<RingView> views_;
};

}  // namespace dirtyring
