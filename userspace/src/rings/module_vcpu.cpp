// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/rings/module_vcpu.hpp"

#include <fcntl.h>
#include <linux/dirtyring.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <string>

#include "dirtyring/base/error.hpp"
#include "module_ring_status.hpp"

namespace dirtyring {

ModuleVcpu::Binding& ModuleVcpu::Binding::operator=(Binding&& other) noexcept {
    if (this != &other) {
        reset();
        fd_ = std::move(other.fd_);
    }
    return *this;
}

void ModuleVcpu::Binding::reset() noexcept {
    if (fd_) ::ioctl(fd_.get(), DIRTYRING_UNBIND, 0);
    fd_.reset();
}

ModuleVcpu::ModuleVcpu(std::uint32_t id, UniqueFd fd, std::uint32_t entries)
    : id_(id),
      fd_(std::move(fd)),
      ring_(entries * sizeof(DirtyGfn), PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(),
            DIRTYRING_VCPU_RING_MMAP_OFFSET, "dirtyring vCPU ring") {}

ModuleVcpu::Binding ModuleVcpu::bind() {
    UniqueFd dup(::fcntl(fd_.get(), F_DUPFD_CLOEXEC, 0));
    if (!dup) throw_errno("dup of the fd of vCPU " + std::to_string(id_));
    if (::ioctl(fd_.get(), DIRTYRING_BIND, 0))
        throw_errno("DIRTYRING_BIND vCPU " + std::to_string(id_));
    return Binding(std::move(dup));
}

RingStatus ModuleVcpu::ring_status() const {
    dirtyring_ring_status st{};
    if (::ioctl(fd_.get(), DIRTYRING_GET_RING_STATUS, &st))
        throw_errno("DIRTYRING_GET_RING_STATUS vCPU " + std::to_string(id_));
    return to_ring_status(st);
}

}  // namespace dirtyring
