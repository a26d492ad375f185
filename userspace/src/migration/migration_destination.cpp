// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/migration/migration_destination.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
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
// A resuming source sends its header as soon as it has connected.
constexpr std::chrono::milliseconds kResumeHeaderTimeout{2000};

// Postcopy's page requests go back to the source on the return path (or
// the preempt channel).  With recovery, a request that meets a broken
// connection is not an error: its page stays requested in the Postcopy,
// which asks for it again once the migration resumes.
class ReturnPathSource : public PageSource {
public:
    ReturnPathSource(Channel& channel, const std::byte* memory, const char* name, bool recovering)
        : channel_(&channel), memory_(memory), name_(name), recovering_(recovering) {}
    void request(const PageRequest& r) override {
        ask(static_cast<std::uint64_t>(static_cast<const std::byte*>(r.host) - memory_) /
            kStreamPageSize);
    }
    void ask(std::uint64_t page) {
        std::lock_guard lock(mutex_);
        try {
            StreamWriter(*channel_).request(page);
        } catch (const Error& e) {
            if (recovering_ && is_connection_error(e)) return;
            throw Error(e.errnum(), std::string("page request on the ") + name_ + ": " + e.what());
        }
    }
    // While the fault thread is paused.
    void retarget(Channel& channel) {
        std::lock_guard lock(mutex_);
        channel_ = &channel;
    }

private:
    std::mutex mutex_;
    Channel* channel_;
    const std::byte* memory_;
    const char* name_;
    bool recovering_;
};
}  // namespace

namespace {
// Another connection of the migration `first` began.
bool same_migration(const StreamHeader& h, const StreamHeader& first) {
    return h.session == first.session && h.pages == first.pages && h.vcpus == first.vcpus &&
           h.guest == first.guest;
}
}  // namespace

namespace {
// What the precopy left final (a page received and not stale) is never
// asked for again: neither by a fault nor in a resumed postcopy's list of
// what is missing, which would otherwise hold all of memory.
// `is_stale`: one byte per page, set for the Postcopy record's pages.
void mark_precopy_pages(Postcopy& postcopy, std::byte* memory, const MemoryDigest& received,
                        const std::vector<std::uint8_t>& is_stale) {
    const std::uint64_t pages = received.pages();
    enum class Kind { Missing, Data, Zero };
    const auto kind = [&](std::uint64_t p) {
        // Every page was received: the first round sends them all.
        if (is_stale[p]) return Kind::Missing;
        return received.get(p) == zero_page_hash() ? Kind::Zero : Kind::Data;
    };
    for (std::uint64_t p = 0; p < pages;) {
        const Kind k = kind(p);
        std::uint64_t end = p + 1;
        while (end < pages && kind(end) == k) ++end;
        void* host = memory + p * kStreamPageSize;
        const std::size_t length = (end - p) * kStreamPageSize;
        if (k == Kind::Data) postcopy.mark_received(host, length);
        if (k == Kind::Zero) postcopy.mark_zero(host, length);
        p = end;
    }
}
}  // namespace

MigrationDestination::MigrationDestination(Channel& channel, GuestFactory factory, Limits limits)
    : channel_(channel), factory_(std::move(factory)), limits_(limits) {}

void MigrationDestination::abort() noexcept {
    std::lock_guard lock(link_mutex_);
    aborted_ = true;
    stop_.request_stop();
    (main_ ? main_ : &channel_)->shutdown();
    if (Channel* p = main_ ? live_preempt_ : preempt_) p->shutdown();
}

bool MigrationDestination::aborted() {
    std::lock_guard lock(link_mutex_);
    return aborted_;
}

void MigrationDestination::install(Channel* main, Channel* preempt) {
    std::lock_guard lock(link_mutex_);
    main_ = main;
    live_preempt_ = preempt;
    if (aborted_) {
        if (main) main->shutdown();
        if (preempt) preempt->shutdown();
        throw Error(ECANCELED, "migration aborted on the destination");
    }
}

