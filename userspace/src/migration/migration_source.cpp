// SPDX-License-Identifier: LGPL-2.1-or-later
#include "dirtyring/migration/migration_source.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "dirtyring/base/error.hpp"
#include "dirtyring/migration/migration_stream.hpp"

namespace dirtyring {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kDoneTimeout = std::chrono::seconds(60);
constexpr std::uint64_t kPostcopyBatch = 8;
constexpr auto kAbortNoticeTimeout = std::chrono::seconds(2);
// Page channels take the dirty bitmap in blocks of this many words (1024
// pages, 4 MiB), dealt round robin: long runs for each sender, and every
// channel busy whatever part of memory is dirty.
constexpr std::uint64_t kPageChannelBlockWords = 16;

// Atomic: in postcopy the preempt channel's thread takes pages too.
bool test_bit(std::vector<std::uint64_t>& bits, std::uint64_t page) {
    return (std::atomic_ref(bits[page / 64]).load(std::memory_order_relaxed) >> (page % 64)) & 1;
}

bool take_bit(std::vector<std::uint64_t>& bits, std::uint64_t page) {
    const std::uint64_t bit = 1ULL << (page % 64);
    return std::atomic_ref(bits[page / 64]).fetch_and(~bit, std::memory_order_relaxed) & bit;
}

}  // namespace

// Reads the destination's records while the migration runs.
class MigrationSource::ReturnPath {
public:
    // `on_failure` runs once the destination failed or its return path broke:
    // it wakes senders blocked on connections nobody reads any more.
    ReturnPath(Channel& channel, std::uint64_t pages, std::function<void()> on_failure)
        : reader_(channel, pages), on_failure_(std::move(on_failure)) {
        thread_ = std::jthread([this] { loop(); });
    }
    ~ReturnPath() = default;  // the owner shuts the channel down first

    void check() const {
        std::lock_guard lock(mutex_);
        if (failure_) std::rethrow_exception(failure_);
    }
    std::optional<std::uint64_t> pop_request() {
        std::lock_guard lock(mutex_);
        if (requests_.empty()) return std::nullopt;
        const auto page = requests_.front();
        requests_.pop_front();
        return page;
    }
    bool requests_pending() const {
        std::lock_guard lock(mutex_);
        return !requests_.empty();
    }
    // Waits for the destination's Done; returns its digest.
    std::uint64_t wait_done() {
        std::unique_lock lock(mutex_);
        if (!cv_.wait_for(lock, kDoneTimeout, [&] { return done_ || failure_; }))
            throw Error(ETIMEDOUT, "the destination did not confirm the migration within " +
                                       std::to_string(kDoneTimeout.count()) + " s");
        if (failure_) std::rethrow_exception(failure_);
        return *done_;
    }
    void join() {
        if (thread_.joinable()) thread_.join();
    }

private:
    void loop() {
        try {
            for (;;) {
                const Record& r = reader_.next();
                std::lock_guard lock(mutex_);
                if (r.type == RecordType::Request) {
                    requests_.push_back(r.index);
                } else if (r.type == RecordType::Done) {
                    done_ = r.value;
                    cv_.notify_all();
                    return;
                } else if (r.type == RecordType::Failed) {
                    failure_ = std::make_exception_ptr(
                        Error(EREMOTEIO, "the destination failed: " + r.message));
                    cv_.notify_all();
                    on_failure_();
                    return;
                } else {
                    throw Error(EPROTO, "unexpected record on the return path");
                }
            }
        } catch (const Error& e) {
            std::lock_guard lock(mutex_);
            if (!failure_)
                failure_ = std::make_exception_ptr(Error(
                    e.errnum(), std::string("return path from the destination: ") + e.what()));
            cv_.notify_all();
            on_failure_();
        }
    }

    StreamReader reader_;
    std::function<void()> on_failure_;
    mutable std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<std::uint64_t> requests_;
    std::optional<std::uint64_t> done_;
    std::exception_ptr failure_;
    std::jthread thread_;
};

