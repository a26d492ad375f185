// SPDX-License-Identifier: LGPL-2.1-or-later
// dirtyring-stat's command line.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace dirtyring::stat {

// Exit codes (documented in usage()).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitNotRegistered = 3;
inline constexpr int kExitNotPermitted = 4;
inline constexpr int kExitVersion = 5;

// A bad command line: the message says what is wrong with it.
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Options {
    bool once = false;
    bool json = false;
    bool events = false;
    bool help = false;
    bool version = false;
    double interval_s = 1.0;  // between refreshes, and between the two samples of a snapshot
    std::optional<std::uint32_t> vm;
    std::optional<std::uint32_t> pid;
};

inline constexpr double kMinInterval = 0.01;
inline constexpr double kMaxInterval = 3600;

// Parses argv[1..]; throws UsageError.
Options parse_options(const std::vector<std::string>& args);

// --help.
std::string usage();

}  // namespace dirtyring::stat
