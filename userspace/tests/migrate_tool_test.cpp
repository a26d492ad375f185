// SPDX-License-Identifier: LGPL-2.1-or-later
// dirtyring-migrate as a user runs it: bad arguments give a usage error,
// a default migration succeeds and reports as JSON, and killing either
// process ends the other with a clear error.
#include <gtest/gtest.h>
#include <pty.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "dirtyring/migration/channel.hpp"
#include "testing/kvm_guest.hpp"
#include "testing/severable_proxy.hpp"

namespace {

using namespace std::chrono_literals;

struct ToolRun {
    int code;
    std::string output;
};

// Runs the tool with `args` (a shell word list, redirections allowed);
// what it writes to stdout.
ToolRun run_tool_stdout(const std::string& args) {
    const std::string cmd = std::string(DIRTYRING_MIGRATE) + " " + args;
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) return {-1, "popen failed"};
    std::string out;
    std::array<char, 4096> buf{};
    while (std::fgets(buf.data(), buf.size(), p)) out += buf.data();
    const int status = ::pclose(p);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// Runs the tool with `args`, output and errors together.
ToolRun run_tool(const std::string& args) {
    return run_tool_stdout(args + " 2>&1");
}

// Everything the tools wrote to the pipe, once they all closed it; closes it.
std::string drain(int fd) {
    std::string out;
    std::array<char, 4096> buf{};
    ssize_t n;
    while ((n = ::read(fd, buf.data(), buf.size())) > 0)
        out.append(buf.data(), static_cast<std::size_t>(n));
    ::close(fd);
    return out;
}

// Reads `fd` into `out` until `needle` shows up (true) or the writers are
// gone (false): a test acts once the tool got somewhere, not after a time.
bool read_until(int fd, const std::string& needle, std::string& out) {
    std::array<char, 4096> buf{};
    ssize_t n;
    while (out.find(needle) == std::string::npos) {
        if ((n = ::read(fd, buf.data(), buf.size())) <= 0) return false;
        out.append(buf.data(), static_cast<std::size_t>(n));
    }
    return true;
}

// In a forked child: a test killed midway (timeout) takes its tools along.
void die_with_the_test() {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
}

// The tool started with `args`, its stdout and stderr on one pipe.
struct Spawned {
    pid_t pid = -1;
    int out = -1;  // the pipe's read end
};

Spawned spawn_tool(const std::vector<std::string>& args) {
    int pipefd[2];
    if (::pipe(pipefd)) return {};
    std::vector<char*> argv{const_cast<char*>(DIRTYRING_MIGRATE)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
        die_with_the_test();
        ::dup2(pipefd[1], 1);
        ::dup2(pipefd[1], 2);
        ::execv(DIRTYRING_MIGRATE, argv.data());
        ::_exit(127);
    }
    ::close(pipefd[1]);
    return {pid, pipefd[0]};
}

int wait_exit(pid_t pid) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

struct BadArgs {
    const char* name;
    const char* args;
    const char* says;
};

class MigrateToolRejects : public testing::TestWithParam<BadArgs> {};

TEST_P(MigrateToolRejects, WithAUsageError) {
    const ToolRun r = run_tool(GetParam().args);
    EXPECT_EQ(2, r.code) << r.output;
    EXPECT_NE(std::string::npos, r.output.find(GetParam().says)) << r.output;
}

INSTANTIATE_TEST_SUITE_P(
    Table, MigrateToolRejects,
    testing::Values(BadArgs{"unknown_backend", "--backend xen", "unknown backend 'xen'"},
                    BadArgs{"zero_memory", "--memory 0", "--memory: 0 is out of range"},
                    BadArgs{"too_many_vcpus", "--vcpus 65", "--vcpus: 65 is out of range"},
                    BadArgs{"not_a_number", "--vcpus two", "'two' is not a number"},
                    BadArgs{"unknown_option", "--turbo 1", "unknown option --turbo"},
                    BadArgs{"missing_value", "--vcpus", "needs a value"},
                    BadArgs{"working_set_too_big", "--memory 8 --working-set 8",
                            "must be less than --memory"},
                    BadArgs{"bad_address", "dest --listen udp:1", "unknown kind"},
                    BadArgs{"source_without_address", "source", "needs --connect"},
                    BadArgs{"too_many_channels", "--channels 65", "--channels: 65 is out of range"},
                    BadArgs{"negative_channels", "--channels -1", "'-1' is not a number"}),
    [](const auto& p) { return std::string(p.param.name); });

// Runs the tool with `args`; stdout and stderr apart.
struct SplitRun {
    int code;
    std::string out, err;
};

SplitRun run_tool_split(const std::string& args) {
    const std::string err_path =
        "/tmp/dirtyring-migrate-test." + std::to_string(::getpid()) + ".err";
    const ToolRun r = run_tool_stdout(args + " 2>" + err_path);
    std::ifstream in(err_path);
    std::stringstream err;
    err << in.rdbuf();
    ::unlink(err_path.c_str());
    return {r.code, r.output, err.str()};
}

TEST(MigrateTool, HelpAndVersionGoToStdoutAndSucceed) {
    const SplitRun help = run_tool_split("--help");
    EXPECT_EQ(0, help.code);
    EXPECT_TRUE(help.out.starts_with("usage: dirtyring-migrate")) << help.out;
    EXPECT_NE(std::string::npos, help.out.find("exit status:")) << help.out;
    EXPECT_EQ("", help.err);
    const SplitRun version = run_tool_split("--version");
    EXPECT_EQ(0, version.code);
    EXPECT_TRUE(version.out.starts_with("dirtyring-migrate ")) << version.out;
    EXPECT_EQ("", version.err);
    // A usage error is on stderr, with the usage.
    const SplitRun bad = run_tool_split("--turbo 1");
    EXPECT_EQ(2, bad.code);
    EXPECT_EQ("", bad.out);
    EXPECT_NE(std::string::npos, bad.err.find("unknown option --turbo")) << bad.err;
}

TEST(MigrateTool, JsonToStdoutIsTheOnlyThingOnStdout) {
    if (auto why = dirtyring::KvmGuest::unavailable_reason()) GTEST_SKIP() << *why;
    const SplitRun r = run_tool_split("--memory 16 --working-set 4 --json -");
    ASSERT_EQ(0, r.code) << r.out << r.err;
    const auto j = nlohmann::json::parse(r.out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << "stdout is not one JSON document:\n" << r.out;
    EXPECT_EQ("completed", j["status"]);
    EXPECT_EQ(true, j["x-dirtyring"]["destination"]["x-dirtyring"]["memory-verified"]);
    // The human lines of both sides are all on stderr.
    EXPECT_NE(std::string::npos, r.err.find("round  1:")) << r.err;
    EXPECT_NE(std::string::npos, r.err.find("destination: waiting for a source")) << r.err;
    EXPECT_NE(std::string::npos, r.err.find("destination: received")) << r.err;
}

// --channels N on both sides of a forked run: the precopy's pages go over
// N connections of their own and the report says so.
TEST(MigrateTool, PageChannelsMigrateAndAreReported) {
    if (auto why = dirtyring::KvmGuest::unavailable_reason()) GTEST_SKIP() << *why;
    const SplitRun r = run_tool_split("--memory 16 --working-set 4 --channels 3 --json -");
    ASSERT_EQ(0, r.code) << r.out << r.err;
    const auto j = nlohmann::json::parse(r.out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << r.out;
    EXPECT_EQ("completed", j["status"]);
    EXPECT_EQ(3, j["x-dirtyring"]["page-channels"]);
    const auto& dest = j["x-dirtyring"]["destination"];
    EXPECT_EQ(3, dest["x-dirtyring"]["page-channels"]);
    EXPECT_EQ(true, dest["x-dirtyring"]["memory-verified"]);
}

TEST(MigrateTool, AUnixSocketLeftByAKilledDestinationIsReplaced) {
    if (auto why = dirtyring::KvmGuest::unavailable_reason()) GTEST_SKIP() << *why;
    const std::string path = "/tmp/dirtyring-migrate-stale." + std::to_string(::getpid());
    ::unlink(path.c_str());
    const pid_t dest = ::fork();
    if (dest == 0) {
        die_with_the_test();
        ::execl(DIRTYRING_MIGRATE, DIRTYRING_MIGRATE, "dest", "--listen", ("unix:" + path).c_str(),
                nullptr);
        ::_exit(127);
    }
    for (int i = 0; i < 500 && ::access(path.c_str(), F_OK); ++i) std::this_thread::sleep_for(20ms);
    ::kill(dest, SIGKILL);
    ::waitpid(dest, nullptr, 0);
    ASSERT_EQ(0, ::access(path.c_str(), F_OK)) << "SIGKILL left no socket file to replace";
    const ToolRun r = run_tool("--memory 16 --working-set 4 --address unix:" + path);
    EXPECT_EQ(0, r.code) << r.output;
    EXPECT_NE(std::string::npos, r.output.find("verified")) << r.output;
}

TEST(MigrateTool, TcpByHostName) {
    if (auto why = dirtyring::KvmGuest::unavailable_reason()) GTEST_SKIP() << *why;
    ToolRun r{};
    // A port nobody else's test takes; the next if it is in use.
    for (unsigned port = 40000 + static_cast<unsigned>(::getpid()) % 20000;; ++port) {
        r = run_tool("--memory 16 --working-set 4 --address tcp:localhost:" + std::to_string(port));
        if (r.output.find("address in use") == std::string::npos) break;
    }
    EXPECT_EQ(0, r.code) << r.output;
    EXPECT_NE(std::string::npos, r.output.find("verified")) << r.output;
}

// A source that opens only the migration stream (an older tool, or one
// that died between its two connections): the destination says what is
// missing instead of waiting on.
TEST(MigrateTool, ASourceWithoutAPreemptChannelIsNamed) {
    const std::string path = "/tmp/dirtyring-migrate-nopreempt." + std::to_string(::getpid());
    ::unlink(path.c_str());
    const Spawned dest = spawn_tool({"dest", "--listen", "unix:" + path});
    ASSERT_LT(0, dest.pid);
    std::string out;
    ASSERT_TRUE(read_until(dest.out, "waiting for a source", out)) << out;
    dirtyring::Channel stream =
        dirtyring::Channel::connect(dirtyring::ChannelAddress::parse("unix:" + path), 10s);
    const int code = wait_exit(dest.pid);
    out += drain(dest.out);
    EXPECT_EQ(1, code) << out;
    EXPECT_NE(std::string::npos, out.find("the source opened no preempt channel")) << out;
}

TEST(MigrateTool, AddressInUseIsAUsageError) {
    const std::string path = "/tmp/dirtyring-migrate-test." + std::to_string(::getpid());
    const pid_t dest = ::fork();
    if (dest == 0) {
        die_with_the_test();
        ::execl(DIRTYRING_MIGRATE, DIRTYRING_MIGRATE, "dest", "--listen", ("unix:" + path).c_str(),
                nullptr);
        ::_exit(127);
    }
    for (int i = 0; i < 100 && ::access(path.c_str(), F_OK); ++i) std::this_thread::sleep_for(20ms);
    const ToolRun r = run_tool("--address unix:" + path);
    ::kill(dest, SIGKILL);
    ::waitpid(dest, nullptr, 0);
    ::unlink(path.c_str());
    EXPECT_EQ(2, r.code) << r.output;
    EXPECT_NE(std::string::npos, r.output.find("address in use")) << r.output;
}

TEST(MigrateTool, DefaultMigrationSucceedsAndReportsJson) {
    if (auto why = dirtyring::KvmGuest::unavailable_reason()) GTEST_SKIP() << *why;
    const std::string json_path =
        "/tmp/dirtyring-migrate-test." + std::to_string(::getpid()) + ".json";
    const ToolRun r = run_tool("--memory 32 --working-set 8 --json " + json_path);
    ASSERT_EQ(0, r.code) << r.output;
    EXPECT_NE(std::string::npos, r.output.find("round  1:")) << r.output;
    std::ifstream in(json_path);
    const auto j = nlohmann::json::parse(in, nullptr, false);
    ::unlink(json_path.c_str());
    ASSERT_FALSE(j.is_discarded());
    // QEMU's query-migrate members, with their units (ms, bytes, pages).
    EXPECT_EQ("completed", j["status"]);
    for (const char* member : {"total-time", "downtime", "expected-downtime", "setup-time"})
        EXPECT_TRUE(j[member].is_number_integer()) << member << ": " << j.dump(1);
    const auto& ram = j["ram"];
    EXPECT_EQ(32U << 20, ram["total"].get<std::uint64_t>());
    EXPECT_EQ(0U, ram["remaining"].get<std::uint64_t>());
    EXPECT_EQ(ram["normal"].get<std::uint64_t>() * 4096, ram["normal-bytes"].get<std::uint64_t>());
    EXPECT_LT(ram["normal-bytes"].get<std::uint64_t>(), ram["transferred"].get<std::uint64_t>());
    EXPECT_EQ(ram["transferred"], ram["precopy-bytes"]);
    EXPECT_EQ(0U, ram["postcopy-bytes"].get<std::uint64_t>());
    EXPECT_EQ(0U, ram["postcopy-requests"].get<std::uint64_t>());
    EXPECT_GT(ram["mbps"].get<double>(), 0.0);
    EXPECT_GE(ram["dirty-sync-count"].get<unsigned>(), 1U);
    EXPECT_EQ(ram["dirty-sync-count"].get<std::size_t>(), j["x-dirtyring"]["rounds"].size());
    // This tool's own, under one member.
    const auto& x = j["x-dirtyring"];
    EXPECT_EQ("precopy", x["mode"]);
    EXPECT_EQ(x["memory-digest"], x["destination"]["x-dirtyring"]["memory-digest"]);
    EXPECT_EQ("completed", x["destination"]["status"]);
    EXPECT_EQ(true, x["destination"]["x-dirtyring"]["memory-verified"]);
    EXPECT_EQ(true, x["destination"]["x-dirtyring"]["guest-continued"]);
    EXPECT_GT(x["downtime-ms"].get<double>(), 0.0);
}

TEST(MigrateTool, PostcopyMigrationReportsBlocktime) {
    if (auto why = dirtyring::KvmGuest::unavailable_reason()) GTEST_SKIP() << *why;
    const std::string json_path =
        "/tmp/dirtyring-migrate-test." + std::to_string(::getpid()) + ".postcopy.json";
    const ToolRun r =
        run_tool("--postcopy --bandwidth 8 --memory 32 --working-set 8 --json " + json_path);
    ASSERT_EQ(0, r.code) << r.output;
    std::ifstream in(json_path);
    const auto j = nlohmann::json::parse(in, nullptr, false);
    ::unlink(json_path.c_str());
    ASSERT_FALSE(j.is_discarded());
    EXPECT_EQ("completed", j["status"]);
    const auto& x = j["x-dirtyring"];
    EXPECT_EQ("postcopy", x["mode"]);
    EXPECT_EQ("postcopy", x["destination"]["x-dirtyring"]["mode"]);
    EXPECT_EQ(x["memory-digest"], x["destination"]["x-dirtyring"]["memory-digest"]);
    EXPECT_EQ(true, x["destination"]["x-dirtyring"]["guest-continued"]);
    const auto& ram = j["ram"];
    EXPECT_EQ(
        ram["transferred"].get<std::uint64_t>(),
        ram["precopy-bytes"].get<std::uint64_t>() + ram["postcopy-bytes"].get<std::uint64_t>());
    EXPECT_GT(ram["postcopy-bytes"].get<std::uint64_t>(), 0U);
    // The blocktime members at the top level, as QEMU 10.1 has them.
    EXPECT_TRUE(j.contains("postcopy-latency-dist")) << j.dump(1);
    EXPECT_TRUE(j["postcopy-blocktime"].is_number_integer());
    EXPECT_EQ(2U, j["postcopy-vcpu-blocktime"].size());
    EXPECT_EQ(2U, j["postcopy-vcpu-latency"].size());
}

// Starts `dest` and `source` as two commands; kills one mid-precopy.
ToolRun kill_one(bool kill_source) {
    const std::string path = "/tmp/dirtyring-migrate-kill." + std::to_string(::getpid());
    const std::string addr = "unix:" + path;
    // A destination killed by an earlier run of this process left it.
    ::unlink(path.c_str());
    // Never converges, never switches to postcopy: precopy until killed.
    const std::string slow = " --bandwidth 4 --memory 64 --downtime-limit 1 --max-rounds 10000";
    int pipefd[2];
    if (::pipe(pipefd)) return {-1, "pipe"};
    const auto spawn = [&](const std::string& args) {
        const pid_t pid = ::fork();
        if (pid == 0) {
            die_with_the_test();
            ::dup2(pipefd[1], 1);
            ::dup2(pipefd[1], 2);
            ::execl("/bin/sh", "sh", "-c",
                    ("exec " + std::string(DIRTYRING_MIGRATE) + " " + args).c_str(), nullptr);
            ::_exit(127);
        }
        return pid;
    };
    const pid_t dest = spawn("dest --listen " + addr + slow);
    std::this_thread::sleep_for(200ms);
    const pid_t source = spawn("source --connect " + addr + slow);
    ::close(pipefd[1]);
    // Mid-migration: the first precopy round is done, the next is running.
    std::string out;
    read_until(pipefd[0], "round  1:", out);
    ::kill(kill_source ? source : dest, SIGKILL);
    int status = 0;
    ::waitpid(kill_source ? dest : source, &status, 0);
    ::waitpid(kill_source ? source : dest, nullptr, 0);
    out += drain(pipefd[0]);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

TEST(MigrateTool, SigintCancelsAndTheSourceGuestKeepsRunning) {
    if (auto why = dirtyring::KvmGuest::unavailable_reason()) GTEST_SKIP() << *why;
    // Never converges: still in precopy when the signal comes.
    const Spawned run =
        spawn_tool({"--bandwidth", "4", "--downtime-limit", "1", "--max-rounds", "10000"});
    ASSERT_LT(0, run.pid);
    // Still in precopy (it never converges) once a round is reported.
    std::string out;
    ASSERT_TRUE(read_until(run.out, "round  1:", out)) << out;
    ::kill(run.pid, SIGINT);
    const int code = wait_exit(run.pid);
    out += drain(run.out);
    EXPECT_EQ(130, code) << out;
    EXPECT_NE(std::string::npos, out.find("source: cancelling the migration")) << out;
    EXPECT_NE(std::string::npos, out.find("the guest keeps running on the source")) << out;
    EXPECT_NE(std::string::npos, out.find("destination: migration failed: the source cancelled"))
        << out;
}

// A forked run in postcopy for long enough for a person to press Ctrl-C:
// the first round (4 MiB at 1 MiB/s) leaves the whole working set dirty,
// and the guest, rewriting 400 pages/s, asks for it no faster than the
// background stream sends it: about a second and a half of postcopy.
struct PostcopyRun {
    pid_t pid = -1;
    int out = -1;
    std::string text;
};

PostcopyRun start_slow_postcopy() {
    const Spawned spawned = spawn_tool({"--postcopy", "--bandwidth", "1", "--memory", "16",
                                        "--working-set", "4", "--dirty-rate", "400"});
    return {spawned.pid, spawned.out, {}};
}

TEST(MigrateTool, SigintInPostcopyIsRefusedAndTheMigrationFinishes) {
    if (auto why = dirtyring::KvmGuest::unavailable_reason()) GTEST_SKIP() << *why;
    PostcopyRun run = start_slow_postcopy();
    ASSERT_LT(0, run.pid);
    ASSERT_TRUE(read_until(run.out, "switched to postcopy", run.text)) << run.text;
    ::kill(run.pid, SIGINT);
    const int code = wait_exit(run.pid);
    run.text += drain(run.out);
    EXPECT_EQ(0, code) << run.text;
    EXPECT_NE(std::string::npos, run.text.find("source: cannot cancel")) << run.text;
    EXPECT_EQ(std::string::npos, run.text.find("cancelling")) << run.text;
    EXPECT_NE(std::string::npos, run.text.find("verified")) << run.text;
}

TEST(MigrateTool, ASecondSigintInPostcopyAbortsAndSaysTheGuestIsLost) {
    if (auto why = dirtyring::KvmGuest::unavailable_reason()) GTEST_SKIP() << *why;
    PostcopyRun run = start_slow_postcopy();
    ASSERT_LT(0, run.pid);
    ASSERT_TRUE(read_until(run.out, "switched to postcopy", run.text)) << run.text;
    ::kill(run.pid, SIGINT);
    // Two signals sent at once may merge into one: the second after the
    // first was seen.
    ASSERT_TRUE(read_until(run.out, "source: cannot cancel", run.text)) << run.text;
    ::kill(run.pid, SIGINT);
    const int code = wait_exit(run.pid);
    run.text += drain(run.out);
    if (run.text.find("aborting") == std::string::npos)
        GTEST_SKIP() << "the migration finished before the second signal:\n" << run.text;
    EXPECT_EQ(3, code) << run.text;
    EXPECT_NE(std::string::npos, run.text.find("source: the guest is lost")) << run.text;
    EXPECT_NE(std::string::npos, run.text.find("destination: migration failed")) << run.text;
}

// The slow postcopy of start_slow_postcopy(), as two commands.
const std::vector<std::string> kSlowPostcopy{"--postcopy", "--bandwidth",  "1",
                                             "--memory",   "16",           "--working-set",
                                             "4",          "--dirty-rate", "400"};

std::vector<std::string> with(std::vector<std::string> args, const std::vector<std::string>& more) {
    args.insert(args.end(), more.begin(), more.end());
    return args;
}

// `dest` (with `dest_args`) and then `source`, connecting to `connect`,
// both migrating kSlowPostcopy's guest; their outputs, each on its pipe.
struct TwoCommands {
    Spawned dest;
    Spawned source;
    std::string dest_out;
    std::string out;
    // Waits for both; their exit codes, with the rest of their outputs.
    std::pair<int, int> finish() {
        const int code = wait_exit(source.pid);
        out += drain(source.out);
        const int dest_code = wait_exit(dest.pid);
        dest_out += drain(dest.out);
        return {code, dest_code};
    }
};

TwoCommands start_two(const std::vector<std::string>& dest_args,
                      const std::vector<std::string>& source_args) {
    TwoCommands t;
    t.dest = spawn_tool(with(with({"dest"}, dest_args), kSlowPostcopy));
    if (t.dest.pid <= 0 || !read_until(t.dest.out, "waiting for a source", t.dest_out)) return t;
    t.source = spawn_tool(with(with({"source"}, source_args), kSlowPostcopy));
    return t;
}

// kSlowPostcopy's first round: 1024 data pages and 3072 zero pages (with
// their record heads) and the stream's header, about 4.07 MiB.  Every byte
// the proxy carries past 4.5 MiB is postcopy, and the postcopy moves the
// whole working set again (4 MiB, all dirtied during a round the 1 MiB/s
// limit makes last 4 s or more): a cut counted from there falls inside the
// postcopy on any machine, however busy.
constexpr std::uint64_t kPastTheFirstRound = 9ULL << 19;

// A network that breaks twice in postcopy (a proxy between the two
// commands cuts every connection after 256 KiB more): both sides pause,
// the source reconnects, and the migration completes with the memory
// verified.
TEST(MigrateTool, APostcopyCutTwiceByTheNetworkResumesAndCompletes) {
    if (auto why = dirtyring::KvmGuest::unavailable_reason()) GTEST_SKIP() << *why;
    const std::string base = "/tmp/dirtyring-migrate-cut." + std::to_string(::getpid());
    ::unlink((base + ".dest").c_str());
    dirtyring::SeverableProxy proxy(base + ".proxy", base + ".dest");
    proxy.cut_after(256 << 10, 2, [&] { return proxy.forwarded() >= kPastTheFirstRound; });
    TwoCommands t =
        start_two({"--listen", "unix:" + base + ".dest"}, {"--connect", "unix:" + base + ".proxy"});
    ASSERT_LT(0, t.source.pid) << t.dest_out;
    const auto [code, dest_code] = t.finish();
    EXPECT_EQ(2U, proxy.cuts());
    EXPECT_EQ(0, code) << t.out;
    EXPECT_EQ(0, dest_code) << t.dest_out;
    EXPECT_NE(std::string::npos, t.out.find("source: postcopy paused:")) << t.out;
    EXPECT_NE(std::string::npos, t.out.find("source: postcopy resumed on new connections"))
        << t.out;
    EXPECT_NE(std::string::npos, t.out.find("resumed after 2 broken connection(s)")) << t.out;
    EXPECT_NE(std::string::npos, t.dest_out.find("destination: postcopy paused:")) << t.dest_out;
    EXPECT_NE(std::string::npos, t.dest_out.find("resumed after 2 broken connection(s)"))
        << t.dest_out;
    EXPECT_NE(std::string::npos, t.dest_out.find("verified")) << t.dest_out;
}

// A source that never comes back after a break in postcopy (killed, or as
// here without recovery of its own, cut by the proxy at a point the bytes
// say is postcopy): the destination stays paused for its
// --recover-timeout, then fails, saying the guest is lost.
TEST(MigrateTool, ASourceGoneInPostcopyLeavesTheDestinationPausedThenFailing) {
    if (auto why = dirtyring::KvmGuest::unavailable_reason()) GTEST_SKIP() << *why;
    const std::string base = "/tmp/dirtyring-migrate-gone." + std::to_string(::getpid());
    ::unlink((base + ".dest").c_str());
    dirtyring::SeverableProxy proxy(base + ".proxy", base + ".dest");
    proxy.cut_after(1, 1, [&] { return proxy.forwarded() >= kPastTheFirstRound; });
    TwoCommands t = start_two({"--listen", "unix:" + base + ".dest", "--recover-timeout", "2"},
                              {"--connect", "unix:" + base + ".proxy", "--recover-timeout", "0"});
    ASSERT_LT(0, t.source.pid) << t.dest_out;
    const auto [code, dest_code] = t.finish();
    EXPECT_EQ(1U, proxy.cuts());
    EXPECT_EQ(3, code) << t.out;
    EXPECT_NE(std::string::npos, t.out.find("source: the guest is lost")) << t.out;
    EXPECT_EQ(3, dest_code) << t.dest_out;
    EXPECT_NE(std::string::npos, t.dest_out.find("destination: postcopy paused:")) << t.dest_out;
    EXPECT_NE(std::string::npos, t.dest_out.find("for up to 2 s")) << t.dest_out;
    EXPECT_NE(std::string::npos, t.dest_out.find("could not resume")) << t.dest_out;
    EXPECT_NE(std::string::npos, t.dest_out.find("the guest is lost")) << t.dest_out;
}

// Not on a terminal, a long round is not silent: a plain progress line
// comes every few seconds, before the round ends.
TEST(MigrateTool, ALongRoundShowsItsProgress) {
    if (auto why = dirtyring::KvmGuest::unavailable_reason()) GTEST_SKIP() << *why;
    // A first round of 16 MiB at 1 MiB/s.
    const Spawned run = spawn_tool(
        {"--bandwidth", "1", "--memory", "32", "--working-set", "16", "--dirty-rate", "2000"});
    ASSERT_LT(0, run.pid);
    std::string out;
    const bool shown = read_until(run.out, "source: round 1: ", out);
    ::kill(run.pid, SIGINT);
    wait_exit(run.pid);
    out += drain(run.out);
    ASSERT_TRUE(shown) << out;
    // Before the round's own line, with what the round still has to send.
    EXPECT_LT(out.find("source: round 1: "), out.find("round  1: sent")) << out;
    const auto line = out.substr(out.find("source: round 1: "));
    EXPECT_NE(std::string::npos, line.find("% of 8192 pages")) << line;
    EXPECT_NE(std::string::npos, line.find("ETA")) << line;
    EXPECT_EQ(std::string::npos, out.find("\033[K")) << "terminal codes in a pipe";
}

// On a terminal the progress line updates in place (erased and rewritten),
// and is erased before the round's own line.
TEST(MigrateTool, OnATerminalTheProgressLineUpdatesInPlace) {
    if (auto why = dirtyring::KvmGuest::unavailable_reason()) GTEST_SKIP() << *why;
    int master = -1;
    const pid_t pid = ::forkpty(&master, nullptr, nullptr, nullptr);
    ASSERT_LE(0, pid);
    if (pid == 0) {
        die_with_the_test();
        ::execl(DIRTYRING_MIGRATE, DIRTYRING_MIGRATE, "--bandwidth", "2", "--memory", "16",
                "--working-set", "4", "--downtime-limit", "5000", nullptr);
        ::_exit(127);
    }
    std::string out;
    std::array<char, 4096> buf{};
    ssize_t n;
    // Read until the tool closes the terminal (EIO once it exited).
    while ((n = ::read(master, buf.data(), buf.size())) > 0)
        out.append(buf.data(), static_cast<std::size_t>(n));
    ::close(master);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out;
    const std::string erase = "\r\033[K";
    EXPECT_NE(std::string::npos, out.find(erase + "round 1: ")) << out;
    EXPECT_NE(std::string::npos, out.find(erase + "round  1: sent")) << out;
    EXPECT_EQ(std::string::npos, out.find("source: round 1: ")) << "plain lines on a terminal";
}

TEST(MigrateTool, KilledDestinationLeavesTheSourceGuestRunning) {
    if (auto why = dirtyring::KvmGuest::unavailable_reason()) GTEST_SKIP() << *why;
    const ToolRun r = kill_one(false);
    EXPECT_EQ(1, r.code) << r.output;
    EXPECT_NE(std::string::npos, r.output.find("source: migration failed")) << r.output;
    EXPECT_NE(std::string::npos, r.output.find("the guest keeps running on the source"))
        << r.output;
}

TEST(MigrateTool, KilledSourceEndsTheDestinationWithAClearError) {
    if (auto why = dirtyring::KvmGuest::unavailable_reason()) GTEST_SKIP() << *why;
    const ToolRun r = kill_one(true);
    EXPECT_EQ(1, r.code) << r.output;
    EXPECT_NE(std::string::npos, r.output.find("destination: migration failed")) << r.output;
    EXPECT_NE(std::string::npos, r.output.find("closed")) << r.output;
}

}  // namespace
