/*
 * test_span.c - spans, lazy backing, claims and the map/unmap contracts.
 */
#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "alloc_int.h"
#include "suites.h"

static kv_alloc_t *a;
static CUdeviceptr base;

static void setup(void)
{
	struct kv_alloc_opts o;

	kt_opts(&o);
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &base), 0);
}

static void teardown(void)
{
	kt_destroy(a);
}

START_TEST(test_reserve_rounds_up)
{
	CUdeviceptr b, found;
	size_t size;
	struct kvshim_stats s;

	ck_assert_int_eq(kv_alloc_reserve(a, PG + 1, &b), 0);
	ck_assert_int_eq(kv_alloc_find(a, b + PG + 5, &found, &size), 0);
	ck_assert_uint_eq(found, b);
	ck_assert_uint_eq(size, 2 * PG);
	s = kt_stats(a);
	ck_assert_uint_eq(s.reserved_bytes, 18 * PG);
	ck_assert_uint_eq(s.spans, 2);
	ck_assert_uint_eq(s.mapped_bytes, 0);
	ck_assert_int_eq(kv_alloc_release(a, b), 0);
	ck_assert_int_eq(kv_alloc_find(a, b, &found, &size), KVSHIM_ERANGE);
	ck_assert_uint_eq(kt_stats(a).reserved_bytes, 16 * PG);
}
END_TEST

/* Laziness proven by touching: nothing is backed until mapped. */
START_TEST(test_touch_before_map_faults)
{
	unsigned long long bad = 1;

	ck_assert_int_eq(kv_dev_fill(base, PG, 1), CUDA_ERROR_ILLEGAL_ADDRESS);
	ck_assert_int_eq(kv_alloc_map(a, base + 100, 1000), 0);
	ck_assert_int_eq(kv_dev_fill(base, PG, 1), CUDA_SUCCESS);
	ck_assert_int_eq(kv_dev_check(base, PG, 1, &bad), CUDA_SUCCESS);
	ck_assert_uint_eq(bad, 0);
	/* the next page is still unbacked */
	ck_assert_int_eq(kv_dev_fill(base + PG, 4096, 1), CUDA_ERROR_ILLEGAL_ADDRESS);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, PG);
}
END_TEST

/* Two blocks in one page: the page stays until the last claim goes, then
 * stays mapped as cache with its bytes. */
START_TEST(test_claims_share_a_page)
{
	unsigned long long bad = 1;
	struct kvshim_stats s;

	ck_assert_int_eq(kv_alloc_map(a, base, PG / 2), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + PG / 2, PG / 2), 0);
	ck_assert_int_eq(kv_alloc_claims(a, base), 2);
	ck_assert_int_eq(kv_dev_fill(base, PG, 3), CUDA_SUCCESS);
	ck_assert_int_eq(kv_alloc_unmap(a, base, PG / 2), 0);
	ck_assert_int_eq(kv_alloc_claims(a, base), 1);
	s = kt_stats(a);
	ck_assert_uint_eq(s.mapped_bytes, PG);
	ck_assert_uint_eq(s.cached_bytes, 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base + PG / 2, PG / 2), 0);
	ck_assert_int_eq(kv_alloc_claims(a, base), 0);
	s = kt_stats(a);
	ck_assert_uint_eq(s.mapped_bytes, PG);
	ck_assert_uint_eq(s.cached_bytes, PG);
	ck_assert_int_eq(kv_dev_check(base, PG, 3, &bad), CUDA_SUCCESS);
	ck_assert_uint_eq(bad, 0);
	/* claiming the cached page again keeps its bytes */
	ck_assert_int_eq(kv_alloc_map(a, base + 64, 64), 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 0);
	ck_assert_int_eq(kv_dev_check(base, PG, 3, &bad), CUDA_SUCCESS);
	ck_assert_uint_eq(bad, 0);
}
END_TEST

START_TEST(test_straddle_claims_both_pages)
{
	ck_assert_int_eq(kv_alloc_map(a, base + PG - 16, 32), 0);
	ck_assert_int_eq(kv_alloc_claims(a, base), 1);
	ck_assert_int_eq(kv_alloc_claims(a, base + PG), 1);
	ck_assert_int_eq(kv_alloc_claims(a, base + 2 * PG), 0);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 2 * PG);
	ck_assert_int_eq(kv_alloc_unmap(a, base + PG - 16, 32), 0);
	ck_assert_int_eq(kv_alloc_claims(a, base), 0);
	ck_assert_int_eq(kv_alloc_claims(a, base + PG), 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 2 * PG);
}
END_TEST

/* A whole span mapped, and a kernel writes and reads back every page. */
START_TEST(test_every_page_writes_and_reads)
{
	unsigned long long bad = 1;
	size_t i;

	ck_assert_int_eq(kv_alloc_map(a, base, 16 * PG), 0);
	ck_assert_int_eq(kv_dev_fill(base, 16 * PG, 0x5eed), CUDA_SUCCESS);
	ck_assert_int_eq(kv_dev_check(base, 16 * PG, 0x5eed, &bad), CUDA_SUCCESS);
	ck_assert_uint_eq(bad, 0);
	/* a seed per page: each page holds its own bytes, none aliases another */
	for (i = 0; i < 16; i++)
		ck_assert_int_eq(kv_dev_fill(base + i * PG, PG, 100 + i), CUDA_SUCCESS);
	for (i = 0; i < 16; i++) {
		ck_assert_int_eq(kv_dev_check(base + i * PG, PG, 100 + i, &bad), CUDA_SUCCESS);
		ck_assert_uint_eq(bad, 0);
	}
}
END_TEST

