// SPDX-License-Identifier: GPL-2.0
/*
 * Functional tests of dirtyring VMs: which writes are logged, into which
 * ring, once per cycle, and what reset does.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "dirtyring_util.h"
#include "../kselftest_harness.h"

#define NPAGES 512
#define RING_ENTRIES 1024

struct harvest {
	uint8_t count[NPAGES];
	uint32_t total;
	uint32_t bad;		/* entries naming another slot or no page */
};

static void record(void *arg, uint32_t slot, uint64_t offset)
{
	struct harvest *h = arg;

	if (slot != 0 || offset >= NPAGES) {
		h->bad++;
		return;
	}
	h->count[offset]++;
	h->total++;
}

FIXTURE(vm) {
	int vm, vcpu;
	char *mem;
	struct dr_ring_view vcpu_ring, vm_ring;
};

FIXTURE_SETUP(vm)
{
	self->vm = dr_create_vm();
	ASSERT_LE(0, self->vm) TH_LOG("create VM: %s", strerror(errno));
	ASSERT_EQ(0, dr_add_slot(self->vm, 0, NPAGES));
	ASSERT_EQ(0, dr_enable_rings(self->vm, RING_ENTRIES, RING_ENTRIES));
	self->vcpu = ioctl(self->vm, DIRTYRING_CREATE_VCPU, 0);
	ASSERT_LE(0, self->vcpu);
	self->mem = dr_map_slot(self->vm, 0, NPAGES);
	ASSERT_NE(NULL, self->mem);
	self->vcpu_ring.entries = dr_map_ring(self->vcpu, RING_ENTRIES);
	self->vcpu_ring.size = RING_ENTRIES;
	self->vcpu_ring.fetch_index = 0;
	ASSERT_NE(NULL, self->vcpu_ring.entries);
	self->vm_ring.entries = dr_map_ring(self->vm, RING_ENTRIES);
	self->vm_ring.size = RING_ENTRIES;
	self->vm_ring.fetch_index = 0;
	ASSERT_NE(NULL, self->vm_ring.entries);
}

FIXTURE_TEARDOWN(vm)
{
	close(self->vcpu);
	close(self->vm);
}

/* A thread bound to a vCPU that writes pages, then unbinds. */
struct writer {
	int vcpu;
	char *mem;
	const unsigned int *pages;
	unsigned int npages;
	int bind_ret, unbind_ret;
};

static void *bound_writer(void *arg)
{
	struct writer *w = arg;
	unsigned int i;

	w->bind_ret = ioctl(w->vcpu, DIRTYRING_BIND, 0);
	for (i = 0; i < w->npages; i++)
		w->mem[w->pages[i] * PAGE_SIZE_4K + i % 64] = (char)i;
	w->unbind_ret = ioctl(w->vcpu, DIRTYRING_UNBIND, 0);
	return NULL;
}

static void run_writer(struct __test_metadata *_metadata, struct writer *w)
{
	pthread_t t;

	ASSERT_EQ(0, pthread_create(&t, NULL, bound_writer, w));
	ASSERT_EQ(0, pthread_join(t, NULL));
	ASSERT_EQ(0, w->bind_ret);
	ASSERT_EQ(0, w->unbind_ret);
}

/* Chosen pages, with repeats: each must be logged once. */
static const unsigned int chosen[] = {
	0, 1, 2, 7, 63, 64, 65, 100, 255, 256, 300, 301, 302, 510, 511,
	1, 7, 300, 511, 0,
};

#define CHOSEN_UNIQUE 15

TEST_F(vm, bound_thread_logs_to_its_ring_once_each)
{
	struct writer w = { self->vcpu, self->mem, chosen, ARRAY_SIZE(chosen) };
	struct harvest h = { 0 }, other = { 0 };
	unsigned int i;

	run_writer(_metadata, &w);
	EXPECT_EQ(CHOSEN_UNIQUE, dr_harvest(&self->vcpu_ring, record, &h));
	EXPECT_EQ(0, h.bad);
	for (i = 0; i < ARRAY_SIZE(chosen); i++)
		EXPECT_EQ(1, h.count[chosen[i]]) TH_LOG("page %u", chosen[i]);
	EXPECT_EQ(CHOSEN_UNIQUE, h.total);
	EXPECT_EQ(0, dr_harvest(&self->vm_ring, record, &other));
}

