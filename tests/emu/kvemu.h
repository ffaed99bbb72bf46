/*
 * kvemu.h: control API of the CPU emulation of the CUDA driver (tests/emu/libcuda.so.1).
 *
 * Tests reach it through dlsym on the libcuda.so.1 handle, so the emulation is never a link-time
 * dependency of a test: where dlsym(h, "kvemu_is_emulation") is NULL, the test runs on a real
 * driver. The kvemu_*_fn typedefs are the matching function pointer types.
 */
#ifndef KVEMU_H
#define KVEMU_H

#include <stddef.h>
#include <cuda.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Make the n-th next call (1 = the very next) of driver function func (its exported name, e.g.
 * "cuMemMap" or "cuMemAlloc_v2"; a base name such as "cuMemAlloc" means its newest variant)
 * return err without doing anything. n = 0 disarms it. Several functions may be armed at once;
 * each fires once. Returns 0, or -1 for an unknown name or a negative n.
 */
int kvemu_fail_nth(const char *func, int n, CUresult err);

/*
 * As kvemu_fail_nth, for times calls in a row: the n-th next call of func and the times - 1
 * after it return err (times = 1 is kvemu_fail_nth). Returns 0, or -1 for an unknown name, a
 * negative n or times under 1.
 */
int kvemu_fail_times(const char *func, int n, int times, CUresult err);

/*
 * Hold func (named as for kvemu_fail_nth; on = 1) or let it go (on = 0): while it is held, every
 * call of it waits at its start (counted, nothing done yet), so that a test can stop a
 * thread inside a driver call. kvemu_waiting(func) gives the calls waiting now. Both return -1
 * for an unknown name; kvemu_hold returns 0 otherwise.
 */
int kvemu_hold(const char *func, int on);
int kvemu_waiting(const char *func);

/*
 * Calls of func (named as for kvemu_fail_nth) since start or kvemu_reset_counts(); 0 if unknown.
 * kvemu_reset_counts() also zeroes the counters of kvemu_capture_stats.
 */
unsigned long long kvemu_calls(const char *func);
void kvemu_reset_counts(void);

/*
 * Live state, so tests can prove nothing leaked. Per device: physical_bytes (chunks held by
 * handles and cuMemAlloc allocations), handles (cuMemCreate handles not yet freed; a released
 * handle still mapped counts until its last unmap), mapped_pages (2 MiB pages of those handles
 * mapped), allocs (live cuMemAlloc allocations), released_mapped (handles released while still
 * mapped, ever: a running count, which an unmap after never lowers; the memory of each lives
 * until its last unmap). Process-wide, the same for every device as
 * reservations are not per device: reservations and reserved_bytes (cuMemAddressReserve ranges;
 * the ranges behind cuMemAlloc are not counted). An invalid device, or a call before cuInit,
 * gives all zeros.
 */
struct kvemu_usage {
    size_t physical_bytes;
    size_t handles;
    size_t reservations;
    size_t reserved_bytes;
    size_t mapped_pages;
    size_t allocs;
    size_t released_mapped;
};
void kvemu_usage(int device, struct kvemu_usage *out);

/*
 * Stream capture as the emulation saw it, so a test can show that a library kept off a capture's
 * path. The counters run from the start or the last kvemu_reset_counts(); the live fields
 * (captures, graphs, graph_execs) are the state now.
 *
 * - begun, ended: captures begun, and ended with a graph (cuStreamBeginCapture*,
 *   cuStreamEndCapture*); an invalidated capture ends without one.
 * - invalidated: captures invalidated by a call that broke the capture rules, each counted once.
 * - refused: calls that returned a stream-capture error (900 to 908,
 *   CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED to CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD);
 *   last_refused names the last of them (its exported name, e.g. "cuStreamSynchronize"), or is
 *   NULL.
 * - captured_ops: memsets, copies, kernel launches, event records and graph launches (one per
 *   operation of the graph) enqueued on a capturing stream: recorded into its graph, not run.
 * - eager_ops: operations that ran at once while some capture was in progress (on a stream not
 *   capturing, or synchronous), whichever thread made them.
 * - captures: captures in progress (invalidated ones included, until ended); graphs and
 *   graph_execs: graphs (those being captured into included) and executable graphs alive.
 */
struct kvemu_capture_stats {
    unsigned long long begun;
    unsigned long long ended;
    unsigned long long invalidated;
    unsigned long long refused;
    const char *last_refused;
    unsigned long long captured_ops;
    unsigned long long eager_ops;
    size_t captures;
    size_t graphs;
    size_t graph_execs;
};
void kvemu_capture_stats(struct kvemu_capture_stats *out);

/* 1: this libcuda.so.1 is the emulation. */
int kvemu_is_emulation(void);

typedef int (*kvemu_fail_nth_fn)(const char *func, int n, CUresult err);
typedef int (*kvemu_fail_times_fn)(const char *func, int n, int times, CUresult err);
typedef int (*kvemu_hold_fn)(const char *func, int on);
typedef int (*kvemu_waiting_fn)(const char *func);
typedef unsigned long long (*kvemu_calls_fn)(const char *func);
typedef void (*kvemu_reset_counts_fn)(void);
typedef void (*kvemu_usage_fn)(int device, struct kvemu_usage *out);
typedef void (*kvemu_capture_stats_fn)(struct kvemu_capture_stats *out);
typedef int (*kvemu_is_emulation_fn)(void);

#ifdef __cplusplus
}
#endif

#endif /* KVEMU_H */
