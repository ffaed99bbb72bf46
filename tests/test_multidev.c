/*
 * test_multidev.c - kvshim on two devices in one process: an allocator per
 * device, started where a span is first needed; spans that know their
 * device; calls on an address (map, unmap, release, memsets, copies, frees)
 * routed to the allocator whose span holds it, whatever device the caller
 * is on, and never to another; allocations, kvshim_reserve and memory info
 * on the caller's current device; KVSHIM_DEVICE as a filter; block groups
 * across devices; and the shared budget: one segment per GPU, a process on
 * two GPUs holding a slot in each, two processes on two GPUs sharing
 * nothing. Needs two devices (make check runs the emulation with
 * KVEMU_DEVICES=2); with fewer, each test says so and passes.
 */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "group.h"
#include "log.h"
#include "policy.h"
#include "prim.h"
#include "share_util.h"
#include "shim.h"
#include "suites.h"

/* Whether the driver has two devices; says so once when not. */
static int two(void)
{
	static int said;

	if (kv_dev_count() >= 2)
		return 1;
	if (!said++)
		printf("multidev: the driver has fewer than two devices: these tests check nothing here\n");
	return 0;
}

static struct kvemu_usage base0, base1;

static void setup(void)
{
	setenv("KVSHIM_POOL_LOW", "0", 1);
	setenv("KVSHIM_POOL_HIGH", "0", 1);
	kv_dev_use(0);
	kv_dev_usage_of(0, &base0);
	kv_dev_usage_of(1, &base1);
}

/* Check every allocator started, shut kvshim down and check that neither
 * device keeps a page, handle or reservation of it: no more than before
 * the test (without a fork per test, CK_FORK=no as under valgrind, pages
 * an earlier test left behind may go meanwhile: 7 to 10 did in about one
 * run in four, and an equality failed). */
static void teardown(void)
{
	struct kvemu_usage u;

	kt_check(kv_shim_running_on(0));
	kt_check(kv_shim_running_on(1));
	kv_shim_shutdown();
	kv_dev_use(0);
	unsetenv("KVSHIM_POOL_LOW");
	unsetenv("KVSHIM_POOL_HIGH");
	unsetenv("KVSHIM_DEVICE");
	unsetenv("KVSHIM_LIMIT");
	if (kv_dev_usage_of(1, &u))
		return;
	ck_assert_uint_le(u.handles, base1.handles);
	ck_assert_uint_le(u.mapped_pages, base1.mapped_pages);
	ck_assert_uint_le(u.physical_bytes, base1.physical_bytes);
	kv_dev_usage_of(0, &u);
	ck_assert_uint_le(u.handles, base0.handles);
	ck_assert_uint_le(u.mapped_pages, base0.mapped_pages);
	ck_assert_uint_le(u.physical_bytes, base0.physical_bytes);
	ck_assert_uint_le(u.reservations, base0.reservations);
}

static struct kvshim_stats stats_on(int device)
{
	struct kvshim_stats s;

	ck_assert_int_eq(kv_dev_use(device), 0);
	ck_assert_int_eq(kvshim_stats(&s), 0);
	return s;
}

static CUdeviceptr dp(const void *p)
{
	return (CUdeviceptr)(uintptr_t)p;
}

/* Spans on two devices in one process, each from its device's allocator;
 * a map, unmap and release reach the span's own allocator from a thread on
 * the other device, and its pages are that device's. */
