/*
 * test_group.c - block groups: a block manager's ids mapped across every
 * KV tensor of a group in one call, claims per block, all or nothing, and
 * the admission check.
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "blocked.h"

#include "group.h"
#include "policy.h"
#include "shim.h"
#include "suites.h"

#define NT 3
#define BLK (PG / 4 + PG / 8)   /* 768 KiB: blocks straddle pages */
#define NB 40

static kv_alloc_t *a;
static void *bases[NT];
static int g;

static void setup(void)
{
	CUdeviceptr b;
	int i;

	setenv("KVSHIM_POOL_LOW", "0", 1);
	setenv("KVSHIM_POOL_HIGH", "0", 1);
	setenv("KVSHIM_LIMIT", "48M", 1);
	ck_assert_int_eq(kv_shim_alloc(&a), 0);
	for (i = 0; i < NT; i++) {
		ck_assert_int_eq(kv_alloc_reserve(a, NB * BLK, &b), 0);
		bases[i] = (void *)(uintptr_t)b;
	}
	ck_assert_int_eq(kv_group_create(bases, NT, BLK, NB, &g), 0);
	ck_assert_int_gt(g, 0);
}

static void teardown(void)
{
	kv_group_destroy(g);
	kt_check(kv_shim_running());
	kv_shim_shutdown();
	unsetenv("KVSHIM_POOL_LOW");
	unsetenv("KVSHIM_POOL_HIGH");
	unsetenv("KVSHIM_LIMIT");
}

static CUdeviceptr blk(int t, long long b)
{
	return (CUdeviceptr)(uintptr_t)bases[t] + (CUdeviceptr)b * BLK;
}

START_TEST(test_group_map_unmap)
{
	long long ids[] = { 0, 1, 2 };
	unsigned long long bad = 1;
	int t;

	ck_assert_int_eq(kv_group_map(g, ids, 3), 0);
	for (t = 0; t < NT; t++) {
		ck_assert_int_eq(kv_dev_fill(blk(t, 0), 3 * BLK, t), CUDA_SUCCESS);
		ck_assert_int_eq(kv_dev_check(blk(t, 0), 3 * BLK, t, &bad), CUDA_SUCCESS);
		ck_assert_uint_eq(bad, 0);
		/* blocks 0 and 1 lie in page 0, block 2 straddles pages 0
		 * and 1: a claim each */
		ck_assert_int_eq(kv_alloc_claims(a, blk(t, 0)), 3);
		ck_assert_int_eq(kv_alloc_claims(a, blk(t, 0) + PG), 1);
	}
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, NT * 2 * PG);
	/* block 0 goes: page 0 stays for blocks 1 and 2 */
	ck_assert_int_eq(kv_group_unmap(g, ids, 1), 0);
	ck_assert_int_eq(kv_alloc_claims(a, blk(0, 0)), 2);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 0);
	ck_assert_int_eq(kv_group_unmap(g, ids + 1, 2), 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, NT * 2 * PG);
	ck_assert_int_eq(kv_group_unmap(g, ids, 1), KVSHIM_ENOTCLAIMED);
}
END_TEST

/* Blocks on pages already mapped cost no driver call; new pages cost one
 * access call per run of each tensor. */
START_TEST(test_group_calls)
{
	long long first[] = { 4, 5, 6, 7, 8 }, more[] = { 3, 9 };

	kv_dev_reset_counts();
	ck_assert_int_eq(kv_group_map(g, first, 5), 0);
	/* a run per tensor, and one in the scrub arena for the new pages */
	ck_assert_uint_eq(kv_dev_calls("cuMemSetAccess"), NT + 1);
	kv_dev_reset_counts();
	ck_assert_int_eq(kv_group_unmap(g, first, 5), 0);
	ck_assert_int_eq(kv_group_map(g, more, 2), 0);
	ck_assert_uint_eq(kv_dev_calls("cuMemMap"), 0);
	ck_assert_uint_eq(kv_dev_calls("cuMemSetAccess"), 0);
	ck_assert_uint_eq(kv_dev_calls("cuMemUnmap"), 0);
}
END_TEST

