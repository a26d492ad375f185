/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dirtyring: objects shared by the module's files, and its locking rules.
 *
 * Locks, outermost first:
 *   dr_vms_lock (dev.c)  the VM ids (an IDR), the per-process and system counts
 *   vm->lock             slot and vCPU creation, ring enabling, bind/unbind
 *   vm->mmu_lock         reset: clearing logged bits, re-protecting pages,
 *                        advancing reset indices, draining overflow pages,
 *                        closing and reopening vCPU rings
 *   page lock            orders one page's logging against its re-protection
 *   ring->lock           (spinlock) a ring's producer side: push
 *   vm->waiters_lock     (spinlock) the list of armed ring-full waits
 *
 * The fault path takes only a page lock and spinlocks, never vm->mmu_lock,
 * and never sleeps while holding any of them: a writer that fills its ring
 * waits later, from task work run on its way back to user mode or into a
 * guest, holding nothing (wait.c).  So a reset never waits for a writer that
 * waits for the reset.
 *
 * The promise: after a reset, a page's next write is logged before the
 * harvester can read the page.  Writers that fault are logged by the fault;
 * a page still referenced beyond its mappings when it is re-armed may be
 * written without a fault, so it is logged again at once (mem.c).
 */
#ifndef _DIRTYRING_INTERNAL_H
#define _DIRTYRING_INTERNAL_H

#include <linux/kref.h>
#include <linux/list.h>
#include <linux/log2.h>
#include <linux/minmax.h>
#include <linux/sched.h>
#include <linux/mm_types.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/dirtyring.h>

struct dr_vm;

/* Largest slot, in pages of this kernel (the uAPI gives it in bytes). */
#define DR_MAX_SLOT_PAGES (DIRTYRING_MAX_SLOT_SIZE >> PAGE_SHIFT)

struct dr_ring {
	spinlock_t lock;		/* producer side: see above */
	struct dirtyring_gfn *entries;	/* vmalloc_user: mmapped by the harvester */
	u32 size;			/* entries, a power of two */
	u32 soft_limit;
	u32 dirty_index;		/* next entry to fill: under lock */
	u32 reset_index;		/* next entry to reset: under vm->mmu_lock */
	bool closed;			/* vCPU closed: set under both locks */
	unsigned long resets;		/* resets that freed entries: mmu_lock */
	wait_queue_head_t wq;		/* writers waiting for room */
	/* statistics: written under lock (waits: atomically) */
	u64 pushed;
	u64 soft_full_events;
	u64 overflows;
	atomic64_t waits;
	atomic64_t wait_ns;
	atomic64_t wait_hist[DIRTYRING_HIST_BUCKETS];
	/* what the last reset event reported: under vm->mmu_lock */
	u64 reported_soft_full, reported_overflows;
	/* what the last coalesced events covered: vm->ev_work's own */
	u64 ev_soft_full, ev_overflows;
};

struct dr_slot {
	struct dr_vm *vm;
	u32 id;
	unsigned long npages;
	struct page **pages;
	unsigned long *logged;		/* page is in a ring (or overflow) this cycle */
	unsigned long *overflow;	/* logged while its ring was full */
	unsigned long *relog;		/* held at re-arm: log again (mmu_lock) */
	unsigned long relog_count;	/* bits set in relog: under mmu_lock */
	atomic_long_t overflow_count;
};

struct dr_vcpu {
	struct dr_vm *vm;
	u32 id;
	bool open;			/* has an fd: under vm->lock */
	/*
	 * The bound thread's pid: written under vm->lock, compared locklessly
	 * with task_pid(current).  A referenced struct pid is never reused, so
	 * a thread that exited simply matches nobody any more.
	 */
	struct pid *bound;
	struct dr_ring ring;
	/*
	 * Stall accounting of the bound threads' first-write faults: written
	 * by the bound thread only, so these atomics stay in its cache (make
	 * bench measured per-CPU counters no cheaper).
	 */
	atomic64_t faults;
	atomic64_t fault_ns;
	atomic64_t fault_hist[DIRTYRING_HIST_BUCKETS];
};

struct dr_vm {
	struct kref ref;	/* VM fd, memory file (held by armed waits), vCPU fds */
	u32 id;			/* in dr_vm_idr (dev.c): netlink, fdinfo */
	struct mm_struct *mm;	/* creator's (mmgrab): per-process cap, waits */
	struct pid *owner;	/* creator's thread group, for statistics */
	char owner_comm[TASK_COMM_LEN];
	struct file *mem_file;	/* backs every mmap of the VM fd: its own inode */
	bool dead;		/* VM fd closed: nobody resets any more */
	bool announced;		/* its creation was sent to netlink listeners */

	struct mutex lock;	/* configuration: see above */
	struct mutex mmu_lock;	/* resets: see above */
	bool rings_enabled;
	u32 vcpu_ring_entries;
	struct dr_ring vm_ring;
	struct dr_slot *slots[DIRTYRING_MAX_SLOTS];	/* published with release */
	struct dr_vcpu *vcpus[DIRTYRING_MAX_VCPUS];	/* published with release */
	unsigned long pinned_pages;

