// SPDX-License-Identifier: LGPL-2.1-or-later
// A proxy between a migration's source and destination that a test can
// cut, as a network would: it listens on a unix socket path, connects each
// connection it accepts to the destination's path, and copies bytes both
// ways.  A cut shuts every connection it carries at once (both sides see
// theirs end; bytes in flight are lost); new connections are carried as
// before, so a source that reconnects reaches the destination again.
//
// Cuts come from the work done, never from a clock: cut_after() cuts once
// a number of bytes went from source to destination after a predicate (for
// instance "the source is in postcopy", or "forwarded() passed the first
// round") first held, then counts again for the next cut.
//
// Owns its listening socket, the connections and one thread per direction
// of each; thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <string>
#include <thread>

#include "dirtyring/base/unique_fd.hpp"

namespace dirtyring {

class SeverableProxy {
public:
    SeverableProxy(std::string listen_path, std::string target_path);
    ~SeverableProxy();
    SeverableProxy(const SeverableProxy&) = delete;
    SeverableProxy& operator=(const SeverableProxy&) = delete;

    // `times` cuts, each once `bytes` more went towards the destination,
    // counted from the first time `armed()` returned true.
    void cut_after(std::uint64_t bytes, unsigned times, std::function<bool()> armed);
    // Cuts now.
    void cut();

    unsigned cuts() const noexcept { return cuts_.load(); }
    // Bytes carried towards the destination, over every connection so far.
    std::uint64_t forwarded() const noexcept { return forwarded_.load(); }
    unsigned connections() const;

private:
    struct Pair {
        UniqueFd source;
        UniqueFd destination;
        std::jthread up;    // source -> destination
        std::jthread down;  // destination -> source
    };
    void accept_loop(std::stop_token stop);
    void pump(int from, int to, bool up);
    void counted(std::size_t bytes);

    std::string listen_path_;
    std::string target_path_;
    UniqueFd listener_;
    mutable std::mutex mutex_;
    std::list<Pair> pairs_;
    std::function<bool()> armed_;
    bool counting_ = false;
    std::uint64_t bytes_ = 0;
    std::uint64_t threshold_ = 0;
    unsigned cuts_left_ = 0;
    std::atomic<unsigned> cuts_{0};
    std::atomic<std::uint64_t> forwarded_{0};
    std::jthread acceptor_;  // last: stopped before the rest goes
};

}  // namespace dirtyring
