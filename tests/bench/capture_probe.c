/*
 * capture_probe.c - which driver calls a thread may make while another
 * thread (or itself) captures a stream into a CUDA graph, by capture mode,
 * and whether the capture survives them. A probe for GPU-FACTS.md and
 * docs/BENCHMARKS.md, not a test: it prints one line per case.
 *
 * Each case: thread A begins a capture of a non-blocking stream in global
 * mode and records a memset on it; the probing thread (A itself, or B)
 * sets its own capture mode, makes one call, and A ends the capture. The
 * line gives the call's result and the capture's end.
 *
 * A second table: the per-thread default stream captures (begun by the
 * calling thread in each mode) and that thread makes a synchronous
 * per-thread call (a _ptds form, which runs on that stream). The line gives
 * the call's result, the capture's end, the graph's nodes, and for a memset
 * whether a launch of the graph sets the range again: a memset the driver
 * captures is replayed over whatever pages are there at the launch.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <cuda.h>

static CUcontext ctx;
static CUdeviceptr scratch;       /* 2 MiB of plain device memory */
static CUstream cap_stream, own_stream;
static size_t gran;

typedef CUresult (*op_fn)(void);

/* ---- the calls probed ------------------------------------------------- */

static CUmemAllocationProp prop(void)
{
	CUmemAllocationProp p;
	CUdevice dev;

	memset(&p, 0, sizeof(p));
	cuCtxGetDevice(&dev);
	p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
	p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	p.location.id = dev;
	return p;
}

static CUresult op_vmm_cycle(void)
{
	CUmemAllocationProp p = prop();
	CUmemAccessDesc d;
	CUmemGenericAllocationHandle h;
	CUdeviceptr va;
	CUresult r;

	r = cuMemAddressReserve(&va, gran, 0, 0, 0);
	if (r)
		return r;
	r = cuMemCreate(&h, gran, &p, 0);
	if (r)
		goto unreserve;
	r = cuMemMap(va, gran, 0, h, 0);
	if (r)
		goto release;
	memset(&d, 0, sizeof(d));
	d.location = p.location;
	d.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
	r = cuMemSetAccess(va, gran, &d, 1);
	if (!r)
		r = cuMemUnmap(va, gran);
	else
		cuMemUnmap(va, gran);
release:
	cuMemRelease(h);
unreserve:
	cuMemAddressFree(va, gran);
	return r;
}

static CUresult op_meminfo(void)
{
	size_t f, t;

	return cuMemGetInfo(&f, &t);
}

static CUresult op_memset_own_async(void)
{
	return cuMemsetD8Async(scratch, 0, gran, own_stream);
}

static CUresult op_memset_own_sync_stream(void)
{
	CUresult r = cuMemsetD8Async(scratch, 0, gran, own_stream);

	return r ? r : cuStreamSynchronize(own_stream);
}

/* A memset on the private stream, an event recorded after it, and a wait
 * for the event: by polling it, or by cuEventSynchronize. */
static CUresult memset_then_wait_event(int poll)
{
	CUevent ev;
	CUresult r;

	r = cuEventCreate(&ev, CU_EVENT_DISABLE_TIMING);
	if (r)
		return r;
	r = cuMemsetD8Async(scratch, 0, gran, own_stream);
	if (!r)
		r = cuEventRecord(ev, own_stream);
	if (!r && poll)
		do
			r = cuEventQuery(ev);
		while (r == CUDA_ERROR_NOT_READY);
	else if (!r)
		r = cuEventSynchronize(ev);
	cuEventDestroy(ev);
	return r;
}

static CUresult op_memset_own_poll_event(void)
{
	return memset_then_wait_event(1);
}

static CUresult op_memset_own_event_sync(void)
{
	return memset_then_wait_event(0);
}

static CUresult op_stream_query_own(void)
{
	CUresult r = cuStreamQuery(own_stream);

	return r == CUDA_ERROR_NOT_READY ? CUDA_SUCCESS : r;
}

static CUresult op_ctx_sync(void)
{
	return cuCtxSynchronize();
}

static CUresult op_memset_legacy(void)
{
	return cuMemsetD8(scratch, 0, gran);
}

static CUresult op_mem_alloc_free(void)
{
	CUdeviceptr d;
	CUresult r = cuMemAlloc(&d, gran);

	return r ? r : cuMemFree(d);
}

