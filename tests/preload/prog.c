/*
 * prog.c - an unmodified CUDA program, as kvshim meets one: it links the
 * runtime (-lcudart) and allocates with cudaMalloc. The tests run it with
 * LD_PRELOAD=libkvshim.so (or load kvshim late) on the CPU emulation; it
 * finds kvshim_* with dlsym, as an engine adapter would, and checks what
 * the shim did. Usage: prog CASE; exit 0 when the case holds, else 1 with
 * one line "FAIL file:line: what" on stderr for each failed expectation
 * (test_preload.c puts them in its own failure message).
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <glob.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>

#include <cuda.h>
#include <cuda_runtime_api.h>

#include "blocked.h"
#include "devmem.h"
#include "kvshim.h"

#define MB ((size_t)1 << 20)
#define PG (2 * MB)

static struct {
	int (*begin)(void);
	int (*end)(void);
	int (*map)(const void *, size_t);
	int (*unmap)(const void *, size_t);
	int (*stats)(struct kvshim_stats *);
} kv;

static int failures;

#define EXPECT(cond) do {                                                 \
		if (!(cond)) {                                             \
			fprintf(stderr, "FAIL %s:%d: expected %s\n",        \
				__FILE__, __LINE__, #cond);                \
			failures++;                                        \
		}                                                          \
	} while (0)

static int load_kvshim(void)
{
	*(void **)&kv.begin = dlsym(RTLD_DEFAULT, "kvshim_kv_begin");
	*(void **)&kv.end = dlsym(RTLD_DEFAULT, "kvshim_kv_end");
	*(void **)&kv.map = dlsym(RTLD_DEFAULT, "kvshim_map");
	*(void **)&kv.unmap = dlsym(RTLD_DEFAULT, "kvshim_unmap");
	*(void **)&kv.stats = dlsym(RTLD_DEFAULT, "kvshim_stats");
	return kv.begin && kv.end && kv.map && kv.unmap && kv.stats ? 0 : -1;
}

static struct kvshim_stats stats(void)
{
	struct kvshim_stats s;

	memset(&s, 0, sizeof(s));
	if (kv.stats(&s))
		memset(&s, 0, sizeof(s));
	return s;
}

static CUdeviceptr dp(const void *p)
{
	return (CUdeviceptr)(uintptr_t)p;
}

/* Allocations outside a window pass through; inside one, large ones
 * become lazy spans whose last page is backed (the caching allocator's
 * tail), and cudaFree releases them. */
static void case_window(void)
{
	char *small = NULL, *big = NULL, *kvp = NULL;
	unsigned long long bad = 1;

	EXPECT(cudaMalloc((void **)&big, 64 * MB) == cudaSuccess);
	EXPECT(stats().reserved_bytes == 0);
	EXPECT(kv_dev_fill(dp(big), 64 * MB, 1) == CUDA_SUCCESS);
	EXPECT(kv.begin() == 0);
	EXPECT(cudaMalloc((void **)&small, MB) == cudaSuccess);   /* < WINDOW_MIN */
	EXPECT(cudaMalloc((void **)&kvp, 64 * MB) == cudaSuccess);
	EXPECT(kv.end() == 0);
	EXPECT(kv.end() == KVSHIM_ESTATE);
	EXPECT(stats().reserved_bytes == 64 * MB);
	EXPECT(stats().mapped_bytes == PG);
	EXPECT(kv_dev_fill(dp(small), MB, 2) == CUDA_SUCCESS);
	/* lazy: untouched pages fault, the tail page does not */
	EXPECT(kv_dev_fill(dp(kvp), 4096, 3) == CUDA_ERROR_ILLEGAL_ADDRESS);
	EXPECT(kv_dev_fill(dp(kvp) + 64 * MB - PG, PG, 3) == CUDA_SUCCESS);
	/* first touch signalled: a block straddling pages 1 and 2 */
	EXPECT(kv.map(kvp + 3 * MB, 2 * MB) == 0);
	EXPECT(kv_dev_fill(dp(kvp) + PG, 2 * PG, 4) == CUDA_SUCCESS);
	EXPECT(kv_dev_check(dp(kvp) + PG, 2 * PG, 4, &bad) == CUDA_SUCCESS);
	EXPECT(bad == 0);
	EXPECT(stats().mapped_bytes == 3 * PG);
	EXPECT(kv.unmap(kvp + 3 * MB, 2 * MB) == 0);
	EXPECT(stats().cached_bytes == 2 * PG);
	EXPECT(kv.unmap(kvp + 3 * MB, 2 * MB) == KVSHIM_ENOTCLAIMED);
	EXPECT(cudaFree(kvp) == cudaSuccess);
	EXPECT(stats().reserved_bytes == 0);
	EXPECT(cudaFree(small) == cudaSuccess);
	EXPECT(cudaFree(big) == cudaSuccess);
}

/* Memset over a span: zero skips unmapped pages, anything else backs
 * them; memcpy into a span backs what it covers. */
static void case_memset_memcpy(void)
{
	char *kvp = NULL, host[4096];
	size_t nz = 1;
	unsigned long long bad = 1;

	EXPECT(kv.begin() == 0);
	EXPECT(cudaMalloc((void **)&kvp, 32 * MB) == cudaSuccess);
	EXPECT(kv.end() == 0);
	EXPECT(kv.map(kvp, PG) == 0);
	EXPECT(kv_dev_fill(dp(kvp), PG, 9) == CUDA_SUCCESS);
	EXPECT(cudaMemset(kvp, 0, 32 * MB) == cudaSuccess);
	EXPECT(stats().mapped_bytes == 2 * PG);            /* nothing new */
	EXPECT(kv_dev_nonzero(dp(kvp), PG, &nz) == CUDA_SUCCESS);
	EXPECT(nz == 0);
	EXPECT(cudaMemsetAsync(kvp + 4 * PG, 7, 100, 0) == cudaSuccess);
	EXPECT(stats().mapped_bytes == 3 * PG);
	memset(host, 0x5a, sizeof(host));
	EXPECT(cudaMemcpy(kvp + 6 * PG + 10, host, sizeof(host),
			  cudaMemcpyHostToDevice) == cudaSuccess);
	EXPECT(stats().mapped_bytes == 4 * PG);
	memset(host, 0, sizeof(host));
	EXPECT(cudaMemcpy(host, kvp + 6 * PG + 10, sizeof(host),
			  cudaMemcpyDeviceToHost) == cudaSuccess);
	EXPECT(host[0] == 0x5a && host[4095] == 0x5a);
	/* a copy out of never-written span memory reads zeros */
	EXPECT(cudaMemcpy(host, kvp + 8 * PG, sizeof(host),
			  cudaMemcpyDeviceToHost) == cudaSuccess);
	EXPECT(host[0] == 0 && host[100] == 0);
	EXPECT(kv_dev_check(dp(kvp), 4, 9, &bad) == CUDA_SUCCESS);
	EXPECT(cudaFree(kvp) == cudaSuccess);
}

