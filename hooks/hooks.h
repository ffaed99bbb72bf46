/*
 * hooks.h - the interposed CUDA functions, their real counterparts and how
 * they are found.
 *
 * Every hooked function has an exported wrapper with the real function's
 * name (so preloading reaches callers that import it) and a pointer
 * kv_real_<name> to the real one, resolved once: driver functions from
 * libcuda.so.1, runtime functions from whichever libcudart the process
 * loaded. Callers that find functions at run time (cuGetProcAddress,
 * cudaGetDriverEntryPoint, dlsym on libcuda) are handed the wrapper in
 * place of the real function by kv_hooks_wrap.
 */
#ifndef KV_HOOKS_H
#define KV_HOOKS_H

#include <stddef.h>

#include <cuda.h>
#include <driver_types.h>

/* cuda.h maps cuMemcpyBatchAsync and cuMemcpy3DBatchAsync to their CUDA
 * 13.0 forms (_v2); the driver exports CUDA 12.8's too, with a failIdx,
 * under the base names. */
#undef cuMemcpyBatchAsync
#undef cuMemcpy3DBatchAsync

#include "kvshim.h"

/* X(name, return type, parameters) of every driver function hooked. The
 * _ptds/_ptsz variants are the per-thread default stream forms. */
#define KV_DRIVER_HOOKS(X)                                                    \
	X(cuMemAlloc_v2, CUresult, (CUdeviceptr *, size_t))                   \
	X(cuMemFree_v2, CUresult, (CUdeviceptr))                              \
	X(cuMemFreeAsync, CUresult, (CUdeviceptr, CUstream))                  \
	X(cuMemFreeAsync_ptsz, CUresult, (CUdeviceptr, CUstream))             \
	X(cuMemGetInfo_v2, CUresult, (size_t *, size_t *))                    \
	X(cuMemsetD8_v2, CUresult, (CUdeviceptr, unsigned char, size_t))      \
	X(cuMemsetD8_v2_ptds, CUresult, (CUdeviceptr, unsigned char, size_t)) \
	X(cuMemsetD16_v2, CUresult, (CUdeviceptr, unsigned short, size_t))    \
	X(cuMemsetD16_v2_ptds, CUresult, (CUdeviceptr, unsigned short, size_t)) \
	X(cuMemsetD32_v2, CUresult, (CUdeviceptr, unsigned int, size_t))      \
	X(cuMemsetD32_v2_ptds, CUresult, (CUdeviceptr, unsigned int, size_t)) \
	X(cuMemsetD8Async, CUresult, (CUdeviceptr, unsigned char, size_t, CUstream)) \
	X(cuMemsetD8Async_ptsz, CUresult, (CUdeviceptr, unsigned char, size_t, CUstream)) \
	X(cuMemsetD16Async, CUresult, (CUdeviceptr, unsigned short, size_t, CUstream)) \
	X(cuMemsetD16Async_ptsz, CUresult, (CUdeviceptr, unsigned short, size_t, CUstream)) \
	X(cuMemsetD32Async, CUresult, (CUdeviceptr, unsigned int, size_t, CUstream)) \
	X(cuMemsetD32Async_ptsz, CUresult, (CUdeviceptr, unsigned int, size_t, CUstream)) \
	X(cuMemsetD2D8_v2, CUresult, (CUdeviceptr, size_t, unsigned char, size_t, size_t)) \
	X(cuMemsetD2D8_v2_ptds, CUresult, (CUdeviceptr, size_t, unsigned char, size_t, size_t)) \
	X(cuMemsetD2D16_v2, CUresult, (CUdeviceptr, size_t, unsigned short, size_t, size_t)) \
	X(cuMemsetD2D16_v2_ptds, CUresult, (CUdeviceptr, size_t, unsigned short, size_t, size_t)) \
	X(cuMemsetD2D32_v2, CUresult, (CUdeviceptr, size_t, unsigned int, size_t, size_t)) \
	X(cuMemsetD2D32_v2_ptds, CUresult, (CUdeviceptr, size_t, unsigned int, size_t, size_t)) \
	X(cuMemsetD2D8Async, CUresult, (CUdeviceptr, size_t, unsigned char, size_t, size_t, \
					CUstream))                             \
	X(cuMemsetD2D8Async_ptsz, CUresult, (CUdeviceptr, size_t, unsigned char, size_t, \
					     size_t, CUstream))                \
	X(cuMemsetD2D16Async, CUresult, (CUdeviceptr, size_t, unsigned short, size_t, size_t, \
					 CUstream))                            \
	X(cuMemsetD2D16Async_ptsz, CUresult, (CUdeviceptr, size_t, unsigned short, size_t, \
					      size_t, CUstream))               \
	X(cuMemsetD2D32Async, CUresult, (CUdeviceptr, size_t, unsigned int, size_t, size_t, \
					 CUstream))                            \
	X(cuMemsetD2D32Async_ptsz, CUresult, (CUdeviceptr, size_t, unsigned int, size_t, \
					      size_t, CUstream))               \
	X(cuMemcpy, CUresult, (CUdeviceptr, CUdeviceptr, size_t))             \
	X(cuMemcpy_ptds, CUresult, (CUdeviceptr, CUdeviceptr, size_t))        \
	X(cuMemcpyAsync, CUresult, (CUdeviceptr, CUdeviceptr, size_t, CUstream)) \
	X(cuMemcpyAsync_ptsz, CUresult, (CUdeviceptr, CUdeviceptr, size_t, CUstream)) \
	X(cuMemcpyHtoD_v2, CUresult, (CUdeviceptr, const void *, size_t))     \
	X(cuMemcpyHtoD_v2_ptds, CUresult, (CUdeviceptr, const void *, size_t)) \
	X(cuMemcpyDtoH_v2, CUresult, (void *, CUdeviceptr, size_t))           \
	X(cuMemcpyDtoH_v2_ptds, CUresult, (void *, CUdeviceptr, size_t))      \
	X(cuMemcpyDtoD_v2, CUresult, (CUdeviceptr, CUdeviceptr, size_t))      \
	X(cuMemcpyDtoD_v2_ptds, CUresult, (CUdeviceptr, CUdeviceptr, size_t)) \
	X(cuMemcpyHtoDAsync_v2, CUresult, (CUdeviceptr, const void *, size_t, CUstream)) \
	X(cuMemcpyHtoDAsync_v2_ptsz, CUresult, (CUdeviceptr, const void *, size_t, CUstream)) \
	X(cuMemcpyDtoHAsync_v2, CUresult, (void *, CUdeviceptr, size_t, CUstream)) \
	X(cuMemcpyDtoHAsync_v2_ptsz, CUresult, (void *, CUdeviceptr, size_t, CUstream)) \
	X(cuMemcpyDtoDAsync_v2, CUresult, (CUdeviceptr, CUdeviceptr, size_t, CUstream)) \
	X(cuMemcpyDtoDAsync_v2_ptsz, CUresult, (CUdeviceptr, CUdeviceptr, size_t, CUstream)) \
	X(cuMemcpy2D_v2, CUresult, (const CUDA_MEMCPY2D *))                   \
	X(cuMemcpy2D_v2_ptds, CUresult, (const CUDA_MEMCPY2D *))              \
	X(cuMemcpy2DUnaligned_v2, CUresult, (const CUDA_MEMCPY2D *))          \
	X(cuMemcpy2DUnaligned_v2_ptds, CUresult, (const CUDA_MEMCPY2D *))     \
	X(cuMemcpy2DAsync_v2, CUresult, (const CUDA_MEMCPY2D *, CUstream))     \
	X(cuMemcpy2DAsync_v2_ptsz, CUresult, (const CUDA_MEMCPY2D *, CUstream)) \
	X(cuMemcpy3D_v2, CUresult, (const CUDA_MEMCPY3D *))                   \
	X(cuMemcpy3D_v2_ptds, CUresult, (const CUDA_MEMCPY3D *))              \
	X(cuMemcpy3DAsync_v2, CUresult, (const CUDA_MEMCPY3D *, CUstream))     \
	X(cuMemcpy3DAsync_v2_ptsz, CUresult, (const CUDA_MEMCPY3D *, CUstream)) \
	X(cuMemcpyPeer, CUresult, (CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t)) \
	X(cuMemcpyPeer_ptds, CUresult, (CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, \
					size_t))                               \
	X(cuMemcpy3DPeer, CUresult, (const CUDA_MEMCPY3D_PEER *))             \
	X(cuMemcpy3DPeer_ptds, CUresult, (const CUDA_MEMCPY3D_PEER *))        \
	X(cuMemcpy3DPeerAsync, CUresult, (const CUDA_MEMCPY3D_PEER *, CUstream)) \
	X(cuMemcpy3DPeerAsync_ptsz, CUresult, (const CUDA_MEMCPY3D_PEER *, CUstream)) \
	X(cuMemcpyBatchAsync, CUresult, (CUdeviceptr *, CUdeviceptr *, size_t *, size_t, \
		CUmemcpyAttributes *, size_t *, size_t, size_t *, CUstream)) \
	X(cuMemcpyBatchAsync_ptsz, CUresult, (CUdeviceptr *, CUdeviceptr *, size_t *, \
		size_t, CUmemcpyAttributes *, size_t *, size_t, size_t *, CUstream)) \
	X(cuMemcpyBatchAsync_v2, CUresult, (CUdeviceptr *, CUdeviceptr *, size_t *, size_t, \
		CUmemcpyAttributes *, size_t *, size_t, CUstream))             \
	X(cuMemcpyBatchAsync_v2_ptsz, CUresult, (CUdeviceptr *, CUdeviceptr *, size_t *, \
		size_t, CUmemcpyAttributes *, size_t *, size_t, CUstream))     \
	X(cuMemcpy3DBatchAsync, CUresult, (size_t, CUDA_MEMCPY3D_BATCH_OP *, size_t *, \
		unsigned long long, CUstream))                                \
	X(cuMemcpy3DBatchAsync_ptsz, CUresult, (size_t, CUDA_MEMCPY3D_BATCH_OP *, \
		size_t *, unsigned long long, CUstream))                      \
	X(cuMemcpy3DBatchAsync_v2, CUresult, (size_t, CUDA_MEMCPY3D_BATCH_OP *, \
		unsigned long long, CUstream))                                \
	X(cuMemcpy3DBatchAsync_v2_ptsz, CUresult, (size_t, CUDA_MEMCPY3D_BATCH_OP *, \
		unsigned long long, CUstream))                                \
	X(cuMemcpyPeerAsync, CUresult, (CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, \
					size_t, CUstream))                     \
	X(cuMemcpyPeerAsync_ptsz, CUresult, (CUdeviceptr, CUcontext, CUdeviceptr, \
					     CUcontext, size_t, CUstream))     \
	X(cuStreamBeginCapture_v2, CUresult, (CUstream, CUstreamCaptureMode)) \
	X(cuStreamBeginCapture_v2_ptsz, CUresult, (CUstream, CUstreamCaptureMode)) \
	X(cuStreamBeginCaptureToGraph, CUresult, (CUstream, CUgraph, const CUgraphNode *, \
		const CUgraphEdgeData *, size_t, CUstreamCaptureMode))        \
	X(cuStreamBeginCaptureToGraph_ptsz, CUresult, (CUstream, CUgraph,     \
		const CUgraphNode *, const CUgraphEdgeData *, size_t,         \
		CUstreamCaptureMode))                                         \
	X(cuStreamEndCapture, CUresult, (CUstream, CUgraph *))                \
	X(cuStreamEndCapture_ptsz, CUresult, (CUstream, CUgraph *))           \
	X(cuGetProcAddress, CUresult, (const char *, void **, int, cuuint64_t)) \
	X(cuGetProcAddress_v2, CUresult, (const char *, void **, int, cuuint64_t, \
					  CUdriverProcAddressQueryResult *))

