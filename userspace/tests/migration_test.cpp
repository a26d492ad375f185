// SPDX-License-Identifier: LGPL-2.1-or-later
// The migration in one process: the stream's bad inputs, and source and
// destination over a socketpair with a real KVM guest (skipped, with the
// reason, where KVM is unusable).
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <future>
#include <ostream>
#include <thread>
#include <vector>

#include "dirtyring/base/error.hpp"
#include "dirtyring/migration/channel.hpp"
#include "dirtyring/migration/migration_destination.hpp"
#include "dirtyring/migration/migration_source.hpp"
#include "dirtyring/migration/migration_stream.hpp"
#include "kvm_workload.hpp"
#include "migration_test_support.hpp"
#include "testing/kvm_guest.hpp"

namespace {

using dirtyring::Channel;
using dirtyring::Error;
using dirtyring::kStreamPageSize;
using dirtyring::MigratableGuest;
using dirtyring::MigrationDestination;
using dirtyring::MigrationOptions;
using dirtyring::MigrationSource;
using dirtyring::Record;
using dirtyring::RecordType;
using dirtyring::StreamReader;
using dirtyring::StreamWriter;
using dirtyring::UniqueFd;
using dirtyring::migrate::KvmWorkload;
using dirtyring::migrate::WorkloadConfig;
using namespace std::chrono_literals;
using namespace dirtyring::testing_support;

std::vector<std::byte> page_of(std::uint8_t fill) {
    return std::vector<std::byte>(kStreamPageSize, std::byte{fill});
}

TEST(MigrationStream, RecordsRoundTrip) {
    auto [src, dst] = channel_pair();
    StreamWriter w(src);
    const auto data = page_of(7);
    const auto zero = page_of(0);
    w.header(16, 2, 1);
    w.page(3, data.data());
    w.page(4, zero.data());
    w.round_end(1, 2);
    const std::vector<std::byte> state{std::byte{1}, std::byte{2}};
    w.vcpu_state(1, state);
    const std::vector<dirtyring::PageRun> runs{{2, 3}};
    w.postcopy(runs);
    w.end(42);
    w.flush();
    EXPECT_EQ(1U, w.zero_pages());
    EXPECT_EQ(1U, w.data_pages());

    StreamReader r(dst);
    const auto h = r.header(16, 2);
    EXPECT_EQ(16U, h.pages);
    EXPECT_EQ(1U, h.guest);
    const Record* rec = &r.next();
    ASSERT_EQ(RecordType::Page, rec->type);
    EXPECT_EQ(3U, rec->index);
    EXPECT_EQ(0, std::memcmp(data.data(), rec->data, kStreamPageSize));
    rec = &r.next();
    ASSERT_EQ(RecordType::ZeroPage, rec->type);
    EXPECT_EQ(4U, rec->index);
    EXPECT_EQ(dirtyring::zero_page_hash(), rec->hash);
    rec = &r.next();
    ASSERT_EQ(RecordType::RoundEnd, rec->type);
    EXPECT_EQ(1U, rec->value);
    EXPECT_EQ(2U, rec->count);
    rec = &r.next();
    ASSERT_EQ(RecordType::VcpuState, rec->type);
    EXPECT_EQ(1U, rec->index);
    EXPECT_EQ(state, rec->state);
    rec = &r.next();
    ASSERT_EQ(RecordType::Postcopy, rec->type);
    ASSERT_EQ(1U, rec->runs.size());
    EXPECT_EQ(3U, rec->runs[0].count);
    rec = &r.next();
    ASSERT_EQ(RecordType::End, rec->type);
    EXPECT_EQ(42U, rec->value);
}

// Raw bytes on the wire, for streams no StreamWriter would write.
struct BadStream {
    const char* name;
    std::function<std::vector<std::byte>()> bytes;
    int error;
    const char* says;
};

template <typename T>
void put(std::vector<std::byte>& out, const T& v) {
    const std::size_t at = out.size();
    out.resize(at + sizeof(T));
    std::memcpy(out.data() + at, &v, sizeof(T));
}

std::vector<std::byte> header_bytes(std::uint32_t version = dirtyring::kStreamVersion,
                                    std::uint64_t pages = 16, std::uint32_t vcpus = 1,
                                    const char* magic = "DRMIGRT", std::uint32_t session = 1) {
    dirtyring::StreamHeader h{};
    std::memcpy(h.magic, magic, 8);
    h.version = version;
    h.page_size = kStreamPageSize;
    h.pages = pages;
    h.vcpus = vcpus;
    h.guest = 1;
    h.session = session;
    std::vector<std::byte> out;
    put(out, h);
    return out;
}

std::vector<std::byte> with_record(std::uint32_t type, std::uint32_t length,
                                   std::vector<std::byte> payload) {
    auto out = header_bytes();
    put(out, type);
    put(out, length);
    const std::size_t at = out.size();
    out.resize(at + payload.size());
    if (!payload.empty()) std::memcpy(out.data() + at, payload.data(), payload.size());
    return out;
}

std::vector<std::byte> page_record(std::uint64_t index, bool corrupt) {
    std::vector<std::byte> payload;
    const auto data = page_of(9);
    put(payload, index);
    put(payload, dirtyring::page_hash(data.data()));
    payload.resize(payload.size() + data.size());
    std::memcpy(payload.data() + 16, data.data(), data.size());
    if (corrupt) payload[100] = std::byte{10};
    return with_record(1, static_cast<std::uint32_t>(payload.size()), payload);
}

class MigrationStreamRejects : public testing::TestWithParam<BadStream> {};
constexpr std::uint32_t kV = dirtyring::kStreamVersion;

TEST_P(MigrationStreamRejects, WithAClearError) {
    auto [src, dst] = channel_pair();
    const auto bytes = GetParam().bytes();
    src.write_now(bytes);
    src.shutdown();
    std::string message;
    const int err = errno_of(
        [&] {
            StreamReader r(dst);
            r.header(16, 4);
            for (;;) r.next();
        },
        &message);
    EXPECT_EQ(GetParam().error, err) << message;
    EXPECT_NE(std::string::npos, message.find(GetParam().says)) << message;
}

INSTANTIATE_TEST_SUITE_P(
    Table, MigrationStreamRejects,
    testing::Values(
        BadStream{"bad_magic", [] { return header_bytes(kV, 16, 1, "NOTMINE"); }, EPROTO,
                  "bad magic"},
        BadStream{"old_version", [] { return header_bytes(1); }, EPROTO, "version 1"},
        BadStream{"future_version", [] { return header_bytes(kV + 1); }, EPROTO, "version 3"},
        BadStream{"zero_pages", [] { return header_bytes(kV, 0); }, EPROTO, "0 pages"},
        BadStream{"too_many_pages", [] { return header_bytes(kV, 1ULL << 40); }, EPROTO, "pages"},
        BadStream{"no_session", [] { return header_bytes(kV, 16, 1, "DRMIGRT", 0); }, EPROTO,
                  "without a session"},
        BadStream{"too_many_vcpus", [] { return header_bytes(kV, 16, 99); }, EPROTO, "99 vCPUs"},
        BadStream{"resume_beyond_the_guest",
                  [] {
                      std::vector<std::byte> runs;
                      put(runs, std::uint64_t{1});
                      put(runs, std::uint64_t{10});
                      put(runs, std::uint64_t{10});
                      return with_record(19, 24, runs);
                  },
                  EPROTO, "Resume names pages beyond the guest"},
        BadStream{"resume_with_a_wrong_length",
                  [] { return with_record(19, 16, std::vector<std::byte>(16)); }, EPROTO,
                  "Resume record of 0 runs in 16 bytes"},
        BadStream{"unknown_record", [] { return with_record(99, 0, {}); }, EPROTO,
                  "unknown record type 99"},
        BadStream{"short_zero_page", [] { return with_record(2, 4, {}); }, EPROTO,
                  "ZeroPage record of 4 bytes"},
        BadStream{"page_out_of_range", [] { return page_record(16, false); }, EPROTO,
                  "page 16 beyond"},
        BadStream{"corrupted_page", [] { return page_record(3, true); }, EPROTO,
                  "does not match its checksum"},
        BadStream{"truncated_page",
                  [] {
                      auto b = page_record(3, false);
                      b.resize(b.size() - 100);
                      return b;
                  },
                  ECONNRESET, "100 of 4096 bytes missing"},
        BadStream{"truncated_header", [] { return std::vector<std::byte>(10); }, ECONNRESET,
                  "closed"}),
    [](const auto& p) { return std::string(p.param.name); });

// A guest for a destination that only keeps what it is given: for streams
// a test writes by hand.
class KeptGuest : public MigratableGuest {
public:
    KeptGuest(std::byte* memory, std::uint64_t pages, unsigned vcpus)
        : memory_(memory), pages_(pages), vcpus_(vcpus) {}
    std::uint32_t kind() const noexcept override { return 0; }
    std::byte* memory() noexcept override { return memory_; }
    std::uint64_t pages() const noexcept override { return pages_; }
    unsigned vcpus() const noexcept override { return vcpus_; }
    void start() override { started = true; }
    void stop() override {}
    std::exception_ptr failure() const override { return nullptr; }
    std::uint64_t harvest_into(std::vector<std::uint64_t>&) override { return 0; }
    std::vector<std::byte> save_vcpu(unsigned) override { return {}; }
    void restore_vcpu(unsigned, std::span<const std::byte>) override {}
    std::uint64_t progress(unsigned) override { return 0; }
    void set_vcpu_thread_hook(VcpuThreadHook) override {}
    bool started = false;

private:
    std::byte* memory_;
    std::uint64_t pages_;
    unsigned vcpus_;
};

// A page the guest writes after its record is built and before the socket
// takes it leaves torn (its bytes do not match its hash).  In precopy that
// is a page the dirty log sends again, and the destination ends on the
// last copy: in the precopy, or after the Postcopy record as a stale page.
// A torn copy that stays the last one fails before the guest starts: the
// End digest of a precopy, the Postcopy record when it does not name the
// page stale.  From the Postcopy record on, where the source guest is
// stopped, a torn page is a corrupted stream.
enum class Torn { ResentInPrecopy, LastInPrecopy, StaleAtPostcopy, NotStaleAtPostcopy, InPostcopy };

struct TornPage {
    const char* name;
    Torn when;
    int error;  // 0: the migration completes
    const char* says;
};

void PrintTo(const TornPage& t, std::ostream* os) {
    *os << t.name;
}

class MigrationTornPage : public testing::TestWithParam<TornPage> {};

TEST_P(MigrationTornPage, EndsOnTheLastCopy) {
    constexpr std::uint64_t kPages = 4;
    const Torn when = GetParam().when;
    auto [src, dst] = channel_pair();
    KeptGuest* guest = nullptr;
    MigrationDestination destination(
        dst, [&](std::uint32_t, std::byte* memory, std::uint64_t pages, unsigned vcpus) {
            auto g = std::make_unique<KeptGuest>(memory, pages, vcpus);
            guest = g.get();
            return g;
        });
    auto received = std::async(std::launch::async, [&] { return destination.run(); });

    std::vector<std::byte> memory(kPages * kStreamPageSize);
    for (std::uint64_t p = 0; p < kPages; ++p)
        std::memset(memory.data() + p * kStreamPageSize, static_cast<int>(p + 1), kStreamPageSize);
    std::byte* page2 = memory.data() + 2 * kStreamPageSize;
    dirtyring::MemoryDigest sent(kPages);
    StreamWriter w(src);
    // Page 2 is written while its record waits to be sent.
    const auto send_torn = [&] {
        sent.set(2, w.page(2, page2));
        page2[100] = static_cast<std::byte>(static_cast<std::uint8_t>(page2[100]) + 1);
        w.flush();
    };
    w.header(kPages, 1, 0);
    for (std::uint64_t p = 0; p < kPages; ++p)
        if (p != 2) sent.set(p, w.page(p, memory.data() + p * kStreamPageSize));
    if (when != Torn::InPostcopy) send_torn();
    if (when == Torn::ResentInPrecopy) sent.set(2, w.page(2, page2));
    w.vcpu_state(0, std::vector<std::byte>(8));
    if (when == Torn::StaleAtPostcopy || when == Torn::NotStaleAtPostcopy ||
        when == Torn::InPostcopy) {
        const dirtyring::PageRun stale{2, 1};
        w.postcopy(when == Torn::NotStaleAtPostcopy ? std::span<const dirtyring::PageRun>{}
                                                    : std::span(&stale, 1));
        if (when == Torn::InPostcopy) send_torn();
        if (when == Torn::StaleAtPostcopy) sent.set(2, w.page(2, page2));
    }
    w.end(sent.digest());
    w.flush();

    std::string message;
    dirtyring::DestinationReport report;
    const int err = errno_of([&] { report = received.get(); }, &message);
    EXPECT_EQ(GetParam().error, err) << message;
    if (GetParam().error) {
        EXPECT_NE(std::string::npos, message.find(GetParam().says)) << message;
        // (A guest that started is gone by now: only its absence is checked.)
        if (when == Torn::NotStaleAtPostcopy) {
            EXPECT_EQ(nullptr, guest) << "the guest was built on a torn page";
        }
        return;
    }
    EXPECT_EQ(sent.digest(), report.digest);
    ASSERT_NE(nullptr, guest);
    EXPECT_TRUE(guest->started);
    EXPECT_EQ(0, std::memcmp(guest->memory(), memory.data(), memory.size()));
}

INSTANTIATE_TEST_SUITE_P(
    Table, MigrationTornPage,
    testing::Values(
        TornPage{"resent_in_precopy", Torn::ResentInPrecopy, 0, ""},
        TornPage{"last_copy_in_precopy", Torn::LastInPrecopy, EIO, "do not add up"},
        TornPage{"stale_at_postcopy", Torn::StaleAtPostcopy, 0, ""},
        TornPage{"not_stale_at_postcopy", Torn::NotStaleAtPostcopy, EPROTO,
                 "arrived torn (its bytes do not match its hash) and the source does not send"},
        TornPage{"in_postcopy", Torn::InPostcopy, EPROTO, "does not match its checksum"}),
    [](const auto& p) { return std::string(p.param.name); });

// The destination's guest runs, and each vCPU went on from the value the
// stopped source had last.
void expect_continues(KvmWorkload& source, SnapshotGuest* destination, unsigned vcpus) {
    ASSERT_NE(nullptr, destination);
    EXPECT_TRUE(keeps_running(*destination));
    destination->stop();
    for (unsigned i = 0; i < vcpus; ++i)
        EXPECT_EQ(source.next_value(i), destination->kvm().restored_value(i)) << "vCPU " << i;
}

class Migration : public testing::TestWithParam<unsigned> {};

TEST_P(Migration, PrecopyMovesTheExactMemoryAndTheGuestContinues) {
    SKIP_WITHOUT_KVM();
    auto [src, dst] = channel_pair();
    auto guest = KvmWorkload::source(small_guest(GetParam()));
    guest->start();
    Receiving r(dst);
    MigrationOptions options;
    options.bandwidth_limit = 64 << 20;  // several rounds while the guest writes
    options.downtime_limit = 20ms;
    // Slow builds (sanitizers) may not converge: still a precopy switch-over.
    options.max_rounds = 10;
    options.postcopy_if_not_converged = false;
    MigrationSource source(*guest, src, options);
    const auto report = source.run();
    const auto dest_report = r.received.get();

    EXPECT_EQ("precopy", report.mode);
    EXPECT_GE(report.rounds, 1U);
    EXPECT_EQ(report.digest, dest_report.digest);
    EXPECT_EQ(report.pages_sent, dest_report.pages_received);
    // The source stopped for good: its memory is the memory at the stop,
    // and the destination started on exactly that.
    ASSERT_NE(nullptr, r.d.guest);
    ASSERT_EQ(r.d.guest->snapshot.size(), guest->pages() * kStreamPageSize);
    EXPECT_EQ(0,
              std::memcmp(r.d.guest->snapshot.data(), guest->memory(), r.d.guest->snapshot.size()));
    EXPECT_TRUE(keeps_running(*r.d.guest));
    r.d.guest->stop();
    for (unsigned i = 0; i < GetParam(); ++i) {
        EXPECT_EQ(guest->next_value(i), r.d.guest->kvm().restored_value(i)) << "vCPU " << i;
        EXPECT_GT(r.d.guest->kvm().next_value(i), r.d.guest->kvm().restored_value(i))
            << "vCPU " << i;
    }
}

INSTANTIATE_TEST_SUITE_P(Vcpus, Migration, testing::Values(1U, 2U, 4U));

TEST(MigrationPostcopy, VcpusFaultRequestAndGetTheSourcesPages) {
    SKIP_WITHOUT_KVM();
    auto [src, dst] = channel_pair();
    auto guest = KvmWorkload::source(small_guest(2));
    guest->start();
    ASSERT_TRUE(guest->wait_first_pass(10s));  // the whole working set is data
    Receiving r(dst, false);
    MigrationOptions options;
    options.postcopy = true;
    options.bandwidth_limit = 2 << 20;  // slow background stream: vCPUs must ask
    MigrationSource source(*guest, src, options);
    const auto report = source.run();
    const auto dest_report = r.received.get();

    EXPECT_EQ("postcopy", report.mode);
    EXPECT_EQ("postcopy", dest_report.mode);
    EXPECT_EQ(report.digest, dest_report.digest);
    EXPECT_GT(report.postcopy_requests, 0U);
    // A request can cross the last pages on the wire: the source may have
    // finished before it read it.
    EXPECT_LE(report.postcopy_requests, dest_report.postcopy_requests);
    EXPECT_GT(dest_report.postcopy_faults, 0U);
    EXPECT_NE(std::string::npos, dest_report.blocktime_json.find("\"postcopy-vcpu-blocktime\""));
    ASSERT_NE(nullptr, r.d.guest);
    EXPECT_TRUE(keeps_running(*r.d.guest));
    r.d.guest->stop();
    for (unsigned i = 0; i < 2; ++i) {
        EXPECT_EQ(guest->next_value(i), r.d.guest->kvm().restored_value(i)) << "vCPU " << i;
        EXPECT_GT(r.d.guest->kvm().next_value(i), r.d.guest->kvm().restored_value(i))
            << "vCPU " << i;
    }
}

TEST(MigrationPostcopy, WithAPreemptChannelEveryRequestIsAnsweredOnIt) {
    SKIP_WITHOUT_KVM();
    auto [src, dst] = channel_pair();
    auto [psrc, pdst] = channel_pair();
    auto guest = KvmWorkload::source(small_guest(2));
    guest->start();
    ASSERT_TRUE(guest->wait_first_pass(10s));
    Receiving r(dst, false, &pdst);
    MigrationOptions options;
    options.postcopy = true;
    options.bandwidth_limit = 2 << 20;  // slow background stream: vCPUs must ask
    MigrationSource source(*guest, src, options);
    source.use_preempt_channel(psrc);
    const auto report = source.run();
    const auto dest_report = r.received.get();

    EXPECT_EQ("postcopy", report.mode);
    EXPECT_EQ(report.digest, dest_report.digest);
    EXPECT_GT(report.postcopy_requests, 0U);
    // Each request answered is one page on the preempt channel, and the
    // destination read every one of them before it verified the memory.
    EXPECT_EQ(report.postcopy_requests, report.preempt_pages);
    EXPECT_EQ(report.preempt_pages, dest_report.preempt_pages);
    EXPECT_EQ(report.pages_sent, dest_report.pages_received);
    EXPECT_LE(report.postcopy_requests, dest_report.postcopy_requests);
    expect_continues(*guest, r.d.guest, 2);
}

// Page channels (QEMU's multifd): the precopy's pages go over them in
// parallel, the main stream keeps the rest, and the destination ends on
// the exact memory at the stop.
struct PageChannels {
    std::vector<std::pair<Channel, Channel>> pairs;
    std::vector<Channel*> src, dst;
    explicit PageChannels(std::size_t n) {
        pairs.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
            auto [a, b] = channel_pair();
            pairs.emplace_back(std::move(a), std::move(b));
        }
        for (auto& [a, b] : pairs) {
            src.push_back(&a);
            dst.push_back(&b);
        }
    }
};

