/*
 * test_share.c - the shared per-GPU budget across processes: never over
 * the budget, idle pages of one process given to another on request, a
 * killed process's share coming back, limits, and a corrupted or hostile
 * segment refused. Runs on the emulation only: the processes are forks of
 * the test (each emulated device is private, so only the accounting is
 * shared, which is what is tested).
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "share.h"
#include "suites.h"

static char pool[32];

static void new_pool(void)
{
	static int n;

	snprintf(pool, sizeof(pool), "t%d-%d", (int)getpid(), n++);
}

static kv_alloc_t *make(size_t budget, size_t min, size_t max, int worker)
{
	struct kv_alloc_opts o;
	kv_alloc_t *a = NULL;
	int rc;

	kt_opts(&o);
	o.share = 1;
	o.pool_name = pool;
	o.budget = budget;
	o.min = min;
	o.max = max;
	o.worker = worker;
	rc = kv_alloc_create(&o, &a);
	ck_assert_msg(rc == 0, "kv_alloc_create: %d", rc);
	return a;
}

/* The segment, mapped read-only, to watch the totals from outside. */
static const struct kv_share *watch(void)
{
	char name[160];
	struct kv_share *sh;
	int fd;

	snprintf(name, sizeof(name), "/kvshim-%s-%s",
		 "GPU-00000000-0000-4000-8000-000000000000", pool);
	fd = shm_open(name, O_RDONLY, 0);
	if (fd < 0) {
		/* the emulation's UUID differs: find the pool's segment */
		FILE *p;
		char cmd[256], path[200] = "";

		snprintf(cmd, sizeof(cmd), "ls /dev/shm | grep -- '-%s$' | head -1", pool);
		p = popen(cmd, "r");
		ck_assert_ptr_nonnull(p);
		ck_assert_ptr_nonnull(fgets(path, sizeof(path), p));
		pclose(p);
		path[strcspn(path, "\n")] = '\0';
		snprintf(name, sizeof(name), "/%s", path);
		fd = shm_open(name, O_RDONLY, 0);
	}
	ck_assert_int_ge(fd, 0);
	sh = mmap(NULL, sizeof(*sh), PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	ck_assert_ptr_ne(sh, MAP_FAILED);
	return sh;
}

static uint64_t total(const struct kv_share *sh)
{
	uint64_t t = 0;
	int i;

	for (i = 0; i < KV_SHARE_SLOTS; i++)
		if (__atomic_load_n(&sh->slot[i].pid, __ATOMIC_ACQUIRE))
			t += __atomic_load_n(&sh->slot[i].held, __ATOMIC_ACQUIRE);
	return t;
}

/* The segment mapped writable, to take its lock. */
static struct kv_share *lockable(const struct kv_share *ro)
{
	struct kv_share *sh;
	int fd;

	fd = shm_open(ro->name, O_RDWR, 0);
	ck_assert_int_ge(fd, 0);
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	ck_assert_ptr_ne(sh, MAP_FAILED);
	return sh;
}

/* The sum held, read under the segment's lock: read without it, slots
 * changing between the reads can add up to more than was ever held. */
static uint64_t locked_total(struct kv_share *sh)
{
	uint64_t t;

	ck_assert_int_eq(pthread_mutex_lock(&sh->lock), 0);
	t = total(sh);
	pthread_mutex_unlock(&sh->lock);
	return t;
}

static void unlink_pool(const struct kv_share *sh)
{
	char name[160];

	snprintf(name, sizeof(name), "%s", sh->name);
	munmap((void *)sh, sizeof(*sh));
	shm_unlink(name);
}

/* Idle pages of one process go to another that needs them, quickly. */
START_TEST(test_share_gives_way)
{
	const struct kv_share *sh;
	kv_alloc_t *a;
	CUdeviceptr s;
	int st = -1, p2c[2], c2p[2];
	pid_t pid;
	char c;

	new_pool();
	ck_assert_int_eq(pipe(p2c), 0);
	ck_assert_int_eq(pipe(c2p), 0);
	a = make(16 * PG, 0, 0, 1);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &s), 0);
	ck_assert_int_eq(kv_alloc_map(a, s, 12 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, s, 12 * PG), 0);     /* 12 idle */
	sh = watch();
	ck_assert_uint_eq(total(sh), 12 * PG);
	pid = fork();
	if (pid == 0) {
		struct timespec t0, t1;
		kv_alloc_t *b;
		CUdeviceptr d;
		size_t room = 0;
		int rc;

		b = make(16 * PG, 0, 0, 0);
		kv_alloc_reserve(b, 16 * PG, &d);
		/* the admission check counts the other process's idle pages */
		if (kv_alloc_headroom(b, &room) || room < 10 * PG) {
			if (write(c2p[1], "h", 1) != 1)
				_exit(4);
			_exit(5);
		}
		clock_gettime(CLOCK_MONOTONIC, &t0);
		rc = kv_alloc_map(b, d, 10 * PG);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		printf("share: 10 pages, 6 of them idle in another process, usable after %.1f ms\n",
		       (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
		fflush(stdout);
		if (write(c2p[1], rc == 0 ? "y" : "n", 1) != 1 || read(p2c[0], &c, 1) != 1)
			_exit(4);
		kv_alloc_destroy(b);
		_exit(rc == 0 ? 0 : 3);
	}
	ck_assert_int_eq(read(c2p[0], &c, 1), 1);
	ck_assert_int_eq(c, 'y');
	/* the child holds 10 pages: a gave up its idle ones to make room */
	ck_assert_uint_le(total(sh), 16 * PG);
	ck_assert_uint_le(kt_stats(a).physical_bytes, 6 * PG);
	ck_assert_int_eq(write(p2c[1], "x", 1), 1);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	kv_alloc_destroy(a);
	ck_assert_uint_eq(total(sh), 0);
	unlink_pool(sh);
}
END_TEST

/* Four processes mapping and unmapping at random under one budget: the
 * sum held never passes it. */
START_TEST(test_share_never_over)
{
	unsigned seed = (unsigned)time(NULL);
	const struct kv_share *sh;
	struct kv_share *rw;
	uint64_t most = 0, t;
	pid_t pid[4];
	int i, st, live = 4;
	kv_alloc_t *a;

	new_pool();
	a = make(24 * PG, 0, 0, 0);            /* creates the segment */
	sh = watch();
	rw = lockable(sh);
	printf("share stress: seed %u\n", seed);
	for (i = 0; i < 4; i++) {
		pid[i] = fork();
		if (pid[i] == 0) {
			unsigned s = seed + i;
			kv_alloc_t *b = make(24 * PG, 0, 0, 1);
			CUdeviceptr d;
			int r, rc, bad = 0;

			kv_alloc_reserve(b, 32 * PG, &d);
			for (r = 0; r < 300; r++) {
				uint32_t p = rand_r(&s) % 32, n = 1 + rand_r(&s) % 6;

				if (p + n > 32)
					n = 32 - p;
				rc = kv_alloc_map(b, d + (CUdeviceptr)p * PG, n * PG);
				if (rc && rc != KVSHIM_ELIMIT)
					bad++;
				if (!rc)
					kv_alloc_unmap(b, d + (CUdeviceptr)p * PG, n * PG);
			}
			kv_alloc_destroy(b);
			_exit(bad ? 3 : 0);
		}
	}
	while (live) {
		t = locked_total(rw);
		most = t > most ? t : most;
		for (i = 0; i < 4; i++)
			if (pid[i] && waitpid(pid[i], &st, WNOHANG) == pid[i]) {
				ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
					      "child %d failed (seed %u)", i, seed);
				pid[i] = 0;
				live--;
			}
	}
	printf("share stress: at most %llu of %d pages held together\n",
	       (unsigned long long)(most / PG), 24);
	ck_assert_uint_le(most, 24 * PG);
	munmap(rw, sizeof(*rw));
	kv_alloc_destroy(a);
	unlink_pool(sh);
}
END_TEST

