// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/migration/channel.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dirtyring/base/error.hpp"

namespace dirtyring {
namespace {

constexpr std::size_t kBufferBytes = Channel::kBufferBytes;

// A socket address for `address`, and its length.
struct SockAddr {
    sockaddr_storage storage{};
    socklen_t length = 0;
    int family = AF_UNSPEC;
};

SockAddr with_port(const void* addr, socklen_t length, int family, std::uint16_t port) {
    SockAddr sa;
    std::memcpy(&sa.storage, addr, length);
    sa.length = length;
    sa.family = family;
    if (family == AF_INET)
        reinterpret_cast<sockaddr_in*>(&sa.storage)->sin_port = htons(port);
    else
        reinterpret_cast<sockaddr_in6*>(&sa.storage)->sin6_port = htons(port);
    return sa;
}

// Every socket address `address` names, in the order to try them: one for
// a unix path or a numeric host, each stream address the resolver gives
// for a host name (IPv4 and IPv6 alike, in its order).
std::vector<SockAddr> resolve(const ChannelAddress& address) {
    if (address.kind == ChannelAddress::Kind::Unix) {
        sockaddr_un un{};
        un.sun_family = AF_UNIX;
        if (address.path_or_host.empty() || address.path_or_host.size() >= sizeof(un.sun_path))
            throw Error(EINVAL, "unix socket path '" + address.path_or_host +
                                    "': empty or longer than " +
                                    std::to_string(sizeof(un.sun_path) - 1) + " bytes");
        std::memcpy(un.sun_path, address.path_or_host.c_str(), address.path_or_host.size() + 1);
        SockAddr sa;
        std::memcpy(&sa.storage, &un, sizeof(un));
        sa.length = sizeof(un);
        sa.family = AF_UNIX;
        return {sa};
    }
    sockaddr_in in4{};
    sockaddr_in6 in6{};
    in4.sin_family = AF_INET;
    in6.sin6_family = AF_INET6;
    if (::inet_pton(AF_INET, address.path_or_host.c_str(), &in4.sin_addr) == 1)
        return {with_port(&in4, sizeof(in4), AF_INET, address.port)};
    if (::inet_pton(AF_INET6, address.path_or_host.c_str(), &in6.sin6_addr) == 1)
        return {with_port(&in6, sizeof(in6), AF_INET6, address.port)};
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const int rc = ::getaddrinfo(address.path_or_host.c_str(), nullptr, &hints, &found);
    if (rc != 0 || !found)
        throw Error(EINVAL, "host '" + address.path_or_host +
                                "': " + (rc ? ::gai_strerror(rc) : "no address"));
    std::vector<SockAddr> all;
    for (const addrinfo* a = found; a; a = a->ai_next)
        if (a->ai_family == AF_INET || a->ai_family == AF_INET6)
            all.push_back(with_port(a->ai_addr, a->ai_addrlen, a->ai_family, address.port));
    ::freeaddrinfo(found);
    if (all.empty()) throw Error(EINVAL, "host '" + address.path_or_host + "': no IP address");
    return all;
}

const sockaddr* as_sockaddr(const SockAddr& sa) {
    return reinterpret_cast<const sockaddr*>(&sa.storage);
}

// Whether a socket in this network namespace listens at a path named like
// `path`.  Read from /proc/net/unix, not probed with connect(): a probe
// would be accepted by a live listener as its migration's connection.
// Names are compared by their last component, so a listener bound through
// a relative path counts too: a false match only leaves the file alone.
bool someone_listens_at(const std::string& path) {
    constexpr unsigned long kAcceptCon = 0x10000;  // __SO_ACCEPTCON: listen() was called
    const auto base = [](const std::string& p) { return p.substr(p.rfind('/') + 1); };
    std::ifstream in("/proc/net/unix");
    if (!in) return true;  // cannot tell: never remove
    std::string line;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        std::string num, refs, protocol, flags, type, state, inode, name;
        if (!(fields >> num >> refs >> protocol >> flags >> type >> state >> inode)) continue;
        std::getline(fields >> std::ws, name);  // the rest: a path may hold spaces
        if (name.empty()) continue;             // unnamed
        if ((std::stoul(flags, nullptr, 16) & kAcceptCon) && base(name) == base(path)) return true;
    }
    return false;
}

// A unix socket file nobody listens on (left by a listener that was
// killed) is removed, so that a new listener can bind there; anything else
// at the path stays, and errno is EADDRINUSE again.
bool replace_stale_socket(const SockAddr& sa) {
    const std::string path = reinterpret_cast<const sockaddr_un*>(&sa.storage)->sun_path;
    struct stat st {};
    if (::lstat(path.c_str(), &st) || !S_ISSOCK(st.st_mode) || someone_listens_at(path) ||
        ::unlink(path.c_str())) {
        errno = EADDRINUSE;
        return false;
    }
    return true;
}

}  // namespace