// Answers postcopy requests on the preempt channel, each as it comes: the
// requested page goes out at once, whether or not the background stream has
// taken it already (it may still be queued behind the bandwidth limit; the
// destination places whichever copy comes first, and both are the stopped
// guest's page).
class MigrationSource::PreemptServer {
public:
    PreemptServer(MigrationSource& source, Channel& channel)
        : source_(source), channel_(channel), writer_(channel) {
        thread_ = std::jthread([this] { loop(); });
    }
    ~PreemptServer() = default;  // the owner shuts the channel down first

    // Never waits for an answer being sent (its lock is held across the
    // send): the background stream goes on meanwhile.
    void check() const {
        if (!failed_.load(std::memory_order_acquire)) return;
        std::lock_guard lock(mutex_);
        std::rethrow_exception(failure_);
    }
    // After the last background page: no page goes out here after End.
    // The digest is taken under the lock, once no answer is half sent (a
    // page whose bit this thread took but whose hash it had not stored
    // yet), and returned for the main stream's End.
    std::uint64_t finish() {
        std::lock_guard lock(mutex_);
        if (failure_) std::rethrow_exception(failure_);
        finished_ = true;
        const std::uint64_t digest = source_.sent_->digest();
        writer_.end(digest);
        return digest;
    }
    void join() {
        if (thread_.joinable()) thread_.join();
    }
    // After join().
    std::uint64_t answered() const noexcept { return answered_; }
    std::uint64_t pages_sent() const noexcept {
        return writer_.zero_pages() + writer_.data_pages();
    }
    std::uint64_t zero_pages() const noexcept { return writer_.zero_pages(); }

private:
    void loop() {
        try {
            StreamReader reader(channel_, source_.guest_.pages());
            for (;;) {
                const Record& r = reader.next();
                if (r.type != RecordType::Request)
                    throw Error(EPROTO, "unexpected record on the preempt channel");
                std::lock_guard lock(mutex_);
                if (finished_) continue;  // every page went out already
                ++answered_;
                take_bit(source_.migration_, r.index);
                source_.send_page(writer_, r.index);
                writer_.flush();
            }
        } catch (const Error& e) {
            std::lock_guard lock(mutex_);
            // After finish() the channel's end is expected.
            if (!finished_ && !failure_) {
                failure_ = std::make_exception_ptr(
                    Error(e.errnum(), std::string("preempt channel: ") + e.what()));
                failed_.store(true, std::memory_order_release);
            }
        }
    }

    MigrationSource& source_;
    Channel& channel_;
    StreamWriter writer_;  // under mutex_
    mutable std::mutex mutex_;
    bool finished_ = false;
    std::atomic<bool> failed_{false};  // failure_ is set
    std::uint64_t answered_ = 0;
    std::exception_ptr failure_;
    std::jthread thread_;
};

// One generation of the migration's connections and the threads reading
// them: the first, then one per postcopy recovery.  close() shuts the
// connections, which ends the threads, and joins them.
struct MigrationSource::Link {
    Link(Channel& main_channel, Channel* preempt_channel)
        : main(main_channel), preempt(preempt_channel), writer(main_channel) {}
    ~Link() { close(); }
    Link(const Link&) = delete;
    Link& operator=(const Link&) = delete;

    // After the handshake: nothing else may read the connections then.
    void start(MigrationSource& source, std::uint64_t pages) {
        rp.emplace(main, pages, [&source] {
            for (Channel* c : source.page_channels_) c->shutdown();
        });
        if (preempt) ps.emplace(source, *preempt);
    }
    void close() {
        main.shutdown();
        if (preempt) preempt->shutdown();
        if (rp) rp->join();
        if (ps) ps->join();
    }

    Channel& main;
    Channel* preempt;
    StreamWriter writer;
    std::optional<ReturnPath> rp;
    std::optional<PreemptServer> ps;
};

MigrationSource::MigrationSource(MigratableGuest& guest, Channel& channel, MigrationOptions options,
                                 Progress progress)
    : guest_(guest), channel_(channel), options_(options), progress_(std::move(progress)) {
    if (options_.max_rounds == 0) throw Error(EINVAL, "migration: max_rounds must be at least 1");
}

