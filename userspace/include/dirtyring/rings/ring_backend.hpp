// SPDX-License-Identifier: LGPL-2.1-or-later
// What a Harvester needs from a source of dirty rings: the module's VM or
// KVM's dirty rings.  Implementations own their ring mappings.
#pragma once

#include <cstdint>
#include <span>

#include "dirtyring/rings/ring_view.hpp"

namespace dirtyring {

// What one RingBackend::reset() did.
struct ResetResult {
    // Entries reset (re-armed and freed) by this call.
    std::uint64_t entries = 0;
    // Parked pages (the module's overflow: pages whose writer found its ring
    // completely full) that this reset moved into a ring.  They sit there
    // unharvested: a harvest that wants every page harvests and resets again.
    std::uint64_t moved = 0;
    // Parked pages still waiting for room in a ring after this reset.
    std::uint64_t pending = 0;
    // Pages still held (pinned) when the reset re-armed them, logged again:
    // they come back in the next harvest, not this one.
    std::uint64_t relogged = 0;
    // Calls a signal interrupted (EINTR) that reset() made again.
    std::uint64_t interrupted = 0;

    bool harvest_again() const noexcept { return moved != 0; }
};

class RingBackend {
public:
    virtual ~RingBackend() = default;

    // Every ring: each vCPU's, plus the module's per-VM ring.  Stable for the
    // backend's lifetime once its vCPUs exist.
    virtual std::span<RingView> rings() = 0;

    // Re-protects the pages of RESET entries and frees them (the module's
    // DIRTYRING_RESET_RINGS or KVM_RESET_DIRTY_RINGS).  Returns once every
    // entry marked RESET when it was called is reset, as far as the kernel
    // says so: it retries a reset that a signal interrupted with EINTR.  A
    // kernel that stops early on a signal without saying so (KVM since
    // Linux 6.17 returns the count reset so far) is caught by the
    // Harvester, which checks the marks itself.  Throws Error on any other
    // failure.
    virtual ResetResult reset() = 0;

    // How many parked pages one reset moves at most into a ring that is
    // empty (the module: the per-VM ring's soft limit); 0 for a backend that
    // parks nothing (KVM).  A backend that parks pages is reset by every
    // harvest, even one that found every ring empty: only a reset moves its
    // parked pages where a harvest can see them.
    virtual std::uint64_t parked_pages_per_reset() const noexcept { return 0; }
};

}  // namespace dirtyring
