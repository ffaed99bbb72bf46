/*
 * emu_copy.c: the fault guard, and memset/memcpy done synchronously on host memory under it.
 *
 * A GPU that touches an unmapped or inaccessible VMM page reports an illegal address; here the
 * same touch is a SIGSEGV (or SIGBUS), which the guard turns into CUDA_ERROR_ILLEGAL_ADDRESS for
 * the one call. A fault outside any guard is none of our business: the previous disposition is
 * put back and the fault happens again under it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <string.h>

#include "emu_int.h"

/*
 * Under valgrind, a guarded fault is the expected outcome, not a bug: memcheck is told not to
 * report accesses inside the guard. Host-side buffers are still checked before a copy, so an
 * overrun of the caller's own memory is reported.
 */
#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define KV_EMU_VALGRIND 1
#endif
#endif
#ifndef KV_EMU_VALGRIND
#define RUNNING_ON_VALGRIND 0
#define VALGRIND_DISABLE_ERROR_REPORTING do { } while (0)
#define VALGRIND_ENABLE_ERROR_REPORTING do { } while (0)
#define VALGRIND_CHECK_MEM_IS_ADDRESSABLE(p, n) 0
#endif

/*
 * initial-exec: the handler reads this, and a dynamic TLS access there could allocate. The
 * library is normally dlopen'ed (by the runtime) but 8 bytes fit in the static TLS reserve.
 */
static __thread sigjmp_buf *volatile guard_env __attribute__((tls_model("initial-exec")));

static pthread_mutex_t sig_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction old_segv, old_bus;

static void on_fault(int sig, siginfo_t *si, void *uc)
{
    sigjmp_buf *env = guard_env;
    const struct sigaction *old;

    (void)uc;
    if (env) {
        guard_env = NULL;
        siglongjmp(*env, 1);
    }
    old = sig == SIGBUS ? &old_bus : &old_segv;
    sigaction(sig, old, NULL);
    /* A real fault repeats on return; a signal someone sent must be sent again. */
    if (si->si_code <= 0)
        raise(sig);
}

/*
 * Make sure on_fault handles sig, remembering what it replaces. Checked on every guarded call,
 * not once, because the program may install its own handler after ours.
 */
static void install_one(int sig, struct sigaction *old)
{
    struct sigaction cur, sa;

    if (sigaction(sig, NULL, &cur) < 0)
        return;
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_fault)
        return;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (sigaction(sig, &sa, NULL) == 0)
        *old = cur;
}

static void install(void)
{
    pthread_mutex_lock(&sig_lock);
    install_one(SIGSEGV, &old_segv);
    install_one(SIGBUS, &old_bus);
    pthread_mutex_unlock(&sig_lock);
}

int kv_emu_guard(void (*fn)(void *), void *arg)
{
    sigjmp_buf env;
    sigjmp_buf *volatile prev = guard_env;

    install();
    if (sigsetjmp(env, 1)) {
        VALGRIND_ENABLE_ERROR_REPORTING;
        guard_env = prev;
        return -EFAULT;
    }
    guard_env = &env;
    VALGRIND_DISABLE_ERROR_REPORTING;
    fn(arg);
    VALGRIND_ENABLE_ERROR_REPORTING;
    guard_env = prev;
    return 0;
}

/* ------------------------------------------------------------------ memset and memcpy */

struct op {
    void *dst;
    const void *src;
    size_t n;               /* elements of width bytes */
    unsigned int value;
    int width;
};

static void run_copy(void *arg)
{
    struct op *o = arg;

    memmove(o->dst, o->src, o->n);
}

static void run_set(void *arg)
{
    struct op *o = arg;

    switch (o->width) {
    case 1:
        memset(o->dst, (int)(o->value & 0xff), o->n);
        break;
    case 2:
        for (size_t i = 0; i < o->n; i++)
            ((unsigned short *)o->dst)[i] = (unsigned short)o->value;
        break;
    default:
        for (size_t i = 0; i < o->n; i++)
            ((unsigned int *)o->dst)[i] = o->value;
        break;
    }
}

