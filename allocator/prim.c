/*
 * prim.c - the CUDA driver's memory functions, reached through dlopen so the
 * library neither links libcuda nor needs a GPU to load.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "kvshim.h"
#include "log.h"
#include "prim.h"

/* ---- the driver's entry points ------------------------------------------- */

#define KV_DRIVER_FUNCS(X)                                                 \
	X(cuInit, CUresult, (unsigned int))                               \
	X(cuGetErrorName, CUresult, (CUresult, const char **))            \
	X(cuDeviceGet, CUresult, (CUdevice *, int))                        \
	X(cuDeviceGetAttribute, CUresult, (int *, CUdevice_attribute, CUdevice)) \
	X(cuDeviceTotalMem_v2, CUresult, (size_t *, CUdevice))             \
	X(cuDeviceGetUuid_v2, CUresult, (CUuuid *, CUdevice))              \
	X(cuDevicePrimaryCtxRetain, CUresult, (CUcontext *, CUdevice))     \
	X(cuDevicePrimaryCtxRelease_v2, CUresult, (CUdevice))              \
	X(cuCtxGetCurrent, CUresult, (CUcontext *))                        \
	X(cuCtxSetCurrent, CUresult, (CUcontext))                          \
	X(cuCtxGetDevice, CUresult, (CUdevice *))                          \
	X(cuCtxPushCurrent_v2, CUresult, (CUcontext))                      \
	X(cuCtxPopCurrent_v2, CUresult, (CUcontext *))                     \
	X(cuCtxSynchronize, CUresult, (void))                              \
	X(cuStreamCreate, CUresult, (CUstream *, unsigned int))            \
	X(cuStreamDestroy_v2, CUresult, (CUstream))                        \
	X(cuStreamSynchronize, CUresult, (CUstream))                       \
	X(cuMemGetInfo_v2, CUresult, (size_t *, size_t *))                 \
	X(cuMemGetAllocationGranularity, CUresult,                         \
	  (size_t *, const CUmemAllocationProp *,                          \
	   CUmemAllocationGranularity_flags))                              \
	X(cuMemAddressReserve, CUresult,                                   \
	  (CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long)) \
	X(cuMemAddressFree, CUresult, (CUdeviceptr, size_t))               \
	X(cuMemCreate, CUresult,                                           \
	  (CUmemGenericAllocationHandle *, size_t,                         \
	   const CUmemAllocationProp *, unsigned long long))               \
	X(cuMemRelease, CUresult, (CUmemGenericAllocationHandle))          \
	X(cuMemMap, CUresult,                                              \
	  (CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle,      \
	   unsigned long long))                                            \
	X(cuMemSetAccess, CUresult,                                        \
	  (CUdeviceptr, size_t, const CUmemAccessDesc *, size_t))          \
	X(cuMemUnmap, CUresult, (CUdeviceptr, size_t))                     \
	X(cuMemsetD8Async, CUresult,                                       \
	  (CUdeviceptr, unsigned char, size_t, CUstream))

/* Entry points kvshim can do without (older drivers, the emulation). */
#define KV_DRIVER_OPTIONAL(X)                                              \
	X(cuThreadExchangeStreamCaptureMode, CUresult,                    \
	  (CUstreamCaptureMode *))

#define KV_DECLARE(name, ret, args) ret (*name) args;
static struct {
	KV_DRIVER_FUNCS(KV_DECLARE)
	KV_DRIVER_OPTIONAL(KV_DECLARE)
} drv;
#undef KV_DECLARE

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static int load_rc;
static void *driver;

static void *(*real_dlsym)(void *, const char *);
static pthread_once_t dlsym_once = PTHREAD_ONCE_INIT;

/* The C library's dlsym, by version, so an interposed dlsym (ours included)
 * is never in the way. */
static void find_dlsym(void)
{
	static const char *const versions[] = {
		"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17", NULL
	};
	const char *const *v;

	for (v = versions; *v && !real_dlsym; v++)
		*(void **)&real_dlsym = dlvsym(RTLD_NEXT, "dlsym", *v);
	if (!real_dlsym)
		real_dlsym = dlsym;
}

