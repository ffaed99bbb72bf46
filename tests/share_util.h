/*
 * share_util.h - what the shared-budget tests (test_share.c,
 * test_share_trust.c) share: a pool of their own per test, processes that
 * join it, children run with a deadline and their stderr captured, and
 * raw access to the segment, as a hostile member would have; and kvshim's
 * log of a call captured (test_api.c and test_multidev.c use it too).
 *
 * Code in a forked child never calls ck_assert (its failure would reach
 * Check from the wrong process): it reports with KT_CHILD_CHECK, which
 * prints the line and the condition on stderr and exits 1.
 */
#ifndef KV_TEST_SHARE_UTIL_H
#define KV_TEST_SHARE_UTIL_H

#include <sys/types.h>
#include <time.h>

#include "share.h"
#include "suites.h"

#define KT_CHILD_CHECK(cond) do {                                             \
		if (!(cond)) {                                                \
			fprintf(stderr, "child %d: check failed at %s:%d: %s\n", \
				(int)getpid(), __FILE__, __LINE__, #cond);    \
			_exit(1);                                             \
		}                                                             \
	} while (0)

/* The current test's pool name and its segment's path. */
extern char kt_pool[40];
extern char kt_path[256];

/* Call on each share test case, in the runner: pool names start with the
 * runner's pid, and once the case has run (in the runner), its tests'
 * segments are removed, those of tests that failed too (Check ends a
 * failed test's process without running its exit handlers). */
void kt_share_fixture(TCase *tc);

/* A fresh pool name (unique to this process and call), and its path. */
void kt_new_pool(void);

/* kt_new_pool, and two pipes for a test and the child it forks (parent to
 * child, child to parent), failing the test if one cannot be made. */
void kt_new_pool_pipes(int p2c[2], int c2p[2]);

/* Options for an allocator sharing the test pool's budget: budget bytes,
 * a floor of min, a ceiling of max (0: none), a weight, a worker if
 * worker, segment mode (0: 0600); the rest kt_opts'. */
void kt_share_opts(struct kv_alloc_opts *o, size_t budget, size_t min, size_t max,
		   unsigned weight, int worker, unsigned mode);

/* An allocator in the current pool: budget, floor, ceiling, worker, and the
 * segment mode (0: 0600). Returns kv_alloc_create's code. */
int kt_mk(size_t budget, size_t min, size_t max, int worker, unsigned mode,
	  kv_alloc_t **out);

/* kt_mk with a weight in the fair shares (mode 0600). */
int kt_mk_weight(size_t budget, size_t min, size_t max, unsigned weight,
		 int worker, kv_alloc_t **out);

/* kt_mk with mode 0600, failing the test on error (not in a child). */
kv_alloc_t *kt_make(size_t budget, size_t min, size_t max, int worker);

/* Run fn(arg) in a child, its stderr (log level warn) captured into err (len
 * bytes, NUL-terminated; may be NULL), for at most secs seconds, then it is
 * killed. Returns its exit status, 128 + the signal that ended it, or -1
 * when it ran out of time. */
int kt_in_child(int (*fn)(void *), void *arg, int secs, char *err, size_t len);

/* A process that joined the pool and maps pages pages, then waits. */
struct kt_member {
	pid_t pid;
	int ctl;     /* the test's end of its control pipe */
};

/* Start a member (budget, floor) mapping pages pages; returns once it has. */
void kt_member_start(struct kt_member *m, size_t budget, size_t min, size_t pages);

/* kt_member_start, the member then stating demand bytes it waits for. */
void kt_member_waiting(struct kt_member *m, size_t budget, size_t pages, size_t demand);

/* kt_member_waiting for a member whose KVSHIM_LIMIT is limit bytes (0:
 * the default, the device's memory). */
void kt_member_limited(struct kt_member *m, size_t budget, size_t limit, size_t pages,
		       size_t demand);

/* Ask a member to leave (close its allocator and exit). Returns its exit
 * status (0: it left cleanly). */
int kt_member_leave(struct kt_member *m);

/* SIGKILL a member and collect it. */
void kt_member_kill(struct kt_member *m);

/* The segment at kt_path mapped read-write, as any member could. */
struct kv_share *kt_seg_map(void);
void kt_seg_unmap(struct kv_share *sh);

/* The slot pid's process uses in sh, or -1. */
int kt_slot_of(const struct kv_share *sh, pid_t pid);

/* The segment read through the library's reader (reaping the dead when
 * reap), failing the test if it cannot be read. The result lives until the
 * next call. */
const struct kv_share_info *kt_seg_read(int reap);

/* Remove the current pool's segment. */
void kt_seg_unlink(void);

/* Milliseconds since t0 (CLOCK_MONOTONIC). */
double kt_ms_since(const struct timespec *t0);

/* Let a forked child that waits to read fd go on, wait for it, and check
 * that it exited 0 (what names what its failure means). */
void kt_release_child(int fd, pid_t pid, const char *what);

/* Send stderr (kvshim's log) to a file until kt_capture_end. */
void kt_capture_start(void);

/* Put stderr back; what was written meanwhile into out (len bytes, NUL
 * ended), also copied to stderr for the test log. */
void kt_capture_end(char *out, size_t len);

#endif /* KV_TEST_SHARE_UTIL_H */
