/*
 * Private header of the CPU emulation of the CUDA driver (libcuda.so.1 for tests).
 *
 * Device pointers are host addresses. Physical device memory is one sparse memfd per device,
 * carved into 2 MiB chunks; a reservation is PROT_NONE host address space; a mapping is a
 * MAP_SHARED view of a chunk of that memfd. So a test touching an unmapped page faults the way
 * a kernel touching an unmapped VMM page kills a GPU context.
 *
 * Naming: exported names are the real cu* ABI names and kvemu_*; everything shared between the
 * emulation's files is kv_emu_* and hidden (the library is built with -fvisibility=hidden).
 */
#ifndef KV_EMU_INT_H
#define KV_EMU_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <time.h>

#include <cuda.h>

/*
 * cuda.h maps these base names to their newest variant; the real driver also exports the old
 * variants, and so do we, so they need their own (old) prototypes.
 */
#undef cuDeviceGetUuid
#undef cuEventElapsedTime
#undef cuGetProcAddress
#undef cuMemcpyBatchAsync
#undef cuMemcpy3DBatchAsync
#undef cuStreamBeginCapture
#undef cuStreamGetCaptureInfo
CUresult CUDAAPI cuDeviceGetUuid(CUuuid *uuid, CUdevice dev);
CUresult CUDAAPI cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd);
CUresult CUDAAPI cuMemcpyBatchAsync(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes,
                                    size_t count, CUmemcpyAttributes *attrs, size_t *attrsIdxs,
                                    size_t numAttrs, size_t *failIdx, CUstream hStream);
CUresult CUDAAPI cuMemcpy3DBatchAsync(size_t numOps, CUDA_MEMCPY3D_BATCH_OP *opList,
                                      size_t *failIdx, unsigned long long flags,
                                      CUstream hStream);
CUresult CUDAAPI cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion,
                                  cuuint64_t flags);
CUresult CUDAAPI cuStreamBeginCapture(CUstream hStream);
CUresult CUDAAPI cuStreamGetCaptureInfo(CUstream hStream, CUstreamCaptureStatus *captureStatus_out,
                                        cuuint64_t *id_out);
CUresult CUDAAPI cuStreamGetCaptureInfo_v2(CUstream hStream,
                                           CUstreamCaptureStatus *captureStatus_out,
                                           cuuint64_t *id_out, CUgraph *graph_out,
                                           const CUgraphNode **dependencies_out,
                                           size_t *numDependencies_out);

/*
 * The per-thread default stream variants (_ptsz) of the capture calls and of cuMemFreeAsync:
 * the same arguments, but a NULL stream means the calling thread's default stream instead of the
 * legacy one. cuda.h names them only when a program is built for per-thread default streams.
 */
CUresult CUDAAPI cuStreamBeginCapture_ptsz(CUstream hStream);
CUresult CUDAAPI cuStreamBeginCapture_v2_ptsz(CUstream hStream, CUstreamCaptureMode mode);
CUresult CUDAAPI cuStreamEndCapture_ptsz(CUstream hStream, CUgraph *phGraph);
CUresult CUDAAPI cuStreamIsCapturing_ptsz(CUstream hStream, CUstreamCaptureStatus *captureStatus);
CUresult CUDAAPI cuStreamGetCaptureInfo_ptsz(CUstream hStream,
                                             CUstreamCaptureStatus *captureStatus_out,
                                             cuuint64_t *id_out);
CUresult CUDAAPI cuStreamGetCaptureInfo_v2_ptsz(CUstream hStream,
                                                CUstreamCaptureStatus *captureStatus_out,
                                                cuuint64_t *id_out, CUgraph *graph_out,
                                                const CUgraphNode **dependencies_out,
                                                size_t *numDependencies_out);
CUresult CUDAAPI cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream);
CUresult CUDAAPI cuStreamGetCaptureInfo_v3_ptsz(CUstream hStream,
                                                CUstreamCaptureStatus *captureStatus_out,
                                                cuuint64_t *id_out, CUgraph *graph_out,
                                                const CUgraphNode **dependencies_out,
                                                const CUgraphEdgeData **edgeData_out,
                                                size_t *numDependencies_out);