TEST_F(vm, reads_are_not_logged)
{
	unsigned int i;

	for (i = 0; i < NPAGES; i++)
		(void)DR_LOAD(&self->mem[i * PAGE_SIZE_4K]);
	EXPECT_EQ(0, dr_harvest(&self->vcpu_ring, NULL, NULL));
	EXPECT_EQ(0, dr_harvest(&self->vm_ring, NULL, NULL));
	/* Reading first does not hide the first write either. */
	self->mem[5 * PAGE_SIZE_4K] = 1;
	EXPECT_EQ(1, dr_harvest(&self->vm_ring, NULL, NULL));
}

TEST_F(vm, reset_makes_writes_log_again)
{
	struct writer w = { self->vcpu, self->mem, chosen, ARRAY_SIZE(chosen) };
	struct harvest h = { 0 };
	unsigned int round, i;

	for (round = 0; round < 3; round++) {
		memset(&h, 0, sizeof(h));
		run_writer(_metadata, &w);
		EXPECT_EQ(CHOSEN_UNIQUE,
			  dr_harvest(&self->vcpu_ring, record, &h));
		/* Not reset yet: writing again logs nothing. */
		run_writer(_metadata, &w);
		EXPECT_EQ(0, dr_harvest(&self->vcpu_ring, NULL, NULL));
		EXPECT_EQ(CHOSEN_UNIQUE,
			  dr_reset_count(self->vm));
		for (i = 0; i < ARRAY_SIZE(chosen); i++)
			EXPECT_EQ(1, h.count[chosen[i]]);
	}
	/* Nothing left to reset. */
	EXPECT_EQ(0, dr_reset_count(self->vm));
}

TEST_F(vm, reset_stops_at_first_unharvested_entry)
{
	struct dirtyring_gfn *e = self->vm_ring.entries;
	unsigned int i;

	for (i = 0; i < 4; i++)
		self->mem[i * PAGE_SIZE_4K] = 1;
	/* Harvest only the first two entries. */
	for (i = 0; i < 2; i++)
		__atomic_store_n(&e[i].flags,
				 DIRTYRING_GFN_F_DIRTY | DIRTYRING_GFN_F_RESET,
				 __ATOMIC_RELEASE);
	EXPECT_EQ(2, dr_reset_count(self->vm));
	EXPECT_EQ(0, e[0].flags);
	EXPECT_EQ(DIRTYRING_GFN_F_DIRTY, e[2].flags);
	/* Pages 0 and 1 log again, 2 and 3 are still logged. */
	for (i = 0; i < 4; i++)
		self->mem[i * PAGE_SIZE_4K] = 2;
	self->vm_ring.fetch_index = 2;
	EXPECT_EQ(4, dr_harvest(&self->vm_ring, NULL, NULL));
}

TEST_F(vm, unbound_thread_logs_to_vm_ring)
{
	struct harvest h = { 0 };

	self->mem[3 * PAGE_SIZE_4K] = 1;
	self->mem[4 * PAGE_SIZE_4K + 17] = 1;
	EXPECT_EQ(2, dr_harvest(&self->vm_ring, record, &h));
	EXPECT_EQ(1, h.count[3]);
	EXPECT_EQ(1, h.count[4]);
	EXPECT_EQ(0, dr_harvest(&self->vcpu_ring, NULL, NULL));
}

