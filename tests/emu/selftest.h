/*
 * selftest.h: what the parts of the emulation's self-test share: every library function as a
 * pointer found with dlsym (named like the function, so calls read as ordinary CUDA code), the
 * expectations, and a few helpers.
 */
#ifndef KV_EMU_SELFTEST_H
#define KV_EMU_SELFTEST_H

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <cuda.h>
#include <cuda_runtime_api.h>

#include "kvemu.h"

/*
 * Every library function is reached through dlopen/dlsym, as kvshim's tests reach the driver,
 * so this program links neither library. The names below become the pointers, so the calls read
 * like ordinary CUDA code; cuda.h's own macros (cuMemAlloc -> cuMemAlloc_v2) still apply first.
 */
#define DRIVER_FUNCS(X) \
    X(cuInit) \
    X(cuDriverGetVersion) \
    X(cuDeviceGet) \
    X(cuDeviceGetCount) \
    X(cuDeviceGetName) \
    X(cuDeviceTotalMem_v2) \
    X(cuDeviceGetAttribute) \
    X(cuDeviceGetUuid_v2) \
    X(cuDevicePrimaryCtxRetain) \
    X(cuDevicePrimaryCtxRelease_v2) \
    X(cuCtxGetCurrent) \
    X(cuCtxSetCurrent) \
    X(cuCtxGetDevice) \
    X(cuCtxSynchronize) \
    X(cuCtxPushCurrent_v2) \
    X(cuCtxPopCurrent_v2) \
    X(cuMemGetAllocationGranularity) \
    X(cuMemAddressReserve) \
    X(cuMemAddressFree) \
    X(cuMemCreate) \
    X(cuMemRelease) \
    X(cuMemMap) \
    X(cuMemSetAccess) \
    X(cuMemUnmap) \
    X(cuMemGetInfo_v2) \
    X(cuMemAlloc_v2) \
    X(cuMemFree_v2) \
    X(cuMemFreeAsync) \
    X(cuMemGetAddressRange_v2) \
    X(cuPointerGetAttribute) \
    X(cuPointerGetAttributes) \
    X(cuMemsetD8_v2) \
    X(cuMemsetD16_v2) \
    X(cuMemsetD32_v2) \
    X(cuMemsetD8Async) \
    X(cuMemsetD16Async) \
    X(cuMemsetD32Async) \
    X(cuMemsetD2D8_v2) \
    X(cuMemsetD2D16_v2) \
    X(cuMemsetD2D32_v2) \
    X(cuMemsetD2D8Async) \
    X(cuMemsetD2D16Async) \
    X(cuMemsetD2D32Async) \
    X(cuMemcpy) \
    X(cuMemcpyAsync) \
    X(cuMemcpyHtoD_v2) \
    X(cuMemcpyDtoH_v2) \
    X(cuMemcpyDtoD_v2) \
    X(cuMemcpyHtoDAsync_v2) \
    X(cuMemcpyDtoHAsync_v2) \
    X(cuMemcpyDtoDAsync_v2) \
    X(cuMemcpy2D_v2) \
    X(cuMemcpy2DAsync_v2) \
    X(cuMemcpy3D_v2) \
    X(cuStreamCreate) \
    X(cuStreamDestroy_v2) \
    X(cuStreamSynchronize) \
    X(cuEventCreate) \
    X(cuEventRecord) \
    X(cuEventSynchronize) \
    X(cuEventElapsedTime_v2) \
    X(cuEventDestroy_v2) \
    X(cuModuleLoadData) \
    X(cuModuleUnload) \
    X(cuModuleGetFunction) \
    X(cuLaunchKernel) \
    X(cuGetErrorString) \
    X(cuGetErrorName) \
    X(cuGetProcAddress_v2) \
    X(cuStreamQuery) \
    X(cuEventQuery) \
    X(cuStreamBeginCapture_v2) \
    X(cuStreamEndCapture) \
    X(cuStreamIsCapturing) \
    X(cuStreamGetCaptureInfo_v3) \
    X(cuThreadExchangeStreamCaptureMode) \
    X(cuGraphInstantiateWithFlags) \
    X(cuGraphLaunch) \
    X(cuGraphGetNodes) \
    X(cuGraphExecDestroy) \
    X(cuGraphDestroy)

