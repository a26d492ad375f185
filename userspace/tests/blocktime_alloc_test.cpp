// SPDX-License-Identifier: LGPL-2.1-or-later
// Blocktime's promise that a fault costs no heap allocation once warmed up:
// this binary replaces the global operator new to count allocations, so it
// is a test program of its own.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include "dirtyring/postcopy/blocktime.hpp"

namespace {
std::atomic<std::uint64_t> allocations{0};
}  // namespace

void* operator new(std::size_t size) {
    allocations.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(size ? size : 1)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
    std::free(p);
}

namespace {

// The same load twice: `vcpus` vCPUs each with `depth` faults in flight on
// distinct pages, and one page shared by all, then every page resolved.
void fault_round(dirtyring::Blocktime& b, unsigned vcpus, unsigned depth, std::uint64_t base) {
    for (unsigned d = 0; d < depth; ++d)
        for (unsigned v = 0; v < vcpus; ++v)
            b.fault_begin(base + (std::uint64_t{d} * vcpus + v + 1) * 4096,
                          static_cast<pid_t>(v + 1));
    for (unsigned v = 0; v < vcpus; ++v) b.fault_begin(base, static_cast<pid_t>(v + 1));
    b.fault_end(base);
    for (unsigned d = 0; d < depth; ++d)
        for (unsigned v = 0; v < vcpus; ++v)
            b.fault_end(base + (std::uint64_t{d} * vcpus + v + 1) * 4096);
}

TEST(BlocktimeAllocations, NoneOnceWarmedUp) {
    constexpr unsigned kVcpus = 64;
    std::uint64_t now = 0;
    dirtyring::Blocktime b(kVcpus, [&now] { return now += 100; });
    for (unsigned v = 0; v < kVcpus; ++v) b.register_vcpu_thread(static_cast<pid_t>(v + 1), v);
    fault_round(b, kVcpus, 4, 1ULL << 30);  // warm-up: tables and pools grow here
    const std::uint64_t before = allocations.load();
    for (std::uint64_t r = 0; r < 100; ++r) fault_round(b, kVcpus, 4, (2 + r) << 30);
    EXPECT_EQ(before, allocations.load());
    EXPECT_EQ(0U, b.vcpus_blocked());
}

// The counter must see allocations at all, or the test above proves nothing.
TEST(BlocktimeAllocations, TheCounterCounts) {
    const std::uint64_t before = allocations.load();
    auto p = std::make_unique<int>(1);
    EXPECT_EQ(before + 1, allocations.load());
}

}  // namespace
