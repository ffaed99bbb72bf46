/*
 * driver.c - the driver API's allocation, memory-info, memset and memcpy
 * calls. Each wrapper resolves the real function, lets the policy decide,
 * and speaks CUresult. A call that arrives from inside a runtime wrapper
 * (kv_in_runtime) goes straight to the driver: the runtime wrapper has
 * applied the policy already.
 */
#include <stdint.h>
#include <stdlib.h>

#include "hooks.h"
#include "kvlog.h"
#include "policy.h"

#define REAL_OR_FAIL(name)                                                \
	if (kv_hooks_driver() || !kv_real_##name)                          \
		return CUDA_ERROR_NOT_INITIALIZED

CUresult kv_hook_cuMemAlloc_v2(CUdeviceptr *p, size_t n)
{
	CUdeviceptr d;
	int rc;

	REAL_OR_FAIL(cuMemAlloc_v2);
	if (!kv_in_runtime && p && n) {
		rc = kv_policy_alloc(n, &d);
		if (rc == 1) {
			*p = d;
			return CUDA_SUCCESS;
		}
		if (rc < 0)
			return CUDA_ERROR_OUT_OF_MEMORY;
	}
	return kv_real_cuMemAlloc_v2(p, n);
}

CUresult kv_hook_cuMemFree_v2(CUdeviceptr p)
{
	REAL_OR_FAIL(cuMemFree_v2);
	if (!kv_in_runtime && kv_policy_free(p) == 1)
		return CUDA_SUCCESS;
	return kv_real_cuMemFree_v2(p);
}

/* A span freed in stream order is released as cuMemFree releases it: its
 * pages leave it only after a fence, a wait for all the context's work,
 * the stream's before the free included. While the stream captures, the
 * call is the driver's (a free node in a graph; the span stays). */
#define FREE_ASYNC(name, ptsz)                                              \
CUresult kv_hook_##name(CUdeviceptr p, CUstream s)                          \
{                                                                          \
	REAL_OR_FAIL(name);                                                \
	if (!kv_in_runtime && p && kv_hooks_idle(s, ptsz) &&               \
	    kv_policy_free(p) == 1)                                        \
		return CUDA_SUCCESS;                                       \
	return kv_real_##name(p, s);                                       \
}

FREE_ASYNC(cuMemFreeAsync, 0)
FREE_ASYNC(cuMemFreeAsync_ptsz, 1)

CUresult kv_hook_cuMemGetInfo_v2(size_t *free_bytes, size_t *total)
{
	CUresult r;

	REAL_OR_FAIL(cuMemGetInfo_v2);
	r = kv_real_cuMemGetInfo_v2(free_bytes, total);
	if (r == CUDA_SUCCESS && !kv_in_runtime)
		kv_policy_meminfo(free_bytes, total);
	return r;
}

/*
 * Memsets: on a span, a zero memset sets only the pages mapped now (the
 * others arrive zeroed when mapped); any other value backs the range first.
 * The policy checks the element count, alignment and the span's end before
 * anything is backed, and a call it refuses gets the driver's answer.
 * ARGS/PASS carry the stream of the async forms.
 */
#define MEMSET(name, T, elem, ARGS, PASS, CAPTURED)                         \
CUresult kv_hook_##name(CUdeviceptr p, T v, size_t n ARGS)                 \
{                                                                          \
	CUresult e = CUDA_SUCCESS;                                         \
	struct kv_policy_run *r;                                           \
	size_t k, i;                                                       \
	int rc;                                                            \
									   \
	REAL_OR_FAIL(name);                                                \
	if (kv_in_runtime)                                                 \
		return kv_real_##name(p, v, n PASS);                       \
	rc = kv_policy_memset(p, n, (elem), v == 0 && !(CAPTURED), &r, &k); \
	if (rc == 0)                                                       \
		return kv_real_##name(p, v, n PASS);                       \
	if (rc < 0)                                                        \
		return kv_hooks_cu_error(rc);                              \
	for (i = 0; i < k && e == CUDA_SUCCESS; i++)                       \
		e = kv_real_##name(r[i].addr, v, r[i].len / (elem) PASS);  \
	free(r);                                                           \
	return e;                                                          \
}

#define SYNC
#define ASYNC_ARGS , CUstream s
#define ASYNC_PASS , s
/* A memset captured into a graph sets, at every replay, whatever pages are
 * there then: it is never cut to the pages mapped at capture. The legacy
 * stream never captures; a synchronous _ptds form runs on the per-thread
 * default stream, which does. */
MEMSET(cuMemsetD8_v2, unsigned char, 1, SYNC, SYNC, 0)
MEMSET(cuMemsetD8_v2_ptds, unsigned char, 1, SYNC, SYNC, kv_hooks_captures(NULL, 1))
MEMSET(cuMemsetD16_v2, unsigned short, 2, SYNC, SYNC, 0)
MEMSET(cuMemsetD16_v2_ptds, unsigned short, 2, SYNC, SYNC, kv_hooks_captures(NULL, 1))
MEMSET(cuMemsetD32_v2, unsigned int, 4, SYNC, SYNC, 0)
MEMSET(cuMemsetD32_v2_ptds, unsigned int, 4, SYNC, SYNC, kv_hooks_captures(NULL, 1))
MEMSET(cuMemsetD8Async, unsigned char, 1, ASYNC_ARGS, ASYNC_PASS,
       kv_hooks_captures(s, 0))
MEMSET(cuMemsetD8Async_ptsz, unsigned char, 1, ASYNC_ARGS, ASYNC_PASS,
       kv_hooks_captures(s, 1))
MEMSET(cuMemsetD16Async, unsigned short, 2, ASYNC_ARGS, ASYNC_PASS,
       kv_hooks_captures(s, 0))
MEMSET(cuMemsetD16Async_ptsz, unsigned short, 2, ASYNC_ARGS, ASYNC_PASS,
       kv_hooks_captures(s, 1))
MEMSET(cuMemsetD32Async, unsigned int, 4, ASYNC_ARGS, ASYNC_PASS,
       kv_hooks_captures(s, 0))
MEMSET(cuMemsetD32Async_ptsz, unsigned int, 4, ASYNC_ARGS, ASYNC_PASS,
       kv_hooks_captures(s, 1))

/*
 * 2D memsets: every page from the first row's start to the last row's end
 * is backed first, those the rows skip too (a zero value too: the driver
 * refuses the memset with a page of that range unmapped), then the call
 * goes to the driver whole.
 */
#define MEMSET2D(name, T, elem, ARGS, PASS)                                 \
CUresult kv_hook_##name(CUdeviceptr p, size_t pitch, T v, size_t w,         \
			size_t h ARGS)                                      \
{                                                                          \
	int rc;                                                            \
									   \
	REAL_OR_FAIL(name);                                                \
	if (!kv_in_runtime) {                                              \
		rc = kv_policy_memset_pitched(p, (elem), w, h, 1, pitch, h); \
		if (rc < 0)                                                \
			return kv_hooks_cu_error(rc);                      \
	}                                                                  \
	return kv_real_##name(p, pitch, v, w, h PASS);                     \
}

