/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * dirtyring: dirty-page rings for live migration.
 *
 * This header is the only contract between the dirtyring module and user
 * space.  Every structure carries a flags or reserved word that must be zero,
 * so that the ABI can grow; the API version answers what this header knows.
 *
 * Model: /dev/dirtyring creates VMs.  A VM has memory slots, served by the
 * module's mmap of the VM fd, and vCPUs.  After each reset, the first write
 * to a page logs (slot, page offset) into a ring: the ring of the vCPU the
 * writing thread is bound to, or the per-VM ring for every other writer.
 * Ring entries and the harvest protocol are KVM's dirty ring's.
 */
#ifndef _UAPI_LINUX_DIRTYRING_H
#define _UAPI_LINUX_DIRTYRING_H

#include <linux/const.h>
#include <linux/ioctl.h>
#include <linux/types.h>

/*
 * Bumped on every incompatible change of this header.  Compatible additions
 * are discovered with DIRTYRING_CHECK_EXTENSION instead.
 */
#define DIRTYRING_API_VERSION 2

/* 0xDC is unused in Documentation/userspace-api/ioctl/ioctl-number.rst. */
#define DIRTYRING_IOCTL_TYPE 0xDC

/*
 * Limits.  Past them the ioctl fails with the errno given here; the module
 * answers each through DIRTYRING_CHECK_EXTENSION, which is authoritative.
 *  - VMs per process (per address space: the creator's mm, which a VM
 *    keeps; EMFILE) and in the system (ENOSPC);
 *  - vCPU ids are 0..DIRTYRING_MAX_VCPUS-1 (EINVAL);
 *  - slot ids are 0..DIRTYRING_MAX_SLOTS-1 (EINVAL), each at most
 *    DIRTYRING_MAX_SLOT_SIZE bytes: DIRTYRING_MAX_SLOT_PAGES pages of 4 KiB
 *    (EINVAL); npages counts pages of DIRTYRING_CAP_PAGE_SIZE bytes;
 *  - guest memory of all VMs together is capped by the module parameter
 *    max_pinned_mb, half of RAM by default (ENOSPC); a slot the kernel
 *    cannot allocate gets ENOMEM;
 *  - ring sizes are powers of two in [MIN, MAX] entries (EINVAL).
 * Every limit is reachable: a slot's bookkeeping fits the kernel's
 * allocators, and every slot's mmap offset fits a 32-bit mmap2().
 */
#define DIRTYRING_MAX_VMS_PER_PROCESS	16
#define DIRTYRING_MAX_VMS		256
#define DIRTYRING_MAX_VCPUS		64
#define DIRTYRING_MAX_SLOTS		32
#define DIRTYRING_MAX_SLOT_SIZE		_BITULL(38)	/* 256 GiB */
#define DIRTYRING_MAX_SLOT_PAGES	_BITULL(26)	/* of 4 KiB */
#define DIRTYRING_RING_MIN_ENTRIES	128
#define DIRTYRING_RING_MAX_ENTRIES	65536		/* as KVM's */
/*
 * Entries a ring keeps between its soft limit and its size: writes made
 * after a ring passes its soft limit and before its writer waits land there.
 */
#define DIRTYRING_RING_RESERVED_ENTRIES	64

/*
 * One ring entry, laid out exactly as KVM's struct kvm_dirty_gfn, with the
 * same protocol: the producer fills slot and offset, then stores
 * flags = DIRTY with release; the consumer loads flags with acquire, reads
 * slot and offset, and stores flags = DIRTY | RESET with release; the reset
 * ioctl re-protects the pages of RESET entries and stores flags = 0.
 * offset is the page index within the slot.
 */
struct dirtyring_gfn {
	__u32 flags;
	__u32 slot;
	__u64 offset;
};

#define DIRTYRING_GFN_F_DIRTY	_BITUL(0)
#define DIRTYRING_GFN_F_RESET	_BITUL(1)
#define DIRTYRING_GFN_F_MASK	0x3U

/*
 * Where mmap of the VM fd finds a slot's memory and the per-VM ring.  Slot
 * windows are DIRTYRING_MAX_SLOT_SIZE apart and end below 2^44 bytes.
 */
