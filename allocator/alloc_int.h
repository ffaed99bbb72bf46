/*
 * alloc_int.h - the allocator's private state, shared by alloc.c (life
 * cycle, worker), slot.c (the page state machine and its checker), pool.c
 * (physical pages), span.c (spans) and map.c (claims).
 *
 * Every physical page the allocator may hold has a slot in one table, and
 * a slot is in exactly one state. The moves (slot.c's table checks them):
 *
 *   EMPTY     -> FILLING (the worker fills the pool), TAKEN (a map creates)
 *   FILLING   -> CLEAN, DIRTY (its scrub failed), EMPTY (creation failed)
 *   CLEAN     -> TAKEN (a map), FREEING (the pool shrinks)
 *   DIRTY     -> TAKEN, FILLING (scrubbed), FREEING
 *   TAKEN     -> MAPPED (installed), CLEAN or DIRTY (put back), EMPTY
 *   MAPPED    -> CACHED (its last claim and pin gone), DYING (span released)
 *   CACHED    -> MAPPED (claimed again), UNMAPPING (trim, reclaim), DYING
 *   UNMAPPING -> DIRTY, FREEING or TAKEN (unmapped), CACHED or MAPPED (not)
 *   DYING     -> DIRTY (its span's pages unmapped)
 *   FREEING   -> EMPTY, DIRTY (the arena still maps it: unmap failed)
 *
 * FILLING, UNMAPPING, DYING and FREEING are driver work in flight, mostly
 * with the lock dropped (a map's reclaim keeps it): the slot belongs to the
 * thread doing it, and a thread that
 * needs it sleeps on kv_alloc_s.done. TAKEN slots belong to a map call,
 * which makes, scrubs and maps them with the lock dropped, the span pages
 * they go to marked KV_PEND meanwhile, until they are installed or put
 * back.
 *
 * Only kv_slot_move() changes a slot's state; it keeps the lists and the
 * per-state counts (from which held, pooled, cached and in-flight figures
 * are derived) and the span's page counts. kv_alloc_check() recounts all
 * of it from the slots and spans.
 */
#ifndef KV_ALLOC_INT_H
#define KV_ALLOC_INT_H

#include <pthread.h>

#include "alloc.h"
#include "prim.h"
#include "share.h"

#define KV_NIL UINT32_MAX

/* Slot value of a page a map call backs: set and cleared with the lock
 * held, seen by other threads while the call makes, scrubs and maps its
 * pages with the lock dropped (map.c); they wait for it as for a page in
 * flight (kv_span_any_busy), and a span holding one is not released. */
#define KV_PEND (UINT32_MAX - 1)

/* Slot value of a page one call marks and clears, lock held throughout
 * (kv_alloc_cost_many): never seen by another thread. */
#define KV_MARK (UINT32_MAX - 2)

/* The most claims one page can carry; a map that would pass it fails. */
#define KV_CLAIMS_MAX (UINT32_MAX - 1)

enum kv_pstate {
	KV_P_EMPTY = 0, /* no handle; on the empty list */
	KV_P_FILLING,   /* being created or scrubbed for the pool (lock dropped) */
	KV_P_CLEAN,     /* pooled, scrubbed (or zeroing is off); clean list */
	KV_P_DIRTY,     /* pooled, may hold another span's bytes; dirty list */
	KV_P_TAKEN,     /* in a map call's hands, not in a span yet */
	KV_P_MAPPED,    /* in a live span, claimed or pinned */
	KV_P_CACHED,    /* in a live span, unclaimed; cache list, oldest first */
	KV_P_UNMAPPING, /* leaving a live span (lock dropped) */
	KV_P_DYING,     /* in a released span, until the worker unmaps it */
	KV_P_FREEING,   /* its handle being released (lock dropped) */
	KV_P_NSTATES
};

struct kv_list {
	uint32_t head, tail;
};

