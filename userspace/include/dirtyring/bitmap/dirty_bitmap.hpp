// SPDX-License-Identifier: LGPL-2.1-or-later
// The migration dirty bitmap of one RAM block (one memory slot).
//
// Split into fixed-size blocks of kBlockPages pages so it can grow (RAM
// hotplug) while other threads set and sync bits: the table of blocks is
// published with RCU (liburcu's bulletproof flavour, so reader threads need
// no registration), blocks never move, and a grown table replaces the old
// one, which is freed after a grace period.
//
// Thread-safety: set*, test, sync_and_clear and find_next may run from any
// threads concurrently with each other and with grow (growth is serialized).
// Each call takes one RCU read section, whatever the number of bits: the
// hot paths are the batch calls.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "dirtyring/rings/ring_view.hpp"

namespace dirtyring {

class DirtyBitmap {
public:
    static constexpr std::uint64_t kBlockPages = 1 << 15;  // 128 MiB of 4 KiB pages
    static constexpr std::uint64_t kWordBits = 64;
    static constexpr std::uint64_t kBlockWords = kBlockPages / kWordBits;

    // A bitmap of `pages` pages, all clean; throws Error(EINVAL) for 0.
    explicit DirtyBitmap(std::uint64_t pages);
    ~DirtyBitmap();
    DirtyBitmap(const DirtyBitmap&) = delete;
    DirtyBitmap& operator=(const DirtyBitmap&) = delete;

    // Grows to `pages` pages (never shrinks: throws Error(EINVAL)).
    void grow(std::uint64_t pages);

    void set(std::uint64_t page);
    void set_range(std::uint64_t first, std::uint64_t count);
    // Sets each page's offset; the caller routes pages of other slots
    // elsewhere.  All offsets are checked before any bit is set.
    void set_batch(std::span<const DirtyPage> pages);
    bool test(std::uint64_t page) const;

    // Moves every dirty bit into `migration` (one bit per page, resized to
    // pages() when shorter), clearing them here with one atomic exchange per
    // word; returns how many pages were newly dirty in `migration`.
    std::uint64_t sync_and_clear(std::vector<std::uint64_t>& migration);

    // The first dirty page at or after `from`, if any.
    std::optional<std::uint64_t> find_next(std::uint64_t from) const;

    std::uint64_t pages() const noexcept;

private:
    struct Block {
        std::atomic<std::uint64_t> words[kBlockWords];
    };
    struct Table {
        std::uint64_t pages;
        std::vector<Block*> blocks;
    };

    class ReadSection;
    const Table& table(const ReadSection&) const noexcept;
    [[noreturn]] static void out_of_range(const char* op, std::uint64_t page, std::uint64_t pages);

    std::atomic<const Table*> table_{nullptr};  // what readers see
    std::mutex grow_mutex_;
    std::unique_ptr<const Table> current_;       // owns *table_, under grow_mutex_
    std::vector<std::unique_ptr<Block>> owned_;  // under grow_mutex_
};

}  // namespace dirtyring
