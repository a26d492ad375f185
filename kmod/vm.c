// SPDX-License-Identifier: GPL-2.0
/*
 * dirtyring: VMs and their fds: slots, rings, vCPU creation, reset, mmap,
 * poll and teardown.
 *
 * Lifetime: struct dr_vm is referenced by its fd, by its memory file (which
 * every mmap of the VM fd maps, so mappings outlive neither the pages nor
 * the rings, and which each armed ring-full wait holds, so the module
 * outlives its queued task work) and by each vCPU fd.  Closing the VM fd
 * marks the VM dead and wakes every waiter: nobody can reset it any more,
 * so nobody may wait for a reset.  Memory stays usable (and logged) until
 * the last mapping goes.
 *
 * vm->lock serializes configuration (slots, rings, vCPUs, bind, mmap
 * setup); vm->mmu_lock serializes resets (see dirtyring.h).
 */
#include <linux/anon_inodes.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/ktime.h>
#include <linux/pid.h>
#include <linux/poll.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "internal.h"

void dr_vm_get(struct dr_vm *vm)
{
	kref_get(&vm->ref);
}

static void dr_vm_free(struct kref *ref)
{
	struct dr_vm *vm = container_of(ref, struct dr_vm, ref);
	int i;

	/*
	 * Kicked only by faults and resets, which hold references: nothing
	 * queues it again.  What it was to send goes out before VM_DESTROYED.
	 */
	flush_delayed_work(&vm->ev_work);
	WARN_ON_ONCE(!list_empty(&vm->waiters));
	for (i = 0; i < DIRTYRING_MAX_VCPUS; i++)
		dr_vcpu_free(vm->vcpus[i]);
	for (i = 0; i < DIRTYRING_MAX_SLOTS; i++)
		dr_slot_free(vm->slots[i]);
	dr_pinned_release(vm->pinned_pages);
	dr_ring_free(&vm->vm_ring);
	if (vm->announced)
		dr_netlink_vm_event(vm, DIRTYRING_CMD_VM_DESTROYED_NTF);
	dr_vm_unlist(vm);
	put_pid(vm->owner);
	mmdrop(vm->mm);
	kfree(vm);
}

void dr_vm_put(struct dr_vm *vm)
{
	kref_put(&vm->ref, dr_vm_free);
}

static int dr_vm_enable_rings(struct dr_vm *vm, void __user *argp)
{
	struct dirtyring_rings req;
	int ret;

	if (copy_from_user(&req, argp, sizeof(req)))
		return -EFAULT;
	if (req.flags || req.reserved)
		return -EINVAL;
	if (!dr_ring_valid_size(req.vcpu_ring_entries) ||
	    !dr_ring_valid_size(req.vm_ring_entries))
		return -EINVAL;

	mutex_lock(&vm->lock);
	if (vm->rings_enabled) {
		ret = -EBUSY;
		goto out;
	}
	ret = dr_ring_init(&vm->vm_ring, req.vm_ring_entries);
	if (ret)
		goto out;
	vm->vcpu_ring_entries = req.vcpu_ring_entries;
	/* Pairs with the acquire in poll: the ring is initialized once set. */
	smp_store_release(&vm->rings_enabled, true);
out:
	mutex_unlock(&vm->lock);
	return ret;
}

static int dr_vm_add_slot(struct dr_vm *vm, void __user *argp)
{
	struct dirtyring_slot req;
	int ret;

	if (copy_from_user(&req, argp, sizeof(req)))
		return -EFAULT;
	mutex_lock(&vm->lock);
	ret = dr_slot_add(vm, &req);
	mutex_unlock(&vm->lock);
	return ret;
}

static int dr_vm_reset_ring(struct dr_vm *vm, struct dr_ring *ring,
			    struct dirtyring_reset *req)
{
	int n = dr_ring_reset(vm, ring);

	if (n < 0)
		return n;
	req->entries += n;
	return 0;
}

