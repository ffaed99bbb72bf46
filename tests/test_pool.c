/*
 * test_pool.c - the page pool: watermarks, reuse, shrinking, the worker.
 */
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "suites.h"

static kv_alloc_t *a;
static CUdeviceptr base;

static void make(size_t low, size_t high, int worker)
{
	struct kv_alloc_opts o;

	kt_opts(&o);
	o.pool_low = low;
	o.pool_high = high;
	o.worker = worker;
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 32 * PG, &base), 0);
}

static void teardown(void)
{
	kt_destroy(a);
}

START_TEST(test_filled_at_start)
{
	struct kvshim_stats s;

	make(4 * PG, 8 * PG, 0);
	s = kt_stats(a);
	ck_assert_uint_eq(s.pooled_bytes, 8 * PG);
	ck_assert_uint_eq(s.physical_bytes, 8 * PG);
	ck_assert_uint_eq(s.pages_created, 8);
	ck_assert_uint_eq(s.mapped_bytes, 0);
}
END_TEST

/* With a worker, the worker fills the pool after creation has returned; a
 * map meanwhile takes what is there or creates what it needs, so the pool
 * ends between its watermarks. Without one, creation fills the pool. */
START_TEST(test_filled_later)
{
	struct timespec ts = { 0, 10 * 1000 * 1000 };
	struct kv_alloc_opts o;
	int i;

	kt_opts(&o);
	o.pool_low = 4 * PG;
	o.pool_high = 8 * PG;
	o.worker = 1;
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 32 * PG, &base), 0);
	ck_assert_int_eq(kv_alloc_map(a, base, 2 * PG), 0);
	for (i = 0; i < 300 && kt_stats(a).pooled_bytes < 4 * PG; i++)
		nanosleep(&ts, NULL);
	ck_assert_uint_ge(kt_stats(a).pooled_bytes, 4 * PG);
	ck_assert_uint_le(kt_stats(a).pooled_bytes, 8 * PG);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 2 * PG);
	kt_destroy(a);

	o.worker = 0;
	a = kt_create(&o);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 8 * PG);
}
END_TEST

START_TEST(test_refill_below_low)
{
	struct kvshim_stats s;

	make(4 * PG, 8 * PG, 0);
	ck_assert_int_eq(kv_alloc_map(a, base, 3 * PG), 0);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 5 * PG);
	ck_assert_int_eq(kv_alloc_tick(a), 0);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 5 * PG); /* not under low */
	ck_assert_int_eq(kv_alloc_map(a, base + 3 * PG, 2 * PG), 0);
	ck_assert_int_eq(kv_alloc_tick(a), 0);
	s = kt_stats(a);
	ck_assert_uint_eq(s.pooled_bytes, 8 * PG);
	ck_assert_uint_eq(s.mapped_bytes, 5 * PG);
	ck_assert_uint_eq(s.physical_bytes, 13 * PG);
	ck_assert_uint_eq(s.pages_created, 13);
}
END_TEST

/* Pages come back to the pool and are used again: nothing new is made. */
START_TEST(test_pages_reused)
{
	int round;

	make(0, 16 * PG, 0);
	for (round = 0; round < 5; round++) {
		ck_assert_int_eq(kv_alloc_map(a, base, 6 * PG), 0);
		ck_assert_int_eq(kv_alloc_unmap(a, base, 6 * PG), 0);
		/* the worker's job, done here: cached pages back to the pool */
		ck_assert_int_eq(kv_alloc_release(a, base), 0);
		ck_assert_int_eq(kv_alloc_reserve(a, 32 * PG, &base), 0);
	}
	ck_assert_uint_eq(kt_stats(a).pages_created, 6);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 6 * PG);
}
END_TEST

START_TEST(test_shrink_above_high)
{
	struct kvshim_stats s;

	make(0, 4 * PG, 0);
	ck_assert_int_eq(kv_alloc_map(a, base, 10 * PG), 0);
	ck_assert_int_eq(kv_alloc_release(a, base), 0);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 10 * PG);
	ck_assert_int_eq(kv_alloc_tick(a), 0);
	s = kt_stats(a);
	ck_assert_uint_eq(s.pooled_bytes, 4 * PG);
	ck_assert_uint_eq(s.physical_bytes, 4 * PG);
	ck_assert_uint_eq(s.pages_released, 6);
}
END_TEST

/* With the pool empty and no worker, a map creates what it needs itself. */
START_TEST(test_empty_pool_creates)
{
	make(0, 0, 0);
	ck_assert_uint_eq(kt_stats(a).physical_bytes, 0);
	ck_assert_int_eq(kv_alloc_map(a, base, 3 * PG), 0);
	ck_assert_uint_eq(kt_stats(a).pages_created, 3);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 0);
}
END_TEST

