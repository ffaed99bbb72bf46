/*
 * group.c - see group.h. Groups live in a small table under one lock; a
 * map turns its block list into one byte range per block and tensor and
 * hands them all to the allocator at once, so a block's claim is its own
 * (two blocks on one page hold two claims) and a call backs all or none.
 * Each range names its tensor's span by id, so a group outliving its
 * spans gets KVSHIM_ERANGE and never touches a span made since.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "group.h"
#include "kvshim.h"
#include "shim.h"

struct group {
	CUdeviceptr *bases;
	uint64_t *spans;        /* the span of each tensor, by id: a tensor
				 * whose span is released (and whose address
				 * a new span may take) is refused */
	size_t ntensors;
	size_t block_bytes;
	size_t nblocks;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct group **groups;   /* groups[id - 1], NULL when free */
static size_t ngroups;

int kv_group_create(void *const *bases, size_t ntensors, size_t block_bytes,
		    size_t nblocks, int *id)
{
	struct group *g = NULL, **grown;
	CUdeviceptr base;
	kv_alloc_t *a;
	size_t i, span;
	int rc, slot = -1;

	if (!bases || !id || ntensors == 0 || block_bytes == 0 || nblocks == 0 ||
	    nblocks > SIZE_MAX / block_bytes ||
	    ntensors > SIZE_MAX / sizeof(*g->spans))
		return KVSHIM_EINVAL;
	rc = kv_shim_alloc(&a);
	if (rc)
		return rc;
	g = calloc(1, sizeof(*g));
	if (!g || !(g->bases = malloc(ntensors * sizeof(*g->bases))) ||
	    !(g->spans = malloc(ntensors * sizeof(*g->spans)))) {
		rc = KVSHIM_ENOMEM;
		goto fail;
	}
	for (i = 0; i < ntensors; i++) {
		CUdeviceptr t = (CUdeviceptr)(uintptr_t)bases[i];

		if (kv_alloc_span(a, t, &base, &span, &g->spans[i]) ||
		    nblocks * block_bytes > span - (t - base)) {
			rc = KVSHIM_ERANGE;
			goto fail;
		}
		g->bases[i] = t;
	}
	g->ntensors = ntensors;
	g->block_bytes = block_bytes;
	g->nblocks = nblocks;

	pthread_mutex_lock(&lock);
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
	if (g) {
		free(g->bases);
		free(g->spans);
		free(g);
	}
	return rc;
}

/* The group behind id, lock held; NULL if none. */
static struct group *get(int id)
{
	return id > 0 && (size_t)id <= ngroups ? groups[id - 1] : NULL;
}

int kv_group_destroy(int id)
{
	struct group *g;

	pthread_mutex_lock(&lock);
	g = get(id);
	if (g)
		groups[id - 1] = NULL;
	pthread_mutex_unlock(&lock);
	if (!g)
		return KVSHIM_EINVAL;
	free(g->bases);
	free(g->spans);
	free(g);
	return 0;
}

/* The byte ranges of blocks in every tensor, or an error for a bad id. */
static int ranges(const struct group *g, const long long *blocks, size_t n,
		  struct kv_run **out)
{
	struct kv_run *r;
	size_t i, t;

	if (n > SIZE_MAX / sizeof(*r) / g->ntensors)
		return KVSHIM_EINVAL;
	for (i = 0; i < n; i++)
		if (blocks[i] < 0 || (unsigned long long)blocks[i] >= g->nblocks)
			return KVSHIM_EINVAL;
	r = malloc(n * g->ntensors * sizeof(*r));
	if (!r)
		return KVSHIM_ENOMEM;
	for (t = 0; t < g->ntensors; t++)
		for (i = 0; i < n; i++)
			r[t * n + i] = (struct kv_run){
				g->bases[t] + (CUdeviceptr)blocks[i] * g->block_bytes,
				g->block_bytes, g->spans[t]
			};
	*out = r;
	return 0;
}

enum { UNMAP, MAP, COST };

/* Map, unmap or cost the blocks. The ranges are built under the
 * group lock, so a concurrent destroy cannot free the geometry under us. */
static int apply(int id, const long long *blocks, size_t n, int op,
		 size_t *cost)
{
	kv_alloc_t *a = kv_shim_running();
	struct kv_run *r = NULL;
	size_t nruns = 0;
	struct group *g;
	int rc;

	if (!blocks && n)
		return KVSHIM_EINVAL;
	if (cost)
		*cost = 0;
	if (n == 0)
		return 0;
	if (!a)
		return KVSHIM_EINVAL;
	pthread_mutex_lock(&lock);
	g = get(id);
	rc = g ? ranges(g, blocks, n, &r) : KVSHIM_EINVAL;
	if (!rc)
		nruns = n * g->ntensors;
	pthread_mutex_unlock(&lock);
	if (rc)
		return rc;
	if (op == MAP)
		rc = kv_alloc_map_many(a, r, nruns);
	else if (op == UNMAP)
		rc = kv_alloc_unmap_many(a, r, nruns);
	else
		rc = kv_alloc_cost_many(a, r, nruns, cost);
	free(r);
	return rc;
}

int kv_group_map(int id, const long long *blocks, size_t n)
{
	return apply(id, blocks, n, MAP, NULL);
}

int kv_group_unmap(int id, const long long *blocks, size_t n)
{
	return apply(id, blocks, n, UNMAP, NULL);
}

int kv_group_can_back(int id, const long long *blocks, size_t n)
{
	kv_alloc_t *a = kv_shim_running();
	size_t cost, room;
	int rc;

	if (!a)
		return KVSHIM_EINVAL;
	if (!blocks) {
		rc = kv_group_headroom(id, &room);
		return rc ? rc : room >= n;
	}
	rc = apply(id, blocks, n, COST, &cost);
	if (!rc)
		rc = kv_alloc_headroom(a, &room);
	return rc ? rc : cost <= room;
}

int kv_group_headroom(int id, size_t *blocks)
{
	kv_alloc_t *a = kv_shim_running();
	struct kvshim_stats s;
	size_t bytes, per_tensor, ntensors, block_bytes;
	struct group *g;
	int rc;

	if (!blocks || !a)
		return KVSHIM_EINVAL;
	pthread_mutex_lock(&lock);
	g = get(id);
	ntensors = g ? g->ntensors : 0;
	block_bytes = g ? g->block_bytes : 0;
	pthread_mutex_unlock(&lock);
	if (!g)
		return KVSHIM_EINVAL;
	rc = kv_alloc_headroom(a, &bytes);
	if (!rc)
		rc = kv_alloc_stats(a, &s);
	if (rc)
		return rc;
	per_tensor = bytes / ntensors;
	*blocks = per_tensor > s.page_bytes ?
		  (per_tensor - s.page_bytes) / block_bytes : 0;
	return 0;
}