class MigrationPageChannels : public testing::TestWithParam<unsigned> {};

TEST_P(MigrationPageChannels, PrecopyMovesTheExactMemoryOverThem) {
    SKIP_WITHOUT_KVM();
    auto [src, dst] = channel_pair();
    PageChannels pages(GetParam());
    auto guest = KvmWorkload::source(small_guest(2));
    guest->start();
    Receiving r(dst, true, nullptr, {}, pages.dst);
    MigrationOptions options;
    options.bandwidth_limit = 64 << 20;  // several rounds while the guest writes
    options.downtime_limit = 20ms;
    options.max_rounds = 10;
    options.postcopy_if_not_converged = false;
    MigrationSource source(*guest, src, options);
    source.use_page_channels(pages.src);
    const auto report = source.run();
    const auto dest_report = r.received.get();

    EXPECT_EQ("precopy", report.mode);
    EXPECT_EQ(report.digest, dest_report.digest);
    EXPECT_EQ(report.pages_sent, dest_report.pages_received);
    EXPECT_EQ(report.bytes_sent, dest_report.bytes_received);
    // Every channel carried pages, the main stream none.  The first round
    // sends every page and the 16 MiB guest holds four 1024-page blocks,
    // so each channel had at least one block: 1024 records of at least 16
    // bytes (a zero page).  The main stream's header, round ends, vCPU
    // state and End are far less than one page record per round.
    for (Channel* c : pages.src)
        EXPECT_GE(c->bytes_written(), sizeof(dirtyring::StreamHeader) + 1024 * 16);
    EXPECT_LT(src.bytes_written(), report.rounds * kStreamPageSize);
    ASSERT_NE(nullptr, r.d.guest);
    ASSERT_EQ(r.d.guest->snapshot.size(), guest->pages() * kStreamPageSize);
    EXPECT_EQ(0,
              std::memcmp(r.d.guest->snapshot.data(), guest->memory(), r.d.guest->snapshot.size()));
    EXPECT_TRUE(keeps_running(*r.d.guest));
}