struct kv_phys {
	CUmemGenericAllocationHandle h;
	struct kv_span *span;   /* where it is mapped, or NULL */
	uint32_t vpage;         /* its page index in span */
	uint32_t prev, next;    /* links in the list of its state */
	uint8_t state;
	uint8_t fresh;          /* scratch of one call, lock held: backed by
				 * the map in progress, or counted once */
	uint8_t failed;         /* driver work on it failed: see
				 * kv_slots_failed_last */
	uint8_t noaccess;       /* mapped without access: in the arena,
				 * pooled (its grant failed in create_slots),
				 * where a scrub grants it first; or in its
				 * span, cached (uninstall), where a claim
				 * grants it first */
	uint64_t idle_ns;       /* when it lost its last claim (or its span) */
};

struct kv_span {
	CUdeviceptr base;
	size_t size;
	uint64_t id;            /* unique in the allocator's life, never 0 */
	uint32_t npages;
	uint32_t *claims;       /* per page */
	uint8_t *pinned;        /* per page: backed until the span goes */
	uint32_t *slot;         /* per page: the phys slot, or KV_NIL */
	uint32_t mapped;        /* pages with a slot */
	uint32_t busy;          /* of those, UNMAPPING or DYING */
	uint32_t pending;       /* pages KV_PEND */
	int dying;              /* released: off the span table */
	int reaping;            /* released, its pages being unmapped */
	struct kv_span *next;   /* on the list of released spans */
};

struct kv_alloc_s {
	kv_prim_t prim;
	struct kv_alloc_opts o;
	size_t page;
	uint32_t max_pages;     /* the limit, in pages: the slot table's size */

	pthread_mutex_t lock;
	pthread_cond_t done;    /* a slot in flight changed state */
	pthread_cond_t wake;    /* the worker has something to do */
	uint64_t fenced_ns;     /* kernels queued before it are done (atomic) */

	struct kv_phys *phys;
	uint32_t n[KV_P_NSTATES]; /* slots in each state (kv_slot_move) */
	struct kv_list empty, clean, dirty, cache;
	uint32_t peak;          /* most slots held at once */
	int64_t made;           /* handles held: one more after each create,
				 * one less before each release (atomic; see
				 * kv_alloc_driver_free) */
	uint32_t waiters;       /* maps waiting for pages in flight: the
				 * worker then keeps what it pools */
	uint64_t supplied;      /* moves that put a page within a take's
				 * reach (kv_slot_move): pooled, cached, or
				 * its handle released */
	CUdeviceptr arena;      /* slot i is mapped at arena + i * page when
				 * zeroing is on */

	struct kv_span **spans; /* live spans, sorted by base */
	struct kv_span *dying;  /* released, their pages still to unmap */
	size_t nspans, cap;
	/* spans, nspans and cap are written holding lock and spans_lock;
	 * kv_alloc_span reads them holding spans_lock alone, so that the
	 * look-up every hooked copy and memset makes never waits for a map,
	 * trim or fence that holds lock across driver calls (on an H200 an
	 * engine's steps stopped for up to 0.16 s while its process moved
	 * pages: docs/BENCHMARKS.md, session 35) */
	pthread_rwlock_t spans_lock;
	size_t reserved;
	uint64_t next_id;       /* the next span's id */

	struct kvshim_stats st; /* counters only; sizes are derived */

	kv_share_t *share;      /* the GPU's shared budget, or NULL */
	uint64_t share_quiet_until; /* no pool refill before this (ns) */

	/* maps with the lock dropped, their ranges (map.c): the claims they
	 * hold are not another call's to drop meanwhile */
	struct kv_inflight *inflight;

	pthread_t worker;
	int worker_running;     /* a thread to join */
	int worker_alive;       /* it does its duties (lock held to read) */
	int stop;
};

/* Add to a counter of a->st. Driver work outside the lock counts too, so
 * the counters are atomic; kv_alloc_stats reads them under the lock. */
