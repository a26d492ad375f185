// SPDX-License-Identifier: GPL-2.0
/*
 * dirtyring: guest memory slots, served by mmap of the VM fd, and the first
 * write tracking on them.
 *
 * A slot owns its pages (allocated when the slot is added) and three
 * bitmaps: logged (the page was pushed to a ring, or parked as overflow,
 * since its last re-protection), overflow (logged while its ring was full,
 * or its vCPU closed: the next reset pushes it to the VM ring) and relog
 * (under vm->mmu_lock: held when re-armed, pushed again by this reset).
 *
 * Mappings use the VM's memory file (its own inode) and vm_ops with
 * page_mkwrite, so pages come in read-only and the first write of a cycle
 * reaches dr_mem_page_mkwrite.  That logs the page with the page locked and
 * returns VM_FAULT_LOCKED: the page stays locked until its PTE is writable.
 * Re-protection locks the page, clears its logged bit, unlocks it, then zaps
 * the PTEs of every mapping (which also invalidates KVM's mappings through
 * the MMU notifier); the next write faults again.  Clearing under the page
 * lock before zapping means a write either sees the bit cleared and logs, or
 * finished making its PTE writable before the zap removes it.
 *
 * A writer that took a reference to the page before the zap (GUP: O_DIRECT
 * I/O, process_vm_writev, ptrace, KVM's kvm_vcpu_map) writes through the
 * kernel's mapping and never faults.  After the zap every mapping's
 * reference is gone, so a page whose count is above the slot's own
 * reference may be held by such a writer: it stays logged and is pushed
 * again by this reset.  GUP-fast takes its reference before it re-checks the PTE,
 * and the zap clears the PTE before we read the count (a full barrier on
 * both sides), so a reference that outlives the zap is always seen; a
 * passing one (a fault in flight, a speculative lookup) only logs the page
 * once more.
 */
#include <linux/jump_label.h>
#include <linux/mm.h>
#include <linux/moduleparam.h>
#include <linux/pagemap.h>
#include <linux/poll.h>
#include <linux/sched/clock.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/sysfs.h>

#include "internal.h"

/*
 * Stall accounting reads the clock twice per first write.  Where that is
 * slow (make bench, TCG: 1.05x the first write's cost without it) an
 * operator can turn it off at any time, as delayacct and schedstats can
 * be: dirtyring.stall_accounting=0, a static key, leaves a NOP behind.
 */
static DEFINE_STATIC_KEY_TRUE(dr_stall_key);

static int dr_stall_param_set(const char *val, const struct kernel_param *kp)
{
	bool on;
	int ret = kstrtobool(val, &on);

	if (ret)
		return ret;
	if (on)
		static_branch_enable(&dr_stall_key);
	else
		static_branch_disable(&dr_stall_key);
	return 0;
}

static int dr_stall_param_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%c\n",
			  static_key_enabled(&dr_stall_key) ? 'Y' : 'N');
}

static const struct kernel_param_ops dr_stall_param_ops = {
	.set = dr_stall_param_set,
	.get = dr_stall_param_get,
};

module_param_cb(stall_accounting, &dr_stall_param_ops, NULL, 0644);
MODULE_PARM_DESC(stall_accounting,
		 "Time the first-write faults of vCPU threads (default: Y)");

/*
 * The clock of stall accounting, or 0 when it is off: sched_clock(), not
 * local_clock().  They are one where the TSC is stable; where it is not,
 * local_clock() filters every read against the tick, and make bench (TCG,
 * whose TSC is unstable) measured the first write at 1.20x its cost
 * without statistics with local_clock(), 1.05x with sched_clock().
 * sched_clock() is monotonic per CPU only: a fault that slept and resumed
 * on another CPU may be off by the CPUs' skew, and never counts less than
 * nothing.
 */
static u64 dr_stall_clock(void)
{
	if (!DR_STATS || !static_branch_likely(&dr_stall_key))
		return 0;
	return sched_clock() ?: 1;
}

