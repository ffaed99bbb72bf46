/*
 * span.c - spans: looking them up, reserving and releasing them (a release
 * retires the span at once and leaves its unmapping to the worker, or to a
 * map that needs its pages first), and unmapping pages out of them in
 * runs: trim, reclaim and the cache cap. The map and unmap paths are in
 * map.c. Work here that is slow runs outside the lock on slots in flight;
 * the map path waits for such a page rather than race it.
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

struct kv_span *kv_span_find(const kv_alloc_t *a, CUdeviceptr addr)
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
struct kv_span *kv_span_find_range(const kv_alloc_t *a, CUdeviceptr addr,
				   size_t len, uint32_t *p0, uint32_t *p1)
{
	struct kv_span *sp = kv_span_find(a, addr);

	if (!sp || len > sp->size - (addr - sp->base))
		return NULL;
	*p0 = (uint32_t)((addr - sp->base) / a->page);
	*p1 = (uint32_t)((addr - sp->base + len - 1) / a->page);
	return sp;
}

int kv_span_any_busy(const kv_alloc_t *a, const struct kv_span *sp,
		     uint32_t p0, uint32_t p1)
{
	uint32_t p;

	if (!sp->busy && !sp->pending)
		return 0;
	for (p = p0; p <= p1; p++)
		if (sp->slot[p] == KV_PEND ||
		    (sp->slot[p] != KV_NIL &&
		     a->phys[sp->slot[p]].state == KV_P_UNMAPPING))
			return 1;
	return 0;
}

void kv_span_claim(kv_alloc_t *a, struct kv_span *sp, uint32_t p)
{
	uint32_t s = sp->slot[p];

	if (sp->claims[p]++ == 0 && a->phys[s].state == KV_P_CACHED)
		kv_slot_move(a, s, KV_P_MAPPED);
}

void kv_span_idle(kv_alloc_t *a, struct kv_span *sp, uint32_t p,
		  uint64_t now)
{
	uint32_t s = sp->slot[p];

	if (sp->claims[p] || sp->pinned[p] || a->phys[s].state != KV_P_MAPPED)
		return;
	a->phys[s].idle_ns = now;
	kv_slot_move(a, s, KV_P_CACHED);
}

/* ---- reserve and release -------------------------------------------------------- */

