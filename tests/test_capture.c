/*
 * test_capture.c - kvshim while a stream captures into a CUDA graph, on the
 * emulation (which refuses, with the real driver's codes, every call that
 * is unsafe during a capture, and invalidates the capture as the driver
 * does). libkvshim.so is loaded with dlopen and the capture is begun and
 * ended through its exported hooks, as an engine's calls reach them. No
 * kvshim call may be refused or invalidate the capture: not a map that
 * creates and scrubs pages, not a trim or release whose unmaps need a fence
 * (those wait for the capture's end), nor memory info; a memset captured
 * over a span is made whole. The worker's pool upkeep waits for the
 * capture's end, and a thread may wait for it too (kvshim_capture_wait).
 */
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "emu/kvemu.h"
#include "suites.h"

static void *lib;
static struct {
	int (*reserve)(size_t, void **);
	int (*release)(void *);
	int (*map)(const void *, size_t);
	int (*unmap)(const void *, size_t);
	int (*trim)(size_t, size_t *);
	int (*stats)(struct kvshim_stats *);
	CUresult (*begin)(CUstream, CUstreamCaptureMode);
	CUresult (*end)(CUstream, CUgraph *);
	CUresult (*memset_async)(CUdeviceptr, unsigned char, size_t, CUstream);
	CUresult (*meminfo)(size_t *, size_t *);
	int (*capture_wait)(unsigned);
} k;
static struct {
	CUresult (*stream_create)(CUstream *, unsigned int);
	CUresult (*stream_destroy)(CUstream);
	CUresult (*graph_destroy)(CUgraph);
	CUresult (*instantiate)(CUgraphExec *, CUgraph, unsigned long long);
	CUresult (*launch)(CUgraphExec, CUstream);
	CUresult (*exec_destroy)(CUgraphExec);
	CUresult (*sync)(CUstream);
	CUresult (*begin)(CUstream, CUstreamCaptureMode);
	CUresult (*end)(CUstream, CUgraph *);
	void (*capture_stats)(struct kvemu_capture_stats *);
} d;
static CUstream s;

#define SYM(h, field, name) do {                                             \
		*(void **)&(field) = dlsym((h), (name));                     \
		ck_assert_msg((field) != NULL, "no %s", (name));             \
	} while (0)
#define DEV(field, name) do {                                                \
		*(void **)&(field) = kv_dev_sym(name);                       \
		ck_assert_msg((field) != NULL, "no %s", (name));             \
	} while (0)

