/*
 * test_limit.c - the physical limit, the driver running out of memory and
 * failing mid-way: a map that cannot be fully backed changes no page.
 */
#include <string.h>

#include "share_util.h"
#include "suites.h"

static kv_alloc_t *a;
static CUdeviceptr base;

static void make(size_t limit)
{
	struct kv_alloc_opts o;

	kt_opts(&o);
	o.limit = limit;
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 64 * PG, &base), 0);
}

static void teardown(void)
{
	kt_destroy(a);
}

/* Nothing of the span changed since `before`: no page backed anew, no
 * claim added. */
static void assert_span_unchanged(const struct kvshim_stats *before,
				  CUdeviceptr from, size_t pages)
{
	struct kvshim_stats s = kt_stats(a);
	size_t i;

	ck_assert_uint_eq(s.mapped_bytes, before->mapped_bytes);
	ck_assert_uint_eq(s.cached_bytes, before->cached_bytes);
	ck_assert_uint_eq(s.pages_mapped, before->pages_mapped);
	for (i = 0; i < pages; i++)
		ck_assert_int_eq(kv_alloc_claims(a, from + i * PG), 0);
}

START_TEST(test_limit_refuses_whole)
{
	struct kvshim_stats before;

	make(4 * PG);
	ck_assert_int_eq(kv_alloc_map(a, base, 3 * PG), 0);
	before = kt_stats(a);
	kv_dev_reset_counts();
	ck_assert_int_eq(kv_alloc_map(a, base + 10 * PG, 2 * PG), KVSHIM_ELIMIT);
	assert_span_unchanged(&before, base + 10 * PG, 2);
	ck_assert_uint_eq(kv_dev_calls("cuMemMap"), 0);
	ck_assert_uint_eq(kv_dev_calls("cuMemCreate"), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + 10 * PG, PG), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + 11 * PG, 1), KVSHIM_ELIMIT);
	ck_assert_uint_eq(kt_stats(a).physical_bytes, 4 * PG);
	ck_assert_uint_eq(kt_stats(a).peak_physical_bytes, 4 * PG);
}
END_TEST

START_TEST(test_limit_larger_than_limit)
{
	struct kvshim_stats before;

	make(4 * PG);
	before = kt_stats(a);
	ck_assert_int_eq(kv_alloc_map(a, base, 5 * PG), KVSHIM_ELIMIT);
	assert_span_unchanged(&before, base, 5);
	ck_assert_uint_eq(kt_stats(a).physical_bytes, 0);
}
END_TEST

/* At the limit, this allocator's own cached pages are taken before the map
 * gives up; the range's own cached pages are not. */
START_TEST(test_limit_takes_cache)
{
	make(4 * PG);
	ck_assert_int_eq(kv_alloc_map(a, base, 4 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, 2 * PG), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + 20 * PG, 2 * PG), 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 0);
	ck_assert_uint_eq(kt_stats(a).physical_bytes, 4 * PG);
	ck_assert_int_eq(kv_alloc_unmap(a, base + 20 * PG, 2 * PG), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + 30 * PG, PG), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + 40 * PG, PG), 0);
	ck_assert_uint_eq(kt_stats(a).pages_unmapped, 4);
	/* claimed: 2, 3, 30, 40. Cache page 3, then map 3..4: the one page
	 * needed could only come from page 3, which the range claims again */
	ck_assert_int_eq(kv_alloc_unmap(a, base + 3 * PG, PG), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + 3 * PG, 2 * PG), KVSHIM_ELIMIT);
	ck_assert_int_eq(kv_alloc_claims(a, base + 3 * PG), 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, PG);
	ck_assert_int_eq(kv_alloc_map(a, base + 4 * PG, PG), 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 0);
}
END_TEST

START_TEST(test_limit_percent)
{
	struct kv_alloc_opts o;
	kv_alloc_t *b;

	kt_opts(&o);
	o.limit_pct = 50;
	b = kt_create(&o);
	ck_assert_uint_eq(kt_stats(b).limit_bytes % PG, 0);
	ck_assert_uint_gt(kt_stats(b).limit_bytes, 0);
	kt_destroy(b);
	a = NULL;
	make(PG);
	ck_assert_uint_eq(kt_stats(a).limit_bytes, PG);
}
END_TEST

/* ---- the driver failing (emulation) ---- */

