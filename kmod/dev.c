// SPDX-License-Identifier: GPL-2.0
/*
 * dirtyring: the /dev/dirtyring misc device, module entry points, the
 * system-wide limits and the pseudo filesystem that gives each VM's memory
 * its own inode (so re-protecting one VM's pages never touches another's).
 *
 * dr_vms_lock protects dr_vm_idr (every VM by id, for netlink and for the
 * per-process count: a
 * process is an address space, which each VM keeps referenced, so neither
 * fork nor pid reuse changes whose VMs are whose); dr_pinned_pages is
 * atomic.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mount.h>
#include <linux/pseudo_fs.h>
#include <linux/sched.h>
#include <linux/mm.h>
#include <linux/dirtyring.h>

#include "internal.h"

#define DIRTYRING_FS_MAGIC 0x64727267	/* "drrg" */

static unsigned long max_pinned_mb;
module_param(max_pinned_mb, ulong, 0644);
MODULE_PARM_DESC(max_pinned_mb,
		 "Guest memory of all VMs together, in MiB (0: half of RAM)");

static DEFINE_MUTEX(dr_vms_lock);
static DEFINE_IDR(dr_vm_idr);
static unsigned int dr_vm_count;
static atomic_long_t dr_pinned_pages = ATOMIC_LONG_INIT(0);
static struct vfsmount *dr_mnt;

static unsigned long dr_pinned_cap(void)
{
	unsigned long mb = READ_ONCE(max_pinned_mb);

	if (!mb)
		return totalram_pages() / 2;
	return mb << (20 - PAGE_SHIFT);
}

int dr_pinned_reserve(unsigned long npages)
{
	unsigned long cap = dr_pinned_cap();

	if (atomic_long_add_return(npages, &dr_pinned_pages) > cap) {
		atomic_long_sub(npages, &dr_pinned_pages);
		return -ENOSPC;
	}
	return 0;
}

void dr_pinned_release(unsigned long npages)
{
	atomic_long_sub(npages, &dr_pinned_pages);
}

/* DIRTYRING_CHECK_EXTENSION, on the device and on a VM fd. */
long dr_check_extension(unsigned long cap)
{
	switch (cap) {
	case DIRTYRING_CAP_MAX_VCPUS:
		return DIRTYRING_MAX_VCPUS;
	case DIRTYRING_CAP_MAX_SLOTS:
		return DIRTYRING_MAX_SLOTS;
	case DIRTYRING_CAP_MAX_SLOT_PAGES:
		return DR_MAX_SLOT_PAGES;
	case DIRTYRING_CAP_PAGE_SIZE:
		return PAGE_SIZE;
	case DIRTYRING_CAP_RING_MIN_ENTRIES:
		return DIRTYRING_RING_MIN_ENTRIES;
	case DIRTYRING_CAP_RING_MAX_ENTRIES:
		return DIRTYRING_RING_MAX_ENTRIES;
	case DIRTYRING_CAP_RING_RESERVED_ENTRIES:
		return DIRTYRING_RING_RESERVED_ENTRIES;
	case DIRTYRING_CAP_MAX_VMS:
		return DIRTYRING_MAX_VMS;
	case DIRTYRING_CAP_MAX_VMS_PER_PROCESS:
		return DIRTYRING_MAX_VMS_PER_PROCESS;
	case DIRTYRING_CAP_MAX_PINNED_PAGES:
		return dr_pinned_cap();
	case DIRTYRING_CAP_RESET_STATUS:
	case DIRTYRING_CAP_VCPU_REOPEN:
	case DIRTYRING_CAP_PINNED_RELOG:
		return 1;
	default:
		return 0;
	}
}

/* Gives @vm its id, within the per-process and system caps. */
int dr_vm_list_add(struct dr_vm *vm)
{
	unsigned int mine = 0;
	struct dr_vm *other;
	int ret, id;

	mutex_lock(&dr_vms_lock);
	idr_for_each_entry(&dr_vm_idr, other, id)
		mine += other->mm == vm->mm;
	if (dr_vm_count >= DIRTYRING_MAX_VMS) {
		ret = -ENOSPC;
	} else if (mine >= DIRTYRING_MAX_VMS_PER_PROCESS) {
		ret = -EMFILE;
	} else {
		/* Cyclic: an id is not reused soon after its VM is gone. */
		ret = idr_alloc_cyclic(&dr_vm_idr, vm, 1, INT_MAX, GFP_KERNEL);
		if (ret > 0) {
			vm->id = ret;
			dr_vm_count++;
			ret = 0;
		}
	}
	mutex_unlock(&dr_vms_lock);
	return ret;
}