/* The worker refills the pool on its own after a map drains it. */
START_TEST(test_worker_refills)
{
	struct timespec ts = { 0, 10 * 1000 * 1000 };
	int i;

	make(4 * PG, 8 * PG, 1);
	ck_assert_int_eq(kv_alloc_map(a, base, 8 * PG), 0);
	for (i = 0; i < 300 && kt_stats(a).pooled_bytes < 8 * PG; i++)
		nanosleep(&ts, NULL);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 8 * PG);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 8 * PG);
}
END_TEST

/* With a worker, releasing a span costs the caller no unmap: the worker
 * unmaps its pages into the pool afterwards. */
START_TEST(test_release_off_the_path)
{
	struct timespec ts = { 0, 5 * 1000 * 1000 };
	struct kvshim_stats s;
	int i;

	make(0, 64 * PG, 1);
	ck_assert_int_eq(kv_alloc_map(a, base, 20 * PG), 0);
	kv_dev_reset_counts();
	ck_assert_int_eq(kv_alloc_release(a, base), 0);
	/* gone for the caller at once; the unmapping is the worker's */
	ck_assert_uint_eq(kt_stats(a).reserved_bytes, 0);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 0);
	ck_assert_int_eq(kv_alloc_map(a, base, PG), KVSHIM_ERANGE);
	for (i = 0; i < 400 && kt_stats(a).pooled_bytes < 20 * PG; i++)
		nanosleep(&ts, NULL);
	s = kt_stats(a);
	ck_assert_uint_eq(s.mapped_bytes, 0);
	ck_assert_uint_eq(s.pooled_bytes, 20 * PG);
	ck_assert_uint_eq(kv_dev_calls("cuMemUnmap"), 1);      /* one run */
	ck_assert_uint_eq(kv_dev_calls("cuMemAddressFree"), 1);
	/* and a release still pending at destroy is finished there */
	ck_assert_int_eq(kv_alloc_reserve(a, 8 * PG, &base), 0);
	ck_assert_int_eq(kv_alloc_map(a, base, 8 * PG), 0);
	ck_assert_int_eq(kv_alloc_release(a, base), 0);
}
END_TEST

struct meminfo_call {
	size_t free_b, total;
	struct kvshim_stats s;
	int rc, done;
};

