// SPDX-License-Identifier: GPL-2.0
/*
 * Chaos with a ground truth: worker processes each run episodes of one VM
 * (1 to 3 bound vCPU writers and an unbound one, small rings so writers
 * wait and pages park) against a migration loop, with, at random, a signal
 * storm at the collector, vCPUs closed mid-run, and a teardown in random
 * order; every episode that runs to its end leaves the shadow equal to
 * memory.
 * Meanwhile the parent kills random workers with SIGKILL mid-episode and
 * starts new ones.  The kernel's checkers (make stress boots the debug
 * kernel) judge what the kills and closes leave behind.
 *
 * DIRTYRING_CHAOS_SECONDS=N runs for N seconds (make stress); without it,
 * a fixed amount of work: WORKERS workers of EPISODES episodes, one killed.
 * DIRTYRING_CHAOS_SEED makes a run repeatable.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>

#include "dirtyring_util.h"
#include "../kselftest_harness.h"

#define PG PAGE_SIZE_4K
#define NPAGES 1024
#define RING 256
#define MAX_VCPUS 3
#define WORKERS 3
#define EPISODES 2
#define PASSES 12		/* migration passes per episode, at most */

struct episode {
	int vm, vcpu[MAX_VCPUS], nvcpus;
	bool closed[MAX_VCPUS];
	char *mem, *shadow;
	uint8_t harvested[NPAGES];
	struct dr_ring_view ring[MAX_VCPUS + 1];	/* last: the VM ring */
	int stop, running, ready;	/* atomics */
	uint64_t entries, passes;
	unsigned int seed;
};

struct writer {
	struct episode *e;
	int vcpu;		/* its fd, -1: unbound */
	int index;		/* which word of each page it writes */
	unsigned int seed;
};