#define DIRTYRING_VM_RING_MMAP_OFFSET	0ULL
#define DIRTYRING_SLOT_MMAP_OFFSET(slot)	(((__u64)(slot) + 1) << 38)
/* mmap of a vCPU fd at offset 0 is its ring. */
#define DIRTYRING_VCPU_RING_MMAP_OFFSET	0ULL

/* DIRTYRING_ADD_SLOT: guest memory of npages pages, zero-filled. */
struct dirtyring_slot {
	__u32 slot;
	__u32 flags;		/* none defined: must be 0 */
	__u64 npages;
	__u64 reserved[2];	/* must be 0 */
};

/* DIRTYRING_ENABLE_RINGS: ring sizes, in entries. */
struct dirtyring_rings {
	__u32 vcpu_ring_entries;
	__u32 vm_ring_entries;
	__u32 flags;		/* none defined: must be 0 */
	__u32 reserved;		/* must be 0 */
};

/* DIRTYRING_GET_RING_STATUS: a vCPU's ring (vCPU fd) or the VM ring (VM fd). */
struct dirtyring_ring_status {
	__u32 entries;		/* ring size */
	__u32 soft_limit;	/* entries - DIRTYRING_RING_RESERVED_ENTRIES */
	__u32 used;		/* entries pushed and not reset yet */
	__u32 flags;		/* DIRTYRING_RING_F_* */
	__u64 pushed;		/* entries pushed since the ring was created */
	__u64 soft_full_events;	/* times the ring reached its soft limit */
	__u64 waits;		/* writer waits for room */
	__u64 wait_ns;		/* total time writers waited for room */
	__u64 overflows;	/* pages that found this ring full (see below) */
	__u64 reserved[3];	/* 0 */
};

#define DIRTYRING_RING_F_SOFT_FULL	_BITUL(0)
#define DIRTYRING_RING_F_BOUND		_BITUL(1)	/* vCPU: a thread is bound */

/*
 * A page whose writer finds its ring completely full (the reserve used up,
 * which a writer that waits at its soft limit does not reach) is not lost:
 * the module parks it ("overflow") and the next reset pushes it to the
 * per-VM ring (struct dirtyring_reset says how many).  poll() reports it as
 * harvestable meanwhile.
 *
 * Who waits.  A thread of the VM's creating process (its mm) whose write
 * takes its ring to the soft limit waits, holding no lock, on its way back
 * to user mode (or into a KVM guest), until a reset frees entries of that
 * ring, the VM fd is closed, its vCPU fd is closed, or a signal arrives;
 * the write itself is already logged (a store retried after the wait logs
 * again if the reset re-armed its page meanwhile).
 * Every other writer never waits: kernel threads, io_uring workers, and
 * other processes (process_vm_writev, ptrace, /proc/PID/mem) use the
 * reserve, then park their pages as overflow.
 *
 * Pages held across a reset.  A writer that holds a reference to a page
 * (a GUP pin taken before the reset: O_DIRECT I/O in flight,
 * process_vm_writev mid-copy, KVM's kvm_vcpu_map) writes without faulting.
 * So a page still referenced beyond its mappings when a reset re-arms it
 * is not re-armed: the same reset logs it again into the per-VM ring (or
 * parks it), and the next harvest returns it again.  A page pinned for a
 * long time is logged in every cycle while the pin lasts.
 */

/* On /dev/dirtyring. */
/*
 * Returns DIRTYRING_API_VERSION as the ioctl's return value (as
 * KVM_GET_API_VERSION does); the argument must be 0.
 */
#define DIRTYRING_GET_API_VERSION	_IO(DIRTYRING_IOCTL_TYPE, 0x00)
/* Returns a new VM fd; the argument must be 0. */
#define DIRTYRING_CREATE_VM		_IO(DIRTYRING_IOCTL_TYPE, 0x01)
/*
 * On /dev/dirtyring and on a VM fd: the argument is a DIRTYRING_CAP_*;
 * returns its value, 0 for a capability this module does not know.
 */
#define DIRTYRING_CHECK_EXTENSION	_IO(DIRTYRING_IOCTL_TYPE, 0x02)

