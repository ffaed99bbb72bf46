/*
 * map.c - backing ranges of spans, claiming and pinning them, and dropping
 * their claims: the engine's path. A map checks its ranges, claims what is
 * backed and gathers pages for the rest with the allocator's lock held;
 * it makes, scrubs and maps those pages with the lock dropped, the span
 * pages they go to marked pending (KV_PEND), and installs and claims them
 * with it held again. Another thread sees no page half-done: a map or pin
 * that covers a pending page waits for it, as for any page in flight
 * (span.c, pool.c), and a span it covers is not released until it is done.
 * A map short of pages that a released span still holds unmaps that span
 * itself rather than wait for the worker to get round to it.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc_int.h"
#include "log.h"

/* ---- map --------------------------------------------------------------------------- */

/* A range resolved to its span and the pages it covers. */
struct place {
	struct kv_span *sp;
	uint32_t p0, p1;
};

/* Resolve every range. Returns 0, KVSHIM_EINVAL or KVSHIM_ERANGE (outside
 * one span, or not in the span its id names). */
static int resolve(const kv_alloc_t *a, const struct kv_run *runs, size_t n,
		   struct place *pl)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (runs[i].len == 0)
			return KVSHIM_EINVAL;
		if (runs[i].addr + runs[i].len < runs[i].addr)
			return KVSHIM_ERANGE;
		pl[i].sp = kv_span_find_range(a, runs[i].addr, runs[i].len, &pl[i].p0,
					      &pl[i].p1);
		if (!pl[i].sp || (runs[i].span && runs[i].span != pl[i].sp->id))
			return KVSHIM_ERANGE;
	}
	return 0;
}

static int any_busy_many(const kv_alloc_t *a, const struct place *pl, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (kv_span_any_busy(a, pl[i].sp, pl[i].p0, pl[i].p1))
			return 1;
	return 0;
}

/*
 * Whether every page of the ranges can take the claims this call adds (at
 * most one a range). Returns 0 or KVSHIM_ELIMIT.
 */
static int claims_fit(const kv_alloc_t *a, const struct place *pl, size_t n)
{
	uint64_t most = KV_CLAIMS_MAX > n ? KV_CLAIMS_MAX - n : 0;
	uint32_t p;
	size_t i;

	for (i = 0; i < n; i++) {
		for (p = pl[i].p0; p <= pl[i].p1; p++) {
			if (pl[i].sp->claims[p] <= most)
				continue;
			kv_warn("page 0x%llx holds %u claims: %zu more would pass %u",
				(unsigned long long)kv_span_va(a, pl[i].sp, p),
				pl[i].sp->claims[p], n, KV_CLAIMS_MAX);
			return KVSHIM_ELIMIT;
		}
	}
	return 0;
}

/* Page p of sp becomes one this call backs (KV_PEND), or stops being one. */
static void pend(struct kv_span *sp, uint32_t p)
{
	sp->slot[p] = KV_PEND;
	sp->pending++;
}

static void unpend(struct kv_span *sp, uint32_t p, uint32_t slot)
{
	sp->slot[p] = slot;
	sp->pending--;
}

/* Lock held: give page p of sp, mapped, back the access its span maps it
 * without (uninstall), before anything writes it. Returns 0 or the
 * driver's refusal. */
static int regrant(kv_alloc_t *a, struct kv_span *sp, uint32_t p)
{
	struct kv_phys *ph = &a->phys[sp->slot[p]];
	int rc;

	if (!ph->noaccess)
		return 0;
	rc = kv_prim_access(&a->prim, kv_span_va(a, sp, p), a->page);
	if (!rc)
		ph->noaccess = 0;
	return rc;
}

/*
 * Claim every page of the ranges that is mapped already, so that none of
 * them can be reclaimed to back the others, and mark the unmapped ones
 * KV_PEND, each once however many ranges cover it; *need: how many. A page
 * its span maps without access (uninstall) is granted it before it counts
 * as backed. Returns 0, or the driver's refusal of such a grant, after the
 * whole walk (the caller undoes it: unclaim_present).
 */
static int claim_present(kv_alloc_t *a, const struct place *pl, size_t n,
			 uint32_t *need)
{
	uint32_t p;
	size_t i;
	int rc = 0;

	*need = 0;
	for (i = 0; i < n; i++) {
		for (p = pl[i].p0; p <= pl[i].p1; p++) {
			uint32_t s = pl[i].sp->slot[p];

			if (s == KV_NIL) {
				pend(pl[i].sp, p);
				(*need)++;
				continue;
			}
			if (s == KV_PEND)
				continue;
			kv_span_claim(a, pl[i].sp, p);
			if (!rc)
				rc = regrant(a, pl[i].sp, p);
		}
	}
	return rc;
}

