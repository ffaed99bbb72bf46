/*
 * map.c - backing ranges of spans and dropping their claims: the engine's
 * path. A map holds the allocator's lock from start to end, driver calls
 * included, so ranges are checked, backed and claimed as one step that no
 * other thread sees half-done; work that is slow and off the engine's path
 * runs outside the lock on BUSY pages (span.c, pool.c), and a map waits for
 * such a page rather than race it.
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

/* Slot value of a page this call will back: only between the count and
 * the install, always with the lock held. */
#define KV_PEND (UINT32_MAX - 1)

/* Resolve every range. Returns 0, KVSHIM_EINVAL or KVSHIM_ERANGE. */
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
		if (!pl[i].sp)
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
 * Claim every page of the ranges that is mapped already, so that none of
 * them can be reclaimed to back the others, and mark the unmapped ones
 * KV_PEND, each once however many ranges cover it. Returns how many.
 */
static uint32_t claim_present(kv_alloc_t *a, const struct place *pl, size_t n)
{
	uint32_t p, need = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		for (p = pl[i].p0; p <= pl[i].p1; p++) {
			uint32_t *s = &pl[i].sp->slot[p];

			if (*s == KV_NIL) {
				*s = KV_PEND;
				need++;
			} else if (*s != KV_PEND) {
				kv_span_claim(a, pl[i].sp, p);
			}
		}
	}
	return need;
}

static void clear_pending(const struct place *pl, size_t n)
{
	uint32_t p;
	size_t i;

	for (i = 0; i < n; i++)
		for (p = pl[i].p0; p <= pl[i].p1; p++)
			if (pl[i].sp->slot[p] == KV_PEND)
				pl[i].sp->slot[p] = KV_NIL;
}

/* Undo claim_present: pending pages unbacked again, claims dropped. */
static void unclaim_present(kv_alloc_t *a, const struct place *pl, size_t n)
{
	uint64_t now = kv_prim_now_ns();
	uint32_t p;
	size_t i;

	for (i = 0; i < n; i++) {
		for (p = pl[i].p0; p <= pl[i].p1; p++) {
			uint32_t *s = &pl[i].sp->slot[p];

			if (*s == KV_PEND) {
				*s = KV_NIL;
			} else if (*s != KV_NIL && --pl[i].sp->claims[p] == 0) {
				a->phys[*s].state = KV_P_CACHED;
				a->phys[*s].idle_ns = now;
				kv_list_push(a, &a->cache, *s);
			}
		}
	}
}

/*
 * Map slots[0..need) into the KV_PEND pages of the ranges in order, and
 * grant access with one call per contiguous run of them. Pages mapped here
 * are marked fresh, for claim_fresh. On failure they are unmapped and
 * KV_PEND again, and the slots are back in the pool. Returns 0 or a driver
 * error.
 */
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

static int install(kv_alloc_t *a, const struct place *pl, size_t n,
		   uint32_t *slots, uint32_t need)
{
	uint64_t t0 = kv_prim_now_ns();
	uint32_t p, k = 0, j, run;
	size_t i;
	int rc = 0;

	for (i = 0; i < n && !rc; i++) {
		struct kv_span *sp = pl[i].sp;

		for (p = pl[i].p0; p <= pl[i].p1 && !rc; p++) {
			struct kv_phys *ph;

			if (sp->slot[p] != KV_PEND)
				continue;
			ph = &a->phys[slots[k]];
			rc = kv_prim_map(&a->prim, kv_span_va(a, sp, p), ph->h);
			if (rc)
				break;
			sp->slot[p] = slots[k++];
			ph->span = sp;
			ph->vpage = p;
			ph->fresh = 1;
		}
	}
	/* access: one call per run of consecutive new pages of one span,
	 * whatever ranges brought them */
	if (!rc)
		qsort_r(slots, need, sizeof(*slots), kv_span_cmp_place, a);
	for (k = 0; k < need && !rc; k += run) {
		const struct kv_phys *first = &a->phys[slots[k]];

		for (run = 1; k + run < need; run++) {
			const struct kv_phys *q = &a->phys[slots[k + run]];

			if (q->span != first->span || q->vpage != first->vpage + run)
				break;
		}
		rc = kv_prim_access(&a->prim, kv_span_va(a, first->span, first->vpage),
				    (size_t)run * a->page);
	}
	if (rc) {
		uint32_t good;

		for (j = 0; j < need; j++) {
			struct kv_phys *ph = &a->phys[slots[j]];

			if (!ph->fresh)
				continue;
			ph->fresh = 0;
			if (kv_prim_unmap(&a->prim, kv_span_va(a, ph->span, ph->vpage),
					  a->page) == 0) {
				ph->span->slot[ph->vpage] = KV_PEND;
				ph->span = NULL;
				continue;
			}
			/* still mapped in the span: it stays there, as a page
			 * the ranges claimed and unclaim_present releases to
			 * the cache (a later trim unmaps it), made accessible
			 * like every cached page */
			if (kv_prim_access(&a->prim, kv_span_va(a, ph->span, ph->vpage),
					   a->page))
				kv_error("page at 0x%llx left mapped without access",
					 (unsigned long long)kv_span_va(a, ph->span,
									ph->vpage));
			ph->failed = 1;
			ph->state = KV_P_MAPPED;
			ph->span->claims[ph->vpage] = covering(pl, n, ph->span, ph->vpage);
			ph->span->mapped++;
			a->mapped++;
		}
		good = kv_slots_failed_last(a, slots, need);
		kv_pool_put(a, slots, good, 0);
		return rc;
	}
	for (k = 0; k < need; k++) {
		a->phys[slots[k]].state = KV_P_MAPPED;
		a->phys[slots[k]].span->mapped++;
	}
	a->mapped += need;
	KV_COUNT(a, map_calls, 1);
	KV_COUNT(a, pages_mapped, need);
	KV_COUNT(a, map_ns, kv_prim_now_ns() - t0);
	return 0;
}

