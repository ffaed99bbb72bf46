/*
 * test_reclaim.c - deferred reclaim (cached pages), trim, the cache cap and
 * zero on map.
 */
#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "alloc_int.h"
#include "suites.h"

static kv_alloc_t *a;
static CUdeviceptr base;

static void make(int zero, size_t cache_max)
{
	struct kv_alloc_opts o;

	kt_opts(&o);
	o.zero = zero;
	o.cache_max = cache_max;
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 32 * PG, &base), 0);
}

static void setup(void)
{
	make(1, SIZE_MAX);
}

static void teardown(void)
{
	kt_destroy(a);
}

START_TEST(test_trim_unmaps_cached_oldest_first)
{
	struct kvshim_stats s;
	size_t freed = 0;

	ck_assert_int_eq(kv_alloc_map(a, base, 6 * PG), 0);
	/* cache pages 4, 5 first, then 0, 1 */
	ck_assert_int_eq(kv_alloc_unmap(a, base + 4 * PG, 2 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, 2 * PG), 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 4 * PG);
	ck_assert_int_eq(kv_alloc_trim(a, 2 * PG, &freed), 0);
	ck_assert_uint_eq(freed, 2 * PG);
	s = kt_stats(a);
	ck_assert_uint_eq(s.cached_bytes, 2 * PG);
	ck_assert_uint_eq(s.mapped_bytes, 4 * PG);
	ck_assert_uint_eq(s.physical_bytes, 4 * PG);
	ck_assert_uint_eq(s.pages_unmapped, 2);
	ck_assert_uint_eq(s.pages_released, 2);
	/* 4 and 5 went; 0 and 1 are still mapped */
	ck_assert_int_eq(kv_alloc_map(a, base, 2 * PG), 0);
	ck_assert_uint_eq(kt_stats(a).pages_mapped, 6);
	ck_assert_int_eq(kv_alloc_map(a, base + 4 * PG, 2 * PG), 0);
	ck_assert_uint_eq(kt_stats(a).pages_mapped, 8);
}
END_TEST

START_TEST(test_trim_pool_first)
{
	size_t freed = 0;
	struct kvshim_stats s;

	ck_assert_int_eq(kv_alloc_map(a, base, 4 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, 4 * PG), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + 8 * PG, 3 * PG), 0);
	ck_assert_int_eq(kv_alloc_release(a, base), 0);  /* 7 pages pooled */
	ck_assert_int_eq(kv_alloc_reserve(a, 8 * PG, &base), 0);
	ck_assert_int_eq(kv_alloc_map(a, base, 2 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, 2 * PG), 0);
	s = kt_stats(a);
	ck_assert_uint_eq(s.pooled_bytes, 5 * PG);
	ck_assert_uint_eq(s.cached_bytes, 2 * PG);
	ck_assert_int_eq(kv_alloc_trim(a, 6 * PG, &freed), 0);
	ck_assert_uint_eq(freed, 6 * PG);
	s = kt_stats(a);
	ck_assert_uint_eq(s.pooled_bytes, 0);
	ck_assert_uint_eq(s.cached_bytes, PG);
	ck_assert_uint_eq(s.physical_bytes, PG);
	/* everything */
	ck_assert_int_eq(kv_alloc_trim(a, SIZE_MAX, &freed), 0);
	ck_assert_uint_eq(freed, PG);
	ck_assert_uint_eq(kt_stats(a).physical_bytes, 0);
}
END_TEST

/* Claimed pages are never trimmed. */
START_TEST(test_trim_spares_claimed)
{
	size_t freed = 1;
	unsigned long long bad = 1;

	ck_assert_int_eq(kv_alloc_map(a, base, 3 * PG), 0);
	ck_assert_int_eq(kv_dev_fill(base, 3 * PG, 9), CUDA_SUCCESS);
	ck_assert_int_eq(kv_alloc_trim(a, SIZE_MAX, &freed), 0);
	ck_assert_uint_eq(freed, 0);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 3 * PG);
	ck_assert_int_eq(kv_dev_check(base, 3 * PG, 9, &bad), CUDA_SUCCESS);
	ck_assert_uint_eq(bad, 0);
}
END_TEST