/* The limit (48 MiB = 24 pages) cannot back the call: nothing changes, and
 * the admission check said so before. */
START_TEST(test_group_all_or_nothing)
{
	long long ids[NB];
	size_t room = 0;
	int i;

	for (i = 0; i < NB; i++)
		ids[i] = i;
	ck_assert_int_eq(kv_group_can_back(g, ids, 20), 1);
	ck_assert_int_eq(kv_group_can_back(g, ids, NB), 0);
	ck_assert_int_eq(kv_group_map(g, ids, NB), KVSHIM_ELIMIT);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 0);
	ck_assert_int_eq(kv_alloc_claims(a, blk(0, 0)), 0);
	ck_assert_int_eq(kv_group_map(g, ids, 20), 0);
	ck_assert_int_eq(kv_group_headroom(g, &room), 0);
	ck_assert_int_eq(kv_group_can_back(g, ids + 20, 4), 0);
	ck_assert_int_eq(kv_group_can_back(g, ids + 20, 1), 1);
	/* blocks on pages already mapped need nothing */
	ck_assert_int_eq(kv_group_unmap(g, ids + 19, 1), 0);
	ck_assert_int_eq(kv_group_can_back(g, ids + 19, 1), 1);
}
END_TEST

START_TEST(test_group_bad_input)
{
	long long bad_ids[] = { 0, NB }, neg[] = { -1 };
	void *outside[] = { (void *)4096 };
	int h = 0;
	size_t room;

	ck_assert_int_eq(kv_group_create(NULL, NT, BLK, NB, &h), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_group_create(bases, 0, BLK, NB, &h), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_group_create(bases, NT, 0, NB, &h), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_group_create(bases, NT, BLK, 0, &h), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_group_create(bases, NT, BLK, NB, NULL), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_group_create(outside, 1, BLK, NB, &h), KVSHIM_ERANGE);
	/* longer than the span */
	ck_assert_int_eq(kv_group_create(bases, NT, BLK, NB + 200, &h), KVSHIM_ERANGE);
	ck_assert_int_eq(h, 0);
	ck_assert_int_eq(kv_group_map(g, bad_ids, 2), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_group_map(g, neg, 1), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_group_map(g, NULL, 1), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_group_map(g + 100, neg, 0), 0);
	ck_assert_int_eq(kv_group_map(g + 100, bad_ids, 1), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_group_unmap(g + 100, bad_ids, 1), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_group_headroom(g + 100, &room), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_group_headroom(g, NULL), KVSHIM_EINVAL);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 0);
	ck_assert_int_eq(kv_group_destroy(g + 100), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_group_destroy(0), KVSHIM_EINVAL);
}
END_TEST

/*
 * A group outliving a span: once the span is released, the group's blocks
 * in it are refused, even when a new span takes the same address (the
 * new span's claims are never the stale group's to drop).
 */
START_TEST(test_group_stale_span)
{
	long long ids[] = { 0 };
	CUdeviceptr old = (CUdeviceptr)(uintptr_t)bases[1], again;
	int same = 0, i;

	ck_assert_int_eq(kv_group_map(g, ids, 1), 0);
	ck_assert_int_eq(kv_alloc_release(a, old), 0);
	/* the emulation hands the freed range out again: try a few times */
	for (i = 0; i < 8 && !same; i++) {
		ck_assert_int_eq(kv_alloc_reserve(a, NB * BLK, &again), 0);
		same = again == old;
		if (!same)
			ck_assert_int_eq(kv_alloc_release(a, again), 0);
	}
	ck_assert_int_eq(kv_group_map(g, ids, 1), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_group_unmap(g, ids, 1), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_group_can_back(g, ids, 1), KVSHIM_ERANGE);
	if (same) {
		/* a claim of the new span's own stays its own */
		ck_assert_int_eq(kv_alloc_map(a, again, BLK), 0);
		ck_assert_int_eq(kv_group_unmap(g, ids, 1), KVSHIM_ERANGE);
		ck_assert_int_eq(kv_alloc_claims(a, again), 1);
		ck_assert_int_eq(kv_alloc_release(a, again), 0);
	}
	/* the group's other tensors are no different: one call, all or none */
	ck_assert_int_eq(kv_alloc_claims(a, blk(0, 0)), 1);
	bases[1] = NULL;
}
END_TEST