#define RUNTIME_FUNCS(X) \
    X(cudaMalloc) \
    X(cudaFree) \
    X(cudaMemGetInfo) \
    X(cudaMemset) \
    X(cudaMemsetAsync) \
    X(cudaMemset2D) \
    X(cudaMemset2DAsync) \
    X(cudaMemset3D) \
    X(cudaMemset3DAsync) \
    X(cudaMemcpy) \
    X(cudaMemcpyAsync) \
    X(cudaMallocAsync) \
    X(cudaFreeAsync) \
    X(cudaDeviceSynchronize) \
    X(cudaStreamCreate) \
    X(cudaStreamDestroy) \
    X(cudaStreamSynchronize) \
    X(cudaGetDeviceCount) \
    X(cudaSetDevice) \
    X(cudaGetDevice) \
    X(cudaPointerGetAttributes) \
    X(cudaGetLastError) \
    X(cudaPeekAtLastError) \
    X(cudaGetErrorString) \
    X(cudaGetErrorName) \
    X(cudaRuntimeGetVersion) \
    X(cudaDriverGetVersion) \
    X(cudaGetDriverEntryPoint) \
    X(cudaGetDriverEntryPointByVersion) \
    X(cudaStreamCreateWithFlags) \
    X(cudaStreamQuery) \
    X(cudaStreamBeginCapture) \
    X(cudaStreamEndCapture) \
    X(cudaStreamIsCapturing) \
    X(cudaStreamGetCaptureInfo) \
    X(cudaThreadExchangeStreamCaptureMode) \
    X(cudaGraphInstantiate) \
    X(cudaGraphLaunch) \
    X(cudaGraphGetNodes) \
    X(cudaGraphExecDestroy) \
    X(cudaGraphDestroy)

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#define DECLARE(n) extern __typeof__(n) *p_##n;
DRIVER_FUNCS(DECLARE)
RUNTIME_FUNCS(DECLARE)
#undef DECLARE
#pragma GCC diagnostic pop