/* Limits, as above (values). */
#define DIRTYRING_CAP_MAX_VCPUS			1
#define DIRTYRING_CAP_MAX_SLOTS			2
#define DIRTYRING_CAP_MAX_SLOT_PAGES		3	/* of CAP_PAGE_SIZE */
#define DIRTYRING_CAP_PAGE_SIZE			4	/* tracking granule, bytes */
#define DIRTYRING_CAP_RING_MIN_ENTRIES		5
#define DIRTYRING_CAP_RING_MAX_ENTRIES		6
#define DIRTYRING_CAP_RING_RESERVED_ENTRIES	7
#define DIRTYRING_CAP_MAX_VMS			8
#define DIRTYRING_CAP_MAX_VMS_PER_PROCESS	9
#define DIRTYRING_CAP_MAX_PINNED_PAGES		10	/* max_pinned_mb, in pages */
/* Features (1 when present). */
#define DIRTYRING_CAP_RESET_STATUS		11	/* struct dirtyring_reset */
#define DIRTYRING_CAP_VCPU_REOPEN		12	/* a closed vCPU id is free */
#define DIRTYRING_CAP_PINNED_RELOG		13	/* held pages logged again */

/*
 * On a VM fd.  Order: ENABLE_RINGS once (EBUSY the second time), before
 * CREATE_VCPU, RESET_RINGS, GET_RING_STATUS and mmap of anything (EINVAL
 * otherwise); ADD_SLOT at any time, each slot id once (EEXIST).
 */
#define DIRTYRING_ADD_SLOT	_IOW(DIRTYRING_IOCTL_TYPE, 0x10, struct dirtyring_slot)
#define DIRTYRING_ENABLE_RINGS	_IOW(DIRTYRING_IOCTL_TYPE, 0x11, struct dirtyring_rings)
/* The argument is the vCPU id; returns a vCPU fd (EEXIST for an id in use). */
#define DIRTYRING_CREATE_VCPU	_IO(DIRTYRING_IOCTL_TYPE, 0x12)
/*
 * DIRTYRING_RESET_RINGS, in ring order for each ring: re-protects the pages
 * of the entries marked RESET, from the ring's reset index up to the first
 * entry that is not marked, frees them and wakes the writers waiting for
 * room; then moves parked pages into the per-VM ring while it is below its
 * soft limit, and logs again the pages that were still held (see above).
 *
 * Returns 0 once every entry that was marked RESET when the call began is
 * reset (a harvester marks in ring order, from its fetch index; a mark past
 * an unmarked entry waits for a later reset): only then may the harvester
 * read those pages for migration.  A
 * signal stops it early with -EINTR (restarted transparently under
 * SA_RESTART): the entries reset until then stay reset, the others keep
 * their marks, and calling again finishes the work.  The work of one call
 * is bounded by the ring sizes, whatever user space writes into the rings.
 *
 * overflow_pushed > 0 says parked pages were moved into the per-VM ring:
 * the harvester harvests and resets again for a harvest that is complete
 * (after the writers stopped, every page they dirtied).
 */
struct dirtyring_reset {
	__u32 flags;		/* in: none defined, must be 0 */
	__u32 reserved;		/* in: must be 0 */
	__u64 entries;		/* out: entries reset by this call */
	__u64 overflow_pushed;	/* out: parked pages moved into the VM ring */
	__u64 overflow_pending;	/* out: parked pages still waiting for room */
	__u64 relogged;		/* out: held pages logged again */
	__u64 reserved2[3];	/* out: 0 */
};

#define DIRTYRING_RESET_RINGS \
	_IOWR(DIRTYRING_IOCTL_TYPE, 0x13, struct dirtyring_reset)
#define DIRTYRING_GET_RING_STATUS \
	_IOR(DIRTYRING_IOCTL_TYPE, 0x14, struct dirtyring_ring_status)

/*
 * On a vCPU fd.  BIND makes the calling thread's writes log to this vCPU's
 * ring (EALREADY if it is bound to this vCPU already, EBUSY if the vCPU has
 * another thread or the thread another vCPU of this VM); UNBIND ends it,
 * from any thread (EINVAL if not bound).  Argument 0.  A binding also ends
 * when its thread exits.
 *
 * Closing a vCPU (its last fd and ring mapping gone) ends its binding,
 * wakes its waiting writer, and parks the pages of its entries that were
 * not reset yet: the next reset moves them into the per-VM ring, so none
 * is lost (a page whose entry was marked may come back once more).  Its id
 * can then be created again, with an empty ring.
 */
