/*
 * test_share.c - the shared per-GPU budget across processes: never over
 * the budget, idle pages of one process given to another on request, a
 * killed process's share coming back, limits, and a chaos run (random
 * kills, all killed at once, kills right after a trim, a stopped process).
 * The hostile and crash cases are in test_share_trust.c. Runs on the
 * emulation only: the processes are forks of the test (each emulated device
 * is private, so only the accounting is shared, which is what is tested).
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "prim.h"
#include "share_util.h"

/* The sum the live processes hold at one instant (slots changing between
 * the reads could add up to more than was ever held: kv_share_read reads
 * until no slot changed meanwhile). Returns 1 with *held set, or 0 when no
 * such read was had. */
static int exact_held(uint64_t *held)
{
	const struct kv_share_info *in = kt_seg_read(0);

	*held = in->held;
	return in->exact;
}

/* Idle pages of one process go to another that needs them, quickly. */
START_TEST(test_share_gives_way)
{
	kv_alloc_t *a;
	CUdeviceptr s;
	int p2c[2], c2p[2];
	uint64_t held;
	pid_t pid;
	char c;

	kt_new_pool_pipes(p2c, c2p);
	a = kt_make(16 * PG, 0, 0, 1);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &s), 0);
	ck_assert_int_eq(kv_alloc_map(a, s, 12 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, s, 12 * PG), 0);     /* 12 idle */
	ck_assert(exact_held(&held));
	ck_assert_uint_eq(held, 12 * PG);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		struct timespec t0;
		kv_alloc_t *b;
		CUdeviceptr d;
		size_t room = 0;
		int rc;

		KT_CHILD_CHECK(kt_mk(16 * PG, 0, 0, 0, 0, &b) == 0);
		KT_CHILD_CHECK(kv_alloc_reserve(b, 16 * PG, &d) == 0);
		/* the admission check counts the other process's idle pages */
		KT_CHILD_CHECK(kv_alloc_headroom(b, &room) == 0 && room >= 10 * PG);
		clock_gettime(CLOCK_MONOTONIC, &t0);
		rc = kv_alloc_map(b, d, 10 * PG);
		printf("share: 10 pages, 6 of them idle in another process, usable after %.1f ms\n",
		       kt_ms_since(&t0));
		fflush(stdout);
		KT_CHILD_CHECK(write(c2p[1], rc == 0 ? "y" : "n", 1) == 1);
		KT_CHILD_CHECK(read(p2c[0], &c, 1) == 1);
		KT_CHILD_CHECK(kv_alloc_check(b) == 0);
		kv_alloc_destroy(b);
		_exit(rc == 0 ? 0 : 3);
	}
	ck_assert_int_eq(read(c2p[0], &c, 1), 1);
	ck_assert_int_eq(c, 'y');
	/* the child holds 10 pages: a gave up its idle ones to make room */
	ck_assert(exact_held(&held));
	ck_assert_uint_le(held, 16 * PG);
	ck_assert_uint_le(kt_stats(a).physical_bytes, 6 * PG);
	kt_release_child(p2c[1], pid, "the child failed: its line is above");
	kt_check(a);
	kv_alloc_destroy(a);
	ck_assert(exact_held(&held));
	ck_assert_uint_eq(held, 0);
	kt_seg_unlink();
}
END_TEST

/* Four processes mapping and unmapping at random under one budget: the
 * sum held never passes it. */
START_TEST(test_share_never_over)
{
	unsigned seed = (unsigned)time(NULL);
	uint64_t most = 0, t;
	pid_t pid[4];
	int i, st, live = 4;
	kv_alloc_t *a;

	kt_new_pool();
	a = kt_make(24 * PG, 0, 0, 0);            /* creates the segment */
	printf("share stress: seed %u\n", seed);
	fflush(stdout);
	for (i = 0; i < 4; i++) {
		pid[i] = fork();
		if (pid[i] == 0) {
			unsigned s = seed + i;
			kv_alloc_t *b;
			CUdeviceptr d;
			int r, rc;

			KT_CHILD_CHECK(kt_mk(24 * PG, 0, 0, 1, 0, &b) == 0);
			KT_CHILD_CHECK(kv_alloc_reserve(b, 32 * PG, &d) == 0);
			for (r = 0; r < 300; r++) {
				uint32_t p = rand_r(&s) % 32, n = 1 + rand_r(&s) % 6;

				if (p + n > 32)
					n = 32 - p;
				rc = kv_alloc_map(b, d + (CUdeviceptr)p * PG, n * PG);
				KT_CHILD_CHECK(rc == 0 || rc == KVSHIM_ELIMIT);
				if (!rc)
					kv_alloc_unmap(b, d + (CUdeviceptr)p * PG, n * PG);
			}
			KT_CHILD_CHECK(kv_alloc_check(b) == 0);
			kv_alloc_destroy(b);
			_exit(0);
		}
	}
	while (live) {
		if (exact_held(&t))
			most = t > most ? t : most;
		for (i = 0; i < 4; i++)
			if (pid[i] && waitpid(pid[i], &st, WNOHANG) == pid[i]) {
				ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
					      "child %d failed (seed %u): its line is above", i, seed);
				pid[i] = 0;
				live--;
			}
	}
	printf("share stress: at most %llu of %d pages held together\n",
	       (unsigned long long)(most / PG), 24);
	ck_assert_uint_le(most, 24 * PG);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/* A process killed while it holds pages: its share is back once anyone
 * needs it. */