static const struct {
	const char *name;
	op_fn fn;
} ops[] = {
	{ "vmm reserve/create/map/access/unmap/release/free", op_vmm_cycle },
	{ "cuMemGetInfo", op_meminfo },
	{ "cuMemsetD8Async on own stream", op_memset_own_async },
	{ "memset own stream + cuStreamSynchronize", op_memset_own_sync_stream },
	{ "memset own stream + cuEventQuery poll", op_memset_own_poll_event },
	{ "memset own stream + cuEventSynchronize", op_memset_own_event_sync },
	{ "cuStreamQuery own stream", op_stream_query_own },
	{ "cuCtxSynchronize", op_ctx_sync },
	{ "cuMemsetD8 (legacy stream)", op_memset_legacy },
	{ "cuMemAlloc + cuMemFree", op_mem_alloc_free },
};

#define NOPS (sizeof(ops) / sizeof(ops[0]))

/* ---- one case ----------------------------------------------------------- */

struct probe {
	size_t op;
	CUstreamCaptureMode mode;   /* the probing thread's own mode */
	CUresult result;
};

static void run_op(struct probe *pr)
{
	CUstreamCaptureMode m = pr->mode;

	cuThreadExchangeStreamCaptureMode(&m);
	pr->result = ops[pr->op].fn();
	cuThreadExchangeStreamCaptureMode(&m);
}

static void *other_thread(void *arg)
{
	cuCtxSetCurrent(ctx);
	run_op(arg);
	return NULL;
}

static const char *mode_name(CUstreamCaptureMode m)
{
	return m == CU_STREAM_CAPTURE_MODE_GLOBAL ? "global" :
	       m == CU_STREAM_CAPTURE_MODE_THREAD_LOCAL ? "thread-local" :
	       "relaxed";
}

static void one_case(size_t op, int same_thread, CUstreamCaptureMode mode)
{
	struct probe pr = { op, mode, CUDA_SUCCESS };
	const char *rn = "?", *en = "?";
	CUgraph g = NULL;
	CUresult begin, end;
	pthread_t t;

	begin = cuStreamBeginCapture(cap_stream, CU_STREAM_CAPTURE_MODE_GLOBAL);
	if (begin) {
		printf("%-48s begin capture failed: %d\n", ops[op].name, (int)begin);
		return;
	}
	cuMemsetD8Async(scratch, 1, 4096, cap_stream);
	if (same_thread) {
		run_op(&pr);
	} else {
		pthread_create(&t, NULL, other_thread, &pr);
		pthread_join(t, NULL);
	}
	end = cuStreamEndCapture(cap_stream, &g);
	if (g)
		cuGraphDestroy(g);
	cuGetErrorName(pr.result, &rn);
	cuGetErrorName(end, &en);
	printf("%-48s %-6s %-12s call %-40s capture end %s\n", ops[op].name,
	       same_thread ? "same" : "other", mode_name(mode), rn, en);
	/* a failed case may leave the context's sticky state alone, but make
	 * sure every stream is idle before the next one */
	cuStreamSynchronize(own_stream);
	cuCtxSynchronize();
}

/* ---- synchronous per-thread calls while the per-thread stream captures ---- */

typedef CUresult (*memset8_fn)(CUdeviceptr, unsigned char, size_t);
typedef CUresult (*memset2d8_fn)(CUdeviceptr, size_t, unsigned char, size_t, size_t);
typedef CUresult (*dtod_fn)(CUdeviceptr, CUdeviceptr, size_t);
typedef CUresult (*htod_fn)(CUdeviceptr, const void *, size_t);
typedef CUresult (*dtoh_fn)(void *, CUdeviceptr, size_t);
typedef CUresult (*memset8_async_fn)(CUdeviceptr, unsigned char, size_t, CUstream);

static void *pt_fn(const char *name)
{
	CUdriverProcAddressQueryResult q;
	void *fn = NULL;

	if (cuGetProcAddress_v2(name, &fn, 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
				&q) || q != CU_GET_PROC_ADDRESS_SUCCESS)
		return NULL;
	return fn;
}

static unsigned char host_buf[4096];

/* The driver's per-thread form of name, or an error for a driver without
 * one (the call fails, the line says so). */
#define PT_CALL(type, name, args)                                            \
	(pt_fn(name) ? ((type)pt_fn(name))args : CUDA_ERROR_NOT_FOUND)

/* The call of case k, on the first page of scratch (the second page is
 * the copies' other side); 'sets' whether it writes 0 over the page. */
