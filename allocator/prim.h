/*
 * prim.h - the primitive layer: the only code in kvshim that calls the CUDA
 * driver's memory functions.
 *
 * The driver is found at run time (dlopen of libcuda.so.1), so the library
 * builds and loads on machines without a GPU. Each function returns 0 or a
 * negative kvshim_error; a driver failure is logged with its CUresult name
 * and turned into KVSHIM_ENOMEM (out of memory) or KVSHIM_EDRIVER. Nothing
 * here aborts or retries. All addresses and sizes handed to these functions
 * must be multiples of kv_prim_t.page unless said otherwise.
 */
#ifndef KV_PRIM_H
#define KV_PRIM_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <cuda.h>

typedef struct kv_prim_s {
	int ordinal;          /* CUDA device ordinal */
	CUdevice dev;
	CUcontext ctx;        /* the device's primary context, retained */
	CUstream stream;      /* private stream for scrubbing */
	size_t gran;          /* allocation granularity: 2 MiB on current GPUs */
	size_t page;          /* kvshim's page: one physical handle, a multiple
			       * of gran */
	size_t device_bytes;  /* total device memory */
	char uuid[48];        /* "GPU-xxxxxxxx-...", as nvidia-smi writes it */
} kv_prim_t;

/* Load the driver, initialise it, retain the primary context of device
 * ordinal and read its granularity. page is the size of one physical page
 * (0: the granularity). Larger pages cost fewer driver calls per byte: the
 * driver charges cuMemSetAccess and cuMemUnmap per mapping, not per byte.
 * Pre: p is not yet open. Returns 0, KVSHIM_EINVAL (page not a multiple of
 * the granularity), KVSHIM_ENODEV (no libcuda, no such device, or no VMM
 * support) or KVSHIM_EDRIVER. */
int kv_prim_open(kv_prim_t *p, int ordinal, size_t page);

/* What must be known of device ordinal before kvshim opens it (to check
 * the configuration against it): its memory in *total and its allocation
 * granularity in *gran. Loads and initialises the driver; retains no
 * context. Returns 0, KVSHIM_ENODEV (no driver, or it sees no device),
 * KVSHIM_EINVAL (the driver has no device ordinal) or KVSHIM_EDRIVER. */
int kv_prim_device_info(int ordinal, size_t *total, size_t *gran);

/* Drop the primary context and the stream. Safe on a zeroed p. */
void kv_prim_close(kv_prim_t *p);

/* Make p's context current on the calling thread if none is. Returns 0 or
 * KVSHIM_EDRIVER. */
int kv_prim_bind(const kv_prim_t *p);

/* kv_prim_bind for the length of one call: where no context is current,
 * p's is pushed (*pushed is 1) and kv_prim_unhold(*pushed) pops it, so that
 * a thread whose call reached another device's allocator is left on the
 * device it was on. Returns 0 or KVSHIM_EDRIVER. */
int kv_prim_hold(const kv_prim_t *p, int *pushed);
void kv_prim_unhold(int pushed);

/* Reserve size bytes of virtual address space, aligned to the page (size
 * need only be a multiple of the granularity).
 * Returns 0 with *va set, KVSHIM_EINVAL for a size that is not a non-zero
 * page multiple, or a driver error. */
int kv_prim_reserve(const kv_prim_t *p, size_t size, CUdeviceptr *va);

/* Free a reservation made by kv_prim_reserve; it must have no mappings.
 * Returns 0 or a driver error. */
int kv_prim_unreserve(const kv_prim_t *p, CUdeviceptr va, size_t size);

/* Create one physical page. Returns 0 with *h set, KVSHIM_ENOMEM when the
 * device is full, or a driver error. */
int kv_prim_create(const kv_prim_t *p, CUmemGenericAllocationHandle *h);

/* Release a physical page; its memory goes back once it is mapped nowhere.
 * Returns 0 or a driver error. */
int kv_prim_release(const kv_prim_t *p, CUmemGenericAllocationHandle h);

/* Map page h at va (one page). Access is not granted: see kv_prim_access.
 * Returns 0 or a driver error. */
int kv_prim_map(const kv_prim_t *p, CUdeviceptr va,
		CUmemGenericAllocationHandle h);

