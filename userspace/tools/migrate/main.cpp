// SPDX-License-Identifier: LGPL-2.1-or-later
// dirtyring-migrate: live-migrates a running guest between two processes.
//
//   dirtyring-migrate [OPTIONS]                 source and destination, forked
//   dirtyring-migrate source --connect ADDR [OPTIONS]
//   dirtyring-migrate dest --listen ADDR [OPTIONS]
//
// The source runs the guest and a migration thread (MigrationSource); its
// main thread only waits for the migration or for SIGINT/SIGTERM, which
// cancel it in precopy (in postcopy a second one aborts it).  The
// destination (MigrationDestination) receives, verifies and starts the
// guest, lets it run, and shows that it continued.  Connections join the
// sides in this order: the migration stream, the preempt channel that
// carries postcopy page requests and their answers, then --channels page
// channels for the precopy's pages.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "dirtyring/base/error.hpp"
#include "dirtyring/migration/channel.hpp"
#include "dirtyring/migration/migration_destination.hpp"
#include "dirtyring/migration/migration_source.hpp"
#include "dirtyring/migration/recovery.hpp"
#include "kvm_workload.hpp"
#include "module_workload.hpp"
#include "testing/kvm_guest.hpp"

namespace {

using dirtyring::Channel;
using dirtyring::ChannelAddress;
using dirtyring::Error;
using dirtyring::Listener;
using dirtyring::migrate::KvmWorkload;
using dirtyring::migrate::ModuleWorkload;
using dirtyring::migrate::WorkloadConfig;
using json = nlohmann::json;
using namespace std::chrono_literals;

// One exit code per kind of failure, as the usage text lists them.
constexpr int kExitFailed = 1;     // migration failed; the guest runs on the source
constexpr int kExitUsage = 2;      // bad option, address in use, no backend
constexpr int kExitGuestLost = 3;  // failed or aborted in postcopy: neither side has the guest
constexpr int kExitCancelled = 130;
constexpr auto kConnectTimeout = 30s;
constexpr auto kAcceptTimeout = 60s;
constexpr auto kPreemptAcceptTimeout = 10s;  // the source connects it right after the stream

// The JSON report's stream under --json -: the original stdout, while
// every human line goes to stderr.
int json_stdout_fd = STDOUT_FILENO;

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Args {
    std::string mode = "run";  // run, source, dest
    std::string backend = "auto";
    std::string address;
    unsigned vcpus = 2;
    std::uint64_t memory_mib = 64;
    std::uint64_t working_set_mib = 16;
    std::optional<std::uint64_t> dirty_rate;  // pages/s; default per backend
    std::uint64_t bandwidth_mib = 128;
    std::uint64_t downtime_ms = 30;
    unsigned max_rounds = 30;
    bool postcopy = false;
    std::string json_path;
    std::uint64_t run_after_ms = 500;
    std::string json_internal;  // run mode: where the forked destination writes its report
    bool print_backend = false;
    std::string recover_address;           // where a broken postcopy reconnects; default: address
    std::uint64_t recover_timeout_s = 60;  // 0: no recovery
    unsigned channels = 0;                 // page channels; 0: pages on the main stream
};

const char* kUsage =
    "usage: dirtyring-migrate [source|dest] [options]\n"
    "  (no mode)            fork a destination and migrate to it\n"
    "  source               run the guest and migrate it to --connect ADDR\n"
    "  dest                 receive a guest on --listen ADDR and run it\n"
    "options:\n"
    "  --backend kvm|module|auto  what runs the source guest (default auto: kvm\n"
    "                       when /dev/kvm works)\n"
    "  --connect ADDR, --listen ADDR, --address ADDR\n"
    "                       unix:PATH or tcp:HOST:PORT (default for a forked run:\n"
    "                       a unix socket in /tmp)\n"
    "  --vcpus N            vCPUs (1..64, default 2)\n"
    "  --memory MIB         guest memory (default 64)\n"
    "  --working-set MIB    memory the guest keeps rewriting (default 16)\n"
    "  --dirty-rate N       page writes per second, all vCPUs (0: flat out; default 20000\n"
    "                       with kvm, 4000 with module: threads, often under emulation)\n"
    "  --bandwidth MIB      bandwidth limit in MiB/s (default 128; 0: none)\n"
    "  --downtime-limit MS  switch over when the expected downtime is under it (default 30)\n"
    "  --max-rounds N       precopy rounds before postcopy (default 30)\n"
    "  --postcopy           switch to postcopy after the first round\n"
    "  --channels N         send the precopy's pages over N connections of their own,\n"
    "                       in parallel (QEMU's multifd channels; 0..64, default 0:\n"
    "                       on the main stream); both sides must say the same\n"
    "  --run-after MS       how long the destination runs the guest before it reports\n"
    "                       (default 500)\n"
    "  --json FILE          write the final report to FILE as QEMU's query-migrate\n"
    "                       object, this tool's own members under x-dirtyring ('-':\n"
    "                       stdout, and every other line to stderr)\n"
    "  --recover ADDR       after a connection broke in postcopy, the source reconnects\n"
    "                       to ADDR and the destination listens on it (default: the\n"
    "                       migration's own address)\n"
    "  --recover-timeout S  how long a postcopy broken that way stays paused, waiting\n"
    "                       for the other side, before the migration fails (default 60;\n"
    "                       0: no recovery, a break loses the guest)\n"
    "  --print-backend      print the backend --backend chooses here, and exit\n"
    "  -h, --help           this text;  --version  the version\n"
    "signals (source):\n"
    "  SIGINT, SIGTERM      in precopy, cancel: the guest keeps running on the source;\n"
    "                       in postcopy they cannot (the guest runs on the destination\n"
    "                       with part of its memory): the first is refused, a second\n"
    "                       aborts both sides and the guest is lost\n"
    "exit status:\n"
    "  0 migrated (dest: received, verified and ran the guest)\n"
    "  1 failed; the guest runs on in the source\n"
    "  2 usage: a bad option, an address in use, no backend\n"
    "  3 failed or aborted in postcopy: the guest is lost\n"
    "  130 cancelled; the guest runs on in the source\n";

struct HelpRequest {};
struct VersionRequest {};

std::uint64_t number(const std::string& option, const std::string& text, std::uint64_t min,
                     std::uint64_t max) {
    std::uint64_t value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size())
        throw UsageError(option + ": '" + text + "' is not a number");
    if (value < min || value > max)
        throw UsageError(option + ": " + text + " is out of range (" + std::to_string(min) + ".." +
                         std::to_string(max) + ")");
    return value;
}

