// SPDX-License-Identifier: GPL-2.0
/*
 * dirtyring: statistics and events over generic netlink (family
 * "dirtyring", see the uAPI header), and the VM fd's fdinfo.
 *
 * Requests are strictly validated (resv_start_op 0, one family policy that
 * accepts only the VM id) and need CAP_NET_ADMIN, as does the events group.
 * Operations run in parallel (parallel_ops): each takes a VM reference
 * through dr_vm_get_by_id() / dr_vm_get_next() (dr_vms_lock, dev.c) and
 * reads the counters the way GET_RING_STATUS does (ring->lock, atomics);
 * they hold no module lock while they send, and while they build only
 * vm->lock, briefly, to read a vCPU's bound thread.
 * Events are built and sent only from contexts that may sleep and hold no
 * module lock (a reset collects its counters under vm->mmu_lock, sends after),
 * only when someone listens.  Soft-limit crossings and overflows, which can
 * happen once per page in the fault path, only kick vm->ev_work; it sends
 * what each ring counted since its last run, at most once per
 * DIRTYRING_GENL_EVENT_MS.  A reset event repeats their totals since the
 * previous reset event.
 */
#include <linux/pid.h>
#include <linux/seq_file.h>
#include <net/genetlink.h>

#include "internal.h"

static struct genl_family dr_genl_family;

enum { DR_MCGRP_EVENTS };

static const struct genl_multicast_group dr_genl_mcgrps[] = {
	[DR_MCGRP_EVENTS] = { .name = DIRTYRING_GENL_MCGRP_EVENTS,
			      .flags = GENL_MCAST_CAP_NET_ADMIN },
};

/* Requests carry nothing but a VM id; strict validation rejects the rest. */
static const struct nla_policy dr_genl_policy[DIRTYRING_A_MAX + 1] = {
	[DIRTYRING_A_VM_ID] = NLA_POLICY_MIN(NLA_U32, 1),
};

static int dr_put_hist(struct sk_buff *skb, int type, atomic64_t *hist)
{
	u64 counts[DIRTYRING_HIST_BUCKETS];
	int i;

	for (i = 0; i < DIRTYRING_HIST_BUCKETS; i++)
		counts[i] = atomic64_read(&hist[i]);
	return nla_put(skb, type, sizeof(counts), counts);
}

static int dr_put_stall(struct sk_buff *skb, struct dr_vcpu *vcpu)
{
	if (nla_put_u64_64bit(skb, DIRTYRING_A_VCPU_FAULTS,
			      atomic64_read(&vcpu->faults),
			      DIRTYRING_A_VCPU_PAD) ||
	    nla_put_u64_64bit(skb, DIRTYRING_A_VCPU_FAULT_NS,
			      atomic64_read(&vcpu->fault_ns),
			      DIRTYRING_A_VCPU_PAD) ||
	    dr_put_hist(skb, DIRTYRING_A_VCPU_FAULT_HIST, vcpu->fault_hist))
		return -EMSGSIZE;
	return 0;
}

static int dr_put_ring(struct sk_buff *skb, int type, struct dr_ring *ring)
{
	struct dirtyring_ring_status st = { 0 };
	struct nlattr *nest;

	dr_ring_status(ring, &st);
	nest = nla_nest_start(skb, type);
	if (!nest ||
	    nla_put_u32(skb, DIRTYRING_A_RING_ENTRIES, st.entries) ||
	    nla_put_u32(skb, DIRTYRING_A_RING_SOFT_LIMIT, st.soft_limit) ||
	    nla_put_u32(skb, DIRTYRING_A_RING_USED, st.used) ||
	    nla_put_u64_64bit(skb, DIRTYRING_A_RING_PUSHED, st.pushed,
			      DIRTYRING_A_RING_PAD) ||
	    nla_put_u64_64bit(skb, DIRTYRING_A_RING_SOFT_FULL,
			      st.soft_full_events, DIRTYRING_A_RING_PAD) ||
	    nla_put_u64_64bit(skb, DIRTYRING_A_RING_OVERFLOWS, st.overflows,
			      DIRTYRING_A_RING_PAD) ||
	    nla_put_u64_64bit(skb, DIRTYRING_A_RING_WAITS, st.waits,
			      DIRTYRING_A_RING_PAD) ||
	    nla_put_u64_64bit(skb, DIRTYRING_A_RING_WAIT_NS, st.wait_ns,
			      DIRTYRING_A_RING_PAD) ||
	    dr_put_hist(skb, DIRTYRING_A_RING_WAIT_HIST, ring->wait_hist))
		return -EMSGSIZE;
	nla_nest_end(skb, nest);
	return 0;
}

