/*
 * pool.c - physical pages: the slot table, the pool of ready pages, their
 * creation, scrubbing and release.
 *
 * With zeroing on, each page is mapped once into a private arena when it is
 * created and stays mapped there until it is released. Scrubbing a page that
 * comes back from a span is then one memset through the arena, with no map
 * or unmap on anybody's path, and a contiguous run of slots is scrubbed in
 * one call.
 */
#include <stdlib.h>
#include <string.h>

#include "alloc_int.h"
#include "log.h"

/* ---- lists of slots ------------------------------------------------------- */

void kv_list_init(struct kv_list *l)
{
	l->head = l->tail = KV_NIL;
	l->n = 0;
}

void kv_list_push(kv_alloc_t *a, struct kv_list *l, uint32_t s)
{
	struct kv_phys *p = &a->phys[s];

	p->next = KV_NIL;
	p->prev = l->tail;
	if (l->tail != KV_NIL)
		a->phys[l->tail].next = s;
	else
		l->head = s;
	l->tail = s;
	l->n++;
}

void kv_list_remove(kv_alloc_t *a, struct kv_list *l, uint32_t s)
{
	struct kv_phys *p = &a->phys[s];

	if (p->prev != KV_NIL)
		a->phys[p->prev].next = p->next;
	else
		l->head = p->next;
	if (p->next != KV_NIL)
		a->phys[p->next].prev = p->prev;
	else
		l->tail = p->prev;
	p->prev = p->next = KV_NIL;
	l->n--;
}

uint32_t kv_list_pop(kv_alloc_t *a, struct kv_list *l)
{
	uint32_t s = l->head;

	if (s != KV_NIL)
		kv_list_remove(a, l, s);
	return s;
}

static int cmp_slot(const void *x, const void *y)
{
	uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;

	return (a > b) - (a < b);
}

/* Length of the run of consecutive slot numbers starting at slots[i]. */
static uint32_t run_len(const uint32_t *slots, uint32_t i, uint32_t n)
{
	uint32_t j = i + 1;

	while (j < n && slots[j] == slots[j - 1] + 1)
		j++;
	return j - i;
}

uint32_t kv_slots_failed_last(kv_alloc_t *a, uint32_t *slots, uint32_t n)
{
	uint32_t i, j, good = 0, s;

	/* stable, in place: only ever run after a driver failure */
	for (i = 0; i < n; i++) {
		if (a->phys[slots[i]].failed)
			continue;
		s = slots[i];
		for (j = i; j > good; j--)
			slots[j] = slots[j - 1];
		slots[good++] = s;
	}
	for (i = 0; i < n; i++)
		a->phys[slots[i]].failed = 0;
	return good;
}

static CUdeviceptr arena_va(const kv_alloc_t *a, uint32_t s)
{
	return a->arena + (CUdeviceptr)s * a->page;
}

/* ---- driver work on slots that the caller owns (BUSY) ------------------------ */

/*
 * Create a handle for each of slots[0..n) and, with zeroing on, map it into
 * the arena with access granted per contiguous run. Stops at the first
 * failure; the slots that got no usable page are moved to the end of slots
 * in no particular order. Returns the number of pages made ready (the first
 * ones of slots) and stores the first error in *rc.
 */
static uint32_t create_slots(kv_alloc_t *a, uint32_t *slots, uint32_t n,
			     int *rc)
{
	uint64_t t0 = kv_prim_now_ns();
	uint32_t i, k, len, ok;
	int err = 0, e;

	for (k = 0; k < n; k++) {
		err = kv_prim_create(&a->prim, &a->phys[slots[k]].h);
		if (err)
			break;
	}
	qsort(slots, k, sizeof(*slots), cmp_slot);
	ok = k;
	for (i = 0; a->o.zero && i < k; i += len) {
		uint32_t j, mapped;

		e = 0;
		len = run_len(slots, i, k);
		for (mapped = 0; mapped < len; mapped++) {
			e = kv_prim_map(&a->prim, arena_va(a, slots[i + mapped]),
					a->phys[slots[i + mapped]].h);
			if (e)
				break;
		}
		if (!e)
			e = kv_prim_access(&a->prim, arena_va(a, slots[i]),
					   (size_t)len * a->page);
		if (!e)
			continue;
		if (!err)
			err = e;
		if (mapped)
			kv_prim_unmap(&a->prim, arena_va(a, slots[i]),
				      (size_t)mapped * a->page);
		for (j = 0; j < len; j++) {
			kv_prim_release(&a->prim, a->phys[slots[i + j]].h);
			a->phys[slots[i + j]].failed = 1;
		}
		ok -= len;
	}
	/* the pages made ready first; after them the failed ones, then those
	 * never created */
	if (ok < k)
		kv_slots_failed_last(a, slots, k);
	KV_COUNT(a, pages_created, ok);
	KV_COUNT(a, create_ns, kv_prim_now_ns() - t0);
	*rc = err;
	return ok;
}