/* The runtime's memsets on a span, as the runtime would answer them: a
 * range running past the span's end is an invalid value (not out of
 * memory), and backs nothing. */
static void case_memset_bounds(void)
{
	char *kvp = NULL;
	size_t before;

	EXPECT(kv.begin() == 0);
	EXPECT(cudaMalloc((void **)&kvp, 32 * MB) == cudaSuccess);
	EXPECT(kv.end() == 0);
	before = stats().mapped_bytes;
	EXPECT(cudaMemset(kvp + 30 * MB, 1, 4 * MB) == cudaErrorInvalidValue);
	EXPECT(cudaMemset(kvp + 30 * MB, 0, 4 * MB) == cudaErrorInvalidValue);
	EXPECT(cudaMemsetAsync(kvp + 28 * MB, 1, 6 * MB, 0) == cudaErrorInvalidValue);
	EXPECT(cudaMemset(kvp, 1, SIZE_MAX) == cudaErrorInvalidValue);
	EXPECT(stats().mapped_bytes == before);
	/* up to the last byte is fine (that page was backed at allocation) */
	EXPECT(cudaMemset(kvp + 30 * MB, 1, 2 * MB) == cudaSuccess);
	EXPECT(stats().mapped_bytes == before);
	EXPECT(cudaMemset(kvp + 20 * MB, 1, 2 * MB) == cudaSuccess);
	EXPECT(stats().mapped_bytes == before + PG);
	EXPECT(cudaFree(kvp) == cudaSuccess);
}

/* The runtime's 2D and 3D memsets on a lazy span: the pages their rows
 * cover are backed first; a range past the span's end is refused. */
static void case_memset_2d(void)
{
	struct cudaPitchedPtr pp;
	struct cudaExtent x = { 64, 2, 2 };
	char *kvp = NULL, host[64];
	size_t before;

	EXPECT(kv.begin() == 0);
	EXPECT(cudaMalloc((void **)&kvp, 32 * MB) == cudaSuccess);
	EXPECT(kv.end() == 0);
	before = stats().mapped_bytes;
	/* two rows of 64 bytes, at the start of pages 1 and 2 */
	EXPECT(cudaMemset2D(kvp + PG, PG, 0x3c, 64, 2) == cudaSuccess);
	EXPECT(stats().mapped_bytes == before + 2 * PG);
	EXPECT(cudaMemcpy(host, kvp + 2 * PG, 64, cudaMemcpyDeviceToHost) == cudaSuccess);
	EXPECT(host[0] == 0x3c && host[63] == 0x3c);
	EXPECT(cudaMemset2DAsync(kvp + 4 * PG, 64, 0x3d, 64, 2, 0) == cudaSuccess);
	EXPECT(stats().mapped_bytes == before + 3 * PG);
	/* 2 slices of 2 rows: rows PG apart, slices 2 PG apart, from page 6 */
	pp.ptr = kvp + 6 * PG;
	pp.pitch = PG;
	pp.xsize = 64;
	pp.ysize = 2;
	EXPECT(cudaMemset3D(pp, 0x3e, x) == cudaSuccess);
	EXPECT(stats().mapped_bytes == before + 7 * PG);
	EXPECT(cudaMemcpy(host, kvp + 9 * PG, 64, cudaMemcpyDeviceToHost) == cudaSuccess);
	EXPECT(host[0] == 0x3e && host[63] == 0x3e);
	before = stats().mapped_bytes;
	EXPECT(cudaMemset2D(kvp + 12 * PG, PG, 1, 64, 8) == cudaErrorInvalidValue);
	pp.ptr = kvp + 12 * PG;
	pp.pitch = 2 * PG;
	EXPECT(cudaMemset3DAsync(pp, 1, x, 0) == cudaErrorInvalidValue);
	EXPECT(stats().mapped_bytes == before);
	EXPECT(cudaFree(kvp) == cudaSuccess);
}

/*
 * The runtime's 2D, 3D and peer copies on a lazy span: the pages of their
 * device side's box are backed first, and where it starts past the
 * pointer (a cudaPos), as many bytes from the pointer (the driver refuses
 * a pitched copy with one of those unmapped), on either side, with an
 * explicit kind or cudaMemcpyDefault; what the runtime would refuse (a box
 * past the span's end, a width past a pitch, sizes that overflow) is
 * refused alike, and backs nothing.
 */