LiveProgress MigrationSource::live() const noexcept {
    LiveProgress l;
    l.round = live_round_.load(std::memory_order_relaxed);
    l.round_pages = live_round_pages_.load(std::memory_order_relaxed);
    l.pages_sent = live_pages_.load(std::memory_order_relaxed);
    l.round_pages_sent =
        std::min(l.round_pages, l.pages_sent - live_round_start_.load(std::memory_order_relaxed));
    l.expected_downtime =
        std::chrono::nanoseconds(live_expected_downtime_ns_.load(std::memory_order_relaxed));
    if (const auto start = live_start_ns_.load(std::memory_order_relaxed))
        l.elapsed = Clock::now().time_since_epoch() - std::chrono::nanoseconds(start);
    l.postcopy = in_postcopy();
    return l;
}

void MigrationSource::abort() noexcept {
    std::lock_guard lock(link_mutex_);
    aborted_ = true;
    stop_.request_stop();
    Channel& main = link_ ? link_->main : channel_;
    Channel* preempt = link_ ? link_->preempt : preempt_;
    main.shutdown();
    if (preempt) preempt->shutdown();
}

void MigrationSource::install(Link* link) {
    std::lock_guard lock(link_mutex_);
    link_ = link;
    if (link && aborted_) throw Error(ECANCELED, "migration aborted");
}

bool MigrationSource::aborted() {
    std::lock_guard lock(link_mutex_);
    return aborted_;
}

void MigrationSource::tell_aborted() noexcept {
    if (!recovery_.reconnector) return;  // the destination does not wait then
    try {
        Channel c = recovery_.reconnector->reconnect(Clock::now() + kAbortNoticeTimeout, {});
        StreamWriter(c).header(guest_.pages(), guest_.vcpus(), guest_.kind(),
                               kStreamResume | kStreamAbort, session_);
        c.flush();
    } catch (const Error&) {
        // Nobody there: the destination ends on its own timeout.
    }
}

Channel& MigrationSource::adopt(Channel channel) {
    reconnected_.push_back(std::move(channel));
    return reconnected_.back();
}

void MigrationSource::retire(Link& link, SourceReport& report) {
    link.close();
    report.pages_sent += link.writer.zero_pages() + link.writer.data_pages();
    report.zero_pages += link.writer.zero_pages();
    report.bytes_sent += link.main.bytes_written();
    if (link.ps) {
        report.postcopy_requests += link.ps->answered();
        report.pages_sent += link.ps->pages_sent();
        report.zero_pages += link.ps->zero_pages();
        report.preempt_pages += link.ps->pages_sent();
    }
    if (link.preempt) report.bytes_sent += link.preempt->bytes_written();
}

void MigrationSource::check_cancel_and_failures(const ReturnPath& rp) {
    if (auto e = guest_.failure()) std::rethrow_exception(e);
    rp.check();
    if (phase_.load(std::memory_order_acquire) == Phase::Cancelled)
        throw Error(ECANCELED, "migration cancelled; the source guest keeps running");
}

void MigrationSource::send_page(StreamWriter& writer, std::uint64_t page) {
    sent_->set(page, writer.page(page, guest_.memory() + page * kStreamPageSize));
    live_pages_.fetch_add(1, std::memory_order_relaxed);
}

void MigrationSource::use_page_channels(std::vector<Channel*> channels) {
    if (channels.size() > kMaxPageChannels)
        throw Error(EINVAL, "migration: " + std::to_string(channels.size()) +
                                " page channels (at most " + std::to_string(kMaxPageChannels) +
                                ")");
    for (const Channel* c : channels)
        if (!c) throw Error(EINVAL, "migration: a page channel that is no connection");
    page_channels_ = std::move(channels);
}

std::uint64_t MigrationSource::bytes_written() const {
    std::uint64_t bytes = channel_.bytes_written();
    for (const Channel* c : page_channels_) bytes += c->bytes_written();
    return bytes;
}

