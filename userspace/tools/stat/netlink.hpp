// SPDX-License-Identifier: LGPL-2.1-or-later
// dirtyring-stat's view of the module's generic netlink family "dirtyring"
// (include/uapi/linux/dirtyring.h): a libnl-3 socket with the family
// resolved, the VM_GET and VCPU_GET dumps decoded into plain structs, and
// the "events" multicast group decoded into Events.  Internal to the tool:
// not part of libdirtyring's interface.
//
// Every reply is parsed against a policy (libnl's nla_parse), and more
// strictly than libnl does: attributes must fill their message or nest
// exactly, the attributes of version 1 must all be there, and a histogram
// is exactly DIRTYRING_HIST_BUCKETS counts.  Anything else is an Error
// (EPROTO) that names the attribute; attributes newer than this tool are
// ignored.  Those added to version 1 later (a slot's resident and parked
// pages) are optional: std::nullopt from a module without them.
//
// Errors: FamilyError for the three a user can act on (module not loaded,
// no CAP_NET_ADMIN, another family version), dirtyring::Error otherwise.
#pragma once

#include <netlink/attr.h>
#include <netlink/cache.h>
#include <netlink/genl/family.h>
#include <netlink/handlers.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <netlink/socket.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dirtyring/base/error.hpp"

namespace dirtyring::stat {

// What this tool speaks (DIRTYRING_GENL_*, checked against the uAPI header).
inline constexpr const char* kFamilyName = "dirtyring";
inline constexpr const char* kEventsGroup = "events";
inline constexpr std::uint8_t kFamilyVersion = 1;

// --- ownership of libnl objects -----------------------------------------------

struct NlSockFree {
    void operator()(nl_sock* s) const noexcept { nl_socket_free(s); }
};
struct NlMsgFree {
    void operator()(nl_msg* m) const noexcept { nlmsg_free(m); }
};
struct NlCbPut {
    void operator()(nl_cb* cb) const noexcept { nl_cb_put(cb); }
};
struct NlCacheFree {
    void operator()(nl_cache* c) const noexcept { nl_cache_free(c); }
};
struct GenlFamilyPut {
    void operator()(genl_family* f) const noexcept { genl_family_put(f); }
};
using NlSock = std::unique_ptr<nl_sock, NlSockFree>;
using NlMsg = std::unique_ptr<nl_msg, NlMsgFree>;
using NlCb = std::unique_ptr<nl_cb, NlCbPut>;
using NlCache = std::unique_ptr<nl_cache, NlCacheFree>;
using GenlFamily = std::unique_ptr<genl_family, GenlFamilyPut>;

// nlmsg_alloc(), or Error (ENOMEM).
NlMsg alloc_msg();

// --- errors -------------------------------------------------------------------

// The errors dirtyring-stat gives an exit code of their own.  message() is
// the whole sentence for the user; what() adds the errno's text as every
// dirtyring::Error does.
class FamilyError : public Error {
public:
    enum class Reason {
        NotRegistered,  // no family "dirtyring": the module is not loaded (ENOENT)
        NotPermitted,   // an operation or the events group refused: CAP_NET_ADMIN (EPERM)
        Version,        // the module's family version is not kFamilyVersion (EPROTONOSUPPORT)
    };
    FamilyError(Reason reason, int errnum, const std::string& message);

