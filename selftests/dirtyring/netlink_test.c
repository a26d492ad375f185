// SPDX-License-Identifier: GPL-2.0
/*
 * The generic netlink family "dirtyring": what VM_GET and VCPU_GET report
 * against a known workload and GET_RING_STATUS, stable ids shared with
 * fdinfo, dumps that span messages, events, bad requests as a table, and
 * CAP_NET_ADMIN.  A raw netlink client, so the test stays static and small.
 */
#define _GNU_SOURCE
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "dirtyring_util.h"
#include "../kselftest_harness.h"

#define PG PAGE_SIZE_4K
#define RING 128
#define SOFT (RING - DIRTYRING_RING_RESERVED_ENTRIES)
#define NPAGES 256
#define BUF 65536

struct nl {
	int fd;
	uint16_t family;
	uint32_t version, events;
	uint32_t seq;
	char err_msg[128];
};

static struct nlattr *nla_next(struct nlattr *a, int *left)
{
	int len = NLA_ALIGN(a->nla_len);

	*left -= len;
	return (struct nlattr *)((char *)a + len);
}

/* @a, if a whole attribute starts there with @left bytes to go. */
static bool nla_ok(struct nlattr *a, int left)
{
	return left >= (int)sizeof(*a) && a->nla_len >= sizeof(*a) &&
	       a->nla_len <= left;
}

static void *nla_data(struct nlattr *a)
{
	return (char *)a + NLA_HDRLEN;
}

static int nla_type(struct nlattr *a)
{
	return a->nla_type & NLA_TYPE_MASK;
}

/* Attributes of a nest or a message body, by type (the last one wins). */
static void nla_index(struct nlattr *head, int len, struct nlattr **tb,
		      int max)
{
	struct nlattr *a;
	int left;

	memset(tb, 0, (max + 1) * sizeof(*tb));
	for (a = head, left = len; nla_ok(a, left); a = nla_next(a, &left))
		if (nla_type(a) <= max)
			tb[nla_type(a)] = a;
}

static uint64_t nla_u64(struct nlattr *a)
{
	uint64_t v;

	memcpy(&v, nla_data(a), sizeof(v));
	return v;
}

static uint32_t nla_u32(struct nlattr *a)
{
	return *(uint32_t *)nla_data(a);
}

struct req {
	struct nlmsghdr n;
	struct genlmsghdr g;
	char attrs[256];
};

static void req_init(struct req *r, uint16_t family, uint8_t cmd,
		     uint16_t flags)
{
	memset(r, 0, sizeof(*r));
	r->n.nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN);
	r->n.nlmsg_type = family;
	r->n.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
	r->g.cmd = cmd;
	r->g.version = 1;
}

static void req_put(struct req *r, uint16_t type, const void *data, int len)
{
	struct nlattr *a = (struct nlattr *)((char *)r + NLMSG_ALIGN(r->n.nlmsg_len));

	a->nla_type = type;
	a->nla_len = NLA_HDRLEN + len;
	memcpy(nla_data(a), data, len);
	r->n.nlmsg_len = NLMSG_ALIGN(r->n.nlmsg_len) + NLA_ALIGN(a->nla_len);
}

static int nl_open(void)
{
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK };
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
	int one = 1;

	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)))
		return -1;
	setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one));
	return fd;
}

/*
 * Sends @r and reads the replies, calling @fn for each message of the
 * answer; returns 0 or the negative errno of the error reply (its extack
 * message in nl->err_msg).  *@batches counts the reads that brought data.
 */
static int nl_talk(struct nl *nl, struct req *r,
		   void (*fn)(void *arg, struct nlmsghdr *n), void *arg,
		   int *batches)
{
	static char buf[BUF];
	int ret = 1;

	r->n.nlmsg_seq = ++nl->seq;
	nl->err_msg[0] = 0;
	if (send(nl->fd, r, r->n.nlmsg_len, 0) != (ssize_t)r->n.nlmsg_len)
		return -errno;
	while (ret > 0) {
		ssize_t len = recv(nl->fd, buf, sizeof(buf), 0);
		struct nlmsghdr *n;

		if (len <= 0)
			return -EIO;
		if (batches)
			(*batches)++;
		for (n = (struct nlmsghdr *)buf; NLMSG_OK(n, len);
		     n = NLMSG_NEXT(n, len)) {
			if (n->nlmsg_seq != nl->seq)
				continue;
			if (n->nlmsg_type == NLMSG_DONE) {
				ret = 0;
			} else if (n->nlmsg_type == NLMSG_ERROR) {
				struct nlmsgerr *e = NLMSG_DATA(n);
				int hlen = sizeof(*e) +
					   (n->nlmsg_flags & NLM_F_CAPPED ?
					    0 : e->msg.nlmsg_len - sizeof(e->msg));
				struct nlattr *tb[NLMSGERR_ATTR_MAX + 1];

				ret = e->error;
				if (n->nlmsg_flags & NLM_F_ACK_TLVS) {
					nla_index((struct nlattr *)((char *)e + NLMSG_ALIGN(hlen)),
						  n->nlmsg_len - NLMSG_HDRLEN - NLMSG_ALIGN(hlen),
						  tb, NLMSGERR_ATTR_MAX);
					if (tb[NLMSGERR_ATTR_MSG])
						snprintf(nl->err_msg, sizeof(nl->err_msg), "%s",
							 (char *)nla_data(tb[NLMSGERR_ATTR_MSG]));
				}
				if (!ret)
					ret = 0;
			} else if (fn) {
				fn(arg, n);
			}
		}
	}
	return ret;
}