/* Each range claims the pages backed for it by this call. */
static void claim_fresh(kv_alloc_t *a, const struct place *pl, size_t n,
			const uint32_t *slots, uint32_t need)
{
	uint32_t p, k;
	size_t i;

	for (i = 0; i < n; i++)
		for (p = pl[i].p0; p <= pl[i].p1; p++)
			if (a->phys[pl[i].sp->slot[p]].fresh)
				pl[i].sp->claims[p]++;
	for (k = 0; k < need; k++)
		a->phys[slots[k]].fresh = 0;
}

/*
 * Back the pages of all ranges, lock held: claims on what is mapped first,
 * then pages for the rest in one gathering, installed run by run. Returns
 * 0, KV_RETRY (nothing changed; wait for pages in flight) or an error with
 * nothing changed.
 */
static int map_locked(kv_alloc_t *a, const struct place *pl, size_t n)
{
	uint32_t need, stack[64], *slots = stack;
	int rc;

	need = claim_present(a, pl, n);
	if (!need)
		return 0;
	if (need > 64 && !(slots = malloc(need * sizeof(*slots)))) {
		unclaim_present(a, pl, n);
		return KVSHIM_ENOMEM;
	}
	rc = kv_pool_take(a, need, slots);
	if (!rc)
		rc = install(a, pl, n, slots, need);
	if (!rc)
		claim_fresh(a, pl, n, slots, need);
	else
		unclaim_present(a, pl, n);
	if (slots != stack)
		free(slots);
	return rc;
}

int kv_alloc_map_many(kv_alloc_t *a, const struct kv_run *runs, size_t n)
{
	struct place one, *pl = &one;
	uint64_t deadline = 0;
	int rc;

	if (!a || !runs || n == 0)
		return KVSHIM_EINVAL;
	if (n > 1 && !(pl = malloc(n * sizeof(*pl))))
		return KVSHIM_ENOMEM;
	rc = kv_prim_bind(&a->prim);
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
		rc = map_locked(a, pl, n);
		if (rc == KV_RETRY) {
			pthread_cond_wait(&a->done, &a->lock);
			continue;
		}
		if (rc != KV_RETRY_SHARE)
			break;
		/* other processes were asked to trim: give them a moment */
		if (!deadline)
			deadline = kv_prim_now_ns() +
				   (uint64_t)a->o.share_wait_ms * 1000000u;
		if (kv_prim_now_ns() >= deadline) {
			rc = KVSHIM_ELIMIT;
			break;
		}
		pthread_mutex_unlock(&a->lock);
		nanosleep(&(struct timespec){ 0, 2 * 1000 * 1000 }, NULL);
		pthread_mutex_lock(&a->lock);
	}
	if (a->clean.n * a->page < a->o.pool_low)
		pthread_cond_signal(&a->wake);
	pthread_mutex_unlock(&a->lock);
out:
	if (pl != &one)
		free(pl);
	return rc;
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
	 * page once (KV_PEND marks new ones, fresh the cached ones).
	 */
	for (i = 0; i < n && !rc; i++) {
		for (p = pl[i].p0; p <= pl[i].p1; p++) {
			uint32_t *s = &pl[i].sp->slot[p];

			if (*s == KV_NIL) {
				*s = KV_PEND;
				need++;
			} else if (*s != KV_PEND && a->phys[*s].state == KV_P_CACHED &&
				   !a->phys[*s].fresh) {
				a->phys[*s].fresh = 1;
				need++;
			}
		}
	}
	for (i = 0; i < n && !rc; i++)
		for (p = pl[i].p0; p <= pl[i].p1; p++)
			if (pl[i].sp->slot[p] < KV_PEND)
				a->phys[pl[i].sp->slot[p]].fresh = 0;
	if (!rc)
		clear_pending(pl, n);
	pthread_mutex_unlock(&a->lock);
	if (pl != &one)
		free(pl);
	*bytes = (size_t)need * a->page;
	return rc;
}

int kv_alloc_map(kv_alloc_t *a, CUdeviceptr addr, size_t len)
{
	struct kv_run r = { addr, len };

	if (!a || len == 0)
		return KVSHIM_EINVAL;
	return kv_alloc_map_many(a, &r, 1);
}