START_TEST(test_device_oom)
{
	struct kvshim_stats before;
	size_t dev = 0, free_b;
	struct kvemu_usage u0, u1;
	CUdeviceptr big;

	make(0);
	free_b = kt_stats(a).limit_bytes;
	dev = free_b / PG;
	ck_assert_int_eq(kv_alloc_reserve(a, (dev + 8) * PG, &big), 0);
	before = kt_stats(a);
	kv_dev_usage(&u0);
	ck_assert_int_eq(kv_alloc_map(a, big, (dev + 4) * PG), KVSHIM_ELIMIT);
	ck_assert_int_eq(kv_dev_fail_nth("cuMemCreate", 3, CUDA_ERROR_OUT_OF_MEMORY), 0);
	ck_assert_int_eq(kv_alloc_map(a, big, 8 * PG), KVSHIM_ENOMEM);
	assert_span_unchanged(&before, big, 8);
	kv_dev_usage(&u1);
	ck_assert_uint_eq(u1.mapped_pages, u0.mapped_pages + 2); /* 2 pooled, in the arena */
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 2 * PG);
	/* and it works once the device has room */
	ck_assert_int_eq(kv_alloc_map(a, big, 8 * PG), 0);
	ck_assert_uint_eq(kt_stats(a).pages_created, 8);
}
END_TEST

/* Arm one driver failure, map pages 0..5 of the span (page 2 is claimed
 * already), and check the span is as it was. */
static void fail_step(const char *step, int nth)
{
	struct kvshim_stats before = kt_stats(a);
	struct kvemu_usage u0, u1;

	kv_dev_usage(&u0);
	ck_assert_int_eq(kv_dev_fail_nth(step, nth, CUDA_ERROR_UNKNOWN), 0);
	ck_assert_msg(kv_alloc_map(a, base, 6 * PG) == KVSHIM_EDRIVER,
		      "a failing %s did not fail the map", step);
	assert_span_unchanged(&before, base, 2);
	assert_span_unchanged(&before, base + 3 * PG, 3);
	ck_assert_int_eq(kv_alloc_claims(a, base + 2 * PG), 1);
	kv_dev_usage(&u1);
	ck_assert_uint_le(u1.handles - u0.handles, 5);
	ck_assert_int_eq(kv_dev_fill(base, PG, 1), CUDA_ERROR_ILLEGAL_ADDRESS);
	kv_dev_fail_nth(step, 0, CUDA_SUCCESS);
}

static void map_works_after(void)
{
	unsigned long long bad = 1;

	ck_assert_int_eq(kv_alloc_map(a, base, 6 * PG), 0);
	ck_assert_int_eq(kv_dev_fill(base, 6 * PG, 5), CUDA_SUCCESS);
	ck_assert_int_eq(kv_dev_check(base, 6 * PG, 5, &bad), CUDA_SUCCESS);
	ck_assert_uint_eq(bad, 0);
	ck_assert_int_eq(kv_alloc_claims(a, base + 2 * PG), 2);
}

/* The pool empty: the failures hit page creation and scrubbing. */
START_TEST(test_driver_fails_creating)
{
	make(0);
	ck_assert_int_eq(kv_alloc_map(a, base + 2 * PG, PG), 0);
	fail_step("cuMemCreate", 3);
	fail_step("cuMemMap", 3);
	fail_step("cuMemSetAccess", 1);
	fail_step("cuMemsetD8Async", 1);
	map_works_after();
}
END_TEST

/* The pool full and scrubbed: the failures hit mapping into the span. */
START_TEST(test_driver_fails_mapping)
{
	struct kv_alloc_opts o;

	kt_opts(&o);
	o.pool_low = o.pool_high = 8 * PG;
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 64 * PG, &base), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + 2 * PG, PG), 0);
	kv_dev_reset_counts();
	fail_step("cuMemMap", 3);
	fail_step("cuMemSetAccess", 1);
	ck_assert_uint_eq(kv_dev_calls("cuMemCreate"), 0);
	map_works_after();
}
END_TEST

