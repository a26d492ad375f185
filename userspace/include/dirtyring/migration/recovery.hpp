// SPDX-License-Identifier: LGPL-2.1-or-later
// Postcopy recovery.  From the switch to postcopy on, the guest runs on the
// destination while part of its memory is still on the source: a broken
// connection must not end the migration, since neither side could run the
// guest alone.  With recovery enabled both sides pause instead (the
// destination's vCPUs stay blocked on their missing pages, the source keeps
// its stopped guest), a Reconnector makes new connections (the source
// connects, the destination accepts), and the postcopy resumes: the
// destination names the pages it still lacks and asks again for those its
// vCPUs wait on, the source sends them and then the rest.  A pause that
// outlasts its timeout fails the migration (the guest is lost).
//
// Before the switch a broken connection still fails the migration: the
// source guest never stopped for good, so it just runs on.
//
// Thread-safety: a Reconnector is called from the migration's thread only
// (MigrationSource::run() or MigrationDestination::run()).
#pragma once

#include <chrono>
#include <optional>
#include <stop_token>

#include "dirtyring/base/error.hpp"
#include "dirtyring/migration/channel.hpp"

namespace dirtyring {

// A broken connection (what recovery is for), not a refused stream, a
// failed peer or a digest that does not match.
bool is_connection_error(const Error& error) noexcept;

class Reconnector {
public:
    using Clock = std::chrono::steady_clock;
    virtual ~Reconnector() = default;

    // One new connection to the peer, by `deadline`.  Throws Error:
    // ETIMEDOUT when none came by then, ECANCELED once `stop` is requested
    // (the migration was aborted).
    virtual Channel reconnect(Clock::time_point deadline, std::stop_token stop) = 0;

    // What the migration tells as it goes, for an operator: it paused on
    // `why`; a new connection was turned away (another migration's, or
    // broken again at once) and the pause goes on; it resumed.
    virtual void paused(const Error& why) { (void)why; }
    virtual void refused(const Error& why) { (void)why; }
    virtual void resumed() {}
};

// A source's: connects to `address` (the destination's, or another an
// operator names for the recovery).
class ConnectingReconnector : public Reconnector {
public:
    explicit ConnectingReconnector(ChannelAddress address) : address_(std::move(address)) {}
    Channel reconnect(Clock::time_point deadline, std::stop_token stop) override;
    const ChannelAddress& address() const noexcept { return address_; }

private:
    ChannelAddress address_;
};

// A destination's: accepts on `listener` (the one the migration came in
// on, or another), which must outlive it.
class AcceptingReconnector : public Reconnector {
public:
    explicit AcceptingReconnector(Listener& listener) : listener_(listener) {}
    Channel reconnect(Clock::time_point deadline, std::stop_token stop) override;

private:
    Listener& listener_;
};

struct RecoveryOptions {
    Reconnector* reconnector = nullptr;        // not owned; nullptr: a break loses the guest
    std::chrono::milliseconds timeout{60000};  // how long one pause may last
};

}  // namespace dirtyring