static void case_memcpy_2d(void)
{
	struct cudaMemcpy3DParms q;
	char *kvp = NULL, *kv2 = NULL, host[4 * 64];
	size_t before;
	int dev = 0;

	EXPECT(kv.begin() == 0);
	EXPECT(cudaMalloc((void **)&kvp, 32 * MB) == cudaSuccess);
	EXPECT(cudaMalloc((void **)&kv2, 32 * MB) == cudaSuccess);
	EXPECT(kv.end() == 0);
	before = stats().mapped_bytes;
	memset(host, 0x21, sizeof(host));
	/* two rows of 64 bytes into pages 1 and 2, then out of pages 3, 4 */
	EXPECT(cudaMemcpy2D(kvp + PG, PG, host, 64, 64, 2, cudaMemcpyHostToDevice) == cudaSuccess);
	EXPECT(stats().mapped_bytes == before + 2 * PG);
	EXPECT(cudaMemcpy2DAsync(host, 64, kvp + 3 * PG, PG, 64, 2, cudaMemcpyDefault, 0) ==
	       cudaSuccess);
	EXPECT(stats().mapped_bytes == before + 4 * PG);
	EXPECT(host[0] == 0 && host[127] == 0);
	EXPECT(cudaMemcpy(host, kvp + 2 * PG, 64, cudaMemcpyDeviceToHost) == cudaSuccess);
	EXPECT(host[0] == 0x21 && host[63] == 0x21);
	/* 2 slices of 1 row, 2 PG apart, from page 5 into kv2 from page 1:
	 * the box between them is backed too (pages 5 to 7, kv2's 1 to 3),
	 * and kv2's page 0, which the box's bytes from kv2 reach */
	memset(&q, 0, sizeof(q));
	q.srcPtr = (struct cudaPitchedPtr){ kvp + 5 * PG, PG, 64, 2 };
	q.dstPtr = (struct cudaPitchedPtr){ kv2, PG, 64, 2 };
	q.dstPos = (struct cudaPos){ 0, 1, 0 };
	q.extent = (struct cudaExtent){ 64, 1, 2 };
	q.kind = cudaMemcpyDeviceToDevice;
	EXPECT(cudaMemcpy3D(&q) == cudaSuccess);
	EXPECT(stats().mapped_bytes == before + 11 * PG);
	/* pages 9 to 11 to kv2's 1 to 3, and the box's bytes from the
	 * pointer, pages 5 to 7 (backed): page 8 between them is left alone */
	q.srcPos = (struct cudaPos){ 0, 0, 2 };
	q.kind = cudaMemcpyDefault;
	EXPECT(cudaMemcpy3DAsync(&q, 0) == cudaSuccess);
	EXPECT(stats().mapped_bytes == before + 14 * PG);
	/* peer copies (both sides on one device here) */
	EXPECT(cudaGetDevice(&dev) == cudaSuccess);
	EXPECT(cudaMemcpyPeer(kv2 + 5 * PG, dev, kvp + PG, dev, 64) == cudaSuccess);
	EXPECT(stats().mapped_bytes == before + 15 * PG);
	EXPECT(cudaMemcpyPeerAsync(kv2 + 6 * PG, dev, kvp + 12 * PG, dev, 64, 0) == cudaSuccess);
	EXPECT(stats().mapped_bytes == before + 17 * PG);
	EXPECT(cudaMemcpy(host, kv2 + 5 * PG, 64, cudaMemcpyDeviceToHost) == cudaSuccess);
	EXPECT(host[0] == 0x21 && host[63] == 0x21);
	before = stats().mapped_bytes;

	/* refused, nothing backed: rows past the end, a width past a pitch,
	 * a box that overflows, slices of fewer rows than the copy's, a side
	 * that fits beside one past the end */
	EXPECT(cudaMemcpy2D(kvp + 14 * PG, PG, host, 64, 64, 4, cudaMemcpyHostToDevice) ==
	       cudaErrorInvalidValue);
	EXPECT(cudaMemcpy2D(kvp + 14 * PG, 32, host, 64, 64, 2, cudaMemcpyHostToDevice) ==
	       cudaErrorInvalidPitchValue);
	EXPECT(cudaMemcpy2DAsync(kvp + 14 * PG, SIZE_MAX / 2, host, 64, 64, 4,
				 cudaMemcpyHostToDevice, 0) == cudaErrorInvalidValue);
	q.srcPos = (struct cudaPos){ 0, 0, 0 };
	q.dstPtr = (struct cudaPitchedPtr){ kv2 + 7 * PG, PG, 64, 1 };
	q.dstPos = (struct cudaPos){ 0, 0, 0 };
	q.extent = (struct cudaExtent){ 64, 2, 2 };
	EXPECT(cudaMemcpy3D(&q) == cudaErrorInvalidValue);
	q.dstPtr = (struct cudaPitchedPtr){ kv2 + 8 * PG, PG, 64, 2 };
	q.extent = (struct cudaExtent){ 64, 2, 8 };
	EXPECT(cudaMemcpy3DAsync(&q, 0) == cudaErrorInvalidValue);
	EXPECT(cudaMemcpyPeer(kv2 + 9 * PG, dev, kvp + 31 * MB, dev, 2 * MB) ==
	       cudaErrorInvalidValue);
	EXPECT(cudaMemcpyPeerAsync(kv2 + 31 * MB, dev, kvp + 13 * PG, dev, 2 * MB, 0) ==
	       cudaErrorInvalidValue);
	EXPECT(stats().mapped_bytes == before);
	/* a copy kvshim has no part in is the runtime's to judge, and its
	 * refusal is the runtime's own: recorded as the last error, and an
	 * unknown kind named before a pitch */
	(void)cudaGetLastError();
	EXPECT(cudaMemcpy2D(host, 32, host + 128, 64, 64, 2, cudaMemcpyHostToHost) ==
	       cudaErrorInvalidPitchValue);
	EXPECT(cudaGetLastError() == cudaErrorInvalidPitchValue);
	EXPECT(cudaMemcpy2D(host, 32, host + 128, 64, 64, 2, (enum cudaMemcpyKind)42) ==
	       cudaErrorInvalidMemcpyDirection);
	EXPECT(cudaGetLastError() == cudaErrorInvalidMemcpyDirection);
	EXPECT(cudaFree(kvp) == cudaSuccess);
	EXPECT(cudaFree(kv2) == cudaSuccess);
}

/* Size policy: KVSHIM_MIN_BYTES=32M makes large allocations spans mapped
 * in full, without any window. */
static void case_size_policy(void)
{
	char *p = NULL, *q = NULL;
	unsigned long long bad = 1;

	EXPECT(cudaMalloc((void **)&p, 40 * MB) == cudaSuccess);
	EXPECT(cudaMalloc((void **)&q, 8 * MB) == cudaSuccess);
	EXPECT(stats().reserved_bytes == 40 * MB);
	EXPECT(stats().mapped_bytes == 40 * MB);
	EXPECT(kv_dev_fill(dp(p), 40 * MB, 5) == CUDA_SUCCESS);
	EXPECT(kv_dev_check(dp(p), 40 * MB, 5, &bad) == CUDA_SUCCESS);
	EXPECT(bad == 0);
	EXPECT(cudaFree(p) == cudaSuccess);
	EXPECT(cudaFree(q) == cudaSuccess);
	EXPECT(stats().reserved_bytes == 0);
}

