#include <stdio.h>
#include <string.h>
#include <cuda.h>
typedef CUresult (*b13)(CUdeviceptr *, CUdeviceptr *, size_t *, size_t, CUmemcpyAttributes *, size_t *, size_t, CUstream);
typedef CUresult (*b12)(CUdeviceptr *, CUdeviceptr *, size_t *, size_t, CUmemcpyAttributes *, size_t *, size_t, size_t *, CUstream);
typedef CUresult (*d13)(size_t, CUDA_MEMCPY3D_BATCH_OP *, unsigned long long, CUstream);
typedef CUresult (*d12)(size_t, CUDA_MEMCPY3D_BATCH_OP *, size_t *, unsigned long long, CUstream);
static void *get(const char *n, int ver, int pt) {
	void *f = NULL; CUdriverProcAddressQueryResult q;
	CUresult r = cuGetProcAddress_v2(n, &f, ver, pt ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM : CU_GET_PROC_ADDRESS_LEGACY_STREAM, &q);
	if (r || q) printf("gpa %s %d %d: %d %d\n", n, ver, pt, r, q);
	return f;
}
int main(void) {
	CUcontext c; CUdevice dv; CUdeviceptr a, b; CUstream s; size_t z = 4096, idx = 0, fail;
	CUmemcpyAttributes at; const char *nm; CUDA_MEMCPY3D_BATCH_OP op;
	CUstream ss[4]; const char *sn[4] = {"NULL", "LEGACY", "PER_THREAD", "created"};
	int i, v, pt;
	cuInit(0); cuDeviceGet(&dv, 0); cuDevicePrimaryCtxRetain(&c, dv); cuCtxSetCurrent(c);
	cuMemAlloc(&a, 1 << 20); cuMemAlloc(&b, 1 << 20); cuStreamCreate(&s, CU_STREAM_NON_BLOCKING);
	ss[0] = NULL; ss[1] = CU_STREAM_LEGACY; ss[2] = CU_STREAM_PER_THREAD; ss[3] = s;
	memset(&at, 0, sizeof(at)); at.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
	memset(&op, 0, sizeof(op));
	op.dst.type = op.src.type = CU_MEMCPY_OPERAND_TYPE_POINTER; op.dst.op.ptr.ptr = a; op.src.op.ptr.ptr = b;
	op.extent = (CUextent3D){64, 3, 1}; op.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
	for (pt = 0; pt < 2; pt++) for (v = 12080; v <= 13000; v += 920) for (i = 0; i < 4; i++) {
		CUresult r1, r2;
		void *f = get("cuMemcpyBatchAsync", v, pt), *g = get("cuMemcpy3DBatchAsync", v, pt);
		fail = 77;
		if (v == 13000) { r1 = f ? ((b13)f)(&a, &b, &z, 1, &at, &idx, 1, ss[i]) : -1; r2 = g ? ((d13)g)(1, &op, 0, ss[i]) : -1; }
		else { r1 = f ? ((b12)f)(&a, &b, &z, 1, &at, &idx, 1, &fail, ss[i]) : -1; r2 = g ? ((d12)g)(1, &op, &fail, 0, ss[i]) : -1; }
		cuGetErrorName(r1, &nm); printf("%s ver %d stream %-10s batch %s", pt ? "per-thread" : "legacy    ", v, sn[i], nm);
		cuGetErrorName(r2, &nm); printf("  3d %s\n", nm);
		cuCtxSynchronize();
	}
	return 0;
}