/* Trimming a run of cached pages costs one unmap call. */
START_TEST(test_trim_in_runs)
{
	ck_assert_int_eq(kv_alloc_map(a, base, 8 * PG), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + 20 * PG, 2 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base + 20 * PG, 2 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, 8 * PG), 0);
	kv_dev_reset_counts();
	ck_assert_int_eq(kv_alloc_trim(a, 10 * PG, NULL), 0);
	/* two runs in the span, and one in the scrub arena (slots 0-9) */
	ck_assert_uint_eq(kv_dev_calls("cuMemUnmap"), 2 + 1);
	ck_assert_uint_eq(kv_dev_calls("cuMemRelease"), 10);
}
END_TEST

/* Pages leave a span only after a fence (the driver's unmap does not wait
 * for queued kernels): none when nothing leaves, and one for all pages let
 * go of before it; a failed fence keeps no page back, and counts for none. */
START_TEST(test_fence_before_unmap)
{
	size_t freed = 0;

	ck_assert_int_eq(kv_alloc_map(a, base, 4 * PG), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + 10 * PG, PG), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + 20 * PG, 2 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, 4 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base + 10 * PG, PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base + 20 * PG, 2 * PG), 0);
	kv_dev_reset_counts();
	ck_assert_int_eq(kv_alloc_map(a, base, PG), 0);  /* cached: no unmap */
	ck_assert_int_eq(kv_alloc_trim(a, 0, NULL), 0);
	ck_assert_uint_eq(kv_dev_calls("cuCtxSynchronize"), 0);
	ck_assert_int_eq(kv_alloc_trim(a, 2 * PG, &freed), 0);
	ck_assert_uint_eq(freed, 2 * PG);
	ck_assert_uint_eq(kv_dev_calls("cuCtxSynchronize"), 1);
	/* let go of before that fence: no other */
	ck_assert_int_eq(kv_alloc_trim(a, 2 * PG, &freed), 0);
	ck_assert_uint_eq(freed, 2 * PG);
	ck_assert_uint_eq(kv_dev_calls("cuCtxSynchronize"), 1);
	/* let go of since: a fence, which fails, and the pages leave */
	ck_assert_int_eq(kv_alloc_map(a, base + 25 * PG, 2 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base + 25 * PG, 2 * PG), 0);
	ck_assert_int_eq(kv_dev_fail_nth("cuCtxSynchronize", 1, CUDA_ERROR_LAUNCH_FAILED), 0);
	ck_assert_int_eq(kv_alloc_trim(a, 3 * PG, &freed), 0);
	ck_assert_uint_eq(freed, 3 * PG);
	ck_assert_uint_eq(kv_dev_calls("cuCtxSynchronize"), 2);
	/* the failed fence covered nothing: the last page gets one */
	ck_assert_int_eq(kv_alloc_trim(a, SIZE_MAX, &freed), 0);
	ck_assert_uint_eq(freed, PG);
	ck_assert_uint_eq(kv_dev_calls("cuCtxSynchronize"), 3);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 0);
	/* a released span's pages, reaped at once without a worker */
	ck_assert_int_eq(kv_alloc_release(a, base), 0);
	ck_assert_uint_eq(kv_dev_calls("cuCtxSynchronize"), 4);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 0);
}
END_TEST

static void *unmap_first_half(void *arg)
{
	(void)arg;
	return (void *)(intptr_t)kv_alloc_unmap(a, base, PG / 2);
}

/*
 * A page's idle time is when its last claim went, not when the call that
 * dropped it began: that call may wait for the lock while another thread
 * queues kernels on the page through a claim of its own, lets go of it
 * first, and a fence passes in between (here: the second half's claim
 * goes, as its unmap does under the lock, after a fence that began once
 * the first half's unmap was waiting). A reclaim of the page must then
 * fence again, or it unmaps the page under the other thread's kernels.
 */
START_TEST(test_idle_from_the_last_claim)
{
	struct timespec wait = { 0, 100 * 1000 * 1000 };
	struct kv_span *sp;
	pthread_t t;
	size_t freed = 0;
	void *rc;

	ck_assert_int_eq(kv_alloc_map(a, base, PG / 2), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + PG / 2, PG / 2), 0);
	pthread_mutex_lock(&a->lock);
	ck_assert_int_eq(pthread_create(&t, NULL, unmap_first_half, NULL), 0);
	nanosleep(&wait, NULL);         /* the unmap waits for the lock */
	kv_dev_reset_counts();
	kv_cache_prefence(a);           /* a map's fence, lock dropped */
	ck_assert_uint_eq(kv_dev_calls("cuCtxSynchronize"), 1);
	/* kernels queued on the second half, which is let go of first */
	sp = kv_span_find(a, base);
	ck_assert_uint_eq(sp->claims[0], 2);
	sp->claims[0]--;
	pthread_mutex_unlock(&a->lock);
	ck_assert_int_eq(pthread_join(t, &rc), 0);
	ck_assert_int_eq((int)(intptr_t)rc, 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, PG);
	ck_assert_int_eq(kv_alloc_trim(a, PG, &freed), 0);
	ck_assert_uint_eq(freed, PG);
	ck_assert_uint_eq(kv_dev_calls("cuCtxSynchronize"), 2);
}
END_TEST