/* Memory info: real reports the driver, virtual counts spans as backed. */
static void case_meminfo(void)
{
	size_t f0, t0, f1, t1;
	const char *mode = getenv("KVSHIM_MEMINFO");
	char *kvp;

	EXPECT(cudaMemGetInfo(&f0, &t0) == cudaSuccess);
	EXPECT(kv.begin() == 0);
	EXPECT(cudaMalloc((void **)&kvp, 512 * MB) == cudaSuccess);
	EXPECT(kv.end() == 0);
	EXPECT(cudaMemGetInfo(&f1, &t1) == cudaSuccess);
	EXPECT(t0 == t1);
	if (mode && !strcmp(mode, "real")) {
		/* the driver saw the tail page and the pool */
		EXPECT(f0 - f1 <= 128 * MB);
	} else {
		EXPECT(f0 - f1 >= 500 * MB && f0 - f1 <= 512 * MB);
	}
	EXPECT(cudaFree(kvp) == cudaSuccess);
}

/* Sharing a budget, the first look at memory info, before any kvshim
 * call, already shows the budget (an engine sizes its cache from it). */
static void case_meminfo_share(void)
{
	size_t f, t;

	EXPECT(cudaMemGetInfo(&f, &t) == cudaSuccess);
	EXPECT(f == 256 * MB);
	EXPECT(t > f);
}

/* How many segments in /dev/shm the pool KVSHIM_POOL names has. */
static size_t pool_segments(void)
{
	const char *pool = getenv("KVSHIM_POOL");
	char pattern[160];
	glob_t g;
	size_t n;

	snprintf(pattern, sizeof(pattern), "/dev/shm/kvshim-*-%s", pool ? pool : "");
	if (glob(pattern, 0, NULL, &g) != 0)
		return 0;
	n = g.gl_pathc;
	globfree(&g);
	return n;
}

/* KVSHIM_SHARE=auto, KVSHIM_BUDGET=256M: memory info alone starts nothing
 * (no segment, the device's figures); the first KV span registers the
 * process, and memory info shows the budget from then on. */
static void case_share_auto(void)
{
	size_t f0, t0, f1, t1;
	char *kvp = NULL;

	EXPECT(cudaMemGetInfo(&f0, &t0) == cudaSuccess);
	EXPECT(f0 > 256 * MB);
	EXPECT(pool_segments() == 0);
	EXPECT(kv.begin() == 0);
	EXPECT(cudaMalloc((void **)&kvp, 32 * MB) == cudaSuccess);
	EXPECT(kv.end() == 0);
	EXPECT(pool_segments() == 1);
	EXPECT(stats().share_budget_bytes == 256 * MB);
	EXPECT(cudaMemGetInfo(&f1, &t1) == cudaSuccess);
	EXPECT(t1 == t0);
	/* the budget less what the span claims, backed (its tail page) or not */
	EXPECT(f1 == 256 * MB - 32 * MB);
	EXPECT(cudaFree(kvp) == cudaSuccess);
}

/* Memory info before a KV span and with one, printed ("meminfo: ...") for
 * the test to compare between two settings. (Not after it is freed: when
 * its tail page goes back depends on the worker's timing.) */
static void case_meminfo_print(void)
{
	size_t f[2], t[2];
	char *kvp = NULL;

	EXPECT(cudaMemGetInfo(&f[0], &t[0]) == cudaSuccess);
	EXPECT(kv.begin() == 0);
	EXPECT(cudaMalloc((void **)&kvp, 64 * MB) == cudaSuccess);
	EXPECT(kv.end() == 0);
	EXPECT(cudaMemGetInfo(&f[1], &t[1]) == cudaSuccess);
	fprintf(stderr, "meminfo: %zu %zu, %zu %zu, segments %zu\n",
		f[0], t[0], f[1], t[1], pool_segments());
	EXPECT(cudaFree(kvp) == cudaSuccess);
	EXPECT(stats().reserved_bytes == 0);
}

/* Allocate through driver functions found at run time, inside a window:
 * the allocation must be a lazy span, and freeing it must release it. */
static void window_alloc(CUresult (*alloc)(CUdeviceptr *, size_t),
			 CUresult (*fr)(CUdeviceptr))
{
	CUdeviceptr d = 0;

	EXPECT(alloc && fr);
	if (!alloc || !fr)
		return;
	EXPECT(kv.begin() == 0);
	EXPECT(alloc(&d, 32 * MB) == CUDA_SUCCESS);
	EXPECT(kv.end() == 0);
	EXPECT(stats().reserved_bytes == 32 * MB);
	EXPECT(kv_dev_fill(d, 4096, 1) == CUDA_ERROR_ILLEGAL_ADDRESS);
	EXPECT(fr(d) == CUDA_SUCCESS);
	EXPECT(stats().reserved_bytes == 0);
}

/* The driver road: cuMemAlloc found through the runtime's entry-point
 * look-up, inside a window. */
static void case_entry_point(void)
{
	CUresult (*alloc)(CUdeviceptr *, size_t) = NULL;
	CUresult (*fr)(CUdeviceptr) = NULL;
	enum cudaDriverEntryPointQueryResult q;

	EXPECT(cudaFree(0) == cudaSuccess);
	EXPECT(cudaGetDriverEntryPointByVersion("cuMemAlloc", (void **)&alloc,
						13000, cudaEnableDefault, &q) == cudaSuccess);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
	EXPECT(cudaGetDriverEntryPoint("cuMemFree", (void **)&fr,
				       cudaEnableDefault, &q) == cudaSuccess);
#pragma GCC diagnostic pop
	window_alloc(alloc, fr);
}

/* The dlsym road, as a program with the runtime linked statically takes
 * it: libcuda.so.1 opened by hand, cuGetProcAddress found with dlsym, and
 * cuMemAlloc through it. */
