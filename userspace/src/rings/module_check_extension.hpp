// SPDX-License-Identifier: LGPL-2.1-or-later
// DIRTYRING_CHECK_EXTENSION on a device or VM fd; private to the library
// because the uAPI header is.
#pragma once

#include <linux/dirtyring.h>
#include <sys/ioctl.h>

#include <cstdint>
#include <string>

#include "dirtyring/base/error.hpp"
#include "dirtyring/rings/device.hpp"

namespace dirtyring {

static_assert(static_cast<std::uint32_t>(Capability::MaxVcpus) == DIRTYRING_CAP_MAX_VCPUS);
static_assert(static_cast<std::uint32_t>(Capability::MaxSlots) == DIRTYRING_CAP_MAX_SLOTS);
static_assert(static_cast<std::uint32_t>(Capability::MaxSlotPages) == DIRTYRING_CAP_MAX_SLOT_PAGES);
static_assert(static_cast<std::uint32_t>(Capability::PageSize) == DIRTYRING_CAP_PAGE_SIZE);
static_assert(static_cast<std::uint32_t>(Capability::RingMinEntries) ==
              DIRTYRING_CAP_RING_MIN_ENTRIES);
static_assert(static_cast<std::uint32_t>(Capability::RingMaxEntries) ==
              DIRTYRING_CAP_RING_MAX_ENTRIES);
static_assert(static_cast<std::uint32_t>(Capability::RingReservedEntries) ==
              DIRTYRING_CAP_RING_RESERVED_ENTRIES);
static_assert(static_cast<std::uint32_t>(Capability::MaxVms) == DIRTYRING_CAP_MAX_VMS);
static_assert(static_cast<std::uint32_t>(Capability::MaxVmsPerProcess) ==
              DIRTYRING_CAP_MAX_VMS_PER_PROCESS);
static_assert(static_cast<std::uint32_t>(Capability::MaxPinnedPages) ==
              DIRTYRING_CAP_MAX_PINNED_PAGES);
static_assert(static_cast<std::uint32_t>(Capability::ResetStatus) == DIRTYRING_CAP_RESET_STATUS);
static_assert(static_cast<std::uint32_t>(Capability::VcpuReopen) == DIRTYRING_CAP_VCPU_REOPEN);
static_assert(static_cast<std::uint32_t>(Capability::PinnedRelog) == DIRTYRING_CAP_PINNED_RELOG);

inline std::uint64_t module_check_extension(int fd, Capability cap, const std::string& what) {
    const auto n = static_cast<std::uint32_t>(cap);
    const int value = ::ioctl(fd, DIRTYRING_CHECK_EXTENSION, static_cast<unsigned long>(n));
    if (value < 0) throw_errno(what + ": DIRTYRING_CHECK_EXTENSION " + std::to_string(n));
    return static_cast<std::uint64_t>(value);
}

}  // namespace dirtyring
