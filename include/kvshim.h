/*
 * kvshim.h - the public C interface of libkvshim.so.
 *
 * kvshim backs contiguous virtual spans of GPU memory with 2 MiB physical
 * pages only where the caller says data will live. A span is reserved once;
 * kvshim_map() backs a byte range before the caller's kernels touch it, and
 * kvshim_unmap() drops that range's claim. A page holding several claimed
 * ranges stays mapped until the last claim goes; a page with no claims stays
 * mapped in a cache, at no driver cost, until it is needed elsewhere or
 * trimmed.
 *
 * Every function returns 0 or a negative kvshim_error; on error nothing was
 * changed. All functions are thread-safe.
 *
 * Devices: kvshim keeps an allocator per CUDA device the process uses
 * (those KVSHIM_DEVICE names; all by default). A function on an address
 * (kvshim_map, kvshim_unmap, kvshim_release, the block groups) works on the
 * device whose span holds it, whatever device the calling thread is on;
 * kvshim_reserve, kvshim_reserve_dlpack, kvshim_trim and kvshim_stats work
 * on the calling thread's current device (its context's, device 0 without
 * one). On a device KVSHIM_DEVICE leaves out they return KVSHIM_ENODEV.
 */
#ifndef KVSHIM_H
#define KVSHIM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KVSHIM_VERSION_MAJOR 0
#define KVSHIM_VERSION_MINOR 1

enum kvshim_error {
	KVSHIM_OK = 0,
	KVSHIM_EINVAL = -1,      /* a NULL, zero or malformed argument */
	KVSHIM_ERANGE = -2,      /* the address range is not inside one span */
	KVSHIM_ENOTCLAIMED = -3, /* unmapping a range that holds no claim */
	KVSHIM_ELIMIT = -4,      /* the physical-memory limit would be passed */
	KVSHIM_ENOMEM = -5,      /* the device or the host is out of memory */
	KVSHIM_EDRIVER = -6,     /* the CUDA driver failed (logged) */
	KVSHIM_ENODEV = -7,      /* no CUDA driver or device */
	KVSHIM_ECONFIG = -8,     /* a KVSHIM_* variable is malformed */
	KVSHIM_EBUSY = -9,       /* the span is being released by another call */
	KVSHIM_ESTATE = -10      /* kvshim is shut down or was disabled */
};

/* What this process holds on one device. Byte counts are multiples of the
 * page size. */
struct kvshim_stats {
	size_t page_bytes;       /* physical page size (allocation granularity) */
	size_t reserved_bytes;   /* virtual bytes of all live spans */
	size_t mapped_bytes;     /* pages mapped into spans, cached ones included */
	size_t cached_bytes;     /* mapped but claimed by no range */
	size_t pooled_bytes;     /* physical pages held ready, mapped nowhere */
	size_t physical_bytes;   /* all physical pages held: mapped + pooled */
	size_t peak_physical_bytes;
	size_t limit_bytes;      /* the most physical_bytes may reach */
	size_t spans;
	unsigned long long map_calls;     /* kvshim_map calls that mapped pages */
	unsigned long long pages_mapped;  /* pages mapped into spans */
	unsigned long long map_ns;        /* time spent mapping them */
	unsigned long long pages_unmapped;/* pages unmapped from spans (trim) */
	unsigned long long unmap_ns;
	unsigned long long pages_created; /* physical pages created */
	unsigned long long create_ns;
	unsigned long long pages_released;/* physical pages given back */
	unsigned long long release_ns;
	unsigned long long pages_zeroed;  /* pages scrubbed before reuse */
	unsigned long long zero_ns;
	/* maps that waited for other processes sharing the budget (for their
	 * idle pages, their takes, or, below this process's share, for those
	 * above theirs to give back what they use: kvshim_map only), how long
	 * in all, how many of them waited for the last reason (one of their
	 * refusals was for it: another may let go of pages while a map's take
	 * halves its ask, and the smaller asks then wait for idle pages), and
	 * how many gave up */
	unsigned long long share_waits;
	unsigned long long share_wait_ns;
	unsigned long long share_waits_used;
	unsigned long long share_waits_failed;
	/* the budget this process shares with the others on its device (the
	 * shared segment's); 0 without a shared budget (KVSHIM_SHARE off) */
	unsigned long long share_budget_bytes;
	/* the processes sharing it now, this one included (those that ended
	 * are reaped first); 0 without one */
	unsigned long long share_members;
	/* the process's stream captures (any device's) whose begin waited
	 * for a fence of kvshim's in progress (a context-wide wait before
	 * pages leave a span, which no capture may run beside), and the
	 * nanoseconds they waited in all */
	unsigned long long capture_gate_waits;
	unsigned long long capture_gate_wait_ns;
};

/* Open a KV window: until the matching kvshim_kv_end, allocations of at
 * least KVSHIM_WINDOW_MIN bytes (cudaMalloc, cuMemAlloc) become lazy spans,
 * whose pages come only from kvshim_map. Windows nest and are process-wide.
 * Returns 0, or KVSHIM_ECONFIG when kvshim is disabled by its configuration. */