START_TEST(test_share_killed_process)
{
	struct kt_member m;
	struct timespec t0;
	kv_alloc_t *a;
	CUdeviceptr s;
	uint64_t held;

	kt_new_pool();
	a = kt_make(16 * PG, 0, 0, 0);
	kt_member_start(&m, 16 * PG, 0, 14);
	ck_assert(exact_held(&held));
	ck_assert_uint_eq(held, 14 * PG);
	kt_member_kill(&m);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &s), 0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ck_assert_int_eq(kv_alloc_map(a, s, 12 * PG), 0);
	printf("share: a killed process's pages usable after %.1f ms\n", kt_ms_since(&t0));
	ck_assert(exact_held(&held));
	ck_assert_uint_eq(held, 12 * PG);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/* Ceiling: a process stops at its max. Floor: others are not asked to
 * trim it below its min. */
START_TEST(test_share_limits)
{
	kv_alloc_t *a;
	CUdeviceptr s;
	int st;
	pid_t pid;

	kt_new_pool();
	a = kt_make(16 * PG, 10 * PG, 12 * PG, 1);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &s), 0);
	ck_assert_int_eq(kv_alloc_map(a, s, 13 * PG), KVSHIM_ELIMIT);
	ck_assert_int_eq(kv_alloc_map(a, s, 12 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, s, 12 * PG), 0);     /* 12 idle */
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		kv_alloc_t *b;
		CUdeviceptr d;

		KT_CHILD_CHECK(kt_mk(16 * PG, 0, 0, 0, 0, &b) == 0);
		KT_CHILD_CHECK(kv_alloc_reserve(b, 16 * PG, &d) == 0);
		/* 4 free in the budget, then the 2 a holds above its floor */
		KT_CHILD_CHECK(kv_alloc_map(b, d, 6 * PG) == 0);
		/* and no more: a is at its floor */
		KT_CHILD_CHECK(kv_alloc_map(b, d + 6 * PG, PG) == KVSHIM_ELIMIT);
		KT_CHILD_CHECK(kv_alloc_check(b) == 0);
		kv_alloc_destroy(b);
		_exit(0);
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the floor was not kept");
	ck_assert_uint_ge(kt_stats(a).physical_bytes, 10 * PG);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/* A floor is kept: while a process holds less than its floor, others
 * cannot take that budget, and it grows to its floor at once. */
START_TEST(test_share_floor_kept)
{
	int p2c[2], c2p[2];
	size_t room = 0;
	kv_alloc_t *a;
	CUdeviceptr s;
	pid_t pid;
	char c;

	kt_new_pool_pipes(p2c, c2p);
	a = kt_make(16 * PG, 0, 0, 0);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		kv_alloc_t *b;
		CUdeviceptr d;

		KT_CHILD_CHECK(kt_mk(16 * PG, 8 * PG, 0, 0, 0, &b) == 0);
		KT_CHILD_CHECK(kv_alloc_reserve(b, 16 * PG, &d) == 0);
		KT_CHILD_CHECK(write(c2p[1], "r", 1) == 1 && read(p2c[0], &c, 1) == 1);
		/* up to its floor at once, and no more: a holds the rest */
		KT_CHILD_CHECK(kv_alloc_map(b, d, 8 * PG) == 0);
		KT_CHILD_CHECK(kv_alloc_map(b, d + 8 * PG, PG) == KVSHIM_ELIMIT);
		KT_CHILD_CHECK(kv_alloc_check(b) == 0);
		kv_alloc_destroy(b);
		_exit(0);
	}
	ck_assert_int_eq(read(c2p[0], &c, 1), 1);      /* b is registered */
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &s), 0);
	ck_assert_int_eq(kv_alloc_headroom(a, &room), 0);
	ck_assert_uint_eq(room, 8 * PG);
	ck_assert_int_eq(kv_alloc_map(a, s, 9 * PG), KVSHIM_ELIMIT);
	ck_assert_int_eq(kv_alloc_map(a, s, 8 * PG), 0);
	kt_release_child(p2c[1], pid, "the floor was not kept");
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/* A floor that is not whole pages is kept to the page above it: asked
 * for all it holds, a process gives back only what lies over it. */