START_TEST(test_spans_on_two_devices)
{
	struct kvemu_usage u0, u1;
	void *p0 = NULL, *p1 = NULL;
	kv_alloc_t *a0, *a1;

	if (!two())
		return;
	ck_assert_int_eq(kvshim_reserve(8 * PG, &p0), 0);     /* on device 0 */
	ck_assert_int_eq(kv_dev_use(1), 0);
	ck_assert_int_eq(kvshim_reserve(8 * PG, &p1), 0);
	a0 = kv_shim_running_on(0);
	a1 = kv_shim_running_on(1);
	ck_assert_ptr_nonnull(a0);
	ck_assert_ptr_nonnull(a1);
	ck_assert_ptr_ne(a0, a1);
	ck_assert_int_eq(kv_alloc_device(a0), 0);
	ck_assert_int_eq(kv_alloc_device(a1), 1);
	ck_assert_ptr_eq(kv_shim_owner(dp(p0), NULL, NULL, NULL), a0);
	ck_assert_ptr_eq(kv_shim_owner(dp(p1) + 3 * PG, NULL, NULL, NULL), a1);

	/* from device 0, a block of device 1's span: backed there */
	ck_assert_int_eq(kv_dev_use(0), 0);
	ck_assert_int_eq(kvshim_map((char *)p1 + PG + 100, 4096), 0);
	ck_assert_int_eq(kv_dev_ordinal(dp(p1) + PG), 1);
	if (kv_dev_is_emu())    /* (what a GPU's driver says of a bare page: not relied on) */
		ck_assert_int_eq(kv_dev_ordinal(dp(p1)), -1);  /* not backed */
	ck_assert_uint_eq(kt_stats(a1).mapped_bytes, PG);
	ck_assert_uint_eq(kt_stats(a0).mapped_bytes, 0);
	ck_assert_uint_eq(stats_on(0).mapped_bytes, 0);
	ck_assert_uint_eq(stats_on(1).mapped_bytes, PG);
	ck_assert_uint_eq(stats_on(1).reserved_bytes, 8 * PG);
	if (kv_dev_is_emu()) {
		kv_dev_usage_of(0, &u0);
		kv_dev_usage_of(1, &u1);
		/* one page on device 1 (mapped in the span and in the
		 * scrubbing arena), none on device 0 */
		ck_assert_uint_eq(u1.physical_bytes, base1.physical_bytes + PG);
		ck_assert_uint_eq(u1.handles, base1.handles + 1);
		ck_assert_uint_eq(u0.physical_bytes, base0.physical_bytes);
		ck_assert_uint_eq(u0.handles, base0.handles);
		/* the access granted is device 1's: a kernel there writes
		 * it, one on device 0 may not (the emulation checks rights) */
		ck_assert_int_eq(kv_dev_use(1), 0);
		ck_assert_int_eq(kv_dev_fill(dp(p1) + PG, PG, 3), CUDA_SUCCESS);
		ck_assert_int_eq(kv_dev_use(0), 0);
		ck_assert_int_eq(kv_dev_fill(dp(p1) + PG, PG, 3), CUDA_ERROR_ILLEGAL_ADDRESS);
	}
	/* the other device's allocator refuses the address outright */
	ck_assert_int_eq(kv_alloc_map(a0, dp(p1) + PG, 4096), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_unmap(a0, dp(p1) + PG, 4096), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_release(a0, dp(p1)), KVSHIM_ERANGE);
	ck_assert_int_eq(kv_alloc_claims(a1, dp(p1) + PG), 1);

	/* unmap and release from device 0 go to device 1's allocator */
	ck_assert_int_eq(kvshim_unmap((char *)p1 + PG + 100, 4096), 0);
	ck_assert_uint_eq(kt_stats(a1).cached_bytes, PG);
	ck_assert_int_eq(kvshim_unmap((char *)p1 + PG + 100, 4096), KVSHIM_ENOTCLAIMED);
	ck_assert_int_eq(kvshim_release(p1), 0);
	ck_assert_uint_eq(kt_stats(a1).spans, 0);
	ck_assert_uint_eq(kt_stats(a0).spans, 1);
	ck_assert_int_eq(kv_dev_use(1), 0);
	ck_assert_int_eq(kvshim_release(p0), 0);
	ck_assert_uint_eq(kt_stats(a0).spans, 0);
	ck_assert_int_eq(kvshim_release(p0), KVSHIM_ERANGE);
}
END_TEST

/* A thread with no context (an adapter's own thread) that maps, unmaps and
 * frees blocks of device 1's span is left as it was: its calls that make
 * something still go to the runtime's default device, 0. */
struct fresh_call {
	void *p1;
	int dev_after_map, dev_after_release, reserve_dev;
	int map_rc, unmap_rc, release_rc;
};

static void *fresh_thread(void *arg)
{
	struct fresh_call *f = arg;
	void *q = NULL;
	kv_alloc_t *a;

	f->map_rc = kvshim_map((char *)f->p1 + PG, 4096);
	f->dev_after_map = -1;
	kv_shim_device(&f->dev_after_map);
	f->unmap_rc = kvshim_unmap((char *)f->p1 + PG, 4096);
	f->release_rc = kvshim_release(f->p1);
	f->dev_after_release = -1;
	kv_shim_device(&f->dev_after_release);
	f->reserve_dev = -1;
	if (kvshim_reserve(PG, &q) == 0) {
		a = kv_shim_owner(dp(q), NULL, NULL, NULL);
		f->reserve_dev = a ? kv_alloc_device(a) : -1;
		kvshim_release(q);
	}
	return NULL;
}

START_TEST(test_fresh_thread_keeps_its_device)
{
	struct fresh_call f = { 0 };
	void *p0 = NULL;
	pthread_t t;

	if (!two())
		return;
	ck_assert_int_eq(kvshim_reserve(8 * PG, &p0), 0);     /* device 0 started */
	ck_assert_int_eq(kv_dev_use(1), 0);
	ck_assert_int_eq(kvshim_reserve(8 * PG, &f.p1), 0);
	ck_assert_int_eq(kv_dev_use(0), 0);
	ck_assert_int_eq(pthread_create(&t, NULL, fresh_thread, &f), 0);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_int_eq(f.map_rc, 0);
	ck_assert_int_eq(f.unmap_rc, 0);
	ck_assert_int_eq(f.release_rc, 0);
	ck_assert_int_eq(f.dev_after_map, 0);
	ck_assert_int_eq(f.dev_after_release, 0);
	ck_assert_int_eq(f.reserve_dev, 0);
	ck_assert_int_eq(kvshim_release(p0), 0);
}
END_TEST

/* The hooks' view (the policy): an allocation in a KV window becomes a
 * lazy span on the caller's device; memsets, copies and frees of it made
 * from the other device reach its allocator. */