std::uint64_t MigrationSource::send_dirty_share(StreamWriter& writer, const ReturnPath& rp,
                                                std::size_t slot, std::size_t slots,
                                                const std::atomic<bool>& stop) {
    std::uint64_t sent = 0;
    for (std::uint64_t w = 0; w < migration_.size(); ++w) {
        if (slots > 1 && (w / kPageChannelBlockWords) % slots != slot) {
            w += kPageChannelBlockWords - 1 - w % kPageChannelBlockWords;  // the next block
            continue;
        }
        // Each word is one sender's alone.
        while (migration_[w]) {
            const auto bit = static_cast<std::uint64_t>(std::countr_zero(migration_[w]));
            migration_[w] &= migration_[w] - 1;
            const std::uint64_t page = w * 64 + bit;
            send_page(writer, page);
            if (++sent % 256 == 0) {
                check_cancel_and_failures(rp);
                if (stop.load(std::memory_order_relaxed)) return sent;
            }
        }
    }
    return sent;
}

std::uint64_t MigrationSource::send_dirty(StreamWriter& writer, const ReturnPath& rp) {
    const std::atomic<bool> never{false};
    if (page_writers_.empty()) return send_dirty_share(writer, rp, 0, 1, never);
    // A sender per channel: on a 2-core host two streams move about twice
    // the bytes of one (neither side of a socket keeps a core busy alone).
    const std::size_t n = page_writers_.size();
    std::vector<std::exception_ptr> failures(n);
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> sent{0};
    {
        std::vector<std::jthread> senders;
        senders.reserve(n);
        for (std::size_t i = 0; i < n; ++i)
            senders.emplace_back([&, i] {
                try {
                    sent += send_dirty_share(page_writers_[i], rp, i, n, stop);
                    page_writers_[i].flush();
                } catch (...) {
                    failures[i] = std::current_exception();
                    stop = true;
                }
            });
    }
    // The destination's own reason first: a failed destination breaks the
    // page channels too.
    if (std::any_of(failures.begin(), failures.end(), [](const auto& f) { return f != nullptr; }))
        check_cancel_and_failures(rp);
    for (const auto& f : failures)
        if (f) std::rethrow_exception(f);
    return sent;
}

void MigrationSource::end_page_channels() {
    for (StreamWriter& w : page_writers_) {
        w.end(0);
        w.flush();
    }
}

void MigrationSource::send_vcpus(StreamWriter& writer) {
    for (unsigned i = 0; i < guest_.vcpus(); ++i) writer.vcpu_state(i, guest_.save_vcpu(i));
}

void MigrationSource::postcopy(std::unique_ptr<Link>& link, SourceReport& report,
                               bool& guest_left) {
    const auto stop = Clock::now();
    guest_.stop();
    guest_.harvest_into(migration_);
    // Every precopy copy is out before the destination discards the stale
    // pages: it reads the page channels to their End first.
    end_page_channels();
    report.precopy_bytes = bytes_written();

    // Pages the destination holds stale copies of: it discards them, so
    // that its vCPUs fault on them and request them.
    std::vector<PageRun> stale;
    for (std::uint64_t p = 0; p < guest_.pages(); ++p) {
        if (!test_bit(migration_, p)) continue;
        if (!stale.empty() && stale.back().first + stale.back().count == p)
            ++stale.back().count;
        else
            stale.push_back({p, 1});
    }
    send_vcpus(link->writer);
    // The last moment a cancel wins (and the guest runs on here); from the
    // Postcopy record on, it may run there, and must never run here again.
    check_cancel_and_failures(*link->rp);
    Phase expected = Phase::Precopy;
    if (!phase_.compare_exchange_strong(expected, Phase::Postcopy, std::memory_order_acq_rel))
        throw Error(ECANCELED, "migration cancelled; the source guest keeps running");
    guest_left = true;
    report.mode = "postcopy";
    // Once, even if it breaks: a destination that missed it never started
    // the guest, and fails rather than waiting for a resume.
    bool announced = false;
    for (;;) {
        try {
            if (aborted()) throw Error(ECANCELED, "migration aborted");
            if (!announced) {
                announced = true;
                link->writer.postcopy(stale);
                report.downtime = Clock::now() - stop;
            }
            stream_postcopy(*link, report);
            return;
        } catch (const Error& e) {
            if (aborted()) {
                tell_aborted();
                throw;
            }
            if (!recovery_.reconnector || !is_connection_error(e)) throw;
            try {
                recover(link, e, report);
            } catch (const Error&) {
                if (aborted()) tell_aborted();
                throw;
            }
        }
    }
}