	atomic_long_t overflow_pending;
	wait_queue_head_t poll_wq;

	spinlock_t waiters_lock;	/* protects waiters */
	struct list_head waiters;

	/* coalesced soft-full and overflow events (netlink.c) */
	struct delayed_work ev_work;
	unsigned long ev_sent;	/* jiffies of the last run: ev_work's own */
};

/*
 * Slots and vCPUs are published once, with release, and live as long as the
 * VM: readers that do not hold vm->lock load them with acquire.
 */
static inline struct dr_slot *dr_vm_slot(struct dr_vm *vm, u32 id)
{
	/* Pairs with the release in dr_slot_add(). */
	return smp_load_acquire(&vm->slots[id]);
}

static inline struct dr_vcpu *dr_vm_vcpu(struct dr_vm *vm, u32 id)
{
	/* Pairs with the release in dr_vcpu_create(). */
	return smp_load_acquire(&vm->vcpus[id]);
}

/* dr_ring_push() results */
#define DR_PUSH_FIRST		BIT(0)	/* the ring was empty */
#define DR_PUSH_SOFT_FULL	BIT(1)	/* the ring is at its soft limit */

/*
 * The clock of stall accounting.  DR_NO_STATS (a build of the module for
 * make bench only) compiles the accounting out, to measure what it costs.
 */
#ifdef DR_NO_STATS
#define DR_STATS 0
#else
#define DR_STATS 1
#endif

/* The histogram bucket of a duration (uAPI: log2 of nanoseconds). */
static inline unsigned int dr_hist_bucket(u64 ns)
{
	return ns ? min_t(unsigned int, ilog2(ns), DIRTYRING_HIST_BUCKETS - 1) : 0;
}

/* dev.c */
long dr_check_extension(unsigned long cap);
struct dr_vm *dr_vm_get_by_id(u32 id);
struct dr_vm *dr_vm_get_next(u32 *id);
void dr_pinned_release(unsigned long npages);
int dr_pinned_reserve(unsigned long npages);
int dr_vm_list_add(struct dr_vm *vm);
void dr_vm_unlist(struct dr_vm *vm);
struct file *dr_mem_file_create(struct dr_vm *vm);

/* vm.c */
int dr_vm_create(void);
void dr_vm_get(struct dr_vm *vm);
void dr_vm_put(struct dr_vm *vm);

/* vcpu.c */
int dr_vcpu_create(struct dr_vm *vm, unsigned long id);
void dr_vcpu_free(struct dr_vcpu *vcpu);
bool dr_vcpu_bound_alive(struct dr_vcpu *vcpu);
struct dr_ring *dr_ring_of_current(struct dr_vm *vm);

/* ring.c */
int dr_ring_init(struct dr_ring *ring, u32 entries);
void dr_ring_free(struct dr_ring *ring);
void dr_ring_reopen(struct dr_ring *ring);
void dr_ring_close(struct dr_vm *vm, struct dr_ring *ring);
bool dr_ring_valid_size(u32 entries);
int dr_ring_push(struct dr_ring *ring, u32 slot, u64 offset);
u32 dr_ring_used(struct dr_ring *ring);
bool dr_ring_soft_full(struct dr_ring *ring);
int dr_ring_mmap(struct dr_ring *ring, struct vm_area_struct *vma);
int dr_ring_reset(struct dr_vm *vm, struct dr_ring *ring);
void dr_ring_status(struct dr_ring *ring, struct dirtyring_ring_status *st);

/* mem.c */
int dr_slot_add(struct dr_vm *vm, const struct dirtyring_slot *req);
void dr_slot_free(struct dr_slot *slot);
unsigned long dr_slot_resident(struct dr_slot *slot);
int dr_slot_mmap(struct dr_vm *vm, struct vm_area_struct *vma);
void dr_slot_reprotect(struct dr_slot *slot, unsigned long base,
		       unsigned long mask);
void dr_overflow_park(struct dr_slot *slot, unsigned long index);
unsigned long dr_overflow_drain(struct dr_vm *vm);
unsigned long dr_relog_flush(struct dr_vm *vm);

/* netlink.c */
int dr_netlink_init(void);
void dr_netlink_exit(void);
void dr_netlink_vm_event(struct dr_vm *vm, u8 cmd);
void dr_netlink_wait_event(struct dr_vm *vm, struct dr_ring *ring, u8 cmd,
			   u64 ns);
void dr_netlink_kick(struct dr_vm *vm);
void dr_netlink_ev_work(struct work_struct *work);
struct dr_reset_report {
	bool wanted;		/* someone listens to events */
	u64 soft_full, overflows;
};

void dr_netlink_reset_collect(struct dr_vm *vm, struct dr_reset_report *rep);
void dr_netlink_reset_event(struct dr_vm *vm,
			    const struct dirtyring_reset *reset, u64 ns,
			    const struct dr_reset_report *rep);
void dr_vm_show_fdinfo(struct seq_file *m, struct file *file);

/* wait.c */
void dr_wait_arm(struct dr_vm *vm, struct dr_ring *ring, struct file *file);

#endif /* _DIRTYRING_INTERNAL_H */