void dr_vm_unlist(struct dr_vm *vm)
{
	mutex_lock(&dr_vms_lock);
	idr_remove(&dr_vm_idr, vm->id);
	dr_vm_count--;
	mutex_unlock(&dr_vms_lock);
}

/*
 * A reference to VM @id, or NULL.  A VM whose last reference is gone waits
 * in dr_vm_unlist() for dr_vms_lock, so under it the struct is still there.
 */
struct dr_vm *dr_vm_get_by_id(u32 id)
{
	struct dr_vm *vm;

	mutex_lock(&dr_vms_lock);
	vm = idr_find(&dr_vm_idr, id);
	if (vm && !kref_get_unless_zero(&vm->ref))
		vm = NULL;
	mutex_unlock(&dr_vms_lock);
	return vm;
}

/* A reference to the VM with the lowest id >= *@id (stored there), or NULL. */
struct dr_vm *dr_vm_get_next(u32 *id)
{
	struct dr_vm *vm;
	int next = *id;

	mutex_lock(&dr_vms_lock);
	while ((vm = idr_get_next(&dr_vm_idr, &next)) &&
	       !kref_get_unless_zero(&vm->ref))
		next++;
	mutex_unlock(&dr_vms_lock);
	*id = next;
	return vm;
}

static int dr_mem_release(struct inode *inode, struct file *file)
{
	dr_vm_put(file->private_data);
	return 0;
}

static const struct file_operations dr_mem_fops = {
	.owner = THIS_MODULE,
	.release = dr_mem_release,
	.llseek = noop_llseek,
};

/* The file every mmap of @vm's fd maps; it holds a VM reference. */
struct file *dr_mem_file_create(struct dr_vm *vm)
{
	struct inode *inode;
	struct file *file;

	inode = alloc_anon_inode(dr_mnt->mnt_sb);
	if (IS_ERR(inode))
		return ERR_CAST(inode);
	/* fput() drops a module reference that alloc_file_pseudo() does not take. */
	__module_get(THIS_MODULE);
	file = alloc_file_pseudo(inode, dr_mnt, "dirtyring-mem", O_RDWR,
				 &dr_mem_fops);
	if (IS_ERR(file)) {
		module_put(THIS_MODULE);
		iput(inode);
		return file;
	}
	dr_vm_get(vm);
	file->private_data = vm;
	return file;
}

static int dr_fs_init_fs_context(struct fs_context *fc)
{
	return init_pseudo(fc, DIRTYRING_FS_MAGIC) ? 0 : -ENOMEM;
}

static struct file_system_type dr_fs_type = {
	.name = "dirtyring",
	.init_fs_context = dr_fs_init_fs_context,
	.kill_sb = kill_anon_super,
};

static long dirtyring_dev_ioctl(struct file *file, unsigned int cmd,
				unsigned long arg)
{
	switch (cmd) {
	case DIRTYRING_GET_API_VERSION:
		if (arg)
			return -EINVAL;
		return DIRTYRING_API_VERSION;
	case DIRTYRING_CREATE_VM:
		if (arg)
			return -EINVAL;
		return dr_vm_create();
	case DIRTYRING_CHECK_EXTENSION:
		return dr_check_extension(arg);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations dirtyring_dev_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = dirtyring_dev_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice dirtyring_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "dirtyring",
	.fops = &dirtyring_dev_fops,
	.mode = 0600,
};

static int __init dirtyring_init(void)
{
	int ret;

	dr_mnt = kern_mount(&dr_fs_type);
	if (IS_ERR(dr_mnt))
		return PTR_ERR(dr_mnt);
	ret = dr_netlink_init();
	if (ret) {
		pr_err("cannot register the netlink family: %d\n", ret);
		kern_unmount(dr_mnt);
		return ret;
	}
	ret = misc_register(&dirtyring_dev);
	if (ret) {
		pr_err("cannot register /dev/dirtyring: %d\n", ret);
		dr_netlink_exit();
		kern_unmount(dr_mnt);
		return ret;
	}
	pr_info("API version %d loaded\n", DIRTYRING_API_VERSION);
	return 0;
}

static void __exit dirtyring_exit(void)
{
	misc_deregister(&dirtyring_dev);
	dr_netlink_exit();
	kern_unmount(dr_mnt);
	idr_destroy(&dr_vm_idr);
}

module_init(dirtyring_init);
module_exit(dirtyring_exit);

MODULE_DESCRIPTION("Dirty-page rings for live migration");
MODULE_LICENSE("GPL");
