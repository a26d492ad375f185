// SPDX-License-Identifier: LGPL-2.1-or-later
// The migration stream of dirtyring-migrate: what a source sends and what a
// destination answers on the return path, over one Channel.
//
// Layout (little-endian, as the x86 hosts it runs on):
//   header   StreamHeader, once, from the source
//   records  RecordHeader {type, length} then `length` bytes of payload
// A migration with a preempt channel (kStreamPreempt in the main header)
// has a second connection of its own, which starts with a header flagged
// kStreamPreemptChannel: on it the destination's Requests go to the source
// and the requested pages come back, then End, never behind the main
// stream's background pages or its bandwidth limit.
// A migration with page channels (their number in the main header's
// flags, page_channels_of()) has that many more connections, each flagged
// kStreamPageChannel: the precopy's pages go on them, in parallel, each
// page always on the same one (so its copies arrive in order), then End on
// each before the main stream's Postcopy or End; the main stream keeps the
// rest (RoundEnd, VcpuState, End, and every page from postcopy on).
// A postcopy whose connections broke resumes on new ones (recovery.hpp):
// each starts with a header flagged kStreamResume and carrying the session
// of the first, and the destination answers on the new main connection with
// Resume (the pages it still lacks, in runs), then its outstanding Requests
// again; the source sends those pages once more, the rest behind them, and
// End.  A source aborted meanwhile connects once more with kStreamAbort in
// that header, so that the paused destination ends at once.
// Source -> destination: Page (index, hash, data), ZeroPage (index),
// RoundEnd, VcpuState, Postcopy (runs of pages to discard, then postcopy
// begins), End (digest of all memory at the stop), Cancel.
// Destination -> source: Request (a page a faulting vCPU waits for), Done
// (the destination verified the memory and runs the guest), Failed
// (a message), Resume (runs of pages still missing, after a recovery).
//
// Every page carries its XXH3-64 hash, which the reader verifies (in
// precopy a page may arrive torn: see StreamReader::allow_torn_pages()); the
// End record carries the digest of the whole memory (MemoryDigest).  A
// reader refuses, with Error(EPROTO) naming what it found, a stream of
// another version, an unknown record, a length that does not match its
// type, a page out of range or a hash that does not match.
//
// Thread-safety: a StreamWriter or StreamReader belongs to one thread at a
// time; a source may write the stream while another thread reads the return
// path of the same Channel.
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dirtyring/migration/channel.hpp"

namespace dirtyring {

inline constexpr std::uint32_t kStreamVersion = 2;
inline constexpr std::uint32_t kStreamPageSize = 4096;

struct StreamHeader {
    char magic[8];  // "DRMIGRT\0"
    std::uint32_t version;
    std::uint32_t page_size;
    std::uint64_t pages;
    std::uint32_t vcpus;
    std::uint32_t guest;  // MigratableGuest::kind(): what the destination builds
    std::uint32_t flags;  // kStreamPreempt, kStreamPreemptChannel, kStreamResume, ...
    // Chosen at random by the source, never 0: what tells a resuming
    // connection of this migration from one of another.
    std::uint32_t session;
};

// StreamHeader::flags.
inline constexpr std::uint32_t kStreamPreempt = 1;         // a preempt channel serves postcopy
inline constexpr std::uint32_t kStreamPreemptChannel = 2;  // this connection is that channel
inline constexpr std::uint32_t kStreamResume = 4;          // resumes the session's postcopy
inline constexpr std::uint32_t kStreamAbort = 8;  // with kStreamResume: the source aborted it
inline constexpr std::uint32_t kStreamPageChannel = 16;  // this connection is a page channel
// Bits 8-15, in the main header and each page channel's: how many page
// channels carry the precopy's pages (QEMU's multifd channels); 0: the
// main stream carries them.
inline constexpr unsigned kStreamPageChannelsShift = 8;
inline constexpr std::uint32_t kStreamPageChannelsMask = 0xffU << kStreamPageChannelsShift;
inline constexpr unsigned kMaxPageChannels = 0xff;
inline constexpr std::uint32_t kStreamKnownFlags = kStreamPreempt | kStreamPreemptChannel |
                                                   kStreamResume | kStreamAbort |
                                                   kStreamPageChannel | kStreamPageChannelsMask;

constexpr std::uint32_t page_channels_flags(std::size_t channels) noexcept {
    return static_cast<std::uint32_t>(channels) << kStreamPageChannelsShift;
}
constexpr unsigned page_channels_of(std::uint32_t flags) noexcept {
    return (flags & kStreamPageChannelsMask) >> kStreamPageChannelsShift;
}

enum class RecordType : std::uint32_t {
    Page = 1,
    ZeroPage = 2,
    RoundEnd = 3,
    VcpuState = 4,
    Postcopy = 5,
    End = 6,
    Cancel = 7,
    Request = 16,
    Done = 17,
    Failed = 18,
    Resume = 19,
};

// A run of pages [first, first + count).
struct PageRun {
    std::uint64_t first;
    std::uint64_t count;
};

// The hash the stream carries for one page, and for a page of zeros.
std::uint64_t page_hash(const std::byte* page) noexcept;
std::uint64_t zero_page_hash() noexcept;
bool is_zero_page(const std::byte* page) noexcept;

// Per-page hashes of a guest memory, and their digest: what the source sends
// at the end and the destination compares with what it received.
class MemoryDigest {
public:
    explicit MemoryDigest(std::uint64_t pages);
    // Hashes every page of `memory` (pages() pages).
    static MemoryDigest of(const std::byte* memory, std::uint64_t pages);

