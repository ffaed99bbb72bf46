/*
 * test_pool.c - the page pool: watermarks, reuse, shrinking, the worker.
 */
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "blocked.h"

#include "prim.h"
#include "share_util.h"
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
	/* a test that failed holding a driver call lets it go first (the
	 * worker could be stopped in it) */
	if (kv_dev_is_emu()) {
		kv_dev_hold("cuMemCreate", 0);
		kv_dev_hold("cuMemsetD8Async", 0);
		kv_dev_hold("cuCtxPopCurrent_v2", 0);
		kv_dev_hold("cuCtxPushCurrent_v2", 0);
		kv_dev_hold("cuMemUnmap", 0);
		kv_dev_hold("cuMemMap", 0);
	}
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

/*
 * While a stream captures, the pool's upkeep waits (its driver calls would
 * slow the capture): a pool under its low watermark is not refilled, one
 * over its high is not trimmed; after the capture both are.
 */
START_TEST(test_upkeep_waits_for_a_capture)
{
	struct kvshim_stats s;

	make(4 * PG, 8 * PG, 0);
	ck_assert_int_eq(kv_alloc_map(a, base, 6 * PG), 0);
	kv_prim_capture_begin();
	ck_assert_int_eq(kv_alloc_tick(a), 0);
	s = kt_stats(a);
	kv_prim_capture_end();
	ck_assert_uint_eq(s.pooled_bytes, 2 * PG);
	ck_assert_uint_eq(s.pages_created, 8);
	ck_assert_int_eq(kv_alloc_tick(a), 0);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 8 * PG);

	/* over the high watermark: the spans' pages back, then a capture */
	ck_assert_int_eq(kv_alloc_release(a, base), 0);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 14 * PG);
	kv_prim_capture_begin();
	ck_assert_int_eq(kv_alloc_tick(a), 0);
	s = kt_stats(a);
	kv_prim_capture_end();
	ck_assert_uint_eq(s.pooled_bytes, 14 * PG);
	ck_assert_int_eq(kv_alloc_tick(a), 0);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 8 * PG);
	ck_assert_uint_eq(kt_stats(a).physical_bytes, 8 * PG);
}
END_TEST

/* A capture that begins while a fence holds the gate waits for it. */
struct gate_begin {
	pthread_t thread;
	pid_t tid;
	int begun;
};

static void *begin_capture(void *arg)
{
	struct gate_begin *g = arg;

	__atomic_store_n(&g->tid, (pid_t)syscall(SYS_gettid), __ATOMIC_RELEASE);
	kv_prim_capture_begin();
	__atomic_store_n(&g->begun, 1, __ATOMIC_RELEASE);
	return NULL;
}

/* (the gate held, as by a fence) a capture begins on another thread, and
 * is let go once that thread sleeps at the gate */
static void begin_beside(void *arg)
{
	struct gate_begin *g = arg;

	ck_assert_int_eq(pthread_create(&g->thread, NULL, begin_capture, g), 0);
	while (!__atomic_load_n(&g->tid, __ATOMIC_ACQUIRE))
		sched_yield();
	kt_wait_blocked(g->tid, &g->begun);
	ck_assert_int_eq(__atomic_load_n(&g->begun, __ATOMIC_ACQUIRE), 0);
}

/*
 * The captures whose begin waited for a fence in progress are counted, with
 * their wait, in the process's stats (a capture waits for kvshim's
 * context-wide fence: on a GPU, for the work queued before it); one that
 * found the gate free is not.
 */
START_TEST(test_capture_gate_waits_counted)
{
	struct gate_begin g = { 0 };
	struct kvshim_stats s0, s;

	make(0, 0, 0);
	s0 = kt_stats(a);
	kv_prim_capture_begin();
	kv_prim_capture_end();
	s = kt_stats(a);
	ck_assert_uint_eq(s.capture_gate_waits, s0.capture_gate_waits);
	ck_assert_uint_eq(s.capture_gate_wait_ns, s0.capture_gate_wait_ns);

	kv_prim_capture_gate_held(begin_beside, &g, 1);
	ck_assert_int_eq(pthread_join(g.thread, NULL), 0);
	ck_assert(kv_prim_capturing());
	kv_prim_capture_end();
	s = kt_stats(a);
	ck_assert_uint_eq(s.capture_gate_waits, s0.capture_gate_waits + 1);
	ck_assert_uint_gt(s.capture_gate_wait_ns, s0.capture_gate_wait_ns);
}
END_TEST

/*
 * The gate is also held, briefly, by the begin and end of other captures
 * (threads capturing side by side): a begin that waited behind one of those
 * and no fence is not counted as waiting for a fence.
 */