static void *read_meminfo(void *arg)
{
	struct meminfo_call *m = arg;

	m->rc = kv_alloc_meminfo(a, &m->free_b, &m->total, &m->s);
	__atomic_store_n(&m->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/* The worker fills the pool with the lock dropped: its pages count as
 * pooled before the driver has made them. Memory info read then waits for
 * the fill, so the driver's free bytes and the pool agree on every page
 * (apart, a cudaMemGetInfo read during a fill counted a page as both free
 * and pooled: kvshim's free figure came out a pool's worth too high). */
START_TEST(test_meminfo_beside_a_fill)
{
	struct timespec ms = { 0, 1000 * 1000 };
	struct meminfo_call m = { 0 };
	struct kvshim_stats during;
	struct kvemu_usage u0, u;
	struct kv_alloc_opts o;
	int i, w = 0, early;
	pthread_t th;

	ck_assert_int_eq(kv_dev_usage(&u0), 0);
	ck_assert_int_eq(kv_dev_hold("cuMemCreate", 1), 0);
	kt_opts(&o);
	o.pool_low = 4 * PG;
	o.pool_high = 8 * PG;
	o.worker = 1;
	a = kt_create(&o);
	for (i = 0; i < 30000 && (w = kv_dev_waiting("cuMemCreate")) < 1; i++)
		nanosleep(&ms, NULL);
	during = kt_stats(a);
	kv_dev_usage(&u);
	ck_assert_int_eq(pthread_create(&th, NULL, read_meminfo, &m), 0);
	for (i = 0; i < 50; i++)
		nanosleep(&ms, NULL);
	early = __atomic_load_n(&m.done, __ATOMIC_ACQUIRE);
	kv_dev_hold("cuMemCreate", 0);
	ck_assert_int_eq(pthread_join(th, NULL), 0);
	/* the worker was stopped in the driver with the pool counted full */
	ck_assert_int_eq(w, 1);
	ck_assert_uint_eq(during.pooled_bytes, 8 * PG);
	ck_assert_uint_eq(u.physical_bytes, u0.physical_bytes);
	/* the read waited for the fill, and then agreed with the driver */
	ck_assert_int_eq(early, 0);
	ck_assert_int_eq(m.rc, 0);
	ck_assert_uint_eq(m.s.pooled_bytes, 8 * PG);
	ck_assert_uint_eq(m.s.physical_bytes, 8 * PG);
	ck_assert_uint_eq(m.total - m.free_b,
			  u0.physical_bytes + m.s.physical_bytes);
	ck_assert_int_eq(kv_alloc_meminfo(a, NULL, &m.total, &m.s),
			 KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_meminfo(NULL, &m.free_b, &m.total, &m.s),
			 KVSHIM_EINVAL);
}
END_TEST

/* The same fill in flight, on a device nearly full: the headroom counts
 * the pages being made once (apart, they were in the driver's free bytes
 * and in the pool: a map was promised 18 pages where 10 could be had). */
START_TEST(test_headroom_beside_a_fill)
{
	struct timespec ms = { 0, 1000 * 1000 };
	CUresult (*alloc)(CUdeviceptr *, size_t);
	CUresult (*fr)(CUdeviceptr);
	CUresult (*info)(size_t *, size_t *);
	size_t during = 0, after = 0, left = 0, total;
	CUdeviceptr filler = 0;
	struct kv_alloc_opts o;
	int i, w = 0, rc_fill = -1, rc_during, rc_after = -1;

	*(void **)&alloc = kv_dev_sym("cuMemAlloc_v2");
	*(void **)&fr = kv_dev_sym("cuMemFree_v2");
	*(void **)&info = kv_dev_sym("cuMemGetInfo_v2");
	ck_assert_int_eq(kv_dev_hold("cuMemCreate", 1), 0);
	kt_opts(&o);
	o.pool_low = 4 * PG;
	o.pool_high = 8 * PG;
	o.worker = 1;
	a = kt_create(&o);
	for (i = 0; i < 30000 && (w = kv_dev_waiting("cuMemCreate")) < 1; i++)
		nanosleep(&ms, NULL);
	/* leave 10 pages of the device free, the pool's 8 not made yet */
	if (info(&left, &total) == CUDA_SUCCESS && left > 10 * PG)
		rc_fill = alloc(&filler, left - 10 * PG);
	rc_during = kv_alloc_headroom(a, &during);
	kv_dev_hold("cuMemCreate", 0);
	for (i = 0; i < 30000 && kt_stats(a).physical_bytes < 8 * PG; i++)
		nanosleep(&ms, NULL);
	if (rc_fill == CUDA_SUCCESS) {
		rc_after = kv_alloc_headroom(a, &after);
		fr(filler);
	}
	ck_assert_int_eq(w, 1);
	ck_assert_int_eq(rc_fill, CUDA_SUCCESS);
	ck_assert_int_eq(rc_during, 0);
	ck_assert_uint_eq(during, 10 * PG);
	ck_assert_int_eq(rc_after, 0);
	ck_assert_uint_eq(after, 10 * PG);
}
END_TEST

START_TEST(test_bad_watermarks)
{
	struct kv_alloc_opts o;
	kv_alloc_t *b = NULL;

	kt_opts(&o);
	o.pool_low = 8 * PG;
	o.pool_high = 4 * PG;
	ck_assert_int_eq(kv_alloc_create(&o, &b), KVSHIM_EINVAL);
	ck_assert_ptr_null(b);
	ck_assert_int_eq(kv_alloc_create(NULL, &b), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_create(&o, NULL), KVSHIM_EINVAL);
}
END_TEST

START_TEST(test_bad_device)
{
	struct kv_alloc_opts o;
	kv_alloc_t *b = NULL;

	kt_opts(&o);
	o.device = 77;
	ck_assert_int_eq(kv_alloc_create(&o, &b), KVSHIM_ENODEV);
	ck_assert_ptr_null(b);
}
END_TEST

Suite *pool_suite(void)
{
	Suite *s = suite_create("pool");
	TCase *tc = tcase_create("watermarks");
	TCase *bad = tcase_create("bad-input");

	tcase_add_checked_fixture(tc, NULL, teardown);
	tcase_add_test(tc, test_filled_at_start);
	tcase_add_test(tc, test_filled_later);
	tcase_add_test(tc, test_refill_below_low);
	tcase_add_test(tc, test_pages_reused);
	tcase_add_test(tc, test_shrink_above_high);
	tcase_add_test(tc, test_empty_pool_creates);
	tcase_add_test(tc, test_worker_refills);
	kt_add_emu(tc, test_release_off_the_path);
	kt_add_emu(tc, test_meminfo_beside_a_fill);
	kt_add_emu(tc, test_headroom_beside_a_fill);
	suite_add_tcase(s, tc);
	tcase_add_test(bad, test_bad_watermarks);
	tcase_add_test(bad, test_bad_device);
	suite_add_tcase(s, bad);
	return s;
}
