// SPDX-License-Identifier: LGPL-2.1-or-later
#include "kvm_workload.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <string>

#include "dirtyring/base/error.hpp"
#include "pacer.hpp"

namespace dirtyring::migrate {
namespace {

constexpr std::uint32_t kExitEvery = 32;  // exact ring-full exits on these hosts

void check_config(const WorkloadConfig& c) {
    if (c.vcpus == 0 || c.vcpus > KvmGuest::kMaxVcpus)
        throw Error(EINVAL, "KVM guest: " + std::to_string(c.vcpus) + " vCPUs (1.." +
                                std::to_string(KvmGuest::kMaxVcpus) + ")");
    const std::uint64_t data_pages =
        c.memory_bytes / KvmGuest::kPageSize - KvmGuest::kFirstDataPage;
    if (c.working_set_pages < c.vcpus || c.working_set_pages > data_pages)
        throw Error(EINVAL, "KVM guest: a working set of " + std::to_string(c.working_set_pages) +
                                " pages (" + std::to_string(c.vcpus) + ".." +
                                std::to_string(data_pages) + ")");
    if (c.stride == 0 || c.working_set_pages * c.stride > data_pages)
        throw Error(EINVAL, "KVM guest: a working set of " + std::to_string(c.working_set_pages) +
                                " pages at a stride of " + std::to_string(c.stride) +
                                " does not fit in " + std::to_string(data_pages) + " pages");
}

}  // namespace

KvmWorkload::KvmWorkload(const WorkloadConfig& config, std::unique_ptr<KvmGuest> guest)
    : WriterThreads(guest->vcpus(), config.working_set_pages / guest->vcpus()),
      config_(config),
      guest_(std::move(guest)),
      restored_(guest_->vcpus(), 0) {}

KvmWorkload::~KvmWorkload() {
    stop();
}

std::unique_ptr<KvmWorkload> KvmWorkload::source(const WorkloadConfig& config) {
    check_config(config);
    auto guest = std::make_unique<KvmGuest>(KvmGuest::Options{.vcpus = config.vcpus,
                                                              .memory_bytes = config.memory_bytes,
                                                              .ring_entries = config.ring_entries});
    const std::uint64_t share = config.working_set_pages / config.vcpus;
    for (unsigned i = 0; i < config.vcpus; ++i)
        guest->set_program(i, GuestProgram{static_cast<std::uint32_t>(share),
                                           static_cast<std::uint32_t>(KvmGuest::kFirstDataPage +
                                                                      i * share * config.stride),
                                           config.stride, kExitEvery});
    auto w = std::make_unique<KvmWorkload>(config, std::move(guest));
    w->bitmap_ = std::make_unique<DirtyBitmap>(w->pages());
    w->harvester_ = std::make_unique<Harvester>(w->guest_->dirty_rings());
    return w;
}

std::unique_ptr<KvmWorkload> KvmWorkload::destination(const WorkloadConfig& config,
                                                      std::byte* memory, std::uint64_t pages,
                                                      unsigned vcpus) {
    auto guest =
        std::make_unique<KvmGuest>(KvmGuest::Options{.vcpus = vcpus,
                                                     .memory_bytes = pages * KvmGuest::kPageSize,
                                                     .memory = memory,
                                                     .load_program = false});
    WorkloadConfig c = config;
    c.vcpus = vcpus;
    return std::make_unique<KvmWorkload>(c, std::move(guest));
}

void KvmWorkload::start() {
    if (!threads_.empty()) return;
    for (unsigned i = 0; i < guest_->vcpus(); ++i)
        threads_.emplace_back([this, i](std::stop_token st) { vcpu_loop(st, i); });
}

void KvmWorkload::stop() {
    for (auto& t : threads_) t.request_stop();
    threads_.clear();  // joins
}

void KvmWorkload::vcpu_loop(std::stop_token stop, unsigned vcpu) {
    Pacer pacer(static_cast<double>(config_.dirty_rate) / guest_->vcpus());
    int empty_full_exits = 0;
    const auto sink = [this](std::span<const DirtyPage> pages) { bitmap_->set_batch(pages); };
    try {
        started_vcpu_thread(vcpu);
        while (!stop.stop_requested()) {
            switch (guest_->run(vcpu)) {
                case KvmGuest::Exit::RingFull:
                    if (!harvester_)
                        throw Error(EPROTO, "ring-full exit on a guest without a dirty ring");
                    if (harvester_->harvest_with(sink) != 0) {
                        empty_full_exits = 0;
                    } else if (++empty_full_exits >= 2) {
                        throw Error(EOVERFLOW, "vCPU " + std::to_string(vcpu) +
                                                   ": dirty ring full with nothing to harvest "
                                                   "(the ring overflowed; the vCPU is wedged)");
                    }
                    continue;
                case KvmGuest::Exit::Batch:
                    empty_full_exits = 0;
                    count(vcpu, kExitEvery);
                    pacer.wrote(kExitEvery, stop);
                    break;
                case KvmGuest::Exit::Pass:
                    break;
            }
        }
    } catch (...) {
        record_failure();
    }
}

std::uint64_t KvmWorkload::harvest_into(std::vector<std::uint64_t>& migration) {
    if (!harvester_) return 0;
    std::uint64_t newly = 0;
    harvester_->harvest_with(
        [this](std::span<const DirtyPage> pages) { bitmap_->set_batch(pages); },
        [&] { newly = bitmap_->sync_and_clear(migration); });
    return newly;
}

std::vector<std::byte> KvmWorkload::save_vcpu(unsigned vcpu) {
    return guest_->save_vcpu(vcpu);
}

void KvmWorkload::restore_vcpu(unsigned vcpu, std::span<const std::byte> state) {
    guest_->restore_vcpu(vcpu, state);
    restored_.at(vcpu) = guest_->next_value(vcpu);
}

}  // namespace dirtyring::migrate
