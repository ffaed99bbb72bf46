/*
 * cudart.c: a stand-in CUDA runtime (libcudart.so.13) so test programs written like real CUDA
 * programs run on the driver emulation, or on any libcuda.so.1.
 *
 * Like the real runtime it does not link libcuda: it dlopens libcuda.so.1, takes only
 * cuGetProcAddress_v2 from dlsym and gets every other driver function through it, by base
 * name. That is the path an interposer of driver entry points has to cover.
 *
 * Everything runs synchronously on the driver's default stream semantics; the *Async calls are
 * the synchronous driver calls with a stream argument where the driver has one. Stream capture
 * and graphs are the driver's, under the runtime's names and error codes.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <cuda.h>
#include <cuda_runtime_api.h>

#define KV_RT_API __attribute__((visibility("default")))
#define KV_RT_VERSION 13000
#define KV_RT_MAX_DEVICES 64

/* The driver functions used: X(exported symbol, base name asked of cuGetProcAddress). */
#define KV_RT_DRIVER(X)                                  \
    X(cuInit, "cuInit")                                  \
    X(cuDriverGetVersion, "cuDriverGetVersion")          \
    X(cuDeviceGetCount, "cuDeviceGetCount")              \
    X(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain") \
    X(cuCtxGetCurrent, "cuCtxGetCurrent")                \
    X(cuCtxSetCurrent, "cuCtxSetCurrent")                \
    X(cuCtxGetDevice, "cuCtxGetDevice")                  \
    X(cuCtxSynchronize, "cuCtxSynchronize")              \
    X(cuMemAlloc_v2, "cuMemAlloc")                       \
    X(cuMemFree_v2, "cuMemFree")                         \
    X(cuMemGetInfo_v2, "cuMemGetInfo")                   \
    X(cuMemsetD8_v2, "cuMemsetD8")                       \
    X(cuMemsetD8Async, "cuMemsetD8Async")                \
    X(cuMemsetD2D8_v2, "cuMemsetD2D8")                   \
    X(cuMemsetD2D8Async, "cuMemsetD2D8Async")            \
    X(cuMemGetAddressRange_v2, "cuMemGetAddressRange")   \
    X(cuPointerGetAttributes, "cuPointerGetAttributes")  \
    X(cuMemcpy, "cuMemcpy")                              \
    X(cuMemcpyAsync, "cuMemcpyAsync")                    \
    X(cuMemcpyHtoD_v2, "cuMemcpyHtoD")                   \
    X(cuMemcpyDtoH_v2, "cuMemcpyDtoH")                   \
    X(cuMemcpyDtoD_v2, "cuMemcpyDtoD")                   \
    X(cuMemcpyHtoDAsync_v2, "cuMemcpyHtoDAsync")         \
    X(cuMemcpyDtoHAsync_v2, "cuMemcpyDtoHAsync")         \
    X(cuMemcpyDtoDAsync_v2, "cuMemcpyDtoDAsync")         \
    X(cuMemcpy2D_v2, "cuMemcpy2D")                       \
    X(cuMemcpy2DAsync_v2, "cuMemcpy2DAsync")             \
    X(cuMemcpy3D_v2, "cuMemcpy3D")                       \
    X(cuMemcpy3DAsync_v2, "cuMemcpy3DAsync")             \
    X(cuMemcpyPeer, "cuMemcpyPeer")                      \
    X(cuMemcpyPeerAsync, "cuMemcpyPeerAsync")            \
    X(cuStreamCreate, "cuStreamCreate")                  \
    X(cuStreamDestroy_v2, "cuStreamDestroy")             \
    X(cuStreamSynchronize, "cuStreamSynchronize")        \
    X(cuStreamQuery, "cuStreamQuery")                    \
    X(cuStreamBeginCapture_v2, "cuStreamBeginCapture")   \
    X(cuStreamEndCapture, "cuStreamEndCapture")          \
    X(cuStreamIsCapturing, "cuStreamIsCapturing")        \
    X(cuStreamGetCaptureInfo_v3, "cuStreamGetCaptureInfo") \
    X(cuThreadExchangeStreamCaptureMode, "cuThreadExchangeStreamCaptureMode") \
    X(cuGraphInstantiateWithFlags, "cuGraphInstantiateWithFlags") \
    X(cuGraphLaunch, "cuGraphLaunch")                    \
    X(cuGraphGetNodes, "cuGraphGetNodes")                \
    X(cuGraphExecDestroy, "cuGraphExecDestroy")          \
    X(cuGraphDestroy, "cuGraphDestroy")

struct driver {
#define KV_RT_FIELD(sym, name) __typeof__(sym) *sym;
    KV_RT_DRIVER(KV_RT_FIELD)
#undef KV_RT_FIELD
};

/*
 * The driver's functions as cuGetProcAddress hands them out for the legacy default stream (drv)
 * and for per-thread default streams (drv_pt: the _ptds and _ptsz forms where the driver has
 * them, the same functions elsewhere). The runtime's own _ptds and _ptsz forms run on drv_pt, so
 * a cudaMemcpy_ptds reaches the driver's cuMemcpy*_ptds as a program built with
 * --default-stream per-thread does [choice: the real runtime's internal road is its own].
 */
static struct driver drv, drv_pt;

static __typeof__(cuGetProcAddress_v2) *get_proc;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static cudaError_t load_error;      /* why the driver is unusable, set once */
static bool driver_found;           /* libcuda.so.1 and its entry points were found */

static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static CUcontext primary[KV_RT_MAX_DEVICES];   /* retained once, kept for the process */

static __thread cudaError_t last_error;
static __thread int thread_device;

/* ------------------------------------------------------------------ errors */

/* The runtime's code for a driver result, as the real runtime maps them. */
static cudaError_t from_driver(CUresult r)
{
    switch (r) {
    case CUDA_SUCCESS: return cudaSuccess;
    case CUDA_ERROR_INVALID_VALUE: return cudaErrorInvalidValue;
    case CUDA_ERROR_OUT_OF_MEMORY: return cudaErrorMemoryAllocation;
    case CUDA_ERROR_NOT_INITIALIZED: return cudaErrorInitializationError;
    case CUDA_ERROR_DEINITIALIZED: return cudaErrorCudartUnloading;
    case CUDA_ERROR_NO_DEVICE: return cudaErrorNoDevice;
    case CUDA_ERROR_INVALID_DEVICE: return cudaErrorInvalidDevice;
    case CUDA_ERROR_INVALID_IMAGE: return cudaErrorInvalidKernelImage;
    case CUDA_ERROR_INVALID_CONTEXT: return cudaErrorDeviceUninitialized;
    case CUDA_ERROR_ALREADY_MAPPED: return cudaErrorAlreadyMapped;
    case CUDA_ERROR_NOT_MAPPED: return cudaErrorNotMapped;
    case CUDA_ERROR_INVALID_HANDLE: return cudaErrorInvalidResourceHandle;
    case CUDA_ERROR_ILLEGAL_STATE: return cudaErrorIllegalState;
    case CUDA_ERROR_NOT_FOUND: return cudaErrorSymbolNotFound;
    case CUDA_ERROR_NOT_READY: return cudaErrorNotReady;
    case CUDA_ERROR_ILLEGAL_ADDRESS: return cudaErrorIllegalAddress;
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return cudaErrorLaunchOutOfResources;
    case CUDA_ERROR_LAUNCH_FAILED: return cudaErrorLaunchFailure;
    case CUDA_ERROR_NOT_PERMITTED: return cudaErrorNotPermitted;
    case CUDA_ERROR_NOT_SUPPORTED: return cudaErrorNotSupported;
    case CUDA_ERROR_OPERATING_SYSTEM: return cudaErrorOperatingSystem;
    case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: return cudaErrorStreamCaptureUnsupported;
    case CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: return cudaErrorStreamCaptureInvalidated;
    case CUDA_ERROR_STREAM_CAPTURE_IMPLICIT: return cudaErrorStreamCaptureImplicit;
    case CUDA_ERROR_CAPTURED_EVENT: return cudaErrorCapturedEvent;
    case CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD: return cudaErrorStreamCaptureWrongThread;
    default: return cudaErrorUnknown;
    }
}

/* Remember a failure as the thread's last error (success leaves it). Returns e. */
static cudaError_t record(cudaError_t e)
{
    if (e != cudaSuccess)
        last_error = e;
    return e;
}

static cudaError_t record_driver(CUresult r)
{
    return record(from_driver(r));
}

#define KV_RT_ERRORS(E)                                                                      \
    E(cudaSuccess, "no error")                                                               \
    E(cudaErrorInvalidValue, "invalid argument")                                             \
    E(cudaErrorInvalidPitchValue, "invalid pitch argument")                                  \
    E(cudaErrorMemoryAllocation, "out of memory")                                            \
    E(cudaErrorInitializationError, "initialization error")                                  \
    E(cudaErrorCudartUnloading, "driver shutting down")                                      \
    E(cudaErrorInvalidDevicePointer, "invalid device pointer")                               \
    E(cudaErrorInvalidMemcpyDirection, "invalid copy direction for memcpy")                  \
    E(cudaErrorInsufficientDriver, "CUDA driver version is insufficient for CUDA runtime version") \
    E(cudaErrorNoDevice, "no CUDA-capable device is detected")                               \
    E(cudaErrorInvalidDevice, "invalid device ordinal")                                      \
    E(cudaErrorInvalidKernelImage, "device kernel image is invalid")                         \
    E(cudaErrorDeviceUninitialized, "invalid device context")                                \
    E(cudaErrorAlreadyMapped, "resource already mapped")                                     \
    E(cudaErrorNotMapped, "resource not mapped")                                             \
    E(cudaErrorOperatingSystem, "OS call failed or operation not supported on this OS")      \
    E(cudaErrorInvalidResourceHandle, "invalid resource handle")                             \
    E(cudaErrorIllegalState, "the operation cannot be performed in the present state")       \
    E(cudaErrorSymbolNotFound, "named symbol not found")                                     \
    E(cudaErrorNotReady, "device not ready")                                                 \
    E(cudaErrorIllegalAddress, "an illegal memory access was encountered")                   \
    E(cudaErrorLaunchOutOfResources, "too many resources requested for launch")              \
    E(cudaErrorLaunchFailure, "unspecified launch failure")                                  \
    E(cudaErrorNotPermitted, "operation not permitted")                                      \
    E(cudaErrorNotSupported, "operation not supported")                                      \
    E(cudaErrorStreamCaptureUnsupported, "operation not permitted when stream is capturing") \
    E(cudaErrorStreamCaptureInvalidated, "operation failed due to a previous error during capture") \
    E(cudaErrorStreamCaptureImplicit,                                                        \
      "operation would make the legacy stream depend on a capturing blocking stream")        \
    E(cudaErrorCapturedEvent,                                                                \
      "operation not permitted on an event last recorded in a capturing stream")             \
    E(cudaErrorStreamCaptureWrongThread,                                                     \
      "attempt to terminate a thread-local capture sequence from another thread")            \
    E(cudaErrorUnknown, "unknown error")

static const struct {
    cudaError_t code;
    const char *name;
    const char *text;
} errors[] = {
#define KV_RT_ERR(code, text) { code, #code, text },
    KV_RT_ERRORS(KV_RT_ERR)
#undef KV_RT_ERR
};

static int find_error(cudaError_t e)
{
    for (size_t i = 0; i < sizeof(errors) / sizeof(errors[0]); i++)
        if (errors[i].code == e)
            return (int)i;
    return -1;
}

KV_RT_API const char *cudaGetErrorName(cudaError_t error)
{
    int i = find_error(error);

    return i < 0 ? "unrecognized error code" : errors[i].name;
}

KV_RT_API const char *cudaGetErrorString(cudaError_t error)
{
    int i = find_error(error);

    return i < 0 ? "unrecognized error code" : errors[i].text;
}

KV_RT_API cudaError_t cudaGetLastError(void)
{
    cudaError_t e = last_error;

    last_error = cudaSuccess;
    return e;
}

KV_RT_API cudaError_t cudaPeekAtLastError(void)
{
    return last_error;
}

/* ------------------------------------------------------------------ start-up */

/*
 * Find the driver and its entry points, then cuInit. Runs once: a process whose driver is
 * missing or refuses to start gets the same error from every later call, as with the real one.
 */
static void load_driver(void)
{
    CUdriverProcAddressQueryResult st;
    void *lib, *fn;
    CUresult r;

    lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!lib)
        goto insufficient;
    get_proc = (__typeof__(get_proc))dlsym(lib, "cuGetProcAddress_v2");
    if (!get_proc)
        goto insufficient;
#define KV_RT_RESOLVE(sym, name)                                                    \
    if (get_proc(name, &fn, KV_RT_VERSION, CU_GET_PROC_ADDRESS_DEFAULT, &st) !=      \
            CUDA_SUCCESS || !fn)                                                     \
        goto insufficient;                                                           \
    drv.sym = (__typeof__(drv.sym))fn;                                               \
    if (get_proc(name, &fn, KV_RT_VERSION, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, \
                 &st) != CUDA_SUCCESS || !fn)                                        \
        goto insufficient;                                                           \
    drv_pt.sym = (__typeof__(drv_pt.sym))fn;
    KV_RT_DRIVER(KV_RT_RESOLVE)
#undef KV_RT_RESOLVE
    driver_found = true;
    r = drv.cuInit(0);
    load_error = from_driver(r);
    if (r == CUDA_ERROR_INVALID_VALUE || r == CUDA_ERROR_NOT_INITIALIZED)
        load_error = cudaErrorInitializationError;
    return;

insufficient:
    load_error = cudaErrorInsufficientDriver;
}