/* Undo claim_present: pending pages unbacked again, claims dropped. */
static void unclaim_present(kv_alloc_t *a, const struct place *pl, size_t n)
{
	uint64_t now = kv_prim_now_ns();
	uint32_t p;
	size_t i;

	for (i = 0; i < n; i++) {
		for (p = pl[i].p0; p <= pl[i].p1; p++) {
			uint32_t s = pl[i].sp->slot[p];

			if (s == KV_PEND) {
				unpend(pl[i].sp, p, KV_NIL);
			} else if (s != KV_NIL) {
				pl[i].sp->claims[p]--;
				kv_span_idle(a, pl[i].sp, p, now);
			}
		}
	}
}

/* How many of the ranges cover page p of sp. */
static uint32_t covering(const struct place *pl, size_t n,
			 const struct kv_span *sp, uint32_t p)
{
	uint32_t c = 0;
	size_t i;

	for (i = 0; i < n; i++)
		c += pl[i].sp == sp && p >= pl[i].p0 && p <= pl[i].p1;
	return c;
}

/* A map with the lock dropped: its ranges, on a->inflight meanwhile. */
struct kv_inflight {
	const struct place *pl;
	size_t n;
	struct kv_inflight *next;
};

/* The claims on page p of sp that maps with the lock dropped hold: one a
 * range covering it (claim_present; a pending page holds none at all). */
static uint32_t held_by_maps(const kv_alloc_t *a, const struct kv_span *sp, uint32_t p)
{
	const struct kv_inflight *m;
	uint32_t c = 0;

	for (m = a->inflight; m; m = m->next)
		c += covering(m->pl, m->n, sp, p);
	return c;
}

int kv_span_in_flight(const kv_alloc_t *a, const struct kv_span *sp)
{
	const struct kv_inflight *m;
	size_t i;

	for (m = a->inflight; m; m = m->next)
		for (i = 0; i < m->n; i++)
			if (m->pl[i].sp == sp)
				return 1;
	return 0;
}

/* A page a map backs: page p of span sp. */
struct where {
	struct kv_span *sp;
	uint32_t p;
};

static int cmp_where(const void *x, const void *y)
{
	const struct where *a = x, *b = y;

	if (a->sp != b->sp)
		return a->sp->base < b->sp->base ? -1 : 1;
	return (a->p > b->p) - (a->p < b->p);
}

/*
 * The pages of the ranges this call backs (KV_PEND), each once however
 * many ranges cover it, in order of span and page, into w. Lock held: the
 * first visit marks a page (KV_MARK), and the marks go before it returns.
 */
static void pending_pages(const struct place *pl, size_t n, struct where *w)
{
	uint32_t p, k = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		for (p = pl[i].p0; p <= pl[i].p1; p++) {
			if (pl[i].sp->slot[p] != KV_PEND)
				continue;
			pl[i].sp->slot[p] = KV_MARK;
			w[k++] = (struct where){ pl[i].sp, p };
		}
	}
	for (i = 0; i < k; i++)
		w[i].sp->slot[w[i].p] = KV_PEND;
	qsort(w, k, sizeof(*w), cmp_where);
}

/*
 * Driver work alone, lock held or not: map slots[k]'s handle at page w[k]
 * for k in [0, need), stopping at the first failure (*mapped says how
 * many), then grant access with one call per run of consecutive pages of
 * one span. Returns 0 or the driver's error.
 */
static int map_pages(kv_alloc_t *a, const struct where *w, const uint32_t *slots,
		     uint32_t need, uint32_t *mapped)
{
	uint64_t t0 = kv_prim_now_ns();
	uint32_t k, run;
	int rc = 0;

	for (k = 0; k < need && !rc; k++)
		rc = kv_prim_map(&a->prim, kv_span_va(a, w[k].sp, w[k].p), a->phys[slots[k]].h);
	*mapped = rc ? k - 1 : k;
	for (k = 0; k < need && !rc; k += run) {
		for (run = 1; k + run < need; run++)
			if (w[k + run].sp != w[k].sp || w[k + run].p != w[k].p + run)
				break;
		rc = kv_prim_access(&a->prim, kv_span_va(a, w[k].sp, w[k].p),
				    (size_t)run * a->page);
	}
	if (!rc)
		KV_COUNT(a, map_ns, kv_prim_now_ns() - t0);
	return rc;
}