/*
 * Write zeros over pages slots[0..n) through the arena, one call per run of
 * consecutive slots. Sorts slots. Returns 0 or the driver's error.
 */
static int scrub_slots(kv_alloc_t *a, uint32_t *slots, uint32_t n)
{
	uint64_t t0;
	uint32_t i, len;
	int rc = 0;

	if (!a->o.zero || n == 0)
		return 0;
	t0 = kv_prim_now_ns();
	qsort(slots, n, sizeof(*slots), cmp_slot);
	for (i = 0; i < n && !rc; i += len) {
		len = run_len(slots, i, n);
		rc = kv_prim_zero(&a->prim, arena_va(a, slots[i]),
				  (size_t)len * a->page);
	}
	if (!rc)
		KV_COUNT(a, pages_zeroed, n);
	KV_COUNT(a, zero_ns, kv_prim_now_ns() - t0);
	return rc;
}

/*
 * Give pages slots[0..n) back to the driver. Every handle is released even
 * when a step fails, so no slot is left half-owned. Returns 0 or the first
 * driver error.
 */
static int release_slots(kv_alloc_t *a, uint32_t *slots, uint32_t n)
{
	uint64_t t0 = kv_prim_now_ns();
	uint32_t i, len;
	int rc = 0, e;

	if (a->o.zero) {
		qsort(slots, n, sizeof(*slots), cmp_slot);
		for (i = 0; i < n; i += len) {
			len = run_len(slots, i, n);
			e = kv_prim_unmap(&a->prim, arena_va(a, slots[i]),
					  (size_t)len * a->page);
			if (e && !rc)
				rc = e;
		}
	}
	for (i = 0; i < n; i++) {
		e = kv_prim_release(&a->prim, a->phys[slots[i]].h);
		if (e && !rc)
			rc = e;
		a->phys[slots[i]].h = 0;
	}
	KV_COUNT(a, pages_released, n);
	KV_COUNT(a, release_ns, kv_prim_now_ns() - t0);
	return rc;
}

/* ---- state moves, lock held ------------------------------------------------- */

static void set_state(kv_alloc_t *a, uint32_t s, enum kv_pstate st)
{
	a->phys[s].state = (uint8_t)st;
}

/* Take up to n EMPTY slots, mark them BUSY and count them held. With a
 * shared budget, as many as it grants (halving the ask until it does);
 * its last refusal is left in a->share_said. spare: pages for the pool,
 * which must never make other processes trim. */
static uint32_t claim_empty(kv_alloc_t *a, uint32_t n, uint32_t *slots,
			    int spare)
{
	uint32_t k;
	int rc;

	a->share_said = 0;
	while (a->share && n) {
		rc = spare ? kv_share_take_spare(a->share, (uint64_t)n * a->page)
			   : kv_share_take(a->share, (uint64_t)n * a->page);
		if (rc == 0)
			break;
		a->share_said = rc;
		n /= 2;
	}
	for (k = 0; k < n; k++) {
		slots[k] = kv_list_pop(a, &a->empty);
		if (slots[k] == KV_NIL)
			break;
		set_state(a, slots[k], KV_P_BUSY);
	}
	if (a->share && k < n)
		kv_share_give(a->share, (uint64_t)(n - k) * a->page);
	a->held += k;
	if (a->held > a->peak)
		a->peak = a->held;
	return k;
}

static void put_empty(kv_alloc_t *a, const uint32_t *slots, uint32_t n)
{
	uint32_t i;

	for (i = 0; i < n; i++) {
		a->phys[slots[i]].h = 0;
		set_state(a, slots[i], KV_P_EMPTY);
		kv_list_push(a, &a->empty, slots[i]);
	}
	a->held -= n;
	if (a->share && n)
		kv_share_give(a->share, (uint64_t)n * a->page);
}

void kv_pool_put(kv_alloc_t *a, const uint32_t *slots, uint32_t n, int dirty)
{
	int d = dirty && a->o.zero;
	uint32_t i;

	for (i = 0; i < n; i++) {
		struct kv_phys *p = &a->phys[slots[i]];

		p->span = NULL;
		set_state(a, slots[i], d ? KV_P_DIRTY : KV_P_CLEAN);
		kv_list_push(a, d ? &a->dirty : &a->clean, slots[i]);
	}
	if (d)
		pthread_cond_signal(&a->wake);
}