START_TEST(test_capture_gate_waits_only_fences)
{
	struct gate_begin g = { 0 };
	struct kvshim_stats s0, s;

	make(0, 0, 0);
	s0 = kt_stats(a);
	kv_prim_capture_gate_held(begin_beside, &g, 0);
	ck_assert_int_eq(pthread_join(g.thread, NULL), 0);
	ck_assert(kv_prim_capturing());
	kv_prim_capture_end();
	s = kt_stats(a);
	ck_assert_uint_eq(s.capture_gate_waits, s0.capture_gate_waits);
	ck_assert_uint_eq(s.capture_gate_wait_ns, s0.capture_gate_wait_ns);
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

/* Wait (30 s at most) until a call of fn waits in the emulation's hold. */
static int held_in(const char *fn)
{
	struct timespec ms = { 0, 1000 * 1000 };
	int i;

	for (i = 0; i < 30000; i++) {
		if (kv_dev_waiting(fn) > 0)
			return 1;
		nanosleep(&ms, NULL);
	}
	return 0;
}

/* An allocator whose worker fills the pool with 8 pages. */
static void make_filling(void)
{
	struct kv_alloc_opts o;

	kt_opts(&o);
	o.pool_low = 4 * PG;
	o.pool_high = 8 * PG;
	o.worker = 1;
	a = kt_create(&o);
}

/* Fill the device but for leave bytes; the filler, or 0. */
static CUdeviceptr fill_device(size_t leave)
{
	CUresult (*alloc)(CUdeviceptr *, size_t);
	CUresult (*info)(size_t *, size_t *);
	size_t left = 0, total;
	CUdeviceptr f = 0;

	*(void **)&alloc = kv_dev_sym("cuMemAlloc_v2");
	*(void **)&info = kv_dev_sym("cuMemGetInfo_v2");
	if (info(&left, &total) != CUDA_SUCCESS || left <= leave ||
	    alloc(&f, left - leave) != CUDA_SUCCESS)
		return 0;
	return f;
}

static void free_device(CUdeviceptr f)
{
	CUresult (*fr)(CUdeviceptr);

	*(void **)&fr = kv_dev_sym("cuMemFree_v2");
	if (f)
		fr(f);
}

/* kv_alloc_headroom, read until it is want (a page being made as it reads
 * errs low for that read), 30 s at most; the last reading. */
static size_t headroom_settles(size_t want)
{
	struct timespec ms = { 0, 1000 * 1000 };
	size_t h = 0;
	int i;

	for (i = 0; i < 30000; i++) {
		if (kv_alloc_headroom(a, &h) == 0 && h == want)
			break;
		nanosleep(&ms, NULL);
	}
	return h;
}

/* The worker fills the pool with the lock dropped: its pages count as
 * pooled before the driver has made them. Memory info read then takes
 * those out of the driver's free bytes, so that the two agree on every
 * page (apart, a cudaMemGetInfo read during a fill counted its pages as
 * both free and pooled: kvshim's free figure came out a pool's worth too
 * high). */
START_TEST(test_meminfo_beside_a_fill)
{
	struct timespec ms = { 0, 1000 * 1000 };
	struct kv_alloc_mem m = { 0 };
	struct kvemu_usage u0, u;
	struct kvshim_stats s;
	int i, held, rc;

	ck_assert_int_eq(kv_dev_usage(&u0), 0);
	ck_assert_int_eq(kv_dev_hold("cuMemCreate", 1), 0);
	make_filling();
	held = held_in("cuMemCreate");
	rc = kv_alloc_meminfo(a, &m, &s);
	kv_dev_usage(&u);
	kv_dev_hold("cuMemCreate", 0);
	/* the worker was stopped in the driver with the pool counted full */
	ck_assert(held);
	ck_assert_int_eq(rc, 0);
	ck_assert_uint_eq(u.physical_bytes, u0.physical_bytes);
	ck_assert_uint_eq(s.pooled_bytes, 8 * PG);
	ck_assert_uint_eq(s.physical_bytes, 8 * PG);
	ck_assert_uint_eq(m.idle, 8 * PG);
	/* free and pooled add up to what the device has */
	ck_assert_uint_eq(m.total - m.free_bytes, u0.physical_bytes + s.physical_bytes);
	/* and once the pages are made */
	for (i = 0; i < 30000; i++) {
		kv_dev_usage(&u);
		if (u.handles == u0.handles + 8 &&
		    kv_alloc_meminfo(a, &m, &s) == 0 &&
		    m.total - m.free_bytes == u0.physical_bytes + 8 * PG)
			break;
		nanosleep(&ms, NULL);
	}
	ck_assert_uint_eq(m.total - m.free_bytes, u0.physical_bytes + 8 * PG);
	ck_assert_uint_eq(s.pooled_bytes, 8 * PG);
	ck_assert_uint_eq(m.idle, 8 * PG);
	ck_assert_uint_eq(m.claimed, 0);
	ck_assert_int_eq(kv_alloc_meminfo(a, NULL, &s), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_meminfo(a, &m, NULL), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_alloc_meminfo(NULL, &m, &s), KVSHIM_EINVAL);
}
END_TEST

static void *map_two_pages(void *arg)
{
	(void)arg;
	return (void *)(intptr_t)kv_alloc_map(a, base, 2 * PG);
}

/* Memory info as kv_policy_meminfo makes it: as if every span were backed
 * and the idle pages were free. */
static size_t as_if_backed(const struct kv_alloc_mem *m, const struct kvshim_stats *s)
{
	return m->free_bytes + m->idle - (s->reserved_bytes - s->mapped_bytes);
}

/*
 * A map makes and maps its new pages with the lock dropped: the pool pages
 * it took count once in memory info meanwhile, as before and after it (as
 * if every span were backed, the pages it backs are taken already; read
 * then, kvshim's free figure came out two pages low, as if the span pages
 * needed pages besides those).
 */
START_TEST(test_meminfo_beside_a_map)
{
	struct kv_alloc_mem m0 = { 0 }, m1 = { 0 }, m2 = { 0 };
	struct kvshim_stats s0, s1, s2;
	pthread_t t;
	void *rc;
	int held;

	make(8 * PG, 8 * PG, 0);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 8 * PG);
	ck_assert_int_eq(kv_alloc_meminfo(a, &m0, &s0), 0);
	ck_assert_int_eq(kv_dev_hold("cuMemMap", 1), 0);
	ck_assert_int_eq(pthread_create(&t, NULL, map_two_pages, NULL), 0);
	held = held_in("cuMemMap");
	ck_assert_int_eq(kv_alloc_meminfo(a, &m1, &s1), 0);
	kv_dev_hold("cuMemMap", 0);
	ck_assert_int_eq(pthread_join(t, &rc), 0);
	ck_assert(held);
	ck_assert_int_eq((int)(intptr_t)rc, 0);
	ck_assert_int_eq(kv_alloc_meminfo(a, &m2, &s2), 0);
	ck_assert_uint_eq(m2.claimed, 2 * PG);
	ck_assert_uint_eq(as_if_backed(&m2, &s2), as_if_backed(&m0, &s0));
	ck_assert_uint_eq(as_if_backed(&m1, &s1), as_if_backed(&m0, &s0));
	ck_assert_uint_eq(m1.free_bytes + m1.idle + m1.claimed,
			  m0.free_bytes + m0.idle + m0.claimed);
}
END_TEST