    Reason reason() const noexcept { return reason_; }
    const std::string& message() const noexcept { return message_; }

private:
    Reason reason_;
    std::string message_;
};

// The errno closest to a libnl error code (NLE_*, either sign).
int errno_of_nl_error(int nl_error) noexcept;

// Throws FamilyError(Version) unless `version` is kFamilyVersion.
void check_family_version(std::uint8_t version);

// --- what the family reports ----------------------------------------------------

inline constexpr std::size_t kHistBuckets = 32;  // DIRTYRING_HIST_BUCKETS (checked)
// Bucket b counts durations in [2^b, 2^(b+1)) ns; bucket 0 also 0 ns, the
// last one also everything longer.
using Histogram = std::array<std::uint64_t, kHistBuckets>;

// One ring's counters (DIRTYRING_A_RING_*); cumulative unless noted.
struct Ring {
    std::uint32_t entries = 0;     // ring size
    std::uint32_t soft_limit = 0;  // entries - the reserve
    std::uint32_t used = 0;        // now: entries pushed and not reset yet
    std::uint64_t pushed = 0;      // pages logged since the ring was created
    std::uint64_t soft_full = 0;   // times the ring reached its soft limit
    std::uint64_t overflows = 0;   // pages that found the ring full (parked)
    std::uint64_t waits = 0;       // writer waits for room
    std::uint64_t wait_ns = 0;     // total time of those waits
    Histogram wait_hist{};         // their durations
    bool operator==(const Ring&) const = default;
};

struct Slot {
    std::uint32_t id = 0;
    std::uint64_t pages = 0;
    // Now; none from a module older than these attributes.
    std::optional<std::uint64_t> resident = std::nullopt;  // pages in memory
    std::optional<std::uint64_t> parked = std::nullopt;    // pages parked as overflow
    bool operator==(const Slot&) const = default;
};

// DIRTYRING_CMD_VM_GET: one VM.
struct Vm {
    std::uint32_t id = 0;
    std::uint32_t owner_pid = 0;  // its creator's tgid, in our pid namespace
    std::string owner_comm;
    std::vector<Slot> slots;  // in message order
    // Writers bound to no vCPU; absent until the VM enabled its rings
    // (DIRTYRING_ENABLE_RINGS).
    std::optional<Ring> vm_ring;
    bool operator==(const Vm&) const = default;
};

// DIRTYRING_CMD_VCPU_GET: one vCPU of VM vm_id.
struct Vcpu {
    std::uint32_t vm_id = 0;
    std::uint32_t id = 0;
    std::optional<std::uint32_t> bound_tid;  // the thread bound to it, if any
    Ring ring;
    // Stall accounting: first-write faults of its threads and the time they
    // spent in the module's handling of them.
    std::uint64_t faults = 0;
    std::uint64_t fault_ns = 0;
    Histogram fault_hist{};
    bool operator==(const Vcpu&) const = default;
};

// A notification of the "events" group.
struct Event {
    enum class Kind {
        VmCreated,    // vm_id, owner_pid, owner_comm
        VmDestroyed,  // vm_id
        WaitBegin,    // vm_id, vcpu (none: the VM ring): a writer waits for ring room
        WaitEnd,      // vm_id, vcpu, ns: that wait ended
        Reset,        // vm_id, ns, entries, relogged, soft_full, overflows
        SoftFull,     // vm_id, vcpu, count: soft-limit crossings
        Overflow,     // vm_id, vcpu, count: pages that found the ring full, parked
        Lost,         // the socket buffer overflowed: events were dropped here
    };
    Kind kind = Kind::Lost;
    std::uint32_t vm_id = 0;
    std::uint32_t owner_pid = 0;
    std::string owner_comm;
    std::optional<std::uint32_t> vcpu;
    std::uint64_t ns = 0;  // the wait's or the reset's duration
    // SoftFull, Overflow: what the event stands for, coalesced per ring
    // (one event per ring and kind at most every DIRTYRING_GENL_EVENT_MS).
    std::uint64_t count = 0;
    // Reset: what the rings saw since the previous reset.
    std::uint64_t entries = 0;
    std::uint64_t relogged = 0;
    std::uint64_t soft_full = 0;  // soft-limit crossings coalesced
    std::uint64_t overflows = 0;  // parked pages coalesced
    bool operator==(const Event&) const = default;
};

// --- decoding (one received message each; Error EPROTO when malformed) --------

// A binary histogram attribute: exactly kHistBuckets u64 counts.
Histogram decode_histogram(const nlattr* attr, const std::string& where);
// A DIRTYRING_A_*_RING nest.
Ring decode_ring(nlattr* nest, const std::string& where);
// A DIRTYRING_CMD_VM_GET reply.
Vm decode_vm(nlmsghdr* msg);
// A DIRTYRING_CMD_VCPU_GET reply.
Vcpu decode_vcpu(nlmsghdr* msg);
// A notification; std::nullopt for commands newer than this tool.
std::optional<Event> decode_event(nlmsghdr* msg);

// --- the family -----------------------------------------------------------------

// The events group, on a socket of its own (non-blocking).
class EventSubscription {
public:
    // Poll it for POLLIN.
    int fd() const noexcept;
    // Decodes every event queued on the socket, in order, into `sink`;
    // returns when none is left.  A socket buffer overrun gives one
    // Event::Kind::Lost.  Throws Error on a malformed event.
    void read(const std::function<void(const Event&)>& sink);

private:
    friend class Netlink;
    explicit EventSubscription(NlSock sock) noexcept : sock_(std::move(sock)) {}
    NlSock sock_;
};

class Netlink {
public:
    // Connects a generic netlink socket and resolves the family: FamilyError
    // when it is not registered or speaks another version.
    Netlink();

    std::uint8_t family_version() const noexcept { return version_; }

    // VM_GET: every VM (a dump), or the VM `id` (none when it does not exist).
    std::vector<Vm> vms(std::optional<std::uint32_t> id = std::nullopt);
    // VCPU_GET: every vCPU, or those of VM `vm_id`.
    std::vector<Vcpu> vcpus(std::optional<std::uint32_t> vm_id = std::nullopt);

    // Joins the events group (FamilyError NotPermitted without CAP_NET_ADMIN).
    EventSubscription subscribe() const;

private:
    // Sends `cmd` (a dump when `dump`) with `vm_id` as DIRTYRING_A_VM_ID,
    // hands every reply to `on_reply`; throws the request's error, with the
    // kernel's extack message, as an Error (FamilyError for EPERM).  False
    // when the module marked the dump inconsistent (NLM_F_DUMP_INTR).
    bool request(std::uint8_t cmd, bool dump, std::optional<std::uint32_t> vm_id,
                 const std::string& what, const std::function<void(nlmsghdr*)>& on_reply);
    // request() until a consistent dump, decoded; none for an unknown vm_id.
    template <typename T>
    std::vector<T> collect(std::uint8_t cmd, bool dump, std::optional<std::uint32_t> vm_id,
                           const std::string& what, T (*decode)(nlmsghdr*));

    NlSock sock_;
    int family_ = 0;
    std::uint8_t version_ = 0;
};

}  // namespace dirtyring::stat