/* The driver, loaded and initialized. Returns cudaSuccess or why it cannot be used. */
static cudaError_t need_driver(void)
{
    pthread_once(&load_once, load_driver);
    return load_error;
}

/* Device dev's primary context, retained on first use. Returns a driver result. */
static CUresult get_primary(int dev, CUcontext *out)
{
    CUresult r = CUDA_SUCCESS;

    if (dev < 0 || dev >= KV_RT_MAX_DEVICES)
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&ctx_lock);
    if (!primary[dev])
        r = drv.cuDevicePrimaryCtxRetain(&primary[dev], dev);
    *out = primary[dev];
    pthread_mutex_unlock(&ctx_lock);
    return r;
}

/*
 * The driver loaded, and a context current in this thread: where none is, the primary
 * context of this thread's device (cudaSetDevice's, else 0) becomes current.
 */
static cudaError_t need_context(void)
{
    cudaError_t e = need_driver();
    CUcontext c = NULL;
    CUresult r;

    if (e != cudaSuccess)
        return e;
    r = drv.cuCtxGetCurrent(&c);
    if (r == CUDA_SUCCESS && !c) {
        r = get_primary(thread_device, &c);
        if (r == CUDA_SUCCESS)
            r = drv.cuCtxSetCurrent(c);
    }
    return from_driver(r);
}

