/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers shared by the dirtyring selftests: VM setup and the harvester side
 * of the ring protocol (KVM's: acquire load of flags, release store of
 * RESET).  They abort the test through the harness on any error.
 */
#ifndef _DIRTYRING_UTIL_H
#define _DIRTYRING_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <linux/dirtyring.h>

#define DEVICE_PATH "/dev/dirtyring"
#define PAGE_SIZE_4K 4096UL

static inline int dr_open_dev(void)
{
	return open(DEVICE_PATH, O_RDWR | O_CLOEXEC);
}

static inline int dr_create_vm(void)
{
	int dev = dr_open_dev();
	int vm;

	if (dev < 0)
		return -1;
	vm = ioctl(dev, DIRTYRING_CREATE_VM, 0);
	close(dev);
	return vm;
}

static inline int dr_add_slot(int vm, uint32_t slot, uint64_t npages)
{
	struct dirtyring_slot req = { .slot = slot, .npages = npages };

	return ioctl(vm, DIRTYRING_ADD_SLOT, &req);
}

static inline int dr_enable_rings(int vm, uint32_t vcpu_entries,
				  uint32_t vm_entries)
{
	struct dirtyring_rings req = {
		.vcpu_ring_entries = vcpu_entries,
		.vm_ring_entries = vm_entries,
	};

	return ioctl(vm, DIRTYRING_ENABLE_RINGS, &req);
}

#ifdef DIRTYRING_API_V1	/* see dr_reset_once() */
#undef DIRTYRING_SLOT_MMAP_OFFSET
#define DIRTYRING_SLOT_MMAP_OFFSET(slot) (((__u64)(slot) + 1) << 40)
#endif

static inline void *dr_map_slot(int vm, uint32_t slot, uint64_t npages)
{
	void *p = mmap(NULL, npages * PAGE_SIZE_4K, PROT_READ | PROT_WRITE,
		       MAP_SHARED, vm, DIRTYRING_SLOT_MMAP_OFFSET(slot));

	return p == MAP_FAILED ? NULL : p;
}

static inline struct dirtyring_gfn *dr_map_ring(int fd, uint32_t entries)
{
	void *p = mmap(NULL, entries * sizeof(struct dirtyring_gfn),
		       PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);

	return p == MAP_FAILED ? NULL : p;
}

/* The harvester's view of one ring. */
struct dr_ring_view {
	struct dirtyring_gfn *entries;
	uint32_t size;
	uint32_t fetch_index;
};

/*
 * Collects the DIRTY entries from the ring's fetch index on, marks them
 * RESET, and calls @fn for each; returns how many.
 */
static inline uint32_t
dr_harvest(struct dr_ring_view *ring,
	   void (*fn)(void *arg, uint32_t slot, uint64_t offset), void *arg)
{
	uint32_t count = 0;

	for (;;) {
		struct dirtyring_gfn *e =
			&ring->entries[ring->fetch_index & (ring->size - 1)];
		uint32_t flags = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE);

		if (!(flags & DIRTYRING_GFN_F_DIRTY) ||
		    (flags & DIRTYRING_GFN_F_RESET))
			break;
		if (fn)
			fn(arg, e->slot, e->offset);
		__atomic_store_n(&e->flags, flags | DIRTYRING_GFN_F_RESET,
				 __ATOMIC_RELEASE);
		ring->fetch_index++;
		count++;
	}
	return count;
}

static inline int dr_ring_status(int fd, struct dirtyring_ring_status *st)
{
	return ioctl(fd, DIRTYRING_GET_RING_STATUS, st);
}

/*
 * One DIRTYRING_RESET_RINGS call.  Built with -DDIRTYRING_API_V1 the tests
 * speak the version 1 uAPI (reset with argument 0, returning the entries
 * reset): that is how a new test is shown to fail on the old module.
 */
static inline int dr_reset_once(int vm, struct dirtyring_reset *out)
{
#ifdef DIRTYRING_API_V1
	long n = ioctl(vm, _IO(DIRTYRING_IOCTL_TYPE, 0x13), 0);

	memset(out, 0, sizeof(*out));
	if (n < 0)
		return -1;
	out->entries = n;
	return 0;
#else
	memset(out, 0, sizeof(*out));
	return ioctl(vm, DIRTYRING_RESET_RINGS, out);
#endif
}

/* A complete reset: called again while a signal cuts it short. */
static inline int dr_reset(int vm, struct dirtyring_reset *out)
{
	int ret;

	do
		ret = dr_reset_once(vm, out);
	while (ret && errno == EINTR);
	return ret;
}

/* A complete reset; returns the entries it reset, or -1. */
static inline long dr_reset_count(int vm)
{
	struct dirtyring_reset r;

	return dr_reset(vm, &r) ? -1 : (long)r.entries;
}

/* Milliseconds of CLOCK_MONOTONIC: deadlines of waits, never speed checks. */
static inline uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000ULL + ts.tv_nsec / 1000000;
}

/*
 * One access the compiler must emit as written, for guest memory and for
 * flags shared between threads (the kernel's WRITE_ONCE / READ_ONCE).
 */
#define DR_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define DR_LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)

#endif /* _DIRTYRING_UTIL_H */