/* DIRTYRING_RESET_RINGS: see the uAPI header for the contract. */
static long dr_vm_reset(struct dr_vm *vm, void __user *argp)
{
	struct dr_reset_report report;
	struct dirtyring_reset req;
	u64 start = ktime_get_ns();
	int ret = 0;
	int i;

	if (copy_from_user(&req, argp, sizeof(req)))
		return -EFAULT;
	if (req.flags || req.reserved)
		return -EINVAL;
	/* Pairs with the release in ENABLE_RINGS. */
	if (!smp_load_acquire(&vm->rings_enabled))
		return -EINVAL;
	memset(&req, 0, sizeof(req));

	if (mutex_lock_interruptible(&vm->mmu_lock))
		return -ERESTARTSYS;
	for (i = 0; i < DIRTYRING_MAX_VCPUS && !ret; i++) {
		struct dr_vcpu *vcpu = dr_vm_vcpu(vm, i);

		if (vcpu)
			ret = dr_vm_reset_ring(vm, &vcpu->ring, &req);
	}
	if (!ret)
		ret = dr_vm_reset_ring(vm, &vm->vm_ring, &req);
	/*
	 * Parked pages move only when every ring was reset: the caller harvests
	 * again if told so, and an interrupted call tells nothing.
	 */
	if (!ret && atomic_long_read(&vm->overflow_pending))
		req.overflow_pushed = dr_overflow_drain(vm);
	/* Held pages are logged for the next cycle, interrupted or not. */
	req.relogged = dr_relog_flush(vm);
	req.overflow_pending = atomic_long_read(&vm->overflow_pending);
	if (!ret)
		dr_netlink_reset_collect(vm, &report);
	mutex_unlock(&vm->mmu_lock);
	if (!ret)
		dr_netlink_reset_event(vm, &req, ktime_get_ns() - start,
				       &report);
	if (req.overflow_pushed || req.relogged || req.overflow_pending) {
		wake_up_interruptible_poll(&vm->poll_wq, EPOLLIN);
		/* Those pushes can fill the VM ring too. */
		dr_netlink_kick(vm);
	}
	if (ret)
		return ret;
	if (copy_to_user(argp, &req, sizeof(req)))
		return -EFAULT;
	return 0;
}

static int dr_vm_ring_status(struct dr_vm *vm, void __user *argp)
{
	struct dirtyring_ring_status st = { 0 };

	mutex_lock(&vm->lock);
	if (!vm->rings_enabled) {
		mutex_unlock(&vm->lock);
		return -EINVAL;
	}
	mutex_unlock(&vm->lock);
	dr_ring_status(&vm->vm_ring, &st);
	if (copy_to_user(argp, &st, sizeof(st)))
		return -EFAULT;
	return 0;
}

static long dr_vm_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct dr_vm *vm = file->private_data;
	void __user *argp = (void __user *)arg;
	long ret;

	switch (cmd) {
	case DIRTYRING_ADD_SLOT:
		return dr_vm_add_slot(vm, argp);
	case DIRTYRING_ENABLE_RINGS:
		return dr_vm_enable_rings(vm, argp);
	case DIRTYRING_CREATE_VCPU:
		mutex_lock(&vm->lock);
		ret = dr_vcpu_create(vm, arg);
		mutex_unlock(&vm->lock);
		return ret;
	case DIRTYRING_RESET_RINGS:
		return dr_vm_reset(vm, argp);
	case DIRTYRING_GET_RING_STATUS:
		return dr_vm_ring_status(vm, argp);
	case DIRTYRING_CHECK_EXTENSION:
		return dr_check_extension(arg);
	default:
		return -ENOTTY;
	}
}

static int dr_vm_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct dr_vm *vm = file->private_data;
	int ret;

	mutex_lock(&vm->lock);
	if (!vm->rings_enabled)
		ret = -EINVAL;
	else if (vma->vm_pgoff == DIRTYRING_VM_RING_MMAP_OFFSET)
		ret = dr_ring_mmap(&vm->vm_ring, vma);
	else
		ret = dr_slot_mmap(vm, vma);
	mutex_unlock(&vm->lock);
	if (!ret)
		vma_set_file(vma, vm->mem_file);
	return ret;
}