/*
 * What the driver checks before a copy or memset is queued: a current context, a live stream,
 * and device-side ranges that lie in one allocation or reservation (mapped or not: touching an
 * unmapped page is the later, asynchronous illegal address).
 */
static CUresult check_call(bool async, CUstream s, CUdeviceptr dev1, CUdeviceptr dev2,
                           size_t bytes)
{
    CUresult r = CUDA_SUCCESS;

    if (!kv_emu_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    kv_emu_lock();
    if (async && !kv_emu_valid_stream(s))
        r = CUDA_ERROR_INVALID_HANDLE;
    else if (bytes && dev1 && !kv_emu_find_resv(dev1, bytes))
        r = CUDA_ERROR_INVALID_VALUE;
    else if (bytes && dev2 && !kv_emu_find_resv(dev2, bytes))
        r = CUDA_ERROR_INVALID_VALUE;
    kv_emu_unlock();
    return r;
}

/* Under valgrind, have memcheck check [p, p + n) if it is host memory (in no reservation). */
static void check_host(CUdeviceptr p, size_t n)
{
    bool host;

    if (!RUNNING_ON_VALGRIND)
        return;
    kv_emu_lock();
    host = !kv_emu_find_resv(p, 1);
    kv_emu_unlock();
    if (host)
        (void)VALGRIND_CHECK_MEM_IS_ADDRESSABLE((void *)p, n);
}

/*
 * Copy n bytes; check_dst / check_src say which sides must be device memory (cuMemcpy takes
 * either kind on both sides, as with unified addressing).
 */
static CUresult copy(CUdeviceptr dst, CUdeviceptr src, size_t n, bool check_dst, bool check_src,
                     bool async, CUstream s)
{
    struct op o = { .dst = (void *)dst, .src = (const void *)src, .n = n };
    CUresult r;

    if (n && (!dst || !src))
        return CUDA_ERROR_INVALID_VALUE;
    r = check_call(async, s, check_dst ? dst : 0, check_src ? src : 0, n);
    if (r != CUDA_SUCCESS || n == 0)
        return r;
    check_host(dst, n);
    check_host(src, n);
    return kv_emu_guard(run_copy, &o) < 0 ? CUDA_ERROR_ILLEGAL_ADDRESS : CUDA_SUCCESS;
}

static CUresult set(CUdeviceptr dst, unsigned int value, size_t n, int width, bool async,
                    CUstream s)
{
    struct op o = { .dst = (void *)dst, .n = n, .value = value, .width = width };
    CUresult r;

    if (dst % (CUdeviceptr)width || n > SIZE_MAX / (size_t)width || (n && !dst))
        return CUDA_ERROR_INVALID_VALUE;
    r = check_call(async, s, dst, 0, n * (size_t)width);
    if (r != CUDA_SUCCESS || n == 0)
        return r;
    return kv_emu_guard(run_set, &o) < 0 ? CUDA_ERROR_ILLEGAL_ADDRESS : CUDA_SUCCESS;
}

KV_EMU_API CUresult cuMemsetD8_v2(CUdeviceptr dstDevice, unsigned char uc, size_t N)
{
    KV_EMU_ENTER(cuMemsetD8_v2);
    return set(dstDevice, uc, N, 1, false, NULL);
}
KV_EMU_ALIAS(cuMemsetD8_v2);

KV_EMU_API CUresult cuMemsetD16_v2(CUdeviceptr dstDevice, unsigned short us, size_t N)
{
    KV_EMU_ENTER(cuMemsetD16_v2);
    return set(dstDevice, us, N, 2, false, NULL);
}
KV_EMU_ALIAS(cuMemsetD16_v2);

KV_EMU_API CUresult cuMemsetD32_v2(CUdeviceptr dstDevice, unsigned int ui, size_t N)
{
    KV_EMU_ENTER(cuMemsetD32_v2);
    return set(dstDevice, ui, N, 4, false, NULL);
}
KV_EMU_ALIAS(cuMemsetD32_v2);

KV_EMU_API CUresult cuMemsetD8Async(CUdeviceptr dstDevice, unsigned char uc, size_t N,
                                    CUstream hStream)
{
    KV_EMU_ENTER(cuMemsetD8Async);
    return set(dstDevice, uc, N, 1, true, hStream);
}
KV_EMU_ALIAS(cuMemsetD8Async);

KV_EMU_API CUresult cuMemsetD16Async(CUdeviceptr dstDevice, unsigned short us, size_t N,
                                     CUstream hStream)
{
    KV_EMU_ENTER(cuMemsetD16Async);
    return set(dstDevice, us, N, 2, true, hStream);
}
KV_EMU_ALIAS(cuMemsetD16Async);

KV_EMU_API CUresult cuMemsetD32Async(CUdeviceptr dstDevice, unsigned int ui, size_t N,
                                     CUstream hStream)
{
    KV_EMU_ENTER(cuMemsetD32Async);
    return set(dstDevice, ui, N, 4, true, hStream);
}
KV_EMU_ALIAS(cuMemsetD32Async);

/*
 * 2D memsets: height rows of n elements, pitch bytes apart. The driver refuses a start or a
 * pitch not aligned to the element, a pitch narrower than a row (rows would overlap; the pitch
 * is unused with one row), sizes whose span does not fit in size_t, and a span not inside one
 * allocation or reservation.
 */
struct op2d {
    struct op row;
    size_t pitch, height;
};

static void run_set2d(void *arg)
{
    struct op2d *o = arg;
    struct op row = o->row;

    for (size_t i = 0; i < o->height; i++) {
        run_set(&row);
        row.dst = (char *)row.dst + o->pitch;
    }
}

static CUresult set2d(CUdeviceptr dst, size_t pitch, unsigned int value, size_t n, size_t height,
                      int width, bool async, CUstream s)
{
    struct op2d o = { .row = { .dst = (void *)dst, .n = n, .value = value, .width = width },
                      .pitch = pitch, .height = height };
    size_t row, span = 0;
    CUresult r;

    if (dst % (CUdeviceptr)width || __builtin_mul_overflow(n, (size_t)width, &row))
        return CUDA_ERROR_INVALID_VALUE;
    if (height > 1 && (pitch % (size_t)width || pitch < row))
        return CUDA_ERROR_INVALID_VALUE;
    if (n && height && (__builtin_mul_overflow(height - 1, pitch, &span) ||
                        __builtin_add_overflow(span, row, &span) || !dst))
        return CUDA_ERROR_INVALID_VALUE;
    r = check_call(async, s, dst, 0, n && height ? span : 0);
    if (r != CUDA_SUCCESS || n == 0 || height == 0)
        return r;
    return kv_emu_guard(run_set2d, &o) < 0 ? CUDA_ERROR_ILLEGAL_ADDRESS : CUDA_SUCCESS;
}

KV_EMU_API CUresult cuMemsetD2D8_v2(CUdeviceptr dstDevice, size_t dstPitch, unsigned char uc,
                                    size_t Width, size_t Height)
{
    KV_EMU_ENTER(cuMemsetD2D8_v2);
    return set2d(dstDevice, dstPitch, uc, Width, Height, 1, false, NULL);
}
KV_EMU_ALIAS(cuMemsetD2D8_v2);

KV_EMU_API CUresult cuMemsetD2D16_v2(CUdeviceptr dstDevice, size_t dstPitch, unsigned short us,
                                     size_t Width, size_t Height)
{
    KV_EMU_ENTER(cuMemsetD2D16_v2);
    return set2d(dstDevice, dstPitch, us, Width, Height, 2, false, NULL);
}
KV_EMU_ALIAS(cuMemsetD2D16_v2);

KV_EMU_API CUresult cuMemsetD2D32_v2(CUdeviceptr dstDevice, size_t dstPitch, unsigned int ui,
                                     size_t Width, size_t Height)
{
    KV_EMU_ENTER(cuMemsetD2D32_v2);
    return set2d(dstDevice, dstPitch, ui, Width, Height, 4, false, NULL);
}
KV_EMU_ALIAS(cuMemsetD2D32_v2);

KV_EMU_API CUresult cuMemsetD2D8Async(CUdeviceptr dstDevice, size_t dstPitch, unsigned char uc,
                                      size_t Width, size_t Height, CUstream hStream)
{
    KV_EMU_ENTER(cuMemsetD2D8Async);
    return set2d(dstDevice, dstPitch, uc, Width, Height, 1, true, hStream);
}
KV_EMU_ALIAS(cuMemsetD2D8Async);

KV_EMU_API CUresult cuMemsetD2D16Async(CUdeviceptr dstDevice, size_t dstPitch, unsigned short us,
                                       size_t Width, size_t Height, CUstream hStream)
{
    KV_EMU_ENTER(cuMemsetD2D16Async);
    return set2d(dstDevice, dstPitch, us, Width, Height, 2, true, hStream);
}
KV_EMU_ALIAS(cuMemsetD2D16Async);

KV_EMU_API CUresult cuMemsetD2D32Async(CUdeviceptr dstDevice, size_t dstPitch, unsigned int ui,
                                       size_t Width, size_t Height, CUstream hStream)
{
    KV_EMU_ENTER(cuMemsetD2D32Async);
    return set2d(dstDevice, dstPitch, ui, Width, Height, 4, true, hStream);
}
KV_EMU_ALIAS(cuMemsetD2D32Async);

KV_EMU_API CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount)
{
    KV_EMU_ENTER(cuMemcpy);
    return copy(dst, src, ByteCount, false, false, false, NULL);
}
KV_EMU_ALIAS(cuMemcpy);

