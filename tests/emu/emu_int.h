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
CUresult CUDAAPI cuDeviceGetUuid(CUuuid *uuid, CUdevice dev);
CUresult CUDAAPI cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd);
CUresult CUDAAPI cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion,
                                  cuuint64_t flags);

#include "kvemu.h"

#define KV_EMU_API __attribute__((visibility("default")))

#define KV_EMU_PAGE        ((size_t)2 << 20)   /* granularity and physical chunk size */
#define KV_EMU_MAX_DEVICES 16
#define KV_EMU_CTX_DEPTH   16                  /* per-thread context stack */

/*
 * Every exported driver function: X(exported name, first CUDA version that has it). The order
 * is the index into the call counters and the fail-injection table; cuGetProcAddress resolves
 * base names through the same list (newest variant whose version is low enough).
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
    X(cuMemGetAddressRange_v2, 3020)                                     \
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
    X(cuStreamCreate, 2000)                                              \
    X(cuStreamDestroy_v2, 4000)                                          \
    X(cuStreamSynchronize, 2000)                                         \
    X(cuEventCreate, 2000)                                               \
    X(cuEventRecord, 2000)                                               \
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

/* ---- objects (the opaque CUDA handle types are ours to define) ---- */

struct CUctx_st {
    int device;
    int refs;                   /* primary context retain count */
};

struct CUstream_st {
    struct CUstream_st *next;
    int device;
    unsigned int flags;
};

struct CUevent_st {
    struct CUevent_st *next;
    unsigned int flags;
    bool recorded;
    struct timespec when;
};

struct kv_emu_kernel;
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
    int memfd;
    size_t nchunks;
    size_t nfree;
    uint32_t *free_stack;       /* free chunk numbers, next to hand out on top */
    size_t handles;             /* user handles alive (created, not yet freed) */
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
    int prot;
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

typedef struct kv_emu_state_s {
    pthread_mutex_t lock;
    bool initialized;
    int ndevices;
    size_t device_bytes;
    kv_emu_dev_t devs[KV_EMU_MAX_DEVICES];
    kv_emu_handle_t *handles;
    kv_emu_resv_t *resvs;
    struct CUstream_st *streams;
    struct CUevent_st *events;
    struct CUmod_st *modules;
    CUmemGenericAllocationHandle next_handle;
    uint32_t next_map_id;
} kv_emu_state_t;

extern kv_emu_state_t kv_emu;

/* ---- emu_core.c ---- */
CUresult kv_emu_enter(enum kv_emu_fn fn, bool need_init);
void kv_emu_lock(void);
void kv_emu_unlock(void);
CUresult kv_emu_from_errno(int err);
bool kv_emu_valid_device(int ordinal);

/* ---- emu_ctx.c ---- */
/* The calling thread's current context, or NULL. */
struct CUctx_st *kv_emu_current(void);
/* Whether s names a live stream, the NULL stream or a special one; call locked. */
bool kv_emu_valid_stream(CUstream s);

/* ---- emu_mem.c ---- */
/* Memory pools of all devices; 0 or -errno. Called once, locked, by cuInit. */
int kv_emu_mem_init(void);
/* The reservation holding [p, p + n) whole, or NULL; call locked. */
kv_emu_resv_t *kv_emu_find_resv(uintptr_t p, size_t n);

/* ---- emu_copy.c ---- */
/*
 * Run fn(arg) so that a SIGSEGV/SIGBUS inside it returns -EFAULT instead of killing the
 * process; 0 when fn returned normally. Call it without the state lock: a long copy must not
 * stall other threads, and the jump out of a fault would leave the lock held.
 */
int kv_emu_guard(void (*fn)(void *), void *arg);

#endif /* KV_EMU_INT_H */
