// SPDX-License-Identifier: LGPL-2.1-or-later
#include "netlink.hpp"

#include <linux/dirtyring.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <netlink/errno.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <span>
#include <string_view>

namespace dirtyring::stat {

static_assert(std::string_view(kFamilyName) == DIRTYRING_GENL_NAME);
static_assert(std::string_view(kEventsGroup) == DIRTYRING_GENL_MCGRP_EVENTS);
static_assert(kFamilyVersion == DIRTYRING_GENL_VERSION);
static_assert(kHistBuckets == DIRTYRING_HIST_BUCKETS);

namespace {

constexpr std::size_t align4(std::size_t n) {
    return (n + 3) & ~std::size_t{3};
}
constexpr std::size_t kNlmsgHdrLen = align4(sizeof(nlmsghdr));

// --- attribute sets: policy and names -------------------------------------------

constexpr nla_policy kU32{NLA_U32, sizeof(std::uint32_t), sizeof(std::uint32_t)};
constexpr nla_policy kU64{NLA_U64, sizeof(std::uint64_t), sizeof(std::uint64_t)};
constexpr nla_policy kNested{NLA_NESTED, 0, 0};
constexpr nla_policy kHistogram{NLA_UNSPEC, sizeof(Histogram), sizeof(Histogram)};
// TASK_COMM_LEN, the NUL included.
constexpr nla_policy kComm{NLA_STRING, 1, 16};

template <int Max>
struct AttrSet {
    const char* name;  // for messages: "ring", "vCPU"...
    std::array<nla_policy, static_cast<std::size_t>(Max) + 1> policy{};
    std::array<const char*, static_cast<std::size_t>(Max) + 1> names{};
};

constexpr AttrSet<DIRTYRING_A_MAX> kTop = [] {
    AttrSet<DIRTYRING_A_MAX> s{"message"};
    s.policy[DIRTYRING_A_VM_ID] = kU32;
    s.policy[DIRTYRING_A_VM_OWNER_PID] = kU32;
    s.policy[DIRTYRING_A_VM_OWNER_COMM] = kComm;
    s.policy[DIRTYRING_A_VM_SLOT] = kNested;
    s.policy[DIRTYRING_A_VM_VCPU] = kNested;
    s.policy[DIRTYRING_A_VM_RING] = kNested;
    s.policy[DIRTYRING_A_EV_VCPU] = kU32;
    s.policy[DIRTYRING_A_EV_NS] = kU64;
    s.policy[DIRTYRING_A_EV_ENTRIES] = kU64;
    s.policy[DIRTYRING_A_EV_RELOGGED] = kU64;
    s.policy[DIRTYRING_A_EV_SOFT_FULL] = kU64;
    s.policy[DIRTYRING_A_EV_OVERFLOWS] = kU64;
    s.policy[DIRTYRING_A_EV_COUNT] = kU64;
    s.names = {"UNSPEC",      "VM_ID",        "VM_OWNER_PID", "VM_OWNER_COMM", "VM_SLOT",
               "VM_VCPU",     "VM_RING",      "EV_VCPU",      "EV_NS",         "EV_ENTRIES",
               "EV_RELOGGED", "EV_SOFT_FULL", "EV_OVERFLOWS", "PAD",           "EV_COUNT"};
    return s;
}();

constexpr AttrSet<DIRTYRING_A_SLOT_MAX> kSlot = [] {
    AttrSet<DIRTYRING_A_SLOT_MAX> s{"slot"};
    s.policy[DIRTYRING_A_SLOT_ID] = kU32;
    s.policy[DIRTYRING_A_SLOT_PAGES] = kU64;
    s.policy[DIRTYRING_A_SLOT_RESIDENT] = kU64;
    s.policy[DIRTYRING_A_SLOT_PARKED] = kU64;
    s.names = {"UNSPEC", "SLOT_ID", "SLOT_PAGES", "SLOT_PAD", "SLOT_RESIDENT", "SLOT_PARKED"};
    return s;
}();

constexpr AttrSet<DIRTYRING_A_VCPU_MAX> kVcpu = [] {
    AttrSet<DIRTYRING_A_VCPU_MAX> s{"vCPU"};
    s.policy[DIRTYRING_A_VCPU_ID] = kU32;
    s.policy[DIRTYRING_A_VCPU_BOUND_TID] = kU32;
    s.policy[DIRTYRING_A_VCPU_RING] = kNested;
    s.policy[DIRTYRING_A_VCPU_FAULTS] = kU64;
    s.policy[DIRTYRING_A_VCPU_FAULT_NS] = kU64;
    s.policy[DIRTYRING_A_VCPU_FAULT_HIST] = kHistogram;
    s.names = {"UNSPEC",      "VCPU_ID",       "VCPU_BOUND_TID",  "VCPU_RING",
               "VCPU_FAULTS", "VCPU_FAULT_NS", "VCPU_FAULT_HIST", "VCPU_PAD"};
    return s;
}();

constexpr AttrSet<DIRTYRING_A_RING_MAX> kRing = [] {
    AttrSet<DIRTYRING_A_RING_MAX> s{"ring"};
    s.policy[DIRTYRING_A_RING_ENTRIES] = kU32;
    s.policy[DIRTYRING_A_RING_SOFT_LIMIT] = kU32;
    s.policy[DIRTYRING_A_RING_USED] = kU32;
    s.policy[DIRTYRING_A_RING_PUSHED] = kU64;
    s.policy[DIRTYRING_A_RING_SOFT_FULL] = kU64;
    s.policy[DIRTYRING_A_RING_OVERFLOWS] = kU64;
    s.policy[DIRTYRING_A_RING_WAITS] = kU64;
    s.policy[DIRTYRING_A_RING_WAIT_NS] = kU64;
    s.policy[DIRTYRING_A_RING_WAIT_HIST] = kHistogram;
    s.names = {"UNSPEC",       "RING_ENTRIES",   "RING_SOFT_LIMIT", "RING_USED",
               "RING_PUSHED",  "RING_SOFT_FULL", "RING_OVERFLOWS",  "RING_WAITS",
               "RING_WAIT_NS", "RING_WAIT_HIST", "RING_PAD"};
    return s;
}();

// Every attribute of the header has a name (for the messages above).
template <int Max>
constexpr bool all_named(const AttrSet<Max>& set) {
    for (const char* n : set.names)
        if (!n) return false;
    return true;
}
static_assert(all_named(kTop) && all_named(kSlot) && all_named(kVcpu) && all_named(kRing));

[[noreturn]] void malformed(const std::string& where, const std::string& why) {
    throw Error(EPROTO, where + ": " + why);
}

// The attributes of one message or nest, parsed by a set's policy.
template <int Max>
class Attrs {
public:
    // Checks every attribute of [head, head + len) that this set knows
    // against its policy, naming the first bad one; checks that the
    // attributes fill the stream exactly; then nla_parse()s it.
    Attrs(const AttrSet<Max>& set, nlattr* head, int len, std::string where)
        : set_(set), where_(std::move(where)) {
        int rem = len;
        for (nlattr* a = head; nla_ok(a, rem); a = nla_next(a, &rem)) check(a);
        if (rem != 0)
            malformed(where_, "truncated: " + std::to_string(rem) +
                                  " bytes after the last of its " + set_.name + " attributes");
        const int err = nla_parse(tb_.data(), Max, head, len, set_.policy.data());
        if (err < 0)
            malformed(where_, std::string("libnl rejects its ") + set_.name +
                                  " attributes: " + nl_geterror(err));
    }