START_TEST(test_policy_routes_by_pointer)
{
	struct kv_policy_run *r = NULL;
	CUdeviceptr p0, p1;
	size_t k = 0;
	kv_alloc_t *a0, *a1;

	if (!two())
		return;
	ck_assert_int_eq(kv_policy_window(1), 0);
	ck_assert_int_eq(kv_dev_use(1), 0);
	ck_assert_int_eq(kv_policy_alloc(32 << 20, &p1), 1);
	ck_assert_int_eq(kv_dev_use(0), 0);
	ck_assert_int_eq(kv_policy_alloc(32 << 20, &p0), 1);
	ck_assert_int_eq(kv_policy_window(0), 0);
	a0 = kv_shim_running_on(0);
	a1 = kv_shim_running_on(1);
	ck_assert_ptr_eq(kv_shim_owner(p1, NULL, NULL, NULL), a1);
	ck_assert_ptr_eq(kv_shim_owner(p0, NULL, NULL, NULL), a0);
	/* each backs its last page, on its own device */
	ck_assert_int_eq(kv_dev_ordinal(p1 + (32 << 20) - 1), 1);
	ck_assert_int_eq(kv_dev_ordinal(p0 + (32 << 20) - 1), 0);
	ck_assert_uint_eq(kt_stats(a1).mapped_bytes, PG);

	/* from device 0: a memset of a value, and a copy, into device 1's span */
	ck_assert_int_eq(kv_policy_memset(p1, 100, 1, 0, &r, &k), 1);
	ck_assert_uint_eq(k, 1);
	free(r);
	ck_assert_int_eq(kv_policy_touch(p1 + 4 * PG, 10), 0);
	ck_assert_int_eq(kv_policy_memset_pitched(p1 + 6 * PG, 1, 16, 2, 1, 64, 2), 1);
	ck_assert_uint_eq(kt_stats(a1).mapped_bytes, 4 * PG);
	ck_assert_uint_eq(kt_stats(a0).mapped_bytes, PG);
	ck_assert_int_eq(kv_dev_ordinal(p1 + 4 * PG), 1);
	/* a zero memset skips what is not backed, on device 1's span too */
	ck_assert_int_eq(kv_policy_memset(p1, 32 << 20, 1, 1, &r, &k), 1);
	ck_assert_uint_eq(k, 4);
	free(r);
	/* bounds are device 1's span's */
	ck_assert_int_eq(kv_policy_touch(p1 + (32 << 20) - 4, 8), KVSHIM_ERANGE);
	/* a free from device 0 releases device 1's span */
	ck_assert_int_eq(kv_policy_free(p1), 1);
	ck_assert_uint_eq(kt_stats(a1).spans, 0);
	ck_assert_int_eq(kv_policy_free(p1), 0);
	ck_assert_int_eq(kv_policy_free(p0), 1);
}
END_TEST

/* KVSHIM_DEVICE=0: allocations on device 1 pass through, the C interface
 * there is refused with a line naming the device, device 0 works. */
START_TEST(test_filter_one_device)
{
	char err[4096] = "";
	CUdeviceptr p;
	void *q = NULL;

	if (!two())
		return;
	setenv("KVSHIM_DEVICE", "0", 1);
	ck_assert_int_eq(kv_dev_use(1), 0);
	ck_assert_int_eq(kv_policy_window(1), 0);
	ck_assert_int_eq(kv_policy_alloc(32 << 20, &p), 0);       /* passes through */
	ck_assert_int_eq(kv_policy_window(0), 0);
	kt_capture_start();
	ck_assert_int_eq(kvshim_reserve(PG, &q), KVSHIM_ENODEV);
	kt_capture_end(err, sizeof(err));
	ck_assert_msg(strstr(err, "device 1 is not in KVSHIM_DEVICE=0") != NULL,
		      "no line naming the device: \"%s\"", err);
	ck_assert_ptr_null(q);
	ck_assert_ptr_null(kv_shim_running_on(1));
	ck_assert_int_eq(kv_dev_use(0), 0);
	ck_assert_int_eq(kvshim_reserve(PG, &q), 0);
	ck_assert_int_eq(kvshim_map(q, PG), 0);
	ck_assert_int_eq(kv_dev_ordinal(dp(q)), 0);
	/* its span is reached from device 1 all the same */
	ck_assert_int_eq(kv_dev_use(1), 0);
	ck_assert_int_eq(kvshim_release(q), 0);
}
END_TEST

/* KVSHIM_DEVICE=1: the other way round. */
START_TEST(test_filter_other_device)
{
	CUdeviceptr p;
	kv_alloc_t *a;

	if (!two())
		return;
	setenv("KVSHIM_DEVICE", "1", 1);
	ck_assert_int_eq(kv_policy_window(1), 0);
	ck_assert_int_eq(kv_policy_alloc(32 << 20, &p), 0);      /* device 0 */
	ck_assert_int_eq(kv_dev_use(1), 0);
	ck_assert_int_eq(kv_policy_alloc(32 << 20, &p), 1);
	ck_assert_int_eq(kv_policy_window(0), 0);
	ck_assert_int_eq(kv_dev_ordinal(p + (32 << 20) - 1), 1);
	ck_assert_int_eq(kv_shim_alloc_on(0, &a), KVSHIM_ENODEV);
	ck_assert_ptr_null(a);
	ck_assert_int_eq(kv_policy_free(p), 1);
}
END_TEST

/* KVSHIM_DEVICE listing both, or all: both managed; a list naming a device
 * the driver does not have is refused for every device, naming it. */