INSTANTIATE_TEST_SUITE_P(Count, MigrationPageChannels, testing::Values(1U, 3U));

// A postcopy after page channels: every precopy copy is stored before the
// destination discards the stale pages, and postcopy's pages come on the
// main stream and the preempt channel.
TEST(MigrationPageChannelsPostcopy, MovesTheExactMemory) {
    SKIP_WITHOUT_KVM();
    auto [src, dst] = channel_pair();
    auto [psrc, pdst] = channel_pair();
    PageChannels pages(2);
    auto guest = KvmWorkload::source(small_guest(2));
    guest->start();
    ASSERT_TRUE(guest->wait_first_pass(10s));
    Receiving r(dst, false, &pdst, {}, pages.dst);
    MigrationOptions options;
    options.postcopy = true;
    options.bandwidth_limit = 16 << 20;
    MigrationSource source(*guest, src, options);
    source.use_preempt_channel(psrc);
    source.use_page_channels(pages.src);
    const auto report = source.run();
    const auto dest_report = r.received.get();
    EXPECT_EQ("postcopy", report.mode);
    EXPECT_EQ(report.digest, dest_report.digest);
    EXPECT_EQ(report.pages_sent, dest_report.pages_received);
    expect_continues(*guest, r.d.guest, 2);
}