void *kv_prim_dlsym(void *handle, const char *name)
{
	pthread_once(&dlsym_once, find_dlsym);
	return real_dlsym(handle, name);
}

static void load(void);

void *kv_prim_driver(void)
{
	pthread_once(&load_once, load);
	return driver;
}

/*
 * Resolve every driver function once per process. RTLD_NOLOAD first: a host
 * program that already loaded a driver (its own path, a container's mount)
 * keeps using that one. Sets load_rc to 0 or KVSHIM_ENODEV.
 */
static void load(void)
{
	void *h;

	h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
	if (!h)
		h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		kv_info("no CUDA driver: %s", dlerror());
		load_rc = KVSHIM_ENODEV;
		return;
	}
#define KV_RESOLVE(name, ret, args)                                        \
	drv.name = (ret (*) args)kv_prim_dlsym(h, #name);                  \
	if (!drv.name) {                                                   \
		kv_error("the CUDA driver lacks %s", #name);               \
		load_rc = KVSHIM_ENODEV;                                   \
		return;                                                    \
	}
	KV_DRIVER_FUNCS(KV_RESOLVE)
#undef KV_RESOLVE
#define KV_RESOLVE_OPTIONAL(name, ret, args)                               \
	drv.name = (ret (*) args)kv_prim_dlsym(h, #name);
	KV_DRIVER_OPTIONAL(KV_RESOLVE_OPTIONAL)
#undef KV_RESOLVE_OPTIONAL
	driver = h;
	load_rc = 0;
}

/* Log a failed driver call and turn its CUresult into a kvshim_error. */
static int fail(const char *what, CUresult r)
{
	const char *name = NULL;

	if (r == CUDA_ERROR_DEINITIALIZED) {
		/* the driver is shutting down: the process is exiting (a call
		 * of kvshim's worker, or of an exit handler, after the driver's
		 * own), and the driver releases every page with its contexts */
		kv_debug("%s: the CUDA driver is shutting down", what);
		return KVSHIM_EDRIVER;
	}
	if (drv.cuGetErrorName(r, &name) != CUDA_SUCCESS || !name)
		name = "unknown CUresult";
	if (r == CUDA_ERROR_OUT_OF_MEMORY) {
		kv_debug("%s: %s", what, name);
		return KVSHIM_ENOMEM;
	}
	kv_error("%s failed: %s (%d)", what, name, (int)r);
	return KVSHIM_EDRIVER;
}

#define CALL(what, expr) do {                                             \
		CUresult r_ = (expr);                                      \
		if (r_ != CUDA_SUCCESS)                                    \
			return fail(what, r_);                             \
	} while (0)

static void page_prop(const kv_prim_t *p, CUmemAllocationProp *prop)
{
	memset(prop, 0, sizeof(*prop));
	prop->type = CU_MEM_ALLOCATION_TYPE_PINNED;
	prop->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	prop->location.id = p->dev;
}

/* ---- set-up ----------------------------------------------------------------- */

static int enter(const kv_prim_t *p, int *pushed);
static void leave(int pushed);

int kv_prim_open(kv_prim_t *p, int ordinal, size_t page)
{
	CUmemAllocationProp prop;
	CUresult r;
	int vmm = 0, rc, pushed;

	memset(p, 0, sizeof(*p));
	pthread_once(&load_once, load);
	if (load_rc)
		return load_rc;
	p->ordinal = ordinal;
	r = drv.cuInit(0);
	if (r == CUDA_ERROR_NO_DEVICE) {
		kv_info("the CUDA driver sees no device");
		return KVSHIM_ENODEV;
	}
	CALL("cuInit", r);
	r = drv.cuDeviceGet(&p->dev, ordinal);
	if (r == CUDA_ERROR_INVALID_DEVICE) {
		kv_error("no CUDA device %d", ordinal);
		return KVSHIM_ENODEV;
	}
	CALL("cuDeviceGet", r);
	CALL("cuDeviceGetAttribute",
	     drv.cuDeviceGetAttribute(&vmm,
		CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, p->dev));
	if (!vmm) {
		kv_error("CUDA device %d has no virtual memory management", ordinal);
		return KVSHIM_ENODEV;
	}
	CALL("cuDeviceTotalMem", drv.cuDeviceTotalMem_v2(&p->device_bytes, p->dev));
	{
		CUuuid u;
		const unsigned char *b = (const unsigned char *)u.bytes;

		CALL("cuDeviceGetUuid", drv.cuDeviceGetUuid_v2(&u, p->dev));
		snprintf(p->uuid, sizeof(p->uuid),
			 "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
			 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9],
			 b[10], b[11], b[12], b[13], b[14], b[15]);
	}
	page_prop(p, &prop);
	CALL("cuMemGetAllocationGranularity",
	     drv.cuMemGetAllocationGranularity(&p->gran, &prop,
					      CU_MEM_ALLOC_GRANULARITY_MINIMUM));
	p->page = page ? page : p->gran;
	if (p->page % p->gran) {
		kv_error("a page of %zu bytes is not a multiple of the device's granularity (%zu)",
			 p->page, p->gran);
		return KVSHIM_EINVAL;
	}
	CALL("cuDevicePrimaryCtxRetain",
	     drv.cuDevicePrimaryCtxRetain(&p->ctx, p->dev));
	/* the stream is the context's: made with it current, whatever this
	 * thread had current (another device's, when a process uses several) */
	rc = kv_prim_bind(p);
	if (rc == 0)
		rc = enter(p, &pushed);
	if (rc == 0) {
		r = drv.cuStreamCreate(&p->stream, CU_STREAM_NON_BLOCKING);
		if (r != CUDA_SUCCESS)
			rc = fail("cuStreamCreate", r);
		leave(pushed);
	}
	if (rc) {
		drv.cuDevicePrimaryCtxRelease_v2(p->dev);
		p->ctx = NULL;
	}
	return rc;
}

