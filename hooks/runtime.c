/*
 * runtime.c - the runtime API's allocation, memory-info, memset and memcpy
 * calls, as PyTorch's caching allocator makes them (it imports cudaMalloc
 * from libcudart dynamically, so a preloaded cudaMalloc sees every segment
 * it allocates). Each wrapper finds the real runtime, lets the policy
 * decide, and speaks cudaError_t. Calls into the real runtime are counted
 * in kv_in_runtime so the driver wrappers they reach stay out of the way.
 */
#include <stdint.h>
#include <stdlib.h>

#include "hooks.h"
#include "policy.h"

#define REAL_OR_FAIL(name)                                                \
	if (kv_hooks_runtime() || !kv_real_##name)                         \
		return cudaErrorInitializationError

#define CALL_REAL(e, call) do {                                           \
		kv_in_runtime++;                                           \
		(e) = (call);                                              \
		kv_in_runtime--;                                           \
	} while (0)

static CUdeviceptr dptr(const void *p)
{
	return (CUdeviceptr)(uintptr_t)p;
}

cudaError_t kv_hook_cudaMalloc(void **p, size_t n)
{
	CUdeviceptr d;
	cudaError_t e;
	int rc;

	REAL_OR_FAIL(cudaMalloc);
	if (p && n) {
		rc = kv_policy_alloc(n, &d);
		if (rc == 1) {
			*p = (void *)(uintptr_t)d;
			return cudaSuccess;
		}
		if (rc < 0)
			return cudaErrorMemoryAllocation;
	}
	CALL_REAL(e, kv_real_cudaMalloc(p, n));
	return e;
}

cudaError_t kv_hook_cudaFree(void *p)
{
	cudaError_t e;

	REAL_OR_FAIL(cudaFree);
	if (p && kv_policy_free(dptr(p)) == 1)
		return cudaSuccess;
	CALL_REAL(e, kv_real_cudaFree(p));
	return e;
}

cudaError_t kv_hook_cudaMemGetInfo(size_t *free_bytes, size_t *total)
{
	cudaError_t e;

	REAL_OR_FAIL(cudaMemGetInfo);
	CALL_REAL(e, kv_real_cudaMemGetInfo(free_bytes, total));
	if (e == cudaSuccess)
		kv_policy_meminfo(free_bytes, total);
	return e;
}

#define SYNC
#define ASYNC_ARGS , cudaStream_t s
#define ASYNC_PASS , s

/* On a span a zero memset sets only the pages mapped now; see policy.h. */
#define MEMSET(name, ARGS, PASS, CAPTURED)                                  \
cudaError_t kv_hook_##name(void *p, int v, size_t n ARGS)                   \
{                                                                           \
	cudaError_t e = cudaSuccess;                                        \
	struct kv_policy_run *r;                                            \
	size_t k, i;                                                        \
	int rc;                                                             \
									    \
	REAL_OR_FAIL(name);                                                 \
	rc = kv_policy_memset(dptr(p), n, 1,                                \
			      (unsigned char)v == 0 && !(CAPTURED), &r, &k); \
	if (rc < 0)                                                         \
		return kv_hooks_rt_error(rc);                               \
	if (rc == 0) {                                                      \
		CALL_REAL(e, kv_real_##name(p, v, n PASS));                 \
		return e;                                                   \
	}                                                                   \
	for (i = 0; i < k && e == cudaSuccess; i++)                         \
		CALL_REAL(e, kv_real_##name((void *)(uintptr_t)r[i].addr, v, \
					    r[i].len PASS));                \
	free(r);                                                            \
	return e;                                                           \
}

/* A memset captured into a graph sets, at every replay, whatever pages
 * are there then: it is never cut to the pages mapped at capture. The
 * legacy stream never captures; cudaMemset_ptds runs on the per-thread
 * default stream, which does. */