START_TEST(test_release_with_claims)
{
	struct kvshim_stats s;

	ck_assert_int_eq(kv_alloc_map(a, base, 5 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, PG), 0);
	ck_assert_int_eq(kv_alloc_release(a, base), 0);
	s = kt_stats(a);
	ck_assert_uint_eq(s.reserved_bytes, 0);
	ck_assert_uint_eq(s.mapped_bytes, 0);
	ck_assert_uint_eq(s.cached_bytes, 0);
	ck_assert_uint_eq(s.pooled_bytes, 5 * PG);
	ck_assert_uint_eq(s.physical_bytes, 5 * PG);
	ck_assert_int_eq(kv_alloc_map(a, base, PG), KVSHIM_ERANGE);
}
END_TEST

/* ---- bad arguments: exact error, no state change ---- */

static void assert_untouched(void)
{
	struct kvshim_stats s = kt_stats(a);

	ck_assert_uint_eq(s.reserved_bytes, 16 * PG);
	ck_assert_uint_eq(s.mapped_bytes, 0);
	ck_assert_uint_eq(s.spans, 1);
}

START_TEST(test_bad_null_and_zero)
{
	CUdeviceptr b = 0;

	ck_assert_int_eq(kv_alloc_map(NULL, base, PG), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_unmap(NULL, base, PG), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_release(NULL, base), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_reserve(NULL, PG, &b), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_reserve(a, PG, NULL), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_reserve(a, 0, &b), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_reserve(a, SIZE_MAX, &b), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_map(a, base, 0), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_unmap(a, base, 0), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_stats(a, NULL), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_trim(NULL, PG, NULL), KVSHIM_EINVAL);
	ck_assert_uint_eq(b, 0);
	assert_untouched();
}
END_TEST

START_TEST(test_bad_outside_span)
{
	ck_assert_int_eq(kv_alloc_map(a, base - 1, 1), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_map(a, base + 16 * PG, 1), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_map(a, 4096, 1), KVSHIM_ERANGE);
	/* starts inside, runs past the end */
	ck_assert_int_eq(kv_alloc_map(a, base + 15 * PG, PG + 1), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_map(a, base, SIZE_MAX), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_unmap(a, base - PG, PG), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_unmap(a, base + 15 * PG, 2 * PG), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_claims(a, base + 16 * PG), KVSHIM_ERANGE);
	assert_untouched();
}
END_TEST

START_TEST(test_bad_release)
{
	ck_assert_int_eq(kv_alloc_release(a, base + PG), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_release(a, base - PG), KVSHIM_ERANGE);
	assert_untouched();
	ck_assert_int_eq(kv_alloc_release(a, base), 0);
	ck_assert_int_eq(kv_alloc_release(a, base), KVSHIM_ERANGE);
}
END_TEST

/* Releasing what was not claimed drops nothing, not even the claims the
 * range does hold. */
START_TEST(test_bad_unmap_unclaimed)
{
	ck_assert_int_eq(kv_alloc_unmap(a, base, PG), KVSHIM_ENOTCLAIMED);
	ck_assert_int_eq(kv_alloc_map(a, base, PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, 2 * PG), KVSHIM_ENOTCLAIMED);
	ck_assert_int_eq(kv_alloc_claims(a, base), 1);
	ck_assert_int_eq(kv_alloc_unmap(a, base, PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, PG), KVSHIM_ENOTCLAIMED);
	ck_assert_int_eq(kv_alloc_claims(a, base), 0);
}
END_TEST

/* ---- driver calls (emulation: counted) ---- */

/* With the pool warm, mapping n pages is n cuMemMap calls and one
 * cuMemSetAccess per contiguous run. */
START_TEST(test_one_access_call_per_run)
{
	struct kv_alloc_opts o;

	kt_destroy(a);
	kt_opts(&o);
	o.pool_low = o.pool_high = 16 * PG;
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &base), 0);
	kv_dev_reset_counts();
	ck_assert_int_eq(kv_alloc_map(a, base, 8 * PG), 0);
	ck_assert_uint_eq(kv_dev_calls("cuMemMap"), 8);
	ck_assert_uint_eq(kv_dev_calls("cuMemSetAccess"), 1);
	/* pages 10 and 13 first: mapping 9..15 then fills three runs */
	ck_assert_int_eq(kv_alloc_map(a, base + 10 * PG, 1), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + 13 * PG, 1), 0);
	kv_dev_reset_counts();
	ck_assert_int_eq(kv_alloc_map(a, base + 9 * PG, 7 * PG), 0);
	ck_assert_uint_eq(kv_dev_calls("cuMemMap"), 5);
	ck_assert_uint_eq(kv_dev_calls("cuMemSetAccess"), 3);
}
END_TEST

START_TEST(test_mapped_page_costs_no_call)
{
	ck_assert_int_eq(kv_alloc_map(a, base, PG), 0);
	kv_dev_reset_counts();
	ck_assert_int_eq(kv_alloc_map(a, base + 4096, 4096), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base + 4096, 4096), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, PG), 0);
	ck_assert_int_eq(kv_alloc_map(a, base, 100), 0);
	ck_assert_uint_eq(kv_dev_calls("cuMemMap"), 0);
	ck_assert_uint_eq(kv_dev_calls("cuMemSetAccess"), 0);
	ck_assert_uint_eq(kv_dev_calls("cuMemUnmap"), 0);
	ck_assert_uint_eq(kv_dev_calls("cuMemCreate"), 0);
	ck_assert_uint_eq(kv_dev_calls("cuMemRelease"), 0);
}
END_TEST