int kvshim_kv_begin(void);

/* Close the innermost KV window. Returns 0, or KVSHIM_ESTATE when none is
 * open. */
int kvshim_kv_end(void);

/*
 * Block groups: KV tensors sharing one block geometry, block b being bytes
 * [b * block_bytes, (b + 1) * block_bytes) of every tensor, as an engine's
 * block manager hands them out. Each tensor must lie inside a span (made in
 * a KV window, or by kvshim_reserve), on any device: each is backed on its
 * own. *group gets a handle > 0.
 */
int kvshim_group_create(void *const *bases, size_t ntensors,
			size_t block_bytes, size_t nblocks, int *group);
int kvshim_group_destroy(int group);

/* Back blocks[0..n) in every tensor of the group before kernels touch
 * them: all or, on error, none (KVSHIM_ELIMIT, KVSHIM_ENOMEM). A block on
 * pages mapped already costs no driver call; mapping is batched, one access
 * call per contiguous run of pages of each tensor. With a shared budget,
 * it waits, as kvshim_map does, for others' idle pages and takes; but where
 * the pages would come only from processes above their fair share giving
 * back pages they use (their engines do so between steps), it fails then
 * with KVSHIM_ELIMIT instead of waiting for that: the engine keeps the
 * request waiting and states its demand (kvshim_share_demand), and its
 * other requests go on. */
int kvshim_group_map(int group, const long long *blocks, size_t n);

/* Drop the blocks' claims (all or none). Pages left unclaimed stay cached. */
int kvshim_group_unmap(int group, const long long *blocks, size_t n);

/* How many more blocks could be backed now, handed out densely (for an
 * engine's admission check): *blocks, or a negative error. */
int kvshim_group_headroom(int group, size_t *blocks);

/* 1 if backing blocks[0..n) now would succeed (the new pages they need fit
 * in what kvshim can still get), 0 if not, or a negative error. With blocks
 * NULL: whether n more blocks, handed out densely, would. For an engine's
 * admission check, so requests wait instead of failing. */
int kvshim_group_can_back(int group, const long long *blocks, size_t n);

/* Reserve a lazy span of at least size bytes (rounded up to whole pages)
 * on the current device. No physical memory is used until kvshim_map(). */
int kvshim_reserve(size_t size, void **addr);

/* Release the span that starts at addr, its pages and any claims on them. */
int kvshim_release(void *addr);

/* Reserve a span for a dense, row-major tensor of ndim (1 to 8) dimensions
 * shape[0..ndim), each at least 1, of elements of DLPack type code (0 int,
 * 1 uint, 2 float, 4 bfloat, 5 complex, 6 bool) and bits (8 to 128, a power
 * of two), and describe it in *managed as a DLPack DLManagedTensor (the
 * unversioned struct of dlpack.h) on the current CUDA device. Its deleter
 * releases the span and frees the description; a framework that takes it
 * (e.g. PyTorch, from a "dltensor" capsule) calls it when the tensor dies.
 * The description names the device, so the framework never asks the driver
 * about an address that no page backs yet. Returns 0, KVSHIM_EINVAL for a
 * bad shape or type (nothing reserved), or what kvshim_reserve returns. */
int kvshim_reserve_dlpack(int ndim, const long long *shape, unsigned code,
			  unsigned bits, void **managed);

/* Back [addr, addr + len) with physical pages before returning; the range
 * must lie inside one span. Each page the range touches gains one claim.
 * Fails whole: KVSHIM_ELIMIT or KVSHIM_ENOMEM leave every page as it was. */
int kvshim_map(const void *addr, size_t len);

/* Drop one claim on each page [addr, addr + len) touches. Pages left without
 * claims stay mapped in the cache; no driver call is made. */
int kvshim_unmap(const void *addr, size_t len);

/* Give up to bytes of the current device's physical memory back to the
 * driver: pooled pages first, then cached pages, oldest first. *freed (may
 * be NULL) gets what was given back. */
int kvshim_trim(size_t bytes, size_t *freed);

/* What this process holds on the current device. */
int kvshim_stats(struct kvshim_stats *out);

/*
 * Sharing one GPU's budget with other processes (KVSHIM_SHARE): state the
 * bytes this process waits for now on the current device beyond the pages
 * it maps there (its idle pages, which serve it first, count in it), e.g.
 * the KV blocks of the requests waiting for admission (0: none). Processes below
 * their fair share that wait take budget back from those above theirs.
 * A statement holds for one second unless made again. Without a shared
 * budget, does nothing. Returns 0, or the error that keeps kvshim from
 * running (KVSHIM_ECONFIG, KVSHIM_ENODEV).
 */
int kvshim_share_demand(size_t bytes);

