// SPDX-License-Identifier: GPL-2.0
/*
 * dirtyring: vCPUs, their fds, their rings and the threads bound to them.
 *
 * A vCPU lives as long as its VM (vm->vcpus, published with release); its
 * fd holds a VM reference.  vcpu->bound is written under vm->lock and read
 * locklessly by the fault path, which only compares it with current: the
 * bound task is referenced while bound, so the pointer is never reused.
 */
#include <linux/anon_inodes.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/mm.h>
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

		if (vcpu && READ_ONCE(vcpu->bound) == current)
			return &vcpu->ring;
	}
	return &vm->vm_ring;
}

void dr_vcpu_free(struct dr_vcpu *vcpu)
{
	if (!vcpu)
		return;
	if (vcpu->bound)
		put_task_struct(vcpu->bound);
	dr_ring_free(&vcpu->ring);
	kfree(vcpu);
}

static int dr_vcpu_bind(struct dr_vcpu *vcpu)
{
	struct dr_vm *vm = vcpu->vm;
	int ret = 0;
	int i;

	mutex_lock(&vm->lock);
	if (vcpu->bound) {
		ret = vcpu->bound == current ? -EALREADY : -EBUSY;
		goto out;
	}
	for (i = 0; i < DIRTYRING_MAX_VCPUS; i++) {
		if (vm->vcpus[i] && vm->vcpus[i]->bound == current) {
			ret = -EBUSY;
			goto out;
		}
	}
	get_task_struct(current);
	WRITE_ONCE(vcpu->bound, current);
out:
	mutex_unlock(&vm->lock);
	return ret;
}

static int dr_vcpu_unbind(struct dr_vcpu *vcpu)
{
	struct dr_vm *vm = vcpu->vm;
	struct task_struct *task;

	mutex_lock(&vm->lock);
	task = vcpu->bound;
	WRITE_ONCE(vcpu->bound, NULL);
	mutex_unlock(&vm->lock);
	if (!task)
		return -EINVAL;
	put_task_struct(task);
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
		if (READ_ONCE(vcpu->bound))
			st.flags |= DIRTYRING_RING_F_BOUND;
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

	dr_vm_put(vcpu->vm);
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

/* Called with vm->lock held; returns the new vCPU fd. */
int dr_vcpu_create(struct dr_vm *vm, unsigned long id)
{
	struct dr_vcpu *vcpu;
	int ret, fd;

	lockdep_assert_held(&vm->lock);
	if (id >= DIRTYRING_MAX_VCPUS || !vm->rings_enabled)
		return -EINVAL;
	if (vm->vcpus[id])
		return -EEXIST;

	vcpu = kzalloc(sizeof(*vcpu), GFP_KERNEL_ACCOUNT);
	if (!vcpu)
		return -ENOMEM;
	vcpu->vm = vm;
	vcpu->id = id;
	ret = dr_ring_init(&vcpu->ring, vm->vcpu_ring_entries);
	if (ret)
		goto free;

	dr_vm_get(vm);
	fd = anon_inode_getfd("dirtyring-vcpu", &dr_vcpu_fops, vcpu,
			      O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		dr_vm_put(vm);
		ret = fd;
		goto free;
	}
	/* Pairs with dr_vm_vcpu(): the vCPU is complete when seen. */
	smp_store_release(&vm->vcpus[id], vcpu);
	return fd;

free:
	dr_vcpu_free(vcpu);
	return ret;
}
