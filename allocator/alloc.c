/*
 * alloc.c - the allocator's life cycle, its statistics and the worker
 * thread that keeps the pool between its watermarks, scrubs returned pages
 * and trims the cache down to its cap, all off the engine's path.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc_int.h"
#include "log.h"

/* How long the worker sleeps when nobody wakes it: it wakes anyway to catch
 * up on duties whose signal it could have missed. */
#define KV_WORKER_PERIOD_MS 100
#define KV_SHARE_PERIOD_MS 5
#define KV_SHARE_QUIET_NS (500ull * 1000 * 1000)

void kv_alloc_opts_default(struct kv_alloc_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->device = 0;
	o->limit = 0;
	o->pool_low = 8u << 20;
	o->pool_high = 64u << 20;
	o->cache_max = SIZE_MAX;
	o->zero = 1;
	o->worker = 1;
	o->share_mode = 0600;
	o->weight = 1;
	o->share_wait_ms = 500;
}

size_t kv_alloc_budget(const struct kv_alloc_opts *o, size_t device_bytes)
{
	return o->budget ? o->budget : (size_t)((unsigned __int128)device_bytes *
		(o->budget_pct ? o->budget_pct : 100) / 100);
}

/*
 * Publish this process's figures in the shared segment and give back what
 * other processes asked for: pooled pages first, then cached ones. Lock
 * held on entry and exit.
 */
static int share_duties(kv_alloc_t *a)
{
	uint32_t want, pool, f1 = 0, f2 = 0;
	uint64_t req;
	int rc;

	req = kv_share_update(a->share, (uint64_t)kv_in_spans(a) * a->page,
			      (uint64_t)a->n[KV_P_CACHED] * a->page,
			      (uint64_t)kv_pooled(a) * a->page, a->reserved);
	if (!req)
		return 0;
	/* what is given back must not come straight back into the pool */
	a->share_quiet_until = kv_prim_now_ns() + KV_SHARE_QUIET_NS;
	/* (kv_share_update never asks for what lies under the floor) */
	want = (uint32_t)((req + a->page - 1) / a->page);
	pool = a->n[KV_P_CLEAN] + a->n[KV_P_DIRTY];
	rc = kv_pool_shrink(a, pool > want ? pool - want : 0, &f1);
	if (!rc && f1 < want)
		rc = kv_cache_trim(a, want - f1, 1, &f2);
	kv_share_trimmed(a->share, (uint64_t)(f1 + f2) * a->page);
	kv_debug("share: gave back %u pages on request", f1 + f2);
	return rc;
}

/*
 * One round of duties, lock held on entry and exit: released spans'
 * pages back to the pool, the pool trimmed to its high watermark before
 * anything is scrubbed (dirty pages first, so none is scrubbed only to be
 * released), scrubbing, refilling and the cache cap. Returns 0 or the
 * first error.
 *
 * While a stream of the process captures a CUDA graph, the pool's upkeep
 * (trim, scrub, refill, cache cap) waits for the capture's end, which
 * wakes the worker (kv_shim_capture): the driver's calls it makes would
 * run beside the capture, which is on the engine's path, and slow it
 * (docs/BENCHMARKS.md, session 24: 1.55x to 1.62x with maps and unmaps of
 * a thread back to back, against 1.10x to 1.13x for as many calls without
 * the driver). A batch under way when a capture begins finishes (a refill
 * looks between its batches of pages). No map waits for that upkeep: a
 * map scrubs and creates what it takes, and waits only for pages in
 * flight, whose work is under way. The shared budget's asks are answered
 * all the same (other processes wait on them).
 */
