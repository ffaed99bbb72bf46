/*
 * emu_ctx.c: devices, primary contexts and the per-thread context stack, streams, events,
 * modules and the two known kernels. All work is synchronous, so streams and events only
 * carry identity (and a timestamp), and the capture in progress on them (emu_graph.c).
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "emu_int.h"

/* The per-thread context stack: cuCtxSetCurrent replaces the top, push/pop work the stack. */
static __thread struct CUctx_st *ctx_stack[KV_EMU_CTX_DEPTH];
static __thread int ctx_depth;

struct CUctx_st *kv_emu_current(void)
{
    return ctx_depth > 0 ? ctx_stack[ctx_depth - 1] : NULL;
}

/* Whether c is one of the primary contexts; they live as long as the process. */
static bool valid_ctx(CUcontext c)
{
    for (int i = 0; i < kv_emu.ndevices; i++)
        if (c == &kv_emu.devs[i].ctx)
            return true;
    return false;
}

/* CUDA_ERROR_INVALID_CONTEXT where the calling thread has no current context, else success. */
static CUresult need_ctx(void)
{
    return kv_emu_current() ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

/* ------------------------------------------------------------------ devices */

KV_EMU_API CUresult cuDeviceGet(CUdevice *device, int ordinal)
{
    KV_EMU_ENTER(cuDeviceGet);
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    if (!kv_emu_valid_device(ordinal))
        return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuDeviceGet);

KV_EMU_API CUresult cuDeviceGetCount(int *count)
{
    KV_EMU_ENTER(cuDeviceGetCount);
    if (!count)
        return CUDA_ERROR_INVALID_VALUE;
    *count = kv_emu.ndevices;
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuDeviceGetCount);

KV_EMU_API CUresult cuDeviceGetName(char *name, int len, CUdevice dev)
{
    static const char text[] = "kvshim CPU emulation";

    KV_EMU_ENTER(cuDeviceGetName);
    if (!name || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (!kv_emu_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    strncpy(name, text, (size_t)len - 1);
    name[len - 1] = '\0';
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuDeviceGetName);

KV_EMU_API CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    KV_EMU_ENTER(cuDeviceTotalMem_v2);
    if (!bytes)
        return CUDA_ERROR_INVALID_VALUE;
    if (!kv_emu_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    *bytes = kv_emu.devs[dev].bytes;
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuDeviceTotalMem_v2);

KV_EMU_API CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev)
{
    KV_EMU_ENTER(cuDeviceGetAttribute);
    if (!pi || (int)attrib <= 0 || attrib >= CU_DEVICE_ATTRIBUTE_MAX)
        return CUDA_ERROR_INVALID_VALUE;
    if (!kv_emu_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    switch (attrib) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *pi = 9; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *pi = 0; break;
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: *pi = 1; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *pi = 1; break;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *pi = 1; break;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *pi = 32; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *pi = 1024; break;
    case CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: *pi = dev; break;
    default: *pi = 0; break;
    }
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuDeviceGetAttribute);

/* A fixed UUID per ordinal, shaped as a version 4 UUID so tools that print it are happy. */
static CUresult get_uuid(CUuuid *uuid, CUdevice dev)
{
    static const unsigned char base[16] = { 'k', 'v', 'e', 'm', 'u', '-', 0x40, 0x00,
                                            0x80, 0x00, 0, 0, 0, 0, 0, 0 };

    if (!uuid)
        return CUDA_ERROR_INVALID_VALUE;
    if (!kv_emu_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    memcpy(uuid->bytes, base, sizeof(base));
    uuid->bytes[15] = (char)dev;
    return CUDA_SUCCESS;
}

KV_EMU_API CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev)
{
    KV_EMU_ENTER(cuDeviceGetUuid);
    return get_uuid(uuid, dev);
}
KV_EMU_ALIAS(cuDeviceGetUuid);

KV_EMU_API CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev)
{
    KV_EMU_ENTER(cuDeviceGetUuid_v2);
    return get_uuid(uuid, dev);
}
KV_EMU_ALIAS(cuDeviceGetUuid_v2);

/* ------------------------------------------------------------------ contexts */

KV_EMU_API CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    KV_EMU_ENTER(cuDevicePrimaryCtxRetain);
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (!kv_emu_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    kv_emu_lock();
    kv_emu.devs[dev].ctx.refs++;
    *pctx = &kv_emu.devs[dev].ctx;
    kv_emu_unlock();
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuDevicePrimaryCtxRetain);

KV_EMU_API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    CUresult r = CUDA_SUCCESS;

    KV_EMU_ENTER(cuDevicePrimaryCtxRelease_v2);
    if (!kv_emu_valid_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    kv_emu_lock();
    if (kv_emu.devs[dev].ctx.refs == 0)
        r = CUDA_ERROR_INVALID_CONTEXT;
    else
        kv_emu.devs[dev].ctx.refs--;
    kv_emu_unlock();
    return r;
}
KV_EMU_ALIAS(cuDevicePrimaryCtxRelease_v2);

KV_EMU_API CUresult cuCtxGetCurrent(CUcontext *pctx)
{
    KV_EMU_ENTER(cuCtxGetCurrent);
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = kv_emu_current();
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuCtxGetCurrent);

KV_EMU_API CUresult cuCtxSetCurrent(CUcontext ctx)
{
    KV_EMU_ENTER(cuCtxSetCurrent);
    if (!ctx) {
        if (ctx_depth > 0)
            ctx_depth--;
        return CUDA_SUCCESS;
    }
    if (!valid_ctx(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    if (ctx_depth == 0)
        ctx_depth = 1;
    ctx_stack[ctx_depth - 1] = ctx;
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuCtxSetCurrent);

KV_EMU_API CUresult cuCtxGetDevice(CUdevice *device)
{
    struct CUctx_st *c;

    KV_EMU_ENTER(cuCtxGetDevice);
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    c = kv_emu_current();
    if (!c)
        return CUDA_ERROR_INVALID_CONTEXT;
    *device = c->device;
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuCtxGetDevice);

KV_EMU_API CUresult cuCtxSynchronize(void)
{
    CUresult r;

    KV_EMU_ENTER(cuCtxSynchronize);
    r = need_ctx();
    if (r != CUDA_SUCCESS)
        return r;
    kv_emu_lock();
    r = kv_emu_capture_sync_ctx(KV_FN_cuCtxSynchronize);
    kv_emu_unlock();
    return r;
}
KV_EMU_ALIAS(cuCtxSynchronize);

KV_EMU_API CUresult cuCtxPushCurrent_v2(CUcontext ctx)
{
    KV_EMU_ENTER(cuCtxPushCurrent_v2);
    if (!ctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_ctx(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    if (ctx_depth == KV_EMU_CTX_DEPTH)
        return CUDA_ERROR_OUT_OF_MEMORY;
    ctx_stack[ctx_depth++] = ctx;
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuCtxPushCurrent_v2);

KV_EMU_API CUresult cuCtxPopCurrent_v2(CUcontext *pctx)
{
    KV_EMU_ENTER(cuCtxPopCurrent_v2);
    if (ctx_depth == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    ctx_depth--;
    if (pctx)
        *pctx = ctx_stack[ctx_depth];
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuCtxPopCurrent_v2);

/* ------------------------------------------------------------------ streams */

int kv_emu_stream_device(CUstream s)
{
    struct CUctx_st *c = kv_emu_current();

    if (s && s != CU_STREAM_LEGACY && s != CU_STREAM_PER_THREAD)
        return s->device;
    return c ? c->device : -1;
}

bool kv_emu_valid_stream(CUstream s)
{
    if (!s || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD)
        return true;
    for (struct CUstream_st *p = kv_emu.streams; p; p = p->next)
        if (p == s)
            return true;
    return false;
}

KV_EMU_API CUresult cuStreamCreate(CUstream *phStream, unsigned int Flags)
{
    struct CUstream_st *s;

    KV_EMU_ENTER(cuStreamCreate);
    if (!phStream || (Flags & ~(unsigned int)CU_STREAM_NON_BLOCKING))
        return CUDA_ERROR_INVALID_VALUE;
    if (!kv_emu_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    s = calloc(1, sizeof(*s));
    if (!s)
        return CUDA_ERROR_OUT_OF_MEMORY;
    s->device = kv_emu_current()->device;
    s->flags = Flags;
    kv_emu_lock();
    s->next = kv_emu.streams;
    kv_emu.streams = s;
    kv_emu_unlock();
    *phStream = s;
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuStreamCreate);

/* A capturing stream is refused: its capture must be ended first (see emu_graph.c). */
KV_EMU_API CUresult cuStreamDestroy_v2(CUstream hStream)
{
    struct CUstream_st **pp, *found = NULL;
    CUresult r = CUDA_ERROR_INVALID_HANDLE;

    KV_EMU_ENTER(cuStreamDestroy_v2);
    kv_emu_lock();
    for (pp = &kv_emu.streams; *pp; pp = &(*pp)->next) {
        if (*pp == hStream) {
            r = kv_emu_capture_destroy_stream(KV_FN_cuStreamDestroy_v2, *pp);
            if (r != CUDA_SUCCESS)
                break;
            found = *pp;
            *pp = found->next;
            break;
        }
    }
    kv_emu_unlock();
    free(found);
    return r;
}
KV_EMU_ALIAS(cuStreamDestroy_v2);

/* Synchronize and query do the same: all work is done by the time a call returns. */
static CUresult wait_stream(enum kv_emu_fn fn, CUstream s)
{
    CUresult r;

    if (!kv_emu_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    kv_emu_lock();
    if (!kv_emu_valid_stream(s))
        r = CUDA_ERROR_INVALID_HANDLE;
    else
        r = kv_emu_capture_sync_stream(fn, s, false);
    kv_emu_unlock();
    return r;
}

KV_EMU_API CUresult cuStreamSynchronize(CUstream hStream)
{
    KV_EMU_ENTER(cuStreamSynchronize);
    return wait_stream(KV_FN_cuStreamSynchronize, hStream);
}
KV_EMU_ALIAS(cuStreamSynchronize);

KV_EMU_API CUresult cuStreamQuery(CUstream hStream)
{
    KV_EMU_ENTER(cuStreamQuery);
    return wait_stream(KV_FN_cuStreamQuery, hStream);
}
KV_EMU_ALIAS(cuStreamQuery);

/* ------------------------------------------------------------------ events */

static bool valid_event(CUevent e)
{
    for (struct CUevent_st *p = kv_emu.events; p; p = p->next)
        if (p == e)
            return true;
    return false;
}

KV_EMU_API CUresult cuEventCreate(CUevent *phEvent, unsigned int Flags)
{
    struct CUevent_st *e;

    KV_EMU_ENTER(cuEventCreate);
    if (!phEvent || (Flags & ~(unsigned int)(CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING |
                                             CU_EVENT_INTERPROCESS)))
        return CUDA_ERROR_INVALID_VALUE;
    if (!kv_emu_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    e = calloc(1, sizeof(*e));
    if (!e)
        return CUDA_ERROR_OUT_OF_MEMORY;
    e->flags = Flags;
    kv_emu_lock();
    e->next = kv_emu.events;
    kv_emu.events = e;
    kv_emu_unlock();
    *phEvent = e;
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuEventCreate);

/* On a capturing stream the record is captured: the event is stamped at each graph launch. */
KV_EMU_API CUresult cuEventRecord(CUevent hEvent, CUstream hStream)
{
    kv_emu_op_t op = { .kind = KV_OP_EVENT, .u.event.event = hEvent };
    CUresult r = CUDA_SUCCESS;
    bool recorded = false;

    KV_EMU_ENTER(cuEventRecord);
    kv_emu_lock();
    if (!valid_event(hEvent) || !kv_emu_valid_stream(hStream))
        r = CUDA_ERROR_INVALID_HANDLE;
    else
        r = kv_emu_capture_enqueue(KV_FN_cuEventRecord, hStream, false, &op, 1, &recorded);
    if (r == CUDA_SUCCESS && !recorded) {
        clock_gettime(CLOCK_MONOTONIC, &hEvent->when);
        hEvent->recorded = true;
        hEvent->capture_id = 0;
    }
    kv_emu_unlock();
    return r;
}
KV_EMU_ALIAS(cuEventRecord);

/* Synchronize and query do the same: every recorded event has completed. */
static CUresult wait_event(enum kv_emu_fn fn, CUevent e)
{
    CUresult r;

    kv_emu_lock();
    if (!valid_event(e))
        r = CUDA_ERROR_INVALID_HANDLE;
    else
        r = kv_emu_capture_sync_event(fn, e);
    kv_emu_unlock();
    return r;
}

KV_EMU_API CUresult cuEventQuery(CUevent hEvent)
{
    KV_EMU_ENTER(cuEventQuery);
    return wait_event(KV_FN_cuEventQuery, hEvent);
}
KV_EMU_ALIAS(cuEventQuery);

KV_EMU_API CUresult cuEventSynchronize(CUevent hEvent)
{
    KV_EMU_ENTER(cuEventSynchronize);
    return wait_event(KV_FN_cuEventSynchronize, hEvent);
}
KV_EMU_ALIAS(cuEventSynchronize);

/*
 * Milliseconds from start to end, as both variants measure it. As in the real driver, an event
 * never recorded or created without timing gives CUDA_ERROR_INVALID_HANDLE.
 */
static CUresult elapsed(float *ms, CUevent start, CUevent end)
{
    CUresult r = CUDA_SUCCESS;
    double d;

    if (!ms)
        return CUDA_ERROR_INVALID_VALUE;
    kv_emu_lock();
    if (!valid_event(start) || !valid_event(end) || !start->recorded || !end->recorded ||
        ((start->flags | end->flags) & CU_EVENT_DISABLE_TIMING)) {
        r = CUDA_ERROR_INVALID_HANDLE;
        goto out;
    }
    d = (double)(end->when.tv_sec - start->when.tv_sec) * 1e3 +
        (double)(end->when.tv_nsec - start->when.tv_nsec) / 1e6;
    *ms = (float)d;
out:
    kv_emu_unlock();
    return r;
}

KV_EMU_API CUresult cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd)
{
    KV_EMU_ENTER(cuEventElapsedTime);
    return elapsed(pMilliseconds, hStart, hEnd);
}
KV_EMU_ALIAS(cuEventElapsedTime);

KV_EMU_API CUresult cuEventElapsedTime_v2(float *pMilliseconds, CUevent hStart, CUevent hEnd)
{
    KV_EMU_ENTER(cuEventElapsedTime_v2);
    return elapsed(pMilliseconds, hStart, hEnd);
}
KV_EMU_ALIAS(cuEventElapsedTime_v2);

KV_EMU_API CUresult cuEventDestroy_v2(CUevent hEvent)
{
    struct CUevent_st **pp, *found = NULL;

    KV_EMU_ENTER(cuEventDestroy_v2);
    kv_emu_lock();
    for (pp = &kv_emu.events; *pp; pp = &(*pp)->next) {
        if (*pp == hEvent) {
            found = *pp;
            *pp = found->next;
            break;
        }
    }
    kv_emu_unlock();
    if (!found)
        return CUDA_ERROR_INVALID_HANDLE;
    free(found);
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuEventDestroy_v2);

/* ------------------------------------------------------------------ modules and kernels */

#define KV_GOLDEN 2654435761u

/* kv_fill(unsigned int *p, unsigned long long nwords, unsigned int seed) */
static void run_fill(void *arg)
{
    void **params = arg;
    unsigned int *p = *(unsigned int **)params[0];
    unsigned long long n = *(unsigned long long *)params[1];
    unsigned int seed = *(unsigned int *)params[2];

    for (unsigned long long i = 0; i < n; i++)
        p[i] = seed ^ ((unsigned int)i * KV_GOLDEN);
}

/* kv_check(const unsigned int *p, unsigned long long nwords, unsigned int seed,
 *          unsigned long long *bad) */
static void run_check(void *arg)
{
    void **params = arg;
    const unsigned int *p = *(const unsigned int **)params[0];
    unsigned long long n = *(unsigned long long *)params[1];
    unsigned int seed = *(unsigned int *)params[2];
    unsigned long long *bad = *(unsigned long long **)params[3];
    unsigned long long count = 0;

    for (unsigned long long i = 0; i < n; i++)
        count += p[i] != (seed ^ ((unsigned int)i * KV_GOLDEN));
    *bad += count;
}

static const struct kv_emu_kernel kernels[KV_EMU_NKERNELS] = {
    { "kv_fill", run_fill, 3,
      { sizeof(unsigned int *), sizeof(unsigned long long), sizeof(unsigned int) }, true },
    { "kv_check", run_check, 4,
      { sizeof(const unsigned int *), sizeof(unsigned long long), sizeof(unsigned int),
        sizeof(unsigned long long *) }, false },
};

static bool valid_module(CUmodule m)
{
    for (struct CUmod_st *p = kv_emu.modules; p; p = p->next)
        if (p == m)
            return true;
    return false;
}

KV_EMU_API CUresult cuModuleLoadData(CUmodule *module, const void *image)
{
    struct CUmod_st *m;

    KV_EMU_ENTER(cuModuleLoadData);
    if (!module || !image)
        return CUDA_ERROR_INVALID_VALUE;
    if (!kv_emu_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    m = calloc(1, sizeof(*m));
    if (!m)
        return CUDA_ERROR_OUT_OF_MEMORY;
    for (int i = 0; i < KV_EMU_NKERNELS; i++) {
        m->funcs[i].kernel = &kernels[i];
        m->funcs[i].mod = m;
    }
    kv_emu_lock();
    m->next = kv_emu.modules;
    kv_emu.modules = m;
    kv_emu_unlock();
    *module = m;
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuModuleLoadData);

KV_EMU_API CUresult cuModuleUnload(CUmodule hmod)
{
    struct CUmod_st **pp, *found = NULL;

    KV_EMU_ENTER(cuModuleUnload);
    kv_emu_lock();
    for (pp = &kv_emu.modules; *pp; pp = &(*pp)->next) {
        if (*pp == hmod) {
            found = *pp;
            *pp = found->next;
            break;
        }
    }
    kv_emu_unlock();
    if (!found)
        return CUDA_ERROR_INVALID_HANDLE;
    free(found);
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuModuleUnload);

KV_EMU_API CUresult cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name)
{
    CUresult r = CUDA_ERROR_NOT_FOUND;

    KV_EMU_ENTER(cuModuleGetFunction);
    if (!hfunc || !name)
        return CUDA_ERROR_INVALID_VALUE;
    kv_emu_lock();
    if (!valid_module(hmod)) {
        r = CUDA_ERROR_INVALID_HANDLE;
        goto out;
    }
    for (int i = 0; i < KV_EMU_NKERNELS; i++) {
        if (strcmp(hmod->funcs[i].kernel->name, name) == 0) {
            *hfunc = &hmod->funcs[i];
            r = CUDA_SUCCESS;
            break;
        }
    }
out:
    kv_emu_unlock();
    return r;
}
KV_EMU_ALIAS(cuModuleGetFunction);

/* The kernel behind f if f belongs to a loaded module, else NULL; call locked. */
static const struct kv_emu_kernel *find_kernel(CUfunction f)
{
    for (struct CUmod_st *m = kv_emu.modules; m; m = m->next)
        for (int i = 0; i < KV_EMU_NKERNELS; i++)
            if (f == &m->funcs[i])
                return m->funcs[i].kernel;
    return NULL;
}

struct launch_args {
    kv_emu_op_t *op;
    void **params;
};

/* Copy a launch's arguments into op, as the driver does when the launch is queued. */
static void copy_args(void *arg)
{
    struct launch_args *a = arg;
    const struct kv_emu_kernel *k = a->op->u.kernel.kernel;

    for (int i = 0; i < k->nargs; i++)
        memcpy(&a->op->u.kernel.args[i], a->params[i], k->arg_size[i]);
}

/*
 * The grid is ignored: the host version covers all nwords whatever the launch shape, so the
 * CUDA version must be a grid-stride loop for the two to agree. The arguments are read under
 * the guard, as the kernel itself reads them, so a bad pointer among them is an illegal
 * address; the stream is checked again when the launch is queued, since the lock was let go.
 */
KV_EMU_API CUresult cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                                   unsigned int gridDimZ, unsigned int blockDimX,
                                   unsigned int blockDimY, unsigned int blockDimZ,
                                   unsigned int sharedMemBytes, CUstream hStream,
                                   void **kernelParams, void **extra)
{
    kv_emu_op_t op = { .kind = KV_OP_KERNEL };
    struct launch_args a = { &op, kernelParams };
    bool stream_ok, recorded = false;
    CUresult r;

    KV_EMU_ENTER(cuLaunchKernel);
    (void)sharedMemBytes;
    if (!kv_emu_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    if (!gridDimX || !gridDimY || !gridDimZ || !blockDimX || !blockDimY || !blockDimZ ||
        blockDimX > 1024 || blockDimY > 1024 || blockDimZ > 64 ||
        blockDimX * blockDimY * blockDimZ > 1024 || !kernelParams || extra)
        return CUDA_ERROR_INVALID_VALUE;
    kv_emu_lock();
    op.u.kernel.kernel = find_kernel(f);
    stream_ok = kv_emu_valid_stream(hStream);
    kv_emu_unlock();
    if (!op.u.kernel.kernel || !stream_ok)
        return CUDA_ERROR_INVALID_HANDLE;
    if (kv_emu_guard(copy_args, &a) < 0)
        return CUDA_ERROR_ILLEGAL_ADDRESS;
    kv_emu_lock();
    if (!kv_emu_valid_stream(hStream)) {
        r = CUDA_ERROR_INVALID_HANDLE;
    } else {
        op.device = kv_emu_stream_device(hStream);
        r = kv_emu_capture_enqueue(KV_FN_cuLaunchKernel, hStream, false, &op, 1, &recorded);
    }
    kv_emu_unlock();
    if (r != CUDA_SUCCESS || recorded)
        return r;
    return kv_emu_run(&op);
}
KV_EMU_ALIAS(cuLaunchKernel);
