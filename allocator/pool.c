/*
 * pool.c - physical pages: the pool of ready pages, their creation,
 * scrubbing and release, and the supply of pages to a map.
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

static CUdeviceptr arena_va(const kv_alloc_t *a, uint32_t s)
{
	return a->arena + (CUdeviceptr)s * a->page;
}

/* ---- driver work on slots the caller owns (TAKEN or in flight) ------------- */

/* Make slot s's handle, counted in a->made once the driver has it (see
 * kv_alloc_driver_free). Returns 0 or the driver's error. */
static int make_handle(kv_alloc_t *a, uint32_t s)
{
	int rc = kv_prim_create(&a->prim, &a->phys[s].h);

	if (!rc)
		__atomic_add_fetch(&a->made, 1, __ATOMIC_RELEASE);
	return rc;
}

/* Release slot s's handle, uncounted first (a->made may be short of the
 * driver's count, never over it). Returns 0 or the driver's error; the
 * slot has no handle either way. */
static int drop_handle(kv_alloc_t *a, uint32_t s)
{
	int rc;

	__atomic_sub_fetch(&a->made, 1, __ATOMIC_RELEASE);
	rc = kv_prim_release(&a->prim, a->phys[s].h);
	a->phys[s].h = 0;
	return rc;
}

/*
 * Create a handle for each of slots[0..n) and, with zeroing on, map it into
 * the arena with access granted per contiguous run. Stops creating at the
 * first failure; a run whose map or access fails is undone, and its slots
 * are moved to the end of slots with no handle. The pages of such a run
 * that the arena still maps (its undo's unmap failed) keep their handles,
 * as in release_slots, and are counted among the pages made: released,
 * they would never be freed while mapped, and their arena addresses would
 * stay taken, failing every later creation of those slots. They are given
 * access again; where the driver refuses that too, they are marked
 * noaccess, and scrub_slots grants it before it writes (a write without
 * access is an illegal address, which breaks a GPU's context). Returns the
 * number of pages made (the first ones of slots; the caller scrubs them
 * before use) and stores the first error in *rc.
 */