// Sides that disagree on the number of page channels: the destination
// says so, the source fails with its reason (and never hangs on a channel
// nobody reads), and its guest runs on.
struct ChannelCounts {
    const char* name;
    unsigned source;
    unsigned destination;
    const char* says;
};

class MigrationPageChannelsDisagree : public testing::TestWithParam<ChannelCounts> {};

TEST_P(MigrationPageChannelsDisagree, AndTheDestinationSaysHow) {
    SKIP_WITHOUT_KVM();
    auto [src, dst] = channel_pair();
    PageChannels source_side(GetParam().source);
    PageChannels destination_side(GetParam().destination);
    auto guest = KvmWorkload::source(small_guest(1));
    guest->start();
    Receiving r(dst, true, nullptr, {}, destination_side.dst);
    MigrationSource source(*guest, src, MigrationOptions{});
    source.use_page_channels(source_side.src);
    std::string message;
    EXPECT_EQ(EREMOTEIO, errno_of([&] { source.run(); }, &message)) << message;
    EXPECT_NE(std::string::npos, message.find(GetParam().says)) << message;
    EXPECT_EQ(EPROTO, errno_of([&] { r.received.get(); }));
    EXPECT_TRUE(keeps_running(*guest));
}

INSTANTIATE_TEST_SUITE_P(
    Table, MigrationPageChannelsDisagree,
    testing::Values(
        ChannelCounts{"more_at_the_source", 3, 1, "on 3 page channels; this destination has 1"},
        ChannelCounts{"none_at_the_source", 0, 2, "on 0 page channels; this destination has 2"},
        ChannelCounts{"none_at_the_destination", 2, 0,
                      "on 2 page channels; this destination has 0"}),
    [](const auto& p) { return std::string(p.param.name); });

