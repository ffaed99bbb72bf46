/*
 * emu_copy.c: the fault guard; memset/memcpy checked, then recorded into a stream capture or
 * done at once on host memory under the guard; and the runner of every operation (memset, copy,
 * kernel, event record), for a stream or a graph launch.
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

/* ------------------------------------------------------------------ running an operation */

static void run_copy(void *arg)
{
    const kv_emu_op_t *o = arg;
    const char *src;
    char *dst;

    for (size_t z = 0; z < o->u.copy.depth; z++) {
        dst = (char *)o->u.copy.dst + z * o->u.copy.dslice;
        src = (const char *)o->u.copy.src + z * o->u.copy.sslice;
        for (size_t y = 0; y < o->u.copy.height; y++)
            memmove(dst + y * o->u.copy.dpitch, src + y * o->u.copy.spitch, o->u.copy.n);
    }
}

/* The bytes from a copy's first byte to its last on the side with the given pitch and slice
 * pitch (checked not to overflow when the copy was made). */
static size_t copy_reach(const kv_emu_op_t *o, size_t pitch, size_t slice)
{
    return (o->u.copy.depth - 1) * slice + (o->u.copy.height - 1) * pitch + o->u.copy.n;
}

static void set_row(void *dst, size_t n, unsigned int value, int width)
{
    switch (width) {
    case 1:
        memset(dst, (int)(value & 0xff), n);
        break;
    case 2:
        for (size_t i = 0; i < n; i++)
            ((unsigned short *)dst)[i] = (unsigned short)value;
        break;
    default:
        for (size_t i = 0; i < n; i++)
            ((unsigned int *)dst)[i] = value;
        break;
    }
}

static void run_set(void *arg)
{
    const kv_emu_op_t *o = arg;
    char *row = (char *)o->u.set.dst;

    for (size_t i = 0; i < o->u.set.height; i++, row += o->u.set.pitch)
        set_row(row, o->u.set.n, o->u.set.value, o->u.set.width);
}

static void run_kernel(void *arg)
{
    const kv_emu_op_t *o = arg;
    void *params[KV_EMU_KERNEL_ARGS];

    for (int i = 0; i < KV_EMU_KERNEL_ARGS; i++)
        params[i] = (void *)&o->u.kernel.args[i];
    o->u.kernel.kernel->run(params);
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

/* Stamp event e with the time now, if it still exists; a replayed record does only that. */
static void stamp(struct CUevent_st *e)
{
    kv_emu_lock();
    for (struct CUevent_st *p = kv_emu.events; p; p = p->next) {
        if (p == e) {
            clock_gettime(CLOCK_MONOTONIC, &e->when);
            e->recorded = true;
            e->capture_id = 0;
            break;
        }
    }
    kv_emu_unlock();
}

/*
 * Whether op's device may do what op does to the pages of reservations it reaches: a memset
 * writes its rows' span, a kernel reads (kv_check) or writes (kv_fill) its words. Copies are not
 * judged (the driver moves peer memory itself). Returns true or false.
 */
static bool allowed(const kv_emu_op_t *op)
{
    uintptr_t p = 0;
    size_t n = 0;
    bool ok, write = true;

    if (op->device < 0)
        return true;
    if (op->kind == KV_OP_SET) {
        if (op->u.set.n == 0 || op->u.set.height == 0)
            return true;
        p = op->u.set.dst;
        n = (op->u.set.height - 1) * op->u.set.pitch + op->u.set.n * (size_t)op->u.set.width;
    } else if (op->kind == KV_OP_KERNEL) {
        p = (uintptr_t)op->u.kernel.args[0];
        if (__builtin_mul_overflow((size_t)op->u.kernel.args[1], (size_t)4, &n))
            return true;    /* the guard will find what it reaches */
        write = op->u.kernel.kernel->writes;
    } else {
        return true;
    }
    kv_emu_lock();
    ok = kv_emu_check_access(op->device, p, n, write);
    kv_emu_unlock();
    return ok;
}

CUresult kv_emu_run(const kv_emu_op_t *op)
{
    void (*fn)(void *);

    if (!allowed(op))
        return CUDA_ERROR_ILLEGAL_ADDRESS;
    switch (op->kind) {
    case KV_OP_SET:
        if (op->u.set.n == 0 || op->u.set.height == 0)
            return CUDA_SUCCESS;
        fn = run_set;
        break;
    case KV_OP_COPY:
        if (op->u.copy.n == 0 || op->u.copy.height == 0 || op->u.copy.depth == 0)
            return CUDA_SUCCESS;
        check_host(op->u.copy.dst, copy_reach(op, op->u.copy.dpitch, op->u.copy.dslice));
        check_host(op->u.copy.src, copy_reach(op, op->u.copy.spitch, op->u.copy.sslice));
        fn = run_copy;
        break;
    case KV_OP_KERNEL:
        fn = run_kernel;
        break;
    default:
        stamp(op->u.event.event);
        return CUDA_SUCCESS;
    }
    /* The guard's argument is not const, but nothing writes through it. */
    return kv_emu_guard(fn, (void *)op) < 0 ? CUDA_ERROR_ILLEGAL_ADDRESS : CUDA_SUCCESS;
}

/* ------------------------------------------------------------------ memset and memcpy */

/*
 * One side of a copy, or the target of a memset, as submit checks it: its first byte, the bytes
 * from there to its last, and how it is checked: DEV must lie in one allocation or reservation,
 * ANY (a unified pointer) must when its pointer is in one, NONE is not checked. whole: a pitched
 * copy's or memset's side (2D, 3D), whose pointer ptr (not its first row: the x, y and z offsets
 * left out) the driver checks too: the same count of bytes from ptr must lie in one allocation
 * or reservation, all their pages mapped. The driver 580 on an H200 refused such a copy or
 * memset with CUDA_ERROR_INVALID_VALUE when a page of [ptr, ptr + bytes) was unmapped (the
 * pages the rows skip included), and ran it with an unmapped page between ptr + bytes and the
 * first row (tests/gpu/pitched_probe.py: a 2D or 3D copy of one row at dstY 2, dstZ 1 or dstX
 * 2 pages from a mapped pointer page, page 1 unmapped, ran; one of three rows at dstY 2 was
 * refused); a copy whose pointer and box lay in two adjacent allocations, all mapped, ran. An
 * unmapped page of the box itself is the later illegal address, as for a linear copy.
 */
enum side_check { SIDE_NONE, SIDE_DEV, SIDE_ANY };
struct side {
    CUdeviceptr p;
    size_t bytes;
    enum side_check check;
    bool whole;
    CUdeviceptr ptr;            /* whole: the caller's pointer */
};

/*
 * Whether the host waits for a synchronous copy (CUDA's "API synchronization behavior": a copy
 * from pageable host memory syncs the stream first, one to host memory returns once done, one
 * between device buffers does not make the host wait): whether a side is host memory, which is
 * what lies in no reservation. Call locked.
 */
static bool copy_waits(const struct side *sides, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!kv_emu_find_resv(sides[i].p, sides[i].bytes ? sides[i].bytes : 1))
            return true;
    return false;
}

