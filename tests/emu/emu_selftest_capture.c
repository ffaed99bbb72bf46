/*
 * emu_selftest_capture.c: the stream capture contracts of the emulation's self-test: the
 * capture calls, each call a capture refuses (and the capture it invalidates), the calls it
 * allows, the legacy stream, capture modes across threads, per-thread streams, events, graphs
 * and their replay, and the runtime stand-in's side of it. Run by emu_selftest.c's main.
 */
#define _GNU_SOURCE
#include <dlfcn.h>

#include "selftest.h"

static struct kvemu_capture_stats cstats(void)
{
    struct kvemu_capture_stats st;

    capture_stats(&st);
    return st;
}

/* Whether no capture, graph or executable graph is left. */
static int capture_clean(void)
{
    struct kvemu_capture_stats st = cstats();

    return st.captures == 0 && st.graphs == 0 && st.graph_execs == 0;
}

static CUstreamCaptureStatus status_of(CUstream s)
{
    CUstreamCaptureStatus st = (CUstreamCaptureStatus)-1;

    if (cuStreamIsCapturing(s, &st) != CUDA_SUCCESS)
        return (CUstreamCaptureStatus)-1;
    return st;
}

/* Set the calling thread's capture mode; returns the one it had. */
static CUstreamCaptureMode set_mode(CUstreamCaptureMode m)
{
    cuThreadExchangeStreamCaptureMode(&m);
    return m;
}

/* End the capture on s, which must have been invalidated: no graph, and s is free again. */
static int end_invalidated(CUstream s, int line)
{
    CUgraph g = (CUgraph)&failed;
    int before = failed;

    if (status_of(s) != CU_STREAM_CAPTURE_STATUS_INVALIDATED) {
        printf("    %s:%d: the capture is not invalidated\n", __FILE__, line);
        failed++;
    }
    EXPECT_CU(cuStreamEndCapture(s, &g), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    EXPECT(g == NULL);
    EXPECT(status_of(s) == CU_STREAM_CAPTURE_STATUS_NONE);
    if (failed != before)
        printf("    (the capture of line %d)\n", line);
    return failed;
}

/* End the capture on s, which must still be valid, and drop its graph. */
static int end_valid(CUstream s, int line)
{
    CUgraph g = NULL;
    int before = failed;

    EXPECT(status_of(s) == CU_STREAM_CAPTURE_STATUS_ACTIVE);
    EXPECT_CU(cuStreamEndCapture(s, &g), CUDA_SUCCESS);
    EXPECT(g != NULL);
    if (g)
        EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);
    if (failed != before)
        printf("    (the capture of line %d)\n", line);
    return failed;
}

