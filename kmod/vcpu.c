// SPDX-License-Identifier: GPL-2.0
/*
 * dirtyring: vCPUs, their fds, their rings and the threads bound to them.
 *
 * A vCPU's struct lives as long as its VM (vm->vcpus, published with
 * release); its fd holds a VM reference.  vcpu->bound is written under
 * vm->lock and read locklessly by the fault path, which only compares it
 * with task_pid(current): the struct pid is referenced while bound, so the
 * pointer is never reused, and a thread that exited matches nobody.
 *
 * Closing the vCPU (its fd's release: every fd and ring mapping gone) ends
 * the binding, closes its ring (pages of entries not reset yet are parked
 * for the VM ring, waiters are woken) and frees its id; creating the id
 * again reopens the same struct with an empty ring.  vcpu->open is under
 * vm->lock; the ring's close and reopen are under vm->mmu_lock.
 */
#include <linux/anon_inodes.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/pid.h>
#include <linux/poll.h>
#include <linux/rcupdate.h>
#include <linux/sched/task.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "internal.h"

/* The ring the current thread's writes go to: its vCPU's, or the VM's. */
struct dr_ring *dr_ring_of_current(struct dr_vm *vm)
{
	int i;

	for (i = 0; i < DIRTYRING_MAX_VCPUS; i++) {
		struct dr_vcpu *vcpu = dr_vm_vcpu(vm, i);

		if (vcpu && READ_ONCE(vcpu->bound) == task_pid(current))
			return &vcpu->ring;
	}
	return &vm->vm_ring;
}

void dr_vcpu_free(struct dr_vcpu *vcpu)
{
	if (!vcpu)
		return;
	put_pid(vcpu->bound);
	dr_ring_free(&vcpu->ring);
	kfree(vcpu);
}

/* The bound thread has not begun to exit.  Under vm->lock. */
bool dr_vcpu_bound_alive(struct dr_vcpu *vcpu)
{
	struct task_struct *task;
	bool alive;

	if (!vcpu->bound)
		return false;
	rcu_read_lock();
	task = pid_task(vcpu->bound, PIDTYPE_PID);
	alive = task && !(task->flags & PF_EXITING);
	rcu_read_unlock();
	return alive;
}

/* Ends a binding whose thread exited.  Under vm->lock. */
static void dr_vcpu_reap(struct dr_vcpu *vcpu)
{
	struct pid *pid = vcpu->bound;

	/* Unpublished before it is put: a freed pid could match a new thread. */
	if (pid && !dr_vcpu_bound_alive(vcpu)) {
		WRITE_ONCE(vcpu->bound, NULL);
		put_pid(pid);
	}
}

static int dr_vcpu_bind(struct dr_vcpu *vcpu)
{
	struct pid *me = task_pid(current);
	struct dr_vm *vm = vcpu->vm;
	int ret = 0;
	int i;

	mutex_lock(&vm->lock);
	dr_vcpu_reap(vcpu);
	if (vcpu->bound) {
		ret = vcpu->bound == me ? -EALREADY : -EBUSY;
		goto out;
	}
	for (i = 0; i < DIRTYRING_MAX_VCPUS; i++) {
		if (vm->vcpus[i] && vm->vcpus[i]->bound == me) {
			ret = -EBUSY;
			goto out;
		}
	}
	WRITE_ONCE(vcpu->bound, get_pid(me));
out:
	mutex_unlock(&vm->lock);
	return ret;
}

static int dr_vcpu_unbind(struct dr_vcpu *vcpu)
{
	struct dr_vm *vm = vcpu->vm;
	struct pid *pid;

	mutex_lock(&vm->lock);
	dr_vcpu_reap(vcpu);
	pid = vcpu->bound;
	WRITE_ONCE(vcpu->bound, NULL);
	mutex_unlock(&vm->lock);
	if (!pid)
		return -EINVAL;
	put_pid(pid);
	return 0;
}