int kv_prim_device_info(int ordinal, size_t *total, size_t *gran)
{
	CUmemAllocationProp prop;
	CUdevice dev;
	CUresult r;

	pthread_once(&load_once, load);
	if (load_rc)
		return load_rc;
	r = drv.cuInit(0);
	if (r == CUDA_ERROR_NO_DEVICE)
		return KVSHIM_ENODEV;
	CALL("cuInit", r);
	r = drv.cuDeviceGet(&dev, ordinal);
	if (r == CUDA_ERROR_INVALID_DEVICE)
		return KVSHIM_EINVAL;
	CALL("cuDeviceGet", r);
	CALL("cuDeviceTotalMem", drv.cuDeviceTotalMem_v2(total, dev));
	memset(&prop, 0, sizeof(prop));
	prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
	prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	prop.location.id = dev;
	CALL("cuMemGetAllocationGranularity",
	     drv.cuMemGetAllocationGranularity(gran, &prop,
					      CU_MEM_ALLOC_GRANULARITY_MINIMUM));
	return 0;
}

void kv_prim_close(kv_prim_t *p)
{
	int pushed;

	if (!p->ctx)
		return;
	if (p->stream && enter(p, &pushed) == 0) {
		drv.cuStreamDestroy_v2(p->stream);
		leave(pushed);
	}
	drv.cuDevicePrimaryCtxRelease_v2(p->dev);
	p->ctx = NULL;
	p->stream = NULL;
}

int kv_prim_bind(const kv_prim_t *p)
{
	CUcontext cur = NULL;

	CALL("cuCtxGetCurrent", drv.cuCtxGetCurrent(&cur));
	if (!cur)
		CALL("cuCtxSetCurrent", drv.cuCtxSetCurrent(p->ctx));
	return 0;
}

int kv_prim_hold(const kv_prim_t *p, int *pushed)
{
	CUcontext cur = NULL;

	*pushed = 0;
	CALL("cuCtxGetCurrent", drv.cuCtxGetCurrent(&cur));
	if (cur)
		return 0;
	CALL("cuCtxPushCurrent", drv.cuCtxPushCurrent_v2(p->ctx));
	*pushed = 1;
	return 0;
}

