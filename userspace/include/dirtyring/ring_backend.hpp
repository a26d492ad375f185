// What a Harvester needs from a source of dirty rings: the module's VM or
// KVM's dirty rings.  Implementations own their ring mappings.
#pragma once

#include <cstdint>
#include <span>

#include "dirtyring/ring_view.hpp"

namespace dirtyring {

class RingBackend {
public:
    virtual ~RingBackend() = default;

    // Every ring: each vCPU's, plus the module's per-VM ring.  Stable for the
    // backend's lifetime once its vCPUs exist.
    virtual std::span<RingView> rings() = 0;

    // Re-protects the pages of RESET entries and frees them (the module's
    // DIRTYRING_RESET_RINGS or KVM_RESET_DIRTY_RINGS); returns entries reset.
    virtual std::uint64_t reset() = 0;
};

}  // namespace dirtyring
