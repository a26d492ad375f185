// SPDX-License-Identifier: LGPL-2.1-or-later
// Channel addresses and listeners as an operator writes them: host names
// resolve, bad addresses fail with EINVAL and a message, and a unix socket
// left by a killed listener is replaced while a live one or a plain file is
// never touched.
#include "dirtyring/migration/channel.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "dirtyring/base/error.hpp"
#include "dirtyring/base/unique_fd.hpp"

namespace {

using dirtyring::Channel;
using dirtyring::ChannelAddress;
using dirtyring::Error;
using dirtyring::Listener;
using dirtyring::UniqueFd;
using namespace std::chrono_literals;

struct GoodAddress {
    const char* name;
    const char* text;
    ChannelAddress::Kind kind;
    const char* host;
    std::uint16_t port;
};

class ChannelAddressAccepts : public testing::TestWithParam<GoodAddress> {};

TEST_P(ChannelAddressAccepts, AndKeepsItsParts) {
    const auto& c = GetParam();
    const ChannelAddress a = ChannelAddress::parse(c.text);
    EXPECT_EQ(c.kind, a.kind);
    EXPECT_EQ(c.host, a.path_or_host);
    EXPECT_EQ(c.port, a.port);
}

INSTANTIATE_TEST_SUITE_P(Table, ChannelAddressAccepts,
                         testing::Values(GoodAddress{"unix", "unix:/tmp/x.sock",
                                                     ChannelAddress::Kind::Unix, "/tmp/x.sock", 0},
                                         GoodAddress{"ipv4", "tcp:127.0.0.1:4444",
                                                     ChannelAddress::Kind::Tcp, "127.0.0.1", 4444},
                                         GoodAddress{"ipv6", "tcp:[::1]:4444",
                                                     ChannelAddress::Kind::Tcp, "::1", 4444},
                                         GoodAddress{"host_name", "tcp:localhost:4444",
                                                     ChannelAddress::Kind::Tcp, "localhost", 4444}),
                         [](const auto& p) { return std::string(p.param.name); });

struct BadAddress {
    const char* name;
    const char* text;
    const char* says;
};

class ChannelAddressRejects : public testing::TestWithParam<BadAddress> {};

TEST_P(ChannelAddressRejects, WithEinvalAndTheReason) {
    try {
        ChannelAddress::parse(GetParam().text);
        ADD_FAILURE() << GetParam().text << " was accepted";
    } catch (const Error& e) {
        EXPECT_EQ(EINVAL, e.errnum());
        EXPECT_NE(std::string::npos, std::string(e.what()).find(GetParam().says)) << e.what();
    }
}

INSTANTIATE_TEST_SUITE_P(
    Table, ChannelAddressRejects,
    testing::Values(BadAddress{"unknown_kind", "udp:1.2.3.4:5", "unknown kind"},
                    BadAddress{"empty_path", "unix:", "empty path"},
                    BadAddress{"no_port", "tcp:localhost", "no port"},
                    BadAddress{"port_zero", "tcp:localhost:0", "port out of range"},
                    BadAddress{"port_too_big", "tcp:localhost:65536", "port out of range"},
                    BadAddress{"port_not_a_number", "tcp:localhost:http", "bad port"},
                    // .invalid never resolves (RFC 2606), with or without a network.
                    BadAddress{"host_that_does_not_resolve", "tcp:no-such-host.invalid:4444",
                               "host 'no-such-host.invalid'"}),
    [](const auto& p) { return std::string(p.param.name); });

std::string temp_path(const char* what) {
    return "/tmp/dirtyring-channel-test." + std::to_string(::getpid()) + "." + what;
}

// A word written on one end arrives at the other.
void expect_connected(Channel& from, Channel& to) {
    const std::array<std::byte, 4> sent{std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4}};
    from.write(sent);
    from.flush();
    std::array<std::byte, 4> got{};
    to.read(got);
    EXPECT_EQ(sent, got);
}