void MigrationSource::stream_postcopy(Link& link, SourceReport& report) {
    end_sent_ = false;
    ReturnPath& rp = *link.rp;
    PreemptServer* preempt = link.ps ? &*link.ps : nullptr;
    StreamWriter& writer = link.writer;
    // Requested pages first, the rest behind them.
    std::uint64_t cursor = 0;
    std::uint64_t background = 0;
    for (;;) {
        rp.check();
        if (preempt) {
            preempt->check();
        } else if (auto page = rp.pop_request()) {
            ++report.postcopy_requests;
            if (take_bit(migration_, *page)) {
                send_page(writer, *page);
                writer.flush();
            }
            continue;
        }
        while (cursor < guest_.pages() && !test_bit(migration_, cursor)) ++cursor;
        if (cursor == guest_.pages()) break;
        if (!take_bit(migration_, cursor)) continue;  // the preempt channel sent it
        send_page(writer, cursor);
        // Without a preempt channel, small batches: a requested page never
        // queues behind more than a few background pages in the
        // (rate-limited) channel.
        if (!preempt && (++background % kPostcopyBatch == 0 || rp.requests_pending()))
            writer.flush();
    }
    report.digest = preempt ? preempt->finish() : sent_->digest();
    writer.end(report.digest);
    end_sent_ = true;
    if (rp.wait_done() != report.digest)
        throw Error(EIO, "the destination's memory digest differs from the source's");
}

void MigrationSource::recover(std::unique_ptr<Link>& link, const Error& why, SourceReport& report) {
    Reconnector& reconnector = *recovery_.reconnector;
    const auto paused_at = Clock::now();
    const auto deadline = paused_at + recovery_.timeout;
    install(nullptr);
    retire(*link, report);
    link.reset();
    reconnector.paused(why);
    // A destination that had every page may have finished, its Done lost
    // with the connection: then nobody listens for a resume, and this
    // side cannot tell that from a destination gone.
    const std::string after_end =
        end_sent_ ? "; every page had been sent, and the destination may have verified them and "
                    "be running the guest (its confirmation did not arrive)"
                  : "";
    const std::uint64_t pages = guest_.pages();
    for (;;) {
        std::unique_ptr<Link> next;
        try {
            Channel& main = adopt(reconnector.reconnect(deadline, stop_.get_token()));
            Channel* preempt =
                preempt_ ? &adopt(reconnector.reconnect(deadline, stop_.get_token())) : nullptr;
            next = std::make_unique<Link>(main, preempt);
            install(next.get());
            main.set_bandwidth_limit(options_.bandwidth_limit);
            const std::uint32_t flags = kStreamResume | (preempt ? kStreamPreempt : 0);
            next->writer.header(pages, guest_.vcpus(), guest_.kind(), flags, session_);
            main.flush();
            if (preempt) {
                StreamWriter(*preempt).header(pages, guest_.vcpus(), guest_.kind(),
                                              flags | kStreamPreemptChannel, session_);
                preempt->flush();
            }
            // The destination answers at once with what it still lacks.
            if (!main.readable_within(std::chrono::ceil<std::chrono::milliseconds>(
                    std::max(deadline - Clock::now(), Clock::duration::zero()))))
                throw Error(ETIMEDOUT, "the destination did not answer the new connection");
            StreamReader reader(main, pages);
            const Record& r = reader.next();
            if (r.type == RecordType::Failed)
                throw Error(EREMOTEIO, "the destination failed: " + r.message);
            if (r.type != RecordType::Resume)
                throw Error(EPROTO, "the destination did not resume the postcopy");
            // Exactly what it lacks goes again: pages lost with the old
            // connections included.  No other thread runs yet.
            std::fill(migration_.begin(), migration_.end(), 0);
            for (const PageRun& run : r.runs)
                for (std::uint64_t p = run.first; p < run.first + run.count; ++p)
                    migration_[p / 64] |= 1ULL << (p % 64);
            next->start(*this, pages);
            link = std::move(next);
            ++report.postcopy_recoveries;
            report.postcopy_paused += Clock::now() - paused_at;
            reconnector.resumed();
            return;
        } catch (const Error& e) {
            install(nullptr);
            next.reset();
            // A connection made in this attempt and left without a Link
            // would keep the destination waiting on it.
            for (Channel& c : reconnected_) c.shutdown();
            const bool was_aborted = aborted();
            if (was_aborted || !is_connection_error(e) || Clock::now() >= deadline)
                throw Error(was_aborted ? ECANCELED : e.errnum(),
                            std::string("postcopy paused (") + why.what() +
                                ") and could not resume: " + e.what() + after_end);
            reconnector.refused(e);  // broken again at once: the pause goes on
        }
    }
}

