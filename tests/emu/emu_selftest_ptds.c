/*
 * emu_selftest_ptds.c: the per-thread default stream forms of the memsets and copies
 * (emu_ptds.c). cuGetProcAddress hands each out for its base name when asked for per-thread
 * default streams, and the plain form otherwise; each is counted and failed under its own name,
 * never its plain form's; each faults on an unmapped page as its plain form does; a _ptsz form's
 * NULL stream is the calling thread's per-thread default stream.
 */
#define _GNU_SOURCE
#include <dlfcn.h>

#include "selftest.h"

/* Every form: its name, the base name it is asked for by, and the version asked for. */
static const struct {
    const char *name, *base;
    int version;
} forms[] = {
    { "cuMemsetD8_v2_ptds", "cuMemsetD8", 13000 },
    { "cuMemsetD16_v2_ptds", "cuMemsetD16", 13000 },
    { "cuMemsetD32_v2_ptds", "cuMemsetD32", 13000 },
    { "cuMemsetD8Async_ptsz", "cuMemsetD8Async", 13000 },
    { "cuMemsetD16Async_ptsz", "cuMemsetD16Async", 13000 },
    { "cuMemsetD32Async_ptsz", "cuMemsetD32Async", 13000 },
    { "cuMemsetD2D8_v2_ptds", "cuMemsetD2D8", 13000 },
    { "cuMemsetD2D16_v2_ptds", "cuMemsetD2D16", 13000 },
    { "cuMemsetD2D32_v2_ptds", "cuMemsetD2D32", 13000 },
    { "cuMemsetD2D8Async_ptsz", "cuMemsetD2D8Async", 13000 },
    { "cuMemsetD2D16Async_ptsz", "cuMemsetD2D16Async", 13000 },
    { "cuMemsetD2D32Async_ptsz", "cuMemsetD2D32Async", 13000 },
    { "cuMemcpy_ptds", "cuMemcpy", 13000 },
    { "cuMemcpyAsync_ptsz", "cuMemcpyAsync", 13000 },
    { "cuMemcpyHtoD_v2_ptds", "cuMemcpyHtoD", 13000 },
    { "cuMemcpyDtoH_v2_ptds", "cuMemcpyDtoH", 13000 },
    { "cuMemcpyDtoD_v2_ptds", "cuMemcpyDtoD", 13000 },
    { "cuMemcpyHtoDAsync_v2_ptsz", "cuMemcpyHtoDAsync", 13000 },
    { "cuMemcpyDtoHAsync_v2_ptsz", "cuMemcpyDtoHAsync", 13000 },
    { "cuMemcpyDtoDAsync_v2_ptsz", "cuMemcpyDtoDAsync", 13000 },
    { "cuMemcpy2D_v2_ptds", "cuMemcpy2D", 13000 },
    { "cuMemcpy2DUnaligned_v2_ptds", "cuMemcpy2DUnaligned", 13000 },
    { "cuMemcpy2DAsync_v2_ptsz", "cuMemcpy2DAsync", 13000 },
    { "cuMemcpy3D_v2_ptds", "cuMemcpy3D", 13000 },
    { "cuMemcpy3DAsync_v2_ptsz", "cuMemcpy3DAsync", 13000 },
    { "cuMemcpyPeer_ptds", "cuMemcpyPeer", 13000 },
    { "cuMemcpyPeerAsync_ptsz", "cuMemcpyPeerAsync", 13000 },
    { "cuMemcpy3DPeer_ptds", "cuMemcpy3DPeer", 13000 },
    { "cuMemcpy3DPeerAsync_ptsz", "cuMemcpy3DPeerAsync", 13000 },
    { "cuMemcpyBatchAsync_ptsz", "cuMemcpyBatchAsync", 12080 },
    { "cuMemcpyBatchAsync_v2_ptsz", "cuMemcpyBatchAsync", 13000 },
    { "cuMemcpy3DBatchAsync_ptsz", "cuMemcpy3DBatchAsync", 12080 },
    { "cuMemcpy3DBatchAsync_v2_ptsz", "cuMemcpy3DBatchAsync", 13000 },
};

