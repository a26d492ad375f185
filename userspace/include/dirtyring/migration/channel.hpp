// SPDX-License-Identifier: LGPL-2.1-or-later
// A migration connection: one connected stream socket (unix or TCP), used in
// both directions, with buffered blocking reads and writes and an optional
// bandwidth limit on what is written.
//
// Thread-safety: one thread may write while another reads (the migration
// stream and its return path share the socket); writers serialize among
// themselves, and so do readers.  shutdown() may be called from any thread
// and wakes a thread blocked in either direction.
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "dirtyring/base/unique_fd.hpp"

namespace dirtyring {

// "unix:/path/to/socket" or "tcp:HOST:PORT" (HOST a numeric IPv4 or IPv6
// address, e.g. tcp:127.0.0.1:4444 or tcp:[::1]:4444, or a host name that
// getaddrinfo resolves, e.g. tcp:localhost:4444).  Throws Error(EINVAL) for
// anything else, a name that does not resolve included.
struct ChannelAddress {
    enum class Kind { Unix, Tcp };
    Kind kind;
    std::string path_or_host;
    std::uint16_t port = 0;

    static ChannelAddress parse(const std::string& text);
    std::string to_string() const;
};

class Channel;

// Bytes per second written at most, averaged from `start`, by every
// Channel that uses it: one connection's limit, or one that page channels
// share (together they stay within it, whichever of them has the pages).
// Thread-safe.
class BandwidthLimit {
public:
    using Clock = std::chrono::steady_clock;
    BandwidthLimit(std::uint64_t bytes_per_second, Clock::time_point start);
    // When `bytes` more may leave, counting every reservation before them.
    Clock::time_point reserve(std::uint64_t bytes);

private:
    std::mutex mutex_;
    const std::uint64_t bytes_per_second_;
    const Clock::time_point start_;
    std::uint64_t reserved_ = 0;  // under mutex_
};

// A listening socket; accept() returns Channels.
class Listener {
public:
    // Binds and listens; EADDRINUSE (an address in use) is reported as such.
    // A unix socket file that nobody listens on any more (its listener was
    // killed) is replaced; any other file at the path is left alone.
    explicit Listener(const ChannelAddress& address);
    ~Listener();
    Listener(Listener&&) = default;
    Listener& operator=(Listener&&) = default;

    // Waits at most `timeout` for one connection; ETIMEDOUT otherwise.
    Channel accept(std::chrono::milliseconds timeout);
    // Closes this copy of the socket and leaves its file to the copy in
    // another process (a fork), which still listens on it.
    void disown() noexcept;
    int fd() const noexcept { return fd_.get(); }

private:
    UniqueFd fd_;
    std::string unlink_path_;  // the unix socket file this listener created
};

class Channel {
public:
    // What a write is buffered up to, and what one recv() reads at most.
    // 1 MiB: a unix stream moved 0.80-0.96x a raw copy's bytes with 256 KiB
    // buffers and 0.84-1.13x with these, paired in one bench run.
    static constexpr std::size_t kBufferBytes = 1 << 20;

    explicit Channel(UniqueFd fd);
    // Connects, retrying while the peer is not listening yet, for at most
    // `timeout`.
    static Channel connect(const ChannelAddress& address, std::chrono::milliseconds timeout);

    Channel(Channel&& other) noexcept;
    Channel& operator=(Channel&&) = delete;
    Channel(const Channel&) = delete;
    Channel& operator=(const Channel&) = delete;
    ~Channel() = default;

    // Bytes per second written at most, averaged over the connection's life
    // from the call on; 0: unlimited.
    void set_bandwidth_limit(std::uint64_t bytes_per_second);
    // Writes within `limit`, with whatever else uses it; nullptr: none.
    void share_bandwidth_limit(std::shared_ptr<BandwidthLimit> limit);

    // Buffered; blocks while the socket is full.  Throws Error: EPIPE or
    // ECONNRESET when the peer is gone.
    void write(std::span<const std::byte> bytes);
    void flush();
    // write() then flush(), in one lock: for records that must not wait.
    void write_now(std::span<const std::byte> bytes);
    // `head` copied, then `body` sent from where it lies, with no copy:
    // `body` must stay mapped until the next flush (or the buffer fills),
    // and what it holds when the socket takes it is what goes (a running
    // guest's page may change meanwhile).
    void write_referenced(std::span<const std::byte> head, std::span<const std::byte> body);

    // Fills `out` completely; throws Error(ECONNRESET, "... closed ...") at
    // end of stream, naming how many bytes were missing.
    void read(std::span<std::byte> out);
    // read() of `n` bytes (at most kBufferBytes), returned where they lie in
    // the read buffer instead of copied: valid until the next read.
    std::span<const std::byte> read_in_place(std::size_t n);

    // How long one receive may wait for bytes before a read throws
    // Error(ETIMEDOUT); zero: for ever (the default).  For a connection not
    // trusted yet, whose peer may send part of a record and stop.
    void set_receive_timeout(std::chrono::milliseconds timeout);

    // Whether a read would find bytes (or the connection's end) within
    // `timeout`: for a peer that connected and may never speak.
    bool readable_within(std::chrono::milliseconds timeout);

    // Ends both directions: a blocked reader or writer returns with an error.
    void shutdown() noexcept;

    std::uint64_t bytes_written() const noexcept;
    std::uint64_t bytes_read() const noexcept { return bytes_read_; }

private:
    void flush_locked();
    void append_locked(std::span<const std::byte> bytes);
    void send_locked(std::span<const std::byte> bytes);
    void throttle_locked(std::size_t bytes);
    void queue_locked(const std::byte* data, std::size_t bytes);
    // Receives at least `wanted` more bytes after read_end_; `missing` and
    // `record` name the shortfall if the connection ends first.
    void receive_locked(std::size_t wanted, std::size_t missing, std::size_t record);

    UniqueFd fd_;
    mutable std::mutex write_mutex_;
    // What a flush sends, in order: pieces of the write buffer (copied
    // bytes) and referenced bodies.  Not a vector: nothing needs zeroing.
    std::unique_ptr<std::byte[]> write_buffer_;
    std::size_t write_used_ = 0;
    std::vector<iovec> pending_;
    std::size_t pending_bytes_ = 0;
    std::uint64_t bytes_written_ = 0;
    std::shared_ptr<BandwidthLimit> limit_;

    std::mutex read_mutex_;
    std::vector<std::byte> read_buffer_;
    std::size_t read_begin_ = 0;
    std::size_t read_end_ = 0;
    std::uint64_t bytes_read_ = 0;
};

}  // namespace dirtyring
