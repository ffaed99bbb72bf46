/*
 * suites.h - the test suites gathered by runner.c, and the fixtures they
 * share. Every suite runs on the CPU emulation (make check) and on a real
 * GPU (make check-gpu); tests that need the emulation's controls (failure
 * injection, call counts, touching unmapped memory) are added only there.
 */
#ifndef KV_TEST_SUITES_H
#define KV_TEST_SUITES_H

#include <check.h>
#include <pthread.h>
#include <stdlib.h>

#include "alloc.h"
#include "devmem.h"

#define PG ((size_t)2 << 20)

Suite *prim_suite(void);
Suite *span_suite(void);
Suite *pool_suite(void);
Suite *reclaim_suite(void);
Suite *limit_suite(void);
Suite *threads_suite(void);
Suite *api_suite(void);
Suite *preload_suite(void);
Suite *got_suite(void);
Suite *group_suite(void);
Suite *share_suite(void);
Suite *share_trust_suite(void);
Suite *fair_suite(void);
Suite *hooks_suite(void);
Suite *ptds_suite(void);
Suite *capture_suite(void);
Suite *multidev_suite(void);

/* Options for a test allocator: no worker and an empty pool unless a test
 * wants them, so every driver call is the test's own doing. */
void kt_opts(struct kv_alloc_opts *o);

/* Create an allocator from o, failing the test on error. */
kv_alloc_t *kt_create(const struct kv_alloc_opts *o);

/* Fail the test unless kv_alloc_check(a) finds every list and counter
 * right (a NULL a passes). */
void kt_check(kv_alloc_t *a);

/* Check a (kt_check), destroy it and check (on the emulation) that no
 * handle, reservation or mapping outlived it, and that no handle was
 * released while still mapped. */
void kt_destroy(kv_alloc_t *a);

/* Stats of a, failing the test on error. */
struct kvshim_stats kt_stats(kv_alloc_t *a);

/* Wait up to 30 s for a call of driver function func to wait where the
 * emulation holds it (kv_dev_hold). Returns whether one does. */
int kt_wait_held(const char *func);

/* Wait up to 30 s for *flag, which another thread sets atomically, to be
 * nonzero. Returns it. */
int kt_wait_flag(const int *flag);

/* A span of 8 pages reserved and its first page mapped through the
 * shim's kvshim_reserve and kvshim_map (as loaded by the test), that page
 * holding seed 5's pattern (kv_dev_fill); the others unbacked. */
CUdeviceptr kt_span8(int (*reserve)(size_t, void **), int (*map)(const void *, size_t));

/* A kv_alloc_map on a thread of its own: kt_map_start starts it, failing
 * the test if it cannot; kt_map_finish joins it and returns its result. */
struct kt_map {
	kv_alloc_t *a;
	CUdeviceptr addr;
	size_t len;
	int rc;
	int done;               /* set (atomically) once the map returned */
	pthread_t t;
};

void kt_map_start(struct kt_map *m);
int kt_map_finish(struct kt_map *m);

/* Map m held in the driver's cuMemCreate, start map o beside it and give
 * it 100 ms to reach its wait (had it not, it maps after m, which the
 * tests using this must answer alike), let m go; m must return m_rc and o
 * 0. */
void kt_map_beside(struct kt_map *m, struct kt_map *o, int m_rc);

/* Add a test only where the emulation runs. */
#define kt_add_emu(tc, fn) do {                                      \
		if (kv_dev_is_emu())                                  \
			tcase_add_test(tc, fn);                       \
	} while (0)

/* Add a loop test (iterations s to e - 1) only where the emulation runs. */
#define kt_add_emu_loop(tc, fn, s, e) do {                           \
		if (kv_dev_is_emu())                                  \
			tcase_add_loop_test(tc, fn, s, e);            \
	} while (0)

/* Add a test that needs its own process (it exits or crashes on purpose). */
#define kt_add_exit(tc, fn, code) do {                               \
		if (!getenv("KVSHIM_TEST_GPU") && !getenv("CK_FORK")) \
			tcase_add_exit_test(tc, fn, code);            \
	} while (0)

#endif /* KV_TEST_SUITES_H */