// A cancel with page channels: the destination discards (its page readers
// stopped), and the source guest runs on.
TEST(MigrationPageChannelsFailure, CancelLeavesTheSourceGuestRunning) {
    SKIP_WITHOUT_KVM();
    auto [src, dst] = channel_pair();
    PageChannels pages(2);
    auto guest = KvmWorkload::source(small_guest(2));
    guest->start();
    Receiving r(dst, true, nullptr, {}, pages.dst);
    MigrationOptions options;
    options.downtime_limit = 1ms;
    options.max_rounds = 1000;
    options.postcopy_if_not_converged = false;
    MigrationSource* self = nullptr;
    MigrationSource source(*guest, src, options, [&](const auto& p) {
        if (p.round == 2) self->cancel();
    });
    self = &source;
    source.use_page_channels(pages.src);
    EXPECT_EQ(ECANCELED, errno_of([&] { source.run(); }));
    EXPECT_EQ(ECANCELED, errno_of([&] { r.received.get(); }));
    EXPECT_EQ(nullptr, r.d.guest);
    EXPECT_TRUE(keeps_running(*guest));
}

// A page channel that carries something else than pages: the destination
// fails with that channel's reason (its other readers and the main stream
// woken, nothing left blocked), and the source is told.
TEST(MigrationPageChannelsFailure, ABadPageChannelEndsTheDestinationWithItsReason) {
    auto [src, dst] = channel_pair();
    PageChannels pages(2);
    StreamWriter main(src);
    const std::uint32_t channels = dirtyring::page_channels_flags(2);
    main.header(64, 1, 0, channels, 7);
    src.flush();
    for (Channel* c : pages.src) {
        StreamWriter(*c).header(64, 1, 0, dirtyring::kStreamPageChannel | channels, 7);
        c->flush();
    }
    StreamWriter(*pages.src[1]).round_end(1, 0);
    pages.src[1]->flush();
    Receiving r(dst, true, nullptr, {}, pages.dst);
    std::string message;
    EXPECT_EQ(EPROTO, errno_of([&] { r.received.get(); }, &message)) << message;
    EXPECT_NE(std::string::npos, message.find("page channel 2: a record other than a page"))
        << message;
    EXPECT_EQ(nullptr, r.d.guest);
}

TEST(MigrationPageChannelsBadInput, TooManyOrNoneAreRefused) {
    SKIP_WITHOUT_KVM();
    auto [src, dst] = channel_pair();
    auto guest = KvmWorkload::source(small_guest(1));
    MigrationSource source(*guest, src, MigrationOptions{});
    EXPECT_EQ(
        EINVAL, errno_of([&] {
            source.use_page_channels(std::vector<Channel*>(dirtyring::kMaxPageChannels + 1, &src));
        }));
    EXPECT_EQ(EINVAL, errno_of([&] { source.use_page_channels({nullptr}); }));
}