Args parse(int argc, char** argv) {
    Args a;
    int i = 1;
    if (i < argc && (std::strcmp(argv[i], "source") == 0 || std::strcmp(argv[i], "dest") == 0))
        a.mode = argv[i++];
    for (; i < argc; ++i) {
        const std::string opt = argv[i];
        if (opt == "--postcopy") {
            a.postcopy = true;
            continue;
        }
        if (opt == "-h" || opt == "--help") throw HelpRequest{};
        if (opt == "--version") throw VersionRequest{};
        if (opt == "--print-backend") {
            a.print_backend = true;
            continue;
        }
        if (i + 1 >= argc) throw UsageError(opt + ": needs a value, or is unknown");
        const std::string v = argv[++i];
        if (opt == "--backend") {
            if (v != "kvm" && v != "module" && v != "auto")
                throw UsageError("--backend: unknown backend '" + v + "' (kvm, module, auto)");
            a.backend = v;
        } else if (opt == "--connect" || opt == "--listen" || opt == "--address") {
            a.address = v;
        } else if (opt == "--vcpus") {
            a.vcpus = static_cast<unsigned>(number(opt, v, 1, dirtyring::KvmGuest::kMaxVcpus));
        } else if (opt == "--memory") {
            a.memory_mib = number(opt, v, 1, 4096);
        } else if (opt == "--working-set") {
            a.working_set_mib = number(opt, v, 1, 4096);
        } else if (opt == "--dirty-rate") {
            a.dirty_rate = number(opt, v, 0, 100'000'000);
        } else if (opt == "--bandwidth") {
            a.bandwidth_mib = number(opt, v, 0, 1'000'000);
        } else if (opt == "--downtime-limit") {
            a.downtime_ms = number(opt, v, 1, 3'600'000);
        } else if (opt == "--max-rounds") {
            a.max_rounds = static_cast<unsigned>(number(opt, v, 1, 10'000));
        } else if (opt == "--run-after") {
            a.run_after_ms = number(opt, v, 0, 3'600'000);
        } else if (opt == "--json") {
            a.json_path = v;
        } else if (opt == "--recover") {
            a.recover_address = v;
        } else if (opt == "--channels") {
            a.channels = static_cast<unsigned>(number(opt, v, 0, 64));
        } else if (opt == "--recover-timeout") {
            a.recover_timeout_s = number(opt, v, 0, 86'400);
        } else if (opt == "--json-internal") {
            a.json_internal = v;
        } else {
            throw UsageError("unknown option " + opt);
        }
    }
    if (a.working_set_mib >= a.memory_mib)
        throw UsageError("--working-set " + std::to_string(a.working_set_mib) +
                         " MiB must be less than --memory " + std::to_string(a.memory_mib) +
                         " MiB");
    if (a.mode != "run" && a.address.empty())
        throw UsageError(a.mode + " needs " + (a.mode == "source" ? "--connect" : "--listen") +
                         " ADDR");
    for (const std::string* address : {&a.address, &a.recover_address}) {
        if (address->empty()) continue;
        try {
            ChannelAddress::parse(*address);
        } catch (const Error& e) {
            throw UsageError(e.what());
        }
    }
    return a;
}

WorkloadConfig workload_config(const Args& a, const std::string& backend) {
    WorkloadConfig c;
    c.vcpus = a.vcpus;
    c.memory_bytes = a.memory_mib << 20;
    c.working_set_pages = (a.working_set_mib << 20) / dirtyring::KvmGuest::kPageSize;
    c.dirty_rate = a.dirty_rate.value_or(backend == "module" ? 4000 : 20000);
    return c;
}

// The backend the source guest runs on: KVM where /dev/kvm works, else the
// module where it is loaded.
std::string choose_backend(const Args& a) {
    const auto kvm_missing = dirtyring::KvmGuest::unavailable_reason();
    const bool module_loaded = ::access(dirtyring::Device::kDefaultPath, F_OK) == 0;
    if (a.backend == "kvm" && kvm_missing) throw Error(ENODEV, "--backend kvm: " + *kvm_missing);
    if (a.backend == "module" && !module_loaded)
        throw Error(ENODEV, std::string("--backend module: ") + dirtyring::Device::kDefaultPath +
                                " is missing (is dirtyring.ko loaded?)");
    if (a.backend == "auto" && kvm_missing && !module_loaded)
        throw Error(ENODEV, "no backend: KVM is unusable (" + *kvm_missing + ") and " +
                                dirtyring::Device::kDefaultPath + " is missing");
    if (a.backend == "auto") return kvm_missing ? "module" : "kvm";
    return a.backend;
}

// The running source guest of either backend.
struct SourceGuest {
    std::unique_ptr<dirtyring::MigratableGuest> guest;
    std::function<bool(std::chrono::milliseconds)> wait_first_pass;
    // The module's: entries per ring, vCPU rings then the per-VM ring.
    std::function<std::vector<std::uint64_t>()> ring_pages;
};

template <typename Workload>
SourceGuest adopt_source(std::unique_ptr<Workload> guest) {
    auto* raw = guest.get();
    return {std::move(guest),
            [raw](std::chrono::milliseconds t) { return raw->wait_first_pass(t); },
            {}};
}

SourceGuest make_source_guest(const std::string& backend, const WorkloadConfig& config) {
    if (backend == "kvm") return adopt_source(KvmWorkload::source(config));
    auto module = ModuleWorkload::source(config);
    auto* raw = module.get();
    SourceGuest g = adopt_source(std::move(module));
    g.ring_pages = [raw] { return raw->ring_pages(); };
    return g;
}

std::string mib(double bytes) {
    std::ostringstream s;
    s.precision(1);
    s << std::fixed << bytes / (1 << 20) << " MiB";
    return s.str();
}

double ms(std::chrono::nanoseconds ns) {
    return static_cast<double>(ns.count()) / 1e6;
}

std::int64_t whole_ms(std::chrono::nanoseconds ns) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(ns).count();
}

// query-migrate of a migration that did not complete: QEMU's status and
// error-desc, and this tool's word on the guest.
json failed_report(const char* status, const std::string& what, json extras) {
    return {{"status", status}, {"error-desc", what}, {"x-dirtyring", std::move(extras)}};
}

void write_json(const std::string& path, const json& j) {
    if (path.empty()) return;
    if (path == "-") {
        std::cout.flush();
        const std::string text = j.dump(2) + "\n";
        for (std::size_t done = 0; done < text.size();) {
            const ssize_t n = ::write(json_stdout_fd, text.data() + done, text.size() - done);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) dirtyring::throw_errno("writing the JSON report to stdout");
            done += static_cast<std::size_t>(n);
        }
        return;
    }
    std::ofstream out(path);
    out << j.dump(2) << "\n";
    if (!out) throw Error(EIO, "cannot write the JSON report to " + path);
}

// On a terminal, the line that updates in place: erased before any other
// line is printed.
constexpr const char* kEraseLine = "\r\033[K";

// The migration as it goes: round, share of the round, page rate, what the
// round still sends, the last estimate of the downtime, elapsed and the
// round's ETA; in postcopy, pages sent.
// A reconnector that says what a postcopy recovery does, on its side's
// lines (`erase` clears a live progress line first).
template <typename Base>
class Announced : public Base {
public:
    template <typename... BaseArgs>
    Announced(const char* side, std::string waiting, std::uint64_t timeout_s, const char* erase,
              BaseArgs&&... base)
        : Base(std::forward<BaseArgs>(base)...),
          side_(side),
          waiting_(std::move(waiting)),
          timeout_s_(timeout_s),
          erase_(erase) {}
    void paused(const Error& why) override {
        std::printf("%s%s: postcopy paused: %s; %s for up to %llu s\n", erase_, side_, why.what(),
                    waiting_.c_str(), static_cast<unsigned long long>(timeout_s_));
        std::fflush(stdout);
    }
    void refused(const Error& why) override {
        std::printf("%s%s: postcopy still paused: %s\n", erase_, side_, why.what());
        std::fflush(stdout);
    }
    void resumed() override {
        std::printf("%s%s: postcopy resumed on new connections\n", erase_, side_);
        std::fflush(stdout);
    }

private:
    const char* side_;
    std::string waiting_;
    std::uint64_t timeout_s_;
    const char* erase_;
};

std::string live_line(const dirtyring::LiveProgress& l, double pages_per_s) {
    char line[256];
    const double elapsed = static_cast<double>(l.elapsed.count()) / 1e9;
    if (l.postcopy) {
        std::snprintf(line, sizeof(line), "postcopy: %llu pages sent, %.1f MiB/s, elapsed %.1f s",
                      static_cast<unsigned long long>(l.pages_sent),
                      pages_per_s * dirtyring::KvmGuest::kPageSize / (1 << 20), elapsed);
        return line;
    }
    const std::uint64_t left = l.round_pages - l.round_pages_sent;
    const double percent = l.round_pages ? 100.0 * static_cast<double>(l.round_pages_sent) /
                                               static_cast<double>(l.round_pages)
                                         : 100.0;
    char eta[32] = "?";
    if (pages_per_s > 0)
        std::snprintf(eta, sizeof(eta), "%.1f s", static_cast<double>(left) / pages_per_s);
    char downtime[32] = "-";  // no estimate before a round ended
    if (l.round > 1) std::snprintf(downtime, sizeof(downtime), "%.1f ms", ms(l.expected_downtime));
    std::snprintf(line, sizeof(line),
                  "round %u: %3.0f%% of %llu pages, %.1f MiB/s, remaining %s, expected downtime "
                  "%s, elapsed %.1f s, ETA %s",
                  l.round, percent, static_cast<unsigned long long>(l.round_pages),
                  pages_per_s * dirtyring::KvmGuest::kPageSize / (1 << 20),
                  mib(static_cast<double>(left * dirtyring::KvmGuest::kPageSize)).c_str(), downtime,
                  elapsed, eta);
    return line;
}

// Blocks SIGINT and SIGTERM in every thread created from here on: the main
// thread takes them with sigtimedwait().
sigset_t block_cancel_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    return set;
}