static struct nlattr *genl_attrs(struct nlmsghdr *n, int *len)
{
	*len = n->nlmsg_len - NLMSG_LENGTH(GENL_HDRLEN);
	return (struct nlattr *)((char *)NLMSG_DATA(n) + GENL_HDRLEN);
}

static void got_family(void *arg, struct nlmsghdr *n)
{
	struct nl *nl = arg;
	struct nlattr *tb[CTRL_ATTR_MAX + 1], *g, *head;
	int len, left;

	head = genl_attrs(n, &len);
	nla_index(head, len, tb, CTRL_ATTR_MAX);
	if (tb[CTRL_ATTR_FAMILY_ID])
		nl->family = *(uint16_t *)nla_data(tb[CTRL_ATTR_FAMILY_ID]);
	if (tb[CTRL_ATTR_VERSION])
		nl->version = nla_u32(tb[CTRL_ATTR_VERSION]);
	if (!tb[CTRL_ATTR_MCAST_GROUPS])
		return;
	for (g = nla_data(tb[CTRL_ATTR_MCAST_GROUPS]),
	     left = tb[CTRL_ATTR_MCAST_GROUPS]->nla_len - NLA_HDRLEN;
	     nla_ok(g, left); g = nla_next(g, &left)) {
		struct nlattr *gt[CTRL_ATTR_MCAST_GRP_MAX + 1];

		nla_index(nla_data(g), g->nla_len - NLA_HDRLEN, gt,
			  CTRL_ATTR_MCAST_GRP_MAX);
		if (gt[CTRL_ATTR_MCAST_GRP_NAME] && gt[CTRL_ATTR_MCAST_GRP_ID] &&
		    !strcmp(nla_data(gt[CTRL_ATTR_MCAST_GRP_NAME]),
			    DIRTYRING_GENL_MCGRP_EVENTS))
			nl->events = nla_u32(gt[CTRL_ATTR_MCAST_GRP_ID]);
	}
}

static int nl_init(struct nl *nl)
{
	struct req r;

	memset(nl, 0, sizeof(*nl));
	nl->fd = nl_open();
	if (nl->fd < 0)
		return -1;
	req_init(&r, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 0);
	req_put(&r, CTRL_ATTR_FAMILY_NAME, DIRTYRING_GENL_NAME,
		sizeof(DIRTYRING_GENL_NAME));
	return nl_talk(nl, &r, got_family, nl, NULL) || !nl->family ? -1 : 0;
}

/* What one VM_GET or VCPU_GET message says. */
struct report {
	uint32_t vm_id, owner_pid, vcpu_id, bound_tid, slots;
	char comm[32];
	uint64_t slot_pages, slot_resident, slot_parked;
	uint32_t used, entries;
	uint64_t pushed, soft_full, overflows, waits, wait_ns, hist_sum;
	uint64_t faults, fault_ns, fault_hist_sum;
	bool has_ring;
};

static uint64_t hist_sum(struct nlattr *a)
{
	uint64_t v[DIRTYRING_HIST_BUCKETS], sum = 0;
	int i;

	if (!a || a->nla_len - NLA_HDRLEN != sizeof(v))
		return ~0ULL;
	memcpy(v, nla_data(a), sizeof(v));
	for (i = 0; i < DIRTYRING_HIST_BUCKETS; i++)
		sum += v[i];
	return sum;
}

static void parse_ring(struct nlattr *nest, struct report *rep)
{
	struct nlattr *tb[DIRTYRING_A_RING_MAX + 1];

	nla_index(nla_data(nest), nest->nla_len - NLA_HDRLEN, tb,
		  DIRTYRING_A_RING_MAX);
	rep->has_ring = true;
	rep->entries = nla_u32(tb[DIRTYRING_A_RING_ENTRIES]);
	rep->used = nla_u32(tb[DIRTYRING_A_RING_USED]);
	rep->pushed = nla_u64(tb[DIRTYRING_A_RING_PUSHED]);
	rep->soft_full = nla_u64(tb[DIRTYRING_A_RING_SOFT_FULL]);
	rep->overflows = nla_u64(tb[DIRTYRING_A_RING_OVERFLOWS]);
	rep->waits = nla_u64(tb[DIRTYRING_A_RING_WAITS]);
	rep->wait_ns = nla_u64(tb[DIRTYRING_A_RING_WAIT_NS]);
	rep->hist_sum = hist_sum(tb[DIRTYRING_A_RING_WAIT_HIST]);
}

struct reports {
	struct report r[512];
	int n;
};

