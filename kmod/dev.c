// SPDX-License-Identifier: GPL-2.0
/*
 * dirtyring: the /dev/dirtyring misc device and module entry points.
 *
 * Owns the misc device registration.  It holds no state of its own, so it
 * needs no lock: each open file is independent.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/dirtyring.h>

#include "compat.h"

static long dirtyring_dev_ioctl(struct file *file, unsigned int cmd,
				unsigned long arg)
{
	switch (cmd) {
	case DIRTYRING_GET_API_VERSION:
		if (arg)
			return -EINVAL;
		return DIRTYRING_API_VERSION;
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

	ret = misc_register(&dirtyring_dev);
	if (ret) {
		pr_err("cannot register /dev/dirtyring: %d\n", ret);
		return ret;
	}
	pr_info("API version %d loaded\n", DIRTYRING_API_VERSION);
	return 0;
}

static void __exit dirtyring_exit(void)
{
	misc_deregister(&dirtyring_dev);
}

module_init(dirtyring_init);
module_exit(dirtyring_exit);

MODULE_DESCRIPTION("Dirty-page rings for live migration");
MODULE_LICENSE("GPL");