/*
 * A capture that begins while the worker fills the pool: the batch under
 * way finishes, the rest waits for the capture's end. (On a machine too
 * busy to run the worker after the hold is let go this shows less, but
 * cannot fail.)
 */
START_TEST(test_fill_stops_for_a_capture)
{
	struct timespec ms = { 0, 1000 * 1000 };
	struct kv_alloc_opts o;
	struct kvshim_stats s;
	int i, held;

	kt_opts(&o);
	o.pool_low = 16 * PG;
	o.pool_high = 24 * PG;
	o.worker = 1;
	ck_assert_int_eq(kv_dev_hold("cuMemCreate", 1), 0);
	a = kt_create(&o);
	held = held_in("cuMemCreate");
	kv_prim_capture_begin();
	kv_dev_hold("cuMemCreate", 0);
	for (i = 0; i < 30000 && kt_stats(a).pages_zeroed < 8; i++)
		nanosleep(&ms, NULL);
	for (i = 0; i < 300; i++)                       /* three worker periods */
		nanosleep(&ms, NULL);
	s = kt_stats(a);
	kv_prim_capture_end();
	kv_alloc_wake(a);
	ck_assert(held);
	ck_assert_uint_eq(s.pages_created, 8);          /* one batch */
	ck_assert_uint_eq(s.pooled_bytes, 8 * PG);
	for (i = 0; i < 30000 && kt_stats(a).pooled_bytes < 24 * PG; i++)
		nanosleep(&ms, NULL);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 24 * PG);
}
END_TEST

/* kv_alloc_meminfo's free and idle bytes added, read until they are want
 * (a page being released as it reads errs low for that read), 30 s at
 * most; the last sum. */
static size_t meminfo_settles(size_t want)
{
	struct timespec ms = { 0, 1000 * 1000 };
	struct kv_alloc_mem m = { 0 };
	struct kvshim_stats s;
	int i;

	for (i = 0; i < 30000; i++) {
		if (kv_alloc_meminfo(a, &m, &s) == 0 &&
		    m.free_bytes + m.idle == want)
			break;
		nanosleep(&ms, NULL);
	}
	return m.free_bytes + m.idle;
}

/* A released span's pages, until the worker has unmapped them into the
 * pool, hold memory no span uses: idle at once, as they are once pooled
 * (before, memory info read right after a cudaFree missed them until the
 * worker's unmap). */
START_TEST(test_meminfo_after_a_release)
{
	struct kv_alloc_mem m0 = { 0 }, m1 = { 0 };
	struct kvshim_stats s;
	int held, rc0, rc1;
	size_t after;

	make(0, 0, 1);
	ck_assert_int_eq(kv_alloc_map(a, base, 8 * PG), 0);
	rc0 = kv_alloc_meminfo(a, &m0, &s);
	ck_assert_int_eq(kv_dev_hold("cuMemUnmap", 1), 0);
	ck_assert_int_eq(kv_alloc_release(a, base), 0);
	held = held_in("cuMemUnmap");
	rc1 = kv_alloc_meminfo(a, &m1, &s);
	kv_dev_hold("cuMemUnmap", 0);
	after = meminfo_settles(m0.free_bytes + 8 * PG);
	ck_assert(held);
	ck_assert_int_eq(rc0, 0);
	ck_assert_int_eq(rc1, 0);
	ck_assert_uint_eq(m0.idle, 0);
	ck_assert_uint_eq(m0.claimed, 8 * PG);
	ck_assert_uint_eq(m1.free_bytes, m0.free_bytes);
	ck_assert_uint_eq(m1.idle, 8 * PG);
	ck_assert_uint_eq(m1.claimed, 0);
	ck_assert_uint_eq(after, m0.free_bytes + 8 * PG);
}
END_TEST

