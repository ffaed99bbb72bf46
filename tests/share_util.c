/*
 * share_util.c - see share_util.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "prim.h"
#include "share_util.h"

char kt_pool[40];
char kt_path[256];

/* The GPU UUID segments are named from: the emulated device's. */
static const char *uuid(void)
{
	static char id[48];
	struct kv_alloc_opts o;
	kv_alloc_t *a = NULL;

	if (!id[0]) {
		kt_opts(&o);
		ck_assert_int_eq(kv_alloc_create(&o, &a), 0);
		snprintf(id, sizeof(id), "%s", kv_alloc_prim(a)->uuid);
		kv_alloc_destroy(a);
	}
	return id;
}

/* The runner process (the share suites are made there): every pool name
 * starts with its pid, so that its teardown finds what its tests left. */
static pid_t runner;

static void cleanup(void)
{
	char pattern[128];
	glob_t g;
	size_t i;

	snprintf(pattern, sizeof(pattern), "%s/kvshim-*-t%d-*", KV_SHARE_DIR, (int)runner);
	if (glob(pattern, 0, NULL, &g) != 0)
		return;
	for (i = 0; i < g.gl_pathc; i++)
		unlink(g.gl_pathv[i]);
	globfree(&g);
}

void kt_share_fixture(TCase *tc)
{
	runner = getpid();
	tcase_add_unchecked_fixture(tc, NULL, cleanup);
}

void kt_new_pool(void)
{
	static int n;

	snprintf(kt_pool, sizeof(kt_pool), "t%d-%d-%d", (int)runner, (int)getpid(), n++);
	ck_assert_int_eq(kv_share_path(kt_path, sizeof(kt_path), uuid(), kt_pool), 0);
}

void kt_new_pool_pipes(int p2c[2], int c2p[2])
{
	kt_new_pool();
	ck_assert_int_eq(pipe(p2c), 0);
	ck_assert_int_eq(pipe(c2p), 0);
}

void kt_share_opts(struct kv_alloc_opts *o, size_t budget, size_t min, size_t max,
		   unsigned weight, int worker, unsigned mode)
{
	kt_opts(o);
	o->share = 1;
	o->pool_name = kt_pool;
	o->budget = budget;
	o->min = min;
	o->max = max;
	o->weight = weight;
	o->worker = worker;
	o->share_mode = mode ? mode : 0600;
}

static int mk(size_t budget, size_t min, size_t max, unsigned weight, int worker,
	      unsigned mode, kv_alloc_t **out)
{
	struct kv_alloc_opts o;

	kt_share_opts(&o, budget, min, max, weight, worker, mode);
	*out = NULL;
	return kv_alloc_create(&o, out);
}

int kt_mk_weight(size_t budget, size_t min, size_t max, unsigned weight,
		 int worker, kv_alloc_t **out)
{
	return mk(budget, min, max, weight, worker, 0, out);
}

int kt_mk(size_t budget, size_t min, size_t max, int worker, unsigned mode,
	  kv_alloc_t **out)
{
	return mk(budget, min, max, 1, worker, mode, out);
}

kv_alloc_t *kt_make(size_t budget, size_t min, size_t max, int worker)
{
	kv_alloc_t *a = NULL;
	int rc = kt_mk(budget, min, max, worker, 0, &a);

	ck_assert_msg(rc == 0, "kv_alloc_create: %d", rc);
	return a;
}

static void drain(int fd, char *err, size_t len, size_t *n)
{
	char sink[512];
	ssize_t k;

	for (;;) {
		if (err && *n + 1 < len)
			k = read(fd, err + *n, len - 1 - *n);
		else
			k = read(fd, sink, sizeof(sink));
		if (k <= 0)
			break;
		if (err && *n + 1 < len)
			*n += (size_t)k;
	}
	if (err)
		err[*n] = '\0';
}

int kt_in_child(int (*fn)(void *), void *arg, int secs, char *err, size_t len)
{
	struct timespec t0;
	int pfd[2], st = 0, rc = -1;
	size_t n = 0;
	pid_t pid;

	if (err && len)
		err[0] = '\0';
	ck_assert_int_eq(pipe(pfd), 0);
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(pfd[0]);
		dup2(pfd[1], STDERR_FILENO);
		close(pfd[1]);
		kv_log_set_level(KV_LOG_WARN);
		_exit(fn(arg));
	}
	close(pfd[1]);
	fcntl(pfd[0], F_SETFL, O_NONBLOCK);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		pid_t w = waitpid(pid, &st, WNOHANG);

		drain(pfd[0], err, len, &n);
		if (w == pid) {
			rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
			break;
		}
		if (kt_ms_since(&t0) > secs * 1000.0) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			break;
		}
		nanosleep(&(struct timespec){ 0, 5 * 1000 * 1000 }, NULL);
	}
	fcntl(pfd[0], F_SETFL, 0);
	drain(pfd[0], err, len, &n);
	close(pfd[0]);
	return rc;
}

