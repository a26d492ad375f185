// SPDX-License-Identifier: LGPL-2.1-or-later
// Postcopy recovery in one process: source and destination over unix
// sockets through a proxy the test cuts (testing/severable_proxy.hpp), with
// a real KVM guest (skipped, with the reason, where KVM is unusable).  Cuts
// come after a number of bytes in postcopy, never after a time.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "dirtyring/migration/channel.hpp"
#include "dirtyring/migration/migration_destination.hpp"
#include "dirtyring/migration/migration_source.hpp"
#include "dirtyring/migration/recovery.hpp"
#include "migration_test_support.hpp"
#include "stall_watch.hpp"
#include "testing/severable_proxy.hpp"

namespace {

using dirtyring::AcceptingReconnector;
using dirtyring::Channel;
using dirtyring::ChannelAddress;
using dirtyring::ConnectingReconnector;
using dirtyring::Error;
using dirtyring::Listener;
using dirtyring::MigrationDestination;
using dirtyring::MigrationOptions;
using dirtyring::MigrationSource;
using dirtyring::RecoveryOptions;
using dirtyring::SeverableProxy;
using namespace dirtyring::testing_support;

std::string socket_path(const std::string& what) {
    return "/tmp/dirtyring-recovery-test." + std::to_string(::getpid()) + "." + what;
}

// What the migration told its reconnector, kept for the test.
template <typename Base>
class Recorded : public Base {
public:
    using Base::Base;
    void paused(const Error& why) override {
        std::lock_guard lock(mutex);
        pauses.emplace_back(why.what());
        if (on_pause) on_pause();
    }
    void refused(const Error& why) override {
        std::lock_guard lock(mutex);
        refusals.push_back(why);
    }
    void resumed() override { ++resumes; }

    std::mutex mutex;
    std::vector<std::string> pauses;
    std::vector<Error> refusals;
    std::atomic<unsigned> resumes{0};
    std::function<void()> on_pause;
};

// A source and a destination of one guest, the source reaching the
// destination through `proxy`, both with recovery unless told otherwise.
struct Link {
    explicit Link(bool with_preempt) : preempt(with_preempt) {}

    // The first connections, the source's through the proxy: the main
    // stream, and the preempt channel when the migration has one.
    void connect() {
        const auto address = ChannelAddress::parse("unix:" + proxy_path);
        src_main.emplace(Channel::connect(address, 10s));
        if (preempt) src_preempt.emplace(Channel::connect(address, 10s));
        dst_main.emplace(listener.accept(10s));
        if (preempt) dst_preempt.emplace(listener.accept(10s));
    }