#define cuInit p_cuInit
#define cuDriverGetVersion p_cuDriverGetVersion
#define cuDeviceGet p_cuDeviceGet
#define cuDeviceGetCount p_cuDeviceGetCount
#define cuDeviceGetName p_cuDeviceGetName
#define cuDeviceTotalMem_v2 p_cuDeviceTotalMem_v2
#define cuDeviceGetAttribute p_cuDeviceGetAttribute
#define cuDeviceGetUuid_v2 p_cuDeviceGetUuid_v2
#define cuDevicePrimaryCtxRetain p_cuDevicePrimaryCtxRetain
#define cuDevicePrimaryCtxRelease_v2 p_cuDevicePrimaryCtxRelease_v2
#define cuCtxGetCurrent p_cuCtxGetCurrent
#define cuCtxSetCurrent p_cuCtxSetCurrent
#define cuCtxGetDevice p_cuCtxGetDevice
#define cuCtxSynchronize p_cuCtxSynchronize
#define cuCtxPushCurrent_v2 p_cuCtxPushCurrent_v2
#define cuCtxPopCurrent_v2 p_cuCtxPopCurrent_v2
#define cuMemGetAllocationGranularity p_cuMemGetAllocationGranularity
#define cuMemAddressReserve p_cuMemAddressReserve
#define cuMemAddressFree p_cuMemAddressFree
#define cuMemCreate p_cuMemCreate
#define cuMemRelease p_cuMemRelease
#define cuMemMap p_cuMemMap
#define cuMemSetAccess p_cuMemSetAccess
#define cuMemUnmap p_cuMemUnmap
#define cuMemGetInfo_v2 p_cuMemGetInfo_v2
#define cuMemAlloc_v2 p_cuMemAlloc_v2
#define cuMemFree_v2 p_cuMemFree_v2
#define cuMemFreeAsync p_cuMemFreeAsync
#define cuMemGetAddressRange_v2 p_cuMemGetAddressRange_v2
#define cuPointerGetAttribute p_cuPointerGetAttribute
#define cuPointerGetAttributes p_cuPointerGetAttributes
#define cuMemsetD8_v2 p_cuMemsetD8_v2
#define cuMemsetD16_v2 p_cuMemsetD16_v2
#define cuMemsetD32_v2 p_cuMemsetD32_v2
#define cuMemsetD8Async p_cuMemsetD8Async
#define cuMemsetD16Async p_cuMemsetD16Async
#define cuMemsetD32Async p_cuMemsetD32Async
#define cuMemsetD2D8_v2 p_cuMemsetD2D8_v2
#define cuMemsetD2D16_v2 p_cuMemsetD2D16_v2
#define cuMemsetD2D32_v2 p_cuMemsetD2D32_v2
#define cuMemsetD2D8Async p_cuMemsetD2D8Async
#define cuMemsetD2D16Async p_cuMemsetD2D16Async
#define cuMemsetD2D32Async p_cuMemsetD2D32Async
#define cuMemcpy p_cuMemcpy
#define cuMemcpyAsync p_cuMemcpyAsync
#define cuMemcpyHtoD_v2 p_cuMemcpyHtoD_v2
#define cuMemcpyDtoH_v2 p_cuMemcpyDtoH_v2
#define cuMemcpy2D_v2 p_cuMemcpy2D_v2
#define cuMemcpy2DAsync_v2 p_cuMemcpy2DAsync_v2
#define cuMemcpy3D_v2 p_cuMemcpy3D_v2
#define cuMemcpyDtoD_v2 p_cuMemcpyDtoD_v2
#define cuMemcpyHtoDAsync_v2 p_cuMemcpyHtoDAsync_v2
#define cuMemcpyDtoHAsync_v2 p_cuMemcpyDtoHAsync_v2
#define cuMemcpyDtoDAsync_v2 p_cuMemcpyDtoDAsync_v2
#define cuStreamCreate p_cuStreamCreate
#define cuStreamDestroy_v2 p_cuStreamDestroy_v2
#define cuStreamSynchronize p_cuStreamSynchronize
#define cuEventCreate p_cuEventCreate
#define cuEventRecord p_cuEventRecord
#define cuEventSynchronize p_cuEventSynchronize
#define cuEventElapsedTime_v2 p_cuEventElapsedTime_v2
#define cuEventDestroy_v2 p_cuEventDestroy_v2
#define cuModuleLoadData p_cuModuleLoadData
#define cuModuleUnload p_cuModuleUnload
#define cuModuleGetFunction p_cuModuleGetFunction
#define cuLaunchKernel p_cuLaunchKernel
#define cuGetErrorString p_cuGetErrorString
#define cuGetErrorName p_cuGetErrorName
#define cuGetProcAddress_v2 p_cuGetProcAddress_v2
#define cuStreamQuery p_cuStreamQuery
#define cuEventQuery p_cuEventQuery
#define cuStreamBeginCapture_v2 p_cuStreamBeginCapture_v2
#define cuStreamEndCapture p_cuStreamEndCapture
#define cuStreamIsCapturing p_cuStreamIsCapturing
#define cuStreamGetCaptureInfo_v3 p_cuStreamGetCaptureInfo_v3
#define cuThreadExchangeStreamCaptureMode p_cuThreadExchangeStreamCaptureMode
#define cuGraphInstantiateWithFlags p_cuGraphInstantiateWithFlags
#define cuGraphLaunch p_cuGraphLaunch
#define cuGraphGetNodes p_cuGraphGetNodes
#define cuGraphExecDestroy p_cuGraphExecDestroy
#define cuGraphDestroy p_cuGraphDestroy
#define cudaMalloc p_cudaMalloc
#define cudaFree p_cudaFree
#define cudaMemGetInfo p_cudaMemGetInfo
#define cudaMemset p_cudaMemset
#define cudaMemsetAsync p_cudaMemsetAsync
#define cudaMemset2D p_cudaMemset2D
#define cudaMemset2DAsync p_cudaMemset2DAsync
#define cudaMemset3D p_cudaMemset3D
#define cudaMemset3DAsync p_cudaMemset3DAsync
#define cudaMemcpy p_cudaMemcpy
#define cudaMemcpyAsync p_cudaMemcpyAsync
#define cudaMallocAsync p_cudaMallocAsync
#define cudaFreeAsync p_cudaFreeAsync
#define cudaDeviceSynchronize p_cudaDeviceSynchronize
#define cudaStreamCreate p_cudaStreamCreate
#define cudaStreamDestroy p_cudaStreamDestroy
#define cudaStreamSynchronize p_cudaStreamSynchronize
#define cudaGetDeviceCount p_cudaGetDeviceCount
#define cudaSetDevice p_cudaSetDevice
#define cudaGetDevice p_cudaGetDevice
#define cudaPointerGetAttributes p_cudaPointerGetAttributes
#define cudaGetLastError p_cudaGetLastError
#define cudaPeekAtLastError p_cudaPeekAtLastError
#define cudaGetErrorString p_cudaGetErrorString
#define cudaGetErrorName p_cudaGetErrorName
#define cudaRuntimeGetVersion p_cudaRuntimeGetVersion
#define cudaDriverGetVersion p_cudaDriverGetVersion
#define cudaGetDriverEntryPoint p_cudaGetDriverEntryPoint
#define cudaGetDriverEntryPointByVersion p_cudaGetDriverEntryPointByVersion
#define cudaStreamCreateWithFlags p_cudaStreamCreateWithFlags
#define cudaStreamQuery p_cudaStreamQuery
#define cudaStreamBeginCapture p_cudaStreamBeginCapture
#define cudaStreamEndCapture p_cudaStreamEndCapture
#define cudaStreamIsCapturing p_cudaStreamIsCapturing
#define cudaStreamGetCaptureInfo p_cudaStreamGetCaptureInfo
#define cudaThreadExchangeStreamCaptureMode p_cudaThreadExchangeStreamCaptureMode
#define cudaGraphInstantiate p_cudaGraphInstantiate
#define cudaGraphLaunch p_cudaGraphLaunch
#define cudaGraphGetNodes p_cudaGraphGetNodes
#define cudaGraphExecDestroy p_cudaGraphExecDestroy
#define cudaGraphDestroy p_cudaGraphDestroy