TEST_F(vm, process_vm_writev_from_child_logs_to_vm_ring)
{
	struct harvest h = { 0 };
	pid_t parent = getpid(), child;
	int status;

	child = fork();
	ASSERT_LE(0, child);
	if (!child) {
		char buf[3] = { 1, 2, 3 };
		struct iovec local = { buf, sizeof(buf) };
		struct iovec remote[2] = {
			{ self->mem + 9 * PAGE_SIZE_4K, sizeof(buf) },
			{ self->mem + 200 * PAGE_SIZE_4K, sizeof(buf) },
		};
		struct iovec local2[2] = { local, local };

		_exit(process_vm_writev(parent, local2, 2, remote, 2, 0) == 6 ?
		      0 : 1);
	}
	ASSERT_EQ(child, waitpid(child, &status, 0));
	ASSERT_EQ(0, WEXITSTATUS(status));
	EXPECT_EQ(2, self->mem[9 * PAGE_SIZE_4K + 1]);
	EXPECT_EQ(2, dr_harvest(&self->vm_ring, record, &h));
	EXPECT_EQ(1, h.count[9]);
	EXPECT_EQ(1, h.count[200]);
	EXPECT_EQ(0, dr_harvest(&self->vcpu_ring, NULL, NULL));
}

TEST_F(vm, second_vcpu_logs_to_its_own_ring)
{
	static const unsigned int a[] = { 10, 11, 12 }, b[] = { 20, 21 };
	struct writer wa = { self->vcpu, self->mem, a, ARRAY_SIZE(a) };
	struct writer wb = { -1, self->mem, b, ARRAY_SIZE(b) };
	struct dr_ring_view ring_b = { .size = RING_ENTRIES };
	struct harvest ha = { 0 }, hb = { 0 };
	pthread_t ta, tb;

	wb.vcpu = ioctl(self->vm, DIRTYRING_CREATE_VCPU, 1);
	ASSERT_LE(0, wb.vcpu);
	ring_b.entries = dr_map_ring(wb.vcpu, RING_ENTRIES);
	ASSERT_NE(NULL, ring_b.entries);
	ASSERT_EQ(0, pthread_create(&ta, NULL, bound_writer, &wa));
	ASSERT_EQ(0, pthread_create(&tb, NULL, bound_writer, &wb));
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);
	ASSERT_EQ(0, wa.bind_ret);
	ASSERT_EQ(0, wb.bind_ret);
	EXPECT_EQ(3, dr_harvest(&self->vcpu_ring, record, &ha));
	EXPECT_EQ(2, dr_harvest(&ring_b, record, &hb));
	EXPECT_EQ(3, ha.count[10] + ha.count[11] + ha.count[12]);
	EXPECT_EQ(2, hb.count[20] + hb.count[21]);
	EXPECT_EQ(0, ha.count[20] + hb.count[10]);
	close(wb.vcpu);
}

TEST_F(vm, bind_rules)
{
	int vcpu1 = ioctl(self->vm, DIRTYRING_CREATE_VCPU, 1);
	struct dirtyring_ring_status st;

	ASSERT_LE(0, vcpu1);
	EXPECT_EQ(-1, ioctl(self->vcpu, DIRTYRING_UNBIND, 0));
	EXPECT_EQ(EINVAL, errno);
	ASSERT_EQ(0, ioctl(self->vcpu, DIRTYRING_BIND, 0));
	ASSERT_EQ(0, dr_ring_status(self->vcpu, &st));
	EXPECT_TRUE(st.flags & DIRTYRING_RING_F_BOUND);
	/* Once per vCPU, one vCPU per thread. */
	EXPECT_EQ(-1, ioctl(self->vcpu, DIRTYRING_BIND, 0));
	EXPECT_EQ(EALREADY, errno);
	EXPECT_EQ(-1, ioctl(vcpu1, DIRTYRING_BIND, 0));
	EXPECT_EQ(EBUSY, errno);
	/* Now this (main) thread's writes go to vCPU 0's ring. */
	self->mem[0] = 1;
	EXPECT_EQ(1, dr_harvest(&self->vcpu_ring, NULL, NULL));
	EXPECT_EQ(0, ioctl(self->vcpu, DIRTYRING_UNBIND, 0));
	self->mem[PAGE_SIZE_4K] = 1;
	EXPECT_EQ(1, dr_harvest(&self->vm_ring, NULL, NULL));
	close(vcpu1);
}

