/*
 * capture.c - stream capture: kvshim must know when any stream captures
 * into a CUDA graph, because a context-wide synchronisation made meanwhile
 * (its fence before unmapping pages) fails and invalidates the capture.
 * Each wrapper tells the shim before a capture begins and after it ends,
 * and otherwise changes nothing: results and errors are the driver's.
 *
 * A capture counts as ended when its stream no longer captures after the
 * end call (an end on the wrong thread, or on a stream that was not
 * capturing, ends nothing). Runtime wrappers count their captures; the
 * driver wrappers their calls reach (kv_in_runtime) pass straight through.
 */
#include "boundary.h"
#include "hooks.h"

#define DRIVER_REAL(name)                                                  \
	if (kv_hooks_driver() || !kv_real_##name)                          \
		return CUDA_ERROR_NOT_INITIALIZED

#define RUNTIME_REAL(name)                                                 \
	if (kv_hooks_runtime() || !kv_real_##name)                         \
		return cudaErrorInitializationError

/* Stream s's capture state by the given real query: 1 capturing, 0 not
 * (or no query), -1 the query failed (no such stream; the legacy stream
 * beside a global capture). */
static int drv_state(CUresult (*is)(CUstream, CUstreamCaptureStatus *), CUstream s)
{
	CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;

	if (!is)
		return 0;
	if (is(s, &st) != CUDA_SUCCESS)
		return -1;
	return st != CU_STREAM_CAPTURE_STATUS_NONE;
}

static int rt_state(cudaError_t (*is)(cudaStream_t, enum cudaStreamCaptureStatus *),
		    cudaStream_t s)
{
	enum cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
	cudaError_t e;

	if (!is)
		return 0;
	kv_in_runtime++;
	e = is(s, &st);
	kv_in_runtime--;
	if (e != cudaSuccess)
		return -1;
	return st != cudaStreamCaptureStatusNone;
}

/* Stream s's state (drv_state's), or -1 without the driver. */
static int state_of(CUstream s, int ptsz)
{
	if (kv_hooks_driver())
		return -1;
	return drv_state(ptsz ? kv_real_cuStreamIsCapturing_ptsz : kv_real_cuStreamIsCapturing, s);
}

static int rt_state_of(cudaStream_t s, int ptsz)
{
	if (kv_hooks_runtime())
		return -1;
	return rt_state(ptsz ? kv_real_cudaStreamIsCapturing_ptsz :
			       kv_real_cudaStreamIsCapturing, s);
}

int kv_hooks_captures(CUstream s, int ptsz)
{
	return state_of(s, ptsz) == 1;
}

int kv_hooks_rt_captures(cudaStream_t s, int ptsz)
{
	return rt_state_of(s, ptsz) == 1;
}

int kv_hooks_idle(CUstream s, int ptsz)
{
	return state_of(s, ptsz) == 0;
}

int kv_hooks_rt_idle(cudaStream_t s, int ptsz)
{
	return rt_state_of(s, ptsz) == 0;
}

/* ---- the driver's calls ----------------------------------------------------- */

#define DRV_BEGIN(name, params, args)                                      \
CUresult kv_hook_##name params                                             \
{                                                                          \
	CUresult r;                                                        \
	int own = !kv_in_runtime;                                          \
                                                                           \
	DRIVER_REAL(name);                                                 \
	if (own)                                                           \
		kv_shim_capture(1);                                        \
	r = kv_real_##name args;                                           \
	if (own && r != CUDA_SUCCESS)                                      \
		kv_shim_capture(0);                                        \
	return r;                                                          \
}

DRV_BEGIN(cuStreamBeginCapture_v2, (CUstream s, CUstreamCaptureMode m), (s, m))
DRV_BEGIN(cuStreamBeginCapture_v2_ptsz, (CUstream s, CUstreamCaptureMode m), (s, m))
DRV_BEGIN(cuStreamBeginCaptureToGraph,
	  (CUstream s, CUgraph g, const CUgraphNode *d, const CUgraphEdgeData *e,
	   size_t n, CUstreamCaptureMode m), (s, g, d, e, n, m))
DRV_BEGIN(cuStreamBeginCaptureToGraph_ptsz,
	  (CUstream s, CUgraph g, const CUgraphNode *d, const CUgraphEdgeData *e,
	   size_t n, CUstreamCaptureMode m), (s, g, d, e, n, m))

#define DRV_END(name, is)                                                  \
CUresult kv_hook_##name(CUstream s, CUgraph *g)                            \
{                                                                          \
	int was = 0;                                                       \
	CUresult r;                                                        \
                                                                           \
	DRIVER_REAL(name);                                                 \
	if (!kv_in_runtime)                                                \
		was = drv_state(kv_real_##is, s) == 1;                     \
	r = kv_real_##name(s, g);                                          \
	if (was && drv_state(kv_real_##is, s) != 1)                        \
		kv_shim_capture(0);                                        \
	return r;                                                          \
}

DRV_END(cuStreamEndCapture, cuStreamIsCapturing)
DRV_END(cuStreamEndCapture_ptsz, cuStreamIsCapturing_ptsz)

/* ---- the runtime's calls -------------------------------------------------------- */

#define RT_BEGIN(name, params, args)                                       \
cudaError_t kv_hook_##name params                                          \
{                                                                          \
	cudaError_t e;                                                     \
                                                                           \
	RUNTIME_REAL(name);                                                \
	kv_shim_capture(1);                                                \
	kv_in_runtime++;                                                   \
	e = kv_real_##name args;                                           \
	kv_in_runtime--;                                                   \
	if (e != cudaSuccess)                                              \
		kv_shim_capture(0);                                        \
	return e;                                                          \
}

RT_BEGIN(cudaStreamBeginCapture, (cudaStream_t s, enum cudaStreamCaptureMode m),
	 (s, m))
RT_BEGIN(cudaStreamBeginCapture_ptsz,
	 (cudaStream_t s, enum cudaStreamCaptureMode m), (s, m))
RT_BEGIN(cudaStreamBeginCaptureToGraph,
	 (cudaStream_t s, cudaGraph_t g, const cudaGraphNode_t *d,
	  const cudaGraphEdgeData *ed, size_t n, enum cudaStreamCaptureMode m),
	 (s, g, d, ed, n, m))
RT_BEGIN(cudaStreamBeginCaptureToGraph_ptsz,
	 (cudaStream_t s, cudaGraph_t g, const cudaGraphNode_t *d,
	  const cudaGraphEdgeData *ed, size_t n, enum cudaStreamCaptureMode m),
	 (s, g, d, ed, n, m))

#define RT_END(name, is)                                                   \
cudaError_t kv_hook_##name(cudaStream_t s, cudaGraph_t *g)                 \
{                                                                          \
	cudaError_t e;                                                     \
	int was;                                                           \
                                                                           \
	RUNTIME_REAL(name);                                                \
	was = rt_state(kv_real_##is, s) == 1;                              \
	kv_in_runtime++;                                                   \
	e = kv_real_##name(s, g);                                          \
	kv_in_runtime--;                                                   \
	if (was && rt_state(kv_real_##is, s) != 1)                         \
		kv_shim_capture(0);                                        \
	return e;                                                          \
}

RT_END(cudaStreamEndCapture, cudaStreamIsCapturing)
RT_END(cudaStreamEndCapture_ptsz, cudaStreamIsCapturing_ptsz)
