// SPDX-License-Identifier: LGPL-2.1-or-later
// dirtyring-stat against the real module, in the QEMU-booted kernel: the
// counters of a known workload read through the netlink layer and through
// the static tool (--once, --json, --events, the live table on a pty, and
// exit 4 for a process without CAP_NET_ADMIN) equal GET_RING_STATUS and
// the harvested truth.
//
// The tool is the static dirtyring-stat-static (or dirtyring-stat) next to
// this binary, or $DIRTYRING_STAT.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "dirtyring/rings/device.hpp"
#include "dirtyring/rings/harvester.hpp"
#include "dirtyring/rings/module_vm.hpp"
#include "live.hpp"
#include "netlink.hpp"

namespace {

using namespace std::chrono_literals;
using dirtyring::Device;
using dirtyring::Harvester;
using dirtyring::ModuleVm;
using dirtyring::RingStatus;
using json = nlohmann::json;
namespace stat = dirtyring::stat;

constexpr std::uint64_t kPage = ModuleVm::kPageSize;

// --- the workload ---------------------------------------------------------------------

// The VM's netlink id, from its fd's fdinfo ("dirtyring-vm-id:\tN").
std::uint32_t vm_id(const ModuleVm& vm) {
    std::ifstream in("/proc/self/fdinfo/" + std::to_string(vm.fd()));
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("dirtyring-vm-id:", 0) == 0)
            return static_cast<std::uint32_t>(std::stoul(line.substr(line.find(':') + 1)));
    ADD_FAILURE() << "no dirtyring-vm-id in the VM fd's fdinfo";
    return 0;
}

std::string own_comm() {
    std::ifstream in("/proc/self/comm");
    std::string comm;
    std::getline(in, comm);
    return comm;
}

void touch(std::span<std::uint8_t> memory, std::uint64_t first, std::uint64_t count,
           std::uint8_t value) {
    for (std::uint64_t p = first; p < first + count; ++p)
        std::atomic_ref<std::uint8_t>(memory[p * kPage]).store(value, std::memory_order_relaxed);
}

// Pages written by vCPU i's bound thread: kVcpuPages[i]; by the test
// thread, bound to nothing (the VM ring): kVmRingPages.  Then harvested.
constexpr std::array<std::uint64_t, 2> kVcpuPages = {100, 200};
constexpr std::uint64_t kVmRingPages = 50;
constexpr std::uint64_t kSlotPages = 1024;

struct Workload {
    ModuleVm vm{Device::open(), {.vcpu_ring_entries = 4096, .vm_ring_entries = 4096, .vcpus = 2}};
    std::uint32_t id = 0;

    Workload() {
        vm.add_slot(0, kSlotPages);
        id = vm_id(vm);
    }

    // Writes the pages above once and harvests them; returns the pages harvested.
    std::uint64_t write_and_harvest(std::uint8_t value) {
        const auto memory = vm.slot_memory(0);
        std::uint64_t first = 0;
        std::vector<std::jthread> threads;
        for (std::uint32_t i = 0; i < kVcpuPages.size(); ++i) {
            threads.emplace_back([&, i, first] {
                const auto binding = vm.vcpu(i).bind();
                touch(memory, first, kVcpuPages[i], value);
            });
            first += kVcpuPages[i];
        }
        threads.clear();  // joined
        touch(memory, first, kVmRingPages, value);
        Harvester harvester(vm);
        return harvester.harvest([](auto) {});
    }
};

std::uint64_t sum(const json& hist) {
    std::uint64_t s = 0;
    for (const auto& b : hist) s += b.get<std::uint64_t>();
    return s;
}

void expect_ring_equals(const RingStatus& st, const stat::Ring& r, const std::string& which) {
    SCOPED_TRACE(which);
    EXPECT_EQ(st.entries, r.entries);
    EXPECT_EQ(st.soft_limit, r.soft_limit);
    EXPECT_EQ(st.used, r.used);
    EXPECT_EQ(st.pushed, r.pushed);
    EXPECT_EQ(st.soft_full_events, r.soft_full);
    EXPECT_EQ(st.overflows, r.overflows);
    EXPECT_EQ(st.waits, r.waits);
    EXPECT_EQ(st.wait_ns, r.wait_ns);
    EXPECT_EQ(st.waits, std::accumulate(r.wait_hist.begin(), r.wait_hist.end(), std::uint64_t{0}));
}