/* Trim with the driver refusing to unmap: the pages stay cached. */
START_TEST(test_trim_unmap_fails)
{
	size_t freed = 1;

	make(0);
	ck_assert_int_eq(kv_alloc_map(a, base, 2 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, 2 * PG), 0);
	ck_assert_int_eq(kv_dev_fail_nth("cuMemUnmap", 1, CUDA_ERROR_UNKNOWN), 0);
	ck_assert_int_eq(kv_alloc_trim(a, SIZE_MAX, &freed), KVSHIM_EDRIVER);
	ck_assert_uint_eq(freed, 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 2 * PG);
	ck_assert_int_eq(kv_alloc_trim(a, SIZE_MAX, &freed), 0);
	ck_assert_uint_eq(freed, 2 * PG);
	ck_assert_uint_eq(kt_stats(a).physical_bytes, 0);
}
END_TEST

/* Unmapping three runs with the second failing: the other two go, the
 * failed one stays cached, and nothing is lost or counted twice. */
START_TEST(test_unmap_run_fails_between_good_ones)
{
	size_t freed = 0;

	make(16 * PG);
	ck_assert_int_eq(kv_alloc_map(a, base, 6 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base + 2 * PG, PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base + 4 * PG, PG), 0);
	ck_assert_int_eq(kv_dev_fail_nth("cuMemUnmap", 2, CUDA_ERROR_UNKNOWN), 0);
	ck_assert_int_eq(kv_alloc_trim(a, 3 * PG, &freed), KVSHIM_EDRIVER);
	ck_assert_uint_eq(freed, 2 * PG);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, PG);
	ck_assert_uint_eq(kt_stats(a).physical_bytes, 4 * PG);
	ck_assert_int_eq(kv_alloc_claims(a, base + 2 * PG), 0);
	ck_assert_int_eq(kv_alloc_release(a, base), 0);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 0);
}
END_TEST

/* Creating pages with the scrub arena's mapping failing in the middle:
 * the pages made stay usable, the failed one is neither lost nor reused
 * twice. */
START_TEST(test_create_run_fails_between_good_ones)
{
	struct kvshim_stats s;
	size_t freed = 0;

	make(8 * PG);
	ck_assert_int_eq(kv_alloc_map(a, base, 6 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, 2 * PG), 0);
	ck_assert_int_eq(kv_alloc_trim(a, 2 * PG, &freed), 0);
	ck_assert_int_eq(kv_dev_fail_nth("cuMemMap", 2, CUDA_ERROR_UNKNOWN), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + 10 * PG, 4 * PG), KVSHIM_EDRIVER);
	ck_assert_int_eq(kv_alloc_map(a, base + 10 * PG, 4 * PG), 0);
	s = kt_stats(a);
	ck_assert_uint_eq(s.physical_bytes, 8 * PG);
	ck_assert_uint_eq(s.mapped_bytes, 8 * PG);
	ck_assert_int_eq(kv_alloc_map(a, base + 20 * PG, PG), KVSHIM_ELIMIT);
}
END_TEST

/* A map whose access call fails, and whose undo cannot unmap one page:
 * that page stays in the span as cache, the rest go back to the pool, and
 * everything still adds up. */
START_TEST(test_undo_unmap_fails)
{
	struct kv_alloc_opts o;
	struct kvshim_stats s;
	unsigned long long bad = 1;

	kt_opts(&o);
	o.pool_low = o.pool_high = 8 * PG;
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 64 * PG, &base), 0);
	ck_assert_int_eq(kv_dev_fail_nth("cuMemSetAccess", 1, CUDA_ERROR_UNKNOWN), 0);
	ck_assert_int_eq(kv_dev_fail_nth("cuMemUnmap", 2, CUDA_ERROR_UNKNOWN), 0);
	ck_assert_int_eq(kv_alloc_map(a, base, 3 * PG), KVSHIM_EDRIVER);
	s = kt_stats(a);
	ck_assert_uint_eq(s.mapped_bytes, PG);
	ck_assert_uint_eq(s.cached_bytes, PG);
	ck_assert_uint_eq(s.physical_bytes, 8 * PG);
	ck_assert_int_eq(kv_alloc_claims(a, base), 0);
	ck_assert_int_eq(kv_alloc_claims(a, base + PG), 0);
	/* and the same map then works, the cached page claimed back */
	ck_assert_int_eq(kv_alloc_map(a, base, 3 * PG), 0);
	ck_assert_int_eq(kv_dev_fill(base, 3 * PG, 3), CUDA_SUCCESS);
	ck_assert_int_eq(kv_dev_check(base, 3 * PG, 3, &bad), CUDA_SUCCESS);
	ck_assert_uint_eq(bad, 0);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 3 * PG);
}
END_TEST