Channel& MigrationDestination::adopt(Channel channel) {
    reconnected_.push_back(std::move(channel));
    return reconnected_.back();
}

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
                Channel* main = nullptr;
                {
                    std::lock_guard lock(link_mutex_);
                    main = main_ ? main_ : &channel_;
                }
                StreamWriter(*main).failed(e.what());
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
    install(&channel_, preempt_);
    // The connections now in use: the first, then each recovery's.
    Channel* main = &channel_;
    Channel* preempt = preempt_;
    std::optional<StreamReader> reader;
    reader.emplace(*main);
    reader->allow_torn_pages(true);  // until the Postcopy record
    const StreamHeader header = reader->header(limits_.max_pages, limits_.max_vcpus);
    const std::uint64_t pages = header.pages;
    if (header.flags & kStreamPreemptChannel)
        throw Error(EPROTO, "the migration connection is a preempt channel, not the main stream");
    if (header.flags & (kStreamResume | kStreamAbort))
        throw Error(EPROTO, "the connection resumes a postcopy this destination never began");
    if (!(header.flags & kStreamPreempt) != !preempt_)
        throw Error(EPROTO, preempt_
                                ? "this destination has a preempt channel; the source has none"
                                : "the source uses a preempt channel; this destination has none");
    if (preempt_) {
        const StreamHeader p = StreamReader(*preempt_).header(limits_.max_pages, limits_.max_vcpus);
        if (p.flags != (kStreamPreempt | kStreamPreemptChannel) || !same_migration(p, header))
            throw Error(EPROTO, "the second connection is not this migration's preempt channel");
    }
    if (header.flags & kStreamPageChannel)
        throw Error(EPROTO, "the migration connection is a page channel, not the main stream");
    if (page_channels_of(header.flags) != page_channels_.size())
        throw Error(EPROTO, "the source sends its pages on " +
                                std::to_string(page_channels_of(header.flags)) +
                                " page channels; this destination has " +
                                std::to_string(page_channels_.size()));
    for (Channel* c : page_channels_) {
        const StreamHeader p = StreamReader(*c).header(limits_.max_pages, limits_.max_vcpus);
        if (p.flags != (kStreamPageChannel | page_channels_flags(page_channels_.size())) ||
            !same_migration(p, header))
            throw Error(EPROTO, "a connection that is not one of this migration's page channels");
    }
    memory_ = Mapping::anonymous(pages * kStreamPageSize, "destination guest memory");
    auto* memory = memory_.as<std::byte>();
    MemoryDigest received(pages);
    // A precopy page: into memory as it came (the guest runs here only
    // after the End, or the Postcopy record).  A page's copies come on one
    // connection, so one thread at a time stores each page.
    // Pages whose last copy arrived torn: one byte each, as page channels
    // store different pages at once.
    std::vector<std::uint8_t> torn(pages);
    const auto store_precopy = [&](const Record& r) {
        torn[r.index] = r.type == RecordType::Page && r.torn;
        if (r.type == RecordType::Page)
            std::memcpy(memory + r.index * kStreamPageSize, r.data, kStreamPageSize);
        else if (received.get(r.index) != zero_page_hash())
            // Fresh anonymous memory reads as zeros: only a page that held
            // data is cleared.  Touching the others would fault in all of
            // memory, and a stream of zero pages (16 bytes each) would leave
            // this side far behind the source.
            std::memset(memory + r.index * kStreamPageSize, 0, kStreamPageSize);
        received.set(r.index, r.hash);
    };
    // The page channels' readers.  The first to fail shuts every
    // connection (the source would block on a channel nobody reads) and
    // its reason is the migration's.
    struct PageReader {
        std::jthread thread;
        std::uint64_t pages = 0;
        std::uint64_t zero_pages = 0;
    };
    std::vector<PageReader> page_readers(page_channels_.size());
    std::mutex page_mutex;
    std::exception_ptr page_failure;  // under page_mutex
    std::atomic<bool> page_failed{false};
    const auto shut_page_channels = [&] {
        for (Channel* c : page_channels_) c->shutdown();
    };
    const auto join_page_readers = [&] {
        for (PageReader& r : page_readers)
            if (r.thread.joinable()) r.thread.join();
    };
    // On any error: woken and joined before what they use goes.
    struct StopPageReaders {
        decltype(shut_page_channels)& shut;
        decltype(join_page_readers)& join;
        ~StopPageReaders() {
            shut();
            join();
        }
    } stop_page_readers{shut_page_channels, join_page_readers};
    // Started once the guard stands: a thread that fails to start leaves
    // none blocked unjoined.
    for (std::size_t i = 0; i < page_readers.size(); ++i)
        page_readers[i].thread = std::jthread([&, i] {
            PageReader& me = page_readers[i];
            try {
                StreamReader pr(*page_channels_[i], pages);
                pr.allow_torn_pages(true);
                for (;;) {
                    const Record& r = pr.next();
                    if (r.type == RecordType::End) return;
                    if (r.type != RecordType::Page && r.type != RecordType::ZeroPage)
                        throw Error(EPROTO, "a record other than a page");
                    store_precopy(r);
                    ++me.pages;
                    if (r.type == RecordType::ZeroPage) ++me.zero_pages;
                }
            } catch (const std::exception& e) {
                const auto* error = dynamic_cast<const Error*>(&e);
                std::lock_guard lock(page_mutex);
                if (page_failure) return;
                page_failure = std::make_exception_ptr(
                    Error(error ? error->errnum() : EIO,
                          "page channel " + std::to_string(i + 1) + ": " + e.what()));
                page_failed.store(true, std::memory_order_release);
                shut_page_channels();
                channel_.shutdown();
            }
        });
    // Before the Postcopy record or the End: every precopy copy stored.
    const auto finish_page_channels = [&] {
        join_page_readers();
        if (page_failed.load(std::memory_order_acquire)) std::rethrow_exception(page_failure);
        for (PageReader& r : page_readers) {
            report.pages_received += std::exchange(r.pages, 0);
            report.zero_pages += std::exchange(r.zero_pages, 0);
        }
    };
    std::vector<std::vector<std::byte>> vcpu_states(header.vcpus);
    auto requests = std::make_unique<ReturnPathSource>(preempt_ ? *preempt_ : channel_, memory,
                                                       preempt_ ? "preempt channel" : "return path",
                                                       recovery_.reconnector != nullptr);
    ReturnPathSource& asker = *requests;
    requests_ = std::move(requests);
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
    // Started with the postcopy, and again on each recovery's channel.
    const auto read_preempt = [&] {
        Channel& channel = *preempt;
        Channel& main_channel = *main;
        try {
            StreamReader pr(channel, pages);
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
            // connections go, and the main loop reports this failure (or
            // recovers from it).
            channel.shutdown();
            main_channel.shutdown();
        }
    };
    // Stops the reader (shutting its channel wakes it) and forgets how it
    // ended; returns that, if it failed.
    const auto stop_preempt_reader = [&]() -> std::exception_ptr {
        if (!preempt_reader.joinable()) return nullptr;
        preempt->shutdown();
        preempt_reader.join();
        preempt_failed.store(false, std::memory_order_relaxed);
        return std::exchange(preempt_failure, nullptr);
    };
    // On any error the reader is woken and joined, before postcopy stops.
    struct JoinPreempt {
        decltype(stop_preempt_reader)& stop;
        ~JoinPreempt() { stop(); }
    } join_preempt{stop_preempt_reader};
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

    // One new connection that resumes this migration, or an Error saying
    // why it does not.
    const auto check_resume = [&](Channel& c, const Reconnector::Clock::time_point deadline) {
        // One connection is checked at a time: one that sends nothing, or
        // part of a header, must not hold the real source off for long.
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(
            std::max(deadline - Reconnector::Clock::now(), Reconnector::Clock::duration::zero()));
        c.set_receive_timeout(std::clamp(left, std::chrono::milliseconds(1), kResumeHeaderTimeout));
        const StreamHeader h = StreamReader(c).header(limits_.max_pages, limits_.max_vcpus);
        c.set_receive_timeout(std::chrono::milliseconds(0));
        if (h.flags == (kStreamResume | kStreamAbort) && h.session == header.session)
            throw Error(ECANCELED, "the source aborted the migration");
        const std::uint32_t want = kStreamResume | (preempt_ ? kStreamPreempt : 0);
        if ((h.flags & ~kStreamPreemptChannel) != want || !same_migration(h, header))
            throw Error(EPROTO, "a connection that does not resume this migration");
        if ((h.flags & kStreamPreemptChannel) && !preempt_)
            throw Error(EPROTO, "a preempt channel for a migration that has none");
        return (h.flags & kStreamPreemptChannel) != 0;
    };
    // A broken connection in postcopy: the fault thread parks (faults wait
    // in the kernel, their pages stay requested), the old connections go,
    // and new ones from the source take their place.  Then this side names
    // the pages it lacks and asks again for those its vCPUs wait on.
    const auto recover = [&](const Error& why) {
        Reconnector& reconnector = *recovery_.reconnector;
        const auto paused_at = Reconnector::Clock::now();
        const auto deadline = paused_at + recovery_.timeout;
        // The connections go first: the fault thread may be blocked
        // sending a request on one (a peer that stopped reading), and it
        // parks only once that send returned.
        main->shutdown();
        if (preempt) preempt->shutdown();
        postcopy->pause();
        stop_preempt_reader();
        reconnector.paused(why);
        for (;;) {
            Channel* next_main = nullptr;
            Channel* next_preempt = nullptr;
            try {
                while (!next_main || (preempt_ && !next_preempt)) {
                    Channel& c = adopt(reconnector.reconnect(deadline, stop_.get_token()));
                    try {
                        Channel*& slot = check_resume(c, deadline) ? next_preempt : next_main;
                        if (slot) throw Error(EPROTO, "a second connection of the same kind");
                        slot = &c;
                    } catch (const Error& e) {
                        if (e.errnum() != EPROTO && !is_connection_error(e)) throw;
                        c.shutdown();
                        reconnector.refused(e);
                    }
                }
                install(next_main, next_preempt);
                main = next_main;
                preempt = next_preempt;
                reader.emplace(*main, pages);
                asker.retarget(preempt ? *preempt : *main);
                // Paused: no page is being placed, so this is exact.
                const Postcopy::Outstanding o = postcopy->outstanding(0);
                std::vector<PageRun> missing;
                missing.reserve(o.missing.size());
                for (const auto& [first, count] : o.missing) missing.push_back({first, count});
                StreamWriter(*main).resume(missing);
                // Throws here, not in the fault thread: asked once more.
                for (const std::size_t page : o.requested)
                    StreamWriter(preempt ? *preempt : *main).request(page);
                if (preempt) preempt_reader = std::jthread(read_preempt);
                postcopy->resume();
                ++report.postcopy_recoveries;
                report.postcopy_paused += Reconnector::Clock::now() - paused_at;
                reconnector.resumed();
                return;
            } catch (const Error& e) {
                const bool aborted = this->aborted();
                if (aborted || !is_connection_error(e) || Reconnector::Clock::now() >= deadline)
                    throw Error(aborted ? ECANCELED : e.errnum(),
                                std::string("postcopy paused (") + why.what() +
                                    ") and could not resume: " + e.what());
                // Broken again at once: the pause goes on.
                if (next_main) next_main->shutdown();
                if (next_preempt) next_preempt->shutdown();
                stop_preempt_reader();
                reconnector.refused(e);
            }
        }
    };
    // A failure of the connections: recovered from in postcopy when
    // recovery is enabled, thrown otherwise.
    const auto broken = [&](const Error& why) {
        const bool aborted = this->aborted();
        if (aborted) throw Error(ECANCELED, "migration aborted on the destination");
        if (!postcopy || !recovery_.reconnector || !is_connection_error(why)) throw why;
        recover(why);
    };
    // The main stream ends first when the preempt reader failed: its
    // failure is the reason then.
    const auto next = [&]() -> const Record& {
        for (;;) {
            try {
                return reader->next();
            } catch (const Error&) {
                if (page_failed.load(std::memory_order_acquire)) {
                    join_page_readers();  // their connections are shut
                    std::rethrow_exception(page_failure);
                }
                std::exception_ptr reason;
                if (preempt_failed.load(std::memory_order_acquire)) reason = stop_preempt_reader();
                try {
                    if (reason) std::rethrow_exception(reason);
                    throw;
                } catch (const Error& why) {
                    broken(why);
                }
            }
        }
    };
    for (;;) {
        const Record& r = next();
        switch (r.type) {
            case RecordType::Page:
            case RecordType::ZeroPage:
                if (!postcopy && !page_channels_.empty())
                    throw Error(EPROTO,
                                "malformed migration stream: a precopy page on the main stream of "
                                "a migration with page channels");
                if (r.type == RecordType::ZeroPage) {
                    if (postcopy) {
                        postcopy->place_zero_page(memory + r.index * kStreamPageSize);
                        received.set(r.index, r.hash);
                    } else {
                        store_precopy(r);
                    }
                    ++report.pages_received;
                    ++report.zero_pages;
                    break;
                }
                if (postcopy) {
                    postcopy->place_page(memory + r.index * kStreamPageSize,
                                         std::span(r.data, kStreamPageSize));
                    received.set(r.index, r.hash);
                } else {
                    store_precopy(r);
                }
                ++report.pages_received;
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
                finish_page_channels();  // no precopy copy lands after the discard
                // A torn last copy the source does not send again is a
                // write its dirty log missed or a corrupted stream: found
                // here, before the guest starts on it.
                std::vector<std::uint8_t> stale(pages);  // sent again from here on
                for (const PageRun& run : r.runs)
                    std::fill_n(stale.begin() + static_cast<std::ptrdiff_t>(run.first), run.count,
                                1);
                for (std::uint64_t p = 0; p < pages; ++p)
                    if (torn[p] && !stale[p])
                        throw Error(EPROTO,
                                    "page " + std::to_string(p) +
                                        " arrived torn (its bytes do not match its hash) and "
                                        "the source does not send it again: a write its "
                                        "dirty tracking missed, or a corrupted stream");
                // The guest is stopped at the source: every page from here
                // on is final, and a torn one is a corrupted stream.
                reader->allow_torn_pages(false);
                // Stale copies of pages the source still has dirty go: the
                // guest faults on them and they are requested or streamed.
                for (const PageRun& run : r.runs)
                    if (::madvise(memory + run.first * kStreamPageSize, run.count * kStreamPageSize,
                                  MADV_DONTNEED))
                        throw_errno("madvise(MADV_DONTNEED) of stale pages");
                postcopy.emplace(*requests_, Postcopy::Options{.vcpus = header.vcpus});
                postcopy->add_range(memory, pages * kStreamPageSize);
                mark_precopy_pages(*postcopy, memory, received, stale);
                postcopy->start();
                if (preempt_) preempt_reader = std::jthread(read_preempt);
                report.mode = "postcopy";
                start_guest();
                break;
            }
            case RecordType::Cancel:
                throw Error(ECANCELED, "the source cancelled the migration");
            case RecordType::End: {
                if (!postcopy) finish_page_channels();
                if (preempt_reader.joinable()) {
                    // The source ends the preempt channel before this stream.
                    preempt_reader.join();
                    if (auto reason = std::exchange(preempt_failure, nullptr)) {
                        preempt_failed.store(false, std::memory_order_relaxed);
                        try {
                            std::rethrow_exception(reason);
                        } catch (const Error& why) {
                            broken(why);  // resumed: the source sends End again
                        }
                        break;
                    }
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
                try {
                    StreamWriter(*main).done(r.value);
                } catch (const Error& e) {
                    // In postcopy the guest runs here, whole and verified:
                    // a source that missed Done cannot take it back.
                    if (!postcopy || !is_connection_error(e)) throw;
                }
                report.digest = r.value;
                // Every connection: the source's bytes_sent counts them all.
                report.bytes_received =
                    channel_.bytes_read() + (preempt_ ? preempt_->bytes_read() : 0);
                for (const Channel& c : reconnected_) report.bytes_received += c.bytes_read();
                for (const Channel* c : page_channels_) report.bytes_received += c->bytes_read();
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