/* While a stream captures, a released span's pages stay where they are
 * (the worker unmaps them once no capture runs) and a map does not wait
 * for them: neither the headroom nor memory info counts them then; once
 * the capture ends they are the pool's. */
START_TEST(test_released_pages_during_a_capture)
{
	struct timespec ms = { 0, 1000 * 1000 };
	struct kv_alloc_mem m = { 0 };
	size_t during = 1, after = 0;
	struct kvshim_stats s;
	CUdeviceptr filler;
	int i, rc;

	make(0, 0, 1);
	ck_assert_int_eq(kv_alloc_map(a, base, 8 * PG), 0);
	filler = fill_device(0);
	kv_prim_capture_begin();
	rc = kv_alloc_release(a, base);
	if (!rc)
		rc = kv_alloc_headroom(a, &during);
	if (!rc)
		rc = kv_alloc_meminfo(a, &m, &s);
	kv_prim_capture_end();
	for (i = 0; i < 30000 && !rc; i++) {
		if (kv_alloc_headroom(a, &after) || after == 8 * PG)
			break;
		nanosleep(&ms, NULL);
	}
	free_device(filler);
	ck_assert(filler != 0);
	ck_assert_int_eq(rc, 0);
	ck_assert_uint_eq(during, 0);
	ck_assert_uint_eq(m.idle, 0);
	ck_assert_uint_eq(after, 8 * PG);
}
END_TEST

/* Hold fn, start an allocator filling its pool and, once its worker waits
 * in fn, leave 10 pages of the device free (*filler) and read the headroom
 * (*during; its result returned); then let fn go. *held: whether the
 * worker got there. */
static int headroom_held_in(const char *fn, CUdeviceptr *filler,
			    size_t *during, int *held)
{
	int rc;

	ck_assert_int_eq(kv_dev_hold(fn, 1), 0);
	make_filling();
	*held = held_in(fn);
	*filler = fill_device(10 * PG);
	rc = kv_alloc_headroom(a, during);
	kv_dev_hold(fn, 0);
	return rc;
}

/* On a device nearly full, the headroom counts a page once through a fill:
 * apart, pages claimed and not made were in the driver's free bytes and in
 * the pool (a map was promised 18 pages where 10 could be had). */
START_TEST(test_headroom_beside_a_fill)
{
	CUdeviceptr filler;
	size_t during = 0, after;
	int held, rc;

	/* 10 pages of the device free, the pool's 8 not made yet */
	rc = headroom_held_in("cuMemCreate", &filler, &during, &held);
	after = headroom_settles(10 * PG);
	free_device(filler);
	ck_assert(held);
	ck_assert(filler != 0);
	ck_assert_int_eq(rc, 0);
	ck_assert_uint_eq(during, 10 * PG);
	ck_assert_uint_eq(after, 10 * PG);
}
END_TEST

/* Pages made and being scrubbed (still in the fill) hold their memory
 * already: not taken out of the driver's free bytes a second time (a first
 * mend did, and promised 10 pages where 18 could be had). */
START_TEST(test_headroom_beside_a_scrub)
{
	CUdeviceptr filler;
	size_t during = 0;
	int held, rc;

	/* the pool's 8 pages made, 10 more of the device free */
	rc = headroom_held_in("cuMemsetD8Async", &filler, &during, &held);
	free_device(filler);
	ck_assert(held);
	ck_assert(filler != 0);
	ck_assert_int_eq(rc, 0);
	ck_assert_uint_eq(during, 18 * PG);
}
END_TEST

static void *read_headroom(void *arg)
{
	size_t *h = arg;

	if (kv_alloc_headroom(a, h))
		*h = SIZE_MAX;
	return NULL;
}

/*
 * A reader of the headroom stopped in the driver call stop (its context's
 * push, before the driver's free bytes are read, or its pop, after) while
 * a fill is made: its reading, with 10 pages of the device free and the
 * pool's 8 made from them meanwhile. *ok: whether every step got there.
 */
static size_t headroom_across_a_fill(const char *stop, int *ok)
{
	struct timespec ms = { 0, 1000 * 1000 };
	unsigned long long access;
	struct kvemu_usage u0, u;
	CUdeviceptr filler;
	size_t h = 0;
	int i, held, read, made = 0;
	pthread_t th;

	kv_dev_usage(&u0);
	ck_assert_int_eq(kv_dev_hold("cuMemCreate", 1), 0);
	make_filling();
	held = held_in("cuMemCreate");
	filler = fill_device(10 * PG);
	kv_dev_hold(stop, 1);
	ck_assert_int_eq(pthread_create(&th, NULL, read_headroom, &h), 0);
	read = held_in(stop);
	/* the fill made and counted: its arena access comes after */
	access = kv_dev_calls("cuMemSetAccess");
	kv_dev_hold("cuMemCreate", 0);
	for (i = 0; i < 30000 && !made; i++) {
		kv_dev_usage(&u);
		made = u.handles == u0.handles + 8 &&
		       kv_dev_calls("cuMemSetAccess") > access;
		nanosleep(&ms, NULL);
	}
	kv_dev_hold(stop, 0);
	ck_assert_int_eq(pthread_join(th, NULL), 0);
	free_device(filler);
	*ok = held && read && made && filler;
	return h;
}