    nlattr* find(int type) const { return tb_[static_cast<std::size_t>(type)]; }
    nlattr* require(int type) const {
        nlattr* a = find(type);
        if (!a) malformed(where_, std::string("attribute ") + name(type) + " is missing");
        return a;
    }
    std::uint32_t u32(int type) const { return nla_get_u32(require(type)); }
    std::uint64_t u64(int type) const { return nla_get_u64(require(type)); }
    std::string string(int type) const { return nla_get_string(require(type)); }
    Histogram histogram(int type) const {
        return decode_histogram(require(type), where_ + ", " + name(type));
    }
    const char* name(int type) const {
        const char* n = set_.names[static_cast<std::size_t>(type)];
        return n ? n : "(unnamed)";
    }
    const std::string& where() const { return where_; }

private:
    void check(const nlattr* a) const {
        const int type = nla_type(a);
        if (type <= 0 || type > Max) return;  // newer than this tool: ignored
        const nla_policy& p = set_.policy[static_cast<std::size_t>(type)];
        const int len = nla_len(a);
        const std::string what = std::string("attribute ") + name(type);
        if (p.type == NLA_STRING) {
            const auto* s = static_cast<const char*>(nla_data(a));
            if (len < 1 || s[len - 1] != '\0')
                malformed(where_, what + " is not a NUL-terminated string");
            if (len > p.maxlen)
                malformed(where_, what + " is a string of " + std::to_string(len) +
                                      " bytes, at most " + std::to_string(p.maxlen) + " expected");
            return;
        }
        if (p.minlen == p.maxlen && p.minlen != 0 && len != p.minlen)
            malformed(where_, what + " has " + std::to_string(len) + " bytes, " +
                                  std::to_string(p.minlen) + " expected");
    }

