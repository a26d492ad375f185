// SPDX-License-Identifier: GPL-2.0
/*
 * dirtyring memory under a real KVM guest: the guest's RAM is a dirtyring
 * slot, its vCPU is run by a thread bound to a dirtyring vCPU, and the pages
 * the guest writes must appear in that vCPU's ring, once each, and again
 * after a reset (KVM's own mappings are invalidated by the re-protection).
 *
 * The QEMU runner loads kvm and kvm-amd in the guest kernel (TCG emulates
 * SVM with -cpu max).  Guest code is 16-bit real mode: it loads a list of
 * segments, writes one byte at offset 0 of each, and halts.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <linux/kvm.h>

#include "dirtyring_util.h"
#include "../kselftest_harness.h"

#define NPAGES 256		/* 1 MiB: all of real mode */
#define RING 1024
#define CODE_GPA 0x1000
#define LIST_GPA 0x2000		/* one list per vCPU, 256 bytes apart */

/*
 * bx = the list's address (set through KVM_SET_REGS, one list per vCPU)
 * next:
 *   mov ax, [bx]
 *   test ax, ax
 *   jz done
 *   mov es, ax
 *   mov byte [es:0], 0x5a
 *   add bx, 2
 *   jmp next
 * done:
 *   hlt
 */
static const unsigned char guest_code[] = {
	0x8b, 0x07,			/* mov ax, [bx] */
	0x85, 0xc0,			/* test ax, ax */
	0x74, 0x0d,			/* jz done (+13) */
	0x8e, 0xc0,			/* mov es, ax */
	0x26, 0xc6, 0x06, 0x00, 0x00, 0x5a,	/* mov byte [es:0], 0x5a */
	0x83, 0xc3, 0x02,		/* add bx, 2 */
	0xeb, 0xed,			/* jmp next (-19) */
	0xf4,				/* done: hlt */
};

struct guest {
	int kvm, kvm_vm, dr_vm;
	char *mem;
	struct dr_ring_view vm_ring;
};

struct vcpu_thread {
	struct guest *g;
	int index;
	int dr_vcpu;
	struct dr_ring_view ring;
	const unsigned int *pages;
	unsigned int npages;
	int kvm_vcpu;
	struct kvm_run *run;
	const char *error;
	int exit_reason;
};

static void set_list(struct guest *g, int index, const unsigned int *pages,
		     unsigned int n)
{
	uint16_t *list = (uint16_t *)(g->mem + LIST_GPA + index * 256);
	unsigned int i;

	for (i = 0; i < n; i++)
		list[i] = pages[i] * (PAGE_SIZE_4K / 16);
	list[n] = 0;
}

/* Runs the guest program once on this thread's KVM vCPU. */
static void *run_guest(void *arg)
{
	struct vcpu_thread *t = arg;
	struct kvm_sregs sregs;
	struct kvm_regs regs = { 0 };

	t->error = NULL;
	if (ioctl(t->dr_vcpu, DIRTYRING_BIND, 0)) {
		t->error = "DIRTYRING_BIND";
		return NULL;
	}
	if (ioctl(t->kvm_vcpu, KVM_GET_SREGS, &sregs)) {
		t->error = "KVM_GET_SREGS";
		goto out;
	}
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	sregs.ds.base = 0;
	sregs.ds.selector = 0;
	sregs.es.base = 0;
	sregs.es.selector = 0;
	regs.rip = CODE_GPA;
	regs.rbx = LIST_GPA + t->index * 256;
	regs.rflags = 2;
	if (ioctl(t->kvm_vcpu, KVM_SET_SREGS, &sregs) ||
	    ioctl(t->kvm_vcpu, KVM_SET_REGS, &regs)) {
		t->error = "KVM_SET_*REGS";
		goto out;
	}
	if (ioctl(t->kvm_vcpu, KVM_RUN, 0)) {
		t->error = "KVM_RUN";
		goto out;
	}
	t->exit_reason = t->run->exit_reason;
out:
	ioctl(t->dr_vcpu, DIRTYRING_UNBIND, 0);
	return NULL;
}

struct seen {
	uint8_t count[NPAGES];
	unsigned int total;
};

static void record(void *arg, uint32_t slot, uint64_t offset)
{
	struct seen *s = arg;

	if (slot == 0 && offset < NPAGES)
		s->count[offset]++;
	s->total++;
}

FIXTURE(kvm) {
	struct guest g;
	struct vcpu_thread t[2];
};