/* A process killed while it holds pages: its share is back once anyone
 * needs it. */
START_TEST(test_share_killed_process)
{
	const struct kv_share *sh;
	struct timespec t0, t1;
	int st, ready[2];
	kv_alloc_t *a;
	CUdeviceptr s;
	pid_t pid;
	char c;

	new_pool();
	ck_assert_int_eq(pipe(ready), 0);
	a = make(16 * PG, 0, 0, 0);
	sh = watch();
	pid = fork();
	if (pid == 0) {
		kv_alloc_t *b = make(16 * PG, 0, 0, 0);
		CUdeviceptr d;

		kv_alloc_reserve(b, 16 * PG, &d);
		kv_alloc_map(b, d, 14 * PG);
		if (write(ready[1], "x", 1) != 1)
			_exit(3);
		for (;;)
			pause();
	}
	ck_assert_int_eq(read(ready[0], &c, 1), 1);
	ck_assert_uint_eq(total(sh), 14 * PG);
	kill(pid, SIGKILL);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &s), 0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ck_assert_int_eq(kv_alloc_map(a, s, 12 * PG), 0);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ck_assert_uint_eq(total(sh), 12 * PG);
	printf("share: a killed process's pages usable after %.1f ms\n",
	       (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
	kv_alloc_destroy(a);
	unlink_pool(sh);
}
END_TEST

/* Ceiling: a process stops at its max. Floor: others are not asked to
 * trim it below its min. */
START_TEST(test_share_limits)
{
	const struct kv_share *sh;
	kv_alloc_t *a;
	CUdeviceptr s;
	int st;
	pid_t pid;

	new_pool();
	a = make(16 * PG, 10 * PG, 12 * PG, 1);
	sh = watch();
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &s), 0);
	ck_assert_int_eq(kv_alloc_map(a, s, 13 * PG), KVSHIM_ELIMIT);
	ck_assert_int_eq(kv_alloc_map(a, s, 12 * PG), 0);
	ck_assert_int_eq(kv_alloc_unmap(a, s, 12 * PG), 0);     /* 12 idle */
	pid = fork();
	if (pid == 0) {
		kv_alloc_t *b = make(16 * PG, 0, 0, 0);
		CUdeviceptr d;
		int r1, r2;

		kv_alloc_reserve(b, 16 * PG, &d);
		/* 4 free in the budget, then the 2 a holds above its floor */
		r1 = kv_alloc_map(b, d, 6 * PG);
		/* and no more: a is at its floor */
		r2 = kv_alloc_map(b, d + 6 * PG, PG);
		kv_alloc_destroy(b);
		_exit(r1 == 0 && r2 == KVSHIM_ELIMIT ? 0 : 3);
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the floor was not kept");
	ck_assert_uint_ge(kt_stats(a).physical_bytes, 10 * PG);
	kv_alloc_destroy(a);
	unlink_pool(sh);
}
END_TEST