START_TEST(test_share_floor_part_page)
{
	kv_alloc_t *a;
	const struct kv_prim_s *p;
	kv_share_t *other;
	CUdeviceptr s;

	kt_new_pool();
	a = kt_make(16 * PG, 3 * PG / 2, 0, 0);
	p = kv_alloc_prim(a);
	ck_assert_int_eq(kv_alloc_reserve(a, 4 * PG, &s), 0);
	ck_assert_int_eq(kv_alloc_map(a, s, 4 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, s, 4 * PG), 0);
	ck_assert_uint_eq(kt_stats(a).physical_bytes, 4 * PG);
	/* another member wants the whole budget: a is asked for what it holds */
	ck_assert_int_eq(kv_share_open(p->uuid, kt_pool, 16 * PG, 0, p->device_bytes, 0, 0, 0,
				       1, 0600, &other), 0);
	ck_assert_int_eq(kv_share_take(other, 16 * PG, 16 * PG), KV_SHARE_WAIT);
	ck_assert_int_eq(kv_alloc_tick(a), 0);
	ck_assert_uint_eq(kt_stats(a).physical_bytes, 2 * PG);
	kv_share_close(other);
	ck_assert_int_eq(kv_alloc_release(a, s), 0);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/* Two handles on a new pool of 8 pages, from this process, each with a
 * ceiling of max (0: none); the allocator *a gives the GPU's figures. */
static void two_handles(kv_alloc_t **a, uint64_t max, kv_share_t **one, kv_share_t **two)
{
	const struct kv_prim_s *p;

	kt_new_pool();
	*a = kt_make(8 * PG, 0, 0, 0);
	p = kv_alloc_prim(*a);
	ck_assert_int_eq(kv_share_open(p->uuid, kt_pool, 8 * PG, 0, p->device_bytes, 0, max, 0,
				       1, 0600, one), 0);
	if (two)
		ck_assert_int_eq(kv_share_open(p->uuid, kt_pool, 8 * PG, 0, p->device_bytes, 0,
					       max, 0, 1, 0600, two), 0);
}

/* What a process was asked for is of what it holds: after it gave some
 * back (its asked lowered only at the rule's next look), the others'
 * reads cut asked to held and do not take it for a figure out of
 * bounds. */
START_TEST(test_share_asked_within_held)
{
	kv_alloc_t *a;
	const struct kv_share_info *in;
	kv_share_t *giver, *taker;
	char log[2048];
	unsigned i;

	two_handles(&a, 0, &giver, &taker);
	ck_assert_int_eq(kv_share_take(giver, 8 * PG, 8 * PG), 0);
	/* its pages in use (none idle): it is asked to give them back */
	kv_share_demand(taker, 8 * PG);
	ck_assert_int_eq(kv_share_take(taker, 8 * PG, 8 * PG), KV_SHARE_WAIT_USED);
	/* the giver reads what it is asked for (half), then gives more */
	kv_share_update(giver, 8 * PG, 0, 0, 0);
	kv_share_give(giver, 6 * PG);
	in = kt_seg_read(0);
	for (i = 0; i < in->nprocs; i++)
		ck_assert_msg(!in->proc[i].clamped, "slot %u out of bounds", i);
	kt_capture_start();
	kv_share_update(taker, 0, 0, 0, 0);
	kt_capture_end(log, sizeof(log));
	ck_assert_msg(strstr(log, "out of bounds") == NULL, "a sound slot was flagged: \"%s\"", log);
	kv_share_close(taker);
	kv_share_close(giver);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/* The most demand any slot states now. */
static uint64_t most_demand(void)
{
	const struct kv_share_info *in = kt_seg_read(0);
	uint64_t d = 0;
	unsigned i;

	for (i = 0; i < in->nprocs; i++)
		d = in->proc[i].demand > d ? in->proc[i].demand : d;
	return d;
}

/* Nobody can give way (each of two uses half the budget, all of it in
 * use, at its share): a take is refused with KV_SHARE_NO, having stated
 * what it waits for; a ceiling's refusal, KVSHIM_ELIMIT, states nothing. */
START_TEST(test_share_nobody_gives_way)
{
	kv_alloc_t *a, *b;
	kv_share_t *one, *two, *capped;

	two_handles(&a, 0, &one, &two);
	ck_assert_int_eq(kv_share_take(one, 4 * PG, 4 * PG), 0);
	kv_share_update(one, 4 * PG, 0, 0, 0);
	kv_share_demand(one, 4 * PG);
	ck_assert_int_eq(kv_share_take(two, 4 * PG, 4 * PG), 0);
	kv_share_update(two, 4 * PG, 0, 0, 0);
	ck_assert_uint_eq(most_demand(), 4 * PG);
	ck_assert_int_eq(kv_share_take(two, PG, 5 * PG), KV_SHARE_NO);
	ck_assert_uint_eq(most_demand(), 5 * PG);
	kv_share_waited(two, 0);
	ck_assert_uint_eq(most_demand(), 4 * PG);
	kv_share_close(two);
	kv_share_close(one);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
	/* a ceiling of 2 pages: a take past it states nothing */
	two_handles(&b, 2 * PG, &capped, NULL);
	ck_assert_int_eq(kv_share_take(capped, 3 * PG, 3 * PG), KVSHIM_ELIMIT);
	ck_assert_uint_eq(most_demand(), 0);
	kv_share_close(capped);
	kt_check(b);
	kv_alloc_destroy(b);
	kt_seg_unlink();
}
END_TEST

/* A segment's budget is its live processes': one joining beside them
 * keeps it, the first to join after they have all gone sets its own (a
 * run that set a wrong budget does not bind the next). */
START_TEST(test_share_left_behind)
{
	char uuid[64];
	uint64_t dev;
	kv_alloc_t *a;
	kv_share_t *h;

	kt_new_pool();
	a = kt_make(8 * PG, 0, 0, 0);
	snprintf(uuid, sizeof(uuid), "%s", kv_alloc_prim(a)->uuid);
	dev = kv_alloc_prim(a)->device_bytes;
	ck_assert_int_eq(kv_share_open(uuid, kt_pool, 4 * PG, 0, dev, 0, 0, 0, 1, 0600, &h), 0);
	ck_assert_uint_eq(kt_seg_read(0)->budget, 8 * PG);
	kv_share_close(h);
	kt_check(a);
	kv_alloc_destroy(a);
	/* (a floor over its ceiling or its limit, which it could never
	 * hold, is refused) */
	h = NULL;
	ck_assert_int_eq(kv_share_open(uuid, kt_pool, 4 * PG, 0, dev, 2 * PG, PG, 0, 1, 0600,
				       &h), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_share_open(uuid, kt_pool, 4 * PG, 0, dev, 2 * PG, 0, PG, 1, 0600,
				       &h), KVSHIM_EINVAL);
	ck_assert_ptr_null(h);
	ck_assert_int_eq(kv_share_open(uuid, kt_pool, 4 * PG, 0, dev, 0, 0, 0, 1, 0600, &h), 0);
	ck_assert_uint_eq(kt_seg_read(0)->budget, 4 * PG);
	ck_assert_int_eq(kv_share_take(h, 4 * PG, 4 * PG), 0);
	kv_share_close(h);
	kt_seg_unlink();
}
END_TEST

/* A take more than the whole budget could never fit: refused at once,
 * asking nobody to give anything back. */
START_TEST(test_share_take_over_budget)
{
	const struct kv_share_info *in;
	kv_share_t *idle, *big;
	kv_alloc_t *a;
	unsigned i;

	kt_new_pool();
	a = kt_make(8 * PG, 0, 0, 0);
	ck_assert_int_eq(kv_share_open(kv_alloc_prim(a)->uuid, kt_pool, 8 * PG, 0,
				       kv_alloc_prim(a)->device_bytes, 0, 0, 0, 1, 0600, &idle), 0);
	ck_assert_int_eq(kv_share_open(kv_alloc_prim(a)->uuid, kt_pool, 8 * PG, 0,
				       kv_alloc_prim(a)->device_bytes, 0, 0, 0, 1, 0600, &big), 0);
	ck_assert_int_eq(kv_share_take(idle, 4 * PG, 4 * PG), 0);
	kv_share_update(idle, 0, 0, 4 * PG, 0);         /* all of it pooled */
	ck_assert_int_eq(kv_share_take(big, 9 * PG, 9 * PG), KVSHIM_ELIMIT);
	in = kt_seg_read(0);
	for (i = 0; i < in->nprocs; i++)
		ck_assert_uint_eq(in->proc[i].trim_request, 0);
	ck_assert_int_eq(kv_share_take(big, 4 * PG, 4 * PG), 0);
	kv_share_close(big);
	kv_share_close(idle);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/* The idle pages the segment shows of a process: all of its members' (the
 * raw handles of these tests publish none). Fails the test unless none is
 * asked to trim. */
static uint64_t idle_shown(void)
{
	const struct kv_share_info *in = kt_seg_read(0);
	unsigned i;

	for (i = 0; i < in->nprocs; i++)
		ck_assert_msg(in->proc[i].trim_request == 0,
			      "slot %u asked to trim %llu bytes it does not have idle", i,
			      (unsigned long long)in->proc[i].trim_request);
	return in->cached + in->pooled;
}

/* A map that takes its pages from its own pool or cache (its range's
 * pages, or another's) takes no budget, yet its pages stop being idle: it
 * publishes that at once. Read stale
 * (until the worker's next look, here never), another process's take
 * would ask it to trim idle pages it no longer has (KV_SHARE_WAIT), when
 * all of them are in use past its share (KV_SHARE_WAIT_USED). */
START_TEST(test_share_map_own_idle_published)
{
	kv_share_t *other;
	CUdeviceptr s1, s2;
	kv_alloc_t *a;

	kt_new_pool();
	a = kt_make(8 * PG, 0, 0, 0);
	ck_assert_int_eq(kv_share_open(kv_alloc_prim(a)->uuid, kt_pool, 8 * PG, 0,
				       kv_alloc_prim(a)->device_bytes, 0, 0, 0, 1, 0600, &other), 0);
	ck_assert_int_eq(kv_alloc_reserve(a, 8 * PG, &s1), 0);
	ck_assert_int_eq(kv_alloc_map(a, s1, 8 * PG), 0);
	ck_assert_int_eq(kv_alloc_release(a, s1), 0);   /* 8 pooled */
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 8 * PG);
	ck_assert_uint_eq(idle_shown(), 8 * PG);
	/* from the pool */
	ck_assert_int_eq(kv_alloc_reserve(a, 8 * PG, &s2), 0);
	ck_assert_int_eq(kv_alloc_map(a, s2, 8 * PG), 0);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 0);
	ck_assert_int_eq(kv_share_take(other, 4 * PG, 4 * PG), KV_SHARE_WAIT_USED);
	kv_share_waited(other, 0);
	ck_assert_uint_eq(idle_shown(), 0);
	/* from the cache: its own range's pages, claimed back */
	ck_assert_int_eq(kv_alloc_unmap(a, s2, 8 * PG), 0);     /* 8 cached */
	ck_assert_uint_eq(idle_shown(), 8 * PG);
	ck_assert_int_eq(kv_alloc_map(a, s2, 8 * PG), 0);
	ck_assert_int_eq(kv_share_take(other, 4 * PG, 4 * PG), KV_SHARE_WAIT_USED);
	kv_share_waited(other, 0);
	ck_assert_uint_eq(idle_shown(), 0);
	/* from the cache: another range's pages, reclaimed */
	ck_assert_int_eq(kv_alloc_unmap(a, s2, 8 * PG), 0);
	ck_assert_uint_eq(idle_shown(), 8 * PG);
	ck_assert_int_eq(kv_alloc_reserve(a, 8 * PG, &s1), 0);
	ck_assert_int_eq(kv_alloc_map(a, s1, 8 * PG), 0);
	ck_assert_int_eq(kv_share_take(other, 4 * PG, 4 * PG), KV_SHARE_WAIT_USED);
	kv_share_waited(other, 0);
	ck_assert_uint_eq(idle_shown(), 0);
	kv_share_close(other);
	ck_assert_int_eq(kv_alloc_release(a, s1), 0);
	ck_assert_int_eq(kv_alloc_release(a, s2), 0);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/* A map whose span access the driver refuses puts the pages it made back
 * in its pool: they are idle now, and the segment must say so (the take
 * published them as held, in use), or another process's take reads them
 * as used (KV_SHARE_WAIT_USED: a try map fails at once) where it could ask
 * this process to trim them. No worker: nothing else publishes. */
START_TEST(test_share_failed_map_idle_published)
{
	CUdeviceptr s1;
	kv_alloc_t *a;

	kt_new_pool();
	a = kt_make(8 * PG, 0, 0, 0);
	ck_assert_int_eq(kv_alloc_reserve(a, 8 * PG, &s1), 0);
	/* the arena's grant, then the span's: the span's is refused */
	ck_assert_int_eq(kv_dev_fail_nth("cuMemSetAccess", 2, CUDA_ERROR_UNKNOWN), 0);
	ck_assert_int_eq(kv_alloc_map(a, s1, 8 * PG), KVSHIM_EDRIVER);
	ck_assert_uint_eq(kt_stats(a).pooled_bytes, 8 * PG);
	ck_assert_uint_eq(kt_seg_read(0)->pooled, 8 * PG);
	ck_assert_int_eq(kv_alloc_release(a, s1), 0);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/* Floors that together would pass the budget: the one joining last gets
 * what the others' leave, and says so; each can then reach its own. */
START_TEST(test_share_floors_over_budget)
{
	const struct kv_share_info *in;
	uint64_t floors;
	char log[2048];
	kv_share_t *h;
	kv_alloc_t *a;
	unsigned i;

	kt_new_pool();
	a = kt_make(8 * PG, 5 * PG, 0, 0);
	kt_capture_start();
	ck_assert_int_eq(kv_share_open(kv_alloc_prim(a)->uuid, kt_pool, 8 * PG, 0,
				       kv_alloc_prim(a)->device_bytes, 5 * PG, 0, 0, 1, 0600, &h), 0);
	kt_capture_end(log, sizeof(log));
	ck_assert_msg(strstr(log, "passes the budget") != NULL, "not said: \"%s\"", log);
	in = kt_seg_read(0);
	for (i = 0, floors = 0; i < in->nprocs; i++)
		floors += in->proc[i].min;
	ck_assert_uint_eq(floors, 8 * PG);      /* 5 and 3 */
	ck_assert_int_eq(kv_share_take(h, 3 * PG, 3 * PG), 0);
	kv_share_close(h);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/* What memory info builds on: the budget and the others' pages. */
START_TEST(test_share_figures)
{
	size_t budget = 0, others = 1;
	struct kvshim_stats stats;
	struct kv_alloc_opts o;
	kv_alloc_t *a, *c;
	CUdeviceptr s;
	int st;
	pid_t pid;

	kt_new_pool();
	a = kt_make(16 * PG, 0, 0, 0);
	ck_assert_int_eq(kv_alloc_shared(a, &budget, &others, NULL), 1);
	ck_assert_uint_eq(budget, 16 * PG);
	ck_assert_uint_eq(others, 0);
	ck_assert_int_eq(kv_alloc_stats(a, &stats), 0);
	ck_assert_uint_eq(stats.share_budget_bytes, 16 * PG);
	ck_assert_uint_eq(stats.share_members, 1);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &s), 0);
	ck_assert_int_eq(kv_alloc_map(a, s, 5 * PG), 0);
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		kv_alloc_t *b;
		size_t bb = 0, oo = 0;

		KT_CHILD_CHECK(kt_mk(16 * PG, 0, 0, 0, 0, &b) == 0);
		KT_CHILD_CHECK(kv_alloc_shared(b, &bb, &oo, NULL) == 1);
		KT_CHILD_CHECK(bb == 16 * PG && oo == 5 * PG);
		KT_CHILD_CHECK(kv_alloc_stats(b, &stats) == 0 && stats.share_members == 2);
		KT_CHILD_CHECK(kv_alloc_check(b) == 0);
		kv_alloc_destroy(b);
		_exit(0);
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	/* the child left its slot as it went */
	ck_assert_int_eq(kv_alloc_stats(a, &stats), 0);
	ck_assert_uint_eq(stats.share_members, 1);
	/* one that ends without closing its allocator (kvshim has no exit
	 * hook) counts while it runs, and not once it has ended */
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		kv_alloc_t *b;

		KT_CHILD_CHECK(kt_mk(16 * PG, 0, 0, 0, 0, &b) == 0);
		KT_CHILD_CHECK(kv_alloc_stats(b, &stats) == 0 && stats.share_members == 2);
		_exit(0);
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	ck_assert_int_eq(kv_alloc_stats(a, &stats), 0);
	ck_assert_uint_eq(stats.share_members, 1);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
	/* without sharing there are no figures */
	kt_opts(&o);
	c = kt_create(&o);
	ck_assert_int_eq(kv_alloc_shared(c, &budget, &others, NULL), 0);
	ck_assert_int_eq(kv_alloc_stats(c, &stats), 0);
	ck_assert_uint_eq(stats.share_budget_bytes, 0);
	ck_assert_uint_eq(stats.share_members, 0);
	kt_destroy(c);
}
END_TEST

/* A busy worker: maps and unmaps at random (and trims now and then) until
 * killed. */
static void busy_worker(unsigned seed)
{
	kv_alloc_t *b;
	CUdeviceptr d;

	KT_CHILD_CHECK(kt_mk(16 * PG, 0, 0, 1, 0, &b) == 0);
	KT_CHILD_CHECK(kv_alloc_reserve(b, 16 * PG, &d) == 0);
	for (;;) {
		uint32_t p = rand_r(&seed) % 16, n = 1 + rand_r(&seed) % 4;
		int rc;

		if (p + n > 16)
			n = 16 - p;
		rc = kv_alloc_map(b, d + (CUdeviceptr)p * PG, n * PG);
		KT_CHILD_CHECK(rc == 0 || rc == KVSHIM_ELIMIT);
		if (!rc)
			kv_alloc_unmap(b, d + (CUdeviceptr)p * PG, n * PG);
		if (rand_r(&seed) % 8 == 0)
			kv_alloc_trim(b, SIZE_MAX, NULL);
	}
}

/* New processes start one after another beside two busy workers (no
 * kill): every one joins and maps. Version 1 refused some of them: a
 * worker's published figures showed mapped above held for a moment after
 * it gave budget back, and the check on opening refused the segment. */
START_TEST(test_share_joiners)
{
	int i, st, refused = 0, failed = 0, n = 300;
	struct timespec t0;
	pid_t w[2];

	kt_new_pool();
	fflush(stdout);
	for (i = 0; i < 2; i++) {
		w[i] = fork();
		if (w[i] == 0)
			busy_worker((unsigned)time(NULL) + (unsigned)i);
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (i = 0; i < n; i++) {
		pid_t pid;

		fflush(stdout);
		pid = fork();
		if (pid == 0) {
			kv_alloc_t *b;
			CUdeviceptr d;
			int rc;

			kv_log_set_level(KV_LOG_NONE);
			rc = kt_mk(16 * PG, 0, 0, 0, 0, &b);
			if (rc)
				_exit(3);
			rc = kv_alloc_reserve(b, 4 * PG, &d);
			if (!rc)
				rc = kv_alloc_map(b, d, PG);
			kv_alloc_destroy(b);
			_exit(rc == 0 || rc == KVSHIM_ELIMIT ? 0 : 4);
		}
		ck_assert_int_eq(waitpid(pid, &st, 0), pid);
		if (WIFEXITED(st) && WEXITSTATUS(st) == 3)
			refused++;
		else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
			failed++;
	}
	printf("share: %d processes started beside 2 busy workers in %.0f ms: %d refused, %d failed\n",
	       n, kt_ms_since(&t0), refused, failed);
	for (i = 0; i < 2; i++) {
		ck_assert_int_eq(waitpid(w[i], &st, WNOHANG), 0);   /* still busy */
		kill(w[i], SIGKILL);
		waitpid(w[i], &st, 0);
	}
	ck_assert_int_eq(refused, 0);
	ck_assert_int_eq(failed, 0);
	kt_seg_unlink();
}
END_TEST

/* ---- chaos -------------------------------------------------------------------- */

#define CHAOS_WORKERS 4
#define CHAOS_BUDGET 24

/* What the workers report, in memory shared with the test. */
struct chaos_board {
	int refused;             /* workers that could not join */
	int bad;                 /* map errors other than ELIMIT */
	int trim_kills;          /* workers that killed themselves after a trim */
	int maps;
	char why[200];           /* the first failure */
};

static void chaos_worker(unsigned seed, struct chaos_board *bd)
{
	kv_alloc_t *b = NULL;
	CUdeviceptr d;
	int rc;

	rc = kt_mk(CHAOS_BUDGET * PG, 0, 0, 1, 0, &b);
	if (rc) {
		if (__atomic_fetch_add(&bd->refused, 1, __ATOMIC_SEQ_CST) == 0)
			snprintf(bd->why, sizeof(bd->why), "worker %d could not join: %d",
				 (int)getpid(), rc);
		_exit(3);
	}
	KT_CHILD_CHECK(kv_alloc_reserve(b, 32 * PG, &d) == 0);
	for (;;) {
		uint32_t p = rand_r(&seed) % 32, n = 1 + rand_r(&seed) % 6;

		if (p + n > 32)
			n = 32 - p;
		rc = kv_alloc_map(b, d + (CUdeviceptr)p * PG, n * PG);
		if (rc && rc != KVSHIM_ELIMIT &&
		    __atomic_fetch_add(&bd->bad, 1, __ATOMIC_SEQ_CST) == 0)
			snprintf(bd->why, sizeof(bd->why), "worker %d: a map failed with %d",
				 (int)getpid(), rc);
		if (!rc) {
			__atomic_fetch_add(&bd->maps, 1, __ATOMIC_RELAXED);
			kv_alloc_unmap(b, d + (CUdeviceptr)p * PG, n * PG);
		}
		if (rand_r(&seed) % 40 == 0) {
			kv_alloc_trim(b, SIZE_MAX, NULL);
			if (rand_r(&seed) % 3 == 0) {
				__atomic_fetch_add(&bd->trim_kills, 1, __ATOMIC_SEQ_CST);
				raise(SIGKILL);         /* killed right after a trim */
			}
		}
	}
}

static pid_t chaos_spawn(unsigned seed, struct chaos_board *bd)
{
	pid_t pid;

	fflush(stdout);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		chaos_worker(seed, bd);
	return pid;
}

/* A process that takes the segment's update lock and stops there, as a
 * process stopped by a debugger inside the lock would. Returns its pid,
 * stopped, holding the lock. */
static pid_t stopped_lock_holder(void)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
			    .l_start = KV_SHARE_LOCK_UPDATE, .l_len = 1 };
	pid_t pid;
	int st;

	fflush(stdout);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int fd = open(kt_path, O_RDWR | O_CLOEXEC);

		KT_CHILD_CHECK(fd >= 0 && fcntl(fd, F_OFD_SETLKW, &fl) == 0);
		raise(SIGSTOP);
		_exit(0);
	}
	ck_assert_int_eq(waitpid(pid, &st, WUNTRACED), pid);
	ck_assert(WIFSTOPPED(st));
	return pid;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/*
 * Workers map and unmap at random under one budget while the test kills
 * one at random, kills them all at once, stops one for a while, stops a
 * process inside the update lock (the workers go on without it), and while
 * they kill themselves right after a trim. Asserted: the sum held (read at
 * one instant) never passes the budget, no process is ever refused the
 * segment, no map fails but for the budget, and after each kill of all, the
 * dead processes' pages are usable by another. Loose on time: it must pass
 * on a busy 2-core machine. KVSHIM_CHAOS_SEED and KVSHIM_CHAOS_SECONDS
 * replay or lengthen a run.
 */
START_TEST(test_share_chaos)
{
	const char *env_seed = getenv("KVSHIM_CHAOS_SEED");
	const char *env_secs = getenv("KVSHIM_CHAOS_SECONDS");
	unsigned seed = env_seed ? (unsigned)strtoul(env_seed, NULL, 10)
				 : (unsigned)time(NULL) ^ (unsigned)getpid();
	double secs = env_secs ? atof(env_secs) : 4.0, reuse[64], back[64], ms;
	int kills = 0, kill_alls = 0, stops = 0, spawned = 0, exact = 0, inexact = 0;
	int lock_stops = 0;
	pid_t holder = 0;
	int nreuse = 0, nback = 0, reuse_failed = 0, died_badly = 0, i, st, stopped = -1;
	size_t room = 0;
	uint64_t most = 0, over = 0, t;
	struct timespec start, next_kill, next_all, next_stop, stop_at, t0, next_hold, hold_at;
	struct chaos_board *bd;
	pid_t w[CHAOS_WORKERS];
	unsigned r = seed;
	kv_alloc_t *a;
	CUdeviceptr s;

	kt_new_pool();
	printf("share chaos: seed %u (KVSHIM_CHAOS_SEED replays it), %.1f s\n", seed, secs);
	bd = mmap(NULL, sizeof(*bd), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(bd, MAP_FAILED);
	memset(bd, 0, sizeof(*bd));
	a = kt_make(CHAOS_BUDGET * PG, 0, 0, 0);
	ck_assert_int_eq(kv_alloc_reserve(a, CHAOS_BUDGET * PG, &s), 0);
	for (i = 0; i < CHAOS_WORKERS; i++)
		w[i] = chaos_spawn(seed + (unsigned)spawned++, bd);
	clock_gettime(CLOCK_MONOTONIC, &start);
	next_kill = next_all = next_stop = next_hold = start;
	next_hold.tv_nsec += 500 * 1000000L;
	while (kt_ms_since(&start) < secs * 1000) {
		if (exact_held(&t)) {
			exact++;
			most = t > most ? t : most;
			if (t > CHAOS_BUDGET * PG && !over)
				over = t;
		} else {
			inexact++;
		}
		/* a process stopped inside the update lock for 300 ms: the
		 * workers go on without it */
		if (holder && kt_ms_since(&hold_at) > 300) {
			kill(holder, SIGKILL);
			waitpid(holder, &st, 0);
			holder = 0;
		}
		if (!holder && kt_ms_since(&next_hold) > 0) {
			holder = stopped_lock_holder();
			lock_stops++;
			clock_gettime(CLOCK_MONOTONIC, &hold_at);
			next_hold = hold_at;
			next_hold.tv_sec += 1;
		}
		/* the dead: killed by the test or themselves after a trim */
		for (i = 0; i < CHAOS_WORKERS; i++) {
			if (waitpid(w[i], &st, WNOHANG) != w[i])
				continue;
			if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL)
				died_badly++;   /* its line, or bd->why, says why */
			if (stopped == i)
				stopped = -1;
			w[i] = chaos_spawn(seed + (unsigned)spawned++, bd);
		}
		if (stopped >= 0 && kt_ms_since(&stop_at) > 300) {
			kill(w[stopped], SIGCONT);
			stopped = -1;
		}
		if (kt_ms_since(&next_kill) > 0) {
			kill(w[rand_r(&r) % CHAOS_WORKERS], SIGKILL);
			kills++;
			clock_gettime(CLOCK_MONOTONIC, &next_kill);
			next_kill.tv_nsec += (100 + rand_r(&r) % 150) * 1000000L;
		}
		if (stopped < 0 && kt_ms_since(&next_stop) > 0) {
			stopped = (int)(rand_r(&r) % CHAOS_WORKERS);
			kill(w[stopped], SIGSTOP);
			stops++;
			clock_gettime(CLOCK_MONOTONIC, &stop_at);
			next_stop = stop_at;
			next_stop.tv_sec += 1;
		}
		if (!holder && kt_ms_since(&next_all) > 0 && kt_ms_since(&start) > 300) {
			/* all at once, then the whole budget for this process */
			for (i = 0; i < CHAOS_WORKERS; i++)
				kill(w[i], SIGKILL);
			for (i = 0; i < CHAOS_WORKERS; i++)
				waitpid(w[i], &st, 0);
			stopped = -1;
			kill_alls++;
			clock_gettime(CLOCK_MONOTONIC, &t0);
			/* the budget back (the admission check's view), then
			 * the pages mapped */
			while ((kv_alloc_headroom(a, &room) || room < CHAOS_BUDGET * PG) &&
			       kt_ms_since(&t0) < 10000)
				nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
			if (nback < 64)
				back[nback++] = kt_ms_since(&t0);
			while (kv_alloc_map(a, s, CHAOS_BUDGET * PG) != 0 &&
			       kt_ms_since(&t0) < 10000)
				nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
			ms = kt_ms_since(&t0);
			if (kv_alloc_unmap(a, s, CHAOS_BUDGET * PG) == 0) {
				if (nreuse < 64)
					reuse[nreuse++] = ms;
			} else {
				reuse_failed++;
			}
			kv_alloc_trim(a, SIZE_MAX, NULL);
			for (i = 0; i < CHAOS_WORKERS; i++)
				w[i] = chaos_spawn(seed + (unsigned)spawned++, bd);
			clock_gettime(CLOCK_MONOTONIC, &next_all);
			next_all.tv_nsec += 700 * 1000000L;
		}
		nanosleep(&(struct timespec){ 0, 2 * 1000000 }, NULL);
	}
	if (holder) {
		kill(holder, SIGKILL);
		waitpid(holder, &st, 0);
	}
	for (i = 0; i < CHAOS_WORKERS; i++)
		kill(w[i], SIGKILL);
	for (i = 0; i < CHAOS_WORKERS; i++)
		waitpid(w[i], &st, 0);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
	qsort(reuse, (size_t)nreuse, sizeof(reuse[0]), cmp_double);
	qsort(back, (size_t)nback, sizeof(back[0]), cmp_double);
	printf("share chaos: %d workers started, %d killed at random, %d killed right after a trim, "
	       "%d kills of all at once, %d stops of 300 ms, %d stops of 300 ms inside the lock; %d maps\n",
	       spawned, kills, bd->trim_kills, kill_alls, stops, lock_stops, bd->maps);
	printf("share chaos: %d samples of one instant (%d not), at most %llu of %d pages held\n",
	       exact, inexact, (unsigned long long)(most / PG), CHAOS_BUDGET);
	if (nreuse && nback)
		printf("share chaos: after all were killed, their budget was back after %.2f ms median, %.2f ms at most, "
		       "and their %d pages mapped by another process after %.1f ms median, %.1f ms at most (%d times)\n",
		       back[nback / 2], back[nback - 1], CHAOS_BUDGET, reuse[nreuse / 2],
		       reuse[nreuse - 1], nreuse);
	ck_assert_msg(!over, "the budget was passed: %llu bytes held (seed %u)",
		      (unsigned long long)over, seed);
	ck_assert_msg(bd->refused == 0 && bd->bad == 0 && died_badly == 0,
		      "%d refused, %d bad maps, %d died otherwise (seed %u): %s",
		      bd->refused, bd->bad, died_badly, seed, bd->why);
	ck_assert_msg(reuse_failed == 0 && nreuse > 0,
		      "the dead processes' pages were not usable within 10 s (seed %u)", seed);
	ck_assert_int_gt(exact, 0);
	munmap(bd, sizeof(*bd));
}
END_TEST

/*
 * An allocator in a new pool of an 8-page budget, beside another member
 * (*idle) that holds n pages of it, all pooled (idle). Returns the
 * allocator.
 */
static kv_alloc_t *with_idle_member(uint64_t n, kv_share_t **idle)
{
	kv_alloc_t *a;

	kt_new_pool();
	a = kt_make(8 * PG, 0, 0, 0);
	ck_assert_int_eq(kv_share_open(kv_alloc_prim(a)->uuid, kt_pool, 8 * PG, 0,
				       kv_alloc_prim(a)->device_bytes, 0, 0, 0, 1, 0600, idle), 0);
	ck_assert_int_eq(kv_share_take(*idle, n * PG, n * PG), 0);
	kv_share_update(*idle, 0, 0, n * PG, 0);
	return a;
}

/*
 * A map the shared budget granted, whose creation the driver then refuses
 * for memory, fails with KVSHIM_ENOMEM: what another thread's take heard
 * from the budget while the map made its pages (lock dropped), a refusal
 * to wait for another process's idle pages, is not the map's answer.
 */
START_TEST(test_share_oom_answer_is_the_maps_own)
{
	struct kt_map m = { .len = 3 * PG }, o = { .len = PG };
	kv_share_t *idle;
	CUdeviceptr base;
	kv_alloc_t *a = with_idle_member(5, &idle);

	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &base), 0);
	m.a = o.a = a;
	m.addr = base;
	o.addr = base + 8 * PG;
	ck_assert_int_eq(kv_dev_fail_nth("cuMemCreate", 2, CUDA_ERROR_OUT_OF_MEMORY), 0);
	/* the budget is all taken: o is asked to wait (had it not reached
	 * that, it maps after m's failure) */
	kt_map_beside(&m, &o, KVSHIM_ENOMEM);
	kv_dev_fail_nth("cuMemCreate", 0, CUDA_SUCCESS);
	kv_share_close(idle);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

