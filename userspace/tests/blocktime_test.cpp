// SPDX-License-Identifier: LGPL-2.1-or-later
// Blocktime accounting with an injected clock: deterministic, no threads.
#include "dirtyring/postcopy/blocktime.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <functional>
#include <ostream>
#include <string>

#include "dirtyring/base/error.hpp"

namespace {

using dirtyring::Blocktime;
using dirtyring::BlocktimeReport;

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t A = 0x7f0000000000, B = A + kPage, C = A + 2 * kPage;
constexpr std::uint64_t kMs = 1000000;

class FakeClock {
public:
    Blocktime::Clock clock() {
        return [this] { return now; };
    }
    std::uint64_t now = 1000 * kMs;
};

class BlocktimeTest : public testing::Test {
protected:
    // vCPU i runs in thread 100 + i.
    void make(unsigned vcpus) {
        bt = std::make_unique<Blocktime>(vcpus, clock.clock());
        for (unsigned i = 0; i < vcpus; ++i) bt->register_vcpu_thread(tid(i), i);
    }
    static pid_t tid(unsigned vcpu) { return static_cast<pid_t>(100 + vcpu); }
    void at(std::uint64_t ms) { clock.now = 1000 * kMs + ms * kMs; }

    FakeClock clock;
    std::unique_ptr<Blocktime> bt;
};

TEST_F(BlocktimeTest, OneFaultOneVcpu) {
    make(2);
    at(0);
    EXPECT_EQ(0U, bt->fault_begin(A, tid(0)));
    at(5);
    EXPECT_EQ(1U, bt->fault_end(A));
    const auto r = bt->report();
    EXPECT_EQ(5 * kMs, r.vcpu_blocktime_ns[0]);
    EXPECT_EQ(0U, r.vcpu_blocktime_ns[1]);
    EXPECT_EQ(1U, r.vcpu_faults[0]);
    EXPECT_EQ(0U, r.vcpu_faults_in_flight[0]);
    EXPECT_EQ(5 * kMs, r.vcpu_latency_ns(0));
    EXPECT_EQ(0U, r.blocktime_ns);  // vCPU 1 kept running
    EXPECT_EQ(0U, bt->vcpus_blocked());
}

// Re-entrancy case 1: the fault thread reads the vCPU's second fault (on
// another page) before the resolver has removed the first.
TEST_F(BlocktimeTest, SecondFaultReadBeforeFirstResolved) {
    make(1);
    at(0);
    bt->fault_begin(A, tid(0));
    at(3);
    bt->fault_begin(B, tid(0));
    EXPECT_EQ(2U, bt->report().vcpu_faults_in_flight[0]);
    at(4);
    bt->fault_end(A);
    // Still blocked: B is in flight.
    EXPECT_EQ(1U, bt->vcpus_blocked());
    EXPECT_EQ(0U, bt->report().vcpu_blocktime_ns[0]);
    at(10);
    bt->fault_end(B);
    const auto r = bt->report();
    // One blocked interval, 0..10 ms, not 4 + 7.
    EXPECT_EQ(10 * kMs, r.vcpu_blocktime_ns[0]);
    EXPECT_EQ(10 * kMs, r.blocktime_ns);
    EXPECT_EQ(2U, r.vcpu_faults[0]);
    EXPECT_EQ((4 + 7) * kMs / 2, r.vcpu_latency_ns(0));
    EXPECT_EQ(0U, bt->vcpus_blocked());
}

// Re-entrancy case 2: the kernel retries a fault on the same address.
TEST_F(BlocktimeTest, RetriedFaultOnSameAddress) {
    make(1);
    at(0);
    bt->fault_begin(A, tid(0));
    at(2);
    bt->fault_begin(A, tid(0));
    EXPECT_EQ(2U, bt->report().vcpu_faults_in_flight[0]);
    at(6);
    EXPECT_EQ(2U, bt->fault_end(A));
    const auto r = bt->report();
    EXPECT_EQ(6 * kMs, r.vcpu_blocktime_ns[0]);
    EXPECT_EQ(0U, r.vcpu_faults_in_flight[0]);
    EXPECT_EQ(6 * kMs, r.blocktime_ns);
    EXPECT_EQ(0U, bt->vcpus_blocked());
}

TEST_F(BlocktimeTest, SeveralVcpusOnOneAddress) {
    make(4);
    at(0);
    bt->fault_begin(A, tid(0));
    at(1);
    bt->fault_begin(A, tid(1));
    at(2);
    bt->fault_begin(A, tid(2));
    EXPECT_EQ(3U, bt->vcpus_blocked());
    at(10);
    EXPECT_EQ(3U, bt->fault_end(A));
    const auto r = bt->report();
    EXPECT_EQ(10 * kMs, r.vcpu_blocktime_ns[0]);
    EXPECT_EQ(9 * kMs, r.vcpu_blocktime_ns[1]);
    EXPECT_EQ(8 * kMs, r.vcpu_blocktime_ns[2]);
    EXPECT_EQ(0U, r.vcpu_blocktime_ns[3]);
    EXPECT_EQ(0U, r.blocktime_ns);
    EXPECT_EQ(0U, bt->vcpus_blocked());
    // Resolved and gone: a second resolution of A resolves nothing.
    EXPECT_EQ(0U, bt->fault_end(A));
}

TEST_F(BlocktimeTest, ResolvedInAnotherOrderThanFaulted) {
    make(3);
    at(0);
    bt->fault_begin(A, tid(0));
    at(1);
    bt->fault_begin(B, tid(1));
    at(2);
    bt->fault_begin(C, tid(2));
    at(5);
    bt->fault_end(C);
    at(7);
    bt->fault_end(A);
    at(20);
    bt->fault_end(B);
    const auto r = bt->report();
    EXPECT_EQ(7 * kMs, r.vcpu_blocktime_ns[0]);
    EXPECT_EQ(19 * kMs, r.vcpu_blocktime_ns[1]);
    EXPECT_EQ(3 * kMs, r.vcpu_blocktime_ns[2]);
    // All three were down from 2 to 5 ms.
    EXPECT_EQ(3 * kMs, r.blocktime_ns);
}

TEST_F(BlocktimeTest, AllVcpusDownAccountedPerEpisode) {
    make(2);
    at(0);
    bt->fault_begin(A, tid(0));
    at(4);
    bt->fault_begin(B, tid(1));  // all down from 4
    at(6);
    bt->fault_end(B);  // up at 6: 2 ms
    at(8);
    bt->fault_begin(C, tid(1));  // all down again from 8
    at(9);
    bt->fault_begin(B, tid(0));  // vCPU 0 had A in flight already: no new episode
    at(15);
    bt->fault_end(A);  // vCPU 0 still has B in flight: still all down
    EXPECT_EQ(2U, bt->vcpus_blocked());
    EXPECT_EQ(2 * kMs, bt->report().blocktime_ns);
    at(16);
    bt->fault_end(C);  // vCPU 1 up at 16: 8 more ms
    at(30);
    bt->fault_end(B);
    const auto r = bt->report();
    EXPECT_EQ(10 * kMs, r.blocktime_ns);
    EXPECT_EQ(30 * kMs, r.vcpu_blocktime_ns[0]);
    EXPECT_EQ((2 + 8) * kMs, r.vcpu_blocktime_ns[1]);
}

TEST_F(BlocktimeTest, UnknownThreadsAreNonVcpuFaults) {
    make(1);
    at(0);
    EXPECT_FALSE(bt->fault_begin(A, 4242).has_value());
    EXPECT_FALSE(bt->fault_begin(A, 0).has_value());  // no thread id from the kernel
    EXPECT_EQ(0U, bt->vcpus_blocked());
    at(3);
    EXPECT_EQ(2U, bt->fault_end(A));
    const auto r = bt->report();
    EXPECT_EQ(2U, r.non_vcpu_faults);
    EXPECT_EQ(3 * kMs, r.non_vcpu_latency_ns());
    EXPECT_EQ(0U, r.vcpu_faults[0]);
    EXPECT_EQ(0U, r.vcpu_blocktime_ns[0]);
    EXPECT_EQ(0U, r.blocktime_ns);
}

TEST_F(BlocktimeTest, AddressNeverFaultedResolvesNothing) {
    make(2);
    at(0);
    bt->fault_begin(A, tid(0));
    at(1);
    EXPECT_EQ(0U, bt->fault_end(B));
    EXPECT_EQ(1U, bt->vcpus_blocked());
    const auto r = bt->report();
    EXPECT_EQ(0U, r.vcpu_blocktime_ns[0]);
    EXPECT_EQ(1U, r.vcpu_faults_in_flight[0]);
}

TEST_F(BlocktimeTest, ClockGoingBackwardsIsAnErrorAndChangesNothing) {
    make(1);
    at(10);
    bt->fault_begin(A, tid(0));
    at(5);
    try {
        bt->fault_end(A);
        FAIL() << "no error";
    } catch (const dirtyring::Error& e) {
        EXPECT_EQ(EINVAL, e.errnum());
        EXPECT_NE(std::string(e.what()).find("backwards"), std::string::npos) << e.what();
    }
    EXPECT_THROW(bt->fault_begin(B, tid(0)), dirtyring::Error);
    // The fault is still in flight and resolves once time moves on.
    at(12);
    EXPECT_EQ(1U, bt->fault_end(A));
    EXPECT_EQ(2 * kMs, bt->report().vcpu_blocktime_ns[0]);
}

TEST_F(BlocktimeTest, LatencyDistributionBuckets) {
    make(1);
    const std::uint64_t base = clock.now;
    const auto fault_for = [&](std::uint64_t addr, std::uint64_t ns) {
        bt->fault_begin(addr, tid(0));
        clock.now += ns;
        bt->fault_end(addr);
    };
    fault_for(A, 500);                // < 1 us: bucket 0
    fault_for(A, 1000);               // 1 us: bucket 0
    fault_for(A, 3999);               // 3 us: bucket 1
    fault_for(A, 256000);             // 256 us: bucket 8
    fault_for(A, 511999);             // 511 us: bucket 8
    fault_for(A, 3600 * 1000 * kMs);  // an hour: the last bucket
    const auto r = bt->report();
    EXPECT_EQ(2U, r.latency_dist[0]);
    EXPECT_EQ(1U, r.latency_dist[1]);
    EXPECT_EQ(2U, r.latency_dist[8]);
    EXPECT_EQ(1U, r.latency_dist[BlocktimeReport::kLatencyBuckets - 1]);
    (void)base;
}

// Many addresses in flight at once, resolved in a scrambled order: the
// table grows, and deletions (backward shift) never lose an entry.
TEST_F(BlocktimeTest, ManyAddressesInFlight) {
    constexpr unsigned kVcpus = 64, kPages = 5000;
    make(kVcpus);
    for (unsigned p = 0; p < kPages; ++p) bt->fault_begin(A + p * kPage, tid(p % kVcpus));
    EXPECT_EQ(kVcpus, bt->vcpus_blocked());
    unsigned resolved = 0;
    for (unsigned p = 0; p < kPages; ++p) {
        const unsigned q = (p * 761U) % kPages;  // a permutation: 761 is prime to 5000
        clock.now += 1000;
        resolved += bt->fault_end(A + q * kPage);
    }
    EXPECT_EQ(kPages, resolved);
    EXPECT_EQ(0U, bt->vcpus_blocked());
    const auto r = bt->report();
    std::uint64_t faults = 0;
    for (unsigned i = 0; i < kVcpus; ++i) {
        EXPECT_EQ(0U, r.vcpu_faults_in_flight[i]);
        faults += r.vcpu_faults[i];
    }
    EXPECT_EQ(kPages, faults);
}

TEST_F(BlocktimeTest, JsonHasQueryMigrateNamesAndUnits) {
    make(2);
    at(0);
    bt->fault_begin(A, tid(0));
    bt->fault_begin(B, tid(1));
    bt->fault_begin(C, 9999);
    at(3);
    bt->fault_end(A);
    at(7);
    bt->fault_end(B);
    bt->fault_end(C);
    const std::string json = bt->report().to_json();
    EXPECT_NE(json.find("\"postcopy-blocktime\": 3,"), std::string::npos) << json;
    EXPECT_NE(json.find("\"postcopy-vcpu-blocktime\": [3, 7]"), std::string::npos) << json;
    EXPECT_NE(json.find("\"postcopy-latency\": " + std::to_string((3 + 7 + 7) * kMs / 3)),
              std::string::npos)
        << json;
    EXPECT_NE(json.find("\"postcopy-vcpu-latency\": [3000000, 7000000]"), std::string::npos)
        << json;
    EXPECT_NE(json.find("\"postcopy-non-vcpu-latency\": 7000000"), std::string::npos) << json;
    // 3 ms and 7 ms: [2048, 4096) us is bucket 11, [4096, 8192) bucket 12.
    EXPECT_NE(json.find("\"postcopy-latency-dist\": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0"),
              std::string::npos)
        << json;
    EXPECT_NE(json.find("\"postcopy-vcpu-faults\": [1, 1]"), std::string::npos) << json;
    EXPECT_NE(json.find("\"postcopy-non-vcpu-faults\": 1}"), std::string::npos) << json;
}

// Bad inputs: each must be refused with its errno, never crash.
struct BadInput {
    const char* name;
    std::function<void()> call;
    int errnum;
};

// A vCPU thread exits and the kernel gives its tid to the thread that now
// runs another vCPU: after unregister and register, that tid's faults are
// charged to the new vCPU, and the fault the old thread had in flight to
// the old one.
TEST_F(BlocktimeTest, AReusedThreadIdIsChargedToItsNewVcpu) {
    make(2);
    at(0);
    EXPECT_EQ(0U, bt->fault_begin(A, tid(0)));  // in flight as the thread exits
    bt->unregister_vcpu_thread(tid(0));
    EXPECT_EQ(std::nullopt, bt->vcpu_of(tid(0)));
    // Until it registers again, the tid is no vCPU's.
    EXPECT_EQ(std::nullopt, bt->fault_begin(B, tid(0)));
    bt->unregister_vcpu_thread(tid(1));
    bt->register_vcpu_thread(tid(0), 1);  // vCPU 1's restarted thread got vCPU 0's old tid
    at(2);
    EXPECT_EQ(1U, bt->fault_begin(C, tid(0)));
    at(5);
    EXPECT_EQ(1U, bt->fault_end(A));
    EXPECT_EQ(1U, bt->fault_end(B));
    at(9);
    EXPECT_EQ(1U, bt->fault_end(C));
    const auto r = bt->report();
    EXPECT_EQ(1U, r.vcpu_faults[0]);
    EXPECT_EQ(5 * kMs, r.vcpu_blocktime_ns[0]);
    EXPECT_EQ(1U, r.vcpu_faults[1]);
    EXPECT_EQ(7 * kMs, r.vcpu_blocktime_ns[1]);
    EXPECT_EQ(1U, r.non_vcpu_faults);
    // Both vCPUs were blocked at once from 2 to 5 ms.
    EXPECT_EQ(3 * kMs, r.blocktime_ns);
}

void PrintTo(const BadInput& input, std::ostream* os) {
    *os << input.name;
}

class BlocktimeBadInput : public testing::TestWithParam<BadInput> {};

TEST_P(BlocktimeBadInput, IsRefused) {
    try {
        GetParam().call();
        FAIL() << "accepted";
    } catch (const dirtyring::Error& e) {
        EXPECT_EQ(GetParam().errnum, e.errnum()) << e.what();
    }
}

Blocktime two_vcpus() {
    Blocktime bt(2, [] { return std::uint64_t{0}; });
    bt.register_vcpu_thread(100, 0);
    return bt;
}

INSTANTIATE_TEST_SUITE_P(
    Table, BlocktimeBadInput,
    testing::Values(
        BadInput{"ZeroVcpus", [] { Blocktime(0); }, EINVAL},
        BadInput{"TooManyVcpus", [] { Blocktime(Blocktime::kMaxVcpus + 1); }, EINVAL},
        BadInput{"NoClock", [] { Blocktime(1, Blocktime::Clock{}); }, EINVAL},
        BadInput{"ThreadIdZero", [] { two_vcpus().register_vcpu_thread(0, 1); }, EINVAL},
        BadInput{"NegativeThreadId", [] { two_vcpus().register_vcpu_thread(-5, 1); }, EINVAL},
        BadInput{"VcpuOutOfRange", [] { two_vcpus().register_vcpu_thread(101, 2); }, EINVAL},
        BadInput{"ThreadOnTwoVcpus", [] { two_vcpus().register_vcpu_thread(100, 1); }, EEXIST},
        BadInput{"UnregisterUnknownThread", [] { two_vcpus().unregister_vcpu_thread(101); },
                 ENOENT},
        BadInput{"UnregisterTwice",
                 [] {
                     Blocktime bt = two_vcpus();
                     bt.unregister_vcpu_thread(100);
                     bt.unregister_vcpu_thread(100);
                 },
                 ENOENT},
        BadInput{"FaultOnAllOnes", [] { two_vcpus().fault_begin(~std::uint64_t{0}, 100); },
                 EINVAL}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

}  // namespace