/*
 * Sharing one GPU's budget: state the bytes of pages this process maps on
 * the current device that only blocks no request uses claim (an engine's
 * prefix cache, which it may drop at will; 0: none). Unless it waits
 * (kvshim_share_demand), the fair shares count them out of what it uses,
 * and when others wait they are asked back first, whatever its share but
 * never below its floor (kvshim_share_asked). A statement holds for
 * one second unless made again, and counts at most what the process
 * uses. Without a shared budget, does nothing. Returns 0, or the error
 * that keeps kvshim from running.
 */
int kvshim_share_unused(size_t bytes);

/*
 * The bytes of what this process uses on the current device (claimed
 * blocks, not idle pages) it is asked to give back now: others wait
 * below their fair share of that GPU's budget, and the free budget and
 * idle pages cannot cover them. Its unused pages (kvshim_share_unused)
 * are asked for first, whatever its share; then what it uses beyond its
 * share; in whole pages (unused pages rounded up, the rest down, never
 * below its floor). An engine frees them by dropping those blocks, then by
 * preempting work (its idle pages are given back without it). *bytes is
 * 0 without a shared budget. Returns 0, KVSHIM_EINVAL (bytes NULL), or
 * the error that keeps kvshim from running.
 */
int kvshim_share_asked(size_t *bytes);

/*
 * The three above for a block group whose tensors may lie on several GPUs
 * (an engine splitting its layers over them in one process): bytes are of
 * the group's blocks over all its tensors, as the engine counts them.
 * Each GPU's segment gets its part, by how many of the tensors lie there
 * (rounded up). A demand not 0 gets a page more in each tensor:
 * kvshim_group_headroom counts the blocks whole pages hold however their
 * ids fall, a page a tensor fewer than their bytes, so a demand granted
 * to the byte admits the blocks it states (a caller that adds that page
 * index itself counts it twice). The ask
 * is the most any GPU asks for, scaled to the whole group (the blocks
 * that free it free their part on the others), so it need not be whole
 * pages. A statement is the process's on each GPU, as above: one group
 * (or the calls above) per process and GPU, or they overwrite each other;
 * and the ask a GPU makes is of all the process holds there. With one
 * GPU, the same as the calls above made on it (the demand with that page
 * index more), whatever the current device. Return 0, or KVSHIM_EINVAL
 * (no such group, kvshim shut down since it was made, or bytes NULL;
 * *bytes is then 0 when it can be set).
 */
int kvshim_group_share_demand(int group, size_t bytes);
int kvshim_group_share_unused(int group, size_t bytes);
int kvshim_group_share_asked(int group, size_t *bytes);

/*
 * The bytes of the group's blocks (over all its tensors) this process is
 * entitled to: its part of each GPU's shared budget were every process
 * sharing it to want all it may, by their weights (KVSHIM_WEIGHT), at
 * least its floor and at most its ceiling (KVSHIM_MIN, KVSHIM_MAX) and its
 * limit (KVSHIM_LIMIT; another process's limit, stated in the segment,
 * leaves what it cannot hold to the rest), the
 * least over the group's GPUs, scaled to the whole group. It moves as
 * processes join and leave, not with their load: an engine bounds what one
 * batch reads by it, and keeps its share of the GPU's work as others come
 * (README.md, "Sharing one GPU"). SIZE_MAX (no bound) where no GPU of the
 * group shares a budget. Returns 0, or KVSHIM_EINVAL (no such group,
 * kvshim shut down since it was made, or bytes NULL; *bytes is then 0 when
 * it can be set).
 */
int kvshim_group_share_entitled(int group, size_t *bytes);

/* What kvshim_stats says, on the GPU of the group's first tensor, whatever
 * the current device (an engine's page size and the processes sharing its
 * budget, from the thread it schedules on). Returns 0, or KVSHIM_EINVAL
 * (no such group, or out NULL). */
int kvshim_group_stats(int group, struct kvshim_stats *out);

/*
 * Wait until no stream of this process captures a CUDA graph, for at most
 * timeout_ms milliseconds. For a thread doing an engine's work beside it,
 * such as backing blocks ahead (kvshim_group_map): the driver's map and
 * unmap calls made in the process while a stream captures slow the
 * capture, which is on the engine's path (docs/BENCHMARKS.md, session 24),
 * and kvshim's own worker holds its pool's upkeep back the same way. Only
 * captures begun through kvshim's hooks count (an engine's, under the
 * preload). Returns 0 when none captures (at once if none did), 1 when one
 * still does after timeout_ms, or at once on a thread that began a capture
 * it has not ended (waiting would not end it). Never an error. (A thread
 * that ends another's capture, as relaxed mode allows, is taken for it:
 * if one of its own runs too, its waits then last their timeout.)
 */
int kvshim_capture_wait(unsigned timeout_ms);

/* A static English message for a kvshim_error; never NULL. */
const char *kvshim_strerror(int err);

#ifdef __cplusplus
}
#endif

#endif /* KVSHIM_H */
