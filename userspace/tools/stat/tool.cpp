// SPDX-License-Identifier: LGPL-2.1-or-later
#include "tool.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <iostream>
#include <map>
#include <thread>

#include "dirtyring/base/error.hpp"
#include "dirtyring/base/unique_fd.hpp"
#include "live.hpp"
#include "netlink.hpp"
#include "options.hpp"
#include "report.hpp"

#ifndef DIRTYRING_VERSION
#define DIRTYRING_VERSION "unknown"
#endif

namespace dirtyring::stat {

namespace {

// SIGINT, SIGTERM and SIGHUP, blocked and readable on a signalfd: the
// loops end on them as on `q`, unwinding (so the terminal is restored).
class StopSignals {
public:
    StopSignals() {
        sigemptyset(&set_);
        sigaddset(&set_, SIGINT);
        sigaddset(&set_, SIGTERM);
        sigaddset(&set_, SIGHUP);
        if (::sigprocmask(SIG_BLOCK, &set_, &old_)) throw_errno("sigprocmask");
        fd_.reset(::signalfd(-1, &set_, SFD_CLOEXEC | SFD_NONBLOCK));
        if (!fd_) {
            const int e = errno;
            ::sigprocmask(SIG_SETMASK, &old_, nullptr);
            throw Error(e, "signalfd");
        }
    }
    ~StopSignals() {
        // Take the signals that stopped us, or unblocking them would deliver
        // them again (and kill the process instead of exiting 0).
        signalfd_siginfo info{};
        while (::read(fd_.get(), &info, sizeof(info)) == static_cast<ssize_t>(sizeof(info))) {
        }
        fd_.reset();
        ::sigprocmask(SIG_SETMASK, &old_, nullptr);
    }
    StopSignals(const StopSignals&) = delete;
    StopSignals& operator=(const StopSignals&) = delete;

    int fd() const noexcept { return fd_.get(); }

private:
    sigset_t set_{};
    sigset_t old_{};
    UniqueFd fd_;
};

int snapshot(Netlink& nl, const Options& o) {
    const Filter filter{o.vm, o.pid};
    const Snapshot before = take_snapshot(nl, filter);
    std::this_thread::sleep_for(std::chrono::duration<double>(o.interval_s));
    const Snapshot after = take_snapshot(nl, filter);
    if (o.vm && after.vms.empty())
        throw Error(ENOENT, "no VM with id " + std::to_string(*o.vm) +
                                (o.pid ? " created by pid " + std::to_string(*o.pid) : ""));
    const Report report = make_report(before, after);
    if (o.json)
        std::cout << to_json(report, nl.family_version()).dump() << std::endl;
    else
        std::cout << format_table(report) << std::flush;
    return kExitOk;
}

int live(Netlink& nl, const Options& o) {
    const StopSignals stop;
    const Filter filter{o.vm, o.pid};
    std::cout.flush();
    run_live([&] { return take_snapshot(nl, filter); }, o.interval_s,
             ::isatty(STDIN_FILENO) ? STDIN_FILENO : -1, STDOUT_FILENO, stop.fd());
    return kExitOk;
}

int events(Netlink& nl, const Options& o) {
    const StopSignals stop;
    EventSubscription events = nl.subscribe();
    // For --pid: the owner of every VM, from a dump after joining the group
    // (so no VM falls between the two) and from the creation events.
    std::map<std::uint32_t, std::uint32_t> owners;
    if (o.pid)
        for (const auto& vm : nl.vms()) owners[vm.id] = vm.owner_pid;
    const auto wanted = [&](const Event& e) {
        if (e.kind == Event::Kind::Lost) return true;
        if (o.vm && e.vm_id != *o.vm) return false;
        if (!o.pid) return true;
        const auto it = owners.find(e.vm_id);
        return it != owners.end() && it->second == *o.pid;
    };
    for (;;) {
        pollfd fds[2] = {{events.fd(), POLLIN, 0}, {stop.fd(), POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            throw_errno("poll");
        }
        if (fds[1].revents) return kExitOk;
        if (fds[0].revents & (POLLERR | POLLHUP) && !(fds[0].revents & POLLIN))
            throw Error(EIO, "the events socket failed");
        events.read([&](const Event& e) {
            if (e.kind == Event::Kind::VmCreated) owners[e.vm_id] = e.owner_pid;
            if (wanted(e))
                std::cout << format_event(e, std::chrono::system_clock::now(), o.json) << std::endl;
            if (e.kind == Event::Kind::VmDestroyed) owners.erase(e.vm_id);
        });
    }
}

int exit_code(FamilyError::Reason reason) {
    switch (reason) {
        case FamilyError::Reason::NotRegistered:
            return kExitNotRegistered;
        case FamilyError::Reason::NotPermitted:
            return kExitNotPermitted;
        case FamilyError::Reason::Version:
            return kExitVersion;
    }
    return kExitFailed;
}

}  // namespace

int run(const std::vector<std::string>& args) {
    Options o;
    try {
        o = parse_options(args);
    } catch (const UsageError& e) {
        std::cerr << "dirtyring-stat: " << e.what() << "\n" << usage();
        return kExitUsage;
    }
    if (o.help) {
        std::cout << usage();
        return kExitOk;
    }
    if (o.version) {
        std::cout << "dirtyring-stat " << DIRTYRING_VERSION << " (netlink family " << kFamilyName
                  << " version " << static_cast<unsigned>(kFamilyVersion) << ")\n";
        return kExitOk;
    }
    try {
        Netlink nl;
        if (o.events) return events(nl, o);
        if (!o.once && !o.json && ::isatty(STDOUT_FILENO)) return live(nl, o);
        return snapshot(nl, o);
    } catch (const FamilyError& e) {
        std::cerr << "dirtyring-stat: " << e.message() << "\n";
        return exit_code(e.reason());
    } catch (const std::exception& e) {
        std::cerr << "dirtyring-stat: " << e.what() << "\n";
        return kExitFailed;
    }
}

}  // namespace dirtyring::stat
