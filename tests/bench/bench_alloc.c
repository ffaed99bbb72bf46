/*
 * bench_alloc.c - what backing and releasing a 2 MiB page costs through
 * kvshim's allocator, next to the driver's floor for the same work and the
 * patterns kvshim replaces (VMM pages mapped one by one, as kvcached does,
 * and one cudaMalloc). A benchmark, not a test: it prints a table and fails
 * only when a call fails (exit 1), or skips where no driver is (exit 77).
 *
 * The same binary runs on a GPU and on the CPU emulation (LD_LIBRARY_PATH
 * naming tests/emu); there its figures prove the program runs, nothing
 * about speed. VMM calls are host-synchronous, so they are timed with the
 * monotonic clock; copies are timed with events.
 */
#include <dlfcn.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "devmem.h"
#include "shim.h"

#define MAX_REPS 100
#define MAX_FIGS 32
#define BLOCK ((size_t)512 << 10)
#define MIB ((size_t)1 << 20)

/* ---- options and the driver --------------------------------------------- */

static size_t npages = 512, copy_mib = 1024, page_mib;
static int reps = 5;
static const char *csv_path;
static size_t pg;               /* allocation granularity */
static CUmemAllocationProp prop;
static CUmemAccessDesc rw;

/* Driver entry points, typed from cuda.h's own declarations. The fields
 * carry plain names because cuda.h renames several functions by macro. */
#define FN(name) __typeof__(name) *
static struct {
	FN(cuMemCreate) create;
	FN(cuMemMap) map;
	FN(cuMemSetAccess) access;
	FN(cuMemUnmap) unmap;
	FN(cuMemRelease) release;
	FN(cuMemAddressReserve) reserve;
	FN(cuMemAddressFree) addr_free;
	FN(cuMemAlloc_v2) alloc;
	FN(cuMemFree_v2) free;
	FN(cuMemcpyDtoDAsync_v2) copy_async;
	FN(cuEventCreate) ev_create;
	FN(cuEventRecord) ev_record;
	FN(cuEventSynchronize) ev_sync;
	FN(cuEventElapsedTime_v2) ev_elapsed;
	FN(cuEventDestroy_v2) ev_destroy;
	FN(cuCtxSynchronize) ctx_sync;
	FN(cuGetErrorName) err_name;
	FN(cuMemGetAllocationGranularity) gran;
} D;

static void die(const char *what, const char *why, int line)
{
	fprintf(stderr, "bench-alloc: line %d: %s failed: %s\n", line, what,
		why);
	exit(1);
}

static void cu_check(CUresult r, const char *what, int line)
{
	const char *name = NULL;
	char buf[64];

	if (r == CUDA_SUCCESS)
		return;
	if (D.err_name)
		D.err_name(r, &name);
	snprintf(buf, sizeof(buf), "%s (%d)", name ? name : "CUresult", (int)r);
	die(what, buf, line);
}

/* kvshim's codes (negative) and cudaError_t (positive); 0 is success */
static void kv_check(int rc, const char *what, int line)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "cudaError_t %d", rc);
	if (rc)
		die(what, rc < 0 ? kv_shim_strerror(rc) : buf, line);
}

#define CU(call) cu_check((call), #call, __LINE__)
#define KV(call) kv_check((call), #call, __LINE__)
#define RT(call) kv_check((call), #call, __LINE__)

/* The driver's function name, or else alt (an older name for it). */
static void *sym(const char *name, const char *alt)
{
	void *f = kv_dev_sym(name);

	if (!f && alt)
		f = kv_dev_sym(alt);
	if (!f)
		die("looking up the driver function", name, __LINE__);
	return f;
}

#define LOAD(f, name, alt) (*(void **)&D.f = sym(name, alt))

