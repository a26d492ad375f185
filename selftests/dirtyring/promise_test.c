// SPDX-License-Identifier: GPL-2.0
/*
 * The module's promise: after a reset, a page's next write is logged before
 * the harvester can read the page.  Each test plays a migration (harvest,
 * reset, copy what was harvested into a shadow) against one kind of writer
 * that used to slip through, and checks the shadow against the memory:
 *  - a writer that holds the page across the reset (process_vm_writev from
 *    another process, stalled mid-copy on a userfaultfd page);
 *  - a reset cut short by signals;
 *  - pages parked because the ring was full, which one harvest must return.
 */
#define _GNU_SOURCE
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>

#include "dirtyring_util.h"
#include "../kselftest_harness.h"

#define PG PAGE_SIZE_4K

/* A VM with one slot, its VM ring and no vCPU: every writer is unbound. */
struct mig {
	int vm;
	uint64_t npages;
	char *mem, *shadow;
	uint8_t *harvested;	/* this pass */
	struct dr_ring_view ring;
	uint64_t passes, entries;
};

static int mig_init(struct mig *m, uint64_t npages, uint32_t ring)
{
	memset(m, 0, sizeof(*m));
	m->npages = npages;
	m->vm = dr_create_vm();
	if (m->vm < 0 || dr_add_slot(m->vm, 0, npages) ||
	    dr_enable_rings(m->vm, 128, ring))
		return -1;
	m->mem = dr_map_slot(m->vm, 0, npages);
	m->ring = (struct dr_ring_view){ dr_map_ring(m->vm, ring), ring, 0 };
	m->shadow = calloc(npages, PG);
	m->harvested = calloc(npages, 1);
	return m->mem && m->ring.entries && m->shadow && m->harvested ? 0 : -1;
}

static void mig_free(struct mig *m)
{
	munmap(m->mem, m->npages * PG);
	munmap(m->ring.entries, m->ring.size * sizeof(struct dirtyring_gfn));
	close(m->vm);
	free(m->shadow);
	free(m->harvested);
}

static void mark(void *arg, uint32_t slot, uint64_t offset)
{
	struct mig *m = arg;

	if (slot == 0 && offset < m->npages)
		m->harvested[offset] = 1;
	m->entries++;
}

/*
 * One complete harvest, as the uAPI prescribes: harvest, reset until the
 * reset is whole, again while it moved parked pages into the ring; only
 * then copy.  Returns the pages copied, or -1 when a reset failed.
 */
static long mig_pass(struct mig *m)
{
	struct dirtyring_reset r;
	uint64_t i;
	long copied = 0;

	memset(m->harvested, 0, m->npages);
	do {
		dr_harvest(&m->ring, mark, m);
		if (dr_reset(m->vm, &r))
			return -1;
	} while (r.overflow_pushed);
	for (i = 0; i < m->npages; i++) {
		if (!m->harvested[i])
			continue;
		memcpy(m->shadow + i * PG, m->mem + i * PG, PG);
		copied++;
	}
	m->passes++;
	return copied;
}

/* Pages whose shadow differs from memory: writes the migration missed. */
static uint64_t mig_lost(struct mig *m)
{
	uint64_t i, lost = 0;

	for (i = 0; i < m->npages; i++)
		lost += !!memcmp(m->shadow + i * PG, m->mem + i * PG, PG);
	return lost;
}

/* Waits until page @index has a DIRTY entry in the ring; false after 20 s. */
static bool wait_logged(struct mig *m, uint64_t index)
{
	uint64_t deadline = now_ms() + 20000;
	uint32_t i;

	while (now_ms() < deadline) {
		for (i = m->ring.fetch_index; i != m->ring.fetch_index + m->ring.size;
		     i++) {
			struct dirtyring_gfn *e =
				&m->ring.entries[i & (m->ring.size - 1)];
			uint32_t f = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE);

			if (!(f & DIRTYRING_GFN_F_DIRTY))
				break;
			if (e->offset == index)
				return true;
		}
		usleep(1000);
	}
	return false;
}