static int duties(kv_alloc_t *a)
{
	uint32_t low, high, freed;
	int rc, first = 0;

	kv_pool_marks(a, &low, &high);  /* (low: the refill's) */
	(void)low;

	if (a->share)
		first = share_duties(a);

	rc = kv_spans_reap(a);
	if (!first)
		first = rc;
	if (kv_prim_capturing()) {
		KV_DEBUG_CHECK_LOCKED(a);
		return first;
	}
	/* a map waiting for pages in flight wants what comes back */
	if (a->n[KV_P_CLEAN] + a->n[KV_P_DIRTY] > high && !a->waiters) {
		rc = kv_pool_shrink(a, high, &freed);
		if (!first)
			first = rc;
	}
	rc = kv_pool_scrub(a);
	if (!first)
		first = rc;
	/* the pool refills only while others have asked for nothing lately */
	if (!a->share || kv_prim_now_ns() >= a->share_quiet_until) {
		rc = kv_pool_refill(a);
		if (!first)
			first = rc;
	}
	if ((uint64_t)a->n[KV_P_CACHED] * a->page > a->o.cache_max) {
		uint32_t over = (uint32_t)(((uint64_t)a->n[KV_P_CACHED] * a->page -
					    a->o.cache_max + a->page - 1) / a->page);

		rc = kv_cache_trim(a, over, 0, &freed);
		if (!first)
			first = rc;
	}
	KV_DEBUG_CHECK_LOCKED(a);
	return first;
}

int kv_alloc_tick(kv_alloc_t *a)
{
	int rc;

	if (!a)
		return KVSHIM_EINVAL;
	rc = kv_prim_bind(&a->prim);
	if (rc)
		return rc;
	pthread_mutex_lock(&a->lock);
	rc = duties(a);
	pthread_mutex_unlock(&a->lock);
	return rc;
}

void kv_alloc_wake(kv_alloc_t *a)
{
	pthread_mutex_lock(&a->lock);
	pthread_cond_signal(&a->wake);
	pthread_mutex_unlock(&a->lock);
}

