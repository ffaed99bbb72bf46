/*
 * alloc_int.h - the allocator's private state, shared by alloc.c (life
 * cycle, worker), pool.c (physical pages) and span.c (spans and claims).
 *
 * Every physical page the allocator holds has a slot in one table. A slot
 * is in exactly one state, and in the list that goes with it:
 *
 *   EMPTY  -> (create) -> DIRTY or CLEAN -> (map) -> MAPPED <-> CACHED
 *     ^                     ^                                     |
 *     +---- (release) ------+------- (unmap: trim, reclaim) -----+
 *
 * BUSY marks a slot whose driver work runs outside the lock (creation,
 * scrubbing, unmapping); nothing else touches it until its owner is done,
 * and threads waiting on it sleep on kv_alloc_s.done.
 */
#ifndef KV_ALLOC_INT_H
#define KV_ALLOC_INT_H

#include <pthread.h>

#include "alloc.h"
#include "prim.h"
#include "share.h"

#define KV_NIL UINT32_MAX

/* kv_pool_take: pages the map needs are in flight; wait on done, retry. */
#define KV_RETRY 1
/* kv_pool_take: the shared budget is held by other processes, which were
 * asked to trim; wait a little, retry. */
#define KV_RETRY_SHARE 3

enum kv_pstate {
	KV_P_EMPTY = 0, /* no handle */
	KV_P_CLEAN,     /* in the pool, scrubbed (or zeroing is off) */
	KV_P_DIRTY,     /* in the pool, may hold another span's bytes */
	KV_P_BUSY,      /* driver work in flight outside the lock */
	KV_P_MAPPED,    /* in a span, claimed */
	KV_P_CACHED     /* in a span, unclaimed, on the cache list */
};

struct kv_list {
	uint32_t head, tail;
	uint32_t n;
};

struct kv_phys {
	CUmemGenericAllocationHandle h;
	struct kv_span *span;   /* where it is mapped, or NULL */
	uint32_t vpage;         /* its page index in span */
	uint32_t prev, next;    /* links in the list of its state */
	uint8_t state;
	uint8_t fresh;          /* backed by the map in progress */
	uint8_t failed;         /* driver work on it failed: see
				 * kv_slots_failed_last */
	uint64_t idle_ns;       /* when it lost its last claim (or its span) */
};

struct kv_span {
	CUdeviceptr base;
	size_t size;
	uint32_t npages;
	uint32_t *claims;       /* per page */
	uint32_t *slot;         /* per page: the phys slot, or KV_NIL */
	uint32_t mapped;        /* pages with a slot */
	uint32_t busy;          /* of those, pages being unmapped */
	struct kv_span *next;   /* on the list of released spans */
};

struct kv_alloc_s {
	kv_prim_t prim;
	struct kv_alloc_opts o;
	size_t page;
	uint32_t max_pages;     /* the limit, in pages: the slot table's size */

	pthread_mutex_t lock;
	pthread_cond_t done;    /* a BUSY slot changed state */
	pthread_cond_t wake;    /* the worker has something to do */
	uint64_t fenced_ns;     /* kernels queued before it are done (atomic) */

	struct kv_phys *phys;
	struct kv_list empty, clean, dirty, cache;
	uint32_t held;          /* slots not EMPTY: the physical pages held */
	uint32_t peak;
	uint32_t mapped;        /* slots mapped into spans (cached included) */
	uint32_t scrubbing;     /* pooled slots BUSY being created or scrubbed */
	uint32_t outbound;      /* slots BUSY leaving a span or the pool:
				 * a map short of pages waits for them */
	CUdeviceptr arena;      /* slot i is mapped at arena + i * page when
				 * zeroing is on */

	struct kv_span **spans; /* sorted by base */
	struct kv_span *dying;  /* released, their pages still to unmap */
	uint32_t dying_pages;   /* pages mapped in those */
	size_t nspans, cap;
	size_t reserved;

	struct kvshim_stats st; /* counters only; sizes are derived */

	kv_share_t *share;      /* the GPU's shared budget, or NULL */
	int share_said;         /* the last refusal of the shared budget */
	uint64_t share_quiet_until; /* no pool refill before this (ns) */

	pthread_t worker;
	int worker_running;     /* a thread to join */
	int worker_alive;       /* it does its duties (lock held to read) */
	int stop;
};

/* Add to a counter of a->st. Driver work outside the lock counts too, so
 * the counters are atomic; kv_alloc_stats reads them under the lock. */
#define KV_COUNT(a, field, v) \
	__atomic_fetch_add(&(a)->st.field, (v), __ATOMIC_RELAXED)

/* ---- lists of slots (pool.c) ---- */
void kv_list_init(struct kv_list *l);
void kv_list_push(kv_alloc_t *a, struct kv_list *l, uint32_t s);
void kv_list_remove(kv_alloc_t *a, struct kv_list *l, uint32_t s);
uint32_t kv_list_pop(kv_alloc_t *a, struct kv_list *l);

/* Move the slots marked failed to the end of slots[0..n), keeping both
 * groups in order, and clear the marks. The caller owns the slots (BUSY).
 * Returns how many were not marked. */
uint32_t kv_slots_failed_last(kv_alloc_t *a, uint32_t *slots, uint32_t n);

/* ---- physical pages (pool.c); called with the lock held unless said ---- */
int kv_pool_init(kv_alloc_t *a);
void kv_pool_fini(kv_alloc_t *a);
int kv_pool_take(kv_alloc_t *a, uint32_t n, uint32_t *slots);
void kv_pool_put(kv_alloc_t *a, const uint32_t *slots, uint32_t n, int dirty);
int kv_pool_refill(kv_alloc_t *a);
int kv_pool_scrub(kv_alloc_t *a);
int kv_pool_shrink(kv_alloc_t *a, uint32_t keep, uint32_t *freed);
int kv_pool_release_busy(kv_alloc_t *a, uint32_t *slots, uint32_t n);

/* ---- spans (span.c), lock held ---- */
struct kv_span *kv_span_find(const kv_alloc_t *a, CUdeviceptr addr);
/* The span holding all of [addr, addr + len), and its pages in *p0, *p1. */
struct kv_span *kv_span_find_range(const kv_alloc_t *a, CUdeviceptr addr,
				   size_t len, uint32_t *p0, uint32_t *p1);
int kv_span_any_busy(const kv_alloc_t *a, const struct kv_span *sp,
		     uint32_t p0, uint32_t p1);
/* One more claim on mapped page p; a cached page leaves the cache. */
void kv_span_claim(kv_alloc_t *a, struct kv_span *sp, uint32_t p);
/* qsort_r order of slots by span and page. */
int kv_span_cmp_place(const void *x, const void *y, void *arg);

static inline CUdeviceptr kv_span_va(const kv_alloc_t *a,
				     const struct kv_span *sp, uint32_t p)
{
	return sp->base + (CUdeviceptr)p * a->page;
}

uint32_t kv_span_unmap_slots(kv_alloc_t *a, uint32_t *slots, uint32_t n,
			     int *rc);
void kv_span_settle(kv_alloc_t *a, const uint32_t *slots, uint32_t n,
		    uint32_t done);
int kv_cache_trim(kv_alloc_t *a, uint32_t n, int release, uint32_t *done);
void kv_spans_fini(kv_alloc_t *a);
int kv_spans_reap(kv_alloc_t *a);

#endif /* KV_ALLOC_INT_H */
