// SPDX-License-Identifier: GPL-2.0
/*
 * Ground truth, in the spirit of KVM's dirty_log_test: every kind of writer
 * at once dirties random pages while a collector harvests, resets and
 * copies the harvested pages into a shadow, as a migration does, with a
 * signal every 100 us at the collector.  Every few passes the collector
 * pauses the writers (each stops between two writes, as a VMM stops its
 * vCPUs), makes one more complete harvest and compares: the shadow must
 * equal the memory, so a write that was not logged after a reset shows up
 * as a difference at the next checkpoint.
 *
 * Writers: two threads bound to vCPUs and one unbound thread (CPU stores),
 * another process (process_vm_writev), O_DIRECT reads from a loop device
 * (the loop worker writes through the pinned pages, without a fault), and
 * read(2) from a pipe and from a file.
 *
 * The work is fixed, never a time window: each writer does its share and
 * goes on until the collector has made MIN_PASSES passes, so writers and
 * collector overlap however fast either is; DIRTYRING_STRESS_SCALE
 * (default 1) multiplies both for `make stress`.
 */
#define _GNU_SOURCE
#include <linux/loop.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>

#include "dirtyring_util.h"
#include "../kselftest_harness.h"

#define PG PAGE_SIZE_4K
#define NPAGES 4096
#define RING 4096

/*
 * Each kind of writer has its own pages, so that one writer's later write
 * cannot hide another's lost one: stores in the first half, then the rest.
 */
#define STORE_PAGES 2048	/* vCPU 0: 1536, vCPU 1 and unbound: 256 each */
#define REGION(n) (STORE_PAGES + (n) * 512)	/* 512 pages from there */
#define DIO_REGION REGION(0)
#define REMOTE_REGION REGION(1)
#define PIPE_REGION REGION(2)
#define FILE_REGION REGION(3)
/*
 * Every BIG_EVERY passes the collector lets vCPU 0's ring fill up to
 * BIG_RESET entries first: a reset that long checks for signals on its
 * way, so the storm cuts it short.
 */
#define BIG_EVERY 8
#define BIG_RESET 1200
#define VCPUS 2
#define DIO_PAGES 16		/* per O_DIRECT read */
#define BACKING_PAGES 1024	/* of the loop device and the file */

/* Work per writer at scale 1. */
#define STORES 30000
#define REMOTE_WRITES 2000
#define DIO_READS 150
#define PIPE_READS 800
#define FILE_READS 800
#define CHECK_EVERY 4		/* passes between checkpoints */
#define MIN_PASSES 200

enum {
	BOUND0, BOUND1, UNBOUND, DIO, FILE_READER, PIPE_READER, FEEDER,
	WORKERS
};

#define WRITERS (WORKERS - 1)	/* the feeder writes only to the pipe */

/* Shared with the remote writer process. */
struct control {
	int pause;
	int paused;		/* writers stopped at the pause */
	int remote_done;	/* the remote writer finished its work */
	uint64_t passes;	/* the collector's, for the writers to see */
	uint64_t min_passes;
};

/* Work left: the writer's own share, or passes the collector still owes. */
static bool more(struct control *ctl, uint64_t i, uint64_t share)
{
	return i < share || __atomic_load_n(&ctl->passes, __ATOMIC_RELAXED) <
			    ctl->min_passes;
}

struct stress {
	char *mem, *shadow;
	int vm, vcpu[VCPUS];
	struct dr_ring_view rings[VCPUS + 1];
	uint8_t harvested[NPAGES];
	int running;		/* writer threads not finished */
	unsigned int scale;
	uint64_t bad, passes, entries;
	int dio, file, pipe[2];
	struct control *ctl;
	uint64_t checkpoints, differ;
	uint64_t differ_by[6];	/* stores, then DIO, remote, pipe, file */
};

struct worker {
	struct stress *s;
	int vcpu;		/* -1: unbound */
	unsigned int seed;
	unsigned int base, span;	/* stores: the pages */
	uint64_t done;		/* units of work completed */
	int err;
};

static unsigned int scale(void)
{
	const char *env = getenv("DIRTYRING_STRESS_SCALE");
	int n = env ? atoi(env) : 1;

	return n > 0 ? n : 1;
}

