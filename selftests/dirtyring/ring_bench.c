// SPDX-License-Identifier: GPL-2.0
/*
 * Benchmarks of dirtyring against soft-dirty (clear_refs 4 + pagemap bit 55,
 * the upstream baseline), measured in the same run, reported as ratios:
 *
 * 1. Cost of a first write to a clean page (fault + log), against a write
 *    to an already-dirty page and against a first write after clear_refs on
 *    anonymous memory (the soft-dirty fault).
 * 2. Harvest + reset + re-protect with 1%, 10% and 100% of a 1 GiB slot
 *    dirty, against a soft-dirty pagemap scan + clear_refs of the same 1 GiB:
 *    the ring's cost should follow the dirty count, soft-dirty's the size.
 *
 * Not a test: it asserts nothing about speed.  It exits non-zero only if a
 * measurement could not be taken.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "dirtyring_util.h"

#ifndef GIB_PAGES
#define GIB_PAGES 262144UL
#endif
#define WRITERS 8		/* 8 rings of 64Ki entries hold 100% of 1 GiB */
#define RING 65536
#define FIRST_WRITE_PAGES 32768
#define REPEAT 2
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "ring_bench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void clear_soft_dirty(void)
{
	int fd = open("/proc/self/clear_refs", O_WRONLY);

	if (fd < 0 || write(fd, "4", 1) != 1)
		die("clear_refs");
	close(fd);
}

/* Stores only: a read first would add a read fault after a reset. */
static void touch(char *mem, unsigned long first, unsigned long count,
		  unsigned long stride)
{
	unsigned long i;

	for (i = 0; i < count; i++)
		DR_STORE(&mem[(first + i * stride) * PAGE_SIZE_4K], (char)i);
}

static void *map_anon(unsigned long npages)
{
	void *p = mmap(NULL, npages * PAGE_SIZE_4K, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die("mmap anon");
	/* 4 KiB pages, as the slot's: soft-dirty on a THP would be per 2 MiB. */
	if (madvise(p, npages * PAGE_SIZE_4K, MADV_NOHUGEPAGE))
		die("madvise");
	touch(p, 0, npages, 1);
	return p;
}

struct vm {
	int fd;
	int vcpu[WRITERS];
	char *mem;
	struct dr_ring_view ring[WRITERS + 1];
};

static void vm_create(struct vm *vm, unsigned long npages)
{
	int i;

	vm->fd = dr_create_vm();
	if (vm->fd < 0 || dr_add_slot(vm->fd, 0, npages) ||
	    dr_enable_rings(vm->fd, RING, RING))
		die("VM");
	vm->mem = dr_map_slot(vm->fd, 0, npages);
	if (!vm->mem)
		die("mmap slot");
	for (i = 0; i < WRITERS; i++) {
		vm->vcpu[i] = ioctl(vm->fd, DIRTYRING_CREATE_VCPU, i);
		vm->ring[i] = (struct dr_ring_view){
			dr_map_ring(vm->vcpu[i], RING), RING, 0 };
		if (vm->vcpu[i] < 0 || !vm->ring[i].entries)
			die("vCPU");
	}
	vm->ring[WRITERS] = (struct dr_ring_view){ dr_map_ring(vm->fd, RING),
						   RING, 0 };
	if (!vm->ring[WRITERS].entries)
		die("VM ring");
}

static long vm_harvest_reset(struct vm *vm)
{
	long n = 0;
	int i;

	for (i = 0; i <= WRITERS; i++)
		n += dr_harvest(&vm->ring[i], NULL, NULL);
	if (dr_reset_count(vm->fd) != n)
		die("reset count");
	return n;
}

static void bench_first_write(void)
{
	unsigned long n = FIRST_WRITE_PAGES;
	double t0, ring_first = 1e30, ring_dirty = 1e30, sd_first = 1e30;
	double ring_read = 1e30;
	struct vm vm;
	char *anon;
	int r;

	vm_create(&vm, n);
	anon = map_anon(n);
	for (r = 0; r < REPEAT; r++) {
		/* Unbound: every page goes to the VM ring (64Ki entries). */
		t0 = now_ns();
		touch(vm.mem, 0, n, 1);
		ring_first = fmin(ring_first, (now_ns() - t0) / n);
		t0 = now_ns();
		touch(vm.mem, 0, n, 1);
		ring_dirty = fmin(ring_dirty, (now_ns() - t0) / n);
		vm_harvest_reset(&vm);
		/* Reset zaps PTEs: the first read after it faults too. */
		t0 = now_ns();
		for (unsigned long i = 0; i < n; i++)
			(void)DR_LOAD(&vm.mem[i * PAGE_SIZE_4K]);
		ring_read = fmin(ring_read, (now_ns() - t0) / n);

		clear_soft_dirty();
		t0 = now_ns();
		touch(anon, 0, n, 1);
		sd_first = fmin(sd_first, (now_ns() - t0) / n);
	}
	printf("first write to a clean page, %lu pages, best of %d:\n", n, REPEAT);
	printf("  dirtyring first write   %8.0f ns/page\n", ring_first);
	printf("  dirtyring dirty write   %8.0f ns/page  (first/dirty = %.1fx)\n",
	       ring_dirty, ring_first / ring_dirty);
	printf("  soft-dirty first write  %8.0f ns/page  (dirtyring/soft-dirty = %.2fx)\n",
	       sd_first, ring_first / sd_first);
	printf("  dirtyring first read after reset %8.0f ns/page  (read/dirty = %.1fx)\n",
	       ring_read, ring_read / ring_dirty);
	munmap(anon, n * PAGE_SIZE_4K);
	close(vm.fd);
}

struct writer {
	struct vm *vm;
	int index;
	unsigned long first, count, stride;
};

static void *writer_fn(void *arg)
{
	struct writer *w = arg;

	if (ioctl(w->vm->vcpu[w->index], DIRTYRING_BIND, 0))
		die("bind");
	touch(w->vm->mem, w->first, w->count, w->stride);
	ioctl(w->vm->vcpu[w->index], DIRTYRING_UNBIND, 0);
	return NULL;
}

/* Dirties @count pages spread evenly over the slot, from WRITERS threads. */
static void dirty_spread(struct vm *vm, unsigned long count)
{
	struct writer w[WRITERS];
	pthread_t t[WRITERS];
	unsigned long stride = GIB_PAGES / count, per = count / WRITERS;
	int i;

	for (i = 0; i < WRITERS; i++) {
		w[i] = (struct writer){ vm, i, i * per * stride, per, stride };
		pthread_create(&t[i], NULL, writer_fn, &w[i]);
	}
	for (i = 0; i < WRITERS; i++)
		pthread_join(t[i], NULL);
}

static double soft_dirty_scan(char *anon, unsigned long npages,
			      uint64_t *pagemap_buf, unsigned long *found)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	double t0 = now_ns();
	unsigned long i, dirty = 0;
	off_t off = (uintptr_t)anon / PAGE_SIZE_4K * 8;

	if (fd < 0 || pread(fd, pagemap_buf, npages * 8, off) !=
	    (ssize_t)(npages * 8))
		die("pagemap");
	for (i = 0; i < npages; i++)
		dirty += (pagemap_buf[i] >> 55) & 1;
	clear_soft_dirty();
	close(fd);
	*found = dirty;
	return now_ns() - t0;
}