ChannelAddress ChannelAddress::parse(const std::string& text) {
    const auto bad = [&](const std::string& why) {
        return Error(EINVAL,
                     "address '" + text + "': " + why + " (expected unix:PATH or tcp:HOST:PORT)");
    };
    if (text.starts_with("unix:")) {
        ChannelAddress a{Kind::Unix, text.substr(5), 0};
        if (a.path_or_host.empty()) throw bad("empty path");
        return a;
    }
    if (!text.starts_with("tcp:")) throw bad("unknown kind");
    const std::string rest = text.substr(4);
    const auto colon = rest.rfind(':');
    if (colon == std::string::npos || colon == 0) throw bad("no port");
    std::string host = rest.substr(0, colon);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    const std::string port = rest.substr(colon + 1);
    if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), ::isdigit))
        throw bad("bad port");
    const unsigned long n = std::stoul(port);
    if (n == 0 || n > 65535) throw bad("port out of range");
    ChannelAddress a{Kind::Tcp, host, static_cast<std::uint16_t>(n)};
    resolve(a);  // validates the host
    return a;
}

std::string ChannelAddress::to_string() const {
    if (kind == Kind::Unix) return "unix:" + path_or_host;
    if (path_or_host.find(':') != std::string::npos)
        return "tcp:[" + path_or_host + "]:" + std::to_string(port);
    return "tcp:" + path_or_host + ":" + std::to_string(port);
}