int source_main(const Args& a, std::optional<Listener> own_listener, json* report_out = nullptr) {
    const sigset_t signals = block_cancel_signals();
    const std::string backend = choose_backend(a);
    auto [guest, wait_first_pass, ring_pages] =
        make_source_guest(backend, workload_config(a, backend));
    guest->start();
    if (!wait_first_pass(10s)) {
        if (auto e = guest->failure()) std::rethrow_exception(e);
        throw Error(ETIMEDOUT, "the guest did not write its working set once within 10 s");
    }
    const auto setup_start = std::chrono::steady_clock::now();
    const ChannelAddress address = ChannelAddress::parse(a.address);
    std::cout << "source: connecting to " << a.address << " (for up to "
              << std::chrono::seconds(kConnectTimeout).count() << " s)" << std::endl;
    Channel channel = Channel::connect(address, kConnectTimeout);
    Channel preempt = Channel::connect(address, kConnectTimeout);
    std::deque<Channel> page_channels;  // stable addresses
    std::vector<Channel*> page_channel_ptrs;
    for (unsigned i = 0; i < a.channels; ++i)
        page_channel_ptrs.push_back(
            &page_channels.emplace_back(Channel::connect(address, kConnectTimeout)));
    // Connected: this process's copy of the forked destination's socket
    // goes; the file stays, for a recovery to reconnect to.
    if (own_listener) own_listener->disown();
    own_listener.reset();

    dirtyring::MigrationOptions options;
    options.bandwidth_limit = a.bandwidth_mib << 20;
    options.downtime_limit = std::chrono::milliseconds(a.downtime_ms);
    options.max_rounds = a.max_rounds;
    options.postcopy = a.postcopy;
    json rounds = json::array();
    std::cout << "source: " << backend << " guest, " << a.vcpus << " vCPUs, "
              << mib(static_cast<double>(a.memory_mib << 20)) << ", rewriting "
              << mib(static_cast<double>(a.working_set_mib << 20)) << " at "
              << workload_config(a, backend).dirty_rate << " pages/s; migrating to " << a.address
              << std::endl;
    const bool tty = ::isatty(STDOUT_FILENO) == 1;
    dirtyring::MigrationSource source(
        *guest, channel, options, [&](const dirtyring::RoundProgress& p) {
            // One call, so that the main thread's live line never lands
            // between the erase and the line.
            std::printf(
                "%sround %2u: sent %6llu pages, dirtied %6llu (%7.0f pages/s), remaining %s, "
                "bandwidth %s/s, expected downtime %.1f ms\n",
                tty ? kEraseLine : "", p.round, static_cast<unsigned long long>(p.pages_sent),
                static_cast<unsigned long long>(p.dirty_pages), p.dirty_rate,
                mib(static_cast<double>(p.pending_bytes)).c_str(), mib(p.bandwidth).c_str(),
                ms(p.expected_downtime));
            if (!options.postcopy && p.round >= options.max_rounds &&
                p.expected_downtime > options.downtime_limit)
                std::printf(
                    "source: precopy did not converge in %u rounds (expected downtime %.1f ms "
                    "over the %llu ms limit): switching to postcopy\n",
                    p.round, ms(p.expected_downtime),
                    static_cast<unsigned long long>(a.downtime_ms));
            std::fflush(stdout);
            rounds.push_back({{"round", p.round},
                              {"pages-sent", p.pages_sent},
                              {"dirty-pages", p.dirty_pages},
                              {"dirty-pages-rate", p.dirty_rate},
                              {"bandwidth-bytes-per-s", p.bandwidth},
                              {"remaining", p.pending_bytes},
                              {"expected-downtime-ms", ms(p.expected_downtime)},
                              {"elapsed-ms", ms(p.elapsed)}});
        });
    source.use_preempt_channel(preempt);
    source.use_page_channels(page_channel_ptrs);
    const std::string recover_at = a.recover_address.empty() ? a.address : a.recover_address;
    std::optional<Announced<dirtyring::ConnectingReconnector>> reconnector;
    if (a.recover_timeout_s) {
        reconnector.emplace("source", "reconnecting to " + recover_at, a.recover_timeout_s,
                            tty ? kEraseLine : "", ChannelAddress::parse(recover_at));
        source.enable_postcopy_recovery({&*reconnector, std::chrono::seconds(a.recover_timeout_s)});
    }

    const auto setup_time = std::chrono::steady_clock::now() - setup_start;
    std::optional<dirtyring::SourceReport> report;
    std::exception_ptr failure;
    std::atomic<bool> finished{false};
    std::jthread migration_thread([&] {
        try {
            report = source.run();
        } catch (...) {
            failure = std::current_exception();
        }
        finished.store(true);
    });
    bool cancelled = false, refused = false, aborted = false, announced = false;
    // On a terminal the live line every 250 ms, in place; otherwise a plain
    // one every 5 s, so that a long round is never silent.
    const auto period = tty ? std::chrono::milliseconds(250) : std::chrono::milliseconds(5000);
    auto last_line = std::chrono::steady_clock::now();
    std::uint64_t last_pages = 0;
    bool line_shown = false;
    while (!finished.load()) {
        const timespec tick{0, 50'000'000};
        const int sig = sigtimedwait(&signals, nullptr, &tick);
        if (const auto now = std::chrono::steady_clock::now(); now - last_line >= period) {
            const auto l = source.live();
            const double seconds = std::chrono::duration<double>(now - last_line).count();
            const double rate = static_cast<double>(l.pages_sent - last_pages) / seconds;
            if (l.round > 0) {
                std::printf("%s%s%s", tty ? kEraseLine : "source: ", live_line(l, rate).c_str(),
                            tty ? "" : "\n");
                std::fflush(stdout);
                line_shown = tty;
            }
            last_line = now;
            last_pages = l.pages_sent;
        }
        if (line_shown && (sig > 0 || (!announced && source.in_postcopy()))) {
            std::fputs(kEraseLine, stdout);
            line_shown = false;
        }
        if (!announced && source.in_postcopy()) {
            std::cout << "source: switched to postcopy: the guest runs on the destination, which "
                         "requests the pages it lacks on the preempt channel"
                      << std::endl;
            announced = true;
        }
        if (sig != SIGINT && sig != SIGTERM) continue;
        if (source.cancel()) {  // still in precopy: the cancel wins over a switch
            if (!cancelled) std::cout << "source: cancelling the migration" << std::endl;
            cancelled = true;
        } else if (!refused) {
            std::cout << "source: cannot cancel: in postcopy the guest runs on the destination, "
                         "which has only part of its memory; finishing the migration (signal "
                         "again to abort both sides, losing the guest)"
                      << std::endl;
            refused = true;
        } else if (!aborted) {
            std::cout << "source: aborting the postcopy migration: the guest is lost" << std::endl;
            aborted = true;
            source.abort();
        }
    }
    migration_thread.join();
    if (line_shown) std::fputs(kEraseLine, stdout);

    if (failure) {
        int code = kExitFailed;
        std::string what;
        try {
            std::rethrow_exception(failure);
        } catch (const std::exception& e) {
            what = e.what();
            if (const auto* err = dynamic_cast<const Error*>(&e); err && err->errnum() == ECANCELED)
                code = kExitCancelled;
        }
        std::cout << "source: migration failed: " << what << std::endl;
        if (source.in_postcopy()) {
            std::cout << "source: the guest is lost: it was running on the destination, which "
                         "had only part of its memory"
                      << std::endl;
            const json j =
                failed_report("failed", what,
                              {{"guest-running", false}, {"guest-lost", true}, {"rounds", rounds}});
            if (a.mode != "run") write_json(a.json_path, j);
            if (report_out) *report_out = j;
            return kExitGuestLost;
        }
        // Show that the guest runs on, unharmed.
        std::vector<std::uint64_t> before(guest->vcpus());
        for (unsigned i = 0; i < guest->vcpus(); ++i) before[i] = guest->progress(i);
        std::this_thread::sleep_for(200ms);
        bool running = guest->failure() == nullptr;
        for (unsigned i = 0; i < guest->vcpus(); ++i) running &= guest->progress(i) > before[i];
        std::cout << "source: the guest " << (running ? "keeps running" : "is NOT running")
                  << " on the source" << std::endl;
        const json j =
            failed_report(code == kExitCancelled ? "cancelled" : "failed", what,
                          {{"guest-running", running}, {"guest-lost", false}, {"rounds", rounds}});
        if (a.mode != "run") write_json(a.json_path, j);
        if (report_out) *report_out = j;
        return running ? code : kExitFailed;
    }

    const auto& r = *report;
    std::printf(
        "source: %s migration complete in %.1f ms after %u round(s)%s\n"
        "source: downtime %.1f ms (expected %.1f ms, limit %llu ms)\n"
        "source: sent %llu pages (%llu zero pages), %s\n",
        r.mode.c_str(), ms(r.total_time), r.rounds,
        r.mode == "precopy" && !r.converged ? " (did not converge: forced switch-over)" : "",
        ms(r.downtime), ms(r.expected_downtime), static_cast<unsigned long long>(a.downtime_ms),
        static_cast<unsigned long long>(r.pages_sent),
        static_cast<unsigned long long>(r.zero_pages),
        mib(static_cast<double>(r.bytes_sent)).c_str());
    if (r.mode == "postcopy")
        std::printf(
            "source: answered %llu page requests from the destination, %llu of them on the "
            "preempt channel\n",
            static_cast<unsigned long long>(r.postcopy_requests),
            static_cast<unsigned long long>(r.preempt_pages));
    if (r.postcopy_recoveries)
        std::printf(
            "source: postcopy resumed after %u broken connection(s), paused %.1f ms in all\n",
            r.postcopy_recoveries, ms(r.postcopy_paused));
    // Which rings the module's pages came through: each vCPU's, and the
    // per-VM ring for the I/O thread's writes.
    json rings = json::array();
    std::string rings_text;
    if (ring_pages) {
        const auto pages = ring_pages();
        for (std::size_t i = 0; i < pages.size(); ++i) {
            const bool vm_ring = i + 1 == pages.size();
            rings.push_back(
                {{"ring", vm_ring ? "vm" : "vcpu " + std::to_string(i)}, {"entries", pages[i]}});
            rings_text += (i ? ", " : "") +
                          (vm_ring ? std::string("per-VM ring (I/O thread) ")
                                   : "vCPU " + std::to_string(i) + " ring ") +
                          std::to_string(pages[i]);
        }
        std::printf("source: dirty pages logged by the module: %s\n", rings_text.c_str());
    }
    // One line to compare runs by (make demo puts them side by side).
    std::printf(
        "summary: %s guest, %s, %u round(s), downtime %.1f ms (expected %.1f ms), %llu pages "
        "sent%s%s\n",
        backend.c_str(), r.mode.c_str(), r.rounds, ms(r.downtime), ms(r.expected_downtime),
        static_cast<unsigned long long>(r.pages_sent),
        rings_text.empty() ? "" : "; rings: ", rings_text.c_str());
    std::fflush(stdout);
    // QEMU's query-migrate on the source, this tool's own under x-dirtyring.
    const double seconds = static_cast<double>(r.total_time.count()) / 1e9;
    const std::uint64_t normal = r.pages_sent - r.zero_pages;
    const json ram = {
        {"transferred", r.bytes_sent},
        {"remaining", 0},
        {"total", a.memory_mib << 20},
        {"duplicate", r.zero_pages},
        {"normal", normal},
        {"normal-bytes", normal * dirtyring::KvmGuest::kPageSize},
        {"page-size", dirtyring::KvmGuest::kPageSize},
        {"dirty-pages-rate", rounds.empty() ? 0
                                            : static_cast<std::uint64_t>(
                                                  rounds.back()["dirty-pages-rate"].get<double>())},
        {"mbps", seconds > 0 ? static_cast<double>(r.bytes_sent) * 8 / 1e6 / seconds : 0.0},
        {"dirty-sync-count", r.rounds},
        {"postcopy-requests", r.postcopy_requests},
        {"precopy-bytes", r.precopy_bytes},
        {"postcopy-bytes", r.postcopy_bytes}};
    json j = {{"status", "completed"},
              {"total-time", whole_ms(r.total_time)},
              {"downtime", whole_ms(r.downtime)},
              {"expected-downtime", whole_ms(r.expected_downtime)},
              {"setup-time", whole_ms(setup_time)},
              {"ram", ram},
              {"x-dirtyring",
               {{"mode", r.mode},
                {"converged", r.converged},
                {"downtime-ms", ms(r.downtime)},
                {"expected-downtime-ms", ms(r.expected_downtime)},
                {"downtime-limit", a.downtime_ms},
                {"preempt-pages", r.preempt_pages},
                {"page-channels", a.channels},
                {"postcopy-recoveries", r.postcopy_recoveries},
                {"postcopy-paused-ms", ms(r.postcopy_paused)},
                {"memory-digest", r.digest},
                {"backend", backend},
                {"ring-entries", rings},
                {"rounds", rounds}}}};
    // In a forked run, run_main() adds the destination's half once it ended.
    if (a.mode != "run") write_json(a.json_path, j);
    if (report_out) *report_out = j;
    return 0;
}