SourceReport MigrationSource::run() {
    const auto start = Clock::now();
    live_start_ns_.store(std::chrono::nanoseconds(start.time_since_epoch()).count(),
                         std::memory_order_relaxed);
    const std::uint64_t pages = guest_.pages();
    SourceReport report;
    report.mode = "precopy";
    while (session_ == 0) session_ = std::random_device{}();
    // Its end (and each recovery's) shuts the connections, which ends the
    // threads reading them.
    auto link = std::make_unique<Link>(channel_, preempt_);
    struct Uninstall {
        MigrationSource& source;
        ~Uninstall() { source.install(nullptr); }  // before `link` goes
    } uninstall{*this};

    bool guest_left = false;  // its state is on the destination now
    bool stopped = false;
    try {
        install(link.get());
        channel_.set_bandwidth_limit(options_.bandwidth_limit);
        const std::uint32_t channels = page_channels_flags(page_channels_.size());
        link->writer.header(pages, guest_.vcpus(), guest_.kind(),
                            (preempt_ ? kStreamPreempt : 0) | channels, session_);
        // At once: the destination reads it before any other connection,
        // and with page channels nothing else goes here before a round's end.
        channel_.flush();
        if (preempt_) {
            StreamWriter(*preempt_).header(pages, guest_.vcpus(), guest_.kind(),
                                           kStreamPreempt | kStreamPreemptChannel, session_);
            preempt_->flush();
        }
        page_writers_.clear();
        // Together within the limit, whichever channel the dirty pages
        // fall on (the main stream's few bytes in precopy aside).
        const auto shared = options_.bandwidth_limit
                                ? std::make_shared<BandwidthLimit>(options_.bandwidth_limit,
                                                                   BandwidthLimit::Clock::now())
                                : nullptr;
        for (Channel* c : page_channels_) {
            c->share_bandwidth_limit(shared);
            page_writers_.emplace_back(*c);
            page_writers_.back().header(pages, guest_.vcpus(), guest_.kind(),
                                        kStreamPageChannel | channels, session_);
            c->flush();
        }
        // Start a clean dirty cycle, then send everything once.
        migration_.assign((pages + 63) / 64, 0);
        sent_.emplace(pages);
        link->start(*this, pages);
        StreamWriter& writer = link->writer;
        ReturnPath& rp = *link->rp;
        guest_.harvest_into(migration_);
        migration_.assign((pages + 63) / 64, ~0ULL);
        if (pages % 64) migration_.back() = (1ULL << (pages % 64)) - 1;

        for (unsigned round = 1;; ++round) {
            const auto round_start = Clock::now();
            const auto bytes_before = bytes_written();
            std::uint64_t round_pages = 0;
            for (const std::uint64_t w : migration_)
                round_pages += static_cast<std::uint64_t>(std::popcount(w));
            live_round_start_.store(live_pages_.load(std::memory_order_relaxed),
                                    std::memory_order_relaxed);
            live_round_pages_.store(round_pages, std::memory_order_relaxed);
            live_round_.store(round, std::memory_order_relaxed);
            const std::uint64_t sent = send_dirty(writer, rp);
            writer.round_end(round, sent);
            writer.flush();
            const std::uint64_t dirty = guest_.harvest_into(migration_);
            const auto round_time = Clock::now() - round_start;
            const double seconds = std::chrono::duration<double>(round_time).count();

            RoundProgress p;
            p.round = round;
            p.pages_sent = sent;
            p.dirty_pages = dirty;
            p.dirty_rate = seconds > 0 ? static_cast<double>(dirty) / seconds : 0;
            p.bandwidth =
                seconds > 0 ? static_cast<double>(bytes_written() - bytes_before) / seconds : 0;
            p.pending_bytes = dirty * kStreamPageSize;
            p.expected_downtime =
                p.bandwidth > 0 ? std::chrono::nanoseconds(static_cast<std::int64_t>(
                                      static_cast<double>(p.pending_bytes) / p.bandwidth * 1e9))
                                : std::chrono::nanoseconds(0);
            p.elapsed = Clock::now() - start;
            report.rounds = round;
            report.expected_downtime = p.expected_downtime;
            live_expected_downtime_ns_.store(p.expected_downtime.count(),
                                             std::memory_order_relaxed);
            if (progress_) progress_(p);
            check_cancel_and_failures(rp);

            const bool converged = p.expected_downtime <= options_.downtime_limit;
            if (converged && !options_.postcopy) {
                report.converged = true;
                break;
            }
            if (options_.postcopy ||
                (round >= options_.max_rounds && options_.postcopy_if_not_converged)) {
                stopped = true;
                postcopy(link, report, guest_left);  // `writer` and `rp` may be gone
                break;
            }
            if (round >= options_.max_rounds) break;  // forced switch-over
        }

        if (!guest_left) {  // precopy switch-over
            const auto stop = Clock::now();
            stopped = true;
            guest_.stop();
            guest_.harvest_into(migration_);
            send_dirty(writer, rp);
            end_page_channels();
            send_vcpus(writer);
            report.digest = sent_->digest();
            // Until the destination confirms, the guest is still the source's.
            writer.end(report.digest);
            if (rp.wait_done() != report.digest)
                throw Error(EIO, "the destination's memory digest differs from the source's");
            report.downtime = Clock::now() - stop;
            // The destination runs the guest now: whatever follows, this
            // side must not run it too.
            guest_left = true;
        }
        // The proof, off the downtime's path: the stopped source's memory is
        // what it sent last of every page.  A difference is a write the
        // dirty tracking missed.
        const MemoryDigest actual = MemoryDigest::of(guest_.memory(), pages);
        const std::uint64_t diff = actual.first_difference(*sent_);
        if (diff != pages)
            throw Error(EIO, "page " + std::to_string(diff) +
                                 " of the stopped source differs from what was sent last: a write "
                                 "the dirty tracking missed; the destination's copy is stale");
    } catch (const Error& e) {
        if (!guest_left) {
            // Precopy or cancel: the source guest goes on as if nothing happened.
            if (e.errnum() == ECANCELED) {
                try {
                    link->writer.cancel();
                } catch (const Error&) {
                    // The destination is gone already: nothing to tell it.
                }
            }
            if (stopped) guest_.start();
        }
        throw;
    }
    install(nullptr);
    retire(*link, report);
    for (std::size_t i = 0; i < page_writers_.size(); ++i) {
        report.pages_sent += page_writers_[i].zero_pages() + page_writers_[i].data_pages();
        report.zero_pages += page_writers_[i].zero_pages();
        report.bytes_sent += page_channels_[i]->bytes_written();
    }
    if (report.mode != "postcopy") report.precopy_bytes = report.bytes_sent;
    report.postcopy_bytes = report.bytes_sent - report.precopy_bytes;
    report.total_time = Clock::now() - start;
    return report;
}

}  // namespace dirtyring
