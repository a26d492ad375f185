// SPDX-License-Identifier: LGPL-2.1-or-later
#include "report.hpp"

#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <map>
#include <set>
#include <utility>

namespace dirtyring::stat {

namespace {

using json = nlohmann::json;

std::uint64_t delta(std::uint64_t after, std::uint64_t before) {
    return after >= before ? after - before : after;
}

double per_s(std::uint64_t d, double interval_s) {
    return interval_s > 0 ? static_cast<double>(d) / interval_s : 0.0;
}

double fill_pct(const Ring& r) {
    return r.entries ? 100.0 * r.used / r.entries : 0.0;
}

Rates ring_rates(const Ring& after, const Ring* before, double interval_s) {
    const Ring zero;
    const Ring& b = before ? *before : zero;
    Rates r;
    r.pages_per_s = per_s(delta(after.pushed, b.pushed), interval_s);
    r.fill_pct = fill_pct(after);
    r.waits_per_s = per_s(delta(after.waits, b.waits), interval_s);
    r.wait_ms_per_s = per_s(delta(after.wait_ns, b.wait_ns), interval_s) / 1e6;
    r.overflows = delta(after.overflows, b.overflows);
    return r;
}

// A slot counter summed over the VM's slots; none when a slot lacks it.
std::optional<std::uint64_t> slots_total(const Vm& vm,
                                         std::optional<std::uint64_t> Slot::*counter) {
    std::uint64_t total = 0;
    for (const auto& s : vm.slots) {
        if (!(s.*counter)) return std::nullopt;
        total += *(s.*counter);
    }
    return total;
}

void add(Rates& total, const Rates& r) {
    total.pages_per_s += r.pages_per_s;
    total.fill_pct = std::max(total.fill_pct, r.fill_pct);
    total.waits_per_s += r.waits_per_s;
    total.wait_ms_per_s += r.wait_ms_per_s;
    total.stall_ms_per_s += r.stall_ms_per_s;
    total.overflows += r.overflows;
}

// Higher rates first; ties by id, so the order is stable.
template <typename T>
bool before_in_table(double rate_a, double rate_b, const T& id_a, const T& id_b) {
    if (rate_a != rate_b) return rate_a > rate_b;
    return id_a < id_b;
}

std::string fmt(const char* format, double v) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), format, v);
    return buf;
}

struct Line {
    std::string name, pid, comm, pages, fill, waits, wait_ms, stall_ms, overflows;
    std::string resident_mib, parked;  // VM rows only
};

std::string render(const Line& l) {
    char buf[512];
    std::snprintf(buf, sizeof(buf), "%-14s %8s  %-15s %10s %6s %8s %9s %10s %9s %9s %9s",
                  l.name.c_str(), l.pid.c_str(), l.comm.c_str(), l.pages.c_str(), l.fill.c_str(),
                  l.waits.c_str(), l.wait_ms.c_str(), l.stall_ms.c_str(), l.overflows.c_str(),
                  l.resident_mib.c_str(), l.parked.c_str());
    std::string s = buf;
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s;
}

Line line(std::string name, std::string pid, std::string comm, const Rates& r, bool stall) {
    return {std::move(name),
            std::move(pid),
            std::move(comm),
            fmt("%.1f", r.pages_per_s),
            fmt("%.1f", r.fill_pct),
            fmt("%.1f", r.waits_per_s),
            fmt("%.2f", r.wait_ms_per_s),
            stall ? fmt("%.2f", r.stall_ms_per_s) : "-",
            std::to_string(r.overflows),
            {},
            {}};
}

// A VM's row: its rates and what its slots hold now.
Line vm_line(const VmReport& vm, std::uint64_t page_size) {
    Line l = line("vm " + std::to_string(vm.vm.id), std::to_string(vm.vm.owner_pid),
                  vm.vm.owner_comm, vm.total, true);
    l.resident_mib = vm.resident
                         ? fmt("%.1f", static_cast<double>(*vm.resident) *
                                           static_cast<double>(page_size) / (1024.0 * 1024.0))
                         : "-";
    l.parked = vm.parked ? std::to_string(*vm.parked) : "-";
    return l;
}

json histogram_json(const Histogram& h) {
    return json(std::vector<std::uint64_t>(h.begin(), h.end()));
}

json ring_json(const Ring& r) {
    return {{"entries", r.entries},
            {"soft_limit", r.soft_limit},
            {"used", r.used},
            {"pushed", r.pushed},
            {"soft_full", r.soft_full},
            {"overflows", r.overflows},
            {"waits", r.waits},
            {"wait_ns", r.wait_ns},
            {"wait_hist", histogram_json(r.wait_hist)}};
}

json slot_json(const Slot& s) {
    return {{"id", s.id},
            {"pages", s.pages},
            {"resident", s.resident ? json(*s.resident) : json()},
            {"parked", s.parked ? json(*s.parked) : json()}};
}

json rates_json(const Rates& r, bool stall) {
    json j = {{"pages_logged_per_s", r.pages_per_s},
              {"fill_pct", r.fill_pct},
              {"waits_per_s", r.waits_per_s},
              {"wait_ms_per_s", r.wait_ms_per_s},
              {"overflows", r.overflows}};
    if (stall) j["stall_ms_per_s"] = r.stall_ms_per_s;
    return j;
}