static int dr_put_owner(struct sk_buff *skb, struct dr_vm *vm)
{
	if (nla_put_u32(skb, DIRTYRING_A_VM_ID, vm->id) ||
	    nla_put_u32(skb, DIRTYRING_A_VM_OWNER_PID, pid_vnr(vm->owner)) ||
	    nla_put_string(skb, DIRTYRING_A_VM_OWNER_COMM, vm->owner_comm))
		return -EMSGSIZE;
	return 0;
}

static int dr_fill_vm(struct sk_buff *skb, struct dr_vm *vm, u32 portid,
		      u32 seq, int flags)
{
	struct nlattr *nest;
	void *hdr;
	int i;

	hdr = genlmsg_put(skb, portid, seq, &dr_genl_family, flags,
			  DIRTYRING_CMD_VM_GET);
	if (!hdr)
		return -EMSGSIZE;
	if (dr_put_owner(skb, vm))
		goto cancel;
	for (i = 0; i < DIRTYRING_MAX_SLOTS; i++) {
		struct dr_slot *slot = dr_vm_slot(vm, i);

		if (!slot)
			continue;
		nest = nla_nest_start(skb, DIRTYRING_A_VM_SLOT);
		if (!nest || nla_put_u32(skb, DIRTYRING_A_SLOT_ID, slot->id) ||
		    nla_put_u64_64bit(skb, DIRTYRING_A_SLOT_PAGES, slot->npages,
				      DIRTYRING_A_SLOT_PAD) ||
		    nla_put_u64_64bit(skb, DIRTYRING_A_SLOT_RESIDENT,
				      dr_slot_resident(slot),
				      DIRTYRING_A_SLOT_PAD) ||
		    nla_put_u64_64bit(skb, DIRTYRING_A_SLOT_PARKED,
				      atomic_long_read(&slot->overflow_count),
				      DIRTYRING_A_SLOT_PAD))
			goto cancel;
		nla_nest_end(skb, nest);
	}
	/* Pairs with the release in ENABLE_RINGS. */
	if (smp_load_acquire(&vm->rings_enabled) &&
	    dr_put_ring(skb, DIRTYRING_A_VM_RING, &vm->vm_ring))
		goto cancel;
	genlmsg_end(skb, hdr);
	return 0;
cancel:
	genlmsg_cancel(skb, hdr);
	return -EMSGSIZE;
}

static int dr_fill_vcpu(struct sk_buff *skb, struct dr_vcpu *vcpu,
			u32 portid, u32 seq, int flags)
{
	struct dr_vm *vm = vcpu->vm;
	struct nlattr *nest;
	pid_t tid = 0;
	void *hdr;

	hdr = genlmsg_put(skb, portid, seq, &dr_genl_family, flags,
			  DIRTYRING_CMD_VCPU_GET);
	if (!hdr)
		return -EMSGSIZE;
	mutex_lock(&vm->lock);
	if (dr_vcpu_bound_alive(vcpu))
		tid = pid_vnr(vcpu->bound);
	mutex_unlock(&vm->lock);
	if (nla_put_u32(skb, DIRTYRING_A_VM_ID, vm->id))
		goto cancel;
	nest = nla_nest_start(skb, DIRTYRING_A_VM_VCPU);
	if (!nest ||
	    nla_put_u32(skb, DIRTYRING_A_VCPU_ID, vcpu->id) ||
	    (tid && nla_put_u32(skb, DIRTYRING_A_VCPU_BOUND_TID, tid)) ||
	    dr_put_ring(skb, DIRTYRING_A_VCPU_RING, &vcpu->ring) ||
	    dr_put_stall(skb, vcpu))
		goto cancel;
	nla_nest_end(skb, nest);
	genlmsg_end(skb, hdr);
	return 0;
cancel:
	genlmsg_cancel(skb, hdr);
	return -EMSGSIZE;
}

static int dr_genl_vm_get_doit(struct sk_buff *skb, struct genl_info *info)
{
	struct sk_buff *msg;
	struct dr_vm *vm;
	int ret;

	if (GENL_REQ_ATTR_CHECK(info, DIRTYRING_A_VM_ID))
		return -EINVAL;
	vm = dr_vm_get_by_id(nla_get_u32(info->attrs[DIRTYRING_A_VM_ID]));
	if (!vm) {
		NL_SET_ERR_MSG_ATTR(info->extack, info->attrs[DIRTYRING_A_VM_ID],
				    "no VM with this id");
		return -ENOENT;
	}
	msg = nlmsg_new(NLMSG_DEFAULT_SIZE, GFP_KERNEL);
	ret = msg ? dr_fill_vm(msg, vm, info->snd_portid, info->snd_seq, 0) :
		    -ENOMEM;
	dr_vm_put(vm);
	if (ret) {
		nlmsg_free(msg);
		return ret;
	}
	return genlmsg_reply(msg, info);
}