/* ------------------------------------------------------------------ devices and versions */

KV_RT_API cudaError_t cudaRuntimeGetVersion(int *runtimeVersion)
{
    if (!runtimeVersion)
        return record(cudaErrorInvalidValue);
    *runtimeVersion = KV_RT_VERSION;
    return cudaSuccess;
}

/* 0 without a driver, as the real runtime reports it. */
KV_RT_API cudaError_t cudaDriverGetVersion(int *driverVersion)
{
    if (!driverVersion)
        return record(cudaErrorInvalidValue);
    need_driver();
    if (!driver_found) {
        *driverVersion = 0;
        return cudaSuccess;
    }
    return record_driver(drv.cuDriverGetVersion(driverVersion));
}

KV_RT_API cudaError_t cudaGetDeviceCount(int *count)
{
    cudaError_t e;

    if (!count)
        return record(cudaErrorInvalidValue);
    e = need_driver();
    if (e != cudaSuccess) {
        *count = 0;
        return record(e);
    }
    return record_driver(drv.cuDeviceGetCount(count));
}

KV_RT_API cudaError_t cudaSetDevice(int device)
{
    cudaError_t e = need_driver();
    CUcontext c;
    CUresult r;
    int n;

    if (e != cudaSuccess)
        return record(e);
    r = drv.cuDeviceGetCount(&n);
    if (r != CUDA_SUCCESS)
        return record_driver(r);
    if (device < 0 || device >= n)
        return record(cudaErrorInvalidDevice);
    r = get_primary(device, &c);
    if (r == CUDA_SUCCESS)
        r = drv.cuCtxSetCurrent(c);
    if (r == CUDA_SUCCESS)
        thread_device = device;
    return record_driver(r);
}

KV_RT_API cudaError_t cudaGetDevice(int *device)
{
    cudaError_t e;
    CUcontext c = NULL;
    CUdevice d;

    if (!device)
        return record(cudaErrorInvalidValue);
    e = need_driver();
    if (e != cudaSuccess)
        return record(e);
    if (drv.cuCtxGetCurrent(&c) == CUDA_SUCCESS && c &&
        drv.cuCtxGetDevice(&d) == CUDA_SUCCESS) {
        *device = d;
        return cudaSuccess;
    }
    *device = thread_device;
    return cudaSuccess;
}

KV_RT_API cudaError_t cudaDeviceSynchronize(void)
{
    cudaError_t e = need_context();

    if (e != cudaSuccess)
        return record(e);
    return record_driver(drv.cuCtxSynchronize());
}

/* ------------------------------------------------------------------ memory */

/*
 * The exported functions never call each other: a library interposing on one of them must see
 * only the application's calls. Shared bodies are static.
 *
 * A zero-byte request succeeds with NULL, as in the real runtime.
 */
static cudaError_t alloc(void **devPtr, size_t size)
{
    cudaError_t e;
    CUdeviceptr p;
    CUresult r;

    if (!devPtr)
        return record(cudaErrorInvalidValue);
    e = need_context();
    if (e != cudaSuccess)
        return record(e);
    if (size == 0) {
        *devPtr = NULL;
        return cudaSuccess;
    }
    r = drv.cuMemAlloc_v2(&p, size);
    if (r == CUDA_SUCCESS)
        *devPtr = (void *)p;
    return record_driver(r);
}