// A unix socket file with nobody listening: what a killed listener leaves.
void leave_stale_socket(const std::string& path) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM, 0));
    ASSERT_TRUE(fd);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::strcpy(un.sun_path, path.c_str());
    ASSERT_EQ(0, ::bind(fd.get(), reinterpret_cast<sockaddr*>(&un), sizeof(un)));
}

TEST(Listener, ReplacesAUnixSocketNobodyListensOn) {
    const std::string path = temp_path("stale");
    ::unlink(path.c_str());
    leave_stale_socket(path);
    ASSERT_EQ(0, ::access(path.c_str(), F_OK));
    const ChannelAddress a = ChannelAddress::parse("unix:" + path);
    Listener listener(a);
    Channel client = Channel::connect(a, 5s);
    Channel server = listener.accept(5000ms);
    expect_connected(client, server);
}

TEST(Listener, NeverTakesAUnixSocketSomeoneListensOn) {
    const std::string path = temp_path("live");
    ::unlink(path.c_str());
    const ChannelAddress a = ChannelAddress::parse("unix:" + path);
    Listener first(a);
    try {
        Listener second(a);
        ADD_FAILURE() << "a second listener took a live socket";
    } catch (const Error& e) {
        EXPECT_EQ(EADDRINUSE, e.errnum());
        EXPECT_NE(std::string::npos, std::string(e.what()).find("address in use")) << e.what();
    }
    // The first still listens.
    Channel client = Channel::connect(a, 5s);
    Channel server = first.accept(5000ms);
    expect_connected(client, server);
}

TEST(Listener, NeverRemovesAFileThatIsNotASocket) {
    const std::string path = temp_path("file");
    std::ofstream(path) << "an operator's file\n";
    try {
        Listener listener(ChannelAddress::parse("unix:" + path));
        ADD_FAILURE() << "bound over a regular file";
    } catch (const Error& e) {
        EXPECT_EQ(EADDRINUSE, e.errnum());
    }
    struct stat st {};
    EXPECT_EQ(0, ::stat(path.c_str(), &st));
    EXPECT_TRUE(S_ISREG(st.st_mode));
    ::unlink(path.c_str());
}

TEST(Listener, TcpByHostName) {
    // A port free here: the first of a range nobody else's test binds.
    std::optional<Listener> listener;
    std::string address;
    for (unsigned port = 20000 + static_cast<unsigned>(::getpid()) % 20000; !listener; ++port) {
        address = "tcp:localhost:" + std::to_string(port);
        try {
            listener.emplace(ChannelAddress::parse(address));
        } catch (const Error& e) {
            ASSERT_EQ(EADDRINUSE, e.errnum()) << e.what();
        }
    }
    Channel client = Channel::connect(ChannelAddress::parse(address), 5s);
    Channel server = listener->accept(5000ms);
    expect_connected(client, server);
}

// Referenced bodies go out in order with the copied heads, across many
// flushes, partial sends (a reader slower than the socket's buffer) and
// more pieces than one sendmsg() takes; a body changed before the flush
// goes out as it is then.
TEST(Channel, ReferencedBodiesArriveInOrderAsTheyAreWhenSent) {
    int fds[2];
    ASSERT_EQ(0, ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds));
    Channel tx{UniqueFd(fds[0])};
    Channel rx{UniqueFd(fds[1])};
    constexpr std::size_t kRecords = 5000;  // 5000 heads and bodies: beyond IOV_MAX
    std::vector<std::uint32_t> bodies(kRecords * 64);
    for (std::size_t i = 0; i < bodies.size(); ++i) bodies[i] = static_cast<std::uint32_t>(i);
    std::jthread reader([&] {
        for (std::size_t r = 0; r < kRecords; ++r) {
            std::array<std::byte, 4> head{};
            rx.read(head);
            std::uint32_t n = 0;
            std::memcpy(&n, head.data(), sizeof(n));
            ASSERT_EQ(r, n);
            std::array<std::uint32_t, 64> body{};
            rx.read(std::as_writable_bytes(std::span(body)));
            const std::uint32_t first = r == 0 ? 0xffffffffU : static_cast<std::uint32_t>(r * 64);
            ASSERT_EQ(first, body[0]) << "record " << r;
            ASSERT_EQ(r * 64 + 63, body[63]) << "record " << r;
        }
    });
    for (std::size_t r = 0; r < kRecords; ++r) {
        const auto n = static_cast<std::uint32_t>(r);
        tx.write_referenced(std::as_bytes(std::span(&n, 1)),
                            std::as_bytes(std::span(bodies).subspan(r * 64, 64)));
        if (r == 0) bodies[0] = 0xffffffffU;  // before its flush: sent so
    }
    tx.flush();
    reader.join();
    EXPECT_EQ(kRecords * (4 + 256), tx.bytes_written());
}