#define KV_COUNT(a, field, v) \
	__atomic_fetch_add(&(a)->st.field, (v), __ATOMIC_RELAXED)

/* ---- figures derived from the state counts (slot.c), lock held ---- */

/* Slots holding a physical page. */
static inline uint32_t kv_held(const kv_alloc_t *a)
{
	return a->max_pages - a->n[KV_P_EMPTY];
}

/* Pages in the pool or on their way into it. */
static inline uint32_t kv_pooled(const kv_alloc_t *a)
{
	return a->n[KV_P_FILLING] + a->n[KV_P_CLEAN] + a->n[KV_P_DIRTY];
}

/* Pages mapped in live spans, cached ones and those being unmapped
 * included. */
static inline uint32_t kv_in_spans(const kv_alloc_t *a)
{
	return a->n[KV_P_MAPPED] + a->n[KV_P_CACHED] + a->n[KV_P_UNMAPPING];
}

/* Pages on their way out (of a span or to the driver): a map short of
 * pages waits for them rather than fail. */
static inline uint32_t kv_outbound(const kv_alloc_t *a)
{
	return a->n[KV_P_UNMAPPING] + a->n[KV_P_DYING] + a->n[KV_P_FREEING];
}

/* A released span's pages (DYING) that will come to the pool: none while a
 * stream captures, as kv_spans_reap unmaps them only once none does (a map
 * on the capturing thread must not wait for its own capture to end). */
static inline uint32_t kv_dying_back(const kv_alloc_t *a)
{
	return kv_prim_capturing() ? 0 : a->n[KV_P_DYING];
}

/*
 * The driver's free and total bytes on a's device, with the handles a held
 * as it read them (*made, for kv_unmade). Returns 0 or the driver's error.
 */
int kv_alloc_driver_free(kv_alloc_t *a, size_t *free_b, size_t *total,
			 int64_t *made);

/* Bytes of a's slots held but without a handle when the driver's free
 * bytes were read with made handles (kv_alloc_driver_free), lock held: pages
 * claimed for a fill or a map and not made yet, which the driver's figure
 * counts as free still. */
static inline size_t kv_unmade(const kv_alloc_t *a, int64_t made)
{
	int64_t n = (int64_t)kv_held(a) - made;

	return n > 0 ? (size_t)n * a->page : 0;
}

/* ---- the slot state machine (slot.c), lock held ---- */

int kv_slots_init(kv_alloc_t *a);

/*
 * Move slot s to state to: off the list of its old state, onto the tail
 * of the new one's, with the state counts and its span's page counts
 * following. Joining a span is kv_slot_install, leaving one kv_slot_detach.
 */
void kv_slot_move(kv_alloc_t *a, uint32_t s, enum kv_pstate to);

/* TAKEN slot s becomes page p of live span sp, MAPPED. */
void kv_slot_install(kv_alloc_t *a, uint32_t s, struct kv_span *sp,
		     uint32_t p);

/* Slot s (UNMAPPING or DYING, unmapped now) leaves its span for state to
 * (DIRTY, FREEING or TAKEN); its page's claims and pin go. */
void kv_slot_detach(kv_alloc_t *a, uint32_t s, enum kv_pstate to);

/* The first slot of list l, or KV_NIL. */
static inline uint32_t kv_list_first(const struct kv_list *l)
{
	return l->head;
}

/* Move the slots marked failed to the end of slots[0..n), keeping both
 * groups in order, and clear the marks. Returns how many were not marked. */
uint32_t kv_slots_failed_last(kv_alloc_t *a, uint32_t *slots, uint32_t n);

/* kv_alloc_check with the lock held. */
int kv_check_locked(kv_alloc_t *a);

/* In a debug build (--enable-debug), check the allocator at the end of a
 * public call, lock held; a no-op otherwise. */
