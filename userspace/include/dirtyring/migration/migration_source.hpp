// SPDX-License-Identifier: LGPL-2.1-or-later
// The source side of a live migration: precopy rounds driven by ring
// harvests, a switch-over when the expected downtime is under the limit, or
// postcopy (by request, or when precopy does not converge).
//
// run() is the migration thread's body (the caller owns the thread; nothing
// runs on timers).  A second thread, started and joined by run(), reads the
// return path: page requests in postcopy, the destination's Done or Failed.
// cancel() may be called from any thread: run() then sends Cancel, restarts
// nothing (the guest never stopped, or is started again if precopy had
// stopped it) and throws Error(ECANCELED).  On any error before the guest's
// state left (precopy, cancel), the guest keeps running.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "dirtyring/migration/channel.hpp"
#include "dirtyring/migration/migratable_guest.hpp"
#include "dirtyring/migration/migration_stream.hpp"
#include "dirtyring/migration/recovery.hpp"

namespace dirtyring {

struct MigrationOptions {
    std::uint64_t bandwidth_limit = 0;  // bytes/s; 0: unlimited
    std::chrono::milliseconds downtime_limit{300};
    unsigned max_rounds = 30;  // then postcopy, or a forced switch-over
    bool postcopy = false;     // switch to postcopy after the first round
    bool postcopy_if_not_converged = true;
};

// One precopy round, as the progress line shows it.
struct RoundProgress {
    unsigned round = 0;
    std::uint64_t pages_sent = 0;     // in this round
    std::uint64_t dirty_pages = 0;    // dirtied during this round: the next round's work
    double dirty_rate = 0;            // pages/s during this round
    double bandwidth = 0;             // bytes/s during this round
    std::uint64_t pending_bytes = 0;  // what the next round (or switch-over) sends
    std::chrono::nanoseconds expected_downtime{0};
    std::chrono::nanoseconds elapsed{0};  // since the migration started
};

// The migration as it goes, for a progress line: a snapshot any thread may
// take at any time (live()), never blocking the migration thread.
struct LiveProgress {
    unsigned round = 0;             // 0 before the first round
    std::uint64_t round_pages = 0;  // pages this round sends
    std::uint64_t round_pages_sent = 0;
    std::uint64_t pages_sent = 0;                   // since the start, every round and postcopy
    std::chrono::nanoseconds expected_downtime{0};  // at the end of the last round
    std::chrono::nanoseconds elapsed{0};
    bool postcopy = false;
};

struct SourceReport {
    std::string mode;  // "precopy", "postcopy"
    bool converged = false;
    unsigned rounds = 0;
    std::chrono::nanoseconds total_time{0};
    std::chrono::nanoseconds downtime{0};           // vCPUs stopped -> destination runs
    std::chrono::nanoseconds expected_downtime{0};  // the estimate at switch-over
    std::uint64_t pages_sent = 0;                   // page records, zero pages included
    std::uint64_t zero_pages = 0;
    std::uint64_t bytes_sent = 0;  // both connections
    // Of bytes_sent: before the switch to postcopy (all of it in a precopy
    // migration), and after it (QEMU's precopy-bytes and postcopy-bytes).
    std::uint64_t precopy_bytes = 0;
    std::uint64_t postcopy_bytes = 0;
    std::uint64_t postcopy_requests = 0;
    std::uint64_t preempt_pages = 0;              // pages answered on the preempt channel
    unsigned postcopy_recoveries = 0;             // pauses on a broken connection, each resumed
    std::chrono::nanoseconds postcopy_paused{0};  // their length, all together
    // Of the memory at the stop, as sent; checked after the migration against
    // the stopped source's memory itself.
    std::uint64_t digest = 0;
};

class MigrationSource {
public:
    using Progress = std::function<void(const RoundProgress&)>;

    MigrationSource(MigratableGuest& guest, Channel& channel, MigrationOptions options,
                    Progress progress = {});

    // Postcopy page requests and their answers travel on `preempt`, a
    // second connection to the same destination with no bandwidth limit,
    // never behind the main stream's background pages; a thread of run()'s
    // answers each request as it comes.  Before run(); the destination must
    // have one too.
    void use_preempt_channel(Channel& preempt) noexcept { preempt_ = &preempt; }

    // The precopy's pages go over `channels` (connections to the same
    // destination, made after the preempt channel if any), in parallel,
    // together within the bandwidth limit: QEMU's multifd.  Each
    // page always takes the same channel, so its copies arrive in order.
    // Before run(); the destination must have as many (at most
    // kMaxPageChannels).  Postcopy's pages stay on the main stream.
    void use_page_channels(std::vector<Channel*> channels);

