// SPDX-License-Identifier: GPL-2.0
/*
 * Ring full: a writer past its ring's soft limit waits, without locks, until
 * a reset makes room; a signal, SIGKILL or closing the VM ends the wait; and
 * a writer that exhausts even the reserve loses no page.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

#include "dirtyring_util.h"
#include "../kselftest_harness.h"

#define NPAGES 512
#define RING 128	/* soft limit 64 */
#define SOFT (RING - DIRTYRING_RING_RESERVED_ENTRIES)

/* What the harvests returned. */
struct tally {
	uint8_t seen[NPAGES];
	unsigned int harvested;
};

FIXTURE(full) {
	int vm, vcpu;
	char *mem;
	struct dr_ring_view vcpu_ring, vm_ring;
	struct tally tally;
};

static void record(void *arg, uint32_t slot, uint64_t offset)
{
	struct tally *t = arg;

	if (slot == 0 && offset < NPAGES)
		t->seen[offset]++;
	t->harvested++;
}

FIXTURE_SETUP(full)
{
	self->vm = dr_create_vm();
	ASSERT_LE(0, self->vm);
	ASSERT_EQ(0, dr_add_slot(self->vm, 0, NPAGES));
	ASSERT_EQ(0, dr_enable_rings(self->vm, RING, RING));
	self->vcpu = ioctl(self->vm, DIRTYRING_CREATE_VCPU, 0);
	ASSERT_LE(0, self->vcpu);
	self->mem = dr_map_slot(self->vm, 0, NPAGES);
	ASSERT_NE(NULL, self->mem);
	self->vcpu_ring = (struct dr_ring_view){ dr_map_ring(self->vcpu, RING),
						 RING, 0 };
	self->vm_ring = (struct dr_ring_view){ dr_map_ring(self->vm, RING),
					       RING, 0 };
	ASSERT_NE(NULL, self->vcpu_ring.entries);
	ASSERT_NE(NULL, self->vm_ring.entries);
}

FIXTURE_TEARDOWN(full)
{
	if (self->vcpu >= 0)
		close(self->vcpu);
	if (self->vm >= 0)
		close(self->vm);
}

/* Harvests every ring and resets; returns entries reset. */
static long harvest_and_reset(int vm, struct dr_ring_view *vcpu_ring,
			      struct dr_ring_view *vm_ring, struct tally *t)
{
	dr_harvest(vcpu_ring, record, t);
	dr_harvest(vm_ring, record, t);
	return dr_reset_count(vm);
}

struct writer {
	int vcpu;
	char *mem;
	unsigned int first, count;
	unsigned int progress;	/* DR_LOAD / DR_STORE */
	int done;
	int bind_ret;
};

static void *writer_fn(void *arg)
{
	struct writer *w = arg;
	unsigned int i;

	w->bind_ret = ioctl(w->vcpu, DIRTYRING_BIND, 0);
	for (i = 0; i < w->count; i++) {
		w->mem[(w->first + i) * PAGE_SIZE_4K] = 1;
		DR_STORE(&w->progress, i + 1);
	}
	DR_STORE(&w->done, 1);
	return NULL;
}

/* Waits until the vCPU ring reports a writer waiting; false on timeout. */
static bool wait_for_waiter(int vcpu, uint64_t waits_before)
{
	struct dirtyring_ring_status st;
	uint64_t deadline = now_ms() + 10000;

	while (now_ms() < deadline) {
		if (dr_ring_status(vcpu, &st) == 0 && st.waits > waits_before)
			return true;
		usleep(1000);
	}
	return false;
}

static bool wait_done(int *done, unsigned int ms)
{
	uint64_t deadline = now_ms() + ms;

	while (!DR_LOAD(done) && now_ms() < deadline)
		usleep(1000);
	return DR_LOAD(done);
}

