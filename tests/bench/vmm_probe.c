/*
 * vmm_probe.c - what the driver charges for access and unmap as a function
 * of the handle size and of the run size, on whatever driver libcuda.so.1
 * is. A probe for docs/BENCHMARKS.md, not a test: prints µs per 2 MiB.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <time.h>

#include <cuda.h>

#define NPG 256

static struct {
	CUresult (*init)(unsigned);
	CUresult (*dev_get)(CUdevice *, int);
	CUresult (*retain)(CUcontext *, CUdevice);
	CUresult (*set)(CUcontext);
	CUresult (*gran)(size_t *, const CUmemAllocationProp *,
			 CUmemAllocationGranularity_flags);
	CUresult (*reserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr,
			    unsigned long long);
	CUresult (*addr_free)(CUdeviceptr, size_t);
	CUresult (*create)(CUmemGenericAllocationHandle *, size_t,
			   const CUmemAllocationProp *, unsigned long long);
	CUresult (*release)(CUmemGenericAllocationHandle);
	CUresult (*map)(CUdeviceptr, size_t, size_t,
			CUmemGenericAllocationHandle, unsigned long long);
	CUresult (*access)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t);
	CUresult (*unmap)(CUdeviceptr, size_t);
} D;

static const char *const names[] = {
	"cuInit", "cuDeviceGet", "cuDevicePrimaryCtxRetain", "cuCtxSetCurrent",
	"cuMemGetAllocationGranularity", "cuMemAddressReserve",
	"cuMemAddressFree", "cuMemCreate", "cuMemRelease", "cuMemMap",
	"cuMemSetAccess", "cuMemUnmap"
};

#define CK(x) do {                                                      \
		CUresult r_ = (x);                                       \
		if (r_ != CUDA_SUCCESS) {                                \
			printf("%s failed: %d\n", #x, (int)r_);          \
			return 1;                                        \
		}                                                        \
	} while (0)

static double now_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int load(void)
{
	void *h = dlopen("libcuda.so.1", RTLD_NOW);
	void **slot = (void **)&D;
	size_t i;

	if (!h)
		return -1;
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (!(slot[i] = dlsym(h, names[i])))
			return -1;
	return 0;
}

int main(void)
{
	static const size_t hsizes[] = { 1, 8, 32, 256 }, runs[] = { 1, 16, 256 };
	CUmemGenericAllocationHandle h[NPG];
	CUmemAllocationProp p = { 0 };
	CUmemAccessDesc a = { 0 };
	CUdevice dev;
	CUcontext ctx;
	CUdeviceptr va;
	size_t g, k, i;
	double t0, t1, t2, t3;

	if (load()) {
		printf("vmm-probe: no CUDA driver\n");
		return 77;
	}
	CK(D.init(0));
	CK(D.dev_get(&dev, 0));
	CK(D.retain(&ctx, dev));
	CK(D.set(ctx));
	p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
	p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	p.location.id = dev;
	a.location = p.location;
	a.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
	CK(D.gran(&g, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
	CK(D.reserve(&va, NPG * g, g, 0, 0));
	printf("%d pages of %zu KiB, 3 reps each; microseconds per page\n",
	       NPG, g >> 10);
	for (k = 0; k < 4; k++) {
		size_t hp = hsizes[k], nh = NPG / hp;
		int rep;

		for (i = 0; i < nh; i++)
			CK(D.create(&h[i], hp * g, &p, 0));
		for (rep = 0; rep < 3; rep++) {
			t0 = now_us();
			for (i = 0; i < nh; i++)
				CK(D.map(va + i * hp * g, hp * g, 0, h[i], 0));
			t1 = now_us();
			CK(D.access(va, NPG * g, &a, 1));
			t2 = now_us();
			CK(D.unmap(va, NPG * g));
			t3 = now_us();
			printf("handle of %3zu pages: map %6.2f  access %6.2f  unmap %6.2f\n",
			       hp, (t1 - t0) / NPG, (t2 - t1) / NPG, (t3 - t2) / NPG);
		}
		for (i = 0; i < nh; i++)
			CK(D.release(h[i]));
	}
	for (i = 0; i < NPG; i++)
		CK(D.create(&h[i], g, &p, 0));
	for (k = 0; k < 3; k++) {
		for (i = 0; i < NPG; i++)
			CK(D.map(va + i * g, g, 0, h[i], 0));
		t0 = now_us();
		for (i = 0; i < NPG; i += runs[k])
			CK(D.access(va + i * g, runs[k] * g, &a, 1));
		t1 = now_us();
		CK(D.unmap(va, NPG * g));
		printf("one-page handles, one access call per run of %3zu: %6.2f\n",
		       runs[k], (t1 - t0) / NPG);
	}
	for (i = 0; i < NPG; i++)
		CK(D.release(h[i]));
	CK(D.addr_free(va, NPG * g));
	return 0;
}
