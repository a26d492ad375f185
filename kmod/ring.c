// SPDX-License-Identifier: GPL-2.0
/*
 * dirtyring: one dirty ring, shared with the harvester by mmap.
 *
 * The producer side (push) runs in the fault path under ring->lock, a
 * spinlock; the consumer side (reset, close) runs under vm->mmu_lock.  They
 * meet through dirty_index (written under ring->lock), reset_index (stored
 * with release after the entries it frees were cleared) and each entry's
 * flags (release/acquire, KVM's protocol).
 *
 * A producer publishes an entry's flags before it advances dirty_index, so
 * the harvester can see (and mark) an entry that a lockless reader of
 * dirty_index would not count yet.  The reset therefore reads dirty_index
 * under ring->lock: every entry whose flags were visible before the reset
 * began is below it.
 *
 * Ring memory is charged to the memory cgroup of whoever enables the rings
 * and is mapped by a fault handler, so a mapping whose pages were dropped
 * (MADV_DONTNEED) maps them again, as KVM's rings do.
 */
#include <linux/kvm.h>
#include <linux/mm.h>
#include <linux/sched/signal.h>
#include <linux/vmalloc.h>

#include "internal.h"

/* One harvester serves KVM and this module: the entries must be identical. */
static_assert(sizeof(struct dirtyring_gfn) == sizeof(struct kvm_dirty_gfn));
static_assert(offsetof(struct dirtyring_gfn, flags) ==
	      offsetof(struct kvm_dirty_gfn, flags));
static_assert(offsetof(struct dirtyring_gfn, slot) ==
	      offsetof(struct kvm_dirty_gfn, slot));
static_assert(offsetof(struct dirtyring_gfn, offset) ==
	      offsetof(struct kvm_dirty_gfn, offset));
static_assert(DIRTYRING_GFN_F_DIRTY == KVM_DIRTY_GFN_F_DIRTY);
static_assert(DIRTYRING_GFN_F_RESET == KVM_DIRTY_GFN_F_RESET);

bool dr_ring_valid_size(u32 entries)
{
	return is_power_of_2(entries) &&
	       entries >= DIRTYRING_RING_MIN_ENTRIES &&
	       entries <= DIRTYRING_RING_MAX_ENTRIES;
}

int dr_ring_init(struct dr_ring *ring, u32 entries)
{
	ring->entries = __vmalloc(entries * sizeof(*ring->entries),
				  GFP_KERNEL_ACCOUNT | __GFP_ZERO);
	if (!ring->entries)
		return -ENOMEM;
	spin_lock_init(&ring->lock);
	init_waitqueue_head(&ring->wq);
	ring->size = entries;
	ring->soft_limit = entries - DIRTYRING_RING_RESERVED_ENTRIES;
	ring->dirty_index = 0;
	ring->reset_index = 0;
	ring->closed = false;
	return 0;
}

/*
 * Makes a closed ring new again, for a vCPU id created anew.  Called with
 * vm->mmu_lock held: no reset walks it meanwhile.
 */
void dr_ring_reopen(struct dr_ring *ring)
{
	int i;

	spin_lock(&ring->lock);
	memset(ring->entries, 0, ring->size * sizeof(*ring->entries));
	ring->dirty_index = 0;
	ring->reset_index = 0;
	ring->pushed = 0;
	ring->soft_full_events = 0;
	ring->overflows = 0;
	atomic64_set(&ring->waits, 0);
	atomic64_set(&ring->wait_ns, 0);
	for (i = 0; i < DIRTYRING_HIST_BUCKETS; i++)
		atomic64_set(&ring->wait_hist[i], 0);
	ring->reported_soft_full = 0;
	ring->reported_overflows = 0;
	WRITE_ONCE(ring->closed, false);
	spin_unlock(&ring->lock);
}

void dr_ring_free(struct dr_ring *ring)
{
	vfree(ring->entries);
	ring->entries = NULL;
}

u32 dr_ring_used(struct dr_ring *ring)
{
	u32 dirty = READ_ONCE(ring->dirty_index);

	/* Pairs with the release in dr_ring_reset. */
	return dirty - smp_load_acquire(&ring->reset_index);
}

bool dr_ring_soft_full(struct dr_ring *ring)
{
	return dr_ring_used(ring) >= ring->soft_limit;
}