#ifdef KV_DEBUG
#define KV_DEBUG_CHECK_LOCKED(a) ((void)kv_check_locked(a))
#else
#define KV_DEBUG_CHECK_LOCKED(a) ((void)0)
#endif

/* ---- physical pages (pool.c); lock held unless said ---- */

/* What a map's call for pages came to. */
enum kv_supply {
	KV_SUPPLY_DONE,   /* the slots are TAKEN, clean */
	KV_SUPPLY_WAIT,   /* pages in flight would make up the number: wait
			   * for them (or unmap released spans) and retry */
	KV_SUPPLY_ASK,    /* other processes hold the shared budget idle and
			   * were asked to trim: retry shortly */
	KV_SUPPLY_FENCE,  /* cached pages the map would reclaim need a fence
			   * first: make it with the lock dropped
			   * (kv_cache_prefence), and retry */
	KV_SUPPLY_RETRY,  /* the driver refused to make the map's pages for
			   * memory while pages came within reach (freed,
			   * pooled, cached): retry at once */
	KV_SUPPLY_FAILED  /* *err says why */
};

/* The shared budget's answers to one take: its last refusal (a KV_SHARE_*
 * answer, or kv_share_take's KVSHIM_ELIMIT or KVSHIM_ESTATE; 0 for
 * none), and whether any of them was for pages others use
 * (KV_SHARE_WAIT_USED: the whole ask may be, while the smaller ones after
 * it wait for pages another let go of meanwhile). The take's own, not the
 * allocator's: another thread's take may run while a map has the lock
 * dropped, and the map reads them after. */
struct kv_said {
	int last;
	int used;
};

/* What a take leaves for the map to do with the lock dropped
 * (kv_pool_ready): of the n slots taken, those from dirty_from on to scrub,
 * and of them nmake from make_from on to make first; and what the shared
 * budget answered it. */
struct kv_take {
	uint32_t n, dirty_from, make_from, nmake;
	uint32_t made;          /* kv_pool_ready: of the nmake, made (first) */
	uint64_t supplied;      /* a->supplied as the map dropped the lock */
	int may_retry;          /* kv_pool_made_short may answer RETRY */
	struct kv_said said;
};

int kv_pool_init(kv_alloc_t *a);
void kv_pool_fini(kv_alloc_t *a);
enum kv_supply kv_pool_take(kv_alloc_t *a, uint32_t n, uint32_t also, uint32_t *slots,
			    int defer_fence, struct kv_take *t, int *err);
/* Lock not held: make and scrub what the take left (t). Returns 0, or the
 * driver's error with t->made saying how many it made; then the caller,
 * lock held, puts the slots back (kv_pool_unready), or after a creation
 * the driver refused for memory makes the take up (kv_pool_made_short).
 * Reorders slots. */
int kv_pool_ready(kv_alloc_t *a, uint32_t *slots, struct kv_take *t);
/* Lock held: the slots kv_pool_ready could not make go back, and cached
 * pages make up for them, as the take would have; then all are scrubbed
 * (with the lock held). Returns as kv_pool_take, for memory KVSHIM_ENOMEM;
 * or KV_SUPPLY_RETRY with every slot back where pages came within reach
 * since the map dropped the lock (with it held, the take would have found
 * them or waited for them: pages in flight), once a map (t->may_retry: the
 * pages others cache or pool may come and go all the time). */
enum kv_supply kv_pool_made_short(kv_alloc_t *a, uint32_t *slots, struct kv_take *t,
				  int defer_fence, int *err);
/* Lock held: the slots of a take back in the pool (made ones dirty, the
 * others empty again). */
void kv_pool_unready(kv_alloc_t *a, const uint32_t *slots, const struct kv_take *t);
/* TAKEN slots back to the pool: clean ones (never left the pool's care)
 * or dirty. */
