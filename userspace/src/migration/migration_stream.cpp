// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/migration/migration_stream.hpp"

#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "dirtyring/base/error.hpp"

namespace dirtyring {
namespace {

constexpr char kMagic[8] = {'D', 'R', 'M', 'I', 'G', 'R', 'T', '\0'};
constexpr std::uint32_t kMaxVcpuState = 64 << 10;
constexpr std::uint32_t kMaxMessage = 4096;

struct RecordHeader {
    std::uint32_t type;
    std::uint32_t length;
};

// Appends trivially copyable values to a payload.
class Payload {
public:
    template <typename T>
    Payload& put(const T& value) {
        const auto* p = reinterpret_cast<const std::byte*>(&value);
        bytes_.insert(bytes_.end(), p, p + sizeof(T));
        return *this;
    }
    Payload& put(std::span<const std::byte> bytes) {
        bytes_.insert(bytes_.end(), bytes.begin(), bytes.end());
        return *this;
    }
    std::span<const std::byte> bytes() const { return bytes_; }

private:
    std::vector<std::byte> bytes_;
};

template <typename T>
T take(const std::byte*& p) {
    T value;
    std::memcpy(&value, p, sizeof(T));
    p += sizeof(T);
    return value;
}

[[noreturn]] void malformed(const std::string& what) {
    throw Error(EPROTO, "malformed migration stream: " + what);
}

const char* type_name(RecordType t) {
    switch (t) {
        case RecordType::Page:
            return "Page";
        case RecordType::ZeroPage:
            return "ZeroPage";
        case RecordType::RoundEnd:
            return "RoundEnd";
        case RecordType::VcpuState:
            return "VcpuState";
        case RecordType::Postcopy:
            return "Postcopy";
        case RecordType::End:
            return "End";
        case RecordType::Cancel:
            return "Cancel";
        case RecordType::Request:
            return "Request";
        case RecordType::Done:
            return "Done";
        case RecordType::Failed:
            return "Failed";
        case RecordType::Resume:
            return "Resume";
    }
    return "unknown";
}

}  // namespace

namespace detail {
std::uint64_t page_hash_avx2(const std::byte* page, std::size_t size) noexcept;
}

std::uint64_t page_hash(const std::byte* page) noexcept {
    // About 3x faster than SSE2 XXH3 on a page in cache: this is the stream's
    // main cost after the copies.
    static const bool avx2 = __builtin_cpu_supports("avx2");
    return avx2 ? detail::page_hash_avx2(page, kStreamPageSize)
                : XXH3_64bits(page, kStreamPageSize);
}

std::uint64_t zero_page_hash() noexcept {
    static const std::uint64_t hash = [] {
        const std::array<std::byte, kStreamPageSize> zeros{};
        return page_hash(zeros.data());
    }();
    return hash;
}

bool is_zero_page(const std::byte* page) noexcept {
    // Word-wise: a zero page is common (untouched guest memory).
    for (std::size_t i = 0; i < kStreamPageSize; i += sizeof(std::uint64_t)) {
        std::uint64_t w;
        std::memcpy(&w, page + i, sizeof(w));
        if (w) return false;
    }
    return true;
}

MemoryDigest::MemoryDigest(std::uint64_t pages) : hashes_(pages, zero_page_hash()) {}

MemoryDigest MemoryDigest::of(const std::byte* memory, std::uint64_t pages) {
    MemoryDigest d(pages);
    for (std::uint64_t i = 0; i < pages; ++i)
        d.hashes_[i] = page_hash(memory + i * kStreamPageSize);
    return d;
}

std::uint64_t MemoryDigest::digest() const noexcept {
    return XXH3_64bits(hashes_.data(), hashes_.size() * sizeof(std::uint64_t));
}

std::uint64_t MemoryDigest::first_difference(const MemoryDigest& other) const noexcept {
    const auto n = std::min(pages(), other.pages());
    for (std::uint64_t i = 0; i < n; ++i)
        if (hashes_[i] != other.hashes_[i]) return i;
    return n == pages() && n == other.pages() ? pages() : n;
}

void StreamWriter::record(RecordType type, std::span<const std::byte> payload, bool now) {
    const RecordHeader h{static_cast<std::uint32_t>(type),
                         static_cast<std::uint32_t>(payload.size())};
    channel_.write(std::as_bytes(std::span(&h, 1)));
    if (now)
        channel_.write_now(payload);
    else
        channel_.write(payload);
}

void StreamWriter::header(std::uint64_t pages, std::uint32_t vcpus, std::uint32_t guest,
                          std::uint32_t flags, std::uint32_t session) {
    StreamHeader h{};
    std::memcpy(h.magic, kMagic, sizeof(kMagic));
    h.version = kStreamVersion;
    h.page_size = kStreamPageSize;
    h.pages = pages;
    h.vcpus = vcpus;
    h.guest = guest;
    h.flags = flags;
    h.session = session;
    channel_.write(std::as_bytes(std::span(&h, 1)));
}

std::uint64_t StreamWriter::page(std::uint64_t index, const std::byte* data) {
    struct PageHead {
        RecordHeader header;
        std::uint64_t index;
        std::uint64_t hash;
    };
    struct ZeroHead {
        RecordHeader header;
        std::uint64_t index;
    };
    static_assert(sizeof(PageHead) == 24 && sizeof(ZeroHead) == 16);
    // Sent from the guest's memory, not from a snapshot: a page the guest
    // writes between its hash and the socket's copy goes out torn, its
    // hash not matching its bytes.  It is dirty again, so this is never
    // its last copy: the destination keeps the hash of what it received
    // (StreamReader::allow_torn_pages()) and the End digest still compares
    // the last copy of every page.  One pass over the page here (the hash)
    // and the socket's copy, as a plain send() of the memory would do.
    const bool zero = is_zero_page(data);
    std::uint64_t hash;
    if (zero) {
        const ZeroHead z{{static_cast<std::uint32_t>(RecordType::ZeroPage), 8}, index};
        channel_.write(std::as_bytes(std::span(&z, 1)));
        hash = zero_page_hash();
    } else {
        hash = page_hash(data);
        const PageHead h{{static_cast<std::uint32_t>(RecordType::Page),
                          static_cast<std::uint32_t>(16 + kStreamPageSize)},
                         index,
                         hash};
        channel_.write_referenced(std::as_bytes(std::span(&h, 1)),
                                  std::span(data, kStreamPageSize));
    }
    ++(zero ? zero_pages_ : data_pages_);
    return hash;
}

void StreamWriter::round_end(std::uint32_t round, std::uint64_t pages) {
    record(RecordType::RoundEnd, Payload().put(round).put(std::uint32_t{0}).put(pages).bytes(),
           false);
}

void StreamWriter::vcpu_state(std::uint32_t vcpu, std::span<const std::byte> state) {
    if (state.size() > kMaxVcpuState) throw Error(EINVAL, "vCPU state too large to send");
    record(RecordType::VcpuState, Payload().put(vcpu).put(std::uint32_t{0}).put(state).bytes(),
           false);
}

namespace {
void put_runs(Payload& p, std::span<const PageRun> runs) {
    p.put(static_cast<std::uint64_t>(runs.size()));
    for (const PageRun& r : runs) p.put(r.first).put(r.count);
}
}  // namespace

void StreamWriter::postcopy(std::span<const PageRun> discard) {
    Payload p;
    put_runs(p, discard);
    record(RecordType::Postcopy, p.bytes(), true);
}

void StreamWriter::resume(std::span<const PageRun> missing) {
    Payload p;
    put_runs(p, missing);
    record(RecordType::Resume, p.bytes(), true);
}

void StreamWriter::end(std::uint64_t digest) {
    record(RecordType::End, Payload().put(digest).bytes(), true);
}

void StreamWriter::cancel() {
    record(RecordType::Cancel, {}, true);
}

void StreamWriter::request(std::uint64_t index) {
    record(RecordType::Request, Payload().put(index).bytes(), true);
}

void StreamWriter::done(std::uint64_t digest) {
    record(RecordType::Done, Payload().put(digest).bytes(), true);
}

void StreamWriter::failed(const std::string& message) {
    const auto n = std::min<std::size_t>(message.size(), kMaxMessage);
    record(RecordType::Failed, std::as_bytes(std::span(message.data(), n)), true);
}

StreamHeader StreamReader::header(std::uint64_t max_pages, std::uint32_t max_vcpus) {
    StreamHeader h{};
    channel_.read(std::as_writable_bytes(std::span(&h, 1)));
    if (std::memcmp(h.magic, kMagic, sizeof(kMagic)) != 0)
        throw Error(EPROTO, "not a dirtyring migration stream (bad magic)");
    if (h.version != kStreamVersion)
        throw Error(EPROTO, "migration stream version " + std::to_string(h.version) +
                                ", this destination understands only version " +
                                std::to_string(kStreamVersion));
    if (h.page_size != kStreamPageSize)
        throw Error(EPROTO, "migration stream of " + std::to_string(h.page_size) +
                                "-byte pages, expected " + std::to_string(kStreamPageSize));
    if (h.flags & ~kStreamKnownFlags)
        throw Error(EPROTO, "migration stream with unknown flags " + std::to_string(h.flags));
    if (h.session == 0) throw Error(EPROTO, "migration stream without a session");
    if (h.pages == 0 || h.pages > max_pages)
        throw Error(EPROTO, "migration stream of " + std::to_string(h.pages) +
                                " pages (this destination takes 1.." + std::to_string(max_pages) +
                                ")");
    if (h.vcpus == 0 || h.vcpus > max_vcpus)
        throw Error(EPROTO, "migration stream with " + std::to_string(h.vcpus) +
                                " vCPUs (this destination takes 1.." + std::to_string(max_vcpus) +
                                ")");
    pages_ = h.pages;
    return h;
}

const Record& StreamReader::next() {
    RecordHeader h{};
    channel_.read(std::as_writable_bytes(std::span(&h, 1)));
    const auto type = static_cast<RecordType>(h.type);
    const auto expect_length = [&](std::uint64_t n) {
        if (h.length != n)
            malformed(std::string(type_name(type)) + " record of " + std::to_string(h.length) +
                      " bytes, expected " + std::to_string(n));
    };
    const auto check_index = [&](std::uint64_t index) {
        if (index >= pages_)
            malformed(std::string(type_name(type)) + " of page " + std::to_string(index) +
                      " beyond the " + std::to_string(pages_) + " pages of the guest");
    };
    // Field by field, not `record_ = Record{}`: the containers keep their
    // storage, and a page record (most of the stream) costs no allocator call.
    record_.type = type;
    record_.index = record_.hash = record_.value = record_.count = 0;
    record_.data = nullptr;
    record_.state.clear();
    record_.runs.clear();
    record_.message.clear();
    std::array<std::byte, 16> small{};
    const std::byte* p = small.data();
    switch (type) {
        case RecordType::Page: {
            expect_length(16 + kStreamPageSize);
            // In place, and taken out before the page's read moves the buffer.
            const std::byte* head = channel_.read_in_place(16).data();
            record_.index = take<std::uint64_t>(head);
            record_.hash = take<std::uint64_t>(head);
            check_index(record_.index);
            // Hashed and handed out where it lies in the read buffer: no copy.
            const auto page = channel_.read_in_place(kStreamPageSize);
            record_.torn = false;
            if (const std::uint64_t hash = page_hash(page.data()); hash != record_.hash) {
                if (!torn_allowed_)
                    malformed("page " + std::to_string(record_.index) +
                              " does not match its checksum (corrupted in transit)");
                record_.hash = hash;  // what arrived is what the digest counts
                record_.torn = true;
            }
            record_.data = page.data();
            break;
        }
        case RecordType::ZeroPage:
        case RecordType::Request:
            expect_length(8);
            channel_.read(std::span(small).first(8));
            record_.index = take<std::uint64_t>(p);
            check_index(record_.index);
            if (type == RecordType::ZeroPage) record_.hash = zero_page_hash();
            break;
        case RecordType::RoundEnd:
            expect_length(16);
            channel_.read(small);
            record_.value = take<std::uint32_t>(p);
            take<std::uint32_t>(p);
            record_.count = take<std::uint64_t>(p);
            break;
        case RecordType::VcpuState: {
            if (h.length < 8 || h.length > 8 + kMaxVcpuState)
                malformed("VcpuState record of " + std::to_string(h.length) + " bytes");
            channel_.read(std::span(small).first(8));
            record_.index = take<std::uint32_t>(p);
            record_.state.resize(h.length - 8);
            channel_.read(record_.state);
            break;
        }
        case RecordType::Postcopy:
        case RecordType::Resume: {
            if (h.length < 8)
                malformed(std::string(type_name(type)) + " record of " + std::to_string(h.length) +
                          " bytes");
            channel_.read(std::span(small).first(8));
            const auto n = take<std::uint64_t>(p);
            if (n > pages_ || h.length != 8 + 16 * n)
                malformed(std::string(type_name(type)) + " record of " + std::to_string(n) +
                          " runs in " + std::to_string(h.length) + " bytes");
            record_.runs.resize(n);
            channel_.read(std::as_writable_bytes(std::span(record_.runs)));
            for (const PageRun& r : record_.runs)
                if (r.first >= pages_ || r.count > pages_ - r.first)
                    malformed(std::string(type_name(type)) + " names pages beyond the guest");
            break;
        }
        case RecordType::End:
        case RecordType::Done:
            expect_length(8);
            channel_.read(std::span(small).first(8));
            record_.value = take<std::uint64_t>(p);
            break;
        case RecordType::Cancel:
            expect_length(0);
            break;
        case RecordType::Failed: {
            if (h.length > kMaxMessage) malformed("Failed record too long");
            std::vector<std::byte> text(h.length);
            channel_.read(text);
            record_.message.assign(reinterpret_cast<const char*>(text.data()), text.size());
            break;
        }
        default:
            malformed("unknown record type " + std::to_string(h.type));
    }
    return record_;
}

}  // namespace dirtyring
