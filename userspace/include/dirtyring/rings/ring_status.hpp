// SPDX-License-Identifier: LGPL-2.1-or-later
// The state of one of the module's dirty rings (DIRTYRING_GET_RING_STATUS),
// as the library reports it: a plain value, safe to copy between threads.
#pragma once

#include <cstdint>

namespace dirtyring {

struct RingStatus {
    std::uint32_t entries = 0;     // ring size
    std::uint32_t soft_limit = 0;  // entries - the reserve
    std::uint32_t used = 0;        // entries pushed and not reset yet
    bool soft_full = false;        // used >= soft_limit
    bool bound = false;            // vCPU ring: a thread is bound
    std::uint64_t pushed = 0;      // entries pushed since the ring was created
    std::uint64_t soft_full_events = 0;
    std::uint64_t waits = 0;      // writer waits for room
    std::uint64_t wait_ns = 0;    // total time writers waited for room
    std::uint64_t overflows = 0;  // pages that found the ring full (parked, not lost)
};

}  // namespace dirtyring