/* ---- pages larger than the granularity ---- */

#define BIG (4 * PG)

static void setup_big(void)
{
	struct kv_alloc_opts o;

	kt_opts(&o);
	o.page = BIG;
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 3 * BIG - PG, &base), 0);
}

START_TEST(test_big_pages)
{
	unsigned long long bad = 1;
	struct kvshim_stats s = kt_stats(a);

	ck_assert_uint_eq(s.page_bytes, BIG);
	ck_assert_uint_eq(s.reserved_bytes, 3 * BIG);
	ck_assert_int_eq(kv_alloc_map(a, base + BIG - 8, 16), 0);
	ck_assert_int_eq(kv_alloc_claims(a, base), 1);
	ck_assert_int_eq(kv_alloc_claims(a, base + BIG), 1);
	ck_assert_int_eq(kv_alloc_claims(a, base + 2 * BIG), 0);
	s = kt_stats(a);
	ck_assert_uint_eq(s.mapped_bytes, 2 * BIG);
	ck_assert_uint_eq(s.pages_mapped, 2);
	ck_assert_int_eq(kv_dev_fill(base, 2 * BIG, 21), CUDA_SUCCESS);
	ck_assert_int_eq(kv_dev_check(base, 2 * BIG, 21, &bad), CUDA_SUCCESS);
	ck_assert_uint_eq(bad, 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base + BIG - 8, 16), 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 2 * BIG);
}
END_TEST

/* One mapping, and so one access call, per big page. */
START_TEST(test_big_pages_one_map_each)
{
	kv_dev_reset_counts();
	ck_assert_int_eq(kv_alloc_map(a, base, 3 * BIG), 0);
	ck_assert_uint_eq(kv_dev_calls("cuMemCreate"), 3);
	/* three in the span, three in the scrub arena */
	ck_assert_uint_eq(kv_dev_calls("cuMemMap"), 6);
	ck_assert_uint_eq(kv_dev_calls("cuMemSetAccess"), 2);
}
END_TEST

START_TEST(test_bad_page_size)
{
	struct kv_alloc_opts o;
	kv_alloc_t *b = NULL;

	kt_opts(&o);
	o.page = 3 * PG / 2;
	ck_assert_int_eq(kv_alloc_create(&o, &b), KVSHIM_EINVAL);
	ck_assert_ptr_null(b);
}
END_TEST

/* ---- many ranges at once ---- */

/* Blocks of two spans in one call: shared pages backed once, claimed once
 * per range, one access call per contiguous run of each span. */
START_TEST(test_map_many)
{
	struct kv_alloc_opts o;
	CUdeviceptr other;
	struct kv_run r[4];

	kt_destroy(a);
	kt_opts(&o);
	o.pool_low = o.pool_high = 16 * PG;
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &base), 0);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &other), 0);
	r[0] = (struct kv_run){ base + PG / 2, PG / 2, 0 };        /* page 0 */
	r[1] = (struct kv_run){ base, PG / 4, 0 };                 /* page 0 again */
	r[2] = (struct kv_run){ base + PG - 64, 128, 0 };          /* pages 0, 1 */
	r[3] = (struct kv_run){ other + 3 * PG, 2 * PG, 0 };       /* pages 3, 4 */
	kv_dev_reset_counts();
	ck_assert_int_eq(kv_alloc_map_many(a, r, 4), 0);
	ck_assert_uint_eq(kv_dev_calls("cuMemMap"), 4);
	ck_assert_uint_eq(kv_dev_calls("cuMemSetAccess"), 2);
	ck_assert_int_eq(kv_alloc_claims(a, base), 3);
	ck_assert_int_eq(kv_alloc_claims(a, base + PG), 1);
	ck_assert_int_eq(kv_alloc_claims(a, other + 3 * PG), 1);
	ck_assert_int_eq(kv_alloc_claims(a, other + 4 * PG), 1);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 4 * PG);
	ck_assert_uint_eq(kt_stats(a).map_calls, 1);
	/* all claims go in one call; the pages stay as cache */
	ck_assert_int_eq(kv_alloc_unmap_many(a, r, 4), 0);
	ck_assert_int_eq(kv_alloc_claims(a, base), 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 4 * PG);
	/* and again: cached pages are claimed back with no driver call */
	kv_dev_reset_counts();
	ck_assert_int_eq(kv_alloc_map_many(a, r, 4), 0);
	ck_assert_uint_eq(kv_dev_calls("cuMemMap"), 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 0);
}
END_TEST

