// SPDX-License-Identifier: LGPL-2.1-or-later
// The migration path, each against a floor measured in the same run:
//  - StreamThroughput: StreamWriter -> StreamReader of 256 MiB of non-zero
//    pages, against a plain send/recv loop of the same bytes in the same
//    buffer size, over a unix socketpair and over TCP on 127.0.0.1
//    (ratio = stream throughput / raw throughput); also over two
//    connections at once, as two page channels send (--channels 2);
//  - Downtime: real in-process precopy migrations of a KVM guest over a
//    socketpair at several dirty rates: the source's expected downtime at
//    switch-over against the downtime it then measured;
//  - PostcopyLatency: a postcopy migration of a KVM guest whose vCPUs touch
//    their pages scattered across memory: the destination's average fault
//    latency and blocktime, against the floor of one Request -> Page round
//    trip on the same kind of socket plus one bare userfaultfd fault
//    resolved with UFFDIO_COPY; with and without the preempt channel, at
//    4 and 64 MiB/s and no limit (goal: latency_over_floor <= 1.5 with it).
#include <benchmark/benchmark.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "dirtyring/base/error.hpp"
#include "dirtyring/base/mapping.hpp"
#include "dirtyring/base/unique_fd.hpp"
#include "dirtyring/migration/channel.hpp"
#include "dirtyring/migration/migration_destination.hpp"
#include "dirtyring/migration/migration_source.hpp"
#include "dirtyring/migration/migration_stream.hpp"
#include "dirtyring/postcopy/userfault.hpp"
#include "kvm_workload.hpp"
#include "testing/kvm_guest.hpp"