/* Stall accounting (uAPI: DIRTYRING_A_VCPU_FAULT_*), from @start on. */
static void dr_vcpu_account_fault(struct dr_vcpu *vcpu, u64 start)
{
	u64 now = dr_stall_clock(), ns = now > start ? now - start : 0;

	/*
	 * Off, or turned on during this fault; turned off during it, the
	 * fault counts as 0 ns.
	 */
	if (!start)
		return;
	atomic64_inc(&vcpu->faults);
	atomic64_add(ns, &vcpu->fault_ns);
	atomic64_inc(&vcpu->fault_hist[dr_hist_bucket(ns)]);
}

/* Slot id + 1 is the mmap offset's bits from 38 up (uAPI). */
#define DR_SLOT_PGOFF_SHIFT (38 - PAGE_SHIFT)
static_assert(DIRTYRING_SLOT_MMAP_OFFSET(1) - DIRTYRING_SLOT_MMAP_OFFSET(0) ==
	      DIRTYRING_MAX_SLOT_SIZE);
/* The last slot's window ends where a 32-bit mmap2() still reaches. */
static_assert(DIRTYRING_SLOT_MMAP_OFFSET(DIRTYRING_MAX_SLOTS) <= (1ULL << 44));
/* The page array of the largest slot is within kvmalloc's INT_MAX. */
static_assert(DIRTYRING_MAX_SLOT_PAGES * sizeof(struct page *) <= INT_MAX);

static unsigned long dr_slot_pgoff(u32 id)
{
	return DIRTYRING_SLOT_MMAP_OFFSET(id) >> PAGE_SHIFT;
}

void dr_slot_free(struct dr_slot *slot)
{
	unsigned long i;

	if (!slot)
		return;
	if (slot->pages) {
		for (i = 0; i < slot->npages && slot->pages[i]; i++)
			put_page(slot->pages[i]);
		kvfree(slot->pages);
	}
	kvfree(slot->logged);
	kvfree(slot->overflow);
	kvfree(slot->relog);
	kfree(slot);
}

static int dr_slot_alloc_pages(struct dr_slot *slot)
{
	unsigned long i;

	for (i = 0; i < slot->npages; i++) {
		slot->pages[i] = alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO);
		if (!slot->pages[i])
			return -ENOMEM;
		if (fatal_signal_pending(current))
			return -EINTR;
		cond_resched();
	}
	return 0;
}