    const AttrSet<Max>& set_;
    std::string where_;
    std::array<nlattr*, static_cast<std::size_t>(Max) + 1> tb_{};
};

// An attribute that may be absent (Attrs::find()'s): std::nullopt then.
std::optional<std::uint32_t> optional_u32(const nlattr* a) {
    if (!a) return std::nullopt;
    return nla_get_u32(a);
}
std::optional<std::uint64_t> optional_u64(const nlattr* a) {
    if (!a) return std::nullopt;
    return nla_get_u64(a);
}

// The generic netlink header of `msg` (of command `cmd`, if given) and
// the attributes after it.
template <int Max>
Attrs<Max> message_attrs(nlmsghdr* msg, const AttrSet<Max>& set, std::optional<std::uint8_t> cmd,
                         const std::string& where) {
    if (!genlmsg_valid_hdr(msg, 0)) malformed(where, "shorter than a generic netlink header");
    if (static_cast<std::size_t>(nlmsg_datalen(msg)) < sizeof(genlmsghdr))
        malformed(where, "shorter than a generic netlink header");
    auto* gh = static_cast<genlmsghdr*>(nlmsg_data(msg));
    if (cmd && gh->cmd != *cmd)
        malformed(where,
                  "command " + std::to_string(gh->cmd) + ", " + std::to_string(*cmd) + " expected");
    return Attrs<Max>(set, genlmsg_attrdata(gh, 0), genlmsg_attrlen(gh, 0), where);
}

template <int Max>
Attrs<Max> nested_attrs(nlattr* nest, const AttrSet<Max>& set, const std::string& where) {
    return Attrs<Max>(set, static_cast<nlattr*>(nla_data(nest)), nla_len(nest), where);
}

// Every attribute of type `type` in the stream (repeated ones: slots).
template <typename F>
void for_each_attr(nlattr* head, int len, int type, F&& f) {
    int rem = len;
    for (nlattr* a = head; nla_ok(a, rem); a = nla_next(a, &rem))
        if (nla_type(a) == type) f(a);
}

Slot decode_slot(nlattr* nest, const std::string& where) {
    const auto a = nested_attrs(nest, kSlot, where);
    return {a.u32(DIRTYRING_A_SLOT_ID), a.u64(DIRTYRING_A_SLOT_PAGES),
            optional_u64(a.find(DIRTYRING_A_SLOT_RESIDENT)),
            optional_u64(a.find(DIRTYRING_A_SLOT_PARKED))};
}

// --- requests ---------------------------------------------------------------------

// The extack message (NLMSGERR_ATTR_MSG) of an error or DONE message whose
// TLVs start `offset` bytes into its payload.
std::string extack_message(const nlmsghdr* h, std::size_t offset) {
    if (!(h->nlmsg_flags & NLM_F_ACK_TLVS)) return {};
    const int len = nlmsg_datalen(h) - static_cast<int>(align4(offset));
    if (len <= 0) return {};
    const auto* head =
        reinterpret_cast<const nlattr*>(static_cast<const char*>(nlmsg_data(h)) + align4(offset));
    const nlattr* msg = nla_find(head, len, NLMSGERR_ATTR_MSG);
    if (!msg || nla_len(msg) < 1) return {};
    const auto* s = static_cast<const char*>(nla_data(msg));
    return std::string(s, ::strnlen(s, static_cast<std::size_t>(nla_len(msg))));
}

// One request's replies and end, as the callbacks see them.
struct Pending {
    const std::function<void(nlmsghdr*)>* on_reply = nullptr;
    bool done = false;
    bool interrupted = false;  // NLM_F_DUMP_INTR: the VMs changed during the dump
    int error = 0;             // the kernel's errno
    std::string extack;
    std::exception_ptr failure;  // thrown by on_reply (never through libnl's C frames)
};

int on_valid(nl_msg* msg, void* arg) {
    auto& p = *static_cast<Pending*>(arg);
    try {
        (*p.on_reply)(nlmsg_hdr(msg));
        return NL_OK;
    } catch (...) {
        p.failure = std::current_exception();
        p.done = true;
        return NL_STOP;
    }
}

int on_finish(nl_msg* msg, void* arg) {
    auto& p = *static_cast<Pending*>(arg);
    const nlmsghdr* h = nlmsg_hdr(msg);
    if (nlmsg_datalen(h) >= static_cast<int>(sizeof(int))) {
        int err = 0;
        std::memcpy(&err, nlmsg_data(h), sizeof(err));
        if (err < 0) {
            p.error = -err;
            p.extack = extack_message(h, sizeof(int));
        }
    }
    p.done = true;
    return NL_STOP;
}

int on_ack(nl_msg*, void* arg) {
    static_cast<Pending*>(arg)->done = true;
    return NL_STOP;
}

int on_dump_intr(nl_msg*, void* arg) {
    static_cast<Pending*>(arg)->interrupted = true;
    return NL_OK;
}

int on_error(sockaddr_nl*, nlmsgerr* e, void* arg) {
    auto& p = *static_cast<Pending*>(arg);
    p.error = -e->error;
    const auto* h =
        reinterpret_cast<const nlmsghdr*>(reinterpret_cast<const char*>(e) - kNlmsgHdrLen);
    std::size_t offset = sizeof(nlmsgerr);
    if (!(h->nlmsg_flags & NLM_F_CAPPED) && e->msg.nlmsg_len >= kNlmsgHdrLen)
        offset += e->msg.nlmsg_len - kNlmsgHdrLen;
    p.extack = extack_message(h, offset);
    p.done = true;
    return NL_STOP;
}

int accept_any_seq(nl_msg*, void*) {
    return NL_OK;
}

NlCb alloc_cb() {
    NlCb cb(nl_cb_alloc(NL_CB_DEFAULT));
    if (!cb) throw Error(ENOMEM, "nl_cb_alloc");
    return cb;
}

[[noreturn]] void throw_nl(int nl_error, const std::string& what) {
    throw Error(errno_of_nl_error(nl_error), what + " (libnl: " + nl_geterror(nl_error) + ")");
}

std::string not_permitted(const std::string& what) {
    return what + " was refused: dirtyring-stat needs CAP_NET_ADMIN (run it as root)";
}

NlSock connect_genl() {
    NlSock sock(nl_socket_alloc());
    if (!sock) throw Error(ENOMEM, "nl_socket_alloc");
    if (const int err = genl_connect(sock.get()); err < 0)
        throw_nl(err, "connect a generic netlink socket");
    // Error messages from the kernel's extack (best effort: a kernel without
    // it still sends the errno).
    const int on = 1;
    ::setsockopt(nl_socket_get_fd(sock.get()), SOL_NETLINK, NETLINK_EXT_ACK, &on, sizeof(on));
    ::setsockopt(nl_socket_get_fd(sock.get()), SOL_NETLINK, NETLINK_CAP_ACK, &on, sizeof(on));
    return sock;
}

const std::string kNotRegistered =
    "the dirtyring netlink family is not registered: is the module loaded?";

}  // namespace

NlMsg alloc_msg() {
    NlMsg msg(nlmsg_alloc());
    if (!msg) throw Error(ENOMEM, "nlmsg_alloc");
    return msg;
}

FamilyError::FamilyError(Reason reason, int errnum, const std::string& message)
    : Error(errnum, message), reason_(reason), message_(message) {}

int errno_of_nl_error(int nl_error) noexcept {
    switch (nl_error < 0 ? -nl_error : nl_error) {
        case NLE_INTR:
            return EINTR;
        case NLE_BAD_SOCK:
            return EBADF;
        case NLE_AGAIN:
            return EAGAIN;
        case NLE_NOMEM:
            return ENOMEM;
        case NLE_EXIST:
            return EEXIST;
        case NLE_INVAL:
            return EINVAL;
        case NLE_RANGE:
            return ERANGE;
        case NLE_MSGSIZE:
            return EMSGSIZE;
        case NLE_OPNOTSUPP:
            return EOPNOTSUPP;
        case NLE_AF_NOSUPPORT:
            return EAFNOSUPPORT;
        case NLE_OBJ_NOTFOUND:
            return ENOENT;
        case NLE_NOADDR:
            return EADDRNOTAVAIL;
        case NLE_BUSY:
            return EBUSY;
        case NLE_NOACCESS:
            return EACCES;
        case NLE_PERM:
            return EPERM;
        case NLE_NODEV:
            return ENODEV;
        default:
            return EPROTO;
    }
}

void check_family_version(std::uint8_t version) {
    if (version == kFamilyVersion) return;
    throw FamilyError(
        FamilyError::Reason::Version, EPROTONOSUPPORT,
        "the dirtyring netlink family has version " + std::to_string(version) +
            ", this dirtyring-stat speaks version " + std::to_string(kFamilyVersion) + ": " +
            (version > kFamilyVersion ? "the module is newer, use its dirtyring-stat"
                                      : "the module is older, load the matching module"));
}

// --- decoding -------------------------------------------------------------------

Histogram decode_histogram(const nlattr* attr, const std::string& where) {
    const int len = nla_len(attr);
    if (len != static_cast<int>(sizeof(Histogram)))
        malformed(where, "a histogram of " + std::to_string(len) + " bytes, " +
                             std::to_string(sizeof(Histogram)) + " (" +
                             std::to_string(kHistBuckets) + " u64 counts) expected");
    Histogram h{};
    std::memcpy(h.data(), nla_data(attr), sizeof(h));
    return h;
}

Ring decode_ring(nlattr* nest, const std::string& where) {
    const auto a = nested_attrs(nest, kRing, where);
    Ring r;
    r.entries = a.u32(DIRTYRING_A_RING_ENTRIES);
    r.soft_limit = a.u32(DIRTYRING_A_RING_SOFT_LIMIT);
    r.used = a.u32(DIRTYRING_A_RING_USED);
    r.pushed = a.u64(DIRTYRING_A_RING_PUSHED);
    r.soft_full = a.u64(DIRTYRING_A_RING_SOFT_FULL);
    r.overflows = a.u64(DIRTYRING_A_RING_OVERFLOWS);
    r.waits = a.u64(DIRTYRING_A_RING_WAITS);
    r.wait_ns = a.u64(DIRTYRING_A_RING_WAIT_NS);
    r.wait_hist = a.histogram(DIRTYRING_A_RING_WAIT_HIST);
    return r;
}

Vm decode_vm(nlmsghdr* msg) {
    const auto a = message_attrs(msg, kTop, DIRTYRING_CMD_VM_GET, "VM_GET reply");
    Vm vm;
    vm.id = a.u32(DIRTYRING_A_VM_ID);
    const std::string where = "VM_GET reply of VM " + std::to_string(vm.id);
    vm.owner_pid = a.u32(DIRTYRING_A_VM_OWNER_PID);
    vm.owner_comm = a.string(DIRTYRING_A_VM_OWNER_COMM);
    if (nlattr* ring = a.find(DIRTYRING_A_VM_RING))
        vm.vm_ring = decode_ring(ring, where + ", VM ring");
    auto* gh = static_cast<genlmsghdr*>(nlmsg_data(msg));
    for_each_attr(genlmsg_attrdata(gh, 0), genlmsg_attrlen(gh, 0), DIRTYRING_A_VM_SLOT,
                  [&](nlattr* s) { vm.slots.push_back(decode_slot(s, where + ", slot")); });
    return vm;
}

Vcpu decode_vcpu(nlmsghdr* msg) {
    const auto top = message_attrs(msg, kTop, DIRTYRING_CMD_VCPU_GET, "VCPU_GET reply");
    Vcpu v;
    v.vm_id = top.u32(DIRTYRING_A_VM_ID);
    const auto a = nested_attrs(top.require(DIRTYRING_A_VM_VCPU), kVcpu,
                                "VCPU_GET reply of VM " + std::to_string(v.vm_id) + ", vCPU");
    v.id = a.u32(DIRTYRING_A_VCPU_ID);
    const std::string where = a.where() + " " + std::to_string(v.id);
    v.bound_tid = optional_u32(a.find(DIRTYRING_A_VCPU_BOUND_TID));
    v.ring = decode_ring(a.require(DIRTYRING_A_VCPU_RING), where + ", ring");
    v.faults = a.u64(DIRTYRING_A_VCPU_FAULTS);
    v.fault_ns = a.u64(DIRTYRING_A_VCPU_FAULT_NS);
    v.fault_hist = a.histogram(DIRTYRING_A_VCPU_FAULT_HIST);
    return v;
}

std::optional<Event> decode_event(nlmsghdr* msg) {
    const auto a = message_attrs(msg, kTop, std::nullopt, "event");
    const auto cmd = static_cast<genlmsghdr*>(nlmsg_data(msg))->cmd;
    Event e;
    switch (cmd) {
        case DIRTYRING_CMD_VM_CREATED_NTF:
            e.kind = Event::Kind::VmCreated;
            break;
        case DIRTYRING_CMD_VM_DESTROYED_NTF:
            e.kind = Event::Kind::VmDestroyed;
            break;
        case DIRTYRING_CMD_WAIT_BEGIN_NTF:
            e.kind = Event::Kind::WaitBegin;
            break;
        case DIRTYRING_CMD_WAIT_END_NTF:
            e.kind = Event::Kind::WaitEnd;
            break;
        case DIRTYRING_CMD_RESET_NTF:
            e.kind = Event::Kind::Reset;
            break;
        case DIRTYRING_CMD_SOFT_FULL_NTF:
            e.kind = Event::Kind::SoftFull;
            break;
        case DIRTYRING_CMD_OVERFLOW_NTF:
            e.kind = Event::Kind::Overflow;
            break;
        default:
            return std::nullopt;  // newer than this tool
    }
    e.vm_id = a.u32(DIRTYRING_A_VM_ID);
    switch (e.kind) {
        case Event::Kind::VmCreated:
            e.owner_pid = a.u32(DIRTYRING_A_VM_OWNER_PID);
            e.owner_comm = a.string(DIRTYRING_A_VM_OWNER_COMM);
            break;
        case Event::Kind::WaitBegin:
            e.vcpu = optional_u32(a.find(DIRTYRING_A_EV_VCPU));
            break;
        case Event::Kind::WaitEnd:
            e.vcpu = optional_u32(a.find(DIRTYRING_A_EV_VCPU));
            e.ns = a.u64(DIRTYRING_A_EV_NS);
            break;
        case Event::Kind::SoftFull:
        case Event::Kind::Overflow:
            e.vcpu = optional_u32(a.find(DIRTYRING_A_EV_VCPU));
            e.count = a.u64(DIRTYRING_A_EV_COUNT);
            break;
        case Event::Kind::Reset:
            e.entries = a.u64(DIRTYRING_A_EV_ENTRIES);
            e.relogged = a.u64(DIRTYRING_A_EV_RELOGGED);
            e.ns = a.u64(DIRTYRING_A_EV_NS);
            e.soft_full = a.u64(DIRTYRING_A_EV_SOFT_FULL);
            e.overflows = a.u64(DIRTYRING_A_EV_OVERFLOWS);
            break;
        default:
            break;
    }
    return e;
}

// --- the family -------------------------------------------------------------------

Netlink::Netlink() : sock_(connect_genl()) {
    family_ = genl_ctrl_resolve(sock_.get(), kFamilyName);
    if (family_ == -NLE_OBJ_NOTFOUND)
        throw FamilyError(FamilyError::Reason::NotRegistered, ENOENT, kNotRegistered);
    if (family_ < 0) throw_nl(family_, "resolve the generic netlink family dirtyring");
    // The family's version: the controller's cache of every family.
    nl_cache* raw = nullptr;
    if (const int err = genl_ctrl_alloc_cache(sock_.get(), &raw); err < 0)
        throw_nl(err, "read the generic netlink families");
    const NlCache cache(raw);
    const GenlFamily family(genl_ctrl_search_by_name(cache.get(), kFamilyName));
    if (!family) throw FamilyError(FamilyError::Reason::NotRegistered, ENOENT, kNotRegistered);
    version_ = genl_family_get_version(family.get());
    check_family_version(version_);
}

bool Netlink::request(std::uint8_t cmd, bool dump, std::optional<std::uint32_t> vm_id,
                      const std::string& what, const std::function<void(nlmsghdr*)>& on_reply) {
    NlMsg msg = alloc_msg();
    if (!genlmsg_put(msg.get(), NL_AUTO_PORT, NL_AUTO_SEQ, family_, 0, dump ? NLM_F_DUMP : 0, cmd,
                     kFamilyVersion))
        throw Error(EMSGSIZE, what + ": genlmsg_put");
    if (vm_id)
        if (const int err = nla_put_u32(msg.get(), DIRTYRING_A_VM_ID, *vm_id); err < 0)
            throw_nl(err, what + ": nla_put_u32");
    const NlCb cb = alloc_cb();
    Pending p;
    p.on_reply = &on_reply;
    nl_cb_set(cb.get(), NL_CB_VALID, NL_CB_CUSTOM, on_valid, &p);
    nl_cb_set(cb.get(), NL_CB_FINISH, NL_CB_CUSTOM, on_finish, &p);
    nl_cb_set(cb.get(), NL_CB_ACK, NL_CB_CUSTOM, on_ack, &p);
    nl_cb_set(cb.get(), NL_CB_DUMP_INTR, NL_CB_CUSTOM, on_dump_intr, &p);
    nl_cb_err(cb.get(), NL_CB_CUSTOM, on_error, &p);
    if (const int err = nl_send_auto(sock_.get(), msg.get()); err < 0)
        throw_nl(err, what + ": send");
    while (!p.done) {
        const int err = nl_recvmsgs(sock_.get(), cb.get());
        if (!p.done && err < 0) throw_nl(err, what + ": receive");
    }
    if (p.failure) std::rethrow_exception(p.failure);
    if (p.error == EPERM)
        throw FamilyError(FamilyError::Reason::NotPermitted, EPERM, not_permitted(what));
    // Without a VM id, ENOENT is an unknown family id: the module went away
    // since we resolved it.
    if (p.error == ENOENT && !vm_id)
        throw FamilyError(FamilyError::Reason::NotRegistered, ENOENT, kNotRegistered);
    if (p.error) throw Error(p.error, what + (p.extack.empty() ? "" : " (" + p.extack + ")"));
    return !p.interrupted;
}

template <typename T>
std::vector<T> Netlink::collect(std::uint8_t cmd, bool dump, std::optional<std::uint32_t> vm_id,
                                const std::string& what, T (*decode)(nlmsghdr*)) {
    // A dump the module marked inconsistent (VMs came or went meanwhile) is
    // read again; a few in a row are a failure rather than a hang.
    constexpr int kAttempts = 4;
    for (int attempt = 1;; ++attempt) {
        std::vector<T> out;
        try {
            if (request(cmd, dump, vm_id, what, [&](nlmsghdr* msg) { out.push_back(decode(msg)); }))
                return out;
        } catch (const FamilyError&) {
            throw;
        } catch (const Error& e) {
            if (vm_id && e.errnum() == ENOENT) return {};  // no such VM
            throw;
        }
        if (attempt == kAttempts)
            throw Error(EAGAIN, what + ": VMs kept changing during " + std::to_string(kAttempts) +
                                    " dumps in a row");
    }
}

std::vector<Vm> Netlink::vms(std::optional<std::uint32_t> id) {
    return collect<Vm>(DIRTYRING_CMD_VM_GET, !id, id,
                       id ? "VM_GET of VM " + std::to_string(*id) : "VM_GET dump", decode_vm);
}

std::vector<Vcpu> Netlink::vcpus(std::optional<std::uint32_t> vm_id) {
    return collect<Vcpu>(DIRTYRING_CMD_VCPU_GET, true, vm_id,
                         vm_id ? "VCPU_GET dump of VM " + std::to_string(*vm_id) : "VCPU_GET dump",
                         decode_vcpu);
}

EventSubscription Netlink::subscribe() const {
    NlSock sock = connect_genl();
    const int group = genl_ctrl_resolve_grp(sock.get(), kFamilyName, kEventsGroup);
    if (group == -NLE_OBJ_NOTFOUND)
        throw FamilyError(FamilyError::Reason::NotRegistered, ENOENT,
                          "the dirtyring netlink family has no \"events\" group: is the module "
                          "loaded?");
    if (group < 0) throw_nl(group, "resolve the dirtyring events group");
    // Room for bursts; a reader that falls behind still gets Event::Kind::Lost.
    nl_socket_set_buffer_size(sock.get(), 1 << 20, 0);
    if (const int err = nl_socket_add_membership(sock.get(), group); err < 0) {
        if (err == -NLE_PERM)
            throw FamilyError(FamilyError::Reason::NotPermitted, EPERM,
                              not_permitted("joining the dirtyring events group"));
        throw_nl(err, "join the dirtyring events group");
    }
    nl_socket_disable_seq_check(sock.get());
    if (const int err = nl_socket_set_nonblocking(sock.get()); err < 0)
        throw_nl(err, "make the events socket non-blocking");
    return EventSubscription(std::move(sock));
}

int EventSubscription::fd() const noexcept {
    return nl_socket_get_fd(sock_.get());
}

namespace {

struct Reading {
    const std::function<void(const Event&)>* sink = nullptr;
    std::exception_ptr failure;
};

int on_event(nl_msg* msg, void* arg) {
    auto& r = *static_cast<Reading*>(arg);
    try {
        if (const auto e = decode_event(nlmsg_hdr(msg))) (*r.sink)(*e);
        return NL_OK;
    } catch (...) {
        r.failure = std::current_exception();
        return NL_STOP;
    }
}

}  // namespace

void EventSubscription::read(const std::function<void(const Event&)>& sink) {
    const NlCb cb = alloc_cb();
    Reading r;
    r.sink = &sink;
    nl_cb_set(cb.get(), NL_CB_VALID, NL_CB_CUSTOM, on_event, &r);
    nl_cb_set(cb.get(), NL_CB_SEQ_CHECK, NL_CB_CUSTOM, accept_any_seq, nullptr);
    for (;;) {
        errno = 0;
        const int err = nl_recvmsgs(sock_.get(), cb.get());
        if (r.failure) std::rethrow_exception(r.failure);
        if (err == -NLE_AGAIN || err == 0) return;
        // recvmsg's ENOBUFS, which libnl reports as NLE_NOMEM: the kernel
        // dropped events for us.
        if (err == -NLE_NOMEM && errno == ENOBUFS) {
            Event lost;
            lost.kind = Event::Kind::Lost;
            sink(lost);
            continue;
        }
        if (err < 0) throw_nl(err, "read dirtyring events");
    }
}

}  // namespace dirtyring::stat