/* free(NULL) only starts the runtime: cudaFree(0) is the usual way to create the context. */
static cudaError_t release(void *devPtr)
{
    cudaError_t e = need_context();

    if (e != cudaSuccess)
        return record(e);
    if (!devPtr)
        return cudaSuccess;
    return record_driver(drv.cuMemFree_v2((CUdeviceptr)devPtr));
}

KV_RT_API cudaError_t cudaMalloc(void **devPtr, size_t size)
{
    return alloc(devPtr, size);
}

KV_RT_API cudaError_t cudaFree(void *devPtr)
{
    return release(devPtr);
}

/* Stream-ordered allocation is plain allocation here: all work is already complete. */
KV_RT_API cudaError_t cudaMallocAsync(void **devPtr, size_t size, cudaStream_t hStream)
{
    (void)hStream;
    return alloc(devPtr, size);
}

KV_RT_API cudaError_t cudaFreeAsync(void *devPtr, cudaStream_t hStream)
{
    (void)hStream;
    return release(devPtr);
}

KV_RT_API cudaError_t cudaMemGetInfo(size_t *free, size_t *total)
{
    cudaError_t e = need_context();

    if (e != cudaSuccess)
        return record(e);
    return record_driver(drv.cuMemGetInfo_v2(free, total));
}

/* A memset of count bytes through d's cuMemsetD8 (its async form with async). */
static cudaError_t set1d(const struct driver *d, void *devPtr, int value, size_t count,
                         bool async, cudaStream_t stream)
{
    cudaError_t e = need_context();

    if (e != cudaSuccess)
        return record(e);
    return record_driver(async ? d->cuMemsetD8Async((CUdeviceptr)devPtr, (unsigned char)value,
                                                    count, stream)
                               : d->cuMemsetD8_v2((CUdeviceptr)devPtr, (unsigned char)value,
                                                  count));
}

/* A 2D memset through d's cuMemsetD2D8 (its async form with async). */
static cudaError_t set2d(const struct driver *d, void *devPtr, size_t pitch, int value,
                         size_t width, size_t height, bool async, cudaStream_t stream)
{
    cudaError_t e = need_context();

    if (e != cudaSuccess)
        return record(e);
    return record_driver(async ? d->cuMemsetD2D8Async((CUdeviceptr)devPtr, pitch,
                                                      (unsigned char)value, width, height,
                                                      stream)
                               : d->cuMemsetD2D8_v2((CUdeviceptr)devPtr, pitch,
                                                    (unsigned char)value, width, height));
}

KV_RT_API cudaError_t cudaMemset(void *devPtr, int value, size_t count)
{
    return set1d(&drv, devPtr, value, count, false, NULL);
}

KV_RT_API cudaError_t cudaMemsetAsync(void *devPtr, int value, size_t count, cudaStream_t stream)
{
    return set1d(&drv, devPtr, value, count, true, stream);
}

KV_RT_API cudaError_t cudaMemset2D(void *devPtr, size_t pitch, int value, size_t width,
                                  size_t height)
{
    return set2d(&drv, devPtr, pitch, value, width, height, false, NULL);
}

KV_RT_API cudaError_t cudaMemset2DAsync(void *devPtr, size_t pitch, int value, size_t width,
                                       size_t height, cudaStream_t stream)
{
    return set2d(&drv, devPtr, pitch, value, width, height, true, stream);
}

/*
 * A 3D memset: extent.depth slices of extent.height rows of extent.width bytes; rows p.pitch
 * apart, slices p.pitch * p.ysize apart. Checked whole first (slices must not overlap, the
 * range must lie in one allocation), so that a refused call writes nothing; then one 2D
 * memset per slice, through d.
 */
static cudaError_t memset3d(const struct driver *d, struct cudaPitchedPtr p, int value,
                            struct cudaExtent x, bool async, cudaStream_t stream)
{
    CUdeviceptr base = 0, dst = (CUdeviceptr)p.ptr;
    size_t slice, span, size = 0;
    cudaError_t e = need_context();
    CUresult r = CUDA_SUCCESS;

    if (e != cudaSuccess)
        return record(e);
    if (x.width == 0 || x.height == 0 || x.depth == 0)
        return record(cudaSuccess);
    if ((x.height > 1 || x.depth > 1) && p.pitch < x.width)
        return record(cudaErrorInvalidValue);
    if (x.depth > 1 && x.height > p.ysize)
        return record(cudaErrorInvalidValue);
    if (__builtin_mul_overflow(p.pitch, p.ysize, &slice) ||
        __builtin_mul_overflow(x.depth - 1, slice, &span) ||
        __builtin_add_overflow(span, (x.height - 1) * p.pitch, &span) ||
        __builtin_add_overflow(span, x.width, &span))
        return record(cudaErrorInvalidValue);
    r = drv.cuMemGetAddressRange_v2(&base, &size, dst);
    if (r != CUDA_SUCCESS || span > size - (dst - base))
        return record(cudaErrorInvalidValue);
    for (size_t i = 0; i < x.depth && r == CUDA_SUCCESS; i++)
        r = async ? d->cuMemsetD2D8Async(dst + i * slice, p.pitch, (unsigned char)value,
                                         x.width, x.height, stream)
                  : d->cuMemsetD2D8_v2(dst + i * slice, p.pitch, (unsigned char)value,
                                       x.width, x.height);
    return record_driver(r);
}

KV_RT_API cudaError_t cudaMemset3D(struct cudaPitchedPtr pitchedDevPtr, int value,
                                  struct cudaExtent extent)
{
    return memset3d(&drv, pitchedDevPtr, value, extent, false, NULL);
}

KV_RT_API cudaError_t cudaMemset3DAsync(struct cudaPitchedPtr pitchedDevPtr, int value,
                                       struct cudaExtent extent, cudaStream_t stream)
{
    return memset3d(&drv, pitchedDevPtr, value, extent, true, stream);
}

/*
 * One copy, by kind: the explicit kinds go to d's directional copies (which check the device
 * side), host-to-host and Default to the unified cuMemcpy.
 */