std::string ms(std::uint64_t ns) {
    return fmt("%.3f ms", static_cast<double>(ns) / 1e6);
}

// "1 page", "2 pages".
std::string count_of(std::uint64_t n, const char* one, const char* many) {
    return std::to_string(n) + " " + (n == 1 ? one : many);
}

}  // namespace

bool Filter::matches(const Vm& v) const {
    return (!vm || v.id == *vm) && (!pid || v.owner_pid == *pid);
}

Snapshot take_snapshot(Netlink& nl, const Filter& filter) {
    Snapshot s;
    s.taken = std::chrono::steady_clock::now();
    s.wall = std::chrono::system_clock::now();
    s.page_size = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    for (auto& vm : nl.vms(filter.vm))
        if (filter.matches(vm)) s.vms.push_back(std::move(vm));
    // One VCPU_GET dump for a single VM, else all of them, kept for the VMs
    // above (a VM created between the two dumps is left for the next one).
    std::set<std::uint32_t> ids;
    for (const auto& vm : s.vms) ids.insert(vm.id);
    if (ids.empty()) return s;
    for (auto& v : nl.vcpus(filter.vm))
        if (ids.count(v.vm_id)) s.vcpus.push_back(std::move(v));
    return s;
}

Report make_report(const Snapshot& before, const Snapshot& after) {
    Report report;
    report.time = after.wall;
    report.interval_s = std::chrono::duration<double>(after.taken - before.taken).count();
    report.page_size = after.page_size;
    const double dt = report.interval_s;

    std::map<std::uint32_t, const Vm*> old_vms;
    for (const auto& vm : before.vms) old_vms[vm.id] = &vm;
    std::map<std::pair<std::uint32_t, std::uint32_t>, const Vcpu*> old_vcpus;
    for (const auto& v : before.vcpus) old_vcpus[{v.vm_id, v.id}] = &v;

    for (const auto& vm : after.vms) {
        VmReport r;
        r.vm = vm;
        const auto old = old_vms.find(vm.id);
        const Ring* old_ring =
            old == old_vms.end() || !old->second->vm_ring ? nullptr : &*old->second->vm_ring;
        r.ring = ring_rates(vm.vm_ring.value_or(Ring{}), old_ring, dt);
        r.total = r.ring;
        r.resident = slots_total(vm, &Slot::resident);
        r.parked = slots_total(vm, &Slot::parked);
        for (const auto& v : after.vcpus) {
            if (v.vm_id != vm.id) continue;
            const auto o = old_vcpus.find({v.vm_id, v.id});
            const Vcpu* ov = o == old_vcpus.end() ? nullptr : o->second;
            VcpuReport vr{v, ring_rates(v.ring, ov ? &ov->ring : nullptr, dt)};
            vr.rates.stall_ms_per_s = per_s(delta(v.fault_ns, ov ? ov->fault_ns : 0), dt) / 1e6;
            add(r.total, vr.rates);
            r.vcpus.push_back(std::move(vr));
        }
        std::sort(r.vcpus.begin(), r.vcpus.end(), [](const VcpuReport& a, const VcpuReport& b) {
            return before_in_table(a.rates.pages_per_s, b.rates.pages_per_s, a.vcpu.id, b.vcpu.id);
        });
        report.vms.push_back(std::move(r));
    }
    std::sort(report.vms.begin(), report.vms.end(), [](const VmReport& a, const VmReport& b) {
        return before_in_table(a.total.pages_per_s, b.total.pages_per_s, a.vm.id, b.vm.id);
    });
    return report;
}

std::string format_table(const Report& report, std::size_t max_rows, std::size_t width) {
    std::vector<std::string> rows;
    for (const auto& vm : report.vms) {
        rows.push_back(render(vm_line(vm, report.page_size)));
        for (const auto& v : vm.vcpus)
            rows.push_back(render(line("  vcpu " + std::to_string(v.vcpu.id),
                                       v.vcpu.bound_tid ? std::to_string(*v.vcpu.bound_tid) : "-",
                                       "", v.rates, true)));
        rows.push_back(render(line("  vm ring", "-", "", vm.ring, false)));
    }
    std::string out = render({"VM/VCPU", "PID/TID", "COMM", "PAGES/s", "FILL%", "WAITS/s",
                              "WAIT ms/s", "STALL ms/s", "OVERFLOWS", "RES MiB", "PARKED"});
    out.resize(std::min(out.size(), width));
    out += '\n';
    const std::size_t shown = rows.size() > max_rows ? max_rows : rows.size();
    for (std::size_t i = 0; i < shown; ++i) {
        // The last row that fits says what did not.
        std::string row = i + 1 == shown && shown < rows.size()
                              ? "... " + std::to_string(rows.size() - i) + " more rows"
                              : rows[i];
        row.resize(std::min(row.size(), width));
        out += row + '\n';
    }
    return out;
}