START_TEST(test_filter_lists)
{
	static const char *const both[] = { "0,1", "1,0", "all" };
	char err[4096] = "", list[32], expect[96];
	kv_alloc_t *a;
	size_t i;

	if (!two())
		return;
	for (i = 0; i < 3; i++) {
		setenv("KVSHIM_DEVICE", both[i], 1);
		ck_assert_int_eq(kv_shim_alloc_on(0, &a), 0);
		ck_assert_int_eq(kv_shim_alloc_on(1, &a), 0);
		ck_assert_int_eq(kv_alloc_device(a), 1);
		kv_shim_shutdown();
	}
	/* a device one past the driver's last */
	snprintf(list, sizeof(list), "0,%d", kv_dev_count());
	snprintf(expect, sizeof(expect), "KVSHIM_DEVICE=%s: the driver has no device %d", list,
		 kv_dev_count());
	setenv("KVSHIM_DEVICE", list, 1);
	kt_capture_start();
	ck_assert_int_eq(kv_shim_alloc_on(0, &a), KVSHIM_ECONFIG);
	ck_assert_int_eq(kv_shim_alloc_on(1, &a), KVSHIM_ECONFIG);
	kt_capture_end(err, sizeof(err));
	ck_assert_msg(strstr(err, expect) != NULL, "no line \"%s\" in \"%s\"", expect, err);
}
END_TEST

/* A device ordinal beyond what kvshim can manage is refused, not indexed. */
START_TEST(test_device_out_of_range)
{
	kv_alloc_t *a = (kv_alloc_t *)1;

	ck_assert_int_eq(kv_shim_alloc_on(KV_MAX_DEVICES, &a), KVSHIM_ENODEV);
	ck_assert_ptr_null(a);
	ck_assert_int_eq(kv_shim_alloc_on(-1, &a), KVSHIM_ENODEV);
	ck_assert_ptr_null(kv_shim_running_on(KV_MAX_DEVICES));
	ck_assert_ptr_null(kv_shim_running_on(-1));
}
END_TEST

/* Memory info is the current device's: a lazy span on device 1 counts as
 * backed there, and not on device 0. */
START_TEST(test_meminfo_per_device)
{
	CUresult (*info)(size_t *, size_t *);
	size_t f0, t0, v0, vt0, f1, t1, v1, vt1;
	void *p1 = NULL;

	if (!two())
		return;
	*(void **)&info = kv_dev_sym("cuMemGetInfo_v2");
	ck_assert_ptr_nonnull(info);
	ck_assert_int_eq(kv_dev_use(1), 0);
	ck_assert_int_eq(kvshim_reserve(64 * PG, &p1), 0);
	ck_assert_int_eq(kvshim_map(p1, PG), 0);
	ck_assert_int_eq(info(&f1, &t1), CUDA_SUCCESS);
	v1 = f1;
	vt1 = t1;
	kv_policy_meminfo(&v1, &vt1);
	ck_assert_uint_eq(vt1, t1);
	ck_assert_uint_eq(v1, f1 - 63 * PG);        /* the span, as if backed */
	ck_assert_int_eq(kv_dev_use(0), 0);
	ck_assert_int_eq(info(&f0, &t0), CUDA_SUCCESS);
	v0 = f0;
	vt0 = t0;
	kv_policy_meminfo(&v0, &vt0);
	ck_assert_uint_eq(v0, f0);
	ck_assert_uint_eq(vt0, t0);
	ck_assert_ptr_null(kv_shim_running_on(0));  /* nothing started there */
	ck_assert_int_eq(kvshim_release(p1), 0);
}
END_TEST

/* DLPack names the device the span was reserved on; the deleter releases
 * it from any device. */
START_TEST(test_dlpack_device)
{
	static const long long shape[] = { 1024, 1024 };
	struct dl {
		void *data;
		int32_t type, id;
	} *m = NULL;
	void (**deleter)(void *);

	if (!two())
		return;
	ck_assert_int_eq(kv_dev_use(1), 0);
	ck_assert_int_eq(kvshim_reserve_dlpack(2, shape, 2, 32, (void **)&m), 0);
	ck_assert_int_eq(m->type, 2);
	ck_assert_int_eq(m->id, 1);
	ck_assert_ptr_eq(kv_shim_owner(dp(m->data), NULL, NULL, NULL), kv_shim_running_on(1));
	ck_assert_int_eq(kv_dev_use(0), 0);
	/* DLManagedTensor: the tensor (48 bytes), manager_ctx, deleter */
	deleter = (void (**)(void *))((char *)m + 48 + sizeof(void *));
	(*deleter)(m);
	ck_assert_uint_eq(kt_stats(kv_shim_running_on(1)).spans, 0);
}
END_TEST

/* A block group over tensors on two devices: a map backs each device's
 * tensors on that device; a map one device cannot back is undone on the
 * other (its claims are as they were; the pages it backed stay cached
 * there); an unmap one device cannot do drops no claim anywhere; the
 * headroom is the smaller device's. */
#define GBLK (PG / 2)
#define GNB 16
/* A group of three tensors of GNB blocks of GBLK: b1 on device 1 first,
 * then b00 and b01 on device 0 (their allocators a0 and a1). Returns its
 * id. */