namespace {

using dirtyring::Channel;
using dirtyring::Error;
using dirtyring::kStreamPageSize;
using dirtyring::UniqueFd;
using dirtyring::migrate::KvmWorkload;
using dirtyring::migrate::WorkloadConfig;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

double seconds(Clock::duration d) {
    return std::chrono::duration<double>(d).count();
}

double ms(std::chrono::nanoseconds d) {
    return std::chrono::duration<double, std::milli>(d).count();
}

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// ---- connected sockets -------------------------------------------------

enum class Transport { Unix, Tcp };

struct SocketPair {
    UniqueFd a;
    UniqueFd b;
};

SocketPair socket_pair(Transport transport) {
    if (transport == Transport::Unix) {
        int fds[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds))
            dirtyring::throw_errno("socketpair");
        return {UniqueFd(fds[0]), UniqueFd(fds[1])};
    }
    UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listener) dirtyring::throw_errno("socket");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(addr);
    // Port 0: any free port, read back with getsockname.
    if (::bind(listener.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) ||
        ::listen(listener.get(), 1) ||
        ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &length))
        dirtyring::throw_errno("listen on 127.0.0.1");
    UniqueFd a(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!a) dirtyring::throw_errno("socket");
    if (::connect(a.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)))
        dirtyring::throw_errno("connect to 127.0.0.1");
    UniqueFd b(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!b) dirtyring::throw_errno("accept");
    // As Channel sets it: the raw baseline runs on identically set up sockets.
    const int one = 1;
    ::setsockopt(a.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ::setsockopt(b.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return {std::move(a), std::move(b)};
}

// Runs `body` on a thread; rethrows its exception on join().  `on_error`
// runs on that thread when it fails, to unblock the other side.
class Worker {
public:
    template <typename F, typename G>
    Worker(F body, G on_error)
        : thread_([this, body = std::move(body), on_error = std::move(on_error)]() mutable {
              try {
                  body();
              } catch (...) {
                  failure_ = std::current_exception();
                  on_error();
              }
          }) {}
    void join() {
        thread_.join();
        if (failure_) std::rethrow_exception(failure_);
    }

private:
    std::exception_ptr failure_;
    std::jthread thread_;
};

// ---- 1. stream throughput against a raw copy ------------------------------

constexpr std::uint64_t kRegionPages = 8192;   // 32 MiB of source memory
constexpr std::uint64_t kStreamPages = 65536;  // 256 MiB sent
// Header, page records (8-byte record header, index, hash, data), End.
constexpr std::uint64_t kStreamBytes =
    sizeof(dirtyring::StreamHeader) + kStreamPages * (24 + kStreamPageSize) + 16;
constexpr std::size_t kChannelBuffer = Channel::kBufferBytes;

// Non-zero, page-distinct data: no page is sent as a ZeroPage.
dirtyring::Mapping source_region() {
    auto m = dirtyring::Mapping::anonymous(kRegionPages * kStreamPageSize, "bench source memory");
    auto* words = m.as<std::uint64_t>();
    std::uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (std::size_t i = 0; i < m.size() / sizeof(std::uint64_t); ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        words[i] = x | 1;
    }
    return m;
}

// The stream over `channels` connections at once, as page channels send
// a precopy: each its share of the pages, from its own thread, to its own
// reader.  Returns {bytes, seconds}.
std::pair<std::uint64_t, double> stream_copy(Transport transport, const std::byte* memory,
                                             unsigned channels) {
    struct Lane {
        std::optional<Channel> tx, rx;
        std::uint64_t received = 0;
    };
    std::vector<Lane> lanes(channels);
    for (Lane& l : lanes) {
        auto [a, b] = socket_pair(transport);
        l.tx.emplace(std::move(a));
        l.rx.emplace(std::move(b));
    }
    const auto start = Clock::now();
    {
        std::deque<Worker> workers;  // never moved: their threads hold them
        for (unsigned c = 0; c < channels; ++c) {
            Lane& l = lanes[c];
            workers.emplace_back(
                [&l] {
                    dirtyring::StreamReader r(*l.rx);
                    r.header(kRegionPages, 1);
                    for (;;) {
                        const dirtyring::Record& rec = r.next();
                        if (rec.type == dirtyring::RecordType::End) break;
                        if (rec.type == dirtyring::RecordType::Page) ++l.received;
                    }
                },
                [&l] { l.rx->shutdown(); });
            workers.emplace_back(
                [&l, c, channels, memory] {
                    dirtyring::StreamWriter w(*l.tx);
                    w.header(kRegionPages, 1, 0);
                    for (std::uint64_t i = c; i < kStreamPages; i += channels) {
                        const std::uint64_t page = i % kRegionPages;
                        w.page(page, memory + page * kStreamPageSize);
                    }
                    w.end(0);
                    w.flush();
                },
                [&l] { l.tx->shutdown(); });  // the reader sees the end and stops
        }
        for (Worker& w : workers) w.join();
    }
    const double s = seconds(Clock::now() - start);
    std::uint64_t received = 0, bytes = 0;
    for (const Lane& l : lanes) {
        received += l.received;
        bytes += l.tx->bytes_written();
    }
    if (received != kStreamPages)
        throw Error(EPROTO, "stream: " + std::to_string(received) + " pages arrived of " +
                                std::to_string(kStreamPages));
    // Each connection's header and End on top of the one stream's bytes.
    const std::uint64_t expected =
        kStreamBytes + (channels - 1) * (sizeof(dirtyring::StreamHeader) + 16);
    if (bytes != expected)
        throw Error(EPROTO, "stream: " + std::to_string(bytes) + " bytes sent, expected " +
                                std::to_string(expected));
    return {bytes, s};
}

double raw_copy(Transport transport, const std::byte* memory, std::uint64_t bytes) {
    auto [a, b] = socket_pair(transport);
    const std::uint64_t region = kRegionPages * kStreamPageSize;
    const auto start = Clock::now();
    Worker sender(
        [&, fd = a.get()] {
            std::uint64_t sent = 0;
            while (sent < bytes) {
                const std::uint64_t at = sent % region;
                const std::size_t n = static_cast<std::size_t>(
                    std::min({std::uint64_t{kChannelBuffer}, bytes - sent, region - at}));
                const ssize_t k = ::send(fd, memory + at, n, MSG_NOSIGNAL);
                if (k < 0 && errno == EINTR) continue;
                if (k < 0) dirtyring::throw_errno("send");
                sent += static_cast<std::uint64_t>(k);
            }
        },
        [&] { ::shutdown(a.get(), SHUT_RDWR); });
    std::vector<std::byte> buffer(kChannelBuffer);
    std::uint64_t got = 0;
    while (got < bytes) {
        const ssize_t k = ::recv(b.get(), buffer.data(), buffer.size(), 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        got += static_cast<std::uint64_t>(k);
    }
    sender.join();
    if (got != bytes) throw Error(EPROTO, "raw copy: connection ended early");
    return seconds(Clock::now() - start);
}

void BM_StreamThroughput(benchmark::State& state, Transport transport, unsigned channels) {
    try {
        const dirtyring::Mapping region = source_region();
        const auto* memory = region.as<const std::byte>();
        double stream_s = 0, raw_s = 0;
        std::uint64_t bytes = 0;
        std::vector<double> ratios;
        bool stream_first = false;
        for (auto _ : state) {
            // Pairs in alternating order, and the median of their ratios: on a
            // shared 2-core host a neighbour's load shifts both sides of a
            // pair alike far more often than it splits one.
            stream_first = !stream_first;
            double s = 0, r = 0;
            std::uint64_t n = 0;
            if (stream_first) std::tie(n, s) = stream_copy(transport, memory, channels);
            r = raw_copy(transport, memory, kStreamBytes);
            if (!stream_first) std::tie(n, s) = stream_copy(transport, memory, channels);
            stream_s += s;
            raw_s += r;
            bytes += n;
            ratios.push_back(r / s);  // same bytes: throughput ratio = time ratio inverted
        }
        state.counters["stream_MiB_per_s"] = static_cast<double>(bytes) / stream_s / (1 << 20);
        state.counters["raw_MiB_per_s"] = static_cast<double>(bytes) / raw_s / (1 << 20);
        state.counters["stream_over_raw"] = median(ratios);
        state.counters["stream_over_raw_min"] = *std::min_element(ratios.begin(), ratios.end());
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}
// The raw copy is one connection in every case: page channels are worth
// their connections where two streams move more than one raw copy.
BENCHMARK_CAPTURE(BM_StreamThroughput, unix, Transport::Unix, 1)
    ->Iterations(9)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_StreamThroughput, unix_2_channels, Transport::Unix, 2)
    ->Iterations(9)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_StreamThroughput, tcp, Transport::Tcp, 1)
    ->Iterations(9)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_StreamThroughput, tcp_2_channels, Transport::Tcp, 2)
    ->Iterations(9)
    ->Unit(benchmark::kMillisecond);