static bool dr_vm_soft_full(struct dr_vm *vm, bool *any)
{
	bool soft = false;
	int i;

	*any = atomic_long_read(&vm->overflow_pending) ||
	       dr_ring_used(&vm->vm_ring);
	soft = *any && (atomic_long_read(&vm->overflow_pending) ||
			dr_ring_soft_full(&vm->vm_ring));
	for (i = 0; i < DIRTYRING_MAX_VCPUS; i++) {
		struct dr_vcpu *vcpu = dr_vm_vcpu(vm, i);

		if (!vcpu || !dr_ring_used(&vcpu->ring))
			continue;
		*any = true;
		soft |= dr_ring_soft_full(&vcpu->ring);
	}
	return soft;
}

static __poll_t dr_vm_poll(struct file *file, poll_table *wait)
{
	struct dr_vm *vm = file->private_data;
	__poll_t mask = 0;
	bool any;

	poll_wait(file, &vm->poll_wq, wait);
	/* Pairs with the release in ENABLE_RINGS: rings exist once set. */
	if (!smp_load_acquire(&vm->rings_enabled))
		return 0;
	if (dr_vm_soft_full(vm, &any))
		mask |= EPOLLPRI;
	if (any)
		mask |= EPOLLIN | EPOLLRDNORM;
	return mask;
}

static int dr_vm_release(struct inode *inode, struct file *file)
{
	struct dr_vm *vm = file->private_data;
	int i;

	/* Nobody can reset any more: release every writer waiting for room. */
	WRITE_ONCE(vm->dead, true);
	mutex_lock(&vm->lock);
	if (vm->rings_enabled) {
		wake_up_all(&vm->vm_ring.wq);
		for (i = 0; i < DIRTYRING_MAX_VCPUS; i++)
			if (vm->vcpus[i])
				wake_up_all(&vm->vcpus[i]->ring.wq);
	}
	mutex_unlock(&vm->lock);
	fput(vm->mem_file);
	dr_vm_put(vm);
	return 0;
}

static const struct file_operations dr_vm_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = dr_vm_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.mmap = dr_vm_mmap,
	.poll = dr_vm_poll,
	.release = dr_vm_release,
	.show_fdinfo = dr_vm_show_fdinfo,
	.llseek = noop_llseek,
};

/* Returns the new VM fd. */
int dr_vm_create(void)
{
	struct dr_vm *vm;
	int fd;

	if (!current->mm)
		return -EINVAL;
	vm = kzalloc(sizeof(*vm), GFP_KERNEL_ACCOUNT);
	if (!vm)
		return -ENOMEM;
	kref_init(&vm->ref);
	mutex_init(&vm->lock);
	mutex_init(&vm->mmu_lock);
	init_waitqueue_head(&vm->poll_wq);
	spin_lock_init(&vm->waiters_lock);
	INIT_LIST_HEAD(&vm->waiters);
	INIT_DELAYED_WORK(&vm->ev_work, dr_netlink_ev_work);
	/* The first kick sends at once. */
	vm->ev_sent = jiffies - msecs_to_jiffies(DIRTYRING_GENL_EVENT_MS);
	vm->mm = current->mm;
	mmgrab(vm->mm);
	vm->owner = get_task_pid(current, PIDTYPE_TGID);
	get_task_comm(vm->owner_comm, current->group_leader);
	fd = dr_vm_list_add(vm);
	if (fd) {
		put_pid(vm->owner);
		mmdrop(vm->mm);
		kfree(vm);
		return fd;
	}

	vm->mem_file = dr_mem_file_create(vm);
	if (IS_ERR(vm->mem_file)) {
		fd = PTR_ERR(vm->mem_file);
		dr_vm_put(vm);
		return fd;
	}
	fd = anon_inode_getfd("dirtyring-vm", &dr_vm_fops, vm,
			      O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		fput(vm->mem_file);	/* drops the memory file's reference */
		dr_vm_put(vm);
		return fd;
	}
	vm->announced = true;
	dr_netlink_vm_event(vm, DIRTYRING_CMD_VM_CREATED_NTF);
	return fd;
}