#define KV_RUNTIME_HOOKS(X)                                                   \
	X(cudaMalloc, cudaError_t, (void **, size_t))                         \
	X(cudaFree, cudaError_t, (void *))                                    \
	X(cudaMemGetInfo, cudaError_t, (size_t *, size_t *))                  \
	X(cudaMemset, cudaError_t, (void *, int, size_t))                     \
	X(cudaMemset_ptds, cudaError_t, (void *, int, size_t))                \
	X(cudaMemsetAsync, cudaError_t, (void *, int, size_t, cudaStream_t))  \
	X(cudaMemsetAsync_ptsz, cudaError_t, (void *, int, size_t, cudaStream_t)) \
	X(cudaMemset2D, cudaError_t, (void *, size_t, int, size_t, size_t))  \
	X(cudaMemset2D_ptds, cudaError_t, (void *, size_t, int, size_t, size_t)) \
	X(cudaMemset2DAsync, cudaError_t, (void *, size_t, int, size_t, size_t, \
					   cudaStream_t))                      \
	X(cudaMemset2DAsync_ptsz, cudaError_t, (void *, size_t, int, size_t, size_t, \
						cudaStream_t))                 \
	X(cudaMemset3D, cudaError_t, (struct cudaPitchedPtr, int, struct cudaExtent)) \
	X(cudaMemset3D_ptds, cudaError_t, (struct cudaPitchedPtr, int, struct cudaExtent)) \
	X(cudaMemset3DAsync, cudaError_t, (struct cudaPitchedPtr, int, struct cudaExtent, \
					   cudaStream_t))                      \
	X(cudaMemset3DAsync_ptsz, cudaError_t, (struct cudaPitchedPtr, int,   \
						struct cudaExtent, cudaStream_t)) \
	X(cudaMemcpy, cudaError_t, (void *, const void *, size_t, enum cudaMemcpyKind)) \
	X(cudaMemcpy_ptds, cudaError_t, (void *, const void *, size_t, enum cudaMemcpyKind)) \
	X(cudaMemcpyAsync, cudaError_t, (void *, const void *, size_t, enum cudaMemcpyKind, \
					 cudaStream_t))                        \
	X(cudaMemcpyAsync_ptsz, cudaError_t, (void *, const void *, size_t,    \
					      enum cudaMemcpyKind, cudaStream_t)) \
	X(cudaMemcpy2D, cudaError_t, (void *, size_t, const void *, size_t,   \
				      size_t, size_t, enum cudaMemcpyKind))   \
	X(cudaMemcpy2D_ptds, cudaError_t, (void *, size_t, const void *, size_t, \
					   size_t, size_t, enum cudaMemcpyKind)) \
	X(cudaMemcpy2DAsync, cudaError_t, (void *, size_t, const void *, size_t, \
		size_t, size_t, enum cudaMemcpyKind, cudaStream_t))           \
	X(cudaMemcpy2DAsync_ptsz, cudaError_t, (void *, size_t, const void *,  \
		size_t, size_t, size_t, enum cudaMemcpyKind, cudaStream_t))   \
	X(cudaMemcpy3D, cudaError_t, (const struct cudaMemcpy3DParms *))      \
	X(cudaMemcpy3D_ptds, cudaError_t, (const struct cudaMemcpy3DParms *)) \
	X(cudaMemcpy3DAsync, cudaError_t, (const struct cudaMemcpy3DParms *,  \
					   cudaStream_t))                      \
	X(cudaMemcpy3DAsync_ptsz, cudaError_t, (const struct cudaMemcpy3DParms *, \
						cudaStream_t))                 \
	X(cudaMemcpyPeer, cudaError_t, (void *, int, const void *, int, size_t)) \
	X(cudaMemcpyPeerAsync, cudaError_t, (void *, int, const void *, int,   \
					     size_t, cudaStream_t))            \
	X(cudaStreamBeginCapture, cudaError_t, (cudaStream_t, enum cudaStreamCaptureMode)) \
	X(cudaStreamBeginCapture_ptsz, cudaError_t, (cudaStream_t,            \
		enum cudaStreamCaptureMode))                                  \
	X(cudaStreamBeginCaptureToGraph, cudaError_t, (cudaStream_t, cudaGraph_t, \
		const cudaGraphNode_t *, const cudaGraphEdgeData *, size_t,   \
		enum cudaStreamCaptureMode))                                  \
	X(cudaStreamBeginCaptureToGraph_ptsz, cudaError_t, (cudaStream_t,     \
		cudaGraph_t, const cudaGraphNode_t *, const cudaGraphEdgeData *, \
		size_t, enum cudaStreamCaptureMode))                          \
	X(cudaStreamEndCapture, cudaError_t, (cudaStream_t, cudaGraph_t *))   \
	X(cudaStreamEndCapture_ptsz, cudaError_t, (cudaStream_t, cudaGraph_t *)) \
	X(cudaMallocAsync, cudaError_t, (void **, size_t, cudaStream_t))      \
	X(cudaMallocAsync_ptsz, cudaError_t, (void **, size_t, cudaStream_t)) \
	X(cudaFreeAsync, cudaError_t, (void *, cudaStream_t))                 \
	X(cudaFreeAsync_ptsz, cudaError_t, (void *, cudaStream_t))            \
	X(cudaGetDriverEntryPoint, cudaError_t, (const char *, void **,       \
		unsigned long long, enum cudaDriverEntryPointQueryResult *)) \
	X(cudaGetDriverEntryPoint_ptsz, cudaError_t, (const char *, void **,  \
		unsigned long long, enum cudaDriverEntryPointQueryResult *)) \
	X(cudaGetDriverEntryPointByVersion, cudaError_t, (const char *, void **, \
		unsigned int, unsigned long long,                             \
		enum cudaDriverEntryPointQueryResult *))                      \
	X(cudaGetDriverEntryPointByVersion_ptsz, cudaError_t, (const char *,  \
		void **, unsigned int, unsigned long long,                    \
		enum cudaDriverEntryPointQueryResult *))