#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)
#define PAGE (2 * MiB)
#define DEV_BYTES (64 * MiB)

/* Failed expectations of the contract running now. */
extern int failed;

#define EXPECT(c)                                                                  \
    do {                                                                           \
        if (!(c)) {                                                                \
            printf("    %s:%d: expected %s\n", __FILE__, __LINE__, #c);            \
            failed++;                                                              \
        }                                                                          \
    } while (0)

#define EXPECT_CU(call, want)                                                      \
    do {                                                                           \
        CUresult got_ = (call);                                                    \
        if (got_ != (want)) {                                                      \
            printf("    %s:%d: %s gave %s, expected %s\n", __FILE__, __LINE__,     \
                   #call, cu_name(got_), #want);                                   \
            failed++;                                                              \
        }                                                                          \
    } while (0)

#define EXPECT_RT(call, want)                                                      \
    do {                                                                           \
        cudaError_t got_ = (call);                                                 \
        if (got_ != (want)) {                                                      \
            printf("    %s:%d: %s gave %s, expected %s\n", __FILE__, __LINE__,     \
                   #call, cudaGetErrorName(got_), #want);                          \
            failed++;                                                              \
        }                                                                          \
    } while (0)

extern void *libcuda, *libcudart;
extern kvemu_fail_nth_fn fail_nth;
extern kvemu_fail_times_fn fail_times;
extern kvemu_hold_fn hold;
extern kvemu_waiting_fn waiting;
extern kvemu_calls_fn calls;
extern kvemu_reset_counts_fn reset_counts;
extern kvemu_usage_fn usage;
extern kvemu_capture_stats_fn capture_stats;
extern CUcontext ctx0, ctx1;   /* the primary contexts of devices 0 and 1, retained */

/* The name of a driver result, for messages. */
const char *cu_name(CUresult r);
/* An allocation property for pinned memory on device dev. */
CUmemAllocationProp prop_for(int dev);
/* cuMemSetAccess of [p, p + n) for device 0. */
CUresult set_access(CUdeviceptr p, size_t n, CUmemAccess_flags flags);
/* Whether every usage field of device dev is zero. */
int usage_clean(int dev);

/* The stream capture contracts (emu_selftest_capture.c); each returns failed. */
int test_capture(void);
int test_capture_refused(void);
int test_capture_allowed(void);
int test_capture_legacy(void);
int test_capture_threads(void);
int test_capture_ptsz(void);
int test_capture_events(void);
int test_runtime_capture(void);

/* The per-thread default stream forms of the memsets and copies (emu_selftest_ptds.c). */
int test_per_thread_forms(void);

#endif /* KV_EMU_SELFTEST_H */