static int split_group(kv_alloc_t **a0, kv_alloc_t **a1, CUdeviceptr *b00,
		       CUdeviceptr *b01, CUdeviceptr *b1)
{
	void *bases[3];
	int g;

	ck_assert_int_eq(kv_shim_alloc_on(0, a0), 0);
	ck_assert_int_eq(kv_shim_alloc_on(1, a1), 0);
	ck_assert_int_eq(kv_alloc_reserve(*a1, GNB * GBLK, b1), 0);
	ck_assert_int_eq(kv_alloc_reserve(*a0, GNB * GBLK, b00), 0);
	ck_assert_int_eq(kv_alloc_reserve(*a0, GNB * GBLK, b01), 0);
	bases[0] = (void *)(uintptr_t)*b1;
	bases[1] = (void *)(uintptr_t)*b00;
	bases[2] = (void *)(uintptr_t)*b01;
	ck_assert_int_eq(kv_group_create(bases, 3, GBLK, GNB, &g), 0);
	return g;
}

START_TEST(test_group_two_devices)
{
	long long ids[] = { 0, 1, 2, 5 }, more[] = { 8, 9, 10, 11, 12, 13 };
	struct kvshim_stats st;
	CUdeviceptr b00, b01, b1;
	void *bases[3];
	kv_alloc_t *a0, *a1;
	size_t room = 0;
	int g;

	if (!two())
		return;
	setenv("KVSHIM_LIMIT", "16M", 1);      /* 8 pages a device */
	/* device 1's tensor first: its part is mapped before device 0's */
	g = split_group(&a0, &a1, &b00, &b01, &b1);
	/* 8 pages a device: two tensors on device 0 leave 4 pages a tensor,
	 * less one for straddling blocks; device 1 has more */
	ck_assert_int_eq(kv_group_headroom(g, &room), 0);
	ck_assert_uint_eq(room, (8 * PG / 2 - PG) / GBLK);

	ck_assert_int_eq(kv_group_map(g, ids, 4), 0);
	ck_assert_uint_eq(kt_stats(a0).mapped_bytes, 2 * 3 * PG);
	ck_assert_uint_eq(kt_stats(a1).mapped_bytes, 3 * PG);
	/* its stats: its first tensor's GPU's (device 1), whatever the
	 * current device; bad input refused */
	ck_assert_int_eq(kv_group_stats(g, &st), 0);
	ck_assert_uint_eq(st.mapped_bytes, 3 * PG);
	ck_assert_uint_eq(st.page_bytes, PG);
	ck_assert_int_eq(kv_group_stats(g, NULL), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_group_stats(g + 9, &st), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_dev_ordinal(b1 + 5 * GBLK), 1);
	ck_assert_int_eq(kv_dev_ordinal(b01 + 5 * GBLK), 0);
	ck_assert_int_eq(kv_alloc_claims(a1, b1), 2);
	ck_assert_int_eq(kv_alloc_claims(a0, b00 + PG), 1);

	/* blocks 8 to 13 need 3 more pages a tensor: device 1 has room (5
	 * left), device 0 not (2 left for two tensors): refused, and device
	 * 1's claims are as they were */
	ck_assert_int_eq(kv_group_can_back(g, more, 6), 0);
	ck_assert_int_eq(kv_group_map(g, more, 6), KVSHIM_ELIMIT);
	ck_assert_int_eq(kv_alloc_claims(a1, b1 + 8 * GBLK), 0);
	ck_assert_int_eq(kv_alloc_claims(a1, b1 + 12 * GBLK), 0);
	ck_assert_int_eq(kv_alloc_claims(a0, b00 + 8 * GBLK), 0);
	ck_assert_int_eq(kv_alloc_claims(a1, b1), 2);
	ck_assert_uint_eq(kt_stats(a1).mapped_bytes - kt_stats(a1).cached_bytes, 3 * PG);
	ck_assert_uint_eq(kt_stats(a0).mapped_bytes, 2 * 3 * PG);
	ck_assert_int_eq(kv_group_can_back(g, more, 1), 1);

	/* block 5's claim dropped on device 1 behind the group's back: the
	 * group's unmap of it is refused whole, device 0 keeps its claims */
	ck_assert_int_eq(kv_alloc_unmap(a1, b1 + 5 * GBLK, GBLK), 0);
	ck_assert_int_eq(kv_group_unmap(g, ids, 4), KVSHIM_ENOTCLAIMED);
	ck_assert_int_eq(kv_alloc_claims(a0, b00), 2);
	ck_assert_int_eq(kv_alloc_claims(a0, b01 + 5 * GBLK), 1);
	ck_assert_int_eq(kv_alloc_claims(a1, b1), 2);
	/* the same with device 1 first, the part that lacks a claim last */
	bases[0] = (void *)(uintptr_t)b00;
	bases[1] = (void *)(uintptr_t)b1;
	ck_assert_int_eq(kv_group_destroy(g), 0);
	ck_assert_int_eq(kv_group_create(bases, 2, GBLK, GNB, &g), 0);
	ck_assert_int_eq(kv_group_unmap(g, ids, 4), KVSHIM_ENOTCLAIMED);
	ck_assert_int_eq(kv_alloc_claims(a0, b00), 2);
	ck_assert_int_eq(kv_alloc_claims(a0, b00 + 5 * GBLK), 1);
	ck_assert_int_eq(kv_group_unmap(g, ids, 3), 0);
	ck_assert_int_eq(kv_alloc_claims(a0, b00), 0);
	ck_assert_int_eq(kv_alloc_claims(a1, b1), 0);
	ck_assert_int_eq(kv_alloc_claims(a0, b01), 2);  /* not in this group */
	ck_assert_int_eq(kv_group_destroy(g), 0);
}
END_TEST