/* Real functions the hooks call that are not hooked themselves. */
#define KV_DRIVER_REALS(X)                                                    \
	X(cuStreamIsCapturing, CUresult, (CUstream, CUstreamCaptureStatus *))  \
	X(cuStreamIsCapturing_ptsz, CUresult, (CUstream, CUstreamCaptureStatus *))

#define KV_RUNTIME_REALS(X)                                                   \
	X(cudaStreamIsCapturing, cudaError_t, (cudaStream_t,                  \
		enum cudaStreamCaptureStatus *))                              \
	X(cudaStreamIsCapturing_ptsz, cudaError_t, (cudaStream_t,             \
		enum cudaStreamCaptureStatus *))                              \
	X(cudaArrayGetInfo, cudaError_t, (struct cudaChannelFormatDesc *,     \
		struct cudaExtent *, unsigned int *, cudaArray_t))

#define KV_DECLARE_REAL(name, ret, args) extern ret (*kv_real_##name) args;
KV_DRIVER_HOOKS(KV_DECLARE_REAL)
KV_RUNTIME_HOOKS(KV_DECLARE_REAL)
KV_DRIVER_REALS(KV_DECLARE_REAL)
KV_RUNTIME_REALS(KV_DECLARE_REAL)
#undef KV_DECLARE_REAL

