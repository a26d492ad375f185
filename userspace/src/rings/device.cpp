// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/rings/device.hpp"

#include <fcntl.h>
#include <linux/dirtyring.h>
#include <sys/ioctl.h>

#include <cerrno>

#include "dirtyring/base/error.hpp"
#include "module_check_extension.hpp"

namespace dirtyring {

Device Device::open(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd) throw_errno("open " + path);
    Device device(std::move(fd), path);
    const int version = device.api_version();
    if (version != DIRTYRING_API_VERSION) {
        throw Error(EPROTO, path + ": module speaks API version " + std::to_string(version) +
                                ", this library version " + std::to_string(DIRTYRING_API_VERSION));
    }
    return device;
}

int Device::api_version() const {
    const int version = ::ioctl(fd_.get(), DIRTYRING_GET_API_VERSION, 0);
    if (version < 0) throw_errno(path_ + ": DIRTYRING_GET_API_VERSION");
    return version;
}

int Device::expected_api_version() noexcept {
    return DIRTYRING_API_VERSION;
}

std::uint64_t Device::check_extension(Capability cap) const {
    return module_check_extension(fd_.get(), cap, path_);
}

}  // namespace dirtyring