Listener::Listener(const ChannelAddress& address) {
    // A host name's first address: a listener binds one.
    const SockAddr sa = resolve(address).front();
    fd_.reset(::socket(sa.family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd_) throw_errno("socket");
    if (sa.family != AF_UNIX) {
        const int one = 1;
        ::setsockopt(fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    }
    if (::bind(fd_.get(), as_sockaddr(sa), sa.length)) {
        if (errno != EADDRINUSE || sa.family != AF_UNIX || !replace_stale_socket(sa))
            throw_errno("bind " + address.to_string() +
                        (errno == EADDRINUSE ? " (address in use)" : ""));
        if (::bind(fd_.get(), as_sockaddr(sa), sa.length))
            throw_errno("bind " + address.to_string());
    }
    if (sa.family == AF_UNIX) unlink_path_ = address.path_or_host;
    // The stream, the preempt channel and the page channels, connected
    // before the first is accepted.
    if (::listen(fd_.get(), SOMAXCONN)) throw_errno("listen " + address.to_string());
}

Listener::~Listener() {
    if (!unlink_path_.empty() && fd_) ::unlink(unlink_path_.c_str());
}

void Listener::disown() noexcept {
    unlink_path_.clear();
    fd_.reset();
}

Channel Listener::accept(std::chrono::milliseconds timeout) {
    pollfd p{fd_.get(), POLLIN, 0};
    for (;;) {
        const int n = ::poll(&p, 1, static_cast<int>(timeout.count()));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw_errno("poll on the listening socket");
        if (n == 0)
            throw Error(ETIMEDOUT,
                        "no source connected within " + std::to_string(timeout.count()) + " ms");
        break;
    }
    UniqueFd fd(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!fd) throw_errno("accept");
    return Channel(std::move(fd));
}

Channel::Channel(UniqueFd fd) : fd_(std::move(fd)) {
    const int one = 1;
    // Not a unix socket: page records are large, but small control records
    // (requests, acknowledgements) must not wait for Nagle.
    ::setsockopt(fd_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    write_buffer_ = std::make_unique_for_overwrite<std::byte[]>(kBufferBytes);
    pending_.reserve(IOV_MAX);
    read_buffer_.resize(kBufferBytes);
}

Channel::Channel(Channel&& other) noexcept
    : fd_(std::move(other.fd_)),
      write_buffer_(std::move(other.write_buffer_)),
      write_used_(std::exchange(other.write_used_, 0)),
      pending_(std::move(other.pending_)),
      pending_bytes_(std::exchange(other.pending_bytes_, 0)),
      bytes_written_(other.bytes_written_),
      limit_(std::move(other.limit_)),
      read_buffer_(std::move(other.read_buffer_)),
      read_begin_(other.read_begin_),
      read_end_(other.read_end_),
      bytes_read_(other.bytes_read_) {}

namespace {

// One connect() attempt to `sa`, never past `deadline`: a peer whose SYNs
// go unanswered (a full backlog, a network dropping packets) would hold a
// blocking connect() for the kernel's two minutes of retries.  Returns the
// connected socket, or no socket and errno set.
UniqueFd connect_once(const SockAddr& sa, std::chrono::steady_clock::time_point deadline) {
    UniqueFd fd(::socket(sa.family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) throw_errno("socket");
    if (::connect(fd.get(), as_sockaddr(sa), sa.length) != 0) {
        if (errno != EINPROGRESS) return {};
        pollfd p{fd.get(), POLLOUT, 0};
        for (;;) {
            const auto left = std::chrono::ceil<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            const int n = ::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(left.count(), 0)));
            if (n > 0) break;
            if (n == 0) {
                errno = ETIMEDOUT;
                return {};
            }
            if (errno != EINTR) throw_errno("poll on a connecting socket");
        }
        int err = 0;
        socklen_t len = sizeof(err);
        if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len)) throw_errno("getsockopt");
        if (err) {
            errno = err;
            return {};
        }
    }
    // The channel's reads and writes block.
    if (::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) & ~O_NONBLOCK)) throw_errno("fcntl");
    return fd;
}

}  // namespace

Channel Channel::connect(const ChannelAddress& address, std::chrono::milliseconds timeout) {
    const std::vector<SockAddr> addresses = resolve(address);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        // Each of a name's addresses in turn: the listener may be on any.
        int err = 0;
        bool not_yet = false;
        for (std::size_t i = 0; i < addresses.size(); ++i) {
            // A share of what is left each: an address whose packets are
            // dropped (a dead IPv6 route) must not take all of it.
            const auto now = std::chrono::steady_clock::now();
            const auto share = std::max<std::chrono::steady_clock::duration>(deadline - now, {}) /
                               static_cast<int>(addresses.size() - i);
            if (UniqueFd fd = connect_once(addresses[i], now + share))
                return Channel(std::move(fd));
            err = errno;
            // EAGAIN: a unix listener's backlog is full, for now.
            not_yet |= err == ECONNREFUSED || err == ENOENT || err == EINTR || err == EAGAIN;
            if (std::chrono::steady_clock::now() >= deadline) break;
        }
        if (err == EAGAIN) err = ETIMEDOUT;  // a unix listener that never accepted
        if (!not_yet || std::chrono::steady_clock::now() >= deadline)
            throw Error(err, "connect " + address.to_string() +
                                 (err == ETIMEDOUT ? ": no answer within " +
                                                         std::to_string(timeout.count()) + " ms"
                                                   : ""));
        std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
            std::chrono::milliseconds(20), deadline - std::chrono::steady_clock::now()));
    }
}

BandwidthLimit::BandwidthLimit(std::uint64_t bytes_per_second, Clock::time_point start)
    : bytes_per_second_(bytes_per_second), start_(start) {
    if (bytes_per_second == 0) throw Error(EINVAL, "a bandwidth limit of 0 bytes per second");
}

BandwidthLimit::Clock::time_point BandwidthLimit::reserve(std::uint64_t bytes) {
    std::lock_guard lock(mutex_);
    reserved_ += bytes;
    return start_ +
           std::chrono::nanoseconds(static_cast<std::int64_t>(
               static_cast<double>(reserved_) * 1e9 / static_cast<double>(bytes_per_second_)));
}