/* Grant the device read-write access to [va, va + size), all of it mapped.
 * One call covers a whole contiguous run of pages. The driver charges this
 * per mapping (about 30 us per mapping on an H100 with driver 580, batched
 * or not), which is why larger pages map faster. Returns 0 or a driver
 * error. */
int kv_prim_access(const kv_prim_t *p, CUdeviceptr va, size_t size);

/* Unmap [va, va + size), all of it mapped. Returns 0 or a driver error. */
int kv_prim_unmap(const kv_prim_t *p, CUdeviceptr va, size_t size);

/* Wait until the work queued on the device's context so far is done. The
 * driver's unmap does not wait for kernels that may still reach the range:
 * pages leave a span only after a fence. While a stream captures (see
 * kv_prim_capture_begin) no fence is possible: *fenced is 0 and nothing is
 * done; otherwise *fenced is 1 on success. Returns 0 or a driver error. */
int kv_prim_fence(const kv_prim_t *p, int *fenced);

/* Write zeros over [va, va + size), mapped and accessible, on kvshim's own
 * stream, and wait until it is done (in relaxed capture mode, so this is
 * legal while any thread captures). p's context is made current for the
 * call if another is, so any thread may scrub any device's pages. Returns
 * 0 or a driver error. */
int kv_prim_zero(const kv_prim_t *p, CUdeviceptr va, size_t size);

/* A stream capture is about to begin (before the driver's call) or has
 * ended (after it, or after a begin that failed): the hooks see every
 * capture an engine makes. A capture's begin waits for a fence in
 * progress. */
void kv_prim_capture_begin(void);
void kv_prim_capture_end(void);

/* 1 while some capture is in progress. */
int kv_prim_capturing(void);

/* The captures of this process whose begin waited for a fence in progress
 * (kv_prim_capture_begin), and the nanoseconds they waited in all. */
void kv_prim_capture_gate(unsigned long long *waits, unsigned long long *ns);

/* For tests: run fn(arg) holding the gate a fence holds, as a fence
 * (fence 1) or as a capture's begin or end holds it (fence 0). */
void kv_prim_capture_gate_held(void (*fn)(void *), void *arg, int fence);

/* Wait until no capture is in progress, for at most ms milliseconds.
 * Returns 0 when none is (at once if none was), 1 when one still is at
 * the deadline, or at once on a thread that began a capture it has not
 * ended (waiting would not end it). */
int kv_prim_capture_wait(unsigned ms);

/* In a child after fork(): no capture is in progress there, and the
 * capture locks are new. */
void kv_prim_forked(void);

/* Put the calling thread in relaxed capture mode; returns the mode to give
 * kv_prim_unrelax, or -1 when the driver cannot (then nothing changed). */
int kv_prim_relax(void);
void kv_prim_unrelax(int mode);

/* Free and total memory of p's device as the driver reports it (p's
 * context is made current for the call if another is). */
int kv_prim_meminfo(const kv_prim_t *p, size_t *free_bytes, size_t *total);

/* The device ordinal of the calling thread's current context into *ordinal,
 * or 0 when it has none (or the driver is not initialised yet): the
 * runtime's default device, where a runtime call made now would allocate.
 * (A CUdevice is its ordinal.) Loads the driver. Returns 0 or
 * KVSHIM_ENODEV (no driver). */
int kv_prim_current_device(int *ordinal);

/* The driver library's handle (dlopen'ed by kv_prim_open), or NULL. */
void *kv_prim_driver(void);

/* dlsym as the C library does it, whatever interposes dlsym in this
 * process: hooks/ hand out wrappers through dlsym, kvshim itself must
 * always see the real functions. */
void *kv_prim_dlsym(void *handle, const char *name);

/* Monotonic nanoseconds, for the allocator's cost counters. */
uint64_t kv_prim_now_ns(void);

/* A condition variable whose timed waits run on the monotonic clock, and
 * the deadline ms milliseconds from now for such a wait. kv_prim_cond_init
 * returns 0 or pthread's error. */
int kv_prim_cond_init(pthread_cond_t *c);
struct timespec kv_prim_deadline(unsigned ms);

#endif /* KV_PRIM_H */