START_TEST(test_cache_cap)
{
	struct kvshim_stats s;

	kt_destroy(a);
	make(1, 2 * PG);
	ck_assert_int_eq(kv_alloc_map(a, base, 6 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, 5 * PG), 0);
	ck_assert_int_eq(kv_alloc_tick(a), 0);
	s = kt_stats(a);
	ck_assert_uint_eq(s.cached_bytes, 2 * PG);
	ck_assert_uint_eq(s.mapped_bytes, 3 * PG);
	/* pool_high is 0 here, so the pages pooled by the cap are released
	 * on the next round */
	ck_assert_int_eq(kv_alloc_tick(a), 0);
	ck_assert_uint_eq(kt_stats(a).physical_bytes, 3 * PG);
}
END_TEST

/* ---- zero on map ---- */

/* A page written through one span shows zeros in the next span it reaches,
 * whichever way it went back: span release or trim to the pool. */
START_TEST(test_zero_on_reuse)
{
	CUdeviceptr other;
	size_t nz = 1;

	ck_assert_int_eq(kv_alloc_map(a, base, 2 * PG), 0);
	ck_assert_int_eq(kv_dev_fill(base, 2 * PG, 0xabcd), CUDA_SUCCESS);
	ck_assert_int_eq(kv_alloc_release(a, base), 0);
	ck_assert_uint_eq(kt_stats(a).pages_created, 2);
	ck_assert_int_eq(kv_alloc_reserve(a, 4 * PG, &other), 0);
	ck_assert_int_eq(kv_alloc_map(a, other, 2 * PG), 0);
	ck_assert_uint_eq(kt_stats(a).pages_created, 2); /* reused */
	ck_assert_int_eq(kv_dev_nonzero(other, 2 * PG, &nz), CUDA_SUCCESS);
	ck_assert_uint_eq(nz, 0);
}
END_TEST

/* A new allocator limited to 2 pages, with two spans of 4 (base, the
 * second in *other): base's first 2 pages cached, filled with 0x1234. */
static void two_cached_at_limit(CUdeviceptr *other)
{
	struct kv_alloc_opts o;

	kt_destroy(a);
	kt_opts(&o);
	o.limit = 2 * PG;
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 4 * PG, &base), 0);
	ck_assert_int_eq(kv_alloc_reserve(a, 4 * PG, other), 0);
	ck_assert_int_eq(kv_alloc_map(a, base, 2 * PG), 0);
	ck_assert_int_eq(kv_dev_fill(base, 2 * PG, 0x1234), CUDA_SUCCESS);
	ck_assert_int_eq(kv_alloc_unmap(a, base, 2 * PG), 0);
}

START_TEST(test_zero_via_cache_reclaim)
{
	CUdeviceptr other;
	size_t nz = 1;

	two_cached_at_limit(&other);
	/* at the limit: the map takes the cached pages of the first span */
	ck_assert_int_eq(kv_alloc_map(a, other, 2 * PG), 0);
	ck_assert_int_eq(kv_dev_nonzero(other, 2 * PG, &nz), CUDA_SUCCESS);
	ck_assert_uint_eq(nz, 0);
	ck_assert_uint_eq(kt_stats(a).pages_unmapped, 2);
}
END_TEST

static CUdeviceptr other_span;

static void *map_other(void *arg)
{
	(void)arg;
	return (void *)(intptr_t)kv_alloc_map(a, other_span, 2 * PG);
}

struct read_stats {
	int rc;
	int done;
};