/* One range that cannot be backed fails the whole call. */
START_TEST(test_map_many_all_or_nothing)
{
	struct kv_alloc_opts o;
	struct kvshim_stats s0, s1;
	struct kv_run r[3];

	kt_destroy(a);
	kt_opts(&o);
	o.limit = 3 * PG;
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &base), 0);
	ck_assert_int_eq(kv_alloc_map(a, base, PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, PG), 0);      /* page 0 cached */
	r[0] = (struct kv_run){ base, 64, 0 };
	r[1] = (struct kv_run){ base + 2 * PG, 2 * PG, 0 };
	r[2] = (struct kv_run){ base + 8 * PG, PG, 0 };
	s0 = kt_stats(a);
	ck_assert_int_eq(kv_alloc_map_many(a, r, 3), KVSHIM_ELIMIT);
	s1 = kt_stats(a);
	ck_assert_uint_eq(s1.mapped_bytes, s0.mapped_bytes);
	ck_assert_uint_eq(s1.cached_bytes, PG);
	ck_assert_int_eq(kv_alloc_claims(a, base), 0);
	ck_assert_int_eq(kv_alloc_claims(a, base + 2 * PG), 0);
	/* a bad range among good ones: nothing happens either */
	r[2] = (struct kv_run){ base + 16 * PG, PG, 0 };
	ck_assert_int_eq(kv_alloc_map_many(a, r, 3), KVSHIM_ERANGE);
	r[2] = (struct kv_run){ base + 8 * PG, 0, 0 };
	ck_assert_int_eq(kv_alloc_map_many(a, r, 3), KVSHIM_EINVAL);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, s0.mapped_bytes);
	ck_assert_int_eq(kv_alloc_map_many(a, r, 2), 0);
	ck_assert_int_eq(kv_alloc_claims(a, base), 1);
	ck_assert_uint_eq(kt_stats(a).physical_bytes, 3 * PG);
}
END_TEST

/* Unmapping ranges of which one holds no claim drops nothing. */
START_TEST(test_unmap_many_all_or_nothing)
{
	struct kv_run r[3] = {
		{ base, PG, 0 }, { base + PG, PG, 0 }, { base + 5 * PG, PG, 0 }
	};

	ck_assert_int_eq(kv_alloc_map_many(a, r, 2), 0);
	ck_assert_int_eq(kv_alloc_unmap_many(a, r, 3), KVSHIM_ENOTCLAIMED);
	ck_assert_int_eq(kv_alloc_claims(a, base), 1);
	ck_assert_int_eq(kv_alloc_claims(a, base + PG), 1);
	ck_assert_int_eq(kv_alloc_unmap_many(NULL, r, 2), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_unmap_many(a, NULL, 2), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_unmap_many(a, r, 0), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_map_many(a, NULL, 1), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_unmap_many(a, r, 2), 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 2 * PG);
}
END_TEST

START_TEST(test_headroom)
{
	struct kv_alloc_opts o;
	size_t h = 0;

	kt_destroy(a);
	kt_opts(&o);
	o.limit = 8 * PG;
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &base), 0);
	ck_assert_int_eq(kv_alloc_headroom(a, &h), 0);
	ck_assert_uint_eq(h, 8 * PG);
	ck_assert_int_eq(kv_alloc_map(a, base, 3 * PG), 0);
	ck_assert_int_eq(kv_alloc_headroom(a, &h), 0);
	ck_assert_uint_eq(h, 5 * PG);
	ck_assert_int_eq(kv_alloc_unmap(a, base, PG), 0);
	ck_assert_int_eq(kv_alloc_headroom(a, &h), 0);
	ck_assert_uint_eq(h, 6 * PG);
	ck_assert_int_eq(kv_alloc_headroom(a, NULL), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_headroom(NULL, &h), KVSHIM_EINVAL);
}
END_TEST

/* The cost of ranges counts their cached pages too (the map takes them
 * out of the cache, which the headroom counts as room): an admission check
 * built on the two never says yes to a map that then fails. */
START_TEST(test_cost_counts_cached_pages)
{
	struct kv_alloc_opts o;
	struct kv_run r[2];
	size_t cost = 0, room = 0;

	kt_destroy(a);
	kt_opts(&o);
	o.limit = 4 * PG;
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 64 * PG, &base), 0);
	ck_assert_int_eq(kv_alloc_map(a, base, 4 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, PG), 0);      /* page 0 cached */
	r[0] = (struct kv_run){ base, PG, 0 };
	r[1] = (struct kv_run){ base + 10 * PG, PG, 0 };
	ck_assert_int_eq(kv_alloc_cost_many(a, r, 2, &cost), 0);
	ck_assert_int_eq(kv_alloc_headroom(a, &room), 0);
	ck_assert_uint_eq(cost, 2 * PG);
	ck_assert_uint_eq(room, PG);
	ck_assert_int_eq(kv_alloc_map_many(a, r, 2), KVSHIM_ELIMIT);
	/* one range alone fits, and cost and headroom agree */
	ck_assert_int_eq(kv_alloc_cost_many(a, r, 1, &cost), 0);
	ck_assert_uint_le(cost, room);
	ck_assert_int_eq(kv_alloc_map_many(a, r, 1), 0);
	ck_assert_int_eq(kv_alloc_cost_many(a, r, 1, &cost), 0);
	ck_assert_uint_eq(cost, 0);
}
END_TEST

