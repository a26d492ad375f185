// SPDX-License-Identifier: LGPL-2.1-or-later
#include "module_workload.hpp"

#include <cerrno>
#include <cstring>
#include <string>

#include "dirtyring/base/error.hpp"
#include "pacer.hpp"

namespace dirtyring::migrate {
namespace {

constexpr std::uint64_t kPageSize = 4096;
constexpr std::uint32_t kSlot = 0;
constexpr std::uint64_t kBatch = 32;  // writes between rate-limit sleeps
constexpr std::uint32_t kRingEntries = 4096;

}  // namespace

ModuleWorkload::ModuleWorkload(const WorkloadConfig& config, std::byte* memory, std::uint64_t pages)
    // The I/O thread is a writer too: it counts, it is no vCPU.
    : WriterThreads(config.vcpus + 1,
                    config.vcpus ? config.working_set_pages / (config.vcpus + 1) : 0),
      config_(config),
      memory_(memory),
      pages_(pages),
      state_(config.vcpus + 1),
      restored_(config.vcpus, 0) {
    // The working set: each vCPU a share, the I/O thread one more share.
    if (config_.vcpus == 0 || config_.vcpus > ModuleVm::kMaxVcpus)
        throw Error(EINVAL, "module guest: " + std::to_string(config_.vcpus) + " vCPUs (1.." +
                                std::to_string(ModuleVm::kMaxVcpus) + ")");
    if (share() == 0 || (config_.vcpus + 1) * share() > pages_)
        throw Error(EINVAL, "module guest: a working set of " +
                                std::to_string(config_.working_set_pages) + " pages for " +
                                std::to_string(config_.vcpus) + " vCPUs in " +
                                std::to_string(pages_) + " pages");
}

ModuleWorkload::~ModuleWorkload() {
    stop();
}

std::uint64_t ModuleWorkload::share() const noexcept {
    return config_.working_set_pages / (config_.vcpus + 1);
}

std::unique_ptr<ModuleWorkload> ModuleWorkload::source(const WorkloadConfig& config) {
    const std::uint64_t pages = config.memory_bytes / kPageSize;
    auto vm = std::make_unique<ModuleVm>(Device::open(),
                                         ModuleVm::Options{.vcpu_ring_entries = kRingEntries,
                                                           .vm_ring_entries = kRingEntries,
                                                           .vcpus = config.vcpus});
    vm->add_slot(kSlot, pages);
    auto* memory = reinterpret_cast<std::byte*>(vm->slot_memory(kSlot).data());
    auto w = std::make_unique<ModuleWorkload>(config, memory, pages);
    w->bitmap_ = std::make_unique<DirtyBitmap>(pages);
    w->harvester_ = std::make_unique<Harvester>(*vm);
    w->vm_ = std::move(vm);
    // Start a clean dirty cycle: every page is clean once harvested.
    w->harvester_->harvest_with([](std::span<const DirtyPage>) {});
    return w;
}

std::unique_ptr<ModuleWorkload> ModuleWorkload::destination(const WorkloadConfig& config,
                                                            std::byte* memory, std::uint64_t pages,
                                                            unsigned vcpus) {
    WorkloadConfig c = config;
    c.vcpus = vcpus;
    return std::make_unique<ModuleWorkload>(c, memory, pages);
}

void ModuleWorkload::sink(std::span<const DirtyPage> pages) {
    bitmap_->set_batch(pages);
}

void ModuleWorkload::start() {
    if (!writers_.empty()) return;
    if (vm_) collector_ = std::jthread([this](std::stop_token st) { collector_loop(st); });
    for (unsigned i = 0; i <= config_.vcpus; ++i)
        writers_.emplace_back([this, i](std::stop_token st) { writer_loop(st, i); });
}

void ModuleWorkload::stop() {
    for (auto& t : writers_) t.request_stop();
    // Writers waiting in the kernel for ring room are released by the
    // collector's harvests: it runs until they are all gone.
    writers_.clear();
    collector_ = std::jthread();
}

void ModuleWorkload::writer_loop(std::stop_token stop, unsigned writer) {
    const bool io_thread = writer == config_.vcpus;
    Pacer pacer(static_cast<double>(config_.dirty_rate) / (config_.vcpus + 1));
    try {
        ModuleVcpu::Binding binding;
        if (vm_ && !io_thread) binding = vm_->vcpu(writer).bind();
        if (!io_thread) started_vcpu_thread(writer);
        WriterState& s = state_[writer];
        const std::uint64_t first = writer * share();
        while (!stop.stop_requested()) {
            for (std::uint64_t n = 0; n < kBatch; ++n) {
                std::memcpy(memory_ + (first + s.position) * kPageSize, &s.counter,
                            sizeof(s.counter));
                ++s.counter;
                s.position = (s.position + 1) % share();
            }
            count(writer, kBatch);
            pacer.wrote(kBatch, stop);
        }
    } catch (...) {
        record_failure();
    }
}

void ModuleWorkload::collector_loop(std::stop_token stop) {
    try {
        // Runs until stop() joined the writers, so none is left waiting.
        while (!stop.stop_requested()) {
            if (vm_->poll(std::chrono::milliseconds(10)).soft_full)
                harvester_->harvest_with([this](std::span<const DirtyPage> p) { sink(p); });
        }
    } catch (...) {
        record_failure();
    }
}

std::uint64_t ModuleWorkload::harvest_into(std::vector<std::uint64_t>& migration) {
    if (!harvester_) return 0;
    std::uint64_t newly = 0;
    harvester_->harvest_with([this](std::span<const DirtyPage> p) { sink(p); },
                             [&] {
                                 newly = bitmap_->sync_and_clear(migration);
                                 vm_ring_pages_.store(vm_->ring_status().pushed);
                             });
    return newly;
}

std::vector<std::uint64_t> ModuleWorkload::ring_pages() {
    std::vector<std::uint64_t> pages;
    if (!vm_) return pages;
    for (unsigned i = 0; i < config_.vcpus; ++i) pages.push_back(vm_->vcpu(i).ring_status().pushed);
    pages.push_back(vm_->ring_status().pushed);
    return pages;
}

std::vector<std::byte> ModuleWorkload::save_vcpu(unsigned vcpu) {
    const WriterState& s = state_.at(vcpu);
    const auto* p = reinterpret_cast<const std::byte*>(&s);
    return {p, p + sizeof(s)};
}

void ModuleWorkload::restore_vcpu(unsigned vcpu, std::span<const std::byte> state) {
    WriterState s;
    if (state.size() != sizeof(s))
        throw Error(EINVAL, "module guest: vCPU state of " + std::to_string(state.size()) +
                                " bytes, expected " + std::to_string(sizeof(s)));
    std::memcpy(&s, state.data(), sizeof(s));
    if (s.position >= share())
        throw Error(EINVAL, "module guest: vCPU position " + std::to_string(s.position) +
                                " outside its share of " + std::to_string(share()) + " pages");
    state_.at(vcpu) = s;
    restored_.at(vcpu) = s.counter;
}

}  // namespace dirtyring::migrate
