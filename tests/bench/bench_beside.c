/*
 * bench_beside.c - how long a claim on a page already backed takes while
 * another thread of the process backs new pages: what an engine's take of
 * a block on a mapped page, or its free, waits for while the adapter's
 * thread backs the next prefill's blocks (a row of --pages new pages at a
 * time). A benchmark, not a test: it prints a table and fails only when a
 * call fails (exit 1), or skips where no driver is (exit 77).
 *
 * One allocator, no worker and no pool, so that every page the mapper
 * backs is made, scrubbed and mapped in its map: the mapper thread maps a
 * row of --pages pages of its span, drops its claims and trims them back
 * to the driver, over and over. The prober (the main thread) claims a
 * block of a page it keeps backed and drops the claim (kv_alloc_map then
 * kv_alloc_unmap), every 200 us, for --seconds: first alone (quiet), then
 * beside the mapper. Each probe's time, call to return, in us: median,
 * p99 and the longest, and the mapper's rows and its time per row.
 *
 * On the CPU emulation (LD_LIBRARY_PATH naming tests/emu) the figures
 * show the program runs, nothing about a GPU.
 */
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "devmem.h"
#include "shim.h"

#define MAX_PROBES 200000

static size_t pages = 48, pg;
static double seconds = 2.0;
static kv_alloc_t *a;
static CUdeviceptr row, probe;
static int stop, failed;
static unsigned long rows;
static double row_us;

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void *mapper(void *arg)
{
	size_t freed, len = pages * pg;
	double t0, took = 0;
	int rc = 0;

	(void)arg;
	while (!rc && !__atomic_load_n(&stop, __ATOMIC_ACQUIRE)) {
		t0 = now_us();
		rc = kv_alloc_map(a, row, len);
		took += now_us() - t0;
		if (!rc)
			rc = kv_alloc_unmap(a, row, len);
		if (!rc)
			rc = kv_alloc_trim(a, len, &freed);
		rows += !rc;
	}
	if (rc) {
		fprintf(stderr, "bench-beside: the mapper's row: %s\n", kv_shim_strerror(rc));
		__atomic_store_n(&failed, 1, __ATOMIC_RELEASE);
	}
	row_us = rows ? took / rows : 0;
	return NULL;
}

static int cmp_double(const void *p, const void *q)
{
	double x = *(const double *)p, y = *(const double *)q;

	return (x > y) - (x < y);
}

/* Probe for --seconds; the times, sorted, in t. Returns how many, or -1. */
static long probe_for(double *t)
{
	struct timespec gap = { 0, 200 * 1000 };
	double end = now_us() + seconds * 1e6, t0;
	long n = 0;

	while (n < MAX_PROBES && now_us() < end) {
		t0 = now_us();
		if (kv_alloc_map(a, probe + pg / 2, pg / 4) ||
		    kv_alloc_unmap(a, probe + pg / 2, pg / 4))
			return -1;
		t[n++] = now_us() - t0;
		nanosleep(&gap, NULL);
	}
	qsort(t, n, sizeof(*t), cmp_double);
	return n;
}

static void print_row(const char *what, const double *t, long n)
{
	printf("| %s | %ld | %.1f | %.1f | %.1f |", what, n, t[n / 2],
	       t[(long)(0.99 * (n - 1))], t[n - 1]);
}

static int run(void)
{
	struct kv_alloc_opts o;
	struct kvshim_stats st;
	double *quiet, *beside;
	long nq, nb;
	pthread_t th;
	int rc;

	kv_alloc_opts_default(&o);
	o.pool_low = o.pool_high = 0;
	o.worker = 0;
	o.page = pg;
	if ((rc = kv_alloc_create(&o, &a))) {
		fprintf(stderr, "bench-beside: the allocator: %s\n", kv_shim_strerror(rc));
		return 1;
	}
	kv_alloc_stats(a, &st);
	pg = st.page_bytes;
	quiet = malloc(MAX_PROBES * sizeof(*quiet));
	beside = malloc(MAX_PROBES * sizeof(*beside));
	rc = !quiet || !beside;
	if (!rc)
		rc = kv_alloc_reserve(a, pages * pg, &row) ||
		     kv_alloc_reserve(a, pg, &probe) || kv_alloc_map(a, probe, pg / 4);
	if (rc) {
		fprintf(stderr, "bench-beside: setting up: out of memory or address space\n");
		return 1;
	}
	nq = probe_for(quiet);
	rc = nq < 1 || pthread_create(&th, NULL, mapper, NULL);
	if (!rc) {
		nb = probe_for(beside);
		__atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
		pthread_join(th, NULL);
		rc = nb < 1 || __atomic_load_n(&failed, __ATOMIC_ACQUIRE);
	}
	if (rc) {
		fprintf(stderr, "bench-beside: a probe or the mapper failed\n");
		return 1;
	}
	printf("bench-beside: %s, pages of %zu MiB, the mapper's rows of %zu pages\n",
	       kv_dev_is_emu() ? "CPU emulation" : kv_dev_describe(), pg >> 20, pages);
	printf("| prober | probes | median us | p99 us | longest us | mapper rows | us per row |\n"
	       "| --- | --- | --- | --- | --- | --- | --- |\n");
	print_row("quiet", quiet, nq);
	printf(" - | - |\n");
	print_row("beside the mapper", beside, nb);
	printf(" %lu | %.0f |\n", rows, row_us);
	free(quiet);
	free(beside);
	kv_alloc_destroy(a);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longs[] = {
		{ "pages", required_argument, NULL, 'p' },
		{ "seconds", required_argument, NULL, 's' },
		{ "page-mib", required_argument, NULL, 'g' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	char *end;
	double v;
	int c;

	while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
		if (c == 'h' || c == '?') {
			fprintf(c == 'h' ? stdout : stderr,
				"usage: bench-beside [--pages N (1-4096)] [--seconds S (0.1-60)] "
				"[--page-mib N (even)]\n");
			return c == 'h' ? 0 : 2;
		}
		v = strtod(optarg, &end);
		if (*end || end == optarg ||
		    (c == 'p' && (v < 1 || v > 4096 || v != (size_t)v)) ||
		    (c == 's' && !(v >= 0.1 && v <= 60)) ||
		    (c == 'g' && (v < 2 || v > 1024 || v != (size_t)v || (size_t)v % 2))) {
			fprintf(stderr, "bench-beside: --%s %s: out of range (see --help)\n",
				c == 'p' ? "pages" : c == 's' ? "seconds" : "page-mib", optarg);
			return 2;
		}
		if (c == 'p')
			pages = (size_t)v;
		else if (c == 's')
			seconds = v;
		else
			pg = (size_t)v << 20;
	}
	if (optind < argc) {
		fprintf(stderr, "bench-beside: %s: no such argument (see --help)\n", argv[optind]);
		return 2;
	}
	if (kv_dev_open()) {
		fprintf(stderr, "bench-beside: no CUDA driver or device\n");
		return 77;
	}
	c = run();
	kv_dev_close();
	return c;
}
