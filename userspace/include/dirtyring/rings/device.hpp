// SPDX-License-Identifier: LGPL-2.1-or-later
// The dirtyring module's device, /dev/dirtyring.
#pragma once

#include <cstdint>
#include <string>

#include "dirtyring/base/unique_fd.hpp"

namespace dirtyring {

// What DIRTYRING_CHECK_EXTENSION answers about (the uAPI's DIRTYRING_CAP_*).
enum class Capability : std::uint32_t {
    // Limits: the value.
    MaxVcpus = 1,
    MaxSlots = 2,
    MaxSlotPages = 3,  // of PageSize bytes
    PageSize = 4,      // the tracking granule, bytes
    RingMinEntries = 5,
    RingMaxEntries = 6,
    RingReservedEntries = 7,
    MaxVms = 8,
    MaxVmsPerProcess = 9,
    MaxPinnedPages = 10,  // the module's max_pinned_mb, in pages
    // Features: 1 when present.
    ResetStatus = 11,  // DIRTYRING_RESET_RINGS reports struct dirtyring_reset
    VcpuReopen = 12,   // a closed vCPU's id can be created again
    PinnedRelog = 13,  // pages held across a reset are logged again
};

class Device {
public:
    static constexpr const char* kDefaultPath = "/dev/dirtyring";

    // Opens the device and checks that the module speaks the API version this
    // library was built for; throws Error otherwise (ENOENT when the module is
    // not loaded, EPROTO on a version mismatch).
    static Device open(const std::string& path = kDefaultPath);

    // The API version the module answers.
    int api_version() const;

    // The API version this library was built against.
    static int expected_api_version() noexcept;

    // DIRTYRING_CHECK_EXTENSION: the module's value of a limit, 1 for a
    // feature it has, 0 for a capability it does not know.  Throws Error if
    // the module cannot answer.
    std::uint64_t check_extension(Capability cap) const;

    int fd() const noexcept { return fd_.get(); }

private:
    Device(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}

    UniqueFd fd_;
    std::string path_;
};

}  // namespace dirtyring
