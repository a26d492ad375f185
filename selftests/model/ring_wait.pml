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
 * Variants that must fail (make check runs them and expects an error):
 *   -DWAIT_UNDER_LOCK   the writer waits while still holding the page lock
 *   -DCHECK_THEN_WAIT   the writer checks, then registers (lost wake-up)
 *   -DZAP_BEFORE_CLEAR  reset zaps the PTE before clearing the logged bit
 *                       (a write in between is never logged)
 */
#define WRITERS 2
#define PAGES 2
#define WRITES 3	/* per writer */
#define RING 3		/* entries */
#define SOFT 1		/* soft limit: RING - reserve */

bit page_lock[PAGES];
bit logged[PAGES];
bit writable[PAGES];	/* the writer's PTE */
bit reprotecting[PAGES];	/* reset: logged bit cleared, PTE not yet zapped */
byte used;		/* ring entries not reset yet */
byte overflow;		/* pages parked because the ring was full */
bit mmu_lock;
bit registered[WRITERS];
bit woken[WRITERS];
byte done;

inline lock(l) { atomic { l == 0 -> l = 1 } }
inline unlock(l) { l = 0 }

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
				if
				:: used < RING -> used++
				:: else -> overflow++
				fi;
				must_wait = (used >= SOFT)
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
	byte page, w;

	do
	:: done == WRITERS && used == 0 && overflow == 0 -> break
	:: used > 0 || overflow > 0 ->
		lock(mmu_lock);
		for (page : 0 .. PAGES - 1) {
			if
			:: logged[page] ->
#ifdef ZAP_BEFORE_CLEAR
				writable[page] = 0;
#endif
				lock(page_lock[page]);
				reprotecting[page] = 1;
				logged[page] = 0;
				unlock(page_lock[page]);
#ifdef ZAP_BEFORE_CLEAR
				reprotecting[page] = 0
#else
				writable[page] = 0;	/* zap after clearing */
				reprotecting[page] = 0
#endif
			:: else -> skip
			fi
		}
		used = 0;
		overflow = 0;
		for (w : 0 .. WRITERS - 1) {
			if
			:: registered[w] -> registered[w] = 0; woken[w] = 1
			:: else -> skip
			fi
		}
		unlock(mmu_lock)
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