TEST_F(full, writer_waits_until_reset)
{
	struct writer w = { self->vcpu, self->mem, 0, 3 * SOFT + 10 };
	struct pollfd p = { .fd = self->vm, .events = POLLPRI };
	unsigned int progress, rounds = 0, i;
	pthread_t t;

	ASSERT_EQ(0, pthread_create(&t, NULL, writer_fn, &w));
	while (!DR_LOAD(&w.done) && rounds < 10) {
		struct dirtyring_ring_status st;

		if (!wait_for_waiter(self->vcpu, rounds))
			break;
		/* Blocked: no progress while nobody resets. */
		progress = DR_LOAD(&w.progress);
		usleep(100000);
		EXPECT_EQ(progress, DR_LOAD(&w.progress));
		ASSERT_EQ(0, dr_ring_status(self->vcpu, &st));
		EXPECT_TRUE(st.flags & DIRTYRING_RING_F_SOFT_FULL);
		EXPECT_EQ(SOFT, st.used);
		EXPECT_EQ(1, poll(&p, 1, 0));
		EXPECT_LT(0, harvest_and_reset(self->vm, &self->vcpu_ring,
					       &self->vm_ring, &self->tally));
		rounds++;
	}
	ASSERT_TRUE(wait_done(&w.done, 10000)) TH_LOG("writer still blocked");
	pthread_join(t, NULL);
	ASSERT_EQ(0, w.bind_ret);
	EXPECT_EQ(3, rounds);
	harvest_and_reset(self->vm, &self->vcpu_ring, &self->vm_ring,
			  &self->tally);
	/*
	 * The write that reached the soft limit waits after its fault made
	 * the page writable, and the reset it waits for re-protects that page:
	 * when the writer resumes, its write happens after the reset and is
	 * rightly logged again, as the first entry of the next round.  So
	 * pages SOFT - 1, 2 * (SOFT - 1) and 3 * (SOFT - 1) are logged twice.
	 */
	for (i = 0; i < w.count; i++) {
		bool waited = i && i % (SOFT - 1) == 0 && i <= 3 * (SOFT - 1);
		unsigned int want = waited ? 2 : 1;

		EXPECT_EQ(want, self->tally.seen[i]) TH_LOG("page %u", i);
	}
	EXPECT_EQ(w.count + rounds, self->tally.harvested);
}

static void on_usr1(int sig)
{
}

TEST_F(full, signal_ends_the_wait)
{
	struct writer w = { self->vcpu, self->mem, 0, SOFT };
	struct sigaction sa = { .sa_handler = on_usr1 };
	struct dirtyring_ring_status st;
	pthread_t t;

	ASSERT_EQ(0, sigaction(SIGUSR1, &sa, NULL));
	ASSERT_EQ(0, pthread_create(&t, NULL, writer_fn, &w));
	ASSERT_TRUE(wait_for_waiter(self->vcpu, 0));
	usleep(100000);
	EXPECT_FALSE(DR_LOAD(&w.done));
	ASSERT_EQ(0, pthread_kill(t, SIGUSR1));
	EXPECT_TRUE(wait_done(&w.done, 10000));
	pthread_join(t, NULL);
	ASSERT_EQ(0, dr_ring_status(self->vcpu, &st));
	EXPECT_LE(100000000ULL, st.wait_ns) TH_LOG("waited %llu ns",
						   (unsigned long long)st.wait_ns);
	/* Every page was logged although nobody reset. */
	EXPECT_EQ(SOFT, dr_harvest(&self->vcpu_ring, record, &self->tally));
}

TEST_F(full, closing_the_vm_releases_waiters)
{
	struct writer w = { self->vcpu, self->mem, 0, SOFT + 5 };
	pthread_t t;

	ASSERT_EQ(0, pthread_create(&t, NULL, writer_fn, &w));
	ASSERT_TRUE(wait_for_waiter(self->vcpu, 0));
	/* munmap, close the vCPU, then the VM: nobody can reset any more. */
	munmap(self->vcpu_ring.entries, RING * sizeof(struct dirtyring_gfn));
	munmap(self->vm_ring.entries, RING * sizeof(struct dirtyring_gfn));
	close(self->vcpu);
	self->vcpu = -1;
	close(self->vm);
	self->vm = -1;
	EXPECT_TRUE(wait_done(&w.done, 10000));
	pthread_join(t, NULL);
	/* The memory still works (and is still tracked) while mapped. */
	self->mem[0] = 5;
	EXPECT_EQ(0, munmap(self->mem, NPAGES * PAGE_SIZE_4K));
}

/*
 * Only the VM's own process waits (another process is a foreign writer that
 * never does), so the writer killed here is a child that owns its VM; the
 * parent watches its vCPU through a duplicate of the child's fd.
 */