void kv_prim_unhold(int pushed)
{
	CUcontext prev;

	if (pushed)
		drv.cuCtxPopCurrent_v2(&prev);
}

int kv_prim_current_device(int *ordinal)
{
	CUcontext cur = NULL;
	CUdevice dev;

	pthread_once(&load_once, load);
	if (load_rc)
		return load_rc;
	*ordinal = 0;
	if (drv.cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur &&
	    drv.cuCtxGetDevice(&dev) == CUDA_SUCCESS)
		*ordinal = (int)dev;
	return 0;
}

/* Make p's context current on this thread if another one is: *pushed is 1
 * when it was pushed (pop it with leave). Returns 0 or a driver error. */
static int enter(const kv_prim_t *p, int *pushed)
{
	CUcontext cur = NULL;

	*pushed = 0;
	CALL("cuCtxGetCurrent", drv.cuCtxGetCurrent(&cur));
	if (cur == p->ctx)
		return 0;
	CALL("cuCtxPushCurrent", drv.cuCtxPushCurrent_v2(p->ctx));
	*pushed = 1;
	return 0;
}

static void leave(int pushed)
{
	CUcontext prev;

	if (pushed)
		drv.cuCtxPopCurrent_v2(&prev);
}

/* ---- virtual ranges and physical pages ------------------------------------ */

int kv_prim_reserve(const kv_prim_t *p, size_t size, CUdeviceptr *va)
{
	if (size == 0 || size % p->gran)
		return KVSHIM_EINVAL;
	CALL("cuMemAddressReserve",
	     drv.cuMemAddressReserve(va, size, p->gran, 0, 0));
	return 0;
}

int kv_prim_unreserve(const kv_prim_t *p, CUdeviceptr va, size_t size)
{
	CALL("cuMemAddressFree", drv.cuMemAddressFree(va, size));
	return 0;
}

int kv_prim_create(const kv_prim_t *p, CUmemGenericAllocationHandle *h)
{
	CUmemAllocationProp prop;

	page_prop(p, &prop);
	CALL("cuMemCreate", drv.cuMemCreate(h, p->page, &prop, 0));
	return 0;
}

int kv_prim_release(const kv_prim_t *p, CUmemGenericAllocationHandle h)
{
	CALL("cuMemRelease", drv.cuMemRelease(h));
	return 0;
}

int kv_prim_map(const kv_prim_t *p, CUdeviceptr va,
		CUmemGenericAllocationHandle h)
{
	CALL("cuMemMap", drv.cuMemMap(va, p->page, 0, h, 0));
	return 0;
}

int kv_prim_access(const kv_prim_t *p, CUdeviceptr va, size_t size)
{
	CUmemAccessDesc d;

	memset(&d, 0, sizeof(d));
	d.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	d.location.id = p->dev;
	d.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
	CALL("cuMemSetAccess", drv.cuMemSetAccess(va, size, &d, 1));
	return 0;
}

int kv_prim_unmap(const kv_prim_t *p, CUdeviceptr va, size_t size)
{
	CALL("cuMemUnmap", drv.cuMemUnmap(va, size));
	return 0;
}

/* ---- stream capture ---------------------------------------------------------- */

/*
 * Captures in progress in this process, as the hooks saw them begin and
 * end. No context-wide synchronisation is allowed while any stream
 * captures (cuCtxSynchronize fails and invalidates the capture, in every
 * capture mode: docs/BENCHMARKS.md, capture-probe), so a fence waits for
 * none: it is put off. The gate makes "no capture, so fence" one step: a
 * capture begins only once a fence in progress is done.
 */
static pthread_mutex_t capture_gate = PTHREAD_MUTEX_INITIALIZER;
static unsigned captures;
/* captures whose begin waited at the gate for a fence, and how long; the
 * fences that held the gate, twice each (odd while one holds it: the gate
 * is also held briefly by other captures' begins and ends, not counted) */