TEST(MigrationPostcopy, APrecopyWithAPreemptChannelNeverUsesIt) {
    SKIP_WITHOUT_KVM();
    auto [src, dst] = channel_pair();
    auto [psrc, pdst] = channel_pair();
    auto guest = KvmWorkload::source(small_guest(1));
    guest->start();
    Receiving r(dst, true, &pdst);
    MigrationOptions options;
    options.downtime_limit = 1000ms;
    options.postcopy_if_not_converged = false;
    MigrationSource source(*guest, src, options);
    source.use_preempt_channel(psrc);
    const auto report = source.run();
    const auto dest_report = r.received.get();
    EXPECT_EQ("precopy", report.mode);
    EXPECT_EQ(report.digest, dest_report.digest);
    EXPECT_EQ(0U, report.preempt_pages);
    EXPECT_EQ(0U, dest_report.preempt_pages);
    EXPECT_EQ(sizeof(dirtyring::StreamHeader), psrc.bytes_written());  // the header alone
}

// A source whose dirty tracking never reports one page the guest keeps
// rewriting (the first of vCPU 0's share): the migration must not pass.
class LossyGuest : public SnapshotGuest {
public:
    using SnapshotGuest::SnapshotGuest;
    static constexpr std::uint64_t kLost = dirtyring::KvmGuest::kFirstDataPage;
    std::uint64_t harvest_into(std::vector<std::uint64_t>& m) override {
        const bool had = m.size() > kLost / 64 && ((m[kLost / 64] >> (kLost % 64)) & 1);
        std::uint64_t n = SnapshotGuest::harvest_into(m);
        if (!had && ((m[kLost / 64] >> (kLost % 64)) & 1)) {
            m[kLost / 64] &= ~(1ULL << (kLost % 64));
            --n;
        }
        return n;
    }
};

TEST(MigrationFailure, AMissedWriteIsCaughtByTheSourcesFinalCheck) {
    SKIP_WITHOUT_KVM();
    auto [src, dst] = channel_pair();
    LossyGuest guest(KvmWorkload::source(small_guest(2)), false);
    guest.start();
    ASSERT_TRUE(guest.kvm().wait_first_pass(10s));
    Receiving r(dst);
    MigrationOptions options;
    options.bandwidth_limit = 16 << 20;  // rounds long enough to rewrite the page
    options.max_rounds = 2;
    options.postcopy_if_not_converged = false;
    MigrationSource source(guest, src, options);
    std::string message;
    const int err = errno_of([&] { source.run(); }, &message);
    if (err == EREMOTEIO) {
        // The lost page's last copy left torn (the guest wrote it as it was
        // sent): the destination's End digest refused the stream before
        // its guest started, and the source guest runs on.
        EXPECT_NE(std::string::npos, message.find("do not add up")) << message;
        EXPECT_EQ(EIO, errno_of([&] { r.received.get(); }));
        EXPECT_TRUE(keeps_running(guest));
        return;
    }
    EXPECT_EQ(EIO, err) << message;
    EXPECT_NE(std::string::npos, message.find("a write the dirty tracking missed")) << message;
    r.received.get();  // the destination could not know: it got a consistent stream
    // The destination runs the guest: the source must not run it as well.
    EXPECT_FALSE(keeps_running(guest));
}

TEST(MigrationFailure, CancelLeavesTheSourceRunningAndTheDestinationDiscards) {
    SKIP_WITHOUT_KVM();
    auto [src, dst] = channel_pair();
    auto guest = KvmWorkload::source(small_guest(2));
    guest->start();
    Receiving r(dst);
    MigrationOptions options;
    options.downtime_limit = 1ms;
    options.max_rounds = 1000;
    options.postcopy_if_not_converged = false;
    MigrationSource* self = nullptr;
    MigrationSource source(*guest, src, options, [&](const auto& p) {
        if (p.round == 2) self->cancel();
    });
    self = &source;
    EXPECT_EQ(ECANCELED, errno_of([&] { source.run(); }));
    EXPECT_EQ(ECANCELED, errno_of([&] { r.received.get(); }));
    EXPECT_EQ(nullptr, r.d.guest);
    EXPECT_TRUE(keeps_running(*guest));
}

TEST(MigrationFailure, DestinationGoneMidPrecopyLeavesTheSourceRunning) {
    SKIP_WITHOUT_KVM();
    auto [src, dst] = channel_pair();
    auto guest = KvmWorkload::source(small_guest(2));
    guest->start();
    // The destination reads the header and a few records, then dies.
    std::jthread dest([&dst] {
        StreamReader r(dst);
        r.allow_torn_pages(true);  // the guest runs on
        r.header(1 << 20, 64);
        for (int i = 0; i < 100; ++i) r.next();
        dst.shutdown();
    });
    MigrationOptions options;
    options.bandwidth_limit = 16 << 20;
    MigrationSource source(*guest, src, options);
    std::string message;
    const int err = errno_of([&] { source.run(); }, &message);
    EXPECT_TRUE(err == EPIPE || err == ECONNRESET) << message;
    EXPECT_TRUE(keeps_running(*guest));
}

TEST(MigrationFailure, ConnectionBrokenMidPostcopyEndsBothSidesWithoutAHang) {
    SKIP_WITHOUT_KVM();
    auto [src, dst] = channel_pair();
    auto guest = KvmWorkload::source(small_guest(2));
    guest->start();
    ASSERT_TRUE(guest->wait_first_pass(10s));
    Receiving r(dst, false);
    MigrationOptions options;
    options.postcopy = true;
    options.bandwidth_limit = 1 << 20;  // postcopy lasts seconds
    std::jthread breaker;
    MigrationSource source(*guest, src, options, [&](const auto&) {
        // Round 1 is over: postcopy starts now; break the wire in the middle.
        breaker = std::jthread([&src] {
            std::this_thread::sleep_for(500ms);
            src.shutdown();
        });
    });
    std::string message;
    const int err = errno_of([&] { source.run(); }, &message);
    EXPECT_TRUE(err == EPIPE || err == ECONNRESET) << message;
    const int dest_err = errno_of([&] { r.received.get(); }, &message);
    EXPECT_EQ(ECONNRESET, dest_err) << message;
    // Postcopy was under way: the guest had started on the destination, and
    // its vCPUs were released from their faults when it was torn down.
    EXPECT_NE(nullptr, r.d.guest);
}