/* Where the reader stops: after the driver's read (a fill that ends
 * between it and the count of the pool: the handles changed across the
 * read, so it is made again; apart, 18 pages where 10 could be had), and
 * before it (the fill made after the handles were read: read again, the
 * count is the one the driver saw; the count from before, kept, took the
 * fill's pages out a second time: 8 pages where 10 could be had). */
static const char *const reader_stops[] = {
	"cuCtxPopCurrent_v2", "cuCtxPushCurrent_v2",
};

START_TEST(test_headroom_across_a_fill)
{
	size_t h;
	int ok;

	h = headroom_across_a_fill(reader_stops[_i], &ok);
	ck_assert(ok);
	ck_assert_uint_eq(h, 10 * PG);
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


/* ---- faults: a capture beside pages in flight, big pages, a failed arena unmap ---- */

static CUdeviceptr rv_b;
static int rv_trim_rc = 1, rv_map_rc = 1, rv_trim_done, rv_map_done;

static void *rv_trim(void *arg)
{
	size_t freed;

	(void)arg;
	rv_trim_rc = kv_alloc_trim(a, 2 * PG, &freed);
	__atomic_store_n(&rv_trim_done, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void *rv_map(void *arg)
{
	(void)arg;
	rv_map_rc = kv_alloc_map(a, rv_b, PG);
	__atomic_store_n(&rv_map_done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/*
 * A map short of pages while a stream captures, with pages in flight (a
 * trim's, stopped in the driver) and a released span that only the
 * capture's end lets go of: the map waits for the pages in flight with the
 * lock dropped, as it does without a capture, rather than spin holding it
 * (kv_spans_reap does nothing while a stream captures), which would keep
 * the trim from putting its pages back: on the capturing thread, a hang.
 */
START_TEST(test_capture_map_waits_lock_dropped)
{
	struct timespec ms = { 0, 1000 * 1000 };
	CUdeviceptr sa, sc;
	struct kv_alloc_opts o;
	pthread_t tt, tm;
	int i, held, trim_done, map_done;

	kt_opts(&o);
	o.limit = 8 * PG;
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 6 * PG, &sa), 0);
	ck_assert_int_eq(kv_alloc_reserve(a, 2 * PG, &sc), 0);
	ck_assert_int_eq(kv_alloc_reserve(a, 2 * PG, &rv_b), 0);
	ck_assert_int_eq(kv_alloc_map(a, sa, 6 * PG), 0);
	ck_assert_int_eq(kv_alloc_map(a, sc, 2 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, sc, 2 * PG), 0);     /* 2 cached */
	rv_trim_done = rv_map_done = 0;
	ck_assert_int_eq(kv_dev_hold("cuMemUnmap", 1), 0);
	ck_assert_int_eq(pthread_create(&tt, NULL, rv_trim, NULL), 0);
	held = held_in("cuMemUnmap");                  /* 2 pages UNMAPPING */
	kv_prim_capture_begin();
	ck_assert_int_eq(kv_alloc_release(a, sa), 0);  /* 6 DYING, unreaped */
	ck_assert_int_eq(pthread_create(&tm, NULL, rv_map, NULL), 0);
	for (i = 0; i < 200; i++)                      /* the map is short */
		nanosleep(&ms, NULL);
	kv_dev_hold("cuMemUnmap", 0);                  /* the trim may end */
	for (i = 0; i < 10000 && !(__atomic_load_n(&rv_trim_done, __ATOMIC_ACQUIRE) &&
				  __atomic_load_n(&rv_map_done, __ATOMIC_ACQUIRE)); i++)
		nanosleep(&ms, NULL);
	trim_done = __atomic_load_n(&rv_trim_done, __ATOMIC_ACQUIRE);
	map_done = __atomic_load_n(&rv_map_done, __ATOMIC_ACQUIRE);
	kv_prim_capture_end();                         /* unsticks it */
	pthread_join(tt, NULL);
	pthread_join(tm, NULL);
	ck_assert(held);
	ck_assert_msg(trim_done, "the trim could not take the lock back during the capture");
	ck_assert_msg(map_done, "the map did not end during the capture (10 s after the pages it waited for came back)");
	ck_assert_int_eq(rv_trim_rc, 0);
	ck_assert_int_eq(rv_map_rc, 0);
	kt_check(a);
}
END_TEST

/*
 * The pool's watermarks are bytes (README: "refilled in the background when
 * it drops under" KVSHIM_POOL_LOW): with pages larger than the low mark
 * (KVSHIM_PAGE=32M and the default 8M) an empty pool is under it, and is
 * refilled to the high mark, where rounding the mark down to 0 pages left
 * every map to create and scrub its pages on its own path.
 */
START_TEST(test_big_pages_pool_fills)
{
	struct kv_alloc_opts o;

	kt_opts(&o);
	o.page = 16 * PG;                       /* 32 MiB */
	o.pool_low = 8u << 20;                  /* the defaults */
	o.pool_high = 64u << 20;
	o.worker = 0;                           /* creation fills the pool */
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_tick(a), 0);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 64u << 20);
}
END_TEST

/*
 * A pool page whose arena unmap fails as it is released keeps its handle
 * and stays pooled: released, its memory would be lost to the process (a
 * handle still mapped is never freed) and its slot could not be made
 * again (its arena address taken), failing every later map that reaches
 * it. After one failed unmap in a trim, maps work as before.
 */
START_TEST(test_failed_arena_unmap_keeps_the_page)
{
	struct kv_alloc_opts o;
	size_t freed = 0;
	int rc;

	kt_opts(&o);
	o.limit = 2 * PG;
	o.pool_low = 2 * PG;
	o.pool_high = 2 * PG;
	a = kt_create(&o);                      /* 2 pages pooled */
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 2 * PG);
	ck_assert_int_eq(kv_alloc_reserve(a, 2 * PG, &base), 0);
	ck_assert_int_eq(kv_dev_fail_nth("cuMemUnmap", 1, CUDA_ERROR_UNKNOWN), 0);
	rc = kv_alloc_trim(a, 2 * PG, &freed);  /* the arena's unmap fails */
	ck_assert_int_eq(rc, KVSHIM_EDRIVER);
	/* one driver failure must not cost the process its pages for good */
	ck_assert_int_eq(kv_alloc_map(a, base, 2 * PG), 0);
}
END_TEST