int dest_main(const Args& a, Listener listener) {
    std::cout << "destination: waiting for a source on " << a.address << " (for up to "
              << std::chrono::seconds(kAcceptTimeout).count() << " s)" << std::endl;
    Channel channel = listener.accept(kAcceptTimeout);
    const auto accept_preempt = [&] {
        try {
            return listener.accept(kPreemptAcceptTimeout);
        } catch (const Error& e) {
            if (e.errnum() != ETIMEDOUT) throw;
            throw Error(ETIMEDOUT, "the source opened no preempt channel within " +
                                       std::to_string(kPreemptAcceptTimeout.count()) +
                                       " s of its migration stream (is it an older "
                                       "dirtyring-migrate?)");
        }
    };
    Channel preempt = accept_preempt();
    std::deque<Channel> page_channels;
    std::vector<Channel*> page_channel_ptrs;
    for (unsigned i = 0; i < a.channels; ++i) {
        try {
            page_channel_ptrs.push_back(
                &page_channels.emplace_back(listener.accept(kPreemptAcceptTimeout)));
        } catch (const Error& e) {
            if (e.errnum() != ETIMEDOUT) throw;
            throw Error(ETIMEDOUT, "the source opened " + std::to_string(i) + " page channels of " +
                                       std::to_string(a.channels) + " within " +
                                       std::to_string(kPreemptAcceptTimeout.count()) +
                                       " s (--channels must be the same on both sides)");
        }
    }
    // A recovery comes in on the same listener, or on --recover's.
    std::optional<Listener> recover_listener;
    if (!a.recover_address.empty() && a.recover_address != a.address)
        recover_listener.emplace(ChannelAddress::parse(a.recover_address));
    const std::string recover_at = recover_listener ? a.recover_address : a.address;
    std::optional<Announced<dirtyring::AcceptingReconnector>> reconnector;
    if (a.recover_timeout_s)
        reconnector.emplace("destination", "waiting for the source on " + recover_at,
                            a.recover_timeout_s, "",
                            recover_listener ? *recover_listener : listener);
    // Counters of each vCPU at the switch-over and now, whatever the kind.
    std::function<std::pair<std::uint64_t, std::uint64_t>(unsigned)> counters;
    dirtyring::MigrationDestination destination(
        channel,
        [&](std::uint32_t kind, std::byte* memory, std::uint64_t pages,
            unsigned vcpus) -> std::unique_ptr<dirtyring::MigratableGuest> {
            const auto adopt = [&](auto guest) -> std::unique_ptr<dirtyring::MigratableGuest> {
                auto* raw = guest.get();
                counters = [raw](unsigned i) {
                    return std::pair<std::uint64_t, std::uint64_t>(raw->restored_value(i),
                                                                   raw->next_value(i));
                };
                return guest;
            };
            if (kind == dirtyring::migrate::kGuestKvm)
                return adopt(
                    KvmWorkload::destination(workload_config(a, "kvm"), memory, pages, vcpus));
            if (kind == dirtyring::migrate::kGuestThreads)
                return adopt(ModuleWorkload::destination(workload_config(a, "module"), memory,
                                                         pages, vcpus));
            throw Error(EPROTO, "the stream carries a guest of kind " + std::to_string(kind) +
                                    ", which this destination cannot run");
        });
    destination.use_preempt_channel(preempt);
    destination.use_page_channels(page_channel_ptrs);
    if (reconnector)
        destination.enable_postcopy_recovery(
            {&*reconnector, std::chrono::seconds(a.recover_timeout_s)});
    dirtyring::DestinationReport r;
    try {
        r = destination.run();
    } catch (const Error& e) {
        std::cout << "destination: migration failed: " << e.what()
                  << "; the received copy is discarded" << std::endl;
        const json j =
            failed_report("failed", e.what(), {{"guest-lost", destination.guest_started()}});
        write_json(a.json_internal.empty() ? a.json_path : a.json_internal, j);
        if (destination.guest_started()) {
            std::cout << "destination: the guest is lost: it ran here on part of its memory"
                      << std::endl;
            return kExitGuestLost;
        }
        return e.errnum() == ECANCELED ? kExitCancelled : kExitFailed;
    }
    std::printf(
        "destination: received %llu pages (%llu zero pages), %s, in %u round(s); memory "
        "digest %016llx verified\n",
        static_cast<unsigned long long>(r.pages_received),
        static_cast<unsigned long long>(r.zero_pages),
        mib(static_cast<double>(r.bytes_received)).c_str(), r.rounds,
        static_cast<unsigned long long>(r.digest));
    json blocktime;
    if (r.mode == "postcopy") {
        blocktime = json::parse(r.blocktime_json);
        std::printf(
            "destination: postcopy: %llu faults, %llu page requests; blocktime %llu ms "
            "(all vCPUs blocked), average fault latency %.1f us\n",
            static_cast<unsigned long long>(r.postcopy_faults),
            static_cast<unsigned long long>(r.postcopy_requests),
            blocktime["postcopy-blocktime"].get<unsigned long long>(),
            blocktime["postcopy-latency"].get<double>() / 1e3);
        const auto& per_vcpu = blocktime["postcopy-vcpu-blocktime"];
        for (std::size_t i = 0; i < per_vcpu.size(); ++i)
            std::printf("destination:   vCPU %zu blocked %llu ms over %llu faults\n", i,
                        per_vcpu[i].get<unsigned long long>(),
                        blocktime["postcopy-vcpu-faults"][i].get<unsigned long long>());
        const auto& buckets = blocktime["postcopy-latency-dist"];
        std::printf("destination:   fault latency histogram:");
        for (std::size_t b = 0; b < buckets.size(); ++b)
            if (buckets[b].get<std::uint64_t>())
                std::printf(" %llu-%lluus:%llu", 1ULL << b, 1ULL << (b + 1),
                            buckets[b].get<unsigned long long>());
        std::printf("\n");
        if (r.postcopy_recoveries)
            std::printf(
                "destination: postcopy resumed after %u broken connection(s), paused %.1f ms in "
                "all\n",
                r.postcopy_recoveries, ms(r.postcopy_paused));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(a.run_after_ms));
    auto& guest = destination.guest();
    guest.stop();
    if (auto e = guest.failure()) std::rethrow_exception(e);
    json vcpus = json::array();
    bool continued = true;
    for (unsigned i = 0; i < guest.vcpus(); ++i) {
        const auto [from, to] = counters(i);
        continued &= to > from;
        std::printf("destination: vCPU %u continues: counter %llu -> %llu (%llu writes here)\n", i,
                    static_cast<unsigned long long>(from), static_cast<unsigned long long>(to),
                    static_cast<unsigned long long>(to - from));
        vcpus.push_back({{"vcpu", i}, {"counter-at-switchover", from}, {"counter-now", to}});
    }
    std::fflush(stdout);
    // QEMU's query-migrate on the destination: the status and, in
    // postcopy, the blocktime members at the top level (as in 10.1).
    json j = {{"status", "completed"},
              {"total-time", whole_ms(r.total_time)},
              {"x-dirtyring",
               {{"mode", r.mode},
                {"rounds", r.rounds},
                {"pages-received", r.pages_received},
                {"zero-pages", r.zero_pages},
                {"bytes-received", r.bytes_received},
                {"preempt-pages", r.preempt_pages},
                {"page-channels", a.channels},
                {"postcopy-recoveries", r.postcopy_recoveries},
                {"postcopy-paused-ms", ms(r.postcopy_paused)},
                {"memory-digest", r.digest},
                {"memory-verified", true},
                {"guest-continued", continued},
                {"vcpus", vcpus}}}};
    if (r.mode == "postcopy") {
        j["x-dirtyring"]["postcopy-faults"] = r.postcopy_faults;
        j["x-dirtyring"]["postcopy-requests"] = r.postcopy_requests;
        for (const auto& [name, value] : blocktime.items()) j[name] = value;
    }
    write_json(a.json_internal.empty() ? a.json_path : a.json_internal, j);
    if (!continued) {
        std::cout << "destination: the guest did not run after the migration" << std::endl;
        return kExitFailed;
    }
    return 0;
}

