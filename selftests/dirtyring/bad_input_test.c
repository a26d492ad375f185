// SPDX-License-Identifier: GPL-2.0
/*
 * Bad input, as tables: every ioctl with wrong sizes, flags, ids, pointers
 * and order, mmap with wrong offsets, lengths and modes, limits.  Each gets
 * its documented errno; the QEMU runner checks the kernel log stays clean.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/syscall.h>

#include "dirtyring_util.h"
#include "../kselftest_harness.h"

#define NPAGES 16

/* Which fd a case is issued on. */
enum target { DEV, VM_BARE, VM, VCPU, DEV_NULL };

struct ioctl_case {
	const char *what;
	enum target target;
	unsigned long cmd;
	unsigned long arg;	/* an integer, or a pointer to one of below */
	int err;
};

static struct dirtyring_slot slot_flags = { .slot = 1, .npages = 1, .flags = 1 };
static struct dirtyring_slot slot_res0 = { .slot = 1, .npages = 1, .reserved = { 1, 0 } };
static struct dirtyring_slot slot_res1 = { .slot = 1, .npages = 1, .reserved = { 0, 1 } };
static struct dirtyring_slot slot_id_max = { .slot = DIRTYRING_MAX_SLOTS, .npages = 1 };
static struct dirtyring_slot slot_id_huge = { .slot = ~0U, .npages = 1 };
static struct dirtyring_slot slot_empty = { .slot = 1, .npages = 0 };
static struct dirtyring_slot slot_too_big = {
	.slot = 1, .npages = DIRTYRING_MAX_SLOT_PAGES + 1 };
static struct dirtyring_slot slot_over_cap = {
	.slot = 1, .npages = DIRTYRING_MAX_SLOT_PAGES };
static struct dirtyring_slot slot_dup = { .slot = 0, .npages = 1 };
static struct dirtyring_rings rings_npot = { 1000, 1024 };
static struct dirtyring_rings rings_small = { 64, 1024 };
static struct dirtyring_rings rings_large = { 1024, 131072 };
static struct dirtyring_rings rings_zero = { 0, 0 };
static struct dirtyring_rings rings_flags = { 1024, 1024, .flags = 1 };
static struct dirtyring_rings rings_res = { 1024, 1024, .reserved = 1 };
static struct dirtyring_rings rings_ok = { 1024, 1024 };
static struct dirtyring_reset reset_ok;
static struct dirtyring_reset reset_flags = { .flags = 1 };
static struct dirtyring_reset reset_res = { .reserved = 1 };

#define P(x) ((unsigned long)&(x))
#define BAD_PTR 0x10UL	/* unmapped */