#define DIRTYRING_BIND		_IO(DIRTYRING_IOCTL_TYPE, 0x20)
#define DIRTYRING_UNBIND	_IO(DIRTYRING_IOCTL_TYPE, 0x21)
/* DIRTYRING_GET_RING_STATUS works on a vCPU fd too. */

/*
 * poll() on a VM fd: EPOLLIN while any ring holds entries not reset yet (or
 * pages wait for room as above), EPOLLPRI while any ring is past its soft
 * limit or pages are parked.
 *
 * Mappings.  Rings and slots are mapped MAP_SHARED only (EINVAL otherwise),
 * rings without PROT_EXEC (EINVAL).  MADV_DONTNEED on a ring mapping or on
 * slot memory drops only the mapping: the pages and their contents stay,
 * and the next access maps them again.
 */

/*
 * Generic netlink family DIRTYRING_GENL_NAME, version DIRTYRING_GENL_VERSION:
 * statistics of every VM of the system and events, for operators
 * (dirtyring-stat).  Every operation and the events group need
 * CAP_NET_ADMIN; requests are strictly validated.  The family is described
 * by Documentation/netlink/specs/dirtyring.yaml (this repository).
 *
 * DIRTYRING_CMD_VM_GET: with DIRTYRING_A_VM_ID, that VM (ENOENT if none);
 * as a dump, every VM, in id order, resumable across messages.  A VM's id
 * is stable for its life and not reused soon after (cyclic); its fd's
 * /proc/PID/fdinfo shows the same id.
 * DIRTYRING_CMD_VCPU_GET: a dump, one message per vCPU (VM_ID and one
 * VM_VCPU nest), of the VM given by DIRTYRING_A_VM_ID or of every VM.
 *
 * Events.  A wait's begin and end are sent by the waiting thread itself.
 * Soft-limit crossings and overflows can happen once per page: they are
 * coalesced per ring and sent at most once per DIRTYRING_GENL_EVENT_MS
 * milliseconds each, EV_COUNT saying how many they stand for.  A reset's
 * event repeats them as the totals since the previous reset event.  Events
 * are sent only while the events group has listeners.
 *
 * Histograms (binary attributes): DIRTYRING_HIST_BUCKETS __u64 counts;
 * bucket b counts durations in [2^b, 2^(b+1)) ns, bucket 0 also 0 ns, the
 * last also everything longer.
 */
#define DIRTYRING_GENL_NAME		"dirtyring"
#define DIRTYRING_GENL_VERSION		1
#define DIRTYRING_GENL_MCGRP_EVENTS	"events"
#define DIRTYRING_GENL_EVENT_MS		100

enum {
	DIRTYRING_CMD_UNSPEC,
	DIRTYRING_CMD_VM_GET,		/* do and dump; reply: VM_GET */
	DIRTYRING_CMD_VCPU_GET,		/* dump; reply: VCPU_GET */
	/* notifications, on the events group */
	DIRTYRING_CMD_VM_CREATED_NTF,	/* VM_ID, VM_OWNER_PID (creator's pid
					 * namespace), VM_OWNER_COMM
					 */
	DIRTYRING_CMD_VM_DESTROYED_NTF,	/* VM_ID */
	DIRTYRING_CMD_WAIT_END_NTF,	/* VM_ID, EV_VCPU (absent: VM ring), EV_NS */
	DIRTYRING_CMD_RESET_NTF,	/* VM_ID, EV_ENTRIES, EV_RELOGGED, EV_NS,
					 * EV_SOFT_FULL, EV_OVERFLOWS: what the
					 * rings saw since the last reset
					 */
	DIRTYRING_CMD_WAIT_BEGIN_NTF,	/* VM_ID, EV_VCPU (absent: VM ring) */
	DIRTYRING_CMD_SOFT_FULL_NTF,	/* VM_ID, EV_VCPU, EV_COUNT: crossings */
	DIRTYRING_CMD_OVERFLOW_NTF,	/* VM_ID, EV_VCPU, EV_COUNT: pages parked */
	__DIRTYRING_CMD_MAX,
};

#define DIRTYRING_CMD_MAX (__DIRTYRING_CMD_MAX - 1)

