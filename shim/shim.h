/*
 * shim.h - kvshim's start-up and the process-wide state behind the public
 * ABI: configuration, log level, and the one allocator of this process.
 */
#ifndef KV_SHIM_H
#define KV_SHIM_H

#include "alloc.h"
#include "boundary.h"
#include "config.h"

/*
 * Start kvshim's allocator on first use (any thread, once) and hand back the
 * process's allocator. Returns 0 with *a set; KVSHIM_ECONFIG when a KVSHIM_* variable
 * was malformed (kvshim then stays disabled: with KVSHIM_STRICT on the
 * process exits with status 64 instead); or the allocator's start-up error
 * (KVSHIM_ENODEV without a GPU), which is kept and returned again.
 */
int kv_shim_alloc(kv_alloc_t **a);

/* The configuration, read on first use; NULL when a variable was
 * malformed (kvshim then passes everything through). */
const struct kv_config *kv_shim_settings(void);

/* The allocator if it has started, else NULL; never starts it. */
kv_alloc_t *kv_shim_running(void);

/* The configuration as read at start-up; NULL before it. */
const struct kv_config *kv_shim_config(void);

/* Run the sweep hooks/ registered (kv_shim_set_sweep), if any. Returns the
 * call sites it patched, or 0 without one. */
int kv_shim_sweep(void);

/* Release everything kvshim holds; the next call starts it again. For
 * tests and orderly shutdown, not for use while other threads call in. */
void kv_shim_shutdown(void);

/* The message behind kvshim_strerror. */
const char *kv_shim_strerror(int err);

#endif /* KV_SHIM_H */