static const struct ioctl_case ioctl_cases[] = {
	{ "CREATE_VM with an argument", DEV, DIRTYRING_CREATE_VM, 1, EINVAL },
	{ "VM ioctl on the device", DEV, DIRTYRING_RESET_RINGS, 0, ENOTTY },
	{ "vCPU ioctl on the device", DEV, DIRTYRING_BIND, 0, ENOTTY },

	{ "CREATE_VCPU before rings", VM_BARE, DIRTYRING_CREATE_VCPU, 0, EINVAL },
	{ "RESET_RINGS before rings", VM_BARE, DIRTYRING_RESET_RINGS,
	  P(reset_ok), EINVAL },
	{ "GET_RING_STATUS before rings", VM_BARE, DIRTYRING_GET_RING_STATUS,
	  P(slot_dup), EINVAL },
	{ "ENABLE_RINGS not a power of two", VM_BARE, DIRTYRING_ENABLE_RINGS,
	  P(rings_npot), EINVAL },
	{ "ENABLE_RINGS below minimum", VM_BARE, DIRTYRING_ENABLE_RINGS,
	  P(rings_small), EINVAL },
	{ "ENABLE_RINGS above maximum", VM_BARE, DIRTYRING_ENABLE_RINGS,
	  P(rings_large), EINVAL },
	{ "ENABLE_RINGS zero", VM_BARE, DIRTYRING_ENABLE_RINGS,
	  P(rings_zero), EINVAL },
	{ "ENABLE_RINGS flags", VM_BARE, DIRTYRING_ENABLE_RINGS,
	  P(rings_flags), EINVAL },
	{ "ENABLE_RINGS reserved", VM_BARE, DIRTYRING_ENABLE_RINGS,
	  P(rings_res), EINVAL },
	{ "ENABLE_RINGS NULL", VM_BARE, DIRTYRING_ENABLE_RINGS, 0, EFAULT },
	{ "ENABLE_RINGS bad pointer", VM_BARE, DIRTYRING_ENABLE_RINGS,
	  BAD_PTR, EFAULT },

	{ "ENABLE_RINGS twice", VM, DIRTYRING_ENABLE_RINGS, P(rings_ok), EBUSY },
	{ "ADD_SLOT flags", VM, DIRTYRING_ADD_SLOT, P(slot_flags), EINVAL },
	{ "ADD_SLOT reserved[0]", VM, DIRTYRING_ADD_SLOT, P(slot_res0), EINVAL },
	{ "ADD_SLOT reserved[1]", VM, DIRTYRING_ADD_SLOT, P(slot_res1), EINVAL },
	{ "ADD_SLOT id = max", VM, DIRTYRING_ADD_SLOT, P(slot_id_max), EINVAL },
	{ "ADD_SLOT id ~0", VM, DIRTYRING_ADD_SLOT, P(slot_id_huge), EINVAL },
	{ "ADD_SLOT no pages", VM, DIRTYRING_ADD_SLOT, P(slot_empty), EINVAL },
	{ "ADD_SLOT too large", VM, DIRTYRING_ADD_SLOT, P(slot_too_big), EINVAL },
	{ "ADD_SLOT over the pinned cap", VM, DIRTYRING_ADD_SLOT,
	  P(slot_over_cap), ENOSPC },
	{ "ADD_SLOT id in use", VM, DIRTYRING_ADD_SLOT, P(slot_dup), EEXIST },
	{ "ADD_SLOT NULL", VM, DIRTYRING_ADD_SLOT, 0, EFAULT },
	{ "ADD_SLOT bad pointer", VM, DIRTYRING_ADD_SLOT, BAD_PTR, EFAULT },
	{ "CREATE_VCPU id = max", VM, DIRTYRING_CREATE_VCPU,
	  DIRTYRING_MAX_VCPUS, EINVAL },
	{ "CREATE_VCPU id ~0", VM, DIRTYRING_CREATE_VCPU, ~0UL, EINVAL },
	{ "CREATE_VCPU id in use", VM, DIRTYRING_CREATE_VCPU, 0, EEXIST },
	{ "RESET_RINGS flags", VM, DIRTYRING_RESET_RINGS, P(reset_flags), EINVAL },
	{ "RESET_RINGS reserved", VM, DIRTYRING_RESET_RINGS, P(reset_res), EINVAL },
	{ "RESET_RINGS NULL", VM, DIRTYRING_RESET_RINGS, 0, EFAULT },
	{ "RESET_RINGS bad pointer", VM, DIRTYRING_RESET_RINGS, BAD_PTR, EFAULT },
	{ "RESET_RINGS of API version 1", VM, _IO(DIRTYRING_IOCTL_TYPE, 0x13), 0,
	  ENOTTY },
	{ "CHECK_EXTENSION on a vCPU", VCPU, DIRTYRING_CHECK_EXTENSION,
	  DIRTYRING_CAP_MAX_VCPUS, ENOTTY },
	{ "GET_RING_STATUS bad pointer", VM, DIRTYRING_GET_RING_STATUS,
	  BAD_PTR, EFAULT },
	{ "vCPU ioctl on a VM", VM, DIRTYRING_BIND, 0, ENOTTY },
	{ "device ioctl on a VM", VM, DIRTYRING_CREATE_VM, 0, ENOTTY },
	{ "unknown number on a VM", VM, _IO(DIRTYRING_IOCTL_TYPE, 0x1f), 0,
	  ENOTTY },
	{ "ADD_SLOT with a wrong size", VM,
	  _IOW(DIRTYRING_IOCTL_TYPE, 0x10, __u32), P(slot_dup), ENOTTY },

	{ "BIND with an argument", VCPU, DIRTYRING_BIND, 1, EINVAL },
	{ "UNBIND with an argument", VCPU, DIRTYRING_UNBIND, 1, EINVAL },
	{ "UNBIND when not bound", VCPU, DIRTYRING_UNBIND, 0, EINVAL },
	{ "GET_RING_STATUS bad pointer", VCPU, DIRTYRING_GET_RING_STATUS,
	  BAD_PTR, EFAULT },
	{ "VM ioctl on a vCPU", VCPU, DIRTYRING_ADD_SLOT, P(slot_dup), ENOTTY },
	{ "CREATE_VCPU on a vCPU", VCPU, DIRTYRING_CREATE_VCPU, 1, ENOTTY },

	{ "ADD_SLOT on another driver's fd", DEV_NULL, DIRTYRING_ADD_SLOT,
	  P(slot_dup), ENOTTY },
};

struct fds {
	int dev, vm_bare, vm, vcpu, dev_null;
};

