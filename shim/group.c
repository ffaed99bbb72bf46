/*
 * group.c - see group.h. Groups live in a small table under one lock; a
 * map turns its block list into one byte range per block and tensor and
 * hands them all to the allocator at once, so a block's claim is its own
 * (two blocks on one page hold two claims) and a call backs all or none.
 * Each range names its tensor's span by id, so a group outliving its
 * spans gets KVSHIM_ERANGE and never touches a span made since.
 *
 * A group's tensors may lie on several devices (an engine splitting its
 * layers over GPUs in one process): the ranges then go to each device's
 * allocator in turn, and a map one device refuses is undone on the devices
 * before it; an unmap checks every device's claims before it drops any.
 * The tensors of one device go to its allocator in one call, as with one
 * device.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "group.h"
#include "kvshim.h"
#include "log.h"
#include "prim.h"
#include "shim.h"

struct group {
	CUdeviceptr *bases;
	uint64_t *spans;        /* the span of each tensor, by id: a tensor
				 * whose span is released (and whose address
				 * a new span may take) is refused */
	int *devs;              /* the device of each tensor's span */
	size_t ntensors;
	size_t block_bytes;
	size_t nblocks;
};

/* The ranges of one device in a call: runs[0..n) for allocator a. */
struct part {
	int dev;
	kv_alloc_t *a;
	struct kv_run *runs;
	size_t n;
	size_t ntensors;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct group **groups;   /* groups[id - 1], NULL when free */
static size_t ngroups;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

/* A fork waits for the table's lock: a child must neither find it held by
 * a thread it does not have nor the table half grown. */
static void fork_prepare(void)
{
	pthread_mutex_lock(&lock);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&lock);
}

static void fork_init(void)
{
	pthread_atfork(fork_prepare, fork_parent, fork_parent);
}

/* Take the table's lock, its fork handlers registered first. */
static void lock_table(void)
{
	pthread_once(&fork_once, fork_init);
	pthread_mutex_lock(&lock);
}

static void group_free(struct group *g)
{
	if (!g)
		return;
	free(g->bases);
	free(g->spans);
	free(g->devs);
	free(g);
}

/*
 * Find each tensor's span (and so its device) into g. Returns 0; or, a
 * tensor in no span (or too short for the blocks), why kvshim cannot run
 * on this thread's device if it cannot (KVSHIM_ECONFIG, KVSHIM_ENODEV),
 * else KVSHIM_ERANGE.
 */
static int find_spans(struct group *g, void *const *bases)
{
	CUdeviceptr base;
	kv_alloc_t *a;
	size_t i, span;
	int rc;

	for (i = 0; i < g->ntensors; i++) {
		CUdeviceptr t = (CUdeviceptr)(uintptr_t)bases[i];

		a = kv_shim_owner(t, &base, &span, &g->spans[i]);
		if (!a) {
			rc = kv_shim_alloc(&a);
			return rc ? rc : KVSHIM_ERANGE;
		}
		if (g->nblocks * g->block_bytes > span - (t - base))
			return KVSHIM_ERANGE;
		g->bases[i] = t;
		g->devs[i] = kv_alloc_device(a);
	}
	return 0;
}

int kv_group_create(void *const *bases, size_t ntensors, size_t block_bytes,
		    size_t nblocks, int *id)
{
	struct group *g = NULL, **grown;
	size_t i;
	int rc, slot = -1;

	if (!bases || !id || ntensors == 0 || block_bytes == 0 || nblocks == 0 ||
	    nblocks > SIZE_MAX / block_bytes ||
	    ntensors > SIZE_MAX / sizeof(*g->spans))
		return KVSHIM_EINVAL;
	if (!kv_shim_settings())
		return KVSHIM_ECONFIG;
	g = calloc(1, sizeof(*g));
	if (!g || !(g->bases = malloc(ntensors * sizeof(*g->bases))) ||
	    !(g->spans = malloc(ntensors * sizeof(*g->spans))) ||
	    !(g->devs = malloc(ntensors * sizeof(*g->devs)))) {
		rc = KVSHIM_ENOMEM;
		goto fail;
	}
	g->ntensors = ntensors;
	g->block_bytes = block_bytes;
	g->nblocks = nblocks;
	rc = find_spans(g, bases);
	if (rc)
		goto fail;

	lock_table();
	for (i = 0; i < ngroups && slot < 0; i++)
		if (!groups[i])
			slot = (int)i;
	if (slot < 0) {
		grown = realloc(groups, (ngroups + 1) * sizeof(*groups));
		if (!grown) {
			pthread_mutex_unlock(&lock);
			rc = KVSHIM_ENOMEM;
			goto fail;
		}
		groups = grown;
		slot = (int)ngroups++;
	}
	groups[slot] = g;
	pthread_mutex_unlock(&lock);
	*id = slot + 1;
	return 0;
fail:
	group_free(g);
	return rc;
}

