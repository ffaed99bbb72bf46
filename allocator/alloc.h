/*
 * alloc.h - kvshim's page allocator: spans of virtual memory backed by
 * physical pages on request.
 *
 * A span is a reserved virtual range. kv_alloc_map() backs a byte range of a
 * span; each page keeps a count of claims, so a page shared by several
 * ranges stays mapped until the last claim goes, and a range straddling a
 * page boundary claims both pages. A page whose last claim goes stays mapped
 * in the span as cache (no driver call on the caller's path) until a trim,
 * or a map elsewhere that needs the memory, unmaps it.
 *
 * Physical pages come from a pool of handles created ahead of need and
 * refilled by a worker thread between a low and a high watermark. With zero
 * on map, every handle is also mapped once into a private arena, so a page
 * coming back from a span is scrubbed there, off the caller's path, before
 * any span sees it again.
 *
 * Every function returns 0 or a negative kvshim_error and, on error, leaves
 * every span page as it was. All functions are thread-safe. A claim counts
 * (a page holds at most 2^32 - 2); a pin does not.
 */
#ifndef KV_ALLOC_H
#define KV_ALLOC_H

#include <stddef.h>
#include <stdint.h>

#include <cuda.h>

#include "kvshim.h"

typedef struct kv_alloc_s kv_alloc_t;

/* A byte range of device memory; span, when not 0, is the id of the span
 * it must lie in (kv_alloc_span), so a range kept past its span's release
 * is refused rather than landing in a new span at the same address. */
struct kv_run {
	CUdeviceptr addr;
	size_t len;
	uint64_t span;
};

struct kv_alloc_opts {
	int device;          /* CUDA device ordinal */
	size_t page;         /* physical page size, a multiple of the device's
			      * granularity; 0: the granularity (2 MiB) */
	size_t limit;        /* physical bytes this allocator may hold;
			      * 0: limit_pct of the device's memory */
	unsigned limit_pct;  /* 1-100; 0 means 100 */
	size_t pool_low;     /* the worker refills when the pool drops under */
	size_t pool_high;    /* ...up to this; pages beyond are released */
	size_t cache_max;    /* cached bytes over this are trimmed by the
			      * worker; SIZE_MAX: never */
	int zero;            /* scrub pages before they reach a span */
	int worker;          /* run the worker thread (tests may turn it off
			      * to observe the pool step by step) */
	int share;           /* KV_ALLOC_SHARE_*: register in the GPU's shared
			      * budget segment (AUTO: alone if it cannot) */
	unsigned weight;     /* its weight in the fair shares, 1-1000 */
	const char *pool_name; /* the segment's pool name, or NULL */
	size_t budget;       /* bytes all processes may hold; 0: budget_pct */
	unsigned budget_pct; /* 1-100 of device memory; 0 means 100 */
	unsigned reserve_pct; /* 0-50: of the budget, what the rule keeps free
			       * while others share it (fair.h) */
	size_t min, max;     /* this process's floor and ceiling; max 0: none */
	unsigned share_mode; /* the segment's permissions, e.g. 0600 */
	unsigned share_wait_ms; /* how long a map waits for others to trim */
};

enum { KV_ALLOC_SHARE_OFF = 0, KV_ALLOC_SHARE_ON = 1, KV_ALLOC_SHARE_AUTO = 2 };

/* The defaults: device 0, the device's memory, pool 8 MiB low and 64 MiB
 * high, no cache cap, zeroing on, worker on, no sharing (weight 1). */
void kv_alloc_opts_default(struct kv_alloc_opts *o);

/* The shared budget o sets on a device of device_bytes: o->budget, or
 * o->budget_pct of the device to the byte (100%, the default, is all of
 * it, so that a process alone sees the memory info it would without
 * sharing). */
size_t kv_alloc_budget(const struct kv_alloc_opts *o, size_t device_bytes);

/* Open the driver for o->device and set the allocator up. The worker, when
 * on, fills the pool after this returns (a caller's first map need not wait
 * for a pool it may not use yet); without one, the pool is filled to its
 * high watermark before this returns (while a stream captures, by a later
 * kv_alloc_tick). Returns 0, KVSHIM_EINVAL for
 * inconsistent options (pool_low > pool_high, a page that is not a multiple
 * of the granularity), KVSHIM_ENODEV, KVSHIM_ENOMEM
 * or KVSHIM_EDRIVER. */
int kv_alloc_create(const struct kv_alloc_opts *o, kv_alloc_t **out);

/* Stop the worker, unmap and release every page and span, close the driver.
 * Safe with NULL. */
void kv_alloc_destroy(kv_alloc_t *a);