/*
 * The pages kept pooled after a failed arena unmap go from FREEING back to
 * DIRTY: a move the state machine must allow, not one it logs as an
 * internal error (and makes all the same).
 */
START_TEST(test_failed_arena_unmap_moves_by_the_table)
{
	struct kv_alloc_opts o;
	size_t freed = 0;
	char log[4096], *bad;

	kt_opts(&o);
	o.limit = 2 * PG;
	o.pool_low = 2 * PG;
	o.pool_high = 2 * PG;
	a = kt_create(&o);
	ck_assert_int_eq(kv_dev_fail_nth("cuMemUnmap", 1, CUDA_ERROR_UNKNOWN), 0);
	kt_capture_start();
	ck_assert_int_eq(kv_alloc_trim(a, 2 * PG, &freed), KVSHIM_EDRIVER);
	kt_capture_end(log, sizeof(log));
	bad = strstr(log, "internal:");
	ck_assert_msg(!bad, "the trim logged %s", bad);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 2 * PG);
	kt_check(a);
}
END_TEST

/*
 * The set-up of the failed creations below: a limit of 8 pages, 4 mapped
 * at base; the 4 slots left are one run, whose third map is armed to fail,
 * then the unmap of the two mapped before it. refill: the pool makes them
 * (marks at 4 pages), else a map of the span returned. Counts reset.
 */
static CUdeviceptr failed_create_setup(int refill)
{
	struct kv_alloc_opts o;
	CUdeviceptr b2;

	kt_opts(&o);
	o.limit = 8 * PG;
	if (refill) {
		o.pool_low = 4 * PG;
		o.pool_high = 4 * PG;
	}
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 4 * PG, &base), 0);
	ck_assert_int_eq(kv_alloc_reserve(a, 4 * PG, &b2), 0);
	ck_assert_int_eq(kv_alloc_map(a, base, 4 * PG), 0);
	kv_dev_reset_counts();
	ck_assert_int_eq(kv_dev_fail_nth("cuMemMap", 3, CUDA_ERROR_UNKNOWN), 0);
	ck_assert_int_eq(kv_dev_fail_nth("cuMemUnmap", 1, CUDA_ERROR_UNKNOWN), 0);
	return b2;
}

/* After such a failure: the two pages kept are pooled (6 pages held in
 * all), and the same slots are made (refill: by a tick) and mapped again
 * at b2. */
static void kept_two_map_again(int refill, CUdeviceptr b2)
{
	kt_check(a);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 2 * PG);
	ck_assert_uint_eq(kt_stats(a).physical_bytes, 6 * PG);
	if (refill)
		ck_assert_int_eq(kv_alloc_tick(a), 0);
	ck_assert_int_eq(kv_alloc_map(a, b2, 4 * PG), 0);
}

/*
 * A creation whose arena map fails partway through a run, and whose
 * clean-up unmap of the pages mapped before it fails too: those pages keep
 * their handles and stay pooled, as a pool page does whose unmap fails
 * (above). Released, their memory would be lost (a handle still mapped is
 * never freed) and their arena addresses taken, failing every later
 * creation of those slots. Loop 0 creates on a map's path, loop 1 in a
 * refill. Either way every slot maps again, and teardown finds nothing
 * left and every handle released once.
 */
