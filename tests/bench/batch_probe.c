/*
 * batch_probe.c - what the driver answers for the batched copies
 * (cuMemcpyBatchAsync, cuMemcpy3DBatchAsync) by stream, form by form, and
 * beside a stream capture. A probe for docs/BENCHMARKS.md section 5, not a
 * test: it prints one line per case and links no kvshim.
 *
 * The forms are those cuGetProcAddress hands out: CUDA 12.8's (with a
 * failure index) and 13.0's, for the legacy and the per-thread default
 * stream. Each case copies 1 KiB of cuMemAlloc memory; a 12.8 form's
 * failure index is set to 77 first and printed after a refusal.
 *
 * Table 1: every form on NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD and a
 * created non-blocking stream. Table 2: while a created non-blocking
 * stream captures in global mode on the calling thread, the plain forms on
 * that stream (recorded or refused?), on the legacy stream, and on a
 * second non-blocking stream; with the capture's end and its graph's nodes.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cuda.h>

typedef CUresult (*batch12_fn)(CUdeviceptr *, CUdeviceptr *, size_t *, size_t,
			       CUmemcpyAttributes *, size_t *, size_t, size_t *, CUstream);
typedef CUresult (*batch13_fn)(CUdeviceptr *, CUdeviceptr *, size_t *, size_t,
			       CUmemcpyAttributes *, size_t *, size_t, CUstream);
typedef CUresult (*batch3d12_fn)(size_t, CUDA_MEMCPY3D_BATCH_OP *, size_t *,
				 unsigned long long, CUstream);
typedef CUresult (*batch3d13_fn)(size_t, CUDA_MEMCPY3D_BATCH_OP *, unsigned long long,
				 CUstream);

static CUdeviceptr buf;         /* 2 KiB: the copies go from the first to the second */

/* The form of the batch (3D where three_d) for version ver (12080, 13000),
 * per-thread where pt; NULL where the driver has none. */
static void *form(int three_d, int ver, int pt)
{
	CUdriverProcAddressQueryResult q;
	void *fn = NULL;

	if (cuGetProcAddress_v2(three_d ? "cuMemcpy3DBatchAsync" : "cuMemcpyBatchAsync", &fn, ver,
				pt ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM :
				     CU_GET_PROC_ADDRESS_LEGACY_STREAM, &q) ||
	    q != CU_GET_PROC_ADDRESS_SUCCESS)
		return NULL;
	return fn;
}

/* One batch of one copy through fn on stream s; *fail: 12.8's index. */
static CUresult batch(void *fn, int three_d, int ver, CUstream s, size_t *fail)
{
	CUdeviceptr d = buf + 1024, src = buf;
	CUDA_MEMCPY3D_BATCH_OP op;
	CUmemcpyAttributes attr;
	size_t z = 1024, idx = 0;

	if (!fn)
		return CUDA_ERROR_NOT_FOUND;
	memset(&attr, 0, sizeof(attr));
	attr.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
	memset(&op, 0, sizeof(op));
	op.dst.type = op.src.type = CU_MEMCPY_OPERAND_TYPE_POINTER;
	op.dst.op.ptr.ptr = d;
	op.src.op.ptr.ptr = src;
	op.extent = (CUextent3D){ z, 1, 1 };
	op.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
	*fail = 77;
	if (three_d)
		return ver == 13000 ? ((batch3d13_fn)fn)(1, &op, 0, s) :
				      ((batch3d12_fn)fn)(1, &op, fail, 0, s);
	return ver == 13000 ? ((batch13_fn)fn)(&d, &src, &z, 1, &attr, &idx, 1, s) :
			      ((batch12_fn)fn)(&d, &src, &z, 1, &attr, &idx, 1, fail, s);
}