// Channels sharing a limit pace their bytes together: each reservation
// is due when everything reserved before it, by any of them, and itself
// may have left at the limit's rate.
TEST(BandwidthLimit, IsSharedByWhatUsesIt) {
    using dirtyring::BandwidthLimit;
    const auto start = BandwidthLimit::Clock::now();
    BandwidthLimit limit(1 << 20, start);                // 1 MiB/s
    EXPECT_EQ(start + 500ms, limit.reserve(512 << 10));  // one channel's half MiB
    EXPECT_EQ(start + 1s, limit.reserve(512 << 10));     // another's, after it
    EXPECT_EQ(start + 2s, limit.reserve(1 << 20));
    EXPECT_EQ(EINVAL, [] {
        try {
            BandwidthLimit none(0, BandwidthLimit::Clock::now());
        } catch (const Error& e) {
            return e.errnum();
        }
        return 0;
    }());
}

// Connects to `a` (a listener with a backlog of 0 that never accepts)
// until a connection is left waiting, and returns how that one ended.
Error connect_past_a_full_backlog(const ChannelAddress& a) {
    std::vector<Channel> queued;
    for (;;) {
        try {
            queued.push_back(Channel::connect(a, 200ms));
        } catch (const Error& e) {
            return e;
        }
        if (queued.size() >= 64) return Error(0, "a backlog of 0 took 64 connections");
    }
}

// A listener whose backlog is full answers no SYN: a blocking connect()
// would wait out the kernel's retries (about two minutes).  The caller's
// timeout ends it, as a connection error the reconnector retries.
TEST(Channel, ConnectEndsOnItsTimeoutWhenNobodyAnswers) {
    UniqueFd listening(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ASSERT_TRUE(listening);
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(0, ::bind(listening.get(), reinterpret_cast<sockaddr*>(&in), sizeof(in)));
    socklen_t len = sizeof(in);
    ASSERT_EQ(0, ::getsockname(listening.get(), reinterpret_cast<sockaddr*>(&in), &len));
    ASSERT_EQ(0, ::listen(listening.get(), 0));
    const ChannelAddress a =
        ChannelAddress::parse("tcp:127.0.0.1:" + std::to_string(ntohs(in.sin_port)));
    const Error e = connect_past_a_full_backlog(a);
    EXPECT_EQ(ETIMEDOUT, e.errnum()) << e.what();
    EXPECT_NE(std::string::npos, std::string(e.what()).find("no answer within 200 ms")) << e.what();
}

// The same for a unix listener whose backlog is full: a non-blocking
// connect() says EAGAIN, retried until the timeout, which ends it.
TEST(Channel, ConnectToAFullUnixBacklogEndsOnItsTimeout) {
    const std::string path = temp_path("backlog");
    ::unlink(path.c_str());
    UniqueFd listening(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ASSERT_TRUE(listening);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::strcpy(un.sun_path, path.c_str());
    ASSERT_EQ(0, ::bind(listening.get(), reinterpret_cast<sockaddr*>(&un), sizeof(un)));
    ASSERT_EQ(0, ::listen(listening.get(), 0));
    const ChannelAddress a = ChannelAddress::parse("unix:" + path);
    const Error e = connect_past_a_full_backlog(a);
    EXPECT_EQ(ETIMEDOUT, e.errnum()) << e.what();
    ::unlink(path.c_str());
}

}  // namespace