void Channel::set_bandwidth_limit(std::uint64_t bytes_per_second) {
    share_bandwidth_limit(bytes_per_second ? std::make_shared<BandwidthLimit>(
                                                 bytes_per_second, BandwidthLimit::Clock::now())
                                           : nullptr);
}

void Channel::share_bandwidth_limit(std::shared_ptr<BandwidthLimit> limit) {
    std::lock_guard lock(write_mutex_);
    limit_ = std::move(limit);
}

void Channel::throttle_locked(std::size_t bytes) {
    if (limit_) std::this_thread::sleep_until(limit_->reserve(bytes));
}

void Channel::send_locked(std::span<const std::byte> bytes) {
    throttle_locked(bytes.size());
    std::size_t done = 0;
    while (done < bytes.size()) {
        const ssize_t n = ::send(fd_.get(), bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw_errno("send on the migration connection");
        }
        done += static_cast<std::size_t>(n);
        bytes_written_ += static_cast<std::uint64_t>(n);
    }
}

void Channel::flush_locked() {
    // Dropped on error, like the bytes of a broken connection.
    struct Clear {
        Channel& c;
        ~Clear() {
            c.pending_.clear();
            c.pending_bytes_ = 0;
            c.write_used_ = 0;
        }
    } clear{*this};
    if (pending_.empty()) return;
    throttle_locked(pending_bytes_);
    std::size_t first = 0;
    while (first < pending_.size()) {
        msghdr m{};
        m.msg_iov = &pending_[first];
        m.msg_iovlen = std::min<std::size_t>(pending_.size() - first, IOV_MAX);
        const ssize_t n = ::sendmsg(fd_.get(), &m, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw_errno("send on the migration connection");
        }
        bytes_written_ += static_cast<std::uint64_t>(n);
        // Past what went: whole pieces, then part of one.
        for (auto left = static_cast<std::size_t>(n); left > 0;) {
            iovec& v = pending_[first];
            const std::size_t take = std::min(left, v.iov_len);
            v.iov_base = static_cast<std::byte*>(v.iov_base) + take;
            v.iov_len -= take;
            left -= take;
            if (v.iov_len == 0) ++first;
        }
    }
}

void Channel::queue_locked(const std::byte* data, std::size_t bytes) {
    if (bytes == 0) return;  // sendmsg() of only empty pieces sends 0 bytes: no progress
    auto* at = const_cast<std::byte*>(data);  // sendmsg() only reads it
    if (!pending_.empty() &&
        static_cast<std::byte*>(pending_.back().iov_base) + pending_.back().iov_len == at)
        pending_.back().iov_len += bytes;  // the buffer's next bytes
    else
        pending_.push_back(iovec{at, bytes});
    pending_bytes_ += bytes;
}

void Channel::append_locked(std::span<const std::byte> bytes) {
    if (bytes.size() >= kBufferBytes) {
        // Larger than the buffer: sent from where it is, after what is buffered.
        flush_locked();
        send_locked(bytes);
        return;
    }
    // An empty record (Cancel) has no data pointer: memcpy must not see it.
    if (bytes.empty()) return;
    if (write_used_ + bytes.size() > kBufferBytes) flush_locked();
    std::byte* to = write_buffer_.get() + write_used_;
    std::memcpy(to, bytes.data(), bytes.size());
    write_used_ += bytes.size();
    queue_locked(to, bytes.size());
    if (pending_bytes_ >= kBufferBytes) flush_locked();
}

void Channel::write(std::span<const std::byte> bytes) {
    std::lock_guard lock(write_mutex_);
    append_locked(bytes);
}

void Channel::write_referenced(std::span<const std::byte> head, std::span<const std::byte> body) {
    std::lock_guard lock(write_mutex_);
    if (head.size() >= kBufferBytes)
        throw Error(EINVAL, "a record head of " + std::to_string(head.size()) + " bytes");
    if (write_used_ + head.size() > kBufferBytes) flush_locked();
    std::byte* to = write_buffer_.get() + write_used_;
    if (!head.empty()) std::memcpy(to, head.data(), head.size());
    write_used_ += head.size();
    queue_locked(to, head.size());
    if (!body.empty()) queue_locked(body.data(), body.size());
    // A full buffer's worth, or as many pieces as one sendmsg() takes.
    if (pending_bytes_ >= kBufferBytes || pending_.size() + 2 > IOV_MAX) flush_locked();
}