void kv_group_locked(void (*fn)(void *), void *arg)
{
	lock_table();
	fn(arg);
	pthread_mutex_unlock(&lock);
}

/* The group behind id, lock held; NULL if none. */
static struct group *get(int id)
{
	return id > 0 && (size_t)id <= ngroups ? groups[id - 1] : NULL;
}

int kv_group_destroy(int id)
{
	struct group *g;

	lock_table();
	g = get(id);
	if (g)
		groups[id - 1] = NULL;
	pthread_mutex_unlock(&lock);
	if (!g)
		return KVSHIM_EINVAL;
	group_free(g);
	return 0;
}

/* The devices of g's tensors into parts[0..*nparts), in the order they first
 * appear, with how many tensors each holds. Lock held. */
static void devices_of(const struct group *g, struct part *parts, size_t *nparts)
{
	size_t t, k;

	*nparts = 0;
	for (t = 0; t < g->ntensors; t++) {
		for (k = 0; k < *nparts && parts[k].dev != g->devs[t]; k++)
			;
		if (k == *nparts) {
			memset(&parts[k], 0, sizeof(parts[k]));
			parts[k].dev = g->devs[t];
			(*nparts)++;
		}
		parts[k].ntensors++;
	}
}

/*
 * The byte ranges of blocks in every tensor, into *out (malloc'd), split by
 * device into parts[0..*nparts): each part's runs are its tensors' ranges,
 * tensor by tensor. Lock held. Returns 0, or KVSHIM_EINVAL for a bad id,
 * KVSHIM_ENOMEM.
 */
static int ranges(const struct group *g, const long long *blocks, size_t n,
		  struct kv_run **out, struct part *parts, size_t *nparts)
{
	struct kv_run *r;
	size_t i, t, k, at = 0;

	if (n > SIZE_MAX / sizeof(*r) / g->ntensors)
		return KVSHIM_EINVAL;
	for (i = 0; i < n; i++)
		if (blocks[i] < 0 || (unsigned long long)blocks[i] >= g->nblocks)
			return KVSHIM_EINVAL;
	r = malloc(n * g->ntensors * sizeof(*r));
	if (!r)
		return KVSHIM_ENOMEM;
	devices_of(g, parts, nparts);
	for (k = 0; k < *nparts; k++) {
		parts[k].runs = r + at;
		for (t = 0; t < g->ntensors; t++) {
			if (g->devs[t] != parts[k].dev)
				continue;
			for (i = 0; i < n; i++)
				r[at++] = (struct kv_run){
					g->bases[t] + (CUdeviceptr)blocks[i] * g->block_bytes,
					g->block_bytes, g->spans[t]
				};
		}
		parts[k].n = (size_t)(r + at - parts[k].runs);
	}
	*out = r;
	return 0;
}

/* Each part's allocator, started already (its tensors' spans were made
 * there). Returns 0, or KVSHIM_EINVAL when one is not running (kvshim was
 * shut down since the group was made). */
static int allocators(struct part *parts, size_t nparts)
{
	size_t k;

	for (k = 0; k < nparts; k++)
		if (!(parts[k].a = kv_shim_running_on(parts[k].dev)))
			return KVSHIM_EINVAL;
	return 0;
}

/* Map every part, all or none: a part refused undoes the parts before it.
 * A block manager keeps a request waiting rather than wait for processes
 * above their share to give back pages they use (kv_alloc_try_map_many).
 * Returns 0 or the first refusal. */
static int map_parts(int id, const struct part *parts, size_t nparts)
{
	size_t k, j;
	int rc = 0, r;

	for (k = 0; k < nparts && !rc; k++)
		rc = kv_alloc_try_map_many(parts[k].a, parts[k].runs, parts[k].n);
	if (!rc)
		return 0;
	for (j = 0; j + 1 < k; j++) {
		r = kv_alloc_unmap_many(parts[j].a, parts[j].runs, parts[j].n);
		if (r)
			kv_error("group %d: its blocks on device %d stay claimed after device %d refused them: %s",
				 id, parts[j].dev, parts[k - 1].dev, kv_shim_strerror(r));
	}
	return rc;
}