static void *worker_main(void *arg)
{
	kv_alloc_t *a = arg;
	struct timespec ts;

	pthread_mutex_lock(&a->lock);
	if (kv_prim_bind(&a->prim)) {
		kv_error("the pool worker has no CUDA context: the pool is filled on demand");
		a->worker_alive = 0;
		pthread_mutex_unlock(&a->lock);
		return NULL;
	}
	/* its waits are on kvshim's own stream: legal while others capture */
	kv_prim_relax();
	while (!a->stop) {
		duties(a);
		if (a->stop)
			break;
		/* with a shared budget, requests to trim come from other
		 * processes, which cannot signal: look often */
		ts = kv_prim_deadline(a->share ? KV_SHARE_PERIOD_MS : KV_WORKER_PERIOD_MS);
		pthread_cond_timedwait(&a->wake, &a->lock, &ts);
	}
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

static int init_sync(kv_alloc_t *a)
{
	if (pthread_mutex_init(&a->lock, NULL))
		return KVSHIM_ENOMEM;
	if (kv_prim_cond_init(&a->wake) || kv_prim_cond_init(&a->done))
		return KVSHIM_ENOMEM;
	if (pthread_rwlock_init(&a->spans_lock, NULL))
		return KVSHIM_ENOMEM;
	return 0;
}

int kv_alloc_create(const struct kv_alloc_opts *o, kv_alloc_t **out)
{
	kv_alloc_t *a;
	size_t limit;
	int rc;

	if (!o || !out || o->pool_low > o->pool_high)
		return KVSHIM_EINVAL;
	a = calloc(1, sizeof(*a));
	if (!a)
		return KVSHIM_ENOMEM;
	a->o = *o;
	rc = init_sync(a);
	if (rc) {
		free(a);
		return rc;
	}
	rc = kv_prim_open(&a->prim, o->device, o->page);
	if (rc)
		goto fail;
	a->page = a->prim.page;
	limit = o->limit;
	if (!limit)
		limit = a->prim.device_bytes / 100 *
			(o->limit_pct ? o->limit_pct : 100);
	if (limit / a->page >= KV_MARK) {      /* slot values above are marks */
		rc = KVSHIM_EINVAL;
		goto fail;
	}
	a->max_pages = (uint32_t)(limit / a->page);
	a->st.page_bytes = a->page;
	if (o->share) {
		size_t budget = kv_alloc_budget(o, a->prim.device_bytes);
		/* the limit, published in its slot: the others' rule counts it
		 * as a ceiling (fair.h), so what this process can never hold is
		 * theirs */
		size_t held_most = (size_t)a->max_pages * a->page;
		/* the floor in whole pages, the page above it: what is given
		 * back on request goes in whole pages, and must leave it (no
		 * higher than the ceiling, the limit or the budget, whose pages
		 * round down; a floor it could never hold would keep budget
		 * from the others for nothing) */
		size_t min = o->min / a->page * a->page;

		if (min < o->min && min <= SIZE_MAX - a->page)
			min += a->page;
		if (o->max && min > o->max)
			min = o->max / a->page * a->page;
		if (min > held_most)
			min = held_most;
		if (min > budget)
			min = budget / a->page * a->page;
		rc = kv_share_open(a->prim.uuid, o->pool_name, budget,
				   budget / 100 * o->reserve_pct,
				   a->prim.device_bytes, min, o->max, held_most, o->weight,
				   o->share_mode ? o->share_mode : 0600, &a->share);
		if (rc && o->share == KV_ALLOC_SHARE_AUTO) {
			kv_warn("share: this process runs alone, with no shared budget (KVSHIM_SHARE=on makes that an error)");
			rc = 0;
		}
		if (rc)
			goto fail;
	}
	a->next_id = 1;
	rc = kv_pool_init(a);
	if (rc)
		goto fail;

	if (!o->worker) {
		pthread_mutex_lock(&a->lock);
		rc = kv_pool_refill(a);
		pthread_mutex_unlock(&a->lock);
		if (rc && rc != KVSHIM_ENOMEM)
			goto fail;
	}
	if (o->worker) {
		a->worker_alive = 1;
		if (pthread_create(&a->worker, NULL, worker_main, a) == 0) {
			a->worker_running = 1;
		} else {
			a->worker_alive = 0;
			kv_warn("cannot start the pool worker (%s); the pool is filled on demand",
				strerror(errno));
		}
	}
	*out = a;
	return 0;
fail:
	kv_alloc_destroy(a);
	return rc;
}

void kv_alloc_destroy(kv_alloc_t *a)
{
	if (!a)
		return;
	if (a->worker_running) {
		pthread_mutex_lock(&a->lock);
		a->stop = 1;
		pthread_cond_signal(&a->wake);
		pthread_mutex_unlock(&a->lock);
		pthread_join(a->worker, NULL);
		a->worker_running = 0;
		a->worker_alive = 0;    /* releases from here on are done at once */
	}
	if (a->prim.ctx) {
		kv_prim_bind(&a->prim);
		kv_spans_fini(a);
		kv_pool_fini(a);
		kv_prim_close(&a->prim);
	}
	kv_share_close(a->share);
	pthread_cond_destroy(&a->wake);
	pthread_cond_destroy(&a->done);
	pthread_mutex_destroy(&a->lock);
	pthread_rwlock_destroy(&a->spans_lock);
	free(a);
}

/* The counters and the shared budget's figures (not under a's lock: the
 * segment has its own). */
static void stats_unlocked(kv_alloc_t *a, struct kvshim_stats *out)
{
	memset(out, 0, sizeof(*out));
#define KV_READ(field) \
	out->field = __atomic_load_n(&a->st.field, __ATOMIC_RELAXED);
	KV_READ(map_calls) KV_READ(pages_mapped) KV_READ(map_ns)
	KV_READ(pages_unmapped) KV_READ(unmap_ns)
	KV_READ(pages_created) KV_READ(create_ns)
	KV_READ(pages_released) KV_READ(release_ns)
	KV_READ(pages_zeroed) KV_READ(zero_ns)
	KV_READ(share_waits) KV_READ(share_wait_ns)
	KV_READ(share_waits_used) KV_READ(share_waits_failed)
#undef KV_READ
	if (a->share) {
		out->share_budget_bytes = kv_share_budget(a->share);
		out->share_members = kv_share_members(a->share);
	}
	kv_prim_capture_gate(&out->capture_gate_waits, &out->capture_gate_wait_ns);
}

/* The figures of the pages' states, lock held. */
static void stats_locked(kv_alloc_t *a, struct kvshim_stats *out)
{
	out->page_bytes = a->page;
	out->reserved_bytes = a->reserved;
	/* pages of released spans, still being unmapped, are no span's */
	out->mapped_bytes = (size_t)kv_in_spans(a) * a->page;
	out->cached_bytes = (size_t)a->n[KV_P_CACHED] * a->page;
	out->pooled_bytes = (size_t)kv_pooled(a) * a->page;
	out->physical_bytes = (size_t)kv_held(a) * a->page;
	out->peak_physical_bytes = (size_t)a->peak * a->page;
	out->limit_bytes = (size_t)a->max_pages * a->page;
	out->spans = a->nspans;
}

int kv_alloc_stats(kv_alloc_t *a, struct kvshim_stats *out)
{
	if (!a || !out)
		return KVSHIM_EINVAL;
	stats_unlocked(a, out);
	pthread_mutex_lock(&a->lock);
	stats_locked(a, out);
	pthread_mutex_unlock(&a->lock);
	return 0;
}

int kv_alloc_driver_free(kv_alloc_t *a, size_t *free_b, size_t *total,
			 int64_t *made)
{
	int64_t h1, h2;
	int rc, i;

	/* the handles on both sides of the driver's read, read again while
	 * they differ (a create or release in between); still differing, the
	 * fewer, which makes kv_unmade err high and the free bytes low */
	for (i = 0;; i++) {
		h1 = __atomic_load_n(&a->made, __ATOMIC_ACQUIRE);
		/* (kv_prim_meminfo makes a's context current for its call) */
		rc = kv_prim_meminfo(&a->prim, free_b, total);
		h2 = __atomic_load_n(&a->made, __ATOMIC_ACQUIRE);
		if (rc || h1 == h2 || i == 3)
			break;
	}
	*made = h1 < h2 ? h1 : h2;
	return rc;
}

int kv_alloc_meminfo(kv_alloc_t *a, struct kv_alloc_mem *m,
		     struct kvshim_stats *out)
{
	size_t unmade;
	int64_t made;
	int rc;

	if (!a || !m || !out)
		return KVSHIM_EINVAL;
	stats_unlocked(a, out);
	rc = kv_alloc_driver_free(a, &m->free_bytes, &m->total, &made);
	if (rc)
		return rc;
	pthread_mutex_lock(&a->lock);
	unmade = kv_unmade(a, made);
	m->free_bytes = m->free_bytes > unmade ? m->free_bytes - unmade : 0;
	/* pages on their way to the pool (a released span's, a trim's) hold
	 * memory no span uses, as pooled and cached ones do; so do those a map
	 * makes and maps with the lock dropped, whose span pages count as
	 * unbacked until it installs them (map.c) */
	m->idle = (size_t)(kv_pooled(a) + a->n[KV_P_CACHED] +
			   a->n[KV_P_UNMAPPING] + kv_dying_back(a) +
			   a->n[KV_P_TAKEN]) * a->page;
	m->claimed = (size_t)a->n[KV_P_MAPPED] * a->page;
	stats_locked(a, out);
	pthread_mutex_unlock(&a->lock);
	return 0;
}

const struct kv_prim_s *kv_alloc_prim(const kv_alloc_t *a)
{
	return &a->prim;
}

int kv_alloc_device(const kv_alloc_t *a)
{
	return a->prim.ordinal;
}

int kv_alloc_shared(kv_alloc_t *a, size_t *budget, size_t *others,
		    size_t *room)
{
	uint64_t b, o, r;

	if (!a || !a->share)
		return 0;
	kv_share_figures(a->share, &b, &o, &r);
	*budget = (size_t)b;
	*others = (size_t)o;
	if (room)
		*room = (size_t)r;
	return 1;
}
