/*
 * entry.c - entry-point look-ups. libcudart and PyTorch reach the driver
 * through cuGetProcAddress and cudaGetDriverEntryPoint[ByVersion] rather
 * than the PLT: each wrapper asks the real look-up (which picks the variant
 * by version and flags, per-thread default stream forms included) and hands
 * back the wrapper standing for the function it found, if it is hooked.
 * cuGetExportTable is left alone.
 */
#include "hooks.h"

CUresult kv_hook_cuGetProcAddress_v2(const char *symbol, void **pfn,
				     int version, cuuint64_t flags,
				     CUdriverProcAddressQueryResult *status)
{
	CUresult r;

	if (kv_hooks_driver() || !kv_real_cuGetProcAddress_v2)
		return CUDA_ERROR_NOT_INITIALIZED;
	r = kv_real_cuGetProcAddress_v2(symbol, pfn, version, flags, status);
	if (r == CUDA_SUCCESS && pfn)
		*pfn = kv_hooks_wrap(*pfn);
	return r;
}

CUresult kv_hook_cuGetProcAddress(const char *symbol, void **pfn, int version,
				  cuuint64_t flags)
{
	CUresult r;

	if (kv_hooks_driver() || !kv_real_cuGetProcAddress)
		return CUDA_ERROR_NOT_INITIALIZED;
	r = kv_real_cuGetProcAddress(symbol, pfn, version, flags);
	if (r == CUDA_SUCCESS && pfn)
		*pfn = kv_hooks_wrap(*pfn);
	return r;
}

#define ENTRY_POINT(name)                                                   \
cudaError_t kv_hook_##name(const char *symbol, void **fn,                   \
			   unsigned long long flags,                        \
			   enum cudaDriverEntryPointQueryResult *status)    \
{                                                                           \
	cudaError_t e;                                                      \
									    \
	if (kv_hooks_runtime() || !kv_real_##name)                          \
		return cudaErrorInitializationError;                        \
	kv_in_runtime++;                                                    \
	e = kv_real_##name(symbol, fn, flags, status);                      \
	kv_in_runtime--;                                                    \
	if (e == cudaSuccess && fn)                                         \
		*fn = kv_hooks_wrap(*fn);                                   \
	return e;                                                           \
}

#define ENTRY_POINT_BY_VERSION(name)                                        \
cudaError_t kv_hook_##name(const char *symbol, void **fn,                   \
			   unsigned int version, unsigned long long flags,  \
			   enum cudaDriverEntryPointQueryResult *status)    \
{                                                                           \
	cudaError_t e;                                                      \
									    \
	if (kv_hooks_runtime() || !kv_real_##name)                          \
		return cudaErrorInitializationError;                        \
	kv_in_runtime++;                                                    \
	e = kv_real_##name(symbol, fn, version, flags, status);             \
	kv_in_runtime--;                                                    \
	if (e == cudaSuccess && fn)                                         \
		*fn = kv_hooks_wrap(*fn);                                   \
	return e;                                                           \
}

ENTRY_POINT(cudaGetDriverEntryPoint)
ENTRY_POINT(cudaGetDriverEntryPoint_ptsz)
ENTRY_POINT_BY_VERSION(cudaGetDriverEntryPointByVersion)
ENTRY_POINT_BY_VERSION(cudaGetDriverEntryPointByVersion_ptsz)