START_TEST(test_failed_create_unmap_keeps_the_pages)
{
	CUdeviceptr b2 = failed_create_setup(_i);

	if (_i)
		ck_assert_int_eq(kv_alloc_tick(a), KVSHIM_EDRIVER);
	else
		ck_assert_int_eq(kv_alloc_map(a, b2, 4 * PG), KVSHIM_EDRIVER);
	ck_assert_uint_eq(kv_dev_calls("cuMemCreate"), 4);
	ck_assert_uint_eq(kv_dev_calls("cuMemUnmap"), 1);
	kept_two_map_again(_i, b2);
	kt_check(a);
	ck_assert_int_eq(kv_alloc_release(a, b2), 0);
	ck_assert_int_eq(kv_alloc_release(a, base), 0);
	kt_destroy(a);
	a = NULL;
	ck_assert_uint_eq(kv_dev_calls("cuMemRelease"), kv_dev_calls("cuMemCreate") + 4);
}
END_TEST

/*
 * Pool pages kept after a failed arena unmap (a trim's, here) keep their
 * handles, and teardown must still free them: its own unmap of them fails
 * once more, then the fault clears. Destroy tries them again, and leaves
 * no handle, reservation or mapped page in the driver (kt_destroy checks),
 * every handle released once.
 */
START_TEST(test_failed_arena_unmap_freed_at_teardown)
{
	struct kv_alloc_opts o;
	size_t freed = 0;
	kv_alloc_t *b;

	kt_opts(&o);
	o.limit = 2 * PG;
	o.pool_low = 2 * PG;
	o.pool_high = 2 * PG;
	kv_dev_reset_counts();
	a = kt_create(&o);                      /* 2 pages pooled */
	ck_assert_int_eq(kv_dev_fail_nth("cuMemUnmap", 1, CUDA_ERROR_UNKNOWN), 0);
	ck_assert_int_eq(kv_alloc_trim(a, 2 * PG, &freed), KVSHIM_EDRIVER);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 2 * PG);
	/* teardown's first unmap of them fails too */
	ck_assert_int_eq(kv_dev_fail_nth("cuMemUnmap", 1, CUDA_ERROR_UNKNOWN), 0);
	b = a;
	a = NULL;
	kt_destroy(b);
	ck_assert_uint_eq(kv_dev_calls("cuMemCreate"), 2);
	ck_assert_uint_eq(kv_dev_calls("cuMemRelease"), 2);
}
END_TEST

/* Faults a test armed and did not meet go; an allocator it left is checked
 * and destroyed (a test that leaves driver state on purpose has none). */
static void teardown_faults(void)
{
	kv_dev_fail_nth("cuMemMap", 0, CUDA_SUCCESS);
	kv_dev_fail_nth("cuMemUnmap", 0, CUDA_SUCCESS);
	kv_dev_fail_nth("cuMemSetAccess", 0, CUDA_SUCCESS);
	if (a)
		kt_destroy(a);
	a = NULL;
}

/*
 * As in test_failed_create_unmap_keeps_the_pages, and the access the undo
 * grants the pages it keeps is refused too: those pages are mapped in the
 * arena without access, and a scrub through it would be an illegal address
 * (on a GPU, one that breaks the context for good). They keep their
 * handles, pooled, and a scrub grants their access before it writes; the
 * first scrub's grant is refused as well, and that scrub fails without
 * writing. Once the fault has passed, every slot maps again, and no scrub
 * met an illegal address. Loop 0 creates on a map's path, loop 1 in a
 * refill.
 */
START_TEST(test_failed_create_access_never_scrubbed)
{
	CUdeviceptr b2 = failed_create_setup(_i);
	char log[16384];

	/* then their access; in a refill, which scrubs what it made at
	 * once, the scrub's grant too */
	ck_assert_int_eq(kv_dev_fail_times("cuMemSetAccess", 1, _i ? 2 : 1,
					   CUDA_ERROR_UNKNOWN), 0);
	kt_capture_start();
	if (_i) {
		ck_assert_int_eq(kv_alloc_tick(a), KVSHIM_EDRIVER);
	} else {
		ck_assert_int_eq(kv_alloc_map(a, b2, 4 * PG), KVSHIM_EDRIVER);
		kt_check(a);
		ck_assert_uint_eq(kt_stats(a).pooled_bytes, 2 * PG);
		/* a map takes the two kept pages: its scrub's grant is
		 * refused, and the map fails */
		ck_assert_int_eq(kv_dev_fail_nth("cuMemSetAccess", 1, CUDA_ERROR_UNKNOWN), 0);
		ck_assert_int_eq(kv_alloc_map(a, b2, 2 * PG), KVSHIM_EDRIVER);
	}
	kept_two_map_again(_i, b2);
	kt_capture_end(log, sizeof(log));
	ck_assert_msg(!strstr(log, "ILLEGAL_ADDRESS"),
		      "a page without access was scrubbed: %s", log);
	kt_check(a);
	ck_assert_int_eq(kv_alloc_release(a, b2), 0);
	ck_assert_int_eq(kv_alloc_release(a, base), 0);
}
END_TEST

