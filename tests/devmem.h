/*
 * devmem.h - what tests and benchmarks do on the device, on the real driver
 * or on the CPU emulation alike: write a pattern with a kernel and count
 * the words that do not hold it; and, on the emulation only, inject driver
 * failures, count driver calls and read what the emulated device holds.
 */
#ifndef KV_TEST_DEVMEM_H
#define KV_TEST_DEVMEM_H

#include <stddef.h>

#include <cuda.h>

#include "emu/kvemu.h"

/* Load the driver and the kernels. Returns 0, or -1 when there is no
 * driver or device (a GPU test then skips). */
int kv_dev_open(void);
void kv_dev_close(void);

/* 1 on the CPU emulation, 0 on a real driver. */
int kv_dev_is_emu(void);

/* Device and driver, for benchmark tables: "NVIDIA H200, driver 580.x". */
const char *kv_dev_describe(void);

/* Write seed's pattern over [p, p + bytes) with a kernel and wait.
 * Returns the CUresult (CUDA_ERROR_ILLEGAL_ADDRESS on the emulation when
 * a page is not mapped). */
CUresult kv_dev_fill(CUdeviceptr p, size_t bytes, unsigned seed);

/* Count words of [p, p + bytes) not holding seed's pattern into *bad. */
CUresult kv_dev_check(CUdeviceptr p, size_t bytes, unsigned seed,
		      unsigned long long *bad);

/* Count non-zero bytes of [p, p + bytes) (copied to the host). */
CUresult kv_dev_nonzero(CUdeviceptr p, size_t bytes, size_t *nonzero);

/* Devices the driver has (0 without a driver). */
int kv_dev_count(void);

/* Make device's primary context current on the calling thread, as
 * cudaSetDevice does (the device's context is retained once, for the
 * process). Returns 0 or -1 (no such device). */
int kv_dev_use(int device);

/* The device ordinal the driver gives for the memory at p
 * (CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL), or -1 when it names none (host
 * memory, a reserved page nothing backs). */
int kv_dev_ordinal(CUdeviceptr p);

/* The 3D copy c as a peer copy whose two sides are in context cx. */
CUDA_MEMCPY3D_PEER kv_dev_peer3d(const CUDA_MEMCPY3D *c, CUcontext cx);

/* The driver function name, for benchmarks that call it directly. */
void *kv_dev_sym(const char *name);

/* Emulation controls; on a real driver they return -1 / 0 and do nothing. */
int kv_dev_fail_nth(const char *func, int n, CUresult err);
/* The n-th next call of func and the times - 1 after it fail. */
int kv_dev_fail_times(const char *func, int n, int times, CUresult err);
int kv_dev_hold(const char *func, int on);
int kv_dev_waiting(const char *func);
unsigned long long kv_dev_calls(const char *func);
void kv_dev_reset_counts(void);
int kv_dev_usage(struct kvemu_usage *u);
/* kv_dev_usage of another device than 0. */
int kv_dev_usage_of(int device, struct kvemu_usage *u);

#endif /* KV_TEST_DEVMEM_H */