// ---- in-process migrations of a KVM guest ---------------------------------

// A guest that times what the switch-over waits for: the source's stop()
// and the destination's start() and restore_vcpu().
class TimedGuest : public dirtyring::MigratableGuest {
public:
    explicit TimedGuest(std::unique_ptr<KvmWorkload> inner) : inner_(std::move(inner)) {}
    std::uint32_t kind() const noexcept override { return inner_->kind(); }
    std::byte* memory() noexcept override { return inner_->memory(); }
    std::uint64_t pages() const noexcept override { return inner_->pages(); }
    unsigned vcpus() const noexcept override { return inner_->vcpus(); }
    void start() override {
        timed([&] { inner_->start(); });
    }
    void stop() override {
        timed([&] { inner_->stop(); });
    }
    std::exception_ptr failure() const override { return inner_->failure(); }
    std::uint64_t harvest_into(std::vector<std::uint64_t>& m) override {
        return inner_->harvest_into(m);
    }
    std::vector<std::byte> save_vcpu(unsigned v) override { return inner_->save_vcpu(v); }
    void restore_vcpu(unsigned v, std::span<const std::byte> state) override {
        timed([&] { inner_->restore_vcpu(v, state); });
    }
    std::uint64_t progress(unsigned v) override { return inner_->progress(v); }
    void set_vcpu_thread_hook(VcpuThreadHook hook) override {
        inner_->set_vcpu_thread_hook(std::move(hook));
    }

