// SPDX-License-Identifier: GPL-2.0
/*
 * dirtyring: waits for ring room, deferred out of the fault path.
 *
 * A writer that pushes past its ring's soft limit is in page_mkwrite with a
 * page locked and mmap_lock held: it must not wait there, since the reset
 * that makes room locks pages.  Instead it arms task work that runs when it
 * returns to user mode, or before KVM re-enters the guest, holding no lock;
 * there it waits (interruptibly: any signal ends the wait) until a reset
 * brings the ring below its soft limit, the VM fd is closed or the ring's
 * vCPU is closed.
 *
 * Only threads of the VM's own process wait: it is the process that
 * harvests.  Kernel threads (vhost, async page faults) and io_uring workers
 * never return to user mode, and other processes (process_vm_writev,
 * ptrace, /proc/PID/mem) cannot harvest the rings they fill: none of them
 * waits, and the reserve, then overflow parking (mem.c), absorbs what they
 * write.
 *
 * vm->waiters (under vm->waiters_lock) holds the armed waits, so that a
 * thread faulting many pages in one system call arms only one per ring.
 * Each armed wait holds a reference to the VM's memory file, and through it
 * to the VM and to this module: queued task work runs module text, so the
 * module must not unload before it ran.  That reference is dropped last,
 * and its final fput is itself task work queued after ours.
 */
#include <linux/file.h>
#include <linux/fs.h>
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
	struct file *file;	/* the VM's memory file */
	unsigned long resets;	/* ring->resets when armed */
};

/*
 * Released by any reset of its ring since it was armed, not only by room:
 * the same reset may refill the VM ring to its soft limit with parked and
 * held pages, and a level test would then keep the writer waiting.
 */
static bool dr_wait_done(struct dr_waiter *w)
{
	return READ_ONCE(w->vm->dead) || READ_ONCE(w->ring->closed) ||
	       READ_ONCE(w->ring->resets) != w->resets ||
	       !dr_ring_soft_full(w->ring);
}

static void dr_wait_run(struct callback_head *work)
{
	struct dr_waiter *w = container_of(work, struct dr_waiter, work);
	struct file *file = w->file;
	struct dr_vm *vm = w->vm;

	/*
	 * At exit there is nobody left to wait for: writes are logged.  After
	 * an exec (armed by a write during it) this is another program.
	 */
	if (!(current->flags & PF_EXITING) && current->mm == vm->mm &&
	    !dr_wait_done(w)) {
		ktime_t start = ktime_get();

		u64 ns;

		/* Sent first: a reader of waits has seen the event. */
		dr_netlink_wait_event(vm, w->ring, DIRTYRING_CMD_WAIT_BEGIN_NTF,
				      0);
		atomic64_inc(&w->ring->waits);
		wait_event_interruptible(w->ring->wq, dr_wait_done(w));
		ns = ktime_to_ns(ktime_sub(ktime_get(), start));
		atomic64_add(ns, &w->ring->wait_ns);
		atomic64_inc(&w->ring->wait_hist[dr_hist_bucket(ns)]);
		dr_netlink_wait_event(vm, w->ring, DIRTYRING_CMD_WAIT_END_NTF,
				      ns);
	}

	spin_lock(&vm->waiters_lock);
	list_del(&w->node);
	spin_unlock(&vm->waiters_lock);
	kfree(w);
	/* Last: may drop the final reference to this module (see above). */
	fput(file);
}

/*
 * Called from page_mkwrite (page locked, mmap_lock held, @file being the
 * faulting mapping's: the VM's memory file) when @ring reached its soft
 * limit: arms a wait for the current thread, without sleeping.
 */
void dr_wait_arm(struct dr_vm *vm, struct dr_ring *ring, struct file *file)
{
	struct dr_waiter *w;

	if (current->flags & (PF_KTHREAD | PF_IO_WORKER | PF_EXITING))
		return;
	if (current->mm != vm->mm)
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
	w->file = get_file(file);
	w->resets = READ_ONCE(ring->resets);
	list_add(&w->node, &vm->waiters);
	spin_unlock(&vm->waiters_lock);

	init_task_work(&w->work, dr_wait_run);
	if (task_work_add(current, &w->work, TWA_RESUME)) {
		spin_lock(&vm->waiters_lock);
		list_del(&w->node);
		spin_unlock(&vm->waiters_lock);
		kfree(w);
		fput(file);
	}
}
