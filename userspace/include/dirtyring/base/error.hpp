// SPDX-License-Identifier: LGPL-2.1-or-later
// Errors of libdirtyring: one exception type for everything the library
// reports. It is a std::system_error, so callers that only care about the
// errno can catch that and compare code() with std::errc.
#pragma once

#include <string>
#include <system_error>

namespace dirtyring {

class Error : public std::system_error {
public:
    // `what` says what was being done ("open /dev/dirtyring"), so the message
    // reads "open /dev/dirtyring: No such file or directory".
    Error(int errnum, const std::string& what);

    int errnum() const noexcept { return code().value(); }
};

// Throws Error with the current errno; call right after the failing call.
[[noreturn]] void throw_errno(const std::string& what);

}  // namespace dirtyring