struct stalled {
	int uffd;
	char *src;
	int go;		/* read end: the parent says when to resolve */
};

/* The child's resolver: fills the stalled source page when told to. */
static void *resolve_when_told(void *arg)
{
	struct stalled *s = arg;
	struct uffdio_copy copy = { 0 };
	char *page = aligned_alloc(PG, PG), c;
	struct uffd_msg msg;

	if (!page || read(s->uffd, &msg, sizeof(msg)) != sizeof(msg) ||
	    read(s->go, &c, 1) != 1)
		_exit(3);
	memset(page, 0xab, PG);
	copy.dst = (unsigned long)s->src;
	copy.src = (unsigned long)page;
	copy.len = PG;
	if (ioctl(s->uffd, UFFDIO_COPY, &copy))
		_exit(4);
	return NULL;
}

/*
 * process_vm_writev pins the destination page (its write fault logs it),
 * then stalls copying from a missing userfaultfd page.  The harvester
 * harvests, resets and copies meanwhile; then the copy lands through the
 * pin, without a fault.  The page must come back in the next harvest.
 */
TEST(held_page_is_logged_again)
{
	const uint64_t target = 3;
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = { 0 };
	int go[2], status;
	struct stalled s;
	struct mig m;
	pthread_t t;
	pid_t child, parent = getpid();

	ASSERT_EQ(0, mig_init(&m, 16, 1024));
	ASSERT_EQ(0, mig_pass(&m));	/* nothing written yet */
	ASSERT_EQ(0, pipe(go));
	child = fork();
	ASSERT_LE(0, child);
	if (!child) {
		struct iovec local = { 0, PG };
		struct iovec remote = { m.mem + target * PG, PG };

		s.uffd = syscall(__NR_userfaultfd, O_CLOEXEC);
		s.src = mmap(NULL, PG, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		s.go = go[0];
		if (s.uffd < 0 || s.src == MAP_FAILED ||
		    ioctl(s.uffd, UFFDIO_API, &api))
			_exit(1);
		reg.range.start = (unsigned long)s.src;
		reg.range.len = PG;
		reg.mode = UFFDIO_REGISTER_MODE_MISSING;
		if (ioctl(s.uffd, UFFDIO_REGISTER, &reg) ||
		    pthread_create(&t, NULL, resolve_when_told, &s))
			_exit(2);
		local.iov_base = s.src;
		_exit(process_vm_writev(parent, &local, 1, &remote, 1, 0) ==
		      PG ? 0 : 5);
	}
	/* Pinned and logged: the copy is stalled on the missing page. */
	ASSERT_TRUE(wait_logged(&m, target));
	ASSERT_LE(1, mig_pass(&m));
	EXPECT_EQ(0, memcmp(m.shadow + target * PG, m.mem + target * PG, PG));
	ASSERT_EQ(1, write(go[1], "g", 1));
	ASSERT_EQ(child, waitpid(child, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(0, WEXITSTATUS(status));
	EXPECT_EQ((char)0xab, m.mem[target * PG]);

	/* The write landed after the copy: this pass must return the page. */
	ASSERT_LE(0, mig_pass(&m));
	EXPECT_EQ(0, mig_lost(&m)) TH_LOG("the write through the pin was lost");
	/* Unpinned now: it is not logged again once copied. */
	ASSERT_LE(0, mig_pass(&m));
	EXPECT_EQ(0, mig_pass(&m));
	close(go[0]);
	close(go[1]);
	mig_free(&m);
}

static void on_alarm(int sig)
{
}

/* A no-op handler without SA_RESTART, every 100 us. */
static void signal_storm(bool on)
{
	struct sigaction sa = { .sa_handler = on_alarm };
	struct itimerval it = { { 0, on ? 100 : 0 }, { 0, on ? 100 : 0 } };

	/* The handler stays: a last signal may still be on its way. */
	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &it, NULL);
}

/*
 * A reset of 8192 entries under a signal every 100 us: a call that returns
 * 0 has reset every entry that was marked, however often signals stopped
 * the calls before it; so every page is armed again and a write to each is
 * logged once more.
 */
TEST(interrupted_reset_is_never_taken_for_whole)
{
	const uint64_t pages = 8192;
	struct dirtyring_reset r;
	unsigned int interrupted = 0, calls = 0;
	uint64_t i, armed = 0;
	struct mig m;
	int ret;

	ASSERT_EQ(0, mig_init(&m, pages, 16384));
	for (i = 0; i < pages; i++)
		m.mem[i * PG] = 1;
	ASSERT_EQ(pages, dr_harvest(&m.ring, NULL, NULL));

	signal_storm(true);
	do {
		ret = dr_reset_once(m.vm, &r);
		calls++;
		interrupted += ret && errno == EINTR;
	} while (ret && errno == EINTR && calls < 1000000);
	signal_storm(false);
	ASSERT_EQ(0, ret) TH_LOG("reset: %s", strerror(errno));
	TH_LOG("%u calls, %u interrupted", calls, interrupted);

	for (i = 0; i < pages; i++)
		armed += !m.ring.entries[i].flags;
	EXPECT_EQ(pages, armed) TH_LOG("entries still marked after a whole reset");
	for (i = 0; i < pages; i++)
		m.mem[i * PG] = 2;
	EXPECT_EQ(pages, dr_harvest(&m.ring, NULL, NULL))
		TH_LOG("writes after the reset that were not logged");
	mig_free(&m);
}

struct read_job {
	int fd;
	char *mem;
	size_t len;
	ssize_t ret;
};

static void *reader(void *arg)
{
	struct read_job *r = arg;

	r->ret = pread(r->fd, r->mem, r->len, 0);
	return NULL;
}

/*
 * One read() fills the VM ring and parks the rest of its pages (it waits
 * only on its way back to user space).  One complete harvest after it must
 * return every page.
 */
TEST(parked_pages_come_in_one_harvest)
{
	const uint64_t pages = 512, ring = 128;
	char path[] = "/tmp/dirtyring-promise-XXXXXX";
	int fd = mkstemp(path);
	struct dirtyring_ring_status st;
	struct read_job r;
	uint64_t deadline;
	struct mig m;
	pthread_t t;
	char *buf;

	ASSERT_LE(0, fd);
	unlink(path);
	buf = malloc(pages * PG);
	ASSERT_NE(NULL, buf);
	memset(buf, 0x5a, pages * PG);
	ASSERT_EQ((ssize_t)(pages * PG), pwrite(fd, buf, pages * PG, 0));
	free(buf);
	ASSERT_EQ(0, mig_init(&m, pages, ring));

	/* It waits on its way out of pread(), for this thread's reset. */
	r.fd = fd;
	r.mem = m.mem;
	r.len = pages * PG;
	ASSERT_EQ(0, pthread_create(&t, NULL, reader, &r));

	/* Its copy is done: the ring is full and the rest is parked. */
	deadline = now_ms() + 20000;
	do {
		ASSERT_EQ(0, dr_ring_status(m.vm, &st));
	} while ((st.used < ring || st.overflows < pages - ring) &&
		 now_ms() < deadline);
	EXPECT_EQ(ring, st.used);
	EXPECT_EQ(pages - ring, st.overflows);

	EXPECT_EQ(pages, mig_pass(&m));
	EXPECT_EQ(0, mig_lost(&m));
	pthread_join(t, NULL);
	EXPECT_EQ((ssize_t)(pages * PG), r.ret);
	EXPECT_EQ(0, mig_pass(&m));
	close(fd);
	mig_free(&m);
}

TEST_HARNESS_MAIN