/* Whether a side passes its check (see struct side). Call locked. */
static bool side_ok(const struct side *d)
{
    if (d->bytes == 0 || d->check == SIDE_NONE)
        return true;
    if (d->check == SIDE_ANY && !kv_emu_find_resv(d->whole ? d->ptr : d->p, 1))
        return true;
    if (!kv_emu_find_resv(d->p, d->bytes))
        return false;
    return !d->whole ||
           (kv_emu_find_resv(d->ptr, d->bytes) && kv_emu_range_mapped(d->ptr, d->bytes));
}

/*
 * Check a copy or memset as the driver does before it is queued (a current context, a live
 * stream, device-side ranges that lie in one allocation or reservation, mapped or not: touching
 * an unmapped page is the later, asynchronous illegal address), then apply the capture rules:
 * record it into a capture, refuse it, or run it now. sides are the n sides to check (see
 * struct side); fn the exported function, for the capture statistics.
 */
static CUresult submit(enum kv_emu_fn fn, bool async, CUstream s, const struct side *sides,
                       size_t n, kv_emu_op_t *op)
{
    CUresult r = CUDA_SUCCESS;
    bool recorded = false;

    if (!kv_emu_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    kv_emu_lock();
    op->device = kv_emu_stream_device(async ? s : NULL);
    if (async && !kv_emu_valid_stream(s))
        r = CUDA_ERROR_INVALID_HANDLE;
    for (size_t i = 0; i < n && r == CUDA_SUCCESS; i++)
        if (!side_ok(&sides[i]))
            r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS && async)
        r = kv_emu_capture_enqueue(fn, s, false, op, 1, &recorded);
    else if (r == CUDA_SUCCESS)
        r = kv_emu_capture_sync_op(fn, op->kind == KV_OP_COPY && copy_waits(sides, n));
    kv_emu_unlock();
    if (r != CUDA_SUCCESS || recorded)
        return r;
    return kv_emu_run(op);
}

/*
 * Copy n bytes; check_dst / check_src say which sides must be device memory (cuMemcpy takes
 * either kind on both sides, as with unified addressing).
 */
static CUresult copy(enum kv_emu_fn fn, CUdeviceptr dst, CUdeviceptr src, size_t n,
                     bool check_dst, bool check_src, bool async, CUstream s)
{
    kv_emu_op_t o = { .kind = KV_OP_COPY };
    struct side sides[2] = { { dst, n, check_dst ? SIDE_DEV : SIDE_NONE, false, 0 },
                             { src, n, check_src ? SIDE_DEV : SIDE_NONE, false, 0 } };

    if (n && (!dst || !src))
        return CUDA_ERROR_INVALID_VALUE;
    o.u.copy.dst = dst;
    o.u.copy.src = src;
    o.u.copy.n = n;
    o.u.copy.height = 1;
    o.u.copy.depth = 1;
    return submit(fn, async, s, sides, 2, &o);
}

static CUresult set(enum kv_emu_fn fn, CUdeviceptr dst, unsigned int value, size_t n, int width,
                    bool async, CUstream s)
{
    kv_emu_op_t o = { .kind = KV_OP_SET };
    struct side side;

    if (dst % (CUdeviceptr)width || n > SIZE_MAX / (size_t)width || (n && !dst))
        return CUDA_ERROR_INVALID_VALUE;
    o.u.set.dst = dst;
    o.u.set.n = n;
    o.u.set.height = 1;
    o.u.set.value = value;
    o.u.set.width = width;
    side.p = dst;
    side.bytes = n * (size_t)width;
    side.check = SIDE_DEV;
    side.whole = false;
    return submit(fn, async, s, &side, 1, &o);
}