static void case_dlsym_road(void)
{
	CUresult (*gpa)(const char *, void **, int, cuuint64_t,
			CUdriverProcAddressQueryResult *);
	CUresult (*alloc)(CUdeviceptr *, size_t) = NULL;
	CUresult (*fr)(CUdeviceptr) = NULL;
	CUdriverProcAddressQueryResult q;
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);

	EXPECT(h != NULL);
	*(void **)&gpa = dlsym(h, "cuGetProcAddress_v2");
	EXPECT(gpa != NULL);
	if (!gpa)
		return;
	EXPECT(gpa("cuMemAlloc", (void **)&alloc, 13000, 0, &q) == CUDA_SUCCESS);
	*(void **)&fr = dlsym(h, "cuMemFree_v2");
	window_alloc(alloc, fr);
}

/* Threads allocating in and out of a window at once. */
static void *alloc_loop(void *arg)
{
	char *p;
	int i, bad = 0;

	for (i = 0; i < 50; i++) {
		if (cudaMalloc((void **)&p, 20 * MB) != cudaSuccess ||
		    cudaFree(p) != cudaSuccess)
			bad++;
	}
	return (void *)(intptr_t)bad;
}

static void case_threads(void)
{
	pthread_t t[6];
	void *r;
	int i;

	EXPECT(kv.begin() == 0);
	for (i = 0; i < 6; i++)
		pthread_create(&t[i], NULL, alloc_loop, NULL);
	for (i = 0; i < 6; i++) {
		pthread_join(t[i], &r);
		EXPECT(r == NULL);
	}
	EXPECT(kv.end() == 0);
	EXPECT(stats().reserved_bytes == 0);
}

/* A forked child starts afresh and can use kvshim itself. */
static void case_fork(void)
{
	char *p;
	int st = -1;
	pid_t pid;

	EXPECT(kv.begin() == 0);
	EXPECT(cudaMalloc((void **)&p, 32 * MB) == cudaSuccess);
	pid = fork();
	if (pid == 0) {
		char *q;
		int ok = cudaMalloc((void **)&q, 32 * MB) == cudaSuccess &&
			 stats().reserved_bytes == 32 * MB;
		_exit(ok ? 0 : 3);
	}
	EXPECT(waitpid(pid, &st, 0) == pid);
	EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	EXPECT(stats().reserved_bytes == 32 * MB);
	EXPECT(kv.end() == 0);
	EXPECT(cudaFree(p) == cudaSuccess);
}

/* The first CUDA call can come from the host program's own constructor,
 * before main: kvshim starts there as anywhere. */
static void *ctor_ptr;
static int ctor_rc = -1;

__attribute__((constructor)) static void early(void)
{
	int (*begin)(void), (*end)(void);

	if (!getenv("KVTEST_CTOR"))
		return;
	*(void **)&begin = dlsym(RTLD_DEFAULT, "kvshim_kv_begin");
	*(void **)&end = dlsym(RTLD_DEFAULT, "kvshim_kv_end");
	if (!begin || !end || begin())
		return;
	ctor_rc = cudaMalloc(&ctor_ptr, 32 * MB);
	end();
}

static void case_ctor(void)
{
	EXPECT(ctor_rc == cudaSuccess);
	EXPECT(stats().reserved_bytes == 32 * MB);
	EXPECT(cudaFree(ctor_ptr) == cudaSuccess);
	EXPECT(stats().reserved_bytes == 0);
}

/* exec keeps the preload: the new image runs under kvshim from scratch. */
static void case_exec(void)
{
	int st = -1;
	pid_t pid = fork();

	if (pid == 0) {
		execl("/proc/self/exe", "prog", "window", (char *)NULL);
		_exit(127);
	}
	EXPECT(waitpid(pid, &st, 0) == pid);
	EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* A bad KVSHIM_* value: everything passes through untouched. */
static void case_bad_config(void)
{
	char *p;

	EXPECT(kv.begin() == KVSHIM_ECONFIG);
	EXPECT(cudaMalloc((void **)&p, 64 * MB) == cudaSuccess);
	EXPECT(kv_dev_fill(dp(p), 64 * MB, 1) == CUDA_SUCCESS);
	EXPECT(cudaFree(p) == cudaSuccess);
}

/* kvshim loaded late, with dlopen, after the runtime: the program's own
 * cudaMalloc calls reach it through its patched GOT. */
static void case_late(void)
{
	const char *lib = getenv("KVSHIM_LIB");
	void *h;
	char *p;

	EXPECT(load_kvshim() != 0);        /* not there yet */
	EXPECT(cudaFree(0) == cudaSuccess);
	h = lib ? dlopen(lib, RTLD_NOW | RTLD_LOCAL) : NULL;
	EXPECT(h != NULL);
	if (!h)
		return;
	*(void **)&kv.begin = dlsym(h, "kvshim_kv_begin");
	*(void **)&kv.end = dlsym(h, "kvshim_kv_end");
	*(void **)&kv.stats = dlsym(h, "kvshim_stats");
	EXPECT(kv.begin() == 0);
	EXPECT(cudaMalloc((void **)&p, 32 * MB) == cudaSuccess);
	EXPECT(kv.end() == 0);
	EXPECT(stats().reserved_bytes == 32 * MB);
	EXPECT(kv_dev_fill(dp(p), 4096, 1) == CUDA_ERROR_ILLEGAL_ADDRESS);
	EXPECT(cudaFree(p) == cudaSuccess);
	EXPECT(stats().reserved_bytes == 0);
}

/* A module loaded with RTLD_DEEPBIND allocates KV memory: kvshim patches
 * it when the window opens. */
static void case_deepbind(void)
{
	int (*ualloc)(void **, size_t), (*ufree)(void *);
	const char *path = getenv("KVUSER_LIB");
	void *h, *p = NULL;

	h = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND) : NULL;
	EXPECT(h != NULL);
	if (!h)
		return;
	*(void **)&ualloc = dlsym(h, "kvuser_alloc");
	*(void **)&ufree = dlsym(h, "kvuser_free");
	EXPECT(kv.begin() == 0);
	EXPECT(ualloc(&p, 32 * MB) == cudaSuccess);
	EXPECT(kv.end() == 0);
	EXPECT(stats().reserved_bytes == 32 * MB);
	EXPECT(ufree(p) == cudaSuccess);
	EXPECT(stats().reserved_bytes == 0);
}