static void got_report(void *arg, struct nlmsghdr *n)
{
	struct reports *reps = arg;
	struct nlattr *tb[DIRTYRING_A_MAX + 1], *a, *head;
	struct report *rep;
	int len, left;

	if (reps->n >= (int)ARRAY_SIZE(reps->r))
		return;
	rep = &reps->r[reps->n++];
	memset(rep, 0, sizeof(*rep));
	head = genl_attrs(n, &len);
	nla_index(head, len, tb, DIRTYRING_A_MAX);
	if (tb[DIRTYRING_A_VM_ID])
		rep->vm_id = nla_u32(tb[DIRTYRING_A_VM_ID]);
	if (tb[DIRTYRING_A_VM_OWNER_PID])
		rep->owner_pid = nla_u32(tb[DIRTYRING_A_VM_OWNER_PID]);
	if (tb[DIRTYRING_A_VM_OWNER_COMM])
		snprintf(rep->comm, sizeof(rep->comm), "%s",
			 (char *)nla_data(tb[DIRTYRING_A_VM_OWNER_COMM]));
	if (tb[DIRTYRING_A_VM_RING])
		parse_ring(tb[DIRTYRING_A_VM_RING], rep);
	for (a = head, left = len; nla_ok(a, left); a = nla_next(a, &left)) {
		struct nlattr *st[DIRTYRING_A_SLOT_MAX + 1];

		if (nla_type(a) != DIRTYRING_A_VM_SLOT)
			continue;
		nla_index(nla_data(a), a->nla_len - NLA_HDRLEN, st,
			  DIRTYRING_A_SLOT_MAX);
		rep->slots++;
		rep->slot_pages += nla_u64(st[DIRTYRING_A_SLOT_PAGES]);
		rep->slot_resident += nla_u64(st[DIRTYRING_A_SLOT_RESIDENT]);
		rep->slot_parked += nla_u64(st[DIRTYRING_A_SLOT_PARKED]);
	}
	if (tb[DIRTYRING_A_VM_VCPU]) {
		struct nlattr *vt[DIRTYRING_A_VCPU_MAX + 1];

		a = tb[DIRTYRING_A_VM_VCPU];
		nla_index(nla_data(a), a->nla_len - NLA_HDRLEN, vt,
			  DIRTYRING_A_VCPU_MAX);
		rep->vcpu_id = nla_u32(vt[DIRTYRING_A_VCPU_ID]);
		if (vt[DIRTYRING_A_VCPU_BOUND_TID])
			rep->bound_tid = nla_u32(vt[DIRTYRING_A_VCPU_BOUND_TID]);
		parse_ring(vt[DIRTYRING_A_VCPU_RING], rep);
		rep->faults = nla_u64(vt[DIRTYRING_A_VCPU_FAULTS]);
		rep->fault_ns = nla_u64(vt[DIRTYRING_A_VCPU_FAULT_NS]);
		rep->fault_hist_sum = hist_sum(vt[DIRTYRING_A_VCPU_FAULT_HIST]);
	}
}

/* The VM id its fd's fdinfo shows, or 0. */
static uint32_t fdinfo_id(int fd)
{
	char path[64], line[256];
	unsigned int id = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "dirtyring-vm-id: %u", &id) == 1)
			break;
	fclose(f);
	return id;
}

static int vm_get(struct nl *nl, uint32_t id, struct reports *reps)
{
	struct req r;

	req_init(&r, nl->family, DIRTYRING_CMD_VM_GET, 0);
	req_put(&r, DIRTYRING_A_VM_ID, &id, sizeof(id));
	reps->n = 0;
	return nl_talk(nl, &r, got_report, reps, NULL);
}

static int dump(struct nl *nl, uint8_t cmd, uint32_t id, struct reports *reps,
		int *batches)
{
	struct req r;

	req_init(&r, nl->family, cmd, NLM_F_DUMP);
	if (id)
		req_put(&r, DIRTYRING_A_VM_ID, &id, sizeof(id));
	reps->n = 0;
	return nl_talk(nl, &r, got_report, reps, batches);
}

struct vm {
	int vm, vcpu;
	char *mem;
	uint32_t id;
};

static int vm_init(struct vm *v)
{
	v->vm = dr_create_vm();
	if (v->vm < 0 || dr_add_slot(v->vm, 0, NPAGES) ||
	    dr_enable_rings(v->vm, RING, RING))
		return -1;
	v->vcpu = ioctl(v->vm, DIRTYRING_CREATE_VCPU, 0);
	v->mem = dr_map_slot(v->vm, 0, NPAGES);
	v->id = fdinfo_id(v->vm);
	return v->vcpu >= 0 && v->mem && v->id ? 0 : -1;
}

struct writer {
	int vcpu;
	char *mem;
	unsigned int first, count;
	int ret;
};

static void *bound_write(void *arg)
{
	struct writer *w = arg;
	unsigned int i;

	w->ret = ioctl(w->vcpu, DIRTYRING_BIND, 0);
	for (i = 0; i < w->count; i++)
		w->mem[(w->first + i) * PG] = 1;
	return NULL;
}

FIXTURE(nl) {
	struct nl nl;
};

FIXTURE_SETUP(nl)
{
	ASSERT_EQ(0, nl_init(&self->nl))
		TH_LOG("the dirtyring netlink family is not registered");
	EXPECT_EQ(DIRTYRING_GENL_VERSION, self->nl.version);
	EXPECT_NE(0, self->nl.events);
}

FIXTURE_TEARDOWN(nl)
{
	close(self->nl.fd);
}