/* Pins: backed until the span goes, however often; no claim counted. */
START_TEST(test_pin)
{
	struct kv_run *runs = NULL;
	size_t nruns = 0;
	int i;

	for (i = 0; i < 3; i++)
		ck_assert_int_eq(kv_alloc_pin(a, base + 10, 2 * PG), 0);
	ck_assert_int_eq(kv_alloc_claims(a, base), 0);
	ck_assert_int_eq(kv_alloc_claims(a, base + 2 * PG), 0);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 3 * PG);
	/* a claim on a pinned page comes and goes; the page stays */
	ck_assert_int_eq(kv_alloc_map(a, base, 64), 0);
	ck_assert_int_eq(kv_alloc_claims(a, base), 1);
	ck_assert_int_eq(kv_alloc_unmap(a, base, 64), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, 64), KVSHIM_ENOTCLAIMED);
	ck_assert_int_eq(kv_alloc_trim(a, SIZE_MAX, NULL), 0);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 3 * PG);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 0);
	/* pinning what is mapped: a cached page leaves the cache, unbacked
	 * pages stay unbacked, the runs cover the mapped part only */
	ck_assert_int_eq(kv_alloc_map(a, base + 5 * PG, PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base + 5 * PG, PG), 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, PG);
	ck_assert_int_eq(kv_alloc_pin_mapped(a, base + 4 * PG, 3 * PG, &runs,
					     &nruns), 0);
	ck_assert_uint_eq(nruns, 1);
	ck_assert_uint_eq(runs[0].addr, base + 5 * PG);
	ck_assert_uint_eq(runs[0].len, PG);
	free(runs);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 0);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 4 * PG);
	ck_assert_int_eq(kv_alloc_pin(a, base, 0), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_pin(a, base + 16 * PG, 1), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_pin(NULL, base, 1), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_pin_mapped(a, base, 1, NULL, &nruns),
			 KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_pin_mapped(a, base + 16 * PG, 1, &runs,
					     &nruns), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_pin_mapped(a, base, (size_t)-1, &runs,
					     &nruns), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_release(a, base), 0);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 0);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &base), 0);
}
END_TEST

/* A page's claims cannot wrap: a map that would pass the most a page can
 * carry fails whole. */
START_TEST(test_claims_cannot_wrap)
{
	struct kv_run r[2] = { { base, 64, 0 }, { base + PG, 64, 0 } };

	ck_assert_int_eq(kv_alloc_map(a, base, 2 * PG), 0);
	ck_assert_int_eq(kv_alloc_debug_claims(a, base + PG, UINT32_MAX - 2), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + PG, 64), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + PG, 64), KVSHIM_ELIMIT);
	ck_assert_int_eq(kv_alloc_map_many(a, r, 2), KVSHIM_ELIMIT);
	ck_assert_int_eq(kv_alloc_claims(a, base), 1);
	ck_assert_int_eq(kv_alloc_claims(a, base + PG), INT32_MAX);
	ck_assert_int_eq(kv_alloc_unmap(a, base + PG, 64), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + PG, 64), 0);
	/* the setter refuses what the checker would */
	ck_assert_int_eq(kv_alloc_debug_claims(a, base, UINT32_MAX), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_debug_claims(a, base, 0), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_debug_claims(a, base + 3 * PG, 1), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_debug_claims(a, base + 16 * PG, 1), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_debug_claims(a, base + PG, 1), 0);
}
END_TEST

/* A range naming its span by id lands only in that span: once it is
 * released, a new span at the same address refuses it. */
START_TEST(test_span_ids)
{
	struct kv_run r = { 0, PG, 0 };
	CUdeviceptr b, again;
	uint64_t id, id2;
	size_t size;

	ck_assert_int_eq(kv_alloc_reserve(a, 4 * PG, &b), 0);
	ck_assert_int_eq(kv_alloc_span(a, b + PG, &again, &size, &id), 0);
	ck_assert_uint_eq(again, b);
	ck_assert_uint_eq(size, 4 * PG);
	ck_assert_uint_ne(id, 0);
	r.addr = b;
	r.span = id;
	ck_assert_int_eq(kv_alloc_map_many(a, &r, 1), 0);
	r.span = id + 1000;
	ck_assert_int_eq(kv_alloc_map_many(a, &r, 1), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_cost_many(a, &r, 1, &size), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_unmap_many(a, &r, 1), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_release(a, b), 0);
	ck_assert_int_eq(kv_alloc_reserve(a, 4 * PG, &again), 0);
	ck_assert_int_eq(kv_alloc_span(a, again, NULL, NULL, &id2), 0);
	ck_assert_uint_ne(id2, id);
	r.addr = again;
	r.span = id;
	ck_assert_int_eq(kv_alloc_map_many(a, &r, 1), KVSHIM_ERANGE);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 0);
	ck_assert_int_eq(kv_alloc_span(a, (CUdeviceptr)4096, NULL, NULL, &id2),
			 KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_span(NULL, base, NULL, NULL, &id2), KVSHIM_EINVAL);
}
END_TEST

static void *map_first_page(void *arg)
{
	(void)arg;
	return (void *)(intptr_t)kv_alloc_map(a, base, PG);
}

struct look_up {
	CUdeviceptr addr;
	int rc;
	int done;
};