/* libcuda's function name, or NULL. */
static void *sym(const char *name)
{
    return dlsym(libcuda, name);
}

int test_per_thread_forms(void)
{
    CUresult (*set8)(CUdeviceptr, unsigned char, size_t) = sym("cuMemsetD8_v2_ptds");
    CUresult (*set8a)(CUdeviceptr, unsigned char, size_t, CUstream) = sym("cuMemsetD8Async_ptsz");
    CUresult (*set2d)(CUdeviceptr, size_t, unsigned short, size_t, size_t) =
        sym("cuMemsetD2D16_v2_ptds");
    CUresult (*htod)(CUdeviceptr, const void *, size_t) = sym("cuMemcpyHtoD_v2_ptds");
    CUresult (*dtoh)(void *, CUdeviceptr, size_t, CUstream) = sym("cuMemcpyDtoHAsync_v2_ptsz");
    CUresult (*dtod)(CUdeviceptr, CUdeviceptr, size_t) = sym("cuMemcpyDtoD_v2_ptds");
    CUresult (*peer)(CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t) =
        sym("cuMemcpyPeer_ptds");
    CUresult (*c3d)(const CUDA_MEMCPY3D *) = sym("cuMemcpy3D_v2_ptds");
    CUresult (*begin_pt)(CUstream, CUstreamCaptureMode) = sym("cuStreamBeginCapture_v2_ptsz");
    CUresult (*end_pt)(CUstream, CUgraph *) = sym("cuStreamEndCapture_ptsz");
    CUmemAllocationProp p = prop_for(0);
    CUmemGenericAllocationHandle h;
    struct kvemu_capture_stats st0, st;
    static unsigned char host[64];
    char plain[64];
    CUDA_MEMCPY3D c;
    CUdeviceptr va, a;
    CUgraph g = NULL;
    void *fn;

    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        size_t n = strlen(forms[i].name) - 5;

        memcpy(plain, forms[i].name, n);
        plain[n] = '\0';
        fn = NULL;
        EXPECT_CU(cuGetProcAddress_v2(forms[i].base, &fn, forms[i].version,
                                      CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, NULL),
                  CUDA_SUCCESS);
        if (!fn || fn != sym(forms[i].name)) {
            printf("    %s:%d: %s per-thread is not %s\n", __FILE__, __LINE__, forms[i].base,
                   forms[i].name);
            failed++;
        }
        fn = NULL;
        EXPECT_CU(cuGetProcAddress_v2(forms[i].base, &fn, forms[i].version, 0, NULL),
                  CUDA_SUCCESS);
        if (!fn || fn != sym(plain)) {
            printf("    %s:%d: %s is not %s\n", __FILE__, __LINE__, forms[i].base, plain);
            failed++;
        }
    }
    EXPECT(set8 && set8a && set2d && htod && dtoh && dtod && peer && c3d && begin_pt && end_pt);
    if (!set8 || !set8a || !set2d || !htod || !dtoh || !dtod || !peer || !c3d || !begin_pt ||
        !end_pt)
        return failed;

    /* Counted and failed as themselves, not as the plain form. */
    EXPECT_CU(cuMemAlloc(&a, 4096), CUDA_SUCCESS);
    reset_counts();
    EXPECT_CU(set8(a, 3, 64), CUDA_SUCCESS);
    EXPECT(calls("cuMemsetD8_v2_ptds") == 1 && calls("cuMemsetD8_v2") == 0);
    EXPECT(((unsigned char *)a)[63] == 3 && ((unsigned char *)a)[64] == 0);
    EXPECT(fail_nth("cuMemsetD8_v2_ptds", 1, CUDA_ERROR_UNKNOWN) == 0);
    EXPECT_CU(set8(a, 4, 64), CUDA_ERROR_UNKNOWN);
    EXPECT(((unsigned char *)a)[0] == 3);
    EXPECT(fail_nth("cuMemsetD8_v2", 1, CUDA_ERROR_UNKNOWN) == 0);
    EXPECT_CU(set8(a, 4, 64), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD8(a, 4, 64), CUDA_ERROR_UNKNOWN);
    EXPECT(calls("cuMemsetD8_v2_ptds") == 3 && calls("cuMemsetD8_v2") == 1);

    /* An unmapped page faults as with the plain forms (a pitched call refuses an unmapped page
     * among the bytes from its pointer first, as they do); a mapped one works. */
    EXPECT_CU(cuMemAddressReserve(&va, 2 * PAGE, 0, 0, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemCreate(&h, PAGE, &p, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemMap(va, PAGE, 0, h, 0), CUDA_SUCCESS);
    EXPECT_CU(set_access(va, PAGE, CU_MEM_ACCESS_FLAGS_PROT_READWRITE), CUDA_SUCCESS);
    EXPECT_CU(set8(va + PAGE, 1, 8), CUDA_ERROR_ILLEGAL_ADDRESS);
    EXPECT_CU(set8a(va + PAGE, 1, 8, NULL), CUDA_ERROR_ILLEGAL_ADDRESS);
    EXPECT_CU(set2d(va + PAGE, 64, 1, 8, 2), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemsetD2D16(va + PAGE, 64, 1, 8, 2), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(htod(va + PAGE, host, 8), CUDA_ERROR_ILLEGAL_ADDRESS);
    EXPECT_CU(dtoh(host, va + PAGE, 8, NULL), CUDA_ERROR_ILLEGAL_ADDRESS);
    EXPECT_CU(dtod(va, va + PAGE, 8), CUDA_ERROR_ILLEGAL_ADDRESS);
    EXPECT_CU(peer(va + PAGE, ctx0, va, ctx0, 8), CUDA_ERROR_ILLEGAL_ADDRESS);
    memset(&c, 0, sizeof(c));
    c.dstMemoryType = CU_MEMORYTYPE_DEVICE;
    c.dstDevice = va;           /* its row a page on, on page 1 */
    c.dstY = 1;
    c.dstPitch = PAGE;
    c.srcMemoryType = CU_MEMORYTYPE_HOST;
    c.srcHost = host;
    c.WidthInBytes = 8;
    c.Height = 1;
    c.Depth = 1;
    EXPECT_CU(c3d(&c), CUDA_ERROR_ILLEGAL_ADDRESS);
    memset(host, 5, sizeof(host));
    EXPECT_CU(htod(va + 8, host, 8), CUDA_SUCCESS);
    EXPECT_CU(dtod(va + 16, va + 8, 8), CUDA_SUCCESS);
    memset(host, 0, sizeof(host));
    EXPECT_CU(dtoh(host, va + 16, 8, NULL), CUDA_SUCCESS);
    EXPECT(host[0] == 5 && host[7] == 5);
    c.dstY = 0;
    EXPECT_CU(c3d(&c), CUDA_SUCCESS);
    EXPECT(*(volatile unsigned char *)va == 5);

    /* A _ptsz form's NULL stream is the thread's per-thread stream: while that captures, the
     * memset is recorded, not run (the plain form's NULL, the legacy stream, is refused). */
    capture_stats(&st0);
    EXPECT_CU(begin_pt(NULL, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), CUDA_SUCCESS);
    EXPECT_CU(set8a(a, 9, 4, NULL), CUDA_SUCCESS);
    EXPECT(((unsigned char *)a)[0] == 4);
    capture_stats(&st);
    EXPECT(st.captured_ops == st0.captured_ops + 1);
    EXPECT_CU(end_pt(NULL, &g), CUDA_SUCCESS);
    EXPECT(g != NULL);
    if (g)
        EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);
    EXPECT_CU(set8a(a, 9, 4, NULL), CUDA_SUCCESS);
    EXPECT(((unsigned char *)a)[0] == 9);

    EXPECT_CU(cuMemUnmap(va, PAGE), CUDA_SUCCESS);
    EXPECT_CU(cuMemRelease(h), CUDA_SUCCESS);
    EXPECT_CU(cuMemAddressFree(va, 2 * PAGE), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(a), CUDA_SUCCESS);
    EXPECT(usage_clean(0));
    return failed;
}