TEST_F(full, killed_while_waiting)
{
	int pipefd[2], status, pidfd, vcpu;
	struct dr_ring_view ring;
	pid_t child;

	ASSERT_EQ(0, pipe(pipefd));
	child = fork();
	ASSERT_LE(0, child);
	if (!child) {
		int vm = dr_create_vm(), fd;
		char *mem;

		if (vm < 0 || dr_add_slot(vm, 0, NPAGES) ||
		    dr_enable_rings(vm, RING, RING))
			_exit(1);
		fd = ioctl(vm, DIRTYRING_CREATE_VCPU, 0);
		mem = dr_map_slot(vm, 0, NPAGES);
		if (fd < 0 || !mem || ioctl(fd, DIRTYRING_BIND, 0))
			_exit(1);
		for (unsigned int i = 0; i < SOFT - 1; i++)
			mem[i * PAGE_SIZE_4K] = 1;
		write(pipefd[1], &fd, sizeof(fd));
		mem[(SOFT - 1) * PAGE_SIZE_4K] = 1;	/* waits here */
		_exit(0);
	}
	ASSERT_EQ(sizeof(vcpu), read(pipefd[0], &vcpu, sizeof(vcpu)));
	pidfd = syscall(__NR_pidfd_open, child, 0);
	ASSERT_LE(0, pidfd);
	vcpu = syscall(__NR_pidfd_getfd, pidfd, vcpu, 0);
	ASSERT_LE(0, vcpu) TH_LOG("pidfd_getfd: %s", strerror(errno));
	ASSERT_TRUE(wait_for_waiter(vcpu, 0));
	ASSERT_EQ(0, kill(child, SIGKILL));
	ASSERT_EQ(child, waitpid(child, &status, 0));
	EXPECT_TRUE(WIFSIGNALED(status));
	ring = (struct dr_ring_view){ dr_map_ring(vcpu, RING), RING, 0 };
	ASSERT_NE(NULL, ring.entries);
	EXPECT_EQ(SOFT, dr_harvest(&ring, NULL, NULL));
	close(vcpu);
	close(pidfd);
	close(pipefd[0]);
	close(pipefd[1]);
}

struct bulk {
	int vcpu;
	char *mem;
	size_t len;
	ssize_t ret;
	int done;	/* DR_LOAD / DR_STORE */
};

/* One read() faults every page before the thread can wait. */
static void *bulk_writer(void *arg)
{
	struct bulk *b = arg;
	int zero = open("/dev/zero", O_RDONLY);

	if (ioctl(b->vcpu, DIRTYRING_BIND, 0) == 0 && zero >= 0)
		b->ret = read(zero, b->mem, b->len);
	close(zero);
	DR_STORE(&b->done, 1);
	return NULL;
}

TEST_F(full, reserve_exhausted_loses_no_page)
{
	const unsigned int pages = 200;	/* 128 fit, 72 are parked */
	struct bulk b = { self->vcpu, self->mem, pages * PAGE_SIZE_4K };
	struct pollfd p = { .fd = self->vm, .events = POLLIN | POLLPRI };
	struct dirtyring_ring_status st;
	unsigned int i, rounds = 0;
	pthread_t t;

	ASSERT_EQ(0, pthread_create(&t, NULL, bulk_writer, &b));
	ASSERT_TRUE(wait_for_waiter(self->vcpu, 0));
	EXPECT_FALSE(DR_LOAD(&b.done));
	ASSERT_EQ(0, dr_ring_status(self->vcpu, &st));
	EXPECT_EQ(RING, st.used);
	EXPECT_EQ(pages - RING, st.overflows);
	EXPECT_EQ(1, poll(&p, 1, 0));
	EXPECT_EQ(POLLIN | POLLPRI, p.revents);
	while (self->tally.harvested < pages && rounds++ < 10)
		harvest_and_reset(self->vm, &self->vcpu_ring, &self->vm_ring,
				  &self->tally);
	EXPECT_TRUE(wait_done(&b.done, 10000));
	pthread_join(t, NULL);
	EXPECT_EQ((ssize_t)(pages * PAGE_SIZE_4K), b.ret);
	for (i = 0; i < pages; i++)
		EXPECT_EQ(1, self->tally.seen[i]) TH_LOG("page %u", i);
	EXPECT_EQ(pages, self->tally.harvested);
	EXPECT_EQ(0, poll(&p, 1, 0));
}

TEST_HARNESS_MAIN
