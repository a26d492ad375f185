// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/migration/migration_destination.hpp"

#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <optional>
#include <thread>
#include <vector>

#include "dirtyring/base/error.hpp"
#include "dirtyring/migration/migration_stream.hpp"
#include "dirtyring/postcopy/page_source.hpp"
#include "dirtyring/postcopy/postcopy.hpp"

namespace dirtyring {
namespace {
using Clock = std::chrono::steady_clock;

// Postcopy's page requests go back to the source on the return path.
class ReturnPathSource : public PageSource {
public:
    ReturnPathSource(Channel& channel, const std::byte* memory, const char* name)
        : writer_(channel), memory_(memory), name_(name) {}
    void request(const PageRequest& r) override {
        try {
            writer_.request(
                static_cast<std::uint64_t>(static_cast<const std::byte*>(r.host) - memory_) /
                kStreamPageSize);
        } catch (const Error& e) {
            throw Error(e.errnum(), std::string("page request on the ") + name_ + ": " + e.what());
        }
    }

private:
    StreamWriter writer_;
    const std::byte* memory_;
    const char* name_;
};
}  // namespace

MigrationDestination::MigrationDestination(Channel& channel, GuestFactory factory, Limits limits)
    : channel_(channel), factory_(std::move(factory)), limits_(limits) {}

MigrationDestination::~MigrationDestination() {
    // Faulting vCPU threads are released before the guest joins them.
    if (postcopy_) postcopy_->stop();
    guest_.reset();
}

DestinationReport MigrationDestination::run() {
    try {
        return receive();
    } catch (const Error& e) {
        guest_.reset();
        memory_.reset();  // the copy is discarded
        if (e.errnum() != ECANCELED && e.errnum() != ECONNRESET) {
            try {
                StreamWriter(channel_).failed(e.what());
            } catch (const Error&) {
                // The source is gone: nobody to tell.
            }
        }
        throw;
    }
}

DestinationReport MigrationDestination::receive() {
    const auto start = Clock::now();
    DestinationReport report;
    StreamReader reader(channel_);
    StreamWriter writer(channel_);
    const StreamHeader header = reader.header(limits_.max_pages, limits_.max_vcpus);
    const std::uint64_t pages = header.pages;
    if (header.flags & kStreamPreemptChannel)
        throw Error(EPROTO, "the migration connection is a preempt channel, not the main stream");
    if (!(header.flags & kStreamPreempt) != !preempt_)
        throw Error(EPROTO, preempt_
                                ? "this destination has a preempt channel; the source has none"
                                : "the source uses a preempt channel; this destination has none");
    if (preempt_) {
        const StreamHeader p = StreamReader(*preempt_).header(limits_.max_pages, limits_.max_vcpus);
        if (p.flags != (kStreamPreempt | kStreamPreemptChannel) || p.pages != header.pages ||
            p.vcpus != header.vcpus || p.guest != header.guest)
            throw Error(EPROTO, "the second connection is not this migration's preempt channel");
    }
    memory_ = Mapping::anonymous(pages * kStreamPageSize, "destination guest memory");
    auto* memory = memory_.as<std::byte>();
    MemoryDigest received(pages);
    std::vector<std::vector<std::byte>> vcpu_states(header.vcpus);
    requests_ = std::make_unique<ReturnPathSource>(preempt_ ? *preempt_ : channel_, memory,
                                                   preempt_ ? "preempt channel" : "return path");
    std::optional<Postcopy>& postcopy = postcopy_;
    // On any error, release faulting vCPUs before the guest is torn down.
    struct StopPostcopy {
        std::optional<Postcopy>& p;
        ~StopPostcopy() {
            if (p) p->stop();
        }
    } stop_postcopy{postcopy};
    // The preempt channel's reader: requested pages, then the source's End.
    std::jthread preempt_reader;
    std::exception_ptr preempt_failure;       // the reader's, read after join
    std::atomic<bool> preempt_failed{false};  // it failed on its own, first
    std::optional<std::uint64_t> preempt_end;
    std::uint64_t preempt_pages = 0;
    const auto read_preempt = [&] {
        try {
            StreamReader pr(*preempt_, pages);
            for (;;) {
                const Record& r = pr.next();
                if (r.type == RecordType::End) {
                    preempt_end = r.value;
                    return;
                }
                if (r.type == RecordType::Page)
                    postcopy->place_page(memory + r.index * kStreamPageSize,
                                         std::span(r.data, kStreamPageSize));
                else if (r.type == RecordType::ZeroPage)
                    postcopy->place_zero_page(memory + r.index * kStreamPageSize);
                else
                    throw Error(EPROTO, "malformed preempt channel: a record other than a page");
                received.set(r.index, r.hash);
                ++preempt_pages;
            }
        } catch (const Error& e) {
            preempt_failure = std::make_exception_ptr(
                Error(e.errnum(), std::string("preempt channel: ") + e.what()));
            preempt_failed.store(true, std::memory_order_release);
            // Nobody reads this channel any more: the source would block
            // on its answers, and this side wait for pages forever.  Both
            // connections go, and the main loop reports this failure.
            preempt_->shutdown();
            channel_.shutdown();
        }
    };
    // On any error the reader is woken and joined, before postcopy stops.
    struct JoinPreempt {
        Channel* channel;
        std::jthread& reader;
        ~JoinPreempt() {
            if (!reader.joinable()) return;
            channel->shutdown();
            reader.join();
        }
    } join_preempt{preempt_, preempt_reader};
    const auto start_guest = [&] {
        for (unsigned i = 0; i < header.vcpus; ++i)
            if (vcpu_states[i].empty())
                throw Error(EPROTO,
                            "malformed migration stream: no state for vCPU " + std::to_string(i));
        guest_ = factory_(header.guest, memory, pages, header.vcpus);
        for (unsigned i = 0; i < header.vcpus; ++i) guest_->restore_vcpu(i, vcpu_states[i]);
        if (postcopy)
            guest_->set_vcpu_thread_hook(
                [&p = *postcopy](unsigned vcpu, pid_t tid) { p.register_vcpu_thread(tid, vcpu); });
        // In precopy the source still has the guest until it reads Done.
        guest_started_ = postcopy.has_value();
        guest_->start();
    };

    // The main stream ends first when the preempt reader failed: its
    // failure is the reason then.
    const auto next = [&]() -> const Record& {
        try {
            return reader.next();
        } catch (const Error&) {
            if (preempt_reader.joinable() && preempt_failed.load(std::memory_order_acquire)) {
                preempt_reader.join();
                std::rethrow_exception(preempt_failure);
            }
            throw;
        }
    };
    for (;;) {
        const Record& r = next();
        switch (r.type) {
            case RecordType::Page:
                if (postcopy)
                    postcopy->place_page(memory + r.index * kStreamPageSize,
                                         std::span(r.data, kStreamPageSize));
                else
                    std::memcpy(memory + r.index * kStreamPageSize, r.data, kStreamPageSize);
                received.set(r.index, r.hash);
                ++report.pages_received;
                break;
            case RecordType::ZeroPage:
                if (postcopy)
                    postcopy->place_zero_page(memory + r.index * kStreamPageSize);
                else if (received.get(r.index) != zero_page_hash())
                    // Fresh anonymous memory reads as zeros: only a page that
                    // held data is cleared.  Touching the others would fault
                    // in all of memory, and a stream of zero pages (16 bytes
                    // each) would leave this side far behind the source.
                    std::memset(memory + r.index * kStreamPageSize, 0, kStreamPageSize);
                received.set(r.index, r.hash);
                ++report.pages_received;
                ++report.zero_pages;
                break;
            case RecordType::RoundEnd:
                report.rounds = static_cast<unsigned>(r.value);
                break;
            case RecordType::VcpuState:
                if (r.index >= header.vcpus)
                    throw Error(EPROTO, "malformed migration stream: state of vCPU " +
                                            std::to_string(r.index) + " of " +
                                            std::to_string(header.vcpus));
                vcpu_states[r.index] = r.state;
                break;
            case RecordType::Postcopy: {
                if (postcopy) throw Error(EPROTO, "malformed migration stream: Postcopy twice");
                // Stale copies of pages the source still has dirty go: the
                // guest faults on them and they are requested or streamed.
                for (const PageRun& run : r.runs)
                    if (::madvise(memory + run.first * kStreamPageSize, run.count * kStreamPageSize,
                                  MADV_DONTNEED))
                        throw_errno("madvise(MADV_DONTNEED) of stale pages");
                postcopy.emplace(*requests_, Postcopy::Options{.vcpus = header.vcpus});
                postcopy->add_range(memory, pages * kStreamPageSize);
                postcopy->start();
                if (preempt_) preempt_reader = std::jthread(read_preempt);
                report.mode = "postcopy";
                start_guest();
                break;
            }
            case RecordType::Cancel:
                throw Error(ECANCELED, "the source cancelled the migration");
            case RecordType::End: {
                if (preempt_reader.joinable()) {
                    // The source ends the preempt channel before this stream.
                    preempt_reader.join();
                    if (preempt_failure) std::rethrow_exception(preempt_failure);
                    if (preempt_end != r.value)
                        throw Error(EIO, "the preempt channel's digest differs from the stream's");
                    report.preempt_pages = preempt_pages;
                    report.pages_received += preempt_pages;
                }
                if (received.digest() != r.value)
                    throw Error(EIO,
                                "the pages received do not add up to the source's memory at the "
                                "stop (a page is missing or stale)");
                if (postcopy) {
                    // Every page arrived: nothing can fault any more.
                    const auto counters = postcopy->counters();
                    report.postcopy_faults = counters.faults;
                    report.postcopy_requests = counters.requests;
                    postcopy->stop();
                    report.blocktime_json = postcopy->blocktime().to_json();
                } else {
                    start_guest();
                }
                writer.done(r.value);
                report.digest = r.value;
                // Both connections: the source's bytes_sent counts both too.
                report.bytes_received =
                    channel_.bytes_read() + (preempt_ ? preempt_->bytes_read() : 0);
                report.total_time = Clock::now() - start;
                return report;
            }
            default:
                throw Error(EPROTO,
                            "malformed migration stream: a return-path record from the "
                            "source");
        }
    }
}

}  // namespace dirtyring