/* Lock held: slots[0..k) become pages w[0..k), linked, still TAKEN, and
 * marked fresh (for claim_fresh, or uninstall). */
static void link_pages(kv_alloc_t *a, const struct where *w, const uint32_t *slots,
		       uint32_t k)
{
	uint32_t j;

	for (j = 0; j < k; j++) {
		struct kv_phys *ph = &a->phys[slots[j]];

		unpend(w[j].sp, w[j].p, slots[j]);
		ph->span = w[j].sp;
		ph->vpage = w[j].p;
		ph->fresh = 1;
	}
}

/*
 * After a failed map, lock held: take the fresh pages back out of the
 * spans (KV_PEND again) and return their slots to the pool. A page the
 * driver will not unmap stays where it is, claimed by the ranges that
 * cover it (unclaim_present then caches it for a later trim); one whose
 * access it refuses again too is marked noaccess, and the next map over it
 * grants that first (claim_present).
 */
static void uninstall(kv_alloc_t *a, const struct place *pl, size_t n,
		      uint32_t *slots, uint32_t need)
{
	uint32_t j, good;

	for (j = 0; j < need; j++) {
		struct kv_phys *ph = &a->phys[slots[j]];
		struct kv_span *sp = ph->span;
		uint32_t p = ph->vpage;

		if (!ph->fresh)
			continue;
		ph->fresh = 0;
		if (kv_prim_unmap(&a->prim, kv_span_va(a, sp, p), a->page) == 0) {
			pend(sp, p);
			ph->span = NULL;
			continue;
		}
		if (kv_prim_access(&a->prim, kv_span_va(a, sp, p), a->page)) {
			kv_error("page at 0x%llx left mapped without access: granted before it is claimed",
				 (unsigned long long)kv_span_va(a, sp, p));
			ph->noaccess = 1;
		}
		ph->failed = 1;
		kv_slot_install(a, slots[j], sp, p);
		sp->claims[p] = covering(pl, n, sp, p);
	}
	good = kv_slots_failed_last(a, slots, need);
	kv_pool_put(a, slots, good, 0);
}

/* Lock held: the pages mapped, slots[0..need) join their spans, MAPPED. */
static void install(kv_alloc_t *a, const struct where *w, const uint32_t *slots,
		    uint32_t need)
{
	uint32_t k;

	link_pages(a, w, slots, need);
	for (k = 0; k < need; k++)
		kv_slot_install(a, slots[k], w[k].sp, w[k].p);
	KV_COUNT(a, map_calls, 1);
	KV_COUNT(a, pages_mapped, need);
}

/* Each range claims the pages backed for it by this call. */
static void claim_fresh(kv_alloc_t *a, const struct place *pl, size_t n,
			const uint32_t *slots, uint32_t need)
{
	uint32_t p, k;
	size_t i;

	for (i = 0; i < n; i++) {
		for (p = pl[i].p0; p <= pl[i].p1; p++) {
			uint32_t s = pl[i].sp->slot[p];

			/* (a page it claimed is backed still: its claims are
			 * its own until it is done, see unclaim) */
			if (s < KV_MARK && a->phys[s].fresh)
				pl[i].sp->claims[p]++;
		}
	}
	for (k = 0; k < need; k++)
		a->phys[slots[k]].fresh = 0;
}

/* Publish this process's idle pages (cached, pooled) at once, lock held:
 * the others' rule must not read pages it uses now as idle (asking it to
 * trim what it has not, rather than for pages in use), nor pages it no
 * longer uses as in use. */
static void note_idle(kv_alloc_t *a)
{
	if (a->share)
		kv_share_note(a->share, (uint64_t)a->n[KV_P_CACHED] * a->page,
			      (uint64_t)kv_pooled(a) * a->page);
}

/*
 * Back the pages of all ranges, lock held on entry and exit: claims on
 * what is mapped first, then pages for the rest in one gathering. The new
 * pages are made, scrubbed and mapped with the lock dropped, the span
 * pages they go to KV_PEND meanwhile, so that the process's other calls
 * (an engine's maps of other blocks, its frees, headroom) do not wait for
 * that driver work (on an H200 a row of 48 new pages, a large engine's
 * row of blocks, took 2.7 to 3.7 ms: docs/BENCHMARKS.md, session 36);
 * after a creation the driver refused for memory, the rest with it held,
 * as the take makes it up from cached pages. *said: the shared budget's
 * answers to its take. Returns KV_SUPPLY_DONE; WAIT,
 * ASK or RETRY (pages came within reach while the driver refused its own
 * for memory; only where may_retry) with nothing changed; or FAILED with
 * *err set and nothing changed.
 */
