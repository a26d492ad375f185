// SPDX-License-Identifier: LGPL-2.1-or-later
// One vCPU of a module VM (ModuleVm::create_vcpu): owns its vCPU fd and the
// mapping of its dirty ring.  The ring itself is harvested through the VM
// (ModuleVm is the RingBackend), so this class only binds threads and
// reports status.
//
// Thread-safety: bind() from the thread to bind; ring_status() from any
// thread.  A Binding may be destroyed (unbinding) from any thread.
#pragma once

#include <cstdint>
#include <utility>

#include "dirtyring/base/mapping.hpp"
#include "dirtyring/base/unique_fd.hpp"
#include "dirtyring/rings/ring_status.hpp"
#include "dirtyring/rings/ring_view.hpp"

namespace dirtyring {

class ModuleVcpu {
public:
    // While alive, the thread that made it has its writes to the VM's memory
    // logged into this vCPU's ring (DIRTYRING_BIND); destroying or reset()ting
    // it unbinds (DIRTYRING_UNBIND).  Owning the binding, rather than offering
    // a bare unbind(), means a stale unbind can never undo another thread's
    // later binding.
    class [[nodiscard]] Binding {
    public:
        Binding() noexcept = default;
        Binding(Binding&&) noexcept = default;
        Binding& operator=(Binding&& other) noexcept;
        Binding(const Binding&) = delete;
        Binding& operator=(const Binding&) = delete;
        ~Binding() { reset(); }

        // Unbinds now.  Errors are not reported: there is none to expect
        // once bound, and a destructor could not report it anyway.
        void reset() noexcept;
        explicit operator bool() const noexcept { return static_cast<bool>(fd_); }

    private:
        friend class ModuleVcpu;
        explicit Binding(UniqueFd fd) noexcept : fd_(std::move(fd)) {}
        // A duplicate of the vCPU fd: the binding stays valid (and unbinds
        // the right vCPU) even if the ModuleVm goes first.
        UniqueFd fd_;
    };

    // Used by ModuleVm: takes a vCPU fd and maps its ring of `entries`.
    ModuleVcpu(std::uint32_t id, UniqueFd fd, std::uint32_t entries);

    // Binds the calling thread; throws Error: EBUSY when the vCPU has a
    // thread or this thread has another vCPU of the VM, EALREADY when this
    // thread is bound to it already.
    Binding bind();

    RingStatus ring_status() const;

    std::uint32_t id() const noexcept { return id_; }
    int fd() const noexcept { return fd_.get(); }
    DirtyGfn* ring_entries() const noexcept { return ring_.as<DirtyGfn>(); }

private:
    std::uint32_t id_;
    UniqueFd fd_;
    Mapping ring_;
};

}  // namespace dirtyring