static cudaError_t copy(const struct driver *d, void *dst, const void *src, size_t count,
                        enum cudaMemcpyKind kind, bool async, cudaStream_t s)
{
    CUdeviceptr dp = (CUdeviceptr)dst, sp = (CUdeviceptr)src;
    cudaError_t e = need_context();
    CUresult r;

    if (e != cudaSuccess)
        return record(e);
    switch (kind) {
    case cudaMemcpyHostToDevice:
        r = async ? d->cuMemcpyHtoDAsync_v2(dp, src, count, s) : d->cuMemcpyHtoD_v2(dp, src, count);
        break;
    case cudaMemcpyDeviceToHost:
        r = async ? d->cuMemcpyDtoHAsync_v2(dst, sp, count, s) : d->cuMemcpyDtoH_v2(dst, sp, count);
        break;
    case cudaMemcpyDeviceToDevice:
        r = async ? d->cuMemcpyDtoDAsync_v2(dp, sp, count, s) : d->cuMemcpyDtoD_v2(dp, sp, count);
        break;
    case cudaMemcpyHostToHost:
    case cudaMemcpyDefault:
        r = async ? d->cuMemcpyAsync(dp, sp, count, s) : d->cuMemcpy(dp, sp, count);
        break;
    default:
        return record(cudaErrorInvalidMemcpyDirection);
    }
    return record_driver(r);
}

KV_RT_API cudaError_t cudaMemcpy(void *dst, const void *src, size_t count,
                                 enum cudaMemcpyKind kind)
{
    return copy(&drv, dst, src, count, kind, false, NULL);
}

KV_RT_API cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count,
                                      enum cudaMemcpyKind kind, cudaStream_t stream)
{
    return copy(&drv, dst, src, count, kind, true, stream);
}

/*
 * The memory types of a copy of kind k's destination (*dst) and source (*src): the explicit
 * kinds name them, Default leaves each to the pointer (unified). Returns false for a kind
 * that is none of these.
 */
static bool copy_types(enum cudaMemcpyKind k, CUmemorytype *dst, CUmemorytype *src)
{
    switch (k) {
    case cudaMemcpyHostToHost:
        *dst = CU_MEMORYTYPE_HOST, *src = CU_MEMORYTYPE_HOST;
        return true;
    case cudaMemcpyHostToDevice:
        *dst = CU_MEMORYTYPE_DEVICE, *src = CU_MEMORYTYPE_HOST;
        return true;
    case cudaMemcpyDeviceToHost:
        *dst = CU_MEMORYTYPE_HOST, *src = CU_MEMORYTYPE_DEVICE;
        return true;
    case cudaMemcpyDeviceToDevice:
        *dst = CU_MEMORYTYPE_DEVICE, *src = CU_MEMORYTYPE_DEVICE;
        return true;
    case cudaMemcpyDefault:
        *dst = CU_MEMORYTYPE_UNIFIED, *src = CU_MEMORYTYPE_UNIFIED;
        return true;
    default:
        return false;
    }
}

/* Put p where a side of memory type t keeps its pointer: host or device. */
static void set_side(CUmemorytype t, const void *p, const void **host, CUdeviceptr *dev)
{
    if (t == CU_MEMORYTYPE_HOST)
        *host = p;
    else
        *dev = (CUdeviceptr)p;
}

/*
 * A 2D copy as d's cuMemcpy2D. A width past either pitch is the runtime's own refusal
 * (cudaErrorInvalidPitchValue, as documented), made before the driver is asked.
 */
static cudaError_t copy2d(const struct driver *d, void *dst, size_t dpitch, const void *src,
                          size_t spitch, size_t width, size_t height, enum cudaMemcpyKind kind,
                          bool async, cudaStream_t s)
{
    CUDA_MEMCPY2D p;
    const void *dhost = NULL;
    cudaError_t e = need_context();

    if (e != cudaSuccess)
        return record(e);
    memset(&p, 0, sizeof(p));
    if (!copy_types(kind, &p.dstMemoryType, &p.srcMemoryType))
        return record(cudaErrorInvalidMemcpyDirection);
    if (width > dpitch || width > spitch)
        return record(cudaErrorInvalidPitchValue);
    set_side(p.dstMemoryType, dst, &dhost, &p.dstDevice);
    p.dstHost = (void *)dhost;
    set_side(p.srcMemoryType, src, &p.srcHost, &p.srcDevice);
    p.dstPitch = dpitch;
    p.srcPitch = spitch;
    p.WidthInBytes = width;
    p.Height = height;
    return record_driver(async ? d->cuMemcpy2DAsync_v2(&p, s) : d->cuMemcpy2D_v2(&p));
}

KV_RT_API cudaError_t cudaMemcpy2D(void *dst, size_t dpitch, const void *src, size_t spitch,
                                   size_t width, size_t height, enum cudaMemcpyKind kind)
{
    return copy2d(&drv, dst, dpitch, src, spitch, width, height, kind, false, NULL);
}

KV_RT_API cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch,
                                        size_t width, size_t height, enum cudaMemcpyKind kind,
                                        cudaStream_t stream)
{
    return copy2d(&drv, dst, dpitch, src, spitch, width, height, kind, true, stream);
}

/*
 * A 3D copy as d's cuMemcpy3D: positions and the extent in bytes (no array takes part: the
 * emulation has none, and refuses one with cudaErrorInvalidValue), slices pitch * ysize bytes
 * apart on each side.
 */