    KvmWorkload& kvm() { return *inner_; }
    // Summed over every timed call since the last take().
    std::chrono::nanoseconds take() { return std::exchange(spent_, {}); }
    void add(std::chrono::nanoseconds d) { spent_ += d; }

private:
    template <typename F>
    void timed(F f) {
        const auto t0 = Clock::now();
        f();
        spent_ += Clock::now() - t0;
    }

    std::unique_ptr<KvmWorkload> inner_;
    std::chrono::nanoseconds spent_{0};
};

struct Migration {
    dirtyring::SourceReport source;
    dirtyring::DestinationReport destination;
    std::vector<dirtyring::RoundProgress> rounds;
    std::chrono::nanoseconds destination_start{0};  // KVM guest built, restored, started
};

// Migrates `guest` (running) over a fresh socketpair to a KVM guest in this
// process, with a second one as the preempt channel if `preempt`; the
// destination guest is stopped again before returning.
Migration migrate(dirtyring::MigratableGuest& guest, const WorkloadConfig& config,
                  const dirtyring::MigrationOptions& options, bool preempt = false) {
    auto [a, b] = socket_pair(Transport::Unix);
    Channel src(std::move(a));
    Channel dst(std::move(b));
    auto [pa, pb] = socket_pair(Transport::Unix);
    Channel preempt_src(std::move(pa));
    Channel preempt_dst(std::move(pb));
    TimedGuest* arrived = nullptr;
    dirtyring::MigrationDestination destination(dst, [&](std::uint32_t, std::byte* memory,
                                                         std::uint64_t pages, unsigned vcpus) {
        const auto t0 = Clock::now();
        auto g =
            std::make_unique<TimedGuest>(KvmWorkload::destination(config, memory, pages, vcpus));
        g->add(Clock::now() - t0);
        arrived = g.get();
        return std::unique_ptr<dirtyring::MigratableGuest>(std::move(g));
    });
    if (preempt) destination.use_preempt_channel(preempt_dst);
    auto received = std::async(std::launch::async, [&] { return destination.run(); });
    Migration m;
    dirtyring::MigrationSource source(
        guest, src, options, [&](const dirtyring::RoundProgress& p) { m.rounds.push_back(p); });
    if (preempt) source.use_preempt_channel(preempt_src);
    std::exception_ptr failure;
    try {
        m.source = source.run();
    } catch (...) {
        failure = std::current_exception();
    }
    // run() shut the channel down whatever happened: the destination ends.
    try {
        m.destination = received.get();
    } catch (...) {
        if (!failure) failure = std::current_exception();
    }
    if (failure) std::rethrow_exception(failure);
    if (arrived) m.destination_start = arrived->take();
    return m;
}

bool skip_without_kvm(benchmark::State& state) {
    if (auto why = dirtyring::KvmGuest::unavailable_reason()) {
        state.SkipWithError(("KVM is unusable: " + *why).c_str());
        return true;
    }
    return false;
}

std::unique_ptr<TimedGuest> booted(const WorkloadConfig& config) {
    auto guest = std::make_unique<TimedGuest>(KvmWorkload::source(config));
    guest->start();
    if (!guest->kvm().wait_first_pass(10s)) {
        if (auto e = guest->failure()) std::rethrow_exception(e);
        throw Error(ETIMEDOUT, "the guest did not write its working set once within 10 s");
    }
    guest->take();
    return guest;
}

// ---- 2. expected against measured downtime --------------------------------