void expect_ring_equals(const RingStatus& st, const json& r, const std::string& which) {
    SCOPED_TRACE(which);
    EXPECT_EQ(st.entries, r["entries"]);
    EXPECT_EQ(st.soft_limit, r["soft_limit"]);
    EXPECT_EQ(st.used, r["used"]);
    EXPECT_EQ(st.pushed, r["pushed"]);
    EXPECT_EQ(st.soft_full_events, r["soft_full"]);
    EXPECT_EQ(st.overflows, r["overflows"]);
    EXPECT_EQ(st.waits, r["waits"]);
    EXPECT_EQ(st.wait_ns, r["wait_ns"]);
    ASSERT_EQ(stat::kHistBuckets, r["wait_hist"].size());
    EXPECT_EQ(st.waits, sum(r["wait_hist"]));
}

// --- running the tool -----------------------------------------------------------------

std::string stat_binary() {
    if (const char* env = std::getenv("DIRTYRING_STAT")) return env;
    char self[4096];
    const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) return {};
    std::string dir(self, static_cast<std::size_t>(n));
    dir.resize(dir.rfind('/') + 1);
    for (const char* name : {"dirtyring-stat-static", "dirtyring-stat"})
        if (::access((dir + name).c_str(), X_OK) == 0) return dir + name;
    return {};
}

class StatGuest : public testing::Test {
protected:
    void SetUp() override {
        tool_ = stat_binary();
        ASSERT_FALSE(tool_.empty())
            << "no dirtyring-stat-static next to this binary, and no $DIRTYRING_STAT (the QEMU "
               "runner must copy it into /tests/)";
    }
    std::string tool_;
};

// A running tool with its stdout and stderr on pipes.
class Tool {
public:
    Tool(const std::string& path, const std::vector<std::string>& args, bool unprivileged = false) {
        int out_pipe[2], err_pipe[2];
        if (::pipe2(out_pipe, O_CLOEXEC) || ::pipe2(err_pipe, O_CLOEXEC)) return;
        pid_ = ::fork();
        if (pid_ == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            ::dup2(out_pipe[1], 1);
            ::dup2(err_pipe[1], 2);
            const int null = ::open("/dev/null", O_RDONLY);
            ::dup2(null, 0);
            if (unprivileged && (::setgid(65534) || ::setuid(65534))) ::_exit(126);
            std::vector<char*> argv{const_cast<char*>(path.c_str())};
            for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
            argv.push_back(nullptr);
            ::execv(path.c_str(), argv.data());
            ::_exit(127);
        }
        ::close(out_pipe[1]);
        ::close(err_pipe[1]);
        out_ = out_pipe[0];
        err_ = err_pipe[0];
        ::fcntl(out_, F_SETFL, O_NONBLOCK);
        ::fcntl(err_, F_SETFL, O_NONBLOCK);
    }
    ~Tool() {
        if (pid_ > 0 && !exited_) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
        if (out_ >= 0) ::close(out_);
        if (err_ >= 0) ::close(err_);
    }
    Tool(const Tool&) = delete;
    Tool& operator=(const Tool&) = delete;

    // Reads what is there within `timeout`; false once both pipes are closed.
    bool pump(std::chrono::milliseconds timeout) {
        pollfd fds[2] = {{out_, POLLIN, 0}, {err_, POLLIN, 0}};
        if (::poll(fds, 2, static_cast<int>(timeout.count())) <= 0) return true;
        bool open = false;
        for (auto [fd, text] : {std::pair{out_, &out}, std::pair{err_, &err}}) {
            char buf[4096];
            ssize_t n;
            while ((n = ::read(fd, buf, sizeof(buf))) > 0)
                text->append(buf, static_cast<std::size_t>(n));
            open |= n < 0 && errno == EAGAIN;
        }
        return open;
    }

    // Waits for the tool to end (at most `timeout`); its exit code, -1 if it
    // did not end or died of a signal.
    int wait(std::chrono::seconds timeout = 60s) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            pump(50ms);
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                exited_ = true;
                while (pump(0ms)) {
                }
                return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
            }
        }
        return -1;
    }

    void signal(int sig) const { ::kill(pid_, sig); }

    // Complete lines of stdout read so far, from line `from` on.
    std::vector<std::string> lines(std::size_t from = 0) const {
        std::vector<std::string> v;
        std::istringstream in(out);
        std::string l;
        while (std::getline(in, l))
            if (!in.eof()) v.push_back(l);
        if (from >= v.size()) return {};
        return {v.begin() + static_cast<std::ptrdiff_t>(from), v.end()};
    }

    std::string out, err;