int test_capture(void)
{
    enum { N = 1024 };
    static unsigned int src[N];
    CUresult (*begin_v1)(CUstream) = (CUresult (*)(CUstream))dlsym(libcuda, "cuStreamBeginCapture");
    CUresult (*info_v1)(CUstream, CUstreamCaptureStatus *, cuuint64_t *) =
        (CUresult (*)(CUstream, CUstreamCaptureStatus *, cuuint64_t *))dlsym(
            libcuda, "cuStreamGetCaptureInfo");
    CUresult (*info_v2)(CUstream, CUstreamCaptureStatus *, cuuint64_t *, CUgraph *,
                        const CUgraphNode **, size_t *) =
        (CUresult (*)(CUstream, CUstreamCaptureStatus *, cuuint64_t *, CUgraph *,
                      const CUgraphNode **, size_t *))dlsym(libcuda, "cuStreamGetCaptureInfo_v2");
    struct kvemu_capture_stats st0 = cstats(), st;
    CUstreamCaptureStatus cs;
    CUstreamCaptureMode m;
    const CUgraphNode *deps;
    const CUgraphEdgeData *edges;
    CUgraphNode nodes[8];
    CUgraph g, g2;
    CUgraphExec x;
    cuuint64_t id = 0, id1 = 0, id2 = 0;
    size_t nd = 9, nn;
    CUmodule mod;
    CUfunction fill;
    CUdeviceptr a, b, va;
    unsigned long long nwords = N;
    unsigned int seed = 11;
    void *fill_args[] = { &b, &nwords, &seed };
    CUstream s;
    int bad = 0;

    EXPECT(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED == 900 && CUDA_ERROR_STREAM_CAPTURE_INVALIDATED == 901);
    for (int i = 0; i < N; i++)
        src[i] = (unsigned int)i * 3u + 1u;
    EXPECT_CU(cuMemAlloc(&a, sizeof(src)), CUDA_SUCCESS);
    EXPECT_CU(cuMemAlloc(&b, sizeof(src)), CUDA_SUCCESS);
    EXPECT_CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    EXPECT_CU(cuModuleLoadData(&mod, "any image"), CUDA_SUCCESS);
    EXPECT_CU(cuModuleGetFunction(&fill, mod, "kv_fill"), CUDA_SUCCESS);

    /* The thread's mode: global by default, swapped in and out. */
    EXPECT_CU(cuThreadExchangeStreamCaptureMode(NULL), CUDA_ERROR_INVALID_VALUE);
    m = (CUstreamCaptureMode)3;
    EXPECT_CU(cuThreadExchangeStreamCaptureMode(&m), CUDA_ERROR_INVALID_VALUE);
    m = CU_STREAM_CAPTURE_MODE_RELAXED;
    EXPECT_CU(cuThreadExchangeStreamCaptureMode(&m), CUDA_SUCCESS);
    EXPECT(m == CU_STREAM_CAPTURE_MODE_GLOBAL);
    EXPECT_CU(cuThreadExchangeStreamCaptureMode(&m), CUDA_SUCCESS);
    EXPECT(m == CU_STREAM_CAPTURE_MODE_RELAXED);

    /* Bad arguments; the legacy stream cannot capture. */
    EXPECT_CU(cuStreamBeginCapture(s, (CUstreamCaptureMode)3), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuStreamBeginCapture(NULL, CU_STREAM_CAPTURE_MODE_GLOBAL),
              CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    EXPECT_CU(cuStreamBeginCapture(CU_STREAM_LEGACY, CU_STREAM_CAPTURE_MODE_GLOBAL),
              CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    EXPECT_CU(cuStreamBeginCapture((CUstream)&bad, CU_STREAM_CAPTURE_MODE_GLOBAL),
              CUDA_ERROR_INVALID_HANDLE);
    EXPECT_CU(cuStreamIsCapturing(s, NULL), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuStreamEndCapture(s, &g), CUDA_ERROR_ILLEGAL_STATE);
    EXPECT_CU(cuStreamEndCapture(NULL, &g), CUDA_ERROR_ILLEGAL_STATE);
    EXPECT(status_of(s) == CU_STREAM_CAPTURE_STATUS_NONE);
    EXPECT(status_of(NULL) == CU_STREAM_CAPTURE_STATUS_NONE);
    st = cstats();
    EXPECT(st.refused == st0.refused + 2 && strcmp(st.last_refused, "cuStreamBeginCapture_v2") == 0);

    /* A capture: operations on s are recorded, in order, and do not run. */
    EXPECT_CU(cuMemsetD32(a, 0, N), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD32(b, 0, N), CUDA_SUCCESS);
    EXPECT_CU(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
    EXPECT_CU(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_ERROR_ILLEGAL_STATE);
    EXPECT(status_of(s) == CU_STREAM_CAPTURE_STATUS_ACTIVE);
    EXPECT_CU(cuStreamGetCaptureInfo(s, &cs, &id, &g, &deps, &edges, &nd), CUDA_SUCCESS);
    EXPECT(cs == CU_STREAM_CAPTURE_STATUS_ACTIVE && id != 0 && g != NULL && nd == 0);
    EXPECT_CU(cuStreamGetCaptureInfo(s, NULL, &id, NULL, NULL, NULL, NULL),
              CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuStreamGetCaptureInfo(s, &cs, NULL, NULL, NULL, &edges, NULL),
              CUDA_ERROR_INVALID_VALUE);
    EXPECT(info_v1 && info_v1(s, &cs, &id1) == CUDA_SUCCESS && id1 == id);
    EXPECT(info_v2 && info_v2(s, &cs, &id2, &g2, &deps, &nd) == CUDA_SUCCESS && id2 == id &&
           g2 == g && nd == 0);

    EXPECT_CU(cuMemsetD32Async(a, 0x77, N, s), CUDA_SUCCESS);
    EXPECT(((unsigned int *)a)[5] == 0);                  /* recorded, not run */
    EXPECT_CU(cuStreamGetCaptureInfo(s, &cs, NULL, NULL, &deps, &edges, &nd), CUDA_SUCCESS);
    nn = 8;
    EXPECT_CU(cuGraphGetNodes(g, nodes, &nn), CUDA_SUCCESS);
    EXPECT(nd == 1 && nn == 1 && deps && deps[0] == nodes[0] && edges &&
           edges[0].type == 0 && nodes[1] == NULL);
    EXPECT_CU(cuMemcpyHtoDAsync(a, src, sizeof(src), s), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD16Async(b, 0x1234, 2 * N, s), CUDA_SUCCESS);
    EXPECT_CU(cuLaunchKernel(fill, 1, 1, 1, 64, 1, 1, 0, s, fill_args, NULL), CUDA_SUCCESS);
    seed = 99;                                            /* arguments were copied at launch */
    EXPECT_CU(cuMemcpyDtoDAsync(b, a, 16, s), CUDA_SUCCESS);
    EXPECT(((unsigned int *)a)[5] == 0 && ((unsigned int *)b)[5] == 0);
    st = cstats();
    EXPECT(st.captured_ops == st0.captured_ops + 5 && st.captures == st0.captures + 1);

    /* Invalid arguments are still refused before anything is recorded. */
    EXPECT_CU(cuMemsetD8Async((CUdeviceptr)src, 0, 4, s), CUDA_ERROR_INVALID_VALUE);
    EXPECT(cstats().captured_ops == st.captured_ops);

    EXPECT_CU(cuStreamEndCapture(s, NULL), CUDA_ERROR_INVALID_VALUE);
    g2 = NULL;
    EXPECT_CU(cuStreamEndCapture(s, &g2), CUDA_SUCCESS);
    EXPECT(g2 == g && status_of(s) == CU_STREAM_CAPTURE_STATUS_NONE);
    EXPECT_CU(cuStreamGetCaptureInfo(s, &cs, &id, NULL, NULL, NULL, NULL), CUDA_SUCCESS);
    EXPECT(cs == CU_STREAM_CAPTURE_STATUS_NONE);
    EXPECT_CU(cuStreamEndCapture(s, &g2), CUDA_ERROR_ILLEGAL_STATE);
    EXPECT_CU(cuGraphGetNodes(g, NULL, &nn), CUDA_SUCCESS);
    EXPECT(nn == 5);
    nn = 2;
    EXPECT_CU(cuGraphGetNodes(g, nodes, &nn), CUDA_SUCCESS);
    EXPECT(nn == 2);
    EXPECT_CU(cuGraphGetNodes(g, nodes, NULL), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuGraphGetNodes((CUgraph)&bad, NULL, &nn), CUDA_ERROR_INVALID_VALUE);
    EXPECT(((unsigned int *)a)[5] == 0);
    st = cstats();
    EXPECT(st.begun == st0.begun + 1 && st.ended == st0.ended + 1 &&
           st.invalidated == st0.invalidated);

    /* A capture that begins again starts a new sequence. */
    EXPECT_CU(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
    EXPECT_CU(cuStreamGetCaptureInfo(s, &cs, &id2, NULL, NULL, NULL, NULL), CUDA_SUCCESS);
    EXPECT(id2 > id);
    end_valid(s, __LINE__);
    /* The legacy variant without a mode. */
    EXPECT(begin_v1 && begin_v1(s) == CUDA_SUCCESS);
    EXPECT(status_of(s) == CU_STREAM_CAPTURE_STATUS_ACTIVE);
    end_valid(s, __LINE__);

    /* The graph runs at each launch, in recording order; the executable outlives the graph. */
    EXPECT_CU(cuGraphInstantiate(&x, g, 0), CUDA_SUCCESS);
    EXPECT_CU(cuGraphInstantiate(&x, (CUgraph)&bad, 0), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuGraphInstantiate(NULL, g, 0), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuGraphInstantiate(&x, g, 1ULL << 40), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);
    EXPECT_CU(cuGraphDestroy(g), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuGraphLaunch(x, s), CUDA_SUCCESS);
    EXPECT(((unsigned int *)a)[5] == 16 && ((unsigned int *)a)[N - 1] == src[N - 1]);
    EXPECT(((unsigned int *)b)[0] == 1 && ((unsigned int *)b)[3] == 10);   /* the copy, last */
    EXPECT(((unsigned int *)b)[4] == (11u ^ (4u * 2654435761u)));          /* seed 11 */
    memset((void *)a, 0, sizeof(src));
    EXPECT_CU(cuGraphLaunch(x, NULL), CUDA_SUCCESS);
    EXPECT(((unsigned int *)a)[7] == 22);
    EXPECT_CU(cuGraphLaunch(x, (CUstream)&bad), CUDA_ERROR_INVALID_HANDLE);
    EXPECT_CU(cuGraphLaunch((CUgraphExec)&bad, s), CUDA_ERROR_INVALID_VALUE);

    /* A graph launched into a capturing stream is recorded there, not run. */
    EXPECT_CU(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
    memset((void *)a, 0, sizeof(src));
    EXPECT_CU(cuGraphLaunch(x, s), CUDA_SUCCESS);
    EXPECT(((unsigned int *)a)[7] == 0);
    EXPECT_CU(cuStreamGetCaptureInfo(s, &cs, NULL, &g, NULL, NULL, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuGraphDestroy(g), CUDA_ERROR_INVALID_VALUE);       /* the capture's own */
    EXPECT_CU(cuGraphInstantiate(&x, g, 0), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuStreamEndCapture(s, &g), CUDA_SUCCESS);
    EXPECT_CU(cuGraphGetNodes(g, NULL, &nn), CUDA_SUCCESS);
    EXPECT(nn == 5);
    EXPECT_CU(cuGraphExecDestroy(x), CUDA_SUCCESS);
    EXPECT_CU(cuGraphExecDestroy(x), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuGraphInstantiate(&x, g, CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH),
              CUDA_SUCCESS);
    EXPECT_CU(cuGraphLaunch(x, s), CUDA_SUCCESS);
    EXPECT(((unsigned int *)a)[7] == 22);
    EXPECT_CU(cuGraphExecDestroy(x), CUDA_SUCCESS);
    EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);

    /* A 2D memset is recorded whole and replayed row by row. */
    memset((void *)a, 0, sizeof(src));
    EXPECT_CU(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD2D8Async(a, 64, 0x5a, 16, 4, s), CUDA_SUCCESS);
    EXPECT(((unsigned char *)a)[0] == 0);
    EXPECT_CU(cuStreamEndCapture(s, &g), CUDA_SUCCESS);
    EXPECT_CU(cuGraphGetNodes(g, NULL, &nn), CUDA_SUCCESS);
    EXPECT(nn == 1);
    EXPECT_CU(cuGraphInstantiate(&x, g, 0), CUDA_SUCCESS);
    EXPECT_CU(cuGraphLaunch(x, s), CUDA_SUCCESS);
    EXPECT(((unsigned char *)a)[3 * 64 + 15] == 0x5a && ((unsigned char *)a)[16] == 0 &&
           ((unsigned char *)a)[4 * 64] == 0);
    EXPECT_CU(cuGraphExecDestroy(x), CUDA_SUCCESS);
    EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);

    /* A graph's replay faults like the operation it recorded. */
    EXPECT_CU(cuMemAddressReserve(&va, PAGE, 0, 0, 0), CUDA_SUCCESS);
    EXPECT_CU(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD8Async(va, 1, 8, s), CUDA_SUCCESS);
    EXPECT_CU(cuStreamEndCapture(s, &g), CUDA_SUCCESS);
    EXPECT_CU(cuGraphInstantiate(&x, g, 0), CUDA_SUCCESS);
    EXPECT_CU(cuGraphLaunch(x, s), CUDA_ERROR_ILLEGAL_ADDRESS);
    EXPECT_CU(cuGraphExecDestroy(x), CUDA_SUCCESS);
    EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);
    EXPECT_CU(cuMemAddressFree(va, PAGE), CUDA_SUCCESS);

    EXPECT_CU(cuModuleUnload(mod), CUDA_SUCCESS);
    EXPECT_CU(cuStreamDestroy(s), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(a), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(b), CUDA_SUCCESS);
    EXPECT(capture_clean() && usage_clean(0));
    return failed;
}

/* Every call a global capture refuses on the capturing thread: 900, and the capture invalidated. */
int test_capture_refused(void)
{
    CUresult (*end_v1)(CUstream, CUgraph *) =
        (CUresult (*)(CUstream, CUgraph *))dlsym(libcuda, "cuStreamEndCapture");
    struct kvemu_capture_stats st0 = cstats(), st;
    struct kvemu_usage u;
    unsigned char host[16] = { 0 };
    CUgraph g = (CUgraph)&failed;
    CUdeviceptr a, c, d = 0;
    CUstream s, t;
    CUevent e;

    EXPECT(end_v1 != NULL);
    EXPECT_CU(cuMemAlloc(&a, 4096), CUDA_SUCCESS);
    EXPECT_CU(cuMemAlloc(&c, 4096), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD8(a, 0, 4096), CUDA_SUCCESS);
    EXPECT_CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    EXPECT_CU(cuStreamCreate(&t, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    EXPECT_CU(cuEventCreate(&e, 0), CUDA_SUCCESS);
    EXPECT_CU(cuEventRecord(e, t), CUDA_SUCCESS);

#define REFUSED(call)                                                                   \
    do {                                                                                \
        EXPECT_CU(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS); \
        EXPECT_CU(call, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);                          \
        end_invalidated(s, __LINE__);                                                   \
    } while (0)

    REFUSED(cuStreamSynchronize(s));            /* the capturing stream itself */
    REFUSED(cuStreamQuery(s));
    REFUSED(cuStreamSynchronize(t));            /* any other stream */
    REFUSED(cuStreamQuery(t));
    REFUSED(cuStreamSynchronize(NULL));
    REFUSED(cuStreamSynchronize(CU_STREAM_PER_THREAD));
    REFUSED(cuCtxSynchronize());
    REFUSED(cuEventSynchronize(e));
    REFUSED(cuEventQuery(e));
    REFUSED(cuMemcpyHtoD(a, host, 16));         /* synchronous copies the host waits for */
    REFUSED(cuMemcpyDtoH(host, a + 64, 16));
    REFUSED(cuMemcpy(a, (CUdeviceptr)host, 16));
    REFUSED(cuMemcpy((CUdeviceptr)host, a, 16));
    REFUSED(cuMemAlloc(&d, 1));                 /* legacy allocation and free */
    REFUSED(cuMemFree(c));
    REFUSED(cuMemFreeAsync(c, s));              /* a free node: graphs here have none */
    REFUSED(cuStreamDestroy(s));                /* its capture must end first */
#undef REFUSED
    EXPECT(((unsigned char *)a)[0] == 0 && ((unsigned char *)a)[15] == 0);   /* nothing ran */
    usage(0, &u);
    EXPECT(u.allocs == 2);                                    /* nothing allocated or freed */
    st = cstats();
    EXPECT(st.invalidated == st0.invalidated + 17 && st.begun == st0.begun + 17 &&
           st.ended == st0.ended);
    /* 17 refused calls, and 17 ends of an invalidated capture. */
    EXPECT(st.refused == st0.refused + 34);

    /* An invalidated capture refuses further work on its stream (901), until it ends. */
    EXPECT_CU(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
    EXPECT_CU(cuCtxSynchronize(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    EXPECT_CU(cuCtxSynchronize(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    EXPECT_CU(cuMemsetD8Async(a, 1, 16, s), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    EXPECT_CU(cuEventRecord(e, s), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    EXPECT(cstats().invalidated == st.invalidated + 1);       /* counted once */
    EXPECT(((unsigned char *)a)[0] == 0);
    EXPECT(end_v1 && end_v1(s, &g) == CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    EXPECT(g == NULL);
    EXPECT(status_of(s) == CU_STREAM_CAPTURE_STATUS_NONE);

    /* After the capture everything works again. */
    EXPECT_CU(cuStreamSynchronize(s), CUDA_SUCCESS);
    EXPECT_CU(cuCtxSynchronize(), CUDA_SUCCESS);
    EXPECT(d == 0);
    host[0] = 3;
    EXPECT_CU(cuMemcpyHtoD(a, host, 16), CUDA_SUCCESS);
    EXPECT(((unsigned char *)a)[0] == 3);
    EXPECT_CU(cuEventDestroy(e), CUDA_SUCCESS);
    EXPECT_CU(cuStreamDestroy(s), CUDA_SUCCESS);
    EXPECT_CU(cuStreamDestroy(t), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(a), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(c), CUDA_SUCCESS);
    EXPECT(capture_clean() && usage_clean(0));
    return failed;
}

/* What a global capture lets the capturing thread do: these succeed and keep the capture. */
int test_capture_allowed(void)
{
    CUmemAllocationProp p = prop_for(0);
    CUmemGenericAllocationHandle h;
    struct kvemu_capture_stats st0 = cstats(), st;
    CUdeviceptr a, b, x, va;
    CUstream s, t, u2;
    CUevent e;
    size_t f, tot;
    CUcontext c;

    EXPECT_CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    EXPECT_CU(cuStreamCreate(&t, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    EXPECT_CU(cuMemAlloc(&b, 4096), CUDA_SUCCESS);
    EXPECT_CU(cuMemAlloc(&x, 4096), CUDA_SUCCESS);
    EXPECT_CU(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);

    /* A stream-ordered free on a stream that does not capture; on the capturing one, a pointer
     * that is no allocation is a bad argument. */
    EXPECT_CU(cuMemFreeAsync(x, t), CUDA_SUCCESS);
    EXPECT_CU(cuMemFreeAsync(x, s), CUDA_ERROR_INVALID_VALUE);

    /* A legacy allocation in relaxed mode, as PyTorch makes its allocations during capture. */
    EXPECT(set_mode(CU_STREAM_CAPTURE_MODE_RELAXED) == CU_STREAM_CAPTURE_MODE_GLOBAL);
    EXPECT_CU(cuMemAlloc(&a, 4096), CUDA_SUCCESS);
    EXPECT(set_mode(CU_STREAM_CAPTURE_MODE_GLOBAL) == CU_STREAM_CAPTURE_MODE_RELAXED);
    EXPECT_CU(cuMemGetInfo(&f, &tot), CUDA_SUCCESS);
    EXPECT(f == DEV_BYTES - 2 * PAGE);
    /* Synchronous memsets and device-to-device copies: the host does not wait for them. */
    EXPECT_CU(cuMemsetD8(b, 0x11, 8), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD16(b + 8, 0x2222, 4), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD32(b + 16, 0x33333333, 2), CUDA_SUCCESS);
    EXPECT_CU(cuMemcpyDtoD(b + 24, b, 24), CUDA_SUCCESS);
    EXPECT_CU(cuMemcpy(b + 48, b, 48), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD2D32(b + 128, 64, 0x44444444, 2, 3), CUDA_SUCCESS);
    EXPECT(((unsigned char *)b)[95] == 0x33 && ((unsigned char *)b)[24] == 0x11);
    EXPECT(((unsigned char *)b)[128 + 2 * 64 + 7] == 0x44 && ((unsigned char *)b)[128 + 8] == 0);
    /* The VMM calls. */
    EXPECT_CU(cuMemAddressReserve(&va, 2 * PAGE, 0, 0, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemCreate(&h, PAGE, &p, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemMap(va, PAGE, 0, h, 0), CUDA_SUCCESS);
    EXPECT_CU(set_access(va, PAGE, CU_MEM_ACCESS_FLAGS_PROT_READWRITE), CUDA_SUCCESS);
    /* Asynchronous work on a stream that does not capture runs at once. */
    EXPECT_CU(cuMemsetD8Async(va, 0x5c, 64, t), CUDA_SUCCESS);
    EXPECT_CU(cuMemcpyDtoDAsync(a, va, 64, t), CUDA_SUCCESS);
    EXPECT(((unsigned char *)a)[63] == 0x5c);
    EXPECT_CU(cuMemUnmap(va, PAGE), CUDA_SUCCESS);
    EXPECT_CU(cuMemRelease(h), CUDA_SUCCESS);
    EXPECT_CU(cuMemAddressFree(va, 2 * PAGE), CUDA_SUCCESS);
    /* Objects, contexts, queries of capture state. */
    EXPECT_CU(cuStreamCreate(&u2, 0), CUDA_SUCCESS);
    EXPECT_CU(cuStreamDestroy(u2), CUDA_SUCCESS);
    EXPECT_CU(cuEventCreate(&e, 0), CUDA_SUCCESS);
    EXPECT_CU(cuEventRecord(e, t), CUDA_SUCCESS);
    EXPECT_CU(cuEventDestroy(e), CUDA_SUCCESS);
    EXPECT_CU(cuCtxGetCurrent(&c), CUDA_SUCCESS);
    EXPECT_CU(cuCtxPushCurrent(c), CUDA_SUCCESS);
    EXPECT_CU(cuCtxPopCurrent(&c), CUDA_SUCCESS);
    EXPECT(status_of(t) == CU_STREAM_CAPTURE_STATUS_NONE);
    st = cstats();
    EXPECT(st.eager_ops == st0.eager_ops + 9 && st.invalidated == st0.invalidated &&
           st.refused == st0.refused && st.captured_ops == st0.captured_ops);
    end_valid(s, __LINE__);
    EXPECT_CU(cuMemFree(b), CUDA_SUCCESS);

    /* In relaxed mode the capturing thread may free and synchronize other streams. */
    EXPECT_CU(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
    EXPECT(set_mode(CU_STREAM_CAPTURE_MODE_RELAXED) == CU_STREAM_CAPTURE_MODE_GLOBAL);
    EXPECT_CU(cuStreamSynchronize(t), CUDA_SUCCESS);
    EXPECT_CU(cuEventCreate(&e, 0), CUDA_SUCCESS);
    EXPECT_CU(cuEventSynchronize(e), CUDA_SUCCESS);
    EXPECT_CU(cuEventQuery(e), CUDA_SUCCESS);
    EXPECT_CU(cuEventDestroy(e), CUDA_SUCCESS);
    /* s does not block the legacy stream. */
    EXPECT_CU(cuMemcpyHtoD(a, &f, sizeof(f)), CUDA_SUCCESS);
    EXPECT(*(size_t *)a == f);
    EXPECT_CU(cuMemFree(a), CUDA_SUCCESS);
    /* ...but never synchronize the capturing stream or its context. */
    EXPECT_CU(cuStreamQuery(s), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    end_invalidated(s, __LINE__);
    EXPECT_CU(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
    EXPECT_CU(cuCtxSynchronize(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    end_invalidated(s, __LINE__);
    /* Thread-local mode on the capturing thread: its own global capture still binds it. */
    set_mode(CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
    EXPECT_CU(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
    EXPECT_CU(cuStreamSynchronize(t), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    end_invalidated(s, __LINE__);
    /* A capture begun in relaxed mode does not bind the thread that began it. */
    set_mode(CU_STREAM_CAPTURE_MODE_GLOBAL);
    EXPECT_CU(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_RELAXED), CUDA_SUCCESS);
    EXPECT_CU(cuStreamSynchronize(t), CUDA_SUCCESS);
    EXPECT_CU(cuMemAlloc(&a, 1), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(a), CUDA_SUCCESS);
    EXPECT_CU(cuStreamSynchronize(s), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    end_invalidated(s, __LINE__);

    EXPECT_CU(cuStreamDestroy(s), CUDA_SUCCESS);
    EXPECT_CU(cuStreamDestroy(t), CUDA_SUCCESS);
    EXPECT(capture_clean() && usage_clean(0));
    return failed;
}

/* The legacy stream while a blocking stream captures: unusable, in any mode. */
int test_capture_legacy(void)
{
    CUstreamCaptureStatus cs;
    CUdeviceptr a;
    CUstream blocking, nonblocking, other;
    CUevent e;

    EXPECT_CU(cuMemAlloc(&a, 4096), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD8(a, 0, 4096), CUDA_SUCCESS);
    EXPECT_CU(cuStreamCreate(&blocking, 0), CUDA_SUCCESS);
    EXPECT_CU(cuStreamCreate(&nonblocking, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    EXPECT_CU(cuEventCreate(&e, 0), CUDA_SUCCESS);
    set_mode(CU_STREAM_CAPTURE_MODE_RELAXED);

#define IMPLICIT(call)                                                                   \
    do {                                                                                 \
        EXPECT_CU(cuStreamBeginCapture(blocking, CU_STREAM_CAPTURE_MODE_RELAXED),        \
                  CUDA_SUCCESS);                                                         \
        EXPECT_CU(call, CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);                             \
        end_invalidated(blocking, __LINE__);                                            \
    } while (0)

    IMPLICIT(cuMemsetD8(a, 1, 16));
    IMPLICIT(cuMemcpyHtoD(a, &cs, sizeof(cs)));
    IMPLICIT(cuMemsetD8Async(a, 1, 16, NULL));
    IMPLICIT(cuMemsetD8Async(a, 1, 16, CU_STREAM_LEGACY));
    IMPLICIT(cuMemcpyAsync(a, a + 64, 16, NULL));
    IMPLICIT(cuEventRecord(e, NULL));
    IMPLICIT(cuStreamSynchronize(NULL));
    IMPLICIT(cuStreamQuery(CU_STREAM_LEGACY));
#undef IMPLICIT
    EXPECT(((unsigned char *)a)[0] == 0);

    /* Asking the legacy stream's capture state says so, but invalidates nothing. */
    EXPECT_CU(cuStreamBeginCapture(blocking, CU_STREAM_CAPTURE_MODE_RELAXED), CUDA_SUCCESS);
    EXPECT_CU(cuStreamIsCapturing(NULL, &cs), CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
    EXPECT_CU(cuStreamGetCaptureInfo(CU_STREAM_LEGACY, &cs, NULL, NULL, NULL, NULL, NULL),
              CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
    EXPECT_CU(cuMemsetD8Async(a, 1, 16, nonblocking), CUDA_SUCCESS);  /* other streams run */
    EXPECT(((unsigned char *)a)[0] == 1);
    /* Without a current context there is no legacy stream of the device to conflict with. */
    EXPECT_CU(cuCtxPopCurrent(NULL), CUDA_SUCCESS);
    EXPECT_CU(cuEventRecord(e, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuCtxPushCurrent(ctx0), CUDA_SUCCESS);
    end_valid(blocking, __LINE__);

    /* A non-blocking stream's capture leaves the legacy stream alone. */
    EXPECT_CU(cuStreamBeginCapture(nonblocking, CU_STREAM_CAPTURE_MODE_RELAXED), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD8(a, 2, 16), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD8Async(a + 16, 2, 16, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuStreamSynchronize(NULL), CUDA_SUCCESS);
    EXPECT_CU(cuStreamIsCapturing(NULL, &cs), CUDA_SUCCESS);
    EXPECT(cs == CU_STREAM_CAPTURE_STATUS_NONE);
    EXPECT(((unsigned char *)a)[31] == 2);
    end_valid(nonblocking, __LINE__);

    /* A blocking stream of the other device does not block this device's legacy stream. */
    EXPECT_CU(cuCtxPushCurrent(ctx1), CUDA_SUCCESS);
    EXPECT_CU(cuStreamCreate(&other, 0), CUDA_SUCCESS);
    EXPECT_CU(cuStreamBeginCapture(other, CU_STREAM_CAPTURE_MODE_RELAXED), CUDA_SUCCESS);
    EXPECT_CU(cuCtxPopCurrent(NULL), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD8(a, 3, 16), CUDA_SUCCESS);
    EXPECT(((unsigned char *)a)[15] == 3);
    EXPECT_CU(cuCtxSynchronize(), CUDA_SUCCESS);       /* and this context does not capture */
    EXPECT_CU(cuCtxPushCurrent(ctx1), CUDA_SUCCESS);
    EXPECT_CU(cuCtxSynchronize(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    end_invalidated(other, __LINE__);
    EXPECT_CU(cuStreamDestroy(other), CUDA_SUCCESS);
    EXPECT_CU(cuCtxPopCurrent(NULL), CUDA_SUCCESS);

    set_mode(CU_STREAM_CAPTURE_MODE_GLOBAL);
    EXPECT_CU(cuEventDestroy(e), CUDA_SUCCESS);
    EXPECT_CU(cuStreamDestroy(blocking), CUDA_SUCCESS);
    EXPECT_CU(cuStreamDestroy(nonblocking), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(a), CUDA_SUCCESS);
    EXPECT(capture_clean() && usage_clean(0) && usage_clean(1));
    return failed;
}

/* One call made by another thread, in a capture mode of its own. */
enum peer_call { PEER_SYNC, PEER_FREE, PEER_MEMSET, PEER_CTX_SYNC, PEER_END, PEER_CAPTURE_FREE };
struct peer {
    enum peer_call call;
    CUstreamCaptureMode mode;
    CUcontext ctx;
    CUstream s;
    CUdeviceptr p;
    CUgraph graph;
    CUresult got;
};

static void *peer_main(void *arg)
{
    struct peer *w = arg;
    CUstreamCaptureMode m = w->mode;

    w->got = CUDA_ERROR_UNKNOWN;
    if (cuCtxPushCurrent(w->ctx) != CUDA_SUCCESS ||
        cuThreadExchangeStreamCaptureMode(&m) != CUDA_SUCCESS)
        return NULL;
    switch (w->call) {
    case PEER_SYNC: w->got = cuStreamSynchronize(w->s); break;
    case PEER_FREE: w->got = cuMemFree(w->p); break;
    case PEER_MEMSET: w->got = cuMemsetD8(w->p, 0x42, 8); break;
    case PEER_CTX_SYNC: w->got = cuCtxSynchronize(); break;
    case PEER_END: w->got = cuStreamEndCapture(w->s, &w->graph); break;
    case PEER_CAPTURE_FREE:
        /* A global capture of its own on s, then a free: what the free gives, if it ends. */
        if (cuStreamBeginCapture(w->s, CU_STREAM_CAPTURE_MODE_GLOBAL) != CUDA_SUCCESS)
            break;
        w->got = cuMemFree(w->p);
        if (cuStreamEndCapture(w->s, &w->graph) != CUDA_ERROR_STREAM_CAPTURE_INVALIDATED)
            w->got = CUDA_ERROR_UNKNOWN;
        break;
    }
    cuCtxPopCurrent(NULL);
    return NULL;
}

/* Make call on a new thread in mode, with context ctx; returns its result. */
static CUresult on_peer(enum peer_call call, CUstreamCaptureMode mode, CUcontext ctx, CUstream s,
                        CUdeviceptr p)
{
    struct peer w = { .call = call, .mode = mode, .ctx = ctx, .s = s, .p = p };
    pthread_t th;

    if (pthread_create(&th, NULL, peer_main, &w) != 0)
        return CUDA_ERROR_OPERATING_SYSTEM;
    pthread_join(th, NULL);
    if (w.graph)
        cuGraphDestroy(w.graph);
    return w.got;
}

/*
 * Modes across threads: a global capture on this thread binds another thread in global mode,
 * not one in thread-local or relaxed mode; thread-local and relaxed captures bind no other
 * thread. The other thread's calls are on its own stream, or free its own memory.
 */
int test_capture_threads(void)
{
    const CUstreamCaptureMode G = CU_STREAM_CAPTURE_MODE_GLOBAL,
                              T = CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                              R = CU_STREAM_CAPTURE_MODE_RELAXED;
    CUresult (*begin_v1)(CUstream) = (CUresult (*)(CUstream))dlsym(libcuda, "cuStreamBeginCapture");
    struct kvemu_capture_stats st0 = cstats(), st;
    CUdeviceptr a, b;
    CUstream s, t;

    EXPECT_CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    EXPECT_CU(cuStreamCreate(&t, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    EXPECT_CU(cuMemAlloc(&a, 4096), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD8(a, 0, 8), CUDA_SUCCESS);

    /* A global capture here: another thread in global mode may not synchronize anything. */
    EXPECT_CU(cuStreamBeginCapture(s, G), CUDA_SUCCESS);
    EXPECT_CU(on_peer(PEER_SYNC, G, ctx0, t, 0), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    end_invalidated(s, __LINE__);
    EXPECT_CU(cuMemAlloc(&b, 1), CUDA_SUCCESS);
    EXPECT_CU(cuStreamBeginCapture(s, G), CUDA_SUCCESS);
    EXPECT_CU(on_peer(PEER_FREE, G, ctx0, 0, b), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    end_invalidated(s, __LINE__);
    /* Even on another device: the rule is about threads, not contexts. */
    EXPECT_CU(cuStreamBeginCapture(s, G), CUDA_SUCCESS);
    EXPECT_CU(on_peer(PEER_CTX_SYNC, G, ctx1, 0, 0), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    end_invalidated(s, __LINE__);
    /* The legacy variant's captures are global too. */
    EXPECT(begin_v1 && begin_v1(s) == CUDA_SUCCESS);
    EXPECT_CU(on_peer(PEER_SYNC, G, ctx0, t, 0), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    end_invalidated(s, __LINE__);

    /* ...but a thread in relaxed or thread-local mode may, and the capture goes on. */
    EXPECT_CU(cuStreamBeginCapture(s, G), CUDA_SUCCESS);
    EXPECT_CU(on_peer(PEER_SYNC, R, ctx0, t, 0), CUDA_SUCCESS);
    EXPECT_CU(on_peer(PEER_SYNC, T, ctx0, t, 0), CUDA_SUCCESS);
    /* A synchronous memset binds no one: the host does not wait, and s is non-blocking. */
    EXPECT_CU(on_peer(PEER_MEMSET, G, ctx0, 0, a), CUDA_SUCCESS);
    EXPECT(((unsigned char *)a)[7] == 0x42);
    EXPECT_CU(on_peer(PEER_FREE, T, ctx0, 0, b), CUDA_SUCCESS);
    EXPECT_CU(on_peer(PEER_CTX_SYNC, R, ctx1, 0, 0), CUDA_SUCCESS);
    /* Not even relaxed mode lets it wait for the capturing stream or its context. */
    EXPECT_CU(on_peer(PEER_CTX_SYNC, R, ctx0, 0, 0), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    end_invalidated(s, __LINE__);
    EXPECT_CU(cuStreamBeginCapture(s, G), CUDA_SUCCESS);
    EXPECT_CU(on_peer(PEER_SYNC, R, ctx0, s, 0), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    end_invalidated(s, __LINE__);

    /* A thread-local or relaxed capture binds no other thread, even one in global mode. */
    EXPECT_CU(cuStreamBeginCapture(s, T), CUDA_SUCCESS);
    EXPECT_CU(on_peer(PEER_SYNC, G, ctx0, t, 0), CUDA_SUCCESS);
    EXPECT_CU(cuStreamSynchronize(t), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);  /* but this one */
    end_invalidated(s, __LINE__);
    EXPECT_CU(cuStreamBeginCapture(s, R), CUDA_SUCCESS);
    EXPECT_CU(on_peer(PEER_SYNC, G, ctx0, t, 0), CUDA_SUCCESS);
    EXPECT_CU(cuStreamSynchronize(t), CUDA_SUCCESS);
    end_valid(s, __LINE__);

    /*
     * Global captures on two threads: the other thread's free, refused, invalidates both its
     * own capture and this one (it ends its own before it returns).
     */
    EXPECT_CU(cuMemAlloc(&b, 1), CUDA_SUCCESS);
    EXPECT_CU(cuStreamBeginCapture(s, G), CUDA_SUCCESS);
    EXPECT_CU(on_peer(PEER_CAPTURE_FREE, G, ctx0, t, b), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    end_invalidated(s, __LINE__);
    EXPECT(status_of(t) == CU_STREAM_CAPTURE_STATUS_NONE);
    EXPECT_CU(cuMemFree(b), CUDA_SUCCESS);

    /* Ending a capture: from its own thread, unless it was begun in relaxed mode. */
    EXPECT_CU(cuStreamBeginCapture(s, G), CUDA_SUCCESS);
    EXPECT_CU(on_peer(PEER_END, R, ctx0, s, 0), CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD);
    EXPECT(status_of(s) == CU_STREAM_CAPTURE_STATUS_ACTIVE);
    end_valid(s, __LINE__);
    EXPECT_CU(cuStreamBeginCapture(s, T), CUDA_SUCCESS);
    EXPECT_CU(on_peer(PEER_END, G, ctx0, s, 0), CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD);
    end_valid(s, __LINE__);
    EXPECT_CU(cuStreamBeginCapture(s, R), CUDA_SUCCESS);
    EXPECT_CU(on_peer(PEER_END, G, ctx0, s, 0), CUDA_SUCCESS);
    EXPECT(status_of(s) == CU_STREAM_CAPTURE_STATUS_NONE);

    st = cstats();
    EXPECT(st.invalidated == st0.invalidated + 9 && st.ended == st0.ended + 4);
    EXPECT_CU(cuStreamDestroy(s), CUDA_SUCCESS);
    EXPECT_CU(cuStreamDestroy(t), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(a), CUDA_SUCCESS);
    EXPECT(capture_clean() && usage_clean(0));
    return failed;
}

/* A thread capturing its per-thread default stream, through the _ptsz entry points. */
static void *ptsz_thread(void *arg)
{
    CUresult (*begin_pt)(CUstream, CUstreamCaptureMode) =
        (CUresult (*)(CUstream, CUstreamCaptureMode))dlsym(libcuda, "cuStreamBeginCapture_v2_ptsz");
    CUresult (*capturing_pt)(CUstream, CUstreamCaptureStatus *) =
        (CUresult (*)(CUstream, CUstreamCaptureStatus *))dlsym(libcuda, "cuStreamIsCapturing_ptsz");
    CUresult (*end_pt)(CUstream, CUgraph *) =
        (CUresult (*)(CUstream, CUgraph *))dlsym(libcuda, "cuStreamEndCapture_ptsz");
    CUresult (*info_pt)(CUstream, CUstreamCaptureStatus *, cuuint64_t *, CUgraph *,
                        const CUgraphNode **, const CUgraphEdgeData **, size_t *) =
        (CUresult (*)(CUstream, CUstreamCaptureStatus *, cuuint64_t *, CUgraph *,
                      const CUgraphNode **, const CUgraphEdgeData **, size_t *))dlsym(
            libcuda, "cuStreamGetCaptureInfo_v3_ptsz");
    CUdeviceptr a = *(CUdeviceptr *)arg;
    CUstreamCaptureStatus cs;
    cuuint64_t id = 0;
    CUgraph g = NULL;
    size_t n = 0;

    EXPECT(begin_pt && capturing_pt && end_pt && info_pt);
    if (!begin_pt || !capturing_pt || !end_pt || !info_pt)
        return NULL;
    EXPECT_CU(cuCtxPushCurrent(ctx0), CUDA_SUCCESS);
    EXPECT_CU(begin_pt(NULL, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), CUDA_SUCCESS);
    EXPECT_CU(capturing_pt(NULL, &cs), CUDA_SUCCESS);
    EXPECT(cs == CU_STREAM_CAPTURE_STATUS_ACTIVE);
    EXPECT(status_of(CU_STREAM_PER_THREAD) == CU_STREAM_CAPTURE_STATUS_ACTIVE);
    /* The per-thread stream blocks the legacy stream. */
    EXPECT_CU(cuStreamIsCapturing(NULL, &cs), CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
    EXPECT_CU(cuMemsetD8Async(a, 9, 4, CU_STREAM_PER_THREAD), CUDA_SUCCESS);
    EXPECT(((unsigned char *)a)[0] == 0);
    EXPECT_CU(info_pt(NULL, &cs, &id, &g, NULL, NULL, &n), CUDA_SUCCESS);
    EXPECT(id != 0 && g != NULL && n == 1);
    g = NULL;
    EXPECT_CU(end_pt(NULL, &g), CUDA_SUCCESS);
    EXPECT(g != NULL);
    if (g)
        EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);
    EXPECT_CU(capturing_pt(NULL, &cs), CUDA_SUCCESS);
    EXPECT(cs == CU_STREAM_CAPTURE_STATUS_NONE);
    EXPECT_CU(cuCtxPopCurrent(NULL), CUDA_SUCCESS);
    return NULL;
}

int test_capture_ptsz(void)
{
    static const struct {
        const char *symbol;
        int version;
        cuuint64_t flags;
        const char *want;
    } lookups[] = {
        { "cuStreamBeginCapture", 13000, 0, "cuStreamBeginCapture_v2" },
        { "cuStreamBeginCapture", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
          "cuStreamBeginCapture_v2_ptsz" },
        { "cuStreamBeginCapture", 10000, 0, "cuStreamBeginCapture" },
        { "cuStreamBeginCapture", 10000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
          "cuStreamBeginCapture_ptsz" },
        { "cuStreamEndCapture", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
          "cuStreamEndCapture_ptsz" },
        { "cuStreamIsCapturing", 13000, CU_GET_PROC_ADDRESS_LEGACY_STREAM, "cuStreamIsCapturing" },
        { "cuStreamGetCaptureInfo", 13000, 0, "cuStreamGetCaptureInfo_v3" },
        { "cuStreamGetCaptureInfo", 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
          "cuStreamGetCaptureInfo_v2_ptsz" },
        { "cuStreamGetCaptureInfo", 10010, 0, "cuStreamGetCaptureInfo" },
        { "cuThreadExchangeStreamCaptureMode", 13000,
          CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, "cuThreadExchangeStreamCaptureMode" },
        { "cuGraphInstantiateWithFlags", 13000, 0, "cuGraphInstantiateWithFlags" },
        { "cuMemsetD8Async", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
          "cuMemsetD8Async_ptsz" },
        { "cuMemsetD8", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
          "cuMemsetD8_v2_ptds" },
        { "cuMemsetD8", 13000, CU_GET_PROC_ADDRESS_LEGACY_STREAM, "cuMemsetD8_v2" },
        { "cuMemcpy", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, "cuMemcpy_ptds" },
        { "cuMemcpyHtoDAsync", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
          "cuMemcpyHtoDAsync_v2_ptsz" },
        { "cuMemcpy3DPeer", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
          "cuMemcpy3DPeer_ptds" },
        { "cuMemcpyBatchAsync", 12080, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
          "cuMemcpyBatchAsync_ptsz" },
        { "cuMemcpyBatchAsync", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
          "cuMemcpyBatchAsync_v2_ptsz" },
        { "cuMemFreeAsync", 13000, 0, "cuMemFreeAsync" },
        { "cuMemFreeAsync", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
          "cuMemFreeAsync_ptsz" },
    };
    CUresult (*begin_pt)(CUstream) = (CUresult (*)(CUstream))dlsym(libcuda, "cuStreamBeginCapture_ptsz");
    CUresult (*info_pt)(CUstream, CUstreamCaptureStatus *, cuuint64_t *) =
        (CUresult (*)(CUstream, CUstreamCaptureStatus *, cuuint64_t *))dlsym(
            libcuda, "cuStreamGetCaptureInfo_ptsz");
    CUstreamCaptureStatus cs;
    CUdeviceptr a;
    pthread_t th;
    void *fn;

    for (size_t i = 0; i < sizeof(lookups) / sizeof(lookups[0]); i++) {
        fn = NULL;
        EXPECT_CU(cuGetProcAddress(lookups[i].symbol, &fn, lookups[i].version, lookups[i].flags,
                                   NULL), CUDA_SUCCESS);
        if (fn != dlsym(libcuda, lookups[i].want)) {
            printf("    %s:%d: %s (%d, flags %llu) is not %s\n", __FILE__, __LINE__,
                   lookups[i].symbol, lookups[i].version, (unsigned long long)lookups[i].flags,
                   lookups[i].want);
            failed++;
        }
    }
    EXPECT_CU(cuGetProcAddress("cuStreamBeginCapture_ptsz", &fn, 13000, 0, NULL),
              CUDA_ERROR_NOT_FOUND);
    EXPECT_CU(cuGetProcAddress("cuMemcpy_ptds", &fn, 13000, 0, NULL), CUDA_ERROR_NOT_FOUND);

    EXPECT_CU(cuMemAlloc(&a, 4096), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD8(a, 0, 8), CUDA_SUCCESS);
    pthread_create(&th, NULL, ptsz_thread, &a);
    pthread_join(th, NULL);
    /* This thread's per-thread stream is its own. */
    EXPECT(status_of(CU_STREAM_PER_THREAD) == CU_STREAM_CAPTURE_STATUS_NONE);
    EXPECT(begin_pt && begin_pt(NULL) == CUDA_SUCCESS);
    EXPECT(info_pt && info_pt(NULL, &cs, NULL) == CUDA_SUCCESS &&
           cs == CU_STREAM_CAPTURE_STATUS_ACTIVE);
    EXPECT(status_of(NULL) == (CUstreamCaptureStatus)-1);    /* the legacy stream: implicit */
    EXPECT_CU(cuStreamSynchronize(CU_STREAM_PER_THREAD), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    end_invalidated(CU_STREAM_PER_THREAD, __LINE__);
    EXPECT_CU(cuMemFree(a), CUDA_SUCCESS);
    EXPECT(capture_clean() && usage_clean(0));
    return failed;
}

/* Events recorded in a capture belong to it until a launch records them for real. */
int test_capture_events(void)
{
    CUstream s;
    CUevent e1, e2, e3;
    CUgraph g;
    CUgraphExec x;
    CUdeviceptr a;
    float ms = -1;

    EXPECT_CU(cuMemAlloc(&a, 4096), CUDA_SUCCESS);
    EXPECT_CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    EXPECT_CU(cuEventCreate(&e1, 0), CUDA_SUCCESS);
    EXPECT_CU(cuEventCreate(&e2, 0), CUDA_SUCCESS);
    EXPECT_CU(cuEventCreate(&e3, 0), CUDA_SUCCESS);

    EXPECT_CU(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
    EXPECT_CU(cuEventRecord(e1, s), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD8Async(a, 1, 4096, s), CUDA_SUCCESS);
    EXPECT_CU(cuEventRecord(e2, s), CUDA_SUCCESS);
    EXPECT_CU(cuStreamEndCapture(s, &g), CUDA_SUCCESS);
    EXPECT_CU(cuEventElapsedTime(&ms, e1, e2), CUDA_ERROR_INVALID_HANDLE);  /* not yet run */
    EXPECT_CU(cuGraphInstantiate(&x, g, 0), CUDA_SUCCESS);
    EXPECT_CU(cuGraphLaunch(x, s), CUDA_SUCCESS);
    EXPECT_CU(cuEventSynchronize(e2), CUDA_SUCCESS);
    EXPECT_CU(cuEventElapsedTime(&ms, e1, e2), CUDA_SUCCESS);
    EXPECT(ms >= 0.0f && ((unsigned char *)a)[4095] == 1);
    EXPECT_CU(cuGraphExecDestroy(x), CUDA_SUCCESS);
    EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);

    /* Querying an event of a capture in progress: refused in any mode, and invalidating. */
    set_mode(CU_STREAM_CAPTURE_MODE_RELAXED);
    EXPECT_CU(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_RELAXED), CUDA_SUCCESS);
    EXPECT_CU(cuEventRecord(e3, s), CUDA_SUCCESS);
    EXPECT_CU(cuEventQuery(e1), CUDA_SUCCESS);                   /* recorded for real */
    EXPECT_CU(cuEventQuery(e3), CUDA_ERROR_CAPTURED_EVENT);
    end_invalidated(s, __LINE__);
    EXPECT_CU(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_RELAXED), CUDA_SUCCESS);
    EXPECT_CU(cuEventRecord(e3, s), CUDA_SUCCESS);
    EXPECT_CU(cuEventSynchronize(e3), CUDA_ERROR_CAPTURED_EVENT);
    end_invalidated(s, __LINE__);
    EXPECT_CU(cuEventQuery(e3), CUDA_SUCCESS);                   /* its capture is over */
    set_mode(CU_STREAM_CAPTURE_MODE_GLOBAL);

    EXPECT_CU(cuEventDestroy(e1), CUDA_SUCCESS);
    EXPECT_CU(cuEventDestroy(e2), CUDA_SUCCESS);
    EXPECT_CU(cuEventDestroy(e3), CUDA_SUCCESS);
    EXPECT_CU(cuStreamDestroy(s), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(a), CUDA_SUCCESS);
    EXPECT(capture_clean() && usage_clean(0));
    return failed;
}

/* The runtime stand-in: the same rules, with the runtime's error codes. */
static void *runtime_capture_thread(void *arg)
{
    enum cudaStreamCaptureStatus cs;
    enum cudaStreamCaptureMode m;
    cudaStream_t s, blocking;
    cudaGraph_t g = (cudaGraph_t)&failed;
    cudaGraphExec_t x;
    cudaGraphNode_t nodes[2];
    unsigned long long id = 0;
    size_t n = 0;
    void *a = NULL, *b = NULL;

    (void)arg;
    EXPECT(cudaErrorStreamCaptureUnsupported == 900 && cudaErrorStreamCaptureInvalidated == 901 &&
           cudaErrorStreamCaptureImplicit == 906 && cudaErrorCapturedEvent == 907 &&
           cudaErrorStreamCaptureWrongThread == 908);
    EXPECT_RT(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    EXPECT_RT(cudaStreamCreateWithFlags(&blocking, 0), cudaSuccess);
    EXPECT_RT(cudaStreamCreateWithFlags(&blocking, 4), cudaErrorInvalidValue);
    EXPECT_RT(cudaMalloc(&a, 4096), cudaSuccess);
    EXPECT_RT(cudaMemset(a, 0, 4096), cudaSuccess);
    EXPECT_RT(cudaStreamQuery(s), cudaSuccess);

    /* Allocation in relaxed mode is allowed; freeing is refused and invalidates. */
    EXPECT_RT(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
    m = cudaStreamCaptureModeRelaxed;
    EXPECT_RT(cudaThreadExchangeStreamCaptureMode(&m), cudaSuccess);
    EXPECT_RT(cudaMalloc(&b, 4096), cudaSuccess);
    EXPECT_RT(cudaThreadExchangeStreamCaptureMode(&m), cudaSuccess);
    EXPECT(m == cudaStreamCaptureModeRelaxed);
    EXPECT_RT(cudaMemsetAsync(a, 7, 4096, s), cudaSuccess);
    EXPECT(((unsigned char *)a)[0] == 0);
    EXPECT_RT(cudaStreamIsCapturing(s, &cs), cudaSuccess);
    EXPECT(cs == cudaStreamCaptureStatusActive);
    EXPECT_RT(cudaStreamGetCaptureInfo(s, &cs, &id, NULL, NULL, NULL, &n), cudaSuccess);
    EXPECT(id != 0 && n == 1);
    EXPECT_RT(cudaFree(b), cudaErrorStreamCaptureUnsupported);
    EXPECT_RT(cudaStreamIsCapturing(s, &cs), cudaSuccess);
    EXPECT(cs == cudaStreamCaptureStatusInvalidated);
    EXPECT_RT(cudaMemsetAsync(a, 7, 4096, s), cudaErrorStreamCaptureInvalidated);
    EXPECT_RT(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated);
    EXPECT(g == NULL);
    EXPECT_RT(cudaGetLastError(), cudaErrorStreamCaptureInvalidated);
    EXPECT(strcmp(cudaGetErrorName(cudaErrorStreamCaptureUnsupported),
                  "cudaErrorStreamCaptureUnsupported") == 0);
    EXPECT(strcmp(cudaGetErrorString(cudaErrorStreamCaptureInvalidated),
                  "operation failed due to a previous error during capture") == 0);
    EXPECT_RT(cudaFree(b), cudaSuccess);

#define RT_REFUSED(call, want)                                                            \
    do {                                                                                  \
        EXPECT_RT(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);   \
        EXPECT_RT(call, want);                                                            \
        EXPECT_RT(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated);        \
    } while (0)
    RT_REFUSED(cudaStreamSynchronize(s), cudaErrorStreamCaptureUnsupported);
    RT_REFUSED(cudaStreamQuery(s), cudaErrorStreamCaptureUnsupported);
    RT_REFUSED(cudaDeviceSynchronize(), cudaErrorStreamCaptureUnsupported);
    RT_REFUSED(cudaMalloc(&b, 16), cudaErrorStreamCaptureUnsupported);
    RT_REFUSED(cudaMemcpy(&id, a, sizeof(id), cudaMemcpyDeviceToHost),
               cudaErrorStreamCaptureUnsupported);
#undef RT_REFUSED
    /* A synchronous memset and a device-to-device copy run: the host does not wait for them. */
    EXPECT_RT(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
    EXPECT_RT(cudaMemset((char *)a + 64, 9, 16), cudaSuccess);
    EXPECT_RT(cudaMemcpy((char *)a + 128, (char *)a + 64, 16, cudaMemcpyDeviceToDevice),
              cudaSuccess);
    EXPECT(((unsigned char *)a)[143] == 9);
    EXPECT_RT(cudaStreamEndCapture(s, &g), cudaSuccess);
    EXPECT_RT(cudaGraphDestroy(g), cudaSuccess);
    EXPECT_RT(cudaMemset(a, 0, 4096), cudaSuccess);
    /* The legacy stream while a blocking stream captures. */
    m = cudaStreamCaptureModeRelaxed;
    EXPECT_RT(cudaThreadExchangeStreamCaptureMode(&m), cudaSuccess);
    EXPECT(m == cudaStreamCaptureModeGlobal);
    EXPECT_RT(cudaStreamBeginCapture(blocking, cudaStreamCaptureModeRelaxed), cudaSuccess);
    EXPECT_RT(cudaStreamIsCapturing(NULL, &cs), cudaErrorStreamCaptureImplicit);
    EXPECT_RT(cudaMemsetAsync(a, 1, 16, NULL), cudaErrorStreamCaptureImplicit);
    EXPECT_RT(cudaStreamEndCapture(blocking, &g), cudaErrorStreamCaptureInvalidated);
    EXPECT_RT(cudaThreadExchangeStreamCaptureMode(&m), cudaSuccess);
    EXPECT_RT(cudaThreadExchangeStreamCaptureMode(NULL), cudaErrorInvalidValue);
    EXPECT_RT(cudaStreamBeginCapture(NULL, cudaStreamCaptureModeGlobal),
              cudaErrorStreamCaptureUnsupported);
    EXPECT(((unsigned char *)a)[0] == 0);

    /* A graph captured through the runtime and replayed. */
    EXPECT_RT(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    EXPECT_RT(cudaMemsetAsync(a, 5, 4096, s), cudaSuccess);
    EXPECT_RT(cudaMemcpyAsync(a, (char *)a + 2048, 1, cudaMemcpyDeviceToDevice, s), cudaSuccess);
    EXPECT_RT(cudaStreamEndCapture(s, &g), cudaSuccess);
    EXPECT_RT(cudaGraphGetNodes(g, NULL, &n), cudaSuccess);
    EXPECT(n == 2);
    n = 2;
    EXPECT_RT(cudaGraphGetNodes(g, nodes, &n), cudaSuccess);
    EXPECT(n == 2 && nodes[0] && nodes[1]);
    EXPECT_RT(cudaGraphInstantiate(&x, g, 0), cudaSuccess);
    EXPECT_RT(cudaGraphDestroy(g), cudaSuccess);
    EXPECT(((unsigned char *)a)[4095] == 0);
    EXPECT_RT(cudaGraphLaunch(x, s), cudaSuccess);
    EXPECT_RT(cudaStreamSynchronize(s), cudaSuccess);
    EXPECT(((unsigned char *)a)[4095] == 5 && ((unsigned char *)a)[0] == 5);
    EXPECT_RT(cudaGraphExecDestroy(x), cudaSuccess);
    EXPECT_RT(cudaGraphExecDestroy(x), cudaErrorInvalidValue);
    EXPECT_RT(cudaGraphDestroy(g), cudaErrorInvalidValue);

    EXPECT_RT(cudaFree(a), cudaSuccess);
    EXPECT_RT(cudaStreamDestroy(s), cudaSuccess);
    EXPECT_RT(cudaStreamDestroy(blocking), cudaSuccess);
    EXPECT_RT(cudaGetLastError(), cudaErrorInvalidValue);
    return NULL;
}

int test_runtime_capture(void)
{
    pthread_t th;

    pthread_create(&th, NULL, runtime_capture_thread, NULL);
    pthread_join(th, NULL);
    EXPECT(capture_clean() && usage_clean(0));
    return failed;
}