/*
 * An allocator of options o (a 64-page span at base) whose map of pages
 * 0 to 2 failed at its access grant, and whose undo could neither unmap
 * page 1 nor grant it access again: page 1 stays cached in its span
 * without access.
 */
static void left_without_access(struct kv_alloc_opts *o)
{
	o->pool_low = o->pool_high = 8 * PG;
	a = kt_create(o);
	ck_assert_int_eq(kv_alloc_reserve(a, 64 * PG, &base), 0);
	ck_assert_int_eq(kv_dev_fail_times("cuMemSetAccess", 1, 2, CUDA_ERROR_UNKNOWN), 0);
	ck_assert_int_eq(kv_dev_fail_nth("cuMemUnmap", 2, CUDA_ERROR_UNKNOWN), 0);
	ck_assert_int_eq(kv_alloc_map(a, base, 3 * PG), KVSHIM_EDRIVER);
	kt_check(a);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, PG);
}

/* n bytes at p take seed's pattern and read it back, and no write met a
 * page without access (on a GPU, an illegal address that breaks the
 * context for good). */
static void all_writable(CUdeviceptr p, size_t n, unsigned seed)
{
	unsigned long long bad = 1;
	char log[16384];

	kt_capture_start();
	ck_assert_int_eq(kv_dev_fill(p, n, seed), CUDA_SUCCESS);
	ck_assert_int_eq(kv_dev_check(p, n, seed, &bad), CUDA_SUCCESS);
	kt_capture_end(log, sizeof(log));
	ck_assert_msg(!strstr(log, "ILLEGAL_ADDRESS"),
		      "a page without access was written: %s", log);
	ck_assert_uint_eq(bad, 0);
}

/*
 * As test_undo_unmap_fails, and the access the undo grants back to the
 * page it keeps is refused too: that page stays in its span without
 * access. The next map over it grants that access before the range counts
 * as backed; refused once more, that map fails and changes nothing. No
 * write ever meets the page without access (on a GPU, an illegal address
 * that breaks the context for good).
 */
START_TEST(test_undo_access_refused_granted_on_claim)
{
	struct kv_alloc_opts o;

	kt_opts(&o);
	left_without_access(&o);
	/* the grant refused again: the map fails with nothing changed */
	ck_assert_int_eq(kv_dev_fail_nth("cuMemSetAccess", 1, CUDA_ERROR_UNKNOWN), 0);
	ck_assert_int_eq(kv_alloc_map(a, base, 3 * PG), KVSHIM_EDRIVER);
	kt_check(a);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, PG);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, PG);
	ck_assert_int_eq(kv_alloc_claims(a, base + PG), 0);
	/* then granted: the range is backed and every byte of it writable */
	ck_assert_int_eq(kv_alloc_map(a, base, 3 * PG), 0);
	all_writable(base, 3 * PG, 3);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 3 * PG);
	kt_check(a);
}
END_TEST

/*
 * As test_undo_access_refused_granted_on_claim, the page without access
 * then pinned by kv_alloc_pin_mapped (a memset of zeros into a span pins
 * what is mapped and writes it): it is granted access first; refused once
 * more, the pin fails and changes nothing.
 */
START_TEST(test_undo_access_refused_granted_on_pin_mapped)
{
	struct kv_alloc_opts o;
	struct kv_run *runs = NULL;
	size_t nruns = 0, i;

	kt_opts(&o);
	left_without_access(&o);
	/* the grant refused again: the pin fails with nothing changed */
	ck_assert_int_eq(kv_dev_fail_nth("cuMemSetAccess", 1, CUDA_ERROR_UNKNOWN), 0);
	ck_assert_int_eq(kv_alloc_pin_mapped(a, base, 3 * PG, &runs, &nruns),
			 KVSHIM_EDRIVER);
	free(runs);
	runs = NULL;
	kt_check(a);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, PG);
	/* then granted: the page it pins is writable */
	ck_assert_int_eq(kv_alloc_pin_mapped(a, base, 3 * PG, &runs, &nruns), 0);
	kt_check(a);
	ck_assert_uint_eq(nruns, 1);
	ck_assert_uint_eq(runs[0].addr, base + PG);
	ck_assert_uint_eq(runs[0].len, PG);
	for (i = 0; i < nruns; i++)
		all_writable(runs[i].addr, runs[i].len, 5);
	free(runs);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 0);
}
END_TEST