/*
 * Between two writes: stops while the collector checks.  A writer that saw
 * the pause lifted takes itself off the count before it looks again, so a
 * collector that set the pause anew in between never counts it as stopped
 * while it goes on to write (all sequentially consistent: Dekker).
 */
static void checkpoint(struct control *ctl)
{
	while (__atomic_load_n(&ctl->pause, __ATOMIC_SEQ_CST)) {
		__atomic_add_fetch(&ctl->paused, 1, __ATOMIC_SEQ_CST);
		while (__atomic_load_n(&ctl->pause, __ATOMIC_SEQ_CST))
			usleep(100);
		__atomic_sub_fetch(&ctl->paused, 1, __ATOMIC_SEQ_CST);
	}
}

static void finished(struct stress *s)
{
	__atomic_sub_fetch(&s->running, 1, __ATOMIC_RELEASE);
}

static void *store_worker(void *arg)
{
	struct worker *w = arg;
	struct stress *s = w->s;
	uint64_t value = (uint64_t)w->seed << 48, i;

	if (w->vcpu >= 0 && ioctl(w->vcpu, DIRTYRING_BIND, 0))
		w->err = errno;
	for (i = 0; !w->err && more(s->ctl, i, (uint64_t)STORES * s->scale);
	     i++) {
		unsigned int page = w->base + rand_r(&w->seed) % w->span;
		unsigned int slot = rand_r(&w->seed) % (PG / 8);

		checkpoint(s->ctl);
		DR_STORE(&((uint64_t *)(s->mem + page * PG))[slot], ++value);
		__atomic_store_n(&w->done, i + 1, __ATOMIC_RELAXED);
	}
	finished(s);
	return NULL;
}

static void *dio_worker(void *arg)
{
	struct worker *w = arg;
	struct stress *s = w->s;
	uint64_t i;

	for (i = 0; more(s->ctl, i, (uint64_t)DIO_READS * s->scale); i++) {
		unsigned int page = DIO_REGION + rand_r(&w->seed) % (512 - DIO_PAGES);
		off_t from = (rand_r(&w->seed) % (BACKING_PAGES - DIO_PAGES)) * PG;

		checkpoint(s->ctl);
		if (pread(s->dio, s->mem + page * PG, DIO_PAGES * PG, from) !=
		    DIO_PAGES * PG) {
			w->err = errno ?: EIO;
			break;
		}
		w->done++;
	}
	finished(s);
	return NULL;
}

static void *file_worker(void *arg)
{
	struct worker *w = arg;
	struct stress *s = w->s;
	uint64_t i;

	for (i = 0; more(s->ctl, i, (uint64_t)FILE_READS * s->scale); i++) {
		unsigned int page = FILE_REGION + rand_r(&w->seed) % 512;
		off_t from = (rand_r(&w->seed) % BACKING_PAGES) * PG +
			     rand_r(&w->seed) % 64 * 8;

		checkpoint(s->ctl);
		if (pread(s->file, s->mem + page * PG, 64, from) != 64) {
			w->err = errno ?: EIO;
			break;
		}
		w->done++;
	}
	finished(s);
	return NULL;
}

/* Feeds the pipe, every chunk different, until the reader closes it. */
static void *pipe_feeder(void *arg)
{
	struct worker *w = arg;
	struct stress *s = w->s;
	uint64_t i, chunk[8];

	for (i = 0;; i++) {
		memset(chunk, 0, sizeof(chunk));
		chunk[0] = i + 1;
		chunk[1] = 0x919e;
		if (write(s->pipe[1], chunk, sizeof(chunk)) != sizeof(chunk)) {
			if (errno != EPIPE)
				w->err = errno ?: EIO;
			break;
		}
	}
	return NULL;
}

static void *pipe_worker(void *arg)
{
	struct worker *w = arg;
	struct stress *s = w->s;
	uint64_t i;

	for (i = 0; more(s->ctl, i, (uint64_t)PIPE_READS * s->scale); i++) {
		unsigned int page = PIPE_REGION + rand_r(&w->seed) % 512;
		char *to = s->mem + page * PG + rand_r(&w->seed) % 56 * 64;
		ssize_t got = 0, n;

		checkpoint(s->ctl);
		while (got < 64) {
			n = read(s->pipe[0], to + got, 64 - got);
			if (n <= 0) {
				w->err = n ? errno : EPIPE;
				goto out;
			}
			got += n;
		}
		w->done++;
	}
out:
	/* The feeder's next write fails with EPIPE: it stops. */
	close(s->pipe[0]);
	s->pipe[0] = -1;
	finished(s);
	return NULL;
}