static void load_driver(void)
{
	LOAD(err_name, "cuGetErrorName", NULL);
	LOAD(create, "cuMemCreate", NULL);
	LOAD(map, "cuMemMap", NULL);
	LOAD(access, "cuMemSetAccess", NULL);
	LOAD(unmap, "cuMemUnmap", NULL);
	LOAD(release, "cuMemRelease", NULL);
	LOAD(reserve, "cuMemAddressReserve", NULL);
	LOAD(addr_free, "cuMemAddressFree", NULL);
	LOAD(alloc, "cuMemAlloc_v2", NULL);
	LOAD(free, "cuMemFree_v2", NULL);
	LOAD(copy_async, "cuMemcpyDtoDAsync_v2", NULL);
	LOAD(ev_create, "cuEventCreate", NULL);
	LOAD(ev_record, "cuEventRecord", NULL);
	LOAD(ev_sync, "cuEventSynchronize", NULL);
	LOAD(ev_elapsed, "cuEventElapsedTime_v2", "cuEventElapsedTime");
	LOAD(ev_destroy, "cuEventDestroy_v2", NULL);
	LOAD(ctx_sync, "cuCtxSynchronize", NULL);
	LOAD(gran, "cuMemGetAllocationGranularity", NULL);

	prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
	prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	prop.location.id = 0;           /* devmem works on device 0 */
	rw.location = prop.location;
	rw.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
	CU(D.gran(&pg, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
}

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* ---- figures: one per table row, a value per rep ------------------------- */

struct fig {
	const char *name;
	const char *unit;        /* "page", "call" or "GB/s" */
	double per;              /* divisor of the total, or bytes for GB/s */
	unsigned long calls;     /* API calls inside one timed rep */
	int n;
	double total_us[MAX_REPS];
	double value[MAX_REPS];
};

static struct fig figs[MAX_FIGS];
static int nfigs;

static struct fig *fig_new(const char *name, const char *unit, double per,
			   unsigned long calls)
{
	struct fig *f = &figs[nfigs++];

	f->name = name;
	f->unit = unit;
	f->per = per;
	f->calls = calls;
	return f;
}

static int is_bw(const struct fig *f)
{
	return strcmp(f->unit, "GB/s") == 0;
}

static void fig_add(struct fig *f, double total_us)
{
	if (f->n == MAX_REPS)
		return;
	f->total_us[f->n] = total_us;
	/* bytes / (us * 1e3) is GB/s */
	f->value[f->n++] = is_bw(f) ? f->per / (total_us * 1e3)
				    : total_us / f->per;
}

static int cmp_double(const void *x, const void *y)
{
	double a = *(const double *)x, b = *(const double *)y;

	return (a > b) - (a < b);
}

/* Median (of an even count, the mean of the middle two), min and max of
 * f's values, or of its totals when totals is set. */
static void fig_stats(const struct fig *f, int totals, double *med,
		      double *lo, double *hi)
{
	double v[MAX_REPS];
	int n = f->n;

	memcpy(v, totals ? f->total_us : f->value, n * sizeof(*v));
	qsort(v, n, sizeof(*v), cmp_double);
	*med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
	*lo = v[0];
	*hi = v[n - 1];
}

static double fig_median(const struct fig *f)
{
	double m, lo, hi;

	fig_stats(f, 0, &m, &lo, &hi);
	return m;
}

/* The rows, made up front so that they print in this order. */
static struct {
	struct fig *floor, *map, *blk_pg, *blk_call, *nozero, *rel, *rel_blk,
		*trim, *tick, *st, *pbp_map, *pbp_rel, *rt_alloc, *rt_free,
		*bw_alloc, *bw_span, *bw_span_nz, *bw_raw, *d_map, *d_access, *d_access_pp, *d_unmap,
		*d_unmap_pp, *d_create, *d_release;
} R;

static void make_rows(int have_rt)
{
	unsigned long n = npages, n4 = 4 * npages;
	double bw = 2.0 * copy_mib * MIB;

	R.floor = fig_new("driver floor: N map + 1 set access", "page", n,
			  n + 1);
	R.d_map = fig_new("  of which N cuMemMap", "page", n, n);
	R.d_access = fig_new("  of which 1 cuMemSetAccess over N pages", "page", n, 1);
	R.d_access_pp = fig_new("driver: cuMemSetAccess page by page", "page", n, n);
	R.d_unmap = fig_new("driver: 1 cuMemUnmap over N pages", "page", n, 1);
	R.d_unmap_pp = fig_new("driver: cuMemUnmap page by page", "page", n, n);
	R.d_create = fig_new("driver: cuMemCreate", "page", n, n);
	R.d_release = fig_new("driver: cuMemRelease", "page", n, n);
	R.map = fig_new("kvshim map, pool warm, zero on", "page", n, 1);
	R.blk_pg = fig_new("kvshim map, block by block", "page", n, n4);
	R.blk_call = fig_new("  the same, per 512 KiB call", "call", n4, n4);
	R.nozero = fig_new("kvshim map, pool warm, zero off", "page", n, 1);
	R.rel = fig_new("kvshim release, caller's path", "page", n, 1);
	R.rel_blk = fig_new("  block by block, per 512 KiB call", "call", n4,
			    n4);
	R.trim = fig_new("kvshim trim (off path): unmap+release", "page", n, 1);
	/* a tick scrubs up to 64 pages */
	R.tick = fig_new("kvshim scrub (off path): ticks", "page", n,
			 (n + 63) / 64);
	R.st = fig_new("kvshim scrub: stats zero_ns/pages", "page", n, 0);
	R.pbp_map = fig_new("(a) page by page: create+map+access", "page", n,
			    3 * n);
	R.pbp_rel = fig_new("(a) page by page: unmap+release", "page", n, 2 * n);
	R.rt_alloc = fig_new(have_rt ? "(b) cudaMalloc, one allocation" :
			     "(b) cuMemAlloc (no libcudart.so.13)", "page", n, 1);
	R.rt_free = fig_new(have_rt ? "(b) cudaFree" : "(b) cuMemFree", "page",
			    n, 1);
	R.bw_alloc = fig_new("region from cuMemAlloc", "GB/s", bw, 1);
	R.bw_span = fig_new("region = kvshim span, mapped", "GB/s", bw, 1);
	R.bw_span_nz = fig_new("  the same, zero off (no arena mapping)", "GB/s",
			       bw, 1);
	R.bw_raw = fig_new("region = one cuMemCreate handle, mapped", "GB/s",
			   bw, 1);
}

/* ---- 1 and 7: the driver alone ------------------------------------------- */

static CUdeviceptr reserve_va(size_t bytes)
{
	CUdeviceptr va;

	CU(D.reserve(&va, bytes, pg, 0, 0));
	return va;
}

/* The floor for mapping N ready handles: N maps and one access call over
 * the contiguous range, the least any pool-based design can do. */
static void floor_rep(CUmemGenericAllocationHandle *h, CUdeviceptr va)
{
	double t = now_us(), t1, t2;
	size_t i;

	for (i = 0; i < npages; i++)
		CU(D.map(va + i * pg, pg, 0, h[i], 0));
	t1 = now_us();
	CU(D.access(va, npages * pg, &rw, 1));
	t2 = now_us();
	fig_add(R.floor, t2 - t);
	fig_add(R.d_map, t1 - t);
	fig_add(R.d_access, t2 - t1);
	CU(D.unmap(va, npages * pg));
	fig_add(R.d_unmap, now_us() - t2);

	/* the same with access and unmap page by page */
	for (i = 0; i < npages; i++)
		CU(D.map(va + i * pg, pg, 0, h[i], 0));
	t = now_us();
	for (i = 0; i < npages; i++)
		CU(D.access(va + i * pg, pg, &rw, 1));
	t1 = now_us();
	for (i = 0; i < npages; i++)
		CU(D.unmap(va + i * pg, pg));
	t2 = now_us();
	fig_add(R.d_access_pp, t1 - t);
	fig_add(R.d_unmap_pp, t2 - t1);
}

/* What kvcached does: every page created, mapped and made accessible on
 * its own, then unmapped and released on its own. */
static void page_by_page_rep(CUmemGenericAllocationHandle *h, CUdeviceptr va)
{
	double t = now_us();
	size_t i;

	for (i = 0; i < npages; i++) {
		CU(D.create(&h[i], pg, &prop, 0));
		CU(D.map(va + i * pg, pg, 0, h[i], 0));
		CU(D.access(va + i * pg, pg, &rw, 1));
	}
	fig_add(R.pbp_map, now_us() - t);
	t = now_us();
	for (i = 0; i < npages; i++) {
		CU(D.unmap(va + i * pg, pg));
		CU(D.release(h[i]));
	}
	fig_add(R.pbp_rel, now_us() - t);
}

static void bench_driver(void)
{
	CUmemGenericAllocationHandle *h = calloc(npages, sizeof(*h));
	CUdeviceptr va = reserve_va(npages * pg);
	size_t i;
	int r;

	if (!h)
		die("calloc", "out of memory", __LINE__);
	for (r = 0; r < reps; r++) {
		double t = now_us();

		for (i = 0; i < npages; i++)
			CU(D.create(&h[i], pg, &prop, 0));
		fig_add(R.d_create, now_us() - t);
		floor_rep(h, va);
		t = now_us();
		for (i = 0; i < npages; i++)
			CU(D.release(h[i]));
		fig_add(R.d_release, now_us() - t);
	}
	for (r = 0; r < reps; r++)
		page_by_page_rep(h, va);
	CU(D.addr_free(va, npages * pg));
	free(h);
}

/* ---- 8: one cudaMalloc ---------------------------------------------------- */

typedef int (*rt_malloc_fn)(void **, size_t);
typedef int (*rt_free_fn)(void *);

/* The runtime as an engine loads it; the toolkit's copy is tried too, as a
 * GPU machine may not have it on the loader's path. Returns NULL if none. */
static void *open_cudart(rt_malloc_fn *m, rt_free_fn *fr)
{
	static const char *const names[] = {
		"libcudart.so.13", "/usr/local/cuda/lib64/libcudart.so.13"
	};
	size_t i;
	void *h;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
		if (!h)
			continue;
		*(void **)m = dlsym(h, "cudaMalloc");
		*(void **)fr = dlsym(h, "cudaFree");
		if (*m && *fr)
			return h;
		dlclose(h);
	}
	return NULL;
}

static void bench_cudamalloc(void *rt, rt_malloc_fn rt_malloc,
			     rt_free_fn rt_free)
{
	size_t bytes = npages * pg;
	CUdeviceptr d;
	void *p;
	double t;
	int r;

	if (rt)
		RT(rt_free(NULL));      /* starts the runtime, untimed */
	for (r = 0; r < reps; r++) {
		t = now_us();
		if (rt)
			RT(rt_malloc(&p, bytes));
		else
			CU(D.alloc(&d, bytes));
		fig_add(R.rt_alloc, now_us() - t);
		t = now_us();
		if (rt)
			RT(rt_free(p));
		else
			CU(D.free(d));
		fig_add(R.rt_free, now_us() - t);
	}
}

/* ---- 2-6: kvshim's allocator ---------------------------------------------- */

/* An allocator whose pool holds exactly N pages and with no worker, so
 * every driver call is the benchmark's own and none races a timing. */
static kv_alloc_t *make_alloc(int zero)
{
	struct kv_alloc_opts o;
	kv_alloc_t *a;

	kv_alloc_opts_default(&o);
	o.pool_low = o.pool_high = npages * pg;
	o.page = page_mib * MIB;
	o.zero = zero;
	o.worker = 0;
	KV(kv_alloc_create(&o, &a));
	KV(kv_alloc_tick(a));
	return a;
}

static struct kvshim_stats stats(kv_alloc_t *a)
{
	struct kvshim_stats s;

	KV(kv_alloc_stats(a, &s));
	return s;
}

/* A map that is to measure the warm pool must find all N pages there. */
static void expect_pool_full(kv_alloc_t *a)
{
	struct kvshim_stats s = stats(a);

	if (s.pooled_bytes != npages * pg || s.mapped_bytes != 0)
		die("filling the pool", "pool not at N pages", __LINE__);
}

/* Run ticks until n more pages have been scrubbed: a tick scrubs at most a
 * batch of pages, so one is not enough. */
static void scrub_all(kv_alloc_t *a, unsigned long long n)
{
	unsigned long long z0 = stats(a).pages_zeroed;
	unsigned long long ticks = 0;

	/* n counts 2 MiB pages; the allocator counts its own */
	if (page_mib)
		n /= page_mib * MIB / pg;

	while (stats(a).pages_zeroed - z0 < n) {
		KV(kv_alloc_tick(a));
		if (++ticks > n)
			die("scrubbing", "ticks make no progress", __LINE__);
	}
}

static void map_blocks(kv_alloc_t *a, CUdeviceptr s, int claim)
{
	size_t off;

	for (off = 0; off < npages * pg; off += BLOCK) {
		if (claim)
			KV(kv_alloc_map(a, s + off, BLOCK));
		else
			KV(kv_alloc_unmap(a, s + off, BLOCK));
	}
}

/*
 * One rep with zeroing on, in an order that leaves each step the state it
 * measures: a full clean pool for the maps, cached pages for trim, written
 * pages in the dirty pool for the scrub. *span is released at the end (to
 * dirty its pages) and replaced by a new span.
 */
static void zero_rep(kv_alloc_t *a, CUdeviceptr *span, unsigned seed)
{
	size_t bytes = npages * pg, freed = 0;
	unsigned long long z0;
	double t;

	expect_pool_full(a);
	t = now_us();
	KV(kv_alloc_map(a, *span, bytes));
	fig_add(R.map, now_us() - t);
	t = now_us();
	KV(kv_alloc_unmap(a, *span, bytes));
	fig_add(R.rel, now_us() - t);
	t = now_us();
	KV(kv_alloc_trim(a, bytes, &freed));
	fig_add(R.trim, now_us() - t);
	if (freed != bytes)
		die("kv_alloc_trim", "the N cached pages were not freed",
		    __LINE__);

	KV(kv_alloc_tick(a));   /* refill: create and scrub N pages */
	expect_pool_full(a);
	t = now_us();
	map_blocks(a, *span, 1);
	t = now_us() - t;
	fig_add(R.blk_pg, t);
	fig_add(R.blk_call, t);
	t = now_us();
	map_blocks(a, *span, 0);
	fig_add(R.rel_blk, now_us() - t);

	/* claim the cached pages again, write them, release them dirty */
	KV(kv_alloc_map(a, *span, bytes));
	CU(kv_dev_fill(*span, bytes, seed));
	KV(kv_alloc_release(a, *span));
	z0 = stats(a).zero_ns;
	t = now_us();
	scrub_all(a, npages);
	fig_add(R.tick, now_us() - t);
	fig_add(R.st, (stats(a).zero_ns - z0) / 1e3);
	KV(kv_alloc_reserve(a, bytes, span));
}

static void bench_kvshim_zero(void)
{
	kv_alloc_t *a = make_alloc(1);
	CUdeviceptr span;
	int r;

	KV(kv_alloc_reserve(a, npages * pg, &span));
	for (r = 0; r < reps; r++)
		zero_rep(a, &span, 0x5eed + r);
	KV(kv_alloc_release(a, span));
	kv_alloc_destroy(a);
}

static void bench_kvshim_nozero(void)
{
	kv_alloc_t *a = make_alloc(0);
	CUdeviceptr span;
	double t;
	int r;

	for (r = 0; r < reps; r++) {
		KV(kv_alloc_reserve(a, npages * pg, &span));
		expect_pool_full(a);
		t = now_us();
		KV(kv_alloc_map(a, span, npages * pg));
		fig_add(R.nozero, now_us() - t);
		/* without zeroing, released pages go back to the pool clean */
		KV(kv_alloc_release(a, span));
	}
	kv_alloc_destroy(a);
}

/* ---- 9: copy bandwidth ---------------------------------------------------- */

static double copy_us(CUdeviceptr base, size_t m, CUevent e0, CUevent e1)
{
	float ms = 0;

	CU(D.ev_record(e0, NULL));
	CU(D.copy_async(base + m, base, m, NULL));
	CU(D.ev_record(e1, NULL));
	CU(D.ev_sync(e1));
	CU(D.ev_elapsed(&ms, e0, e1));
	return ms * 1e3;
}

/* Copies alternate between the two regions, many reps of each, so that
 * clock and thermal drift fall on both alike. */
#define COPY_REPS 21

/* The destination of a copy must hold the source's pattern. */
static void check_copy(CUdeviceptr base, size_t m, unsigned seed)
{
	unsigned long long bad = 0;

	CU(D.ctx_sync());
	CU(kv_dev_check(base + m, m, seed, &bad));
	if (bad)
		die("checking the copy", "the destination lacks the pattern",
		    __LINE__);
}

/* Copy the first half of each region onto its second half: a pattern is
 * written first (a copy of zeros could be short-cut) and checked after. */
static kv_alloc_t *copy_alloc(int zero, size_t m, CUdeviceptr *s)
{
	struct kv_alloc_opts o;
	kv_alloc_t *a;

	kv_alloc_opts_default(&o);
	o.pool_low = o.pool_high = 0;
	o.page = page_mib * MIB;
	o.zero = zero;
	o.worker = 0;
	KV(kv_alloc_create(&o, &a));
	KV(kv_alloc_reserve(a, 2 * m, s));
	KV(kv_alloc_map(a, *s, 2 * m));
	return a;
}

static void bench_copy(void)
{
	struct fig *figs4[4] = { R.bw_alloc, R.bw_span, R.bw_span_nz, R.bw_raw };
	size_t m = copy_mib * MIB;
	CUmemGenericAllocationHandle h;
	CUdeviceptr reg[4];
	kv_alloc_t *a, *anz;
	CUevent e0, e1;
	int r, i;

	a = copy_alloc(1, m, &reg[1]);
	anz = copy_alloc(0, m, &reg[2]);
	CU(D.alloc(&reg[0], 2 * m));
	reg[3] = reserve_va(2 * m);
	CU(D.create(&h, 2 * m, &prop, 0));
	CU(D.map(reg[3], 2 * m, 0, h, 0));
	CU(D.access(reg[3], 2 * m, &rw, 1));
	CU(D.ev_create(&e0, CU_EVENT_DEFAULT));
	CU(D.ev_create(&e1, CU_EVENT_DEFAULT));
	for (i = 0; i < 4; i++) {
		CU(kv_dev_fill(reg[i], m, 0xc0de + i));
		copy_us(reg[i], m, e0, e1);     /* warm up */
	}
	for (r = 0; r < COPY_REPS; r++)
		for (i = 0; i < 4; i++)
			fig_add(figs4[i], copy_us(reg[i], m, e0, e1));
	for (i = 0; i < 4; i++)
		check_copy(reg[i], m, 0xc0de + i);
	CU(D.ev_destroy(e0));
	CU(D.ev_destroy(e1));
	CU(D.free(reg[0]));
	CU(D.unmap(reg[3], 2 * m));
	CU(D.release(h));
	CU(D.addr_free(reg[3], 2 * m));
	KV(kv_alloc_release(a, reg[1]));
	KV(kv_alloc_release(anz, reg[2]));
	kv_alloc_destroy(a);
	kv_alloc_destroy(anz);
}

/* ---- 10: what a fresh page holds ------------------------------------------ */

/* Map a new page at va; write seed's pattern over it, or with seed 0 count
 * its non-zero bytes; unmap and release it. Returns the count. */
static size_t fresh_page(CUdeviceptr va, unsigned seed)
{
	CUmemGenericAllocationHandle h;
	size_t nz = 0;

	CU(D.create(&h, pg, &prop, 0));
	CU(D.map(va, pg, 0, h, 0));
	CU(D.access(va, pg, &rw, 1));
	if (seed)
		CU(kv_dev_fill(va, pg, seed));
	else
		CU(kv_dev_nonzero(va, pg, &nz));
	CU(D.unmap(va, pg));
	CU(D.release(h));
	return nz;
}

/* Does the driver hand a process its own old bytes in a new handle? If it
 * does, new pages need zeroing too, not only those coming back from a
 * span. */
static void bench_fresh(void)
{
	CUdeviceptr va = reserve_va(pg);
	size_t nz, bytes = 0;
	int i, stale = 0;

	for (i = 0; i < 8; i++) {
		fresh_page(va, 0xf00d + i);
		nz = fresh_page(va, 0);
		stale += nz != 0;
		bytes += nz;
	}
	CU(D.addr_free(va, pg));
	printf("\nfresh page contents: %d of 8 new pages held stale bytes "
	       "(%zu non-zero bytes in all): %s\n", stale, bytes, stale ?
	       "the driver hands back old bytes; new pages need zeroing too" :
	       "new pages came back zeroed");
}

/* ---- output --------------------------------------------------------------- */

/* The kernel driver's version: the first dotted number in the NVIDIA
 * driver's /proc file, or "" where there is none (the emulation). */
static void kernel_driver(char *out, size_t len)
{
	FILE *f = fopen("/proc/driver/nvidia/version", "r");
	char line[256], *tok;

	*out = '\0';
	if (!f)
		return;
	if (fgets(line, sizeof(line), f))
		for (tok = strtok(line, " \t\n"); tok; tok = strtok(NULL, " \t\n"))
			if (tok[0] >= '0' && tok[0] <= '9' && strchr(tok, '.')) {
				snprintf(out, len, ", kernel driver %s", tok);
				break;
			}
	fclose(f);
}

static void header(void)
{
	char date[64], kmod[64];
	time_t now = time(NULL);

	strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S %Z", localtime(&now));
	kernel_driver(kmod, sizeof(kmod));
	printf("bench-alloc: %s%s, %s, emulation: %s\n", kv_dev_describe(),
	       kmod, date, kv_dev_is_emu() ? "YES" : "no");
	if (kv_dev_is_emu())
		printf("** CPU emulation of the driver: the timings below are "
		       "not GPU figures **\n");
	printf("%zu pages of %zu KiB, %d reps (median, min, max over reps); "
	       "microseconds per %zu KiB page unless noted\n", npages, pg >> 10,
	       reps, pg >> 10);
	printf("kvshim's page (physical handle): %zu MiB; the driver rows use "
	       "one handle per %zu KiB page\n\n", page_mib ? page_mib : pg / MIB,
	       pg >> 10);
}

#define DASHES "------------------------------------------"

static void print_rows(struct fig *from, struct fig *to)
{
	double m, lo, hi, tm;
	struct fig *f;
	char calls[16];

	printf("| %-40s | %-4s | %9s | %9s | %9s | %9s | %6s |\n",
	       "operation", "per", "us median", "min", "max", "total ms",
	       "calls");
	printf("|%.42s|%.6s|%.11s|%.11s|%.11s|%.11s|%.8s|\n", DASHES, DASHES,
	       DASHES, DASHES, DASHES, DASHES, DASHES);
	for (f = from; f < to; f++) {
		fig_stats(f, 1, &tm, &lo, &hi);    /* the median total */
		fig_stats(f, 0, &m, &lo, &hi);
		snprintf(calls, sizeof(calls), f->calls ? "%lu" : "-", f->calls);
		printf("| %-40s | %-4s | %9.3f | %9.3f | %9.3f | %9.3f | %6s |\n",
		       f->name, f->unit, m, lo, hi, tm / 1e3, calls);
	}
}

static void verdict(const char *what, double v, const char *cmp,
		    double target, int pass)
{
	printf("  %-44s %9.4f  (target %s %g)  %s\n", what, v, cmp, target,
	       pass ? "PASS" : "MISS");
}

static void summary(void)
{
	double r1 = fig_median(R.map) / fig_median(R.floor);
	double r2 = fig_median(R.pbp_map) / fig_median(R.map);
	double r3 = fig_median(R.rel);

	printf("\nsummary:\n");
	verdict("kvshim map / driver floor", r1, "<=", 1.3, r1 <= 1.3);
	verdict("(a) page-by-page map / kvshim map", r2, ">=", 20, r2 >= 20);
	verdict("kvshim release on the caller's path, us/page", r3, "<", 0.5,
		r3 < 0.5);
}

static void print_copy(void)
{
	const struct fig *f[4] = { R.bw_alloc, R.bw_span, R.bw_span_nz, R.bw_raw };
	double m, lo, hi, r;
	int i;

	printf("\ncopy %zu MiB device to device, GB/s counting bytes read + "
	       "written:\n", copy_mib);
	printf("| %-40s | %9s | %9s | %9s |\n", "region", "GB/s med", "min",
	       "max");
	for (i = 0; i < 4; i++) {
		fig_stats(f[i], 0, &m, &lo, &hi);
		printf("| %-40s | %9.1f | %9.1f | %9.1f |\n", f[i]->name, m,
		       lo, hi);
	}
	r = fig_median(R.bw_span) / fig_median(R.bw_alloc);
	verdict("span / cuMemAlloc bandwidth", r, ">=", 0.99, r >= 0.99);
}

static void write_csv(void)
{
	FILE *f = fopen(csv_path, "w");
	const struct fig *g;
	int r;

	if (!f)
		die("opening the CSV file", csv_path, __LINE__);
	fprintf(f, "operation,unit,rep,total_us,divisor_or_bytes,value\n");
	for (g = figs; g < figs + nfigs; g++)
		for (r = 0; r < g->n; r++)
			fprintf(f, "\"%s\",%s,%d,%.3f,%.0f,%.6f\n", g->name,
				g->unit, r, g->total_us[r], g->per, g->value[r]);
	if (fclose(f))
		die("writing the CSV file", csv_path, __LINE__);
}

/* ---- main ----------------------------------------------------------------- */

static void usage(int code)
{
	fprintf(code ? stderr : stdout,
		"usage: bench-alloc [--pages N] [--reps R] [--copy-mib M] "
		"[--page-mib P] [--csv FILE]\n"
		"  --pages N     2 MiB pages per measurement (default 512)\n"
		"  --page-mib P  kvshim's page size in MiB, a multiple of 2 (default: the\n"
		"                granularity); N * 2 MiB must be whole pages\n"
		"  --reps R      repetitions, 1-%d (default 5)\n"
		"  --copy-mib M  MiB copied in the bandwidth test (default 1024)\n"
		"  --csv FILE    also write every rep's raw figures\n", MAX_REPS);
	exit(code);
}

static size_t number(const char *s, size_t lo, size_t hi)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);

	if (!*s || *end || s[0] == '-' || v < lo || v > hi) {
		fprintf(stderr, "bench-alloc: '%s' is not a number in %zu-%zu\n",
			s, lo, hi);
		usage(2);
	}
	return (size_t)v;
}

