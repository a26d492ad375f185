// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/base/unique_fd.hpp"

#include <unistd.h>

namespace dirtyring {

void UniqueFd::reset(int fd) noexcept {
    // close() is not retried on EINTR: on Linux the descriptor is released
    // even then, and a retry could close a descriptor another thread got.
    if (fd_ >= 0 && fd_ != fd) ::close(fd_);
    fd_ = fd;
}

}  // namespace dirtyring
