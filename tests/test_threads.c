/*
 * test_threads.c - threads mapping and unmapping overlapping ranges at
 * once, while the worker trims the cache under them. Blocks are a quarter
 * page and handed out round-robin, so every page is shared by several
 * threads' blocks, and every block's bytes are checked before it is let go.
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "suites.h"

#define NTHREADS 8
#define NPAGES 32
#define BLOCK (PG / 4)
#define NBLOCKS (NPAGES * 4)
#define ROUNDS 400

static kv_alloc_t *a;
static CUdeviceptr base;

struct worker {
	int id;
	unsigned seed;
	int errors;
	unsigned long long bad;
	char held[NBLOCKS];
};

static CUdeviceptr block_va(int b)
{
	return base + (CUdeviceptr)b * BLOCK;
}

static void *run(void *arg)
{
	struct worker *w = arg;
	int r, b, rc;
	unsigned long long bad;

	for (r = 0; r < ROUNDS; r++) {
		b = (int)(rand_r(&w->seed) % (NBLOCKS / NTHREADS)) * NTHREADS + w->id;
		if (!w->held[b]) {
			rc = kv_alloc_map(a, block_va(b), BLOCK);
			if (rc == 0 && kv_dev_fill(block_va(b), BLOCK, b) != CUDA_SUCCESS)
				rc = -100;
			if (rc) {
				w->errors++;
				fprintf(stderr, "thread %d: map of block %d: %d\n", w->id, b, rc);
			}
			w->held[b] = rc == 0;
		} else {
			bad = 0;
			if (kv_dev_check(block_va(b), BLOCK, b, &bad) != CUDA_SUCCESS)
				w->errors++;
			w->bad += bad;
			w->errors += kv_alloc_unmap(a, block_va(b), BLOCK) != 0;
			w->held[b] = 0;
		}
	}
	for (b = 0; b < NBLOCKS; b++) {
		if (!w->held[b])
			continue;
		bad = 0;
		if (kv_dev_check(block_va(b), BLOCK, b, &bad) != CUDA_SUCCESS)
			w->errors++;
		w->bad += bad;
		w->errors += kv_alloc_unmap(a, block_va(b), BLOCK) != 0;
	}
	return NULL;
}

static void race(size_t cache_max, size_t limit)
{
	struct kv_alloc_opts o;
	struct worker w[NTHREADS];
	pthread_t t[NTHREADS];
	struct kvshim_stats s;
	unsigned seed = (unsigned)time(NULL);
	int i;

	printf("threads: seed %u\n", seed);
	kt_opts(&o);
	o.worker = 1;
	o.pool_low = 2 * PG;
	o.pool_high = 6 * PG;
	o.cache_max = cache_max;
	o.limit = limit;
	a = kt_create(&o);
	ck_assert_int_eq(kv_alloc_reserve(a, NPAGES * PG, &base), 0);
	for (i = 0; i < NTHREADS; i++) {
		w[i] = (struct worker){ .id = i, .seed = seed + i };
		ck_assert_int_eq(pthread_create(&t[i], NULL, run, &w[i]), 0);
	}
	for (i = 0; i < NTHREADS; i++) {
		pthread_join(t[i], NULL);
		ck_assert_msg(w[i].errors == 0, "thread %d: %d errors (seed %u)",
			      i, w[i].errors, seed);
		ck_assert_msg(w[i].bad == 0, "thread %d: %llu bad words (seed %u)",
			      i, w[i].bad, seed);
	}
	for (i = 0; i < NPAGES; i++)
		ck_assert_int_eq(kv_alloc_claims(a, base + i * PG), 0);
	/* the worker may still be trimming: wait until it is done */
	for (i = 0; i < 200; i++) {
		s = kt_stats(a);
		if (s.mapped_bytes == s.cached_bytes)
			break;
		usleep(10000);
	}
	ck_assert_uint_eq(s.mapped_bytes, s.cached_bytes);
	ck_assert_uint_le(s.peak_physical_bytes, s.limit_bytes);
	kt_destroy(a);
}

START_TEST(test_threads_share_pages)
{
	race(SIZE_MAX, 0);
}
END_TEST

/* The worker keeps at most two pages cached: trims run under the maps. */
START_TEST(test_threads_with_trim)
{
	race(2 * PG, 0);
}
END_TEST

/* Limit equal to the span: maps reclaim each other's cached pages. */
START_TEST(test_threads_at_limit)
{
	race(SIZE_MAX, NPAGES * PG);
}
END_TEST

/* ---- a randomized stress of everything at once ---- */

struct chaos {
	unsigned seed;
	int errors;
};