/*
 * kvshim loaded late, started (its worker running, the program's GOT
 * patched to reach it), then dlclose'd: it must stay loaded, and the
 * program's CUDA calls, which still land in it, keep working for as long
 * as the program lives (here a little over a second, the worker's time to
 * wake up into unmapped code if it were unloaded).
 */
static void case_dlclose(void)
{
	const struct timespec step = { 0, 50 * 1000 * 1000 };
	const char *lib = getenv("KVSHIM_LIB");
	void *h, *again;
	char *p = NULL, *q = NULL;
	int i;

	EXPECT(cudaFree(0) == cudaSuccess);
	h = lib ? dlopen(lib, RTLD_NOW | RTLD_LOCAL) : NULL;
	EXPECT(h != NULL);
	if (!h)
		return;
	*(void **)&kv.begin = dlsym(h, "kvshim_kv_begin");
	*(void **)&kv.end = dlsym(h, "kvshim_kv_end");
	*(void **)&kv.stats = dlsym(h, "kvshim_stats");
	EXPECT(kv.begin && kv.end && kv.stats);
	if (!kv.begin || !kv.end || !kv.stats)
		return;
	EXPECT(kv.begin() == 0);
	EXPECT(cudaMalloc((void **)&p, 32 * MB) == cudaSuccess);
	EXPECT(kv.end() == 0);
	EXPECT(stats().reserved_bytes == 32 * MB);
	EXPECT(dlclose(h) == 0);
	again = dlopen(lib, RTLD_NOW | RTLD_NOLOAD);
	EXPECT(again != NULL);          /* still loaded */
	if (again)
		dlclose(again);
	for (i = 0; i < 24; i++) {
		EXPECT(cudaMalloc((void **)&q, 4 * MB) == cudaSuccess);
		EXPECT(cudaMemset(q, 1, 4 * MB) == cudaSuccess);
		EXPECT(cudaFree(q) == cudaSuccess);
		nanosleep(&step, NULL);
	}
	EXPECT(cudaMemset(p + 4 * PG, 7, 100) == cudaSuccess);
	EXPECT(cudaFree(p) == cudaSuccess);
}

/* Fails on purpose: test_preload checks that the line comes back. */
/* The device of the memory at p as the runtime reports it, or -3. */
static int device_of(const void *p)
{
	struct cudaPointerAttributes at;

	if (cudaPointerGetAttributes(&at, p) != cudaSuccess || at.type != cudaMemoryTypeDevice)
		return -3;
	return at.device;
}

/*
 * A worker of a tensor-parallel engine: cudaSetDevice(1), then its KV
 * cache in a window. It becomes a lazy span on device 1 (pages there, the
 * memory info of device 1 counting it); device 0 stays as it was; calls
 * on the span made while device 0 is current (a block mapped, a copy, the
 * free) still reach device 1's span.
 */
static void case_set_device(void)
{
	char *kv1 = NULL, *kv0 = NULL, host[4096];
	size_t f0, g0, f1, g1, t;
	unsigned long long bad = 1;
	int n = 0, dev = -1;

	EXPECT(cudaGetDeviceCount(&n) == cudaSuccess);
	if (n < 2) {
		fprintf(stderr, "fewer than two devices: nothing checked\n");
		return;
	}
	EXPECT(cudaMemGetInfo(&f0, &t) == cudaSuccess);
	EXPECT(cudaSetDevice(1) == cudaSuccess);
	EXPECT(cudaGetDevice(&dev) == cudaSuccess && dev == 1);
	EXPECT(cudaMemGetInfo(&f1, &t) == cudaSuccess);
	EXPECT(kv.begin() == 0);
	EXPECT(cudaMalloc((void **)&kv1, 256 * MB) == cudaSuccess);
	EXPECT(kv.end() == 0);
	EXPECT(stats().reserved_bytes == 256 * MB);
	EXPECT(stats().mapped_bytes == PG);
	EXPECT(device_of(kv1 + 256 * MB - 1) == 1);
	EXPECT(device_of(kv1) == -3);                      /* nothing backs it yet */
	EXPECT(kv_dev_fill(dp(kv1), 4096, 3) == CUDA_ERROR_ILLEGAL_ADDRESS);
	EXPECT(kv_dev_fill(dp(kv1) + 256 * MB - PG, PG, 3) == CUDA_SUCCESS);
	EXPECT(kv.map(kv1 + PG + 10, 4096) == 0);
	EXPECT(kv_dev_fill(dp(kv1) + PG, PG, 4) == CUDA_SUCCESS);
	EXPECT(kv_dev_check(dp(kv1) + PG, PG, 4, &bad) == CUDA_SUCCESS && bad == 0);
	EXPECT(device_of(kv1 + PG) == 1);
	EXPECT(cudaMemset(kv1 + 2 * PG, 7, 100) == cudaSuccess);
	EXPECT(device_of(kv1 + 2 * PG) == 1);
	EXPECT(stats().mapped_bytes == 3 * PG);
	/* device 1's memory info counts the span as backed */
	EXPECT(cudaMemGetInfo(&g1, &t) == cudaSuccess);
	EXPECT(f1 - g1 >= 250 * MB && f1 - g1 <= 256 * MB);

	/* device 0: no span of its own, its memory info untouched */
	EXPECT(cudaSetDevice(0) == cudaSuccess);
	EXPECT(stats().reserved_bytes == 0);
	EXPECT(cudaMemGetInfo(&g0, &t) == cudaSuccess);
	EXPECT(g0 == f0);
	/* calls on device 1's span from here reach it */
	EXPECT(kv.map(kv1 + 3 * PG, PG) == 0);
	EXPECT(device_of(kv1 + 3 * PG) == 1);
	memset(host, 0x5a, sizeof(host));
	EXPECT(cudaMemcpy(kv1 + 5 * PG, host, sizeof(host), cudaMemcpyHostToDevice) == cudaSuccess);
	EXPECT(device_of(kv1 + 5 * PG) == 1);
	EXPECT(kv.unmap(kv1 + 3 * PG, PG) == 0);
	EXPECT(kv.unmap(kv1 + 3 * PG, PG) == KVSHIM_ENOTCLAIMED);
	/* an allocation made now is device 0's */
	EXPECT(kv.begin() == 0);
	EXPECT(cudaMalloc((void **)&kv0, 64 * MB) == cudaSuccess);
	EXPECT(kv.end() == 0);
	EXPECT(stats().reserved_bytes == 64 * MB);
	EXPECT(device_of(kv0 + 64 * MB - 1) == 0);
	EXPECT(cudaMemGetInfo(&g0, &t) == cudaSuccess);
	EXPECT(f0 - g0 >= 60 * MB && f0 - g0 <= 64 * MB);
	/* device 1's span freed from device 0 */
	EXPECT(cudaFree(kv1) == cudaSuccess);
	EXPECT(stats().reserved_bytes == 64 * MB);
	EXPECT(cudaSetDevice(1) == cudaSuccess);
	EXPECT(stats().reserved_bytes == 0);
	EXPECT(stats().spans == 0);
	EXPECT(cudaSetDevice(0) == cudaSuccess);
	EXPECT(cudaFree(kv0) == cudaSuccess);
	EXPECT(stats().reserved_bytes == 0);
}