int run_main(Args a) {
    if (a.address.empty())
        a.address = "unix:/tmp/dirtyring-migrate." + std::to_string(::getpid()) + ".sock";
    char json_tmp[] = "/tmp/dirtyring-migrate-dest.XXXXXX";
    const int tmp_fd = ::mkstemp(json_tmp);
    if (tmp_fd < 0) dirtyring::throw_errno("mkstemp");
    ::close(tmp_fd);
    a.json_internal = json_tmp;
    // Bound before the fork: an address in use is reported here, and the
    // source never connects before the destination listens.
    Listener listener(ChannelAddress::parse(a.address));
    std::cout.flush();
    const pid_t child = ::fork();
    if (child < 0) dirtyring::throw_errno("fork");
    if (child == 0) {
        // Ctrl-C reaches the whole process group: the source cancels and
        // tells this side, which must not die of it first.
        ::signal(SIGINT, SIG_IGN);
        int code = kExitFailed;
        try {
            code = dest_main(a, std::move(listener));
        } catch (const std::exception& e) {
            std::cout << "destination: " << e.what() << std::endl;
        }
        std::cout.flush();
        ::_exit(code);
    }
    int code = kExitFailed;
    json source_report;
    try {
        code = source_main(a, std::move(listener), &source_report);
    } catch (const std::exception& e) {
        std::cout << "source: " << e.what() << std::endl;
        source_report = failed_report("failed", e.what(), json::object());
        ::kill(child, SIGTERM);
    }
    int status = 0;
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    // One query-migrate object: the source's, with the destination's
    // blocktime members beside it (where QEMU's destination reports them)
    // and its whole report under x-dirtyring.destination.
    json both = source_report;
    std::ifstream in(json_tmp);
    json dest_report = json::parse(in, nullptr, false);
    if (dest_report.is_discarded())
        dest_report = failed_report("failed", "the destination wrote no report", json::object());
    for (const auto& [name, value] : dest_report.items())
        if (name.starts_with("postcopy-")) both[name] = value;
    both["x-dirtyring"]["destination"] = dest_report;
    ::unlink(json_tmp);
    write_json(a.json_path, both);
    const int dest_code = WIFEXITED(status) ? WEXITSTATUS(status) : kExitFailed;
    return code != 0 ? code : dest_code;
}

}  // namespace