static enum kv_supply map_locked(kv_alloc_t *a, const struct place *pl,
				 size_t n, int defer_fence, int may_retry,
				 struct kv_said *said, int *err)
{
	uint32_t need, stack[64], *slots = stack, before = a->n[KV_P_MAPPED], mapped = 0;
	struct where wstack[64], *w = wstack;
	struct kv_inflight me = { pl, n, NULL }, **pp;
	struct kv_take t;
	enum kv_supply out;
	int ready, from_idle;

	*said = (struct kv_said){ 0 };
	*err = claim_present(a, pl, n, &need);
	if (*err) {
		unclaim_present(a, pl, n);
		return KV_SUPPLY_FAILED;
	}
	/* past its fair share while others wait, what it uses may not grow,
	 * from its own cache either (fair.h): no waiting, the map fails and
	 * the engine preempts, as when its pool is full */
	if (a->share && (need || a->n[KV_P_MAPPED] > before) &&
	    !kv_share_may_use(a->share, (uint64_t)(a->n[KV_P_MAPPED] +
						   a->n[KV_P_TAKEN] + need) * a->page)) {
		unclaim_present(a, pl, n);
		*err = KVSHIM_ELIMIT;
		return KV_SUPPLY_FAILED;
	}
	/* its cached pages claimed back, or pages from its pool (below),
	 * take no budget, whose take would have published its figures */
	from_idle = a->n[KV_P_MAPPED] > before;
	if (!need) {
		if (from_idle)
			note_idle(a);
		return KV_SUPPLY_DONE;
	}
	if (need > 64 && (!(slots = malloc(need * sizeof(*slots))) ||
			  !(w = malloc(need * sizeof(*w))))) {
		free(slots != stack ? slots : NULL);
		unclaim_present(a, pl, n);
		*err = KVSHIM_ENOMEM;
		return KV_SUPPLY_FAILED;
	}
	/* (the ranges' cached pages it claimed back count in what it waits
	 * for, as its pooled ones do: fair.h) */
	out = kv_pool_take(a, need, a->n[KV_P_MAPPED] - before, slots, defer_fence, &t, err);
	*said = t.said;
	if (out == KV_SUPPLY_DONE) {
		pending_pages(pl, n, w);
		/* every span it claims in stays, pending pages or not
		 * (kv_span_in_flight), and the claims it holds stay its own
		 * (unclaim) */
		me.next = a->inflight;
		a->inflight = &me;
		t.supplied = a->supplied;
		t.may_retry = may_retry;
		pthread_mutex_unlock(&a->lock);
		ready = kv_pool_ready(a, slots, &t);
		if (!ready)
			*err = map_pages(a, w, slots, need, &mapped);
		pthread_mutex_lock(&a->lock);
		for (pp = &a->inflight; *pp != &me; pp = &(*pp)->next)
			;
		*pp = me.next;
		/* whoever waits for these pages looks again */
		pthread_cond_broadcast(&a->done);
		if (ready == KVSHIM_ENOMEM && t.made < t.nmake) {
			out = kv_pool_made_short(a, slots, &t, defer_fence, err);
			if (out == KV_SUPPLY_DONE)
				*err = map_pages(a, w, slots, need, &mapped);
		} else if (ready) {
			kv_pool_unready(a, slots, &t);
			*err = ready;
			out = KV_SUPPLY_FAILED;
		}
	}
	if (out == KV_SUPPLY_DONE && *err) {
		link_pages(a, w, slots, mapped);
		uninstall(a, pl, n, slots, need);
		out = KV_SUPPLY_FAILED;
	} else if (out == KV_SUPPLY_DONE) {
		install(a, w, slots, need);
	}
	if (out == KV_SUPPLY_DONE) {
		claim_fresh(a, pl, n, slots, need);
		if (from_idle || t.n > t.nmake)
			note_idle(a);
	} else {
		unclaim_present(a, pl, n);
		/* a failed map put what it took back in the pool and cache,
		 * which the others' rule must read idle (its take published
		 * them held) */
		if (out == KV_SUPPLY_FAILED)
			note_idle(a);
	}
	if (slots != stack)
		free(slots);
	if (w != wstack)
		free(w);
	return out;
}

/* A released span no thread is unmapping yet, or NULL. */
static int unreaped(const kv_alloc_t *a)
{
	const struct kv_span *sp;

	for (sp = a->dying; sp; sp = sp->next)
		if (!sp->reaping)
			return 1;
	return 0;
}