MEMSET2D(cuMemsetD2D8_v2, unsigned char, 1, SYNC, SYNC)
MEMSET2D(cuMemsetD2D8_v2_ptds, unsigned char, 1, SYNC, SYNC)
MEMSET2D(cuMemsetD2D16_v2, unsigned short, 2, SYNC, SYNC)
MEMSET2D(cuMemsetD2D16_v2_ptds, unsigned short, 2, SYNC, SYNC)
MEMSET2D(cuMemsetD2D32_v2, unsigned int, 4, SYNC, SYNC)
MEMSET2D(cuMemsetD2D32_v2_ptds, unsigned int, 4, SYNC, SYNC)
MEMSET2D(cuMemsetD2D8Async, unsigned char, 1, ASYNC_ARGS, ASYNC_PASS)
MEMSET2D(cuMemsetD2D8Async_ptsz, unsigned char, 1, ASYNC_ARGS, ASYNC_PASS)
MEMSET2D(cuMemsetD2D16Async, unsigned short, 2, ASYNC_ARGS, ASYNC_PASS)
MEMSET2D(cuMemsetD2D16Async_ptsz, unsigned short, 2, ASYNC_ARGS, ASYNC_PASS)
MEMSET2D(cuMemsetD2D32Async, unsigned int, 4, ASYNC_ARGS, ASYNC_PASS)
MEMSET2D(cuMemsetD2D32Async_ptsz, unsigned int, 4, ASYNC_ARGS, ASYNC_PASS)

