/*
 * boundary.h - the shim as hooks/ reach it, besides the policy (policy.h):
 * what the interposed entry points need from the layers below, so that
 * hooks/ never include an allocator header. Nothing here includes one.
 */
#ifndef KV_BOUNDARY_H
#define KV_BOUNDARY_H

/* Reset after fork, in the child (see shim.c). */
void kv_shim_forked(void);

/*
 * The hooks' catch-up on modules loaded since their last look, run by
 * kvshim_kv_begin before a KV window opens. The ABI lives in shim/ and
 * cannot call up into hooks/: libkvshim.so's hooks register their sweep
 * here when the library loads; without hooks (tests linking the core
 * alone) there is none and the window opens without one. sweep returns the
 * call sites patched; NULL unregisters.
 */
void kv_shim_set_sweep(int (*sweep)(void));

/* A stream capture begins (begin 1: before the driver's call) or ends
 * (begin 0: after it, or after a begin that failed). While any capture is
 * in progress kvshim makes no context-wide synchronisation: unmaps that
 * need a fence wait for the end, when the worker is woken to do them.
 * (Here, not in shim.h: the hooks of the capture calls are its callers.) */
void kv_shim_capture(int begin);

/* The CUDA driver library's handle (libcuda.so.1, opened by the allocator's
 * primitive layer on first use), or NULL without a driver. */
void *kv_shim_driver(void);

/* dlsym as the C library does it, whatever interposes dlsym in this process
 * (hooks/ hand out wrappers through dlsym; their own look-ups must see the
 * real functions). */
void *kv_shim_dlsym(void *handle, const char *name);

#endif /* KV_BOUNDARY_H */
