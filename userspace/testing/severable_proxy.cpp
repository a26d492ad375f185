// SPDX-License-Identifier: LGPL-2.1-or-later
#include "testing/severable_proxy.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "dirtyring/base/error.hpp"

namespace dirtyring {
namespace {

sockaddr_un unix_address(const std::string& path) {
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof(un.sun_path))
        throw Error(EINVAL, "proxy: unix socket path '" + path + "' empty or too long");
    std::memcpy(un.sun_path, path.c_str(), path.size() + 1);
    return un;
}

UniqueFd unix_socket() {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) throw_errno("proxy: socket");
    return fd;
}

}  // namespace

SeverableProxy::SeverableProxy(std::string listen_path, std::string target_path)
    : listen_path_(std::move(listen_path)), target_path_(std::move(target_path)) {
    const sockaddr_un un = unix_address(listen_path_);
    listener_ = unix_socket();
    ::unlink(listen_path_.c_str());
    if (::bind(listener_.get(), reinterpret_cast<const sockaddr*>(&un), sizeof(un)) ||
        ::listen(listener_.get(), 16))
        throw_errno("proxy: bind and listen on " + listen_path_);
    acceptor_ = std::jthread([this](std::stop_token stop) { accept_loop(stop); });
}

SeverableProxy::~SeverableProxy() {
    acceptor_.request_stop();
    if (acceptor_.joinable()) acceptor_.join();
    cut();
    std::list<Pair> pairs;
    {
        std::lock_guard lock(mutex_);
        pairs.swap(pairs_);
    }
    pairs.clear();  // joins the pumps, which the cut ended
    ::unlink(listen_path_.c_str());
}

void SeverableProxy::cut_after(std::uint64_t bytes, unsigned times, std::function<bool()> armed) {
    std::lock_guard lock(mutex_);
    armed_ = std::move(armed);
    counting_ = false;
    bytes_ = 0;
    threshold_ = bytes;
    cuts_left_ = times;
}

void SeverableProxy::cut() {
    std::lock_guard lock(mutex_);
    for (Pair& p : pairs_) {
        ::shutdown(p.source.get(), SHUT_RDWR);
        ::shutdown(p.destination.get(), SHUT_RDWR);
    }
}

unsigned SeverableProxy::connections() const {
    std::lock_guard lock(mutex_);
    return static_cast<unsigned>(pairs_.size());
}

void SeverableProxy::accept_loop(std::stop_token stop) {
    const sockaddr_un target = unix_address(target_path_);
    while (!stop.stop_requested()) {
        pollfd p{listener_.get(), POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0) continue;
        UniqueFd source(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!source) continue;
        UniqueFd destination = unix_socket();
        // Nobody there: the source sees its connection end, as it would.
        if (::connect(destination.get(), reinterpret_cast<const sockaddr*>(&target),
                      sizeof(target)))
            continue;
        std::lock_guard lock(mutex_);
        Pair& pair = pairs_.emplace_back();
        pair.source = std::move(source);
        pair.destination = std::move(destination);
        const int s = pair.source.get();
        const int d = pair.destination.get();
        pair.up = std::jthread([this, s, d] { pump(s, d, true); });
        pair.down = std::jthread([this, s, d] { pump(d, s, false); });
    }
}

void SeverableProxy::pump(int from, int to, bool up) {
    std::byte buffer[64 << 10];
    for (;;) {
        const ssize_t n = ::read(from, buffer, sizeof(buffer));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        std::size_t done = 0;
        while (done < static_cast<std::size_t>(n)) {
            const ssize_t w =
                ::send(to, buffer + done, static_cast<std::size_t>(n) - done, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) break;
            done += static_cast<std::size_t>(w);
        }
        if (done < static_cast<std::size_t>(n)) break;
        if (up) counted(done);
    }
    // One side ended: so does the other, as on a real connection.
    ::shutdown(from, SHUT_RDWR);
    ::shutdown(to, SHUT_RDWR);
}

void SeverableProxy::counted(std::size_t bytes) {
    forwarded_.fetch_add(bytes);
    std::lock_guard lock(mutex_);
    if (!cuts_left_) return;
    if (!counting_) {
        if (!armed_ || !armed_()) return;
        counting_ = true;
        bytes_ = 0;
        return;
    }
    bytes_ += bytes;
    if (bytes_ < threshold_) return;
    bytes_ = 0;
    --cuts_left_;
    ++cuts_;
    for (Pair& p : pairs_) {
        ::shutdown(p.source.get(), SHUT_RDWR);
        ::shutdown(p.destination.get(), SHUT_RDWR);
    }
}

}  // namespace dirtyring
