// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/rings/module_vm.hpp"

#include <linux/dirtyring.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <string>

#include "dirtyring/base/error.hpp"
#include "module_check_extension.hpp"
#include "module_ring_status.hpp"

namespace dirtyring {

static_assert(sizeof(DirtyGfn) == sizeof(dirtyring_gfn));
static_assert(kGfnDirty == DIRTYRING_GFN_F_DIRTY && kGfnReset == DIRTYRING_GFN_F_RESET);
static_assert(ModuleVm::kMaxVcpus == DIRTYRING_MAX_VCPUS);
static_assert(ModuleVm::kMaxSlots == DIRTYRING_MAX_SLOTS);
static_assert(ModuleVm::kMaxSlotSize == DIRTYRING_MAX_SLOT_SIZE);
static_assert(ModuleVm::kMaxSlotPages == DIRTYRING_MAX_SLOT_PAGES);
static_assert(ModuleVm::kRingMinEntries == DIRTYRING_RING_MIN_ENTRIES);
static_assert(ModuleVm::kRingMaxEntries == DIRTYRING_RING_MAX_ENTRIES);
static_assert(ModuleVm::kRingReservedEntries == DIRTYRING_RING_RESERVED_ENTRIES);

namespace {

// The uAPI's macro, whose C cast our warnings reject: it stays the one
// definition of where slots live.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wold-style-cast"
constexpr std::uint64_t slot_mmap_offset(std::uint32_t slot) {
    return DIRTYRING_SLOT_MMAP_OFFSET(slot);
}
#pragma GCC diagnostic pop

// Every slot's window holds the largest slot, and the last one ends below
// 2^44 bytes (a 32-bit mmap2() reaches it).
static_assert(slot_mmap_offset(1) - slot_mmap_offset(0) == ModuleVm::kMaxSlotSize);
static_assert(slot_mmap_offset(0) >= ModuleVm::kMaxSlotSize);
static_assert(slot_mmap_offset(ModuleVm::kMaxSlots - 1) + ModuleVm::kMaxSlotSize <= 1ULL << 44);

UniqueFd create_vm(const Device& device) {
    UniqueFd fd(::ioctl(device.fd(), DIRTYRING_CREATE_VM, 0));
    if (!fd) throw_errno("DIRTYRING_CREATE_VM");
    return fd;
}

}  // namespace

ModuleVm::ModuleVm(const Device& device, const Options& options)
    : options_(options), fd_(create_vm(device)) {
    dirtyring_rings rings{};
    rings.vcpu_ring_entries = options.vcpu_ring_entries;
    rings.vm_ring_entries = options.vm_ring_entries;
    if (::ioctl(fd_.get(), DIRTYRING_ENABLE_RINGS, &rings))
        throw_errno("DIRTYRING_ENABLE_RINGS of " + std::to_string(options.vcpu_ring_entries) +
                    " entries per vCPU, " + std::to_string(options.vm_ring_entries) +
                    " for the VM");
    vm_ring_ = Mapping(options.vm_ring_entries * sizeof(DirtyGfn), PROT_READ | PROT_WRITE,
                       MAP_SHARED, fd_.get(), DIRTYRING_VM_RING_MMAP_OFFSET, "dirtyring VM ring");
    // Room for every vCPU: views never move, whatever create_vcpu adds.
    views_.reserve(kMaxVcpus + 1);
    vcpus_.reserve(kMaxVcpus);
    views_.emplace_back(vm_ring_.as<DirtyGfn>(), options.vm_ring_entries);
    for (std::uint32_t id = 0; id < options.vcpus; ++id) create_vcpu(id);
}

ModuleVm::~ModuleVm() = default;

void ModuleVm::add_slot(std::uint32_t slot, std::uint64_t pages) {
    const std::string what = "DIRTYRING_ADD_SLOT slot " + std::to_string(slot) + " of " +
                             std::to_string(pages) + " pages";
    std::lock_guard lock(slots_mutex_);
    dirtyring_slot req{};
    req.slot = slot;
    req.npages = pages;
    if (::ioctl(fd_.get(), DIRTYRING_ADD_SLOT, &req)) throw_errno(what);
    // The module accepted slot and pages: both are within its limits, so the
    // index and the byte size cannot overflow.
    slots_[slot] = Mapping(pages * kPageSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(),
                           static_cast<long>(slot_mmap_offset(slot)), "dirtyring slot memory");
}

std::span<std::uint8_t> ModuleVm::slot_memory(std::uint32_t slot) const {
    std::lock_guard lock(slots_mutex_);
    if (slot >= kMaxSlots || !slots_[slot])
        throw Error(EINVAL, "ModuleVm: no memory slot " + std::to_string(slot));
    return {slots_[slot].as<std::uint8_t>(), slots_[slot].size()};
}

ModuleVcpu& ModuleVm::create_vcpu(std::uint32_t id) {
    UniqueFd fd(::ioctl(fd_.get(), DIRTYRING_CREATE_VCPU, static_cast<unsigned long>(id)));
    if (!fd) throw_errno("DIRTYRING_CREATE_VCPU " + std::to_string(id));
    auto vcpu = std::make_unique<ModuleVcpu>(id, std::move(fd), options_.vcpu_ring_entries);
    // The VM ring stays last: insert before it.  Capacity was reserved, so no
    // view moves and no allocation can throw here.
    views_.emplace(views_.end() - 1, vcpu->ring_entries(), options_.vcpu_ring_entries);
    by_id_[id] = vcpu.get();
    vcpus_.push_back(std::move(vcpu));
    return *vcpus_.back();
}

ModuleVcpu& ModuleVm::vcpu(std::uint32_t id) const {
    if (id >= kMaxVcpus || !by_id_[id])
        throw Error(EINVAL, "ModuleVm: no vCPU " + std::to_string(id));
    return *by_id_[id];
}

RingStatus ModuleVm::ring_status() const {
    dirtyring_ring_status st{};
    if (::ioctl(fd_.get(), DIRTYRING_GET_RING_STATUS, &st))
        throw_errno("DIRTYRING_GET_RING_STATUS of the VM ring");
    return to_ring_status(st);
}

ModuleVm::Readiness ModuleVm::poll(std::chrono::milliseconds timeout) const {
    pollfd p{fd_.get(), POLLIN | POLLPRI, 0};
    const auto ms = timeout.count() < 0
                        ? -1
                        : static_cast<int>(std::min<long long>(timeout.count(), 0x7fffffff));
    const int n = ::poll(&p, 1, ms);
    if (n < 0) {
        if (errno == EINTR) return {};
        throw_errno("poll of the dirtyring VM fd");
    }
    return {(p.revents & POLLIN) != 0, (p.revents & POLLPRI) != 0};
}

ResetResult ModuleVm::reset() {
    ResetResult total;
    for (;;) {
        dirtyring_reset req{};
        const int rc = ::ioctl(fd_.get(), DIRTYRING_RESET_RINGS, &req);
        const int error = errno;
        // An interrupted call's work stays done.  The module reports no
        // counts for it (they stay 0 here); were it to, they would add up,
        // so that parked pages an interrupted call moved are not missed.
        total.entries += req.entries;
        total.moved += req.overflow_pushed;
        total.relogged += req.relogged;
        if (rc == 0) {
            total.pending = req.overflow_pending;
            return total;
        }
        if (error != EINTR) {
            errno = error;
            throw_errno("DIRTYRING_RESET_RINGS");
        }
        ++total.interrupted;
    }
}

std::uint64_t ModuleVm::check_extension(Capability cap) const {
    return module_check_extension(fd_.get(), cap, "VM fd");
}

}  // namespace dirtyring