/*
 * Copies and memsets into a span back what they touch and keep it backed
 * until the span goes, without piling claims up: a page's claims are the
 * engine's blocks only, however many copies reach it.
 */
START_TEST(test_copies_pin)
{
	struct kv_policy_run *runs = NULL;
	size_t nruns = 0;
	CUdeviceptr b = blk(0, 0);
	int i;

	for (i = 0; i < 100; i++)
		ck_assert_int_eq(kv_policy_touch(b + 64, 4096), 0);
	ck_assert_int_eq(kv_alloc_claims(a, b), 0);
	ck_assert_int_eq(kv_policy_memset(b, 128, 1, 1, &runs, &nruns), 1);
	ck_assert_uint_eq(nruns, 1);
	free(runs);
	ck_assert_int_eq(kv_policy_memset(b, 128, 1, 0, &runs, &nruns), 1);
	free(runs);
	ck_assert_int_eq(kv_alloc_claims(a, b), 0);
	/* a block on the pinned page claims and lets go as usual; the page
	 * stays backed through a trim */
	ck_assert_int_eq(kv_group_map(g, (long long[]){ 0 }, 1), 0);
	ck_assert_int_eq(kv_alloc_claims(a, b), 1);
	ck_assert_int_eq(kv_group_unmap(g, (long long[]){ 0 }, 1), 0);
	ck_assert_int_eq(kv_alloc_claims(a, b), 0);
	ck_assert_int_eq(kv_alloc_trim(a, SIZE_MAX, NULL), 0);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, PG);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 0);
}
END_TEST

/* The fork-while-locked test's threads. */
static struct {
	pid_t main_tid;
	int held, forked;
} fl;

/* With the group lock held: until the main thread, forking, is blocked
 * (on the lock, by a fork handler) or is back from its fork. */
static void hold(void *arg)
{
	__atomic_store_n(&fl.held, 1, __ATOMIC_RELEASE);
	kt_wait_blocked(fl.main_tid, &fl.forked);
}

static void *holder(void *arg)
{
	kv_group_locked(hold, NULL);
	return NULL;
}

/*
 * A fork by one thread while another holds the group table's lock: the
 * child's group calls must not hang on a lock held by a thread it does not
 * have, nor find the table half changed. The alarm bounds a hang.
 */
START_TEST(test_group_fork_while_locked)
{
	pthread_t t;
	pid_t pid;
	int st = -1;

	fl.main_tid = getpid();
	fl.held = fl.forked = 0;
	ck_assert_int_eq(pthread_create(&t, NULL, holder, NULL), 0);
	while (!__atomic_load_n(&fl.held, __ATOMIC_ACQUIRE))
		sched_yield();
	pid = fork();
	if (pid == 0) {
		alarm(20);      /* a bound on a hang, not a wait */
		_exit(kv_group_destroy(g + 1000) == KVSHIM_EINVAL ? 0 : 3);
	}
	__atomic_store_n(&fl.forked, 1, __ATOMIC_RELEASE);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_int_gt(pid, 0);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st), "the child died of signal %d (14: it hung on the group lock)",
		      WIFSIGNALED(st) ? WTERMSIG(st) : 0);
	ck_assert_int_eq(WEXITSTATUS(st), 0);
}
END_TEST

Suite *group_suite(void)
{
	Suite *s = suite_create("group");
	TCase *tc = tcase_create("blocks");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_group_map_unmap);
	kt_add_emu(tc, test_group_calls);
	tcase_add_test(tc, test_group_all_or_nothing);
	tcase_add_test(tc, test_group_bad_input);
	tcase_add_test(tc, test_group_stale_span);
	tcase_add_test(tc, test_copies_pin);
	tcase_add_test(tc, test_group_fork_while_locked);
	suite_add_tcase(s, tc);
	return s;
}