/* Top-level attributes. */
enum {
	DIRTYRING_A_UNSPEC,
	DIRTYRING_A_VM_ID,		/* u32 */
	DIRTYRING_A_VM_OWNER_PID,	/* u32: creator's tgid, in the caller's pid ns */
	DIRTYRING_A_VM_OWNER_COMM,	/* string */
	DIRTYRING_A_VM_SLOT,		/* nest DIRTYRING_A_SLOT_*, one per slot */
	DIRTYRING_A_VM_VCPU,		/* nest DIRTYRING_A_VCPU_*, one per vCPU */
	DIRTYRING_A_VM_RING,		/* nest DIRTYRING_A_RING_*: the VM ring */
	DIRTYRING_A_EV_VCPU,		/* u32 */
	DIRTYRING_A_EV_NS,		/* u64: a wait's or a reset's duration */
	DIRTYRING_A_EV_ENTRIES,		/* u64 */
	DIRTYRING_A_EV_RELOGGED,	/* u64 */
	DIRTYRING_A_EV_SOFT_FULL,	/* u64: soft-limit crossings coalesced */
	DIRTYRING_A_EV_OVERFLOWS,	/* u64: parked pages coalesced */
	DIRTYRING_A_PAD,
	DIRTYRING_A_EV_COUNT,		/* u64: the occurrences one event stands for */
	__DIRTYRING_A_MAX,
};

#define DIRTYRING_A_MAX (__DIRTYRING_A_MAX - 1)

enum {
	DIRTYRING_A_SLOT_UNSPEC,
	DIRTYRING_A_SLOT_ID,		/* u32 */
	DIRTYRING_A_SLOT_PAGES,		/* u64 */
	DIRTYRING_A_SLOT_PAD,
	DIRTYRING_A_SLOT_RESIDENT,	/* u64: pages in memory */
	DIRTYRING_A_SLOT_PARKED,	/* u64: pages parked as overflow now */
	__DIRTYRING_A_SLOT_MAX,
};

#define DIRTYRING_A_SLOT_MAX (__DIRTYRING_A_SLOT_MAX - 1)

enum {
	DIRTYRING_A_VCPU_UNSPEC,
	DIRTYRING_A_VCPU_ID,		/* u32 */
	DIRTYRING_A_VCPU_BOUND_TID,	/* u32, absent when no thread is bound */
	DIRTYRING_A_VCPU_RING,		/* nest DIRTYRING_A_RING_* */
	/*
	 * Stall accounting: first-write faults of the threads bound to this
	 * vCPU, and the time they spent in the module's handling of them
	 * (page lock wait included; the ring-full wait is the ring's).
	 * Counted while the module parameter stall_accounting is Y (the
	 * default; writable at any time in /sys/module/dirtyring/parameters).
	 */
	DIRTYRING_A_VCPU_FAULTS,	/* u64, cumulative */
	DIRTYRING_A_VCPU_FAULT_NS,	/* u64, cumulative */
	DIRTYRING_A_VCPU_FAULT_HIST,	/* binary histogram */
	DIRTYRING_A_VCPU_PAD,
	__DIRTYRING_A_VCPU_MAX,
};

#define DIRTYRING_A_VCPU_MAX (__DIRTYRING_A_VCPU_MAX - 1)

/* A ring's counters: those of struct dirtyring_ring_status, and more. */
enum {
	DIRTYRING_A_RING_UNSPEC,
	DIRTYRING_A_RING_ENTRIES,	/* u32 */
	DIRTYRING_A_RING_SOFT_LIMIT,	/* u32 */
	DIRTYRING_A_RING_USED,		/* u32 */
	DIRTYRING_A_RING_PUSHED,	/* u64, cumulative */
	DIRTYRING_A_RING_SOFT_FULL,	/* u64, cumulative */
	DIRTYRING_A_RING_OVERFLOWS,	/* u64, cumulative */
	DIRTYRING_A_RING_WAITS,		/* u64, cumulative */
	DIRTYRING_A_RING_WAIT_NS,	/* u64, cumulative */
	DIRTYRING_A_RING_WAIT_HIST,	/* binary histogram of wait durations */
	DIRTYRING_A_RING_PAD,
	__DIRTYRING_A_RING_MAX,
};

#define DIRTYRING_A_RING_MAX (__DIRTYRING_A_RING_MAX - 1)

#define DIRTYRING_HIST_BUCKETS		32

#endif /* _UAPI_LINUX_DIRTYRING_H */
