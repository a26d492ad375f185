// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/bitmap/dirty_bitmap.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "dirtyring/base/error.hpp"

namespace {

using dirtyring::DirtyBitmap;
using dirtyring::DirtyPage;
constexpr std::uint64_t kBlock = DirtyBitmap::kBlockPages;

bool migration_bit(const std::vector<std::uint64_t>& m, std::uint64_t page) {
    return page / 64 < m.size() && ((m[page / 64] >> (page % 64)) & 1);
}

TEST(DirtyBitmap, StartsClean) {
    DirtyBitmap bitmap(3 * kBlock + 5);
    EXPECT_EQ(3 * kBlock + 5, bitmap.pages());
    EXPECT_FALSE(bitmap.find_next(0));
    std::vector<std::uint64_t> migration;
    EXPECT_EQ(0U, bitmap.sync_and_clear(migration));
}

TEST(DirtyBitmap, SetTestFindSync) {
    DirtyBitmap bitmap(2 * kBlock);
    bitmap.set(0);
    bitmap.set(63);
    bitmap.set(kBlock);  // first page of the second block
    bitmap.set(2 * kBlock - 1);
    EXPECT_TRUE(bitmap.test(63));
    EXPECT_FALSE(bitmap.test(64));
    EXPECT_EQ(0U, bitmap.find_next(0));
    EXPECT_EQ(63U, bitmap.find_next(1));
    EXPECT_EQ(kBlock, bitmap.find_next(64));
    EXPECT_EQ(2 * kBlock - 1, bitmap.find_next(kBlock + 1));
    std::vector<std::uint64_t> migration;
    EXPECT_EQ(4U, bitmap.sync_and_clear(migration));
    EXPECT_TRUE(migration_bit(migration, kBlock));
    EXPECT_FALSE(bitmap.test(0));
    EXPECT_FALSE(bitmap.find_next(0));
    // Already in the migration bitmap: not newly dirty.
    bitmap.set(0);
    bitmap.set(1);
    EXPECT_EQ(1U, bitmap.sync_and_clear(migration));
}

TEST(DirtyBitmap, SetRangeAcrossWordsAndBlocks) {
    DirtyBitmap bitmap(2 * kBlock);
    bitmap.set_range(kBlock - 70, 140);
    bitmap.set_range(5, 0);
    std::vector<std::uint64_t> migration;
    EXPECT_EQ(140U, bitmap.sync_and_clear(migration));
    EXPECT_FALSE(migration_bit(migration, kBlock - 71));
    EXPECT_TRUE(migration_bit(migration, kBlock - 70));
    EXPECT_TRUE(migration_bit(migration, kBlock + 69));
    EXPECT_FALSE(migration_bit(migration, kBlock + 70));
    bitmap.set_range(0, 2 * kBlock);
    EXPECT_EQ(2 * kBlock - 140, bitmap.sync_and_clear(migration));
}

TEST(DirtyBitmap, SetBatch) {
    DirtyBitmap bitmap(kBlock);
    const std::vector<DirtyPage> pages{{0, 7}, {0, 9}, {0, 7}, {0, kBlock - 1}};
    bitmap.set_batch(pages);
    std::vector<std::uint64_t> migration;
    EXPECT_EQ(3U, bitmap.sync_and_clear(migration));
    // Runs within a word, broken and resumed, across words and blocks: each
    // page set, none else.
    const std::vector<DirtyPage> runs{{0, 64}, {0, 63}, {0, 65},         {0, 64},
                                      {0, 0},  {0, 1},  {0, kBlock - 1}, {0, 127}};
    bitmap.set_batch(runs);
    std::vector<std::uint64_t> fresh;
    EXPECT_EQ(7U, bitmap.sync_and_clear(fresh));
    for (const std::uint64_t page : {0UL, 1UL, 63UL, 64UL, 65UL, 127UL, kBlock - 1})
        EXPECT_TRUE(migration_bit(fresh, page)) << page;
    EXPECT_FALSE(migration_bit(fresh, 2));
    EXPECT_FALSE(migration_bit(fresh, 66));
}

TEST(DirtyBitmap, GrowKeepsBits) {
    DirtyBitmap bitmap(10);
    bitmap.set(9);
    bitmap.grow(5 * kBlock);
    EXPECT_TRUE(bitmap.test(9));
    bitmap.set(5 * kBlock - 1);
    EXPECT_EQ(5 * kBlock - 1, bitmap.find_next(10));
    bitmap.grow(5 * kBlock);  // same size: fine
}

struct BadCall {
    const char* what;
    std::function<void(DirtyBitmap&)> call;
};

void PrintTo(const BadCall& b, std::ostream* os) {
    *os << b.what;
}

class DirtyBitmapRejects : public testing::TestWithParam<BadCall> {};

TEST_P(DirtyBitmapRejects, WithEinvalAndNoBitSet) {
    DirtyBitmap bitmap(100);
    try {
        GetParam().call(bitmap);
        FAIL() << "accepted";
    } catch (const dirtyring::Error& e) {
        EXPECT_EQ(EINVAL, e.errnum()) << e.what();
    }
    EXPECT_FALSE(bitmap.find_next(0)) << "a rejected call set a bit";
    EXPECT_EQ(100U, bitmap.pages());
}

INSTANTIATE_TEST_SUITE_P(
    BadInput, DirtyBitmapRejects,
    testing::Values(BadCall{"set past the end", [](DirtyBitmap& b) { b.set(100); }},
                    BadCall{"set huge", [](DirtyBitmap& b) { b.set(~0ULL); }},
                    BadCall{"test past the end", [](DirtyBitmap& b) { (void)b.test(100); }},
                    BadCall{"range past the end", [](DirtyBitmap& b) { b.set_range(90, 11); }},
                    BadCall{"range that wraps", [](DirtyBitmap& b) { b.set_range(1, ~0ULL); }},
                    BadCall{"batch with one page past the end",
                            [](DirtyBitmap& b) {
                                const std::vector<DirtyPage> p{{0, 1}, {0, 100}};
                                b.set_batch(p);
                            }},
                    BadCall{"shrink", [](DirtyBitmap& b) { b.grow(99); }}),
    [](const auto& param_info) { return "case" + std::to_string(param_info.index); });

TEST(DirtyBitmap, ZeroPagesRejected) {
    try {
        DirtyBitmap bitmap(0);
        FAIL() << "accepted";
    } catch (const dirtyring::Error& e) {
        EXPECT_EQ(EINVAL, e.errnum()) << e.what();
        EXPECT_NE(std::string::npos, std::string(e.what()).find("zero pages")) << e.what();
    }
}

// Writers set bits in the part that exists while a grower adds blocks and a
// syncer moves bits into a migration bitmap: at the end every bit a writer
// set is in the migration bitmap, and no other.
TEST(DirtyBitmapConcurrent, GrowWhileSettingAndSyncingLosesNoBit) {
    constexpr unsigned kWriters = 3;
    constexpr std::uint64_t kFinalPages = 8 * kBlock;
    DirtyBitmap bitmap(kBlock);
    std::vector<std::vector<bool>> written(kWriters, std::vector<bool>(kFinalPages));
    std::atomic<bool> stop{false};
    std::vector<std::uint64_t> migration;
    std::uint64_t synced = 0;
    {
        std::vector<std::jthread> threads;
        for (unsigned w = 0; w < kWriters; ++w)
            threads.emplace_back([&, w] {
                std::mt19937_64 rng(w);
                std::vector<DirtyPage> batch(16);
                while (!stop.load(std::memory_order_relaxed)) {
                    const std::uint64_t limit = bitmap.pages();
                    for (auto& p : batch) {
                        p.offset = rng() % limit;
                        written[w][p.offset] = true;
                    }
                    if (rng() % 2) {
                        bitmap.set_batch(batch);
                    } else {
                        for (const auto& p : batch) bitmap.set(p.offset);
                    }
                }
            });
        threads.emplace_back([&] {
            for (std::uint64_t pages = 2 * kBlock; pages <= kFinalPages; pages += kBlock) {
                bitmap.grow(pages);
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
            }
        });
        for (int round = 0; round < 200; ++round) {
            synced += bitmap.sync_and_clear(migration);
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        stop = true;
    }
    synced += bitmap.sync_and_clear(migration);
    std::uint64_t expected = 0;
    for (std::uint64_t page = 0; page < kFinalPages; ++page) {
        bool any = false;
        for (const auto& w : written) any = any || w[page];
        expected += any;
        ASSERT_EQ(any, migration_bit(migration, page)) << "page " << page;
    }
    EXPECT_EQ(expected, synced);
    EXPECT_EQ(kFinalPages, bitmap.pages());
}

}  // namespace
