// SPDX-License-Identifier: GPL-2.0
/*
 * What statistics cost the fault path: the first-write benchmark of a
 * thread bound to a vCPU (the writer whose faults are stall-accounted),
 * with the module as built, with it loaded with stall_accounting=0 (the
 * counters only), and with the same sources built with DR_NO_STATS,
 * swapped in and out of the running kernel in turns, in the same boot.
 * The ratios are the result: each against DR_NO_STATS, best of each.
 *
 * DR_STATS_KO and DR_NOSTATS_KO name the two modules (make bench passes
 * them).  Not a test: it asserts nothing about speed, and exits non-zero
 * only if a measurement could not be taken.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>

#include "dirtyring_util.h"

/*
 * Many short passes: under TCG one pass varies by +-20%, and the best of
 * many is what stays put from run to run.
 */
#define PAGES 8192
#define RING 16384
#define ROUNDS 10	/* module loads of each kind, in alternating order */
#define PASSES 12	/* first-write passes per load */

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "stats_bench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void load(const char *path, const char *params)
{
	int fd;

	/* Every VM fd is closed: nothing holds the module. */
	if (syscall(SYS_delete_module, "dirtyring", O_NONBLOCK) && errno != ENOENT)
		die("delete_module");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || syscall(SYS_finit_module, fd, params, 0))
		die(path);
	close(fd);
}

struct pass {
	int vcpu;
	char *mem;
	double ns;
};

static void *first_writes(void *arg)
{
	struct pass *p = arg;
	double t0;
	int i;

	cpu_set_t one;

	/* One CPU: a migration mid-pass would measure the scheduler. */
	CPU_ZERO(&one);
	CPU_SET(0, &one);
	if (sched_setaffinity(0, sizeof(one), &one) ||
	    ioctl(p->vcpu, DIRTYRING_BIND, 0))
		die("bind");
	t0 = now_ns();
	for (i = 0; i < PAGES; i++)
		DR_STORE(&p->mem[(size_t)i * PAGE_SIZE_4K], (char)i);
	p->ns = (now_ns() - t0) / PAGES;
	return NULL;
}

/* Best first-write ns/page of a bound thread, over PASSES resets. */
static double measure(void)
{
	struct dr_ring_view ring;
	struct pass p;
	double best = 1e30;
	pthread_t t;
	int vm, i;

	vm = dr_create_vm();
	if (vm < 0 || dr_add_slot(vm, 0, PAGES) || dr_enable_rings(vm, RING, RING))
		die("VM");
	p.vcpu = ioctl(vm, DIRTYRING_CREATE_VCPU, 0);
	p.mem = dr_map_slot(vm, 0, PAGES);
	ring = (struct dr_ring_view){ dr_map_ring(p.vcpu, RING), RING, 0 };
	if (p.vcpu < 0 || !p.mem || !ring.entries)
		die("vCPU");
	for (i = 0; i < PASSES; i++) {
		if (pthread_create(&t, NULL, first_writes, &p) ||
		    pthread_join(t, NULL))
			die("thread");
		best = fmin(best, p.ns);
		if (dr_harvest(&ring, NULL, NULL) != PAGES ||
		    dr_reset_count(vm) != PAGES)
			die("harvest");
	}
	munmap(ring.entries, RING * sizeof(struct dirtyring_gfn));
	munmap(p.mem, (size_t)PAGES * PAGE_SIZE_4K);
	close(p.vcpu);
	close(vm);
	return best;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

#define VARIANTS 3

int main(void)
{
	const char *with = getenv("DR_STATS_KO"), *without = getenv("DR_NOSTATS_KO");
	static const char *const names[VARIANTS] = {
		"with statistics", "stall_accounting=0", "DR_NO_STATS" };
	double best[VARIANTS] = { 1e30, 1e30, 1e30 }, ratio[VARIANTS][ROUNDS];
	int r, k, v;

	if (!with || !without) {
		fprintf(stderr,
			"stats_bench: DR_STATS_KO and DR_NOSTATS_KO must name the modules\n");
		return 1;
	}
	for (r = 0; r < ROUNDS; r++) {
		double ns[VARIANTS];

		/* Rotate which goes first, so drift favours none. */
		for (k = 0; k < VARIANTS; k++) {
			v = (r + k) % VARIANTS;
			load(v == 2 ? without : with,
			     v == 1 ? "stall_accounting=0" : "");
			ns[v] = measure();
			best[v] = fmin(best[v], ns[v]);
		}
		printf("  round %d:", r);
		for (v = 0; v < VARIANTS; v++) {
			ratio[v][r] = ns[v] / ns[2];
			printf("  %s %5.0f ns/page", names[v], ns[v]);
		}
		printf("\n");
	}
	load(with, "");
	printf("first write of a bound vCPU thread, %d pages, %d loads, best of %d passes:\n",
	       PAGES, ROUNDS, PASSES);
	for (v = 0; v < VARIANTS; v++) {
		qsort(ratio[v], ROUNDS, sizeof(ratio[v][0]), cmp);
		printf("  %-20s %6.0f ns/page  (/DR_NO_STATS %.3fx best, %.3fx median)\n",
		       names[v], best[v], best[v] / best[2],
		       (ratio[v][ROUNDS / 2 - 1] + ratio[v][ROUNDS / 2]) / 2);
	}
	return 0;
}
