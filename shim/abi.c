/*
 * abi.c - the exported kvshim_* functions, kvshim's public C interface
 * (include/kvshim.h): each starts kvshim if needed and hands the call to the
 * policy, the block groups or the allocator of the right device. A call on
 * an address goes to the allocator whose span holds it, whatever device the
 * calling thread is on; a call that makes or measures goes to the calling
 * thread's current device.
 *
 * Opening a KV window also catches up on modules loaded since the last look,
 * so that a module preloading cannot reach (RTLD_DEEPBIND) is patched before
 * the engine allocates its KV cache through it. That sweep is the hooks'
 * business, and this layer must not call up into hooks/: the hooks register
 * it at load (kv_shim_set_sweep) and kvshim_kv_begin runs whatever is
 * registered. A registered callback rather than a kvshim_kv_begin left in
 * hooks/: the whole ABI then lives in one place, and the core (shim and
 * allocator, which the tests link without any hooks) stays free of
 * references to hooks/.
 */
#include <stdint.h>
#include <stdlib.h>

#include "alloc.h"
#include "group.h"
#include "kvshim.h"
#include "log.h"
#include "policy.h"
#include "shim.h"

#define KV_EXPORT __attribute__((visibility("default")))

static CUdeviceptr dptr(const void *p)
{
	return (CUdeviceptr)(uintptr_t)p;
}

KV_EXPORT int kvshim_kv_begin(void)
{
	if (!kv_shim_settings())
		return KVSHIM_ECONFIG;
	kv_shim_sweep();
	return kv_policy_window(1);
}

KV_EXPORT int kvshim_kv_end(void)
{
	return kv_policy_window(0);
}

KV_EXPORT int kvshim_group_create(void *const *bases, size_t ntensors,
				  size_t block_bytes, size_t nblocks, int *group)
{
	return kv_group_create(bases, ntensors, block_bytes, nblocks, group);
}

KV_EXPORT int kvshim_group_destroy(int group)
{
	return kv_group_destroy(group);
}

KV_EXPORT int kvshim_group_map(int group, const long long *blocks, size_t n)
{
	return kv_group_map(group, blocks, n);
}

KV_EXPORT int kvshim_group_unmap(int group, const long long *blocks, size_t n)
{
	return kv_group_unmap(group, blocks, n);
}

KV_EXPORT int kvshim_group_headroom(int group, size_t *blocks)
{
	return kv_group_headroom(group, blocks);
}

KV_EXPORT int kvshim_group_can_back(int group, const long long *blocks,
				    size_t n)
{
	return kv_group_can_back(group, blocks, n);
}

KV_EXPORT int kvshim_group_share_demand(int group, size_t bytes)
{
	return kv_group_share_demand(group, bytes);
}

KV_EXPORT int kvshim_group_share_unused(int group, size_t bytes)
{
	return kv_group_share_unused(group, bytes);
}

KV_EXPORT int kvshim_group_share_asked(int group, size_t *bytes)
{
	return kv_group_share_asked(group, bytes);
}

KV_EXPORT int kvshim_group_share_entitled(int group, size_t *bytes)
{
	return kv_group_share_entitled(group, bytes);
}

KV_EXPORT int kvshim_group_stats(int group, struct kvshim_stats *out)
{
	return kv_group_stats(group, out);
}

/* Reserve a span of size bytes on the current device: 0 with *addr set and
 * *a its allocator, or an error. */
static int reserve(size_t size, void **addr, kv_alloc_t **a)
{
	CUdeviceptr base;
	int rc;

	if (!addr)
		return KVSHIM_EINVAL;
	rc = kv_shim_alloc(a);
	if (!rc)
		rc = kv_alloc_reserve(*a, size, &base);
	if (!rc)
		*addr = (void *)(uintptr_t)base;
	return rc;
}

/*
 * The allocator whose span holds p, into *a. Returns 0; or, p in no span,
 * why kvshim cannot run on this thread's device if it cannot (starting it
 * there as any call does: KVSHIM_ECONFIG, KVSHIM_ENODEV), else
 * KVSHIM_ERANGE. With one device, its allocator straight away (no lookup
 * more than its own): it refuses an address outside its spans itself.
 */
static int owner(const void *p, kv_alloc_t **a)
{
	int rc;

	if (!kv_shim_settings())
		return KVSHIM_ECONFIG;
	*a = kv_shim_sole();
	if (!*a)
		*a = kv_shim_owner(dptr(p), NULL, NULL, NULL);
	if (*a)
		return 0;
	rc = kv_shim_alloc(a);
	return rc ? rc : KVSHIM_ERANGE;
}

KV_EXPORT int kvshim_reserve(size_t size, void **addr)
{
	kv_alloc_t *a;

	return reserve(size, addr, &a);
}