static void span_free(struct kv_span *sp)
{
	if (!sp)
		return;
	free(sp->claims);
	free(sp->pinned);
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
	sp->pinned = calloc(npages, sizeof(*sp->pinned));
	sp->slot = malloc(npages * sizeof(*sp->slot));
	if (!sp->claims || !sp->pinned || !sp->slot) {
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
	pthread_rwlock_wrlock(&a->spans_lock);
	if (a->nspans == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 16;

		grown = realloc(a->spans, cap * sizeof(*grown));
		if (!grown) {
			pthread_rwlock_unlock(&a->spans_lock);
			pthread_mutex_unlock(&a->lock);
			kv_prim_unreserve(&a->prim, sp->base, sp->size);
			rc = KVSHIM_ENOMEM;
			goto fail;
		}
		a->spans = grown;
		a->cap = cap;
	}
	sp->id = a->next_id++;
	i = upper(a, sp->base);
	memmove(a->spans + i + 1, a->spans + i,
		(a->nspans - i) * sizeof(*a->spans));
	a->spans[i] = sp;
	a->nspans++;
	pthread_rwlock_unlock(&a->spans_lock);
	a->reserved += sp->size;
	KV_DEBUG_CHECK_LOCKED(a);
	pthread_mutex_unlock(&a->lock);
	*base = sp->base;
	return 0;
fail:
	span_free(sp);
	return rc;
}

/*
 * Take sp out of sight at once and leave the unmapping of its pages (20 to
 * 40 us a page, however batched) for later: a cudaFree of a KV cache must
 * not stall the engine for its whole size. Its pages are DYING until then,
 * so a map short of memory unmaps them itself or waits. No page of sp may
 * be in flight. Lock held.
 */
static void retire(kv_alloc_t *a, struct kv_span *sp)
{
	uint64_t now = kv_prim_now_ns();
	uint32_t p;
	size_t i;

	for (p = 0; p < sp->npages; p++) {
		uint32_t s = sp->slot[p];

		if (s >= KV_MARK)
			continue;
		if (a->phys[s].state == KV_P_MAPPED)
			a->phys[s].idle_ns = now;
		kv_slot_move(a, s, KV_P_DYING);
	}
	pthread_rwlock_wrlock(&a->spans_lock);
	i = upper(a, sp->base) - 1;
	memmove(a->spans + i, a->spans + i + 1,
		(a->nspans - i - 1) * sizeof(*a->spans));
	a->nspans--;
	pthread_rwlock_unlock(&a->spans_lock);
	a->reserved -= sp->size;
	sp->dying = 1;
	sp->next = a->dying;
	a->dying = sp;
	pthread_cond_signal(&a->wake);
}

/* Unlink sp from the list of released spans. */
static void unlink_dying(kv_alloc_t *a, struct kv_span *sp)
{
	struct kv_span **pp = &a->dying;

	while (*pp != sp)
		pp = &(*pp)->next;
	*pp = sp->next;
}

/*
 * Unmap the pages of one released span into the dirty pool and free its
 * range, the lock dropped for the driver work. Lock held on entry and exit.
 * The span stays on the list, marked, while this runs (other reapers pass
 * it by); a span whose unmap fails stays for the next round. Returns 0 or
 * the first driver error.
 */
static int reap_one(kv_alloc_t *a, struct kv_span *sp)
{
	uint32_t p, n, done, *slots;
	int e, rc, later;

	slots = malloc((sp->busy ? sp->busy : 1) * sizeof(*slots));
	if (!slots)
		return KVSHIM_ENOMEM;
	for (n = 0, p = 0; p < sp->npages; p++)
		if (sp->slot[p] < KV_MARK)
			slots[n++] = sp->slot[p];
	sp->reaping = 1;
	pthread_mutex_unlock(&a->lock);
	done = kv_span_unmap_slots(a, slots, n, &e, &later);
	pthread_mutex_lock(&a->lock);
	for (p = 0; p < done; p++)
		kv_slot_detach(a, slots[p], KV_P_DIRTY);
	if (done)
		pthread_cond_signal(&a->wake);  /* pages to scrub */
	free(slots);
	pthread_cond_broadcast(&a->done);
	if (e || later) {
		/* the span stays for a later round (after the capture) */
		sp->reaping = 0;
		return e;
	}
	unlink_dying(a, sp);
	pthread_mutex_unlock(&a->lock);
	rc = kv_prim_unreserve(&a->prim, sp->base, sp->size);
	pthread_mutex_lock(&a->lock);
	span_free(sp);
	return rc;
}

/*
 * Unmap the pages of every released span no other thread is reaping.
 * Lock held on entry and exit. Returns 0 or the first driver error.
 */
int kv_spans_reap(kv_alloc_t *a)
{
	struct kv_span *sp;
	int rc = 0, e;

	/* while a stream captures, the spans wait for its end (the hooks
	 * wake the worker then) */
	while (!kv_prim_capturing()) {
		for (sp = a->dying; sp && sp->reaping; sp = sp->next)
			;
		if (!sp)
			return rc;
		e = reap_one(a, sp);
		if (e && !rc)
			rc = e;
		if (e)
			return rc;  /* the span stays; try again next round */
	}
	return rc;
}

int kv_alloc_release(kv_alloc_t *a, CUdeviceptr base)
{
	struct kv_span *sp;
	int rc, pushed;

	if (!a)
		return KVSHIM_EINVAL;
	rc = kv_prim_hold(&a->prim, &pushed);
	if (rc)
		return rc;
	pthread_mutex_lock(&a->lock);
	for (;;) {
		sp = kv_span_find(a, base);
		if (!sp || sp->base != base) {
			rc = KVSHIM_ERANGE;
			break;
		}
		/* (not while a map backs or claims some of its pages: a
		 * pending page is one only a map in flight leaves, with the
		 * lock dropped) */
		if (!sp->busy && !kv_span_in_flight(a, sp)) {
			retire(a, sp);
			/* without a worker, the caller does the unmapping; a
			 * driver failure there (logged) leaves the pages to
			 * the next reap, and the span is released all the
			 * same: reported, the caller would retry a release
			 * that finds no span, or pass the pointer on to the
			 * driver's free */
			if (!a->worker_alive)
				(void)kv_spans_reap(a);
			break;
		}
		pthread_cond_wait(&a->done, &a->lock);
	}
	if (rc == 0 && a->share)
		kv_share_note(a->share, (uint64_t)a->n[KV_P_CACHED] * a->page,
			      (uint64_t)kv_pooled(a) * a->page);
	KV_DEBUG_CHECK_LOCKED(a);
	pthread_mutex_unlock(&a->lock);
	kv_prim_unhold(pushed);
	return rc;
}

int kv_alloc_find(kv_alloc_t *a, CUdeviceptr addr, CUdeviceptr *base,
		  size_t *size)
{
	return kv_alloc_span(a, addr, base, size, NULL);
}

int kv_alloc_span(kv_alloc_t *a, CUdeviceptr addr, CUdeviceptr *base,
		  size_t *size, uint64_t *id)
{
	struct kv_span *sp;

	if (!a)
		return KVSHIM_EINVAL;
	/* (not under lock: see spans_lock) */
	pthread_rwlock_rdlock(&a->spans_lock);
	sp = kv_span_find(a, addr);
	if (sp) {
		if (base)
			*base = sp->base;
		if (size)
			*size = sp->size;
		if (id)
			*id = sp->id;
	}
	pthread_rwlock_unlock(&a->spans_lock);
	return sp ? 0 : KVSHIM_ERANGE;
}

int kv_alloc_claims(kv_alloc_t *a, CUdeviceptr addr)
{
	struct kv_span *sp;
	int n = KVSHIM_ERANGE;

	if (!a)
		return KVSHIM_EINVAL;
	pthread_mutex_lock(&a->lock);
	sp = kv_span_find(a, addr);
	if (sp) {
		uint32_t c = sp->claims[(addr - sp->base) / a->page];

		n = c > INT32_MAX ? INT32_MAX : (int)c;
	}
	pthread_mutex_unlock(&a->lock);
	return n;
}

int kv_alloc_debug_claims(kv_alloc_t *a, CUdeviceptr addr, uint32_t claims)
{
	struct kv_span *sp;
	uint32_t p;
	int rc = KVSHIM_ERANGE;

	if (!a)
		return KVSHIM_EINVAL;
	pthread_mutex_lock(&a->lock);
	sp = kv_span_find(a, addr);
	if (sp) {
		p = (uint32_t)((addr - sp->base) / a->page);
		rc = KVSHIM_EINVAL;
		if (sp->slot[p] < KV_MARK &&
		    a->phys[sp->slot[p]].state == KV_P_MAPPED && sp->claims[p] &&
		    claims && claims <= KV_CLAIMS_MAX) {
			sp->claims[p] = claims;
			rc = 0;
		}
	}
	pthread_mutex_unlock(&a->lock);
	return rc;
}

/* ---- unmapping pages out of spans ---------------------------------------------------- */

int kv_span_cmp_place(const void *x, const void *y, void *arg)
{
	const kv_alloc_t *a = arg;
	const struct kv_phys *p = &a->phys[*(const uint32_t *)x];
	const struct kv_phys *q = &a->phys[*(const uint32_t *)y];

	if (p->span != q->span)
		return p->span->base < q->span->base ? -1 : 1;
	return (p->vpage > q->vpage) - (p->vpage < q->vpage);
}

/* Kernels queued before t0 are done: fenced_ns, which only grows, says so. */
static void fenced_since(kv_alloc_t *a, uint64_t t0)
{
	uint64_t seen = __atomic_load_n(&a->fenced_ns, __ATOMIC_ACQUIRE);

	while (seen < t0 &&
	       !__atomic_compare_exchange_n(&a->fenced_ns, &seen, t0, 0,
					    __ATOMIC_RELEASE, __ATOMIC_ACQUIRE))
		;
}

/*
 * Kernels queued before the engine let go of a page may still read it, and
 * the driver's unmap does not wait for them: wait for the device (once for
 * all pages let go of since the last wait). A failed fence (a context
 * already broken) is logged, and the pages leave all the same. Returns 1
 * when the pages may be unmapped, 0 when a fence is needed but a stream
 * capture forbids it now.
 */
static int fence(kv_alloc_t *a, const uint32_t *slots, uint32_t n,
		 uint64_t t0)
{
	uint64_t newest = 0, seen;
	uint32_t i;
	int fenced;

	for (i = 0; i < n; i++)
		if (a->phys[slots[i]].idle_ns > newest)
			newest = a->phys[slots[i]].idle_ns;
	seen = __atomic_load_n(&a->fenced_ns, __ATOMIC_ACQUIRE);
	if (newest < seen)
		return 1;
	if (kv_prim_fence(&a->prim, &fenced))
		return 1;
	if (!fenced)
		return 0;
	fenced_since(a, t0);
	return 1;
}

int kv_cache_fence_due(const kv_alloc_t *a, uint32_t n)
{
	uint64_t seen = __atomic_load_n(&a->fenced_ns, __ATOMIC_ACQUIRE);
	uint32_t s, k;

	for (k = 0, s = kv_list_first(&a->cache); k < n && s != KV_NIL;
	     k++, s = a->phys[s].next)
		if (a->phys[s].idle_ns >= seen)
			return 1;
	return 0;
}

void kv_cache_prefence(kv_alloc_t *a)
{
	uint64_t t0 = kv_prim_now_ns();
	int fenced;

	/* (a failed fence is logged; the reclaim then tries its own) */
	if (!kv_prim_fence(&a->prim, &fenced) && fenced)
		fenced_since(a, t0);
}

/*
 * Unmap the span pages held by slots[0..n) (in flight, owned by the
 * caller), after a fence, one driver call per run of consecutive pages of
 * one span. The lock may or may not be held: such slots and their spans
 * stay put either way. Reorders slots so the pages unmapped come first.
 * Returns how many were unmapped; *rc gets the first driver error, or 0;
 * *later, if not NULL, is set when a stream capture put the whole unmap
 * off (then nothing was unmapped).
 */
uint32_t kv_span_unmap_slots(kv_alloc_t *a, uint32_t *slots, uint32_t n,
			     int *rc, int *later)
{
	uint64_t t0 = kv_prim_now_ns();
	uint32_t i, len, done = 0;
	int e;

	*rc = 0;
	if (later)
		*later = 0;
	if (!n)
		return 0;
	if (!fence(a, slots, n, t0)) {
		if (later)
			*later = 1;
		return 0;
	}
	qsort_r(slots, n, sizeof(*slots), kv_span_cmp_place, a);
	for (i = 0; i < n; i += len) {
		const struct kv_phys *p = &a->phys[slots[i]];

		for (len = 1; i + len < n; len++) {
			const struct kv_phys *q = &a->phys[slots[i + len]];

			if (q->span != p->span || q->vpage != p->vpage + len)
				break;
		}
		e = kv_prim_unmap(&a->prim, kv_span_va(a, p->span, p->vpage),
				  (size_t)len * a->page);
		if (e) {
			uint32_t j;

			if (!*rc)
				*rc = e;
			for (j = 0; j < len; j++)
				a->phys[slots[i + j]].failed = 1;
			continue;
		}
		done += len;
	}
	if (done < n)
		kv_slots_failed_last(a, slots, n);
	KV_COUNT(a, pages_unmapped, done);
	KV_COUNT(a, unmap_ns, kv_prim_now_ns() - t0);
	return done;
}

/* Up to n cached pages, oldest first, into slots, UNMAPPING. Returns how
 * many. */
static uint32_t take_cached(kv_alloc_t *a, uint32_t n, uint32_t *slots)
{
	uint32_t k;

	for (k = 0; k < n && a->n[KV_P_CACHED]; k++) {
		slots[k] = kv_list_first(&a->cache);
		kv_slot_move(a, slots[k], KV_P_UNMAPPING);
	}
	return k;
}

/*
 * Unmap up to n cached pages, oldest first, with the lock held throughout
 * (this runs only when a map finds the pool and the limit exhausted), into
 * slots, TAKEN and unscrubbed. Pages the driver would not unmap stay
 * cached. *got gets the pages taken. Returns 0 or the driver's error.
 */
int kv_cache_reclaim(kv_alloc_t *a, uint32_t n, uint32_t *slots,
		     uint32_t *got)
{
	uint32_t k, i;
	int rc;

	k = take_cached(a, n, slots);
	*got = kv_span_unmap_slots(a, slots, k, &rc, NULL);
	for (i = 0; i < k; i++)
		if (i < *got)
			kv_slot_detach(a, slots[i], KV_P_TAKEN);
		else
			kv_slot_move(a, slots[i], KV_P_CACHED);
	return rc;
}

/*
 * Unmap up to n cached pages, oldest first, with the lock dropped for the
 * driver work; then release them (release) or pool them for reuse. Lock held
 * on entry and exit. *done gets the pages unmapped. Returns 0 or the first
 * driver error.
 */
int kv_cache_trim(kv_alloc_t *a, uint32_t n, int release, uint32_t *done)
{
	uint32_t k, i, *slots;
	int rc, e;

	*done = 0;
	if (n > a->n[KV_P_CACHED])
		n = a->n[KV_P_CACHED];
	if (!n)
		return 0;
	slots = malloc(n * sizeof(*slots));
	if (!slots)
		return KVSHIM_ENOMEM;
	k = take_cached(a, n, slots);
	pthread_mutex_unlock(&a->lock);
	*done = kv_span_unmap_slots(a, slots, k, &rc, NULL);
	pthread_mutex_lock(&a->lock);
	/* pages left mapped go back to the cache: nothing claims a page in
	 * flight (a map waits for it) */
	for (i = *done; i < k; i++)
		kv_slot_move(a, slots[i], KV_P_CACHED);
	for (i = 0; i < *done; i++)
		kv_slot_detach(a, slots[i], release ? KV_P_FREEING : KV_P_DIRTY);
	if (release) {
		e = kv_pool_free(a, slots, *done, done);
		if (!rc)
			rc = e;
	} else if (*done) {
		pthread_cond_signal(&a->wake);
	}
	pthread_cond_broadcast(&a->done);
	free(slots);
	return rc;
}

int kv_alloc_trim(kv_alloc_t *a, size_t bytes, size_t *freed)
{
	uint64_t want;
	uint32_t pool_freed = 0, cache_freed = 0, pooled;
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
	rc = kv_spans_reap(a);
	pooled = a->n[KV_P_CLEAN] + a->n[KV_P_DIRTY];
	if (!rc)
		rc = kv_pool_shrink(a, pooled > want ? pooled - (uint32_t)want : 0,
				    &pool_freed);
	if (!rc && want > pool_freed)
		rc2 = kv_cache_trim(a, (uint32_t)(want - pool_freed), 1,
				    &cache_freed);
	KV_DEBUG_CHECK_LOCKED(a);
	pthread_mutex_unlock(&a->lock);
	if (freed)
		*freed = (size_t)(pool_freed + cache_freed) * a->page;
	return rc ? rc : rc2;
}

/*
 * Release every span, at shutdown, the worker stopped. Lock not held.
 * Every released span's unmap is tried, and a failed one once more, so
 * that a passing fault costs nothing at exit. Pages a span still maps
 * after that are left, with their handles and the span's range (a handle
 * released while mapped is never freed, and a range cannot be freed with
 * mappings in it), said once. The spans' bookkeeping goes; their slots
 * stay DYING, in no span (only kv_pool_fini looks at them after this, and
 * keeps the arena, which maps them too).
 */
void kv_spans_fini(kv_alloc_t *a)
{
	struct kv_span *sp, *next;
	uint32_t p, left = 0;
	int tries;

	pthread_mutex_lock(&a->lock);
	while (a->nspans)
		retire(a, a->spans[a->nspans - 1]);
	/* (reap_one, not kv_spans_reap, which stops at the first failure
	 * and does nothing while a stream captures; a span whose fence a
	 * capture puts off is left as one the driver refused) */
	for (tries = 0; tries < 2; tries++)
		for (sp = a->dying; sp; sp = next) {
			next = sp->next;
			(void)reap_one(a, sp);
		}
	while ((sp = a->dying)) {
		for (p = 0; p < sp->npages; p++)
			if (sp->slot[p] < KV_MARK) {
				a->phys[sp->slot[p]].span = NULL;
				left++;
			}
		a->dying = sp->next;
		span_free(sp);
	}
	pthread_rwlock_wrlock(&a->spans_lock);
	free(a->spans);
	a->spans = NULL;
	a->cap = 0;
	pthread_rwlock_unlock(&a->spans_lock);
	pthread_mutex_unlock(&a->lock);
	if (left)
		kv_error("%u span pages still mapped at exit: left with their handles and their spans' ranges",
			 left);
}