/* Another process: process_vm_writev into this one, never waiting. */
static pid_t start_remote_writer(struct stress *s)
{
	pid_t parent = getpid(), child = fork();
	unsigned int seed = 77;
	uint64_t i, value;

	if (child)
		return child;
	for (i = 0; more(s->ctl, i, (uint64_t)REMOTE_WRITES * s->scale); i++) {
		unsigned int page = REMOTE_REGION + rand_r(&seed) % 512;
		struct iovec local = { &value, sizeof(value) };
		struct iovec remote = {
			s->mem + page * PG + rand_r(&seed) % (PG / 8) * 8,
			sizeof(value) };

		value = (0xfeULL << 56) | i;
		checkpoint(s->ctl);
		if (process_vm_writev(parent, &local, 1, &remote, 1, 0) !=
		    sizeof(value))
			_exit(1);
	}
	__atomic_store_n(&s->ctl->remote_done, 1, __ATOMIC_RELEASE);
	_exit(0);
}

static void collect(void *arg, uint32_t slot, uint64_t offset)
{
	struct stress *s = arg;

	if (slot != 0 || offset >= NPAGES)
		s->bad++;
	else
		s->harvested[offset] = 1;
	s->entries++;
}

/*
 * One complete harvest, then the copy: harvest every ring, reset until the
 * reset is whole (signals cut it short), again while parked pages moved.
 */
static int migrate_pass(struct stress *s)
{
	struct dirtyring_reset r;
	unsigned int i;

	memset(s->harvested, 0, sizeof(s->harvested));
	do {
		for (i = 0; i <= VCPUS; i++)
			dr_harvest(&s->rings[i], collect, s);
		if (dr_reset(s->vm, &r))
			return -1;
	} while (r.overflow_pushed);
	for (i = 0; i < NPAGES; i++)
		if (s->harvested[i])
			memcpy(s->shadow + i * PG, s->mem + i * PG, PG);
	s->passes++;
	__atomic_store_n(&s->ctl->passes, s->passes, __ATOMIC_RELAXED);
	return 0;
}

/*
 * Pages whose shadow differs from memory; the first few are described
 * (the value tells the writer: seed << 48 stores, 0xfe.. remote, 0xd1d1..
 * the file or the loop device, 0x919e in the second word the pipe).
 */
static unsigned int compare(struct stress *s)
{
	unsigned int i, w, differ = 0;

	for (i = 0; i < NPAGES; i++) {
		const uint64_t *mem = (const uint64_t *)(s->mem + i * PG);
		const uint64_t *shadow = (const uint64_t *)(s->shadow + i * PG);

		if (!memcmp(shadow, mem, PG))
			continue;
		s->differ_by[i < STORE_PAGES ? 0 : 1 + (i - STORE_PAGES) / 512]++;
		if (s->differ + differ++ >= 4)
			continue;
		for (w = 0; w < PG / 8 && mem[w] == shadow[w]; w++)
			;
		fprintf(stderr, "# pass %llu: page %u word %u: memory %016llx, copy %016llx\n",
			(unsigned long long)s->passes, i, w,
			(unsigned long long)mem[w],
			(unsigned long long)shadow[w]);
	}
	return differ;
}

/* Writers still working: threads, and the remote process. */
static int writers_left(struct stress *s)
{
	return __atomic_load_n(&s->running, __ATOMIC_ACQUIRE) +
	       !__atomic_load_n(&s->ctl->remote_done, __ATOMIC_ACQUIRE);
}

/*
 * Stops the writers that still run, harvests completely once they all
 * stand still, compares, and lets them go.  Writers waiting for ring room
 * are released by the passes meanwhile.
 */
static int check(struct stress *s)
{
	__atomic_store_n(&s->ctl->pause, 1, __ATOMIC_SEQ_CST);
	while (__atomic_load_n(&s->ctl->paused, __ATOMIC_SEQ_CST) <
	       writers_left(s))
		if (migrate_pass(s))
			return -1;
	if (migrate_pass(s))
		return -1;
	s->differ += compare(s);
	s->checkpoints++;
	__atomic_store_n(&s->ctl->pause, 0, __ATOMIC_SEQ_CST);
	return 0;
}