/* ---- unmap: dropping claims -------------------------------------------------------- */

/* Drop one claim of each range's pages; on a page with none to drop, put
 * back what was dropped and return KVSHIM_ENOTCLAIMED. Lock held. */
static int unclaim(kv_alloc_t *a, const struct place *pl, size_t n)
{
	size_t i, j;
	uint32_t p;

	for (i = 0; i < n; i++) {
		for (p = pl[i].p0; p <= pl[i].p1; p++) {
			if (pl[i].sp->claims[p]) {
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

int kv_alloc_unmap_many(kv_alloc_t *a, const struct kv_run *runs, size_t n)
{
	struct place one, *pl = &one;
	uint64_t now = kv_prim_now_ns();
	uint32_t p;
	size_t i;
	int rc;

	if (!a || !runs || n == 0)
		return KVSHIM_EINVAL;
	if (n > 1 && !(pl = malloc(n * sizeof(*pl))))
		return KVSHIM_ENOMEM;
	pthread_mutex_lock(&a->lock);
	rc = resolve(a, runs, n, pl);
	if (!rc)
		rc = unclaim(a, pl, n);
	for (i = 0; i < n && !rc; i++) {
		for (p = pl[i].p0; p <= pl[i].p1; p++) {
			uint32_t s = pl[i].sp->slot[p];

			/* a page several ranges share is cached once */
			if (pl[i].sp->claims[p] || a->phys[s].state == KV_P_CACHED)
				continue;
			a->phys[s].state = KV_P_CACHED;
			a->phys[s].idle_ns = now;
			kv_list_push(a, &a->cache, s);
		}
	}
	if (!rc && a->cache.n * a->page > a->o.cache_max)
		pthread_cond_signal(&a->wake);
	if (!rc && a->share)
		kv_share_note(a->share, (uint64_t)a->cache.n * a->page,
			      (uint64_t)(a->clean.n + a->dirty.n + a->scrubbing) * a->page);
	pthread_mutex_unlock(&a->lock);
	if (pl != &one)
		free(pl);
	return rc;
}

int kv_alloc_unmap(kv_alloc_t *a, CUdeviceptr addr, size_t len)
{
	struct kv_run r = { addr, len };

	if (!a || len == 0)
		return KVSHIM_EINVAL;
	return kv_alloc_unmap_many(a, &r, 1);
}

int kv_alloc_headroom(kv_alloc_t *a, size_t *bytes)
{
	size_t free_b = 0, total = 0, grow, budget, others, room;
	int rc;

	if (!a || !bytes)
		return KVSHIM_EINVAL;
	rc = kv_prim_bind(&a->prim);
	if (!rc)
		rc = kv_prim_meminfo(&a->prim, &free_b, &total);
	if (rc)
		return rc;
	if (kv_alloc_shared(a, &budget, &others, &room)) {
		/* what the shared budget, the others' use and floors, and this
		 * process's ceiling leave (others' idle pages count: a map asks
		 * them back) */
		size_t own = 0, left;

		pthread_mutex_lock(&a->lock);
		own = (size_t)a->held * a->page;
		pthread_mutex_unlock(&a->lock);
		left = room > own ? room - own : 0;
		if (a->o.max)
			left = left < (a->o.max > own ? a->o.max - own : 0) ?
			       left : (a->o.max > own ? a->o.max - own : 0);
		if (free_b > left)
			free_b = left;
	}
	pthread_mutex_lock(&a->lock);
	grow = (size_t)(a->max_pages - a->held) * a->page;
	if (grow > free_b)
		grow = free_b / a->page * a->page;
	/* pages in flight (being scrubbed, trimmed or released) count: a map
	 * waits for them rather than fail */
	*bytes = grow + (size_t)(a->clean.n + a->dirty.n + a->scrubbing +
				 a->outbound + a->cache.n) * a->page;
	pthread_mutex_unlock(&a->lock);
	return 0;
}

int kv_alloc_claim_mapped(kv_alloc_t *a, CUdeviceptr addr, size_t len,
			  struct kv_run **runs, size_t *nruns)
{
	CUdeviceptr end = addr + len, lo, hi;
	uint32_t p, p0, p1;
	struct kv_span *sp;
	struct kv_run *r;
	size_t n = 0;

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
	for (p = p0; p <= p1; p++) {
		uint32_t s = sp->slot[p];

		if (s == KV_NIL)
			continue;
		kv_span_claim(a, sp, p);
		lo = kv_span_va(a, sp, p);
		hi = lo + a->page;
		lo = lo < addr ? addr : lo;
		hi = hi > end ? end : hi;
		if (n && r[n - 1].addr + r[n - 1].len == lo)
			r[n - 1].len += hi - lo;
		else
			r[n++] = (struct kv_run){ lo, hi - lo };
	}
	pthread_mutex_unlock(&a->lock);
	*runs = r;
	*nruns = n;
	return 0;
}