static int open_fds(struct fds *f)
{
	f->dev = dr_open_dev();
	f->vm_bare = dr_create_vm();
	f->vm = dr_create_vm();
	f->dev_null = open("/dev/null", O_RDWR);
	if (f->dev < 0 || f->vm_bare < 0 || f->vm < 0 || f->dev_null < 0)
		return -1;
	if (dr_add_slot(f->vm, 0, NPAGES) || dr_enable_rings(f->vm, 1024, 1024))
		return -1;
	f->vcpu = ioctl(f->vm, DIRTYRING_CREATE_VCPU, 0);
	return f->vcpu < 0 ? -1 : 0;
}

static void close_fds(struct fds *f)
{
	close(f->vcpu);
	close(f->vm);
	close(f->vm_bare);
	close(f->dev);
	close(f->dev_null);
}

TEST(ioctls)
{
	struct fds f;
	unsigned int i;

	ASSERT_EQ(0, open_fds(&f)) TH_LOG("setup: %s", strerror(errno));
	for (i = 0; i < ARRAY_SIZE(ioctl_cases); i++) {
		const struct ioctl_case *c = &ioctl_cases[i];
		int fd = c->target == DEV ? f.dev : c->target == VM_BARE ?
			 f.vm_bare : c->target == VM ? f.vm :
			 c->target == VCPU ? f.vcpu : f.dev_null;
		long ret;

		errno = 0;
		ret = ioctl(fd, c->cmd, c->arg);
		EXPECT_EQ(-1, ret) TH_LOG("%s: returned %ld", c->what, ret);
		EXPECT_EQ(c->err, errno) TH_LOG("%s: errno %d (%s), want %d",
						c->what, errno, strerror(errno),
						c->err);
	}
	close_fds(&f);
}

struct mmap_case {
	const char *what;
	bool on_vcpu;
	size_t length;
	off_t offset;
	int flags;
	int err;
	int prot;	/* 0: read and write */
};

#define SLOT(n) ((off_t)DIRTYRING_SLOT_MMAP_OFFSET(n))
#define PG PAGE_SIZE_4K

static const struct mmap_case mmap_cases[] = {
	{ "private mapping of a slot", false, PG, SLOT(0), MAP_PRIVATE, EINVAL },
	{ "slot that does not exist", false, PG, SLOT(1), MAP_SHARED, EINVAL },
	{ "slot id past the last", false, PG, SLOT(DIRTYRING_MAX_SLOTS),
	  MAP_SHARED, EINVAL },
	{ "past the end of a slot", false, PG, SLOT(0) + NPAGES * PG,
	  MAP_SHARED, EINVAL },
	{ "longer than the slot", false, (NPAGES + 1) * PG, SLOT(0),
	  MAP_SHARED, EINVAL },
	{ "unaligned offset", false, PG, SLOT(0) + 1, MAP_SHARED, EINVAL },
	{ "between the VM ring and slot 0", false, PG, PG, MAP_SHARED, EINVAL },
	{ "VM ring longer than the ring", false, 64 * PG, 0, MAP_SHARED, EINVAL },
	{ "huge offset", false, PG, (off_t)1 << 62, MAP_SHARED, EINVAL },
	{ "vCPU ring at an offset", true, PG, PG, MAP_SHARED, EINVAL },
	{ "vCPU ring longer than the ring", true, 64 * PG, 0, MAP_SHARED,
	  EINVAL },
	{ "private mapping of the VM ring", false, PG, 0, MAP_PRIVATE, EINVAL },
	{ "private mapping of a vCPU ring", true, PG, 0, MAP_PRIVATE, EINVAL },
	{ "executable VM ring", false, PG, 0, MAP_SHARED, EINVAL,
	  PROT_READ | PROT_EXEC },
	{ "executable vCPU ring", true, PG, 0, MAP_SHARED, EINVAL,
	  PROT_READ | PROT_WRITE | PROT_EXEC },
};

TEST(mmaps)
{
	struct fds f;
	unsigned int i;

	ASSERT_EQ(0, open_fds(&f));
	for (i = 0; i < ARRAY_SIZE(mmap_cases); i++) {
		const struct mmap_case *c = &mmap_cases[i];
		void *p;

		errno = 0;
		p = mmap(NULL, c->length,
			 c->prot ?: PROT_READ | PROT_WRITE, c->flags,
			 c->on_vcpu ? f.vcpu : f.vm, c->offset);
		EXPECT_EQ(MAP_FAILED, p) TH_LOG("%s: mapped", c->what);
		if (p != MAP_FAILED)
			munmap(p, c->length);
		EXPECT_EQ(c->err, errno) TH_LOG("%s: errno %d (%s), want %d",
						c->what, errno, strerror(errno),
						c->err);
	}
	/* A ring mapped without exec cannot gain it later. */
	{
		void *ring = mmap(NULL, PG, PROT_READ, MAP_SHARED, f.vcpu, 0);

		ASSERT_NE(MAP_FAILED, ring);
		EXPECT_EQ(-1, mprotect(ring, PG, PROT_READ | PROT_EXEC));
		EXPECT_EQ(EACCES, errno);
		munmap(ring, PG);
	}
	/* And mmap before rings are enabled. */
	ASSERT_EQ(0, dr_add_slot(f.vm_bare, 0, 1));
	EXPECT_EQ(MAP_FAILED, mmap(NULL, PG, PROT_READ, MAP_SHARED, f.vm_bare,
				   SLOT(0)));
	EXPECT_EQ(EINVAL, errno);
	close_fds(&f);
}