/* Turn the claim a one-range map just added to each page into a pin. */
static void pin_range(const struct place *pl)
{
	uint32_t p;

	for (p = pl->p0; p <= pl->p1; p++) {
		pl->sp->claims[p]--;
		pl->sp->pinned[p] = 1;
	}
}

/* How map_runs backs its ranges. */
enum {
	MAP_PIN = 1,            /* one range, pinned (kv_alloc_pin) */
	MAP_TRY = 2,            /* no wait for pages others use (kv_alloc_try_map_many) */
};

/*
 * kv_alloc_map_many, or as how says: wait for pages in flight, unmap
 * released spans whose pages it needs, ask other processes for budget for
 * up to share_wait_ms. Returns 0 or an error with nothing changed.
 */
static int map_runs(kv_alloc_t *a, const struct kv_run *runs, size_t n,
		    int how)
{
	struct place one, *pl = &one;
	uint64_t deadline = 0, waited_from = 0;
	enum kv_supply out;
	struct kv_said said;
	int rc, pushed = 0, used = 0, counted = 0, prefenced = 0, retried = 0;

	if (n > 1 && !(pl = malloc(n * sizeof(*pl))))
		return KVSHIM_ENOMEM;
	rc = kv_prim_hold(&a->prim, &pushed);
	if (rc)
		goto out;
	pthread_mutex_lock(&a->lock);
	for (;;) {
		rc = resolve(a, runs, n, pl);
		if (rc)
			break;
		if (any_busy_many(a, pl, n)) {
			pthread_cond_wait(&a->done, &a->lock);
			continue;
		}
		rc = claims_fit(a, pl, n);
		if (rc)
			break;
		out = map_locked(a, pl, n, !prefenced, !retried, &said, &rc);
		if (out == KV_SUPPLY_DONE) {
			if (how & MAP_PIN)
				pin_range(pl);
			break;
		}
		if (out == KV_SUPPLY_FAILED)
			break;
		if (out == KV_SUPPLY_RETRY) {
			retried = 1;
			continue;
		}
		if (out == KV_SUPPLY_FENCE) {
			/* the fence waits for the device's queued work (a
			 * step of the engine's): with the lock dropped, so
			 * that the process's other threads' calls do not wait
			 * for it too; once, then under the lock as before (a
			 * page the engine lets go of meanwhile needs another) */
			prefenced = 1;
			pthread_mutex_unlock(&a->lock);
			kv_cache_prefence(a);
			pthread_mutex_lock(&a->lock);
			continue;
		}
		/* short: what it took is back in its pool and cache, and the
		 * others' rule must read it idle now, not as use besides what
		 * the map waits for (fair.h; a refused take may end in a wait
		 * for pages in flight too) */
		note_idle(a);
		/* the pages would come from processes above their share giving
		 * back pages they use, between their engines' steps: an engine
		 * that can keep its request waiting does, rather than stall
		 * every request it runs for that long (said: the budget's
		 * answers to this call's take).
		 * A map that waits counts as waiting for pages in
		 * use if any refusal of its take was for them: another process
		 * may let go of pages while the take halves its ask, and the
		 * last refusal then reads them idle. A try never waits for
		 * pages in use, so never counts so. */
		if (out == KV_SUPPLY_ASK && said.last == KV_SHARE_WAIT_USED &&
		    (how & MAP_TRY)) {
			rc = KVSHIM_ELIMIT;
			break;
		}
		if (out == KV_SUPPLY_ASK && said.used && !(how & MAP_TRY))
			used = 1;
		/* a take the rule refused published what the map waits for:
		 * it stays while the map waits (to ask again, or for pages in
		 * flight), whatever another thread's map ends. Not for
		 * KVSHIM_ELIMIT (a ceiling or the whole budget: nothing
		 * published), nor for a try refused for pages others use (it
		 * never waits for those) */
		if (a->share && !counted &&
		    (said.last == KV_SHARE_WAIT || said.last == KV_SHARE_NO ||
		     (said.last == KV_SHARE_WAIT_USED && !(how & MAP_TRY)))) {
			kv_share_waiting(a->share);
			counted = 1;
		}
		if (out == KV_SUPPLY_WAIT) {
			/* the pages a released span holds are needed now:
			 * unmap it here rather than wait for the worker; not
			 * while a stream captures (kv_spans_reap does nothing
			 * then, and a retry at once would spin holding the
			 * lock the pages in flight need to come back): wait
			 * for them, then looking again at least every 10 ms (a
			 * capture's end wakes the worker, not this wait) */
			a->waiters++;
			if (!kv_prim_capturing()) {
				if (unreaped(a))
					kv_spans_reap(a);
				else
					pthread_cond_wait(&a->done, &a->lock);
			} else {
				struct timespec ts = kv_prim_deadline(10);

				pthread_cond_timedwait(&a->done, &a->lock, &ts);
			}
			a->waiters--;
			continue;
		}
		/* other processes were asked to trim: give them a moment */
		if (!deadline) {
			waited_from = kv_prim_now_ns();
			deadline = waited_from +
				   (uint64_t)a->o.share_wait_ms * 1000000u;
		}
		if (kv_prim_now_ns() >= deadline) {
			rc = KVSHIM_ELIMIT;
			break;
		}
		pthread_mutex_unlock(&a->lock);
		nanosleep(&(struct timespec){ 0, 2 * 1000 * 1000 }, NULL);
		pthread_mutex_lock(&a->lock);
	}
	if (a->share)
		kv_share_waited(a->share, counted);   /* whatever came of it */
	if (deadline) {
		KV_COUNT(a, share_waits, 1);
		KV_COUNT(a, share_wait_ns, kv_prim_now_ns() - waited_from);
		KV_COUNT(a, share_waits_used, used);
		KV_COUNT(a, share_waits_failed, rc == KVSHIM_ELIMIT);
	}
	if ((uint64_t)a->n[KV_P_CLEAN] * a->page < a->o.pool_low)
		pthread_cond_signal(&a->wake);
	KV_DEBUG_CHECK_LOCKED(a);
	pthread_mutex_unlock(&a->lock);
out:
	kv_prim_unhold(pushed);
	if (pl != &one)
		free(pl);
	return rc;
}