private:
    pid_t pid_ = -1;
    int out_ = -1, err_ = -1;
    bool exited_ = false;
};

// --- the netlink layer ------------------------------------------------------------------

TEST_F(StatGuest, NetlinkLayerEqualsRingStatus) {
    Workload w;
    ASSERT_EQ(350U, w.write_and_harvest(1));
    stat::Netlink nl;
    EXPECT_EQ(stat::kFamilyVersion, nl.family_version());

    const auto vms = nl.vms(w.id);
    ASSERT_EQ(1U, vms.size());
    const stat::Vm& vm = vms[0];
    EXPECT_EQ(w.id, vm.id);
    EXPECT_EQ(static_cast<std::uint32_t>(::getpid()), vm.owner_pid);
    EXPECT_EQ(own_comm(), vm.owner_comm);
    ASSERT_EQ(1U, vm.slots.size());
    // Every page is allocated when the slot is added; nothing was parked.
    EXPECT_EQ((stat::Slot{0, kSlotPages, kSlotPages, 0}), vm.slots[0]);
    ASSERT_TRUE(vm.vm_ring);
    expect_ring_equals(w.vm.ring_status(), *vm.vm_ring, "VM ring");
    EXPECT_EQ(kVmRingPages, vm.vm_ring->pushed);
    EXPECT_EQ(0U, vm.vm_ring->used);

    // The dump of all VMs has it too, once.
    const auto all = nl.vms();
    EXPECT_EQ(1,
              std::count_if(all.begin(), all.end(), [&](const auto& v) { return v.id == w.id; }));

    const auto vcpus = nl.vcpus(w.id);
    ASSERT_EQ(2U, vcpus.size());
    for (const auto& v : vcpus) {
        ASSERT_LT(v.id, 2U);
        EXPECT_EQ(w.id, v.vm_id);
        expect_ring_equals(w.vm.vcpu(v.id).ring_status(), v.ring, "vCPU " + std::to_string(v.id));
        EXPECT_EQ(kVcpuPages[v.id], v.ring.pushed);
        EXPECT_FALSE(v.bound_tid) << "its thread is gone";
        // Every page its thread logged came from one of its first-write faults.
        EXPECT_GE(v.faults, v.ring.pushed);
        EXPECT_EQ(v.faults,
                  std::accumulate(v.fault_hist.begin(), v.fault_hist.end(), std::uint64_t{0}));
        EXPECT_LT(0U, v.fault_ns);
    }
    // Filtered by VM: nothing of other VMs; an unknown VM: nothing at all.
    EXPECT_TRUE(nl.vms(w.id + 1000).empty());
    EXPECT_TRUE(nl.vcpus(w.id + 1000).empty());
}

TEST_F(StatGuest, BoundThreadShows) {
    Workload w;
    std::atomic<bool> bound{false}, done{false};
    std::atomic<std::uint32_t> tid{0};
    std::jthread t([&] {
        const auto binding = w.vm.vcpu(1).bind();
        tid = static_cast<std::uint32_t>(::gettid());
        bound = true;
        while (!done) std::this_thread::sleep_for(1ms);
    });
    while (!bound) std::this_thread::sleep_for(1ms);
    stat::Netlink nl;
    for (const auto& v : nl.vcpus(w.id)) {
        if (v.id == 1)
            EXPECT_EQ(tid.load(), v.bound_tid.value_or(0));
        else
            EXPECT_FALSE(v.bound_tid);
    }
    done = true;
}

// --- the tool ---------------------------------------------------------------------------

