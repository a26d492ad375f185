// SPDX-License-Identifier: LGPL-2.1-or-later
#include "options.hpp"

#include <charconv>
#include <cmath>
#include <limits>

namespace dirtyring::stat {

namespace {

std::uint32_t number(const std::string& option, const std::string& text, std::uint32_t min,
                     std::uint32_t max) {
    std::uint32_t value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec == std::errc::result_out_of_range)
        throw UsageError(option + ": " + text + " is out of range (" + std::to_string(min) + ".." +
                         std::to_string(max) + ")");
    if (ec != std::errc() || end != text.data() + text.size() || text.empty())
        throw UsageError(option + ": '" + text + "' is not a number");
    if (value < min || value > max)
        throw UsageError(option + ": " + text + " is out of range (" + std::to_string(min) + ".." +
                         std::to_string(max) + ")");
    return value;
}

double seconds(const std::string& option, const std::string& text) {
    double value = 0;
    const auto [end, ec] =
        std::from_chars(text.data(), text.data() + text.size(), value, std::chars_format::fixed);
    if (ec != std::errc() || end != text.data() + text.size() || text.empty() ||
        !std::isfinite(value))
        throw UsageError(option + ": '" + text + "' is not a number of seconds");
    if (value < kMinInterval || value > kMaxInterval)
        throw UsageError(option + ": " + text + " is out of range (0.01..3600 seconds)");
    return value;
}

}  // namespace

Options parse_options(const std::vector<std::string>& args) {
    Options o;
    bool interval_given = false;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string& opt = args[i];
        if (opt == "--once") {
            o.once = true;
        } else if (opt == "--json") {
            o.json = true;
        } else if (opt == "--events") {
            o.events = true;
        } else if (opt == "-h" || opt == "--help") {
            o.help = true;
        } else if (opt == "--version") {
            o.version = true;
        } else if (opt == "--interval" || opt == "--vm" || opt == "--pid") {
            if (i + 1 >= args.size()) throw UsageError(opt + ": needs a value");
            const std::string& v = args[++i];
            if (opt == "--interval") {
                o.interval_s = seconds(opt, v);
                interval_given = true;
            } else if (opt == "--vm") {
                o.vm = number(opt, v, 1, std::numeric_limits<std::uint32_t>::max());
            } else {
                o.pid = number(opt, v, 1, std::numeric_limits<std::int32_t>::max());
            }
        } else {
            throw UsageError("unknown option " + opt);
        }
    }
    if (o.events && o.once) throw UsageError("--events and --once exclude each other");
    if (o.events && interval_given) throw UsageError("--interval has no meaning with --events");
    return o;
}

std::string usage() {
    return "usage: dirtyring-stat [--once] [--json] [--events] [--interval SECONDS] [--vm ID]\n"
           "                      [--pid PID] [--help] [--version]\n"
           "\n"
           "Statistics of every dirtyring VM of the system, from the module's generic\n"
           "netlink family \"dirtyring\" (needs CAP_NET_ADMIN).\n"
           "\n"
           "On a terminal: a live table, refreshed every --interval; q quits.  Not on a\n"
           "terminal, or with --once or --json: one snapshot.  Rates need two samples, so a\n"
           "snapshot takes two, --interval apart, and prints the rates between them.\n"
           "\n"
           "  --once               one snapshot, also on a terminal\n"
           "  --json               the snapshot as one JSON object: every raw counter, the\n"
           "                       histograms and the rates (with --events: one JSON object\n"
           "                       per event and line)\n"
           "  --events             one line per event with its time, until SIGINT or SIGTERM:\n"
           "                       a VM created or destroyed, a wait for ring room begun and\n"
           "                       ended, a reset, soft-limit crossings and pages parked on a\n"
           "                       full ring (those two summed per ring, at most one line\n"
           "                       each per 100 ms)\n"
           "  --interval SECONDS   refresh period, and the time between a snapshot's two\n"
           "                       samples (default 1, 0.01..3600)\n"
           "  --vm ID              only the VM with this id (1.., as dirtyring-vm-id in its\n"
           "                       fd's /proc/PID/fdinfo)\n"
           "  --pid PID            only the VMs created by process PID\n"
           "  --help, --version\n"
           "\n"
           "Rows: one per VM, then its vCPUs (sorted by pages logged/s) and its VM ring\n"
           "(writers bound to no vCPU).  Columns, per second over the last interval:\n"
           "  PID/TID     the VM's creator; a vCPU's bound thread (- when none)\n"
           "  PAGES/s     pages logged into the ring(s) (first writes after a reset)\n"
           "  FILL%       entries not reset yet / ring size, now (a VM: its fullest ring)\n"
           "  WAITS/s     writers that waited for ring room (the soft limit)\n"
           "  WAIT ms/s   time spent in those waits\n"
           "  STALL ms/s  time vCPU threads spent in the module's first-write faults\n"
           "  OVERFLOWS   pages that found their ring full and were parked (not lost)\n"
           "A VM's row adds up its rings and vCPUs, and shows what its slots hold now:\n"
           "  RES MiB     memory of its slots in RAM (- when the module does not say)\n"
           "  PARKED      pages parked as overflow, waiting for ring room (- likewise)\n"
           "\n"
           "Exit codes:\n"
           "  0  done\n"
           "  1  failed (a netlink error, a malformed reply)\n"
           "  2  usage error\n"
           "  3  the dirtyring netlink family is not registered (the module is not loaded)\n"
           "  4  not permitted: needs CAP_NET_ADMIN\n"
           "  5  the module's netlink family has another version than this tool\n";
}

}  // namespace dirtyring::stat