static int map_many(kv_alloc_t *a, const struct kv_run *runs, size_t n, int how)
{
	if (!a || !runs || n == 0)
		return KVSHIM_EINVAL;
	return map_runs(a, runs, n, how);
}

int kv_alloc_map_many(kv_alloc_t *a, const struct kv_run *runs, size_t n)
{
	return map_many(a, runs, n, 0);
}

int kv_alloc_try_map_many(kv_alloc_t *a, const struct kv_run *runs, size_t n)
{
	return map_many(a, runs, n, MAP_TRY);
}

int kv_alloc_map(kv_alloc_t *a, CUdeviceptr addr, size_t len)
{
	struct kv_run r = { addr, len, 0 };

	if (!a || len == 0)
		return KVSHIM_EINVAL;
	return map_runs(a, &r, 1, 0);
}

int kv_alloc_pin(kv_alloc_t *a, CUdeviceptr addr, size_t len)
{
	struct kv_run r = { addr, len, 0 };

	if (!a || len == 0)
		return KVSHIM_EINVAL;
	return map_runs(a, &r, 1, MAP_PIN);
}

int kv_alloc_cost_many(kv_alloc_t *a, const struct kv_run *runs, size_t n,
		       size_t *bytes)
{
	struct place one, *pl = &one;
	uint32_t p, need = 0;
	size_t i;
	int rc;

	if (!a || !runs || !bytes || n == 0)
		return KVSHIM_EINVAL;
	if (n > 1 && !(pl = malloc(n * sizeof(*pl))))
		return KVSHIM_ENOMEM;
	pthread_mutex_lock(&a->lock);
	rc = resolve(a, runs, n, pl);
	/*
	 * New pages, and cached ones of the ranges too: the map would claim
	 * them out of the cache, which kv_alloc_headroom counts as room. Each
	 * page once (KV_MARK marks new ones, fresh the cached ones). Not those
	 * another map is backing (KV_PEND): their pages are taken already.
	 */
	for (i = 0; i < n && !rc; i++) {
		for (p = pl[i].p0; p <= pl[i].p1; p++) {
			uint32_t *s = &pl[i].sp->slot[p];

			if (*s == KV_NIL) {
				*s = KV_MARK;
				need++;
			} else if (*s < KV_MARK && a->phys[*s].state == KV_P_CACHED &&
				   !a->phys[*s].fresh) {
				a->phys[*s].fresh = 1;
				need++;
			}
		}
	}
	for (i = 0; i < n && !rc; i++) {
		for (p = pl[i].p0; p <= pl[i].p1; p++) {
			uint32_t *s = &pl[i].sp->slot[p];

			if (*s == KV_MARK)
				*s = KV_NIL;
			else if (*s < KV_MARK)
				a->phys[*s].fresh = 0;
		}
	}
	pthread_mutex_unlock(&a->lock);
	if (pl != &one)
		free(pl);
	*bytes = (size_t)need * a->page;
	return rc;
}