/* Until vCPU 0's ring holds BIG_RESET entries, or its writer is done. */
static void let_vcpu0_fill(struct stress *s, struct worker *w)
{
	struct dirtyring_ring_status st;

	while (!dr_ring_status(s->vcpu[0], &st) && st.used < BIG_RESET &&
	       __atomic_load_n(&s->running, __ATOMIC_ACQUIRE) == WRITERS &&
	       !w->err)
		usleep(1000);
}

static void on_signal(int sig)
{
}

/* SIGUSR2 every 100 us at the calling thread only. */
static timer_t signal_storm(void)
{
	struct sigaction sa = { .sa_handler = on_signal };
	struct sigevent ev = { .sigev_notify = SIGEV_THREAD_ID,
			       .sigev_signo = SIGUSR2 };
	struct itimerspec it = { { 0, 100000 }, { 0, 100000 } };
	timer_t timer = 0;

	ev._sigev_un._tid = syscall(__NR_gettid);
	sigaction(SIGUSR2, &sa, NULL);
	if (!timer_create(CLOCK_MONOTONIC, &ev, &timer))
		timer_settime(timer, 0, &it, NULL);
	return timer;
}

/* A loop device over a file of @path; returns it opened O_DIRECT. */
static int loop_device(int backing, char *name, size_t len)
{
	struct loop_config cfg = { .fd = backing, .block_size = PG };
	int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC), n, fd, dio;

	if (ctl < 0)
		return -1;
	n = ioctl(ctl, LOOP_CTL_GET_FREE);
	close(ctl);
	if (n < 0)
		return -1;
	snprintf(name, len, "/dev/loop%d", n);
	fd = open(name, O_RDWR | O_CLOEXEC);
	if (fd < 0 || ioctl(fd, LOOP_CONFIGURE, &cfg)) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	dio = open(name, O_RDONLY | O_DIRECT | O_CLOEXEC);
	close(fd);
	return dio;
}

FIXTURE(stress) {
	struct stress *s;
	char loop[32];
};

FIXTURE_SETUP(stress)
{
	char path[] = "/tmp/dirtyring-stress-XXXXXX";
	struct stress *s = calloc(1, sizeof(*s));
	uint64_t *data;
	unsigned int i;

	ASSERT_NE(NULL, s);
	self->s = s;
	s->scale = scale();
	s->ctl = mmap(NULL, PG, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, s->ctl);
	s->ctl->min_passes = (uint64_t)MIN_PASSES * s->scale;
	signal(SIGPIPE, SIG_IGN);
	s->vm = dr_create_vm();
	ASSERT_LE(0, s->vm);
	ASSERT_EQ(0, dr_add_slot(s->vm, 0, NPAGES));
	ASSERT_EQ(0, dr_enable_rings(s->vm, RING, RING));
	s->mem = dr_map_slot(s->vm, 0, NPAGES);
	ASSERT_NE(NULL, s->mem);
	s->shadow = calloc(NPAGES, PG);
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

	/* The file behind the loop device and the plain reads: all distinct. */
	s->file = mkstemp(path);
	ASSERT_LE(0, s->file);
	unlink(path);
	data = malloc(BACKING_PAGES * PG);
	ASSERT_NE(NULL, data);
	for (i = 0; i < BACKING_PAGES * PG / 8; i++)
		data[i] = 0xd1d1000000000000ULL | i;
	ASSERT_EQ(BACKING_PAGES * PG, pwrite(s->file, data,
					     BACKING_PAGES * PG, 0));
	free(data);
	s->dio = loop_device(s->file, self->loop, sizeof(self->loop));
	ASSERT_EQ(0, pipe(s->pipe));
}

FIXTURE_TEARDOWN(stress)
{
	struct stress *s = self->s;
	int fd;

	if (!s)
		return;
	if (s->dio >= 0) {
		close(s->dio);
		fd = open(self->loop, O_RDWR | O_CLOEXEC);
		if (fd >= 0) {
			ioctl(fd, LOOP_CLR_FD, 0);
			close(fd);
		}
	}
	close(s->file);
	if (s->pipe[0] >= 0)
		close(s->pipe[0]);
	close(s->pipe[1]);
	free(s->shadow);
	free(s);
}

