/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Model of dirtyring's ring-full wait / reset / wake-up protocol (kmod/
 * mem.c, ring.c, wait.c), checked by spin for deadlocks (invalid end
 * states) and assertion violations.
 *
 * Writers fault on pages: under the page lock (the lock this module's
 * reset also takes: its MMU lock for our purpose) they log the page once
 * per cycle into a shared ring, then, with every lock dropped, wait while
 * the ring is at or past its soft limit.  The harvester resets: under
 * mmu_lock it takes each logged page's lock, clears its logged bit,
 * re-protects it, frees the ring and wakes the waiters.
 *
 * The wait is the kernel's prepare-to-wait pattern: register on the wait
 * queue, re-check the condition, sleep until woken.  A wake-up that finds
 * nobody registered is lost; registering before checking is what makes
 * that harmless.
 *
 * The ring itself is KVM's protocol (kmod/ring.c): the producer, under the
 * ring lock, fills an entry, publishes its flags as DIRTY, then advances
 * dirty_index; the harvester (user space, no lock) marks each DIRTY entry
 * from its fetch index RESET, then calls the reset; the reset snapshots
 * dirty_index under the ring lock and walks the marked entries from
 * reset_index up to the snapshot, stopping at the first unmarked one,
 * re-arming each entry's page.  When the reset returns, the harvester
 * copies the pages it marked, so every entry it marked must be reset by
 * then: otherwise the page stays logged and writable, its later writes are
 * never logged, and the copy is stale.  Pages parked because the ring was
 * full move into the ring at a reset, for the next harvest.
 *
 * Variants that must fail (make check runs them and expects an error):
 *   -DWAIT_UNDER_LOCK   the writer waits while still holding the page lock
 *   -DCHECK_THEN_WAIT   the writer checks, then registers (lost wake-up)
 *   -DZAP_BEFORE_CLEAR  reset zaps the PTE before clearing the logged bit
 *                       (a write in between is never logged)
 *   -DLOCKLESS_DIRTY_INDEX  the reset reads dirty_index without the ring
 *                       lock: it can miss an entry the producer published
 *                       (and the harvester marked) before advancing the
 *                       index, and return with that entry still marked
 */
#define WRITERS 2
#define PAGES 2
#define WRITES 3	/* per writer */
#define RING 3		/* entries */
#define SOFT 1		/* soft limit: RING - reserve */

#define DIRTY 1	/* entry flags, as KVM's */
#define RESET 2

bit page_lock[PAGES];
bit logged[PAGES];
bit writable[PAGES];	/* the writer's PTE */
bit reprotecting[PAGES];	/* reset: logged bit cleared, PTE not yet zapped */
bit parked[PAGES];	/* logged, but the ring was full */
bit mmu_lock;
bit registered[WRITERS];
bit woken[WRITERS];
byte done;

/* The ring: entries, and the producer's and the reset's indexes. */
bit ring_lock;
byte flags[RING];
byte gfn[RING];		/* the entry's page */
byte dirty_index;	/* next entry the producer fills */
byte reset_index;	/* next entry the reset re-arms */

#define used	(dirty_index - reset_index)	/* entries not reset yet */
#define any_parked	(parked[0] || parked[1])	/* PAGES == 2 */

inline lock(l) { atomic { l == 0 -> l = 1 } }
inline unlock(l) { l = 0 }

/*
 * dr_ring_push, called with ring_lock held: fill and publish the entry
 * (store-release of DIRTY; one step, nobody reads the entry's page before
 * its flags), then advance dirty_index: another step, the window in which
 * the harvester already sees the entry and the index does not show it yet.
 */
inline push(p)
{
	atomic {
		gfn[dirty_index % RING] = p;
		flags[dirty_index % RING] = DIRTY
	};
	dirty_index++
}