/*
 * The page left without access in its span (as in
 * test_undo_access_refused_granted_on_claim) leaves it: reclaimed by a
 * map elsewhere at the limit, with zeroing off (no scrub to grant the
 * arena's access, which it never lost), it is mapped in the other span
 * with access and marked so; every byte of that map is writable.
 */
START_TEST(test_undo_access_refused_page_reclaimed)
{
	struct kv_alloc_opts o;

	kt_opts(&o);
	o.zero = 0;
	o.limit = 8 * PG;
	left_without_access(&o);
	/* every page at the limit: the cached one is reclaimed */
	ck_assert_int_eq(kv_alloc_map(a, base + 16 * PG, 8 * PG), 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 0);
	kt_check(a);
	all_writable(base + 16 * PG, 8 * PG, 4);
	/* and back in the cache and claimed again, no grant is needed */
	ck_assert_int_eq(kv_alloc_unmap(a, base + 16 * PG, 8 * PG), 0);
	ck_assert_int_eq(kv_dev_fail_nth("cuMemSetAccess", 1, CUDA_ERROR_UNKNOWN), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + 16 * PG, 8 * PG), 0);
	ck_assert_int_eq(kv_dev_fail_nth("cuMemSetAccess", 0, CUDA_ERROR_UNKNOWN), 0);
	kt_check(a);
}
END_TEST

/* A span released while the device is full: a map waits for its pages to
 * come back instead of failing. */
START_TEST(test_map_waits_for_released_pages)
{
	struct kv_alloc_opts o;
	struct kvemu_usage u;
	CUdeviceptr filler = 0;
	CUresult (*alloc)(CUdeviceptr *, size_t);
	CUresult (*fr)(CUdeviceptr);
	int i;

	*(void **)&alloc = kv_dev_sym("cuMemAlloc_v2");
	*(void **)&fr = kv_dev_sym("cuMemFree_v2");
	kt_opts(&o);
	o.worker = 1;
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 64 * PG, &base), 0);
	kv_dev_usage(&u);
	/* leave 16 pages of the device free */
	{
		size_t free_b = kt_stats(a).limit_bytes - u.physical_bytes - 16 * PG;

		ck_assert_int_eq(alloc(&filler, free_b), CUDA_SUCCESS);
	}
	for (i = 0; i < 20; i++) {
		CUdeviceptr next;

		ck_assert_int_eq(kv_alloc_map(a, base, 16 * PG), 0);
		ck_assert_int_eq(kv_alloc_reserve(a, 64 * PG, &next), 0);
		ck_assert_int_eq(kv_alloc_release(a, base), 0);
		/* the worker may not have unmapped them yet */
		ck_assert_int_eq(kv_alloc_map(a, next, 16 * PG), 0);
		ck_assert_int_eq(kv_alloc_release(a, next), 0);
		ck_assert_int_eq(kv_alloc_trim(a, SIZE_MAX, NULL), 0);
		ck_assert_int_eq(kv_alloc_reserve(a, 64 * PG, &base), 0);
	}
	ck_assert_int_eq(fr(filler), CUDA_SUCCESS);
}
END_TEST

/* A map at the limit reclaims cached pages; when the driver will not
 * unmap them, the map reports the driver's failure (not the limit) and
 * changes nothing. */
START_TEST(test_reclaim_fails_as_driver)
{
	struct kvshim_stats before;

	make(4 * PG);
	ck_assert_int_eq(kv_alloc_map(a, base, 4 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, 4 * PG), 0);
	before = kt_stats(a);
	ck_assert_uint_eq(before.cached_bytes, 4 * PG);
	ck_assert_int_eq(kv_dev_fail_nth("cuMemUnmap", 1, CUDA_ERROR_UNKNOWN), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + 10 * PG, 2 * PG), KVSHIM_EDRIVER);
	kv_dev_fail_nth("cuMemUnmap", 0, CUDA_SUCCESS);
	assert_span_unchanged(&before, base + 10 * PG, 2);
	ck_assert_uint_eq(kt_stats(a).physical_bytes, 4 * PG);
	/* and with the driver back, the cached pages move over */
	ck_assert_int_eq(kv_alloc_map(a, base + 10 * PG, 2 * PG), 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 2 * PG);
}
END_TEST

/*
 * At the limit, the pages another map is making and mapping (lock
 * dropped) are on their way: a map short of pages meanwhile waits for
 * that map, as it did when the map held the lock, and gets them when the
 * driver fails that map, rather than fail for the limit beside them.
 */