void Channel::flush() {
    std::lock_guard lock(write_mutex_);
    flush_locked();
}

void Channel::write_now(std::span<const std::byte> bytes) {
    std::lock_guard lock(write_mutex_);
    append_locked(bytes);
    flush_locked();
}

void Channel::receive_locked(std::size_t wanted, std::size_t missing, std::size_t record) {
    std::size_t got = 0;
    while (got < wanted) {
        ssize_t n;
        do {
            n = ::recv(fd_.get(), read_buffer_.data() + read_end_, read_buffer_.size() - read_end_,
                       0);
        } while (n < 0 && errno == EINTR);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            throw Error(ETIMEDOUT,
                        "the migration connection sent nothing within its receive "
                        "timeout (" +
                            std::to_string(missing - got) + " of " + std::to_string(record) +
                            " bytes of a record missing)");
        if (n < 0) throw_errno("recv on the migration connection");
        if (n == 0)
            throw Error(ECONNRESET,
                        "the migration connection closed in the middle of a "
                        "record (" +
                            std::to_string(missing - got) + " of " + std::to_string(record) +
                            " bytes missing)");
        read_end_ += static_cast<std::size_t>(n);
        got += static_cast<std::size_t>(n);
        bytes_read_ += static_cast<std::uint64_t>(n);
    }
}

void Channel::read(std::span<std::byte> out) {
    std::lock_guard lock(read_mutex_);
    std::size_t done = 0;
    while (done < out.size()) {
        if (read_begin_ == read_end_) {
            read_begin_ = read_end_ = 0;
            receive_locked(1, out.size() - done, out.size());
        }
        const std::size_t take = std::min(out.size() - done, read_end_ - read_begin_);
        std::memcpy(out.data() + done, read_buffer_.data() + read_begin_, take);
        read_begin_ += take;
        done += take;
    }
}

std::span<const std::byte> Channel::read_in_place(std::size_t n) {
    std::lock_guard lock(read_mutex_);
    if (n > read_buffer_.size())
        throw Error(EINVAL, "a read of " + std::to_string(n) + " bytes in place, in a buffer of " +
                                std::to_string(read_buffer_.size()));
    if (read_begin_ == read_end_) read_begin_ = read_end_ = 0;  // room for a full recv()
    const std::size_t have = read_end_ - read_begin_;
    if (have < n) {
        // The rest of a record at the buffer's end moves to its start: rare
        // (once a buffer), and it keeps the record in one piece.
        if (read_buffer_.size() - read_begin_ < n) {
            std::memmove(read_buffer_.data(), read_buffer_.data() + read_begin_, have);
            read_begin_ = 0;
            read_end_ = have;
        }
        receive_locked(n - have, n - have, n);
    }
    const std::span<const std::byte> out(read_buffer_.data() + read_begin_, n);
    read_begin_ += n;
    return out;
}

void Channel::set_receive_timeout(std::chrono::milliseconds timeout) {
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(timeout).count();
    const timeval tv{static_cast<time_t>(us / 1000000), static_cast<suseconds_t>(us % 1000000)};
    if (::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)))
        throw_errno("setsockopt(SO_RCVTIMEO)");
}

bool Channel::readable_within(std::chrono::milliseconds timeout) {
    std::lock_guard lock(read_mutex_);
    if (read_begin_ != read_end_) return true;
    pollfd p{fd_.get(), POLLIN, 0};
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        const int n = ::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(left.count(), 0)));
        if (n >= 0) return n > 0;
        if (errno != EINTR) throw_errno("poll on the migration connection");
    }
}

void Channel::shutdown() noexcept {
    ::shutdown(fd_.get(), SHUT_RDWR);
}

std::uint64_t Channel::bytes_written() const noexcept {
    std::lock_guard lock(write_mutex_);
    return bytes_written_;
}

}  // namespace dirtyring