/* A known workload: what netlink says equals GET_RING_STATUS and the truth. */
TEST_F(nl, counters_match_the_workload)
{
	struct writer w = { .first = 0, .count = 20 };
	struct dirtyring_ring_status vm_st, vcpu_st;
	struct reports *reps = calloc(1, sizeof(*reps));
	struct vm v;
	pthread_t t;
	unsigned int i;

	ASSERT_NE(NULL, reps);
	ASSERT_EQ(0, vm_init(&v));
	w.vcpu = v.vcpu;
	w.mem = v.mem;
	ASSERT_EQ(0, pthread_create(&t, NULL, bound_write, &w));
	ASSERT_EQ(0, pthread_join(t, NULL));
	ASSERT_EQ(0, w.ret);
	for (i = 100; i < 107; i++)
		v.mem[i * PG] = 1;	/* unbound: the VM ring */
	ASSERT_EQ(0, dr_ring_status(v.vm, &vm_st));
	ASSERT_EQ(0, dr_ring_status(v.vcpu, &vcpu_st));

	ASSERT_EQ(0, vm_get(&self->nl, v.id, reps)) TH_LOG("%s",
							   self->nl.err_msg);
	ASSERT_EQ(1, reps->n);
	EXPECT_EQ(v.id, reps->r[0].vm_id);
	EXPECT_EQ((uint32_t)getpid(), reps->r[0].owner_pid);
	EXPECT_STRNE("", reps->r[0].comm);
	EXPECT_EQ(1, reps->r[0].slots);
	EXPECT_EQ(NPAGES, reps->r[0].slot_pages);
	/* Allocated when the slot was added. */
	EXPECT_EQ(NPAGES, reps->r[0].slot_resident);
	EXPECT_EQ(0, reps->r[0].slot_parked);
	EXPECT_EQ(7, reps->r[0].used);
	EXPECT_EQ(vm_st.used, reps->r[0].used);
	EXPECT_EQ(vm_st.pushed, reps->r[0].pushed);
	EXPECT_EQ(RING, reps->r[0].entries);

	ASSERT_EQ(0, dump(&self->nl, DIRTYRING_CMD_VCPU_GET, v.id, reps, NULL));
	ASSERT_EQ(1, reps->n);
	EXPECT_EQ(v.id, reps->r[0].vm_id);
	EXPECT_EQ(0, reps->r[0].vcpu_id);
	EXPECT_EQ(20, reps->r[0].used);
	EXPECT_EQ(vcpu_st.pushed, reps->r[0].pushed);
	/* Every first write of the bound thread is a stalled fault, counted. */
	EXPECT_EQ(20, reps->r[0].faults);
	EXPECT_EQ(20, reps->r[0].fault_hist_sum);
	EXPECT_LT(0, reps->r[0].fault_ns);
	EXPECT_EQ(0, reps->r[0].hist_sum);
	/* The thread exited: no bound thread any more. */
	EXPECT_EQ(0, reps->r[0].bound_tid);
	close(v.vcpu);
	close(v.vm);
	free(reps);
}