/* Reserve a span of size bytes rounded up to whole pages. Returns 0 with
 * *base set, KVSHIM_EINVAL for size 0 or NULL base, or a driver error. */
int kv_alloc_reserve(kv_alloc_t *a, size_t size, CUdeviceptr *base);

/* Release the span starting at base: unmap its pages (claimed or not) into
 * the pool and free the range. Returns 0, or KVSHIM_ERANGE when base starts
 * no span. */
int kv_alloc_release(kv_alloc_t *a, CUdeviceptr base);

/* Back [addr, addr + len) and add one claim to each page it touches. Needed
 * pages come from the pool, then new handles, then the allocator's own
 * cached pages elsewhere; pages a released span still holds are unmapped
 * for it if it needs them. Returns 0, KVSHIM_EINVAL (len 0), KVSHIM_ERANGE
 * (not inside one span), KVSHIM_ELIMIT (the limit, or the claims a page can
 * carry, would be passed),
 * KVSHIM_ENOMEM (the device is full) or KVSHIM_EDRIVER; on error no page of
 * any span changed (pages gathered for the call stay pooled). */
int kv_alloc_map(kv_alloc_t *a, CUdeviceptr addr, size_t len);

/* kv_alloc_map for n ranges at once, in any spans, as one step: all are
 * backed and claimed, or, on error, nothing changed. Pages the ranges share
 * are backed once and claimed once per range; the pages needed are gathered
 * in one go and access is granted per contiguous run. */
int kv_alloc_map_many(kv_alloc_t *a, const struct kv_run *runs, size_t n);

/* kv_alloc_map_many for an engine that can keep a request waiting (a block
 * manager's): where the pages would come only from processes above their
 * share giving back pages they use, it fails at once (KVSHIM_ELIMIT)
 * rather than wait for them (up to share_wait_ms), so the engine's other
 * requests go on; it still waits for pages in flight, for others' takes
 * and for idle pages others trim. */
int kv_alloc_try_map_many(kv_alloc_t *a, const struct kv_run *runs, size_t n);

/* Bytes of new pages kv_alloc_map_many would need for these ranges now
 * (pages they share counted once). Returns 0, KVSHIM_EINVAL or
 * KVSHIM_ERANGE. */
int kv_alloc_cost_many(kv_alloc_t *a, const struct kv_run *runs, size_t n,
		       size_t *bytes);

/* Drop one claim from each page [addr, addr + len) touches; pages left with
 * none become cache. No driver call. Returns 0, KVSHIM_EINVAL,
 * KVSHIM_ERANGE, or KVSHIM_ENOTCLAIMED when some page holds no claim (then
 * no claim is dropped). */
int kv_alloc_unmap(kv_alloc_t *a, CUdeviceptr addr, size_t len);

/* kv_alloc_unmap for n ranges as one step: every claim is dropped, or, with
 * KVSHIM_ENOTCLAIMED (some page lacks a claim for some range), none. */
int kv_alloc_unmap_many(kv_alloc_t *a, const struct kv_run *runs, size_t n);

/* Whether kv_alloc_unmap_many(a, runs, n) would drop every claim now (a
 * caller spanning several allocators checks each before it unmaps any).
 * Changes nothing. Returns 0, KVSHIM_EINVAL, KVSHIM_ERANGE or
 * KVSHIM_ENOTCLAIMED. */
int kv_alloc_claimed_many(kv_alloc_t *a, const struct kv_run *runs, size_t n);

/* Bytes of pages a map could get now without failing: the pool, the cache,
 * and new pages up to the limit and the device's free memory. Returns 0 or
 * a driver error. */
int kv_alloc_headroom(kv_alloc_t *a, size_t *bytes);

/* Give up to bytes of physical memory back to the driver, pooled pages
 * first, then cached pages oldest first (unmapped in runs). *freed, if not
 * NULL, gets the bytes given back. Returns 0 or KVSHIM_EDRIVER (what was
 * freed before the failure is still reported). */
int kv_alloc_trim(kv_alloc_t *a, size_t bytes, size_t *freed);

/* Back [addr, addr + len) like kv_alloc_map, but pin its pages instead of
 * claiming them: a pinned page stays backed until its span is released,
 * whatever claims come and go, and pinning it again changes nothing (the
 * engine's copies and memsets into a span pin what they touch, however
 * many there are). Returns what kv_alloc_map returns. */
int kv_alloc_pin(kv_alloc_t *a, CUdeviceptr addr, size_t len);

/* Pin each page of [addr, addr + len) that is mapped now (cached pages
 * leave the cache), leaving unmapped pages alone; *runs (malloc'd, the
 * caller frees it) gets the parts of the range those pages cover, merged
 * and clipped to the range, *nruns their number. The pins keep the pages
 * from being trimmed under work the caller then does on them. Returns 0,
 * KVSHIM_EINVAL, KVSHIM_ERANGE (not inside one span), KVSHIM_ENOMEM or
 * KVSHIM_EDRIVER (a page left without access refused it again: nothing
 * pinned). */