/* cb->args[0]: the next VM id to dump. */
static int dr_genl_vm_get_dumpit(struct sk_buff *skb,
				 struct netlink_callback *cb)
{
	u32 id = cb->args[0] ?: 1;
	struct dr_vm *vm;
	int ret = 0;

	while ((vm = dr_vm_get_next(&id))) {
		ret = dr_fill_vm(skb, vm, NETLINK_CB(cb->skb).portid,
				 cb->nlh->nlmsg_seq, NLM_F_MULTI);
		dr_vm_put(vm);
		if (ret)
			break;
		id++;
	}
	cb->args[0] = id;
	/* A VM that fits in no message at all would loop forever. */
	return ret && !skb->len ? ret : skb->len;
}

/* cb->args[0]: the VM id, cb->args[1]: the next vCPU id in it. */
static int dr_genl_vcpu_get_dumpit(struct sk_buff *skb,
				   struct netlink_callback *cb)
{
	const struct genl_dumpit_info *info = genl_dumpit_info(cb);
	struct nlattr *only = info->attrs[DIRTYRING_A_VM_ID];
	u32 id = cb->args[0] ?: (only ? nla_get_u32(only) : 1);
	unsigned int i = cb->args[1];
	struct dr_vm *vm;
	int ret = 0;

	while ((vm = dr_vm_get_next(&id))) {
		if (only && id != nla_get_u32(only)) {
			dr_vm_put(vm);
			break;
		}
		for (; i < DIRTYRING_MAX_VCPUS; i++) {
			struct dr_vcpu *vcpu = dr_vm_vcpu(vm, i);

			if (!vcpu || !READ_ONCE(vcpu->open))
				continue;
			ret = dr_fill_vcpu(skb, vcpu, NETLINK_CB(cb->skb).portid,
					   cb->nlh->nlmsg_seq, NLM_F_MULTI);
			if (ret)
				break;
		}
		dr_vm_put(vm);
		if (ret)
			break;
		id++;
		i = 0;
	}
	cb->args[0] = id;
	cb->args[1] = i;
	return ret && !skb->len ? ret : skb->len;
}

static const struct genl_small_ops dr_genl_ops[] = {
	{
		.cmd = DIRTYRING_CMD_VM_GET,
		.flags = GENL_ADMIN_PERM,
		.doit = dr_genl_vm_get_doit,
		.dumpit = dr_genl_vm_get_dumpit,
	},
	{
		.cmd = DIRTYRING_CMD_VCPU_GET,
		.flags = GENL_ADMIN_PERM,
		.dumpit = dr_genl_vcpu_get_dumpit,
	},
};

static struct genl_family dr_genl_family __ro_after_init = {
	.name = DIRTYRING_GENL_NAME,
	.version = DIRTYRING_GENL_VERSION,
	.maxattr = DIRTYRING_A_MAX,
	.policy = dr_genl_policy,
	.module = THIS_MODULE,
	.parallel_ops = true,
	.small_ops = dr_genl_ops,
	.n_small_ops = ARRAY_SIZE(dr_genl_ops),
	.mcgrps = dr_genl_mcgrps,
	.n_mcgrps = ARRAY_SIZE(dr_genl_mcgrps),
};

/* A notification for @vm, or NULL when nobody listens (or no memory). */
static struct sk_buff *dr_event_new(struct dr_vm *vm, u8 cmd, void **hdr)
{
	struct sk_buff *msg;

	if (!genl_has_listeners(&dr_genl_family, &init_net, DR_MCGRP_EVENTS))
		return NULL;
	msg = genlmsg_new(NLMSG_DEFAULT_SIZE, GFP_KERNEL);
	if (!msg)
		return NULL;
	*hdr = genlmsg_put(msg, 0, 0, &dr_genl_family, 0, cmd);
	if (!*hdr || nla_put_u32(msg, DIRTYRING_A_VM_ID, vm->id)) {
		nlmsg_free(msg);
		return NULL;
	}
	return msg;
}

static void dr_event_send(struct sk_buff *msg, void *hdr, bool ok)
{
	if (!ok) {
		nlmsg_free(msg);
		return;
	}
	genlmsg_end(msg, hdr);
	genlmsg_multicast(&dr_genl_family, msg, 0, DR_MCGRP_EVENTS,
			  GFP_KERNEL);
}