/*
 * Returns DR_PUSH_* bits when pushed (FIRST: the ring was empty, decided
 * under the lock so that one of two concurrent writers wakes the poller;
 * SOFT_FULL: the ring is now at or past its soft limit), -ENOSPC when the
 * ring is full or closed and nothing was pushed.
 */
int dr_ring_push(struct dr_ring *ring, u32 slot, u64 offset)
{
	struct dirtyring_gfn *entry;
	u32 used;
	int ret;

	spin_lock(&ring->lock);
	/* Pairs with the release in dr_ring_reset: freed entries are clear. */
	used = ring->dirty_index - smp_load_acquire(&ring->reset_index);
	if (used >= ring->size || ring->closed) {
		ring->overflows++;
		spin_unlock(&ring->lock);
		return -ENOSPC;
	}
	entry = &ring->entries[ring->dirty_index & (ring->size - 1)];
	WRITE_ONCE(entry->slot, slot);
	WRITE_ONCE(entry->offset, offset);
	/* The harvester loads flags with acquire: slot/offset are visible. */
	smp_store_release(&entry->flags, DIRTYRING_GFN_F_DIRTY);
	WRITE_ONCE(ring->dirty_index, ring->dirty_index + 1);
	ring->pushed++;
	ret = used ? 0 : DR_PUSH_FIRST;
	if (used + 1 >= ring->soft_limit) {
		if (used + 1 == ring->soft_limit)
			ring->soft_full_events++;
		ret |= DR_PUSH_SOFT_FULL;
	}
	spin_unlock(&ring->lock);
	return ret;
}

static vm_fault_t dr_ring_fault(struct vm_fault *vmf)
{
	struct dr_ring *ring = vmf->vma->vm_private_data;
	unsigned long pages = DIV_ROUND_UP(ring->size * sizeof(*ring->entries),
					   PAGE_SIZE);

	if (vmf->pgoff >= pages)
		return VM_FAULT_SIGBUS;
	vmf->page = vmalloc_to_page((void *)ring->entries +
				    (vmf->pgoff << PAGE_SHIFT));
	get_page(vmf->page);
	return 0;
}

static const struct vm_operations_struct dr_ring_vm_ops = {
	.fault = dr_ring_fault,
};

/*
 * Shared and not executable only: a private mapping would copy on write,
 * so the harvester's RESET marks would never reach the kernel.
 */
int dr_ring_mmap(struct dr_ring *ring, struct vm_area_struct *vma)
{
	unsigned long bytes = ring->size * sizeof(*ring->entries);

	if (vma->vm_pgoff || vma_pages(vma) > DIV_ROUND_UP(bytes, PAGE_SIZE))
		return -EINVAL;
	if (!(vma->vm_flags & VM_SHARED) || (vma->vm_flags & VM_EXEC))
		return -EINVAL;
	vma->vm_flags &= ~VM_MAYEXEC;
	vma->vm_flags |= VM_DONTEXPAND | VM_DONTDUMP;
	vma->vm_private_data = ring;
	vma->vm_ops = &dr_ring_vm_ops;
	return 0;
}

/*
 * Neighbouring entries of one slot, re-protected in one go, as KVM's reset
 * does: pages base + n for each bit n of mask.  Entries coalesce while they
 * fall within BITS_PER_LONG pages, in either direction.
 */
struct dr_run {
	struct dr_slot *slot;
	u64 base;
	unsigned long mask;
};

static void dr_run_flush(struct dr_run *run)
{
	if (run->mask)
		dr_slot_reprotect(run->slot, run->base, run->mask);
	run->mask = 0;
}

static void dr_run_add(struct dr_vm *vm, struct dr_run *run, u32 slot_id,
		       u64 offset)
{
	struct dr_slot *slot;
	s64 delta;

	/* The harvester can write anything into an entry: trust nothing. */
	if (slot_id >= DIRTYRING_MAX_SLOTS)
		return;
	slot = dr_vm_slot(vm, slot_id);
	if (!slot || offset >= slot->npages)
		return;

	if (run->mask && run->slot == slot) {
		delta = offset - run->base;
		if (delta >= 0 && delta < BITS_PER_LONG) {
			run->mask |= 1UL << delta;
			return;
		}
		/* Before base: shift the window if no set bit falls off. */
		if (delta < 0 && delta > -BITS_PER_LONG &&
		    __fls(run->mask) < BITS_PER_LONG + delta) {
			run->mask = (run->mask << -delta) | 1;
			run->base = offset;
			return;
		}
	}
	dr_run_flush(run);
	run->slot = slot;
	run->base = offset;
	run->mask = 1;
}