KV_EMU_API CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount,
                                  CUstream hStream)
{
    KV_EMU_ENTER(cuMemcpyAsync);
    return copy(dst, src, ByteCount, false, false, true, hStream);
}
KV_EMU_ALIAS(cuMemcpyAsync);

KV_EMU_API CUresult cuMemcpyHtoD_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount)
{
    KV_EMU_ENTER(cuMemcpyHtoD_v2);
    return copy(dstDevice, (CUdeviceptr)srcHost, ByteCount, true, false, false, NULL);
}
KV_EMU_ALIAS(cuMemcpyHtoD_v2);

KV_EMU_API CUresult cuMemcpyDtoH_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount)
{
    KV_EMU_ENTER(cuMemcpyDtoH_v2);
    return copy((CUdeviceptr)dstHost, srcDevice, ByteCount, false, true, false, NULL);
}
KV_EMU_ALIAS(cuMemcpyDtoH_v2);

KV_EMU_API CUresult cuMemcpyDtoD_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice,
                                    size_t ByteCount)
{
    KV_EMU_ENTER(cuMemcpyDtoD_v2);
    return copy(dstDevice, srcDevice, ByteCount, true, true, false, NULL);
}
KV_EMU_ALIAS(cuMemcpyDtoD_v2);

KV_EMU_API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dstDevice, const void *srcHost,
                                         size_t ByteCount, CUstream hStream)
{
    KV_EMU_ENTER(cuMemcpyHtoDAsync_v2);
    return copy(dstDevice, (CUdeviceptr)srcHost, ByteCount, true, false, true, hStream);
}
KV_EMU_ALIAS(cuMemcpyHtoDAsync_v2);

KV_EMU_API CUresult cuMemcpyDtoHAsync_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount,
                                         CUstream hStream)
{
    KV_EMU_ENTER(cuMemcpyDtoHAsync_v2);
    return copy((CUdeviceptr)dstHost, srcDevice, ByteCount, false, true, true, hStream);
}
KV_EMU_ALIAS(cuMemcpyDtoHAsync_v2);

KV_EMU_API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice,
                                         size_t ByteCount, CUstream hStream)
{
    KV_EMU_ENTER(cuMemcpyDtoDAsync_v2);
    return copy(dstDevice, srcDevice, ByteCount, true, true, true, hStream);
}
KV_EMU_ALIAS(cuMemcpyDtoDAsync_v2);
