/*
 * emu_ptds.h: the per-thread default stream forms of the memsets and copies (private to the
 * emulation; emu_int.h includes it).
 *
 * A program built with --default-stream per-thread (CUDA_API_PER_THREAD_DEFAULT_STREAM) calls
 * these instead of the plain names: the synchronous calls' _ptds forms and the stream-ordered
 * calls' _ptsz forms, which cuGetProcAddress hands out for the plain names under
 * CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM. cuda.h declares them only in such a build, so
 * they are declared here. Each runs as its plain form (emu_ptds.c says how).
 *
 * KV_EMU_PER_THREAD(Y, X) gives Y(X, name, version, plain form, parameters, arguments passed to
 * the plain form) for each; the version is the one cudaTypedefs.h gives its PFN type.
 */
#ifndef KV_EMU_PTDS_H
#define KV_EMU_PTDS_H

/* A _ptsz form's stream as its plain form takes it: NULL there means the calling thread's
 * per-thread default stream, which the plain form names CU_STREAM_PER_THREAD. Not in CUDA
 * 13.0's batched copies (cuMemcpyBatchAsync_v2_ptsz, cuMemcpy3DBatchAsync_v2_ptsz), whose NULL
 * stream is passed on as it is and refused, as the legacy stream is: driver 580.159.04 refuses
 * it with an invalid value where CUDA 12.8's per-thread forms take it (measured on an H200,
 * docs/results/2026-12-01-h200-session40/run2). */
#define KV_EMU_PT_STREAM(s) ((s) ? (s) : CU_STREAM_PER_THREAD)