/* ---- the shared budget: one segment per GPU ---- */

/* The UUID device's segments are named from. */
static const char *uuid_of(int device)
{
	static char ids[2][48];
	struct kv_alloc_opts o;
	kv_alloc_t *a = NULL;

	if (!ids[device][0]) {
		kt_opts(&o);
		o.device = device;
		ck_assert_int_eq(kv_alloc_create(&o, &a), 0);
		snprintf(ids[device], sizeof(ids[device]), "%s", kv_alloc_prim(a)->uuid);
		kv_alloc_destroy(a);
	}
	return ids[device];
}

/* The current pool's segment for device, read (reaping the dead). */
static const struct kv_share_info *segment_of(int device, struct kv_share_info *in)
{
	char path[256];
	const char *why = NULL;

	ck_assert_int_eq(kv_share_path(path, sizeof(path), uuid_of(device), kt_pool), 0);
	ck_assert_msg(kv_share_read(path, 0600, 1, in, &why) == 0, "%s: %s", path, why);
	return in;
}

/* This process's slot in a segment, or NULL. */
static const struct kv_share_proc *mine(const struct kv_share_info *in, pid_t pid)
{
	unsigned i;

	for (i = 0; i < in->nprocs; i++)
		if (in->proc[i].pid == pid && in->proc[i].alive)
			return &in->proc[i];
	return NULL;
}

/* Whether this process's slot in device's segment shows reserved bytes of
 * spans within 30 s. Returns 1 or 0. */
static int reserved_shows(int device, uint64_t reserved, struct kv_share_info *in)
{
	const struct kv_share_proc *p;
	struct timespec t0;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		p = mine(segment_of(device, in), getpid());
		if (p && p->reserved == reserved)
			return 1;
		nanosleep(&(struct timespec){ 0, 5 * 1000 * 1000 }, NULL);
	} while (kt_ms_since(&t0) < 30000.0);
	return 0;
}

static void share_env(const char *budget)
{
	setenv("KVSHIM_SHARE", "on", 1);
	setenv("KVSHIM_POOL", kt_pool, 1);
	setenv("KVSHIM_BUDGET", budget, 1);
}

static void share_unenv(void)
{
	unsetenv("KVSHIM_SHARE");
	unsetenv("KVSHIM_POOL");
	unsetenv("KVSHIM_BUDGET");
}

/* One process with spans on two GPUs holds a slot in each GPU's segment,
 * with what it holds there. */
START_TEST(test_share_slot_per_device)
{
	struct kv_share_info *in = malloc(sizeof(*in));
	const struct kv_share_proc *p;
	void *p0 = NULL, *p1 = NULL;
	char path0[256], path1[256];

	ck_assert_ptr_nonnull(in);
	if (!two()) {
		free(in);
		return;
	}
	kt_new_pool();
	share_env("32M");
	ck_assert_int_eq(kvshim_reserve(8 * PG, &p0), 0);
	ck_assert_int_eq(kvshim_map(p0, 2 * PG), 0);
	ck_assert_int_eq(kv_dev_use(1), 0);
	ck_assert_int_eq(kvshim_reserve(16 * PG, &p1), 0);
	ck_assert_int_eq(kvshim_map(p1, 3 * PG), 0);
	ck_assert_int_eq(kv_share_path(path0, sizeof(path0), uuid_of(0), kt_pool), 0);
	ck_assert_int_eq(kv_share_path(path1, sizeof(path1), uuid_of(1), kt_pool), 0);
	ck_assert_str_ne(path0, path1);
	/* held is published as it is taken */
	p = mine(segment_of(0, in), getpid());
	ck_assert_ptr_nonnull(p);
	ck_assert_uint_eq(p->held, 2 * PG);
	ck_assert_uint_eq(in->held, 2 * PG);
	p = mine(segment_of(1, in), getpid());
	ck_assert_ptr_nonnull(p);
	ck_assert_uint_eq(p->held, 3 * PG);
	ck_assert_uint_eq(in->held, 3 * PG);
	/* the rest by each device's worker, every 5 ms: waited for (the
	 * deadline is only against a hang) */
	ck_assert_msg(reserved_shows(0, 8 * PG, in), "device 0's slot never showed its spans");
	ck_assert_msg(reserved_shows(1, 16 * PG, in), "device 1's slot never showed its spans");
	ck_assert_int_eq(kvshim_release(p0), 0);
	ck_assert_int_eq(kvshim_release(p1), 0);
	kv_shim_shutdown();
	/* the slots go with the allocators */
	ck_assert_ptr_null(mine(segment_of(0, in), getpid()));
	ck_assert_ptr_null(mine(segment_of(1, in), getpid()));
	share_unenv();
	unlink(path0);
	unlink(path1);
	free(in);
}
END_TEST

struct on_device {
	int device;
	size_t map, demand;      /* bytes it maps, and states it waits for */
	int ready[2], go[2];
};