#include "emu_ptds.h"
#include "kvemu.h"

#define KV_EMU_API __attribute__((visibility("default")))

#define KV_EMU_PAGE        ((size_t)2 << 20)   /* granularity and physical chunk size */
#define KV_EMU_MAX_DEVICES 16
#define KV_EMU_CTX_DEPTH   16                  /* per-thread context stack */

/*
 * Every exported driver function: X(exported name, first CUDA version that has it). The order
 * is the index into the call counters and the fail-injection table; cuGetProcAddress resolves
 * base names through the same list (newest variant whose version is low enough), and takes the
 * variant's per-thread default stream twin ("_ptsz" or "_ptds"), where the list has one, when
 * asked for per-thread default streams. The memsets' and copies' twins are emu_ptds.h's.
 */
#define KV_EMU_FUNCS(X)                                                  \
    X(cuInit, 2000)                                                      \
    X(cuDriverGetVersion, 2020)                                          \
    X(cuDeviceGet, 2000)                                                 \
    X(cuDeviceGetCount, 2000)                                            \
    X(cuDeviceGetName, 2000)                                             \
    X(cuDeviceTotalMem_v2, 3020)                                         \
    X(cuDeviceGetAttribute, 2000)                                        \
    X(cuDeviceGetUuid, 9020)                                             \
    X(cuDeviceGetUuid_v2, 11040)                                         \
    X(cuDevicePrimaryCtxRetain, 7000)                                    \
    X(cuDevicePrimaryCtxRelease_v2, 11000)                               \
    X(cuCtxGetCurrent, 4000)                                             \
    X(cuCtxSetCurrent, 4000)                                             \
    X(cuCtxGetDevice, 2000)                                              \
    X(cuCtxSynchronize, 2000)                                            \
    X(cuCtxPushCurrent_v2, 4000)                                         \
    X(cuCtxPopCurrent_v2, 4000)                                          \
    X(cuMemGetAllocationGranularity, 10020)                              \
    X(cuMemAddressReserve, 10020)                                        \
    X(cuMemAddressFree, 10020)                                           \
    X(cuMemCreate, 10020)                                                \
    X(cuMemRelease, 10020)                                               \
    X(cuMemMap, 10020)                                                   \
    X(cuMemSetAccess, 10020)                                             \
    X(cuMemUnmap, 10020)                                                 \
    X(cuMemGetInfo_v2, 3020)                                             \
    X(cuMemAlloc_v2, 3020)                                               \
    X(cuMemFree_v2, 3020)                                                \
    X(cuMemFreeAsync, 11020)                                             \
    X(cuMemFreeAsync_ptsz, 11020)                                        \
    KV_EMU_PER_THREAD(KV_EMU_PT_FUNC, X)                                 \
    X(cuMemGetAddressRange_v2, 3020)                                     \
    X(cuPointerGetAttribute, 4000)                                       \
    X(cuPointerGetAttributes, 7000)                                      \
    X(cuMemsetD8_v2, 3020)                                               \
    X(cuMemsetD16_v2, 3020)                                              \
    X(cuMemsetD32_v2, 3020)                                              \
    X(cuMemsetD8Async, 3020)                                             \
    X(cuMemsetD16Async, 3020)                                            \
    X(cuMemsetD32Async, 3020)                                            \
    X(cuMemsetD2D8_v2, 3020)                                             \
    X(cuMemsetD2D16_v2, 3020)                                            \
    X(cuMemsetD2D32_v2, 3020)                                            \
    X(cuMemsetD2D8Async, 3020)                                           \
    X(cuMemsetD2D16Async, 3020)                                          \
    X(cuMemsetD2D32Async, 3020)                                          \
    X(cuMemcpy, 4000)                                                    \
    X(cuMemcpyAsync, 4000)                                               \
    X(cuMemcpyHtoD_v2, 3020)                                             \
    X(cuMemcpyDtoH_v2, 3020)                                             \
    X(cuMemcpyDtoD_v2, 3020)                                             \
    X(cuMemcpyHtoDAsync_v2, 3020)                                        \
    X(cuMemcpyDtoHAsync_v2, 3020)                                        \
    X(cuMemcpyDtoDAsync_v2, 3020)                                        \
    X(cuMemcpy2D_v2, 3020)                                               \
    X(cuMemcpy2DUnaligned_v2, 3020)                                      \
    X(cuMemcpy2DAsync_v2, 3020)                                          \
    X(cuMemcpy3D_v2, 3020)                                               \
    X(cuMemcpy3DAsync_v2, 3020)                                          \
    X(cuMemcpyPeer, 4000)                                                \
    X(cuMemcpyPeerAsync, 4000)                                           \
    X(cuMemcpy3DPeer, 4000)                                              \
    X(cuMemcpy3DPeerAsync, 4000)                                         \
    X(cuMemcpyBatchAsync, 12080)                                         \
    X(cuMemcpyBatchAsync_v2, 13000)                                      \
    X(cuMemcpy3DBatchAsync, 12080)                                       \
    X(cuMemcpy3DBatchAsync_v2, 13000)                                    \
    X(cuStreamCreate, 2000)                                              \
    X(cuStreamDestroy_v2, 4000)                                          \
    X(cuStreamSynchronize, 2000)                                         \
    X(cuStreamQuery, 2000)                                               \
    X(cuStreamBeginCapture, 10000)                                       \
    X(cuStreamBeginCapture_ptsz, 10010)                                  \
    X(cuStreamBeginCapture_v2, 10010)                                    \
    X(cuStreamBeginCapture_v2_ptsz, 10010)                               \
    X(cuStreamEndCapture, 10000)                                         \
    X(cuStreamEndCapture_ptsz, 10000)                                    \
    X(cuStreamIsCapturing, 10000)                                        \
    X(cuStreamIsCapturing_ptsz, 10000)                                   \
    X(cuStreamGetCaptureInfo, 10010)                                     \
    X(cuStreamGetCaptureInfo_ptsz, 10010)                                \
    X(cuStreamGetCaptureInfo_v2, 11030)                                  \
    X(cuStreamGetCaptureInfo_v2_ptsz, 11030)                             \
    X(cuStreamGetCaptureInfo_v3, 12030)                                  \
    X(cuStreamGetCaptureInfo_v3_ptsz, 12030)                             \
    X(cuThreadExchangeStreamCaptureMode, 10010)                          \
    X(cuGraphInstantiateWithFlags, 11040)                                \
    X(cuGraphLaunch, 10000)                                              \
    X(cuGraphGetNodes, 10000)                                            \
    X(cuGraphExecDestroy, 10000)                                         \
    X(cuGraphDestroy, 10000)                                             \
    X(cuEventCreate, 2000)                                               \
    X(cuEventRecord, 2000)                                               \
    X(cuEventQuery, 2000)                                                \
    X(cuEventSynchronize, 2000)                                          \
    X(cuEventElapsedTime, 2000)                                          \
    X(cuEventElapsedTime_v2, 12080)                                      \
    X(cuEventDestroy_v2, 4000)                                           \
    X(cuModuleLoadData, 2000)                                            \
    X(cuModuleUnload, 2000)                                              \
    X(cuModuleGetFunction, 2000)                                         \
    X(cuLaunchKernel, 4000)                                              \
    X(cuGetErrorString, 6000)                                            \
    X(cuGetErrorName, 6000)                                              \
    X(cuGetProcAddress, 11030)                                           \
    X(cuGetProcAddress_v2, 12000)