/* A floor is kept: while a process holds less than its floor, others
 * cannot take that budget, and it grows to its floor at once. */
START_TEST(test_share_floor_kept)
{
	const struct kv_share *sh;
	int st, p2c[2], c2p[2];
	size_t room = 0;
	kv_alloc_t *a;
	CUdeviceptr s;
	pid_t pid;
	char c;

	new_pool();
	ck_assert_int_eq(pipe(p2c), 0);
	ck_assert_int_eq(pipe(c2p), 0);
	a = make(16 * PG, 0, 0, 0);
	sh = watch();
	pid = fork();
	if (pid == 0) {
		kv_alloc_t *b = make(16 * PG, 8 * PG, 0, 0);
		CUdeviceptr d;
		int r1, r2;

		kv_alloc_reserve(b, 16 * PG, &d);
		if (write(c2p[1], "r", 1) != 1 || read(p2c[0], &c, 1) != 1)
			_exit(4);
		/* up to its floor at once, and no more: a holds the rest */
		r1 = kv_alloc_map(b, d, 8 * PG);
		r2 = kv_alloc_map(b, d + 8 * PG, PG);
		kv_alloc_destroy(b);
		_exit(r1 == 0 && r2 == KVSHIM_ELIMIT ? 0 : 3);
	}
	ck_assert_int_eq(read(c2p[0], &c, 1), 1);      /* b is registered */
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &s), 0);
	ck_assert_int_eq(kv_alloc_headroom(a, &room), 0);
	ck_assert_uint_eq(room, 8 * PG);
	ck_assert_int_eq(kv_alloc_map(a, s, 9 * PG), KVSHIM_ELIMIT);
	ck_assert_int_eq(kv_alloc_map(a, s, 8 * PG), 0);
	ck_assert_int_eq(write(p2c[1], "x", 1), 1);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the floor was not kept");
	kv_alloc_destroy(a);
	unlink_pool(sh);
}
END_TEST