/* KVSHIM_DEVICE=0: the worker on device 1 keeps its whole cache, as
 * without kvshim; device 0's cache is a lazy span. */
static void case_set_device_filtered(void)
{
	struct kvshim_stats s;
	char *p1 = NULL, *p0 = NULL;
	int n = 0;

	EXPECT(cudaGetDeviceCount(&n) == cudaSuccess);
	if (n < 2) {
		fprintf(stderr, "fewer than two devices: nothing checked\n");
		return;
	}
	EXPECT(cudaSetDevice(1) == cudaSuccess);
	EXPECT(kv.begin() == 0);
	EXPECT(cudaMalloc((void **)&p1, 64 * MB) == cudaSuccess);
	EXPECT(kv.end() == 0);
	EXPECT(kv.stats(&s) == KVSHIM_ENODEV);      /* kvshim leaves device 1 alone */
	EXPECT(device_of(p1) == 1);
	EXPECT(kv_dev_fill(dp(p1), 64 * MB, 6) == CUDA_SUCCESS);  /* backed whole */
	EXPECT(kv.map(p1, PG) == KVSHIM_ENODEV);
	EXPECT(cudaSetDevice(0) == cudaSuccess);
	EXPECT(kv.map(p1, PG) == KVSHIM_ERANGE);
	EXPECT(kv.begin() == 0);
	EXPECT(cudaMalloc((void **)&p0, 64 * MB) == cudaSuccess);
	EXPECT(kv.end() == 0);
	EXPECT(stats().reserved_bytes == 64 * MB);
	EXPECT(kv_dev_fill(dp(p0), 4096, 6) == CUDA_ERROR_ILLEGAL_ADDRESS);
	EXPECT(cudaFree(p1) == cudaSuccess);
	EXPECT(cudaFree(p0) == cudaSuccess);
	EXPECT(stats().reserved_bytes == 0);
}

/* cudaFreeAsync takes a cudaMalloc pointer (the emulated runtime frees it
 * as cudaFree does); a span kvshim made for a cudaMalloc is released by it
 * too, not handed to the runtime, which would refuse it and leave the span
 * (its pages and address range) behind. */
static void case_free_async(void)
{
	char *plain = NULL, *kvp = NULL;

	EXPECT(cudaMalloc((void **)&plain, 32 * MB) == cudaSuccess);
	EXPECT(cudaFreeAsync(plain, 0) == cudaSuccess);
	EXPECT(kv.begin() == 0);
	EXPECT(cudaMalloc((void **)&kvp, 32 * MB) == cudaSuccess);
	EXPECT(kv.end() == 0);
	EXPECT(stats().reserved_bytes == 32 * MB);
	EXPECT(cudaFreeAsync(kvp, 0) == cudaSuccess);
	EXPECT(cudaStreamSynchronize(0) == cudaSuccess);
	EXPECT(stats().reserved_bytes == 0);
}

/* kvshim loaded late patches the main program's dlsym slot; a
 * dlsym(RTLD_NEXT) the program makes finds what it found before. */
static void case_late_next(void)
{
	const char *lib = getenv("KVSHIM_LIB");
	void *before, *after, *h;

	before = dlsym(RTLD_NEXT, "cudaMalloc");
	EXPECT(before != NULL);
	h = lib ? dlopen(lib, RTLD_NOW | RTLD_LOCAL) : NULL;
	EXPECT(h != NULL);
	after = dlsym(RTLD_NEXT, "cudaMalloc");
	if (after != before)
		fprintf(stderr, "FAIL %s:%d: dlsym(RTLD_NEXT, cudaMalloc) was %p, now %p\n",
			__FILE__, __LINE__, before, after);
	EXPECT(after == before);
	/* a name defined nowhere: NULL, and dlerror() says why, as without
	 * kvshim */
	dlerror();
	EXPECT(dlsym(RTLD_NEXT, "kvshim_test_no_such_symbol") == NULL);
	EXPECT(dlerror() != NULL);
}

/*
 * A module's constructor (tests/preload/ctor.c, KVCTOR in the environment)
 * makes runtime calls while another thread's first runtime call, looking
 * the runtime up, waits for the loader's lock that the constructor's
 * dlopen holds: the constructor's own calls (KVCTOR=call), or a child it
 * forks (KVCTOR=fork), go through. The alarm bounds a hang.
 */
static void case_ctor_lookup(void)
{
	const char *path = getenv("KVCTOR_LIB");
	int (*result)(void);
	void *h;

	alarm(30);      /* a bound on a hang, not a wait */
	h = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
	EXPECT(h != NULL);
	if (!h)
		return;
	*(void **)&result = dlsym(h, "kvctor_result");
	EXPECT(result != NULL);
	if (result)
		EXPECT(result() == 0);
	alarm(0);
}

/* The fork-sweep case's threads. */
static struct {
	char path[96];          /* a module loaded from here, now a FIFO */
	pid_t main_tid;
	int writer;             /* the FIFO's write end, open */
	int forking, forked;
	int begin_rc;
} sweep;