TEST(MigrationFailure, PreemptChannelBrokenMidPostcopyEndsBothSidesWithoutAHang) {
    SKIP_WITHOUT_KVM();
    auto [src, dst] = channel_pair();
    auto [psrc, pdst] = channel_pair();
    auto guest = KvmWorkload::source(small_guest(2));
    guest->start();
    ASSERT_TRUE(guest->wait_first_pass(10s));
    // Broken as postcopy starts, before any vCPU ran there: no request
    // can be answered, and the background stream needs seconds.
    Receiving r(dst, false, &pdst, [&pdst] { pdst.shutdown(); });
    MigrationOptions options;
    options.postcopy = true;
    options.bandwidth_limit = 1 << 20;
    MigrationSource source(*guest, src, options);
    source.use_preempt_channel(psrc);
    std::string message;
    // The destination gives up both connections once its preempt channel
    // broke: whichever the source notices first.
    const int err = errno_of([&] { source.run(); }, &message);
    EXPECT_TRUE(err == EPIPE || err == ECONNRESET) << message;
    const int dest_err = errno_of([&] { r.received.get(); }, &message);
    // Its requests fail first (EPIPE), or the main stream's end (ECONNRESET).
    EXPECT_TRUE(dest_err == EPIPE || dest_err == ECONNRESET) << message;
    if (dest_err == EPIPE) {
        EXPECT_NE(std::string::npos, message.find("preempt channel")) << message;
    }
    EXPECT_NE(nullptr, r.d.guest);
}

// A hand-written source: a header and one page, then what the test says.
void header_and_one_page(StreamWriter& w) {
    w.header(64, 1, 1);
    static const auto data = page_of(5);  // sent from where it lies, at the flush
    w.page(1, data.data());
}

TEST(MigrationFailure, SourceGoneMidStreamEndsTheDestinationCleanly) {
    auto [src, dst] = channel_pair();
    Receiving r(dst);
    StreamWriter w(src);
    header_and_one_page(w);
    w.flush();
    src.shutdown();
    std::string message;
    EXPECT_EQ(ECONNRESET, errno_of([&] { r.received.get(); }, &message)) << message;
    EXPECT_EQ(nullptr, r.d.guest);
}

TEST(MigrationFailure, EndWithTheWrongDigestIsRefusedAndTheSourceIsTold) {
    auto [src, dst] = channel_pair();
    Receiving r(dst);
    StreamWriter w(src);
    header_and_one_page(w);
    w.end(12345);
    std::string message;
    EXPECT_EQ(EIO, errno_of([&] { r.received.get(); }, &message)) << message;
    StreamReader back(src, 64);
    const Record& told = back.next();
    EXPECT_EQ(RecordType::Failed, told.type);
    EXPECT_NE(std::string::npos, told.message.find("do not add up")) << told.message;
}

// Main and preempt headers that do not make one migration, as a
// destination sees them; flags of -1: no preempt channel on that side.
struct PreemptMismatch {
    const char* name;
    std::uint32_t main_flags;
    std::int64_t preempt_flags;  // what the source writes on the preempt channel
    bool destination_has_preempt;
    std::uint64_t preempt_pages;
    const char* says;
};

class PreemptChannelRefused : public testing::TestWithParam<PreemptMismatch> {};

TEST_P(PreemptChannelRefused, WithAClearError) {
    const PreemptMismatch& m = GetParam();
    auto [src, dst] = channel_pair();
    auto [psrc, pdst] = channel_pair();
    StreamWriter(src).header(64, 1, 1, m.main_flags);
    src.flush();
    if (m.preempt_flags >= 0) {
        StreamWriter(psrc).header(m.preempt_pages, 1, 1,
                                  static_cast<std::uint32_t>(m.preempt_flags));
        psrc.flush();
    }
    Receiving r(dst, true, m.destination_has_preempt ? &pdst : nullptr);
    std::string message;
    EXPECT_EQ(EPROTO, errno_of([&] { r.received.get(); }, &message)) << message;
    EXPECT_NE(std::string::npos, message.find(m.says)) << message;
    EXPECT_EQ(nullptr, r.d.guest);
    // The source is told why.
    StreamReader back(src, 64);
    EXPECT_EQ(RecordType::Failed, back.next().type);
}

constexpr std::uint32_t kBoth = dirtyring::kStreamPreempt | dirtyring::kStreamPreemptChannel;

