// SPDX-License-Identifier: LGPL-2.1-or-later
// The live table of dirtyring-stat on a terminal, in the spirit of
// kvm_stat: refreshed every interval, q quits.
#pragma once

#include <termios.h>

#include <functional>
#include <string>

#include "report.hpp"

namespace dirtyring::stat {

// Non-canonical input without echo on a terminal (one key at a time, for
// `q`), restored when destroyed.  Nothing happens for fd -1 or a fd that is
// not a terminal.
class TerminalMode {
public:
    explicit TerminalMode(int fd);
    ~TerminalMode();
    TerminalMode(const TerminalMode&) = delete;
    TerminalMode& operator=(const TerminalMode&) = delete;

private:
    int fd_ = -1;
    bool restore_ = false;
    termios saved_{};
};

// The terminal's alternate screen with the cursor hidden, left when
// destroyed (the shell's screen comes back as it was).
class AlternateScreen {
public:
    explicit AlternateScreen(int fd);
    ~AlternateScreen();
    AlternateScreen(const AlternateScreen&) = delete;
    AlternateScreen& operator=(const AlternateScreen&) = delete;

private:
    int fd_;
};

// The escape sequences AlternateScreen writes, for tests.
inline constexpr const char* kEnterScreen = "\x1b[?1049h\x1b[?25l";
inline constexpr const char* kLeaveScreen = "\x1b[?25h\x1b[?1049l";

// Writes all of `s` to `fd`; throws Error.
void write_all(int fd, const std::string& s);

// Samples, then every `interval_s` samples again and draws the rates since
// the previous sample on `out_fd`, until `q` (or end of input) on `in_fd`
// or `stop_fd` (a signalfd) is readable; -1 for either: not watched.
// Keyboard and screen are restored on every way out, exceptions included.
void run_live(const std::function<Snapshot()>& sample, double interval_s, int in_fd, int out_fd,
              int stop_fd);

}  // namespace dirtyring::stat