    // A connection broken in postcopy pauses the migration until
    // `recovery.reconnector` connects again (recovery.hpp), for at most
    // `recovery.timeout` each time.  Before run().
    void enable_postcopy_recovery(RecoveryOptions recovery) noexcept { recovery_ = recovery; }

    SourceReport run();
    // Asks run() to cancel; true when it will (precopy, or cancelled
    // already), false once the guest left for the destination in postcopy,
    // which nothing can undo.  Either the cancel or the switch to postcopy
    // wins, never both.
    bool cancel() noexcept {
        Phase expected = Phase::Precopy;
        return phase_.compare_exchange_strong(expected, Phase::Cancelled,
                                              std::memory_order_acq_rel) ||
               expected == Phase::Cancelled;
    }

    // From the switch to postcopy on (the Postcopy record is on its way),
    // the guest runs on the destination with only part of its memory there.
    // Any thread may ask.
    bool in_postcopy() const noexcept {
        return phase_.load(std::memory_order_acquire) == Phase::Postcopy;
    }

    // Ends the migration at once, whatever its phase, by shutting its
    // connections (and ending a pause, with no recovery): run() throws,
    // and the destination fails too.  In postcopy that loses the guest
    // (neither side has all of it); an operator's last resort.  Any thread
    // may call it.
    void abort() noexcept;

    LiveProgress live() const noexcept;

private:
    class ReturnPath;
    class PreemptServer;
    struct Link;

    void check_cancel_and_failures(const ReturnPath& rp);
    // Sends one page and remembers the hash of what was sent.
    void send_page(StreamWriter& writer, std::uint64_t page);
    // Sends the dirty pages, on the page channels when there are.
    std::uint64_t send_dirty(StreamWriter& writer, const ReturnPath& rp);
    // The pages of the blocks of page channel `slot` of `slots`, or all of
    // them for slots == 1; returns early once `stop` is set.
    std::uint64_t send_dirty_share(StreamWriter& writer, const ReturnPath& rp, std::size_t slot,
                                   std::size_t slots, const std::atomic<bool>& stop);
    void end_page_channels();
    std::uint64_t bytes_written() const;
    void send_vcpus(StreamWriter& writer);
    // Sets guest_left as the guest's state goes out: until then a failure
    // or a cancel still restarts the source guest.  Replaces `link` on
    // each recovery.
    void postcopy(std::unique_ptr<Link>& link, SourceReport& report, bool& guest_left);
    // Sends what the destination lacks, End, and waits for Done.
    void stream_postcopy(Link& link, SourceReport& report);
    // Pauses on `why`, until a new Link (connected, its handshake done)
    // replaces `link`; throws when none comes in time.
    void recover(std::unique_ptr<Link>& link, const Error& why, SourceReport& report);
    // Closes `link` and adds what it sent to `report`.
    static void retire(Link& link, SourceReport& report);
    // The link abort() shuts down; throws ECANCELED once aborted.
    void install(Link* link);
    bool aborted();
    // After an abort in postcopy: one connection, flagged kStreamAbort,
    // so that a destination paused for a recovery ends at once.
    void tell_aborted() noexcept;
    Channel& adopt(Channel channel);

    MigratableGuest& guest_;
    Channel& channel_;
    Channel* preempt_ = nullptr;
    std::vector<Channel*> page_channels_;
    std::vector<StreamWriter> page_writers_;  // one per page channel, in run()
    RecoveryOptions recovery_;
    std::uint32_t session_ = 0;
    // The postcopy's End went out on the current connections: a break
    // after it may have cost only the destination's Done.
    bool end_sent_ = false;
    // Connections made by recoveries: alive until run() returns.
    std::deque<Channel> reconnected_;
    std::mutex link_mutex_;  // guards link_ and aborted_
    Link* link_ = nullptr;
    bool aborted_ = false;
    std::stop_source stop_;  // requested by abort(): ends a pause
    MigrationOptions options_;
    Progress progress_;
    enum class Phase { Precopy, Cancelled, Postcopy };
    std::atomic<Phase> phase_{Phase::Precopy};
    // What live() shows; relaxed, each on its own.
    std::atomic<unsigned> live_round_{0};
    std::atomic<std::uint64_t> live_round_pages_{0};
    std::atomic<std::uint64_t> live_round_start_{0};  // live_pages_ at the round's start
    std::atomic<std::uint64_t> live_pages_{0};
    std::atomic<std::int64_t> live_expected_downtime_ns_{0};
    std::atomic<std::int64_t> live_start_ns_{0};  // steady_clock, 0 before run()
    // Pages still to send, one bit each; in postcopy the preempt channel's
    // thread takes bits too (atomically).
    std::vector<std::uint64_t> migration_;
    std::optional<MemoryDigest> sent_;  // hash of what was sent last of each page
};

}  // namespace dirtyring