/* What memory info builds on: the budget and the others' pages. */
START_TEST(test_share_figures)
{
	const struct kv_share *sh;
	size_t budget = 0, others = 1;
	kv_alloc_t *a;
	CUdeviceptr s;
	int st;
	pid_t pid;

	new_pool();
	a = make(16 * PG, 0, 0, 0);
	sh = watch();
	ck_assert_int_eq(kv_alloc_shared(a, &budget, &others, NULL), 1);
	ck_assert_uint_eq(budget, 16 * PG);
	ck_assert_uint_eq(others, 0);
	ck_assert_int_eq(kv_alloc_reserve(a, 16 * PG, &s), 0);
	ck_assert_int_eq(kv_alloc_map(a, s, 5 * PG), 0);
	pid = fork();
	if (pid == 0) {
		kv_alloc_t *b = make(16 * PG, 0, 0, 0);
		size_t bb = 0, oo = 0;
		int ok = kv_alloc_shared(b, &bb, &oo, NULL) == 1 && bb == 16 * PG &&
			 oo == 5 * PG;

		kv_alloc_destroy(b);
		_exit(ok ? 0 : 3);
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	kv_alloc_destroy(a);
	unlink_pool(sh);
	/* without sharing there are no figures */
	{
		struct kv_alloc_opts o;
		kv_alloc_t *c;

		kt_opts(&o);
		c = kt_create(&o);
		ck_assert_int_eq(kv_alloc_shared(c, &budget, &others, NULL), 0);
		kt_destroy(c);
	}
}
END_TEST

/* A segment that is not what it should be is refused, whatever is in it. */
START_TEST(test_share_bad_segment)
{
	static const char *const names[] = { "short", "magic", "hostile" };
	struct kv_alloc_opts o;
	struct kv_share sh;
	kv_alloc_t *a = NULL, *b;
	const struct kv_share *good;
	char name[200];
	int i, fd;

	/* a good segment first, for its name's prefix */
	new_pool();
	b = make(16 * PG, 0, 0, 0);
	good = watch();
	for (i = 0; i < 3; i++) {
		snprintf(name, sizeof(name), "%s-%s", good->name, names[i]);
		fd = shm_open(name, O_RDWR | O_CREAT | O_TRUNC, 0600);
		ck_assert_int_ge(fd, 0);
		memcpy(&sh, good, sizeof(sh));
		if (i == 1)
			sh.magic ^= 1;
		if (i == 2)
			sh.slot[3].held = ~0ull;       /* a lie about the figures */
		ck_assert_int_eq(write(fd, &sh, i == 0 ? 100 : sizeof(sh)),
				 i == 0 ? 100 : (ssize_t)sizeof(sh));
		close(fd);
		kt_opts(&o);
		o.share = 1;
		o.pool_name = strrchr(name, '-') - strlen(pool);
		snprintf(pool + strlen(pool), sizeof(pool) - strlen(pool), "-%s", names[i]);
		o.pool_name = pool;
		ck_assert_int_eq(kv_alloc_create(&o, &a), KVSHIM_ESTATE);
		ck_assert_ptr_null(a);
		shm_unlink(name);
		*strrchr(pool, '-') = '\0';
	}
	/* and bad names */
	kt_opts(&o);
	o.share = 1;
	o.pool_name = "a/b";
	ck_assert_int_eq(kv_alloc_create(&o, &a), KVSHIM_EINVAL);
	kv_alloc_destroy(b);
	unlink_pool(good);
}
END_TEST

Suite *share_suite(void)
{
	Suite *s = suite_create("share");
	TCase *tc = tcase_create("budget");

	tcase_set_timeout(tc, 60);
	kt_add_emu(tc, test_share_gives_way);
	kt_add_emu(tc, test_share_never_over);
	kt_add_emu(tc, test_share_killed_process);
	kt_add_emu(tc, test_share_limits);
	kt_add_emu(tc, test_share_floor_kept);
	kt_add_emu(tc, test_share_bad_segment);
	kt_add_emu(tc, test_share_figures);
	suite_add_tcase(s, tc);
	return s;
}
