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

/* Bumped on every incompatible change of this header. */
#define DIRTYRING_API_VERSION 1

/* 0xDC is unused in Documentation/userspace-api/ioctl/ioctl-number.rst. */
#define DIRTYRING_IOCTL_TYPE 0xDC

/*
 * Limits.  Past them the ioctl fails with the errno given here.
 *  - VMs per process (EMFILE) and in the system (ENOSPC);
 *  - vCPU ids are 0..DIRTYRING_MAX_VCPUS-1 (EINVAL);
 *  - slot ids are 0..DIRTYRING_MAX_SLOTS-1 (EINVAL), each at most
 *    DIRTYRING_MAX_SLOT_PAGES pages (EINVAL);
 *  - guest memory of all VMs together is capped by the module parameter
 *    max_pinned_mb, half of RAM by default (ENOSPC); a slot the kernel
 *    cannot allocate gets ENOMEM;
 *  - ring sizes are powers of two in [MIN, MAX] entries (EINVAL).
 */
#define DIRTYRING_MAX_VMS_PER_PROCESS	16
#define DIRTYRING_MAX_VMS		256
#define DIRTYRING_MAX_VCPUS		64
#define DIRTYRING_MAX_SLOTS		32
#define DIRTYRING_MAX_SLOT_PAGES	_BITULL(28)	/* 1 TiB of 4 KiB pages */
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

/* Where mmap of the VM fd finds a slot's memory and the per-VM ring. */
#define DIRTYRING_VM_RING_MMAP_OFFSET	0ULL
#define DIRTYRING_SLOT_MMAP_OFFSET(slot)	(((__u64)(slot) + 1) << 40)
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
 * the module remembers it and the next reset pushes it to the per-VM ring.
 * poll() reports it as harvestable meanwhile.
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
 * On a VM fd.  Order: ENABLE_RINGS once (EBUSY the second time), before
 * CREATE_VCPU and before mmap of anything (EINVAL otherwise); ADD_SLOT at
 * any time, each slot id once (EEXIST).
 */
#define DIRTYRING_ADD_SLOT	_IOW(DIRTYRING_IOCTL_TYPE, 0x10, struct dirtyring_slot)
#define DIRTYRING_ENABLE_RINGS	_IOW(DIRTYRING_IOCTL_TYPE, 0x11, struct dirtyring_rings)
/* The argument is the vCPU id; returns a vCPU fd (EEXIST for an id in use). */
#define DIRTYRING_CREATE_VCPU	_IO(DIRTYRING_IOCTL_TYPE, 0x12)
/*
 * Re-protects the pages of every RESET entry of every ring, in ring order up
 * to the first entry that is not RESET, and wakes the writers waiting for
 * room.  The argument must be 0.  Returns the number of entries reset.
 */
#define DIRTYRING_RESET_RINGS	_IO(DIRTYRING_IOCTL_TYPE, 0x13)
#define DIRTYRING_GET_RING_STATUS \
	_IOR(DIRTYRING_IOCTL_TYPE, 0x14, struct dirtyring_ring_status)

/*
 * On a vCPU fd.  BIND makes the calling thread's writes log to this vCPU's
 * ring (EBUSY if the vCPU has a thread or the thread a vCPU of this VM);
 * UNBIND ends it, from any thread (EINVAL if not bound).  Argument 0.
 */
#define DIRTYRING_BIND		_IO(DIRTYRING_IOCTL_TYPE, 0x20)
#define DIRTYRING_UNBIND	_IO(DIRTYRING_IOCTL_TYPE, 0x21)
/* DIRTYRING_GET_RING_STATUS works on a vCPU fd too. */

/*
 * poll() on a VM fd: EPOLLIN while any ring holds entries not reset yet (or
 * pages wait for room as above), EPOLLPRI while any ring is past its soft
 * limit.
 */

#endif /* _UAPI_LINUX_DIRTYRING_H */