KV_EMU_API CUresult cuMemsetD8_v2(CUdeviceptr dstDevice, unsigned char uc, size_t N)
{
    KV_EMU_ENTER(cuMemsetD8_v2);
    return set(KV_FN_cuMemsetD8_v2, dstDevice, uc, N, 1, false, NULL);
}
KV_EMU_ALIAS(cuMemsetD8_v2);

KV_EMU_API CUresult cuMemsetD16_v2(CUdeviceptr dstDevice, unsigned short us, size_t N)
{
    KV_EMU_ENTER(cuMemsetD16_v2);
    return set(KV_FN_cuMemsetD16_v2, dstDevice, us, N, 2, false, NULL);
}
KV_EMU_ALIAS(cuMemsetD16_v2);

KV_EMU_API CUresult cuMemsetD32_v2(CUdeviceptr dstDevice, unsigned int ui, size_t N)
{
    KV_EMU_ENTER(cuMemsetD32_v2);
    return set(KV_FN_cuMemsetD32_v2, dstDevice, ui, N, 4, false, NULL);
}
KV_EMU_ALIAS(cuMemsetD32_v2);

KV_EMU_API CUresult cuMemsetD8Async(CUdeviceptr dstDevice, unsigned char uc, size_t N,
                                    CUstream hStream)
{
    KV_EMU_ENTER(cuMemsetD8Async);
    return set(KV_FN_cuMemsetD8Async, dstDevice, uc, N, 1, true, hStream);
}
KV_EMU_ALIAS(cuMemsetD8Async);

KV_EMU_API CUresult cuMemsetD16Async(CUdeviceptr dstDevice, unsigned short us, size_t N,
                                     CUstream hStream)
{
    KV_EMU_ENTER(cuMemsetD16Async);
    return set(KV_FN_cuMemsetD16Async, dstDevice, us, N, 2, true, hStream);
}
KV_EMU_ALIAS(cuMemsetD16Async);

KV_EMU_API CUresult cuMemsetD32Async(CUdeviceptr dstDevice, unsigned int ui, size_t N,
                                     CUstream hStream)
{
    KV_EMU_ENTER(cuMemsetD32Async);
    return set(KV_FN_cuMemsetD32Async, dstDevice, ui, N, 4, true, hStream);
}
KV_EMU_ALIAS(cuMemsetD32Async);

/*
 * 2D memsets: height rows of n elements, pitch bytes apart. The driver refuses a start or a
 * pitch not aligned to the element, a pitch narrower than a row (rows would overlap; the pitch
 * is unused with one row), sizes whose span does not fit in size_t, and a span not inside one
 * allocation or reservation.
 */
static CUresult set2d(enum kv_emu_fn fn, CUdeviceptr dst, size_t pitch, unsigned int value,
                      size_t n, size_t height, int width, bool async, CUstream s)
{
    kv_emu_op_t o = { .kind = KV_OP_SET };
    struct side side;
    size_t row, span = 0;

    if (dst % (CUdeviceptr)width || __builtin_mul_overflow(n, (size_t)width, &row))
        return CUDA_ERROR_INVALID_VALUE;
    if (height > 1 && (pitch % (size_t)width || pitch < row))
        return CUDA_ERROR_INVALID_VALUE;
    if (n && height && (__builtin_mul_overflow(height - 1, pitch, &span) ||
                        __builtin_add_overflow(span, row, &span) || !dst))
        return CUDA_ERROR_INVALID_VALUE;
    o.u.set.dst = dst;
    o.u.set.n = n;
    o.u.set.height = height;
    o.u.set.pitch = pitch;
    o.u.set.value = value;
    o.u.set.width = width;
    side.p = dst;
    side.bytes = n && height ? span : 0;
    side.check = SIDE_DEV;
    side.whole = true;
    side.ptr = dst;
    return submit(fn, async, s, &side, 1, &o);
}

KV_EMU_API CUresult cuMemsetD2D8_v2(CUdeviceptr dstDevice, size_t dstPitch, unsigned char uc,
                                    size_t Width, size_t Height)
{
    KV_EMU_ENTER(cuMemsetD2D8_v2);
    return set2d(KV_FN_cuMemsetD2D8_v2, dstDevice, dstPitch, uc, Width, Height, 1, false, NULL);
}
KV_EMU_ALIAS(cuMemsetD2D8_v2);

KV_EMU_API CUresult cuMemsetD2D16_v2(CUdeviceptr dstDevice, size_t dstPitch, unsigned short us,
                                     size_t Width, size_t Height)
{
    KV_EMU_ENTER(cuMemsetD2D16_v2);
    return set2d(KV_FN_cuMemsetD2D16_v2, dstDevice, dstPitch, us, Width, Height, 2, false, NULL);
}
KV_EMU_ALIAS(cuMemsetD2D16_v2);