void BM_Downtime(benchmark::State& state) {
    if (skip_without_kvm(state)) return;
    const WorkloadConfig config{.vcpus = 2,
                                .memory_bytes = 32 << 20,
                                .working_set_pages = 2048,
                                .dirty_rate = static_cast<std::uint64_t>(state.range(0))};
    // Round 1 (the 8 MiB working set) takes ~125 ms at 64 MiB/s; a limit
    // this high switches over after it at every rate measured here.
    const dirtyring::MigrationOptions options{.bandwidth_limit = 64 << 20,
                                              .downtime_limit = 1000ms};
    double expected_ms = 0, measured_ms = 0, dirty_rate = 0, rounds = 0, pending = 0;
    double digest_ms = 0, stop_ms = 0, start_ms = 0;
    try {
        for (auto _ : state) {
            auto guest = booted(config);
            const Migration m = migrate(*guest, config, options);
            stop_ms += ms(guest->take());
            start_ms += ms(m.destination_start);
            expected_ms += ms(m.source.expected_downtime);
            measured_ms += ms(m.source.downtime);
            dirty_rate += m.rounds.back().dirty_rate;
            pending += static_cast<double>(m.rounds.back().pending_bytes);
            rounds += m.source.rounds;
            // One of the two whole-memory digests of the stop (the source
            // and the destination each take one): a cost the estimate omits.
            const auto t0 = Clock::now();
            benchmark::DoNotOptimize(
                dirtyring::MemoryDigest::of(guest->memory(), guest->pages()).digest());
            digest_ms += ms(Clock::now() - t0);
        }
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
        return;
    }
    const auto n = static_cast<double>(state.iterations());
    state.counters["dirty_pages_per_s"] = dirty_rate / n;
    state.counters["rounds"] = rounds / n;
    state.counters["pending_MiB"] = pending / n / (1 << 20);
    state.counters["expected_ms"] = expected_ms / n;
    state.counters["measured_ms"] = measured_ms / n;
    state.counters["measured_over_expected"] = measured_ms / expected_ms;
    state.counters["digest_ms"] = digest_ms / n;
    state.counters["stop_ms"] = stop_ms / n;
    state.counters["dest_start_ms"] = start_ms / n;
}
BENCHMARK(BM_Downtime)
    ->Arg(2000)
    ->Arg(10000)
    ->Arg(40000)
    ->Arg(100000)
    ->Iterations(3)
    ->Unit(benchmark::kMillisecond);

// ---- 3. postcopy page request latency -------------------------------------

// A member of the destination's blocktime JSON (flat numbers only).
double json_number(const std::string& json, const std::string& key) {
    const auto at = json.find("\"" + key + "\": ");
    if (at == std::string::npos) throw Error(EPROTO, "blocktime report without " + key);
    return std::strtod(json.c_str() + at + key.size() + 4, nullptr);
}

// Request -> Page round trips over a socketpair, through the stream code:
// the wire part of a postcopy request.  Median ns.
double request_round_trip_ns() {
    auto [a, b] = socket_pair(Transport::Unix);
    Channel near(std::move(a));
    Channel far(std::move(b));
    constexpr int kTrips = 2000;
    std::vector<std::byte> page(kStreamPageSize, std::byte{0x5a});
    Worker server(
        [&] {
            dirtyring::StreamReader r(far, 1);
            dirtyring::StreamWriter w(far);
            for (int i = 0; i < kTrips; ++i) {
                const auto& rec = r.next();
                w.page(rec.index, page.data());
                w.flush();
            }
        },
        [&] { far.shutdown(); });
    dirtyring::StreamWriter w(near);
    dirtyring::StreamReader r(near, 1);
    std::vector<double> ns;
    ns.reserve(kTrips);
    try {
        for (int i = 0; i < kTrips; ++i) {
            const auto t0 = Clock::now();
            w.request(0);
            if (r.next().type != dirtyring::RecordType::Page)
                throw Error(EPROTO, "round trip: no page came back");
            ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count());
        }
    } catch (...) {
        near.shutdown();
        server.join();
        throw;
    }
    server.join();
    return median(ns);
}

