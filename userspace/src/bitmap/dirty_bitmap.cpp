// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/bitmap/dirty_bitmap.hpp"

// The inline read side (liburcu's LGPL static API): a call into the shared
// library per read section doubled the cost of a single-bit set().
#define _LGPL_SOURCE
#include <urcu-bp.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <string>

#include "dirtyring/base/error.hpp"

#if defined(__SANITIZE_THREAD__)
// ThreadSanitizer cannot see RCU's grace periods: tell it that every read
// section ends before synchronize_rcu() returns, so freeing an old table
// after it is not reported as a race.
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
namespace {
char rcu_grace;
void annotate_read_end() {
    __tsan_release(&rcu_grace);
}
void annotate_grace_period() {
    __tsan_acquire(&rcu_grace);
}
}  // namespace
#else
namespace {
void annotate_read_end() {}
void annotate_grace_period() {}
}  // namespace
#endif

namespace dirtyring {

class DirtyBitmap::ReadSection {
public:
    ReadSection() { urcu_bp_read_lock(); }
    ~ReadSection() {
        annotate_read_end();
        urcu_bp_read_unlock();
    }
    ReadSection(const ReadSection&) = delete;
    ReadSection& operator=(const ReadSection&) = delete;
};

namespace {

std::uint64_t blocks_for(std::uint64_t pages) {
    return (pages + DirtyBitmap::kBlockPages - 1) / DirtyBitmap::kBlockPages;
}

}  // namespace

DirtyBitmap::DirtyBitmap(std::uint64_t pages) {
    if (pages == 0) throw Error(EINVAL, "DirtyBitmap: a bitmap of zero pages");
    grow(pages);
}

DirtyBitmap::~DirtyBitmap() = default;

void DirtyBitmap::out_of_range(const char* op, std::uint64_t page, std::uint64_t pages) {
    throw Error(EINVAL, std::string("DirtyBitmap::") + op + ": page " + std::to_string(page) +
                            " out of range (" + std::to_string(pages) + " pages)");
}

const DirtyBitmap::Table& DirtyBitmap::table(const ReadSection&) const noexcept {
    return *table_.load(std::memory_order_acquire);
}

void DirtyBitmap::grow(std::uint64_t pages) {
    std::lock_guard lock(grow_mutex_);
    if (current_ && pages < current_->pages)
        throw Error(EINVAL, "DirtyBitmap::grow: " + std::to_string(pages) + " pages is less than " +
                                std::to_string(current_->pages));
    auto next = std::make_unique<Table>();
    next->pages = pages;
    if (current_) next->blocks = current_->blocks;
    while (next->blocks.size() < blocks_for(pages)) {
        owned_.push_back(std::make_unique<Block>());  // value-initialized: all clean
        next->blocks.push_back(owned_.back().get());
    }
    std::unique_ptr<const Table> old = std::move(current_);
    current_ = std::move(next);
    table_.store(current_.get(), std::memory_order_release);
    if (old) {
        // Readers may still hold the old table (never its blocks, which live
        // on): free it only after they are all gone.
        urcu_bp_synchronize_rcu();
        annotate_grace_period();
    }
}

void DirtyBitmap::set(std::uint64_t page) {
    ReadSection rcu;
    const Table& t = table(rcu);
    if (page >= t.pages) out_of_range("set", page, t.pages);
    t.blocks[page / kBlockPages]->words[page % kBlockPages / kWordBits].fetch_or(
        1ULL << (page % kWordBits), std::memory_order_relaxed);
}

void DirtyBitmap::set_range(std::uint64_t first, std::uint64_t count) {
    if (count == 0) return;
    ReadSection rcu;
    const Table& t = table(rcu);
    if (first >= t.pages || count > t.pages - first)
        out_of_range("set_range", first + count, t.pages);
    std::uint64_t page = first;
    const std::uint64_t end = first + count;
    while (page < end) {
        const std::uint64_t bit = page % kWordBits;
        const std::uint64_t n = std::min(kWordBits - bit, end - page);
        const std::uint64_t mask = (n == kWordBits ? ~0ULL : ((1ULL << n) - 1)) << bit;
        t.blocks[page / kBlockPages]->words[page % kBlockPages / kWordBits].fetch_or(
            mask, std::memory_order_relaxed);
        page += n;
    }
}

void DirtyBitmap::set_batch(std::span<const DirtyPage> pages) {
    if (pages.empty()) return;
    ReadSection rcu;
    const Table& t = table(rcu);
    std::uint64_t max = 0;
    for (const auto& p : pages) max = std::max(max, p.offset);
    if (max >= t.pages) out_of_range("set_batch", max, t.pages);
    // Harvested pages often come in runs (a guest dirties neighbours, and a
    // ring keeps its writer's order): one atomic OR per run within a word,
    // not per page, is what keeps this within reach of a plain bit loop.
    std::uint64_t word = pages[0].offset / kWordBits;
    std::uint64_t mask = 0;
    for (const auto& p : pages) {
        const std::uint64_t w = p.offset / kWordBits;
        if (w != word) {
            t.blocks[word / kBlockWords]->words[word % kBlockWords].fetch_or(
                mask, std::memory_order_relaxed);
            word = w;
            mask = 0;
        }
        mask |= 1ULL << (p.offset % kWordBits);
    }
    t.blocks[word / kBlockWords]->words[word % kBlockWords].fetch_or(mask,
                                                                     std::memory_order_relaxed);
}

bool DirtyBitmap::test(std::uint64_t page) const {
    ReadSection rcu;
    const Table& t = table(rcu);
    if (page >= t.pages) out_of_range("test", page, t.pages);
    return (t.blocks[page / kBlockPages]->words[page % kBlockPages / kWordBits].load(
                std::memory_order_relaxed) >>
            (page % kWordBits)) &
           1;
}

std::uint64_t DirtyBitmap::sync_and_clear(std::vector<std::uint64_t>& migration) {
    ReadSection rcu;
    const Table& t = table(rcu);
    const std::uint64_t words = (t.pages + kWordBits - 1) / kWordBits;
    if (migration.size() < words) migration.resize(words);
    std::uint64_t newly = 0;
    // Block by block: the inner loop is the flat bitmap's.
    for (std::uint64_t first = 0; first < words; first += kBlockWords) {
        std::atomic<std::uint64_t>* block = t.blocks[first / kBlockWords]->words;
        std::uint64_t* out = migration.data() + first;
        const std::uint64_t n = std::min(kBlockWords, words - first);
        for (std::uint64_t w = 0; w < n; ++w) {
            if (block[w].load(std::memory_order_relaxed) == 0) continue;
            const std::uint64_t bits = block[w].exchange(0, std::memory_order_acq_rel);
            newly += static_cast<std::uint64_t>(std::popcount(bits & ~out[w]));
            out[w] |= bits;
        }
    }
    return newly;
}

std::optional<std::uint64_t> DirtyBitmap::find_next(std::uint64_t from) const {
    ReadSection rcu;
    const Table& t = table(rcu);
    for (std::uint64_t page = from; page < t.pages;) {
        const std::uint64_t bits =
            t.blocks[page / kBlockPages]->words[page % kBlockPages / kWordBits].load(
                std::memory_order_relaxed) >>
            (page % kWordBits);
        if (bits) {
            const std::uint64_t found = page + static_cast<std::uint64_t>(std::countr_zero(bits));
            if (found < t.pages) return found;
            return std::nullopt;
        }
        page = (page / kWordBits + 1) * kWordBits;
    }
    return std::nullopt;
}

std::uint64_t DirtyBitmap::pages() const noexcept {
    ReadSection rcu;
    return table(rcu).pages;
}

}  // namespace dirtyring
