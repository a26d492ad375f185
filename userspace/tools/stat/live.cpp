// SPDX-License-Identifier: LGPL-2.1-or-later
#include "live.hpp"

#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "dirtyring/base/error.hpp"

namespace dirtyring::stat {

TerminalMode::TerminalMode(int fd) {
    if (fd < 0 || !::isatty(fd)) return;
    if (::tcgetattr(fd, &saved_)) throw_errno("tcgetattr");
    termios raw = saved_;
    raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
    raw.c_cc[VMIN] = 1;
    raw.c_cc[VTIME] = 0;
    if (::tcsetattr(fd, TCSANOW, &raw)) throw_errno("tcsetattr");
    fd_ = fd;
    restore_ = true;
}

TerminalMode::~TerminalMode() {
    if (restore_) ::tcsetattr(fd_, TCSANOW, &saved_);
}

AlternateScreen::AlternateScreen(int fd) : fd_(fd) {
    write_all(fd_, kEnterScreen);
}

AlternateScreen::~AlternateScreen() {
    try {
        write_all(fd_, kLeaveScreen);
    } catch (const Error&) {
        // The terminal is gone: nothing to restore on it.
    }
}

void write_all(int fd, const std::string& s) {
    std::size_t done = 0;
    while (done < s.size()) {
        const ssize_t n = ::write(fd, s.data() + done, s.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw_errno("write to the terminal");
        done += static_cast<std::size_t>(n);
    }
}

namespace {

// What the screen shows: a title line, then the table cut to the window.
std::string frame(const std::string& title, const std::string& table_or_note, int out_fd) {
    winsize ws{};
    std::size_t rows = 24, cols = 80;
    if (::ioctl(out_fd, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0) {
        rows = ws.ws_row;
        cols = ws.ws_col;
    }
    std::string out = "\x1b[H\x1b[2J";
    std::string t = title;
    t.resize(std::min(t.size(), cols));
    out += t + "\n";
    std::size_t line = 1;
    std::size_t start = 0;
    while (start < table_or_note.size() && line + 1 < rows) {
        std::size_t end = table_or_note.find('\n', start);
        if (end == std::string::npos) end = table_or_note.size();
        out += table_or_note.substr(start, std::min(end - start, cols)) + "\n";
        start = end + 1;
        ++line;
    }
    return out;
}

std::string title(double interval_s, std::size_t vms, std::chrono::system_clock::time_point t) {
    char buf[160];
    std::snprintf(buf, sizeof(buf), "dirtyring-stat  every %.2f s  %zu VM%s  %s  (q quits)",
                  interval_s, vms, vms == 1 ? "" : "s", format_time(t).c_str());
    return buf;
}

// Table rows that fit a window of `rows` lines under the title and header.
std::size_t table_rows(int out_fd) {
    winsize ws{};
    if (::ioctl(out_fd, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 3)
        return static_cast<std::size_t>(ws.ws_row) - 3;
    return 21;
}

std::size_t table_width(int out_fd) {
    winsize ws{};
    if (::ioctl(out_fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
    return 80;
}

}  // namespace

void run_live(const std::function<Snapshot()>& sample, double interval_s, int in_fd, int out_fd,
              int stop_fd) {
    using Clock = std::chrono::steady_clock;
    const TerminalMode keyboard(in_fd);
    const AlternateScreen screen(out_fd);
    const auto interval =
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(interval_s));

    Snapshot previous = sample();
    char note[80];
    std::snprintf(note, sizeof(note), "sampling: the first rates come in %.2f s\n", interval_s);
    write_all(out_fd, frame(title(interval_s, previous.vms.size(), previous.wall), note, out_fd));
    Clock::time_point next = previous.taken + interval;
    for (;;) {
        const auto left = next - Clock::now();
        if (left <= Clock::duration::zero()) {
            Snapshot current = sample();
            const Report report = make_report(previous, current);
            write_all(out_fd,
                      frame(title(interval_s, report.vms.size(), report.time),
                            report.vms.empty()
                                ? format_table(report, 0, table_width(out_fd)) + "(no VMs)\n"
                                : format_table(report, table_rows(out_fd), table_width(out_fd)),
                            out_fd));
            previous = std::move(current);
            next += interval;
            // Late (a slow sample, a stopped process): the next one an interval from now.
            if (next < Clock::now()) next = Clock::now() + interval;
            continue;
        }
        pollfd fds[2] = {{in_fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
        const auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
        const int n = ::poll(fds, 2, static_cast<int>(std::min<long long>(ms, 1000)));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw_errno("poll");
        if (fds[1].revents) return;  // SIGINT, SIGTERM or SIGHUP
        if (fds[0].revents) {
            char keys[64];
            const ssize_t got = ::read(in_fd, keys, sizeof(keys));
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) return;  // the terminal is gone
            if (std::find_if(keys, keys + got, [](char c) { return c == 'q' || c == 'Q'; }) !=
                keys + got)
                return;
        }
    }
}

}  // namespace dirtyring::stat