/* What a 12.8 form left in its failure index after r (13.0's have none). */
static const char *fail_name(int ver, CUresult r, size_t fail)
{
	if (ver == 13000 || r == CUDA_SUCCESS)
		return "-";
	return fail == SIZE_MAX ? "SIZE_MAX" : fail == 77 ? "untouched" : "an index";
}

static const char *err(CUresult r)
{
	const char *n = "?";

	cuGetErrorName(r, &n);
	return n;
}

static const char *form_name(int three_d, int ver, int pt)
{
	static char b[64];

	snprintf(b, sizeof(b), "%s%s%s", three_d ? "cuMemcpy3DBatchAsync" : "cuMemcpyBatchAsync",
		 ver == 13000 ? "_v2" : "", pt ? "_ptsz" : "");
	return b;
}

static void streams(CUstream own)
{
	static const char *const names[] = { "NULL", "CU_STREAM_LEGACY", "CU_STREAM_PER_THREAD",
					     "a created stream" };
	CUstream s[4] = { NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD, own };
	int three_d, ver, pt, i;
	size_t fail;
	CUresult r;

	printf("%-34s %-22s %-28s %s\n", "form", "stream", "result", "failIdx");
	for (pt = 0; pt < 2; pt++)
		for (ver = 12080; ver <= 13000; ver += 920)
			for (three_d = 0; three_d < 2; three_d++)
				for (i = 0; i < 4; i++) {
					r = batch(form(three_d, ver, pt), three_d, ver, s[i], &fail);
					printf("%-34s %-22s %-28s %s\n", form_name(three_d, ver, pt),
					       names[i], err(r), fail_name(ver, r, fail));
					cuCtxSynchronize();
				}
}

/* Table 2: which stream the plain forms get while cap captures. */
static void beside_capture(CUstream cap, CUstream other)
{
	static const char *const names[] = { "the capturing stream", "the legacy stream",
					     "another stream" };
	CUstream s[3] = { cap, CU_STREAM_LEGACY, other };
	int three_d, ver, i;
	size_t fail, nodes;
	CUresult r, end;
	CUgraph g;

	printf("\n%-34s %-22s %-28s %-10s %-36s %s\n", "form", "stream", "result", "failIdx",
	       "capture end", "nodes");
	for (ver = 12080; ver <= 13000; ver += 920)
		for (three_d = 0; three_d < 2; three_d++)
			for (i = 0; i < 3; i++) {
				g = NULL;
				nodes = 0;
				if (cuStreamBeginCapture_v2(cap, CU_STREAM_CAPTURE_MODE_GLOBAL)) {
					printf("begin capture failed\n");
					return;
				}
				r = batch(form(three_d, ver, 0), three_d, ver, s[i], &fail);
				end = cuStreamEndCapture(cap, &g);
				if (g) {
					cuGraphGetNodes(g, NULL, &nodes);
					cuGraphDestroy(g);
				}
				printf("%-34s %-22s %-28s %-10s %-36s %zu\n",
				       form_name(three_d, ver, 0), names[i], err(r),
				       fail_name(ver, r, fail), err(end), nodes);
				cuCtxSynchronize();
			}
}

int main(void)
{
	CUstream own, other;
	CUcontext ctx;
	CUdevice dev;
	int drv = 0;

	if (cuInit(0) || cuDeviceGet(&dev, 0) || cuDevicePrimaryCtxRetain(&ctx, dev) ||
	    cuCtxSetCurrent(ctx)) {
		printf("batch-probe: no CUDA device\n");
		return 77;
	}
	if (cuMemAlloc(&buf, 2048) || cuStreamCreate(&own, CU_STREAM_NON_BLOCKING) ||
	    cuStreamCreate(&other, CU_STREAM_NON_BLOCKING)) {
		printf("batch-probe: set-up failed\n");
		return 1;
	}
	cuDriverGetVersion(&drv);
	printf("batch-probe: driver API %d; one copy of 1 KiB a batch\n", drv);
	streams(own);
	beside_capture(own, other);
	return 0;
}