/* The wrappers, by C name kv_hook_<name>; their exported symbols carry the
 * real names, so a caller importing cudaMalloc binds to kv_hook_cudaMalloc.
 * (libkvshim.so links with -Bsymbolic-functions: inside it, these names
 * always mean the wrappers, even when loaded after the real libraries.) */
#define KV_DECLARE_HOOK(name, ret, args) \
	ret kv_hook_##name args __asm__(#name) __attribute__((visibility("default")));
KV_DRIVER_HOOKS(KV_DECLARE_HOOK)
KV_RUNTIME_HOOKS(KV_DECLARE_HOOK)
#undef KV_DECLARE_HOOK

/* Resolve the driver's real functions (once). Returns 0 or -1 without a
 * driver. */
int kv_hooks_driver(void);

/* Resolve the runtime's real functions from the libcudart this process
 * loaded (once found: the first look-up to finish sets them, for good).
 * No lock of kvshim's is held while the loader is called, so it may run
 * inside a library constructor, under the loader's lock. Returns 0 or -1
 * when none is loaded yet. */
int kv_hooks_runtime(void);

/* The look-up's lock across fork (attach.c's handlers call them): taken
 * before, let go after in the parent and in the child. */
void kv_hooks_real_fork_prepare(void);
void kv_hooks_real_fork_parent(void);
void kv_hooks_real_fork_child(void);