/*
 * Teardown unmaps every span it releases, and a span whose unmap the
 * driver refuses gets one more try: a passing fault costs nothing at exit.
 * Two spans hold pages; the first unmap at teardown fails. No handle,
 * mapping or range is left in the driver, and no handle was released while
 * still mapped (kt_destroy checks).
 */
START_TEST(test_span_unmap_retried_at_teardown)
{
	struct kv_alloc_opts o;
	CUdeviceptr b2;
	kv_alloc_t *b;

	kt_opts(&o);
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 4 * PG, &base), 0);
	ck_assert_int_eq(kv_alloc_reserve(a, 4 * PG, &b2), 0);
	ck_assert_int_eq(kv_alloc_map(a, base, 3 * PG), 0);
	ck_assert_int_eq(kv_alloc_map(a, b2, 2 * PG), 0);
	ck_assert_int_eq(kv_dev_fail_nth("cuMemUnmap", 1, CUDA_ERROR_UNKNOWN), 0);
	b = a;
	a = NULL;
	kt_destroy(b);
}
END_TEST

/*
 * A span whose unmap the driver refuses at teardown, and at its one more
 * try: its pages stay mapped in it, so they keep their handles (a handle
 * released while mapped is never freed, and nothing would ever unmap it)
 * and the span its range, said once with their count. Nothing of them is
 * released or freed while mapped; the allocator's own memory goes
 * (valgrind). What is left stays in this test's process.
 */
START_TEST(test_span_unmap_refused_at_teardown)
{
	struct kvemu_usage u0, u;
	struct kv_alloc_opts o;
	char log[4096], *said;
	kv_alloc_t *b;

	kt_opts(&o);
	ck_assert_int_eq(kv_dev_usage(&u0), 0);
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, 4 * PG, &base), 0);
	ck_assert_int_eq(kv_alloc_map(a, base, 3 * PG), 0);
	ck_assert_int_eq(kv_dev_fail_times("cuMemUnmap", 1, 2, CUDA_ERROR_UNKNOWN), 0);
	b = a;
	a = NULL;
	kt_capture_start();
	kv_alloc_destroy(b);
	kt_capture_end(log, sizeof(log));
	ck_assert_int_eq(kv_dev_usage(&u), 0);
	ck_assert_uint_eq(u.released_mapped, u0.released_mapped);
	ck_assert_uint_eq(u.handles, u0.handles + 3);
	/* mapped in the span and in the arena, both ranges kept */
	ck_assert_uint_eq(u.mapped_pages, u0.mapped_pages + 6);
	ck_assert_uint_eq(u.reservations, u0.reservations + 2);
	said = strstr(log, "3 span pages still mapped");
	ck_assert_msg(said, "teardown did not say what it left: %s", log);
	ck_assert_msg(!strstr(said + strlen("3 span pages"), "span pages still mapped"),
		      "teardown said it more than once: %s", log);
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
	tcase_add_test(tc, test_upkeep_waits_for_a_capture);
	tcase_add_test(tc, test_capture_gate_waits_counted);
	tcase_add_test(tc, test_capture_gate_waits_only_fences);
	tcase_add_test(tc, test_pages_reused);
	tcase_add_test(tc, test_shrink_above_high);
	tcase_add_test(tc, test_empty_pool_creates);
	tcase_add_test(tc, test_worker_refills);
	kt_add_emu(tc, test_release_off_the_path);
	kt_add_emu(tc, test_meminfo_beside_a_fill);
	kt_add_emu(tc, test_meminfo_beside_a_map);
	kt_add_emu(tc, test_meminfo_after_a_release);
	kt_add_emu(tc, test_released_pages_during_a_capture);
	kt_add_emu(tc, test_fill_stops_for_a_capture);
	kt_add_emu(tc, test_headroom_beside_a_fill);
	kt_add_emu(tc, test_headroom_beside_a_scrub);
	kt_add_emu_loop(tc, test_headroom_across_a_fill, 0, 2);
	kt_add_emu(tc, test_capture_map_waits_lock_dropped);
	tcase_add_test(tc, test_big_pages_pool_fills);
	kt_add_emu(tc, test_failed_arena_unmap_keeps_the_page);
	kt_add_emu(tc, test_failed_arena_unmap_moves_by_the_table);
	kt_add_emu(tc, test_failed_arena_unmap_freed_at_teardown);
	kt_add_emu_loop(tc, test_failed_create_unmap_keeps_the_pages, 0, 2);
	suite_add_tcase(s, tc);
	/* (the last test leaves pages in the driver, on purpose) */
	tc = tcase_create("driver-faults");
	tcase_add_checked_fixture(tc, NULL, teardown_faults);
	kt_add_emu_loop(tc, test_failed_create_access_never_scrubbed, 0, 2);
	kt_add_emu(tc, test_span_unmap_retried_at_teardown);
	kt_add_emu(tc, test_span_unmap_refused_at_teardown);
	suite_add_tcase(s, tc);
	tcase_add_test(bad, test_bad_watermarks);
	tcase_add_test(bad, test_bad_device);
	suite_add_tcase(s, bad);
	return s;
}
