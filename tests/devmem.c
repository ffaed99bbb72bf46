/*
 * devmem.c - see devmem.h. The driver is reached with dlopen, like the
 * library does, so the same binary runs on the emulation (LD_LIBRARY_PATH
 * naming tests/emu) and on a GPU machine.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "devmem.h"

extern const char kv_test_ptx[];

static void *lib;
static CUmodule mod;
static CUfunction fill_fn, check_fn;
static CUdeviceptr counter;
static CUcontext ctx;
static char description[256];

static CUresult (*p_init)(unsigned);
static CUresult (*p_device_get)(CUdevice *, int);
static CUresult (*p_ctx_retain)(CUcontext *, CUdevice);
static CUresult (*p_ctx_get)(CUcontext *);
static CUresult (*p_ctx_set)(CUcontext);
static CUresult (*p_ctx_sync)(void);
static CUresult (*p_load)(CUmodule *, const void *);
static CUresult (*p_get_fn)(CUfunction *, CUmodule, const char *);
static CUresult (*p_launch)(CUfunction, unsigned, unsigned, unsigned, unsigned,
			    unsigned, unsigned, unsigned, CUstream, void **,
			    void **);
static CUresult (*p_alloc)(CUdeviceptr *, size_t);
static CUresult (*p_free)(CUdeviceptr);
static CUresult (*p_dtoh)(void *, CUdeviceptr, size_t);
static CUresult (*p_memset)(CUdeviceptr, unsigned char, size_t);
static CUresult (*p_name)(char *, int, CUdevice);
static CUresult (*p_version)(int *);

void *kv_dev_sym(const char *name)
{
	return lib ? dlsym(lib, name) : NULL;
}

#define LOAD(var, name) do {                                          \
		*(void **)&(var) = kv_dev_sym(name);                   \
		if (!(var))                                            \
			goto fail;                                     \
	} while (0)

static int bind(void)
{
	CUcontext cur = NULL;

	if (p_ctx_get(&cur) != CUDA_SUCCESS)
		return -1;
	if (!cur && p_ctx_set(ctx) != CUDA_SUCCESS)
		return -1;
	return 0;
}

int kv_dev_open(void)
{
	CUdevice dev;
	int ver = 0;
	char name[200] = "";

	if (mod)
		return bind();
	lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!lib)
		return -1;
	LOAD(p_init, "cuInit");
	LOAD(p_device_get, "cuDeviceGet");
	LOAD(p_ctx_retain, "cuDevicePrimaryCtxRetain");
	LOAD(p_ctx_get, "cuCtxGetCurrent");
	LOAD(p_ctx_set, "cuCtxSetCurrent");
	LOAD(p_ctx_sync, "cuCtxSynchronize");
	LOAD(p_load, "cuModuleLoadData");
	LOAD(p_get_fn, "cuModuleGetFunction");
	LOAD(p_launch, "cuLaunchKernel");
	LOAD(p_alloc, "cuMemAlloc_v2");
	LOAD(p_free, "cuMemFree_v2");
	LOAD(p_dtoh, "cuMemcpyDtoH_v2");
	LOAD(p_memset, "cuMemsetD8_v2");
	LOAD(p_name, "cuDeviceGetName");
	LOAD(p_version, "cuDriverGetVersion");
	if (p_init(0) != CUDA_SUCCESS || p_device_get(&dev, 0) != CUDA_SUCCESS ||
	    p_ctx_retain(&ctx, dev) != CUDA_SUCCESS || bind())
		goto fail;
	if (p_load(&mod, kv_test_ptx) != CUDA_SUCCESS ||
	    p_get_fn(&fill_fn, mod, "kv_fill") != CUDA_SUCCESS ||
	    p_get_fn(&check_fn, mod, "kv_check") != CUDA_SUCCESS ||
	    p_alloc(&counter, 8) != CUDA_SUCCESS) {
		fprintf(stderr, "kvshim tests: cannot load the test kernels\n");
		goto fail;
	}
	p_name(name, sizeof(name), dev);
	p_version(&ver);
	snprintf(description, sizeof(description), "%s, CUDA driver API %d.%d%s",
		 name, ver / 1000, ver % 1000 / 10,
		 kv_dev_is_emu() ? " (CPU emulation)" : "");
	return 0;
fail:
	mod = NULL;
	if (lib)
		dlclose(lib);
	lib = NULL;
	return -1;
}

void kv_dev_close(void)
{
	if (counter)
		p_free(counter);
	counter = 0;
}

int kv_dev_is_emu(void)
{
	kvemu_is_emulation_fn f = (kvemu_is_emulation_fn)kv_dev_sym("kvemu_is_emulation");

	return f && f();
}

const char *kv_dev_describe(void)
{
	return description;
}

static void grid_for(unsigned long long nwords, unsigned *grid)
{
	unsigned long long g = (nwords + 255) / 256;

	*grid = g > 4096 ? 4096 : (g ? (unsigned)g : 1);
}

CUresult kv_dev_fill(CUdeviceptr p, size_t bytes, unsigned seed)
{
	unsigned long long nwords = bytes / 4;
	void *args[] = { &p, &nwords, &seed };
	unsigned grid;
	CUresult r;

	if (bind())
		return CUDA_ERROR_INVALID_CONTEXT;
	grid_for(nwords, &grid);
	r = p_launch(fill_fn, grid, 1, 1, 256, 1, 1, 0, NULL, args, NULL);
	return r != CUDA_SUCCESS ? r : p_ctx_sync();
}

CUresult kv_dev_check(CUdeviceptr p, size_t bytes, unsigned seed,
		      unsigned long long *bad)
{
	unsigned long long nwords = bytes / 4;
	void *args[] = { &p, &nwords, &seed, &counter };
	unsigned grid;
	CUresult r;

	if (bind())
		return CUDA_ERROR_INVALID_CONTEXT;
	grid_for(nwords, &grid);
	r = p_memset(counter, 0, 8);
	if (r == CUDA_SUCCESS)
		r = p_launch(check_fn, grid, 1, 1, 256, 1, 1, 0, NULL, args, NULL);
	if (r == CUDA_SUCCESS)
		r = p_ctx_sync();
	if (r == CUDA_SUCCESS)
		r = p_dtoh(bad, counter, sizeof(*bad));
	return r;
}

CUresult kv_dev_nonzero(CUdeviceptr p, size_t bytes, size_t *nonzero)
{
	unsigned char *h = malloc(bytes);
	CUresult r;
	size_t i;

	if (!h)
		return CUDA_ERROR_OUT_OF_MEMORY;
	if (bind()) {
		free(h);
		return CUDA_ERROR_INVALID_CONTEXT;
	}
	r = p_dtoh(h, p, bytes);
	*nonzero = 0;
	for (i = 0; r == CUDA_SUCCESS && i < bytes; i++)
		*nonzero += h[i] != 0;
	free(h);
	return r;
}

int kv_dev_fail_nth(const char *func, int n, CUresult err)
{
	kvemu_fail_nth_fn f = (kvemu_fail_nth_fn)kv_dev_sym("kvemu_fail_nth");

	return f ? f(func, n, err) : -1;
}

int kv_dev_fail_times(const char *func, int n, int times, CUresult err)
{
	kvemu_fail_times_fn f = (kvemu_fail_times_fn)kv_dev_sym("kvemu_fail_times");

	return f ? f(func, n, times, err) : -1;
}

int kv_dev_hold(const char *func, int on)
{
	kvemu_hold_fn f = (kvemu_hold_fn)kv_dev_sym("kvemu_hold");

	return f ? f(func, on) : -1;
}

int kv_dev_waiting(const char *func)
{
	kvemu_waiting_fn f = (kvemu_waiting_fn)kv_dev_sym("kvemu_waiting");

	return f ? f(func) : -1;
}

unsigned long long kv_dev_calls(const char *func)
{
	kvemu_calls_fn f = (kvemu_calls_fn)kv_dev_sym("kvemu_calls");

	return f ? f(func) : 0;
}

void kv_dev_reset_counts(void)
{
	kvemu_reset_counts_fn f = (kvemu_reset_counts_fn)kv_dev_sym("kvemu_reset_counts");

	if (f)
		f();
}

int kv_dev_usage(struct kvemu_usage *u)
{
	return kv_dev_usage_of(0, u);
}

int kv_dev_usage_of(int device, struct kvemu_usage *u)
{
	kvemu_usage_fn f = (kvemu_usage_fn)kv_dev_sym("kvemu_usage");

	memset(u, 0, sizeof(*u));
	if (!f)
		return -1;
	f(device, u);
	return 0;
}

int kv_dev_count(void)
{
	CUresult (*count)(int *);
	int n = 0;

	*(void **)&count = kv_dev_sym("cuDeviceGetCount");
	if (!count || count(&n) != CUDA_SUCCESS)
		return 0;
	return n;
}

int kv_dev_use(int device)
{
	static CUcontext ctxs[16];
	CUdevice dev;

	if (!lib || device < 0 || device >= 16 || device >= kv_dev_count())
		return -1;
	if (!ctxs[device] && (p_device_get(&dev, device) != CUDA_SUCCESS ||
			      p_ctx_retain(&ctxs[device], dev) != CUDA_SUCCESS))
		return -1;
	return p_ctx_set(ctxs[device]) == CUDA_SUCCESS ? 0 : -1;
}

int kv_dev_ordinal(CUdeviceptr p)
{
	CUresult (*attr)(void *, CUpointer_attribute, CUdeviceptr);
	int ordinal = -1;

	*(void **)&attr = kv_dev_sym("cuPointerGetAttribute");
	if (!attr || attr(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, p) != CUDA_SUCCESS)
		return -1;
	return ordinal;
}

CUDA_MEMCPY3D_PEER kv_dev_peer3d(const CUDA_MEMCPY3D *c, CUcontext cx)
{
	CUDA_MEMCPY3D_PEER q;

	memset(&q, 0, sizeof(q));
	q.srcXInBytes = c->srcXInBytes, q.srcY = c->srcY, q.srcZ = c->srcZ;
	q.srcMemoryType = c->srcMemoryType, q.srcHost = c->srcHost;
	q.srcDevice = c->srcDevice, q.srcContext = cx;
	q.srcPitch = c->srcPitch, q.srcHeight = c->srcHeight;
	q.dstXInBytes = c->dstXInBytes, q.dstY = c->dstY, q.dstZ = c->dstZ;
	q.dstMemoryType = c->dstMemoryType, q.dstHost = c->dstHost;
	q.dstDevice = c->dstDevice, q.dstContext = cx;
	q.dstPitch = c->dstPitch, q.dstHeight = c->dstHeight;
	q.WidthInBytes = c->WidthInBytes, q.Height = c->Height, q.Depth = c->Depth;
	return q;
}
