// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/migration/recovery.hpp"

#include <algorithm>
#include <cerrno>

namespace dirtyring {
namespace {

// How often a waiting reconnect looks at its stop token.
constexpr std::chrono::milliseconds kSlice{100};

std::chrono::milliseconds next_slice(Reconnector::Clock::time_point deadline,
                                     const std::stop_token& stop, const char* what) {
    if (stop.stop_requested()) throw Error(ECANCELED, std::string(what) + ": aborted");
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - Reconnector::Clock::now());
    if (left.count() <= 0) throw Error(ETIMEDOUT, std::string(what) + ": timed out");
    return std::min(left, kSlice);
}

}  // namespace

bool is_connection_error(const Error& error) noexcept {
    switch (error.errnum()) {
        case ECONNRESET:
        case EPIPE:
        case ECONNABORTED:
        case ENOTCONN:
        case ETIMEDOUT:
        case EHOSTUNREACH:
        case EHOSTDOWN:
        case ENETUNREACH:
        case ENETDOWN:
        case ENETRESET:
            return true;
        default:
            return false;
    }
}

Channel ConnectingReconnector::reconnect(Clock::time_point deadline, std::stop_token stop) {
    const std::string what = "reconnecting to " + address_.to_string();
    for (;;) {
        const auto slice = next_slice(deadline, stop, what.c_str());
        try {
            return Channel::connect(address_, slice);
        } catch (const Error& e) {
            // Nobody listening yet (the destination has not noticed the
            // break), or a network still down: the pause goes on.
            if (e.errnum() != ECONNREFUSED && e.errnum() != ENOENT && !is_connection_error(e))
                throw;
        }
    }
}

Channel AcceptingReconnector::reconnect(Clock::time_point deadline, std::stop_token stop) {
    for (;;) {
        const auto slice = next_slice(deadline, stop, "waiting for the source to reconnect");
        try {
            return listener_.accept(slice);
        } catch (const Error& e) {
            if (e.errnum() != ETIMEDOUT) throw;
        }
    }
}

}  // namespace dirtyring
