// SPDX-License-Identifier: GPL-2.0
/*
 * Lifetimes and waits: what happens to a writer, its wait and its pages when
 * the things around it go away or belong to someone else.
 *  - the module unloaded while a ring-full wait is queued as task work;
 *  - a vCPU closed under its bound, waiting thread; a bound thread exiting;
 *  - a writer from another process that fills a ring it cannot harvest;
 *  - the poll wake-up when two writers make a ring non-empty at once.
 */
#define _GNU_SOURCE
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>

#include "dirtyring_util.h"
#include "../kselftest_harness.h"

#define PG PAGE_SIZE_4K
#define RING 128
#define SOFT (RING - DIRTYRING_RING_RESERVED_ENTRIES)
#define NPAGES 512

/* Joins @t; false if it is still running after 20 s (a stranded thread). */
static bool join_within(pthread_t t)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 20;
	return pthread_timedjoin_np(t, NULL, &ts) == 0;
}

static bool wait_waits(int fd, uint64_t before)
{
	struct dirtyring_ring_status st;
	uint64_t deadline = now_ms() + 20000;

	while (now_ms() < deadline) {
		if (!dr_ring_status(fd, &st) && st.waits > before)
			return true;
		usleep(1000);
	}
	return false;
}

struct vm {
	int vm, vcpu;
	char *mem;
};

static int vm_init(struct vm *v, bool vcpu)
{
	v->vm = dr_create_vm();
	if (v->vm < 0 || dr_add_slot(v->vm, 0, NPAGES) ||
	    dr_enable_rings(v->vm, RING, RING))
		return -1;
	v->vcpu = vcpu ? ioctl(v->vm, DIRTYRING_CREATE_VCPU, 0) : -1;
	v->mem = dr_map_slot(v->vm, 0, NPAGES);
	return v->mem && (!vcpu || v->vcpu >= 0) ? 0 : -1;
}

static void see(void *arg, uint32_t slot, uint64_t offset)
{
	uint8_t *seen = arg;

	if (slot == 0 && offset < NPAGES)
		seen[offset] = 1;
}

/* Harvests @rings completely (parked pages too); counts pages in @seen. */
static int harvest_all(int vm, struct dr_ring_view *rings, int n,
		       uint8_t *seen)
{
	struct dirtyring_reset r;
	int i;

	do {
		for (i = 0; i < n; i++)
			dr_harvest(&rings[i], see, seen);
		if (dr_reset(vm, &r))
			return -1;
	} while (r.overflow_pushed);
	return 0;
}

static unsigned int count_seen(const uint8_t *seen)
{
	unsigned int i, n = 0;

	for (i = 0; i < NPAGES; i++)
		n += seen[i];
	return n;
}

struct blocked_reader {
	int pipe;
	struct iovec iov[2];
	ssize_t ret;
};

/*
 * readv() from a pipe: the first page is slot memory (its write reaches the
 * soft limit and queues a wait as task work), the second a missing
 * userfaultfd page, where the thread stays in the kernel, wait queued.
 */
static void *blocked_readv(void *arg)
{
	struct blocked_reader *b = arg;

	b->ret = readv(b->pipe, b->iov, 2);
	return NULL;
}

static int delete_module(void)
{
	return syscall(__NR_delete_module, "dirtyring", O_NONBLOCK);
}

static bool wait_for_path(const char *path)
{
	uint64_t deadline = now_ms() + 20000;
	struct stat st;

	while (stat(path, &st) && now_ms() < deadline)
		usleep(10000);
	return !stat(path, &st);
}

/*
 * The module must stay loaded while a wait is queued: the wait's task work
 * is module code.  Every fd and mapping of the VM is gone; unloading is
 * refused until the writer has run its task work, then succeeds, and the
 * module loads again for the tests after this one.
 */