/* Unmap every part, all or none: with several devices, every device's
 * claims are checked before any is dropped. Returns 0 or the first error. */
static int unmap_parts(int id, const struct part *parts, size_t nparts)
{
	size_t k;
	int rc = 0, r;

	for (k = 0; k < nparts && nparts > 1 && !rc; k++)
		rc = kv_alloc_claimed_many(parts[k].a, parts[k].runs, parts[k].n);
	for (k = 0; k < nparts && !rc; k++) {
		r = kv_alloc_unmap_many(parts[k].a, parts[k].runs, parts[k].n);
		if (r && k > 0)     /* the same blocks unmapped meanwhile */
			kv_error("group %d: blocks unmapped on devices before %d, not on it: %s",
				 id, parts[k].dev, kv_shim_strerror(r));
		rc = r;
	}
	return rc;
}

/* 1 when every part's new pages fit in what its device can still get, 0
 * when not, or a negative error. */
static int parts_fit(const struct part *parts, size_t nparts)
{
	size_t k, cost, room;
	int rc;

	for (k = 0; k < nparts; k++) {
		rc = kv_alloc_cost_many(parts[k].a, parts[k].runs, parts[k].n, &cost);
		if (!rc)
			rc = kv_alloc_headroom(parts[k].a, &room);
		if (rc)
			return rc;
		if (cost > room)
			return 0;
	}
	return 1;
}

enum { UNMAP, MAP, FITS };

/* Map, unmap or check the blocks. The ranges are built under the
 * group lock, so a concurrent destroy cannot free the geometry under us. */
static int apply(int id, const long long *blocks, size_t n, int op)
{
	struct part parts[KV_MAX_DEVICES];
	struct kv_run *r = NULL;
	size_t nparts = 0;
	struct group *g;
	int rc;

	if (!blocks && n)
		return KVSHIM_EINVAL;
	if (n == 0)
		return op == FITS ? 1 : 0;
	lock_table();
	g = get(id);
	rc = g ? ranges(g, blocks, n, &r, parts, &nparts) : KVSHIM_EINVAL;
	pthread_mutex_unlock(&lock);
	if (!rc)
		rc = allocators(parts, nparts);
	if (!rc) {
		if (op == MAP)
			rc = map_parts(id, parts, nparts);
		else if (op == UNMAP)
			rc = unmap_parts(id, parts, nparts);
		else
			rc = parts_fit(parts, nparts);
	}
	free(r);
	return rc;
}

int kv_group_map(int id, const long long *blocks, size_t n)
{
	return apply(id, blocks, n, MAP);
}

int kv_group_unmap(int id, const long long *blocks, size_t n)
{
	return apply(id, blocks, n, UNMAP);
}

int kv_group_can_back(int id, const long long *blocks, size_t n)
{
	size_t room;
	int rc;

	if (!blocks) {
		rc = kv_group_headroom(id, &room);
		return rc ? rc : room >= n;
	}
	return apply(id, blocks, n, FITS);
}

/* Group id's devices, with their allocators and tensors, into
 * parts[0..*nparts); its block size and tensor count if asked. Returns 0,
 * or KVSHIM_EINVAL (no such group, or kvshim shut down since). */
static int group_parts(int id, struct part *parts, size_t *nparts,
		       size_t *block_bytes, size_t *ntensors)
{
	struct group *g;

	lock_table();
	g = get(id);
	if (g) {
		if (block_bytes)
			*block_bytes = g->block_bytes;
		if (ntensors)
			*ntensors = g->ntensors;
		devices_of(g, parts, nparts);
	}
	pthread_mutex_unlock(&lock);
	return g ? allocators(parts, *nparts) : KVSHIM_EINVAL;
}

int kv_group_headroom(int id, size_t *blocks)
{
	struct part parts[KV_MAX_DEVICES];
	size_t bytes, per_tensor, page, block_bytes = 0, nparts = 0, k, most = SIZE_MAX;
	int rc;

	if (!blocks)
		return KVSHIM_EINVAL;
	rc = group_parts(id, parts, &nparts, &block_bytes, NULL);
	/* a block needs room on every device its tensors are on */
	for (k = 0; k < nparts && !rc; k++) {
		/* (the page from the device's primitives: not the whole of
		 * kv_alloc_stats on an engine's admission path) */
		rc = kv_alloc_headroom(parts[k].a, &bytes);
		if (rc)
			break;
		page = kv_alloc_prim(parts[k].a)->page;
		per_tensor = bytes / parts[k].ntensors;
		per_tensor = per_tensor > page ? (per_tensor - page) / block_bytes : 0;
		most = per_tensor < most ? per_tensor : most;
	}
	if (!rc)
		*blocks = most;
	return rc;
}