#define KV_EMU_PER_THREAD(Y, X)                                                                   \
    Y(X, cuMemsetD8_v2_ptds, 7000, cuMemsetD8_v2,                                                 \
      (CUdeviceptr dstDevice, unsigned char uc, size_t N), (dstDevice, uc, N))                   \
    Y(X, cuMemsetD16_v2_ptds, 7000, cuMemsetD16_v2,                                               \
      (CUdeviceptr dstDevice, unsigned short us, size_t N), (dstDevice, us, N))                  \
    Y(X, cuMemsetD32_v2_ptds, 7000, cuMemsetD32_v2,                                               \
      (CUdeviceptr dstDevice, unsigned int ui, size_t N), (dstDevice, ui, N))                    \
    Y(X, cuMemsetD8Async_ptsz, 7000, cuMemsetD8Async,                                             \
      (CUdeviceptr dstDevice, unsigned char uc, size_t N, CUstream hStream),                     \
      (dstDevice, uc, N, KV_EMU_PT_STREAM(hStream)))                                             \
    Y(X, cuMemsetD16Async_ptsz, 7000, cuMemsetD16Async,                                           \
      (CUdeviceptr dstDevice, unsigned short us, size_t N, CUstream hStream),                    \
      (dstDevice, us, N, KV_EMU_PT_STREAM(hStream)))                                             \
    Y(X, cuMemsetD32Async_ptsz, 7000, cuMemsetD32Async,                                           \
      (CUdeviceptr dstDevice, unsigned int ui, size_t N, CUstream hStream),                      \
      (dstDevice, ui, N, KV_EMU_PT_STREAM(hStream)))                                             \
    Y(X, cuMemsetD2D8_v2_ptds, 7000, cuMemsetD2D8_v2,                                             \
      (CUdeviceptr dstDevice, size_t dstPitch, unsigned char uc, size_t Width, size_t Height),   \
      (dstDevice, dstPitch, uc, Width, Height))                                                  \
    Y(X, cuMemsetD2D16_v2_ptds, 7000, cuMemsetD2D16_v2,                                           \
      (CUdeviceptr dstDevice, size_t dstPitch, unsigned short us, size_t Width, size_t Height),  \
      (dstDevice, dstPitch, us, Width, Height))                                                  \
    Y(X, cuMemsetD2D32_v2_ptds, 7000, cuMemsetD2D32_v2,                                           \
      (CUdeviceptr dstDevice, size_t dstPitch, unsigned int ui, size_t Width, size_t Height),    \
      (dstDevice, dstPitch, ui, Width, Height))                                                  \
    Y(X, cuMemsetD2D8Async_ptsz, 7000, cuMemsetD2D8Async,                                         \
      (CUdeviceptr dstDevice, size_t dstPitch, unsigned char uc, size_t Width, size_t Height,    \
       CUstream hStream),                                                                        \
      (dstDevice, dstPitch, uc, Width, Height, KV_EMU_PT_STREAM(hStream)))                       \
    Y(X, cuMemsetD2D16Async_ptsz, 7000, cuMemsetD2D16Async,                                       \
      (CUdeviceptr dstDevice, size_t dstPitch, unsigned short us, size_t Width, size_t Height,   \
       CUstream hStream),                                                                        \
      (dstDevice, dstPitch, us, Width, Height, KV_EMU_PT_STREAM(hStream)))                       \
    Y(X, cuMemsetD2D32Async_ptsz, 7000, cuMemsetD2D32Async,                                       \
      (CUdeviceptr dstDevice, size_t dstPitch, unsigned int ui, size_t Width, size_t Height,     \
       CUstream hStream),                                                                        \
      (dstDevice, dstPitch, ui, Width, Height, KV_EMU_PT_STREAM(hStream)))                       \
    Y(X, cuMemcpy_ptds, 7000, cuMemcpy,                                                           \
      (CUdeviceptr dst, CUdeviceptr src, size_t ByteCount), (dst, src, ByteCount))               \
    Y(X, cuMemcpyAsync_ptsz, 7000, cuMemcpyAsync,                                                 \
      (CUdeviceptr dst, CUdeviceptr src, size_t ByteCount, CUstream hStream),                    \
      (dst, src, ByteCount, KV_EMU_PT_STREAM(hStream)))                                          \
    Y(X, cuMemcpyHtoD_v2_ptds, 7000, cuMemcpyHtoD_v2,                                             \
      (CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount),                            \
      (dstDevice, srcHost, ByteCount))                                                           \
    Y(X, cuMemcpyDtoH_v2_ptds, 7000, cuMemcpyDtoH_v2,                                             \
      (void *dstHost, CUdeviceptr srcDevice, size_t ByteCount), (dstHost, srcDevice, ByteCount)) \
    Y(X, cuMemcpyDtoD_v2_ptds, 7000, cuMemcpyDtoD_v2,                                             \
      (CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount),                          \
      (dstDevice, srcDevice, ByteCount))                                                         \
    Y(X, cuMemcpyHtoDAsync_v2_ptsz, 7000, cuMemcpyHtoDAsync_v2,                                   \
      (CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount, CUstream hStream),          \
      (dstDevice, srcHost, ByteCount, KV_EMU_PT_STREAM(hStream)))                                \
    Y(X, cuMemcpyDtoHAsync_v2_ptsz, 7000, cuMemcpyDtoHAsync_v2,                                   \
      (void *dstHost, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream),                \
      (dstHost, srcDevice, ByteCount, KV_EMU_PT_STREAM(hStream)))                                \
    Y(X, cuMemcpyDtoDAsync_v2_ptsz, 7000, cuMemcpyDtoDAsync_v2,                                   \
      (CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream),        \
      (dstDevice, srcDevice, ByteCount, KV_EMU_PT_STREAM(hStream)))                              \
    Y(X, cuMemcpy2D_v2_ptds, 7000, cuMemcpy2D_v2, (const CUDA_MEMCPY2D *pCopy), (pCopy))          \
    Y(X, cuMemcpy2DUnaligned_v2_ptds, 7000, cuMemcpy2DUnaligned_v2,                               \
      (const CUDA_MEMCPY2D *pCopy), (pCopy))                                                     \
    Y(X, cuMemcpy2DAsync_v2_ptsz, 7000, cuMemcpy2DAsync_v2,                                       \
      (const CUDA_MEMCPY2D *pCopy, CUstream hStream), (pCopy, KV_EMU_PT_STREAM(hStream)))        \
    Y(X, cuMemcpy3D_v2_ptds, 7000, cuMemcpy3D_v2, (const CUDA_MEMCPY3D *pCopy), (pCopy))          \
    Y(X, cuMemcpy3DAsync_v2_ptsz, 7000, cuMemcpy3DAsync_v2,                                       \
      (const CUDA_MEMCPY3D *pCopy, CUstream hStream), (pCopy, KV_EMU_PT_STREAM(hStream)))        \
    Y(X, cuMemcpyPeer_ptds, 7000, cuMemcpyPeer,                                                   \
      (CUdeviceptr dstDevice, CUcontext dstContext, CUdeviceptr srcDevice, CUcontext srcContext, \
       size_t ByteCount),                                                                        \
      (dstDevice, dstContext, srcDevice, srcContext, ByteCount))                                 \
    Y(X, cuMemcpyPeerAsync_ptsz, 7000, cuMemcpyPeerAsync,                                         \
      (CUdeviceptr dstDevice, CUcontext dstContext, CUdeviceptr srcDevice, CUcontext srcContext, \
       size_t ByteCount, CUstream hStream),                                                      \
      (dstDevice, dstContext, srcDevice, srcContext, ByteCount, KV_EMU_PT_STREAM(hStream)))      \
    Y(X, cuMemcpy3DPeer_ptds, 7000, cuMemcpy3DPeer, (const CUDA_MEMCPY3D_PEER *pCopy), (pCopy))   \
    Y(X, cuMemcpy3DPeerAsync_ptsz, 7000, cuMemcpy3DPeerAsync,                                     \
      (const CUDA_MEMCPY3D_PEER *pCopy, CUstream hStream), (pCopy, KV_EMU_PT_STREAM(hStream)))   \
    Y(X, cuMemcpyBatchAsync_ptsz, 12080, cuMemcpyBatchAsync,                                      \
      (CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes, size_t count,                        \
       CUmemcpyAttributes *attrs, size_t *attrsIdxs, size_t numAttrs, size_t *failIdx,           \
       CUstream hStream),                                                                        \
      (dsts, srcs, sizes, count, attrs, attrsIdxs, numAttrs, failIdx,                            \
       KV_EMU_PT_STREAM(hStream)))                                                               \
    Y(X, cuMemcpyBatchAsync_v2_ptsz, 13000, cuMemcpyBatchAsync_v2,                                \
      (CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes, size_t count,                        \
       CUmemcpyAttributes *attrs, size_t *attrsIdxs, size_t numAttrs, CUstream hStream),         \
      (dsts, srcs, sizes, count, attrs, attrsIdxs, numAttrs, hStream))                         \
    Y(X, cuMemcpy3DBatchAsync_ptsz, 12080, cuMemcpy3DBatchAsync,                                  \
      (size_t numOps, CUDA_MEMCPY3D_BATCH_OP *opList, size_t *failIdx, unsigned long long flags, \
       CUstream hStream),                                                                        \
      (numOps, opList, failIdx, flags, KV_EMU_PT_STREAM(hStream)))                               \
    Y(X, cuMemcpy3DBatchAsync_v2_ptsz, 13000, cuMemcpy3DBatchAsync_v2,                            \
      (size_t numOps, CUDA_MEMCPY3D_BATCH_OP *opList, unsigned long long flags, CUstream hStream),\
      (numOps, opList, flags, hStream))

/* Their prototypes. */
#define KV_EMU_PT_DECLARE(X, name, ver, plain, params, args) CUresult CUDAAPI name params;
KV_EMU_PER_THREAD(KV_EMU_PT_DECLARE, _)
#undef KV_EMU_PT_DECLARE

/* Their entries in KV_EMU_FUNCS. */
#define KV_EMU_PT_FUNC(X, name, ver, plain, params, args) X(name, ver)

#endif /* KV_EMU_PTDS_H */