TEST(unload_with_a_queued_wait)
{
	const char *ko = getenv("DIRTYRING_KO") ?: "/lib/dirtyring.ko";
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = { 0 };
	struct uffdio_zeropage zero = { 0 };
	struct blocked_reader b = { 0 };
	static char data[2 * PG];
	struct uffd_msg msg;
	int pipefd[2], uffd, mod, ret = -1;
	uint64_t deadline;
	struct vm v;
	char *missing;
	pthread_t t;
	unsigned int i;

	if (access(ko, R_OK))
		SKIP(return, "no module file at %s to load again", ko);
	ASSERT_EQ(0, vm_init(&v, false));
	uffd = syscall(__NR_userfaultfd, O_CLOEXEC);
	ASSERT_LE(0, uffd);
	ASSERT_EQ(0, ioctl(uffd, UFFDIO_API, &api));
	missing = mmap(NULL, PG, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, missing);
	reg.range.start = (unsigned long)missing;
	reg.range.len = PG;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	ASSERT_EQ(0, ioctl(uffd, UFFDIO_REGISTER, &reg));
	ASSERT_EQ(0, pipe(pipefd));
	ASSERT_EQ(sizeof(data), write(pipefd[1], data, sizeof(data)));

	/* The VM ring one entry short of its soft limit. */
	for (i = 0; i < SOFT - 1; i++)
		v.mem[i * PG] = 1;
	b.pipe = pipefd[0];
	b.iov[0] = (struct iovec){ v.mem + (SOFT - 1) * PG, PG };
	b.iov[1] = (struct iovec){ missing, PG };
	ASSERT_EQ(0, pthread_create(&t, NULL, blocked_readv, &b));
	/* The reader reached the missing page: its wait is queued. */
	ASSERT_EQ(sizeof(msg), read(uffd, &msg, sizeof(msg)));

	munmap(v.mem, NPAGES * PG);
	close(v.vm);
	errno = 0;
	EXPECT_EQ(-1, delete_module())
		TH_LOG("the module unloaded under a queued wait");
	EXPECT_TRUE(errno == EWOULDBLOCK || errno == EBUSY)
		TH_LOG("errno %d (%s)", errno, strerror(errno));

	zero.range.start = (unsigned long)missing;
	zero.range.len = PG;
	ASSERT_EQ(0, ioctl(uffd, UFFDIO_ZEROPAGE, &zero));
	ASSERT_TRUE(join_within(t));
	EXPECT_EQ((ssize_t)sizeof(data), b.ret);

	/* The last reference goes with the writer's task work: unload. */
	deadline = now_ms() + 20000;
	while ((ret = delete_module()) && now_ms() < deadline)
		usleep(10000);
	ASSERT_EQ(0, ret) TH_LOG("unload: %s", strerror(errno));
	mod = open(ko, O_RDONLY | O_CLOEXEC);
	ASSERT_LE(0, mod);
	ASSERT_EQ(0, syscall(__NR_finit_module, mod, "", 0))
		TH_LOG("load %s: %s", ko, strerror(errno));
	close(mod);
	EXPECT_TRUE(wait_for_path(DEVICE_PATH));
	close(uffd);
	close(pipefd[0]);
	close(pipefd[1]);
}

struct bound_writer {
	int vcpu;
	char *mem;
	unsigned int pages;
	int bind_ret;
};

static void *bound_write(void *arg)
{
	struct bound_writer *w = arg;
	unsigned int i;

	w->bind_ret = ioctl(w->vcpu, DIRTYRING_BIND, 0);
	for (i = 0; i < w->pages; i++)
		w->mem[i * PG] = 1;
	return NULL;
}

/*
 * Closing a vCPU under its bound thread, which waits at the soft limit:
 * the thread is released, the id can be created again, and the pages of
 * the closed ring come back through the VM ring.
 */
