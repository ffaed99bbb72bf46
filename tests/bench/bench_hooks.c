/*
 * bench_hooks.c - what the shim costs calls that are not KV: a loop of
 * cudaMalloc/cudaFree pairs and of small host-to-device copies, as an
 * unmodified program makes them (linked with -lcudart). Run it with and
 * without LD_PRELOAD=libkvshim.so and compare; prints microseconds per
 * call, the median of reps. cudaFree(NULL), which the runtime answers at
 * once, shows what a wrapper itself adds to a call.
 * Usage: bench-hooks [iterations] [reps]
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <cuda_runtime_api.h>

static double now_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

#define CHECK(call) do {                                                 \
		cudaError_t e_ = (call);                                  \
		if (e_ != cudaSuccess) {                                  \
			fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(e_)); \
			exit(1);                                          \
		}                                                         \
	} while (0)

int main(int argc, char **argv)
{
	int iters = argc > 1 ? atoi(argv[1]) : 2000, reps = argc > 2 ? atoi(argv[2]) : 7;
	double alloc[64], copy[64], nop[64], t;
	static char host[4096];
	void *p, *dst;
	int r, i;

	if (iters < 1 || reps < 1 || reps > 64) {
		fprintf(stderr, "usage: bench-hooks [iterations] [reps <= 64]\n");
		return 2;
	}
	if (cudaFree(0) != cudaSuccess) {
		fprintf(stderr, "bench-hooks: no GPU\n");
		return 77;
	}
	CHECK(cudaMalloc(&dst, 4096));
	for (r = 0; r < reps; r++) {
		t = now_us();
		for (i = 0; i < iters; i++) {
			CHECK(cudaMalloc(&p, 4 << 20));
			CHECK(cudaFree(p));
		}
		alloc[r] = (now_us() - t) / iters;
		t = now_us();
		for (i = 0; i < iters; i++)
			CHECK(cudaMemcpy(dst, host, sizeof(host), cudaMemcpyHostToDevice));
		copy[r] = (now_us() - t) / iters;
		/* the cheapest hooked call: what a wrapper adds, nearly alone */
		t = now_us();
		for (i = 0; i < 50 * iters; i++)
			CHECK(cudaFree(NULL));
		nop[r] = (now_us() - t) / (50 * iters);
	}
	CHECK(cudaFree(dst));
	qsort(alloc, reps, sizeof(double), cmp);
	qsort(copy, reps, sizeof(double), cmp);
	qsort(nop, reps, sizeof(double), cmp);
	printf("cudaMalloc+cudaFree 4 MiB: %.3f us/pair (median of %d x %d)\n",
	       alloc[reps / 2], reps, iters);
	printf("cudaMemcpy 4 KiB H2D: %.3f us/call (median of %d x %d)\n",
	       copy[reps / 2], reps, iters);
	printf("cudaFree(NULL): %.4f us/call (median of %d x %d)\n",
	       nop[reps / 2], reps, 50 * iters);
	return 0;
}
