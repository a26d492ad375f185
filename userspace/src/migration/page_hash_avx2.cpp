// SPDX-License-Identifier: LGPL-2.1-or-later
// XXH3 of one stream page with AVX2, built with -mavx2 and called only
// where the CPU has it (page_hash() checks once): the stream hashes every
// page on both sides, and the distribution's libxxhash is built for plain
// SSE2 (its runtime dispatch is missing from the static libxxhash.a that
// static test binaries link).  XXH3's value does not depend on the
// vector unit that computes it.
//
// Nothing else belongs in this file: any inline function it instantiated
// would be AVX2 code that the linker may pick for other callers too.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cstddef>
#include <cstdint>

namespace dirtyring::detail {

std::uint64_t page_hash_avx2(const std::byte* page, std::size_t size) noexcept {
    return XXH3_64bits(page, size);
}

}  // namespace dirtyring::detail
