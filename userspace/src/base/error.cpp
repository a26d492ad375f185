// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/base/error.hpp"

#include <cerrno>

namespace dirtyring {

Error::Error(int errnum, const std::string& what)
    : std::system_error(errnum, std::generic_category(), what) {}

void throw_errno(const std::string& what) {
    throw Error(errno, what);
}

}  // namespace dirtyring