/* A process on one device: maps d->map bytes there (of a 16-page span),
 * states d->demand, says so, waits. */
static int on_device(void *arg)
{
	struct on_device *d = arg;
	void *p = NULL;
	char c;

	kv_shim_forked();
	KT_CHILD_CHECK(kv_dev_use(d->device) == 0);
	KT_CHILD_CHECK(kvshim_reserve(16 * PG, &p) == 0);
	KT_CHILD_CHECK(d->map == 0 || kvshim_map(p, d->map) == 0);
	KT_CHILD_CHECK(d->map == 0 || kv_dev_ordinal((CUdeviceptr)(uintptr_t)p) == d->device);
	KT_CHILD_CHECK(d->demand == 0 || kvshim_share_demand(d->demand) == 0);
	KT_CHILD_CHECK(write(d->ready[1], "r", 1) == 1);
	/* (a statement holds a second: made again every 100 ms, so a parent
	 * slowed by a loaded machine still finds it) */
	while (poll(&(struct pollfd){ .fd = d->go[0], .events = POLLIN }, 1, 100) == 0)
		KT_CHILD_CHECK(d->demand == 0 || kvshim_share_demand(d->demand) == 0);
	KT_CHILD_CHECK(read(d->go[0], &c, 1) == 1);
	KT_CHILD_CHECK(kvshim_release(p) == 0);
	kv_shim_shutdown();
	return 0;
}

struct child {
	pid_t pid;
	int rc;
};

/* Two processes, one on each GPU, each mapping all of a 16 MiB budget at
 * once: neither waits for nor is refused by the other (their budgets are
 * two segments), and each segment holds one of them. */
START_TEST(test_share_two_processes_two_devices)
{
	struct kv_share_info *in = malloc(sizeof(*in));
	const struct kv_share_proc *p;
	struct on_device d[2];
	pid_t pid[2];
	char c, path[256];
	int i, st;

	ck_assert_ptr_nonnull(in);
	if (!two()) {
		free(in);
		return;
	}
	kt_new_pool();
	uuid_of(0);
	uuid_of(1);
	share_env("16M");
	for (i = 0; i < 2; i++) {
		d[i].device = i;
		d[i].map = 8 * PG;
		d[i].demand = 0;
		ck_assert_int_eq(pipe(d[i].ready), 0);
		ck_assert_int_eq(pipe(d[i].go), 0);
	}
	fflush(stdout);
	fflush(stderr);
	for (i = 0; i < 2; i++) {
		pid[i] = fork();
		ck_assert_int_ge(pid[i], 0);
		if (pid[i] == 0) {
			/* only its own ends: a child that dies closes its
			 * ready pipe's last writer, and the test hears it */
			close(d[1 - i].ready[0]);
			close(d[1 - i].ready[1]);
			close(d[1 - i].go[1]);
			close(d[i].ready[0]);
			close(d[i].go[1]);
			_exit(on_device(&d[i]));
		}
	}
	for (i = 0; i < 2; i++) {
		close(d[i].ready[1]);
		close(d[i].go[0]);
	}
	for (i = 0; i < 2; i++) {
		if (read(d[i].ready[0], &c, 1) != 1) {
			waitpid(pid[i], &st, 0);
			ck_abort_msg("the process on device %d failed (status 0x%x): its line is above",
				     i, st);
		}
	}
	for (i = 0; i < 2; i++) {
		segment_of(i, in);
		ck_assert_uint_eq(in->nprocs, 1);
		p = mine(in, pid[i]);
		ck_assert_msg(p != NULL, "device %d's segment lacks its process", i);
		ck_assert_uint_eq(p->held, 8 * PG);
		ck_assert_uint_eq(in->held, in->budget);
		ck_assert_ptr_null(mine(in, pid[1 - i]));
	}
	for (i = 0; i < 2; i++) {
		ck_assert_int_eq(write(d[i].go[1], "g", 1), 1);
		ck_assert_int_eq(waitpid(pid[i], &st, 0), pid[i]);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
			      "the process on device %d failed: its line is above", i);
		close(d[i].ready[0]);
		close(d[i].go[1]);
		ck_assert_int_eq(kv_share_path(path, sizeof(path), uuid_of(i), kt_pool), 0);
		unlink(path);
	}
	share_unenv();
	free(in);
}
END_TEST

/* A group over two GPUs (two tensors on device 0, one on device 1) states
 * its demand and unused pages in each GPU's segment, each its part by the
 * tensors there; its ask is the most either GPU asks, over the whole group
 * (here device 0's, where another process waits). Before, the process's
 * demand went all to the current device's segment, and the ask was read
 * there only. */