TEST_F(StatGuest, OnceJsonEqualsRingStatus) {
    Workload w;
    ASSERT_EQ(350U, w.write_and_harvest(1));
    Tool tool(tool_,
              {"--once", "--json", "--interval", "0.1", "--pid", std::to_string(::getpid())});
    ASSERT_EQ(0, tool.wait()) << tool.err;
    const json j = json::parse(tool.out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << tool.out;
    EXPECT_EQ(1, j["family_version"]);
    EXPECT_GT(j["interval_s"].get<double>(), 0.05);
    ASSERT_EQ(1U, j["vms"].size()) << tool.out;
    const json& vm = j["vms"][0];
    EXPECT_EQ(w.id, vm["id"]);
    EXPECT_EQ(::getpid(), vm["owner_pid"]);
    EXPECT_EQ(own_comm(), vm["owner_comm"]);
    EXPECT_EQ(kSlotPages, vm["slots"][0]["pages"]);
    expect_ring_equals(w.vm.ring_status(), vm["ring"], "VM ring");
    EXPECT_EQ(kVmRingPages, vm["ring"]["pushed"]);
    ASSERT_EQ(2U, vm["vcpus"].size());
    std::uint64_t pushed = vm["ring"]["pushed"];
    for (const json& v : vm["vcpus"]) {
        const std::uint32_t id = v["id"];
        ASSERT_LT(id, 2U);
        expect_ring_equals(w.vm.vcpu(id).ring_status(), v["ring"], "vCPU " + std::to_string(id));
        EXPECT_EQ(kVcpuPages[id], v["ring"]["pushed"]);
        EXPECT_TRUE(v["bound_tid"].is_null());
        EXPECT_GE(v["faults"].get<std::uint64_t>(), v["ring"]["pushed"].get<std::uint64_t>());
        EXPECT_EQ(v["faults"].get<std::uint64_t>(), sum(v["fault_hist"]));
        // Nothing was written between the tool's two samples.
        EXPECT_EQ(0.0, v["rates"]["pages_logged_per_s"]);
        EXPECT_EQ(0.0, v["rates"]["fill_pct"]);
        pushed += v["ring"]["pushed"].get<std::uint64_t>();
    }
    EXPECT_EQ(350U, pushed);  // the harvested truth
    EXPECT_EQ(0.0, vm["rates"]["pages_logged_per_s"]);
}

TEST_F(StatGuest, OnceTableShowsTheVm) {
    Workload w;
    w.write_and_harvest(1);
    Tool tool(tool_, {"--once", "--interval", "0.1", "--vm", std::to_string(w.id)});
    ASSERT_EQ(0, tool.wait()) << tool.err;
    const auto lines = tool.lines();
    ASSERT_EQ(5U, lines.size()) << tool.out;  // header, VM, 2 vCPUs, VM ring
    EXPECT_EQ(0U, lines[0].find("VM/VCPU")) << tool.out;
    EXPECT_EQ(0U, lines[1].find("vm " + std::to_string(w.id) + " ")) << tool.out;
    EXPECT_NE(std::string::npos, lines[1].find(std::to_string(::getpid()))) << tool.out;
    EXPECT_EQ(0U, lines[2].find("  vcpu ")) << tool.out;
    EXPECT_EQ(0U, lines[3].find("  vcpu ")) << tool.out;
    EXPECT_EQ(0U, lines[4].find("  vm ring")) << tool.out;
}

// Two bound writers keep dirtying their pages while a collector harvests:
// the tool shows both vCPUs logging, consistently with their counters.
// Prints the table for the README.
TEST_F(StatGuest, OnceShowsALiveWorkload) {
    Workload w;
    std::atomic<bool> stop{false};
    const auto memory = w.vm.slot_memory(0);
    std::vector<std::jthread> threads;
    for (std::uint32_t i = 0; i < 2; ++i)
        threads.emplace_back([&, i] {
            const auto binding = w.vm.vcpu(i).bind();
            for (std::uint8_t v = 1; !stop; ++v) {
                touch(memory, i * 200, 200, v);
                std::this_thread::sleep_for(1ms);  // leave the emulated CPUs to the tool too
            }
        });
    threads.emplace_back([&] {
        Harvester harvester(w.vm);
        while (!stop) {
            harvester.harvest([](auto) {});
            std::this_thread::sleep_for(5ms);
        }
    });
    const std::string pid = std::to_string(::getpid());
    Tool json_tool(tool_, {"--once", "--json", "--interval", "1", "--pid", pid});
    const int json_code = json_tool.wait();
    Tool text_tool(tool_, {"--once", "--interval", "1", "--pid", pid});
    const int text_code = text_tool.wait();
    stop = true;
    threads.clear();

    ASSERT_EQ(0, json_code) << json_tool.err;
    const json j = json::parse(json_tool.out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << json_tool.out;
    ASSERT_EQ(1U, j["vms"].size());
    const double interval = j["interval_s"];
    // The VM's row: its vCPUs and its VM ring (pages a reset logged again).
    double total = j["vms"][0]["ring_rates"]["pages_logged_per_s"];
    for (const json& v : j["vms"][0]["vcpus"]) {
        const double rate = v["rates"]["pages_logged_per_s"];
        EXPECT_LT(0.0, rate) << v;
        // rate * interval pages were logged in the interval: at most all of them.
        EXPECT_LE(rate * interval, v["ring"]["pushed"].get<double>() + 0.5) << v;
        total += rate;
    }
    EXPECT_NEAR(total, j["vms"][0]["rates"]["pages_logged_per_s"].get<double>(), 1e-6 * total);

    ASSERT_EQ(0, text_code) << text_tool.err;
    std::cout << "snapshot of a live workload (dirtyring-stat --once --pid " << pid << "):\n"
              << text_tool.out;
    EXPECT_EQ(5U, text_tool.lines().size()) << text_tool.out;
}

TEST_F(StatGuest, UnknownVmFails) {
    Tool tool(tool_, {"--once", "--interval", "0.01", "--vm", "4000000000"});
    EXPECT_EQ(1, tool.wait()) << tool.err;
    EXPECT_NE(std::string::npos, tool.err.find("no VM with id 4000000000")) << tool.err;
}

TEST_F(StatGuest, EventsShowResetsWaitsAndVmLifetimes) {
    Workload w;
    // --pid: our VMs, those of the dump at the start and those created later.
    Tool tool(tool_, {"--events", "--json", "--pid", std::to_string(::getpid())});
    // The tool joins the group at some point after its start: harvest until
    // it reports one of our resets.
    const auto find = [&](const std::string& event, std::uint32_t vm, std::size_t from = 0) {
        const auto lines = tool.lines();
        for (std::size_t i = from; i < lines.size(); ++i) {
            const json e = json::parse(lines[i], nullptr, false);
            if (!e.is_discarded() && e["event"] == event && e["vm"] == vm) return i;
        }
        return lines.size() + 1000;  // not there
    };
    std::size_t reset = std::string::npos;
    for (int round = 0; round < 100; ++round) {
        ASSERT_EQ(350U, w.write_and_harvest(static_cast<std::uint8_t>(round + 1)));
        for (int i = 0; i < 10 && find("reset", w.id) > tool.lines().size(); ++i) tool.pump(50ms);
        if ((reset = find("reset", w.id)) < tool.lines().size()) break;
    }
    ASSERT_LT(reset, tool.lines().size()) << tool.out << tool.err;
    const json r = json::parse(tool.lines()[reset]);
    EXPECT_EQ(350U, r["entries"]) << r;  // one harvest's reset: every page it harvested
    EXPECT_EQ(0U, r["overflows"]);
    EXPECT_EQ(0U, r["relogged"]);
    EXPECT_TRUE(r["time"].is_string());

    // A VM that comes and goes: created, then destroyed, in that order.
    std::uint32_t other = 0;
    {
        ModuleVm vm2(Device::open(), {.vcpu_ring_entries = 128, .vm_ring_entries = 128});
        other = vm_id(vm2);
    }
    EXPECT_NE(w.id, other);
    for (int i = 0; i < 200 && find("vm_destroyed", other) > tool.lines().size(); ++i)
        tool.pump(50ms);
    const std::size_t created = find("vm_created", other, reset);
    const std::size_t destroyed = find("vm_destroyed", other, reset);
    ASSERT_LT(destroyed, tool.lines().size()) << tool.out;
    ASSERT_LT(created, destroyed) << tool.out;
    const json c = json::parse(tool.lines()[created]);
    EXPECT_EQ(::getpid(), c["owner_pid"]);
    EXPECT_EQ(own_comm(), c["owner_comm"]);

    // A forced wait: vCPU 0 of a VM with rings of 128 entries (soft limit 64)
    // writes 100 pages, so its thread waits at the soft limit until a
    // harvest resets its ring.
    std::uint32_t small_id = 0;
    {
        ModuleVm small(Device::open(),
                       {.vcpu_ring_entries = 128, .vm_ring_entries = 128, .vcpus = 1});
        small.add_slot(0, 128);
        small_id = vm_id(small);
        std::atomic<bool> written{false};
        std::jthread writer([&] {
            const auto binding = small.vcpu(0).bind();
            touch(small.slot_memory(0), 0, 100, 1);
            written = true;
        });
        Harvester harvester(small);
        std::uint64_t harvested = 0;
        // Nobody harvests until the writer waits: a harvester quick enough to
        // keep the ring below its soft limit would spare it the wait.
        for (int i = 0; i < 2000 && small.vcpu(0).ring_status().waits == 0; ++i)
            std::this_thread::sleep_for(10ms);
        while (!written)
            if (small.poll(10ms).harvestable) harvested += harvester.harvest([](auto) {});
        writer.join();
        harvested += harvester.harvest([](auto) {});
        // A store in flight across a reset is executed again and may log its
        // page once more.  That race needs no wait (module_vm_guest_test's
        // expect_each_page_once_but_in_flight says why), so what bounds the
        // duplicates of this one writer is the resets, not the waits: the
        // debug kernel once logged 102 pages for 100 writes and 1 wait.
        const std::uint64_t waits = small.vcpu(0).ring_status().waits;
        EXPECT_LE(1U, waits);
        EXPECT_LE(100U, harvested);
        EXPECT_GE(100U + harvester.stats().resets, harvested);
    }
    for (int i = 0; i < 200 && find("vm_destroyed", small_id) > tool.lines().size(); ++i)
        tool.pump(50ms);
    const std::size_t wait = find("wait", small_id, destroyed);
    ASSERT_LT(wait, tool.lines().size()) << tool.out;
    const json we = json::parse(tool.lines()[wait]);
    EXPECT_EQ(0, we["vcpu"]) << we;
    EXPECT_LT(0U, we["ns"].get<std::uint64_t>()) << we;
    EXPECT_LT(find("vm_created", small_id, destroyed), wait);
    EXPECT_LT(wait, find("vm_destroyed", small_id, destroyed));

    tool.signal(SIGINT);
    EXPECT_EQ(0, tool.wait()) << tool.err;
    EXPECT_EQ("", tool.err);
}

TEST_F(StatGuest, WithoutCapNetAdminExits4) {
    for (const char* mode : {"--once", "--events"}) {
        Tool tool(tool_, {mode}, true);
        EXPECT_EQ(4, tool.wait()) << mode << ": " << tool.err;
        EXPECT_NE(std::string::npos, tool.err.find("needs CAP_NET_ADMIN"))
            << mode << ": " << tool.err;
    }
}

// --- the live table on a pty --------------------------------------------------------------

// /dev/pts, which the runner's init does not mount.
void ensure_devpts() {
    if (::access("/dev/pts/ptmx", F_OK) == 0) return;
    ::mkdir("/dev/pts", 0755);
    ::mount("devpts", "/dev/pts", "devpts", 0, "ptmxmode=0666");
}

TEST_F(StatGuest, LiveTableRendersAndQuitsOnQ) {
    ensure_devpts();
    Workload w;
    w.write_and_harvest(1);
    winsize ws{};
    ws.ws_row = 40;
    ws.ws_col = 120;
    int master = -1;
    const pid_t pid = ::forkpty(&master, nullptr, nullptr, &ws);
    ASSERT_LE(0, pid) << "forkpty: " << std::strerror(errno);
    if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        ::execl(tool_.c_str(), tool_.c_str(), "--interval", "0.2", "--pid",
                std::to_string(::getppid()).c_str(), nullptr);
        ::_exit(127);
    }
    std::string out;
    const std::string row = "vm " + std::to_string(w.id) + " ";
    const auto read_until = [&](const std::string& needle) {
        const auto deadline = std::chrono::steady_clock::now() + 60s;
        while (out.find(needle) == std::string::npos &&
               std::chrono::steady_clock::now() < deadline) {
            pollfd p{master, POLLIN, 0};
            if (::poll(&p, 1, 100) <= 0) continue;
            char buf[4096];
            const ssize_t n = ::read(master, buf, sizeof(buf));
            if (n <= 0) break;
            out.append(buf, static_cast<std::size_t>(n));
        }
        return out.find(needle) != std::string::npos;
    };
    EXPECT_TRUE(read_until(row)) << out;
    EXPECT_NE(std::string::npos, out.find(stat::kEnterScreen));
    EXPECT_NE(std::string::npos, out.find("(q quits)")) << out;
    // The rest of the frame may come in a later read than its first row.
    EXPECT_TRUE(read_until("  vcpu 1")) << out;
    EXPECT_EQ(1, ::write(master, "q", 1));
    EXPECT_TRUE(read_until(stat::kLeaveScreen)) << out;
    int status = -1;
    for (int i = 0; i < 600 && ::waitpid(pid, &status, WNOHANG) == 0; ++i)
        std::this_thread::sleep_for(100ms);
    if (status == -1) ::kill(pid, SIGKILL);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    ::close(master);
}

}  // namespace