/* A device's part of bytes spread over all of a group's tensors alike:
 * bytes * mine / all, rounded up (mine <= all). */
static size_t part_of(size_t bytes, size_t mine, size_t all)
{
	return bytes / all * mine + ((bytes % all) * mine + all - 1) / all;
}

/* The same bytes over the whole group, from one device's part of them:
 * part * all / mine, rounded up, SIZE_MAX if that overflows. */
static size_t whole_of(size_t part, size_t mine, size_t all)
{
	size_t rest = ((part % mine) * all + mine - 1) / mine;

	if (part / mine > (SIZE_MAX - rest) / all)
		return SIZE_MAX;
	return part / mine * all + rest;
}

/* State bytes of group id through say (kv_alloc_demand, kv_alloc_unused),
 * each device its part, and with index set, bytes not 0, a page more in
 * each of its tensors there. */
static int state(int id, size_t bytes, int index, void (*say)(kv_alloc_t *, size_t))
{
	struct part parts[KV_MAX_DEVICES];
	size_t nparts = 0, ntensors = 0, k, part, more;
	int rc = group_parts(id, parts, &nparts, NULL, &ntensors);

	for (k = 0; k < nparts && !rc; k++) {
		part = part_of(bytes, parts[k].ntensors, ntensors);
		more = index && bytes ? parts[k].ntensors * kv_alloc_prim(parts[k].a)->page : 0;
		say(parts[k].a, part > SIZE_MAX - more ? SIZE_MAX : part + more);
	}
	return rc;
}

/* The headroom counts the blocks whole pages hold however their ids fall,
 * a page a tensor fewer than its bytes: so a demand granted to the byte
 * admits the blocks it states only with that page index more. */
int kv_group_share_demand(int id, size_t bytes)
{
	return state(id, bytes, 1, kv_alloc_demand);
}

int kv_group_share_unused(int id, size_t bytes)
{
	return state(id, bytes, 0, kv_alloc_unused);
}

int kv_group_share_asked(int id, size_t *bytes)
{
	struct part parts[KV_MAX_DEVICES];
	size_t nparts = 0, ntensors = 0, k, asked, most = 0;
	int rc;

	if (!bytes)
		return KVSHIM_EINVAL;
	*bytes = 0;
	rc = group_parts(id, parts, &nparts, NULL, &ntensors);
	/* the blocks that free a device's ask free as much on the others:
	 * the most any device asks, over the whole group */
	for (k = 0; k < nparts && !rc; k++) {
		asked = kv_alloc_asked(parts[k].a);
		asked = asked ? whole_of(asked, parts[k].ntensors, ntensors) : 0;
		most = asked > most ? asked : most;
	}
	if (!rc)
		*bytes = most;
	return rc;
}

int kv_group_share_entitled(int id, size_t *bytes)
{
	struct part parts[KV_MAX_DEVICES];
	size_t nparts = 0, ntensors = 0, k, e, least = SIZE_MAX;
	int rc;

	if (!bytes)
		return KVSHIM_EINVAL;
	*bytes = 0;
	rc = group_parts(id, parts, &nparts, NULL, &ntensors);
	/* a batch reads its blocks on every device alike: the device whose
	 * part is least bounds the whole group */
	for (k = 0; k < nparts && !rc; k++) {
		e = kv_alloc_entitled(parts[k].a);
		if (e != SIZE_MAX)
			e = whole_of(e, parts[k].ntensors, ntensors);
		least = e < least ? e : least;
	}
	if (!rc)
		*bytes = least;
	return rc;
}

int kv_group_stats(int id, struct kvshim_stats *out)
{
	struct part parts[KV_MAX_DEVICES];
	size_t nparts = 0;
	int rc;

	if (!out)
		return KVSHIM_EINVAL;
	rc = group_parts(id, parts, &nparts, NULL, NULL);
	return rc ? rc : kv_alloc_stats(parts[0].a, out);
}
