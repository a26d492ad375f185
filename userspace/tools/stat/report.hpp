// SPDX-License-Identifier: LGPL-2.1-or-later
// What dirtyring-stat shows: rates between two snapshots of the family's
// counters, as a table (the live view and --once) or JSON, and events as
// lines.  Pure functions of their input: tested with fake snapshots.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "netlink.hpp"

namespace dirtyring::stat {

// Which VMs to show: --vm and --pid (both, when both are given).
struct Filter {
    std::optional<std::uint32_t> vm;
    std::optional<std::uint32_t> pid;
    bool matches(const Vm& vm) const;
};

// The counters of the matching VMs and their vCPUs at one moment.
struct Snapshot {
    std::chrono::steady_clock::time_point taken{};
    std::chrono::system_clock::time_point wall{};
    std::vector<Vm> vms;
    std::vector<Vcpu> vcpus;  // of those VMs only
    // The kernel's, which slots count pages of (take_snapshot() asks sysconf).
    std::uint64_t page_size = 4096;
};

// VM_GET and VCPU_GET through `nl`, filtered.
Snapshot take_snapshot(Netlink& nl, const Filter& filter);

// What changed per second between two snapshots.  A counter that went
// down (a vCPU id closed and created again, with a new ring) counts from 0.
struct Rates {
    double pages_per_s = 0;       // pages logged (delta of pushed)
    double fill_pct = 0;          // used / entries now (a VM's row: its fullest ring)
    double waits_per_s = 0;       // ring-full waits
    double wait_ms_per_s = 0;     // time spent in them
    double stall_ms_per_s = 0;    // vCPUs: time their threads spent in first-write faults
    std::uint64_t overflows = 0;  // pages parked in the interval
};

struct VcpuReport {
    Vcpu vcpu;
    Rates rates;
};

struct VmReport {
    Vm vm;
    Rates total;                    // the VM's row: every ring of the VM, stall of every vCPU
    Rates ring;                     // the VM ring's own row
    std::vector<VcpuReport> vcpus;  // by pages/s, then id
    // Its slots' pages in memory and parked as overflow, now; none when a
    // slot does not say (a module older than these attributes).
    std::optional<std::uint64_t> resident;
    std::optional<std::uint64_t> parked;
};

struct Report {
    std::chrono::system_clock::time_point time{};  // of the second snapshot
    double interval_s = 0;                         // between the two snapshots
    std::uint64_t page_size = 4096;                // the second snapshot's
    std::vector<VmReport> vms;                     // by pages/s, then id
};

// The rates from `before` to `after` (VMs and vCPUs new in `after` count
// from 0); sorted as above.
Report make_report(const Snapshot& before, const Snapshot& after);

// The table: a header and one row per VM, then one per vCPU and the VM
// ring, indented under it.  At most `max_rows` rows and `width` columns
// (the terminal's), both unlimited by default.
std::string format_table(const Report& report,
                         std::size_t max_rows = std::numeric_limits<std::size_t>::max(),
                         std::size_t width = std::numeric_limits<std::size_t>::max());

// Every raw counter, the histograms and the rates.
nlohmann::json to_json(const Report& report, std::uint8_t family_version);

// ISO 8601, UTC, milliseconds: 2024-05-01T12:00:00.123Z.
std::string format_time(std::chrono::system_clock::time_point t);

// One line (no newline) per event: text, or a JSON object.
std::string format_event(const Event& e, std::chrono::system_clock::time_point t, bool json);

}  // namespace dirtyring::stat