json to_json(const Report& report, std::uint8_t family_version) {
    json vms = json::array();
    for (const auto& vm : report.vms) {
        json slots = json::array();
        for (const auto& s : vm.vm.slots) slots.push_back(slot_json(s));
        json vcpus = json::array();
        for (const auto& v : vm.vcpus)
            vcpus.push_back({{"id", v.vcpu.id},
                             {"bound_tid", v.vcpu.bound_tid ? json(*v.vcpu.bound_tid) : json()},
                             {"faults", v.vcpu.faults},
                             {"fault_ns", v.vcpu.fault_ns},
                             {"fault_hist", histogram_json(v.vcpu.fault_hist)},
                             {"ring", ring_json(v.vcpu.ring)},
                             {"rates", rates_json(v.rates, true)}});
        vms.push_back({{"id", vm.vm.id},
                       {"owner_pid", vm.vm.owner_pid},
                       {"owner_comm", vm.vm.owner_comm},
                       {"slots", slots},
                       {"ring", vm.vm.vm_ring ? ring_json(*vm.vm.vm_ring) : json()},
                       {"ring_rates", rates_json(vm.ring, false)},
                       {"rates", rates_json(vm.total, true)},
                       {"vcpus", vcpus}});
    }
    return {{"time", format_time(report.time)},
            {"interval_s", report.interval_s},
            {"family_version", family_version},
            {"histogram_buckets_ns", "bucket b: [2^b, 2^(b+1)) ns"},
            {"vms", vms}};
}

std::string format_time(std::chrono::system_clock::time_point t) {
    const auto since = t.time_since_epoch();
    const auto secs = std::chrono::duration_cast<std::chrono::seconds>(since);
    const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since - secs).count();
    const std::time_t tt = static_cast<std::time_t>(secs.count());
    std::tm tm{};
    ::gmtime_r(&tt, &tm);
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<int>(millis));
    return buf;
}

std::string format_event(const Event& e, std::chrono::system_clock::time_point t, bool as_json) {
    const std::string time = format_time(t);
    const std::string vm = "vm " + std::to_string(e.vm_id);
    // The ring of a ring's events.
    const std::string ring = vm + (e.vcpu ? " vcpu " + std::to_string(*e.vcpu) : " vm ring");
    const json vcpu = e.vcpu ? json(*e.vcpu) : json();
    switch (e.kind) {
        case Event::Kind::VmCreated:
            if (as_json)
                return json{{"time", time},
                            {"event", "vm_created"},
                            {"vm", e.vm_id},
                            {"owner_pid", e.owner_pid},
                            {"owner_comm", e.owner_comm}}
                    .dump();
            return time + " " + vm + " created by pid " + std::to_string(e.owner_pid) + " (" +
                   e.owner_comm + ")";
        case Event::Kind::VmDestroyed:
            if (as_json)
                return json{{"time", time}, {"event", "vm_destroyed"}, {"vm", e.vm_id}}.dump();
            return time + " " + vm + " destroyed";
        case Event::Kind::WaitBegin:
            if (as_json)
                return json{
                    {"time", time}, {"event", "wait_begin"}, {"vm", e.vm_id}, {"vcpu", vcpu}}
                    .dump();
            return time + " " + ring + " waits for ring room";
        case Event::Kind::WaitEnd:
            // "wait", as before wait_begin existed.
            if (as_json)
                return json{{"time", time},
                            {"event", "wait"},
                            {"vm", e.vm_id},
                            {"vcpu", vcpu},
                            {"ns", e.ns}}
                    .dump();
            return time + " " + ring + " waited " + ms(e.ns);
        case Event::Kind::Reset:
            if (as_json)
                return json{{"time", time},
                            {"event", "reset"},
                            {"vm", e.vm_id},
                            {"entries", e.entries},
                            {"relogged", e.relogged},
                            {"soft_full", e.soft_full},
                            {"overflows", e.overflows},
                            {"ns", e.ns}}
                    .dump();
            return time + " " + vm + " reset " + std::to_string(e.entries) + " entries (" +
                   std::to_string(e.relogged) + " relogged, " + std::to_string(e.soft_full) +
                   " soft-full, " + std::to_string(e.overflows) + " overflows) in " + ms(e.ns);
        case Event::Kind::SoftFull:
            if (as_json)
                return json{{"time", time},
                            {"event", "soft_full"},
                            {"vm", e.vm_id},
                            {"vcpu", vcpu},
                            {"count", e.count}}
                    .dump();
            return time + " " + ring + " reached its soft limit " +
                   count_of(e.count, "time", "times");
        case Event::Kind::Overflow:
            if (as_json)
                return json{{"time", time},
                            {"event", "overflow"},
                            {"vm", e.vm_id},
                            {"vcpu", vcpu},
                            {"count", e.count}}
                    .dump();
            return time + " " + ring + " full: " + count_of(e.count, "page", "pages") + " parked";
        case Event::Kind::Lost:
            if (as_json) return json{{"time", time}, {"event", "lost"}}.dump();
            return time + " events lost: the socket buffer overflowed";
    }
    return {};
}

}  // namespace dirtyring::stat