KV_EMU_API CUresult cuMemsetD2D32_v2(CUdeviceptr dstDevice, size_t dstPitch, unsigned int ui,
                                     size_t Width, size_t Height)
{
    KV_EMU_ENTER(cuMemsetD2D32_v2);
    return set2d(KV_FN_cuMemsetD2D32_v2, dstDevice, dstPitch, ui, Width, Height, 4, false, NULL);
}
KV_EMU_ALIAS(cuMemsetD2D32_v2);

KV_EMU_API CUresult cuMemsetD2D8Async(CUdeviceptr dstDevice, size_t dstPitch, unsigned char uc,
                                      size_t Width, size_t Height, CUstream hStream)
{
    KV_EMU_ENTER(cuMemsetD2D8Async);
    return set2d(KV_FN_cuMemsetD2D8Async, dstDevice, dstPitch, uc, Width, Height, 1, true, hStream);
}
KV_EMU_ALIAS(cuMemsetD2D8Async);

KV_EMU_API CUresult cuMemsetD2D16Async(CUdeviceptr dstDevice, size_t dstPitch, unsigned short us,
                                       size_t Width, size_t Height, CUstream hStream)
{
    KV_EMU_ENTER(cuMemsetD2D16Async);
    return set2d(KV_FN_cuMemsetD2D16Async, dstDevice, dstPitch, us, Width, Height, 2, true,
                 hStream);
}
KV_EMU_ALIAS(cuMemsetD2D16Async);

KV_EMU_API CUresult cuMemsetD2D32Async(CUdeviceptr dstDevice, size_t dstPitch, unsigned int ui,
                                       size_t Width, size_t Height, CUstream hStream)
{
    KV_EMU_ENTER(cuMemsetD2D32Async);
    return set2d(KV_FN_cuMemsetD2D32Async, dstDevice, dstPitch, ui, Width, Height, 4, true,
                 hStream);
}
KV_EMU_ALIAS(cuMemsetD2D32Async);

KV_EMU_API CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount)
{
    KV_EMU_ENTER(cuMemcpy);
    return copy(KV_FN_cuMemcpy, dst, src, ByteCount, false, false, false, NULL);
}
KV_EMU_ALIAS(cuMemcpy);

KV_EMU_API CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount,
                                  CUstream hStream)
{
    KV_EMU_ENTER(cuMemcpyAsync);
    return copy(KV_FN_cuMemcpyAsync, dst, src, ByteCount, false, false, true, hStream);
}
KV_EMU_ALIAS(cuMemcpyAsync);

KV_EMU_API CUresult cuMemcpyHtoD_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount)
{
    KV_EMU_ENTER(cuMemcpyHtoD_v2);
    return copy(KV_FN_cuMemcpyHtoD_v2, dstDevice, (CUdeviceptr)srcHost, ByteCount, true, false,
                false, NULL);
}
KV_EMU_ALIAS(cuMemcpyHtoD_v2);

KV_EMU_API CUresult cuMemcpyDtoH_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount)
{
    KV_EMU_ENTER(cuMemcpyDtoH_v2);
    return copy(KV_FN_cuMemcpyDtoH_v2, (CUdeviceptr)dstHost, srcDevice, ByteCount, false, true,
                false, NULL);
}
KV_EMU_ALIAS(cuMemcpyDtoH_v2);

KV_EMU_API CUresult cuMemcpyDtoD_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice,
                                    size_t ByteCount)
{
    KV_EMU_ENTER(cuMemcpyDtoD_v2);
    return copy(KV_FN_cuMemcpyDtoD_v2, dstDevice, srcDevice, ByteCount, true, true, false, NULL);
}
KV_EMU_ALIAS(cuMemcpyDtoD_v2);

KV_EMU_API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dstDevice, const void *srcHost,
                                         size_t ByteCount, CUstream hStream)
{
    KV_EMU_ENTER(cuMemcpyHtoDAsync_v2);
    return copy(KV_FN_cuMemcpyHtoDAsync_v2, dstDevice, (CUdeviceptr)srcHost, ByteCount, true,
                false, true, hStream);
}
KV_EMU_ALIAS(cuMemcpyHtoDAsync_v2);

KV_EMU_API CUresult cuMemcpyDtoHAsync_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount,
                                         CUstream hStream)
{
    KV_EMU_ENTER(cuMemcpyDtoHAsync_v2);
    return copy(KV_FN_cuMemcpyDtoHAsync_v2, (CUdeviceptr)dstHost, srcDevice, ByteCount, false,
                true, true, hStream);
}
KV_EMU_ALIAS(cuMemcpyDtoHAsync_v2);

KV_EMU_API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice,
                                         size_t ByteCount, CUstream hStream)
{
    KV_EMU_ENTER(cuMemcpyDtoDAsync_v2);
    return copy(KV_FN_cuMemcpyDtoDAsync_v2, dstDevice, srcDevice, ByteCount, true, true, true, hStream);
}
KV_EMU_ALIAS(cuMemcpyDtoDAsync_v2);

/* ------------------------------------------------------------------ 2D, 3D and peer copies */

/* One side of a 2D or 3D copy as the caller describes it (a 2D copy: z 0, one slice). */
struct box {
    CUmemorytype type;
    CUdeviceptr ptr;            /* the host or device pointer, by type */
    size_t x, y, z;             /* where the copy starts: bytes into a row, rows, slices */
    size_t pitch, ysize;        /* bytes from one row to the next; rows from one slice to the next */
    const void *reserved;       /* must be NULL */
};