KV_EXPORT int kvshim_release(void *addr)
{
	kv_alloc_t *a;
	int rc = owner(addr, &a);

	return rc ? rc : kv_alloc_release(a, dptr(addr));
}

/* DLPack's ABI (dlpack.h, unversioned): the layout frameworks read. */
struct kv_dl_tensor {
	void *data;
	int32_t device_type;    /* kDLCUDA */
	int32_t device_id;
	int32_t ndim;
	uint8_t code, bits;
	uint16_t lanes;
	int64_t *shape;
	int64_t *strides;       /* NULL: dense, row-major */
	uint64_t byte_offset;
};

struct kv_dl_managed {
	struct kv_dl_tensor t;
	void *manager_ctx;
	void (*deleter)(struct kv_dl_managed *self);
	int64_t shape[8];       /* t.shape points here */
};

#define KV_DL_CUDA 2

static void dl_free(struct kv_dl_managed *m)
{
	int rc;

	if (!m)
		return;
	rc = kvshim_release(m->t.data);
	if (rc)
		kv_warn("a DLPack tensor's span at %p not released: %s",
			m->t.data, kv_shim_strerror(rc));
	free(m);
}

static int dl_type_ok(unsigned code, unsigned bits)
{
	if (code > 6 || code == 3)
		return 0;
	return bits >= 8 && bits <= 128 && !(bits & (bits - 1));
}

KV_EXPORT int kvshim_reserve_dlpack(int ndim, const long long *shape,
				    unsigned code, unsigned bits, void **managed)
{
	struct kv_dl_managed *m;
	size_t size = bits / 8;
	kv_alloc_t *a;
	int i, rc;

	if (!managed || !shape || ndim < 1 || ndim > 8 || !dl_type_ok(code, bits))
		return KVSHIM_EINVAL;
	for (i = 0; i < ndim; i++)
		if (shape[i] < 1 || __builtin_mul_overflow(size, (size_t)shape[i], &size))
			return KVSHIM_EINVAL;
	m = calloc(1, sizeof(*m));
	if (!m)
		return KVSHIM_ENOMEM;
	rc = reserve(size, &m->t.data, &a);
	if (rc) {
		free(m);
		return rc;
	}
	m->t.device_type = KV_DL_CUDA;
	m->t.device_id = kv_alloc_device(a);
	m->t.ndim = ndim;
	m->t.code = (uint8_t)code;
	m->t.bits = (uint8_t)bits;
	m->t.lanes = 1;
	for (i = 0; i < ndim; i++)
		m->shape[i] = shape[i];
	m->t.shape = m->shape;
	m->deleter = dl_free;
	*managed = m;
	return 0;
}

KV_EXPORT int kvshim_map(const void *addr, size_t len)
{
	kv_alloc_t *a;
	int rc = owner(addr, &a);

	return rc ? rc : kv_alloc_map(a, dptr(addr), len);
}

KV_EXPORT int kvshim_unmap(const void *addr, size_t len)
{
	kv_alloc_t *a;
	int rc = owner(addr, &a);

	return rc ? rc : kv_alloc_unmap(a, dptr(addr), len);
}

KV_EXPORT int kvshim_trim(size_t bytes, size_t *freed)
{
	kv_alloc_t *a;
	int rc = kv_shim_alloc(&a);

	if (freed)
		*freed = 0;
	return rc ? rc : kv_alloc_trim(a, bytes, freed);
}

KV_EXPORT int kvshim_stats(struct kvshim_stats *out)
{
	kv_alloc_t *a;
	int rc;

	if (!out)
		return KVSHIM_EINVAL;
	rc = kv_shim_alloc(&a);
	return rc ? rc : kv_alloc_stats(a, out);
}

KV_EXPORT int kvshim_share_demand(size_t bytes)
{
	kv_alloc_t *a;
	int rc = kv_shim_alloc(&a);

	if (!rc)
		kv_alloc_demand(a, bytes);
	return rc;
}

KV_EXPORT int kvshim_share_unused(size_t bytes)
{
	kv_alloc_t *a;
	int rc = kv_shim_alloc(&a);

	if (!rc)
		kv_alloc_unused(a, bytes);
	return rc;
}

KV_EXPORT int kvshim_share_asked(size_t *bytes)
{
	kv_alloc_t *a;
	int rc;

	if (!bytes)
		return KVSHIM_EINVAL;
	*bytes = 0;
	rc = kv_shim_alloc(&a);
	if (!rc)
		*bytes = kv_alloc_asked(a);
	return rc;
}

KV_EXPORT int kvshim_capture_wait(unsigned timeout_ms)
{
	return kv_shim_capture_wait(timeout_ms);
}

KV_EXPORT const char *kvshim_strerror(int err)
{
	return kv_shim_strerror(err);
}