static unsigned long long gate_waits, gate_wait_ns;
static unsigned gate_fences;

/*
 * Waiting for the captures to end (kv_prim_capture_wait) has a lock of its
 * own: the gate is held through a fence's context-wide wait, which a
 * waiter must not sit behind. The end of the last capture broadcasts
 * under it after the count fell, so a waiter that saw a capture is
 * waiting by then. A thread's own captures are known by the epoch (the
 * times the count fell to 0) they began in: a capture ended on another
 * thread than began it (legal in relaxed mode) leaves its beginner's count
 * up only until then, and takes the ender's down (if the ender has one of
 * its own running, its waits then last their timeout).
 */
static pthread_mutex_t quiet_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t quiet;            /* captures fell to 0 (monotonic) */
static pthread_once_t quiet_once = PTHREAD_ONCE_INIT;
static unsigned epoch;
static __thread unsigned my_captures, my_epoch;

static void quiet_init(void)
{
	kv_prim_cond_init(&quiet);
}

void kv_prim_capture_begin(void)
{
	unsigned f = __atomic_load_n(&gate_fences, __ATOMIC_ACQUIRE);
	uint64_t t;

	if (pthread_mutex_trylock(&capture_gate)) {
		t = kv_prim_now_ns();
		pthread_mutex_lock(&capture_gate);
		/* a fence held the gate while this begin waited for it */
		if ((f & 1) || gate_fences != f) {
			__atomic_add_fetch(&gate_waits, 1, __ATOMIC_RELAXED);
			__atomic_add_fetch(&gate_wait_ns, kv_prim_now_ns() - t, __ATOMIC_RELAXED);
		}
	}
	__atomic_store_n(&captures, captures + 1, __ATOMIC_RELEASE);
	if (my_epoch != epoch) {
		my_epoch = epoch;
		my_captures = 0;
	}
	my_captures++;
	pthread_mutex_unlock(&capture_gate);
}

void kv_prim_capture_end(void)
{
	unsigned left;

	pthread_once(&quiet_once, quiet_init);
	pthread_mutex_lock(&capture_gate);
	left = captures ? captures - 1 : 0;
	__atomic_store_n(&captures, left, __ATOMIC_RELEASE);
	if (my_epoch == epoch && my_captures)
		my_captures--;
	if (!left)
		__atomic_store_n(&epoch, epoch + 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&capture_gate);
	if (!left) {
		pthread_mutex_lock(&quiet_lock);
		pthread_cond_broadcast(&quiet);
		pthread_mutex_unlock(&quiet_lock);
	}
}

int kv_prim_capture_wait(unsigned ms)
{
	struct timespec until;
	int r = 0, still;

	if (!kv_prim_capturing())
		return 0;
	/* this thread's own capture: waiting would not end it */
	if (my_captures && my_epoch == __atomic_load_n(&epoch, __ATOMIC_ACQUIRE))
		return 1;
	pthread_once(&quiet_once, quiet_init);
	until = kv_prim_deadline(ms);
	pthread_mutex_lock(&quiet_lock);
	while (kv_prim_capturing() && r != ETIMEDOUT)
		r = pthread_cond_timedwait(&quiet, &quiet_lock, &until);
	still = kv_prim_capturing();
	pthread_mutex_unlock(&quiet_lock);
	return still;
}

void kv_prim_forked(void)
{
	static const pthread_once_t once = PTHREAD_ONCE_INIT;

	/* the child has one thread, and no capture of its parent's: the
	 * locks, and the condition (made again when first needed), anew */
	pthread_mutex_init(&capture_gate, NULL);
	pthread_mutex_init(&quiet_lock, NULL);
	quiet_once = once;
	captures = 0;
	epoch++;
	my_captures = 0;
	gate_waits = gate_wait_ns = 0;
	gate_fences = 0;
}

void kv_prim_capture_gate(unsigned long long *waits, unsigned long long *ns)
{
	*waits = __atomic_load_n(&gate_waits, __ATOMIC_RELAXED);
	*ns = __atomic_load_n(&gate_wait_ns, __ATOMIC_RELAXED);
}