/* kvshim's sweep (in kvshim_kv_begin) patching the new module: it blocks
 * opening the module's file, now a FIFO, with its locks held. */
static void *sweep_begin(void *arg)
{
	sweep.begin_rc = kv.begin();
	kv.end();
	return NULL;
}

/* Once the main thread forks (blocked, or back from fork), the FIFO goes
 * and the sweep gets to its end. */
static void *sweep_release(void *arg)
{
	while (!__atomic_load_n(&sweep.forking, __ATOMIC_ACQUIRE))
		sched_yield();
	kt_wait_blocked(sweep.main_tid, &sweep.forked);
	unlink(sweep.path);
	close(sweep.writer);
	return NULL;
}

/*
 * A fork while another thread's sweep patches modules (the sweep's lock and
 * the GOT patcher's held): the child's own sweep, after it loads a module,
 * must not hang on locks held by a thread it does not have. The sweep is
 * held in place by the module's file having become a FIFO, which its
 * reader blocks on; the alarm bounds a hang in the child.
 */
static void case_fork_sweep(void)
{
	const char *user = getenv("KVUSER_LIB");
	pthread_t begin, release;
	char buf[65536];
	int in, out, st = -1;
	ssize_t n;
	pid_t pid;
	void *h;

	EXPECT(user != NULL);
	if (!user)
		return;
	snprintf(sweep.path, sizeof(sweep.path), "/tmp/kvtest-sweep-%d.so", (int)getpid());
	in = open(user, O_RDONLY | O_CLOEXEC);
	out = open(sweep.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0700);
	EXPECT(in >= 0 && out >= 0);
	while (in >= 0 && out >= 0 && (n = read(in, buf, sizeof(buf))) > 0)
		EXPECT(write(out, buf, (size_t)n) == n);
	close(in);
	close(out);
	h = dlopen(sweep.path, RTLD_NOW | RTLD_LOCAL);
	EXPECT(h != NULL);
	EXPECT(unlink(sweep.path) == 0 && mkfifo(sweep.path, 0600) == 0);
	if (!h) {
		unlink(sweep.path);
		return;
	}
	sweep.main_tid = getpid();
	EXPECT(pthread_create(&begin, NULL, sweep_begin, NULL) == 0);
	/* returns once the sweep opened the FIFO: it holds its locks now */
	sweep.writer = open(sweep.path, O_WRONLY | O_CLOEXEC);
	EXPECT(sweep.writer >= 0);
	EXPECT(pthread_create(&release, NULL, sweep_release, NULL) == 0);
	__atomic_store_n(&sweep.forking, 1, __ATOMIC_RELEASE);
	pid = fork();
	if (pid == 0) {
		void *u;
		int ok;

		alarm(20);      /* a bound on a hang, not a wait */
		u = dlopen(user, RTLD_NOW | RTLD_LOCAL);
		ok = u && kv.begin() == 0 && kv.end() == 0;
		_exit(ok ? 0 : 3);
	}
	__atomic_store_n(&sweep.forked, 1, __ATOMIC_RELEASE);
	EXPECT(pthread_join(release, NULL) == 0);
	EXPECT(pthread_join(begin, NULL) == 0);
	EXPECT(sweep.begin_rc == 0);
	EXPECT(pid > 0 && waitpid(pid, &st, 0) == pid);
	if (!WIFEXITED(st))
		fprintf(stderr, "FAIL %s:%d: the child died of signal %d (14: it hung)\n",
			__FILE__, __LINE__, WIFSIGNALED(st) ? WTERMSIG(st) : 0);
	EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void case_expect_fails(void)
{
	EXPECT(1 + 1 == 3);
}

static const struct {
	const char *name;
	void (*run)(void);
	int needs_kvshim;
} cases[] = {
	{ "expect-fails", case_expect_fails, 0 },
	{ "window", case_window, 1 },
	{ "memset-memcpy", case_memset_memcpy, 1 },
	{ "memset-bounds", case_memset_bounds, 1 },
	{ "memset-2d", case_memset_2d, 1 },
	{ "memcpy-2d", case_memcpy_2d, 1 },
	{ "size-policy", case_size_policy, 1 },
	{ "meminfo", case_meminfo, 1 },
	{ "meminfo-share", case_meminfo_share, 1 },
	{ "share-auto", case_share_auto, 1 },
	{ "meminfo-print", case_meminfo_print, 1 },
	{ "entry-point", case_entry_point, 1 },
	{ "dlsym-road", case_dlsym_road, 1 },
	{ "threads", case_threads, 1 },
	{ "fork", case_fork, 1 },
	{ "ctor", case_ctor, 1 },
	{ "exec", case_exec, 1 },
	{ "bad-config", case_bad_config, 1 },
	{ "late", case_late, 0 },
	{ "dlclose", case_dlclose, 0 },
	{ "deepbind", case_deepbind, 1 },
	{ "set-device", case_set_device, 1 },
	{ "set-device-filtered", case_set_device_filtered, 1 },
	{ "free-async", case_free_async, 1 },
	{ "late-next", case_late_next, 0 },
	{ "ctor-lookup", case_ctor_lookup, 1 },
	{ "fork-sweep", case_fork_sweep, 1 },
};

int main(int argc, char **argv)
{
	size_t i;

	if (argc != 2) {
		fprintf(stderr, "usage: %s CASE\n", argv[0]);
		return 2;
	}
	if (kv_dev_open()) {
		fprintf(stderr, "FAIL %s:%d: no CUDA driver found\n", __FILE__, __LINE__);
		return 77;
	}
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (strcmp(argv[1], cases[i].name))
			continue;
		if (cases[i].needs_kvshim && load_kvshim()) {
			fprintf(stderr, "FAIL %s:%d: kvshim_* not found: is libkvshim.so preloaded?\n",
				__FILE__, __LINE__);
			return 1;
		}
		cases[i].run();
		if (failures)
			fprintf(stderr, "%s: %d failed expectations\n", argv[1], failures);
		return failures ? 1 : 0;
	}
	fprintf(stderr, "%s: no case %s\n", argv[0], argv[1]);
	return 2;
}