/*
 * Resolve box b of a copy of depth slices of height rows of w bytes: its first byte (*start),
 * slice pitch (*slice) and the side submit checks (*out). The driver refuses an array here (the
 * emulation has none: CUDA_ERROR_NOT_SUPPORTED), an unknown memory type, a reserved field set, a
 * pitch narrower than a row when there are several rows, slices of fewer rows than the copy's,
 * and sizes or offsets that do not fit in size_t (CUDA_ERROR_INVALID_VALUE). Returns
 * CUDA_SUCCESS or that error.
 */
static CUresult resolve(const struct box *b, size_t w, size_t h, size_t d, CUdeviceptr *start,
                        size_t *slice, struct side *out)
{
    size_t off, reach;

    if (b->type == CU_MEMORYTYPE_ARRAY)
        return CUDA_ERROR_NOT_SUPPORTED;
    if ((b->type != CU_MEMORYTYPE_HOST && b->type != CU_MEMORYTYPE_DEVICE &&
         b->type != CU_MEMORYTYPE_UNIFIED) || b->reserved)
        return CUDA_ERROR_INVALID_VALUE;
    *start = b->ptr;
    *slice = 0;
    out->p = b->ptr;
    out->bytes = 0;
    out->check = b->type == CU_MEMORYTYPE_DEVICE ? SIDE_DEV
               : b->type == CU_MEMORYTYPE_UNIFIED ? SIDE_ANY : SIDE_NONE;
    out->whole = true;
    out->ptr = b->ptr;
    if (w == 0 || h == 0 || d == 0)
        return CUDA_SUCCESS;
    if ((h > 1 || d > 1) && b->pitch < w)
        return CUDA_ERROR_INVALID_VALUE;
    if (d > 1 && (h > b->ysize || __builtin_mul_overflow(b->pitch, b->ysize, slice)))
        return CUDA_ERROR_INVALID_VALUE;
    if (__builtin_mul_overflow(b->z, b->ysize, &off) || __builtin_add_overflow(off, b->y, &off) ||
        __builtin_mul_overflow(off, b->pitch, &off) || __builtin_add_overflow(off, b->x, &off) ||
        __builtin_add_overflow(b->ptr, off, start) || !b->ptr)
        return CUDA_ERROR_INVALID_VALUE;
    if (__builtin_mul_overflow(d - 1, *slice, &reach) ||
        __builtin_mul_overflow(h - 1, b->pitch, &off) ||
        __builtin_add_overflow(reach, off, &reach) || __builtin_add_overflow(reach, w, &reach) ||
        *start + reach < *start)
        return CUDA_ERROR_INVALID_VALUE;
    out->p = *start;
    out->bytes = reach;
    return CUDA_SUCCESS;
}

/*
 * A copy of d slices of h rows of w bytes from box src to box dst, checked whole before
 * anything is queued; device sides as the directional copies check theirs, unified ones when
 * they start in a reservation. Touching an unmapped page faults as a 1D copy does.
 */
static CUresult copy3d(enum kv_emu_fn fn, const struct box *dst, const struct box *src, size_t w,
                       size_t h, size_t d, bool async, CUstream s)
{
    kv_emu_op_t o = { .kind = KV_OP_COPY };
    struct side sides[2];
    CUresult r;

    r = resolve(dst, w, h, d, &o.u.copy.dst, &o.u.copy.dslice, &sides[0]);
    if (r == CUDA_SUCCESS)
        r = resolve(src, w, h, d, &o.u.copy.src, &o.u.copy.sslice, &sides[1]);
    if (r != CUDA_SUCCESS)
        return r;
    o.u.copy.n = w;
    o.u.copy.height = h;
    o.u.copy.depth = d;
    o.u.copy.dpitch = dst->pitch;
    o.u.copy.spitch = src->pitch;
    return submit(fn, async, s, sides, 2, &o);
}

/* The pointer of a side of memory type t. */
static CUdeviceptr side_ptr(CUmemorytype t, const void *host, CUdeviceptr dev)
{
    return t == CU_MEMORYTYPE_HOST ? (CUdeviceptr)host : dev;
}

static CUresult copy2d(enum kv_emu_fn fn, const CUDA_MEMCPY2D *p, bool async, CUstream s)
{
    struct box dst, src;

    if (!p)
        return CUDA_ERROR_INVALID_VALUE;
    dst = (struct box){ p->dstMemoryType, side_ptr(p->dstMemoryType, p->dstHost, p->dstDevice),
                        p->dstXInBytes, p->dstY, 0, p->dstPitch, 0, NULL };
    src = (struct box){ p->srcMemoryType, side_ptr(p->srcMemoryType, p->srcHost, p->srcDevice),
                        p->srcXInBytes, p->srcY, 0, p->srcPitch, 0, NULL };
    return copy3d(fn, &dst, &src, p->WidthInBytes, p->Height, 1, async, s);
}

/* Side s (dst or src) of a CUDA_MEMCPY3D or CUDA_MEMCPY3D_PEER p (whose fields they share), its
 * reserved field r. */
