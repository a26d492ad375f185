// SPDX-License-Identifier: LGPL-2.1-or-later
// The module's ring status in the library's terms; private to the library
// because the uAPI header is.
#pragma once

#include <linux/dirtyring.h>

#include "dirtyring/rings/ring_status.hpp"

namespace dirtyring {

inline RingStatus to_ring_status(const dirtyring_ring_status& st) noexcept {
    RingStatus s;
    s.entries = st.entries;
    s.soft_limit = st.soft_limit;
    s.used = st.used;
    s.soft_full = (st.flags & DIRTYRING_RING_F_SOFT_FULL) != 0;
    s.bound = (st.flags & DIRTYRING_RING_F_BOUND) != 0;
    s.pushed = st.pushed;
    s.soft_full_events = st.soft_full_events;
    s.waits = st.waits;
    s.wait_ns = st.wait_ns;
    s.overflows = st.overflows;
    return s;
}

}  // namespace dirtyring