inline wait_for_room(me)
{
#ifdef CHECK_THEN_WAIT
	do
	:: used < SOFT -> break
	:: else ->
		registered[me] = 1;
		woken[me] == 1;
		woken[me] = 0
	od
#else
	do
	:: registered[me] = 1;
		if
		:: used < SOFT -> registered[me] = 0; break
		:: else -> woken[me] == 1; woken[me] = 0
		fi
	od
#endif
}

proctype writer(byte me)
{
	byte n, page;
	bit must_wait;

	for (n : 1 .. WRITES) {
		select (page : 0 .. PAGES - 1);
		if
		:: writable[page] -> skip	/* no fault: already logged */
		:: else ->
			lock(page_lock[page]);
			must_wait = 0;
			if
			:: !logged[page] ->
				logged[page] = 1;
				lock(ring_lock);
				if
				:: used < RING -> push(page)
				:: else -> parked[page] = 1
				fi;
				d_step { must_wait = (used >= SOFT); unlock(ring_lock) }
			:: else -> skip
			fi;
#ifdef WAIT_UNDER_LOCK
			if
			:: must_wait -> wait_for_room(me)
			:: else -> skip
			fi;
#endif
			writable[page] = 1;
			unlock(page_lock[page]);
#ifndef WAIT_UNDER_LOCK
			if
			:: must_wait -> wait_for_room(me)
			:: else -> skip
			fi
#endif
		fi;
		/*
		 * The write: through a writable PTE, the page is logged in
		 * this cycle, or a reset is between clearing its bit and
		 * zapping it (the write then precedes the harvester's copy).
		 */
		assert(logged[page] || !writable[page] || reprotecting[page])
	}
	done++
}

proctype harvester()
{
	byte page, w, i, snap, fetch;

	do
	:: done == WRITERS && used == 0 && !any_parked -> break
	:: used > 0 || any_parked ->
		/* Harvest, in user space: mark every published entry RESET. */
		do
		:: atomic {
			flags[fetch % RING] == DIRTY ->	/* load-acquire */
			flags[fetch % RING] = DIRTY | RESET;	/* store-release */
			fetch++
		   }
		:: else -> break
		od;
		/* The reset. */
		lock(mmu_lock);
#ifdef LOCKLESS_DIRTY_INDEX
		snap = dirty_index;
#else
		/* Under the ring lock: a producer that published has advanced too. */
		atomic { ring_lock == 0 -> snap = dirty_index };
#endif
		i = reset_index;
		do
		:: atomic { i != snap && (flags[i % RING] & RESET) -> page = gfn[i % RING] };
#ifdef ZAP_BEFORE_CLEAR
			writable[page] = 0;
#endif
			lock(page_lock[page]);
			reprotecting[page] = 1;
			logged[page] = 0;
			unlock(page_lock[page]);
#ifdef ZAP_BEFORE_CLEAR
			reprotecting[page] = 0;
#else
			writable[page] = 0;	/* zap after clearing */
			reprotecting[page] = 0;
#endif
			d_step { flags[i % RING] = 0; i++ }
		:: else -> break
		od;
		/* store-release: the entries are free; then forget the walk */
		atomic { reset_index = i; i = 0; snap = 0; page = 0 };
		/* Parked pages move into the ring while it is below its soft limit. */
		if
		:: any_parked ->
			for (page : 0 .. PAGES - 1) {
				lock(ring_lock);
				if
				:: parked[page] && used < SOFT -> push(page); parked[page] = 0
				:: else -> skip
				fi;
				unlock(ring_lock)
			}
		:: else -> skip
		fi;
		for (w : 0 .. WRITERS - 1) {
			if
			:: registered[w] -> registered[w] = 0; woken[w] = 1
			:: else -> skip
			fi
		}
		unlock(mmu_lock);
		/*
		 * The reset returned: the harvester copies the pages it marked
		 * now, so every entry it marked must be reset (its page re-armed).
		 */
		assert(reset_index == fetch)
	od
}

init
{
	atomic {
		run writer(0);
		run writer(1);
		run harvester()
	}
}
