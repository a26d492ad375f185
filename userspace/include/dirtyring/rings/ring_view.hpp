// SPDX-License-Identifier: LGPL-2.1-or-later
// The harvester's side of one dirty ring: entries laid out as KVM's
// struct kvm_dirty_gfn (the module uses the same layout), shared with a
// producer that keeps running.  Not thread-safe: one harvester per ring
// (Harvester serializes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace dirtyring {

// One harvested page: the memory slot and the page index within it.
struct DirtyPage {
    std::uint32_t slot;
    std::uint64_t offset;

    friend bool operator==(const DirtyPage&, const DirtyPage&) = default;
};

// KVM's and the module's entry, and its flags.
struct DirtyGfn {
    std::uint32_t flags;
    std::uint32_t slot;
    std::uint64_t offset;
};
inline constexpr std::uint32_t kGfnDirty = 1U << 0;
inline constexpr std::uint32_t kGfnReset = 1U << 1;

class RingView {
public:
    // entries: `size` entries (a power of two) mapped from the producer.
    RingView(DirtyGfn* entries, std::uint32_t size);

    // Collects the DIRTY entries from the fetch index on, at most out.size():
    // loads flags with acquire, copies (slot, offset), stores DIRTY | RESET
    // with release, as KVM's protocol requires.  Returns how many it wrote.
    std::size_t collect(std::span<DirtyPage> out) noexcept;

    // Whether the entry this view marked last (at fetch_index() - 1) still
    // carries RESET, loaded with acquire: no reset has re-armed it yet.  A
    // reset walks a ring in order, so once the last mark is gone every
    // earlier one is too.  A reset clears the flags to 0, and a producer
    // reusing the entry afterwards writes DIRTY only, so RESET is never seen
    // again on an entry that was reset.  False before the first mark.
    bool last_mark_pending() const noexcept;

    std::uint32_t size() const noexcept { return size_; }
    std::uint32_t fetch_index() const noexcept { return fetch_index_; }

private:
    DirtyGfn* entries_;
    std::uint32_t size_;
    std::uint32_t fetch_index_ = 0;
    bool marked_ = false;  // collect() marked an entry at least once
};

}  // namespace dirtyring