TEST_F(vm, poll_reports_harvestable_and_soft_full)
{
	struct pollfd p = { .fd = self->vm, .events = POLLIN | POLLPRI };
	unsigned int i;

	EXPECT_EQ(0, poll(&p, 1, 0));
	self->mem[0] = 1;
	EXPECT_EQ(1, poll(&p, 1, 0));
	EXPECT_EQ(POLLIN, p.revents);
	dr_harvest(&self->vm_ring, NULL, NULL);
	EXPECT_EQ(1, dr_reset_count(self->vm));
	EXPECT_EQ(0, poll(&p, 1, 0));
	/* Up to the soft limit in one system call: no wait on the way out. */
	ASSERT_EQ(0, ioctl(self->vcpu, DIRTYRING_BIND, 0));
	for (i = 0; i < RING_ENTRIES - DIRTYRING_RING_RESERVED_ENTRIES - 1; i++)
		self->mem[(i % NPAGES) * PAGE_SIZE_4K] = 2;
	EXPECT_EQ(1, poll(&p, 1, 0));
	EXPECT_EQ(POLLIN, p.revents);
	ASSERT_EQ(0, ioctl(self->vcpu, DIRTYRING_UNBIND, 0));
}

TEST_F(vm, status_counts)
{
	struct dirtyring_ring_status st;
	unsigned int i;

	for (i = 0; i < 10; i++)
		self->mem[i * PAGE_SIZE_4K] = 1;
	ASSERT_EQ(0, dr_ring_status(self->vm, &st));
	EXPECT_EQ(RING_ENTRIES, st.entries);
	EXPECT_EQ(RING_ENTRIES - DIRTYRING_RING_RESERVED_ENTRIES, st.soft_limit);
	EXPECT_EQ(10, st.used);
	EXPECT_EQ(10, st.pushed);
	EXPECT_EQ(0, st.flags);
	dr_harvest(&self->vm_ring, NULL, NULL);
	EXPECT_EQ(10, dr_reset_count(self->vm));
	ASSERT_EQ(0, dr_ring_status(self->vm, &st));
	EXPECT_EQ(0, st.used);
	EXPECT_EQ(10, st.pushed);
	ASSERT_EQ(0, dr_ring_status(self->vcpu, &st));
	EXPECT_EQ(0, st.pushed);
}

TEST_F(vm, corrupted_entries_are_reset_harmlessly)
{
	struct dirtyring_gfn *e = self->vm_ring.entries;

	self->mem[0] = 1;
	self->mem[PAGE_SIZE_4K] = 1;
	/* A harvester that scribbles over the entries it resets. */
	e[0].slot = 7;
	e[1].offset = ~0ULL;
	e[0].flags = DIRTYRING_GFN_F_DIRTY | DIRTYRING_GFN_F_RESET;
	e[1].flags = DIRTYRING_GFN_F_DIRTY | DIRTYRING_GFN_F_RESET;
	EXPECT_EQ(2, dr_reset_count(self->vm));
}

/*
 * MADV_DONTNEED drops mappings, never data: ring pages fault back in (and
 * the protocol goes on through them), slot pages keep their contents and
 * stay tracked.
 */
TEST_F(vm, madv_dontneed_keeps_rings_and_memory)
{
	struct harvest h = { 0 };
	size_t ring_bytes = RING_ENTRIES * sizeof(struct dirtyring_gfn);

	self->mem[5 * PAGE_SIZE_4K] = 42;
	ASSERT_EQ(0, madvise(self->vm_ring.entries, ring_bytes,
			     MADV_DONTNEED));
	ASSERT_EQ(0, madvise(self->mem, NPAGES * PAGE_SIZE_4K, MADV_DONTNEED));
	EXPECT_EQ(42, self->mem[5 * PAGE_SIZE_4K]);
	EXPECT_EQ(1, dr_harvest(&self->vm_ring, record, &h));
	EXPECT_EQ(1, h.count[5]);
	EXPECT_EQ(1, dr_reset_count(self->vm));
	ASSERT_EQ(0, madvise(self->vm_ring.entries, ring_bytes,
			     MADV_DONTNEED));
	/* Re-armed: the next write logs again, into the faulted-in ring. */
	self->mem[5 * PAGE_SIZE_4K] = 43;
	EXPECT_EQ(1, dr_harvest(&self->vm_ring, record, &h));
	EXPECT_EQ(2, h.count[5]);
	EXPECT_EQ(0, h.bad);
}