/* The wrapper standing for real function fn, or fn itself when it is not
 * hooked. What entry-point look-ups hand out. */
void *kv_hooks_wrap(void *fn);

/* dlsym as libcudart and others see it once patched: the real lookup,
 * with hooked driver functions swapped for their wrappers. */
void *kv_hook_dlsym(void *handle, const char *name);

/* Runtime wrappers call into the real runtime, which calls the driver:
 * this counts such calls on the thread, so the driver wrappers they reach
 * pass straight through instead of applying the policy twice. */
extern __thread int kv_in_runtime;

/* Make every loaded module that imports a hooked function call the
 * wrapper, by rewriting GOT slots (see got.h); all = 0 patches only the
 * dlsym road (dlsym in the main program and libcudart, see attach.c).
 * Used when libkvshim.so was not preloaded but loaded late, and on every
 * sweep. Returns the slots patched or a negative error. */
int kv_hooks_attach(int all);

/* If modules were loaded since the last look, patch them as kv_hooks_attach
 * does (a module loaded with RTLD_DEEPBIND binds past the preloaded
 * wrappers). Cheap when nothing changed. Returns the slots patched. */
int kv_hooks_sweep(void);

/* 1 when stream s (of the driver or the runtime; ptsz: the per-thread
 * default stream's form) is capturing into a graph now. */
