// SPDX-License-Identifier: GPL-2.0
/*
 * dirtyring: waits for ring room, deferred out of the fault path.
 *
 * A writer that pushes past its ring's soft limit is in page_mkwrite with a
 * page locked and mmap_lock held: it must not wait there, since the reset
 * that makes room locks pages.  Instead it arms task work that runs when it
 * returns to user mode, or before KVM re-enters the guest, holding no lock;
 * there it waits (interruptibly: any signal ends the wait) until a reset
 * brings the ring below its soft limit or the VM fd is closed.
 *
 * Kernel threads (vhost, async page faults) never return to user mode: they
 * do not wait, and the reserve, then overflow parking (mem.c), absorbs what
 * they write.
 *
 * vm->waiters (under vm->waiters_lock) holds the armed waits, so that a
 * thread faulting many pages in one system call arms only one per ring.
 * Each armed wait holds a VM reference.
 */
#include <linux/ktime.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/task_work.h>

#include "internal.h"

struct dr_waiter {
	struct callback_head work;
	struct list_head node;
	struct task_struct *task;
	struct dr_vm *vm;
	struct dr_ring *ring;
};

static bool dr_wait_done(struct dr_waiter *w)
{
	return READ_ONCE(w->vm->dead) || !dr_ring_soft_full(w->ring);
}

static void dr_wait_run(struct callback_head *work)
{
	struct dr_waiter *w = container_of(work, struct dr_waiter, work);
	struct dr_vm *vm = w->vm;

	/* At exit there is nobody left to wait for: writes are logged. */
	if (!(current->flags & PF_EXITING) && !dr_wait_done(w)) {
		ktime_t start = ktime_get();

		atomic64_inc(&w->ring->waits);
		wait_event_interruptible(w->ring->wq, dr_wait_done(w));
		atomic64_add(ktime_to_ns(ktime_sub(ktime_get(), start)),
			     &w->ring->wait_ns);
	}

	spin_lock(&vm->waiters_lock);
	list_del(&w->node);
	spin_unlock(&vm->waiters_lock);
	kfree(w);
	dr_vm_put(vm);
}

/*
 * Called from page_mkwrite (page locked, mmap_lock held) when @ring reached
 * its soft limit: arms a wait for the current thread, without sleeping.
 */
void dr_wait_arm(struct dr_vm *vm, struct dr_ring *ring)
{
	struct dr_waiter *w;

	if (current->flags & (PF_KTHREAD | PF_EXITING))
		return;

	spin_lock(&vm->waiters_lock);
	list_for_each_entry(w, &vm->waiters, node) {
		if (w->task == current && w->ring == ring) {
			spin_unlock(&vm->waiters_lock);
			return;
		}
	}
	/* No sleep here; if memory is that short, the reserve absorbs it. */
	w = kzalloc(sizeof(*w), GFP_NOWAIT | __GFP_NOWARN);
	if (!w) {
		spin_unlock(&vm->waiters_lock);
		return;
	}
	w->task = current;
	w->vm = vm;
	w->ring = ring;
	list_add(&w->node, &vm->waiters);
	spin_unlock(&vm->waiters_lock);

	dr_vm_get(vm);
	init_task_work(&w->work, dr_wait_run);
	if (task_work_add(current, &w->work, TWA_RESUME)) {
		spin_lock(&vm->waiters_lock);
		list_del(&w->node);
		spin_unlock(&vm->waiters_lock);
		kfree(w);
		dr_vm_put(vm);
	}
}