static cudaError_t copy3d(const struct driver *d, const struct cudaMemcpy3DParms *q, bool async,
                          cudaStream_t s)
{
    CUDA_MEMCPY3D p;
    const void *dhost = NULL;
    cudaError_t e = need_context();

    if (e != cudaSuccess)
        return record(e);
    if (!q || q->srcArray || q->dstArray)
        return record(cudaErrorInvalidValue);
    memset(&p, 0, sizeof(p));
    if (!copy_types(q->kind, &p.dstMemoryType, &p.srcMemoryType))
        return record(cudaErrorInvalidMemcpyDirection);
    set_side(p.dstMemoryType, q->dstPtr.ptr, &dhost, &p.dstDevice);
    p.dstHost = (void *)dhost;
    set_side(p.srcMemoryType, q->srcPtr.ptr, &p.srcHost, &p.srcDevice);
    p.dstXInBytes = q->dstPos.x;
    p.dstY = q->dstPos.y;
    p.dstZ = q->dstPos.z;
    p.dstPitch = q->dstPtr.pitch;
    p.dstHeight = q->dstPtr.ysize;
    p.srcXInBytes = q->srcPos.x;
    p.srcY = q->srcPos.y;
    p.srcZ = q->srcPos.z;
    p.srcPitch = q->srcPtr.pitch;
    p.srcHeight = q->srcPtr.ysize;
    p.WidthInBytes = q->extent.width;
    p.Height = q->extent.height;
    p.Depth = q->extent.depth;
    return record_driver(async ? d->cuMemcpy3DAsync_v2(&p, s) : d->cuMemcpy3D_v2(&p));
}

KV_RT_API cudaError_t cudaMemcpy3D(const struct cudaMemcpy3DParms *p)
{
    return copy3d(&drv, p, false, NULL);
}

KV_RT_API cudaError_t cudaMemcpy3DAsync(const struct cudaMemcpy3DParms *p, cudaStream_t stream)
{
    return copy3d(&drv, p, true, stream);
}

/* A copy between two devices' memory, through their primary contexts. */
static cudaError_t copy_peer(void *dst, int ddev, const void *src, int sdev, size_t count,
                             bool async, cudaStream_t s)
{
    CUcontext dc = NULL, sc = NULL;
    cudaError_t e = need_context();
    CUresult r;

    if (e != cudaSuccess)
        return record(e);
    r = get_primary(ddev, &dc);
    if (r == CUDA_SUCCESS)
        r = get_primary(sdev, &sc);
    if (r != CUDA_SUCCESS)
        return record(cudaErrorInvalidDevice);
    r = async ? drv.cuMemcpyPeerAsync((CUdeviceptr)dst, dc, (CUdeviceptr)src, sc, count, s)
              : drv.cuMemcpyPeer((CUdeviceptr)dst, dc, (CUdeviceptr)src, sc, count);
    return record_driver(r);
}

KV_RT_API cudaError_t cudaMemcpyPeer(void *dst, int dstDevice, const void *src, int srcDevice,
                                     size_t count)
{
    return copy_peer(dst, dstDevice, src, srcDevice, count, false, NULL);
}

KV_RT_API cudaError_t cudaMemcpyPeerAsync(void *dst, int dstDevice, const void *src,
                                          int srcDevice, size_t count, cudaStream_t stream)
{
    return copy_peer(dst, dstDevice, src, srcDevice, count, true, stream);
}

/* ------------------------------------------------------------------ per-thread default stream */

/*
 * The _ptds and _ptsz forms a program built with --default-stream per-thread calls (cuda.h's
 * runtime header names them only in such a build, hence these declarations): each is its plain
 * form through drv_pt, the driver's per-thread forms, which read a NULL stream as the calling
 * thread's per-thread default stream. There is none of cudaMemcpyPeer, as in the real runtime.
 */
cudaError_t cudaMemset_ptds(void *devPtr, int value, size_t count);
cudaError_t cudaMemsetAsync_ptsz(void *devPtr, int value, size_t count, cudaStream_t stream);
cudaError_t cudaMemset2D_ptds(void *devPtr, size_t pitch, int value, size_t width, size_t height);
cudaError_t cudaMemset2DAsync_ptsz(void *devPtr, size_t pitch, int value, size_t width,
                                   size_t height, cudaStream_t stream);
cudaError_t cudaMemset3D_ptds(struct cudaPitchedPtr pitchedDevPtr, int value,
                              struct cudaExtent extent);
cudaError_t cudaMemset3DAsync_ptsz(struct cudaPitchedPtr pitchedDevPtr, int value,
                                   struct cudaExtent extent, cudaStream_t stream);