#define BOX_3D(p, s, r)                                                                           \
    ((struct box){ (p)->s##MemoryType, side_ptr((p)->s##MemoryType, (p)->s##Host, (p)->s##Device), \
                   (p)->s##XInBytes, (p)->s##Y, (p)->s##Z, (p)->s##Pitch, (p)->s##Height, (r) })

static CUresult copy3d_params(enum kv_emu_fn fn, const CUDA_MEMCPY3D *p, bool async, CUstream s)
{
    struct box dst, src;

    if (!p)
        return CUDA_ERROR_INVALID_VALUE;
    dst = BOX_3D(p, dst, p->reserved1);
    src = BOX_3D(p, src, p->reserved0);
    return copy3d(fn, &dst, &src, p->WidthInBytes, p->Height, p->Depth, async, s);
}

KV_EMU_API CUresult cuMemcpy2D_v2(const CUDA_MEMCPY2D *pCopy)
{
    KV_EMU_ENTER(cuMemcpy2D_v2);
    return copy2d(KV_FN_cuMemcpy2D_v2, pCopy, false, NULL);
}
KV_EMU_ALIAS(cuMemcpy2D_v2);

KV_EMU_API CUresult cuMemcpy2DUnaligned_v2(const CUDA_MEMCPY2D *pCopy)
{
    KV_EMU_ENTER(cuMemcpy2DUnaligned_v2);
    return copy2d(KV_FN_cuMemcpy2DUnaligned_v2, pCopy, false, NULL);
}
KV_EMU_ALIAS(cuMemcpy2DUnaligned_v2);

KV_EMU_API CUresult cuMemcpy2DAsync_v2(const CUDA_MEMCPY2D *pCopy, CUstream hStream)
{
    KV_EMU_ENTER(cuMemcpy2DAsync_v2);
    return copy2d(KV_FN_cuMemcpy2DAsync_v2, pCopy, true, hStream);
}
KV_EMU_ALIAS(cuMemcpy2DAsync_v2);

KV_EMU_API CUresult cuMemcpy3D_v2(const CUDA_MEMCPY3D *pCopy)
{
    KV_EMU_ENTER(cuMemcpy3D_v2);
    return copy3d_params(KV_FN_cuMemcpy3D_v2, pCopy, false, NULL);
}
KV_EMU_ALIAS(cuMemcpy3D_v2);

KV_EMU_API CUresult cuMemcpy3DAsync_v2(const CUDA_MEMCPY3D *pCopy, CUstream hStream)
{
    KV_EMU_ENTER(cuMemcpy3DAsync_v2);
    return copy3d_params(KV_FN_cuMemcpy3DAsync_v2, pCopy, true, hStream);
}
KV_EMU_ALIAS(cuMemcpy3DAsync_v2);

/* Whether c is a device's primary context (the only contexts the emulation has). */
static bool known_ctx(CUcontext c)
{
    for (int i = 0; c && kv_emu_valid_device(i); i++)
        if (c == &kv_emu.devs[i].ctx)
            return true;
    return false;
}

/* A copy between the memory of two contexts' devices: both sides device memory, as cuMemcpyDtoD
 * checks them; an unknown context is CUDA_ERROR_INVALID_CONTEXT. */
static CUresult copy_peer(enum kv_emu_fn fn, CUdeviceptr dst, CUcontext dctx, CUdeviceptr src,
                          CUcontext sctx, size_t n, bool async, CUstream s)
{
    if (!known_ctx(dctx) || !known_ctx(sctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    return copy(fn, dst, src, n, true, true, async, s);
}

/*
 * A batch of linear copies (cuMemcpyBatchAsync: CUDA 12.8's form with *fail_idx, 13.0's
 * without). Every argument is checked before any copy is queued, as the driver does: the
 * arrays, a count of at least one, attributes of a known source access order, their first
 * index 0 and each above the one before and below count, a stream other than the legacy one, and
 * each copy's pointers; then the copies go in order on the stream, each as cuMemcpyAsync's (an
 * unmapped page is an illegal address). *fail_idx, where given: the copy at fault, or SIZE_MAX.
 */
static CUresult copy_batch(enum kv_emu_fn fn, CUdeviceptr *dsts, CUdeviceptr *srcs,
                           size_t *sizes, size_t count, CUmemcpyAttributes *attrs, size_t *idxs,
                           size_t nattrs, size_t *fail_idx, CUstream s)
{
    CUresult r;
    size_t i;

    if (fail_idx)
        *fail_idx = SIZE_MAX;
    if (!dsts || !srcs || !sizes || !attrs || !idxs || !count || !nattrs || nattrs > count ||
        idxs[0] != 0 || !s || s == CU_STREAM_LEGACY)
        return CUDA_ERROR_INVALID_VALUE;
    for (i = 0; i < nattrs; i++)
        if ((i && (idxs[i] <= idxs[i - 1] || idxs[i] >= count)) ||
            attrs[i].srcAccessOrder == CU_MEMCPY_SRC_ACCESS_ORDER_INVALID ||
            attrs[i].srcAccessOrder > CU_MEMCPY_SRC_ACCESS_ORDER_ANY)
            return CUDA_ERROR_INVALID_VALUE;
    for (i = 0; i < count; i++) {
        if (sizes[i] && (!dsts[i] || !srcs[i])) {
            if (fail_idx)
                *fail_idx = i;
            return CUDA_ERROR_INVALID_VALUE;
        }
    }
    for (i = 0; i < count; i++) {
        r = copy(fn, dsts[i], srcs[i], sizes[i], false, false, true, s);
        if (r) {
            if (fail_idx)
                *fail_idx = i;
            return r;
        }
    }
    return CUDA_SUCCESS;
}

KV_EMU_API CUresult cuMemcpyBatchAsync(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes,
                                       size_t count, CUmemcpyAttributes *attrs,
                                       size_t *attrsIdxs, size_t numAttrs, size_t *failIdx,
                                       CUstream hStream)
{
    KV_EMU_ENTER(cuMemcpyBatchAsync);
    return copy_batch(KV_FN_cuMemcpyBatchAsync, dsts, srcs, sizes, count, attrs, attrsIdxs,
                      numAttrs, failIdx, hStream);
}
KV_EMU_ALIAS(cuMemcpyBatchAsync);

KV_EMU_API CUresult cuMemcpyBatchAsync_v2(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes,
                                          size_t count, CUmemcpyAttributes *attrs,
                                          size_t *attrsIdxs, size_t numAttrs, CUstream hStream)
{
    KV_EMU_ENTER(cuMemcpyBatchAsync_v2);
    return copy_batch(KV_FN_cuMemcpyBatchAsync_v2, dsts, srcs, sizes, count, attrs, attrsIdxs,
                      numAttrs, NULL, hStream);
}
KV_EMU_ALIAS(cuMemcpyBatchAsync_v2);

/*
 * One operand of a 3D batch copy of extent e, as a box of resolve's, into *b: a pointer is a
 * unified one (checked where it starts in a reservation, as cuMemcpy's), its rows rowLength
 * bytes apart and its layers layerHeight rows apart (0: as tight as the extent; a pointer to
 * pointer copy's element is a byte). No arrays (CUDA_ERROR_NOT_SUPPORTED); an unknown type, a
 * NULL pointer, a row length under the extent's width or a layer height under its height is
 * CUDA_ERROR_INVALID_VALUE. Returns CUDA_SUCCESS or that error.
 */
static CUresult operand_box(const CUmemcpy3DOperand *op, const CUextent3D *e, struct box *b)
{
    if (op->type == CU_MEMCPY_OPERAND_TYPE_ARRAY)
        return CUDA_ERROR_NOT_SUPPORTED;
    if (op->type != CU_MEMCPY_OPERAND_TYPE_POINTER || !op->op.ptr.ptr ||
        (op->op.ptr.rowLength && op->op.ptr.rowLength < e->width) ||
        (op->op.ptr.layerHeight && op->op.ptr.layerHeight < e->height))
        return CUDA_ERROR_INVALID_VALUE;
    *b = (struct box){ CU_MEMORYTYPE_UNIFIED, op->op.ptr.ptr, 0, 0, 0,
                       op->op.ptr.rowLength ? op->op.ptr.rowLength : e->width,
                       op->op.ptr.layerHeight ? op->op.ptr.layerHeight : e->height, NULL };
    return CUDA_SUCCESS;
}

/*
 * Copy c of a 3D batch as an operation *o and its two sides: a non-zero extent, a known source
 * access order, operands as operand_box takes them; each side's box is checked as a linear
 * copy's range (whole false: an unmapped page of it is an illegal address when the copy runs,
 * not a refusal). Returns CUDA_SUCCESS or the error the driver refuses c with.
 */
static CUresult batch3d_op(const CUDA_MEMCPY3D_BATCH_OP *c, kv_emu_op_t *o, struct side sides[2])
{
    const CUextent3D *e = &c->extent;
    struct box dst, src;
    CUresult r;

    if (!e->width || !e->height || !e->depth ||
        c->srcAccessOrder == CU_MEMCPY_SRC_ACCESS_ORDER_INVALID ||
        c->srcAccessOrder > CU_MEMCPY_SRC_ACCESS_ORDER_ANY)
        return CUDA_ERROR_INVALID_VALUE;
    r = operand_box(&c->dst, e, &dst);
    if (r == CUDA_SUCCESS)
        r = operand_box(&c->src, e, &src);
    if (r == CUDA_SUCCESS)
        r = resolve(&dst, e->width, e->height, e->depth, &o->u.copy.dst, &o->u.copy.dslice,
                    &sides[0]);
    if (r == CUDA_SUCCESS)
        r = resolve(&src, e->width, e->height, e->depth, &o->u.copy.src, &o->u.copy.sslice,
                    &sides[1]);
    if (r != CUDA_SUCCESS)
        return r;
    sides[0].whole = sides[1].whole = false;
    o->kind = KV_OP_COPY;
    o->u.copy.n = e->width;
    o->u.copy.height = e->height;
    o->u.copy.depth = e->depth;
    o->u.copy.dpitch = dst.pitch;
    o->u.copy.spitch = src.pitch;
    return CUDA_SUCCESS;
}

/*
 * A batch of 3D copies (cuMemcpy3DBatchAsync: CUDA 12.8's form with *fail_idx, 13.0's without).
 * As copy_batch: every argument is checked before any copy is queued (a list of at least one
 * copy, flags 0, a stream other than the legacy one, each copy as batch3d_op takes it, its
 * sides' boxes in one reservation where they start in one), then the copies go in order on the
 * stream, an unmapped page an illegal address as for a linear copy (how a GPU's driver answers
 * one is not probed). *fail_idx, where given: the copy at fault, or SIZE_MAX.
 */
static CUresult copy3d_batch(enum kv_emu_fn fn, size_t count, CUDA_MEMCPY3D_BATCH_OP *ops,
                             size_t *fail_idx, unsigned long long flags, CUstream s)
{
    struct side sides[2];
    kv_emu_op_t o;
    CUresult r;

    if (fail_idx)
        *fail_idx = SIZE_MAX;
    if (!ops || !count || flags || !s || s == CU_STREAM_LEGACY)
        return CUDA_ERROR_INVALID_VALUE;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < count; i++) {
            memset(&o, 0, sizeof(o));
            r = batch3d_op(&ops[i], &o, sides);
            if (r == CUDA_SUCCESS && pass == 0) {
                kv_emu_lock();
                if (!side_ok(&sides[0]) || !side_ok(&sides[1]))
                    r = CUDA_ERROR_INVALID_VALUE;
                kv_emu_unlock();
            } else if (r == CUDA_SUCCESS) {
                r = submit(fn, true, s, sides, 2, &o);
            }
            if (r != CUDA_SUCCESS) {
                if (fail_idx)
                    *fail_idx = i;
                return r;
            }
        }
    }
    return CUDA_SUCCESS;
}

KV_EMU_API CUresult cuMemcpy3DBatchAsync(size_t numOps, CUDA_MEMCPY3D_BATCH_OP *opList,
                                         size_t *failIdx, unsigned long long flags,
                                         CUstream hStream)
{
    KV_EMU_ENTER(cuMemcpy3DBatchAsync);
    return copy3d_batch(KV_FN_cuMemcpy3DBatchAsync, numOps, opList, failIdx, flags, hStream);
}
KV_EMU_ALIAS(cuMemcpy3DBatchAsync);

KV_EMU_API CUresult cuMemcpy3DBatchAsync_v2(size_t numOps, CUDA_MEMCPY3D_BATCH_OP *opList,
                                            unsigned long long flags, CUstream hStream)
{
    KV_EMU_ENTER(cuMemcpy3DBatchAsync_v2);
    return copy3d_batch(KV_FN_cuMemcpy3DBatchAsync_v2, numOps, opList, NULL, flags, hStream);
}
KV_EMU_ALIAS(cuMemcpy3DBatchAsync_v2);

/* A 3D copy between the memory of two contexts' devices (cuMemcpy3DPeer): as cuMemcpy3D's, each
 * side's context checked as copy_peer does (an array side's is ignored, as the driver says). */
static CUresult copy3d_peer(enum kv_emu_fn fn, const CUDA_MEMCPY3D_PEER *p, bool async,
                            CUstream s)
{
    struct box dst, src;

    if (!p)
        return CUDA_ERROR_INVALID_VALUE;
    if ((p->dstMemoryType != CU_MEMORYTYPE_ARRAY && !known_ctx(p->dstContext)) ||
        (p->srcMemoryType != CU_MEMORYTYPE_ARRAY && !known_ctx(p->srcContext)))
        return CUDA_ERROR_INVALID_CONTEXT;
    dst = BOX_3D(p, dst, NULL);
    src = BOX_3D(p, src, NULL);
    return copy3d(fn, &dst, &src, p->WidthInBytes, p->Height, p->Depth, async, s);
}

KV_EMU_API CUresult cuMemcpy3DPeer(const CUDA_MEMCPY3D_PEER *pCopy)
{
    KV_EMU_ENTER(cuMemcpy3DPeer);
    return copy3d_peer(KV_FN_cuMemcpy3DPeer, pCopy, false, NULL);
}
KV_EMU_ALIAS(cuMemcpy3DPeer);

KV_EMU_API CUresult cuMemcpy3DPeerAsync(const CUDA_MEMCPY3D_PEER *pCopy, CUstream hStream)
{
    KV_EMU_ENTER(cuMemcpy3DPeerAsync);
    return copy3d_peer(KV_FN_cuMemcpy3DPeerAsync, pCopy, true, hStream);
}
KV_EMU_ALIAS(cuMemcpy3DPeerAsync);

KV_EMU_API CUresult cuMemcpyPeer(CUdeviceptr dstDevice, CUcontext dstContext,
                                 CUdeviceptr srcDevice, CUcontext srcContext, size_t ByteCount)
{
    KV_EMU_ENTER(cuMemcpyPeer);
    return copy_peer(KV_FN_cuMemcpyPeer, dstDevice, dstContext, srcDevice, srcContext, ByteCount,
                     false, NULL);
}
KV_EMU_ALIAS(cuMemcpyPeer);

KV_EMU_API CUresult cuMemcpyPeerAsync(CUdeviceptr dstDevice, CUcontext dstContext,
                                      CUdeviceptr srcDevice, CUcontext srcContext,
                                      size_t ByteCount, CUstream hStream)
{
    KV_EMU_ENTER(cuMemcpyPeerAsync);
    return copy_peer(KV_FN_cuMemcpyPeerAsync, dstDevice, dstContext, srcDevice, srcContext,
                     ByteCount, true, hStream);
}
KV_EMU_ALIAS(cuMemcpyPeerAsync);