static void *look_up(void *arg)
{
	struct look_up *l = arg;

	l->rc = kv_alloc_span(a, l->addr, NULL, NULL, NULL);
	__atomic_store_n(&l->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/*
 * A look-up (what every hooked copy and memset makes) does not wait for a
 * map that holds the allocator's lock across its driver calls (held here
 * in the driver's cuMemCreate): it answers while the map waits, for an
 * address in a span and one in none.
 */
START_TEST(test_lookup_beside_a_map)
{
	struct look_up in = { base + 2 * PG, -1, 0 }, out = { 4096, -1, 0 };
	pthread_t mapper, t1, t2;
	void *rc;
	int done;

	ck_assert_int_eq(kv_dev_hold("cuMemCreate", 1), 0);
	ck_assert_int_eq(pthread_create(&mapper, NULL, map_first_page, NULL), 0);
	ck_assert(kt_wait_held("cuMemCreate"));
	ck_assert_int_eq(pthread_create(&t1, NULL, look_up, &in), 0);
	ck_assert_int_eq(pthread_create(&t2, NULL, look_up, &out), 0);
	done = kt_wait_flag(&in.done) && kt_wait_flag(&out.done);
	kv_dev_hold("cuMemCreate", 0);
	ck_assert_int_eq(pthread_join(t1, NULL), 0);
	ck_assert_int_eq(pthread_join(t2, NULL), 0);
	ck_assert_int_eq(pthread_join(mapper, &rc), 0);
	ck_assert_msg(done, "a look-up waited for the map in the driver");
	ck_assert_int_eq(in.rc, 0);
	ck_assert_int_eq(out.rc, KVSHIM_ERANGE);
	ck_assert_int_eq((int)(intptr_t)rc, 0);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, PG);
}
END_TEST

struct call {
	int what;               /* CALL_MAP, CALL_UNMAP, CALL_HEADROOM, CALL_RELEASE */
	CUdeviceptr addr;
	size_t len;
	int rc;
	int done;
};

enum { CALL_MAP, CALL_UNMAP, CALL_HEADROOM, CALL_RELEASE };

static void *call(void *arg)
{
	struct call *c = arg;
	size_t room;

	switch (c->what) {
	case CALL_MAP:
		c->rc = kv_alloc_map(a, c->addr, c->len);
		break;
	case CALL_UNMAP:
		c->rc = kv_alloc_unmap(a, c->addr, c->len);
		break;
	case CALL_HEADROOM:
		c->rc = kv_alloc_headroom(a, &room);
		break;
	default:
		c->rc = kv_alloc_release(a, c->addr);
	}
	__atomic_store_n(&c->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void start(pthread_t *t, struct call *c)
{
	ck_assert_int_eq(pthread_create(t, NULL, call, c), 0);
}

static int finish(pthread_t t, struct call *c)
{
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	return c->rc;
}

/*
 * A map makes, scrubs and maps its new pages with the allocator's lock
 * dropped (held here in the driver's cuMemCreate): the process's other
 * calls on pages already backed, a claim and its drop, and its headroom,
 * answer while it waits.
 */
START_TEST(test_calls_beside_a_map)
{
	struct call m = { CALL_MAP, base, PG, -1, 0 };
	struct call c[3] = { { CALL_MAP, base + 4 * PG, PG, -1, 0 },
			     { CALL_UNMAP, base + 5 * PG, PG, -1, 0 },
			     { CALL_HEADROOM, 0, 0, -1, 0 } };
	pthread_t mt, t[3];
	int i, done = 1;

	ck_assert_int_eq(kv_alloc_map(a, base + 4 * PG, 2 * PG), 0);
	ck_assert_int_eq(kv_dev_hold("cuMemCreate", 1), 0);
	start(&mt, &m);
	ck_assert(kt_wait_held("cuMemCreate"));
	for (i = 0; i < 3; i++)
		start(&t[i], &c[i]);
	for (i = 0; i < 3; i++)
		done &= kt_wait_flag(&c[i].done);
	ck_assert_int_eq(__atomic_load_n(&m.done, __ATOMIC_ACQUIRE), 0);
	kv_dev_hold("cuMemCreate", 0);
	for (i = 0; i < 3; i++)
		ck_assert_int_eq(finish(t[i], &c[i]), 0);
	ck_assert_int_eq(finish(mt, &m), 0);
	ck_assert_msg(done, "a call waited for the map in the driver");
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 3 * PG);
	ck_assert_int_eq(kv_alloc_unmap(a, base + 4 * PG, PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base + 4 * PG, PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base + 4 * PG, PG), KVSHIM_ENOTCLAIMED);
	ck_assert_int_eq(kv_alloc_check(a), 0);
}
END_TEST

/* Call o while map m waits in the driver's cuMemCreate: o cannot end
 * before m does; both return 0. */
static void beside_held_map(struct call *m, struct call *o)
{
	pthread_t mt, ot;

	ck_assert_int_eq(kv_dev_hold("cuMemCreate", 1), 0);
	start(&mt, m);
	ck_assert(kt_wait_held("cuMemCreate"));
	start(&ot, o);
	ck_assert_int_eq(__atomic_load_n(&o->done, __ATOMIC_ACQUIRE), 0);
	kv_dev_hold("cuMemCreate", 0);
	ck_assert_int_eq(finish(mt, m), 0);
	ck_assert_int_eq(finish(ot, o), 0);
}

/*
 * A page another map is backing, lock dropped, is in flight: a map that
 * covers it waits, then claims the page that map backed (no second page),
 * and a release of the span waits until the map is done.
 */
START_TEST(test_page_in_flight_waits)
{
	struct call m = { CALL_MAP, base, 2 * PG, -1, 0 };
	struct call o = { CALL_MAP, base + PG, 2 * PG, -1, 0 };

	beside_held_map(&m, &o);
	ck_assert_uint_eq(kt_stats(a).pages_created, 3);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 3 * PG);
	ck_assert_int_eq(kv_alloc_unmap(a, base + PG, PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base + PG, PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base + PG, PG), KVSHIM_ENOTCLAIMED);
	ck_assert_int_eq(kv_alloc_check(a), 0);

	m = (struct call){ CALL_MAP, base + 8 * PG, 2 * PG, -1, 0 };
	o = (struct call){ CALL_RELEASE, base, 0, -1, 0 };
	beside_held_map(&m, &o);
	ck_assert_uint_eq(kt_stats(a).spans, 0);
	ck_assert_int_eq(kv_alloc_check(a), 0);
}
END_TEST

/* A two-range map on another thread (map_two). */
struct two {
	struct kv_run r[2];
	int rc;
	int done;
};

static void *map_two(void *arg)
{
	struct two *t = arg;

	t->rc = kv_alloc_map_many(a, t->r, 2);
	__atomic_store_n(&t->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/*
 * A map that backs pages of one span and claims backed pages of another
 * has the lock dropped while it makes the new ones: a release of the other
 * span, though none of its pages is pending, waits until the map is done
 * (the map claims in it afterwards), as it did when the map held the lock.
 */
START_TEST(test_release_waits_for_a_map_over_it)
{
	struct timespec nap = { 0, 200 * 1000 * 1000 };
	struct two m = { { { base, PG, 0 }, { 0, PG, 0 } }, -1, 0 };
	struct call o = { CALL_RELEASE, 0, 0, -1, 0 };
	CUdeviceptr other;
	pthread_t mt, ot;

	ck_assert_int_eq(kv_alloc_reserve(a, 2 * PG, &other), 0);
	ck_assert_int_eq(kv_alloc_map(a, other, PG), 0);
	m.r[1].addr = other;
	o.addr = other;
	ck_assert_int_eq(kv_dev_hold("cuMemCreate", 1), 0);
	ck_assert_int_eq(pthread_create(&mt, NULL, map_two, &m), 0);
	ck_assert(kt_wait_held("cuMemCreate"));
	start(&ot, &o);
	nanosleep(&nap, NULL);
	ck_assert_msg(!__atomic_load_n(&o.done, __ATOMIC_ACQUIRE),
		      "a span was released under a map that claims its pages");
	kv_dev_hold("cuMemCreate", 0);
	ck_assert_int_eq(pthread_join(mt, NULL), 0);
	ck_assert_int_eq(m.rc, 0);
	ck_assert_int_eq(finish(ot, &o), 0);
	ck_assert_uint_eq(kt_stats(a).spans, 1);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, PG);
	ck_assert_int_eq(kv_alloc_unmap(a, base, PG), 0);
	ck_assert_int_eq(kv_alloc_check(a), 0);
}
END_TEST

/* A pin of two pages on another thread (pin_thread). */
static void *pin_thread(void *arg)
{
	struct call *c = arg;

	c->rc = kv_alloc_pin(a, c->addr, c->len);
	__atomic_store_n(&c->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/*
 * A map with the lock dropped holds a claim on the backed pages it covers
 * until it is done: another thread's unmap of such a page that holds no
 * claim of its own finds none to drop (KVSHIM_ENOTCLAIMED), as it did
 * before or after the map when the map held the lock. Dropped, the claim
 * a pin turns into its pin was gone: the pinned page went to the cache,
 * its claims wrapped.
 */
START_TEST(test_unmap_beside_a_map_leaves_its_claims)
{
	struct call m = { CALL_MAP, base, 2 * PG, -1, 0 };
	pthread_t mt;
	int rc;

	ck_assert_int_eq(kv_alloc_map(a, base, PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, PG), 0);       /* cached */
	ck_assert_int_eq(kv_dev_hold("cuMemCreate", 1), 0);
	ck_assert_int_eq(pthread_create(&mt, NULL, pin_thread, &m), 0);
	ck_assert(kt_wait_held("cuMemCreate"));
	rc = kv_alloc_unmap(a, base, PG);
	kv_dev_hold("cuMemCreate", 0);
	ck_assert_int_eq(finish(mt, &m), 0);
	ck_assert_int_eq(rc, KVSHIM_ENOTCLAIMED);
	ck_assert_int_eq(kv_alloc_claims(a, base), 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 0);         /* both pinned */
	ck_assert_int_eq(kv_alloc_check(a), 0);
}
END_TEST

/* The checker is no formality: it notices a count, a list or a span page
 * that disagrees with the slots. */
START_TEST(test_checker_notices)
{
	struct kv_span *sp;
	uint32_t s;

	ck_assert_int_eq(kv_alloc_map(a, base, 3 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base + PG, PG), 0);
	ck_assert_int_eq(kv_alloc_check(a), 0);
	ck_assert_int_eq(kv_alloc_check(NULL), KVSHIM_EINVAL);

	a->n[KV_P_CACHED]++;
	ck_assert_int_eq(kv_alloc_check(a), KVSHIM_ESTATE);
	a->n[KV_P_CACHED]--;

	sp = a->spans[0];
	s = sp->slot[1];
	a->phys[s].state = KV_P_MAPPED;         /* cached, yet says mapped */
	ck_assert_int_eq(kv_alloc_check(a), KVSHIM_ESTATE);
	a->phys[s].state = KV_P_CACHED;

	a->phys[sp->slot[0]].noaccess = 1;      /* mapped, no arena access */
	ck_assert_int_eq(kv_alloc_check(a), KVSHIM_ESTATE);
	a->phys[sp->slot[0]].noaccess = 0;

	sp->claims[1] = 1;                      /* a claim on a cached page */
	ck_assert_int_eq(kv_alloc_check(a), KVSHIM_ESTATE);
	sp->claims[1] = 0;

	sp->mapped++;
	ck_assert_int_eq(kv_alloc_check(a), KVSHIM_ESTATE);
	sp->mapped--;

	a->reserved += PG;
	ck_assert_int_eq(kv_alloc_check(a), KVSHIM_ESTATE);
	a->reserved -= PG;

	sp->slot[5] = sp->slot[0];              /* one page in two places */
	ck_assert_int_eq(kv_alloc_check(a), KVSHIM_ESTATE);
	sp->slot[5] = KV_NIL;

	sp->slot[6] = KV_PEND;                  /* being backed, uncounted */
	ck_assert_int_eq(kv_alloc_check(a), KVSHIM_ESTATE);
	sp->pending++;
	ck_assert_int_eq(kv_alloc_check(a), 0);
	sp->claims[6] = 1;                      /* and claimed before it is */
	ck_assert_int_eq(kv_alloc_check(a), KVSHIM_ESTATE);
	sp->claims[6] = 0;
	sp->pending--;
	sp->slot[6] = KV_NIL;
	ck_assert_int_eq(kv_alloc_check(a), 0);
}
END_TEST


/* ---- a release whose unmap fails; claims counted per page ---- */

/*
 * Without a worker (it could not start, or has no context), a release
 * unmaps the span's pages itself; when the driver refuses that unmap, the
 * span is released all the same and the release returns 0 (its pages are
 * left to a later reap): reported as an error, the caller would retry a
 * release that finds no span, and kv_policy_free, reading the error as
 * "not a span", would hand the span's address to the driver's cuMemFree.
 */
START_TEST(test_failed_unmap_still_releases)
{
	CUdeviceptr b = 0;
	size_t sz = 0;
	int rc, found;

	ck_assert_int_eq(kv_alloc_map(a, base, 4 * PG), 0);
	ck_assert_int_eq(kv_dev_fail_nth("cuMemUnmap", 1, CUDA_ERROR_UNKNOWN), 0);
	rc = kv_alloc_release(a, base);
	found = kv_alloc_find(a, base, &b, &sz) == 0;
	ck_assert_msg(rc == 0 && !found, "release returned %d, the span %s", rc,
		      found ? "still there" : "gone");
}
END_TEST

/*
 * Claims are counted per page, not per range (README: an unmap must match
 * a map the caller made): an unmap of a range never mapped, beside a
 * mapped one on the same page, drops the page's claim, and a trim may then
 * take the page; only on a page with no claim is it refused.
 */
START_TEST(test_unmap_counts_claims_per_page)
{
	size_t freed = 0;

	ck_assert_int_eq(kv_alloc_map(a, base, PG / 2), 0);             /* block A */
	ck_assert_int_eq(kv_alloc_unmap(a, base + PG / 2, PG / 2), 0);  /* B: never mapped */
	ck_assert_int_eq(kv_alloc_unmap(a, base, PG / 2), KVSHIM_ENOTCLAIMED);
	ck_assert_int_eq(kv_alloc_trim(a, PG, &freed), 0);
	ck_assert_uint_eq(freed, PG);
}
END_TEST

Suite *span_suite(void)
{
	Suite *s = suite_create("span");
	TCase *tc = tcase_create("claims");
	TCase *bad = tcase_create("bad-input");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_reserve_rounds_up);
	kt_add_emu(tc, test_touch_before_map_faults);
	tcase_add_test(tc, test_claims_share_a_page);
	tcase_add_test(tc, test_straddle_claims_both_pages);
	tcase_add_test(tc, test_every_page_writes_and_reads);
	tcase_add_test(tc, test_release_with_claims);
	kt_add_emu(tc, test_one_access_call_per_run);
	kt_add_emu(tc, test_mapped_page_costs_no_call);
	tcase_add_test(tc, test_pin);
	tcase_add_test(tc, test_claims_cannot_wrap);
	tcase_add_test(tc, test_span_ids);
	kt_add_emu(tc, test_lookup_beside_a_map);
	kt_add_emu(tc, test_calls_beside_a_map);
	kt_add_emu(tc, test_page_in_flight_waits);
	kt_add_emu(tc, test_release_waits_for_a_map_over_it);
	kt_add_emu(tc, test_unmap_beside_a_map_leaves_its_claims);
	tcase_add_test(tc, test_checker_notices);
	suite_add_tcase(s, tc);

	tcase_add_checked_fixture(bad, setup, teardown);
	tcase_add_test(bad, test_bad_null_and_zero);
	tcase_add_test(bad, test_bad_outside_span);
	tcase_add_test(bad, test_bad_release);
	tcase_add_test(bad, test_bad_unmap_unclaimed);
	tcase_add_test(bad, test_bad_page_size);
	kt_add_emu(bad, test_failed_unmap_still_releases);
	tcase_add_test(bad, test_unmap_counts_claims_per_page);
	suite_add_tcase(s, bad);

	tc = tcase_create("many");
	tcase_add_checked_fixture(tc, setup, teardown);
	kt_add_emu(tc, test_map_many);
	tcase_add_test(tc, test_map_many_all_or_nothing);
	tcase_add_test(tc, test_unmap_many_all_or_nothing);
	tcase_add_test(tc, test_headroom);
	tcase_add_test(tc, test_cost_counts_cached_pages);
	suite_add_tcase(s, tc);

	tc = tcase_create("big-pages");
	tcase_add_checked_fixture(tc, setup_big, teardown);
	tcase_add_test(tc, test_big_pages);
	kt_add_emu(tc, test_big_pages_one_map_each);
	suite_add_tcase(s, tc);
	return s;
}
