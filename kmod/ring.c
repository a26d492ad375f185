// SPDX-License-Identifier: GPL-2.0
/*
 * dirtyring: one dirty ring, shared with the harvester by mmap.
 *
 * The producer side (push) runs in the fault path under ring->lock, a
 * spinlock; the consumer side (reset) runs under vm->mmu_lock.  They meet
 * through dirty_index (written under ring->lock), reset_index (stored with
 * release after the entries it frees were cleared) and each entry's flags
 * (release/acquire, KVM's protocol).
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
	ring->entries = vmalloc_user(entries * sizeof(*ring->entries));
	if (!ring->entries)
		return -ENOMEM;
	spin_lock_init(&ring->lock);
	init_waitqueue_head(&ring->wq);
	ring->size = entries;
	ring->soft_limit = entries - DIRTYRING_RING_RESERVED_ENTRIES;
	ring->dirty_index = 0;
	ring->reset_index = 0;
	return 0;
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
 * Returns 0 when pushed, 1 when pushed and the ring is now at or past its
 * soft limit, -ENOSPC when the ring is full and nothing was pushed.
 */
int dr_ring_push(struct dr_ring *ring, u32 slot, u64 offset)
{
	struct dirtyring_gfn *entry;
	u32 used;
	int ret;

	spin_lock(&ring->lock);
	/* Pairs with the release in dr_ring_reset: freed entries are clear. */
	used = ring->dirty_index - smp_load_acquire(&ring->reset_index);
	if (used >= ring->size) {
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
	ret = 0;
	if (used + 1 >= ring->soft_limit) {
		if (used + 1 == ring->soft_limit)
			ring->soft_full_events++;
		ret = 1;
	}
	spin_unlock(&ring->lock);
	return ret;
}

int dr_ring_mmap(struct dr_ring *ring, struct vm_area_struct *vma)
{
	if (vma->vm_pgoff)
		return -EINVAL;
	return remap_vmalloc_range(vma, ring->entries, 0);
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
 * ring size; stops early on a pending signal.  Returns the entries reset.
 * Called with vm->mmu_lock held.
 */
int dr_ring_reset(struct dr_vm *vm, struct dr_ring *ring)
{
	u32 index = ring->reset_index;
	u32 dirty = READ_ONCE(ring->dirty_index);
	struct dr_run run = { 0 };
	int count = 0;

	lockdep_assert_held(&vm->mmu_lock);
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
		if (!(count % 1024)) {
			dr_run_flush(&run);
			if (signal_pending(current))
				break;
			cond_resched();
		}
	}
	dr_run_flush(&run);
	/* Entries are clear and their pages protected before they are reused. */
	smp_store_release(&ring->reset_index, index);
	if (count)
		wake_up_all(&ring->wq);
	return count;
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