MEMSET(cudaMemset, SYNC, SYNC, 0)
MEMSET(cudaMemset_ptds, SYNC, SYNC, kv_hooks_rt_captures(NULL, 1))
MEMSET(cudaMemsetAsync, ASYNC_ARGS, ASYNC_PASS, kv_hooks_rt_captures(s, 0))
MEMSET(cudaMemsetAsync_ptsz, ASYNC_ARGS, ASYNC_PASS, kv_hooks_rt_captures(s, 1))

/* 2D and 3D memsets: the box their rows span is backed first (see
 * kv_policy_memset_pitched), then the call goes to the runtime whole. */
#define MEMSET2D(name, ARGS, PASS)                                          \
cudaError_t kv_hook_##name(void *p, size_t pitch, int v, size_t w,          \
			   size_t h ARGS)                                   \
{                                                                           \
	cudaError_t e;                                                      \
	int rc;                                                             \
									    \
	REAL_OR_FAIL(name);                                                 \
	rc = kv_policy_memset_pitched(dptr(p), 1, w, h, 1, pitch, h);       \
	if (rc < 0)                                                         \
		return kv_hooks_rt_error(rc);                               \
	CALL_REAL(e, kv_real_##name(p, pitch, v, w, h PASS));               \
	return e;                                                           \
}

#define MEMSET3D(name, ARGS, PASS)                                          \
cudaError_t kv_hook_##name(struct cudaPitchedPtr p, int v,                  \
			   struct cudaExtent x ARGS)                        \
{                                                                           \
	cudaError_t e;                                                      \
	int rc;                                                             \
									    \
	REAL_OR_FAIL(name);                                                 \
	rc = kv_policy_memset_pitched(dptr(p.ptr), 1, x.width, x.height,     \
				      x.depth, p.pitch, p.ysize);           \
	if (rc < 0)                                                         \
		return kv_hooks_rt_error(rc);                               \
	CALL_REAL(e, kv_real_##name(p, v, x PASS));                         \
	return e;                                                           \
}

MEMSET2D(cudaMemset2D, SYNC, SYNC)
MEMSET2D(cudaMemset2D_ptds, SYNC, SYNC)
MEMSET2D(cudaMemset2DAsync, ASYNC_ARGS, ASYNC_PASS)
MEMSET2D(cudaMemset2DAsync_ptsz, ASYNC_ARGS, ASYNC_PASS)
MEMSET3D(cudaMemset3D, SYNC, SYNC)
MEMSET3D(cudaMemset3D_ptds, SYNC, SYNC)
MEMSET3D(cudaMemset3DAsync, ASYNC_ARGS, ASYNC_PASS)
MEMSET3D(cudaMemset3DAsync_ptsz, ASYNC_ARGS, ASYNC_PASS)

/* The device sides of a copy of kind k: *dst and *src keep the pointers
 * of those that are (cudaMemcpyDefault: both, judged by the pointer), and
 * are 0 for a host side. */
static void device_sides(enum cudaMemcpyKind k, CUdeviceptr *dst, CUdeviceptr *src)
{
	if (k != cudaMemcpyHostToDevice && k != cudaMemcpyDeviceToDevice &&
	    k != cudaMemcpyDefault)
		*dst = 0;
	if (k != cudaMemcpyDeviceToHost && k != cudaMemcpyDeviceToDevice &&
	    k != cudaMemcpyDefault)
		*src = 0;
}

/* Back the span pages a copy of kind k reads or writes, both sides checked
 * before either is backed. Returns 0 or the policy's error. */
static int touch(void *dst, const void *src, size_t n, enum cudaMemcpyKind k)
{
	struct kv_policy_box b[2] = { { .ptr = dptr(dst) }, { .ptr = dptr(src) } };

	device_sides(k, &b[0].ptr, &b[1].ptr);
	return kv_policy_copy(b, 2, n, 1, 1);
}

#define MEMCPY(name, ARGS, PASS)                                            \
cudaError_t kv_hook_##name(void *dst, const void *src, size_t n,            \
			   enum cudaMemcpyKind k ARGS)                      \
{                                                                           \
	cudaError_t e;                                                      \
	int rc;                                                             \
									    \
	REAL_OR_FAIL(name);                                                 \
	rc = touch(dst, src, n, k);                                         \
	if (rc)                                                             \
		return kv_hooks_rt_error(rc);                               \
	CALL_REAL(e, kv_real_##name(dst, src, n, k PASS));                  \
	return e;                                                           \
}

MEMCPY(cudaMemcpy, SYNC, SYNC)
MEMCPY(cudaMemcpy_ptds, SYNC, SYNC)
MEMCPY(cudaMemcpyAsync, ASYNC_ARGS, ASYNC_PASS)
MEMCPY(cudaMemcpyAsync_ptsz, ASYNC_ARGS, ASYNC_PASS)

/*
 * 2D copies: every span page of each device side's box is backed first
 * (see kv_policy_copy). A width past either pitch is left to the runtime,
 * nothing backed: its refusal (cudaErrorInvalidPitchValue, after the
 * checks it makes first) is its own, and recorded as its last error.
 */
#define MEMCPY2D(name, ARGS, PASS)                                          \
cudaError_t kv_hook_##name(void *dst, size_t dp, const void *src, size_t sp, \
			   size_t w, size_t h, enum cudaMemcpyKind k ARGS)  \
{                                                                           \
	struct kv_policy_box b[2] = { { .ptr = dptr(dst), .pitch = dp },    \
				      { .ptr = dptr(src), .pitch = sp } };  \
	cudaError_t e;                                                      \
	int rc;                                                             \
									    \
	REAL_OR_FAIL(name);                                                 \
	if (w <= dp && w <= sp) {                                           \
		device_sides(k, &b[0].ptr, &b[1].ptr);                      \
		rc = kv_policy_copy(b, 2, w, h, 1);                         \
		if (rc)                                                     \
			return kv_hooks_rt_error(rc);                       \
	}                                                                   \
	CALL_REAL(e, kv_real_##name(dst, dp, src, sp, w, h, k PASS));       \
	return e;                                                           \
}

MEMCPY2D(cudaMemcpy2D, SYNC, SYNC)
MEMCPY2D(cudaMemcpy2D_ptds, SYNC, SYNC)
MEMCPY2D(cudaMemcpy2DAsync, ASYNC_ARGS, ASYNC_PASS)
MEMCPY2D(cudaMemcpy2DAsync_ptsz, ASYNC_ARGS, ASYNC_PASS)

/*
 * The bytes a row of a 3D copy moves, into *w: the extent's width, counted
 * in bytes where no array takes part, else in the array's elements. Returns
 * 0, or -1 where the element size cannot be had (the runtime then judges
 * the copy).
 */
static int row_bytes(const struct cudaMemcpy3DParms *p, size_t *w)
{
	cudaArray_t arr = p->srcArray ? p->srcArray : p->dstArray;
	struct cudaChannelFormatDesc d;
	struct cudaExtent x;
	unsigned int flags;
	cudaError_t e;

	*w = p->extent.width;
	if (!arr)
		return 0;
	if (!kv_real_cudaArrayGetInfo)
		return -1;
	CALL_REAL(e, kv_real_cudaArrayGetInfo(&d, &x, &flags, arr));
	if (e != cudaSuccess || d.x < 0 || d.y < 0 || d.z < 0 || d.w < 0)
		return -1;
	return __builtin_mul_overflow(p->extent.width,
				      (size_t)(d.x + d.y + d.z + d.w) / 8, w) ? -1 : 0;
}

/* Back what a 3D copy's device sides cover (an array side is left alone).
 * Returns 0 or the policy's error. */
static int touch_3d(const struct cudaMemcpy3DParms *p)
{
	struct kv_policy_box b[2] = {
		{ p->dstArray ? 0 : dptr(p->dstPtr.ptr), p->dstPos.x, p->dstPos.y,
		  p->dstPos.z, p->dstPtr.pitch, p->dstPtr.ysize },
		{ p->srcArray ? 0 : dptr(p->srcPtr.ptr), p->srcPos.x, p->srcPos.y,
		  p->srcPos.z, p->srcPtr.pitch, p->srcPtr.ysize },
	};
	size_t w;

	if (row_bytes(p, &w))
		return 0;
	device_sides(p->kind, &b[0].ptr, &b[1].ptr);
	return kv_policy_copy(b, 2, w, p->extent.height, p->extent.depth);
}

#define MEMCPY3D(name, ARGS, PASS)                                          \
cudaError_t kv_hook_##name(const struct cudaMemcpy3DParms *p ARGS)          \
{                                                                           \
	cudaError_t e;                                                      \
	int rc;                                                             \
									    \
	REAL_OR_FAIL(name);                                                 \
	rc = p ? touch_3d(p) : 0;                                           \
	if (rc)                                                             \
		return kv_hooks_rt_error(rc);                               \
	CALL_REAL(e, kv_real_##name(p PASS));                               \
	return e;                                                           \
}

MEMCPY3D(cudaMemcpy3D, SYNC, SYNC)
MEMCPY3D(cudaMemcpy3D_ptds, SYNC, SYNC)
MEMCPY3D(cudaMemcpy3DAsync, ASYNC_ARGS, ASYNC_PASS)
MEMCPY3D(cudaMemcpy3DAsync_ptsz, ASYNC_ARGS, ASYNC_PASS)

/* Peer copies: both sides are device memory, linear. */
#define MEMCPY_PEER(name, ARGS, PASS)                                       \
cudaError_t kv_hook_##name(void *dst, int dd, const void *src, int sd,      \
			   size_t n ARGS)                                   \
{                                                                           \
	cudaError_t e;                                                      \
	int rc;                                                             \
									    \
	REAL_OR_FAIL(name);                                                 \
	rc = touch(dst, src, n, cudaMemcpyDeviceToDevice);                  \
	if (rc)                                                             \
		return kv_hooks_rt_error(rc);                               \
	CALL_REAL(e, kv_real_##name(dst, dd, src, sd, n PASS));             \
	return e;                                                           \
}

MEMCPY_PEER(cudaMemcpyPeer, SYNC, SYNC)
MEMCPY_PEER(cudaMemcpyPeerAsync, ASYNC_ARGS, ASYNC_PASS)

/* Stream-ordered allocations pass through: their pool is the driver's. */
#define PASS_ALLOC(name)                                                    \
cudaError_t kv_hook_##name(void **p, size_t n, cudaStream_t s)              \
{                                                                           \
	cudaError_t e;                                                      \
									    \
	REAL_OR_FAIL(name);                                                 \
	CALL_REAL(e, kv_real_##name(p, n, s));                              \
	return e;                                                           \
}

/* A span freed in stream order is released as cudaFree releases it: its
 * pages leave it only after a fence, a wait for all the context's work,
 * the stream's before the free included. While the stream captures, the
 * call is the driver's (a free node in a graph; the span stays). */
#define FREE_ASYNC(name, ptsz)                                              \
cudaError_t kv_hook_##name(void *p, cudaStream_t s)                         \
{                                                                           \
	cudaError_t e;                                                      \
									    \
	REAL_OR_FAIL(name);                                                 \
	if (p && kv_hooks_rt_idle(s, ptsz) &&                               \
	    kv_policy_free(dptr(p)) == 1)                                   \
		return cudaSuccess;                                         \
	CALL_REAL(e, kv_real_##name(p, s));                                 \
	return e;                                                           \
}

PASS_ALLOC(cudaMallocAsync)
PASS_ALLOC(cudaMallocAsync_ptsz)
FREE_ASYNC(cudaFreeAsync, 0)
FREE_ASYNC(cudaFreeAsync_ptsz, 1)