TEST(vms_per_process)
{
	int vms[DIRTYRING_MAX_VMS_PER_PROCESS];
	int i, extra;

	for (i = 0; i < DIRTYRING_MAX_VMS_PER_PROCESS; i++) {
		vms[i] = dr_create_vm();
		ASSERT_LE(0, vms[i]) TH_LOG("VM %d: %s", i, strerror(errno));
	}
	extra = dr_create_vm();
	EXPECT_EQ(-1, extra);
	EXPECT_EQ(EMFILE, errno);
	/* Closing one makes room again. */
	close(vms[0]);
	vms[0] = dr_create_vm();
	EXPECT_LE(0, vms[0]);
	for (i = 0; i < DIRTYRING_MAX_VMS_PER_PROCESS; i++)
		close(vms[i]);
}

TEST(vcpus_and_slots_up_to_the_limit)
{
	int vm = dr_create_vm(), vcpus[DIRTYRING_MAX_VCPUS];
	int i;

	ASSERT_LE(0, vm);
	ASSERT_EQ(0, dr_enable_rings(vm, 128, 128));
	for (i = 0; i < DIRTYRING_MAX_VCPUS; i++) {
		vcpus[i] = ioctl(vm, DIRTYRING_CREATE_VCPU, i);
		ASSERT_LE(0, vcpus[i]) TH_LOG("vCPU %d: %s", i, strerror(errno));
	}
	for (i = 0; i < DIRTYRING_MAX_SLOTS; i++)
		ASSERT_EQ(0, dr_add_slot(vm, i, 1)) TH_LOG("slot %d", i);
	/* Closing vCPU fds before the VM fd, and the VM's last. */
	for (i = 0; i < DIRTYRING_MAX_VCPUS; i++)
		close(vcpus[i]);
	close(vm);
}

/*
 * Every documented limit is reachable: the largest slot passes every check
 * but the pinned-memory cap (its bookkeeping fits kvmalloc: no ENOMEM, no
 * WARN), one page more is EINVAL, and the last slot's window ends below
 * what a 32-bit mmap2() reaches.  The module answers the same limits.
 */
TEST(limits_are_reachable_and_answered)
{
	int vm = dr_create_vm(), dev = dr_open_dev();

	ASSERT_LE(0, vm);
	ASSERT_LE(0, dev);
	EXPECT_EQ(-1, dr_add_slot(vm, 0, DIRTYRING_MAX_SLOT_PAGES));
	EXPECT_EQ(ENOSPC, errno) TH_LOG("errno %d (%s)", errno, strerror(errno));
	EXPECT_EQ(-1, dr_add_slot(vm, 0, DIRTYRING_MAX_SLOT_PAGES + 1));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_GE(1ULL << 44, DIRTYRING_SLOT_MMAP_OFFSET(DIRTYRING_MAX_SLOTS - 1) +
	       DIRTYRING_MAX_SLOT_SIZE);
	EXPECT_EQ(DIRTYRING_MAX_SLOT_SIZE, DIRTYRING_MAX_SLOT_PAGES * PG);

	EXPECT_EQ(DIRTYRING_MAX_SLOT_PAGES,
		  ioctl(dev, DIRTYRING_CHECK_EXTENSION,
			DIRTYRING_CAP_MAX_SLOT_PAGES));
	EXPECT_EQ(PG, ioctl(vm, DIRTYRING_CHECK_EXTENSION,
			    DIRTYRING_CAP_PAGE_SIZE));
	close(dev);
	close(vm);
}

TEST(module_cannot_unload_while_a_vm_exists)
{
	int vm = dr_create_vm();

	ASSERT_LE(0, vm);
	EXPECT_EQ(-1, syscall(__NR_delete_module, "dirtyring", O_NONBLOCK));
	EXPECT_TRUE(errno == EBUSY || errno == EWOULDBLOCK)
		TH_LOG("errno %d (%s)", errno, strerror(errno));
	close(vm);
}

TEST_HARNESS_MAIN