static CUresult pt_call(int k, const char **name, int *sets)
{
	*sets = 0;
	switch (k) {
	case 0:
		*name = "cuMemsetD8 (_ptds), 0";
		*sets = 1;
		return PT_CALL(memset8_fn, "cuMemsetD8", (scratch, 0, 4096));
	case 1:
		*name = "cuMemsetD2D8 (_ptds), 0";
		*sets = 1;
		return PT_CALL(memset2d8_fn, "cuMemsetD2D8", (scratch, 1024, 0, 1024, 4));
	case 2:
		*name = "cuMemsetD8Async (_ptsz), 0, stream 0";
		*sets = 1;
		return PT_CALL(memset8_async_fn, "cuMemsetD8Async", (scratch, 0, 4096, NULL));
	case 3:
		*name = "cuMemcpyDtoD (_ptds)";
		return PT_CALL(dtod_fn, "cuMemcpyDtoD", (scratch + 4096, scratch, 4096));
	case 4:
		*name = "cuMemcpyHtoD (_ptds), pageable";
		return PT_CALL(htod_fn, "cuMemcpyHtoD", (scratch + 4096, host_buf, 4096));
	default:
		*name = "cuMemcpyDtoH (_ptds), pageable";
		return PT_CALL(dtoh_fn, "cuMemcpyDtoH", (host_buf, scratch + 4096, 4096));
	}
}

#define PT_CASES 6

/* Whether the first page of scratch reads all zero. */
static int page_zero(void)
{
	unsigned char b[4096];
	size_t i;

	if (cuMemcpyDtoH(b, scratch, sizeof(b)))
		return -1;
	for (i = 0; i < sizeof(b); i++)
		if (b[i])
			return 0;
	return 1;
}

static void pt_case(int k, CUstreamCaptureMode mode)
{
	const char *name = "?", *rn = "?", *en = "?", *replay = "-";
	CUgraphExec ge = NULL;
	CUgraph g = NULL;
	CUresult begin, call, end;
	size_t nodes = 0;
	int sets;

	cuMemsetD8(scratch, 0xab, 2 * 4096);
	cuCtxSynchronize();
	begin = cuStreamBeginCapture_v2(CU_STREAM_PER_THREAD, mode);
	if (begin) {
		printf("per-thread case %d: begin capture failed: %d\n", k, (int)begin);
		return;
	}
	call = pt_call(k, &name, &sets);
	end = cuStreamEndCapture(CU_STREAM_PER_THREAD, &g);
	if (g)
		cuGraphGetNodes(g, NULL, &nodes);
	/* did the call run at once (the page zero before any launch)? */
	if (sets && call == CUDA_SUCCESS && page_zero() == 1)
		replay = "ran at the call";
	else if (sets && g && end == CUDA_SUCCESS &&
		 cuGraphInstantiate(&ge, g, 0) == CUDA_SUCCESS) {
		cuMemsetD8(scratch, 0xab, 4096);
		cuCtxSynchronize();
		if (cuGraphLaunch(ge, CU_STREAM_PER_THREAD) == CUDA_SUCCESS &&
		    cuStreamSynchronize(CU_STREAM_PER_THREAD) == CUDA_SUCCESS)
			replay = page_zero() == 1 ? "launch sets it" : "launch leaves it";
		else
			replay = "launch failed";
		cuGraphExecDestroy(ge);
	}
	if (g)
		cuGraphDestroy(g);
	cuGetErrorName(call, &rn);
	cuGetErrorName(end, &en);
	printf("%-40s %-12s call %-36s end %-36s nodes %zu  %s\n", name, mode_name(mode),
	       rn, en, nodes, replay);
	cuCtxSynchronize();
}

int main(void)
{
	static const CUstreamCaptureMode modes[] = {
		CU_STREAM_CAPTURE_MODE_GLOBAL, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
		CU_STREAM_CAPTURE_MODE_RELAXED
	};
	CUmemAllocationProp p;
	CUdevice dev;
	size_t op, m;
	int same;
	int drv = 0;

	if (cuInit(0) || cuDeviceGet(&dev, 0) ||
	    cuDevicePrimaryCtxRetain(&ctx, dev) || cuCtxSetCurrent(ctx)) {
		printf("capture-probe: no CUDA device\n");
		return 77;
	}
	p = prop();
	cuMemGetAllocationGranularity(&gran, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
	cuDriverGetVersion(&drv);
	if (cuMemAlloc(&scratch, gran) ||
	    cuStreamCreate(&cap_stream, CU_STREAM_NON_BLOCKING) ||
	    cuStreamCreate(&own_stream, CU_STREAM_NON_BLOCKING)) {
		printf("capture-probe: set-up failed\n");
		return 1;
	}
	printf("capture-probe: driver API %d; a global-mode capture runs on thread A\n",
	       drv);
	printf("%-48s %-6s %-12s %s\n", "call", "thread", "its mode", "results");
	for (op = 0; op < NOPS; op++)
		for (same = 1; same >= 0; same--)
			for (m = 0; m < 3; m++)
				one_case(op, same, modes[m]);
	printf("\nthe per-thread default stream captures; its thread makes a synchronous"
	       " per-thread call\n");
	for (op = 0; op < PT_CASES; op++)
		for (m = 0; m < 3; m++)
			pt_case((int)op, modes[m]);
	return 0;
}