cudaError_t cudaMemcpy_ptds(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync_ptsz(void *dst, const void *src, size_t count,
                                 enum cudaMemcpyKind kind, cudaStream_t stream);
cudaError_t cudaMemcpy2D_ptds(void *dst, size_t dpitch, const void *src, size_t spitch,
                              size_t width, size_t height, enum cudaMemcpyKind kind);
cudaError_t cudaMemcpy2DAsync_ptsz(void *dst, size_t dpitch, const void *src, size_t spitch,
                                   size_t width, size_t height, enum cudaMemcpyKind kind,
                                   cudaStream_t stream);
cudaError_t cudaMemcpy3D_ptds(const struct cudaMemcpy3DParms *p);
cudaError_t cudaMemcpy3DAsync_ptsz(const struct cudaMemcpy3DParms *p, cudaStream_t stream);

KV_RT_API cudaError_t cudaMemset_ptds(void *devPtr, int value, size_t count)
{
    return set1d(&drv_pt, devPtr, value, count, false, NULL);
}

KV_RT_API cudaError_t cudaMemsetAsync_ptsz(void *devPtr, int value, size_t count,
                                           cudaStream_t stream)
{
    return set1d(&drv_pt, devPtr, value, count, true, stream);
}

KV_RT_API cudaError_t cudaMemset2D_ptds(void *devPtr, size_t pitch, int value, size_t width,
                                       size_t height)
{
    return set2d(&drv_pt, devPtr, pitch, value, width, height, false, NULL);
}

KV_RT_API cudaError_t cudaMemset2DAsync_ptsz(void *devPtr, size_t pitch, int value, size_t width,
                                            size_t height, cudaStream_t stream)
{
    return set2d(&drv_pt, devPtr, pitch, value, width, height, true, stream);
}

KV_RT_API cudaError_t cudaMemset3D_ptds(struct cudaPitchedPtr pitchedDevPtr, int value,
                                       struct cudaExtent extent)
{
    return memset3d(&drv_pt, pitchedDevPtr, value, extent, false, NULL);
}

KV_RT_API cudaError_t cudaMemset3DAsync_ptsz(struct cudaPitchedPtr pitchedDevPtr, int value,
                                            struct cudaExtent extent, cudaStream_t stream)
{
    return memset3d(&drv_pt, pitchedDevPtr, value, extent, true, stream);
}

KV_RT_API cudaError_t cudaMemcpy_ptds(void *dst, const void *src, size_t count,
                                      enum cudaMemcpyKind kind)
{
    return copy(&drv_pt, dst, src, count, kind, false, NULL);
}

KV_RT_API cudaError_t cudaMemcpyAsync_ptsz(void *dst, const void *src, size_t count,
                                           enum cudaMemcpyKind kind, cudaStream_t stream)
{
    return copy(&drv_pt, dst, src, count, kind, true, stream);
}

KV_RT_API cudaError_t cudaMemcpy2D_ptds(void *dst, size_t dpitch, const void *src, size_t spitch,
                                        size_t width, size_t height, enum cudaMemcpyKind kind)
{
    return copy2d(&drv_pt, dst, dpitch, src, spitch, width, height, kind, false, NULL);
}

KV_RT_API cudaError_t cudaMemcpy2DAsync_ptsz(void *dst, size_t dpitch, const void *src,
                                             size_t spitch, size_t width, size_t height,
                                             enum cudaMemcpyKind kind, cudaStream_t stream)
{
    return copy2d(&drv_pt, dst, dpitch, src, spitch, width, height, kind, true, stream);
}

KV_RT_API cudaError_t cudaMemcpy3D_ptds(const struct cudaMemcpy3DParms *p)
{
    return copy3d(&drv_pt, p, false, NULL);
}

KV_RT_API cudaError_t cudaMemcpy3DAsync_ptsz(const struct cudaMemcpy3DParms *p,
                                             cudaStream_t stream)
{
    return copy3d(&drv_pt, p, true, stream);
}

/*
 * Where ptr lives: a device's memory (type, device and device pointer), or memory of no device
 * (cudaMemoryTypeUnregistered, device -2, no pointers), which is success as in CUDA 11 and
 * later. The host pointer of device memory is NULL: nothing here is mapped for the host.
 */
KV_RT_API cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *attributes,
                                               const void *ptr)
{
    CUpointer_attribute which[] = { CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                                    CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                                    CU_POINTER_ATTRIBUTE_DEVICE_POINTER };
    unsigned int type = 0;
    CUdeviceptr dp = 0;
    int device = -2;
    void *data[] = { &type, &device, &dp };
    cudaError_t e;
    CUresult r;

    if (!attributes)
        return record(cudaErrorInvalidValue);
    e = need_driver();
    if (e != cudaSuccess)
        return record(e);
    r = drv.cuPointerGetAttributes(3, which, data, (CUdeviceptr)ptr);
    if (r != CUDA_SUCCESS)
        return record_driver(r);
    memset(attributes, 0, sizeof(*attributes));
    attributes->type = type == CU_MEMORYTYPE_DEVICE ? cudaMemoryTypeDevice
                                                    : cudaMemoryTypeUnregistered;
    attributes->device = type == CU_MEMORYTYPE_DEVICE ? device : -2;
    attributes->devicePointer = (void *)dp;
    return cudaSuccess;
}

/* ------------------------------------------------------------------ streams */

static cudaError_t create_stream(cudaStream_t *pStream, unsigned int flags)
{
    cudaError_t e;

    if (!pStream || (flags & ~(unsigned int)cudaStreamNonBlocking))
        return record(cudaErrorInvalidValue);
    e = need_context();
    if (e != cudaSuccess)
        return record(e);
    return record_driver(drv.cuStreamCreate(pStream, flags));
}

KV_RT_API cudaError_t cudaStreamCreate(cudaStream_t *pStream)
{
    return create_stream(pStream, cudaStreamDefault);
}

/* cudaStreamNonBlocking is CU_STREAM_NON_BLOCKING: a stream the legacy stream does not wait for. */
KV_RT_API cudaError_t cudaStreamCreateWithFlags(cudaStream_t *pStream, unsigned int flags)
{
    return create_stream(pStream, flags);
}

KV_RT_API cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    cudaError_t e = need_context();

    if (e != cudaSuccess)
        return record(e);
    return record_driver(drv.cuStreamDestroy_v2(stream));
}

KV_RT_API cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    cudaError_t e = need_context();

    if (e != cudaSuccess)
        return record(e);
    return record_driver(drv.cuStreamSynchronize(stream));
}

/* All work is done by the time a call returns: cudaSuccess, never cudaErrorNotReady. */
KV_RT_API cudaError_t cudaStreamQuery(cudaStream_t stream)
{
    cudaError_t e = need_context();

    if (e != cudaSuccess)
        return record(e);
    return record_driver(drv.cuStreamQuery(stream));
}

/* ------------------------------------------------------------------ stream capture and graphs */

/*
 * The driver's calls with the runtime's names: the modes and statuses have the same values, and
 * the driver's capture errors map to cudaErrorStreamCapture* (900 to 908, as in the driver).
 * Capture's begin, end and status go through driver table d: drv, or drv_pt for the per-thread
 * forms, where a NULL stream is the calling thread's per-thread default stream.
 */
static cudaError_t begin_capture(struct driver *d, cudaStream_t stream,
                                 enum cudaStreamCaptureMode mode)
{
    cudaError_t e = need_context();

    if (e != cudaSuccess)
        return record(e);
    return record_driver(d->cuStreamBeginCapture_v2(stream, (CUstreamCaptureMode)mode));
}

static cudaError_t end_capture(struct driver *d, cudaStream_t stream, cudaGraph_t *pGraph)
{
    cudaError_t e = need_context();

    if (e != cudaSuccess)
        return record(e);
    return record_driver(d->cuStreamEndCapture(stream, pGraph));
}

static cudaError_t is_capturing(struct driver *d, cudaStream_t stream,
                                enum cudaStreamCaptureStatus *pCaptureStatus)
{
    cudaError_t e = need_context();

    if (e != cudaSuccess)
        return record(e);
    return record_driver(d->cuStreamIsCapturing(stream, (CUstreamCaptureStatus *)pCaptureStatus));
}