static uint32_t pooled(const kv_alloc_t *a)
{
	return a->clean.n + a->dirty.n + a->scrubbing;
}

/* ---- the map path's supply ---------------------------------------------------- */

/*
 * Unmap up to n cached pages, oldest first, into the dirty pool. Lock held
 * throughout: this runs only when the pool and the limit are exhausted (the
 * map path has claimed its own ranges' cached pages, so none of those is
 * taken). Returns the pages moved.
 */
static uint32_t reclaim(kv_alloc_t *a, uint32_t n, uint32_t *tmp)
{
	uint32_t s, next, k = 0, done;
	int rc;

	for (s = a->cache.head; s != KV_NIL && k < n; s = next) {
		struct kv_phys *p = &a->phys[s];

		next = p->next;
		kv_list_remove(a, &a->cache, s);
		set_state(a, s, KV_P_BUSY);
		p->span->busy++;
		tmp[k++] = s;
	}
	done = kv_span_unmap_slots(a, tmp, k, &rc);
	kv_span_settle(a, tmp, k, done);
	return done;
}

/*
 * Gather n CLEAN pages for a map into slots, lock held: from the pool, then new handles while the limit allows, then this
 * allocator's cached pages elsewhere. Returns 0 with slots filled; KV_RETRY
 * when only pages in flight (being scrubbed or trimmed) could make up the
 * number; or KVSHIM_ELIMIT / KVSHIM_ENOMEM / a driver error with every
 * gathered page back in the pool.
 */
int kv_pool_take(kv_alloc_t *a, uint32_t n, uint32_t *slots)
{
	uint32_t got = 0, k, m, dirty_from;
	uint32_t *tmp = NULL;
	int rc = 0, oom = 0;
	uint64_t avail;

	a->share_said = 0;
	avail = (uint64_t)a->clean.n + a->dirty.n + (a->max_pages - a->held) +
		a->cache.n;
	if (n > avail)
		return a->scrubbing || a->outbound ? KV_RETRY : KVSHIM_ELIMIT;

	while (got < n && a->clean.n)
		slots[got++] = kv_list_pop(a, &a->clean);
	dirty_from = got;
	while (got < n && a->dirty.n)
		slots[got++] = kv_list_pop(a, &a->dirty);

	if (got < n && a->held < a->max_pages) {
		m = n - got;
		if (m > a->max_pages - a->held)
			m = a->max_pages - a->held;
		m = claim_empty(a, m, slots + got, 0);
		k = create_slots(a, slots + got, m, &rc);
		put_empty(a, slots + got + k, m - k);
		got += k;
		if (rc == KVSHIM_ENOMEM) {
			oom = 1;
			rc = 0;
		}
		if (rc)
			goto fail;
	}
	if (got < n) {
		tmp = malloc((n - got) * sizeof(*tmp));
		if (!tmp) {
			rc = KVSHIM_ENOMEM;
			goto fail;
		}
		k = reclaim(a, n - got, tmp);
		memcpy(slots + got, tmp, k * sizeof(*tmp));
		got += k;
		free(tmp);
		if (got < n) {
			/* pages on their way back (a released span's, being
			 * scrubbed) still count against the device and the
			 * budgets: wait for them before saying no */
			rc = a->outbound || a->scrubbing ? KV_RETRY :
			     oom ? KVSHIM_ENOMEM :
			     a->share_said == KV_SHARE_WAIT ? KV_RETRY_SHARE :
			     KVSHIM_ELIMIT;
			goto fail;
		}
	}
	/* everything from dirty_from on may hold old bytes */
	rc = scrub_slots(a, slots + dirty_from, got - dirty_from);
	if (rc)
		goto fail;
	for (k = 0; k < got; k++)
		set_state(a, slots[k], KV_P_BUSY);
	return 0;
fail:
	kv_pool_put(a, slots, dirty_from, 0);
	kv_pool_put(a, slots + dirty_from, got - dirty_from, 1);
	return rc;
}

/* ---- the worker's duties: lock held on entry and exit, dropped for the driver */