int main(int argc, char** argv) {
    Args args;
    try {
        args = parse(argc, argv);
    } catch (const HelpRequest&) {
        std::cout << kUsage;
        return 0;
    } catch (const VersionRequest&) {
        std::cout << "dirtyring-migrate " << DIRTYRING_VERSION << "\n";
        return 0;
    } catch (const UsageError& e) {
        std::cerr << "dirtyring-migrate: " << e.what() << "\n" << kUsage;
        return kExitUsage;
    }
    if (args.json_path == "-") {
        // JSON alone on stdout: everything else, this process's lines and
        // the forked destination's, goes to stderr.
        std::cout.flush();
        json_stdout_fd = ::fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
        if (json_stdout_fd < 0 || ::dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
            std::cerr << "dirtyring-migrate: cannot keep stdout for the JSON report: "
                      << std::strerror(errno) << "\n";
            return kExitFailed;
        }
    }
    try {
        if (args.print_backend) {
            std::cout << choose_backend(args) << "\n";
            return 0;
        }
        if (args.mode == "source") return source_main(args, std::nullopt);
        if (args.mode == "dest") {
            Listener listener(ChannelAddress::parse(args.address));
            return dest_main(args, std::move(listener));
        }
        return run_main(args);
    } catch (const Error& e) {
        std::cerr << "dirtyring-migrate: " << e.what() << "\n";
        // Setup errors a user caused (an address in use, no backend) are usage errors.
        return e.errnum() == EADDRINUSE || e.errnum() == ENODEV || e.errnum() == EINVAL
                   ? kExitUsage
                   : kExitFailed;
    }
}
