/*
 * policy.c - see policy.h. The checks that every allocation pays sit first
 * and touch no lock: a process that never opens a window and sets no size
 * policy never starts the allocator.
 */
#include <stdint.h>
#include <stdlib.h>

#include "alloc.h"
#include "kvshim.h"
#include "log.h"
#include "policy.h"
#include "shim.h"

static int window;   /* open KV windows, process-wide */

int kv_policy_window(int open)
{
	int n = __atomic_load_n(&window, __ATOMIC_ACQUIRE);

	if (open) {
		__atomic_add_fetch(&window, 1, __ATOMIC_ACQ_REL);
		return 0;
	}
	do {
		if (n <= 0)
			return KVSHIM_ESTATE;
	} while (!__atomic_compare_exchange_n(&window, &n, n - 1, 0,
					      __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
	return 0;
}

/* The allocator whose span holds ptr (its base and size in *base, *size),
 * whichever device it is on; NULL when ptr is in no span. */
static kv_alloc_t *owner(CUdeviceptr ptr, CUdeviceptr *base, size_t *size)
{
	return kv_shim_owner(ptr, base, size, NULL);
}

int kv_policy_alloc(size_t size, CUdeviceptr *ptr)
{
	const struct kv_config *c = kv_shim_settings();
	int lazy, rc, dev;
	kv_alloc_t *a;

	if (!c)
		return 0;
	lazy = __atomic_load_n(&window, __ATOMIC_ACQUIRE) > 0 &&
	       size >= c->window_min;
	if (!lazy && (c->min_bytes == SIZE_MAX || size < c->min_bytes))
		return 0;
	/* on the device the caller's context is on, if KVSHIM_DEVICE has it */
	if (kv_shim_device(&dev) || !kv_config_manages(c, dev))
		return 0;
	rc = kv_shim_alloc_on(dev, &a);
	if (rc)
		return 0;       /* kvshim cannot run here: stay out of the way */
	rc = kv_alloc_reserve(a, size, ptr);
	if (rc)
		return rc;
	/*
	 * A lazy span still backs its last page: PyTorch's caching allocator
	 * rounds a segment up to 2 MiB and may carve later tensors out of the
	 * tail past the KV tensor, and those get no first-touch signal. An
	 * eager span is backed whole.
	 */
	if (lazy)
		rc = kv_alloc_map(a, *ptr + size - 1, 1);
	else
		rc = kv_alloc_map(a, *ptr, size);
	if (rc) {
		kv_alloc_release(a, *ptr);
		return rc;
	}
	kv_debug("%s span of %zu bytes at 0x%llx", lazy ? "lazy" : "eager",
		 size, (unsigned long long)*ptr);
	return 1;
}

int kv_policy_free(CUdeviceptr ptr)
{
	CUdeviceptr base;
	kv_alloc_t *a = owner(ptr, &base, NULL);

	if (!a || base != ptr)
		return 0;
	return kv_alloc_release(a, ptr) == 0 ? 1 : 0;
}

/* The byte count of a memset that starts at ptr in the span [base, base +
 * size): 0 with *bytes set, or the error the driver's refusal means. */
static int memset_bytes(CUdeviceptr ptr, size_t count, size_t elem,
			CUdeviceptr base, size_t size, size_t *bytes)
{
	if (__builtin_mul_overflow(count, elem, bytes) || ptr % elem)
		return KVSHIM_EINVAL;
	if (*bytes > size - (ptr - base))
		return KVSHIM_ERANGE;
	return 0;
}

int kv_policy_memset(CUdeviceptr ptr, size_t count, size_t elem, int zero,
		     struct kv_policy_run **runs, size_t *nruns)
{
	const struct kv_config *c = kv_shim_settings();
	struct kv_run *mapped;
	CUdeviceptr base;
	size_t i, n, size, bytes;
	kv_alloc_t *a;
	int rc;

	if (count == 0 || !(a = owner(ptr, &base, &size)))
		return 0;
	rc = memset_bytes(ptr, count, elem, base, size, &bytes);
	if (rc)
		return rc;
	if (!zero || !c->zero) {
		/* the bytes must land: back the range, then set all of it */
		*runs = malloc(sizeof(**runs));
		if (!*runs)
			return KVSHIM_ENOMEM;
		rc = kv_alloc_pin(a, ptr, bytes);
		if (rc) {
			free(*runs);
			return rc;
		}
		(*runs)->addr = ptr;
		(*runs)->len = bytes;
		*nruns = 1;
		return 1;
	}
	rc = kv_alloc_pin_mapped(a, ptr, bytes, &mapped, &n);
	if (rc)
		return rc;
	/* (the pins stay if this fails: a pin only keeps a page backed until
	 * its span goes, and pinning again changes nothing) */
	*runs = malloc((n ? n : 1) * sizeof(**runs));
	if (!*runs) {
		free(mapped);
		return KVSHIM_ENOMEM;
	}
	for (i = 0; i < n; i++) {
		(*runs)[i].addr = mapped[i].addr;
		(*runs)[i].len = mapped[i].len;
	}
	free(mapped);
	*nruns = n;
	return 1;
}

/* The bytes from the first to the last one a pitched memset sets, into
 * *bytes: 0, or KVSHIM_EINVAL for arguments the driver refuses. */
static int box_bytes(CUdeviceptr ptr, size_t elem, size_t width, size_t height,
		     size_t depth, size_t pitch, size_t ysize, size_t *bytes)
{
	size_t row, slice = 0, rows;

	if (__builtin_mul_overflow(width, elem, &row) || ptr % elem)
		return KVSHIM_EINVAL;
	if ((height > 1 || depth > 1) && (pitch % elem || pitch < row))
		return KVSHIM_EINVAL;
	if (depth > 1 && (height > ysize || __builtin_mul_overflow(pitch, ysize, &slice)))
		return KVSHIM_EINVAL;
	if (__builtin_mul_overflow(depth - 1, slice, bytes) ||
	    __builtin_mul_overflow(height - 1, pitch, &rows) ||
	    __builtin_add_overflow(*bytes, rows, bytes) ||
	    __builtin_add_overflow(*bytes, row, bytes))
		return KVSHIM_EINVAL;
	return 0;
}

int kv_policy_memset_pitched(CUdeviceptr ptr, size_t elem, size_t width,
			     size_t height, size_t depth, size_t pitch,
			     size_t ysize)
{
	CUdeviceptr base;
	size_t size, bytes;
	kv_alloc_t *a;
	int rc;

	if (!width || !height || !depth || !(a = owner(ptr, &base, &size)))
		return 0;
	rc = box_bytes(ptr, elem, width, height, depth, pitch, ysize, &bytes);
	if (rc)
		return rc;
	if (bytes > size - (ptr - base))
		return KVSHIM_ERANGE;
	rc = kv_alloc_pin(a, ptr, bytes);
	return rc ? rc : 1;
}

int kv_policy_touch(CUdeviceptr ptr, size_t bytes)
{
	kv_alloc_t *a;

	if (bytes == 0 || !(a = owner(ptr, NULL, NULL)))
		return 0;
	return kv_alloc_pin(a, ptr, bytes);
}

/* The part of a span one side of a copy covers. */
struct copy_run {
	kv_alloc_t *a;          /* NULL: the side is in no span */
	CUdeviceptr start;
	size_t bytes;
};

/*
 * Check one side of a copy (see kv_policy_copy) and say which bytes of
 * which spans it covers: in r[0] its box, from its first row's first byte
 * to its last byte (in the span holding its first byte, or else the one
 * holding its pointer); in r[1], for a 2D or 3D copy whose box starts past
 * its pointer, as many bytes from the pointer (the x, y and z offsets left
 * out), in the pointer's span and cut at its end: the driver refuses the
 * copy while a page of those is unmapped, not only of the box (those the
 * rows skip included). The pages between the two, past the box's bytes
 * from the pointer, it does not ask for (tests/gpu/pitched_probe.py;
 * docs/BENCHMARKS.md, section 5). Returns 0, or the error the driver's
 * refusal means.
 */
static int copy_side(const struct kv_policy_box *b, size_t width, size_t height,
		     size_t depth, struct copy_run r[2])
{
	CUdeviceptr base, pbase;
	size_t off, size, psize;
	kv_alloc_t *pa;
	int rc;

	r[0].a = r[1].a = NULL;
	if (!b->ptr || !width || !height || !depth)
		return 0;
	if (__builtin_mul_overflow(b->z, b->ysize, &off) ||
	    __builtin_add_overflow(off, b->y, &off) ||
	    __builtin_mul_overflow(off, b->pitch, &off) ||
	    __builtin_add_overflow(off, b->x, &off) ||
	    __builtin_add_overflow(b->ptr, off, &r[0].start))
		return owner(b->ptr, NULL, NULL) ? KVSHIM_EINVAL : 0;
	/* (a linear copy starts at its pointer: one look-up, on every copy) */
	pa = owner(b->ptr, &pbase, &psize);
	r[0].a = off ? owner(r[0].start, &base, &size) : pa;
	if (!off) {
		base = pbase;
		size = psize;
	} else if (!r[0].a && pa) {
		r[0].a = pa;
		base = pbase;
		size = psize;
	}
	if (!r[0].a)
		return 0;
	rc = box_bytes(r[0].start, 1, width, height, depth, b->pitch, b->ysize,
		       &r[0].bytes);
	if (rc)
		return rc;
	if (r[0].start < base || r[0].start - base >= size ||
	    r[0].bytes > size - (r[0].start - base))
		return KVSHIM_ERANGE;
	if (!off || !pa)
		return 0;
	r[1].a = pa;
	r[1].start = b->ptr;
	r[1].bytes = r[0].bytes < psize - (b->ptr - pbase) ? r[0].bytes
							  : psize - (b->ptr - pbase);
	/* in one span and touching the box: one run from the pointer */
	if (pa == r[0].a && base == pbase && r[0].start - b->ptr <= r[1].bytes) {
		r[0].bytes += r[0].start - b->ptr;
		r[0].start = b->ptr;
		r[1].a = NULL;
	}
	return 0;
}

/* Check every side of a copy; r: each side's two runs. See kv_policy_copy. */
static int copy_sides(const struct kv_policy_box *sides, size_t nsides, size_t width,
		      size_t height, size_t depth, struct copy_run *r)
{
	size_t i;
	int rc;

	if (nsides > 2)
		return KVSHIM_EINVAL;
	for (i = 0; i < nsides; i++) {
		rc = copy_side(&sides[i], width, height, depth, &r[2 * i]);
		if (rc)
			return rc;
	}
	return 0;
}

int kv_policy_copy_check(const struct kv_policy_box *sides, size_t nsides, size_t width,
			 size_t height, size_t depth)
{
	struct copy_run r[4];

	return copy_sides(sides, nsides, width, height, depth, r);
}

int kv_policy_copy(const struct kv_policy_box *sides, size_t nsides, size_t width,
		   size_t height, size_t depth)
{
	struct copy_run r[4];
	size_t i;
	int rc;

	rc = copy_sides(sides, nsides, width, height, depth, r);
	if (rc)
		return rc;
	for (i = 0; i < 2 * nsides; i++) {
		if (!r[i].a)
			continue;
		rc = kv_alloc_pin(r[i].a, r[i].start, r[i].bytes);
		if (rc) {
			kv_warn("cannot back %zu bytes at 0x%llx for a copy: %d", r[i].bytes,
				(unsigned long long)r[i].start, rc);
			return rc;
		}
	}
	return 0;
}

void kv_policy_meminfo(size_t *free_bytes, size_t *total)
{
	const struct kv_config *c = kv_shim_settings();
	struct kv_alloc_mem m;
	struct kvshim_stats s;
	size_t unbacked, budget, others, cap;
	kv_alloc_t *a;
	int dev;

	if (!c || c->meminfo != KV_MEMINFO_VIRTUAL || !free_bytes)
		return;
	/* the figures are the current device's (the caller's context's) */
	if (kv_shim_device(&dev) || !kv_config_manages(c, dev))
		return;
	a = kv_shim_running_on(dev);
	/* sharing a budget by request (KVSHIM_SHARE=on), an engine sizes its
	 * cache from the first look: that must already show the budget (the
	 * caller has a context); by default (auto) memory info alone starts
	 * nothing, so that a program making no KV span runs as without kvshim */
	if (!a && c->share == KV_SHARE_CFG_ON && kv_shim_alloc_on(dev, &a))
		return;
	/* read again beside the pool's figures (a page the worker is making
	 * is pooled before the driver counts it); failing that, the caller
	 * keeps the driver's own */
	if (!a || kv_alloc_meminfo(a, &m, &s))
		return;
	*free_bytes = m.free_bytes;
	if (total)
		*total = m.total;
	/* as if every span were backed, and kvshim's idle pages were free */
	unbacked = s.reserved_bytes > s.mapped_bytes ?
		   s.reserved_bytes - s.mapped_bytes : 0;
	*free_bytes += m.idle;
	/*
	 * Sharing a budget, the engine plans as if alone: the other processes'
	 * pages count as free (they give idle ones back on request, and maps
	 * wait or fail cleanly otherwise), up to the budget less what this
	 * process has claimed.
	 */
	if (kv_alloc_shared(a, &budget, &others, NULL)) {
		*free_bytes += others;
		cap = budget > m.claimed ? budget - m.claimed : 0;
		if (*free_bytes > cap)
			*free_bytes = cap;
	}
	*free_bytes = *free_bytes > unbacked ? *free_bytes - unbacked : 0;
	if (total && *free_bytes > *total)
		*free_bytes = *total;
}
