/*
 * shim.h - kvshim's start-up and the process-wide state behind the public
 * ABI: configuration, log level, and an allocator per device this process
 * keeps KV on.
 */
#ifndef KV_SHIM_H
#define KV_SHIM_H

#include "alloc.h"
#include "boundary.h"
#include "config.h"

/*
 * One allocator per device: a device's allocator starts on the first call
 * that needs it there (any thread, once), with that device's context, pool,
 * worker and limits, and lives until kv_shim_shutdown. A lookup by device is
 * an array index with no lock once the device's start was tried.
 */

/*
 * Start device's allocator on first use and hand it back. Returns 0 with *a
 * set; KVSHIM_ECONFIG when a KVSHIM_* variable was malformed or refused
 * (kvshim then stays disabled: with KVSHIM_STRICT on the process exits
 * with status 64 instead); KVSHIM_ENODEV when KVSHIM_DEVICE leaves device
 * out (said once per device) or there is no driver; or the allocator's
 * start-up error, which is kept and returned again. *a is NULL on error.
 */
int kv_shim_alloc_on(int device, kv_alloc_t **a);

/* kv_shim_alloc_on for the calling thread's current device (its context's,
 * or device 0 without one: see kv_prim_current_device). */
int kv_shim_alloc(kv_alloc_t **a);

/* The device the calling thread works on now into *device. Returns 0,
 * KVSHIM_ECONFIG (kvshim disabled) or KVSHIM_ENODEV (no driver). */
int kv_shim_device(int *device);

/* The configuration, read on first use; NULL when a variable was
 * malformed (kvshim then passes everything through). */
const struct kv_config *kv_shim_settings(void);

/* Device's allocator if it has started, else NULL; never starts it. */
kv_alloc_t *kv_shim_running_on(int device);

/* The current device's allocator if it has started, else NULL. */
kv_alloc_t *kv_shim_running(void);

/* The started allocator whose span holds addr, with that span's base, size
 * and id (each may be NULL), or NULL when addr is in no span. Asks each
 * started allocator in turn: one lookup with one device, as many as the
 * devices kvshim runs on otherwise; no global lock. */
kv_alloc_t *kv_shim_owner(CUdeviceptr addr, CUdeviceptr *base, size_t *size,
			  uint64_t *id);

/* The allocator, when exactly one has started (the one-device case), else
 * NULL: a call on an address can go to it straight, as its own lookup
 * refuses an address outside its spans (KVSHIM_ERANGE). */
kv_alloc_t *kv_shim_sole(void);

/* The configuration as read at start-up; NULL before it. */
const struct kv_config *kv_shim_config(void);

/* Run the sweep hooks/ registered (kv_shim_set_sweep), if any. Returns the
 * call sites it patched, or 0 without one. */
int kv_shim_sweep(void);

/* Release everything kvshim holds, on every device; the next call starts
 * it again. For tests and orderly shutdown, not for use while other threads
 * call in. */
void kv_shim_shutdown(void);

/* kvshim_capture_wait: until no stream of the process captures (as the
 * hooks saw them, kv_shim_capture), for at most ms milliseconds. */
int kv_shim_capture_wait(unsigned ms);

/* The message behind kvshim_strerror. */
const char *kv_shim_strerror(int err);

#endif /* KV_SHIM_H */
