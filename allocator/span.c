/*
 * span.c - spans, claims, the map and unmap paths, and trimming the cache.
 *
 * The map path holds the allocator's lock from start to end, driver calls
 * included, so a range is checked, backed and claimed as one step that no
 * other thread can see half-done. Work that is slow and not on an engine's
 * path (unmapping cached pages, scrubbing, creating the pool) marks its
 * pages BUSY and runs outside the lock; the map path waits for such a page
 * rather than race it.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc_int.h"
#include "log.h"

/* ---- looking spans up ------------------------------------------------------- */

/* Index of the first span whose base is above addr. */
static size_t upper(const kv_alloc_t *a, CUdeviceptr addr)
{
	size_t lo = 0, hi = a->nspans;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (a->spans[mid]->base <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static struct kv_span *find(const kv_alloc_t *a, CUdeviceptr addr)
{
	size_t i = upper(a, addr);
	struct kv_span *sp;

	if (i == 0)
		return NULL;
	sp = a->spans[i - 1];
	return addr - sp->base < sp->size ? sp : NULL;
}

/*
 * The span holding all of [addr, addr + len), with the pages it covers in
 * *p0 and *p1. Returns NULL when no one span holds the whole range.
 */
static struct kv_span *find_range(const kv_alloc_t *a, CUdeviceptr addr,
				  size_t len, uint32_t *p0, uint32_t *p1)
{
	struct kv_span *sp = find(a, addr);

	if (!sp || len > sp->size - (addr - sp->base))
		return NULL;
	*p0 = (uint32_t)((addr - sp->base) / a->page);
	*p1 = (uint32_t)((addr - sp->base + len - 1) / a->page);
	return sp;
}

static int any_busy(const kv_alloc_t *a, const struct kv_span *sp,
		    uint32_t p0, uint32_t p1)
{
	uint32_t p;

	for (p = p0; p <= p1; p++)
		if (sp->slot[p] != KV_NIL &&
		    a->phys[sp->slot[p]].state == KV_P_BUSY)
			return 1;
	return 0;
}

static CUdeviceptr page_va(const kv_alloc_t *a, const struct kv_span *sp,
			   uint32_t p)
{
	return sp->base + (CUdeviceptr)p * a->page;
}

/* One more claim on mapped page p of sp; a cached page leaves the cache. */
static void claim(kv_alloc_t *a, struct kv_span *sp, uint32_t p)
{
	uint32_t s = sp->slot[p];

	if (sp->claims[p]++ == 0 && a->phys[s].state == KV_P_CACHED) {
		kv_list_remove(a, &a->cache, s);
		a->phys[s].state = KV_P_MAPPED;
	}
}

/* ---- reserve and release -------------------------------------------------------- */

static void span_free(struct kv_span *sp)
{
	if (!sp)
		return;
	free(sp->claims);
	free(sp->slot);
	free(sp);
}

int kv_alloc_reserve(kv_alloc_t *a, size_t size, CUdeviceptr *base)
{
	struct kv_span *sp = NULL, **grown;
	size_t npages, i;
	int rc;

	if (!a || !base || size == 0 || size > SIZE_MAX - a->page)
		return KVSHIM_EINVAL;
	npages = (size + a->page - 1) / a->page;
	if (npages >= UINT32_MAX)
		return KVSHIM_EINVAL;
	sp = calloc(1, sizeof(*sp));
	if (!sp)
		return KVSHIM_ENOMEM;
	sp->npages = (uint32_t)npages;
	sp->size = npages * a->page;
	sp->claims = calloc(npages, sizeof(*sp->claims));
	sp->slot = malloc(npages * sizeof(*sp->slot));
	if (!sp->claims || !sp->slot) {
		rc = KVSHIM_ENOMEM;
		goto fail;
	}
	for (i = 0; i < npages; i++)
		sp->slot[i] = KV_NIL;
	rc = kv_prim_bind(&a->prim);
	if (!rc)
		rc = kv_prim_reserve(&a->prim, sp->size, &sp->base);
	if (rc)
		goto fail;

	pthread_mutex_lock(&a->lock);
	if (a->nspans == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 16;

		grown = realloc(a->spans, cap * sizeof(*grown));
		if (!grown) {
			pthread_mutex_unlock(&a->lock);
			kv_prim_unreserve(&a->prim, sp->base, sp->size);
			rc = KVSHIM_ENOMEM;
			goto fail;
		}
		a->spans = grown;
		a->cap = cap;
	}
	i = upper(a, sp->base);
	memmove(a->spans + i + 1, a->spans + i,
		(a->nspans - i) * sizeof(*a->spans));
	a->spans[i] = sp;
	a->nspans++;
	a->reserved += sp->size;
	pthread_mutex_unlock(&a->lock);
	*base = sp->base;
	return 0;
fail:
	span_free(sp);
	return rc;
}

/*
 * Unmap all of sp's pages into the pool and free its range, lock held.
 * Returns 0, or a driver error with the pages that failed to unmap still in
 * the span (a later release tries them again).
 */
static int release_locked(kv_alloc_t *a, struct kv_span *sp)
{
	uint32_t p, n = 0, done, *slots = NULL;
	size_t i;
	int rc = 0;

	if (sp->mapped) {
		slots = malloc(sp->mapped * sizeof(*slots));
		if (!slots)
			return KVSHIM_ENOMEM;
	}
	for (p = 0; p < sp->npages; p++) {
		uint32_t s = sp->slot[p];

		if (s == KV_NIL)
			continue;
		if (a->phys[s].state == KV_P_CACHED)
			kv_list_remove(a, &a->cache, s);
		a->phys[s].state = KV_P_BUSY;
		sp->busy++;
		slots[n++] = s;
	}
	done = kv_span_unmap_slots(a, slots, n, &rc);
	kv_span_settle(a, slots, n, done);
	kv_pool_put(a, slots, done, 1);
	free(slots);
	if (rc)
		return rc;

	rc = kv_prim_unreserve(&a->prim, sp->base, sp->size);
	/* the pages are gone either way; a range the driver would not free
	 * is lost address space, not memory */
	i = upper(a, sp->base) - 1;
	memmove(a->spans + i, a->spans + i + 1,
		(a->nspans - i - 1) * sizeof(*a->spans));
	a->nspans--;
	a->reserved -= sp->size;
	span_free(sp);
	return rc;
}

/*
 * Take sp out of sight at once and leave the unmapping of its pages (20 to
 * 40 us a page, however batched) to the worker: a cudaFree of a KV cache
 * must not stall the engine for its whole size. The pages count as in
 * flight until then, so a map short of memory waits for them. Lock held.
 */
static void retire(kv_alloc_t *a, struct kv_span *sp)
{
	uint32_t p;
	size_t i;

	for (p = 0; p < sp->npages; p++) {
		uint32_t s = sp->slot[p];

		if (s == KV_NIL)
			continue;
		if (a->phys[s].state == KV_P_CACHED)
			kv_list_remove(a, &a->cache, s);
		a->phys[s].state = KV_P_BUSY;
		sp->busy++;
	}
	a->outbound += sp->busy;
	a->dying_pages += sp->busy;
	i = upper(a, sp->base) - 1;
	memmove(a->spans + i, a->spans + i + 1,
		(a->nspans - i - 1) * sizeof(*a->spans));
	a->nspans--;
	a->reserved -= sp->size;
	sp->next = a->dying;
	a->dying = sp;
	pthread_cond_signal(&a->wake);
}

/*
 * Unmap the pages of released spans into the pool and free their ranges,
 * the lock dropped for the driver work. Lock held on entry and exit. A span
 * whose unmap fails stays on the list for the next round. Returns 0 or the
 * first driver error.
 */
int kv_spans_reap(kv_alloc_t *a)
{
	struct kv_span *sp;
	uint32_t p, n, done, *slots;
	int rc = 0, e;

	while ((sp = a->dying)) {
		a->dying = sp->next;
		slots = malloc((sp->busy ? sp->busy : 1) * sizeof(*slots));
		if (!slots) {
			sp->next = a->dying;
			a->dying = sp;
			return KVSHIM_ENOMEM;
		}
		for (n = 0, p = 0; p < sp->npages; p++)
			if (sp->slot[p] != KV_NIL)
				slots[n++] = sp->slot[p];
		pthread_mutex_unlock(&a->lock);
		done = kv_span_unmap_slots(a, slots, n, &e);
		pthread_mutex_lock(&a->lock);
		for (p = 0; p < done; p++) {
			struct kv_phys *ph = &a->phys[slots[p]];

			sp->slot[ph->vpage] = KV_NIL;
			ph->span = NULL;
		}
		sp->busy -= done;
		sp->mapped -= done;
		a->mapped -= done;
		a->outbound -= done;
		a->dying_pages -= done;
		kv_pool_put(a, slots, done, 1);
		free(slots);
		pthread_cond_broadcast(&a->done);
		if (e) {
			/* try again next round */
			sp->next = a->dying;
			a->dying = sp;
			return rc ? rc : e;
		}
		pthread_mutex_unlock(&a->lock);
		e = kv_prim_unreserve(&a->prim, sp->base, sp->size);
		pthread_mutex_lock(&a->lock);
		if (e && !rc)
			rc = e;
		span_free(sp);
	}
	return rc;
}

int kv_alloc_release(kv_alloc_t *a, CUdeviceptr base)
{
	struct kv_span *sp;
	int rc;

	if (!a)
		return KVSHIM_EINVAL;
	rc = kv_prim_bind(&a->prim);
	if (rc)
		return rc;
	pthread_mutex_lock(&a->lock);
	for (;;) {
		sp = find(a, base);
		if (!sp || sp->base != base) {
			rc = KVSHIM_ERANGE;
			break;
		}
		if (!sp->busy) {
			if (a->worker_running)
				retire(a, sp);
			else
				rc = release_locked(a, sp);
			break;
		}
		pthread_cond_wait(&a->done, &a->lock);
	}
	if (rc == 0)
		pthread_cond_signal(&a->wake);  /* pages to scrub */
	if (rc == 0 && a->share)
		kv_share_note(a->share, (uint64_t)a->cache.n * a->page,
			      (uint64_t)(a->clean.n + a->dirty.n + a->scrubbing) * a->page);
	pthread_mutex_unlock(&a->lock);
	return rc;
}

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
		pl[i].sp = find_range(a, runs[i].addr, runs[i].len, &pl[i].p0,
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
		if (any_busy(a, pl[i].sp, pl[i].p0, pl[i].p1))
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
				claim(a, pl[i].sp, p);
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
	uint32_t p;
	size_t i;

	for (i = 0; i < n; i++) {
		for (p = pl[i].p0; p <= pl[i].p1; p++) {
			uint32_t *s = &pl[i].sp->slot[p];

			if (*s == KV_PEND) {
				*s = KV_NIL;
			} else if (*s != KV_NIL && --pl[i].sp->claims[p] == 0) {
				a->phys[*s].state = KV_P_CACHED;
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
static int cmp_place(const void *x, const void *y, void *arg);

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
			rc = kv_prim_map(&a->prim, page_va(a, sp, p), ph->h);
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
		qsort_r(slots, need, sizeof(*slots), cmp_place, a);
	for (k = 0; k < need && !rc; k += run) {
		const struct kv_phys *first = &a->phys[slots[k]];

		for (run = 1; k + run < need; run++) {
			const struct kv_phys *q = &a->phys[slots[k + run]];

			if (q->span != first->span || q->vpage != first->vpage + run)
				break;
		}
		rc = kv_prim_access(&a->prim, page_va(a, first->span, first->vpage),
				    (size_t)run * a->page);
	}
	if (rc) {
		for (j = 0; j < need; j++) {
			struct kv_phys *ph = &a->phys[slots[j]];

			if (!ph->fresh)
				continue;
			kv_prim_unmap(&a->prim, page_va(a, ph->span, ph->vpage),
				      a->page);
			ph->span->slot[ph->vpage] = KV_PEND;
			ph->fresh = 0;
			ph->span = NULL;
		}
		kv_pool_put(a, slots, need, 0);
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
	for (i = 0; i < n && !rc; i++) {
		for (p = pl[i].p0; p <= pl[i].p1; p++) {
			if (pl[i].sp->slot[p] == KV_NIL) {
				pl[i].sp->slot[p] = KV_PEND;
				need++;
			}
		}
	}
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
	size_t free_b = 0, total = 0, grow;
	int rc;

	if (!a || !bytes)
		return KVSHIM_EINVAL;
	rc = kv_prim_bind(&a->prim);
	if (!rc)
		rc = kv_prim_meminfo(&a->prim, &free_b, &total);
	if (rc)
		return rc;
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
		sp = find_range(a, addr, len, &p0, &p1);
		if (!sp || !any_busy(a, sp, p0, p1))
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
		claim(a, sp, p);
		lo = page_va(a, sp, p);
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

int kv_alloc_find(kv_alloc_t *a, CUdeviceptr addr, CUdeviceptr *base,
		  size_t *size)
{
	struct kv_span *sp;

	if (!a)
		return KVSHIM_EINVAL;
	pthread_mutex_lock(&a->lock);
	sp = find(a, addr);
	if (sp) {
		if (base)
			*base = sp->base;
		if (size)
			*size = sp->size;
	}
	pthread_mutex_unlock(&a->lock);
	return sp ? 0 : KVSHIM_ERANGE;
}

int kv_alloc_claims(kv_alloc_t *a, CUdeviceptr addr)
{
	struct kv_span *sp;
	int n = KVSHIM_ERANGE;

	if (!a)
		return KVSHIM_EINVAL;
	pthread_mutex_lock(&a->lock);
	sp = find(a, addr);
	if (sp)
		n = (int)sp->claims[(addr - sp->base) / a->page];
	pthread_mutex_unlock(&a->lock);
	return n;
}

/* ---- unmapping pages out of spans ---------------------------------------------------- */

static int cmp_place(const void *x, const void *y, void *arg)
{
	const kv_alloc_t *a = arg;
	const struct kv_phys *p = &a->phys[*(const uint32_t *)x];
	const struct kv_phys *q = &a->phys[*(const uint32_t *)y];

	if (p->span != q->span)
		return p->span->base < q->span->base ? -1 : 1;
	return (p->vpage > q->vpage) - (p->vpage < q->vpage);
}

/*
 * Unmap the span pages held by BUSY slots[0..n), one driver call per run of
 * consecutive pages of one span. The lock may or may not be held: BUSY
 * slots and their spans stay put either way. Reorders slots so the pages
 * unmapped come first. Returns how many were unmapped; *rc gets the first
 * driver error, or 0.
 */
uint32_t kv_span_unmap_slots(kv_alloc_t *a, uint32_t *slots, uint32_t n,
			     int *rc)
{
	uint64_t t0 = kv_prim_now_ns();
	uint32_t i, len, done = 0;
	int e;

	*rc = 0;
	if (!n)
		return 0;
	qsort_r(slots, n, sizeof(*slots), cmp_place, a);
	for (i = 0; i < n; i += len) {
		const struct kv_phys *p = &a->phys[slots[i]];

		for (len = 1; i + len < n; len++) {
			const struct kv_phys *q = &a->phys[slots[i + len]];

			if (q->span != p->span || q->vpage != p->vpage + len)
				break;
		}
		e = kv_prim_unmap(&a->prim, page_va(a, p->span, p->vpage),
				  (size_t)len * a->page);
		if (e) {
			if (!*rc)
				*rc = e;
			continue;
		}
		memmove(slots + done, slots + i, len * sizeof(*slots));
		done += len;
	}
	KV_COUNT(a, pages_unmapped, done);
	KV_COUNT(a, unmap_ns, kv_prim_now_ns() - t0);
	return done;
}

/*
 * After kv_span_unmap_slots, lock held: detach the first done slots from
 * their spans (they stay BUSY for the caller to pool or release) and put
 * the rest back where they were, mapped and cached or claimed.
 */
void kv_span_settle(kv_alloc_t *a, const uint32_t *slots, uint32_t n,
		    uint32_t done)
{
	uint32_t i;

	for (i = 0; i < n; i++) {
		struct kv_phys *p = &a->phys[slots[i]];
		struct kv_span *sp = p->span;

		sp->busy--;
		if (i < done) {
			sp->slot[p->vpage] = KV_NIL;
			sp->claims[p->vpage] = 0;
			sp->mapped--;
			a->mapped--;
			p->span = NULL;
		} else if (sp->claims[p->vpage]) {
			p->state = KV_P_MAPPED;
		} else {
			p->state = KV_P_CACHED;
			kv_list_push(a, &a->cache, slots[i]);
		}
	}
	pthread_cond_broadcast(&a->done);
}

/*
 * Unmap up to n cached pages, oldest first, with the lock dropped for the
 * driver work; then release them (release) or pool them for reuse. Lock held
 * on entry and exit. *done gets the pages unmapped. Returns 0 or the first
 * driver error.
 */
int kv_cache_trim(kv_alloc_t *a, uint32_t n, int release, uint32_t *done)
{
	uint32_t k = 0, *slots;
	int rc, e;

	*done = 0;
	if (n > a->cache.n)
		n = a->cache.n;
	if (!n)
		return 0;
	slots = malloc(n * sizeof(*slots));
	if (!slots)
		return KVSHIM_ENOMEM;
	while (k < n) {
		uint32_t s = kv_list_pop(a, &a->cache);

		a->phys[s].state = KV_P_BUSY;
		a->phys[s].span->busy++;
		slots[k++] = s;
	}
	a->outbound += n;
	pthread_mutex_unlock(&a->lock);
	*done = kv_span_unmap_slots(a, slots, n, &rc);
	pthread_mutex_lock(&a->lock);
	kv_span_settle(a, slots, n, *done);
	if (release) {
		e = kv_pool_release_busy(a, slots, *done);
		if (!rc)
			rc = e;
	} else {
		kv_pool_put(a, slots, *done, 1);
	}
	a->outbound -= n;
	free(slots);
	return rc;
}

int kv_alloc_trim(kv_alloc_t *a, size_t bytes, size_t *freed)
{
	uint64_t want;
	uint32_t pool_freed = 0, cache_freed = 0;
	int rc, rc2 = 0;

	if (freed)
		*freed = 0;
	if (!a)
		return KVSHIM_EINVAL;
	want = bytes / a->page + (bytes % a->page != 0);
	if (want > UINT32_MAX)
		want = UINT32_MAX;
	rc = kv_prim_bind(&a->prim);
	if (rc)
		return rc;
	pthread_mutex_lock(&a->lock);
	/* released spans' pages first join the pool, to be given back too */
	kv_spans_reap(a);
	rc = kv_pool_shrink(a, a->clean.n + a->dirty.n > want ?
			       a->clean.n + a->dirty.n - (uint32_t)want : 0,
			    &pool_freed);
	if (!rc && want > pool_freed)
		rc2 = kv_cache_trim(a, (uint32_t)(want - pool_freed), 1,
				    &cache_freed);
	pthread_mutex_unlock(&a->lock);
	if (freed)
		*freed = (size_t)(pool_freed + cache_freed) * a->page;
	return rc ? rc : rc2;
}

/* Release every span, at shutdown. Lock not held. */
void kv_spans_fini(kv_alloc_t *a)
{
	pthread_mutex_lock(&a->lock);
	kv_spans_reap(a);
	while (a->dying) {
		/* the driver refused: drop the bookkeeping anyway */
		struct kv_span *sp = a->dying;

		a->dying = sp->next;
		span_free(sp);
	}
	pthread_mutex_unlock(&a->lock);
	while (a->nspans) {
		CUdeviceptr base = a->spans[a->nspans - 1]->base;

		if (kv_alloc_release(a, base) && a->nspans &&
		    a->spans[a->nspans - 1]->base == base) {
			/* the driver refused: drop the bookkeeping anyway */
			struct kv_span *sp = a->spans[--a->nspans];

			a->reserved -= sp->size;
			span_free(sp);
		}
	}
	free(a->spans);
	a->spans = NULL;
}