/* VM created or destroyed.  Process context, no lock held. */
void dr_netlink_vm_event(struct dr_vm *vm, u8 cmd)
{
	struct sk_buff *msg;
	void *hdr;

	msg = dr_event_new(vm, cmd, &hdr);
	if (!msg)
		return;
	dr_event_send(msg, hdr, cmd != DIRTYRING_CMD_VM_CREATED_NTF ||
		      (!nla_put_u32(msg, DIRTYRING_A_VM_OWNER_PID,
				    pid_vnr(vm->owner)) &&
		       !nla_put_string(msg, DIRTYRING_A_VM_OWNER_COMM,
				       vm->owner_comm)));
}

static bool dr_put_ev_vcpu(struct sk_buff *msg, struct dr_vm *vm,
			   struct dr_ring *ring)
{
	return ring == &vm->vm_ring ||
	       !nla_put_u32(msg, DIRTYRING_A_EV_VCPU,
			    container_of(ring, struct dr_vcpu, ring)->id);
}

/*
 * A ring-full wait begins (WAIT_BEGIN_NTF) or ended after @ns
 * (WAIT_END_NTF).  Task work of the waiting thread, no lock held.
 */
void dr_netlink_wait_event(struct dr_vm *vm, struct dr_ring *ring, u8 cmd,
			   u64 ns)
{
	struct sk_buff *msg;
	void *hdr;

	msg = dr_event_new(vm, cmd, &hdr);
	if (!msg)
		return;
	dr_event_send(msg, hdr, dr_put_ev_vcpu(msg, vm, ring) &&
		      (cmd != DIRTYRING_CMD_WAIT_END_NTF ||
		       !nla_put_u64_64bit(msg, DIRTYRING_A_EV_NS, ns,
					  DIRTYRING_A_PAD)));
}

/* One coalesced event: @count occurrences on @ring since the last one. */
static void dr_count_event(struct dr_vm *vm, struct dr_ring *ring, u8 cmd,
			   u64 now, u64 *seen)
{
	/* A reopened vCPU ring counts from 0 again. */
	u64 count = now - (now < *seen ? 0 : *seen);
	struct sk_buff *msg;
	void *hdr;

	*seen = now;
	if (!count)
		return;
	msg = dr_event_new(vm, cmd, &hdr);
	if (!msg)
		return;
	dr_event_send(msg, hdr, dr_put_ev_vcpu(msg, vm, ring) &&
		      !nla_put_u64_64bit(msg, DIRTYRING_A_EV_COUNT, count,
					 DIRTYRING_A_PAD));
}

static void dr_ring_count_events(struct dr_vm *vm, struct dr_ring *ring)
{
	struct dirtyring_ring_status st = { 0 };

	dr_ring_status(ring, &st);
	dr_count_event(vm, ring, DIRTYRING_CMD_SOFT_FULL_NTF,
		       st.soft_full_events, &ring->ev_soft_full);
	dr_count_event(vm, ring, DIRTYRING_CMD_OVERFLOW_NTF, st.overflows,
		       &ring->ev_overflows);
}

/*
 * vm->ev_work: the soft-limit crossings and overflows of each ring since
 * its last run, one event each.  It runs whether or not anyone listens, so
 * a count never stands for what happened before a listener joined.  It
 * holds no VM reference: dr_vm_free() flushes it first.
 */
void dr_netlink_ev_work(struct work_struct *work)
{
	struct dr_vm *vm = container_of(to_delayed_work(work), struct dr_vm,
					ev_work);
	int i;

	WRITE_ONCE(vm->ev_sent, jiffies);
	for (i = 0; i < DIRTYRING_MAX_VCPUS; i++) {
		struct dr_vcpu *vcpu = dr_vm_vcpu(vm, i);

		if (vcpu)
			dr_ring_count_events(vm, &vcpu->ring);
	}
	dr_ring_count_events(vm, &vm->vm_ring);
}

/*
 * A ring of @vm is at its soft limit, or refused a page: schedules
 * ev_work, at most once per DIRTYRING_GENL_EVENT_MS.  Any context that
 * holds a VM reference; sleeps not, and costs a test of the pending bit
 * while the work is queued.
 */
void dr_netlink_kick(struct dr_vm *vm)
{
	unsigned long now = jiffies, next;

	if (delayed_work_pending(&vm->ev_work))
		return;
	next = READ_ONCE(vm->ev_sent) + msecs_to_jiffies(DIRTYRING_GENL_EVENT_MS);
	queue_delayed_work(system_wq, &vm->ev_work,
			   time_after(next, now) ? next - now : 0);
}