/* Each thread owns its spans: it reserves, maps blocks (keeping a shadow
 * of what it claimed), checks bytes, unmaps, trims and releases at random,
 * while the worker scrubs, refills, caps the cache and reaps releases. */
static void *chaos_run(void *arg)
{
	struct chaos *c = arg;
	CUdeviceptr span[3] = { 0 };
	unsigned char held[3][32];
	int r, k, b, rc;

	memset(held, 0, sizeof(held));
	for (r = 0; r < 400; r++) {
		k = rand_r(&c->seed) % 3;
		if (!span[k]) {
			if (kv_alloc_reserve(a, 8 * PG, &span[k]))
				c->errors++;
			memset(held[k], 0, sizeof(held[k]));
			continue;
		}
		b = rand_r(&c->seed) % 32;
		switch (rand_r(&c->seed) % 8) {
		case 0:         /* release the span, claims and all */
			if (kv_alloc_release(a, span[k]))
				c->errors++;
			span[k] = 0;
			break;
		case 1:
			kv_alloc_trim(a, (size_t)(rand_r(&c->seed) % 8) * PG, NULL);
			break;
		default:
			if (!held[k][b]) {
				rc = kv_alloc_map(a, span[k] + (CUdeviceptr)b * BLOCK, BLOCK);
				if (rc == 0 && kv_dev_fill(span[k] + (CUdeviceptr)b * BLOCK,
							   BLOCK, b) == CUDA_SUCCESS)
					held[k][b] = 1;
				else if (rc != KVSHIM_ELIMIT)
					c->errors++;
			} else {
				unsigned long long bad = 1;

				if (kv_dev_check(span[k] + (CUdeviceptr)b * BLOCK, BLOCK, b,
						 &bad) != CUDA_SUCCESS || bad)
					c->errors++;
				if (kv_alloc_unmap(a, span[k] + (CUdeviceptr)b * BLOCK, BLOCK))
					c->errors++;
				held[k][b] = 0;
			}
		}
	}
	for (k = 0; k < 3; k++)
		if (span[k] && kv_alloc_release(a, span[k]))
			c->errors++;
	return NULL;
}

/* Recounts everything while the others churn, until told to stop. */
struct checker {
	int stop;
	unsigned checks, failures;
};

static void *check_run(void *arg)
{
	struct checker *k = arg;

	while (!__atomic_load_n(&k->stop, __ATOMIC_ACQUIRE)) {
		if (kv_alloc_check(a))
			k->failures++;
		k->checks++;
		sched_yield();
	}
	return NULL;
}

START_TEST(test_threads_chaos)
{
	struct kv_alloc_opts o;
	struct chaos c[NTHREADS];
	struct checker k = { 0 };
	pthread_t t[NTHREADS], kt;
	const char *given = getenv("KVSHIM_TEST_SEED");
	unsigned seed = given ? (unsigned)strtoul(given, NULL, 0) : (unsigned)time(NULL);
	int i;

	printf("chaos: seed %u (KVSHIM_TEST_SEED=%u repeats it)\n", seed, seed);
	kt_opts(&o);
	o.worker = 1;
	o.pool_low = 2 * PG;
	o.pool_high = 8 * PG;
	o.cache_max = 4 * PG;
	o.limit = 48 * PG;
	a = kt_create(&o);
	ck_assert_int_eq(pthread_create(&kt, NULL, check_run, &k), 0);
	for (i = 0; i < NTHREADS; i++) {
		c[i] = (struct chaos){ .seed = seed + 7 * i };
		ck_assert_int_eq(pthread_create(&t[i], NULL, chaos_run, &c[i]), 0);
	}
	for (i = 0; i < NTHREADS; i++) {
		pthread_join(t[i], NULL);
		ck_assert_msg(c[i].errors == 0, "thread %d: %d errors (seed %u)", i,
			      c[i].errors, seed);
	}
	__atomic_store_n(&k.stop, 1, __ATOMIC_RELEASE);
	pthread_join(kt, NULL);
	printf("chaos: %u checks of the allocator while it ran\n", k.checks);
	ck_assert_msg(k.failures == 0, "%u of %u checks failed (seed %u)",
		      k.failures, k.checks, seed);
	ck_assert_uint_eq(kt_stats(a).reserved_bytes, 0);
	ck_assert_uint_le(kt_stats(a).peak_physical_bytes, 48 * PG);
	kt_destroy(a);
}
END_TEST

Suite *threads_suite(void)
{
	Suite *s = suite_create("threads");
	TCase *tc = tcase_create("race");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_threads_share_pages);
	tcase_add_test(tc, test_threads_with_trim);
	tcase_add_test(tc, test_threads_at_limit);
	tcase_add_test(tc, test_threads_chaos);
	suite_add_tcase(s, tc);
	return s;
}