/*
 * Ring memory is charged to the memory cgroup of whoever enables the rings.
 * Skipped where the kernel has no cgroup2 memory controller to read.
 */
TEST(rings_are_charged_to_the_memcg)
{
	const char *root = "/sys/fs/cgroup", *cg = "/sys/fs/cgroup/dirtyring";
	char path[128], buf[64];
	long before, after;
	int fd, vm, vcpu;
	FILE *f;

	mkdir(root, 0755);
	if (mount("none", root, "cgroup2", 0, NULL) && errno != EBUSY)
		SKIP(return, "no cgroup2: %s", strerror(errno));
	fd = open("/sys/fs/cgroup/cgroup.subtree_control", O_WRONLY);
	if (fd < 0 || write(fd, "+memory", 7) != 7)
		SKIP(return, "no memory controller");
	close(fd);
	mkdir(cg, 0755);
	snprintf(path, sizeof(path), "%s/cgroup.procs", cg);
	f = fopen(path, "w");
	ASSERT_NE(NULL, f);
	fprintf(f, "%d\n", getpid());
	ASSERT_EQ(0, fclose(f));
	snprintf(path, sizeof(path), "%s/memory.current", cg);

	f = fopen(path, "r");
	ASSERT_NE(NULL, f);
	ASSERT_NE(NULL, fgets(buf, sizeof(buf), f));
	fclose(f);
	before = atol(buf);
	vm = dr_create_vm();
	ASSERT_LE(0, vm);
	/* Two rings of 65536 entries: 2 MiB. */
	ASSERT_EQ(0, dr_enable_rings(vm, 65536, 65536));
	vcpu = ioctl(vm, DIRTYRING_CREATE_VCPU, 0);
	ASSERT_LE(0, vcpu);
	f = fopen(path, "r");
	ASSERT_NE(NULL, f);
	ASSERT_NE(NULL, fgets(buf, sizeof(buf), f));
	fclose(f);
	after = atol(buf);
	EXPECT_LE(2L << 20, after - before)
		TH_LOG("memory.current %ld -> %ld", before, after);
	close(vcpu);
	close(vm);
}

/*
 * The per-process cap counts address spaces: a forked child, whatever its
 * pid number, has its own, and the parent's VMs stay the parent's.
 */
TEST(vm_cap_counts_address_spaces)
{
	int vms[DIRTYRING_MAX_VMS_PER_PROCESS], i, status;
	pid_t child;

	for (i = 0; i < DIRTYRING_MAX_VMS_PER_PROCESS; i++)
		ASSERT_LE(0, vms[i] = dr_create_vm());
	EXPECT_EQ(-1, dr_create_vm());
	EXPECT_EQ(EMFILE, errno);
	child = fork();
	ASSERT_LE(0, child);
	if (!child) {
		int n = 0, fd;

		/* It holds the parent's fds, but they are the parent's VMs. */
		while (n <= DIRTYRING_MAX_VMS_PER_PROCESS &&
		       (fd = dr_create_vm()) >= 0)
			n++;
		_exit(n == DIRTYRING_MAX_VMS_PER_PROCESS && errno == EMFILE ?
		      0 : 1);
	}
	ASSERT_EQ(child, waitpid(child, &status, 0));
	EXPECT_TRUE(WIFEXITED(status) && !WEXITSTATUS(status));
	/* The child's VMs died with it; the parent is still full. */
	EXPECT_EQ(-1, dr_create_vm());
	EXPECT_EQ(EMFILE, errno);
	for (i = 0; i < DIRTYRING_MAX_VMS_PER_PROCESS; i++)
		close(vms[i]);
}

TEST_HARNESS_MAIN