/*
 * A map whose take the shared budget granted only in part (the rest to
 * wait for another process's idle pages), made up from its own cached
 * pages, and whose creation the driver then refuses for memory, asks the
 * budget again as its take was told (its own answer, read after the lock
 * was dropped), and maps once the budget the failed creation gave back is
 * granted: not KVSHIM_ENOMEM as for a take the budget never refused.
 */
START_TEST(test_share_made_short_asks_as_its_take_was_told)
{
	kv_share_t *idle;
	CUdeviceptr base;
	kv_alloc_t *a = with_idle_member(4, &idle);

	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &base), 0);
	/* two pages cached: 2 of the budget's 8 this process's, 2 free */
	ck_assert_int_eq(kv_alloc_map(a, base, 2 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, base, 2 * PG), 0);
	ck_assert_uint_eq(kt_stats(a).cached_bytes, 2 * PG);
	/* the take of 4 new pages is refused, of 2 granted, the cached two
	 * make it whole; the second creation fails for memory */
	ck_assert_int_eq(kv_dev_fail_nth("cuMemCreate", 2, CUDA_ERROR_OUT_OF_MEMORY), 0);
	ck_assert_int_eq(kv_alloc_map(a, base + 8 * PG, 4 * PG), 0);
	kv_dev_fail_nth("cuMemCreate", 0, CUDA_SUCCESS);
	ck_assert_uint_eq(kt_stats(a).mapped_bytes, 4 * PG);
	ck_assert_int_eq(kv_alloc_unmap(a, base + 8 * PG, 4 * PG), 0);
	kv_share_close(idle);
	kt_check(a);
	kv_alloc_destroy(a);
	kt_seg_unlink();
}
END_TEST