cudaError_t cudaStreamBeginCapture_ptsz(cudaStream_t stream, enum cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture_ptsz(cudaStream_t stream, cudaGraph_t *pGraph);
cudaError_t cudaStreamIsCapturing_ptsz(cudaStream_t stream,
                                       enum cudaStreamCaptureStatus *pCaptureStatus);

KV_RT_API cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode)
{
    return begin_capture(&drv, stream, mode);
}

KV_RT_API cudaError_t cudaStreamBeginCapture_ptsz(cudaStream_t stream,
                                                  enum cudaStreamCaptureMode mode)
{
    return begin_capture(&drv_pt, stream, mode);
}

KV_RT_API cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *pGraph)
{
    return end_capture(&drv, stream, pGraph);
}

KV_RT_API cudaError_t cudaStreamEndCapture_ptsz(cudaStream_t stream, cudaGraph_t *pGraph)
{
    return end_capture(&drv_pt, stream, pGraph);
}

KV_RT_API cudaError_t cudaStreamIsCapturing(cudaStream_t stream,
                                            enum cudaStreamCaptureStatus *pCaptureStatus)
{
    return is_capturing(&drv, stream, pCaptureStatus);
}

KV_RT_API cudaError_t cudaStreamIsCapturing_ptsz(cudaStream_t stream,
                                                 enum cudaStreamCaptureStatus *pCaptureStatus)
{
    return is_capturing(&drv_pt, stream, pCaptureStatus);
}

KV_RT_API cudaError_t cudaStreamGetCaptureInfo(cudaStream_t stream,
                                               enum cudaStreamCaptureStatus *captureStatus_out,
                                               unsigned long long *id_out, cudaGraph_t *graph_out,
                                               const cudaGraphNode_t **dependencies_out,
                                               const cudaGraphEdgeData **edgeData_out,
                                               size_t *numDependencies_out)
{
    cudaError_t e = need_context();

    if (e != cudaSuccess)
        return record(e);
    return record_driver(drv.cuStreamGetCaptureInfo_v3(
        stream, (CUstreamCaptureStatus *)captureStatus_out, (cuuint64_t *)id_out, graph_out,
        dependencies_out, (const CUgraphEdgeData **)edgeData_out, numDependencies_out));
}

KV_RT_API cudaError_t cudaThreadExchangeStreamCaptureMode(enum cudaStreamCaptureMode *mode)
{
    cudaError_t e = need_driver();

    if (e != cudaSuccess)
        return record(e);
    return record_driver(drv.cuThreadExchangeStreamCaptureMode((CUstreamCaptureMode *)mode));
}

KV_RT_API cudaError_t cudaGraphInstantiate(cudaGraphExec_t *pGraphExec, cudaGraph_t graph,
                                           unsigned long long flags)
{
    cudaError_t e = need_driver();

    if (e != cudaSuccess)
        return record(e);
    return record_driver(drv.cuGraphInstantiateWithFlags(pGraphExec, graph, flags));
}

KV_RT_API cudaError_t cudaGraphLaunch(cudaGraphExec_t graphExec, cudaStream_t stream)
{
    cudaError_t e = need_context();

    if (e != cudaSuccess)
        return record(e);
    return record_driver(drv.cuGraphLaunch(graphExec, stream));
}

KV_RT_API cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t *nodes,
                                        size_t *numNodes)
{
    cudaError_t e = need_driver();

    if (e != cudaSuccess)
        return record(e);
    return record_driver(drv.cuGraphGetNodes(graph, nodes, numNodes));
}

KV_RT_API cudaError_t cudaGraphExecDestroy(cudaGraphExec_t graphExec)
{
    cudaError_t e = need_driver();

    if (e != cudaSuccess)
        return record(e);
    return record_driver(drv.cuGraphExecDestroy(graphExec));
}

KV_RT_API cudaError_t cudaGraphDestroy(cudaGraph_t graph)
{
    cudaError_t e = need_driver();

    if (e != cudaSuccess)
        return record(e);
    return record_driver(drv.cuGraphDestroy(graph));
}

/* ------------------------------------------------------------------ driver entry points */

/*
 * As the real runtime: a symbol that is not found is success with a NULL pointer and the
 * reason in driverStatus; a version newer than the driver is an invalid value.
 */
static cudaError_t entry_point(const char *symbol, void **funcPtr, unsigned int cudaVersion,
                               unsigned long long flags,
                               enum cudaDriverEntryPointQueryResult *driverStatus)
{
    CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    int driver_version = 0;
    cudaError_t e;
    CUresult r;

    if (!symbol || !funcPtr ||
        (flags & ~(unsigned long long)(cudaEnableLegacyStream | cudaEnablePerThreadDefaultStream)))
        return record(cudaErrorInvalidValue);
    e = need_driver();
    if (e != cudaSuccess)
        return record(e);
    drv.cuDriverGetVersion(&driver_version);
    if (cudaVersion > (unsigned int)driver_version)
        return record(cudaErrorInvalidValue);
    r = get_proc(symbol, funcPtr, (int)cudaVersion, (cuuint64_t)flags, &st);
    if (r != CUDA_SUCCESS && r != CUDA_ERROR_NOT_FOUND)
        return record_driver(r);
    if (r != CUDA_SUCCESS)
        *funcPtr = NULL;
    if (driverStatus)
        *driverStatus = st == CU_GET_PROC_ADDRESS_SUCCESS ? cudaDriverEntryPointSuccess
                      : st == CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                          ? cudaDriverEntryPointVersionNotSufficent
                          : cudaDriverEntryPointSymbolNotFound;
    return cudaSuccess;
}

KV_RT_API cudaError_t cudaGetDriverEntryPoint(const char *symbol, void **funcPtr,
                                              unsigned long long flags,
                                              enum cudaDriverEntryPointQueryResult *driverStatus)
{
    return entry_point(symbol, funcPtr, KV_RT_VERSION, flags, driverStatus);
}

KV_RT_API cudaError_t cudaGetDriverEntryPointByVersion(const char *symbol, void **funcPtr,
                                                       unsigned int cudaVersion,
                                                       unsigned long long flags,
                                                       enum cudaDriverEntryPointQueryResult *driverStatus)
{
    return entry_point(symbol, funcPtr, cudaVersion, flags, driverStatus);
}
