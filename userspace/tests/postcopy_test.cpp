// SPDX-License-Identifier: LGPL-2.1-or-later
// Postcopy on a real userfaultfd: threads fault on registered anonymous
// memory and an in-process source serves their pages.
//
// Timing: only lower bounds that follow from the source's delay (the
// monotonic clock and sleep_until guarantee them) and generous upper bounds
// (kSlack per page); these machines are shared and noisy.
#include "dirtyring/postcopy/postcopy.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <latch>
#include <ostream>
#include <thread>
#include <vector>

#include "dirtyring/base/error.hpp"
#include "dirtyring/base/mapping.hpp"
#include "dirtyring/postcopy/userfault.hpp"
#include "postcopy_test_source.hpp"

namespace {

using namespace std::chrono_literals;
using dirtyring::Mapping;
using dirtyring::Postcopy;
using dirtyring::Userfaultfd;
using dirtyring_test::DelayedSource;
using dirtyring_test::pattern;

const std::size_t kPage = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
constexpr std::uint64_t kSlackNs = 1000000000;  // per page, upper bounds only

// Waits up to `timeout` for `done`; false if it never came.
bool eventually(const std::function<bool()>& done, std::chrono::milliseconds timeout = 10s) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
        if (std::chrono::steady_clock::now() > end) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

// Reads the first word of the page (a fault until it is placed).
std::uint64_t touch(const std::uint8_t* page) {
    return *reinterpret_cast<const volatile std::uint64_t*>(page);
}

// Threads that must all finish; a thread still blocked after the deadline
// is a hang this test exists to catch: report it and end the process
// rather than hang in join.
class Faulters {
public:
    void spawn(std::function<void()> body) {
        threads_.emplace_back([this, body = std::move(body)] {
            body();
            ++done_;
        });
    }
    bool all_done(std::chrono::milliseconds timeout = 20s) {
        return eventually([&] { return done_ == threads_.size(); }, timeout);
    }
    ~Faulters() {
        if (!all_done()) {
            ADD_FAILURE() << "a faulting thread is still blocked";
            std::_Exit(1);
        }
    }

private:
    std::atomic<std::size_t> done_{0};
    std::vector<std::jthread> threads_;
};

TEST(Userfaultfd, CopyOnAPlacedPageReportsExisted) {
    Mapping memory = Mapping::anonymous(2 * kPage, "test memory");
    Userfaultfd uffd;
    uffd.register_missing(memory.get(), memory.size());
    std::vector<std::uint8_t> data(kPage, 0xab);
    EXPECT_EQ(Userfaultfd::Placed::Copied, uffd.copy(memory.get(), data.data(), kPage));
    EXPECT_EQ(Userfaultfd::Placed::Existed, uffd.copy(memory.get(), data.data(), kPage));
    EXPECT_EQ(Userfaultfd::Placed::Existed, uffd.zeropage(memory.get(), kPage));
    auto* second = memory.as<std::uint8_t>() + kPage;
    EXPECT_EQ(Userfaultfd::Placed::Copied, uffd.zeropage(second, kPage));
    EXPECT_EQ(0xab, memory.as<std::uint8_t>()[kPage - 1]);
    EXPECT_EQ(0, second[0]);
    // Nothing is queued: the pages were placed before any access.
    std::array<dirtyring::UserFault, 4> faults{};
    EXPECT_EQ(0U, uffd.read_faults(faults));
}

TEST(PostcopyUffd, ThreadsGetTheirPagesAndTheBlocktimeTheSourceImposed) {
    constexpr unsigned kThreads = 4, kPagesEach = 5;
    constexpr auto kDelay = 20ms;
    constexpr std::uint64_t kDelayNs = 20000000;
    Mapping memory = Mapping::anonymous(kThreads * kPagesEach * kPage, "guest RAM");
    DelayedSource source(kDelay);
    Postcopy pc(source, {.vcpus = kThreads});
    const unsigned range = pc.add_range(memory.get(), memory.size());
    pc.start();
    source.attach(pc);
    std::atomic<unsigned> wrong{0};
    {
        Faulters faulters;
        std::latch ready(kThreads);
        for (unsigned t = 0; t < kThreads; ++t) {
            faulters.spawn([&, t] {
                pc.register_vcpu_thread(::gettid(), t);
                ready.arrive_and_wait();
                for (unsigned p = 0; p < kPagesEach; ++p) {
                    const std::uint64_t offset = (t * kPagesEach + p) * kPage;
                    if (touch(memory.as<std::uint8_t>() + offset) != pattern(range, offset, 0))
                        ++wrong;
                }
            });
        }
        ASSERT_TRUE(faulters.all_done());
    }
    EXPECT_EQ(0U, wrong);
    EXPECT_TRUE(pc.wait_complete(1s));
    // Every word of every page, not just the first.
    const auto* words = memory.as<std::uint64_t>();
    for (std::size_t w = 0; w < memory.size() / 8; ++w) {
        const std::uint64_t offset = w * 8 / kPage * kPage;
        ASSERT_EQ(pattern(range, offset, w % (kPage / 8)), words[w]) << "word " << w;
    }
    const auto counters = pc.counters();
    EXPECT_EQ(kThreads * kPagesEach, counters.requests);
    EXPECT_EQ(kThreads * kPagesEach, counters.placed);
    EXPECT_EQ(0U, counters.background);
    for (const auto& [page, n] : source.requests()) EXPECT_EQ(1, n) << page;

    const auto report = pc.blocktime();
    for (unsigned t = 0; t < kThreads; ++t) {
        // Each fault waited at least the delay: the source sleeps it after
        // the request, which follows the fault's timestamp.
        EXPECT_EQ(kPagesEach, report.vcpu_faults[t]) << "vCPU " << t;
        EXPECT_EQ(0U, report.vcpu_faults_in_flight[t]);
        EXPECT_LE(kPagesEach * kDelayNs, report.vcpu_blocktime_ns[t]) << "vCPU " << t;
        EXPECT_GE(kPagesEach * (kDelayNs + kSlackNs), report.vcpu_blocktime_ns[t]);
        EXPECT_LE(kDelayNs, report.vcpu_latency_ns(t));
    }
    EXPECT_EQ(0U, report.non_vcpu_faults);
    // 20 ms is in [16384, 32768) us: bucket 14 or above.
    std::uint64_t at_least_delay = 0;
    for (std::size_t b = 14; b < report.latency_dist.size(); ++b)
        at_least_delay += report.latency_dist[b];
    EXPECT_EQ(kThreads * kPagesEach, at_least_delay);
    source.shutdown();
}

TEST(PostcopyUffd, ThreadsOnOnePageMakeOneRequest) {
    constexpr unsigned kThreads = 3;
    Mapping memory = Mapping::anonymous(kPage, "guest RAM");
    DelayedSource source(100ms);
    Postcopy pc(source, {.vcpus = kThreads + 1});
    pc.add_range(memory.get(), memory.size());
    pc.start();
    source.attach(pc);
    {
        Faulters faulters;
        std::latch ready(kThreads);
        for (unsigned t = 0; t < kThreads; ++t) {
            faulters.spawn([&, t] {
                pc.register_vcpu_thread(::gettid(), t);
                ready.arrive_and_wait();
                EXPECT_EQ(pattern(0, 0, 0), touch(memory.as<std::uint8_t>()));
            });
        }
        // A non-vCPU thread too.
        faulters.spawn([&] { EXPECT_EQ(pattern(0, 0, 0), touch(memory.as<std::uint8_t>())); });
        ASSERT_TRUE(faulters.all_done());
    }
    // The placing thread accounts the page just after the copy woke the
    // faulters: wait for it before reading the counters.
    EXPECT_TRUE(pc.wait_complete(5s));
    EXPECT_EQ(1, source.requests().at(memory.get()));
    const auto counters = pc.counters();
    EXPECT_EQ(1U, counters.requests);
    // Threads that reached the page after it was placed never faulted; the
    // others each faulted once, and all but the first were duplicates.
    EXPECT_EQ(counters.faults - 1, counters.duplicate_faults);
    const auto report = pc.blocktime();
    std::uint64_t vcpu_faults = 0;
    for (unsigned t = 0; t < kThreads; ++t) {
        EXPECT_EQ(0U, report.vcpu_faults_in_flight[t]);
        vcpu_faults += report.vcpu_faults[t];
    }
    EXPECT_EQ(counters.faults, vcpu_faults + report.non_vcpu_faults);
    EXPECT_LE(1U, vcpu_faults);
    EXPECT_EQ(0U, pc.blocktime().vcpu_faults[kThreads]);  // registered by nobody
    source.shutdown();
}

TEST(PostcopyUffd, BackgroundPagesArePlacedAndWinRaces) {
    Mapping memory = Mapping::anonymous(3 * kPage, "guest RAM");
    auto* base = memory.as<std::uint8_t>();
    DelayedSource source(300ms);
    Postcopy pc(source, {.vcpus = 1});
    pc.add_range(memory.get(), memory.size());
    std::vector<std::uint8_t> page(kPage, 0x11);
    // Before start: a page the background stream sent early.
    EXPECT_EQ(Userfaultfd::Placed::Copied, pc.place_page(base, std::as_bytes(std::span(page))));
    EXPECT_EQ(Userfaultfd::Placed::Existed, pc.place_page(base, std::as_bytes(std::span(page))));
    EXPECT_EQ(Userfaultfd::Placed::Copied, pc.place_zero_page(base + 2 * kPage));
    pc.start();
    source.attach(pc);
    EXPECT_EQ(0x11, base[7]);  // no fault: already there
    EXPECT_EQ(0, base[2 * kPage + 7]);
    {
        Faulters faulters;
        faulters.spawn([&] { EXPECT_EQ(0x2222222222222222ULL, touch(base + kPage)); });
        // The request is out; the background stream delivers first.
        ASSERT_TRUE(eventually([&] { return pc.counters().requests == 1; }));
        std::vector<std::uint8_t> background(kPage, 0x22);
        EXPECT_EQ(Userfaultfd::Placed::Copied,
                  pc.place_page(base + kPage, std::as_bytes(std::span(background))));
        ASSERT_TRUE(faulters.all_done());
    }
    // The source's late answer finds the page there.
    ASSERT_TRUE(eventually([&] { return pc.counters().existed == 2; }));
    EXPECT_TRUE(source.errors().empty());
    EXPECT_EQ(0x22, base[kPage + 100]);
    const auto counters = pc.counters();
    EXPECT_EQ(2U, counters.background);  // the two placed before start
    EXPECT_EQ(3U, counters.placed);      // pages 0 and 2 before start, page 1 by the test
    EXPECT_TRUE(pc.wait_complete(1s));
    EXPECT_EQ(1U, pc.blocktime().non_vcpu_faults);
    source.shutdown();
}

TEST(PostcopyUffd, StopWhileThreadsFaultLeavesNoneBlocked) {
    constexpr unsigned kThreads = 4;
    Mapping memory = Mapping::anonymous(kThreads * kPage, "guest RAM");
    DelayedSource source(0ms, DelayedSource::Mode::Drop);  // pages never come
    Postcopy pc(source, {.vcpus = kThreads});
    pc.add_range(memory.get(), memory.size());
    pc.start();
    Faulters faulters;
    for (unsigned t = 0; t < kThreads; ++t) {
        faulters.spawn([&, t] {
            pc.register_vcpu_thread(::gettid(), t);
            // Released by stop(): the missing page then reads as zeros.
            EXPECT_EQ(0U, touch(memory.as<std::uint8_t>() + t * kPage));
        });
    }
    ASSERT_TRUE(eventually([&] { return pc.counters().requests == kThreads; }));
    EXPECT_EQ(kThreads, pc.blocktime().vcpu_faults_in_flight.size());
    pc.stop();
    EXPECT_TRUE(faulters.all_done());
    EXPECT_EQ(Postcopy::State::Stopped, pc.state());
    std::vector<std::uint8_t> page(kPage);
    try {
        pc.place_page(memory.get(), std::as_bytes(std::span(page)));
        ADD_FAILURE() << "placed after stop";
    } catch (const dirtyring::Error& e) {
        EXPECT_EQ(ESHUTDOWN, e.errnum());
    }
    pc.stop();  // idempotent
}

TEST(PostcopyUffd, StopRightAfterStartOrPauseNeverHangs) {
    Mapping memory = Mapping::anonymous(kPage, "guest RAM");
    DelayedSource source(0ms, DelayedSource::Mode::Drop);
    for (int i = 0; i < 200; ++i) {
        Postcopy pc(source, {.vcpus = 1});
        pc.add_range(memory.get(), memory.size());
        pc.start();
        if (i % 2) {
            pc.pause();
            if (i % 4 == 1) pc.resume();
        }
        pc.stop();
    }
}

TEST(PostcopyUffd, PauseHoldsFaultsUntilResume) {
    Mapping memory = Mapping::anonymous(kPage, "guest RAM");
    DelayedSource source(0ms);
    Postcopy pc(source, {.vcpus = 1});
    pc.add_range(memory.get(), memory.size());
    pc.start();
    source.attach(pc);
    pc.pause();
    EXPECT_EQ(Postcopy::State::Paused, pc.state());
    {
        Faulters faulters;
        faulters.spawn([&] { EXPECT_EQ(pattern(0, 0, 0), touch(memory.as<std::uint8_t>())); });
        std::this_thread::sleep_for(100ms);
        EXPECT_EQ(0U, pc.counters().requests);
        EXPECT_FALSE(faulters.all_done(0ms));
        pc.resume();
        EXPECT_TRUE(faulters.all_done());
    }
    EXPECT_EQ(1U, pc.counters().requests);
    source.shutdown();
}

// What a resumed stream asks for again: every page not received, in runs,
// and of those the ones a thread faulted on.
TEST(PostcopyUffd, OutstandingNamesMissingRunsAndRequestedPages) {
    constexpr std::size_t kPages = 8;
    Mapping memory = Mapping::anonymous(kPages * kPage, "guest RAM");
    DelayedSource source(0ms, DelayedSource::Mode::Drop);  // requests never answered
    Postcopy pc(source, {.vcpus = 1});
    pc.add_range(memory.get(), memory.size());
    pc.start();
    std::vector<std::byte> data(kPage, std::byte{1});
    for (const std::size_t p : {0U, 3U, 4U, 7U})
        pc.place_page(memory.as<std::byte>() + p * kPage, data);
    auto* bytes = memory.as<std::uint8_t>();
    {
        Faulters faulters;
        faulters.spawn([&] { touch(bytes + 5 * kPage); });
        ASSERT_TRUE(eventually([&] { return source.requests().size() == 1; }));
        pc.pause();
        const Postcopy::Outstanding o = pc.outstanding(0);
        using Run = std::pair<std::size_t, std::size_t>;
        EXPECT_EQ((std::vector<Run>{{1, 2}, {5, 2}}), o.missing);
        EXPECT_EQ(std::vector<std::size_t>{5}, o.requested);
        pc.resume();
        pc.place_page(bytes + 5 * kPage, data);  // releases the faulter
    }
    EXPECT_THROW(pc.outstanding(1), dirtyring::Error);
    source.shutdown();
}

// Pages a precopy delivered: those in memory never fault; zero pages that
// were never written read as zeros at once, without a request; neither
// counts as missing when a resumed stream asks what is.
TEST(PostcopyUffd, PagesThePrecopyDeliveredAreNeverAskedFor) {
    constexpr std::size_t kPages = 8;
    Mapping memory = Mapping::anonymous(kPages * kPage, "guest RAM");
    auto* bytes = memory.as<std::uint8_t>();
    std::memset(bytes, 7, 2 * kPage);                      // pages 0 and 1: received data
    DelayedSource source(0ms, DelayedSource::Mode::Drop);  // a request would hang
    Postcopy pc(source, {.vcpus = 1});
    pc.add_range(memory.get(), memory.size());
    pc.mark_received(bytes, 2 * kPage);
    pc.mark_zero(bytes + 2 * kPage, 3 * kPage);  // pages 2-4: zeros never written
    pc.start();
    {
        Faulters faulters;
        faulters.spawn([&] {
            EXPECT_EQ(0x0707070707070707U, touch(bytes + kPage));
            for (std::size_t p = 2; p < 5; ++p) EXPECT_EQ(0U, touch(bytes + p * kPage));
        });
        ASSERT_TRUE(faulters.all_done());
    }
    EXPECT_TRUE(source.requests().empty());
    EXPECT_EQ(3U, pc.counters().zero_faults);
    EXPECT_EQ(0U, pc.counters().faults);
    pc.pause();
    const Postcopy::Outstanding o = pc.outstanding(0);
    using Run = std::pair<std::size_t, std::size_t>;
    EXPECT_EQ((std::vector<Run>{{5, 3}}), o.missing);
    EXPECT_TRUE(o.requested.empty());
    // A background copy of a page known already changes nothing.
    std::vector<std::byte> data(kPage, std::byte{9});
    EXPECT_EQ(Userfaultfd::Placed::Existed, pc.place_page(bytes + 3 * kPage, data));
    EXPECT_EQ(0U, touch(bytes + 3 * kPage));
    pc.stop();
}

TEST(PostcopyUffd, SourceErrorIsReportedAndStopReleasesTheFaulter) {
    Mapping memory = Mapping::anonymous(kPage, "guest RAM");
    DelayedSource source(0ms, DelayedSource::Mode::Throw);
    Postcopy pc(source, {.vcpus = 1});
    pc.add_range(memory.get(), memory.size());
    pc.start();
    Faulters faulters;
    faulters.spawn([&] { touch(memory.as<std::uint8_t>()); });
    try {
        pc.wait_complete(10s);
        ADD_FAILURE() << "no error";
    } catch (const dirtyring::Error& e) {
        EXPECT_EQ(ECONNRESET, e.errnum());
        EXPECT_NE(std::string(e.what()).find("test return path"), std::string::npos);
    }
    EXPECT_EQ(Postcopy::State::Failed, pc.state());
    ASSERT_TRUE(pc.error().has_value());
    std::vector<std::uint8_t> page(kPage);
    EXPECT_THROW(pc.place_page(memory.get(), std::as_bytes(std::span(page))), dirtyring::Error);
    EXPECT_THROW(pc.pause(), dirtyring::Error);
    // The faulter waits (no guest runs on made-up memory) until stop().
    EXPECT_FALSE(faulters.all_done(50ms));
    pc.stop();
    EXPECT_TRUE(faulters.all_done());
}

TEST(PostcopyUffd, FailFromAReceivingThread) {
    Mapping memory = Mapping::anonymous(kPage, "guest RAM");
    DelayedSource source(0ms, DelayedSource::Mode::Drop);
    Postcopy pc(source, {.vcpus = 1});
    pc.add_range(memory.get(), memory.size());
    pc.start();
    std::jthread receiver([&] { pc.fail(dirtyring::Error(EPIPE, "page stream")); });
    receiver.join();
    EXPECT_THROW(pc.wait_complete(10s), dirtyring::Error);
    EXPECT_EQ(EPIPE, pc.error()->errnum());
    pc.stop();
}

// Bad inputs: each refused with its errno.
struct BadInput {
    const char* name;
    std::function<void(Postcopy&, std::uint8_t*)> call;
    int errnum;
};

void PrintTo(const BadInput& input, std::ostream* os) {
    *os << input.name;
}

class PostcopyBadInput : public testing::TestWithParam<BadInput> {};

TEST_P(PostcopyBadInput, IsRefused) {
    Mapping memory = Mapping::anonymous(8 * kPage, "guest RAM");
    DelayedSource source(0ms, DelayedSource::Mode::Drop);
    Postcopy pc(source, {.vcpus = 2});
    auto* base = memory.as<std::uint8_t>();
    pc.add_range(base, 4 * kPage);
    try {
        GetParam().call(pc, base);
        FAIL() << "accepted";
    } catch (const dirtyring::Error& e) {
        EXPECT_EQ(GetParam().errnum, e.errnum()) << e.what();
    }
}

std::span<const std::byte> one_page() {
    static const std::vector<std::byte> page(kPage);
    return page;
}

INSTANTIATE_TEST_SUITE_P(
    Table, PostcopyBadInput,
    testing::Values(
        BadInput{"UnalignedRange",
                 [](Postcopy& pc, std::uint8_t* m) { pc.add_range(m + 5 * kPage + 1, kPage); },
                 EINVAL},
        BadInput{"EmptyRange",
                 [](Postcopy& pc, std::uint8_t* m) { pc.add_range(m + 5 * kPage, 0); }, EINVAL},
        BadInput{"PartialPageRange",
                 [](Postcopy& pc, std::uint8_t* m) { pc.add_range(m + 5 * kPage, kPage / 2); },
                 EINVAL},
        BadInput{"OverlappingRange",
                 [](Postcopy& pc, std::uint8_t* m) { pc.add_range(m + 3 * kPage, 2 * kPage); },
                 EEXIST},
        BadInput{"RangeAfterStart",
                 [](Postcopy& pc, std::uint8_t* m) {
                     pc.start();
                     pc.add_range(m + 6 * kPage, kPage);
                 },
                 EBUSY},
        BadInput{"StartTwice",
                 [](Postcopy& pc, std::uint8_t*) {
                     pc.start();
                     pc.start();
                 },
                 EBUSY},
        BadInput{"PageOutsideRanges",
                 [](Postcopy& pc, std::uint8_t* m) { pc.place_page(m + 6 * kPage, one_page()); },
                 EINVAL},
        BadInput{"UnalignedPage",
                 [](Postcopy& pc, std::uint8_t* m) { pc.place_page(m + 8, one_page()); }, EINVAL},
        BadInput{"ShortPage",
                 [](Postcopy& pc, std::uint8_t* m) { pc.place_page(m, one_page().first(100)); },
                 EINVAL},
        BadInput{"ZeroPageOutsideRanges",
                 [](Postcopy& pc, std::uint8_t* m) { pc.place_zero_page(m + 7 * kPage); }, EINVAL},
        BadInput{"MarkPartOfAPage",
                 [](Postcopy& pc, std::uint8_t* m) { pc.mark_received(m, kPage / 2); }, EINVAL},
        BadInput{"MarkNothing", [](Postcopy& pc, std::uint8_t* m) { pc.mark_zero(m, 0); }, EINVAL},
        BadInput{"MarkPastTheRange",
                 [](Postcopy& pc, std::uint8_t* m) { pc.mark_zero(m + 3 * kPage, 2 * kPage); },
                 EINVAL},
        BadInput{"MarkOutsideRanges",
                 [](Postcopy& pc, std::uint8_t* m) { pc.mark_received(m + 6 * kPage, kPage); },
                 EINVAL},
        BadInput{"MarkAfterStart",
                 [](Postcopy& pc, std::uint8_t* m) {
                     pc.start();
                     pc.mark_zero(m, kPage);
                 },
                 EBUSY},
        BadInput{"ResumeNotPaused",
                 [](Postcopy& pc, std::uint8_t*) {
                     pc.start();
                     pc.resume();
                 },
                 EINVAL},
        BadInput{"PauseNotStarted", [](Postcopy& pc, std::uint8_t*) { pc.pause(); }, EINVAL},
        BadInput{"VcpuOutOfRange",
                 [](Postcopy& pc, std::uint8_t*) { pc.register_vcpu_thread(1234, 2); }, EINVAL},
        BadInput{"OtherPageSize",
                 [](Postcopy&, std::uint8_t*) {
                     DelayedSource s(0ms);
                     Postcopy other(s, {.vcpus = 1, .page_size = 2 << 20});
                 },
                 EINVAL}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

TEST(PostcopyBadInputs, StartWithoutRanges) {
    DelayedSource source(0ms);
    Postcopy pc(source, {.vcpus = 1});
    EXPECT_THROW(pc.start(), dirtyring::Error);
}

}  // namespace