START_TEST(test_limit_waits_for_a_map_in_flight)
{
	struct kt_map m, o;

	make(2 * PG);
	m = (struct kt_map){ .a = a, .addr = base, .len = 2 * PG };
	o = (struct kt_map){ .a = a, .addr = base + 10 * PG, .len = PG };
	/* the arena's access call, then the span's */
	ck_assert_int_eq(kv_dev_fail_nth("cuMemSetAccess", 2, CUDA_ERROR_UNKNOWN), 0);
	/* (o maps after m's failure if it had not reached its wait) */
	kt_map_beside(&m, &o, KVSHIM_EDRIVER);
	kv_dev_fail_nth("cuMemSetAccess", 0, CUDA_SUCCESS);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, PG);
	ck_assert_int_eq(kv_alloc_check(a), 0);
}
END_TEST

/*
 * The device full, a map whose creation the driver refuses for memory
 * (lock dropped) while another thread's release puts pages in the pool
 * takes those: with the lock held, its take would have found them there,
 * and it failed for memory beside them.
 */
START_TEST(test_map_short_of_memory_takes_pages_pooled_meanwhile)
{
	CUresult (*alloc)(CUdeviceptr *, size_t);
	CUresult (*fr)(CUdeviceptr);
	struct kvemu_usage u;
	CUdeviceptr filler = 0, other;
	struct kt_map m;

	*(void **)&alloc = kv_dev_sym("cuMemAlloc_v2");
	*(void **)&fr = kv_dev_sym("cuMemFree_v2");
	make(0);
	ck_assert_int_eq(kv_alloc_reserve(a, 2 * PG, &other), 0);
	ck_assert_int_eq(kv_alloc_map(a, other, 2 * PG), 0);
	kv_dev_usage(&u);
	ck_assert_int_eq(alloc(&filler, kt_stats(a).limit_bytes - u.physical_bytes),
			 CUDA_SUCCESS);
	m = (struct kt_map){ .a = a, .addr = base, .len = 2 * PG };
	ck_assert_int_eq(kv_dev_hold("cuMemCreate", 1), 0);
	kt_map_start(&m);
	ck_assert(kt_wait_held("cuMemCreate"));
	ck_assert_int_eq(kv_alloc_release(a, other), 0);   /* no worker: pooled now */
	kv_dev_hold("cuMemCreate", 0);
	ck_assert_int_eq(kt_map_finish(&m), 0);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 2 * PG);
	ck_assert_int_eq(kv_alloc_check(a), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, 2 * PG), 0);
	ck_assert_int_eq(kv_alloc_trim(a, SIZE_MAX, NULL), 0);
	ck_assert_int_eq(fr(filler), CUDA_SUCCESS);
}
END_TEST

Suite *limit_suite(void)
{
	Suite *s = suite_create("limit");
	TCase *tc = tcase_create("limit");
	TCase *drv = tcase_create("driver-failures");

	tcase_add_checked_fixture(tc, NULL, teardown);
	tcase_add_test(tc, test_limit_refuses_whole);
	tcase_add_test(tc, test_limit_larger_than_limit);
	tcase_add_test(tc, test_limit_takes_cache);
	tcase_add_test(tc, test_limit_percent);
	suite_add_tcase(s, tc);

	tcase_add_checked_fixture(drv, NULL, teardown);
	kt_add_emu(drv, test_device_oom);
	kt_add_emu(drv, test_driver_fails_creating);
	kt_add_emu(drv, test_driver_fails_mapping);
	kt_add_emu(drv, test_trim_unmap_fails);
	kt_add_emu(drv, test_unmap_run_fails_between_good_ones);
	kt_add_emu(drv, test_create_run_fails_between_good_ones);
	kt_add_emu(drv, test_map_waits_for_released_pages);
	kt_add_emu(drv, test_undo_unmap_fails);
	kt_add_emu(drv, test_undo_access_refused_granted_on_claim);
	kt_add_emu(drv, test_undo_access_refused_granted_on_pin_mapped);
	kt_add_emu(drv, test_undo_access_refused_page_reclaimed);
	kt_add_emu(drv, test_reclaim_fails_as_driver);
	kt_add_emu(drv, test_limit_waits_for_a_map_in_flight);
	kt_add_emu(drv, test_map_short_of_memory_takes_pages_pooled_meanwhile);
	suite_add_tcase(s, drv);
	return s;
}