static int set_stall_accounting(const char *value)
{
	int fd = open("/sys/module/dirtyring/parameters/stall_accounting",
		      O_WRONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : write(fd, value, strlen(value));
	int err = n < 0 ? errno : 0;

	if (fd >= 0)
		close(fd);
	return err;
}

/* stall_accounting=N stops the stall counters; Y starts them again. */
TEST_F(nl, stall_accounting_can_be_turned_off)
{
	struct reports *reps = calloc(1, sizeof(*reps));
	struct writer w = { .first = 0, .count = 10 };
	static const char *const bad[] = { "maybe", "2", "-1" };
	unsigned int i;
	struct vm v;
	pthread_t t;

	ASSERT_NE(NULL, reps);
	for (i = 0; i < ARRAY_SIZE(bad); i++)
		EXPECT_EQ(EINVAL, set_stall_accounting(bad[i]))
			TH_LOG("bad value %u", i);
	ASSERT_EQ(0, vm_init(&v));
	w.vcpu = v.vcpu;
	w.mem = v.mem;
	ASSERT_EQ(0, set_stall_accounting("N"));
	ASSERT_EQ(0, pthread_create(&t, NULL, bound_write, &w));
	ASSERT_EQ(0, pthread_join(t, NULL));
	ASSERT_EQ(0, w.ret);
	ASSERT_EQ(0, dump(&self->nl, DIRTYRING_CMD_VCPU_GET, v.id, reps, NULL));
	ASSERT_EQ(1, reps->n);
	EXPECT_EQ(10, reps->r[0].used);
	EXPECT_EQ(0, reps->r[0].faults);
	EXPECT_EQ(0, reps->r[0].fault_hist_sum);

	ASSERT_EQ(0, set_stall_accounting("Y"));
	w.first = 10;
	ASSERT_EQ(0, pthread_create(&t, NULL, bound_write, &w));
	ASSERT_EQ(0, pthread_join(t, NULL));
	ASSERT_EQ(0, w.ret);
	ASSERT_EQ(0, dump(&self->nl, DIRTYRING_CMD_VCPU_GET, v.id, reps, NULL));
	EXPECT_EQ(20, reps->r[0].used);
	EXPECT_EQ(10, reps->r[0].faults);
	EXPECT_EQ(10, reps->r[0].fault_hist_sum);
	close(v.vcpu);
	close(v.vm);
	free(reps);
}

/* Ids: unique over many lives, the same in fdinfo and netlink. */
TEST_F(nl, ids_are_stable_and_not_reused)
{
	struct reports *reps = calloc(1, sizeof(*reps));
	uint32_t last = 0;
	int i;

	ASSERT_NE(NULL, reps);
	for (i = 0; i < 300; i++) {
		int vm = dr_create_vm();
		uint32_t id = fdinfo_id(vm);

		ASSERT_LE(0, vm);
		ASSERT_LT(last, id) TH_LOG("VM %d: id %u after %u", i, id, last);
		ASSERT_EQ(0, vm_get(&self->nl, id, reps));
		ASSERT_EQ(id, reps->r[0].vm_id);
		last = id;
		close(vm);
		EXPECT_EQ(-ENOENT, vm_get(&self->nl, id, reps));
	}
	free(reps);
}

/*
 * As many VMs as the system takes, 16 processes of 16: the dump spans
 * messages and misses none.
 */
#define KIDS (DIRTYRING_MAX_VMS / DIRTYRING_MAX_VMS_PER_PROCESS)
TEST_F(nl, dump_spans_messages_and_is_complete)
{
	struct reports *reps = calloc(1, sizeof(*reps));
	int go[2], ready[2], i, j, batches = 0, mine = 0;
	pid_t kids[KIDS];
	char c;

	ASSERT_NE(NULL, reps);
	ASSERT_EQ(0, pipe(go));
	ASSERT_EQ(0, pipe(ready));
	for (i = 0; i < KIDS; i++) {
		kids[i] = fork();
		ASSERT_LE(0, kids[i]);
		if (!kids[i]) {
			int n;

			for (n = 0; n < DIRTYRING_MAX_VMS_PER_PROCESS; n++) {
				int vm = dr_create_vm();

				if (vm < 0 || dr_enable_rings(vm, RING, RING))
					_exit(1);
			}
			write(ready[1], "r", 1);
			read(go[0], &c, 1);
			_exit(0);
		}
	}
	for (i = 0; i < KIDS; i++)
		ASSERT_EQ(1, read(ready[0], &c, 1));
	ASSERT_EQ(0, dump(&self->nl, DIRTYRING_CMD_VM_GET, 0, reps, &batches));
	for (i = 0; i < reps->n; i++)
		for (j = 0; j < KIDS; j++)
			mine += reps->r[i].owner_pid == (uint32_t)kids[j];
	EXPECT_EQ(DIRTYRING_MAX_VMS, mine);
	EXPECT_LT(1, batches) TH_LOG("%d VMs in one message", reps->n);
	for (i = 1; i < reps->n; i++)
		EXPECT_LT(reps->r[i - 1].vm_id, reps->r[i].vm_id);
	for (i = 0; i < KIDS; i++)
		write(go[1], "g", 1);
	for (i = 0; i < KIDS; i++)
		waitpid(kids[i], NULL, 0);
	free(reps);
}

/* A process holding @n VMs with rings until told to go (a byte on @go). */
static pid_t vm_holder(int n, int ready, int go)
{
	pid_t pid = fork();
	char c;
	int i;

	if (pid)
		return pid;
	for (i = 0; i < n; i++) {
		int vm = dr_create_vm();

		if (vm < 0 || dr_enable_rings(vm, RING, RING))
			_exit(1);
	}
	write(ready, "r", 1);
	read(go, &c, 1);
	_exit(0);
}

/*
 * VMs come and go between the messages of one dump: it still ends well,
 * in id order with no id twice, and lists every VM that lived throughout.
 */
#define CHURN_KIDS 8
TEST_F(nl, dump_while_vms_come_and_go)
{
	struct reports *before = calloc(1, sizeof(*before));
	struct reports *during = calloc(1, sizeof(*during));
	int go[CHURN_KIDS + 1][2], ready[2], i, j, ret = 1;
	pid_t kids[CHURN_KIDS + 1];
	static char buf[BUF];
	bool first = true;
	struct req r;
	char c;

	ASSERT_NE(NULL, before);
	ASSERT_NE(NULL, during);
	ASSERT_EQ(0, pipe(ready));
	for (i = 0; i <= CHURN_KIDS; i++)
		ASSERT_EQ(0, pipe(go[i]));
	for (i = 0; i < CHURN_KIDS; i++) {
		kids[i] = vm_holder(DIRTYRING_MAX_VMS_PER_PROCESS, ready[1],
				    go[i][0]);
		ASSERT_LE(0, kids[i]);
	}
	for (i = 0; i < CHURN_KIDS; i++)
		ASSERT_EQ(1, read(ready[0], &c, 1));
	ASSERT_EQ(0, dump(&self->nl, DIRTYRING_CMD_VM_GET, 0, before, NULL));

	/* One read of the dump at a time; VMs change after the first. */
	req_init(&r, self->nl.family, DIRTYRING_CMD_VM_GET, NLM_F_DUMP);
	r.n.nlmsg_seq = ++self->nl.seq;
	ASSERT_EQ((ssize_t)r.n.nlmsg_len, send(self->nl.fd, &r, r.n.nlmsg_len, 0));
	during->n = 0;
	while (ret > 0) {
		ssize_t len = recv(self->nl.fd, buf, sizeof(buf), 0);
		struct nlmsghdr *n;

		ASSERT_LT(0, len);
		for (n = (struct nlmsghdr *)buf; NLMSG_OK(n, len);
		     n = NLMSG_NEXT(n, len)) {
			if (n->nlmsg_type == NLMSG_DONE)
				ret = 0;
			else if (n->nlmsg_type == NLMSG_ERROR)
				ret = ((struct nlmsgerr *)NLMSG_DATA(n))->error ?: -EIO;
			else
				got_report(during, n);
		}
		if (!first || ret <= 0)
			continue;
		first = false;
		/* The first and the last holders go, a new one comes. */
		write(go[0][1], "g", 1);
		write(go[CHURN_KIDS - 1][1], "g", 1);
		waitpid(kids[0], NULL, 0);
		waitpid(kids[CHURN_KIDS - 1], NULL, 0);
		kids[CHURN_KIDS] = vm_holder(DIRTYRING_MAX_VMS_PER_PROCESS,
					     ready[1], go[CHURN_KIDS][0]);
		ASSERT_LE(0, kids[CHURN_KIDS]);
		ASSERT_EQ(1, read(ready[0], &c, 1));
	}
	EXPECT_EQ(0, ret);
	EXPECT_FALSE(first) TH_LOG("the dump fitted in one read: nothing came and went during it");
	for (i = 1; i < during->n; i++)
		EXPECT_LT(during->r[i - 1].vm_id, during->r[i].vm_id);
	/* Every VM of a holder that stayed, exactly once (ids are sorted). */
	for (i = 0; i < before->n; i++) {
		bool stayed = false, seen = false;

		for (j = 1; j < CHURN_KIDS - 1; j++)
			stayed |= before->r[i].owner_pid == (uint32_t)kids[j];
		if (!stayed)
			continue;
		for (j = 0; j < during->n; j++)
			seen |= during->r[j].vm_id == before->r[i].vm_id;
		EXPECT_TRUE(seen) TH_LOG("VM %u missing", before->r[i].vm_id);
	}
	for (i = 1; i <= CHURN_KIDS; i++) {
		write(go[i][1], "g", 1);
		waitpid(kids[i], NULL, 0);
	}
	free(before);
	free(during);
}

struct events {
	int created, destroyed, resets;
	int wait_begins, wait_ends, overflow_events;
	int not_vcpu0;		/* waits without EV_VCPU 0 */
	int other_ring;		/* counted events of neither ring */
	int begin_before_end;	/* a WAIT_END came after a WAIT_BEGIN */
	uint64_t reset_entries, reset_soft_full, reset_overflows;
	/* EV_COUNT sums: [0] vCPU 0's ring, [1] the VM ring */
	uint64_t soft_full[2], overflows[2];
	uint32_t first_cmd, last_cmd;
	uint64_t until_overflows;	/* read_events() stops there too */
};

static bool ev_vcpu0(struct nlattr **tb)
{
	return tb[DIRTYRING_A_EV_VCPU] && !nla_u32(tb[DIRTYRING_A_EV_VCPU]);
}

/* Adds a coalesced event's count to its ring's sum in @sums. */
static void ev_count(struct nlattr **tb, uint64_t *sums, struct events *ev)
{
	uint64_t n = tb[DIRTYRING_A_EV_COUNT] ?
		     nla_u64(tb[DIRTYRING_A_EV_COUNT]) : 0;

	if (ev_vcpu0(tb))
		sums[0] += n;
	else if (!tb[DIRTYRING_A_EV_VCPU])
		sums[1] += n;
	else
		ev->other_ring++;
}

/*
 * Reads the notifications for @vm_id until its VM_DESTROYED_NTF, or until
 * vCPU 0's overflows reach ev->until_overflows if set (or none came for
 * 20 s: the event is missing, which the test then says).
 */
static void read_events(int fd, uint32_t vm_id, struct events *ev)
{
	struct timeval tv = { .tv_sec = 20 };
	static char buf[BUF];
	ssize_t len;

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	while (!ev->destroyed &&
	       (!ev->until_overflows || ev->overflows[0] < ev->until_overflows) &&
	       (len = recv(fd, buf, sizeof(buf), 0)) > 0) {
		struct nlmsghdr *n;

		for (n = (struct nlmsghdr *)buf; NLMSG_OK(n, len);
		     n = NLMSG_NEXT(n, len)) {
			struct genlmsghdr *g = NLMSG_DATA(n);
			struct nlattr *tb[DIRTYRING_A_MAX + 1], *head;
			int alen;

			head = genl_attrs(n, &alen);
			nla_index(head, alen, tb, DIRTYRING_A_MAX);
			if (!tb[DIRTYRING_A_VM_ID] ||
			    nla_u32(tb[DIRTYRING_A_VM_ID]) != vm_id)
				continue;
			if (!ev->first_cmd)
				ev->first_cmd = g->cmd;
			ev->last_cmd = g->cmd;
			switch (g->cmd) {
			case DIRTYRING_CMD_VM_CREATED_NTF:
				ev->created++;
				break;
			case DIRTYRING_CMD_VM_DESTROYED_NTF:
				ev->destroyed++;
				break;
			case DIRTYRING_CMD_WAIT_BEGIN_NTF:
				ev->wait_begins++;
				ev->not_vcpu0 += !ev_vcpu0(tb);
				break;
			case DIRTYRING_CMD_WAIT_END_NTF:
				ev->begin_before_end += ev->wait_begins >
							ev->wait_ends;
				ev->wait_ends++;
				ev->not_vcpu0 += !ev_vcpu0(tb) ||
						 !tb[DIRTYRING_A_EV_NS];
				break;
			case DIRTYRING_CMD_SOFT_FULL_NTF:
				ev_count(tb, ev->soft_full, ev);
				break;
			case DIRTYRING_CMD_OVERFLOW_NTF:
				ev->overflow_events++;
				ev_count(tb, ev->overflows, ev);
				break;
			case DIRTYRING_CMD_RESET_NTF:
				ev->resets++;
				ev->reset_entries += nla_u64(tb[DIRTYRING_A_EV_ENTRIES]);
				ev->reset_soft_full += nla_u64(tb[DIRTYRING_A_EV_SOFT_FULL]);
				ev->reset_overflows += nla_u64(tb[DIRTYRING_A_EV_OVERFLOWS]);
				break;
			}
		}
	}
}

static bool wait_waits(int fd)
{
	struct dirtyring_ring_status st;
	int i;

	for (i = 0; i < 20000; i++) {
		if (!dr_ring_status(fd, &st) && st.waits)
			return true;
		usleep(1000);
	}
	return false;
}

/*
 * One system call fills the vCPU ring and goes on: the rest of its pages
 * overflow.  Then the thread waits, on its way back to user mode.
 */
static void *bound_read_zero(void *arg)
{
	struct writer *w = arg;
	int zero = open("/dev/zero", O_RDONLY);
	size_t len = (size_t)w->count * PG;

	w->ret = zero < 0 || ioctl(w->vcpu, DIRTYRING_BIND, 0) ||
		 read(zero, w->mem + (size_t)w->first * PG, len) != (ssize_t)len;
	close(zero);
	return NULL;
}

TEST_F(nl, events_for_create_full_overflow_wait_reset_destroy)
{
	uint64_t start_ms, elapsed_ms;
	struct writer w = { .first = 0, .count = NPAGES };
	struct reports *reps = calloc(1, sizeof(*reps));
	struct dr_ring_view ring;
	struct events ev = { 0 };
	int fd = nl_open();
	struct vm v;
	pthread_t t;

	ASSERT_NE(NULL, reps);
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, setsockopt(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP,
				&self->nl.events, sizeof(self->nl.events)));
	ASSERT_EQ(0, vm_init(&v));
	ring = (struct dr_ring_view){ dr_map_ring(v.vcpu, RING), RING, 0 };
	ASSERT_NE(NULL, ring.entries);
	w.vcpu = v.vcpu;
	w.mem = v.mem;
	start_ms = now_ms();
	ASSERT_EQ(0, pthread_create(&t, NULL, bound_read_zero, &w));
	ASSERT_TRUE(wait_waits(v.vcpu));
	/* The pages that found the ring full are parked in their slot. */
	ASSERT_EQ(0, vm_get(&self->nl, v.id, reps));
	EXPECT_EQ(NPAGES - RING, reps->r[0].slot_parked);
	EXPECT_EQ(RING, dr_harvest(&ring, NULL, NULL));
	EXPECT_EQ(RING, dr_reset_count(v.vm));
	ASSERT_EQ(0, pthread_join(t, NULL));
	EXPECT_EQ(0, w.ret);
	/* Coalesced events come on their own, not only when the VM goes. */
	ev.until_overflows = NPAGES - RING;
	read_events(fd, v.id, &ev);
	EXPECT_EQ(0, ev.destroyed);
	ev.until_overflows = 0;
	munmap(ring.entries, RING * sizeof(struct dirtyring_gfn));
	munmap(v.mem, NPAGES * PG);
	close(v.vcpu);
	close(v.vm);
	read_events(fd, v.id, &ev);
	elapsed_ms = now_ms() - start_ms;
	EXPECT_EQ(1, ev.created);
	EXPECT_EQ(DIRTYRING_CMD_VM_CREATED_NTF, ev.first_cmd);
	/*
	 * Coalesced: as many as happened, in one event or a few.  The reset
	 * moved parked pages to the VM ring up to its soft limit.
	 */
	EXPECT_EQ(1, ev.soft_full[0]);
	EXPECT_EQ(1, ev.soft_full[1]);
	EXPECT_EQ(NPAGES - RING, ev.overflows[0]);
	EXPECT_EQ(0, ev.overflows[1]);
	EXPECT_EQ(0, ev.other_ring);
	EXPECT_LE(1, ev.overflow_events);
	/*
	 * Rate-limited, whatever the machine's speed: one event per period at
	 * most, plus the one the VM's destruction flushes.
	 */
	EXPECT_GE(2 + elapsed_ms / DIRTYRING_GENL_EVENT_MS, ev.overflow_events)
		TH_LOG("%d overflow events in %llu ms", ev.overflow_events,
		       (unsigned long long)elapsed_ms);
	EXPECT_EQ(1, ev.wait_begins);
	EXPECT_EQ(1, ev.wait_ends);
	EXPECT_EQ(1, ev.begin_before_end);
	EXPECT_EQ(0, ev.not_vcpu0);
	EXPECT_LE(1, ev.resets);
	EXPECT_EQ(RING, ev.reset_entries);
	EXPECT_EQ(2, ev.reset_soft_full);
	EXPECT_EQ(NPAGES - RING, ev.reset_overflows);
	EXPECT_EQ(1, ev.destroyed);
	EXPECT_EQ(DIRTYRING_CMD_VM_DESTROYED_NTF, ev.last_cmd);
	close(fd);
	free(reps);
}