static void member_start(struct kt_member *m, size_t budget, size_t min, size_t pages,
			 size_t demand, size_t limit)
{
	int to[2], from[2], st = 0;
	char c = 0;

	ck_assert_int_eq(pipe(to), 0);
	ck_assert_int_eq(pipe(from), 0);
	fflush(stdout);
	fflush(stderr);
	m->pid = fork();
	ck_assert_int_ge(m->pid, 0);
	if (m->pid == 0) {
		struct kv_alloc_opts o;
		kv_alloc_t *b = NULL;
		CUdeviceptr d;

		close(to[1]);
		close(from[0]);
		kt_share_opts(&o, budget, min, 0, 1, 0, 0);
		o.limit = limit;
		KT_CHILD_CHECK(kv_alloc_create(&o, &b) == 0);
		KT_CHILD_CHECK(kv_alloc_reserve(b, 32 * PG, &d) == 0);
		if (pages)
			KT_CHILD_CHECK(kv_alloc_map(b, d, pages * PG) == 0);
		if (demand)
			kv_alloc_demand(b, demand);
		KT_CHILD_CHECK(write(from[1], "r", 1) == 1);
		/* wait for 'q' (other children may hold copies of the
		 * pipe's write end: no EOF can be counted on) */
		while (read(to[0], &c, 1) == 1 && c != 'q')
			;
		kv_alloc_destroy(b);
		_exit(0);
	}
	close(to[0]);
	close(from[1]);
	if (read(from[0], &c, 1) != 1) {
		waitpid(m->pid, &st, 0);
		ck_abort_msg("member %d failed to join (status 0x%x): see its line above",
			     (int)m->pid, st);
	}
	close(from[0]);
	m->ctl = to[1];
}

void kt_member_start(struct kt_member *m, size_t budget, size_t min, size_t pages)
{
	member_start(m, budget, min, pages, 0, 0);
}

void kt_member_waiting(struct kt_member *m, size_t budget, size_t pages, size_t demand)
{
	member_start(m, budget, 0, pages, demand, 0);
}

void kt_member_limited(struct kt_member *m, size_t budget, size_t limit, size_t pages,
		       size_t demand)
{
	member_start(m, budget, 0, pages, demand, limit);
}

int kt_member_leave(struct kt_member *m)
{
	int st = 0;

	ck_assert_int_eq(write(m->ctl, "q", 1), 1);
	close(m->ctl);
	ck_assert_int_eq(waitpid(m->pid, &st, 0), m->pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

void kt_member_kill(struct kt_member *m)
{
	int st;

	kill(m->pid, SIGKILL);
	ck_assert_int_eq(waitpid(m->pid, &st, 0), m->pid);
	close(m->ctl);
}

struct kv_share *kt_seg_map(void)
{
	struct kv_share *sh;
	int fd = open(kt_path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);

	ck_assert_msg(fd >= 0, "open %s: %s", kt_path, strerror(errno));
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	ck_assert_ptr_ne(sh, MAP_FAILED);
	return sh;
}

void kt_seg_unmap(struct kv_share *sh)
{
	munmap(sh, sizeof(*sh));
}

int kt_slot_of(const struct kv_share *sh, pid_t pid)
{
	int i;

	for (i = 0; i < KV_SHARE_SLOTS; i++)
		if (__atomic_load_n(&sh->slot[i].state, __ATOMIC_ACQUIRE) &&
		    __atomic_load_n(&sh->slot[i].pid, __ATOMIC_ACQUIRE) == pid)
			return i;
	return -1;
}

const struct kv_share_info *kt_seg_read(int reap)
{
	static struct kv_share_info info;
	const char *why = NULL;
	int rc = kv_share_read(kt_path, 0600, reap, &info, &why);

	ck_assert_msg(rc == 0, "kv_share_read %s: %s", kt_path, why);
	return &info;
}

void kt_seg_unlink(void)
{
	unlink(kt_path);
}

double kt_ms_since(const struct timespec *t0)
{
	struct timespec t1;

	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (t1.tv_sec - t0->tv_sec) * 1e3 + (t1.tv_nsec - t0->tv_nsec) / 1e6;
}

void kt_release_child(int fd, pid_t pid, const char *what)
{
	int st;

	ck_assert_int_eq(write(fd, "x", 1), 1);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", what);
}

static FILE *captured;
static int saved_stderr = -1;

void kt_capture_start(void)
{
	fflush(stderr);
	captured = tmpfile();
	ck_assert_ptr_nonnull(captured);
	saved_stderr = dup(2);
	ck_assert_int_ge(saved_stderr, 0);
	ck_assert_int_ge(dup2(fileno(captured), 2), 0);
}

void kt_capture_end(char *out, size_t len)
{
	size_t n;

	fflush(stderr);
	dup2(saved_stderr, 2);
	close(saved_stderr);
	rewind(captured);
	n = fread(out, 1, len - 1, captured);
	out[n] = '\0';
	fclose(captured);
	fputs(out, stderr);
}
