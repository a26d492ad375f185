// SPDX-License-Identifier: GPL-2.0
/*
 * Concurrency, in the spirit of KVM's dirty_log_test: two vCPU threads and
 * an unbound writer dirty random pages while a collector harvests, resets
 * and copies the harvested pages into a shadow, as a migration would.
 * Ground truth is the memory itself: once the writers stop and a last round
 * is collected, the shadow must equal the memory, so a single write that
 * was not logged after a reset shows up as a difference.  Within one round
 * no page may be logged twice.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "dirtyring_util.h"
#include "../kselftest_harness.h"

#define NPAGES 4096
#define RING 1024
#define VCPUS 2
#define SECONDS 4

struct stress {
	char *mem;
	char *shadow;
	int vm, vcpu[VCPUS];
	struct dr_ring_view rings[VCPUS + 1];
	volatile int stop;
	int running;		/* workers not finished yet */
	uint32_t round_count[NPAGES];
	unsigned int rounds, duplicates, bad;
	uint64_t harvested;
};

struct worker {
	struct stress *s;
	int vcpu;	/* -1: unbound */
	unsigned int seed;
	uint64_t writes;
};

static void *worker_fn(void *arg)
{
	struct worker *w = arg;
	struct stress *s = w->s;
	uint64_t value = (uint64_t)w->seed << 48;

	if (w->vcpu >= 0 && ioctl(w->vcpu, DIRTYRING_BIND, 0)) {
		__atomic_sub_fetch(&s->running, 1, __ATOMIC_RELEASE);
		return NULL;
	}
	while (!s->stop) {
		unsigned int page = rand_r(&w->seed) % NPAGES;
		unsigned int slot = rand_r(&w->seed) % (PAGE_SIZE_4K / 8);

		((volatile uint64_t *)(s->mem + page * PAGE_SIZE_4K))[slot] =
			++value;
		w->writes++;
	}
	__atomic_sub_fetch(&s->running, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void collect(void *arg, uint32_t slot, uint64_t offset)
{
	struct stress *s = arg;

	if (slot != 0 || offset >= NPAGES) {
		s->bad++;
		return;
	}
	if (s->round_count[offset]++)
		s->duplicates++;
	s->harvested++;
}

/* One migration round: harvest, reset, then copy what was harvested. */
static void round_trip(struct stress *s)
{
	unsigned int i;

	memset(s->round_count, 0, sizeof(s->round_count));
	for (i = 0; i <= VCPUS; i++)
		dr_harvest(&s->rings[i], collect, s);
	dr_reset_count(s->vm);
	for (i = 0; i < NPAGES; i++)
		if (s->round_count[i])
			memcpy(s->shadow + i * PAGE_SIZE_4K,
			       s->mem + i * PAGE_SIZE_4K, PAGE_SIZE_4K);
	s->rounds++;
}

TEST(writers_and_collector)
{
	struct worker workers[VCPUS + 1];
	pthread_t threads[VCPUS + 1];
	struct stress *s = calloc(1, sizeof(*s));
	time_t end;
	unsigned int i, differ = 0;

	ASSERT_NE(NULL, s);
	s->vm = dr_create_vm();
	ASSERT_LE(0, s->vm);
	ASSERT_EQ(0, dr_add_slot(s->vm, 0, NPAGES));
	ASSERT_EQ(0, dr_enable_rings(s->vm, RING, RING));
	s->mem = dr_map_slot(s->vm, 0, NPAGES);
	ASSERT_NE(NULL, s->mem);
	s->shadow = calloc(NPAGES, PAGE_SIZE_4K);
	ASSERT_NE(NULL, s->shadow);
	for (i = 0; i < VCPUS; i++) {
		s->vcpu[i] = ioctl(s->vm, DIRTYRING_CREATE_VCPU, i);
		ASSERT_LE(0, s->vcpu[i]);
		s->rings[i] = (struct dr_ring_view){
			dr_map_ring(s->vcpu[i], RING), RING, 0 };
		ASSERT_NE(NULL, s->rings[i].entries);
	}
	s->rings[VCPUS] = (struct dr_ring_view){ dr_map_ring(s->vm, RING),
						 RING, 0 };
	ASSERT_NE(NULL, s->rings[VCPUS].entries);

	s->running = VCPUS + 1;
	for (i = 0; i <= VCPUS; i++) {
		workers[i] = (struct worker){ s, i < VCPUS ? s->vcpu[i] : -1,
					      i + 1, 0 };
		ASSERT_EQ(0, pthread_create(&threads[i], NULL, worker_fn,
					    &workers[i]));
	}
	end = time(NULL) + SECONDS;
	while (time(NULL) < end) {
		round_trip(s);
		usleep(1000);
	}
	/*
	 * A writer may be waiting for room when told to stop: keep collecting
	 * until every writer is out, as a VMM stopping its vCPUs must.
	 */
	s->stop = 1;
	while (__atomic_load_n(&s->running, __ATOMIC_ACQUIRE))
		round_trip(s);
	for (i = 0; i <= VCPUS; i++)
		pthread_join(threads[i], NULL);
	round_trip(s);

	for (i = 0; i < NPAGES; i++)
		differ += !!memcmp(s->shadow + i * PAGE_SIZE_4K,
				   s->mem + i * PAGE_SIZE_4K, PAGE_SIZE_4K);
	TH_LOG("%u rounds, %llu entries harvested, writes %llu/%llu/%llu",
	       s->rounds, (unsigned long long)s->harvested,
	       (unsigned long long)workers[0].writes,
	       (unsigned long long)workers[1].writes,
	       (unsigned long long)workers[2].writes);
	EXPECT_EQ(0, differ) TH_LOG("%u pages written but never harvested",
				    differ);
	EXPECT_EQ(0, s->duplicates);
	EXPECT_EQ(0, s->bad);
	EXPECT_LT(10, s->rounds);
	for (i = 0; i <= VCPUS; i++)
		EXPECT_LT(0, workers[i].writes);

	for (i = 0; i < VCPUS; i++)
		close(s->vcpu[i]);
	close(s->vm);
	free(s->shadow);
	free(s);
}

TEST_HARNESS_MAIN