/* Copies: whatever span pages the copy reads or writes are backed first,
 * both sides checked before either is. Returns 0 or the policy's error. */
static int touch2(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
	struct kv_policy_box b[2] = { { .ptr = dst }, { .ptr = src } };

	if (kv_in_runtime)
		return 0;
	return kv_policy_copy(b, 2, n, 1, 1);
}

#define COPY(name, DT, ST, DEV_DST, DEV_SRC, ARGS, PASS)                   \
CUresult kv_hook_##name(DT dst, ST src, size_t n ARGS)                     \
{                                                                          \
	int rc;                                                            \
									   \
	REAL_OR_FAIL(name);                                                \
	rc = touch2(DEV_DST, DEV_SRC, n);                                  \
	if (rc)                                                            \
		return kv_hooks_cu_error(rc);                              \
	return kv_real_##name(dst, src, n PASS);                           \
}

COPY(cuMemcpy, CUdeviceptr, CUdeviceptr, dst, src, SYNC, SYNC)
COPY(cuMemcpy_ptds, CUdeviceptr, CUdeviceptr, dst, src, SYNC, SYNC)
COPY(cuMemcpyAsync, CUdeviceptr, CUdeviceptr, dst, src, ASYNC_ARGS, ASYNC_PASS)
COPY(cuMemcpyAsync_ptsz, CUdeviceptr, CUdeviceptr, dst, src, ASYNC_ARGS, ASYNC_PASS)
COPY(cuMemcpyHtoD_v2, CUdeviceptr, const void *, dst, 0, SYNC, SYNC)
COPY(cuMemcpyHtoD_v2_ptds, CUdeviceptr, const void *, dst, 0, SYNC, SYNC)
COPY(cuMemcpyDtoH_v2, void *, CUdeviceptr, 0, src, SYNC, SYNC)
COPY(cuMemcpyDtoH_v2_ptds, void *, CUdeviceptr, 0, src, SYNC, SYNC)
COPY(cuMemcpyDtoD_v2, CUdeviceptr, CUdeviceptr, dst, src, SYNC, SYNC)
COPY(cuMemcpyDtoD_v2_ptds, CUdeviceptr, CUdeviceptr, dst, src, SYNC, SYNC)
COPY(cuMemcpyHtoDAsync_v2, CUdeviceptr, const void *, dst, 0, ASYNC_ARGS, ASYNC_PASS)
COPY(cuMemcpyHtoDAsync_v2_ptsz, CUdeviceptr, const void *, dst, 0, ASYNC_ARGS, ASYNC_PASS)
COPY(cuMemcpyDtoHAsync_v2, void *, CUdeviceptr, 0, src, ASYNC_ARGS, ASYNC_PASS)
COPY(cuMemcpyDtoHAsync_v2_ptsz, void *, CUdeviceptr, 0, src, ASYNC_ARGS, ASYNC_PASS)
COPY(cuMemcpyDtoDAsync_v2, CUdeviceptr, CUdeviceptr, dst, src, ASYNC_ARGS, ASYNC_PASS)
COPY(cuMemcpyDtoDAsync_v2_ptsz, CUdeviceptr, CUdeviceptr, dst, src, ASYNC_ARGS, ASYNC_PASS)

/*
 * 2D and 3D copies: every span page of each device side's box, and of as
 * many bytes from its pointer, is backed first (see kv_policy_copy); a host
 * or array side is left alone, a unified one is judged by its pointer. The
 * call then goes to the driver whole.
 */
static CUdeviceptr side_ptr(CUmemorytype t, CUdeviceptr dev)
{
	return t == CU_MEMORYTYPE_DEVICE || t == CU_MEMORYTYPE_UNIFIED ? dev : 0;
}

/* Returns 0 or the policy's error. */
static int touch_2d(const CUDA_MEMCPY2D *c)
{
	struct kv_policy_box b[2] = {
		{ side_ptr(c->dstMemoryType, c->dstDevice), c->dstXInBytes, c->dstY, 0,
		  c->dstPitch, 0 },
		{ side_ptr(c->srcMemoryType, c->srcDevice), c->srcXInBytes, c->srcY, 0,
		  c->srcPitch, 0 },
	};

	if (kv_in_runtime)
		return 0;
	return kv_policy_copy(b, 2, c->WidthInBytes, c->Height, 1);
}

