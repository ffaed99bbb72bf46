/*
 * policy.h - which allocations become spans, and what the engine's other
 * memory calls mean on a span. Called by hooks/; calls the allocator.
 *
 * An allocation becomes a lazy span when a KV window is open (the engine
 * called kvshim_kv_begin) and it is at least KVSHIM_WINDOW_MIN; pages then
 * come from first-touch signals (kvshim_map). Outside a window, allocations
 * of at least KVSHIM_MIN_BYTES (off by default) become spans mapped in full:
 * correct without any signal, yet released and accounted like the rest.
 * Everything else passes through untouched.
 */
#ifndef KV_POLICY_H
#define KV_POLICY_H

#include <stddef.h>

#include <cuda.h>

/* A byte range of device memory a caller must still work on. (The policy's
 * own type: hooks/ see no allocator header.) */
struct kv_policy_run {
	CUdeviceptr addr;
	size_t len;
};

/* Decide on an allocation of size bytes. Returns 1 with *ptr set when
 * kvshim made a span, 0 when the call should pass through to the driver,
 * or a negative error (the caller reports out of memory). */
int kv_policy_alloc(size_t size, CUdeviceptr *ptr);

/* Returns 1 when ptr was a span and is released, 0 to pass through. */
int kv_policy_free(CUdeviceptr ptr);

/*
 * A memset of count elements of elem bytes (1, 2 or 4) at ptr; zero says
 * every byte written is 0. Returns 0 to pass the call through whole (ptr is
 * in no span, or count is 0: the driver judges its own arguments); 1 when
 * ptr is in a span, with *runs (free with free()) and *nruns the parts the
 * caller must still set: a zero memset skips unmapped pages, which arrive
 * zeroed, any other backs the range first; the pages set are pinned. Or a
 * negative error, and nothing changed: KVSHIM_EINVAL where the driver would
 * refuse the call (the byte count overflows, ptr is not aligned to elem),
 * KVSHIM_ERANGE when the range runs past the span's end, or the
 * allocator's error.
 */
int kv_policy_memset(CUdeviceptr ptr, size_t count, size_t elem, int zero,
		     struct kv_policy_run **runs, size_t *nruns);

/*
 * A pitched memset: depth slices of height rows of width elements of elem
 * bytes at ptr, rows pitch bytes apart, slices pitch * ysize bytes apart (a
 * 2D memset is one slice). Its rows may land on any page of the box they
 * span, so every page of it is backed and pinned, whatever the value.
 * Returns 0 to pass the call through (ptr in no span, or nothing to set); 1
 * when ptr is in a span and the box is backed (the caller then makes the
 * call whole); or a negative error, nothing changed: KVSHIM_EINVAL where the driver would
 * refuse the call (sizes that overflow, ptr or the pitch not aligned to
 * elem, a pitch narrower than a row, slices that overlap), KVSHIM_ERANGE
 * when the box runs past the span's end, or the allocator's error.
 */
int kv_policy_memset_pitched(CUdeviceptr ptr, size_t elem, size_t width,
			     size_t height, size_t depth, size_t pitch,
			     size_t ysize);

/* A copy is about to read or write [ptr, ptr + bytes): back whatever span
 * pages it covers and pin them (they stay backed until the span is
 * released; a pin is no counter, so copies never pile claims up).
 * Returns 0 (also when ptr is no span), KVSHIM_ERANGE when the range runs
 * past its span's end (nothing backed), or the allocator's error. */
int kv_policy_touch(CUdeviceptr ptr, size_t bytes);

/*
 * One side of a copy, linear, 2D or 3D: where its pointer is and how its
 * rows lie. A side that is no device memory (host memory, an array) is
 * given as ptr 0.
 */
struct kv_policy_box {
	CUdeviceptr ptr;        /* the side's pointer; 0: not device memory */
	size_t x, y, z;         /* where the copy starts: bytes into a row, rows, slices */
	size_t pitch;           /* bytes from one row to the next */
	size_t ysize;           /* rows from one slice to the next */
};

/*
 * A copy of depth slices of height rows of width bytes (a linear copy: one
 * row of one slice) is about to read or write its sides: back and pin every
 * span page of each side's box, from its first row's first byte to its last
 * byte (those its rows skip included: its rows touch them), and, where the
 * box starts past the side's pointer (x, y, z), as many bytes from the
 * pointer, cut at its span's end (the driver refuses a 2D or 3D copy with a
 * page of those unmapped, and asks for none between them and the box; a
 * pin is no counter: copies never pile claims up). A side's box lies in the
 * span holding its first byte, or else the one holding its pointer; a side
 * in no span is left alone. Every side is checked before any page is
 * backed. Returns 0; KVSHIM_EINVAL
 * where the driver would refuse the copy (sizes or offsets that overflow, a
 * pitch narrower than a row of several, slices of fewer rows than the
 * copy's), KVSHIM_ERANGE when a side's box runs past its span's end, and
 * nothing backed; or the allocator's error for a page it could not back
 * (logged; pages backed for the copy by then stay pinned).
 */
int kv_policy_copy(const struct kv_policy_box *sides, size_t nsides, size_t width,
		   size_t height, size_t depth);

/* kv_policy_copy's checks alone: 0, KVSHIM_EINVAL or KVSHIM_ERANGE as it
 * would answer them; nothing is backed. For a batch of copies, checked
 * whole before any is backed. */
int kv_policy_copy_check(const struct kv_policy_box *sides, size_t nsides, size_t width,
			 size_t height, size_t depth);

/* Adjust the driver's free/total figures as KVSHIM_MEMINFO says. */
void kv_policy_meminfo(size_t *free_bytes, size_t *total);

/* Open (open = 1) or close (0) a KV window; windows nest. Returns 0, or
 * KVSHIM_ESTATE when closing with none open. */
int kv_policy_window(int open);

#endif /* KV_POLICY_H */