static void *read_stats(void *arg)
{
	struct read_stats *r = arg;
	struct kvshim_stats st;

	r->rc = kv_alloc_stats(a, &st);
	__atomic_store_n(&r->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/*
 * A map at the limit reclaims cached pages after a fence, which waits for
 * the device's queued work (an engine's step): it waits without the
 * allocator's lock, so that another thread's call taking the lock (here
 * the counters; an engine's headroom and maps alike) answers meanwhile.
 * The fence is held in the driver.
 */
START_TEST(test_reclaim_fences_without_the_lock)
{
	struct read_stats r = { -1, 0 };
	pthread_t mapper, reader;
	void *rc;
	int done;

	two_cached_at_limit(&other_span);
	ck_assert_int_eq(kv_dev_hold("cuCtxSynchronize", 1), 0);
	ck_assert_int_eq(pthread_create(&mapper, NULL, map_other, NULL), 0);
	ck_assert(kt_wait_held("cuCtxSynchronize"));
	ck_assert_int_eq(pthread_create(&reader, NULL, read_stats, &r), 0);
	done = kt_wait_flag(&r.done);
	kv_dev_hold("cuCtxSynchronize", 0);
	ck_assert_int_eq(pthread_join(reader, NULL), 0);
	ck_assert_int_eq(pthread_join(mapper, &rc), 0);
	ck_assert_msg(done, "a call waited on the lock while the map fenced");
	ck_assert_int_eq(r.rc, 0);
	ck_assert_int_eq((int)(intptr_t)rc, 0);
	ck_assert_uint_eq(kt_stats(a).pages_unmapped, 2);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 2 * PG);
	ck_assert_uint_eq(kt_stats(a).pages_created, 2);
}
END_TEST

/* With zeroing off a reused page keeps what the last span wrote: the
 * switch is real, and so is what it costs to leave it on. */
START_TEST(test_zero_off_keeps_bytes)
{
	CUdeviceptr other;
	unsigned long long bad = 1;

	kt_destroy(a);
	make(0, SIZE_MAX);
	ck_assert_int_eq(kv_alloc_map(a, base, PG), 0);
	ck_assert_int_eq(kv_dev_fill(base, PG, 0x77), CUDA_SUCCESS);
	ck_assert_int_eq(kv_alloc_release(a, base), 0);
	ck_assert_int_eq(kv_alloc_reserve(a, PG, &other), 0);
	ck_assert_int_eq(kv_alloc_map(a, other, PG), 0);
	ck_assert_int_eq(kv_dev_check(other, PG, 0x77, &bad), CUDA_SUCCESS);
	ck_assert_uint_eq(bad, 0);
	ck_assert_uint_eq(kt_stats(a).pages_zeroed, 0);
}
END_TEST

/* Scrubbing happens off the map path once the worker has run. */
START_TEST(test_scrub_off_map_path)
{
	struct kv_alloc_opts o;
	CUdeviceptr other;

	kt_destroy(a);
	kt_opts(&o);
	o.pool_high = 8 * PG;
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 8 * PG, &base), 0);

	ck_assert_int_eq(kv_alloc_map(a, base, 4 * PG), 0);
	ck_assert_int_eq(kv_alloc_release(a, base), 0);
	ck_assert_int_eq(kv_alloc_tick(a), 0);
	ck_assert_uint_ge(kt_stats(a).pages_zeroed, 4);
	ck_assert_int_eq(kv_alloc_reserve(a, 4 * PG, &other), 0);
	kv_dev_reset_counts();
	ck_assert_int_eq(kv_alloc_map(a, other, 4 * PG), 0);
	ck_assert_uint_eq(kv_dev_calls("cuMemsetD8Async"), 0);
	ck_assert_uint_eq(kv_dev_calls("cuMemCreate"), 0);
	ck_assert_uint_eq(kv_dev_calls("cuMemMap"), 4);
}
END_TEST

Suite *reclaim_suite(void)
{
	Suite *s = suite_create("reclaim");
	TCase *tc = tcase_create("cache");
	TCase *z = tcase_create("zero");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_trim_unmaps_cached_oldest_first);
	tcase_add_test(tc, test_trim_pool_first);
	tcase_add_test(tc, test_trim_spares_claimed);
	kt_add_emu(tc, test_trim_in_runs);
	kt_add_emu(tc, test_fence_before_unmap);
	kt_add_emu(tc, test_idle_from_the_last_claim);
	tcase_add_test(tc, test_cache_cap);
	suite_add_tcase(s, tc);

	tcase_add_checked_fixture(z, setup, teardown);
	tcase_add_test(z, test_zero_on_reuse);
	tcase_add_test(z, test_zero_via_cache_reclaim);
	kt_add_emu(z, test_reclaim_fences_without_the_lock);
	tcase_add_test(z, test_zero_off_keeps_bytes);
	kt_add_emu(z, test_scrub_off_map_path);
	suite_add_tcase(s, z);
	return s;
}
