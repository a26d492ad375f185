// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/rings/ring_view.hpp"

#include <atomic>
#include <bit>
#include <cerrno>

#include "dirtyring/base/error.hpp"

namespace dirtyring {

static_assert(sizeof(DirtyGfn) == 16 && alignof(DirtyGfn) == 8);
static_assert(std::atomic_ref<std::uint32_t>::is_always_lock_free);

RingView::RingView(DirtyGfn* entries, std::uint32_t size) : entries_(entries), size_(size) {
    if (!entries || !std::has_single_bit(size))
        throw Error(EINVAL, "RingView: ring size " + std::to_string(size) +
                                " is not a power of two (or no entries)");
}

std::size_t RingView::collect(std::span<DirtyPage> out) noexcept {
    std::size_t n = 0;
    while (n < out.size()) {
        DirtyGfn& entry = entries_[fetch_index_ & (size_ - 1)];
        std::atomic_ref<std::uint32_t> flags(entry.flags);
        const std::uint32_t f = flags.load(std::memory_order_acquire);
        if ((f & kGfnDirty) == 0 || (f & kGfnReset) != 0) break;
        out[n++] = DirtyPage{entry.slot, entry.offset};
        flags.store(f | kGfnReset, std::memory_order_release);
        ++fetch_index_;
    }
    if (n) marked_ = true;
    return n;
}

bool RingView::last_mark_pending() const noexcept {
    if (!marked_) return false;
    DirtyGfn& entry = entries_[(fetch_index_ - 1) & (size_ - 1)];
    std::atomic_ref<std::uint32_t> flags(entry.flags);
    return (flags.load(std::memory_order_acquire) & kGfnReset) != 0;
}

}  // namespace dirtyring