static void parse(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "pages", required_argument, NULL, 'p' },
		{ "reps", required_argument, NULL, 'r' },
		{ "copy-mib", required_argument, NULL, 'c' },
		{ "csv", required_argument, NULL, 'o' },
		{ "page-mib", required_argument, NULL, 'g' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	int c;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'p': npages = number(optarg, 1, 1u << 20); break;
		case 'r': reps = (int)number(optarg, 1, MAX_REPS); break;
		case 'c': copy_mib = number(optarg, 1, 1u << 20); break;
		case 'o': csv_path = optarg; break;
		case 'g': page_mib = number(optarg, 2, 1024); break;
		case 'h': usage(0); break;
		default: usage(2);
		}
	}
	if (optind < argc || page_mib % 2 || (page_mib && npages % (page_mib / 2)))
		usage(2);
}

int main(int argc, char **argv)
{
	rt_malloc_fn rt_malloc = NULL;
	rt_free_fn rt_free = NULL;
	void *rt;

	parse(argc, argv);
	if (kv_dev_open()) {
		/* 77, Automake's skip: what scripts/gpu-suite.sh reports */
		fprintf(stderr, "bench-alloc: no CUDA driver or device\n");
		return 77;
	}
	load_driver();
	header();
	rt = open_cudart(&rt_malloc, &rt_free);
	make_rows(rt != NULL);
	bench_driver();
	bench_kvshim_zero();
	bench_kvshim_nozero();
	bench_cudamalloc(rt, rt_malloc, rt_free);
	print_rows(R.floor, R.bw_alloc);
	summary();
	bench_copy();
	print_copy();
	bench_fresh();
	if (csv_path)
		write_csv();
	kv_dev_close();
	return 0;
}