    std::string dest_path = socket_path("dest");
    std::string proxy_path = socket_path("proxy");
    Listener listener{ChannelAddress::parse("unix:" + dest_path)};
    SeverableProxy proxy{proxy_path, dest_path};
    Recorded<ConnectingReconnector> source_side{ChannelAddress::parse("unix:" + proxy_path)};
    Recorded<AcceptingReconnector> dest_side{listener};
    bool preempt;
    std::optional<Channel> src_main, src_preempt, dst_main, dst_preempt;
};

MigrationOptions postcopy_options() {
    MigrationOptions o;
    o.postcopy = true;
    // The first round takes a while, so the whole working set is dirty at
    // the stop: postcopy then moves it all, megabytes, after the switch.
    o.bandwidth_limit = 4 << 20;
    return o;
}

class PostcopyRecovery : public testing::TestWithParam<bool> {};

// Three cuts in one postcopy, each after 256 KiB more went towards the
// destination: at the switch about 4 MiB of the working set is still
// on the source, so every cut falls inside the postcopy.  Lost pages and
// lost requests must come again: the destination verifies the digest of
// every page and the guest's values.
TEST_P(PostcopyRecovery, ResumesAfterThreeCutsAndMovesTheExactMemory) {
    SKIP_WITHOUT_KVM();
    Link link(GetParam());
    auto guest = KvmWorkload::source(small_guest(2));
    guest->start();
    ASSERT_TRUE(guest->wait_first_pass(10s));
    link.connect();

    Destination d{false, nullptr, {}};
    MigrationDestination destination(*link.dst_main, d.factory());
    if (link.dst_preempt) destination.use_preempt_channel(*link.dst_preempt);
    destination.enable_postcopy_recovery(RecoveryOptions{&link.dest_side, 60s});
    auto received = std::async(std::launch::async, [&] { return destination.run(); });

    MigrationSource source(*guest, *link.src_main, postcopy_options());
    if (link.src_preempt) source.use_preempt_channel(*link.src_preempt);
    source.enable_postcopy_recovery(RecoveryOptions{&link.source_side, 60s});
    link.proxy.cut_after(256 << 10, 3, [&] { return source.in_postcopy(); });
    const auto report = source.run();
    const auto dest_report = received.get();

    EXPECT_EQ(3U, link.proxy.cuts());
    EXPECT_EQ(3U, report.postcopy_recoveries);
    EXPECT_EQ(3U, dest_report.postcopy_recoveries);
    EXPECT_EQ(3U, link.source_side.resumes.load());
    EXPECT_EQ(3U, link.dest_side.resumes.load());
    EXPECT_EQ(3U, link.source_side.pauses.size());
    EXPECT_EQ("postcopy", report.mode);
    EXPECT_EQ(report.digest, dest_report.digest);
    EXPECT_GT(dest_report.postcopy_faults, 0U);
    // A resume asks for what is missing, never for what the precopy left
    // final: one full round (4096 pages), the working set (1024) again, and
    // what was lost in flight, which no cut can make more than its
    // buffers hold (a 1 MiB write buffer and four socket buffers: under
    // 500 pages; about 100 were seen).  Asking for every page not placed
    // in postcopy sent a second full round: 8195 pages and more.
    EXPECT_LT(report.pages_sent, guest->pages() * 7 / 4);
    ASSERT_NE(nullptr, d.guest);
    EXPECT_TRUE(keeps_running(*d.guest));
    d.guest->stop();
    for (unsigned i = 0; i < 2; ++i)
        EXPECT_EQ(guest->next_value(i), d.guest->kvm().restored_value(i)) << "vCPU " << i;
}

INSTANTIATE_TEST_SUITE_P(Channels, PostcopyRecovery, testing::Bool(),
                         [](const auto& p) { return p.param ? "with_preempt" : "main_only"; });

// The source gone for good (killed, here: no recovery on its side): the
// destination stays paused, its vCPUs blocked, until its timeout, then
// fails saying why; its guest had started, so the guest is lost.
TEST(PostcopyRecoveryFailure, TheSourceGoneLeavesTheDestinationPausedUntilItsTimeout) {
    SKIP_WITHOUT_KVM();
    Link link(true);
    auto guest = KvmWorkload::source(small_guest(2));
    guest->start();
    ASSERT_TRUE(guest->wait_first_pass(10s));
    link.connect();

    Destination d{false, nullptr, {}};
    MigrationDestination destination(*link.dst_main, d.factory());
    destination.use_preempt_channel(*link.dst_preempt);
    destination.enable_postcopy_recovery(RecoveryOptions{&link.dest_side, 1s});
    auto received = std::async(std::launch::async, [&] { return destination.run(); });

    MigrationSource source(*guest, *link.src_main, postcopy_options());
    source.use_preempt_channel(*link.src_preempt);
    link.proxy.cut_after(256 << 10, 1, [&] { return source.in_postcopy(); });
    std::string message;
    const int err = errno_of([&] { source.run(); }, &message);
    EXPECT_TRUE(err == EPIPE || err == ECONNRESET) << message;
    const int dest_err = errno_of([&] { received.get(); }, &message);
    EXPECT_EQ(ETIMEDOUT, dest_err) << message;
    EXPECT_NE(std::string::npos, message.find("postcopy paused")) << message;
    EXPECT_NE(std::string::npos, message.find("could not resume")) << message;
    EXPECT_EQ(1U, link.dest_side.pauses.size());
    EXPECT_EQ(0U, link.dest_side.resumes.load());
    EXPECT_TRUE(destination.guest_started());
}

// Every page went and the destination verified them, but its Done was lost
// with the connection (here: a destination that reads to the End and
// leaves): nobody listens for a resume, and the source cannot tell this
// from a destination gone, so its error says the guest may run there.
TEST(PostcopyRecoveryFailure, ADoneLostWithTheConnectionSaysTheGuestMayRunThere) {
    SKIP_WITHOUT_KVM();
    auto guest = KvmWorkload::source(small_guest(1));
    guest->start();
    ASSERT_TRUE(guest->wait_first_pass(10s));
    auto [src, dst] = channel_pair();
    std::jthread destination([&dst = dst] {
        dirtyring::StreamReader r(dst);
        r.allow_torn_pages(true);  // the guest runs on through the first round
        r.header(1 << 20, 8);
        try {
            while (r.next().type != dirtyring::RecordType::End) {
            }
        } catch (const Error&) {
            // The source is gone: nothing to wait for.
        }
        dst.shutdown();
    });
    Recorded<ConnectingReconnector> nobody{ChannelAddress::parse("unix:" + socket_path("nobody"))};
    MigrationOptions options;
    options.postcopy = true;
    MigrationSource source(*guest, src, options);
    source.enable_postcopy_recovery(RecoveryOptions{&nobody, 1s});
    std::string message;
    EXPECT_EQ(ETIMEDOUT, errno_of([&] { source.run(); }, &message)) << message;
    EXPECT_NE(std::string::npos, message.find("could not resume")) << message;
    EXPECT_NE(std::string::npos, message.find("may have verified them and be running the guest"))
        << message;
    EXPECT_EQ(1U, nobody.pauses.size());
}

// abort() while the source waits to reconnect ends the pause at once, with
// ECANCELED, whatever the timeout.
TEST(PostcopyRecoveryFailure, AbortEndsASourcesPause) {
    SKIP_WITHOUT_KVM();
    Link link(false);
    auto guest = KvmWorkload::source(small_guest(1));
    guest->start();
    ASSERT_TRUE(guest->wait_first_pass(10s));
    link.connect();
    Destination d{false, nullptr, {}};
    MigrationDestination destination(*link.dst_main, d.factory());  // no recovery: it fails
    auto received = std::async(std::launch::async, [&] { return destination.run(); });

    MigrationSource source(*guest, *link.src_main, postcopy_options());
    std::jthread aborter;
    link.source_side.on_pause = [&] { aborter = std::jthread([&] { source.abort(); }); };
    source.enable_postcopy_recovery(RecoveryOptions{&link.source_side, 3600s});
    link.proxy.cut_after(256 << 10, 1, [&] { return source.in_postcopy(); });
    auto ran = std::async(std::launch::async, [&] {
        std::string message;
        return std::pair(errno_of([&] { source.run(); }, &message), message);
    });
    // Far below the timeout: an abort that did not end the pause fails here.
    ASSERT_EQ(std::future_status::ready, ran.wait_for(600s));
    const auto [err, message] = ran.get();
    EXPECT_EQ(ECANCELED, err) << message;
    EXPECT_EQ(1U, link.source_side.pauses.size());
    errno_of([&] { received.get(); });
}

// A connection that is not this migration's reaching a paused destination
// is turned away, and the real source still resumes: another session's, or
// one that sends part of a header and then nothing (which, read without a
// deadline, held the destination for ever).
class Impostor : public Recorded<AcceptingReconnector> {
public:
    using Recorded::Recorded;
    Channel reconnect(Clock::time_point deadline, std::stop_token stop) override {
        if (!sent_impostor_) {
            sent_impostor_ = true;
            auto [a, b] = channel_pair();
            auto [x, y] = channel_pair();
            dirtyring::StreamWriter(x).header(
                pages, 2, kind, dirtyring::kStreamResume | dirtyring::kStreamPreempt, 12345);
            x.flush();
            const auto whole = y.read_in_place(sizeof(dirtyring::StreamHeader));
            b.write(stalled ? whole.first(whole.size() - 1) : whole);
            b.flush();
            impostor_.emplace(std::move(b));
            return std::move(a);
        }
        return AcceptingReconnector::reconnect(deadline, stop);
    }
    std::uint64_t pages = 0;
    std::uint32_t kind = 0;
    bool stalled = false;

private:
    bool sent_impostor_ = false;
    std::optional<Channel> impostor_;
};

struct TurnedAway {
    const char* name;
    bool stalled;
    int error;
    const char* message;
};

class PostcopyRecoveryTurnsAway : public testing::TestWithParam<TurnedAway> {};

TEST_P(PostcopyRecoveryTurnsAway, AConnectionNotOfThisMigration) {
    SKIP_WITHOUT_KVM();
    Link link(true);
    Impostor dest_side(link.listener);
    auto guest = KvmWorkload::source(small_guest(2));
    dest_side.pages = guest->pages();
    dest_side.kind = guest->kind();
    dest_side.stalled = GetParam().stalled;
    guest->start();
    ASSERT_TRUE(guest->wait_first_pass(10s));
    link.connect();
    Destination d{false, nullptr, {}};
    MigrationDestination destination(*link.dst_main, d.factory());
    destination.use_preempt_channel(*link.dst_preempt);
    destination.enable_postcopy_recovery(RecoveryOptions{&dest_side, 60s});
    auto received = std::async(std::launch::async, [&] { return destination.run(); });

    MigrationSource source(*guest, *link.src_main, postcopy_options());
    source.use_preempt_channel(*link.src_preempt);
    source.enable_postcopy_recovery(RecoveryOptions{&link.source_side, 60s});
    link.proxy.cut_after(256 << 10, 1, [&] { return source.in_postcopy(); });
    StallWatch watch("a paused destination checking a connection");
    const auto report = source.run();
    const auto dest_report = received.get();
    EXPECT_EQ(1U, report.postcopy_recoveries);
    EXPECT_EQ(report.digest, dest_report.digest);
    ASSERT_EQ(1U, dest_side.refusals.size());
    EXPECT_EQ(GetParam().error, dest_side.refusals[0].errnum());
    EXPECT_NE(std::string::npos, std::string(dest_side.refusals[0].what()).find(GetParam().message))
        << dest_side.refusals[0].what();
}

INSTANTIATE_TEST_SUITE_P(
    Table, PostcopyRecoveryTurnsAway,
    testing::Values(TurnedAway{"another_session", false, EPROTO, "does not resume this migration"},
                    TurnedAway{"part_of_a_header", true, ETIMEDOUT, "receive timeout"}),
    [](const auto& p) { return std::string(p.param.name); });

// A reconnector with nobody on the other side ends on its deadline, or
// at once when stopped; it never waits past either.
struct Unanswered {
    const char* name;
    bool accepting;
    bool stopped;
    int error;
};

class ReconnectorWithNobody : public testing::TestWithParam<Unanswered> {};

TEST_P(ReconnectorWithNobody, EndsWithItsError) {
    const Unanswered& u = GetParam();
    const std::string path = socket_path(std::string("nobody.") + u.name);
    ::unlink(path.c_str());
    std::optional<Listener> listener;
    std::unique_ptr<dirtyring::Reconnector> r;
    if (u.accepting) {
        listener.emplace(ChannelAddress::parse("unix:" + path));
        r = std::make_unique<AcceptingReconnector>(*listener);
    } else {
        r = std::make_unique<ConnectingReconnector>(ChannelAddress::parse("unix:" + path));
    }
    std::stop_source stop;
    if (u.stopped) stop.request_stop();
    // Stopped: a deadline far away must not matter.
    const auto deadline = dirtyring::Reconnector::Clock::now() + (u.stopped ? 3600s : 300ms);
    std::string message;
    EXPECT_EQ(u.error, errno_of([&] { r->reconnect(deadline, stop.get_token()); }, &message))
        << message;
    EXPECT_GE(dirtyring::Reconnector::Clock::now(), u.stopped ? deadline - 3600s : deadline);
}

INSTANTIATE_TEST_SUITE_P(Table, ReconnectorWithNobody,
                         testing::Values(Unanswered{"connect_timeout", false, false, ETIMEDOUT},
                                         Unanswered{"connect_stopped", false, true, ECANCELED},
                                         Unanswered{"accept_timeout", true, false, ETIMEDOUT},
                                         Unanswered{"accept_stopped", true, true, ECANCELED}),
                         [](const auto& p) { return std::string(p.param.name); });

// Which errors a recovery is for.
TEST(Recovery, ConnectionErrorsAreTheBrokenConnectionsOnly) {
    for (const int e : {ECONNRESET, EPIPE, ECONNABORTED, ENOTCONN, ETIMEDOUT, EHOSTUNREACH})
        EXPECT_TRUE(dirtyring::is_connection_error(Error(e, "x"))) << e;
    for (const int e : {EPROTO, EIO, EREMOTEIO, ECANCELED, EINVAL, ESHUTDOWN})
        EXPECT_FALSE(dirtyring::is_connection_error(Error(e, "x"))) << e;
}

}  // namespace
