/*
 * runner.c - one test program for all suites. Under `make check` the
 * library path names tests/emu, so the driver is the CPU emulation; with
 * KVSHIM_TEST_GPU=1 (make check-gpu) it must be a real GPU, and the
 * program exits 77 (Automake's skip) when there is none.
 */
#include <glob.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "share.h"
#include "shim.h"
#include "suites.h"

void kt_opts(struct kv_alloc_opts *o)
{
	kv_alloc_opts_default(o);
	o->pool_low = 0;
	o->pool_high = 0;
	o->worker = 0;
}

static struct kvemu_usage baseline;

kv_alloc_t *kt_create(const struct kv_alloc_opts *o)
{
	kv_alloc_t *a = NULL;
	int rc;

	kv_dev_usage(&baseline);
	rc = kv_alloc_create(o, &a);
	ck_assert_msg(rc == 0, "kv_alloc_create: %s", kv_shim_strerror(rc));
	return a;
}

void kt_check(kv_alloc_t *a)
{
	if (a)
		ck_assert_msg(kv_alloc_check(a) == 0,
			      "the allocator's lists and counters disagree (see the log)");
}

void kt_destroy(kv_alloc_t *a)
{
	struct kvemu_usage u;

	kt_check(a);
	kv_alloc_destroy(a);
	if (kv_dev_usage(&u))
		return;
	ck_assert_uint_eq(u.released_mapped, baseline.released_mapped);
	ck_assert_uint_eq(u.handles, baseline.handles);
	ck_assert_uint_eq(u.reservations, baseline.reservations);
	ck_assert_uint_eq(u.mapped_pages, baseline.mapped_pages);
	ck_assert_uint_eq(u.physical_bytes, baseline.physical_bytes);
}

struct kvshim_stats kt_stats(kv_alloc_t *a)
{
	struct kvshim_stats s;

	ck_assert_int_eq(kv_alloc_stats(a, &s), 0);
	return s;
}

int kt_wait_held(const char *func)
{
	struct timespec ms = { 0, 1000 * 1000 };
	int i;

	for (i = 0; i < 30000 && kv_dev_waiting(func) < 1; i++)
		nanosleep(&ms, NULL);
	return kv_dev_waiting(func) >= 1;
}

int kt_wait_flag(const int *flag)
{
	struct timespec ms = { 0, 1000 * 1000 };
	int i, v = 0;

	for (i = 0; i < 30000 && !(v = __atomic_load_n(flag, __ATOMIC_ACQUIRE)); i++)
		nanosleep(&ms, NULL);
	return v;
}

static void *map_thread(void *arg)
{
	struct kt_map *m = arg;

	m->rc = kv_alloc_map(m->a, m->addr, m->len);
	__atomic_store_n(&m->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

void kt_map_start(struct kt_map *m)
{
	m->rc = -1;
	m->done = 0;
	ck_assert_int_eq(pthread_create(&m->t, NULL, map_thread, m), 0);
}

int kt_map_finish(struct kt_map *m)
{
	ck_assert_int_eq(pthread_join(m->t, NULL), 0);
	return m->rc;
}

void kt_map_beside(struct kt_map *m, struct kt_map *o, int m_rc)
{
	struct timespec nap = { 0, 100 * 1000 * 1000 };

	ck_assert_int_eq(kv_dev_hold("cuMemCreate", 1), 0);
	kt_map_start(m);
	ck_assert(kt_wait_held("cuMemCreate"));
	kt_map_start(o);
	nanosleep(&nap, NULL);
	kv_dev_hold("cuMemCreate", 0);
	ck_assert_int_eq(kt_map_finish(m), m_rc);
	ck_assert_int_eq(kt_map_finish(o), 0);
}

CUdeviceptr kt_span8(int (*reserve)(size_t, void **), int (*map)(const void *, size_t))
{
	void *p = NULL;

	ck_assert_int_eq(reserve(8 * PG, &p), 0);
	ck_assert_int_eq(map(p, PG), 0);
	ck_assert_int_eq(kv_dev_fill((CUdeviceptr)(uintptr_t)p, PG, 5), CUDA_SUCCESS);
	return (CUdeviceptr)(uintptr_t)p;
}

static pid_t runner_pid;

/* The segments of this run's pools (KVSHIM_POOL, and the share suites'
 * own), removed when the runner ends. */
static void remove_segments(void)
{
	char pattern[128];
	glob_t g;
	size_t i;

	if (getpid() != runner_pid)
		return;
	snprintf(pattern, sizeof(pattern), "%s/kvshim-*-t%d-*", KV_SHARE_DIR, (int)runner_pid);
	if (glob(pattern, 0, NULL, &g) != 0)
		return;
	for (i = 0; i < g.gl_pathc; i++)
		unlink(g.gl_pathv[i]);
	globfree(&g);
}

int main(void)
{
	char pool[40];
	int gpu = getenv("KVSHIM_TEST_GPU") && strcmp(getenv("KVSHIM_TEST_GPU"), "0");
	SRunner *sr;
	int failed;

	/* the emulation has two devices, as the multidev suite needs (set
	 * before the driver reads its configuration, at its first call) */
	setenv("KVEMU_DEVICES", "2", 0);
	if (kv_dev_open()) {
		if (gpu) {
			printf("kvshim tests: no CUDA driver or GPU here: skipping the GPU suite\n");
			return 77;
		}
		fprintf(stderr, "kvshim tests: cannot open the emulated driver: is tests/emu on LD_LIBRARY_PATH?\n");
		return 1;
	}
	if (gpu && kv_dev_is_emu()) {
		fprintf(stderr, "kvshim tests: KVSHIM_TEST_GPU is set but the driver found is the CPU emulation\n");
		return 1;
	}
	/*
	 * A test's time limit guards against hangs, never against slowness:
	 * CI runs on a busy 2-core machine. No test here needs more than a
	 * few seconds on one; CK_DEFAULT_TIMEOUT still overrides this.
	 */
	setenv("CK_DEFAULT_TIMEOUT", "120", 0);
	/*
	 * Where sharing is on (KVSHIM_SHARE, or a test's own options), every
	 * allocator the shim starts here (and in the programs the tests run)
	 * joins a pool of this run's own, never the GPU's real segment,
	 * whatever the environment says.
	 */
	runner_pid = getpid();
	snprintf(pool, sizeof(pool), "t%d-shim", (int)runner_pid);
	setenv("KVSHIM_POOL", pool, 1);
	atexit(remove_segments);
	printf("kvshim tests on %s\n", kv_dev_describe());
	sr = srunner_create(prim_suite());
	srunner_add_suite(sr, span_suite());
	srunner_add_suite(sr, pool_suite());
	srunner_add_suite(sr, reclaim_suite());
	srunner_add_suite(sr, limit_suite());
	srunner_add_suite(sr, threads_suite());
	srunner_add_suite(sr, api_suite());
	srunner_add_suite(sr, preload_suite());
	srunner_add_suite(sr, got_suite());
	srunner_add_suite(sr, group_suite());
	srunner_add_suite(sr, share_suite());
	srunner_add_suite(sr, share_trust_suite());
	srunner_add_suite(sr, fair_suite());
	srunner_add_suite(sr, hooks_suite());
	srunner_add_suite(sr, ptds_suite());
	srunner_add_suite(sr, capture_suite());
	srunner_add_suite(sr, multidev_suite());
	/* a CUDA context does not survive fork: on a GPU run every test in
	 * this process (each one cleans up after itself) */
	if (gpu && !getenv("CK_FORK"))
		srunner_set_fork_status(sr, CK_NOFORK);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