/*
 * Resets the RESET-marked entries of @ring, from its reset index up to the
 * first entry that is not marked, re-protecting their pages.  Bounded by the
 * entries pushed when it began.  Returns the entries reset, or -ERESTARTSYS
 * when a signal stopped it: what it reset until then stays reset (the reset
 * index moved past it), the rest keeps its marks for the next call.
 * Called with vm->mmu_lock held.
 */
int dr_ring_reset(struct dr_vm *vm, struct dr_ring *ring)
{
	u32 index = ring->reset_index;
	struct dr_run run = { 0 };
	int count = 0, ret = 0;
	u32 dirty;

	lockdep_assert_held(&vm->mmu_lock);
	/* See the top of this file: published entries are below it. */
	spin_lock(&ring->lock);
	dirty = ring->dirty_index;
	spin_unlock(&ring->lock);
	while (index != dirty) {
		struct dirtyring_gfn *entry =
			&ring->entries[index & (ring->size - 1)];

		/* Pairs with the harvester's release store of RESET. */
		if (!(smp_load_acquire(&entry->flags) & DIRTYRING_GFN_F_RESET))
			break;
		dr_run_add(vm, &run, READ_ONCE(entry->slot),
			   READ_ONCE(entry->offset));
		WRITE_ONCE(entry->flags, 0);
		index++;
		count++;
		if (!(count % 1024) && index != dirty) {
			if (signal_pending(current)) {
				ret = -ERESTARTSYS;
				break;
			}
			cond_resched();
		}
	}
	dr_run_flush(&run);
	/* Entries are clear and their pages protected before they are reused. */
	smp_store_release(&ring->reset_index, index);
	if (count) {
		WRITE_ONCE(ring->resets, ring->resets + 1);
		wake_up_all(&ring->wq);
	}
	return ret ?: count;
}

/*
 * Closes a vCPU's ring: later pushes fail (their pages are parked), and the
 * pages of the entries not reset yet are parked, so the next reset moves
 * them to the VM ring.  Called with vm->mmu_lock held.
 */
void dr_ring_close(struct dr_vm *vm, struct dr_ring *ring)
{
	u32 index, dirty;

	lockdep_assert_held(&vm->mmu_lock);
	spin_lock(&ring->lock);
	WRITE_ONCE(ring->closed, true);
	dirty = ring->dirty_index;
	spin_unlock(&ring->lock);
	for (index = ring->reset_index; index != dirty; index++) {
		struct dirtyring_gfn *entry =
			&ring->entries[index & (ring->size - 1)];
		u32 slot_id = READ_ONCE(entry->slot);
		u64 offset = READ_ONCE(entry->offset);
		struct dr_slot *slot;

		slot = slot_id < DIRTYRING_MAX_SLOTS ? dr_vm_slot(vm, slot_id) :
						       NULL;
		if (slot && offset < slot->npages)
			dr_overflow_park(slot, offset);
		WRITE_ONCE(entry->flags, 0);
	}
	/* Pairs with the acquire in dr_ring_used(): entries are clear. */
	smp_store_release(&ring->reset_index, dirty);
	wake_up_all(&ring->wq);
}

void dr_ring_status(struct dr_ring *ring, struct dirtyring_ring_status *st)
{
	spin_lock(&ring->lock);
	st->entries = ring->size;
	st->soft_limit = ring->soft_limit;
	st->used = ring->dirty_index - ring->reset_index;
	st->flags = st->used >= ring->soft_limit ? DIRTYRING_RING_F_SOFT_FULL : 0;
	st->pushed = ring->pushed;
	st->soft_full_events = ring->soft_full_events;
	st->overflows = ring->overflows;
	spin_unlock(&ring->lock);
	st->waits = atomic64_read(&ring->waits);
	st->wait_ns = atomic64_read(&ring->wait_ns);
}