Suite *share_suite(void)
{
	Suite *s = suite_create("share");
	TCase *tc = tcase_create("budget");

	tcase_set_timeout(tc, 60);
	kt_share_fixture(tc);
	kt_add_emu(tc, test_share_gives_way);
	kt_add_emu(tc, test_share_never_over);
	kt_add_emu(tc, test_share_killed_process);
	kt_add_emu(tc, test_share_limits);
	kt_add_emu(tc, test_share_floor_kept);
	kt_add_emu(tc, test_share_floor_part_page);
	kt_add_emu(tc, test_share_asked_within_held);
	kt_add_emu(tc, test_share_nobody_gives_way);
	kt_add_emu(tc, test_share_left_behind);
	kt_add_emu(tc, test_share_take_over_budget);
	kt_add_emu(tc, test_share_floors_over_budget);
	kt_add_emu(tc, test_share_figures);
	kt_add_emu(tc, test_share_joiners);
	kt_add_emu(tc, test_share_chaos);
	kt_add_emu(tc, test_share_oom_answer_is_the_maps_own);
	kt_add_emu(tc, test_share_made_short_asks_as_its_take_was_told);
	suite_add_tcase(s, tc);
	/* (alone, for valgrind: it forks nothing) */
	tc = tcase_create("published");
	kt_share_fixture(tc);
	kt_add_emu(tc, test_share_map_own_idle_published);
	kt_add_emu(tc, test_share_failed_map_idle_published);
	suite_add_tcase(s, tc);
	return s;
}
