/*
 * bench_handoff.c - how long pages one process lets go of take to become
 * usable by another process under one shared budget (KVSHIM_SHARE's
 * segment). A benchmark, not a test: it prints a table and fails only when
 * a call fails (exit 1), or skips where no driver is (exit 77).
 *
 * Two processes, forked before either touches the driver, share a budget
 * of --pages pages. The giver maps all of them; the taker then maps half
 * as many, which fits only once the giver's pages leave it. Three cases,
 * --trials times each, the taker's time in ms:
 *   - alone: the giver holds nothing (what the map costs without a handoff);
 *   - idle: the giver's pages were let go of (cached) before the taker asks:
 *     the taker's map, from call to return;
 *   - freed: the taker retries while the giver's pages are claimed; the
 *     time runs from the moment the giver let go of them (both clocks are
 *     CLOCK_MONOTONIC) to the taker's map returning.
 * Between trials the taker trims its pages, so that the budget is whole
 * again for the giver.
 *
 * On the CPU emulation (LD_LIBRARY_PATH naming tests/emu) the figures
 * show the program runs and the handoff protocol's delays (the giver's
 * worker looks every 5 ms, a waiting map every 2 ms), nothing about a GPU.
 */
#include <dlfcn.h>
#include <getopt.h>
#include <glob.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "kvshim.h"
#include "shim.h"

#define MAX_TRIALS 1000

enum { ALONE, IDLE, FREED, NCASES };

static const char *const case_name[NCASES] = {
	"alone: nothing to hand over (the map's own cost)",
	"idle: the other's pages let go of before the ask",
	"freed: let go of while this process retries",
};

/* What the two processes share: the giver's last let-go time. */
struct board {
	volatile double freed_ms;
	volatile int giver_failed;
};

static size_t pages = 64, pg;
static int trials = 20;
static char pool_name[32];
static struct board *board;
static int to_taker[2], to_giver[2];

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int open_alloc(kv_alloc_t **a, CUdeviceptr *span)
{
	struct kv_alloc_opts o;
	int rc;

	kv_alloc_opts_default(&o);
	/* no pools: a pooled page would be budget held apart from the case */
	o.pool_low = o.pool_high = 0;
	o.share = 1;
	o.pool_name = pool_name;
	o.page = pg;
	o.budget = pages * (pg ? pg : 2u << 20);
	rc = kv_alloc_create(&o, a);
	if (rc)
		return rc;
	rc = kv_alloc_reserve(*a, o.budget, span);
	if (rc)
		kv_alloc_destroy(*a);
	return rc;
}

/* Whether the driver the allocator loaded is tests/emu's. */
static int on_emulation(void)
{
	void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
	int (*is_emu)(void);
	int yes;

	if (!lib)
		return 0;
	*(void **)&is_emu = dlsym(lib, "kvemu_is_emulation");
	yes = is_emu && is_emu();
	dlclose(lib);
	return yes;
}

static size_t page_bytes(kv_alloc_t *a)
{
	struct kvshim_stats st;

	return kv_alloc_stats(a, &st) ? 0 : st.page_bytes;
}

/* The segment outlives its processes: take it away when done. */
static void unlink_segment(void)
{
	char pattern[96];
	size_t i;
	glob_t g;

	snprintf(pattern, sizeof(pattern), "/dev/shm/kvshim-*-%s", pool_name);
	if (glob(pattern, 0, NULL, &g) == 0) {
		for (i = 0; i < g.gl_pathc; i++)
			unlink(g.gl_pathv[i]);
		globfree(&g);
	}
}

static int say(int fd, char c)
{
	return write(fd, &c, 1) == 1 ? 0 : -1;
}

static char hear(int fd)
{
	char c = 'x';

	return read(fd, &c, 1) == 1 ? c : 'x';
}

/* The giver: maps the whole budget when told, lets go when told. */
static int giver(void)
{
	kv_alloc_t *a;
	CUdeviceptr s;
	size_t all;
	int rc = open_alloc(&a, &s);
	char c;

	if (rc) {
		fprintf(stderr, "bench-handoff: giver: %s\n", kv_shim_strerror(rc));
		board->giver_failed = 1;
		say(to_taker[1], 'x');
		return rc == KVSHIM_ENODEV ? 77 : 1;
	}
	all = pages * page_bytes(a);
	say(to_taker[1], 'r');
	while ((c = hear(to_giver[0])) != 'q') {
		switch (c) {
		case 'm':       /* hold the whole budget */
			rc = kv_alloc_map(a, s, all);
			break;
		case 'u':       /* let go of it */
			rc = kv_alloc_unmap(a, s, all);
			board->freed_ms = now_ms();
			break;
		case 't':       /* give back what is left (none, normally) */
			rc = kv_alloc_trim(a, SIZE_MAX, NULL);
			break;
		default:
			rc = KVSHIM_ESTATE;
		}
		if (rc)
			fprintf(stderr, "bench-handoff: giver '%c': %s\n", c, kv_shim_strerror(rc));
		say(to_taker[1], rc ? 'x' : 'k');
	}
	kv_alloc_destroy(a);
	return 0;
}