int kv_alloc_pin_mapped(kv_alloc_t *a, CUdeviceptr addr, size_t len,
			struct kv_run **runs, size_t *nruns);

/* Find the span holding addr. Returns 0 with *base and *size set, or
 * KVSHIM_ERANGE. */
int kv_alloc_find(kv_alloc_t *a, CUdeviceptr addr, CUdeviceptr *base,
		  size_t *size);

/* kv_alloc_find, with the span's id too (any of base, size and id may be
 * NULL): unique over the allocator's life, never 0. */
int kv_alloc_span(kv_alloc_t *a, CUdeviceptr addr, CUdeviceptr *base,
		  size_t *size, uint64_t *id);

/* Claims on the page holding addr (INT32_MAX for more), or a negative error
 * (KVSHIM_ERANGE). */
int kv_alloc_claims(kv_alloc_t *a, CUdeviceptr addr);

/* For tests: set the claims of the mapped, claimed page holding addr to
 * claims (1..the most a page can carry). Returns 0, KVSHIM_ERANGE or
 * KVSHIM_EINVAL. */
int kv_alloc_debug_claims(kv_alloc_t *a, CUdeviceptr addr, uint32_t claims);

/* Recount every list and counter against the pages and spans and check
 * every state invariant. Returns 0, or KVSHIM_ESTATE with the first
 * violation logged. */
int kv_alloc_check(kv_alloc_t *a);

int kv_alloc_stats(kv_alloc_t *a, struct kvshim_stats *out);

/* What memory info is made of, read at one instant as far as a's pages go
 * (kv_alloc_meminfo). */
struct kv_alloc_mem {
	size_t free_bytes;   /* the driver's, less what a's pages claimed but
			      * not made yet will take */
	size_t total;        /* the driver's */
	size_t idle;         /* a's pages holding memory no span uses: pooled,
			      * cached, on their way to the pool, or taken
			      * by a map not done yet */
	size_t claimed;      /* a's pages in spans that claims or pins hold */
};

/* The driver's memory figures on a's device beside a's pages, and a's
 * stats. The pool counts a page from when a fill claims it, the driver
 * from when it is made: the figures count every page once (a page being
 * made or released as they are read errs low). The counters (map_calls...)
 * are read just before. Returns 0, KVSHIM_EINVAL or the driver's error. */
int kv_alloc_meminfo(kv_alloc_t *a, struct kv_alloc_mem *m,
		     struct kvshim_stats *out);

/* With a shared budget: 1 with the pool's budget, what the other processes
 * hold and (room, may be NULL) the most this process could hold (see
 * kv_share_figures); 0 without one. */
int kv_alloc_shared(kv_alloc_t *a, size_t *budget, size_t *others,
		    size_t *room);

/* With a shared budget, state the bytes this process waits for now beyond
 * what it holds (kv_share_demand); without one, nothing. */
void kv_alloc_demand(kv_alloc_t *a, size_t bytes);

/* With a shared budget, state the bytes of pages this process maps that
 * only blocks no request uses claim (kv_share_unused); without one,
 * nothing. */
void kv_alloc_unused(kv_alloc_t *a, size_t bytes);

/* With a shared budget, the bytes of what this process uses it is asked
 * to give back now (kv_share_asked); 0 without one. */
size_t kv_alloc_asked(kv_alloc_t *a);

/* With a shared budget, the bytes this process is entitled to
 * (kv_share_entitled: its weighted part of the budget, which moves only as
 * processes come and go), at most its limit (KVSHIM_LIMIT); SIZE_MAX (no
 * bound) without one. */
size_t kv_alloc_entitled(kv_alloc_t *a);

/* The driver handle a runs on, for callers that must check the device. */
const struct kv_prim_s *kv_alloc_prim(const kv_alloc_t *a);

/* The CUDA device ordinal a's pages live on. */
int kv_alloc_device(const kv_alloc_t *a);

/* Wake the worker to look at its duties now (work put off, e.g. by a
 * stream capture, may be done). */
void kv_alloc_wake(kv_alloc_t *a);

/* Run one round of the worker's duties on the calling thread (released
 * spans' pages back to the pool, refill or shrink it, scrub, trim the cache
 * over cache_max; while a stream captures, only the shared budget's asks).
 * Tests call it with the worker off. Returns 0 or a negative error. */
int kv_alloc_tick(kv_alloc_t *a);

#endif /* KV_ALLOC_H */