// A thread's touch of a missing page, resolved by a bare UFFDIO_COPY loop
// on another thread: the kernel part of a postcopy request.  Median ns.
double uffd_fault_ns() {
    constexpr std::size_t kPages = 2048;
    const auto page_size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    auto memory = dirtyring::Mapping::anonymous(kPages * page_size, "bench uffd memory");
    dirtyring::Userfaultfd uffd;
    uffd.register_missing(memory.get(), memory.size());
    UniqueFd stop(::eventfd(0, EFD_CLOEXEC));
    if (!stop) dirtyring::throw_errno("eventfd");
    std::vector<std::uint8_t> page(page_size, 1);
    Worker server(
        [&] {
            std::array<dirtyring::UserFault, 64> faults{};
            for (;;) {
                std::array<pollfd, 2> fds{pollfd{stop.get(), POLLIN, 0},
                                          pollfd{uffd.fd(), POLLIN, 0}};
                if (::poll(fds.data(), 2, -1) < 0) continue;
                if (fds[0].revents) return;
                const std::size_t n = uffd.read_faults(faults);
                for (std::size_t i = 0; i < n; ++i)
                    uffd.copy(
                        reinterpret_cast<void*>(faults[i].address & ~std::uint64_t{page_size - 1}),
                        page.data(), page_size);
            }
        },
        [] {});
    std::vector<double> ns;
    ns.reserve(kPages);
    auto* base = memory.as<std::uint8_t>();
    for (std::size_t p = 0; p < kPages; ++p) {
        const auto t0 = Clock::now();
        benchmark::DoNotOptimize(*reinterpret_cast<volatile std::uint8_t*>(base + p * page_size));
        ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count());
    }
    const std::uint64_t one = 1;
    if (::write(stop.get(), &one, sizeof(one)) < 0) dirtyring::throw_errno("write eventfd");
    server.join();
    return median(ns);
}

void BM_PostcopyLatency(benchmark::State& state) {
    if (skip_without_kvm(state)) return;
    // Each vCPU's 512 pages lie 7 pages apart over 14 MiB: every touch is a
    // page of its own, far ahead of the background stream's cursor.
    const WorkloadConfig config{.vcpus = 2,
                                .memory_bytes = 64 << 20,
                                .working_set_pages = 1024,
                                .dirty_rate = 20000,
                                .stride = 7};
    // The working set needs ~1 s at this limit: vCPUs outrun the background
    // stream and must request most pages.
    const auto bandwidth = static_cast<std::uint64_t>(state.range(0)) << 20;  // 0: unlimited
    const bool preempt = state.range(1) != 0;
    const dirtyring::MigrationOptions options{.bandwidth_limit = bandwidth, .postcopy = true};
    double latency_ns = 0, blocktime_ms = 0, faults = 0, requests = 0, answered = 0;
    double stale = 0, postcopy_ms = 0;
    try {
        for (auto _ : state) {
            auto guest = booted(config);
            const Migration m = migrate(*guest, config, options, preempt);
            const std::string& j = m.destination.blocktime_json;
            latency_ns += json_number(j, "postcopy-latency");
            blocktime_ms += json_number(j, "postcopy-blocktime");
            faults += static_cast<double>(m.destination.postcopy_faults);
            requests += static_cast<double>(m.destination.postcopy_requests);
            answered += static_cast<double>(m.source.postcopy_requests);
            stale += static_cast<double>(m.rounds.back().dirty_pages);
            postcopy_ms += ms(m.source.total_time) - ms(m.rounds.back().elapsed);
        }
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
        return;
    }
    const double rtt = request_round_trip_ns();
    const double uffd = uffd_fault_ns();
    const auto n = static_cast<double>(state.iterations());
    state.counters["stale_pages"] = stale / n;
    state.counters["faults"] = faults / n;
    state.counters["requests"] = requests / n;
    state.counters["requests_answered"] = answered / n;
    state.counters["postcopy_ms"] = postcopy_ms / n;
    state.counters["blocktime_ms"] = blocktime_ms / n;
    state.counters["latency_us"] = latency_ns / n / 1e3;
    state.counters["floor_rtt_us"] = rtt / 1e3;
    state.counters["floor_uffd_us"] = uffd / 1e3;
    state.counters["latency_over_floor"] = latency_ns / n / (rtt + uffd);
}
// MiB/s of bandwidth limit (0: none), and whether requests have the preempt
// channel: without it they queue behind the background stream.
BENCHMARK(BM_PostcopyLatency)
    ->ArgNames({"MiBps", "preempt"})
    ->ArgsProduct({{4, 64, 0}, {0, 1}})
    ->Iterations(3)
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