enum kv_emu_fn {
#define KV_EMU_ENUM(name, ver) KV_FN_##name,
    KV_EMU_FUNCS(KV_EMU_ENUM)
#undef KV_EMU_ENUM
    KV_FN_COUNT
};

/*
 * Hidden aliases of the exported functions. cuGetProcAddress hands these out, so it returns the
 * emulation's own code even when a preloaded library (kvshim) exports the same names, as the
 * real driver does. KV_EMU_ALIAS(name) goes right after each definition.
 */
#define KV_EMU_LOCAL_DECL(name, ver) \
    extern __typeof__(name) kv_emu_local_##name __attribute__((visibility("hidden")));
KV_EMU_FUNCS(KV_EMU_LOCAL_DECL)
#undef KV_EMU_LOCAL_DECL
#define KV_EMU_ALIAS(name) \
    extern __typeof__(name) kv_emu_local_##name __attribute__((alias(#name)))

/*
 * Entry of every exported driver function: count the call, fire an armed failure, and (unless
 * NOINIT) refuse before cuInit. Returns from the caller with that CUresult when it must.
 */
#define KV_EMU_ENTER(name)                                               \
    do {                                                                 \
        CUresult kv_r_ = kv_emu_enter(KV_FN_##name, true);               \
        if (kv_r_ != CUDA_SUCCESS)                                       \
            return kv_r_;                                                \
    } while (0)
#define KV_EMU_ENTER_NOINIT(name)                                        \
    do {                                                                 \
        CUresult kv_r_ = kv_emu_enter(KV_FN_##name, false);              \
        if (kv_r_ != CUDA_SUCCESS)                                       \
            return kv_r_;                                                \
    } while (0)
/*
 * Entry of a per-thread default stream form that runs its plain form (emu_ptds.c): counted, failed
 * and held under its own name, as KV_EMU_ENTER does; the plain form's entry, which comes next on
 * this thread, then passes without counting the call a second time.
 */
#define KV_EMU_ENTER_AS(name, plain)                                     \
    do {                                                                 \
        KV_EMU_ENTER(name);                                              \
        kv_emu_pass_next(KV_FN_##plain);                                 \
    } while (0)

/* ---- objects (the opaque CUDA handle types are ours to define) ---- */

struct CUctx_st {
    int device;
    int refs;                   /* primary context retain count */
};

struct kv_emu_capture_s;

struct CUstream_st {
    struct CUstream_st *next;
    int device;
    unsigned int flags;
    struct kv_emu_capture_s *cap;   /* the capture in progress on this stream, or NULL */
};

struct CUevent_st {
    struct CUevent_st *next;
    unsigned int flags;
    bool recorded;
    struct timespec when;
    cuuint64_t capture_id;          /* last recorded into this capture; 0: by running */
};

/*
 * A kernel the emulation knows, run as host code: run(params) reads its arguments as a launch
 * passes them (params[i] points at argument i), whose sizes are arg_size[0..nargs). Both known
 * kernels work on the words [p, p + 4 * nwords) of their first two arguments (p, nwords): the
 * device running them needs the right to read them, and to write them if writes.
 */
#define KV_EMU_KERNEL_ARGS 4
struct kv_emu_kernel {
    const char *name;
    void (*run)(void *params);
    int nargs;
    size_t arg_size[KV_EMU_KERNEL_ARGS];
    bool writes;
};
struct CUmod_st;

struct CUfunc_st {
    const struct kv_emu_kernel *kernel;
    struct CUmod_st *mod;
};

#define KV_EMU_NKERNELS 2
struct CUmod_st {
    struct CUmod_st *next;
    struct CUfunc_st funcs[KV_EMU_NKERNELS];
};

/* Physical memory of one emulated device. */
typedef struct kv_emu_dev_s {
    size_t bytes;               /* its memory (KVEMU_DEVICE_BYTES) */
    int memfd;
    size_t nchunks;
    size_t nfree;
    uint32_t *free_stack;       /* free chunk numbers, next to hand out on top */
    size_t handles;             /* user handles alive (created, not yet freed) */
    size_t released_mapped;     /* handles released while still mapped, ever */
    size_t allocs;              /* cuMemAlloc allocations alive */
    size_t mapped_pages;        /* pages of user handles mapped anywhere */
    struct CUctx_st ctx;        /* the primary context */
} kv_emu_dev_t;

/* What cuMemCreate (or cuMemAlloc, internally) hands out. */
typedef struct kv_emu_handle_s {
    struct kv_emu_handle_s *next;
    CUmemGenericAllocationHandle id;
    int device;
    bool internal;              /* backs a cuMemAlloc allocation */
    bool released;              /* cuMemRelease done, freed when maps reaches 0 */
    size_t maps;                /* pages of it mapped anywhere */
    size_t nchunks;
    uint32_t *chunks;
} kv_emu_handle_t;

typedef struct kv_emu_page_s {
    kv_emu_handle_t *handle;    /* NULL: not mapped */
    uint32_t index;             /* which chunk of handle */
    uint32_t map_id;            /* pages of one cuMemMap call share it */
    uint32_t rd, wr;            /* bit d: device d may read, write (cuMemSetAccess) */
    int prot;                   /* the host's protection: the most any device may do */
} kv_emu_page_t;

/* A reserved host VA range; also the range of a cuMemAlloc allocation (alloc_bytes != 0). */
typedef struct kv_emu_resv_s {
    struct kv_emu_resv_s *next;
    uintptr_t base;
    size_t size;
    size_t npages;
    size_t mapped;              /* pages mapped */
    size_t alloc_bytes;         /* cuMemAlloc: requested size; 0 for a reservation */
    kv_emu_handle_t *alloc_handle;
    kv_emu_page_t *pages;
} kv_emu_resv_t;

/*
 * One operation as a stream takes it: enough to run it now, or to record it into a graph and
 * run it at each launch. A kernel's arguments are copied, as a launch copies them.
 */
enum kv_emu_op_kind { KV_OP_SET, KV_OP_COPY, KV_OP_KERNEL, KV_OP_EVENT };
typedef struct kv_emu_op_s {
    enum kv_emu_op_kind kind;
    int device;                     /* the device that runs it (its stream's) */
    union {
        struct {
            CUdeviceptr dst;
            size_t n;               /* elements of width bytes in a row */
            size_t height, pitch;   /* rows, and bytes from one row to the next (1D: 1, 0) */
            unsigned int value;
            int width;
        } set;
        struct {
            CUdeviceptr dst, src;   /* the first byte of each side */
            size_t n;               /* bytes in a row */
            size_t height, depth;   /* rows in a slice, slices (1D: 1, 1) */
            size_t dpitch, spitch;  /* bytes from one row to the next, each side */
            size_t dslice, sslice;  /* bytes from one slice to the next, each side */
        } copy;
        struct {
            const struct kv_emu_kernel *kernel;
            uint64_t args[KV_EMU_KERNEL_ARGS];
        } kernel;
        struct {
            struct CUevent_st *event;
        } event;
    } u;
} kv_emu_op_t;

/* A graph node: one recorded operation. */
struct CUgraphNode_st {
    struct CUgraph_st *graph;
    kv_emu_op_t op;
};

/* A graph: its nodes in the order they were recorded (stream capture gives a chain). */
struct CUgraph_st {
    struct CUgraph_st *next;
    struct kv_emu_capture_s *capture;   /* the capture still recording into it, or NULL */
    size_t n, cap;
    struct CUgraphNode_st **nodes;
};

/* An executable graph: a copy of its graph's operations, run in order at each launch. */
struct CUgraphExec_st {
    struct CUgraphExec_st *next;
    size_t n;
    kv_emu_op_t *ops;
};

/*
 * A capture sequence, from cuStreamBeginCapture to cuStreamEndCapture. Its stream points at it;
 * it does not point back, so a per-thread stream whose thread has exited leaves nothing dangling.
 */
typedef struct kv_emu_capture_s {
    struct kv_emu_capture_s *next;
    cuuint64_t id;                  /* unique over the process's life, from 1 */
    CUstreamCaptureMode mode;       /* the mode given to cuStreamBeginCapture */
    uint64_t thread;                /* token of the thread that began it */
    int device;                     /* device of the capturing stream */
    bool blocking;                  /* the stream synchronizes with the legacy stream */
    bool invalidated;
    struct CUgraph_st *graph;
    struct CUgraphNode_st *deps[1]; /* what the next node depends on: the last one */
    CUgraphEdgeData edge[1];        /* and the (empty) data of that edge */
} kv_emu_capture_t;

typedef struct kv_emu_state_s {
    pthread_mutex_t lock;
    bool initialized;
    int ndevices;
    kv_emu_dev_t devs[KV_EMU_MAX_DEVICES];
    kv_emu_handle_t *handles;
    kv_emu_resv_t *resvs;
    struct CUstream_st *streams;
    struct CUevent_st *events;
    struct CUmod_st *modules;
    kv_emu_capture_t *captures;     /* in progress, invalidated or not */
    struct CUgraph_st *graphs;
    struct CUgraphExec_st *execs;
    struct kvemu_capture_stats stats;   /* its live fields are filled in when read */
    cuuint64_t next_capture_id;
    CUmemGenericAllocationHandle next_handle;
    uint32_t next_map_id;
} kv_emu_state_t;

extern kv_emu_state_t kv_emu;

/* ---- emu_core.c ---- */
CUresult kv_emu_enter(enum kv_emu_fn fn, bool need_init);
/* Let the calling thread's next entry of fn pass: no count, no failure, no hold (see
 * KV_EMU_ENTER_AS). */
void kv_emu_pass_next(enum kv_emu_fn fn);
void kv_emu_lock(void);
void kv_emu_unlock(void);
CUresult kv_emu_from_errno(int err);
bool kv_emu_valid_device(int ordinal);

/* ---- emu_ctx.c ---- */
/* The calling thread's current context, or NULL. */
struct CUctx_st *kv_emu_current(void);
/* Whether s names a live stream, the NULL stream or a special one; call locked. */
bool kv_emu_valid_stream(CUstream s);
/* The device work on s runs on: a created stream's, else (the NULL, legacy or per-thread
 * stream) the current context's; -1 without one. Call locked. */
int kv_emu_stream_device(CUstream s);

/* ---- emu_mem.c ---- */
/* Memory pools of all devices; 0 or -errno. Called once, locked, by cuInit. */
int kv_emu_mem_init(void);
/* The reservation holding [p, p + n) whole, or NULL; call locked. */
kv_emu_resv_t *kv_emu_find_resv(uintptr_t p, size_t n);
/*
 * Whether every page of [p, p + n) is mapped, where it lies in a reservation of the caller's
 * (true for host memory and cuMemAlloc allocations); call locked. A pitched copy or memset
 * (2D, 3D) is refused when one is not (see struct side in emu_copy.c).
 */
bool kv_emu_range_mapped(uintptr_t p, size_t n);
/*
 * Whether device dev may read (write: write) the mapped pages of [p, p + n) of a reservation, as
 * cuMemSetAccess granted; call locked. Unmapped pages are not judged here (they fault when
 * touched), nor host memory and cuMemAlloc allocations (reachable from every device, as with
 * peer access). Returns true or false.
 */
bool kv_emu_check_access(int dev, uintptr_t p, size_t n, bool write);

/* ---- emu_copy.c ---- */
/*
 * Run fn(arg) so that a SIGSEGV/SIGBUS inside it returns -EFAULT instead of killing the
 * process; 0 when fn returned normally. Call it without the state lock: a long copy must not
 * stall other threads, and the jump out of a fault would leave the lock held.
 */
int kv_emu_guard(void (*fn)(void *), void *arg);
/*
 * Run op now, on the host, under the guard; call unlocked. An event is stamped only if it
 * still exists. Returns CUDA_SUCCESS, or CUDA_ERROR_ILLEGAL_ADDRESS for a fault.
 */
CUresult kv_emu_run(const kv_emu_op_t *op);

/* ---- emu_graph.c: stream capture and graphs ---- */
/*
 * The capture rules, applied by the calls that enqueue, synchronize or allocate. Each is called
 * locked, after the call's own argument checks, with fn the exported function asking (for the
 * statistics). A refusal is one of the stream-capture errors (900 to 908); where the rules say
 * so, the captures the call conflicts with are invalidated first. The mode rules are
 * cuThreadExchangeStreamCaptureMode's: a thread in global mode may not make potentially unsafe
 * calls while it captures (other than in relaxed mode) or while another thread captures in
 * global mode; a thread in thread-local mode only while it captures itself; a thread in relaxed
 * mode always may. The legacy stream (NULL outside a _ptsz call, or CU_STREAM_LEGACY) may not be
 * used while a blocking stream of its device captures, in any mode.
 */

/*
 * An operation enqueued on stream s (ptsz: a NULL s is the per-thread stream). On a capturing
 * stream it is recorded into the capture's graph and *recorded is set; an event recorded so
 * becomes part of the capture. Returns CUDA_SUCCESS (run it now unless recorded),
 * CUDA_ERROR_STREAM_CAPTURE_INVALIDATED (s's capture was invalidated: nothing recorded),
 * CUDA_ERROR_STREAM_CAPTURE_IMPLICIT (s is the legacy stream while a blocking stream of the
 * current device captures; that capture is invalidated), or CUDA_ERROR_OUT_OF_MEMORY.
 */
CUresult kv_emu_capture_enqueue(enum kv_emu_fn fn, CUstream s, bool ptsz, const kv_emu_op_t *op,
                                size_t nops, bool *recorded);
/*
 * A free enqueued on stream s (ptsz: a NULL s is the per-thread stream). Graphs here have no
 * memory nodes, so where the real driver would record a free node the free is refused: on a
 * capturing stream CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, that capture invalidated (or
 * CUDA_ERROR_STREAM_CAPTURE_INVALIDATED if it was already); on the legacy stream while a
 * blocking stream of the current device captures, CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, as for an
 * operation enqueued. Otherwise CUDA_SUCCESS: free now.
 */
CUresult kv_emu_capture_free(enum kv_emu_fn fn, CUstream s, bool ptsz);
/*
 * A potentially unsafe call (the host waits for the device, or memory is allocated or freed
 * outside any stream). Returns CUDA_SUCCESS, or CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED having
 * invalidated every capture that prohibits the calling thread such calls.
 */
CUresult kv_emu_capture_unsafe(enum kv_emu_fn fn);
/*
 * A synchronous memset or copy: work on the legacy stream of the current device, and
 * potentially unsafe if the host waits for it (waits: a copy to or from host memory; a memset
 * or a device-to-device copy returns before the work is done). Returns CUDA_SUCCESS, or what
 * kv_emu_capture_unsafe or the legacy rule refuses with.
 */
CUresult kv_emu_capture_sync_op(enum kv_emu_fn fn, bool waits);
/*
 * Waiting for or querying stream s. A capturing s refuses with
 * CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and is invalidated, in any mode; otherwise as a
 * potentially unsafe call, then the legacy rule if s is the legacy stream.
 */
CUresult kv_emu_capture_sync_stream(enum kv_emu_fn fn, CUstream s, bool ptsz);
/*
 * Waiting for the current context: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, invalidating them,
 * while any stream of its device captures, in any mode; otherwise as a potentially unsafe call.
 */
CUresult kv_emu_capture_sync_ctx(enum kv_emu_fn fn);
/*
 * Waiting for or querying event e: CUDA_ERROR_CAPTURED_EVENT, invalidating that capture, if e was
 * last recorded into a capture still in progress; otherwise as a potentially unsafe call.
 */
CUresult kv_emu_capture_sync_event(enum kv_emu_fn fn, struct CUevent_st *e);
/*
 * Destroying stream s: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, invalidating its capture, while it
 * captures (its capture must be ended first); else CUDA_SUCCESS.
 */
CUresult kv_emu_capture_destroy_stream(enum kv_emu_fn fn, struct CUstream_st *s);

#endif /* KV_EMU_INT_H */