int kv_hooks_captures(CUstream s, int ptsz);
int kv_hooks_rt_captures(cudaStream_t s, int ptsz);

/* Whether stream s (the per-thread default stream's form with ptsz) is
 * known to capture nothing: 0 where its capture state cannot be read (no
 * such stream; the legacy stream beside a global capture), so that a call
 * kvshim would answer itself is left to the driver, whose answer it is.
 * 1 where the driver has no query. */
int kv_hooks_idle(CUstream s, int ptsz);
int kv_hooks_rt_idle(cudaStream_t s, int ptsz);

/* What the driver answers for the mistake behind a kvshim_error the
 * policy returned: arguments it would refuse are an invalid value (a range
 * not inside one allocation included); a span that cannot be backed is out
 * of memory. */
static inline CUresult kv_hooks_cu_error(int rc)
{
	if (rc == KVSHIM_EINVAL || rc == KVSHIM_ERANGE)
		return CUDA_ERROR_INVALID_VALUE;
	return CUDA_ERROR_OUT_OF_MEMORY;
}

/* The same in the runtime's terms. */
static inline cudaError_t kv_hooks_rt_error(int rc)
{
	if (rc == KVSHIM_EINVAL || rc == KVSHIM_ERANGE)
		return cudaErrorInvalidValue;
	return cudaErrorMemoryAllocation;
}

#endif /* KV_HOOKS_H */