    // set() and get() may race (a page sent or received on two channels
    // at once carries the same hash either way); digest() and
    // first_difference() need every set() to have happened before them.
    void set(std::uint64_t page, std::uint64_t hash) {
        std::atomic_ref(hashes_.at(page)).store(hash, std::memory_order_relaxed);
    }
    std::uint64_t get(std::uint64_t page) const {
        return std::atomic_ref(hashes_.at(page)).load(std::memory_order_relaxed);
    }
    std::uint64_t pages() const noexcept { return hashes_.size(); }
    std::uint64_t digest() const noexcept;
    // The first page whose hash differs from `other`'s, or pages().
    std::uint64_t first_difference(const MemoryDigest& other) const noexcept;

private:
    // Mutable: get() loads through std::atomic_ref, which C++20 has for
    // non-const objects only.  Plain words, so digest() hashes them at once.
    mutable std::vector<std::uint64_t> hashes_;
};

class StreamWriter {
public:
    explicit StreamWriter(Channel& channel) : channel_(channel) {}

    void header(std::uint64_t pages, std::uint32_t vcpus, std::uint32_t guest,
                std::uint32_t flags = 0, std::uint32_t session = 1);
    // Sends the page as a ZeroPage when it is all zeros; returns the hash
    // the record carries.  `data` must stay mapped until the next flush.
    std::uint64_t page(std::uint64_t index, const std::byte* data);
    void round_end(std::uint32_t round, std::uint64_t pages);
    void vcpu_state(std::uint32_t vcpu, std::span<const std::byte> state);
    void postcopy(std::span<const PageRun> discard);
    void end(std::uint64_t digest);
    void cancel();
    // The return path.
    void request(std::uint64_t index);
    void done(std::uint64_t digest);
    void failed(const std::string& message);
    // After a recovery: the pages the destination still lacks.
    void resume(std::span<const PageRun> missing);

    void flush() { channel_.flush(); }
    std::uint64_t zero_pages() const noexcept { return zero_pages_; }
    std::uint64_t data_pages() const noexcept { return data_pages_; }

private:
    void record(RecordType type, std::span<const std::byte> payload, bool now);

    Channel& channel_;
    std::uint64_t zero_pages_ = 0;
    std::uint64_t data_pages_ = 0;
};

// One record as read, valid until the next read.
struct Record {
    RecordType type;
    std::uint64_t index = 0;  // Page, ZeroPage, Request; vCPU for VcpuState
    std::uint64_t hash = 0;   // Page, ZeroPage: of the bytes that arrived
    bool torn = false;        // Page: they did not match the sender's hash
    // Page: kStreamPageSize bytes, in the Channel's read buffer (not copied):
    // valid until the next read from that Channel.
    const std::byte* data = nullptr;
    std::uint64_t value = 0;       // RoundEnd: round; End, Done: digest
    std::uint64_t count = 0;       // RoundEnd: pages
    std::vector<std::byte> state;  // VcpuState
    std::vector<PageRun> runs;     // Postcopy, Resume
    std::string message;           // Failed
};

class StreamReader {
public:
    // pages: the memory size the reader accepts page indices for (set from
    // the header by a destination).
    explicit StreamReader(Channel& channel, std::uint64_t pages = 0)
        : channel_(channel), pages_(pages) {}

    // Reads and checks the source's header (flags outside kStreamKnownFlags
    // and session 0 refused; what the known flags mean is the caller's to
    // check); sets pages().
    StreamHeader header(std::uint64_t max_pages, std::uint32_t max_vcpus);
    // Reads one record and checks it; Error(EPROTO) on anything malformed,
    // Error(ECONNRESET) when the connection ends.
    const Record& next();

    std::uint64_t pages() const noexcept { return pages_; }

    // While a guest runs on the source (precopy), a page it writes as it
    // is sent arrives torn: its bytes do not match its hash.  Allowed, the
    // record then carries the hash of what arrived, and the End digest
    // decides; not allowed (the default, and from postcopy on, where every
    // page is final), such a page is a corrupted stream.
    void allow_torn_pages(bool allowed) noexcept { torn_allowed_ = allowed; }

private:
    Channel& channel_;
    std::uint64_t pages_;
    bool torn_allowed_ = false;
    Record record_;
};

}  // namespace dirtyring