static long dr_vcpu_ioctl(struct file *file, unsigned int cmd,
			  unsigned long arg)
{
	struct dr_vcpu *vcpu = file->private_data;
	struct dirtyring_ring_status st = { 0 };

	switch (cmd) {
	case DIRTYRING_BIND:
		return arg ? -EINVAL : dr_vcpu_bind(vcpu);
	case DIRTYRING_UNBIND:
		return arg ? -EINVAL : dr_vcpu_unbind(vcpu);
	case DIRTYRING_GET_RING_STATUS:
		dr_ring_status(&vcpu->ring, &st);
		mutex_lock(&vcpu->vm->lock);
		if (dr_vcpu_bound_alive(vcpu))
			st.flags |= DIRTYRING_RING_F_BOUND;
		mutex_unlock(&vcpu->vm->lock);
		if (copy_to_user((void __user *)arg, &st, sizeof(st)))
			return -EFAULT;
		return 0;
	default:
		return -ENOTTY;
	}
}

static int dr_vcpu_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct dr_vcpu *vcpu = file->private_data;

	return dr_ring_mmap(&vcpu->ring, vma);
}

static int dr_vcpu_release(struct inode *inode, struct file *file)
{
	struct dr_vcpu *vcpu = file->private_data;
	struct dr_vm *vm = vcpu->vm;
	struct pid *pid;

	mutex_lock(&vm->lock);
	pid = vcpu->bound;
	WRITE_ONCE(vcpu->bound, NULL);
	mutex_lock(&vm->mmu_lock);
	dr_ring_close(vm, &vcpu->ring);
	mutex_unlock(&vm->mmu_lock);
	WRITE_ONCE(vcpu->open, false);
	mutex_unlock(&vm->lock);
	put_pid(pid);
	/* Its pages are parked: harvestable through the next reset. */
	wake_up_interruptible_poll(&vm->poll_wq, EPOLLIN);
	dr_vm_put(vm);
	return 0;
}

static const struct file_operations dr_vcpu_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = dr_vcpu_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.mmap = dr_vcpu_mmap,
	.release = dr_vcpu_release,
	.llseek = noop_llseek,
};

/* A reopened vCPU starts its statistics anew, as its ring does. */
static void dr_vcpu_reset_stats(struct dr_vcpu *vcpu)
{
	int i;

	atomic64_set(&vcpu->faults, 0);
	atomic64_set(&vcpu->fault_ns, 0);
	for (i = 0; i < DIRTYRING_HIST_BUCKETS; i++)
		atomic64_set(&vcpu->fault_hist[i], 0);
}

/* Called with vm->lock held; returns the new vCPU fd. */
int dr_vcpu_create(struct dr_vm *vm, unsigned long id)
{
	struct dr_vcpu *vcpu;
	bool reopen;
	int ret, fd;

	lockdep_assert_held(&vm->lock);
	if (id >= DIRTYRING_MAX_VCPUS || !vm->rings_enabled)
		return -EINVAL;
	vcpu = vm->vcpus[id];
	if (vcpu && vcpu->open)
		return -EEXIST;

	reopen = vcpu;
	if (!reopen) {
		vcpu = kzalloc(sizeof(*vcpu), GFP_KERNEL_ACCOUNT);
		if (!vcpu)
			return -ENOMEM;
		vcpu->vm = vm;
		vcpu->id = id;
		ret = dr_ring_init(&vcpu->ring, vm->vcpu_ring_entries);
		if (ret)
			goto free;
	} else {
		/* No fd or mapping of the old ring is left (it was released). */
		mutex_lock(&vm->mmu_lock);
		dr_ring_reopen(&vcpu->ring);
		mutex_unlock(&vm->mmu_lock);
		dr_vcpu_reset_stats(vcpu);
	}

	dr_vm_get(vm);
	fd = anon_inode_getfd("dirtyring-vcpu", &dr_vcpu_fops, vcpu,
			      O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		dr_vm_put(vm);
		ret = fd;
		goto free;
	}
	WRITE_ONCE(vcpu->open, true);
	if (!reopen)	/* Pairs with dr_vm_vcpu(): complete when seen. */
		smp_store_release(&vm->vcpus[id], vcpu);
	return fd;

free:
	if (reopen) {
		mutex_lock(&vm->mmu_lock);
		dr_ring_close(vm, &vcpu->ring);
		mutex_unlock(&vm->mmu_lock);
	} else {
		dr_vcpu_free(vcpu);
	}
	return ret;
}