FIXTURE_SETUP(kvm)
{
	struct guest *g = &self->g;
	struct kvm_userspace_memory_region region = { 0 };
	int i, mmap_size;

	g->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (g->kvm < 0)
		SKIP(return, "/dev/kvm: %s (kvm-amd not loadable here)",
		     strerror(errno));
	g->kvm_vm = ioctl(g->kvm, KVM_CREATE_VM, 0);
	ASSERT_LE(0, g->kvm_vm) TH_LOG("KVM_CREATE_VM: %s", strerror(errno));
	g->dr_vm = dr_create_vm();
	ASSERT_LE(0, g->dr_vm);
	ASSERT_EQ(0, dr_add_slot(g->dr_vm, 0, NPAGES));
	ASSERT_EQ(0, dr_enable_rings(g->dr_vm, RING, RING));
	g->mem = dr_map_slot(g->dr_vm, 0, NPAGES);
	ASSERT_NE(NULL, g->mem);
	g->vm_ring = (struct dr_ring_view){ dr_map_ring(g->dr_vm, RING), RING, 0 };
	ASSERT_NE(NULL, g->vm_ring.entries);

	region.memory_size = NPAGES * PAGE_SIZE_4K;
	region.userspace_addr = (uintptr_t)g->mem;
	ASSERT_EQ(0, ioctl(g->kvm_vm, KVM_SET_USER_MEMORY_REGION, &region))
		TH_LOG("KVM_SET_USER_MEMORY_REGION: %s", strerror(errno));
	memcpy(g->mem + CODE_GPA, guest_code, sizeof(guest_code));

	mmap_size = ioctl(g->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	ASSERT_LT(0, mmap_size);
	for (i = 0; i < 2; i++) {
		struct vcpu_thread *t = &self->t[i];

		t->g = g;
		t->index = i;
		t->dr_vcpu = ioctl(g->dr_vm, DIRTYRING_CREATE_VCPU, i);
		ASSERT_LE(0, t->dr_vcpu);
		t->ring = (struct dr_ring_view){ dr_map_ring(t->dr_vcpu, RING),
						 RING, 0 };
		ASSERT_NE(NULL, t->ring.entries);
		t->kvm_vcpu = ioctl(g->kvm_vm, KVM_CREATE_VCPU, i);
		ASSERT_LE(0, t->kvm_vcpu) TH_LOG("KVM_CREATE_VCPU: %s",
						 strerror(errno));
		t->run = mmap(NULL, mmap_size, PROT_READ | PROT_WRITE,
			      MAP_SHARED, t->kvm_vcpu, 0);
		ASSERT_NE(MAP_FAILED, t->run);
	}
}

FIXTURE_TEARDOWN(kvm)
{
	int i;

	if (self->g.kvm < 0)
		return;
	for (i = 0; i < 2; i++) {
		close(self->t[i].kvm_vcpu);
		close(self->t[i].dr_vcpu);
	}
	close(self->g.kvm_vm);
	munmap(self->g.mem, NPAGES * PAGE_SIZE_4K);
	close(self->g.dr_vm);
	close(self->g.kvm);
}

/* Setup wrote code and lists from this (unbound) thread: start clean. */
static void start_clean(struct guest *g)
{
	dr_harvest(&g->vm_ring, NULL, NULL);
	dr_reset_count(g->dr_vm);
}

static const unsigned int pages0[] = { 16, 17, 40, 100, 200, 255, 17 };
static const unsigned int pages1[] = { 20, 41, 101, 201 };

static void run_and_check(struct __test_metadata *_metadata, struct guest *g,
			  struct vcpu_thread *vcpus, int nvcpus)
{
	static const unsigned int *lists[] = { pages0, pages1 };
	static const unsigned int lens[] = { ARRAY_SIZE(pages0),
					     ARRAY_SIZE(pages1) };
	static const unsigned int unique[] = { 6, 4 };
	pthread_t threads[2];
	int i;
	unsigned int j;

	for (i = 0; i < nvcpus; i++)
		ASSERT_EQ(0, pthread_create(&threads[i], NULL, run_guest,
					    &vcpus[i]));
	for (i = 0; i < nvcpus; i++) {
		struct vcpu_thread *t = &vcpus[i];
		struct seen s = { 0 };

		pthread_join(threads[i], NULL);
		ASSERT_EQ(NULL, t->error) TH_LOG("vCPU %d: %s: %s", i,
						 t->error, strerror(errno));
		ASSERT_EQ(KVM_EXIT_HLT, t->exit_reason)
			TH_LOG("vCPU %d exit reason %d", i, t->exit_reason);
		EXPECT_EQ(unique[i], dr_harvest(&t->ring, record, &s));
		for (j = 0; j < lens[i]; j++) {
			EXPECT_EQ(1, s.count[lists[i][j]])
				TH_LOG("vCPU %d page %u", i, lists[i][j]);
			EXPECT_EQ(0x5a, g->mem[lists[i][j] * PAGE_SIZE_4K]);
		}
	}
	/* Guest writes never reach the VM ring. */
	EXPECT_EQ(0, dr_harvest(&g->vm_ring, NULL, NULL));
}

TEST_F(kvm, guest_writes_land_in_the_bound_vcpu_ring)
{
	set_list(&self->g, 0, pages0, ARRAY_SIZE(pages0));
	start_clean(&self->g);
	run_and_check(_metadata, &self->g, self->t, 1);
}

TEST_F(kvm, reset_invalidates_kvm_mappings)
{
	int round;

	set_list(&self->g, 0, pages0, ARRAY_SIZE(pages0));
	start_clean(&self->g);
	for (round = 0; round < 3; round++) {
		run_and_check(_metadata, &self->g, self->t, 1);
		EXPECT_EQ(6, dr_reset_count(self->g.dr_vm));
	}
}

TEST_F(kvm, two_vcpus_two_rings)
{
	set_list(&self->g, 0, pages0, ARRAY_SIZE(pages0));
	set_list(&self->g, 1, pages1, ARRAY_SIZE(pages1));
	start_clean(&self->g);
	run_and_check(_metadata, &self->g, self->t, 2);
}

TEST_HARNESS_MAIN