START_TEST(test_share_group_two_devices)
{
	long long ids[8] = { 0, 1, 2, 3, 4, 5, 6, 7 };
	struct kv_share_info *in = malloc(sizeof(*in));
	CUdeviceptr b00, b01, b1;
	struct on_device d = { .device = 0, .demand = 4 * PG };
	size_t asked = 1, asked0;
	kv_alloc_t *a0, *a1;
	char c, path[256];
	pid_t pid;
	int g, st;

	ck_assert_ptr_nonnull(in);
	if (!two()) {
		free(in);
		return;
	}
	kt_new_pool();
	share_env("16M");                       /* 8 pages a device */
	g = split_group(&a0, &a1, &b00, &b01, &b1);
	ck_assert_int_eq(kv_dev_use(1), 0);     /* the current device: not the point */

	/* demand: two thirds on device 0, a third on device 1, rounded up,
	 * and a page more in each tensor (two on device 0, one on 1) */
	ck_assert_int_eq(kvshim_group_share_demand(g, 9 * PG), 0);
	ck_assert_uint_eq(mine(segment_of(0, in), getpid())->demand, 8 * PG);
	ck_assert_uint_eq(mine(segment_of(1, in), getpid())->demand, 4 * PG);
	ck_assert_int_eq(kvshim_group_share_demand(g, 10), 0);
	ck_assert_uint_eq(mine(segment_of(0, in), getpid())->demand, 2 * PG + 7);
	ck_assert_uint_eq(mine(segment_of(1, in), getpid())->demand, PG + 4);
	ck_assert_int_eq(kvshim_group_share_demand(g, 0), 0);
	ck_assert_uint_eq(mine(segment_of(0, in), getpid())->demand, 0);
	ck_assert_uint_eq(mine(segment_of(1, in), getpid())->demand, 0);

	/* 8 blocks a tensor: 4 pages each, device 0's whole budget */
	ck_assert_int_eq(kv_group_map(g, ids, 8), 0);
	ck_assert_int_eq(kvshim_group_share_unused(g, 3 * PG), 0);
	ck_assert_uint_eq(mine(segment_of(0, in), getpid())->unused, 2 * PG);
	ck_assert_uint_eq(mine(segment_of(1, in), getpid())->unused, PG);
	ck_assert_int_eq(kvshim_group_share_unused(g, 0), 0);

	/* nobody waits: nothing asked */
	ck_assert_int_eq(kvshim_group_share_asked(g, &asked), 0);
	ck_assert_uint_eq(asked, 0);
	/* another process on device 0 waits for 4 pages below its share */
	ck_assert_int_eq(pipe(d.ready), 0);
	ck_assert_int_eq(pipe(d.go), 0);
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(d.ready[0]);
		close(d.go[1]);
		_exit(on_device(&d));
	}
	close(d.ready[1]);
	close(d.go[0]);
	if (read(d.ready[0], &c, 1) != 1) {
		waitpid(pid, &st, 0);
		ck_abort_msg("the waiting process failed (status 0x%x): its line is above", st);
	}
	asked0 = kv_alloc_asked(a0);
	ck_assert_uint_gt(asked0, 0);
	ck_assert_uint_eq(kv_alloc_asked(a1), 0);
	ck_assert_int_eq(kvshim_group_share_asked(g, &asked), 0);
	ck_assert_uint_eq(asked, (asked0 * 3 + 1) / 2);
	ck_assert_int_eq(write(d.go[1], "g", 1), 1);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "the waiting process failed: its line is above");
	close(d.ready[0]);
	close(d.go[1]);

	/* bad input changes nothing */
	ck_assert_int_eq(kvshim_group_share_asked(g, NULL), KVSHIM_EINVAL);
	ck_assert_int_eq(kvshim_group_share_demand(g + 7, PG), KVSHIM_EINVAL);
	ck_assert_int_eq(kvshim_group_share_unused(-1, PG), KVSHIM_EINVAL);
	asked = 1;
	ck_assert_int_eq(kvshim_group_share_asked(0, &asked), KVSHIM_EINVAL);
	ck_assert_uint_eq(asked, 0);
	ck_assert_uint_eq(mine(segment_of(0, in), getpid())->demand, 0);

	ck_assert_int_eq(kv_group_unmap(g, ids, 8), 0);
	ck_assert_int_eq(kv_group_destroy(g), 0);
	ck_assert_int_eq(kvshim_group_share_demand(g, PG), KVSHIM_EINVAL);
	kv_shim_shutdown();
	share_unenv();
	ck_assert_int_eq(kv_share_path(path, sizeof(path), uuid_of(0), kt_pool), 0);
	unlink(path);
	ck_assert_int_eq(kv_share_path(path, sizeof(path), uuid_of(1), kt_pool), 0);
	unlink(path);
	free(in);
}
END_TEST

Suite *multidev_suite(void)
{
	Suite *s = suite_create("multidev");
	TCase *tc = tcase_create("devices");
	TCase *sh = tcase_create("share");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_spans_on_two_devices);
	tcase_add_test(tc, test_fresh_thread_keeps_its_device);
	tcase_add_test(tc, test_policy_routes_by_pointer);
	tcase_add_test(tc, test_filter_one_device);
	tcase_add_test(tc, test_filter_other_device);
	tcase_add_test(tc, test_filter_lists);
	tcase_add_test(tc, test_device_out_of_range);
	tcase_add_test(tc, test_meminfo_per_device);
	tcase_add_test(tc, test_dlpack_device);
	tcase_add_test(tc, test_group_two_devices);
	suite_add_tcase(s, tc);

	kt_share_fixture(sh);
	tcase_add_checked_fixture(sh, setup, teardown);
	kt_add_emu(sh, test_share_slot_per_device);
	kt_add_emu(sh, test_share_two_processes_two_devices);
	kt_add_emu(sh, test_share_group_two_devices);
	suite_add_tcase(s, sh);
	return s;
}