static void setup(void)
{
	const char *path = getenv("KVSHIM_LIB");

	setenv("KVSHIM_POOL_LOW", "8M", 1);
	setenv("KVSHIM_POOL_HIGH", "16M", 1);
	DEV(d.stream_create, "cuStreamCreate");
	DEV(d.stream_destroy, "cuStreamDestroy_v2");
	DEV(d.graph_destroy, "cuGraphDestroy");
	DEV(d.instantiate, "cuGraphInstantiateWithFlags");
	DEV(d.launch, "cuGraphLaunch");
	DEV(d.exec_destroy, "cuGraphExecDestroy");
	DEV(d.sync, "cuStreamSynchronize");
	DEV(d.begin, "cuStreamBeginCapture_v2");
	DEV(d.end, "cuStreamEndCapture");
	DEV(d.capture_stats, "kvemu_capture_stats");
	ck_assert_msg(path != NULL, "KVSHIM_LIB names no library");
	lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	ck_assert_msg(lib != NULL, "dlopen %s: %s", path, dlerror());
	SYM(lib, k.reserve, "kvshim_reserve");
	SYM(lib, k.release, "kvshim_release");
	SYM(lib, k.map, "kvshim_map");
	SYM(lib, k.unmap, "kvshim_unmap");
	SYM(lib, k.trim, "kvshim_trim");
	SYM(lib, k.stats, "kvshim_stats");
	SYM(lib, k.begin, "cuStreamBeginCapture_v2");
	SYM(lib, k.end, "cuStreamEndCapture");
	SYM(lib, k.memset_async, "cuMemsetD8Async");
	SYM(lib, k.meminfo, "cuMemGetInfo_v2");
	SYM(lib, k.capture_wait, "kvshim_capture_wait");
	ck_assert_int_eq(d.stream_create(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
	kv_dev_reset_counts();
}

static void teardown(void)
{
	kv_dev_hold("cuCtxSynchronize", 0);     /* a test that failed holding it */
	d.stream_destroy(s);
	unsetenv("KVSHIM_POOL_LOW");
	unsetenv("KVSHIM_POOL_HIGH");
	unsetenv("KVSHIM_LIMIT");
}

static struct kvshim_stats st(void)
{
	struct kvshim_stats out;

	ck_assert_int_eq(k.stats(&out), 0);
	return out;
}

static struct kvemu_capture_stats cst(void)
{
	struct kvemu_capture_stats out;

	d.capture_stats(&out);
	return out;
}

/* Nothing of kvshim's was refused, and no capture was invalidated. */
static void no_harm(void)
{
	struct kvemu_capture_stats c = cst();

	ck_assert_msg(c.refused == 0 && c.invalidated == 0,
		      "%llu calls refused during a capture (the last: %s), %llu captures invalidated",
		      c.refused, c.last_refused ? c.last_refused : "none", c.invalidated);
}

/* Begin a global-mode capture of s through kvshim's hook, with one
 * operation of the engine's own on it. */
static void begin(void)
{
	ck_assert_int_eq(k.begin(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
}

static void end(void)
{
	CUgraph g = NULL;

	ck_assert_int_eq(k.end(s, &g), CUDA_SUCCESS);
	ck_assert_ptr_nonnull(g);
	d.graph_destroy(g);
}

/* Wait, without a deadline tighter than a loaded machine can meet, until
 * kvshim maps at most `most` bytes (its worker works after the capture). */
static int wait_mapped_at_most(size_t most)
{
	struct timespec ts = { 0, 2 * 1000 * 1000 };
	int i;

	for (i = 0; i < 20000; i++) {   /* 40 s at most */
		if (st().mapped_bytes <= most)
			return 1;
		nanosleep(&ts, NULL);
	}
	return 0;
}

/* A map during a capture creates pages and scrubs them (a wait on kvshim's
 * own stream): nothing is refused. */
START_TEST(test_capture_map)
{
	void *p;

	begin();
	ck_assert_int_eq(k.reserve(16 * PG, &p), 0);
	ck_assert_int_eq(k.map(p, 12 * PG), 0);         /* more than the pool */
	ck_assert_uint_eq(st().mapped_bytes, 12 * PG);
	end();
	no_harm();
	ck_assert_int_eq(kv_dev_fill((CUdeviceptr)(uintptr_t)p, 12 * PG, 3), CUDA_SUCCESS);
	ck_assert_uint_ge(st().pages_zeroed, 12);
	ck_assert_int_eq(k.release(p), 0);
}
END_TEST

static void *map_elsewhere(void *arg)
{
	void *p;
	int rc;

	(void)arg;
	rc = k.reserve(8 * PG, &p);
	if (!rc)
		rc = k.map(p, 6 * PG);
	if (!rc)
		rc = k.release(p);
	return (void *)(intptr_t)rc;
}

/* The same from another thread, in the default (global) capture mode,
 * while this one captures: kvshim's waits are its own, in relaxed mode. */
START_TEST(test_capture_map_other_thread)
{
	pthread_t t;
	void *rc;

	begin();
	ck_assert_int_eq(pthread_create(&t, NULL, map_elsewhere, NULL), 0);
	ck_assert_int_eq(pthread_join(t, &rc), 0);
	ck_assert_int_eq((int)(intptr_t)rc, 0);
	end();
	no_harm();
}
END_TEST

/*
 * Unmapping pages out of a span needs a fence (a context-wide wait) for
 * pages let go of since the last one: during a capture it is put off. A
 * trim gives back only pooled pages, a released span keeps its pages until
 * the capture ends; then the worker unmaps them.
 */
START_TEST(test_capture_puts_fences_off)
{
	void *p, *q;
	size_t freed = 0;

	ck_assert_int_eq(k.reserve(8 * PG, &p), 0);
	ck_assert_int_eq(k.reserve(8 * PG, &q), 0);
	ck_assert_int_eq(k.map(p, 4 * PG), 0);
	ck_assert_int_eq(k.map(q, 4 * PG), 0);
	ck_assert_int_eq(k.unmap(p, 4 * PG), 0);        /* 4 pages cached */
	begin();
	ck_assert_int_eq(k.trim(SIZE_MAX, &freed), 0);
	ck_assert_uint_eq(st().cached_bytes, 4 * PG);   /* put off */
	ck_assert_int_eq(k.release(q), 0);              /* its pages stay */
	ck_assert_uint_ge(st().physical_bytes, 8 * PG);
	end();
	no_harm();
	/* after the capture: the released span's pages go (the worker), and a
	 * trim gives back the cached ones */
	ck_assert_msg(wait_mapped_at_most(4 * PG), "the released span's pages never left");
	ck_assert_int_eq(k.trim(SIZE_MAX, &freed), 0);
	ck_assert_uint_eq(st().cached_bytes, 0);
	ck_assert_uint_le(st().physical_bytes, 16u << 20);     /* the pool refilled */
	ck_assert_int_eq(k.release(p), 0);
	no_harm();
}
END_TEST

/*
 * A map short of pages that only a released span holds cannot wait for
 * them during a capture (it may run on the capturing thread): it answers at
 * once, backed from the freed span's pages if they came back before the
 * capture began, or out of memory, and the capture goes on.
 */
START_TEST(test_capture_map_short)
{
	void *p, *q;
	int rc;

	setenv("KVSHIM_LIMIT", "8M", 1);
	setenv("KVSHIM_POOL_LOW", "0", 1);
	setenv("KVSHIM_POOL_HIGH", "0", 1);
	ck_assert_int_eq(k.reserve(8 * PG, &p), 0);
	ck_assert_int_eq(k.reserve(8 * PG, &q), 0);
	ck_assert_int_eq(k.map(p, 4 * PG), 0);
	ck_assert_int_eq(k.release(p), 0);
	begin();
	rc = k.map(q, 2 * PG);
	ck_assert_msg(rc == 0 || rc == KVSHIM_ELIMIT, "map during the capture: %d", rc);
	end();
	no_harm();
	if (rc)
		ck_assert_int_eq(k.map(q, 2 * PG), 0);  /* after it, it works */
	ck_assert_int_eq(k.release(q), 0);
}
END_TEST

/*
 * A zero memset captured on a span is recorded whole, with every page it
 * covers backed and pinned: a replay sets whatever the pages hold then.
 * Outside a capture the same memset skips unmapped pages.
 */
START_TEST(test_capture_memset_whole)
{
	struct kvemu_capture_stats before;
	CUgraphExec exec;
	CUgraph g = NULL;
	CUdeviceptr base;
	void *p;

	ck_assert_int_eq(k.reserve(8 * PG, &p), 0);
	base = (CUdeviceptr)(uintptr_t)p;
	ck_assert_int_eq(k.memset_async(base, 0, 8 * PG, s), CUDA_SUCCESS);
	ck_assert_int_eq(d.sync(s), CUDA_SUCCESS);
	ck_assert_uint_eq(st().mapped_bytes, 0);
	before = cst();
	begin();
	ck_assert_int_eq(k.memset_async(base, 0, 8 * PG, s), CUDA_SUCCESS);
	ck_assert_uint_eq(st().mapped_bytes, 8 * PG);
	ck_assert_int_eq(k.end(s, &g), CUDA_SUCCESS);
	ck_assert_uint_gt(cst().captured_ops, before.captured_ops);
	no_harm();
	/* the engine writes, then the replay sets every page again */
	ck_assert_int_eq(kv_dev_fill(base, 8 * PG, 9), CUDA_SUCCESS);
	ck_assert_int_eq(d.instantiate(&exec, g, 0), CUDA_SUCCESS);
	ck_assert_int_eq(d.launch(exec, s), CUDA_SUCCESS);
	ck_assert_int_eq(d.sync(s), CUDA_SUCCESS);
	{
		size_t nonzero = 1;

		ck_assert_int_eq(kv_dev_nonzero(base, 8 * PG, &nonzero), CUDA_SUCCESS);
		ck_assert_uint_eq(nonzero, 0);
	}
	d.exec_destroy(exec);
	d.graph_destroy(g);
	/* pinned: a trim leaves the pages the graph writes */
	ck_assert_int_eq(k.trim(SIZE_MAX, NULL), 0);
	ck_assert_uint_eq(st().mapped_bytes, 8 * PG);
	ck_assert_int_eq(k.release(p), 0);
}
END_TEST

/* Memory info during a capture: the driver's and kvshim's figures, no
 * refusal. */
START_TEST(test_capture_meminfo)
{
	size_t free_b = 0, total = 0;
	void *p;

	ck_assert_int_eq(k.reserve(8 * PG, &p), 0);
	begin();
	ck_assert_int_eq(k.meminfo(&free_b, &total), CUDA_SUCCESS);
	ck_assert_uint_gt(total, 0);
	end();
	no_harm();
	ck_assert_int_eq(k.release(p), 0);
}
END_TEST

/* Wait, without a deadline tighter than a loaded machine can meet, until
 * kvshim's pool holds at least `least` bytes, all of them made and
 * scrubbed (none in flight) when `settled`. */
static int wait_pooled_at_least(size_t least, int settled)
{
	struct timespec ts = { 0, 2 * 1000 * 1000 };
	struct kvshim_stats now;
	int i;

	for (i = 0; i < 20000; i++) {   /* 40 s at most */
		now = st();
		if (now.pooled_bytes >= least &&
		    (!settled || now.pages_zeroed * PG >= now.pooled_bytes))
			return 1;
		nanosleep(&ts, NULL);
	}
	return 0;
}

/*
 * The worker keeps its pool's upkeep off a capture: a map during it that
 * takes pooled pages leaves the pool under its low watermark, and no page
 * is made until the capture ends; then the pool refills. (A map that found
 * the pool's fill still in flight makes its own pages: the pool is then not
 * under its watermark and the test shows nothing. So does a machine too
 * busy to run the worker during the capture. Neither can fail it.)
 */
START_TEST(test_capture_worker_waits)
{
	struct timespec ms = { 0, 1000 * 1000 };
	unsigned long long made;
	size_t pooled;
	void *p;
	int i;

	ck_assert_msg(wait_pooled_at_least(16u << 20, 1), "the pool never filled");
	ck_assert_int_eq(k.reserve(16 * PG, &p), 0);
	begin();
	made = kv_dev_calls("cuMemCreate");
	ck_assert_int_eq(k.map(p, 6 * PG), 0);
	if (kv_dev_calls("cuMemCreate") != made) {
		end();
		ck_assert_int_eq(k.release(p), 0);
		return;                 /* the pool's fill was in flight */
	}
	pooled = st().pooled_bytes;
	for (i = 0; i < 300; i++)                       /* three worker periods */
		nanosleep(&ms, NULL);
	ck_assert_uint_eq(kv_dev_calls("cuMemCreate"), made);
	ck_assert_uint_eq(st().pooled_bytes, pooled);
	end();
	no_harm();
	ck_assert_uint_eq(pooled, 2 * PG);
	ck_assert_msg(wait_pooled_at_least(8u << 20, 0),
		      "the pool was not refilled after the capture");
	ck_assert_int_eq(k.release(p), 0);
}
END_TEST

static int ended;       /* set just before the capture's end */

static void *wait_long(void *arg)
{
	int rc;

	(void)arg;
	/* (longer than the test may run: without the end's wake it fails) */
	rc = k.capture_wait(600 * 1000);
	/* 0 only once the capture is over: never before the end began */
	if (rc == 0 && !__atomic_load_n(&ended, __ATOMIC_ACQUIRE))
		rc = 2;
	return (void *)(intptr_t)rc;
}

static void *wait_short(void *arg)
{
	(void)arg;
	return (void *)(intptr_t)k.capture_wait(50);
}

/*
 * kvshim_capture_wait: 0 at once without a capture; 1 at once on the
 * capturing thread itself; on another thread, 1 when the capture outlasts
 * the wait, else 0 once the capture has ended.
 */
START_TEST(test_capture_wait)
{
	pthread_t t1, t2;
	void *rc1, *rc2;
	struct timespec ms20 = { 0, 20 * 1000 * 1000 };

	ck_assert_int_eq(k.capture_wait(0), 0);
	ck_assert_int_eq(k.capture_wait(60 * 1000), 0);
	begin();
	ck_assert_int_eq(k.capture_wait(600 * 1000), 1);        /* at once */
	ck_assert_int_eq(pthread_create(&t1, NULL, wait_short, NULL), 0);
	ck_assert_int_eq(pthread_join(t1, &rc1), 0);
	ck_assert_int_eq((int)(intptr_t)rc1, 1);
	ck_assert_int_eq(pthread_create(&t2, NULL, wait_long, NULL), 0);
	nanosleep(&ms20, NULL);                         /* most likely waiting now */
	__atomic_store_n(&ended, 1, __ATOMIC_RELEASE);
	end();
	ck_assert_int_eq(pthread_join(t2, &rc2), 0);
	ck_assert_int_eq((int)(intptr_t)rc2, 0);
	ck_assert_int_eq(k.capture_wait(0), 0);         /* this thread's ended too */
	no_harm();
}
END_TEST

static void *end_here(void *arg)
{
	CUgraph g = NULL;
	CUresult r;

	(void)arg;
	kv_dev_use(0);
	r = k.end(s, &g);
	if (r == CUDA_SUCCESS)
		d.graph_destroy(g);
	return (void *)(intptr_t)r;
}

static int begun, may_end;      /* capture_elsewhere's capture, and its end */

/* Begin a capture on a stream of this thread's, end it once told to. */
static void *capture_elsewhere(void *arg)
{
	struct timespec ms = { 0, 1000 * 1000 };
	CUgraph g = NULL;
	CUstream s2;
	CUresult r;

	(void)arg;
	kv_dev_use(0);
	r = d.stream_create(&s2, CU_STREAM_NON_BLOCKING);
	if (r == CUDA_SUCCESS)
		r = k.begin(s2, CU_STREAM_CAPTURE_MODE_RELAXED);
	__atomic_store_n(&begun, 1, __ATOMIC_RELEASE);
	if (r != CUDA_SUCCESS)
		return (void *)(intptr_t)r;
	while (!__atomic_load_n(&may_end, __ATOMIC_ACQUIRE))
		nanosleep(&ms, NULL);
	r = k.end(s2, &g);
	if (r == CUDA_SUCCESS)
		d.graph_destroy(g);
	d.stream_destroy(s2);
	return (void *)(intptr_t)r;
}

/*
 * A relaxed capture begun on this thread and ended on another: once no
 * capture runs, this thread's waits are no longer for a capture of its
 * own. Another thread's capture then holds them to their timeout (taken
 * for this thread's own, a wait would answer at once).
 */
START_TEST(test_capture_wait_ended_elsewhere)
{
	struct timespec t0, t1;
	pthread_t t;
	void *rc;
	long ms;
	int r;

	ck_assert_int_eq(k.begin(s, CU_STREAM_CAPTURE_MODE_RELAXED), CUDA_SUCCESS);
	ck_assert_int_eq(pthread_create(&t, NULL, end_here, NULL), 0);
	ck_assert_int_eq(pthread_join(t, &rc), 0);
	ck_assert_int_eq((int)(intptr_t)rc, CUDA_SUCCESS);
	ck_assert_int_eq(k.capture_wait(0), 0);
	ck_assert_int_eq(pthread_create(&t, NULL, capture_elsewhere, NULL), 0);
	while (!__atomic_load_n(&begun, __ATOMIC_ACQUIRE))
		sched_yield();
	clock_gettime(CLOCK_MONOTONIC, &t0);
	r = k.capture_wait(50);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	__atomic_store_n(&may_end, 1, __ATOMIC_RELEASE);
	ck_assert_int_eq(pthread_join(t, &rc), 0);
	ck_assert_int_eq((int)(intptr_t)rc, CUDA_SUCCESS);
	ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	ck_assert_int_eq(r, 1);
	ck_assert_msg(ms >= 45, "the wait answered after %ld ms, as if the capture were its own", ms);
	ck_assert_int_eq(k.capture_wait(0), 0);
	begin();                                        /* its next one is its own */
	ck_assert_int_eq(k.capture_wait(600 * 1000), 1);
	end();
	no_harm();
}
END_TEST

/* A child forked during a capture has none: its waits answer at once. */
START_TEST(test_capture_wait_after_fork)
{
	int status = -1;
	pid_t pid;

	begin();
	pid = fork();
	if (pid == 0)
		_exit(k.capture_wait(60 * 1000) == 0 ? 0 : 3);
	ck_assert_int_gt(pid, 0);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	end();
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		      "the child waited for its parent's capture (status %d)", status);
}
END_TEST

static void *trim_all(void *arg)
{
	(void)arg;
	return (void *)(intptr_t)k.trim(SIZE_MAX, NULL);
}

static int waited;      /* wait_briefly has its answer */

static void *wait_briefly(void *arg)
{
	int rc = k.capture_wait(10);

	(void)arg;
	__atomic_store_n(&waited, 1, __ATOMIC_RELEASE);
	return (void *)(intptr_t)rc;
}

/*
 * A wait does not sit behind a fence (a context-wide synchronisation, held
 * here in the driver): with no capture it answers while the fence waits.
 */
START_TEST(test_capture_wait_beside_a_fence)
{
	struct timespec ms = { 0, 1000 * 1000 };
	pthread_t t1, t2;
	void *rc1, *rc2;
	int i, done = 0;
	void *p;

	ck_assert_int_eq(k.reserve(8 * PG, &p), 0);
	ck_assert_int_eq(k.map(p, 4 * PG), 0);
	ck_assert_int_eq(k.unmap(p, 4 * PG), 0);        /* cached: a trim fences */
	ck_assert_int_eq(kv_dev_hold("cuCtxSynchronize", 1), 0);
	ck_assert_int_eq(pthread_create(&t1, NULL, trim_all, NULL), 0);
	for (i = 0; i < 30000 && kv_dev_waiting("cuCtxSynchronize") < 1; i++)
		nanosleep(&ms, NULL);
	ck_assert_int_ge(kv_dev_waiting("cuCtxSynchronize"), 1);
	ck_assert_int_eq(pthread_create(&t2, NULL, wait_briefly, NULL), 0);
	for (i = 0; i < 30000 && !done; i++) {          /* 30 s at most */
		done = __atomic_load_n(&waited, __ATOMIC_ACQUIRE);
		if (!done)
			nanosleep(&ms, NULL);
	}
	kv_dev_hold("cuCtxSynchronize", 0);
	ck_assert_int_eq(pthread_join(t2, &rc2), 0);
	ck_assert_int_eq(pthread_join(t1, &rc1), 0);
	ck_assert_msg(done, "the wait sat behind the fence");
	ck_assert_int_eq((int)(intptr_t)rc2, 0);
	ck_assert_int_eq((int)(intptr_t)rc1, 0);
	ck_assert_int_eq(k.release(p), 0);
}
END_TEST

/*
 * cuMemFreeAsync of a span on a capturing stream is the driver's (a free
 * node in the graph, had the driver made the allocation; the emulation
 * knows none there and says so): the span stays, and nothing is refused
 * or invalidated. After the capture the same call releases it. Found
 * through cuGetProcAddress, as engines find it.
 */
START_TEST(test_capture_free_async_passes)
{
	CUresult (*gpa)(const char *, void **, int, cuuint64_t,
			CUdriverProcAddressQueryResult *);
	CUresult (*alloc)(CUdeviceptr *, size_t);
	CUresult (*free_async)(CUdeviceptr, CUstream) = NULL;
	int (*kv_begin)(void), (*kv_end)(void);
	CUdriverProcAddressQueryResult q;
	CUdeviceptr p = 0;
	size_t before;

	SYM(lib, gpa, "cuGetProcAddress_v2");
	SYM(lib, alloc, "cuMemAlloc_v2");
	SYM(lib, kv_begin, "kvshim_kv_begin");
	SYM(lib, kv_end, "kvshim_kv_end");
	ck_assert_int_eq(gpa("cuMemFreeAsync", (void **)&free_async, 13000, 0, &q),
			 CUDA_SUCCESS);
	before = st().reserved_bytes;
	ck_assert_int_eq(kv_begin(), 0);
	ck_assert_int_eq(alloc(&p, 16 * PG), CUDA_SUCCESS);
	ck_assert_int_eq(kv_end(), 0);
	ck_assert_uint_eq(st().reserved_bytes, before + 16 * PG);
	begin();
	ck_assert_int_eq(free_async(p, s), CUDA_ERROR_INVALID_VALUE);
	ck_assert_uint_eq(kv_dev_calls("cuMemFreeAsync"), 1);
	ck_assert_uint_eq(st().reserved_bytes, before + 16 * PG);
	end();
	no_harm();
	ck_assert_int_eq(free_async(p, s), CUDA_SUCCESS);
	ck_assert_uint_eq(kv_dev_calls("cuMemFreeAsync"), 1);
	ck_assert_uint_eq(st().reserved_bytes, before);
}
END_TEST

/* The control: a capture kvshim is not told of (begun past its hooks) is
 * invalidated by a trim that needs a fence. This is what the hooks guard. */
START_TEST(test_capture_unseen_is_invalidated)
{
	void *p;
	CUgraph g = NULL;

	ck_assert_int_eq(k.reserve(8 * PG, &p), 0);
	ck_assert_int_eq(k.map(p, 2 * PG), 0);
	ck_assert_int_eq(k.unmap(p, 2 * PG), 0);
	ck_assert_int_eq(d.begin(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
	k.trim(SIZE_MAX, NULL);
	ck_assert_int_eq(d.end(s, &g), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
	ck_assert_uint_ge(cst().invalidated, 1);
	ck_assert_int_eq(k.release(p), 0);
}
END_TEST

Suite *capture_suite(void)
{
	Suite *su = suite_create("capture");
	TCase *tc;

	/* each test needs a kvshim of its own, with its own settings: run
	 * only where every test is a process of its own */
	if (getenv("CK_FORK") && strcmp(getenv("CK_FORK"), "no") == 0)
		return su;
	tc = tcase_create("capture");
	tcase_add_checked_fixture(tc, setup, teardown);
	kt_add_emu(tc, test_capture_map);
	kt_add_emu(tc, test_capture_map_other_thread);
	kt_add_emu(tc, test_capture_puts_fences_off);
	kt_add_emu(tc, test_capture_map_short);
	kt_add_emu(tc, test_capture_memset_whole);
	kt_add_emu(tc, test_capture_meminfo);
	kt_add_emu(tc, test_capture_free_async_passes);
	kt_add_emu(tc, test_capture_unseen_is_invalidated);
	kt_add_emu(tc, test_capture_worker_waits);
	kt_add_emu(tc, test_capture_wait);
	kt_add_emu(tc, test_capture_wait_ended_elsewhere);
	kt_add_emu(tc, test_capture_wait_after_fork);
	kt_add_emu(tc, test_capture_wait_beside_a_fence);
	suite_add_tcase(su, tc);
	return su;
}
