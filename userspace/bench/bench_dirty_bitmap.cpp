// SPDX-License-Identifier: LGPL-2.1-or-later
// DirtyBitmap (RCU-published blocks) against a flat std::atomic<uint64_t>
// bitmap running the same algorithms, in the same run: what the blocks and
// the RCU read section cost.  Each iteration times both; the result is the
// ratio lib/flat (a counter), never a pass/fail.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <vector>

#include "dirtyring/base/error.hpp"
#include "dirtyring/bitmap/dirty_bitmap.hpp"

namespace {

using dirtyring::DirtyBitmap;
using dirtyring::DirtyPage;
using Clock = std::chrono::steady_clock;

// The baseline: one flat array of atomic words, bounds-checked like the
// library, same batch coalescing, same sync loop.
class FlatBitmap {
public:
    explicit FlatBitmap(std::uint64_t pages)
        : pages_(pages),
          words_(std::make_unique<std::atomic<std::uint64_t>[]>((pages + 63) / 64)) {}

    void set(std::uint64_t page) {
        if (page >= pages_) throw dirtyring::Error(EINVAL, "FlatBitmap::set");
        words_[page / 64].fetch_or(1ULL << (page % 64), std::memory_order_relaxed);
    }

    void set_batch(std::span<const DirtyPage> pages) {
        if (pages.empty()) return;
        std::uint64_t max = 0;
        for (const auto& p : pages) max = std::max(max, p.offset);
        if (max >= pages_) throw dirtyring::Error(EINVAL, "FlatBitmap::set_batch");
        std::uint64_t word = pages[0].offset / 64, mask = 0;
        for (const auto& p : pages) {
            if (p.offset / 64 != word) {
                words_[word].fetch_or(mask, std::memory_order_relaxed);
                word = p.offset / 64;
                mask = 0;
            }
            mask |= 1ULL << (p.offset % 64);
        }
        words_[word].fetch_or(mask, std::memory_order_relaxed);
    }

    std::uint64_t sync_and_clear(std::vector<std::uint64_t>& migration) {
        const std::uint64_t words = (pages_ + 63) / 64;
        if (migration.size() < words) migration.resize(words);
        std::uint64_t newly = 0;
        for (std::uint64_t w = 0; w < words; ++w) {
            if (words_[w].load(std::memory_order_relaxed) == 0) continue;
            const std::uint64_t bits = words_[w].exchange(0, std::memory_order_acq_rel);
            newly += static_cast<std::uint64_t>(std::popcount(bits & ~migration[w]));
            migration[w] |= bits;
        }
        return newly;
    }

private:
    std::uint64_t pages_;
    std::unique_ptr<std::atomic<std::uint64_t>[]> words_;
};

double ns(Clock::duration d) {
    return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
}

// Times `lib` and `flat` once per iteration (alternating which goes first),
// reports the library's time as the iteration time and the ratio.
template <typename Setup, typename Lib, typename Flat>
void compare(benchmark::State& state, Setup&& setup, Lib&& lib, Flat&& flat) {
    double lib_ns = 0, flat_ns = 0;
    bool lib_first = true;
    for (auto _ : state) {
        setup();
        Clock::duration l{}, f{};
        const auto time = [](auto&& fn) {
            const auto t0 = Clock::now();
            fn();
            return Clock::now() - t0;
        };
        if (lib_first) {
            l = time(lib);
            f = time(flat);
        } else {
            f = time(flat);
            l = time(lib);
        }
        lib_first = !lib_first;
        state.SetIterationTime(ns(l) * 1e-9);
        lib_ns += ns(l);
        flat_ns += ns(f);
    }
    const double n = static_cast<double>(state.iterations());
    state.counters["lib_us"] = lib_ns / n / 1e3;
    state.counters["flat_us"] = flat_ns / n / 1e3;
    state.counters["lib/flat"] = lib_ns / flat_ns;
}

constexpr std::uint64_t kPages1GiB = 1ULL << 18;

std::vector<DirtyPage> random_pages(std::uint64_t count, std::uint64_t pages, unsigned seed) {
    std::mt19937_64 rng(seed);
    std::vector<DirtyPage> out(count);
    for (auto& p : out) p = {0, rng() % pages};
    return out;
}

// set(): one page per call, 4096 random pages of 1 GiB.
void BM_Set(benchmark::State& state) {
    DirtyBitmap lib(kPages1GiB);
    FlatBitmap flat(kPages1GiB);
    const auto pages = random_pages(4096, kPages1GiB, 1);
    compare(
        state, [] {},
        [&] {
            for (const auto& p : pages) lib.set(p.offset);
        },
        [&] {
            for (const auto& p : pages) flat.set(p.offset);
        });
}
BENCHMARK(BM_Set)->UseManualTime()->MinTime(0.2)->Unit(benchmark::kMicrosecond);

// set_batch(): harvester-sized batches (512) of neighbouring pages
// (arg 1) or of random pages (arg 0), 8 batches per iteration.
void BM_SetBatch(benchmark::State& state) {
    DirtyBitmap lib(kPages1GiB);
    FlatBitmap flat(kPages1GiB);
    std::vector<DirtyPage> pages;
    if (state.range(0)) {
        for (std::uint64_t i = 0; i < 4096; ++i) pages.push_back({0, 1000 + i});
    } else {
        pages = random_pages(4096, kPages1GiB, 2);
    }
    const auto batches = [&](auto& bitmap) {
        for (std::size_t i = 0; i < pages.size(); i += 512)
            bitmap.set_batch(std::span<const DirtyPage>(pages).subspan(i, 512));
    };
    compare(
        state, [] {}, [&] { batches(lib); }, [&] { batches(flat); });
}
BENCHMARK(BM_SetBatch)
    ->ArgName("neighbours")
    ->Arg(1)
    ->Arg(0)
    ->UseManualTime()
    ->MinTime(0.2)
    ->Unit(benchmark::kMicrosecond);

// sync_and_clear(): a bitmap of range(0) GiB with range(1) per mille of its
// pages dirty (set untimed before each sync).
void BM_SyncAndClear(benchmark::State& state) {
    const std::uint64_t pages = static_cast<std::uint64_t>(state.range(0)) * kPages1GiB;
    DirtyBitmap lib(pages);
    FlatBitmap flat(pages);
    const auto dirty =
        random_pages(pages * static_cast<std::uint64_t>(state.range(1)) / 1000, pages, 3);
    std::vector<std::uint64_t> lib_migration, flat_migration;
    compare(
        state,
        [&] {
            for (std::size_t i = 0; i < dirty.size(); i += 512) {
                const auto batch = std::span<const DirtyPage>(dirty).subspan(
                    i, std::min<std::size_t>(512, dirty.size() - i));
                lib.set_batch(batch);
                flat.set_batch(batch);
            }
        },
        [&] { benchmark::DoNotOptimize(lib.sync_and_clear(lib_migration)); },
        [&] { benchmark::DoNotOptimize(flat.sync_and_clear(flat_migration)); });
}
BENCHMARK(BM_SyncAndClear)
    ->ArgNames({"GiB", "dirty_permille"})
    ->Args({1, 10})
    ->Args({1, 1000})
    ->Args({16, 10})
    ->Args({16, 100})
    ->UseManualTime()
    ->MinTime(0.2)
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