/* Called with vm->lock held. */
int dr_slot_add(struct dr_vm *vm, const struct dirtyring_slot *req)
{
	unsigned long longs;
	struct dr_slot *slot;
	int ret;

	lockdep_assert_held(&vm->lock);
	if (req->flags || req->reserved[0] || req->reserved[1])
		return -EINVAL;
	if (req->slot >= DIRTYRING_MAX_SLOTS || !req->npages ||
	    req->npages > DR_MAX_SLOT_PAGES)
		return -EINVAL;
	if (vm->slots[req->slot])
		return -EEXIST;
	ret = dr_pinned_reserve(req->npages);
	if (ret)
		return ret;

	ret = -ENOMEM;
	slot = kzalloc(sizeof(*slot), GFP_KERNEL_ACCOUNT);
	if (!slot)
		goto unreserve;
	slot->vm = vm;
	slot->id = req->slot;
	slot->npages = req->npages;
	longs = BITS_TO_LONGS(slot->npages);
	/*
	 * Sized by user space: a size kvmalloc refuses (over INT_MAX, once
	 * root lifts max_pinned_mb) must be ENOMEM, not a WARN.
	 */
	slot->pages = kvcalloc(slot->npages, sizeof(*slot->pages),
			       GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
	slot->logged = kvcalloc(longs, sizeof(long),
				GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
	slot->overflow = kvcalloc(longs, sizeof(long),
				  GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
	slot->relog = kvcalloc(longs, sizeof(long),
			       GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
	if (!slot->pages || !slot->logged || !slot->overflow || !slot->relog)
		goto free;
	ret = dr_slot_alloc_pages(slot);
	if (ret)
		goto free;

	vm->pinned_pages += slot->npages;
	/* Pairs with dr_vm_slot(): the slot is complete when seen. */
	smp_store_release(&vm->slots[req->slot], slot);
	return 0;

free:
	dr_slot_free(slot);
unreserve:
	dr_pinned_release(req->npages);
	return ret;
}

/* Pages of @slot in memory: all of them, allocated when it was added. */
unsigned long dr_slot_resident(struct dr_slot *slot)
{
	return slot->npages;
}

static struct dr_slot *dr_vma_slot(struct vm_area_struct *vma)
{
	return vma->vm_private_data;
}

static unsigned long dr_vma_index(struct vm_fault *vmf)
{
	struct dr_slot *slot = dr_vma_slot(vmf->vma);

	return vmf->pgoff - dr_slot_pgoff(slot->id);
}

static vm_fault_t dr_mem_fault(struct vm_fault *vmf)
{
	struct dr_slot *slot = dr_vma_slot(vmf->vma);
	unsigned long index = dr_vma_index(vmf);

	if (index >= slot->npages)
		return VM_FAULT_SIGBUS;
	vmf->page = slot->pages[index];
	get_page(vmf->page);
	return 0;
}

/* Parks a page whose ring is full; the next reset pushes it to the VM ring. */
void dr_overflow_park(struct dr_slot *slot, unsigned long index)
{
	struct dr_vm *vm = slot->vm;

	if (!test_and_set_bit(index, slot->overflow)) {
		atomic_long_inc(&slot->overflow_count);
		atomic_long_inc(&vm->overflow_pending);
	}
	wake_up_interruptible_poll(&vm->poll_wq, EPOLLIN | EPOLLPRI);
}

static vm_fault_t dr_mem_page_mkwrite(struct vm_fault *vmf)
{
	struct dr_slot *slot = dr_vma_slot(vmf->vma);
	unsigned long index = dr_vma_index(vmf);
	struct page *page = vmf->page;
	struct dr_vm *vm = slot->vm;
	u64 start = dr_stall_clock();
	struct dr_ring *ring;
	int ret;

	lock_page(page);
	if (test_and_set_bit(index, slot->logged))
		return VM_FAULT_LOCKED;	/* logged already this cycle */

	ring = dr_ring_of_current(vm);
	ret = dr_ring_push(ring, slot->id, index);
	if (ret < 0) {
		dr_overflow_park(slot, index);
		ret = DR_PUSH_SOFT_FULL;
	} else if (ret) {
		/* Became harvestable, or reached its soft limit. */
		wake_up_interruptible_poll(&vm->poll_wq,
					   ret & DR_PUSH_SOFT_FULL ?
					   EPOLLIN | EPOLLPRI : EPOLLIN);
	}
	if (ret & DR_PUSH_SOFT_FULL) {
		dr_wait_arm(vm, ring, vmf->vma->vm_file);
		dr_netlink_kick(vm);
	}
	if (start && ring != &vm->vm_ring)
		dr_vcpu_account_fault(container_of(ring, struct dr_vcpu, ring),
				      start);
	return VM_FAULT_LOCKED;
}

static const struct vm_operations_struct dr_mem_vm_ops = {
	.fault = dr_mem_fault,
	.page_mkwrite = dr_mem_page_mkwrite,
};

/* mmap of a slot.  Called with vm->lock held. */
int dr_slot_mmap(struct dr_vm *vm, struct vm_area_struct *vma)
{
	unsigned long id, first, npages = vma_pages(vma);
	struct dr_slot *slot;

	lockdep_assert_held(&vm->lock);
	id = (vma->vm_pgoff >> DR_SLOT_PGOFF_SHIFT) - 1;
	if (id >= DIRTYRING_MAX_SLOTS)
		return -EINVAL;
	slot = vm->slots[id];
	if (!slot)
		return -EINVAL;
	first = vma->vm_pgoff - dr_slot_pgoff(id);
	if (first >= slot->npages || npages > slot->npages - first)
		return -EINVAL;
	/* A private mapping would copy on write: its writes bypass us. */
	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;

	vma->vm_flags |= VM_DONTEXPAND;
	vma->vm_private_data = slot;
	vma->vm_ops = &dr_mem_vm_ops;
	return 0;
}

/*
 * See the top of this file: someone holds @page beyond its slot.  After the
 * zap, every mapping that existed when the logged bit was cleared is gone;
 * any reference above the slot's own is a holder, or a mapping or fault
 * that came after the clear (which only logs the page once more).  Not the
 * mapcount: it moves apart from the count (a fault takes its reference
 * before it maps, an unmap unmaps before it drops it), so comparing the two
 * could miss a holder.
 */
static bool dr_page_held(struct page *page)
{
	/* Orders the zap's PTE clears before the count (GUP-fast's pair). */
	smp_mb();
	return page_ref_count(page) > 1;
}

/*
 * Makes pages base + n, for each bit n of @mask, trackable again.  The zap
 * covers the whole span, other pages included: that is harmless, as a page
 * that is not being reset only faults once more, and either is clean (it
 * logs as it should) or is still logged (it does not log again).  Pages
 * that were held stay logged and are marked for dr_relog_flush.  Called
 * with vm->mmu_lock held; sleeps on page locks and the i_mmap lock.
 */
void dr_slot_reprotect(struct dr_slot *slot, unsigned long base,
		       unsigned long mask)
{
	struct address_space *mapping = slot->vm->mem_file->f_mapping;
	unsigned long n;

	lockdep_assert_held(&slot->vm->mmu_lock);
	for_each_set_bit(n, &mask, BITS_PER_LONG) {
		struct page *page = slot->pages[base + n];

		lock_page(page);
		clear_bit(base + n, slot->logged);
		unlock_page(page);
	}
	unmap_mapping_range(mapping,
			    (loff_t)(dr_slot_pgoff(slot->id) + base) << PAGE_SHIFT,
			    (loff_t)(__fls(mask) + 1) << PAGE_SHIFT, 0);
	for_each_set_bit(n, &mask, BITS_PER_LONG) {
		struct page *page = slot->pages[base + n];

		if (!dr_page_held(page))
			continue;
		lock_page(page);
		/* A write that faulted meanwhile has logged it already. */
		if (!test_and_set_bit(base + n, slot->logged)) {
			set_bit(base + n, slot->relog);
			slot->relog_count++;
		}
		unlock_page(page);
	}
}

/*
 * Pushes @slot's pages marked in @bits to the VM ring while it is below its
 * soft limit, clearing their marks; returns how many.  @stop is set when the
 * ring had no room left.
 */
static unsigned long dr_push_marked(struct dr_vm *vm, struct dr_slot *slot,
				    unsigned long *bits, bool *stop)
{
	struct dr_ring *ring = &vm->vm_ring;
	unsigned long index, pushed = 0;

	for_each_set_bit(index, bits, slot->npages) {
		if (dr_ring_soft_full(ring) ||
		    dr_ring_push(ring, slot->id, index) < 0) {
			*stop = true;
			break;
		}
		clear_bit(index, bits);
		pushed++;
		cond_resched();
	}
	return pushed;
}

/*
 * Pushes parked overflow pages to the VM ring while it has room below its
 * soft limit; returns how many.  Called with vm->mmu_lock held, after the
 * rings were reset.
 */
unsigned long dr_overflow_drain(struct dr_vm *vm)
{
	unsigned long pushed, total = 0;
	bool stop = false;
	u32 id;

	lockdep_assert_held(&vm->mmu_lock);
	for (id = 0; id < DIRTYRING_MAX_SLOTS && !stop; id++) {
		struct dr_slot *slot = dr_vm_slot(vm, id);

		if (!slot || !atomic_long_read(&slot->overflow_count))
			continue;
		/* Parked concurrently: counted once by dr_overflow_park. */
		pushed = dr_push_marked(vm, slot, slot->overflow, &stop);
		atomic_long_sub(pushed, &slot->overflow_count);
		atomic_long_sub(pushed, &vm->overflow_pending);
		total += pushed;
	}
	return total;
}

/*
 * Pushes the pages that were held when this reset re-armed them to the VM
 * ring, after the overflow pages; what finds no room is parked.  Returns
 * how many were logged again.  Called with vm->mmu_lock held.
 */
unsigned long dr_relog_flush(struct dr_vm *vm)
{
	unsigned long index, total = 0;
	bool stop = false;
	u32 id;

	lockdep_assert_held(&vm->mmu_lock);
	for (id = 0; id < DIRTYRING_MAX_SLOTS; id++) {
		struct dr_slot *slot = dr_vm_slot(vm, id);

		if (!slot || !slot->relog_count)
			continue;
		if (!stop)
			total += dr_push_marked(vm, slot, slot->relog, &stop);
		for_each_set_bit(index, slot->relog, slot->npages) {
			clear_bit(index, slot->relog);
			dr_overflow_park(slot, index);
			total++;
		}
		slot->relog_count = 0;
	}
	return total;
}
