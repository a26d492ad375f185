// SPDX-License-Identifier: LGPL-2.1-or-later
// A minimal real KVM guest for tests, benchmarks and dirtyring-migrate:
// N vCPUs in 32-bit flat protected mode (no paging) running one small
// program that writes chosen pages.
//
// Guest memory layout: page 0 holds the program, page 1 one mailbox per
// vCPU (GuestProgram), pages from kFirstDataPage on are the guest's to
// write.  Each vCPU writes a 32-bit counter (incremented per write, kept in
// a register across exits) at the start of pages first_page, first_page +
// stride, ... (count pages), and exits to user space with port I/O after
// every `exit_every` writes (kPortBatch) and after each pass (kPortPass),
// then starts the next pass.  Exiting at least every 32 writes keeps the
// ring-full exits of these hosts' KVM exact (see DESIGN.md): set_program
// refuses more.
//
// Thread-safety: run() of different vCPUs may be called from different
// threads (one thread per vCPU); everything else from one thread.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "dirtyring/base/mapping.hpp"
#include "dirtyring/base/unique_fd.hpp"
#include "dirtyring/rings/harvester.hpp"
#include "dirtyring/rings/kvm_dirty_rings.hpp"

namespace dirtyring {

struct GuestProgram {
    std::uint32_t count;       // pages per pass
    std::uint32_t first_page;  // guest page number
    std::uint32_t stride = 1;  // in pages
    std::uint32_t exit_every = 32;
};

class KvmGuest {
public:
    static constexpr std::uint64_t kPageSize = 4096;
    static constexpr std::uint32_t kFirstDataPage = 2;
    static constexpr std::uint16_t kPortBatch = 0x10;
    static constexpr std::uint16_t kPortPass = 0x11;
    static constexpr unsigned kMaxVcpus = 64;
    static constexpr std::uint32_t kMaxExitEvery = 32;

    struct Options {
        unsigned vcpus = 1;
        std::uint64_t memory_bytes = 16 << 20;
        // Entries per vCPU dirty ring; 0: no dirty ring.
        std::uint32_t ring_entries = 0;
        // KVM_MEM_LOG_DIRTY_PAGES on the slot without a ring: for KVM_GET_DIRTY_LOG.
        bool dirty_log_bitmap = false;
        // Guest RAM provided by the caller (module memory, userfaultfd-registered
        // memory), at least memory_bytes; nullptr: the guest maps its own.
        void* memory = nullptr;
        // False when `memory` already holds a guest (it was migrated): the
        // program and mailboxes are not written, and the vCPUs start only
        // once restore_vcpu() gave them their state.
        bool load_program = true;
    };

    enum class Exit { Batch, Pass, RingFull };

    // Why KVM guests cannot run here, or nothing when they can: for test skips.
    static std::optional<std::string> unavailable_reason();

    explicit KvmGuest(const Options& options);
    ~KvmGuest();
    KvmGuest(const KvmGuest&) = delete;
    KvmGuest& operator=(const KvmGuest&) = delete;

    // Sets vCPU `vcpu`'s program (read by the guest at the start of each pass).
    void set_program(unsigned vcpu, const GuestProgram& program);

    // Runs the vCPU until its next exit; throws Error on any exit other than
    // the program's port I/O and a dirty-ring-full exit (with the reason).
    Exit run(unsigned vcpu);

    // Runs the vCPU until the end of its current pass, harvesting into `sink`
    // on every ring-full exit.  A ring-full exit that twice in a row finds
    // nothing to harvest means the ring overflowed and the vCPU is wedged:
    // throws Error(EOVERFLOW) instead of spinning.  Returns the ring-full
    // exits it handled.
    unsigned run_pass(unsigned vcpu, Harvester& harvester, const Harvester::Sink& sink);

    // The counter value the vCPU will write next (its eax).
    std::uint32_t next_value(unsigned vcpu);

    // The vCPU's architectural state (registers and segments) as an opaque
    // blob for a migration stream, and its restoration on another guest
    // running the same program.  Call between run()s of that vCPU.
    std::vector<std::byte> save_vcpu(unsigned vcpu);
    void restore_vcpu(unsigned vcpu, std::span<const std::byte> state);

    std::uint8_t* memory() const noexcept { return memory_; }
    std::uint64_t memory_bytes() const noexcept { return memory_bytes_; }
    unsigned vcpus() const noexcept { return static_cast<unsigned>(vcpus_.size()); }
    int vm_fd() const noexcept { return vm_.get(); }
    int vcpu_fd(unsigned vcpu) const { return vcpus_.at(vcpu).fd.get(); }
    // The dirty rings; only with Options::ring_entries != 0.
    KvmDirtyRings& dirty_rings();

private:
    struct Vcpu {
        UniqueFd fd;
        Mapping run;
    };

    UniqueFd kvm_;
    UniqueFd vm_;
    Mapping own_memory_;
    std::uint8_t* memory_ = nullptr;
    std::uint64_t memory_bytes_ = 0;
    std::vector<Vcpu> vcpus_;
    std::unique_ptr<KvmDirtyRings> rings_;
};

}  // namespace dirtyring