void kv_pool_put(kv_alloc_t *a, const uint32_t *slots, uint32_t n, int dirty);
/* Under the low watermark, make pages up to the high one, in batches of
 * KV_FILL_BATCH (lock dropped for the driver): it stops at the first
 * failure, at a batch the shared budget grants none of, and before a batch
 * while a stream captures (the rest is for a later round). Returns 0 or
 * the driver's error. */
int kv_pool_refill(kv_alloc_t *a);
int kv_pool_scrub(kv_alloc_t *a);
int kv_pool_shrink(kv_alloc_t *a, uint32_t keep, uint32_t *freed);
/* The pool's watermarks in whole pages: under the low mark is fewer pooled
 * bytes than KVSHIM_POOL_LOW (rounded up: with pages larger than it, an
 * empty pool); the high mark's pages, at least the low mark's (a pool
 * refilled to more than the worker keeps would be made and freed again at
 * every round). */
static inline void kv_pool_marks(const kv_alloc_t *a, uint32_t *low, uint32_t *high)
{
	uint64_t l = (a->o.pool_low + a->page - 1) / a->page, h = a->o.pool_high / a->page;

	if (h < l)
		h = l;
	*low = l > UINT32_MAX ? UINT32_MAX : (uint32_t)l;
	*high = h > UINT32_MAX ? UINT32_MAX : (uint32_t)h;
}

/* Release the handles of FREEING slots[0..n), lock dropped for the driver;
 * they end EMPTY, *released of them (first in slots), but for runs the
 * arena still maps (their unmap failed), which stay pooled, dirty. Returns
 * 0 or the first driver error. */
int kv_pool_free(kv_alloc_t *a, uint32_t *slots, uint32_t n, uint32_t *released);

/* ---- spans (span.c), lock held ---- */
struct kv_span *kv_span_find(const kv_alloc_t *a, CUdeviceptr addr);
/* The span holding all of [addr, addr + len), and its pages in *p0, *p1. */
struct kv_span *kv_span_find_range(const kv_alloc_t *a, CUdeviceptr addr,
				   size_t len, uint32_t *p0, uint32_t *p1);
int kv_span_any_busy(const kv_alloc_t *a, const struct kv_span *sp,
		     uint32_t p0, uint32_t p1);
/* Whether a map with the lock dropped covers sp (map.c): not released
 * meanwhile, pending pages or not. */
int kv_span_in_flight(const kv_alloc_t *a, const struct kv_span *sp);
/* One more claim on mapped page p; a cached page leaves the cache. */
void kv_span_claim(kv_alloc_t *a, struct kv_span *sp, uint32_t p);
/* Page p of sp lost a claim or its pin: cache it if nothing holds it. */
void kv_span_idle(kv_alloc_t *a, struct kv_span *sp, uint32_t p,
		  uint64_t now);
/* qsort_r order of slots by span and page. */
int kv_span_cmp_place(const void *x, const void *y, void *arg);

static inline CUdeviceptr kv_span_va(const kv_alloc_t *a,
				     const struct kv_span *sp, uint32_t p)
{
	return sp->base + (CUdeviceptr)p * a->page;
}

uint32_t kv_span_unmap_slots(kv_alloc_t *a, uint32_t *slots, uint32_t n,
			     int *rc, int *later);
int kv_cache_trim(kv_alloc_t *a, uint32_t n, int release, uint32_t *done);
int kv_cache_reclaim(kv_alloc_t *a, uint32_t n, uint32_t *slots,
		     uint32_t *got);
/* Whether a reclaim of the n oldest cached pages would fence first (one
 * of them lost its last claim after the newest fence). */
int kv_cache_fence_due(const kv_alloc_t *a, uint32_t n);
/* Wait for the device's queued work (a fence), lock not held, so that a
 * reclaim after it need not (nothing while a stream captures). */
void kv_cache_prefence(kv_alloc_t *a);
void kv_spans_fini(kv_alloc_t *a);
int kv_spans_reap(kv_alloc_t *a);

#endif /* KV_ALLOC_INT_H */
