// SPDX-License-Identifier: LGPL-2.1-or-later
// The destination side of a live migration: receives the stream into
// ordinary anonymous memory, checks every page's hash on arrival and that
// the hashes of the last version of every page add up to the source's digest
// of its memory at the stop (MemoryDigest), then restores the vCPUs and
// starts the guest (built by the caller's factory, of the kind the stream
// names).  The source checks that digest against its stopped memory itself.
//
// Postcopy: on the source's Postcopy record it discards the pages the source
// still has dirty, registers the memory with userfaultfd (Postcopy), starts
// the guest at once, and places every page that arrives; vCPU faults become
// Request records on the return path.  Memory is then verified by the page
// hashes (the guest already runs on it).
//
// run() is called by one thread; it returns once the guest runs here and the
// source was told (Done), or throws Error: EPROTO for a stream it does not
// understand, ECANCELED when the source cancelled, ECONNRESET when the
// connection ended early, EIO when the memory does not match.  On error the
// received memory is discarded and the source is told why (Failed) when the
// connection still works.
#pragma once

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

#include "dirtyring/base/mapping.hpp"
#include "dirtyring/migration/channel.hpp"
#include "dirtyring/migration/migratable_guest.hpp"
#include "dirtyring/migration/recovery.hpp"
#include "dirtyring/postcopy/page_source.hpp"
#include "dirtyring/postcopy/postcopy.hpp"

namespace dirtyring {

struct DestinationReport {
    std::string mode = "precopy";
    unsigned rounds = 0;
    std::uint64_t pages_received = 0;  // page records, zero pages included
    std::uint64_t zero_pages = 0;
    std::uint64_t bytes_received = 0;
    std::uint64_t digest = 0;
    std::chrono::nanoseconds total_time{0};
    // Postcopy only: faults, requests sent, and the blocktime report (the
    // JSON members of QEMU's query-migrate).
    std::uint64_t postcopy_faults = 0;
    std::uint64_t postcopy_requests = 0;
    std::uint64_t preempt_pages = 0;              // of pages_received, those on the preempt channel
    unsigned postcopy_recoveries = 0;             // pauses on a broken connection, each resumed
    std::chrono::nanoseconds postcopy_paused{0};  // their length, all together
    std::string blocktime_json;
};

class MigrationDestination {
public:
    using GuestFactory = std::function<std::unique_ptr<MigratableGuest>(
        std::uint32_t kind, std::byte* memory, std::uint64_t pages, unsigned vcpus)>;

    struct Limits {
        std::uint64_t max_pages = 1ULL << 24;  // 64 GiB
        unsigned max_vcpus = 64;
    };

    MigrationDestination(Channel& channel, GuestFactory factory, Limits limits);
    MigrationDestination(Channel& channel, GuestFactory factory)
        : MigrationDestination(channel, std::move(factory), Limits{}) {}
    ~MigrationDestination();

    // Postcopy requests go out, and their pages come in, on `preempt`: the
    // second connection of a source that has one (kStreamPreempt), read by
    // a thread of run()'s while the main stream streams the rest.  Before
    // run().
    void use_preempt_channel(Channel& preempt) noexcept { preempt_ = &preempt; }

    // The precopy's pages come in on `channels` too (the source's page
    // channels, accepted after the preempt channel if any), each read by a
    // thread of run()'s.  Before run(); as many as the source has.
    void use_page_channels(std::vector<Channel*> channels) noexcept {
        page_channels_ = std::move(channels);
    }

    // A connection broken in postcopy pauses the migration (vCPUs stay
    // blocked on their missing pages) until `recovery.reconnector` accepts
    // the source's new connections (recovery.hpp), for at most
    // `recovery.timeout` each time.  Before run().
    void enable_postcopy_recovery(RecoveryOptions recovery) noexcept { recovery_ = recovery; }

    DestinationReport run();

    // Ends run() at once, a pause included (the guest is lost if it had
    // started here).  Any thread may call it.
    void abort() noexcept;

    // The migrated guest, running; only after run() returned.
    MigratableGuest& guest() { return *guest_; }

    // Whether the guest started here in postcopy, after run() returned or
    // threw: a postcopy that failed after that lost the guest (the source
    // stopped it for good, this side discarded its partial copy).  A
    // precopy that fails after its start here leaves it with the source.
    bool guest_started() const noexcept { return guest_started_; }

private:
    DestinationReport receive();
    Channel& adopt(Channel channel);
    // Makes `main` and `preempt` the connections abort() shuts down;
    // throws ECANCELED once aborted.
    void install(Channel* main, Channel* preempt);
    bool aborted();

    Channel& channel_;
    Channel* preempt_ = nullptr;
    std::vector<Channel*> page_channels_;
    RecoveryOptions recovery_;
    std::deque<Channel> reconnected_;  // alive until the destination goes
    std::mutex link_mutex_;            // guards main_, live_preempt_, aborted_
    Channel* main_ = nullptr;          // the connections now in use
    Channel* live_preempt_ = nullptr;
    bool aborted_ = false;
    std::stop_source stop_;
    GuestFactory factory_;
    Limits limits_;
    Mapping memory_;
    // Outlive the guest: its vCPU threads register with the postcopy when
    // they start, which can be after run() returned.
    std::unique_ptr<PageSource> requests_;
    std::optional<Postcopy> postcopy_;
    std::unique_ptr<MigratableGuest> guest_;
    bool guest_started_ = false;
};

}  // namespace dirtyring