/* The gate held, a fence's wait begins or ends (the count of fences odd
 * while one waits). */
static void fence_mark(void)
{
	__atomic_store_n(&gate_fences, gate_fences + 1, __ATOMIC_RELEASE);
}

void kv_prim_capture_gate_held(void (*fn)(void *), void *arg, int fence)
{
	pthread_mutex_lock(&capture_gate);
	if (fence)
		fence_mark();
	fn(arg);
	if (fence)
		fence_mark();
	pthread_mutex_unlock(&capture_gate);
}

int kv_prim_capturing(void)
{
	return __atomic_load_n(&captures, __ATOMIC_ACQUIRE) != 0;
}

int kv_prim_relax(void)
{
	CUstreamCaptureMode m = CU_STREAM_CAPTURE_MODE_RELAXED;

	if (!drv.cuThreadExchangeStreamCaptureMode ||
	    drv.cuThreadExchangeStreamCaptureMode(&m) != CUDA_SUCCESS)
		return -1;
	return (int)m;
}

void kv_prim_unrelax(int mode)
{
	CUstreamCaptureMode m = (CUstreamCaptureMode)mode;

	if (mode >= 0 && drv.cuThreadExchangeStreamCaptureMode)
		drv.cuThreadExchangeStreamCaptureMode(&m);
}

int kv_prim_fence(const kv_prim_t *p, int *fenced)
{
	const char *what = "cuCtxPushCurrent";
	CUcontext prev;
	CUresult r;

	*fenced = 0;
	pthread_mutex_lock(&capture_gate);
	if (captures) {
		pthread_mutex_unlock(&capture_gate);
		return 0;
	}
	fence_mark();
	r = drv.cuCtxPushCurrent_v2(p->ctx);
	if (r == CUDA_SUCCESS) {
		what = "cuCtxSynchronize";
		r = drv.cuCtxSynchronize();
		drv.cuCtxPopCurrent_v2(&prev);
		*fenced = r == CUDA_SUCCESS;
	}
	fence_mark();
	pthread_mutex_unlock(&capture_gate);
	return r == CUDA_SUCCESS ? 0 : fail(what, r);
}

int kv_prim_zero(const kv_prim_t *p, CUdeviceptr va, size_t size)
{
	int mode, pushed, rc;
	CUresult r;

	rc = enter(p, &pushed);
	if (rc)
		return rc;
	/* kvshim's own stream: relaxed, its wait is legal on any thread
	 * while others capture (and on a capturing thread too) */
	mode = kv_prim_relax();
	r = drv.cuMemsetD8Async(va, 0, size, p->stream);
	if (r != CUDA_SUCCESS)
		rc = fail("cuMemsetD8Async", r);
	else if ((r = drv.cuStreamSynchronize(p->stream)) != CUDA_SUCCESS)
		rc = fail("cuStreamSynchronize", r);
	kv_prim_unrelax(mode);
	leave(pushed);
	return rc;
}

int kv_prim_meminfo(const kv_prim_t *p, size_t *free_bytes, size_t *total)
{
	int pushed, rc;
	CUresult r;

	rc = enter(p, &pushed);
	if (rc)
		return rc;
	r = drv.cuMemGetInfo_v2(free_bytes, total);
	leave(pushed);
	return r == CUDA_SUCCESS ? 0 : fail("cuMemGetInfo", r);
}

uint64_t kv_prim_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int kv_prim_cond_init(pthread_cond_t *c)
{
	pthread_condattr_t ca;
	int rc;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	rc = pthread_cond_init(c, &ca);
	pthread_condattr_destroy(&ca);
	return rc;
}

struct timespec kv_prim_deadline(unsigned ms)
{
	uint64_t ns = kv_prim_now_ns() + (uint64_t)ms * 1000000u;
	struct timespec ts = { (time_t)(ns / 1000000000u), (long)(ns % 1000000000u) };

	return ts;
}