static int ask(char c)
{
	if (say(to_giver[1], c) || hear(to_taker[0]) != 'k') {
		fprintf(stderr, "bench-handoff: the giver failed at '%c'\n", c);
		return -1;
	}
	return 0;
}

static int cmp(const void *x, const void *y)
{
	double a = *(const double *)x, b = *(const double *)y;

	return (a > b) - (a < b);
}

static double pct(const double *v, int n, double p)
{
	int i = (int)(p * (n - 1) + 0.5);

	return v[i];
}

/* The taker: runs the cases, prints the table. */
static int taker(void)
{
	static double t[NCASES][MAX_TRIALS];
	struct timespec nap = { 0, 100 * 1000 };
	kv_alloc_t *a;
	CUdeviceptr s;
	size_t half;
	double t0;
	int k, i, rc;

	if (hear(to_taker[0]) != 'r')
		return board->giver_failed ? 77 : 1;
	rc = open_alloc(&a, &s);
	if (rc) {
		fprintf(stderr, "bench-handoff: taker: %s\n", kv_shim_strerror(rc));
		return rc == KVSHIM_ENODEV ? 77 : 1;
	}
	half = pages / 2 * page_bytes(a);
	for (k = 0; k < NCASES; k++) {
		for (i = 0; i < trials; i++) {
			if (k != ALONE && ask('m'))
				goto fail;
			if (k == IDLE && ask('u'))
				goto fail;
			t0 = now_ms();
			if (k == FREED) {
				if (say(to_giver[1], 'u'))
					goto fail;
				while ((rc = kv_alloc_map(a, s, half)) == KVSHIM_ELIMIT)
					nanosleep(&nap, NULL);
				if (hear(to_taker[0]) != 'k')
					goto fail;
				t0 = board->freed_ms;
			} else {
				rc = kv_alloc_map(a, s, half);
			}
			t[k][i] = now_ms() - t0;
			if (rc) {
				fprintf(stderr, "bench-handoff: %s: map: %s\n", case_name[k],
					kv_shim_strerror(rc));
				goto fail;
			}
			rc = kv_alloc_unmap(a, s, half);
			if (!rc)
				rc = kv_alloc_trim(a, SIZE_MAX, NULL);
			if (rc || (k != ALONE && ask('t')))
				goto fail;
		}
		qsort(t[k], trials, sizeof(double), cmp);
	}
	printf("bench-handoff: budget %zu MiB (%zu pages of %zu MiB), %zu pages handed over, "
	       "%d trials, %s\n", pages * page_bytes(a) >> 20, pages,
	       page_bytes(a) >> 20, pages / 2, trials,
	       on_emulation() ? "CPU emulation" : "CUDA driver");
	printf("| case | median ms | p90 ms | max ms |\n| --- | --- | --- | --- |\n");
	for (k = 0; k < NCASES; k++)
		printf("| %s | %.2f | %.2f | %.2f |\n", case_name[k],
		       pct(t[k], trials, 0.5), pct(t[k], trials, 0.9), t[k][trials - 1]);
	kv_alloc_destroy(a);
	return 0;
fail:
	kv_alloc_destroy(a);
	return 1;
}

int main(int argc, char **argv)
{
	static const struct option longs[] = {
		{ "pages", required_argument, NULL, 'p' },
		{ "trials", required_argument, NULL, 't' },
		{ "page-mib", required_argument, NULL, 'g' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	int c, st = 0, rc;
	pid_t pid;
	char *end;
	long v;

	while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
		if (c == 'h' || c == '?') {
			fprintf(c == 'h' ? stdout : stderr,
				"usage: bench-handoff [--pages N (even, >= 2)] [--trials N (1-%d)] "
				"[--page-mib N]\n", MAX_TRIALS);
			return c == 'h' ? 0 : 2;
		}
		v = strtol(optarg, &end, 10);
		if (*end || end == optarg || v < 1 ||
		    (c == 'p' && (v < 2 || v % 2 || v > 65536)) ||
		    (c == 't' && v > MAX_TRIALS) || (c == 'g' && v > 1024)) {
			fprintf(stderr, "bench-handoff: --%s %s: out of range (see --help)\n",
				c == 'p' ? "pages" : c == 't' ? "trials" : "page-mib", optarg);
			return 2;
		}
		if (c == 'p')
			pages = (size_t)v;
		else if (c == 't')
			trials = (int)v;
		else
			pg = (size_t)v << 20;
	}
	snprintf(pool_name, sizeof(pool_name), "handoff-%d", (int)getpid());
	board = mmap(NULL, sizeof(*board), PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (board == MAP_FAILED || pipe(to_taker) || pipe(to_giver)) {
		perror("bench-handoff");
		return 1;
	}
	pid = fork();
	if (pid < 0) {
		perror("bench-handoff: fork");
		return 1;
	}
	if (pid == 0)
		_exit(giver());
	rc = taker();
	say(to_giver[1], 'q');
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st)) {
		kill(pid, SIGKILL);
		unlink_segment();
		return 1;
	}
	unlink_segment();
	if (rc == 0 && WEXITSTATUS(st) != 0)
		rc = WEXITSTATUS(st);
	return rc;
}