static void *write_pages(void *arg)
{
	struct writer *w = arg;
	struct episode *e = w->e;
	uint64_t value = 0;

	if (w->vcpu >= 0 && ioctl(w->vcpu, DIRTYRING_BIND, 0))
		exit(20);
	/* Bound before the collector may close its vCPU. */
	__atomic_fetch_add(&e->ready, 1, __ATOMIC_RELEASE);
	while (!DR_LOAD(&e->stop)) {
		unsigned int page = rand_r(&w->seed) % NPAGES;

		DR_STORE((uint64_t *)(e->mem + page * PG) + w->index, ++value);
	}
	__atomic_fetch_sub(&e->running, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void mark(void *arg, uint32_t slot, uint64_t offset)
{
	struct episode *e = arg;

	if (slot == 0 && offset < NPAGES)
		e->harvested[offset] = 1;
	e->entries++;
}

/* One complete harvest of every open ring, then the copy. */
static int pass(struct episode *e)
{
	struct dirtyring_reset r;
	int i;

	memset(e->harvested, 0, sizeof(e->harvested));
	do {
		for (i = 0; i <= e->nvcpus; i++)
			if (i == e->nvcpus || !e->closed[i])
				dr_harvest(&e->ring[i == e->nvcpus ? MAX_VCPUS : i],
					   mark, e);
		while (dr_reset(e->vm, &r))
			if (errno != EINTR)
				return -1;
	} while (r.overflow_pushed);
	for (i = 0; i < NPAGES; i++)
		if (e->harvested[i])
			memcpy(e->shadow + i * PG, e->mem + i * PG, PG);
	e->passes++;
	return 0;
}

static void on_signal(int sig)
{
}

/* A signal every 100 us at this thread, until deleted. */
static timer_t storm(void)
{
	struct sigevent sev = { .sigev_notify = SIGEV_THREAD_ID,
				.sigev_signo = SIGUSR1 };
	struct itimerspec its = { { 0, 100000 }, { 0, 100000 } };
	timer_t t;

	sev._sigev_un._tid = gettid();
	if (timer_create(CLOCK_MONOTONIC, &sev, &t) || timer_settime(t, 0, &its, NULL))
		exit(21);
	return t;
}

/* Closes what the episode holds, in an order of the seed's choosing. */
static void teardown(struct episode *e)
{
	int order[MAX_VCPUS + 3], n = 0, i, j;

	for (i = 0; i < e->nvcpus + 3; i++)
		order[n++] = i;
	for (i = n - 1; i > 0; i--) {
		int k = rand_r(&e->seed) % (i + 1), t = order[i];

		order[i] = order[k];
		order[k] = t;
	}
	for (j = 0; j < n; j++) {
		i = order[j];
		if (i < e->nvcpus) {
			if (!e->closed[i]) {
				munmap(e->ring[i].entries, RING * sizeof(struct dirtyring_gfn));
				close(e->vcpu[i]);
			}
		} else if (i == e->nvcpus) {
			munmap(e->mem, NPAGES * PG);
		} else if (i == e->nvcpus + 1) {
			munmap(e->ring[MAX_VCPUS].entries, RING * sizeof(struct dirtyring_gfn));
		} else {
			close(e->vm);
		}
	}
}

/* One episode; returns the pages whose last write the migration missed. */
static long episode(unsigned int seed, uint64_t *entries, uint64_t *passes)
{
	struct writer w[MAX_VCPUS + 1];
	pthread_t t[MAX_VCPUS + 1];
	struct episode *e = calloc(1, sizeof(*e));
	bool signals;
	timer_t timer = 0;
	long lost = 0;
	int i, p, npasses;

	if (!e)
		exit(22);
	e->seed = seed;
	e->nvcpus = 1 + rand_r(&e->seed) % MAX_VCPUS;
	signals = rand_r(&e->seed) % 2;
	npasses = 1 + rand_r(&e->seed) % PASSES;
	e->vm = dr_create_vm();
	e->shadow = calloc(NPAGES, PG);
	if (e->vm < 0 || !e->shadow || dr_add_slot(e->vm, 0, NPAGES) ||
	    dr_enable_rings(e->vm, RING, RING))
		exit(23);
	e->mem = dr_map_slot(e->vm, 0, NPAGES);
	e->ring[MAX_VCPUS] = (struct dr_ring_view){ dr_map_ring(e->vm, RING), RING, 0 };
	if (!e->mem || !e->ring[MAX_VCPUS].entries)
		exit(24);
	for (i = 0; i < e->nvcpus; i++) {
		e->vcpu[i] = ioctl(e->vm, DIRTYRING_CREATE_VCPU, i);
		e->ring[i] = (struct dr_ring_view){ dr_map_ring(e->vcpu[i], RING), RING, 0 };
		if (e->vcpu[i] < 0 || !e->ring[i].entries)
			exit(25);
	}
	e->running = e->nvcpus + 1;
	for (i = 0; i <= e->nvcpus; i++) {
		w[i] = (struct writer){ e, i < e->nvcpus ? e->vcpu[i] : -1, i,
					seed + i };
		if (pthread_create(&t[i], NULL, write_pages, &w[i]))
			exit(26);
	}
	while (__atomic_load_n(&e->ready, __ATOMIC_ACQUIRE) != e->nvcpus + 1)
		usleep(1000);
	if (signals)
		timer = storm();
	for (p = 0; p < npasses; p++) {
		if (pass(e))
			exit(27);
		/* Now and then a vCPU goes: its writer goes on, unbound. */
		i = rand_r(&e->seed) % (4 * MAX_VCPUS);
		if (i < e->nvcpus && !e->closed[i]) {
			munmap(e->ring[i].entries, RING * sizeof(struct dirtyring_gfn));
			close(e->vcpu[i]);
			e->closed[i] = true;
		}
	}
	/* Writers stop between two writes; some wait for a reset first. */
	DR_STORE(&e->stop, 1);
	while (__atomic_load_n(&e->running, __ATOMIC_ACQUIRE))
		if (pass(e))
			exit(28);
	for (i = 0; i <= e->nvcpus; i++)
		pthread_join(t[i], NULL);
	if (signals)
		timer_delete(timer);
	if (pass(e))
		exit(29);
	for (i = 0; i < NPAGES; i++)
		lost += !!memcmp(e->shadow + i * PG, e->mem + i * PG, PG);
	*entries += e->entries;
	*passes += e->passes;
	teardown(e);
	free(e->shadow);
	free(e);
	return lost;
}

/*
 * A worker: episodes until @deadline_ms (or @count of them); reports on
 * @fd "episodes entries passes lost" and exits 0.
 */
static void worker(int fd, unsigned int seed, uint64_t deadline_ms, int count)
{
	uint64_t entries = 0, passes = 0, lost = 0;
	struct sigaction sa = { .sa_handler = on_signal };
	char line[128];
	int n = 0;

	sigaction(SIGUSR1, &sa, NULL);
	while (deadline_ms ? now_ms() < deadline_ms : n < count) {
		lost += episode(seed + 1000 * n, &entries, &passes);
		n++;
	}
	snprintf(line, sizeof(line), "%d %llu %llu %llu\n", n,
		 (unsigned long long)entries, (unsigned long long)passes,
		 (unsigned long long)lost);
	if (write(fd, line, strlen(line)) < 0)
		exit(30);
	exit(0);
}

struct tally {
	uint64_t episodes, entries, passes, lost, killed, started;
};

/* Reaps @pid, adding its report to @t; false if it failed. */
static bool reap(pid_t pid, int fd, struct tally *t, bool was_killed)
{
	unsigned long long ep, en, pa, lo;
	char line[128] = { 0 };
	int status;
	FILE *f;

	waitpid(pid, &status, 0);
	if (was_killed && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) {
		t->killed++;
		close(fd);
		return true;
	}
	f = fdopen(fd, "r");
	if (!f || !fgets(line, sizeof(line), f) ||
	    sscanf(line, "%llu %llu %llu %llu", &ep, &en, &pa, &lo) != 4 ||
	    !WIFEXITED(status) || WEXITSTATUS(status)) {
		/* Exit codes 20-30 say which step of a worker failed. */
		fprintf(stderr, "# worker %d: %s %d\n", pid,
			WIFEXITED(status) ? "exit" : "signal",
			WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
		if (f)
			fclose(f);
		return false;
	}
	fclose(f);
	t->episodes += ep;
	t->entries += en;
	t->passes += pa;
	t->lost += lo;
	return true;
}

static pid_t start(unsigned int seed, uint64_t deadline, int count, int *fd)
{
	int p[2];
	pid_t pid;

	if (pipe(p))
		return -1;
	pid = fork();
	if (!pid) {
		close(p[0]);
		worker(p[1], seed, deadline, count);
	}
	close(p[1]);
	*fd = p[0];
	return pid;
}

FIXTURE(chaos) {
	int unused;
};

FIXTURE_SETUP(chaos)
{
}

FIXTURE_TEARDOWN(chaos)
{
}

TEST_F_TIMEOUT(chaos, keeps_the_promise, 3600)
{
	const char *env_s = getenv("DIRTYRING_CHAOS_SECONDS");
	const char *env_seed = getenv("DIRTYRING_CHAOS_SEED");
	unsigned int seed = env_seed ? strtoul(env_seed, NULL, 0) : time(NULL);
	uint64_t seconds = env_s ? strtoull(env_s, NULL, 0) : 0;
	uint64_t deadline = seconds ? now_ms() + seconds * 1000 : 0;
	struct tally t = { 0 };
	pid_t pid[WORKERS];
	int fd[WORKERS], i, failed = 0;
	bool killed_one = false;

	TH_LOG("seed %u, %s", seed, seconds ? "timed" : "fixed work");
	for (i = 0; i < WORKERS; i++) {
		pid[i] = start(seed + 100000 * i, deadline, EPISODES, &fd[i]);
		ASSERT_LE(0, pid[i]);
		t.started++;
	}
	/*
	 * Timed: a kill every 3 to 9 s, a new worker in its place (the debug
	 * kernel's episodes take seconds: more kills would leave none to check).
	 */
	while (seconds && now_ms() < deadline) {
		i = rand_r(&seed) % WORKERS;
		usleep(3000000 + rand_r(&seed) % 6000000);
		if (now_ms() >= deadline)
			break;
		kill(pid[i], SIGKILL);
		failed += !reap(pid[i], fd[i], &t, true);
		pid[i] = start(seed + 100000 * (unsigned int)t.started, deadline, 0, &fd[i]);
		ASSERT_LE(0, pid[i]);
		t.started++;
	}
	/* Fixed work: one worker of its own killed mid-run. */
	if (!seconds) {
		int kfd;
		pid_t k = start(seed + 7, 0, 1000, &kfd);

		ASSERT_LE(0, k);
		usleep(300000);
		kill(k, SIGKILL);
		killed_one = reap(k, kfd, &t, true);
		EXPECT_TRUE(killed_one);
	}
	for (i = 0; i < WORKERS; i++)
		failed += !reap(pid[i], fd[i], &t, false);
	TH_LOG("%llu workers, %llu killed; %llu episodes checked, %llu passes, %llu entries",
	       (unsigned long long)t.started, (unsigned long long)t.killed,
	       (unsigned long long)t.episodes, (unsigned long long)t.passes,
	       (unsigned long long)t.entries);
	EXPECT_EQ(0, failed);
	EXPECT_EQ(0, t.lost) TH_LOG("%llu pages missed a write", (unsigned long long)t.lost);
	EXPECT_LE(seconds ? 1 : WORKERS * EPISODES, t.episodes);
}

TEST_HARNESS_MAIN
