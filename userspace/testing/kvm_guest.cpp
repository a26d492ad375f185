// SPDX-License-Identifier: LGPL-2.1-or-later
#include "testing/kvm_guest.hpp"

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "dirtyring/base/error.hpp"

namespace dirtyring {
namespace {

constexpr std::uint64_t kMailboxBase = KvmGuest::kPageSize;

// The guest program, 32-bit code at guest address 0.  On entry esi points
// to the vCPU's mailbox {count, first byte address, stride bytes, exit_every}
// and eax holds the first counter value.
//
// restart: mov ecx,[esi]; mov edi,[esi+4]; mov ebx,[esi+8]; mov edx,[esi+12]
//          xor ebp,ebp
// next:    test ecx,ecx; jz done
//          mov [edi],eax; inc eax; add edi,ebx; dec ecx; inc ebp
//          cmp ebp,edx; jb next
//          xor ebp,ebp; out 0x10,al; jmp next
// done:    out 0x11,al; jmp restart
// Plain integer code: these hosts' KVM stops on SSE (DESIGN.md).
constexpr std::array<std::uint8_t, 38> kProgram = {
    0x8b, 0x0e, 0x8b, 0x7e,
    0x04, 0x8b, 0x5e, 0x08,
    0x8b, 0x56, 0x0c, 0x31,
    0xed, 0x85, 0xc9, 0x74,
    0x11, 0x89, 0x07, 0x40,
    0x01, 0xdf, 0x49, 0x45,
    0x39, 0xd5, 0x72, 0xf1,
    0x31, 0xed, 0xe6, KvmGuest::kPortBatch,
    0xeb, 0xeb, 0xe6, KvmGuest::kPortPass,
    0xeb, 0xda,
};

struct Mailbox {
    std::uint32_t count;
    std::uint32_t first;
    std::uint32_t stride;
    std::uint32_t exit_every;
};

void flat_segment(kvm_segment& s, std::uint16_t selector, std::uint8_t type) {
    s = kvm_segment{};
    s.base = 0;
    s.limit = 0xffffffff;
    s.selector = selector;
    s.type = type;
    s.present = 1;
    s.dpl = 0;
    s.db = 1;
    s.s = 1;
    s.l = 0;
    s.g = 1;
}

int checked_ioctl(int fd, unsigned long request, unsigned long arg, const char* what) {
    const int ret = ::ioctl(fd, request, arg);
    if (ret < 0) throw_errno(what);
    return ret;
}

}  // namespace

std::optional<std::string> KvmGuest::unavailable_reason() {
    UniqueFd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
    if (!kvm) return std::string("/dev/kvm: ") + std::strerror(errno);
    if (::ioctl(kvm.get(), KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
        return std::string("/dev/kvm speaks another KVM API version");
    UniqueFd vm(::ioctl(kvm.get(), KVM_CREATE_VM, 0));
    if (!vm) return std::string("KVM_CREATE_VM: ") + std::strerror(errno);
    return std::nullopt;
}

KvmGuest::KvmGuest(const Options& options) : memory_bytes_(options.memory_bytes) {
    if (options.vcpus == 0 || options.vcpus > kMaxVcpus)
        throw Error(EINVAL, "KvmGuest: " + std::to_string(options.vcpus) + " vCPUs (1.." +
                                std::to_string(kMaxVcpus) + ")");
    if (memory_bytes_ < (kFirstDataPage + 1) * kPageSize || memory_bytes_ % kPageSize)
        throw Error(EINVAL, "KvmGuest: memory of " + std::to_string(memory_bytes_) +
                                " bytes (page multiple, at least 3 pages)");
    kvm_.reset(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
    if (!kvm_) throw_errno("open /dev/kvm");
    vm_.reset(checked_ioctl(kvm_.get(), KVM_CREATE_VM, 0, "KVM_CREATE_VM"));

    if (options.memory) {
        memory_ = static_cast<std::uint8_t*>(options.memory);
    } else {
        own_memory_ = Mapping(memory_bytes_, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0, "guest memory");
        memory_ = own_memory_.as<std::uint8_t>();
    }
    if (options.load_program) std::memcpy(memory_, kProgram.data(), kProgram.size());

    if (options.ring_entries) KvmDirtyRings::enable(kvm_.get(), vm_.get(), options.ring_entries);
    kvm_userspace_memory_region region{};
    region.slot = 0;
    region.flags = options.ring_entries || options.dirty_log_bitmap ? KVM_MEM_LOG_DIRTY_PAGES : 0;
    region.guest_phys_addr = 0;
    region.memory_size = memory_bytes_;
    region.userspace_addr = reinterpret_cast<std::uintptr_t>(memory_);
    if (::ioctl(vm_.get(), KVM_SET_USER_MEMORY_REGION, &region))
        throw_errno("KVM_SET_USER_MEMORY_REGION");

    const int run_size =
        checked_ioctl(kvm_.get(), KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
    std::vector<int> fds;
    for (unsigned i = 0; i < options.vcpus; ++i) {
        Vcpu vcpu;
        vcpu.fd.reset(checked_ioctl(vm_.get(), KVM_CREATE_VCPU, i, "KVM_CREATE_VCPU"));
        vcpu.run = Mapping(static_cast<std::size_t>(run_size), PROT_READ | PROT_WRITE, MAP_SHARED,
                           vcpu.fd.get(), 0, "kvm_run");
        kvm_sregs sregs{};
        if (::ioctl(vcpu.fd.get(), KVM_GET_SREGS, &sregs)) throw_errno("KVM_GET_SREGS");
        flat_segment(sregs.cs, 0x08, 0x0b);  // code: execute/read, accessed
        flat_segment(sregs.ds, 0x10, 0x03);  // data: read/write, accessed
        sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
        sregs.cr0 |= 1;  // protected mode, no paging
        if (::ioctl(vcpu.fd.get(), KVM_SET_SREGS, &sregs)) throw_errno("KVM_SET_SREGS");
        kvm_regs regs{};
        regs.rip = 0;
        regs.rflags = 2;
        regs.rsi = kMailboxBase + i * sizeof(Mailbox);
        regs.rax = 1;
        if (::ioctl(vcpu.fd.get(), KVM_SET_REGS, &regs)) throw_errno("KVM_SET_REGS");
        fds.push_back(vcpu.fd.get());
        vcpus_.push_back(std::move(vcpu));
        if (options.load_program) set_program(i, GuestProgram{0, kFirstDataPage, 1, 1});
    }
    if (options.ring_entries)
        rings_ = std::make_unique<KvmDirtyRings>(vm_.get(), fds, options.ring_entries);
}

KvmGuest::~KvmGuest() = default;

void KvmGuest::set_program(unsigned vcpu, const GuestProgram& program) {
    if (vcpu >= vcpus_.size()) throw Error(EINVAL, "KvmGuest: no vCPU " + std::to_string(vcpu));
    const std::uint64_t pages = memory_bytes_ / kPageSize;
    const std::uint64_t last =
        program.count ? program.first_page + std::uint64_t{program.count - 1} * program.stride
                      : program.first_page;
    if (program.first_page < kFirstDataPage || last >= pages || program.stride == 0 ||
        last > 0xffffffffULL / kPageSize)
        throw Error(EINVAL, "KvmGuest: program writes pages " + std::to_string(program.first_page) +
                                ".." + std::to_string(last) + " outside data pages " +
                                std::to_string(kFirstDataPage) + ".." + std::to_string(pages - 1));
    if (program.exit_every == 0 || program.exit_every > kMaxExitEvery)
        throw Error(EINVAL, "KvmGuest: exit_every " + std::to_string(program.exit_every) + " (1.." +
                                std::to_string(kMaxExitEvery) +
                                ": more overflows these hosts' KVM dirty ring)");
    Mailbox box{program.count, program.first_page * static_cast<std::uint32_t>(kPageSize),
                program.stride * static_cast<std::uint32_t>(kPageSize), program.exit_every};
    std::memcpy(memory_ + kMailboxBase + vcpu * sizeof(Mailbox), &box, sizeof(box));
}

KvmGuest::Exit KvmGuest::run(unsigned vcpu) {
    Vcpu& v = vcpus_.at(vcpu);
    auto* run = v.run.as<kvm_run>();
    for (;;) {
        if (::ioctl(v.fd.get(), KVM_RUN, 0) < 0) {
            if (errno == EINTR) continue;
            throw_errno("KVM_RUN vCPU " + std::to_string(vcpu));
        }
        switch (run->exit_reason) {
            case KVM_EXIT_IO:
                if (run->io.port == kPortBatch) return Exit::Batch;
                if (run->io.port == kPortPass) return Exit::Pass;
                throw Error(EPROTO, "vCPU " + std::to_string(vcpu) + ": I/O on unexpected port " +
                                        std::to_string(run->io.port));
            case KVM_EXIT_DIRTY_RING_FULL:
                return Exit::RingFull;
            case KVM_EXIT_INTR:
                continue;
            case KVM_EXIT_INTERNAL_ERROR:
                throw Error(EFAULT, "vCPU " + std::to_string(vcpu) +
                                        ": KVM internal error, suberror " +
                                        std::to_string(run->internal.suberror));
            default:
                throw Error(EPROTO, "vCPU " + std::to_string(vcpu) + ": unexpected KVM exit " +
                                        std::to_string(run->exit_reason));
        }
    }
}

unsigned KvmGuest::run_pass(unsigned vcpu, Harvester& harvester, const Harvester::Sink& sink) {
    int empty_full_exits = 0;
    unsigned full_exits = 0;
    for (;;) {
        switch (run(vcpu)) {
            case Exit::Pass:
                return full_exits;
            case Exit::Batch:
                empty_full_exits = 0;
                break;
            case Exit::RingFull:
                ++full_exits;
                if (harvester.harvest(sink) != 0) {
                    empty_full_exits = 0;
                } else if (++empty_full_exits >= 2) {
                    throw Error(EOVERFLOW,
                                "vCPU " + std::to_string(vcpu) +
                                    ": KVM reports its dirty ring full but nothing is left to "
                                    "harvest: the ring overflowed and the vCPU is wedged (the "
                                    "guest wrote past the reserve between exits)");
                }
                break;
        }
    }
}

std::uint32_t KvmGuest::next_value(unsigned vcpu) {
    kvm_regs regs{};
    if (::ioctl(vcpus_.at(vcpu).fd.get(), KVM_GET_REGS, &regs)) throw_errno("KVM_GET_REGS");
    return static_cast<std::uint32_t>(regs.rax);
}

namespace {
struct SavedVcpu {
    kvm_regs regs;
    kvm_sregs sregs;
};
}  // namespace

std::vector<std::byte> KvmGuest::save_vcpu(unsigned vcpu) {
    SavedVcpu saved{};
    const int fd = vcpus_.at(vcpu).fd.get();
    if (::ioctl(fd, KVM_GET_REGS, &saved.regs)) throw_errno("KVM_GET_REGS");
    if (::ioctl(fd, KVM_GET_SREGS, &saved.sregs)) throw_errno("KVM_GET_SREGS");
    const auto* p = reinterpret_cast<const std::byte*>(&saved);
    return {p, p + sizeof(saved)};
}

void KvmGuest::restore_vcpu(unsigned vcpu, std::span<const std::byte> state) {
    SavedVcpu saved{};
    if (state.size() != sizeof(saved))
        throw Error(EINVAL, "KvmGuest: vCPU state of " + std::to_string(state.size()) +
                                " bytes, expected " + std::to_string(sizeof(saved)));
    std::memcpy(&saved, state.data(), sizeof(saved));
    const int fd = vcpus_.at(vcpu).fd.get();
    if (::ioctl(fd, KVM_SET_SREGS, &saved.sregs)) throw_errno("KVM_SET_SREGS");
    if (::ioctl(fd, KVM_SET_REGS, &saved.regs)) throw_errno("KVM_SET_REGS");
}

KvmDirtyRings& KvmGuest::dirty_rings() {
    if (!rings_) throw Error(EINVAL, "KvmGuest: created without a dirty ring");
    return *rings_;
}

}  // namespace dirtyring