TEST_F_TIMEOUT(stress, every_writer_against_a_migration, 1800)
{
	static const char *const names[WORKERS] = {
		"vCPU 0 stores", "vCPU 1 stores", "unbound stores",
		"O_DIRECT reads", "file reads", "pipe reads", "pipe feeder" };
	void *(*const fns[WORKERS])(void *) = {
		store_worker, store_worker, store_worker, dio_worker,
		file_worker, pipe_worker, pipe_feeder };
	const uint64_t want[WORKERS] = { STORES, STORES, STORES, DIO_READS,
					 FILE_READS, PIPE_READS, 0 };
	struct stress *s = self->s;
	struct worker w[WORKERS];
	pthread_t t[WORKERS];
	int status = 0, reaped = 0;
	unsigned int i;
	pid_t remote;
	timer_t timer;

	if (s->dio < 0)
		SKIP(return, "no loop device for O_DIRECT (insmod loop): %s",
		     strerror(errno));
	/* Pages that differ before any write would hide nothing: start equal. */
	ASSERT_EQ(0, migrate_pass(s));

	s->running = WRITERS;	/* the feeder is not waited for */
	for (i = 0; i < WORKERS; i++) {
		static const unsigned int base[] = { 0, 1536, 1792 }, span[] = {
			1536, 256, 256 };

		w[i] = (struct worker){ s, i < VCPUS ? s->vcpu[i] : -1, i + 1 };
		if (i <= UNBOUND) {
			w[i].base = base[i];
			w[i].span = span[i];
		}
		ASSERT_EQ(0, pthread_create(&t[i], NULL, fns[i], &w[i]));
	}
	remote = start_remote_writer(s);
	ASSERT_LE(0, remote);

	/*
	 * A writer past its soft limit waits for a reset: keep migrating until
	 * every writer is out, as a VMM stopping its vCPUs must.
	 */
	timer = signal_storm();
	while (__atomic_load_n(&s->running, __ATOMIC_ACQUIRE) || !reaped) {
		if (s->passes % BIG_EVERY == BIG_EVERY - 1)
			let_vcpu0_fill(s, &w[BOUND0]);
		ASSERT_EQ(0, migrate_pass(s)) TH_LOG("reset: %s",
						     strerror(errno));
		if (!reaped && waitpid(remote, &status, WNOHANG) == remote)
			reaped = 1;
		/* The feeder never pauses: it only feeds the pipe reader. */
		if (!(s->passes % CHECK_EVERY))
			ASSERT_EQ(0, check(s));
	}
	timer_delete(timer);
	for (i = 0; i < WORKERS; i++)
		pthread_join(t[i], NULL);
	ASSERT_EQ(0, check(s));

	EXPECT_LE(s->ctl->min_passes, s->passes);
	TH_LOG("scale %u: %llu passes, %llu entries, %llu checkpoints",
	       s->scale, (unsigned long long)s->passes,
	       (unsigned long long)s->entries,
	       (unsigned long long)s->checkpoints);
	EXPECT_EQ(0, s->differ)
		TH_LOG("missed %llu writes, %llu/%llu/%llu/%llu/%llu by store/DIO/remote/pipe/file",
		       (unsigned long long)s->differ,
		       (unsigned long long)s->differ_by[0],
		       (unsigned long long)s->differ_by[1],
		       (unsigned long long)s->differ_by[2],
		       (unsigned long long)s->differ_by[3],
		       (unsigned long long)s->differ_by[4]);
	EXPECT_EQ(0, s->bad);
	EXPECT_TRUE(WIFEXITED(status) && !WEXITSTATUS(status))
		TH_LOG("process_vm_writev writer: status 0x%x", status);
	for (i = 0; i < WORKERS; i++) {
		EXPECT_EQ(0, w[i].err) TH_LOG("%s: %s", names[i],
					      strerror(w[i].err));
		EXPECT_LE(want[i] * s->scale, w[i].done) TH_LOG("%s", names[i]);
	}
	for (i = 0; i < VCPUS; i++)
		close(s->vcpu[i]);
	close(s->vm);
}

TEST_HARNESS_MAIN