/* ---- unmap: dropping claims -------------------------------------------------------- */

/* Drop one claim of each range's pages; on a page with none to drop, put
 * back what was dropped and return KVSHIM_ENOTCLAIMED. Lock held. The
 * claims of maps with the lock dropped are theirs: none of them to drop
 * (as when a map held the lock from start to end). */
static int unclaim(kv_alloc_t *a, const struct place *pl, size_t n)
{
	size_t i, j;
	uint32_t p;

	for (i = 0; i < n; i++) {
		for (p = pl[i].p0; p <= pl[i].p1; p++) {
			if (pl[i].sp->claims[p] >
			    (a->inflight ? held_by_maps(a, pl[i].sp, p) : 0)) {
				pl[i].sp->claims[p]--;
				continue;
			}
			/* put back the claims of this range so far, then of the
			 * ranges before it */
			while (p-- > pl[i].p0)
				pl[i].sp->claims[p]++;
			for (j = 0; j < i; j++)
				for (p = pl[j].p0; p <= pl[j].p1; p++)
					pl[j].sp->claims[p]++;
			return KVSHIM_ENOTCLAIMED;
		}
	}
	return 0;
}

/*
 * Drop one claim on every page of the runs, all or none. With dry set,
 * only see that it could be done: every claim is put back (unclaim moves
 * no page, so the counts alone change).
 */
static int unclaim_runs(kv_alloc_t *a, const struct kv_run *runs, size_t n, int dry)
{
	struct place one, *pl = &one;
	uint64_t now;
	uint32_t p;
	size_t i;
	int rc;

	if (!a || !runs || n == 0)
		return KVSHIM_EINVAL;
	if (n > 1 && !(pl = malloc(n * sizeof(*pl))))
		return KVSHIM_ENOMEM;
	pthread_mutex_lock(&a->lock);
	/* read with the lock held: a page's idle time must not be earlier
	 * than its last claim's drop, which comes after every kernel queued
	 * through any of its claims (another thread's claim may go while
	 * this call waits for the lock, and a fence pass meanwhile) */
	now = kv_prim_now_ns();
	rc = resolve(a, runs, n, pl);
	if (!rc)
		rc = unclaim(a, pl, n);
	for (i = 0; i < n && !rc; i++)
		for (p = pl[i].p0; p <= pl[i].p1; p++) {
			if (dry)
				pl[i].sp->claims[p]++;
			else
				kv_span_idle(a, pl[i].sp, p, now);
		}
	if (!rc && !dry) {
		if ((uint64_t)a->n[KV_P_CACHED] * a->page > a->o.cache_max)
			pthread_cond_signal(&a->wake);
		note_idle(a);
	}
	KV_DEBUG_CHECK_LOCKED(a);
	pthread_mutex_unlock(&a->lock);
	if (pl != &one)
		free(pl);
	return rc;
}

int kv_alloc_unmap_many(kv_alloc_t *a, const struct kv_run *runs, size_t n)
{
	return unclaim_runs(a, runs, n, 0);
}

int kv_alloc_claimed_many(kv_alloc_t *a, const struct kv_run *runs, size_t n)
{
	return unclaim_runs(a, runs, n, 1);
}

int kv_alloc_unmap(kv_alloc_t *a, CUdeviceptr addr, size_t len)
{
	struct kv_run r = { addr, len, 0 };

	if (!a || len == 0)
		return KVSHIM_EINVAL;
	return kv_alloc_unmap_many(a, &r, 1);
}