TEST(closing_a_vcpu_releases_its_thread_and_id)
{
	struct bound_writer w;
	struct dr_ring_view rings[2];
	uint8_t seen[NPAGES] = { 0 };
	struct vm v;
	pthread_t t;
	int again;

	ASSERT_EQ(0, vm_init(&v, true));
	w = (struct bound_writer){ v.vcpu, v.mem, SOFT + 8 };
	ASSERT_EQ(0, pthread_create(&t, NULL, bound_write, &w));
	ASSERT_TRUE(wait_waits(v.vcpu, 0));
	close(v.vcpu);
	ASSERT_TRUE(join_within(t)) TH_LOG("the bound thread is stranded");
	ASSERT_EQ(0, w.bind_ret);

	again = ioctl(v.vm, DIRTYRING_CREATE_VCPU, 0);
	ASSERT_LE(0, again) TH_LOG("vCPU 0 again: %s", strerror(errno));
	rings[0] = (struct dr_ring_view){ dr_map_ring(v.vm, RING), RING, 0 };
	rings[1] = (struct dr_ring_view){ dr_map_ring(again, RING), RING, 0 };
	ASSERT_NE(NULL, rings[0].entries);
	ASSERT_NE(NULL, rings[1].entries);
	/* The new vCPU's ring starts empty. */
	EXPECT_EQ(0, rings[1].entries[0].flags);
	ASSERT_EQ(0, harvest_all(v.vm, rings, 2, seen));
	EXPECT_EQ(SOFT + 8, count_seen(seen))
		TH_LOG("pages of the closed vCPU's ring were lost");
	close(again);
	close(v.vm);
}

static void *bind_and_exit(void *arg)
{
	int *vcpu = arg;

	*vcpu = ioctl(*vcpu, DIRTYRING_BIND, 0);
	return NULL;
}

TEST(a_thread_exit_ends_its_binding)
{
	struct dirtyring_ring_status st;
	int ret;
	struct vm v;
	pthread_t t;

	ASSERT_EQ(0, vm_init(&v, true));
	ret = v.vcpu;
	ASSERT_EQ(0, pthread_create(&t, NULL, bind_and_exit, &ret));
	ASSERT_EQ(0, pthread_join(t, NULL));
	ASSERT_EQ(0, ret);
	ASSERT_EQ(0, dr_ring_status(v.vcpu, &st));
	EXPECT_FALSE(st.flags & DIRTYRING_RING_F_BOUND);
	EXPECT_EQ(0, ioctl(v.vcpu, DIRTYRING_BIND, 0))
		TH_LOG("bind after the bound thread exited: %s",
		       strerror(errno));
	EXPECT_EQ(-1, ioctl(v.vcpu, DIRTYRING_BIND, 0));
	EXPECT_EQ(EALREADY, errno);
	EXPECT_EQ(0, ioctl(v.vcpu, DIRTYRING_UNBIND, 0));
	close(v.vcpu);
	close(v.vm);
}

/*
 * Another process writes twice a ring's worth of pages into this VM, one
 * process_vm_writev() and one store through its inherited mapping at a
 * time, each returning to user space: it must never wait on a ring only
 * this process can harvest, and nothing it wrote is lost.
 */
TEST(a_foreign_writer_never_waits)
{
	struct dr_ring_view ring;
	uint8_t seen[NPAGES] = { 0 };
	uint64_t deadline;
	pid_t child, parent = getpid(), done = 0;
	int status = 0;
	struct vm v;

	ASSERT_EQ(0, vm_init(&v, false));
	ring = (struct dr_ring_view){ dr_map_ring(v.vm, RING), RING, 0 };
	ASSERT_NE(NULL, ring.entries);
	child = fork();
	ASSERT_LE(0, child);
	if (!child) {
		char byte = 7;
		unsigned int i;

		for (i = 0; i < RING; i++) {
			struct iovec local = { &byte, 1 };
			struct iovec remote = { v.mem + i * PG, 1 };

			if (process_vm_writev(parent, &local, 1, &remote, 1,
					      0) != 1)
				_exit(1);
		}
		for (; i < 2 * RING; i++)
			v.mem[i * PG] = 7;
		_exit(0);
	}
	deadline = now_ms() + 20000;
	while (!(done = waitpid(child, &status, WNOHANG)) && now_ms() < deadline)
		usleep(10000);
	if (!done) {
		kill(child, SIGKILL);
		waitpid(child, &status, 0);
	}
	ASSERT_EQ(child, done) TH_LOG("the foreign writer waits on our ring");
	ASSERT_TRUE(WIFEXITED(status) && !WEXITSTATUS(status));
	ASSERT_EQ(0, harvest_all(v.vm, &ring, 1, seen));
	EXPECT_EQ(2 * RING, count_seen(seen));
	close(v.vm);
}