/* What @ring saw since the last reset event.  Under vm->mmu_lock. */
static void dr_ring_since_report(struct dr_ring *ring, u64 *soft_full,
				 u64 *overflows)
{
	struct dirtyring_ring_status st = { 0 };

	dr_ring_status(ring, &st);
	*soft_full += st.soft_full_events - ring->reported_soft_full;
	*overflows += st.overflows - ring->reported_overflows;
	ring->reported_soft_full = st.soft_full_events;
	ring->reported_overflows = st.overflows;
}

/*
 * What the rings saw since the last complete reset, taken at each one.
 * Called with vm->mmu_lock held, which keeps the reported counters
 * consistent; allocates nothing, so the lock is never held across reclaim.
 */
void dr_netlink_reset_collect(struct dr_vm *vm, struct dr_reset_report *rep)
{
	int i;

	lockdep_assert_held(&vm->mmu_lock);
	memset(rep, 0, sizeof(*rep));
	/*
	 * Counted whether or not anyone listens, so a report never stands
	 * for what happened before its listener joined.
	 */
	rep->wanted = genl_has_listeners(&dr_genl_family, &init_net,
					 DR_MCGRP_EVENTS);
	for (i = 0; i < DIRTYRING_MAX_VCPUS; i++) {
		struct dr_vcpu *vcpu = dr_vm_vcpu(vm, i);

		if (vcpu)
			dr_ring_since_report(&vcpu->ring, &rep->soft_full,
					     &rep->overflows);
	}
	dr_ring_since_report(&vm->vm_ring, &rep->soft_full, &rep->overflows);
}

/* A reset completed in @ns.  Process context, no lock held. */
void dr_netlink_reset_event(struct dr_vm *vm,
			    const struct dirtyring_reset *reset, u64 ns,
			    const struct dr_reset_report *rep)
{
	struct sk_buff *msg;
	void *hdr;

	if (!rep->wanted)
		return;
	msg = dr_event_new(vm, DIRTYRING_CMD_RESET_NTF, &hdr);
	if (!msg)
		return;
	dr_event_send(msg, hdr,
		      !nla_put_u64_64bit(msg, DIRTYRING_A_EV_ENTRIES,
					 reset->entries, DIRTYRING_A_PAD) &&
		      !nla_put_u64_64bit(msg, DIRTYRING_A_EV_RELOGGED,
					 reset->relogged, DIRTYRING_A_PAD) &&
		      !nla_put_u64_64bit(msg, DIRTYRING_A_EV_NS, ns,
					 DIRTYRING_A_PAD) &&
		      !nla_put_u64_64bit(msg, DIRTYRING_A_EV_SOFT_FULL,
					 rep->soft_full, DIRTYRING_A_PAD) &&
		      !nla_put_u64_64bit(msg, DIRTYRING_A_EV_OVERFLOWS,
					 rep->overflows, DIRTYRING_A_PAD));
}

/* The VM fd's /proc/PID/fdinfo: the netlink id, owner and counters. */
void dr_vm_show_fdinfo(struct seq_file *m, struct file *file)
{
	struct dr_vm *vm = file->private_data;
	struct dirtyring_ring_status st = { 0 };
	unsigned int vcpus = 0, slots = 0;
	int i;

	for (i = 0; i < DIRTYRING_MAX_SLOTS; i++)
		slots += !!dr_vm_slot(vm, i);
	for (i = 0; i < DIRTYRING_MAX_VCPUS; i++) {
		struct dr_vcpu *vcpu = dr_vm_vcpu(vm, i);

		vcpus += vcpu && READ_ONCE(vcpu->open);
	}
	seq_printf(m, "dirtyring-vm-id:\t%u\n", vm->id);
	seq_printf(m, "dirtyring-owner:\t%d %s\n", pid_vnr(vm->owner),
		   vm->owner_comm);
	seq_printf(m, "dirtyring-slots:\t%u\n", slots);
	seq_printf(m, "dirtyring-vcpus:\t%u\n", vcpus);
	/* Pairs with the release in ENABLE_RINGS. */
	if (!smp_load_acquire(&vm->rings_enabled))
		return;
	dr_ring_status(&vm->vm_ring, &st);
	seq_printf(m, "dirtyring-vm-ring:\t%u/%u used, %llu pushed, %llu overflows, %llu waits\n",
		   st.used, st.entries, st.pushed, st.overflows, st.waits);
}

int __init dr_netlink_init(void)
{
	return genl_register_family(&dr_genl_family);
}

void dr_netlink_exit(void)
{
	genl_unregister_family(&dr_genl_family);
}