struct bad {
	const char *what;
	uint8_t cmd;
	uint16_t flags;
	int attr;	/* -1: none */
	int len;	/* payload bytes */
	uint32_t value;
	int err;
};

TEST_F(nl, bad_requests)
{
	static const struct bad cases[] = {
		{ "unknown command", 99, 0, -1, 0, 0, -EOPNOTSUPP },
		{ "notification as a request", DIRTYRING_CMD_WAIT_END_NTF, 0, -1,
		  0, 0, -EOPNOTSUPP },
		{ "the last notification as a request",
		  DIRTYRING_CMD_OVERFLOW_NTF, 0, -1, 0, 0, -EOPNOTSUPP },
		{ "one past the last command", DIRTYRING_CMD_MAX + 1, 0, -1, 0,
		  0, -EOPNOTSUPP },
		{ "VM_GET without an id", DIRTYRING_CMD_VM_GET, 0, -1, 0, 0,
		  -EINVAL },
		{ "VM_GET of id 0", DIRTYRING_CMD_VM_GET, 0, DIRTYRING_A_VM_ID, 4,
		  0, -ERANGE },
		{ "VM_GET of a VM that does not exist", DIRTYRING_CMD_VM_GET, 0,
		  DIRTYRING_A_VM_ID, 4, 0x7ffffff0, -ENOENT },
		{ "id of the wrong size", DIRTYRING_CMD_VM_GET, 0,
		  DIRTYRING_A_VM_ID, 2, 1, -EINVAL },
		{ "unknown attribute", DIRTYRING_CMD_VM_GET, 0,
		  DIRTYRING_A_MAX + 5, 4, 1, -EINVAL },
		{ "a reply-only attribute", DIRTYRING_CMD_VM_GET, 0,
		  DIRTYRING_A_VM_OWNER_PID, 4, 1, -EINVAL },
		{ "VCPU_GET as a do", DIRTYRING_CMD_VCPU_GET, 0, -1, 0, 0,
		  -EOPNOTSUPP },
		{ "dump with a reply-only attribute", DIRTYRING_CMD_VM_GET,
		  NLM_F_DUMP, DIRTYRING_A_EV_NS, 8, 1, -EINVAL },
		{ "an event's count in a request", DIRTYRING_CMD_VM_GET, 0,
		  DIRTYRING_A_EV_COUNT, 8, 1, -EINVAL },
	};
	unsigned int i;
	struct req r;

	for (i = 0; i < ARRAY_SIZE(cases); i++) {
		const struct bad *c = &cases[i];

		req_init(&r, self->nl.family, c->cmd, c->flags);
		if (c->attr >= 0)
			req_put(&r, c->attr, &c->value, c->len);
		EXPECT_EQ(c->err, nl_talk(&self->nl, &r, NULL, NULL, NULL))
			TH_LOG("%s (extack: %s)", c->what, self->nl.err_msg);
		if (c->err == -ENOENT)
			EXPECT_STREQ("no VM with this id", self->nl.err_msg);
	}
	/* A message shorter than its genetlink header. */
	req_init(&r, self->nl.family, DIRTYRING_CMD_VM_GET, 0);
	r.n.nlmsg_len = NLMSG_LENGTH(1);
	EXPECT_EQ(-EINVAL, nl_talk(&self->nl, &r, NULL, NULL, NULL));
}

/* Without CAP_NET_ADMIN: every operation and the events group refused. */
TEST_F(nl, unprivileged_is_refused)
{
	pid_t child = fork();
	int status;

	ASSERT_LE(0, child);
	if (!child) {
		struct reports *reps = calloc(1, sizeof(*reps));
		int fd;

		if (!reps || setgid(65534) || setuid(65534))
			_exit(10);
		if (dump(&self->nl, DIRTYRING_CMD_VM_GET, 0, reps, NULL) != -EPERM)
			_exit(11);
		if (vm_get(&self->nl, 1, reps) != -EPERM)
			_exit(12);
		fd = nl_open();
		if (fd < 0 || !setsockopt(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP,
					  &self->nl.events,
					  sizeof(self->nl.events)) ||
		    errno != EPERM)
			_exit(13);
		_exit(0);
	}
	ASSERT_EQ(child, waitpid(child, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	EXPECT_EQ(0, WEXITSTATUS(status));
}

TEST_HARNESS_MAIN