/* A 3D copy's two sides, of a CUDA_MEMCPY3D or a CUDA_MEMCPY3D_PEER (whose
 * fields they share; the policy finds a peer copy's spans by their
 * pointers, whatever their devices). Returns 0 or the policy's error. */
#define BOX_3D(c, side)                                                     \
	{ side_ptr((c)->side##MemoryType, (c)->side##Device), (c)->side##XInBytes, \
	  (c)->side##Y, (c)->side##Z, (c)->side##Pitch, (c)->side##Height }

#define TOUCH_3D(fn, T)                                                     \
static int fn(const T *c)                                                   \
{                                                                          \
	struct kv_policy_box b[2] = { BOX_3D(c, dst), BOX_3D(c, src) };    \
									   \
	if (kv_in_runtime)                                                 \
		return 0;                                                  \
	return kv_policy_copy(b, 2, c->WidthInBytes, c->Height, c->Depth); \
}

TOUCH_3D(touch_3d, CUDA_MEMCPY3D)
TOUCH_3D(touch_3d_peer, CUDA_MEMCPY3D_PEER)

#define COPY_BOX(name, T, TOUCH, ARGS, PASS)                                \
CUresult kv_hook_##name(const T *c ARGS)                                    \
{                                                                          \
	int rc;                                                            \
									   \
	REAL_OR_FAIL(name);                                                \
	rc = c ? TOUCH(c) : 0;                                             \
	if (rc)                                                            \
		return kv_hooks_cu_error(rc);                              \
	return kv_real_##name(c PASS);                                     \
}

COPY_BOX(cuMemcpy2D_v2, CUDA_MEMCPY2D, touch_2d, SYNC, SYNC)
COPY_BOX(cuMemcpy2D_v2_ptds, CUDA_MEMCPY2D, touch_2d, SYNC, SYNC)
COPY_BOX(cuMemcpy2DUnaligned_v2, CUDA_MEMCPY2D, touch_2d, SYNC, SYNC)
COPY_BOX(cuMemcpy2DUnaligned_v2_ptds, CUDA_MEMCPY2D, touch_2d, SYNC, SYNC)
COPY_BOX(cuMemcpy2DAsync_v2, CUDA_MEMCPY2D, touch_2d, ASYNC_ARGS, ASYNC_PASS)
COPY_BOX(cuMemcpy2DAsync_v2_ptsz, CUDA_MEMCPY2D, touch_2d, ASYNC_ARGS, ASYNC_PASS)
COPY_BOX(cuMemcpy3D_v2, CUDA_MEMCPY3D, touch_3d, SYNC, SYNC)
COPY_BOX(cuMemcpy3D_v2_ptds, CUDA_MEMCPY3D, touch_3d, SYNC, SYNC)
COPY_BOX(cuMemcpy3DAsync_v2, CUDA_MEMCPY3D, touch_3d, ASYNC_ARGS, ASYNC_PASS)
COPY_BOX(cuMemcpy3DAsync_v2_ptsz, CUDA_MEMCPY3D, touch_3d, ASYNC_ARGS, ASYNC_PASS)
COPY_BOX(cuMemcpy3DPeer, CUDA_MEMCPY3D_PEER, touch_3d_peer, SYNC, SYNC)
COPY_BOX(cuMemcpy3DPeer_ptds, CUDA_MEMCPY3D_PEER, touch_3d_peer, SYNC, SYNC)
COPY_BOX(cuMemcpy3DPeerAsync, CUDA_MEMCPY3D_PEER, touch_3d_peer, ASYNC_ARGS, ASYNC_PASS)
COPY_BOX(cuMemcpy3DPeerAsync_ptsz, CUDA_MEMCPY3D_PEER, touch_3d_peer, ASYNC_ARGS, ASYNC_PASS)

/* Peer copies: both sides are device memory, linear, as cuMemcpyDtoD's. */
#define COPY_PEER(name, ARGS, PASS)                                         \
CUresult kv_hook_##name(CUdeviceptr dst, CUcontext dc, CUdeviceptr src,     \
			CUcontext sc, size_t n ARGS)                        \
{                                                                          \
	int rc;                                                            \
									   \
	REAL_OR_FAIL(name);                                                \
	rc = touch2(dst, src, n);                                          \
	if (rc)                                                            \
		return kv_hooks_cu_error(rc);                              \
	return kv_real_##name(dst, dc, src, sc, n PASS);                   \
}

COPY_PEER(cuMemcpyPeer, SYNC, SYNC)
COPY_PEER(cuMemcpyPeer_ptds, SYNC, SYNC)
COPY_PEER(cuMemcpyPeerAsync, ASYNC_ARGS, ASYNC_PASS)
COPY_PEER(cuMemcpyPeerAsync_ptsz, ASYNC_ARGS, ASYNC_PASS)

/*
 * Batched copies: every copy's sides are checked before any page of the
 * batch is backed, then each copy's span pages are backed as one copy's
 * (kv_policy_copy). A copy the policy refuses fails the whole batch before
 * the driver sees it, *fail naming it (where the caller asked); the driver
 * checks the rest (the attributes, the flags; the stream kvshim checks
 * first, batch_stream_refused). get(ops, i, c) says what copy i of count
 * moves. Returns 0 or the policy's error.
 */
struct batch_copy {
	struct kv_policy_box b[2];      /* destination, source */
	size_t width, height, depth;    /* width in bytes */
};

static int touch_batch(const void *ops, size_t count,
		       void (*get)(const void *, size_t, struct batch_copy *),
		       size_t *fail)
{
	struct batch_copy c;
	size_t i;
	int pass, rc;

	if (kv_in_runtime || !ops)
		return 0;
	for (pass = 0; pass < 2; pass++) {
		for (i = 0; i < count; i++) {
			get(ops, i, &c);
			rc = pass ? kv_policy_copy(c.b, 2, c.width, c.height, c.depth) :
				    kv_policy_copy_check(c.b, 2, c.width, c.height, c.depth);
			if (rc) {
				if (fail)
					*fail = i;
				return rc;
			}
		}
	}
	return 0;
}

/*
 * The streams a batch may not go on: the legacy stream (CU_STREAM_LEGACY,
 * or NULL in a plain form), and NULL in CUDA 13.0's per-thread forms
 * (v2_ptsz), which 12.8's per-thread forms accept. The driver refuses a
 * batch on them with an invalid value (measured on driver 580.159.04,
 * every form; the GPU suite checks the driver's answer, so a driver that
 * changes it shows there); kvshim answers so itself before any page is
 * backed, where the driver's refusal would come after kvshim had backed
 * and pinned the batch's pages. *fail, where the caller gave one, is
 * SIZE_MAX then, as CUDA 12.8 documents for an error of no one copy.
 * Returns 1 for a stream refused, else 0.
 */
static int batch_stream_refused(const char *name, CUstream s, int null_per_thread,
				size_t *fail)
{
	if (s != CU_STREAM_LEGACY && (s || null_per_thread))
		return 0;
	if (fail)
		*fail = SIZE_MAX;
	kv_log_capped(KV_LOG_INFO, "%s: stream %s: refused, as CUDA refuses a batched copy on "
		      "it (invalid value)", name, s ? "CU_STREAM_LEGACY" : "NULL");
	return 1;
}

/* Batched linear copies (cuMemcpyBatchAsync: CUDA 12.8's form with a
 * failIdx, 13.0's without, and their per-thread stream forms): copy i is
 * a linear copy of sizes[i] bytes, as cuMemcpy's (touch2). */
struct linear_batch {
	const CUdeviceptr *dsts, *srcs;
	const size_t *sizes;
};

static void linear_copy(const void *ops, size_t i, struct batch_copy *c)
{
	const struct linear_batch *l = ops;

	*c = (struct batch_copy){ { { .ptr = l->dsts[i] }, { .ptr = l->srcs[i] } },
				  l->sizes[i], 1, 1 };
}

#define COPY_BATCH(name, FAIL_ARG, FAIL_PASS, FAIL, NULL_PT)                \
CUresult kv_hook_##name(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes, \
			size_t count, CUmemcpyAttributes *attrs,            \
			size_t *idxs, size_t nattrs FAIL_ARG, CUstream s)   \
{                                                                          \
	struct linear_batch l = { dsts, srcs, sizes };                     \
	int rc;                                                            \
									   \
	REAL_OR_FAIL(name);                                                \
	if (!kv_in_runtime && batch_stream_refused(#name, s, NULL_PT, FAIL)) \
		return CUDA_ERROR_INVALID_VALUE;                           \
	rc = dsts && srcs && sizes ?                                       \
		touch_batch(&l, count, linear_copy, FAIL) : 0;             \
	if (rc)                                                            \
		return kv_hooks_cu_error(rc);                              \
	return kv_real_##name(dsts, srcs, sizes, count, attrs, idxs,       \
			      nattrs FAIL_PASS, s);                        \
}

#define FAIL_ARGS , size_t *fail
#define FAIL_PASS , fail

COPY_BATCH(cuMemcpyBatchAsync, FAIL_ARGS, FAIL_PASS, fail, 0)
COPY_BATCH(cuMemcpyBatchAsync_ptsz, FAIL_ARGS, FAIL_PASS, fail, 1)
COPY_BATCH(cuMemcpyBatchAsync_v2, SYNC, SYNC, NULL, 0)
COPY_BATCH(cuMemcpyBatchAsync_v2_ptsz, SYNC, SYNC, NULL, 0)

/*
 * Batched 3D copies (cuMemcpy3DBatchAsync: CUDA 12.8's form with a
 * failIdx, 13.0's without, and their per-thread stream forms): a pointer
 * operand is a side of a 3D copy, as touch_3d's, whose box starts at its
 * pointer (no offsets), its rows rowLength bytes apart and its layers
 * layerHeight rows apart (0: as tight as the extent; between pointers an
 * element is a byte). A copy with an array operand counts its width in
 * the array's elements, which kvshim does not look up: it is left to the
 * driver whole, as the array copies (cuMemcpyAtoD and the like) are.
 */
static struct kv_policy_box operand_box(const CUmemcpy3DOperand *o, const CUextent3D *e)
{
	return (struct kv_policy_box){
		.ptr = o->op.ptr.ptr,
		.pitch = o->op.ptr.rowLength ? o->op.ptr.rowLength : e->width,
		.ysize = o->op.ptr.layerHeight ? o->op.ptr.layerHeight : e->height,
	};
}

static void copy_3d_op(const void *ops, size_t i, struct batch_copy *c)
{
	const CUDA_MEMCPY3D_BATCH_OP *op = (const CUDA_MEMCPY3D_BATCH_OP *)ops + i;

	*c = (struct batch_copy){ .width = op->extent.width, .height = op->extent.height,
				  .depth = op->extent.depth };
	if (op->dst.type != CU_MEMCPY_OPERAND_TYPE_POINTER ||
	    op->src.type != CU_MEMCPY_OPERAND_TYPE_POINTER)
		return;
	c->b[0] = operand_box(&op->dst, &op->extent);
	c->b[1] = operand_box(&op->src, &op->extent);
}

#define COPY_3D_BATCH(name, FAIL_ARG, FAIL_PASS, FAIL, NULL_PT)             \
CUresult kv_hook_##name(size_t count, CUDA_MEMCPY3D_BATCH_OP *ops FAIL_ARG, \
			unsigned long long flags, CUstream s)               \
{                                                                          \
	int rc;                                                            \
									   \
	REAL_OR_FAIL(name);                                                \
	if (!kv_in_runtime && batch_stream_refused(#name, s, NULL_PT, FAIL)) \
		return CUDA_ERROR_INVALID_VALUE;                           \
	rc = touch_batch(ops, count, copy_3d_op, FAIL);                    \
	if (rc)                                                            \
		return kv_hooks_cu_error(rc);                              \
	return kv_real_##name(count, ops FAIL_PASS, flags, s);             \
}

COPY_3D_BATCH(cuMemcpy3DBatchAsync, FAIL_ARGS, FAIL_PASS, fail, 0)
COPY_3D_BATCH(cuMemcpy3DBatchAsync_ptsz, FAIL_ARGS, FAIL_PASS, fail, 1)
COPY_3D_BATCH(cuMemcpy3DBatchAsync_v2, SYNC, SYNC, NULL, 0)
COPY_3D_BATCH(cuMemcpy3DBatchAsync_v2_ptsz, SYNC, SYNC, NULL, 0)