static uint32_t create_slots(kv_alloc_t *a, uint32_t *slots, uint32_t n,
			     int *rc)
{
	uint64_t t0 = kv_prim_now_ns();
	uint32_t i, k, len, ok, keep;
	int err = 0, e;

	for (k = 0; k < n; k++) {
		err = make_handle(a, slots[k]);
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
		keep = 0;
		if (mapped && kv_prim_unmap(&a->prim, arena_va(a, slots[i]),
					    (size_t)mapped * a->page)) {
			/* a later release unmaps them again; till then a
			 * scrub must reach them */
			keep = mapped;
			if (kv_prim_access(&a->prim, arena_va(a, slots[i]),
					   (size_t)keep * a->page)) {
				kv_error("arena pages at 0x%llx left mapped without access: granted before a scrub",
					 (unsigned long long)arena_va(a, slots[i]));
				for (j = 0; j < keep; j++)
					a->phys[slots[i + j]].noaccess = 1;
			}
		}
		for (j = keep; j < len; j++) {
			drop_handle(a, slots[i + j]);
			a->phys[slots[i + j]].failed = 1;
		}
		ok -= len - keep;
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
 * consecutive slots, granting access first to a page that has none
 * (create_slots). Sorts slots. Returns 0 or the driver's error.
 */
static int scrub_slots(kv_alloc_t *a, uint32_t *slots, uint32_t n)
{
	uint64_t t0;
	uint32_t i, j, len;
	int rc = 0;

	if (!a->o.zero || n == 0)
		return 0;
	t0 = kv_prim_now_ns();
	qsort(slots, n, sizeof(*slots), cmp_slot);
	for (i = 0; i < n && !rc; i += len) {
		len = run_len(slots, i, n);
		for (j = i; j < i + len && !rc; j++) {
			if (!a->phys[slots[j]].noaccess)
				continue;
			rc = kv_prim_access(&a->prim, arena_va(a, slots[j]), a->page);
			if (!rc)
				a->phys[slots[j]].noaccess = 0;
		}
		if (!rc)
			rc = kv_prim_zero(&a->prim, arena_va(a, slots[i]),
					  (size_t)len * a->page);
	}
	if (!rc)
		KV_COUNT(a, pages_zeroed, n);
	KV_COUNT(a, zero_ns, kv_prim_now_ns() - t0);
	return rc;
}

/*
 * Give pages slots[0..n) back to the driver. A run the arena still maps
 * (its unmap failed) keeps its handles: released, they would never be
 * freed while mapped, and the arena's address would stay taken, failing
 * every later creation of those slots. Reorders slots: those released
 * first, *released of them, then the runs kept (whole pages the caller
 * keeps in the pool). Every other handle is released even when a step
 * fails. Returns 0 or the first driver error.
 */
static int release_slots(kv_alloc_t *a, uint32_t *slots, uint32_t n,
			 uint32_t *released)
{
	uint64_t t0 = kv_prim_now_ns();
	uint32_t i, j, len, out = n;
	int rc = 0, e;

	if (a->o.zero) {
		qsort(slots, n, sizeof(*slots), cmp_slot);
		for (i = 0; i < n; i += len) {
			len = run_len(slots, i, n);
			e = kv_prim_unmap(&a->prim, arena_va(a, slots[i]),
					  (size_t)len * a->page);
			if (!e)
				continue;
			if (!rc)
				rc = e;
			for (j = 0; j < len; j++)
				a->phys[slots[i + j]].failed = 1;
		}
		if (rc)
			out = kv_slots_failed_last(a, slots, n);
	}
	for (i = 0; i < out; i++) {
		e = drop_handle(a, slots[i]);
		if (e && !rc)
			rc = e;
	}
	KV_COUNT(a, pages_released, out);
	KV_COUNT(a, release_ns, kv_prim_now_ns() - t0);
	*released = out;
	return rc;
}

/* ---- taking and giving slots, lock held ---------------------------------------- */

/*
 * Take up to n EMPTY slots into state to (TAKEN or FILLING). With a shared
 * budget, as many as it grants (halving the ask until it does), its
 * answers in *said. need: the pages the whole map needs, its own pooled
 * and cached ones too (what it waits for when refused).
 * spare: pages for the pool, which must never make other processes trim.
 * Returns how many slots[] got.
 */
static uint32_t claim_empty(kv_alloc_t *a, uint32_t n, uint32_t need, uint32_t *slots,
			    int spare, enum kv_pstate to, struct kv_said *said)
{
	uint32_t k;
	int rc;

	*said = (struct kv_said){ 0 };
	while (a->share && n) {
		rc = spare ? kv_share_take_spare(a->share, (uint64_t)n * a->page)
			   : kv_share_take(a->share, (uint64_t)n * a->page,
					   (uint64_t)need * a->page);
		if (rc == 0)
			break;
		said->last = rc;
		said->used |= rc == KV_SHARE_WAIT_USED;
		n /= 2;
	}
	for (k = 0; k < n; k++) {
		slots[k] = kv_list_first(&a->empty);
		if (slots[k] == KV_NIL)
			break;
		kv_slot_move(a, slots[k], to);
	}
	if (a->share && k < n)
		kv_share_give(a->share, (uint64_t)(n - k) * a->page);
	return k;
}

/* Slots with no handle any more back to EMPTY, their budget given back. */
static void put_empty(kv_alloc_t *a, const uint32_t *slots, uint32_t n)
{
	uint32_t i;

	for (i = 0; i < n; i++)
		kv_slot_move(a, slots[i], KV_P_EMPTY);
	if (a->share && n)
		kv_share_give(a->share, (uint64_t)n * a->page);
}

void kv_pool_put(kv_alloc_t *a, const uint32_t *slots, uint32_t n, int dirty)
{
	int d = dirty && a->o.zero;
	uint32_t i;

	for (i = 0; i < n; i++)
		kv_slot_move(a, slots[i], d ? KV_P_DIRTY : KV_P_CLEAN);
	if (d && n)
		pthread_cond_signal(&a->wake);
}

/* n slots off the head of list l into state to. */
static void take_list(kv_alloc_t *a, struct kv_list *l, uint32_t n,
		      uint32_t *slots, enum kv_pstate to)
{
	uint32_t i;

	for (i = 0; i < n; i++) {
		slots[i] = kv_list_first(l);
		kv_slot_move(a, slots[i], to);
	}
}

/* ---- the map path's supply ----------------------------------------------------- */

/*
 * A map is short of pages: whether to wait, to ask again, or to fail, in
 * one place. t: its take (the slots it holds TAKEN itself, t->n, and the
 * shared budget's answers). reclaim_err is a driver failure met unmapping
 * cached pages.
 */
static enum kv_supply short_of_pages(kv_alloc_t *a, const struct kv_take *t, int oom,
				     int reclaim_err, int *err)
{
	/* pages on their way back (a released span's, being scrubbed or
	 * trimmed) still count against the device and the budgets; so do
	 * those another map makes and maps with the lock dropped, which come
	 * back if the driver fails it (the map waits for its end, as it did
	 * when that map held the lock) */
	if (a->n[KV_P_FILLING] || a->n[KV_P_UNMAPPING] || a->n[KV_P_FREEING] ||
	    a->n[KV_P_TAKEN] > t->n || kv_dying_back(a))
		return KV_SUPPLY_WAIT;
	if (reclaim_err) {
		*err = reclaim_err;
		return KV_SUPPLY_FAILED;
	}
	if (t->said.last == KV_SHARE_WAIT || t->said.last == KV_SHARE_WAIT_USED)
		return KV_SUPPLY_ASK;
	*err = oom ? KVSHIM_ENOMEM : KVSHIM_ELIMIT;
	return KV_SUPPLY_FAILED;
}

static enum kv_supply reclaim_rest(kv_alloc_t *a, uint32_t n, uint32_t *slots,
				   struct kv_take *t, int oom, int defer_fence, int *err);

/*
 * Gather n pages for a map into slots, TAKEN, lock held: from the pool,
 * then new handles while the limit allows, then this allocator's cached
 * pages elsewhere (the map has claimed its own ranges' pages, so none of
 * those is taken: also counts them). Refused by the shared budget, the map
 * waits for all it needs, n and also (its own pages count in it, as in an
 * engine's stated demand: fair.h). The new handles are only claimed, and
 * nothing is scrubbed: the map does both with the lock dropped
 * (kv_pool_ready), as *t says. Returns KV_SUPPLY_DONE, WAIT or ASK with
 * nothing taken; FENCE with nothing taken where defer_fence and the cached
 * pages it would reclaim need a fence; or FAILED with *err set
 * (KVSHIM_ELIMIT or a driver error) and every gathered page back in the
 * pool.
 */
enum kv_supply kv_pool_take(kv_alloc_t *a, uint32_t n, uint32_t also, uint32_t *slots,
			    int defer_fence, struct kv_take *t, int *err)
{
	uint32_t got, k;
	uint64_t avail;

	*err = 0;
	*t = (struct kv_take){ .n = 0 };
	avail = (uint64_t)a->n[KV_P_CLEAN] + a->n[KV_P_DIRTY] +
		a->n[KV_P_EMPTY] + a->n[KV_P_CACHED];
	if (n > avail)
		return short_of_pages(a, t, 0, 0, err);

	got = n < a->n[KV_P_CLEAN] ? n : a->n[KV_P_CLEAN];
	take_list(a, &a->clean, got, slots, KV_P_TAKEN);
	t->dirty_from = got;
	k = n - got < a->n[KV_P_DIRTY] ? n - got : a->n[KV_P_DIRTY];
	take_list(a, &a->dirty, k, slots + got, KV_P_TAKEN);
	got += k;
	t->make_from = got;
	if (got < n && a->n[KV_P_EMPTY]) {
		k = n - got < a->n[KV_P_EMPTY] ? n - got : a->n[KV_P_EMPTY];
		t->nmake = claim_empty(a, k, n + also, slots + got, 0, KV_P_TAKEN,
				       &t->said);
		got += t->nmake;
	}
	t->n = got;
	return got < n ? reclaim_rest(a, n, slots, t, 0, defer_fence, err) :
			 KV_SUPPLY_DONE;
}

/*
 * The rest of a take, lock held: slots[0..t->n) are taken, n are needed;
 * the cached pages make up the difference, or every slot goes back (see
 * kv_pool_take). oom: the driver refused to make one of them.
 */
static enum kv_supply reclaim_rest(kv_alloc_t *a, uint32_t n, uint32_t *slots,
				   struct kv_take *t, int oom, int defer_fence, int *err)
{
	enum kv_supply out;
	uint32_t k;
	int rc;

	/* a fence the cached pages need waits for the device's queued work:
	 * not with the lock held, which every call of the process's threads
	 * would wait on (an engine's look-ups, headroom, its own maps), but
	 * by the caller with it dropped */
	if (defer_fence && kv_cache_fence_due(a, n - t->n)) {
		kv_pool_unready(a, slots, t);
		return KV_SUPPLY_FENCE;
	}
	rc = kv_cache_reclaim(a, n - t->n, slots + t->n, &k);
	t->n += k;
	if (t->n == n)
		return KV_SUPPLY_DONE;
	out = short_of_pages(a, t, oom, rc, err);
	kv_pool_unready(a, slots, t);
	return out;
}

int kv_pool_ready(kv_alloc_t *a, uint32_t *slots, struct kv_take *t)
{
	int rc = 0;

	t->made = t->nmake ? create_slots(a, slots + t->make_from, t->nmake, &rc) : 0;
	if (rc)
		return rc;
	/* everything from dirty_from on may hold old bytes */
	return scrub_slots(a, slots + t->dirty_from, t->n - t->dirty_from);
}

enum kv_supply kv_pool_made_short(kv_alloc_t *a, uint32_t *slots, struct kv_take *t,
				  int defer_fence, int *err)
{
	uint32_t n = t->n, from = t->make_from + t->made, end = t->make_from + t->nmake;
	enum kv_supply out;
	int rc;

	if (t->may_retry && a->supplied != t->supplied) {
		kv_pool_unready(a, slots, t);
		return KV_SUPPLY_RETRY;
	}
	/* the slots never made back to EMPTY, the reclaimed ones after the
	 * made ones: the take is then whole but for them */
	put_empty(a, slots + from, end - from);
	memmove(slots + from, slots + end, (n - end) * sizeof(*slots));
	t->n -= end - from;
	t->nmake = t->made;
	out = reclaim_rest(a, n, slots, t, 1, defer_fence, err);
	if (out != KV_SUPPLY_DONE)
		return out;
	rc = scrub_slots(a, slots + t->dirty_from, t->n - t->dirty_from);
	if (!rc)
		return KV_SUPPLY_DONE;
	*err = rc;
	kv_pool_unready(a, slots, t);
	return KV_SUPPLY_FAILED;
}

void kv_pool_unready(kv_alloc_t *a, const uint32_t *slots, const struct kv_take *t)
{
	uint32_t from = t->make_from + t->made, end = t->make_from + t->nmake;

	kv_pool_put(a, slots, t->dirty_from, 0);
	kv_pool_put(a, slots + t->dirty_from, from - t->dirty_from, 1);
	put_empty(a, slots + from, end - from);
	kv_pool_put(a, slots + end, t->n - end, 1);
}

/* ---- the worker's duties: lock held on entry and exit, dropped for the driver */

/* The pages a refill makes at once (alloc_int.h). */
#define KV_FILL_BATCH 8

int kv_pool_refill(kv_alloc_t *a)
{
	uint32_t low, high, n, k, slots[KV_FILL_BATCH];
	struct kv_said said;
	int rc = 0, bad;

	kv_pool_marks(a, &low, &high);
	if (kv_pooled(a) >= low || !a->n[KV_P_EMPTY] || kv_pooled(a) >= high)
		return 0;
	while (!rc && kv_pooled(a) < high && a->n[KV_P_EMPTY] && !kv_prim_capturing()) {
		n = high - kv_pooled(a);
		if (n > a->n[KV_P_EMPTY])
			n = a->n[KV_P_EMPTY];
		if (n > KV_FILL_BATCH)
			n = KV_FILL_BATCH;
		n = claim_empty(a, n, n, slots, 1, KV_P_FILLING, &said);
		if (!n)
			break;
		pthread_mutex_unlock(&a->lock);
		k = create_slots(a, slots, n, &rc);
		/* unscrubbed pages go in dirty; a later round scrubs them */
		bad = scrub_slots(a, slots, k) != 0;
		pthread_mutex_lock(&a->lock);
		kv_pool_put(a, slots, k, bad);
		put_empty(a, slots + k, n - k);
		pthread_cond_broadcast(&a->done);
		if (k < n || bad)
			break;
	}
	return rc;
}

int kv_pool_scrub(kv_alloc_t *a)
{
	uint32_t slots[64], n;
	int rc;

	n = a->n[KV_P_DIRTY] < 64 ? a->n[KV_P_DIRTY] : 64;
	if (!n)
		return 0;
	take_list(a, &a->dirty, n, slots, KV_P_FILLING);
	pthread_mutex_unlock(&a->lock);
	rc = scrub_slots(a, slots, n);
	pthread_mutex_lock(&a->lock);
	kv_pool_put(a, slots, n, rc != 0);
	pthread_cond_broadcast(&a->done);
	return rc;
}

int kv_pool_free(kv_alloc_t *a, uint32_t *slots, uint32_t n, uint32_t *released)
{
	int rc;

	*released = 0;
	if (!n)
		return 0;
	pthread_mutex_unlock(&a->lock);
	rc = release_slots(a, slots, n, released);
	pthread_mutex_lock(&a->lock);
	put_empty(a, slots, *released);
	/* those the arena still maps stay pooled, to be scrubbed (and freed
	 * at a later try) */
	kv_pool_put(a, slots + *released, n - *released, 1);
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
	uint32_t n, d, *slots;
	int rc;

	*freed = 0;
	n = a->n[KV_P_CLEAN] + a->n[KV_P_DIRTY];
	if (n <= keep)
		return 0;
	n -= keep;
	slots = malloc(n * sizeof(*slots));
	if (!slots)
		return KVSHIM_ENOMEM;
	d = n < a->n[KV_P_DIRTY] ? n : a->n[KV_P_DIRTY];
	take_list(a, &a->dirty, d, slots, KV_P_FREEING);
	take_list(a, &a->clean, n - d, slots + d, KV_P_FREEING);
	rc = kv_pool_free(a, slots, n, freed);
	free(slots);
	return rc;
}

/* ---- set-up ------------------------------------------------------------------- */

int kv_pool_init(kv_alloc_t *a)
{
	int rc;

	rc = kv_slots_init(a);
	if (rc)
		return rc;
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

/*
 * The worker is stopped and the spans are gone: every page is pooled, but
 * for those a span still maps (kv_spans_fini left them, DYING). Pages whose
 * arena unmap fails keep their handles (release_slots); such a failure, in
 * an earlier round or in the first release here, gets one more try, so
 * that a passing fault costs nothing at exit. Pages the arena still maps
 * after it are left, handles and arena with them (a handle released while
 * mapped is never freed, and the arena cannot be freed with mappings in
 * it), said once. Where a span's pages were left (kv_spans_fini says so),
 * the arena, which maps them too, is left as well.
 */
void kv_pool_fini(kv_alloc_t *a)
{
	uint32_t freed, left, held;
	int tries;

	if (!a->phys)
		return;
	pthread_mutex_lock(&a->lock);
	for (tries = 0; tries < 2; tries++) {
		kv_pool_shrink(a, 0, &freed);
		if (!kv_pooled(a))
			break;
	}
	left = kv_pooled(a);
	held = kv_held(a);
	pthread_mutex_unlock(&a->lock);
	if (left)
		kv_error("%u pool pages still mapped in the arena at exit: left with their handles",
			 left);
	if (!held && a->arena)
		kv_prim_unreserve(&a->prim, a->arena,
				  (size_t)a->max_pages * a->page);
	free(a->phys);
	a->phys = NULL;
}
