// SPDX-License-Identifier: LGPL-2.1-or-later
// Where a postcopy destination asks for the pages its threads fault on.
//
// The migration tool puts its return path behind this interface (a socket
// to the source); tests use in-process sources.  Owns nothing.
// Thread-safety: request() is called from the fault thread only.
#pragma once

#include <cstdint>

namespace dirtyring {

struct PageRequest {
    void* host;            // page address in the destination's guest RAM
    unsigned range;        // Postcopy::add_range()'s index
    std::uint64_t offset;  // bytes into that range
};

class PageSource {
public:
    virtual ~PageSource() = default;
    // Asks for one page, once per page.  Must not wait for the page: it
    // arrives later, through Postcopy::place_page() from whichever thread
    // receives it.  Throwing puts the postcopy in its error state.
    virtual void request(const PageRequest& request) = 0;
};

}  // namespace dirtyring