int kv_alloc_headroom(kv_alloc_t *a, size_t *bytes)
{
	size_t free_b = 0, total = 0, grow, budget, others, room, used;
	size_t own, left, cap, unmade;
	int64_t made;
	int rc, shared;

	if (!a || !bytes)
		return KVSHIM_EINVAL;
	rc = kv_alloc_driver_free(a, &free_b, &total, &made);
	if (rc)
		return rc;
	shared = kv_alloc_shared(a, &budget, &others, &room);
	pthread_mutex_lock(&a->lock);
	/* pages claimed but not made when the driver was read (a fill's, a
	 * map's) are pooled or taken, and in its free bytes still: once */
	unmade = kv_unmade(a, made);
	free_b = free_b > unmade ? free_b - unmade : 0;
	if (shared) {
		/* what the shared budget, the others' use and floors, and this
		 * process's ceiling leave (others' idle pages count: a map asks
		 * them back) */
		own = (size_t)kv_held(a) * a->page;
		left = room > own ? room - own : 0;
		if (a->o.max) {
			cap = a->o.max > own ? a->o.max - own : 0;
			left = left < cap ? left : cap;
		}
		if (free_b > left)
			free_b = left;
	}
	grow = (size_t)a->n[KV_P_EMPTY] * a->page;
	if (grow > free_b)
		grow = free_b / a->page * a->page;
	/* pages in flight (being scrubbed, trimmed or released) count: a map
	 * waits for them rather than fail (see short_of_pages) */
	*bytes = grow + (size_t)(kv_pooled(a) + kv_outbound(a) -
				 a->n[KV_P_DYING] + kv_dying_back(a) +
				 a->n[KV_P_CACHED]) * a->page;
	/* its own idle pages too count within the most it may hold: past its
	 * fair share, while others wait, that is less than it holds (alone,
	 * or with nobody waiting, this cuts nothing) */
	used = (size_t)(a->n[KV_P_MAPPED] + a->n[KV_P_TAKEN]) * a->page;
	if (shared && *bytes > (room > used ? room - used : 0))
		*bytes = room > used ? room - used : 0;
	pthread_mutex_unlock(&a->lock);
	return 0;
}

void kv_alloc_demand(kv_alloc_t *a, size_t bytes)
{
	if (a && a->share)
		kv_share_demand(a->share, bytes);
}

void kv_alloc_unused(kv_alloc_t *a, size_t bytes)
{
	if (a && a->share)
		kv_share_unused(a->share, bytes);
}

size_t kv_alloc_asked(kv_alloc_t *a)
{
	/* whole pages (kv_share_asked) */
	return a && a->share ? (size_t)kv_share_asked(a->share, a->page) : 0;
}

size_t kv_alloc_entitled(kv_alloc_t *a)
{
	uint64_t e;

	if (!a || !a->share)
		return SIZE_MAX;
	/* (at most this process's KVSHIM_LIMIT: the rule takes it as a
	 * ceiling, from its slot) */
	e = kv_share_entitled(a->share);
	return e > SIZE_MAX ? SIZE_MAX : (size_t)e;
}

int kv_alloc_pin_mapped(kv_alloc_t *a, CUdeviceptr addr, size_t len,
			struct kv_run **runs, size_t *nruns)
{
	CUdeviceptr end = addr + len, lo, hi;
	uint32_t p, p0, p1;
	struct kv_span *sp;
	struct kv_run *r;
	size_t n = 0;
	int rc;

	if (!a || !runs || !nruns || len == 0)
		return KVSHIM_EINVAL;
	if (end < addr)
		return KVSHIM_ERANGE;
	*runs = NULL;
	*nruns = 0;
	pthread_mutex_lock(&a->lock);
	for (;;) {
		sp = kv_span_find_range(a, addr, len, &p0, &p1);
		if (!sp || !kv_span_any_busy(a, sp, p0, p1))
			break;
		pthread_cond_wait(&a->done, &a->lock);
	}
	if (!sp) {
		pthread_mutex_unlock(&a->lock);
		return KVSHIM_ERANGE;
	}
	r = malloc(((p1 - p0) / 2 + 1) * sizeof(*r));
	if (!r) {
		pthread_mutex_unlock(&a->lock);
		return KVSHIM_ENOMEM;
	}
	/* a page its span maps without access (uninstall) is granted it
	 * before anything is pinned: the caller writes what it pins */
	for (p = p0; p <= p1; p++) {
		rc = sp->slot[p] == KV_NIL ? 0 : regrant(a, sp, p);
		if (rc) {
			pthread_mutex_unlock(&a->lock);
			free(r);
			return rc;
		}
	}
	for (p = p0; p <= p1; p++) {
		uint32_t s = sp->slot[p];

		if (s == KV_NIL)
			continue;
		sp->pinned[p] = 1;
		if (a->phys[s].state == KV_P_CACHED)
			kv_slot_move(a, s, KV_P_MAPPED);
		lo = kv_span_va(a, sp, p);
		hi = lo + a->page;
		lo = lo < addr ? addr : lo;
		hi = hi > end ? end : hi;
		if (n && r[n - 1].addr + r[n - 1].len == lo)
			r[n - 1].len += hi - lo;
		else
			r[n++] = (struct kv_run){ lo, hi - lo, 0 };
	}
	KV_DEBUG_CHECK_LOCKED(a);
	pthread_mutex_unlock(&a->lock);
	*runs = r;
	*nruns = n;
	return 0;
}
