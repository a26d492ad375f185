// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/postcopy/blocktime.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <ctime>

#include "dirtyring/base/error.hpp"

namespace dirtyring {
namespace {

constexpr std::size_t kInitialSlots = 64;  // power of two
constexpr std::size_t kInitialWaiters = 64;

std::uint64_t average(std::uint64_t total, std::uint64_t n) {
    return n ? total / n : 0;
}

void json_list(std::string& out, const char* name, const std::vector<std::uint64_t>& values) {
    out += '"';
    out += name;
    out += "\": [";
    for (std::size_t i = 0; i < values.size(); ++i) {
        if (i) out += ", ";
        out += std::to_string(values[i]);
    }
    out += "]";
}

void json_value(std::string& out, const char* name, std::uint64_t value) {
    out += '"';
    out += name;
    out += "\": ";
    out += std::to_string(value);
}

// query-migrate declares the blocktimes uint32 in ms.
std::uint64_t ms_u32(std::uint64_t ns) {
    const std::uint64_t ms = ns / 1000000;
    return ms > 0xffffffffULL ? 0xffffffffULL : ms;
}

}  // namespace

std::uint64_t BlocktimeReport::latency_ns() const {
    std::uint64_t total = non_vcpu_latency_total_ns, n = non_vcpu_faults_resolved;
    for (std::size_t i = 0; i < vcpu_latency_total_ns.size(); ++i) {
        total += vcpu_latency_total_ns[i];
        n += vcpu_faults_resolved[i];
    }
    return average(total, n);
}

std::uint64_t BlocktimeReport::vcpu_latency_ns(unsigned vcpu) const {
    return average(vcpu_latency_total_ns.at(vcpu), vcpu_faults_resolved.at(vcpu));
}

std::uint64_t BlocktimeReport::non_vcpu_latency_ns() const {
    return average(non_vcpu_latency_total_ns, non_vcpu_faults_resolved);
}

std::string BlocktimeReport::to_json() const {
    std::vector<std::uint64_t> vcpu_ms, vcpu_latency;
    for (std::size_t i = 0; i < vcpu_blocktime_ns.size(); ++i) {
        vcpu_ms.push_back(ms_u32(vcpu_blocktime_ns[i]));
        vcpu_latency.push_back(vcpu_latency_ns(static_cast<unsigned>(i)));
    }
    std::string out = "{";
    json_value(out, "postcopy-blocktime", ms_u32(blocktime_ns));
    out += ", ";
    json_list(out, "postcopy-vcpu-blocktime", vcpu_ms);
    out += ", ";
    json_value(out, "postcopy-latency", latency_ns());
    out += ", ";
    json_list(out, "postcopy-vcpu-latency", vcpu_latency);
    out += ", ";
    json_value(out, "postcopy-non-vcpu-latency", non_vcpu_latency_ns());
    out += ", ";
    json_list(out, "postcopy-latency-dist",
              std::vector<std::uint64_t>(latency_dist.begin(), latency_dist.end()));
    out += ", ";
    json_list(out, "postcopy-vcpu-faults", vcpu_faults);
    out += ", ";
    json_value(out, "postcopy-non-vcpu-faults", non_vcpu_faults);
    out += "}";
    return out;
}

Blocktime::Clock Blocktime::monotonic_clock() {
    return [] {
        timespec ts{};
        ::clock_gettime(CLOCK_MONOTONIC, &ts);
        return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ULL +
               static_cast<std::uint64_t>(ts.tv_nsec);
    };
}

Blocktime::Blocktime(unsigned vcpus, Clock clock) : clock_(std::move(clock)) {
    if (vcpus == 0 || vcpus > kMaxVcpus)
        throw Error(EINVAL, "Blocktime: " + std::to_string(vcpus) + " vCPUs (1.." +
                                std::to_string(kMaxVcpus) + ")");
    if (!clock_) throw Error(EINVAL, "Blocktime: no clock");
    vcpus_.resize(vcpus);
    vcpu_of_tid_.reserve(vcpus);
    table_.resize(kInitialSlots);
    waiters_.reserve(kInitialWaiters);
}

void Blocktime::register_vcpu_thread(pid_t tid, unsigned vcpu) {
    if (tid <= 0) throw Error(EINVAL, "Blocktime: thread id " + std::to_string(tid));
    if (vcpu >= vcpus_.size())
        throw Error(EINVAL, "Blocktime: no vCPU " + std::to_string(vcpu) + " (" +
                                std::to_string(vcpus_.size()) + " vCPUs)");
    const auto [it, inserted] = vcpu_of_tid_.emplace(tid, vcpu);
    if (!inserted && it->second != vcpu)
        throw Error(EEXIST, "Blocktime: thread " + std::to_string(tid) + " already runs vCPU " +
                                std::to_string(it->second) + ", not " + std::to_string(vcpu));
}

void Blocktime::unregister_vcpu_thread(pid_t tid) {
    if (vcpu_of_tid_.erase(tid) == 0)
        throw Error(ENOENT, "Blocktime: thread " + std::to_string(tid) + " runs no vCPU");
}

std::optional<unsigned> Blocktime::vcpu_of(pid_t tid) const {
    const auto it = vcpu_of_tid_.find(tid);
    if (it == vcpu_of_tid_.end()) return std::nullopt;
    return it->second;
}

std::uint64_t Blocktime::now() {
    const std::uint64_t t = clock_();
    // Checked before anything changes, so the state stays consistent.
    if (t < last_time_)
        throw Error(EINVAL, "Blocktime: clock went backwards from " + std::to_string(last_time_) +
                                " to " + std::to_string(t) + " ns");
    last_time_ = t;
    return t;
}

std::size_t Blocktime::slot_of(std::uint64_t addr) const noexcept {
    // Fibonacci hashing of the page number: neighbouring pages spread out.
    const std::uint64_t h = (addr >> 12) * 0x9e3779b97f4a7c15ULL;
    const int shift = 64 - std::countr_zero(table_.size());
    return static_cast<std::size_t>(h >> shift);
}

std::size_t Blocktime::find(std::uint64_t addr) const noexcept {
    const std::size_t mask = table_.size() - 1;
    for (std::size_t i = slot_of(addr);; i = (i + 1) & mask) {
        if (table_[i].addr == addr) return i;
        if (table_[i].addr == kEmpty) return i;
    }
}

void Blocktime::erase_slot(std::size_t i) noexcept {
    const std::size_t mask = table_.size() - 1;
    std::size_t hole = i;
    for (std::size_t j = (i + 1) & mask; table_[j].addr != kEmpty; j = (j + 1) & mask) {
        // An entry may move into the hole only if its home slot is not
        // cyclically within (hole, j]: it would become unreachable.
        const std::size_t home = slot_of(table_[j].addr);
        const bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (stays) continue;
        table_[hole] = table_[j];
        hole = j;
    }
    table_[hole] = Slot{};
    --used_;
}

void Blocktime::grow_table() {
    std::vector<Slot> old(table_.size() * 2);
    old.swap(table_);
    for (const Slot& s : old) {
        if (s.addr == kEmpty) continue;
        table_[find(s.addr)] = s;
    }
}

std::uint32_t Blocktime::new_waiter(std::uint64_t time, std::int32_t vcpu, std::uint32_t next) {
    if (free_ != kNil) {
        const std::uint32_t w = free_;
        free_ = waiters_[w].next;
        waiters_[w] = Waiter{time, vcpu, next};
        return w;
    }
    waiters_.push_back(Waiter{time, vcpu, next});
    return static_cast<std::uint32_t>(waiters_.size() - 1);
}

std::optional<unsigned> Blocktime::fault_begin(std::uint64_t addr, pid_t tid) {
    if (addr == kEmpty) throw Error(EINVAL, "Blocktime: fault on address ~0");
    const std::uint64_t t = now();
    const std::optional<unsigned> vcpu = vcpu_of(tid);
    // Grow before inserting, at half load: probe sequences stay short.
    if ((used_ + 1) * 2 > table_.size()) grow_table();
    const std::size_t i = find(addr);
    if (table_[i].addr == kEmpty) {
        table_[i].addr = addr;
        ++used_;
    }
    table_[i].head =
        new_waiter(t, vcpu ? static_cast<std::int32_t>(*vcpu) : kNonVcpu, table_[i].head);
    if (!vcpu) {
        ++non_vcpu_faults_;
        return std::nullopt;
    }
    Vcpu& v = vcpus_[*vcpu];
    ++v.faults;
    // A second fault in flight (read before the first was resolved, or a
    // retried fault) does not start a second blocked interval.
    if (v.in_flight++ == 0) {
        v.blocked_since = t;
        if (++blocked_ == vcpus_.size()) all_blocked_since_ = t;
    }
    return vcpu;
}

unsigned Blocktime::fault_end(std::uint64_t addr) {
    const std::uint64_t t = now();
    const std::size_t i = find(addr);
    if (table_[i].addr == kEmpty) return 0;
    const bool all_blocked = blocked_ == vcpus_.size();
    unsigned resolved = 0, unblocked = 0;
    std::uint32_t w = table_[i].head;
    while (w != kNil) {
        Waiter& waiter = waiters_[w];
        const std::uint64_t latency = t - waiter.fault_time;
        const std::uint64_t us = latency / 1000;
        const std::size_t bucket =
            us ? std::min<std::size_t>(static_cast<std::size_t>(std::bit_width(us)) - 1,
                                       BlocktimeReport::kLatencyBuckets - 1)
               : 0;
        ++latency_dist_[bucket];
        if (waiter.vcpu == kNonVcpu) {
            ++non_vcpu_resolved_;
            non_vcpu_latency_ns_ += latency;
        } else {
            Vcpu& v = vcpus_[static_cast<std::size_t>(waiter.vcpu)];
            ++v.resolved;
            v.latency_ns += latency;
            if (--v.in_flight == 0) {
                v.blocked_ns += t - v.blocked_since;
                ++unblocked;
            }
        }
        ++resolved;
        const std::uint32_t next = waiter.next;
        waiter.next = free_;
        free_ = w;
        w = next;
    }
    erase_slot(i);
    if (all_blocked && unblocked) all_blocked_ns_ += t - all_blocked_since_;
    blocked_ -= unblocked;
    return resolved;
}

BlocktimeReport Blocktime::report() const {
    BlocktimeReport r;
    r.blocktime_ns = all_blocked_ns_;
    for (const Vcpu& v : vcpus_) {
        r.vcpu_blocktime_ns.push_back(v.blocked_ns);
        r.vcpu_faults.push_back(v.faults);
        r.vcpu_faults_resolved.push_back(v.resolved);
        r.vcpu_faults_in_flight.push_back(v.in_flight);
        r.vcpu_latency_total_ns.push_back(v.latency_ns);
    }
    r.non_vcpu_faults = non_vcpu_faults_;
    r.non_vcpu_faults_resolved = non_vcpu_resolved_;
    r.non_vcpu_latency_total_ns = non_vcpu_latency_ns_;
    r.latency_dist = latency_dist_;
    return r;
}

}  // namespace dirtyring