int kv_pool_refill(kv_alloc_t *a)
{
	uint32_t low = (uint32_t)(a->o.pool_low / a->page);
	uint32_t high = (uint32_t)(a->o.pool_high / a->page);
	uint32_t n, k, *slots;
	int rc;

	if (pooled(a) >= low || a->held >= a->max_pages)
		return 0;
	n = high - pooled(a);
	if (n > a->max_pages - a->held)
		n = a->max_pages - a->held;
	slots = malloc(n * sizeof(*slots));
	if (!slots)
		return KVSHIM_ENOMEM;
	n = claim_empty(a, n, slots, 1);
	a->scrubbing += n;
	pthread_mutex_unlock(&a->lock);
	k = create_slots(a, slots, n, &rc);
	if (scrub_slots(a, slots, k) != 0) {
		/* unscrubbed pages stay dirty; the next round scrubs them */
		pthread_mutex_lock(&a->lock);
		a->scrubbing -= n;
		kv_pool_put(a, slots, k, 1);
		goto out;
	}
	pthread_mutex_lock(&a->lock);
	a->scrubbing -= n;
	kv_pool_put(a, slots, k, 0);
out:
	put_empty(a, slots + k, n - k);
	pthread_cond_broadcast(&a->done);
	free(slots);
	return rc;
}

int kv_pool_scrub(kv_alloc_t *a)
{
	uint32_t slots[64], n = 0;
	int rc;

	while (n < 64 && a->dirty.n) {
		slots[n] = kv_list_pop(a, &a->dirty);
		set_state(a, slots[n++], KV_P_BUSY);
	}
	if (!n)
		return 0;
	a->scrubbing += n;
	pthread_mutex_unlock(&a->lock);
	rc = scrub_slots(a, slots, n);
	pthread_mutex_lock(&a->lock);
	a->scrubbing -= n;
	kv_pool_put(a, slots, n, rc != 0);
	pthread_cond_broadcast(&a->done);
	return rc;
}

/*
 * Release pooled pages until at most keep remain, dirty ones first (they
 * would cost a scrub). *freed gets the pages released. Returns 0 or the
 * first driver error.
 */
int kv_pool_shrink(kv_alloc_t *a, uint32_t keep, uint32_t *freed)
{
	uint32_t n = 0, k, *slots;
	int rc;

	*freed = 0;
	if (a->clean.n + a->dirty.n <= keep)
		return 0;
	k = a->clean.n + a->dirty.n - keep;
	slots = malloc(k * sizeof(*slots));
	if (!slots)
		return KVSHIM_ENOMEM;
	while (n < k) {
		slots[n] = kv_list_pop(a, a->dirty.n ? &a->dirty : &a->clean);
		set_state(a, slots[n++], KV_P_BUSY);
	}
	a->outbound += n;
	pthread_mutex_unlock(&a->lock);
	rc = release_slots(a, slots, n);
	pthread_mutex_lock(&a->lock);
	a->outbound -= n;
	put_empty(a, slots, n);
	pthread_cond_broadcast(&a->done);
	free(slots);
	*freed = n;
	return rc;
}

/* Release pages that were unmapped from spans (BUSY), lock held on entry
 * and exit; used by trim. Returns 0 or the first driver error. */
int kv_pool_release_busy(kv_alloc_t *a, uint32_t *slots, uint32_t n)
{
	int rc;

	pthread_mutex_unlock(&a->lock);
	rc = release_slots(a, slots, n);
	pthread_mutex_lock(&a->lock);
	put_empty(a, slots, n);
	pthread_cond_broadcast(&a->done);
	return rc;
}

/* ---- set-up ------------------------------------------------------------------- */

int kv_pool_init(kv_alloc_t *a)
{
	uint32_t s;
	int rc;

	a->phys = calloc(a->max_pages ? a->max_pages : 1, sizeof(*a->phys));
	if (!a->phys)
		return KVSHIM_ENOMEM;
	kv_list_init(&a->empty);
	kv_list_init(&a->clean);
	kv_list_init(&a->dirty);
	kv_list_init(&a->cache);
	for (s = 0; s < a->max_pages; s++) {
		a->phys[s].state = KV_P_EMPTY;
		kv_list_push(a, &a->empty, s);
	}
	if (a->o.zero && a->max_pages) {
		rc = kv_prim_reserve(&a->prim, (size_t)a->max_pages * a->page,
				     &a->arena);
		if (rc) {
			free(a->phys);
			a->phys = NULL;
			return rc;
		}
	}
	return 0;
}

/* Lock not needed: the worker is stopped and the spans are gone. */
void kv_pool_fini(kv_alloc_t *a)
{
	uint32_t freed;

	if (!a->phys)
		return;
	pthread_mutex_lock(&a->lock);
	kv_pool_shrink(a, 0, &freed);
	pthread_mutex_unlock(&a->lock);
	if (a->arena)
		kv_prim_unreserve(&a->prim, a->arena,
				  (size_t)a->max_pages * a->page);
	free(a->phys);
	a->phys = NULL;
}