static void bench_harvest(void)
{
	static const unsigned int percents[] = { 1, 10, 100 };
	uint64_t *pagemap_buf = malloc(GIB_PAGES * 8);
	unsigned long found;
	struct vm vm;
	char *anon;
	unsigned long i;
	unsigned int p;

	if (!pagemap_buf)
		die("malloc");
	vm_create(&vm, GIB_PAGES);
	anon = map_anon(GIB_PAGES);
	/*
	 * Fault everything in once, so both sides start mapped and clean.  This
	 * thread is unbound: its writes go to the VM ring, which holds less
	 * than the slot, and a writer past the soft limit waits for a reset
	 * that only this thread would do.  So: a ring's worth at a time.
	 */
	for (i = 0; i < GIB_PAGES; i += RING / 2) {
		touch(vm.mem, i, RING / 2, 1);
		vm_harvest_reset(&vm);
	}
	vm_harvest_reset(&vm);

	printf("\nharvest + reset + re-protect, %lu MiB (%lu pages), best of %d:\n",
	       GIB_PAGES >> 8, GIB_PAGES, REPEAT);
	printf("  %%dirty    pages   dirtyring ms   soft-dirty ms   soft-dirty/dirtyring\n");
	for (p = 0; p < ARRAY_SIZE(percents); p++) {
		unsigned long count = GIB_PAGES * percents[p] / 100;
		double ring = 1e30, sd = 1e30, t0;
		int r;

		count -= count % WRITERS;
		for (r = 0; r < REPEAT; r++) {
			long n;

			dirty_spread(&vm, count);
			t0 = now_ns();
			n = vm_harvest_reset(&vm);
			ring = fmin(ring, now_ns() - t0);
			if (n != (long)count)
				die("harvested count");

			soft_dirty_scan(anon, GIB_PAGES, pagemap_buf, &found);
			touch(anon, 0, count, GIB_PAGES / count);
			sd = fmin(sd, soft_dirty_scan(anon, GIB_PAGES,
						      pagemap_buf, &found));
			if (found < count)
				die("soft-dirty count");
		}
		printf("  %5u%% %8lu   %12.2f   %13.2f   %8.2fx\n", percents[p],
		       count, ring / 1e6, sd / 1e6, sd / ring);
	}
	munmap(anon, GIB_PAGES * PAGE_SIZE_4K);
	munmap(vm.mem, GIB_PAGES * PAGE_SIZE_4K);
	close(vm.fd);
	free(pagemap_buf);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	bench_first_write();
	bench_harvest();
	return 0;
}
