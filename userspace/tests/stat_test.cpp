// SPDX-License-Identifier: LGPL-2.1-or-later
// dirtyring-stat's pieces that need no module: the command line, rates and
// their table and JSON from fake snapshots, decoding (and rejecting) the
// family's messages built here with libnl, and the live table on a pty.
#include <gtest/gtest.h>
#include <linux/dirtyring.h>
#include <netlink/genl/genl.h>
#include <poll.h>
#include <pty.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "live.hpp"
#include "netlink.hpp"
#include "options.hpp"
#include "report.hpp"

namespace {

using namespace std::chrono_literals;
using namespace dirtyring::stat;

// --- the command line -------------------------------------------------------------

TEST(StatOptions, Defaults) {
    const Options o = parse_options({});
    EXPECT_FALSE(o.once || o.json || o.events || o.help || o.version);
    EXPECT_EQ(1.0, o.interval_s);
    EXPECT_FALSE(o.vm);
    EXPECT_FALSE(o.pid);
}

TEST(StatOptions, EveryOption) {
    const Options o =
        parse_options({"--once", "--json", "--interval", "0.25", "--vm", "7", "--pid", "1234"});
    EXPECT_TRUE(o.once);
    EXPECT_TRUE(o.json);
    EXPECT_EQ(0.25, o.interval_s);
    EXPECT_EQ(7U, o.vm.value());
    EXPECT_EQ(1234U, o.pid.value());
    EXPECT_TRUE(parse_options({"--events", "--json", "--vm", "1"}).events);
    EXPECT_TRUE(parse_options({"--help"}).help);
    EXPECT_TRUE(parse_options({"-h"}).help);
    EXPECT_TRUE(parse_options({"--version"}).version);
    EXPECT_EQ(3600.0, parse_options({"--interval", "3600"}).interval_s);
    EXPECT_EQ(4294967295U, parse_options({"--vm", "4294967295"}).vm.value());
}

struct BadOptions {
    const char* name;
    std::vector<std::string> args;
    const char* says;
};

class StatOptionsReject : public testing::TestWithParam<BadOptions> {};

TEST_P(StatOptionsReject, WithAMessage) {
    try {
        parse_options(GetParam().args);
        FAIL() << "accepted";
    } catch (const UsageError& e) {
        EXPECT_NE(std::string::npos, std::string(e.what()).find(GetParam().says)) << e.what();
    }
}

INSTANTIATE_TEST_SUITE_P(
    Table, StatOptionsReject,
    testing::Values(
        BadOptions{"unknown_option", {"--turbo"}, "unknown option --turbo"},
        BadOptions{"positional", {"7"}, "unknown option 7"},
        BadOptions{"interval_without_value", {"--interval"}, "--interval: needs a value"},
        BadOptions{"vm_without_value", {"--once", "--vm"}, "--vm: needs a value"},
        BadOptions{"interval_zero", {"--interval", "0"}, "out of range (0.01..3600 seconds)"},
        BadOptions{"interval_negative", {"--interval", "-1"}, "-1 is out of range"},
        BadOptions{"interval_too_long", {"--interval", "3601"}, "out of range"},
        BadOptions{"interval_word", {"--interval", "fast"}, "'fast' is not a number of seconds"},
        BadOptions{"interval_trailing", {"--interval", "1s"}, "'1s' is not a number"},
        BadOptions{"interval_exponent", {"--interval", "1e3"}, "'1e3' is not a number"},
        BadOptions{"interval_nan", {"--interval", "nan"}, "is not a number"},
        BadOptions{"interval_empty", {"--interval", ""}, "is not a number"},
        BadOptions{"vm_zero", {"--vm", "0"}, "--vm: 0 is out of range (1..4294967295)"},
        BadOptions{"vm_negative", {"--vm", "-1"}, "'-1' is not a number"},
        BadOptions{"vm_too_big", {"--vm", "4294967296"}, "out of range"},
        BadOptions{"vm_hex", {"--vm", "0x10"}, "'0x10' is not a number"},
        BadOptions{"pid_zero", {"--pid", "0"}, "--pid: 0 is out of range"},
        BadOptions{"pid_too_big", {"--pid", "2147483648"}, "out of range"},
        BadOptions{"events_once", {"--events", "--once"}, "exclude each other"},
        BadOptions{"events_interval", {"--events", "--interval", "2"}, "no meaning with --events"}),
    [](const auto& p) { return std::string(p.param.name); });

TEST(StatOptions, UsageDocumentsEveryExitCode) {
    const std::string u = usage();
    for (const char* code :
         {"0  done", "1  failed", "2  usage", "3  the dirtyring netlink family is not registered",
          "4  not permitted: needs CAP_NET_ADMIN", "5  the module's netlink family has another"})
        EXPECT_NE(std::string::npos, u.find(code)) << code;
    EXPECT_NE(std::string::npos, u.find("takes two, --interval apart"));
}

// --- rates, table, JSON -------------------------------------------------------------

Ring ring(std::uint32_t entries, std::uint32_t used, std::uint64_t pushed) {
    Ring r;
    r.entries = entries;
    r.soft_limit = entries - 64;
    r.used = used;
    r.pushed = pushed;
    return r;
}

Vm vm(std::uint32_t id, std::uint32_t pid, const char* comm, Ring r) {
    Vm v;
    v.id = id;
    v.owner_pid = pid;
    v.owner_comm = comm;
    v.slots = {{0, 4096}};
    v.vm_ring = r;
    return v;
}

Vcpu vcpu(std::uint32_t vm_id, std::uint32_t id, Ring r, std::uint64_t fault_ns,
          std::optional<std::uint32_t> tid = std::nullopt) {
    Vcpu v;
    v.vm_id = vm_id;
    v.id = id;
    v.bound_tid = tid;
    v.ring = r;
    v.fault_ns = fault_ns;
    return v;
}

// Two snapshots 2 s apart: VM 7 (vCPUs 0 and 1) and VM 9, busier.
struct TwoSnapshots {
    Snapshot before, after;
    TwoSnapshots() {
        const auto t0 = std::chrono::steady_clock::time_point(100s);
        before.taken = t0;
        after.taken = t0 + 2s;
        after.wall = std::chrono::system_clock::time_point(1714564800s + 123ms);

        Ring vr0 = ring(4096, 0, 100), vr1 = ring(4096, 40, 600);
        before.vms = {vm(7, 1234, "vmm", vr0), vm(9, 99, "other", ring(1024, 0, 0))};
        after.vms = {vm(7, 1234, "vmm", vr1), vm(9, 99, "other", ring(1024, 256, 20000))};
        // VM 7: 1024 + 512 pages of 4 KiB in memory (6 MiB), 3 parked; VM 9's
        // slot does not say (a module older than these attributes).
        after.vms[0].slots = {{0, 4096, 1024, 3}, {1, 512, 512, 0}};
        after.page_size = 4096;

        Ring a0 = ring(4096, 100, 1000), a1 = ring(4096, 512, 3000);
        a0.waits = 0;
        a1.waits = 4;
        a0.wait_ns = 0;
        a1.wait_ns = 2'000'000;
        a0.overflows = 5;
        a1.overflows = 8;
        Ring b0 = ring(4096, 0, 50), b1 = ring(4096, 0, 50);
        before.vcpus = {vcpu(7, 0, a0, 1'000'000, 501), vcpu(7, 1, b0, 0)};
        after.vcpus = {vcpu(7, 0, a1, 11'000'000, 501), vcpu(7, 1, b1, 0)};
    }
};

TEST(StatReport, RatesArePerSecondOverTheInterval) {
    const TwoSnapshots s;
    const Report r = make_report(s.before, s.after);
    EXPECT_DOUBLE_EQ(2.0, r.interval_s);
    ASSERT_EQ(2U, r.vms.size());
    // VM 9 logs 10000 pages/s, VM 7 1250: VM 9 first.
    EXPECT_EQ(9U, r.vms[0].vm.id);
    EXPECT_DOUBLE_EQ(10000.0, r.vms[0].total.pages_per_s);
    EXPECT_DOUBLE_EQ(25.0, r.vms[0].total.fill_pct);

    const VmReport& v7 = r.vms[1];
    ASSERT_EQ(2U, v7.vcpus.size());
    const Rates& c0 = v7.vcpus[0].rates;
    EXPECT_EQ(0U, v7.vcpus[0].vcpu.id);
    EXPECT_DOUBLE_EQ(1000.0, c0.pages_per_s);
    EXPECT_DOUBLE_EQ(12.5, c0.fill_pct);
    EXPECT_DOUBLE_EQ(2.0, c0.waits_per_s);
    EXPECT_DOUBLE_EQ(1.0, c0.wait_ms_per_s);
    EXPECT_DOUBLE_EQ(5.0, c0.stall_ms_per_s);
    EXPECT_EQ(3U, c0.overflows);
    EXPECT_DOUBLE_EQ(0.0, v7.vcpus[1].rates.pages_per_s);
    EXPECT_DOUBLE_EQ(250.0, v7.ring.pages_per_s);
    EXPECT_DOUBLE_EQ(40.0 * 100 / 4096, v7.ring.fill_pct);
    // The VM's row adds up its rings; its fill is the fullest ring's.
    EXPECT_DOUBLE_EQ(1250.0, v7.total.pages_per_s);
    EXPECT_DOUBLE_EQ(12.5, v7.total.fill_pct);
    EXPECT_DOUBLE_EQ(2.0, v7.total.waits_per_s);
    EXPECT_DOUBLE_EQ(5.0, v7.total.stall_ms_per_s);
    EXPECT_EQ(3U, v7.total.overflows);
    // What its slots hold now, summed; unknown for VM 9.
    EXPECT_EQ(1536U, v7.resident.value());
    EXPECT_EQ(3U, v7.parked.value());
    EXPECT_FALSE(r.vms[0].resident);
    EXPECT_FALSE(r.vms[0].parked);
}

TEST(StatReport, SlotUsageIsUnknownWhenASlotDoesNotSay) {
    TwoSnapshots s;
    s.after.vms[0].slots[1].resident.reset();  // VM 7's slot 1: parked only
    Report r = make_report(s.before, s.after);
    EXPECT_FALSE(r.vms[1].resident);
    EXPECT_EQ(3U, r.vms[1].parked.value());
    // No slots: nothing in memory, known.
    s.after.vms[0].slots.clear();
    r = make_report(s.before, s.after);
    EXPECT_EQ(0U, r.vms[1].resident.value());
    EXPECT_EQ(0U, r.vms[1].parked.value());
}

TEST(StatReport, NewVmsAndRecreatedVcpusCountFromZero) {
    TwoSnapshots s;
    s.before.vms.pop_back();  // VM 9 is new
    // vCPU 1 was closed and created again: its counters start over.
    s.before.vcpus[1].ring.pushed = 1'000'000;
    s.after.vcpus[1].ring.pushed = 200;
    const Report r = make_report(s.before, s.after);
    EXPECT_DOUBLE_EQ(10000.0, r.vms[0].total.pages_per_s);
    ASSERT_EQ(1U, r.vms[1].vcpus[1].vcpu.id);
    EXPECT_DOUBLE_EQ(100.0, r.vms[1].vcpus[1].rates.pages_per_s);
}

TEST(StatReport, VcpusSortByPagesThenId) {
    TwoSnapshots s;
    s.after.vcpus[1].ring.pushed = 50 + 4000;  // vCPU 1: 2000 pages/s, more than vCPU 0
    Report r = make_report(s.before, s.after);
    EXPECT_EQ(1U, r.vms[1].vcpus[0].vcpu.id);
    EXPECT_EQ(0U, r.vms[1].vcpus[1].vcpu.id);
    s.after.vcpus[1].ring.pushed = 50 + 2000;  // a tie: by id
    r = make_report(s.before, s.after);
    EXPECT_EQ(0U, r.vms[1].vcpus[0].vcpu.id);
}

TEST(StatReport, Filter) {
    const Vm v = vm(7, 1234, "vmm", {});
    EXPECT_TRUE(Filter{}.matches(v));
    EXPECT_TRUE((Filter{7, std::nullopt}.matches(v)));
    EXPECT_FALSE((Filter{8, std::nullopt}.matches(v)));
    EXPECT_TRUE((Filter{std::nullopt, 1234}.matches(v)));
    EXPECT_FALSE((Filter{7, 1}.matches(v)));
}

TEST(StatReport, Table) {
    const TwoSnapshots s;
    const std::string table = format_table(make_report(s.before, s.after));
    EXPECT_EQ(
        "VM/VCPU         PID/TID  COMM               PAGES/s  FILL%  WAITS/s WAIT ms/s STALL ms/s "
        "OVERFLOWS   RES MiB    PARKED\n"
        "vm 9                 99  other              10000.0   25.0      0.0      0.00       0.00  "
        "       0         -         -\n"
        "  vm ring             -                     10000.0   25.0      0.0      0.00          -  "
        "       0\n"
        "vm 7               1234  vmm                 1250.0   12.5      2.0      1.00       5.00  "
        "       3       6.0         3\n"
        "  vcpu 0            501                      1000.0   12.5      2.0      1.00       5.00  "
        "       3\n"
        "  vcpu 1              -                         0.0    0.0      0.0      0.00       0.00  "
        "       0\n"
        "  vm ring             -                       250.0    1.0      0.0      0.00          -  "
        "       0\n",
        table);
}

TEST(StatReport, TableResidentCountsPagesOfTheKernelsSize) {
    TwoSnapshots s;
    s.after.page_size = 65536;  // 1536 pages of 64 KiB
    const std::string table = format_table(make_report(s.before, s.after));
    EXPECT_NE(std::string::npos, table.find("       3      96.0         3\n")) << table;
}

TEST(StatReport, TableFitsRowsAndWidth) {
    const TwoSnapshots s;
    const Report r = make_report(s.before, s.after);
    const std::string t = format_table(r, 3, 20);
    EXPECT_EQ(
        "VM/VCPU         PID/\n"
        "vm 9                \n"
        "  vm ring           \n"
        "... 4 more rows\n",
        t);
    EXPECT_EQ(std::string::npos, format_table(r, 0).find("vm 9"));
}

TEST(StatReport, JsonHasRawCountersAndRates) {
    TwoSnapshots s;
    s.after.vcpus[0].fault_hist[3] = 17;
    s.after.vcpus[0].faults = 20;
    s.after.vms[0].vm_ring->wait_hist[31] = 2;  // VM 7
    const auto j = to_json(make_report(s.before, s.after), 1);
    EXPECT_EQ("2024-05-01T12:00:00.123Z", j["time"]);
    EXPECT_EQ(2.0, j["interval_s"]);
    EXPECT_EQ(1, j["family_version"]);
    ASSERT_EQ(2U, j["vms"].size());
    const auto& v7 = j["vms"][1];
    EXPECT_EQ(7, v7["id"]);
    EXPECT_EQ(1234, v7["owner_pid"]);
    EXPECT_EQ("vmm", v7["owner_comm"]);
    EXPECT_EQ(4096, v7["slots"][0]["pages"]);
    EXPECT_EQ(1024, v7["slots"][0]["resident"]);
    EXPECT_EQ(3, v7["slots"][0]["parked"]);
    EXPECT_EQ(512, v7["slots"][1]["resident"]);
    EXPECT_EQ(0, v7["slots"][1]["parked"]);
    // VM 9's module does not say: null, not 0.
    const auto& v9_slot = j["vms"][0]["slots"][0];
    EXPECT_EQ(4096, v9_slot["pages"]);
    ASSERT_TRUE(v9_slot.contains("resident"));
    EXPECT_TRUE(v9_slot["resident"].is_null());
    EXPECT_TRUE(v9_slot["parked"].is_null());
    EXPECT_EQ(600, v7["ring"]["pushed"]);
    EXPECT_EQ(40, v7["ring"]["used"]);
    EXPECT_EQ(4032, v7["ring"]["soft_limit"]);
    ASSERT_EQ(kHistBuckets, v7["ring"]["wait_hist"].size());
    EXPECT_EQ(2, v7["ring"]["wait_hist"][31]);
    EXPECT_EQ(250.0, v7["ring_rates"]["pages_logged_per_s"]);
    EXPECT_FALSE(v7["ring_rates"].contains("stall_ms_per_s"));
    EXPECT_EQ(1250.0, v7["rates"]["pages_logged_per_s"]);
    const auto& c0 = v7["vcpus"][0];
    EXPECT_EQ(0, c0["id"]);
    EXPECT_EQ(501, c0["bound_tid"]);
    EXPECT_EQ(20, c0["faults"]);
    EXPECT_EQ(11'000'000, c0["fault_ns"]);
    EXPECT_EQ(17, c0["fault_hist"][3]);
    EXPECT_EQ(3000, c0["ring"]["pushed"]);
    EXPECT_EQ(4, c0["ring"]["waits"]);
    EXPECT_EQ(2'000'000, c0["ring"]["wait_ns"]);
    EXPECT_EQ(8, c0["ring"]["overflows"]);
    EXPECT_EQ(5.0, c0["rates"]["stall_ms_per_s"]);
    EXPECT_EQ(2.0, c0["rates"]["waits_per_s"]);
    EXPECT_EQ(3, c0["rates"]["overflows"]);
    EXPECT_TRUE(v7["vcpus"][1]["bound_tid"].is_null());
}

TEST(StatReport, Events) {
    const auto t = std::chrono::system_clock::time_point(1714564800s + 5ms);
    Event e;
    e.kind = Event::Kind::Reset;
    e.vm_id = 3;
    e.entries = 4096;
    e.relogged = 2;
    e.soft_full = 1;
    e.ns = 532'000;
    EXPECT_EQ(
        "2024-05-01T12:00:00.005Z vm 3 reset 4096 entries (2 relogged, 1 soft-full, 0 overflows) "
        "in 0.532 ms",
        format_event(e, t, false));
    const auto j = nlohmann::json::parse(format_event(e, t, true));
    EXPECT_EQ("reset", j["event"]);
    EXPECT_EQ(3, j["vm"]);
    EXPECT_EQ(4096, j["entries"]);
    EXPECT_EQ(532'000, j["ns"]);

    Event w;
    w.kind = Event::Kind::WaitEnd;
    w.vm_id = 3;
    w.ns = 1'500'000;
    EXPECT_EQ("2024-05-01T12:00:00.005Z vm 3 vm ring waited 1.500 ms", format_event(w, t, false));
    auto wj = nlohmann::json::parse(format_event(w, t, true));
    EXPECT_EQ("wait", wj["event"]);  // as before wait_begin existed
    EXPECT_TRUE(wj["vcpu"].is_null());
    EXPECT_EQ(1'500'000, wj["ns"]);
    w.vcpu = 1;
    EXPECT_EQ("2024-05-01T12:00:00.005Z vm 3 vcpu 1 waited 1.500 ms", format_event(w, t, false));
    EXPECT_EQ(1, nlohmann::json::parse(format_event(w, t, true))["vcpu"]);

    Event c;
    c.kind = Event::Kind::VmCreated;
    c.vm_id = 4;
    c.owner_pid = 42;
    c.owner_comm = "qemu";
    EXPECT_EQ("2024-05-01T12:00:00.005Z vm 4 created by pid 42 (qemu)", format_event(c, t, false));
    EXPECT_EQ("qemu", nlohmann::json::parse(format_event(c, t, true))["owner_comm"]);
    c.kind = Event::Kind::VmDestroyed;
    EXPECT_EQ("2024-05-01T12:00:00.005Z vm 4 destroyed", format_event(c, t, false));
}

TEST(StatReport, WaitBeginIsNotWaitEnd) {
    const auto t = std::chrono::system_clock::time_point(1714564800s + 5ms);
    Event b;
    b.kind = Event::Kind::WaitBegin;
    b.vm_id = 3;
    EXPECT_EQ("2024-05-01T12:00:00.005Z vm 3 vm ring waits for ring room",
              format_event(b, t, false));
    auto j = nlohmann::json::parse(format_event(b, t, true));
    EXPECT_EQ((nlohmann::json{{"time", "2024-05-01T12:00:00.005Z"},
                              {"event", "wait_begin"},
                              {"vm", 3},
                              {"vcpu", nullptr}}),
              j);
    b.vcpu = 2;
    EXPECT_EQ("2024-05-01T12:00:00.005Z vm 3 vcpu 2 waits for ring room",
              format_event(b, t, false));
    j = nlohmann::json::parse(format_event(b, t, true));
    EXPECT_EQ(2, j["vcpu"]);
    EXPECT_FALSE(j.contains("ns"));  // it has not ended

    Event e = b;
    e.kind = Event::Kind::WaitEnd;
    e.ns = 7'000;
    EXPECT_NE(format_event(b, t, false), format_event(e, t, false));
    EXPECT_NE(nlohmann::json::parse(format_event(b, t, true))["event"],
              nlohmann::json::parse(format_event(e, t, true))["event"]);
}

TEST(StatReport, SoftFullAndOverflowEventsShowTheirCount) {
    const auto t = std::chrono::system_clock::time_point(1714564800s + 5ms);
    Event s;
    s.kind = Event::Kind::SoftFull;
    s.vm_id = 3;
    s.vcpu = 1;
    s.count = 5;
    EXPECT_EQ("2024-05-01T12:00:00.005Z vm 3 vcpu 1 reached its soft limit 5 times",
              format_event(s, t, false));
    EXPECT_EQ((nlohmann::json{{"time", "2024-05-01T12:00:00.005Z"},
                              {"event", "soft_full"},
                              {"vm", 3},
                              {"vcpu", 1},
                              {"count", 5}}),
              nlohmann::json::parse(format_event(s, t, true)));
    s.vcpu.reset();
    s.count = 1;
    EXPECT_EQ("2024-05-01T12:00:00.005Z vm 3 vm ring reached its soft limit 1 time",
              format_event(s, t, false));
    EXPECT_TRUE(nlohmann::json::parse(format_event(s, t, true))["vcpu"].is_null());

    Event o;
    o.kind = Event::Kind::Overflow;
    o.vm_id = 4;
    o.count = 1;
    EXPECT_EQ("2024-05-01T12:00:00.005Z vm 4 vm ring full: 1 page parked",
              format_event(o, t, false));
    o.vcpu = 0;
    o.count = 12345678901ULL;
    EXPECT_EQ("2024-05-01T12:00:00.005Z vm 4 vcpu 0 full: 12345678901 pages parked",
              format_event(o, t, false));
    EXPECT_EQ((nlohmann::json{{"time", "2024-05-01T12:00:00.005Z"},
                              {"event", "overflow"},
                              {"vm", 4},
                              {"vcpu", 0},
                              {"count", 12345678901ULL}}),
              nlohmann::json::parse(format_event(o, t, true)));
}

// --- decoding ---------------------------------------------------------------------

constexpr int kFakeFamily = 0x1234;

// A message of the family as the module would send it.
class Message {
public:
    explicit Message(std::uint8_t cmd) : msg_(alloc_msg()) {
        EXPECT_NE(nullptr, genlmsg_put(msg_.get(), 0, 0, kFakeFamily, 0, 0, cmd, 1));
    }
    nl_msg* get() const { return msg_.get(); }
    nlmsghdr* hdr() const { return nlmsg_hdr(msg_.get()); }

    void u32(int type, std::uint32_t v) { EXPECT_EQ(0, nla_put_u32(get(), type, v)); }
    void u64(int type, std::uint64_t v) { EXPECT_EQ(0, nla_put_u64(get(), type, v)); }
    void str(int type, const char* s) { EXPECT_EQ(0, nla_put_string(get(), type, s)); }
    void bytes(int type, const void* p, int len) { EXPECT_EQ(0, nla_put(get(), type, len, p)); }
    nlattr* nest(int type) { return nla_nest_start(get(), type); }
    void end(nlattr* n) { nla_nest_end(get(), n); }

    void histogram(int type, std::size_t buckets = kHistBuckets, std::uint64_t first = 1) {
        std::vector<std::uint64_t> h(buckets);
        for (std::size_t i = 0; i < buckets; ++i) h[i] = first + i;
        bytes(type, h.data(), static_cast<int>(buckets * sizeof(std::uint64_t)));
    }

    // A ring nest whose counters are `base` + their attribute number.
    void ring(int type, std::uint64_t base, int skip = -1) {
        nlattr* n = nest(type);
        for (int a = DIRTYRING_A_RING_ENTRIES; a <= DIRTYRING_A_RING_USED; ++a)
            if (a != skip) u32(a, static_cast<std::uint32_t>(base) + static_cast<std::uint32_t>(a));
        for (int a = DIRTYRING_A_RING_PUSHED; a <= DIRTYRING_A_RING_WAIT_NS; ++a)
            if (a != skip) u64(a, base + static_cast<std::uint64_t>(a));
        if (skip != DIRTYRING_A_RING_WAIT_HIST)
            histogram(DIRTYRING_A_RING_WAIT_HIST, kHistBuckets, base);
        end(n);
    }

private:
    NlMsg msg_;
};

Ring expected_ring(std::uint64_t base) {
    Ring r;
    r.entries = static_cast<std::uint32_t>(base) + DIRTYRING_A_RING_ENTRIES;
    r.soft_limit = static_cast<std::uint32_t>(base) + DIRTYRING_A_RING_SOFT_LIMIT;
    r.used = static_cast<std::uint32_t>(base) + DIRTYRING_A_RING_USED;
    r.pushed = base + DIRTYRING_A_RING_PUSHED;
    r.soft_full = base + DIRTYRING_A_RING_SOFT_FULL;
    r.overflows = base + DIRTYRING_A_RING_OVERFLOWS;
    r.waits = base + DIRTYRING_A_RING_WAITS;
    r.wait_ns = base + DIRTYRING_A_RING_WAIT_NS;
    for (std::size_t i = 0; i < kHistBuckets; ++i) r.wait_hist[i] = base + i;
    return r;
}

// Slots with their resident and parked pages, unless `older_module`.
Message vm_message(bool older_module = false) {
    Message m(DIRTYRING_CMD_VM_GET);
    m.u32(DIRTYRING_A_VM_ID, 5);
    m.u32(DIRTYRING_A_VM_OWNER_PID, 321);
    m.str(DIRTYRING_A_VM_OWNER_COMM, "dirtyring-vmm");
    for (std::uint32_t s = 0; s < 2; ++s) {
        nlattr* n = m.nest(DIRTYRING_A_VM_SLOT);
        m.u32(DIRTYRING_A_SLOT_ID, s);
        m.u64(DIRTYRING_A_SLOT_PAGES, 1000 + s);
        if (!older_module) {
            m.u64(DIRTYRING_A_SLOT_RESIDENT, 500 + s);
            m.u64(DIRTYRING_A_SLOT_PARKED, 7 + s);
        }
        m.end(n);
    }
    m.ring(DIRTYRING_A_VM_RING, 100);
    return m;
}

TEST(StatDecode, Vm) {
    const Message m = vm_message();
    const Vm v = decode_vm(m.hdr());
    EXPECT_EQ(5U, v.id);
    EXPECT_EQ(321U, v.owner_pid);
    EXPECT_EQ("dirtyring-vmm", v.owner_comm);
    ASSERT_EQ(2U, v.slots.size());
    EXPECT_EQ((Slot{0, 1000, 500, 7}), v.slots[0]);
    EXPECT_EQ((Slot{1, 1001, 501, 8}), v.slots[1]);
    EXPECT_EQ(expected_ring(100), v.vm_ring);
}

TEST(StatDecode, SlotsOfAnOlderModuleHaveNoResidentOrParked) {
    const Vm v = decode_vm(vm_message(true).hdr());
    ASSERT_EQ(2U, v.slots.size());
    EXPECT_EQ((Slot{1, 1001, std::nullopt, std::nullopt}), v.slots[1]);
    // Unknown in the table and the JSON, not 0.
    Snapshot before, after;
    after.taken = before.taken + 1s;
    after.vms = {v};
    const Report r = make_report(before, after);
    ASSERT_EQ(1U, r.vms.size());
    EXPECT_FALSE(r.vms[0].resident);
    EXPECT_FALSE(r.vms[0].parked);
    const std::string table = format_table(r);
    EXPECT_NE(std::string::npos, table.find("vm 5 ")) << table;
    EXPECT_NE(std::string::npos, table.find("         -         -\n")) << table;
    const auto j = to_json(r, 1)["vms"][0]["slots"][1];
    EXPECT_EQ(1001, j["pages"]);
    EXPECT_TRUE(j["resident"].is_null());
    EXPECT_TRUE(j["parked"].is_null());
}

TEST(StatDecode, AttributesNewerThanTheToolAreIgnored) {
    Message m = vm_message();
    m.u64(DIRTYRING_A_MAX + 1, 7);
    nlattr* r = m.nest(DIRTYRING_A_VM_VCPU);  // a nest VM_GET may carry: not read here
    m.u32(DIRTYRING_A_VCPU_ID, 0);
    m.end(r);
    EXPECT_EQ(5U, decode_vm(m.hdr()).id);
}

Message vcpu_message(bool bound) {
    Message m(DIRTYRING_CMD_VCPU_GET);
    m.u32(DIRTYRING_A_VM_ID, 5);
    nlattr* n = m.nest(DIRTYRING_A_VM_VCPU);
    m.u32(DIRTYRING_A_VCPU_ID, 3);
    if (bound) m.u32(DIRTYRING_A_VCPU_BOUND_TID, 777);
    m.ring(DIRTYRING_A_VCPU_RING, 200);
    m.u64(DIRTYRING_A_VCPU_FAULTS, 11);
    m.u64(DIRTYRING_A_VCPU_FAULT_NS, 12345);
    m.histogram(DIRTYRING_A_VCPU_FAULT_HIST, kHistBuckets, 1000);
    m.end(n);
    return m;
}

TEST(StatDecode, Vcpu) {
    const Vcpu v = decode_vcpu(vcpu_message(true).hdr());
    EXPECT_EQ(5U, v.vm_id);
    EXPECT_EQ(3U, v.id);
    EXPECT_EQ(777U, v.bound_tid.value());
    EXPECT_EQ(expected_ring(200), v.ring);
    EXPECT_EQ(11U, v.faults);
    EXPECT_EQ(12345U, v.fault_ns);
    EXPECT_EQ(1000U, v.fault_hist[0]);
    EXPECT_EQ(1031U, v.fault_hist[31]);
    EXPECT_FALSE(decode_vcpu(vcpu_message(false).hdr()).bound_tid);
}

TEST(StatDecode, Histogram) {
    Message m(DIRTYRING_CMD_VM_GET);
    std::array<std::uint64_t, kHistBuckets> h{};
    h[0] = 5;            // [0, 2) ns
    h[10] = 1ULL << 40;  // [1024, 2048) ns
    h[31] = ~0ULL;       // 2^31 ns and longer
    m.bytes(DIRTYRING_A_VCPU_FAULT_HIST, h.data(), sizeof(h));
    m.bytes(DIRTYRING_A_VCPU_FAULT_HIST, h.data(), sizeof(h) - 8);
    m.bytes(DIRTYRING_A_VCPU_FAULT_HIST, h.data(), 0);
    auto* gh = static_cast<genlmsghdr*>(nlmsg_data(m.hdr()));
    nlattr* full = genlmsg_attrdata(gh, 0);
    int rem = genlmsg_attrlen(gh, 0);
    EXPECT_EQ(h, decode_histogram(full, "test"));
    nlattr* short_one = nla_next(full, &rem);
    try {
        decode_histogram(short_one, "vCPU 0 FAULT_HIST");
        FAIL() << "a short histogram was accepted";
    } catch (const dirtyring::Error& e) {
        EXPECT_EQ(EPROTO, e.errnum());
        EXPECT_NE(std::string::npos,
                  std::string(e.what()).find("vCPU 0 FAULT_HIST: a histogram of 248 bytes, 256 "
                                             "(32 u64 counts) expected"))
            << e.what();
    }
    EXPECT_THROW(decode_histogram(nla_next(short_one, &rem), "x"), dirtyring::Error);
}

// One malformed message: what to do to a good one and what the error says.
struct Malformed {
    const char* name;
    std::function<Message()> make;
    const char* says;
};

// `decode` of the malformed message of `m`: an Error (EPROTO) saying m.says.
void expect_rejected(const Malformed& m, const std::function<void(nlmsghdr*)>& decode) {
    const Message msg = m.make();
    try {
        decode(msg.hdr());
        FAIL() << "accepted";
    } catch (const dirtyring::Error& e) {
        EXPECT_EQ(EPROTO, e.errnum()) << e.what();
        EXPECT_NE(std::string::npos, std::string(e.what()).find(m.says)) << e.what();
    }
}

class StatDecodeRejects : public testing::TestWithParam<Malformed> {};

TEST_P(StatDecodeRejects, WithAClearError) {
    expect_rejected(GetParam(), [](nlmsghdr* h) {
        if (genlmsg_hdr(h)->cmd == DIRTYRING_CMD_VCPU_GET)
            decode_vcpu(h);
        else
            decode_vm(h);
    });
}

class StatDecodeRejectsEvents : public testing::TestWithParam<Malformed> {};

TEST_P(StatDecodeRejectsEvents, WithAClearError) {
    expect_rejected(GetParam(), [](nlmsghdr* h) { decode_event(h); });
}

Message vm_without(int attr) {
    Message m(DIRTYRING_CMD_VM_GET);
    if (attr != DIRTYRING_A_VM_ID) m.u32(DIRTYRING_A_VM_ID, 5);
    if (attr != DIRTYRING_A_VM_OWNER_PID) m.u32(DIRTYRING_A_VM_OWNER_PID, 321);
    if (attr != DIRTYRING_A_VM_OWNER_COMM) m.str(DIRTYRING_A_VM_OWNER_COMM, "x");
    if (attr != DIRTYRING_A_VM_RING) m.ring(DIRTYRING_A_VM_RING, 100);
    return m;
}

Message vm_with_ring_without(int ring_attr) {
    Message m(DIRTYRING_CMD_VM_GET);
    m.u32(DIRTYRING_A_VM_ID, 5);
    m.u32(DIRTYRING_A_VM_OWNER_PID, 321);
    m.str(DIRTYRING_A_VM_OWNER_COMM, "x");
    m.ring(DIRTYRING_A_VM_RING, 100, ring_attr);
    return m;
}

TEST(StatDecode, VmWithoutRingsYet) {
    const Vm v = decode_vm(vm_without(DIRTYRING_A_VM_RING).hdr());
    EXPECT_EQ(5U, v.id);
    EXPECT_FALSE(v.vm_ring);
    // Shown with empty rings.
    Snapshot before, after;
    after.taken = before.taken + 1s;
    after.vms = {v};
    const Report r = make_report(before, after);
    ASSERT_EQ(1U, r.vms.size());
    EXPECT_EQ(0.0, r.vms[0].total.pages_per_s);
    EXPECT_TRUE(to_json(r, 1)["vms"][0]["ring"].is_null());
}

INSTANTIATE_TEST_SUITE_P(
    Table, StatDecodeRejects,
    testing::Values(
        Malformed{"no_vm_id", [] { return vm_without(DIRTYRING_A_VM_ID); },
                  "VM_GET reply: attribute VM_ID is missing"},
        Malformed{"no_owner", [] { return vm_without(DIRTYRING_A_VM_OWNER_PID); },
                  "VM_GET reply: attribute VM_OWNER_PID is missing"},
        Malformed{"no_comm", [] { return vm_without(DIRTYRING_A_VM_OWNER_COMM); },
                  "attribute VM_OWNER_COMM is missing"},
        Malformed{"no_ring_used", [] { return vm_with_ring_without(DIRTYRING_A_RING_USED); },
                  "VM_GET reply of VM 5, VM ring: attribute RING_USED is missing"},
        Malformed{"no_wait_hist", [] { return vm_with_ring_without(DIRTYRING_A_RING_WAIT_HIST); },
                  "attribute RING_WAIT_HIST is missing"},
        Malformed{"vm_id_u16",
                  [] {
                      Message m(DIRTYRING_CMD_VM_GET);
                      EXPECT_EQ(0, nla_put_u16(m.get(), DIRTYRING_A_VM_ID, 5));
                      return m;
                  },
                  "attribute VM_ID has 2 bytes, 4 expected"},
        Malformed{"pushed_u32",
                  [] {
                      Message m = vm_without(DIRTYRING_A_VM_RING);
                      nlattr* n = m.nest(DIRTYRING_A_VM_RING);
                      m.u32(DIRTYRING_A_RING_PUSHED, 1);
                      m.end(n);
                      return m;
                  },
                  "VM ring: attribute RING_PUSHED has 4 bytes, 8 expected"},
        Malformed{"slot_resident_u32",
                  [] {
                      Message m = vm_without(DIRTYRING_A_VM_RING);
                      nlattr* n = m.nest(DIRTYRING_A_VM_SLOT);
                      m.u32(DIRTYRING_A_SLOT_ID, 0);
                      m.u64(DIRTYRING_A_SLOT_PAGES, 1);
                      m.u32(DIRTYRING_A_SLOT_RESIDENT, 1);
                      m.end(n);
                      return m;
                  },
                  "VM_GET reply of VM 5, slot: attribute SLOT_RESIDENT has 4 bytes, 8 expected"},
        Malformed{"slot_parked_u32",
                  [] {
                      Message m = vm_without(DIRTYRING_A_VM_RING);
                      nlattr* n = m.nest(DIRTYRING_A_VM_SLOT);
                      m.u32(DIRTYRING_A_SLOT_ID, 0);
                      m.u64(DIRTYRING_A_SLOT_PAGES, 1);
                      m.u32(DIRTYRING_A_SLOT_PARKED, 1);
                      m.end(n);
                      return m;
                  },
                  "VM_GET reply of VM 5, slot: attribute SLOT_PARKED has 4 bytes, 8 expected"},
        Malformed{"comm_unterminated",
                  [] {
                      Message m(DIRTYRING_CMD_VM_GET);
                      m.u32(DIRTYRING_A_VM_ID, 5);
                      m.bytes(DIRTYRING_A_VM_OWNER_COMM, "abcd", 4);
                      return m;
                  },
                  "attribute VM_OWNER_COMM is not a NUL-terminated string"},
        Malformed{"comm_too_long",
                  [] {
                      Message m(DIRTYRING_CMD_VM_GET);
                      m.str(DIRTYRING_A_VM_OWNER_COMM, "a-name-longer-than-comm");
                      return m;
                  },
                  "attribute VM_OWNER_COMM is a string of 24 bytes, at most 16 expected"},
        Malformed{"fault_hist_short",
                  [] {
                      Message m(DIRTYRING_CMD_VCPU_GET);
                      m.u32(DIRTYRING_A_VM_ID, 5);
                      nlattr* n = m.nest(DIRTYRING_A_VM_VCPU);
                      m.u32(DIRTYRING_A_VCPU_ID, 2);
                      m.histogram(DIRTYRING_A_VCPU_FAULT_HIST, kHistBuckets - 1);
                      m.end(n);
                      return m;
                  },
                  "VCPU_GET reply of VM 5, vCPU: attribute VCPU_FAULT_HIST has 248 bytes, 256 "
                  "expected"},
        Malformed{"vcpu_without_nest",
                  [] {
                      Message m(DIRTYRING_CMD_VCPU_GET);
                      m.u32(DIRTYRING_A_VM_ID, 5);
                      return m;
                  },
                  "VCPU_GET reply: attribute VM_VCPU is missing"},
        Malformed{"vcpu_without_ring",
                  [] {
                      Message m(DIRTYRING_CMD_VCPU_GET);
                      m.u32(DIRTYRING_A_VM_ID, 5);
                      nlattr* n = m.nest(DIRTYRING_A_VM_VCPU);
                      m.u32(DIRTYRING_A_VCPU_ID, 2);
                      m.end(n);
                      return m;
                  },
                  "VCPU_GET reply of VM 5, vCPU: attribute VCPU_RING is missing"},
        Malformed{"wrong_command",
                  [] {
                      Message m = vcpu_message(true);
                      genlmsg_hdr(m.hdr())->cmd = DIRTYRING_CMD_WAIT_END_NTF;
                      return m;
                  },
                  "command 5"},
        Malformed{"truncated",
                  [] {
                      Message m = vm_message();
                      m.hdr()->nlmsg_len -= 12;  // in the middle of the VM ring nest
                      return m;
                  },
                  "VM_GET reply: truncated"},
        Malformed{"truncated_nest",
                  [] {
                      Message m = vm_without(DIRTYRING_A_VM_RING);
                      nlattr* n = m.nest(DIRTYRING_A_VM_RING);
                      m.u32(DIRTYRING_A_RING_ENTRIES, 1);
                      m.end(n);
                      n->nla_len = static_cast<std::uint16_t>(n->nla_len - 2);  // cuts ENTRIES
                      return m;
                  },
                  "VM ring: truncated"},
        Malformed{"no_generic_header",
                  [] {
                      Message m(DIRTYRING_CMD_VM_GET);
                      m.hdr()->nlmsg_len = 16 + 2;
                      return m;
                  },
                  "shorter than a generic netlink header"}),
    [](const auto& p) { return std::string(p.param.name); });

// A notification of `cmd` for VM 8 with these attributes.
Message event(int cmd, const std::function<void(Message&)>& fill) {
    Message m(static_cast<std::uint8_t>(cmd));
    m.u32(DIRTYRING_A_VM_ID, 8);
    fill(m);
    return m;
}

INSTANTIATE_TEST_SUITE_P(
    Table, StatDecodeRejectsEvents,
    testing::Values(Malformed{"soft_full_without_count",
                              [] { return event(DIRTYRING_CMD_SOFT_FULL_NTF, [](Message&) {}); },
                              "event: attribute EV_COUNT is missing"},
                    Malformed{"overflow_without_count",
                              [] {
                                  return event(DIRTYRING_CMD_OVERFLOW_NTF,
                                               [](Message& m) { m.u32(DIRTYRING_A_EV_VCPU, 1); });
                              },
                              "event: attribute EV_COUNT is missing"},
                    Malformed{"count_u32",
                              [] {
                                  return event(DIRTYRING_CMD_OVERFLOW_NTF,
                                               [](Message& m) { m.u32(DIRTYRING_A_EV_COUNT, 1); });
                              },
                              "event: attribute EV_COUNT has 4 bytes, 8 expected"},
                    Malformed{"wait_end_without_ns",
                              [] { return event(DIRTYRING_CMD_WAIT_END_NTF, [](Message&) {}); },
                              "event: attribute EV_NS is missing"},
                    Malformed{"wait_begin_vcpu_u64",
                              [] {
                                  return event(DIRTYRING_CMD_WAIT_BEGIN_NTF,
                                               [](Message& m) { m.u64(DIRTYRING_A_EV_VCPU, 1); });
                              },
                              "event: attribute EV_VCPU has 8 bytes, 4 expected"}),
    [](const auto& p) { return std::string(p.param.name); });

TEST(StatDecode, Events) {
    Message created(DIRTYRING_CMD_VM_CREATED_NTF);
    created.u32(DIRTYRING_A_VM_ID, 8);
    created.u32(DIRTYRING_A_VM_OWNER_PID, 55);
    created.str(DIRTYRING_A_VM_OWNER_COMM, "vmm");
    auto e = decode_event(created.hdr());
    ASSERT_TRUE(e);
    EXPECT_EQ(Event::Kind::VmCreated, e->kind);
    EXPECT_EQ(8U, e->vm_id);
    EXPECT_EQ(55U, e->owner_pid);
    EXPECT_EQ("vmm", e->owner_comm);

    Message destroyed(DIRTYRING_CMD_VM_DESTROYED_NTF);
    destroyed.u32(DIRTYRING_A_VM_ID, 8);
    EXPECT_EQ(Event::Kind::VmDestroyed, decode_event(destroyed.hdr())->kind);

    Message wait(DIRTYRING_CMD_WAIT_END_NTF);
    wait.u32(DIRTYRING_A_VM_ID, 8);
    wait.u64(DIRTYRING_A_EV_NS, 999);
    e = decode_event(wait.hdr());
    EXPECT_EQ(Event::Kind::WaitEnd, e->kind);
    EXPECT_FALSE(e->vcpu);
    EXPECT_EQ(999U, e->ns);
    wait.u32(DIRTYRING_A_EV_VCPU, 2);
    EXPECT_EQ(2U, decode_event(wait.hdr())->vcpu.value());

    Message reset(DIRTYRING_CMD_RESET_NTF);
    reset.u32(DIRTYRING_A_VM_ID, 8);
    reset.u64(DIRTYRING_A_EV_ENTRIES, 10);
    reset.u64(DIRTYRING_A_EV_RELOGGED, 11);
    reset.u64(DIRTYRING_A_EV_NS, 12);
    reset.u64(DIRTYRING_A_EV_SOFT_FULL, 13);
    reset.u64(DIRTYRING_A_EV_OVERFLOWS, 14);
    e = decode_event(reset.hdr());
    EXPECT_EQ(Event::Kind::Reset, e->kind);
    EXPECT_EQ(10U, e->entries);
    EXPECT_EQ(11U, e->relogged);
    EXPECT_EQ(12U, e->ns);
    EXPECT_EQ(13U, e->soft_full);
    EXPECT_EQ(14U, e->overflows);

    Message incomplete(DIRTYRING_CMD_RESET_NTF);
    incomplete.u32(DIRTYRING_A_VM_ID, 8);
    EXPECT_THROW(decode_event(incomplete.hdr()), dirtyring::Error);

    Message future(DIRTYRING_CMD_MAX + 1);
    EXPECT_FALSE(decode_event(future.hdr()));
}

TEST(StatDecode, WaitBeginEvent) {
    Message begin(DIRTYRING_CMD_WAIT_BEGIN_NTF);
    begin.u32(DIRTYRING_A_VM_ID, 8);
    auto e = decode_event(begin.hdr());
    ASSERT_TRUE(e);
    EXPECT_EQ(Event::Kind::WaitBegin, e->kind);
    EXPECT_EQ(8U, e->vm_id);
    EXPECT_FALSE(e->vcpu);  // the VM ring
    begin.u32(DIRTYRING_A_EV_VCPU, 3);
    e = decode_event(begin.hdr());
    EXPECT_EQ(Event::Kind::WaitBegin, e->kind);
    EXPECT_EQ(3U, e->vcpu.value());
}

TEST(StatDecode, SoftFullAndOverflowEvents) {
    for (const auto& [cmd, kind] : {std::pair{DIRTYRING_CMD_SOFT_FULL_NTF, Event::Kind::SoftFull},
                                    std::pair{DIRTYRING_CMD_OVERFLOW_NTF, Event::Kind::Overflow}}) {
        Message m(static_cast<std::uint8_t>(cmd));
        m.u32(DIRTYRING_A_VM_ID, 9);
        m.u64(DIRTYRING_A_EV_COUNT, 1ULL << 40);
        auto e = decode_event(m.hdr());
        ASSERT_TRUE(e) << cmd;
        EXPECT_EQ(kind, e->kind) << cmd;
        EXPECT_EQ(9U, e->vm_id);
        EXPECT_EQ(1ULL << 40, e->count);
        EXPECT_FALSE(e->vcpu);
        m.u32(DIRTYRING_A_EV_VCPU, 63);
        e = decode_event(m.hdr());
        EXPECT_EQ(63U, e->vcpu.value());
        EXPECT_EQ(1ULL << 40, e->count);
    }
}

TEST(StatFamily, VersionMismatchSaysWhichSideIsOlder) {
    EXPECT_NO_THROW(check_family_version(kFamilyVersion));
    for (const std::uint8_t v : {std::uint8_t(kFamilyVersion + 1), std::uint8_t(0)}) {
        try {
            check_family_version(v);
            FAIL() << "version " << v << " accepted";
        } catch (const FamilyError& e) {
            EXPECT_EQ(FamilyError::Reason::Version, e.reason());
            EXPECT_NE(std::string::npos, e.message().find("has version " + std::to_string(v) +
                                                          ", this dirtyring-stat speaks version 1"))
                << e.message();
            EXPECT_NE(std::string::npos, e.message().find(v ? "newer" : "older")) << e.message();
        }
    }
}

TEST(StatFamily, LibnlErrorsMapToErrno) {
    EXPECT_EQ(EPERM, errno_of_nl_error(-NLE_PERM));
    EXPECT_EQ(ENOENT, errno_of_nl_error(NLE_OBJ_NOTFOUND));
    EXPECT_EQ(ENOMEM, errno_of_nl_error(-NLE_NOMEM));
    EXPECT_EQ(EPROTO, errno_of_nl_error(-NLE_MSG_TRUNC));
}

// --- the live table on a pty ----------------------------------------------------------

// A pty pair; the test holds the master side, the table runs on the slave.
struct Pty {
    int master = -1, slave = -1;
    Pty() {
        winsize ws{};
        ws.ws_row = 30;
        ws.ws_col = 120;
        EXPECT_EQ(0, ::openpty(&master, &slave, nullptr, nullptr, &ws));
    }
    ~Pty() {
        ::close(master);
        ::close(slave);
    }
    tcflag_t lflag() const {
        termios t{};
        EXPECT_EQ(0, ::tcgetattr(slave, &t));
        return t.c_lflag;
    }
    // Reads what the table wrote until `needle` shows up (true) or 10 s
    // pass without it (false).
    bool read_until(const std::string& needle, std::string& out) const {
        const auto deadline = std::chrono::steady_clock::now() + 10s;
        while (out.find(needle) == std::string::npos) {
            if (std::chrono::steady_clock::now() > deadline) return false;
            pollfd p{master, POLLIN, 0};
            if (::poll(&p, 1, 100) <= 0) continue;
            char buf[4096];
            const ssize_t n = ::read(master, buf, sizeof(buf));
            if (n <= 0) return false;
            out.append(buf, static_cast<std::size_t>(n));
        }
        return true;
    }
};

// Snapshots of one VM whose vCPU 0 logs 1000 pages per sample.
class FakeSampler {
public:
    explicit FakeSampler(int throw_at = -1) : throw_at_(throw_at) {}
    Snapshot operator()() {
        if (calls_++ == throw_at_) throw dirtyring::Error(EIO, "fake sampling failure");
        Snapshot s;
        s.taken = std::chrono::steady_clock::now();
        s.wall = std::chrono::system_clock::now();
        s.vms = {vm(7, 1234, "fake-vmm", ring(4096, 0, 0))};
        s.vcpus = {vcpu(7, 0, ring(4096, 100, 1000 * static_cast<std::uint64_t>(calls_)), 0, 42)};
        return s;
    }

private:
    int throw_at_;
    int calls_ = 0;
};

TEST(StatLive, RendersAndQuitsOnQ) {
    Pty pty;
    const tcflag_t before = pty.lflag();
    ASSERT_TRUE(before & ICANON);
    FakeSampler sampler;
    auto live = std::async(std::launch::async,
                           [&] { run_live(std::ref(sampler), 0.05, pty.slave, pty.slave, -1); });
    std::string out;
    ASSERT_TRUE(pty.read_until("  vcpu 0", out)) << out;
    EXPECT_NE(std::string::npos, out.find(kEnterScreen));
    EXPECT_NE(std::string::npos, out.find("VM/VCPU")) << out;
    EXPECT_NE(std::string::npos, out.find("vm 7")) << out;
    EXPECT_NE(std::string::npos, out.find("fake-vmm")) << out;
    EXPECT_NE(std::string::npos, out.find("(q quits)")) << out;
    // Keys one at a time, unechoed, while the table runs.
    EXPECT_FALSE(pty.lflag() & ICANON);
    EXPECT_FALSE(pty.lflag() & ECHO);
    ASSERT_EQ(1, ::write(pty.master, "q", 1));
    ASSERT_EQ(std::future_status::ready, live.wait_for(10s));
    live.get();
    EXPECT_EQ(before, pty.lflag());
    EXPECT_TRUE(pty.read_until(kLeaveScreen, out));
}

TEST(StatLive, RestoresTheTerminalWhenSamplingFails) {
    Pty pty;
    const tcflag_t before = pty.lflag();
    FakeSampler sampler(2);
    auto live = std::async(std::launch::async,
                           [&] { run_live(std::ref(sampler), 0.02, pty.slave, pty.slave, -1); });
    ASSERT_EQ(std::future_status::ready, live.wait_for(10s));
    EXPECT_THROW(live.get(), dirtyring::Error);
    EXPECT_EQ(before, pty.lflag());
    std::string out;
    EXPECT_TRUE(pty.read_until(kLeaveScreen, out));
}

TEST(StatLive, StopsOnTheStopFd) {
    Pty pty;
    int stop[2];
    ASSERT_EQ(0, ::pipe(stop));
    FakeSampler sampler;
    auto live = std::async(std::launch::async, [&] {
        run_live(std::ref(sampler), 0.05, pty.slave, pty.slave, stop[0]);
    });
    std::string out;
    ASSERT_TRUE(pty.read_until("vm 7", out)) << out;
    ASSERT_EQ(1, ::write(stop[1], "x", 1));
    EXPECT_EQ(std::future_status::ready, live.wait_for(10s));
    live.get();
    ::close(stop[0]);
    ::close(stop[1]);
}

}  // namespace