struct pair {
	char *mem;
	pthread_barrier_t start, end;
	unsigned int rounds;
	unsigned int polling;	/* rounds whose poll has begun (DR_LOAD) */
	unsigned int go;	/* rounds whose writes may start (DR_LOAD) */
};

static void *pair_writer(void *arg)
{
	struct pair *p = arg;
	static int next;
	int me = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED) & 1;
	unsigned int r;

	for (r = 0; r < p->rounds; r++) {
		pthread_barrier_wait(&p->start);
		while (DR_LOAD(&p->polling) <= r)
			;
		/*
		 * Let the poller fall asleep (no effect on the result), then
		 * write at the same instant, so the two pushes meet.
		 */
		if (!me) {
			usleep(200);
			DR_STORE(&p->go, r + 1);
		}
		while (DR_LOAD(&p->go) <= r)
			;
		p->mem[(2 * (r % (NPAGES / 2)) + me) * PG] = 1;
		pthread_barrier_wait(&p->end);
	}
	return NULL;
}

/*
 * Two writers make the empty VM ring non-empty at once; a harvester polls
 * with no timeout.  One of them must wake it, every round.  A lost wake-up
 * hangs the poll: the harness's timeout, generous for a busy machine, is
 * what catches it.
 */
#ifndef PAIR_ROUNDS
#define PAIR_ROUNDS 2000
#endif
FIXTURE(pair) {};
FIXTURE_SETUP(pair) {}
FIXTURE_TEARDOWN(pair) {}
TEST_F_TIMEOUT(pair, two_first_writers_wake_the_poller, 300)
{
	struct pollfd pfd;
	struct dr_ring_view ring;
	uint8_t seen[NPAGES];
	struct pair p = { .rounds = PAIR_ROUNDS };
	uint64_t start = now_ms();
	pthread_t t[2];
	unsigned int r;
	struct vm v;

	ASSERT_EQ(0, vm_init(&v, false));
	ring = (struct dr_ring_view){ dr_map_ring(v.vm, RING), RING, 0 };
	ASSERT_NE(NULL, ring.entries);
	p.mem = v.mem;
	pthread_barrier_init(&p.start, NULL, 3);
	pthread_barrier_init(&p.end, NULL, 3);
	ASSERT_EQ(0, pthread_create(&t[0], NULL, pair_writer, &p));
	ASSERT_EQ(0, pthread_create(&t[1], NULL, pair_writer, &p));
	for (r = 0; r < PAIR_ROUNDS; r++) {
		pthread_barrier_wait(&p.start);
		pfd = (struct pollfd){ .fd = v.vm, .events = POLLIN };
		DR_STORE(&p.polling, r + 1);
		ASSERT_EQ(1, poll(&pfd, 1, -1));
		pthread_barrier_wait(&p.end);
		memset(seen, 0, sizeof(seen));
		ASSERT_EQ(0, harvest_all(v.vm, &ring, 1, seen));
		ASSERT_EQ(2, count_seen(seen)) TH_LOG("round %u", r);
	}
	pthread_join(t[0], NULL);
	pthread_join(t[1], NULL);
	TH_LOG("%u rounds in %llu ms", PAIR_ROUNDS,
	       (unsigned long long)(now_ms() - start));
	close(v.vm);
}

TEST_HARNESS_MAIN