INSTANTIATE_TEST_SUITE_P(
    Table, PreemptChannelRefused,
    testing::Values(
        PreemptMismatch{"source_has_one_destination_not", dirtyring::kStreamPreempt, kBoth, false,
                        64, "the source uses a preempt channel; this destination has none"},
        PreemptMismatch{"destination_has_one_source_not", 0, -1, true, 64,
                        "this destination has a preempt channel; the source has none"},
        PreemptMismatch{"preempt_channel_as_the_main_stream", kBoth, -1, false, 64,
                        "is a preempt channel, not the main stream"},
        PreemptMismatch{"main_stream_as_the_preempt_channel", dirtyring::kStreamPreempt,
                        dirtyring::kStreamPreempt, true, 64, "not this migration's preempt"},
        PreemptMismatch{"another_migrations_preempt_channel", dirtyring::kStreamPreempt, kBoth,
                        true, 32, "not this migration's preempt"},
        PreemptMismatch{"a_resume_as_the_first_connection", dirtyring::kStreamResume, -1, false, 64,
                        "resumes a postcopy this destination never began"},
        PreemptMismatch{"an_abort_as_the_first_connection", dirtyring::kStreamAbort, -1, false, 64,
                        "resumes a postcopy this destination never began"},
        PreemptMismatch{"a_page_channel_as_the_main_stream",
                        dirtyring::kStreamPageChannel | dirtyring::page_channels_flags(1), -1,
                        false, 64, "is a page channel, not the main stream"},
        PreemptMismatch{"unknown_flag", 32, -1, false, 64, "unknown flags 32"}),
    [](const auto& p) { return std::string(p.param.name); });

// The destination's preempt reader fails (here a record that is not a
// page) while the main stream stays open and silent: the destination must
// end with that reason, not wait on the main stream, and tell the source.
TEST(MigrationFailure, ABrokenPreemptReaderEndsTheDestinationWithItsReason) {
    SKIP_WITHOUT_KVM();
    auto guest = KvmWorkload::source(small_guest(1));
    guest->start();
    guest->stop();
    const std::vector<std::byte> state = guest->save_vcpu(0);
    auto [src, dst] = channel_pair();
    auto [psrc, pdst] = channel_pair();
    StreamWriter main(src);
    main.header(guest->pages(), 1, guest->kind(), dirtyring::kStreamPreempt);
    StreamWriter preempt(psrc);
    preempt.header(guest->pages(), 1, guest->kind(), kBoth);
    psrc.flush();
    // Reading already: the memory may be more than a socket holds.
    Receiving r(dst, false, &pdst);
    // The whole memory, so that the guest runs normally there.
    for (std::uint64_t page = 0; page < guest->pages(); ++page)
        main.page(page, guest->memory() + page * kStreamPageSize);
    main.vcpu_state(0, state);
    main.postcopy({});
    src.flush();
    preempt.round_end(1, 0);
    psrc.flush();
    std::string message;
    EXPECT_EQ(EPROTO, errno_of([&] { r.received.get(); }, &message)) << message;
    EXPECT_NE(std::string::npos, message.find("preempt channel")) << message;
}

// A guest that runs `on_stop` as the source stops it: the moment between
// the last precopy round and the Postcopy record.
class StopHook : public MigratableGuest {
public:
    StopHook(MigratableGuest& inner, std::function<void()> on_stop)
        : inner_(inner), on_stop_(std::move(on_stop)) {}
    std::uint32_t kind() const noexcept override { return inner_.kind(); }
    std::byte* memory() noexcept override { return inner_.memory(); }
    std::uint64_t pages() const noexcept override { return inner_.pages(); }
    unsigned vcpus() const noexcept override { return inner_.vcpus(); }
    void start() override { inner_.start(); }
    void stop() override {
        inner_.stop();
        if (on_stop_) std::exchange(on_stop_, {})();
    }
    std::exception_ptr failure() const override { return inner_.failure(); }
    std::uint64_t harvest_into(std::vector<std::uint64_t>& migration) override {
        return inner_.harvest_into(migration);
    }
    std::vector<std::byte> save_vcpu(unsigned vcpu) override { return inner_.save_vcpu(vcpu); }
    void restore_vcpu(unsigned vcpu, std::span<const std::byte> state) override {
        inner_.restore_vcpu(vcpu, state);
    }
    std::uint64_t progress(unsigned vcpu) override { return inner_.progress(vcpu); }
    void set_vcpu_thread_hook(VcpuThreadHook hook) override {
        inner_.set_vcpu_thread_hook(std::move(hook));
    }

private:
    MigratableGuest& inner_;
    std::function<void()> on_stop_;
};

// A cancel that comes while the source stops its guest for postcopy, before
// the Postcopy record went out, still wins: the guest never left, so it
// runs on here and the destination discards its copy.
TEST(MigrationFailure, ACancelAsPostcopyBeginsStillCancels) {
    SKIP_WITHOUT_KVM();
    auto [src, dst] = channel_pair();
    auto [psrc, pdst] = channel_pair();
    auto guest = KvmWorkload::source(small_guest(1));
    guest->start();
    ASSERT_TRUE(guest->wait_first_pass(10s));
    Receiving r(dst, false, &pdst);
    MigrationOptions options;
    options.postcopy = true;
    MigrationSource* self = nullptr;
    bool accepted = false;
    StopHook hooked(*guest, [&] { accepted = self->cancel(); });
    MigrationSource source(hooked, src, options);
    self = &source;
    source.use_preempt_channel(psrc);
    std::string message;
    EXPECT_EQ(ECANCELED, errno_of([&] { source.run(); }, &message)) << message;
    EXPECT_TRUE(accepted);
    EXPECT_FALSE(source.in_postcopy());
    EXPECT_EQ(ECANCELED, errno_of([&] { r.received.get(); }));
    EXPECT_EQ(nullptr, r.d.guest) << "the destination started a guest the source runs";
    EXPECT_TRUE(keeps_running(*guest)) << "the source guest was not restarted";
}

TEST(MigrationOptionsTest, ZeroRoundsIsRefused) {
    auto [src, dst] = channel_pair();
    WorkloadConfig c = small_guest(1);
    MigrationOptions options;
    options.max_rounds = 0;
    if (auto why = dirtyring::KvmGuest::unavailable_reason()) GTEST_SKIP() << *why;
    auto guest = KvmWorkload::source(c);
    EXPECT_EQ(EINVAL, errno_of([&] { MigrationSource(*guest, src, options); }));
}

}  // namespace
