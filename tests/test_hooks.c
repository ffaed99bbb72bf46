/*
 * test_hooks.c - the interposed driver entry points as libkvshim.so exports
 * them (loaded with dlopen, called by their CUDA names), against what the
 * driver itself returns for the same arguments: on a span, a call the
 * driver would refuse is refused with the driver's code, and changes
 * nothing.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "suites.h"

typedef CUresult (*set8_fn)(CUdeviceptr, unsigned char, size_t);
typedef CUresult (*set16_fn)(CUdeviceptr, unsigned short, size_t);
typedef CUresult (*set32_fn)(CUdeviceptr, unsigned int, size_t);
typedef CUresult (*set8a_fn)(CUdeviceptr, unsigned char, size_t, CUstream);
typedef CUresult (*set16a_fn)(CUdeviceptr, unsigned short, size_t, CUstream);
typedef CUresult (*set32a_fn)(CUdeviceptr, unsigned int, size_t, CUstream);

typedef CUresult (*set2d8_fn)(CUdeviceptr, size_t, unsigned char, size_t, size_t);
typedef CUresult (*set2d16_fn)(CUdeviceptr, size_t, unsigned short, size_t, size_t);
typedef CUresult (*set2d32_fn)(CUdeviceptr, size_t, unsigned int, size_t, size_t);
typedef CUresult (*set2d8a_fn)(CUdeviceptr, size_t, unsigned char, size_t, size_t, CUstream);
typedef CUresult (*set2d32a_fn)(CUdeviceptr, size_t, unsigned int, size_t, size_t, CUstream);

/* One memset function of each family, the shim's and the driver's. */
struct sets {
	set8_fn d8;
	set16_fn d16;
	set32_fn d32;
	set8a_fn d8a;
	set16a_fn d16a;
	set32a_fn d32a;
	set2d8_fn d2d8;
	set2d16_fn d2d16;
	set2d32_fn d2d32;
	set2d8a_fn d2d8a;
	set2d32a_fn d2d32a;
};

static struct sets drv;      /* the driver's own, found before kvshim loads */

/* The driver's own functions the tests call as such, by versioned name,
 * found before any test loads kvshim (keep, from hooks_suite): once
 * loaded, kvshim hands out its wrappers through dlsym, and a "driver's
 * answer" read then would be kvshim's own, a read back through it would
 * back what it reads. */
static struct {
	const char *name;
	void *fn;
} drv_own[12];
static struct sets shim;
static void *lib;
static int (*reserve)(size_t, void **);
static int (*release)(void *);
static int (*map)(const void *, size_t);
static int (*stats)(struct kvshim_stats *);

static void find_sets(struct sets *s, void *(*sym)(const char *))
{
	*(void **)&s->d8 = sym("cuMemsetD8_v2");
	*(void **)&s->d16 = sym("cuMemsetD16_v2");
	*(void **)&s->d32 = sym("cuMemsetD32_v2");
	*(void **)&s->d8a = sym("cuMemsetD8Async");
	*(void **)&s->d16a = sym("cuMemsetD16Async");
	*(void **)&s->d32a = sym("cuMemsetD32Async");
	*(void **)&s->d2d8 = sym("cuMemsetD2D8_v2");
	*(void **)&s->d2d16 = sym("cuMemsetD2D16_v2");
	*(void **)&s->d2d32 = sym("cuMemsetD2D32_v2");
	*(void **)&s->d2d8a = sym("cuMemsetD2D8Async");
	*(void **)&s->d2d32a = sym("cuMemsetD2D32Async");
}

static void *lib_sym(const char *name)
{
	return dlsym(lib, name);
}

static void keep(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof(drv_own) / sizeof(drv_own[0]); i++) {
		if (!drv_own[i].name) {
			drv_own[i].name = name;
			drv_own[i].fn = kv_dev_sym(name);
			return;
		}
	}
	ck_abort_msg("drv_own holds no room for %s", name);
}

/* The driver's own name, as keep found it (and not kvshim's). */
static void *own(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof(drv_own) / sizeof(drv_own[0]); i++) {
		if (drv_own[i].name && !strcmp(drv_own[i].name, name)) {
			ck_assert_msg(drv_own[i].fn != NULL, "the driver has no %s", name);
			ck_assert_msg(!lib || dlsym(lib, name) != drv_own[i].fn,
				      "%s: the driver's own is kvshim's", name);
			return drv_own[i].fn;
		}
	}
	ck_abort_msg("%s: not kept as the driver's own", name);
	return NULL;
}

static void open_lib(void)
{
	const char *path = getenv("KVSHIM_LIB");

	ck_assert_msg(path != NULL, "KVSHIM_LIB names no library");
	ck_assert_ptr_nonnull(drv.d8);
	lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	ck_assert_msg(lib != NULL, "dlopen %s: %s", path, dlerror());
	find_sets(&shim, lib_sym);
	ck_assert(shim.d8 && shim.d16 && shim.d32 && shim.d8a && shim.d16a && shim.d32a);
	ck_assert_msg(shim.d2d8 && shim.d2d16 && shim.d2d32 && shim.d2d8a && shim.d2d32a,
		      "libkvshim.so does not interpose the 2D memsets");
	*(void **)&reserve = dlsym(lib, "kvshim_reserve");
	*(void **)&release = dlsym(lib, "kvshim_release");
	*(void **)&map = dlsym(lib, "kvshim_map");
	*(void **)&stats = dlsym(lib, "kvshim_stats");
	ck_assert(reserve && release && map && stats);
}

static size_t mapped(void)
{
	struct kvshim_stats s;

	ck_assert_int_eq(stats(&s), 0);
	return s.mapped_bytes;
}

/* A span of 8 pages whose first page is backed and holds seed 5's
 * pattern. */
static CUdeviceptr span8(void)
{
	return kt_span8(reserve, map);
}

/* The first page still holds seed 5's pattern. */
static void untouched(CUdeviceptr p)
{
	unsigned long long bad = 1;

	ck_assert_int_eq(kv_dev_check(p, PG, 5, &bad), CUDA_SUCCESS);
	ck_assert_uint_eq(bad, 0);
}

/*
 * What the driver itself answers for arguments it ought to refuse: asserted
 * on the emulation, whose contract this is. On a GPU the call is not made:
 * the driver 580 on an H200 took cuMemsetD16 with 2^63 + 4 elements and a
 * 2D memset 2^62 + 2 words wide with CUDA_SUCCESS, the byte count wrapping
 * (docs/BENCHMARKS.md, section 5), so it is no model for the shim, which
 * refuses them, and a wild memset must not reach a real device.
 */
#define DRIVER_REFUSES(call) do {                                          \
		if (kv_dev_is_emu())                                        \
			ck_assert_int_eq((call), CUDA_ERROR_INVALID_VALUE); \
	} while (0)

#define BIG16 (((size_t)1 << 63) + 4)     /* 2 bytes each: 2^64 + 8 */
#define BIG32 (((size_t)1 << 62) + 2)     /* 4 bytes each: 2^64 + 8 */

/*
 * Element counts whose byte count does not fit in size_t (it wraps to 8):
 * the driver refuses them, and so must the shim, with a zero value (which
 * the shim would skip over unmapped pages) and any other alike.
 */
START_TEST(test_memset_count_overflow)
{
	static const unsigned vals[] = { 0, 0x5a5a5a5a };
	CUdeviceptr p;
	size_t before, i;

	open_lib();
	p = span8();
	before = mapped();
	for (i = 0; i < 2; i++) {
		unsigned v = vals[i];

		DRIVER_REFUSES(drv.d16(p, (unsigned short)v, BIG16));
		ck_assert_int_eq(shim.d16(p, (unsigned short)v, BIG16), CUDA_ERROR_INVALID_VALUE);
		DRIVER_REFUSES(drv.d32(p, v, BIG32));
		ck_assert_int_eq(shim.d32(p, v, BIG32), CUDA_ERROR_INVALID_VALUE);
		DRIVER_REFUSES(drv.d16a(p, (unsigned short)v, BIG16, NULL));
		ck_assert_int_eq(shim.d16a(p, (unsigned short)v, BIG16, NULL),
				 CUDA_ERROR_INVALID_VALUE);
		DRIVER_REFUSES(drv.d32a(p, v, BIG32, NULL));
		ck_assert_int_eq(shim.d32a(p, v, BIG32, NULL), CUDA_ERROR_INVALID_VALUE);
		/* a byte count past the end of memory, one byte at a time */
		DRIVER_REFUSES(drv.d8(p, (unsigned char)v, SIZE_MAX));
		ck_assert_int_eq(shim.d8(p, (unsigned char)v, SIZE_MAX), CUDA_ERROR_INVALID_VALUE);
		ck_assert_int_eq(shim.d8a(p, (unsigned char)v, SIZE_MAX, NULL),
				 CUDA_ERROR_INVALID_VALUE);
		ck_assert_uint_eq(mapped(), before);
		untouched(p);
	}
	ck_assert_int_eq(release((void *)(uintptr_t)p), 0);
}
END_TEST

/*
 * A range that starts in a span and runs past its end: the driver says
 * invalid value (the range is not inside one allocation), not out of
 * memory, and no page of the span is backed for it.
 */
START_TEST(test_memset_past_span_end)
{
	static const unsigned vals[] = { 0, 7 };
	CUdeviceptr p, q;
	size_t before, i;

	open_lib();
	p = span8();
	q = p + 7 * PG + 64;     /* the last page, unmapped */
	before = mapped();
	for (i = 0; i < 2; i++) {
		unsigned v = vals[i];

		ck_assert_int_eq(shim.d8(q, (unsigned char)v, PG), CUDA_ERROR_INVALID_VALUE);
		ck_assert_int_eq(shim.d16(q, (unsigned short)v, PG / 2), CUDA_ERROR_INVALID_VALUE);
		ck_assert_int_eq(shim.d32(q, v, PG / 4), CUDA_ERROR_INVALID_VALUE);
		ck_assert_int_eq(shim.d8a(q, (unsigned char)v, PG, NULL), CUDA_ERROR_INVALID_VALUE);
		ck_assert_int_eq(shim.d16a(q, (unsigned short)v, PG / 2, NULL),
				 CUDA_ERROR_INVALID_VALUE);
		ck_assert_int_eq(shim.d32a(q, v, PG / 4, NULL), CUDA_ERROR_INVALID_VALUE);
		/* the whole span and one byte more, from its first page */
		ck_assert_int_eq(shim.d8(p, (unsigned char)v, 8 * PG + 1), CUDA_ERROR_INVALID_VALUE);
		ck_assert_uint_eq(mapped(), before);
		untouched(p);
	}
	/* the driver, on a start it can touch: the same answer */
	DRIVER_REFUSES(drv.d8(p, 7, 8 * PG + 1));
	DRIVER_REFUSES(drv.d32(p + 4, 7, 2 * PG));
	ck_assert_int_eq(release((void *)(uintptr_t)p), 0);
}
END_TEST

/* A start not aligned to the element: refused before any page is backed. */
START_TEST(test_memset_misaligned)
{
	CUdeviceptr p;
	size_t before;

	open_lib();
	p = span8();
	before = mapped();
	DRIVER_REFUSES(drv.d32(p + 2, 1, 4));
	DRIVER_REFUSES(drv.d16(p + 1, 1, 4));
	ck_assert_int_eq(shim.d32(p + 3 * PG + 2, 1, 4), CUDA_ERROR_INVALID_VALUE);
	ck_assert_int_eq(shim.d16(p + 3 * PG + 1, 1, 4), CUDA_ERROR_INVALID_VALUE);
	ck_assert_int_eq(shim.d32a(p + 3 * PG + 2, 1, 4, NULL), CUDA_ERROR_INVALID_VALUE);
	ck_assert_uint_eq(mapped(), before);
	untouched(p);
	ck_assert_int_eq(release((void *)(uintptr_t)p), 0);
}
END_TEST

/*
 * 2D memsets on a span: the pages from the first row to the last are backed
 * first, those the rows skip too (the driver refuses a 2D memset with an
 * unmapped page there: docs/BENCHMARKS.md, section 5), and what the driver
 * refuses is refused with its code before any page is backed.
 */
START_TEST(test_memset2d_on_span)
{
	CUresult (*dtoh)(void *, CUdeviceptr, size_t);
	unsigned int word = 0;
	CUdeviceptr p;
	size_t before;

	open_lib();
	*(void **)&dtoh = own("cuMemcpyDtoH_v2");
	ck_assert_ptr_nonnull(dtoh);
	p = span8();
	before = mapped();
	/* 3 rows of 16 words, one at the start of pages 2, 3 and 4 */
	ck_assert_int_eq(shim.d2d32(p + 2 * PG, PG, 0x0a0b0c0d, 16, 3), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + 3 * PG);
	ck_assert_int_eq(dtoh(&word, p + 4 * PG + 60, 4), CUDA_SUCCESS);
	ck_assert_uint_eq(word, 0x0a0b0c0d);
	ck_assert_int_eq(dtoh(&word, p + 4 * PG + 64, 4), CUDA_SUCCESS);
	ck_assert_uint_eq(word, 0);
	ck_assert_int_eq(shim.d2d8a(p + 5 * PG, 64, 0, 64, 2, NULL), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + 4 * PG);
	ck_assert_int_eq(shim.d2d16(p, 64, 1, 8, 4), CUDA_SUCCESS);   /* page 0 */
	ck_assert_uint_eq(mapped(), before + 4 * PG);
	/* rows 2 PG apart, on pages 5 and 7: page 6, which they skip, too
	 * (the driver refuses the memset while it is unmapped) */
	ck_assert_int_eq(shim.d2d8(p + 5 * PG, 2 * PG, 1, 4, 2), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + 6 * PG);
	before = mapped();

	/* refused by the driver, refused alike, nothing backed */
	DRIVER_REFUSES(drv.d2d32(p, 64, 1, BIG32, 1));
	ck_assert_int_eq(shim.d2d32(p + 6 * PG, 64, 1, BIG32, 1), CUDA_ERROR_INVALID_VALUE);
	DRIVER_REFUSES(drv.d2d8(p, SIZE_MAX / 2, 1, 4, 4));
	ck_assert_int_eq(shim.d2d8(p + 6 * PG, SIZE_MAX / 2, 1, 4, 4), CUDA_ERROR_INVALID_VALUE);
	DRIVER_REFUSES(drv.d2d8(p, 4 * PG, 1, 4, 3));
	ck_assert_int_eq(shim.d2d8(p + 6 * PG, PG, 1, 4, 3), CUDA_ERROR_INVALID_VALUE);
	ck_assert_int_eq(shim.d2d32a(p + 6 * PG, PG, 1, 4, 3, NULL), CUDA_ERROR_INVALID_VALUE);
	DRIVER_REFUSES(drv.d2d8(p, 2, 1, 4, 3));
	ck_assert_int_eq(shim.d2d8(p + 6 * PG, 2, 1, 4, 3), CUDA_ERROR_INVALID_VALUE);
	DRIVER_REFUSES(drv.d2d16(p + 1, 64, 1, 4, 3));
	ck_assert_int_eq(shim.d2d16(p + 6 * PG + 1, 64, 1, 4, 3), CUDA_ERROR_INVALID_VALUE);
	DRIVER_REFUSES(drv.d2d32(p, 66, 1, 4, 3));
	ck_assert_int_eq(shim.d2d32(p + 6 * PG, 66, 1, 4, 3), CUDA_ERROR_INVALID_VALUE);
	ck_assert_uint_eq(mapped(), before);
	ck_assert_int_eq(release((void *)(uintptr_t)p), 0);
}
END_TEST

/* A copy into or out of a span that runs past its end: invalid value, as
 * from the driver, and nothing backed. */
START_TEST(test_copy_past_span_end)
{
	CUresult (*htod)(CUdeviceptr, const void *, size_t);
	CUresult (*dtoh)(void *, CUdeviceptr, size_t);
	CUresult (*dtod)(CUdeviceptr, CUdeviceptr, size_t);
	static char host[2 * PG];
	CUdeviceptr p;
	size_t before;

	open_lib();
	*(void **)&htod = dlsym(lib, "cuMemcpyHtoD_v2");
	*(void **)&dtoh = dlsym(lib, "cuMemcpyDtoH_v2");
	*(void **)&dtod = dlsym(lib, "cuMemcpyDtoD_v2");
	ck_assert(htod && dtoh && dtod);
	p = span8();
	before = mapped();
	ck_assert_int_eq(htod(p + 7 * PG, host, 2 * PG), CUDA_ERROR_INVALID_VALUE);
	ck_assert_int_eq(dtoh(host, p + 7 * PG + 1, PG), CUDA_ERROR_INVALID_VALUE);
	ck_assert_uint_eq(mapped(), before);
	/* a side that fits beside one that does not: neither is backed */
	ck_assert_int_eq(dtod(p + 5 * PG, p + 7 * PG + 1, PG), CUDA_ERROR_INVALID_VALUE);
	ck_assert_uint_eq(mapped(), before);
	ck_assert_int_eq(htod(p + 7 * PG, host, PG), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + PG);
	ck_assert_int_eq(release((void *)(uintptr_t)p), 0);
}
END_TEST

/*
 * A copy function as an engine finds it: through the shim's
 * cuGetProcAddress (shim_side = 1), by base name, which hands out the
 * shim's wrapper where there is one; or the driver's own (0), as found
 * before kvshim loaded.
 */
static void *copy_fn(int shim_side, const char *base, const char *name)
{
	CUresult (*gpa)(const char *, void **, int, cuuint64_t,
			CUdriverProcAddressQueryResult *);
	CUdriverProcAddressQueryResult q;
	void *fn = NULL;

	if (!shim_side)
		fn = own(name);
	else {
		*(void **)&gpa = dlsym(lib, "cuGetProcAddress_v2");
		ck_assert_ptr_nonnull(gpa);
		ck_assert_int_eq(gpa(base, &fn, 13000, 0, &q), CUDA_SUCCESS);
	}
	ck_assert_msg(fn != NULL, "%s not found", name);
	return fn;
}

/* Whether libkvshim.so exports name (as a preloaded wrapper must). */
static void exported(const char *name)
{
	ck_assert_msg(dlsym(lib, name) != NULL, "libkvshim.so does not export %s", name);
}

/* The shim's (shim_side = 1) or the driver's 2D copy of form i:
 * cuMemcpy2D, cuMemcpy2DUnaligned, cuMemcpy2DAsync on the legacy stream. */
static const char *const copy2d_names[][2] = {
	{ "cuMemcpy2D", "cuMemcpy2D_v2" },
	{ "cuMemcpy2DUnaligned", "cuMemcpy2DUnaligned_v2" },
	{ "cuMemcpy2DAsync", "cuMemcpy2DAsync_v2" },
};

static CUresult copy2d(int shim_side, int i, const CUDA_MEMCPY2D *c)
{
	CUresult (*sync)(const CUDA_MEMCPY2D *);
	CUresult (*async)(const CUDA_MEMCPY2D *, CUstream);
	void *fn = copy_fn(shim_side, copy2d_names[i][0], copy2d_names[i][1]);

	if (i == 2) {
		*(void **)&async = fn;
		return async(c, NULL);
	}
	*(void **)&sync = fn;
	return sync(c);
}

/* The same for 3D copies: form 0 cuMemcpy3D, 1 cuMemcpy3DAsync, 2
 * cuMemcpy3DPeer, 3 cuMemcpy3DPeerAsync (its sides in the current
 * context). */
static const char *const copy3d_names[][2] = {
	{ "cuMemcpy3D", "cuMemcpy3D_v2" },
	{ "cuMemcpy3DAsync", "cuMemcpy3DAsync_v2" },
	{ "cuMemcpy3DPeer", "cuMemcpy3DPeer" },
	{ "cuMemcpy3DPeerAsync", "cuMemcpy3DPeerAsync" },
};

/* c as a peer copy between the current context and itself. */
static CUDA_MEMCPY3D_PEER peer3d(const CUDA_MEMCPY3D *c)
{
	CUresult (*cur)(CUcontext *);
	CUcontext ctx = NULL;

	*(void **)&cur = kv_dev_sym("cuCtxGetCurrent");
	ck_assert_ptr_nonnull(cur);
	ck_assert_int_eq(cur(&ctx), CUDA_SUCCESS);
	return kv_dev_peer3d(c, ctx);
}

static CUresult copy3d(int shim_side, int i, const CUDA_MEMCPY3D *c)
{
	CUresult (*sync)(const CUDA_MEMCPY3D *);
	CUresult (*async)(const CUDA_MEMCPY3D *, CUstream);
	CUresult (*psync)(const CUDA_MEMCPY3D_PEER *);
	CUresult (*pasync)(const CUDA_MEMCPY3D_PEER *, CUstream);
	void *fn = copy_fn(shim_side, copy3d_names[i][0], copy3d_names[i][1]);
	CUDA_MEMCPY3D_PEER q;

	if (i >= 2) {
		q = peer3d(c);
		*(void **)&psync = fn;
		*(void **)&pasync = fn;
		return i == 3 ? pasync(&q, NULL) : psync(&q);
	}
	if (i) {
		*(void **)&async = fn;
		return async(c, NULL);
	}
	*(void **)&sync = fn;
	return sync(c);
}

/* A 2D copy of height rows of width bytes from host memory into device
 * memory (d: the device side's pointer, with its pitch and first row). */
static CUDA_MEMCPY2D htod2d(CUdeviceptr d, size_t pitch, size_t y, const void *host,
			    size_t width, size_t height)
{
	CUDA_MEMCPY2D c;

	memset(&c, 0, sizeof(c));
	c.dstMemoryType = CU_MEMORYTYPE_DEVICE;
	c.dstDevice = d;
	c.dstPitch = pitch;
	c.dstY = y;
	c.srcMemoryType = CU_MEMORYTYPE_HOST;
	c.srcHost = host;
	c.srcPitch = width;
	c.WidthInBytes = width;
	c.Height = height;
	return c;
}

/*
 * 2D copies into and out of a lazy span (loop i: the three forms): every
 * page of the device side's box is backed and pinned first, on either
 * side, a unified one included, those the rows skip too; and where the box
 * starts past the side's pointer (dstY, srcXInBytes), as many bytes from
 * the pointer: the driver refuses the copy while a page of those is
 * unmapped, and asks for none between them and the box
 * (tests/gpu/pitched_probe.py, which the emulation models); a host side is
 * left alone. A copy the driver would refuse (a box past the span's end, a
 * pitch narrower than a row, sizes that overflow, one side bad beside a
 * good one) gets its answer, and nothing is backed.
 */
START_TEST(test_copy2d_on_span)
{
	CUresult (*dtoh)(void *, CUdeviceptr, size_t);
	static unsigned char host[4 * 64], back[64];
	CUDA_MEMCPY2D c;
	CUdeviceptr p;
	size_t before;

	open_lib();
	*(void **)&dtoh = own("cuMemcpyDtoH_v2");
	ck_assert_ptr_nonnull(dtoh);
	memset(host, 0x11, sizeof(host));
	p = span8();
	before = mapped();
	/* 2 rows of 64 bytes, at the start of pages 2 and 4: page 3, which
	 * the rows skip, too */
	c = htod2d(p + 2 * PG, 2 * PG, 0, host, 64, 2);
	ck_assert_int_eq(copy2d(1, _i, &c), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + 3 * PG);
	ck_assert_int_eq(dtoh(back, p + 4 * PG, 64), CUDA_SUCCESS);
	ck_assert_uint_eq(back[0], 0x11);
	ck_assert_uint_eq(back[63], 0x11);
	/* out of page 6, never written, from a pointer on page 4 (backed):
	 * the row's 64 bytes from the pointer lie on page 4, and page 5,
	 * between them and the row, is left alone; zeros */
	memset(&c, 0, sizeof(c));
	c.srcMemoryType = CU_MEMORYTYPE_DEVICE;
	c.srcDevice = p + 4 * PG;
	c.srcXInBytes = 128;
	c.srcY = 2;
	c.srcPitch = PG;
	c.dstMemoryType = CU_MEMORYTYPE_HOST;
	c.dstHost = host;
	c.dstPitch = 64;
	c.WidthInBytes = 64;
	c.Height = 1;
	ck_assert_int_eq(copy2d(1, _i, &c), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + 4 * PG);
	ck_assert_uint_eq(host[0], 0);
	ck_assert_uint_eq(host[63], 0);
	/* two rows, on pages 6 and 7: the box's bytes from the pointer reach
	 * page 5, backed too (the driver refuses the copy without it) */
	c.Height = 2;
	ck_assert_int_eq(copy2d(1, _i, &c), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + 6 * PG);
	ck_assert_uint_eq(host[64], 0);
	/* unified pointers on both sides: page 0 (backed) to page 7 */
	memset(&c, 0, sizeof(c));
	c.srcMemoryType = CU_MEMORYTYPE_UNIFIED;
	c.srcDevice = p;
	c.dstMemoryType = CU_MEMORYTYPE_UNIFIED;
	c.dstDevice = p + 7 * PG;
	c.WidthInBytes = 4096;
	c.Height = 1;
	ck_assert_int_eq(copy2d(1, _i, &c), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + 6 * PG);
	before = mapped();

	/* refused by the driver, refused alike, nothing backed (page 1 is
	 * the one still unbacked) */
	c = htod2d(p + PG, PG, 6, host, 64, 2);              /* rows on pages 7, 8 */
	DRIVER_REFUSES(copy2d(0, _i, &c));
	ck_assert_int_eq(copy2d(1, _i, &c), CUDA_ERROR_INVALID_VALUE);
	c = htod2d(p + PG, 32, 0, host, 64, 2);              /* pitch under a row */
	DRIVER_REFUSES(copy2d(0, _i, &c));
	ck_assert_int_eq(copy2d(1, _i, &c), CUDA_ERROR_INVALID_VALUE);
	c = htod2d(p + PG, PG, SIZE_MAX / PG, host, 64, 1);  /* the first row overflows */
	DRIVER_REFUSES(copy2d(0, _i, &c));
	ck_assert_int_eq(copy2d(1, _i, &c), CUDA_ERROR_INVALID_VALUE);
	c = htod2d(p + PG, SIZE_MAX / 2, 0, host, 64, 4);    /* so does the box */
	DRIVER_REFUSES(copy2d(0, _i, &c));
	ck_assert_int_eq(copy2d(1, _i, &c), CUDA_ERROR_INVALID_VALUE);
	/* a device destination that fits, a source past the span's end */
	memset(&c, 0, sizeof(c));
	c.dstMemoryType = CU_MEMORYTYPE_DEVICE;
	c.dstDevice = p + PG;
	c.srcMemoryType = CU_MEMORYTYPE_DEVICE;
	c.srcDevice = p + 7 * PG + 1;
	c.WidthInBytes = PG;
	c.Height = 1;
	DRIVER_REFUSES(copy2d(0, _i, &c));
	ck_assert_int_eq(copy2d(1, _i, &c), CUDA_ERROR_INVALID_VALUE);
	ck_assert_uint_eq(mapped(), before);
	untouched(p);
	ck_assert_int_eq(release((void *)(uintptr_t)p), 0);
	exported(copy2d_names[_i][1]);
}
END_TEST

/*
 * 3D copies (loop i: cuMemcpy3D, cuMemcpy3DAsync, cuMemcpy3DPeer and
 * cuMemcpy3DPeerAsync, in the current context): every page of the box
 * is backed first, and as many bytes from the pointer where the box starts
 * past it (see test_copy2d_on_span); what the driver refuses
 * (slices of fewer rows than the copy's, a box past the span's end, sizes
 * that overflow) is refused alike, nothing backed.
 */
START_TEST(test_copy3d_on_span)
{
	CUresult (*dtoh)(void *, CUdeviceptr, size_t);
	static unsigned char host[4 * 64], back[64];
	CUDA_MEMCPY3D c, bad;
	CUdeviceptr p;
	size_t before, i;

	open_lib();
	*(void **)&dtoh = own("cuMemcpyDtoH_v2");
	ck_assert_ptr_nonnull(dtoh);
	for (i = 0; i < sizeof(host); i++)
		host[i] = (unsigned char)(i / 64 + 1);
	p = span8();
	before = mapped();
	/* 2 slices of 2 rows of 64 bytes; rows PG apart, slices 2 PG apart,
	 * from slice 1: pages 2, 3, 4 and 5, and page 1, which the box's
	 * bytes from the pointer (3 pages and 64 bytes) reach */
	memset(&c, 0, sizeof(c));
	c.dstMemoryType = CU_MEMORYTYPE_DEVICE;
	c.dstDevice = p;
	c.dstZ = 1;
	c.dstPitch = PG;
	c.dstHeight = 2;
	c.srcMemoryType = CU_MEMORYTYPE_HOST;
	c.srcHost = host;
	c.srcPitch = 64;
	c.srcHeight = 2;
	c.WidthInBytes = 64;
	c.Height = 2;
	c.Depth = 2;
	ck_assert_int_eq(copy3d(1, _i, &c), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + 5 * PG);
	ck_assert_int_eq(dtoh(back, p + 5 * PG, 64), CUDA_SUCCESS);
	ck_assert_uint_eq(back[0], 4);
	ck_assert_uint_eq(back[63], 4);
	/* out of page 6, never written */
	memset(&c, 0, sizeof(c));
	c.srcMemoryType = CU_MEMORYTYPE_DEVICE;
	c.srcDevice = p + 6 * PG + 64;
	c.dstMemoryType = CU_MEMORYTYPE_HOST;
	c.dstHost = host;
	c.WidthInBytes = 64;
	c.Height = 1;
	c.Depth = 1;
	ck_assert_int_eq(copy3d(1, _i, &c), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + 6 * PG);
	ck_assert_uint_eq(host[0], 0);
	before = mapped();

	/* refused: a box reaching page 8, past the span (page 7 is
	 * unbacked) */
	memset(&bad, 0, sizeof(bad));
	bad.dstMemoryType = CU_MEMORYTYPE_DEVICE;
	bad.dstDevice = p + PG;
	bad.dstPitch = PG;
	bad.dstHeight = 3;
	bad.dstZ = 2;
	bad.srcMemoryType = CU_MEMORYTYPE_HOST;
	bad.srcHost = host;
	bad.srcPitch = 64;
	bad.srcHeight = 2;
	bad.WidthInBytes = 64;
	bad.Height = 2;
	bad.Depth = 1;
	DRIVER_REFUSES(copy3d(0, _i, &bad));
	ck_assert_int_eq(copy3d(1, _i, &bad), CUDA_ERROR_INVALID_VALUE);
	/* slices of fewer rows than the copy's */
	c = bad;
	c.dstZ = 0;
	c.dstHeight = 1;
	c.Depth = 2;
	DRIVER_REFUSES(copy3d(0, _i, &c));
	ck_assert_int_eq(copy3d(1, _i, &c), CUDA_ERROR_INVALID_VALUE);
	/* a slice pitch that overflows */
	c = bad;
	c.dstZ = 0;
	c.dstHeight = SIZE_MAX / 2;
	c.Depth = 2;
	DRIVER_REFUSES(copy3d(0, _i, &c));
	ck_assert_int_eq(copy3d(1, _i, &c), CUDA_ERROR_INVALID_VALUE);
	/* a pitch under a row */
	c = bad;
	c.dstZ = 0;
	c.dstPitch = 32;
	DRIVER_REFUSES(copy3d(0, _i, &c));
	ck_assert_int_eq(copy3d(1, _i, &c), CUDA_ERROR_INVALID_VALUE);
	ck_assert_uint_eq(mapped(), before);
	untouched(p);
	ck_assert_int_eq(release((void *)(uintptr_t)p), 0);
	exported(copy3d_names[_i][1]);
}
END_TEST

/*
 * 3D copies between two spans (loop i: the forms of test_copy3d_on_span),
 * each side with offsets, pitch and slice height of its own: each side's
 * pages are backed from its own fields, from its pointer to its box's end,
 * and no more; a source box past its span's end refuses the copy before
 * the destination's pages are backed (both spans fresh, so that any page
 * backed shows).
 */
START_TEST(test_copy3d_two_spans)
{
	CUresult (*htod)(CUdeviceptr, const void *, size_t);
	CUresult (*dtoh)(void *, CUdeviceptr, size_t);
	static unsigned char host[64], back[64];
	CUDA_MEMCPY3D c;
	CUdeviceptr p, r;
	size_t before;

	open_lib();
	*(void **)&htod = dlsym(lib, "cuMemcpyHtoD_v2");
	*(void **)&dtoh = own("cuMemcpyDtoH_v2");
	ck_assert(htod && dtoh);
	p = span8();
	r = span8();
	memset(host, 0xa5, sizeof(host));
	ck_assert_int_eq(htod(r + 5 * PG + 64, host, sizeof(host)), CUDA_SUCCESS);
	ck_assert_int_eq(htod(r + 7 * PG + 64, host, sizeof(host)), CUDA_SUCCESS);
	before = mapped();
	/* 2 rows of 64 bytes, 2 pages apart, from r's slice 1, byte PG + 64
	 * (r's pages 5 and 7, backed above, and 6 between them; from r,
	 * pages 0 to 2) into p's rows a page apart from its slice 2, byte 128
	 * (p's pages 6 and 7; from p, pages 0 and 1): r's pages 1, 2 and 6
	 * and p's pages 1, 6 and 7, and none else */
	memset(&c, 0, sizeof(c));
	c.srcMemoryType = CU_MEMORYTYPE_DEVICE;
	c.srcDevice = r;
	c.srcXInBytes = PG + 64;
	c.srcZ = 1;
	c.srcPitch = 2 * PG;
	c.srcHeight = 2;
	c.dstMemoryType = CU_MEMORYTYPE_DEVICE;
	c.dstDevice = p;
	c.dstXInBytes = 128;
	c.dstZ = 2;
	c.dstPitch = PG;
	c.dstHeight = 3;
	c.WidthInBytes = 64;
	c.Height = 2;
	c.Depth = 1;
	ck_assert_int_eq(copy3d(1, _i, &c), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + 6 * PG);
	ck_assert_int_eq(dtoh(back, p + 7 * PG + 128, sizeof(back)), CUDA_SUCCESS);
	ck_assert_uint_eq(back[0], 0xa5);
	ck_assert_uint_eq(back[63], 0xa5);
	ck_assert_int_eq(release((void *)(uintptr_t)p), 0);
	ck_assert_int_eq(release((void *)(uintptr_t)r), 0);

	/* the source's box from r's last page past its end (slice 1, row 1:
	 * page 7, then 9), the destination's fitting: refused, neither
	 * span's pages backed */
	p = span8();
	r = span8();
	before = mapped();
	c.srcDevice = r;
	c.srcY = 1;
	c.dstDevice = p;
	c.dstZ = 1;
	ck_assert_int_eq(copy3d(1, _i, &c), CUDA_ERROR_INVALID_VALUE);
	ck_assert_uint_eq(mapped(), before);
	untouched(p);
	untouched(r);
	ck_assert_int_eq(release((void *)(uintptr_t)p), 0);
	ck_assert_int_eq(release((void *)(uintptr_t)r), 0);
}
END_TEST

/* A peer copy of n bytes from s to d, both in context ctx, by fn:
 * cuMemcpyPeerAsync (on the legacy stream) with async, else cuMemcpyPeer. */
static CUresult peer_copy(void *fn, int async, CUcontext ctx, CUdeviceptr d, CUdeviceptr s,
			  size_t n)
{
	CUresult (*peer)(CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t);
	CUresult (*peer_async)(CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t,
			       CUstream);

	*(void **)&peer = fn;
	*(void **)&peer_async = fn;
	return async ? peer_async(d, ctx, s, ctx, n, NULL) : peer(d, ctx, s, ctx, n);
}

/*
 * Peer copies (loop i: cuMemcpyPeer, cuMemcpyPeerAsync), between two spans
 * here in the current context: both sides are backed first; a range past a
 * span's end is refused, the other side not backed either.
 */
START_TEST(test_copy_peer_on_span)
{
	CUresult (*cur)(CUcontext *);
	const char *name = _i ? "cuMemcpyPeerAsync" : "cuMemcpyPeer";
	unsigned long long bad = 1;
	CUcontext ctx = NULL;
	CUdeviceptr p, q;
	size_t before;
	void *fn;

	open_lib();
	*(void **)&cur = kv_dev_sym("cuCtxGetCurrent");
	ck_assert_ptr_nonnull(cur);
	fn = copy_fn(1, name, name);
	p = span8();
	q = span8();
	ck_assert_int_eq(cur(&ctx), CUDA_SUCCESS);
	ck_assert_ptr_nonnull(ctx);
	before = mapped();
	/* p's backed page 0 into q's page 3 */
	ck_assert_int_eq(peer_copy(fn, _i, ctx, q + 3 * PG, p, PG), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + PG);
	ck_assert_int_eq(kv_dev_check(q + 3 * PG, PG, 5, &bad), CUDA_SUCCESS);
	ck_assert_uint_eq(bad, 0);
	/* out of p's page 4, never written, into q's page 5 */
	ck_assert_int_eq(peer_copy(fn, _i, ctx, q + 5 * PG, p + 4 * PG, 4096), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + 3 * PG);
	before = mapped();
	/* refused: a source past p's end beside a destination that fits,
	 * and the other way round */
	ck_assert_int_eq(peer_copy(fn, _i, ctx, q + 6 * PG, p + 7 * PG + 1, PG), CUDA_ERROR_INVALID_VALUE);
	ck_assert_int_eq(peer_copy(fn, _i, ctx, q + 7 * PG + 1, p + 6 * PG, PG), CUDA_ERROR_INVALID_VALUE);
	ck_assert_int_eq(peer_copy(fn, _i, ctx, q + 6 * PG, p + 6 * PG, SIZE_MAX), CUDA_ERROR_INVALID_VALUE);
	ck_assert_uint_eq(mapped(), before);
	untouched(p);
	ck_assert_int_eq(release((void *)(uintptr_t)p), 0);
	ck_assert_int_eq(release((void *)(uintptr_t)q), 0);
	exported(name);
}
END_TEST

/* A batch of linear copies, CUDA 12.8's form (with failIdx) or 13.0's. */
typedef CUresult (*batch12_fn)(CUdeviceptr *, CUdeviceptr *, size_t *, size_t,
			       CUmemcpyAttributes *, size_t *, size_t, size_t *, CUstream);
typedef CUresult (*batch13_fn)(CUdeviceptr *, CUdeviceptr *, size_t *, size_t,
			       CUmemcpyAttributes *, size_t *, size_t, CUstream);

/* Run copies [0, n) of d, s, z as one batch through fn (form 12.8 where
 * v12, *fail set; else 13.0), on stream st, one attribute for all. */
static CUresult batch(void *fn, int v12, CUdeviceptr *d, CUdeviceptr *s, size_t *z,
		      size_t n, CUstream st, size_t *fail)
{
	CUmemcpyAttributes attr;
	size_t idx = 0;

	memset(&attr, 0, sizeof(attr));
	attr.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
	*fail = SIZE_MAX - 1;
	if (v12)
		return ((batch12_fn)fn)(d, s, z, n, &attr, &idx, 1, fail, st);
	return ((batch13_fn)fn)(d, s, z, n, &attr, &idx, 1, st);
}

/*
 * Batched copies (loop i: cuMemcpyBatchAsync as CUDA 12.8 finds it, with a
 * failIdx, or as 13.0 does), found as an engine finds them, through the
 * shim's cuGetProcAddress: every span page a copy of the batch reads or
 * writes is backed first, whatever side it is on. A batch holding one copy
 * the driver would refuse (past a span's end) is refused whole, nothing of
 * it backed, failIdx naming that copy; one the driver refuses on its own
 * (no copy) changes nothing either.
 */
START_TEST(test_copy_batch_on_span)
{
	CUresult (*gpa)(const char *, void **, int, cuuint64_t,
			CUdriverProcAddressQueryResult *);
	CUresult (*create)(CUstream *, unsigned int);
	CUresult (*sync)(CUstream);
	CUresult (*destroy)(CUstream);
	CUdriverProcAddressQueryResult q;
	static char host[2][4096];
	unsigned long long bad = 1;
	CUdeviceptr p, r, d[3], s[3];
	size_t z[3], before, fail;
	CUstream st = NULL;
	void *fn = NULL;

	open_lib();
	*(void **)&gpa = dlsym(lib, "cuGetProcAddress_v2");
	*(void **)&create = kv_dev_sym("cuStreamCreate");
	*(void **)&sync = kv_dev_sym("cuStreamSynchronize");
	*(void **)&destroy = kv_dev_sym("cuStreamDestroy_v2");
	ck_assert(gpa && create && sync && destroy);
	ck_assert_int_eq(gpa("cuMemcpyBatchAsync", &fn, _i ? 13000 : 12080, 0, &q), CUDA_SUCCESS);
	ck_assert_ptr_nonnull(fn);
	ck_assert_ptr_eq(fn, dlsym(lib, _i ? "cuMemcpyBatchAsync_v2" : "cuMemcpyBatchAsync"));
	ck_assert_int_eq(create(&st, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
	p = span8();
	r = span8();
	before = mapped();
	/* p's page 0 into r's page 3; host bytes into p's page 5; r's page
	 * 6, never written, out to the host */
	memset(host[0], 0x5a, sizeof(host[0]));
	d[0] = r + 3 * PG, s[0] = p, z[0] = PG;
	d[1] = p + 5 * PG, s[1] = (CUdeviceptr)(uintptr_t)host[0], z[1] = sizeof(host[0]);
	d[2] = (CUdeviceptr)(uintptr_t)host[1], s[2] = r + 6 * PG, z[2] = sizeof(host[1]);
	ck_assert_int_eq(batch(fn, !_i, d, s, z, 3, st, &fail), CUDA_SUCCESS);
	ck_assert_int_eq(sync(st), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + 3 * PG);
	ck_assert_int_eq(kv_dev_check(r + 3 * PG, PG, 5, &bad), CUDA_SUCCESS);
	ck_assert_uint_eq(bad, 0);
	before = mapped();
	/* refused whole: copy 1 runs past r's end, copy 0 (into p's page 7,
	 * never backed) fits */
	d[0] = p + 7 * PG, s[0] = (CUdeviceptr)(uintptr_t)host[0], z[0] = 4096;
	d[1] = r + 7 * PG + 1, s[1] = p, z[1] = PG;
	ck_assert_int_eq(batch(fn, !_i, d, s, z, 2, st, &fail), CUDA_ERROR_INVALID_VALUE);
	if (!_i)
		ck_assert_uint_eq(fail, 1);
	ck_assert_uint_eq(mapped(), before);
	/* no copy at all: the driver's answer, nothing changed */
	ck_assert_int_eq(batch(fn, !_i, d, s, z, 0, st, &fail), CUDA_ERROR_INVALID_VALUE);
	ck_assert_uint_eq(mapped(), before);
	untouched(p);
	ck_assert_int_eq(destroy(st), CUDA_SUCCESS);
	ck_assert_int_eq(release((void *)(uintptr_t)p), 0);
	ck_assert_int_eq(release((void *)(uintptr_t)r), 0);
	exported(_i ? "cuMemcpyBatchAsync_v2" : "cuMemcpyBatchAsync");
	exported(_i ? "cuMemcpyBatchAsync_v2_ptsz" : "cuMemcpyBatchAsync_ptsz");
}
END_TEST

/* A batch of 3D copies, CUDA 12.8's form (with failIdx) or 13.0's; the
 * driver's own of each (0: 12.8's, 1: 13.0's), found before any test
 * loads kvshim. */
typedef CUresult (*batch3d12_fn)(size_t, CUDA_MEMCPY3D_BATCH_OP *, size_t *,
				 unsigned long long, CUstream);
typedef CUresult (*batch3d13_fn)(size_t, CUDA_MEMCPY3D_BATCH_OP *, unsigned long long,
				 CUstream);
#define DRV_BATCH3D(i) own((i) ? "cuMemcpy3DBatchAsync_v2" : "cuMemcpy3DBatchAsync")

/* Run ops [0, n) as one batch through fn (form 12.8 where v12, *fail set;
 * else 13.0) on stream st. */
static CUresult batch3d(void *fn, int v12, CUDA_MEMCPY3D_BATCH_OP *ops, size_t n,
			CUstream st, size_t *fail)
{
	*fail = SIZE_MAX - 1;
	if (v12)
		return ((batch3d12_fn)fn)(n, ops, fail, 0, st);
	return ((batch3d13_fn)fn)(n, ops, 0, st);
}

/* A pointer operand at p, its rows row bytes apart and its layers layer
 * rows apart (0: as tight as the copy). */
static CUmemcpy3DOperand ptr_operand(CUdeviceptr p, size_t row, size_t layer)
{
	CUmemcpy3DOperand o;

	memset(&o, 0, sizeof(o));
	o.type = CU_MEMCPY_OPERAND_TYPE_POINTER;
	o.op.ptr.ptr = p;
	o.op.ptr.rowLength = row;
	o.op.ptr.layerHeight = layer;
	return o;
}

/* A copy of depth layers of height rows of width bytes from src to dst. */
static CUDA_MEMCPY3D_BATCH_OP op3d(CUmemcpy3DOperand dst, CUmemcpy3DOperand src,
				   size_t width, size_t height, size_t depth)
{
	CUDA_MEMCPY3D_BATCH_OP op;

	memset(&op, 0, sizeof(op));
	op.dst = dst;
	op.src = src;
	op.extent.width = width;
	op.extent.height = height;
	op.extent.depth = depth;
	op.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
	return op;
}

/* Whether the span page at p was backed: kvshim_map backs it now where it
 * was not, and the mapped bytes grow. */
static int was_backed(CUdeviceptr p)
{
	size_t before = mapped();

	ck_assert_int_eq(map((void *)(uintptr_t)p, PG), 0);
	return mapped() == before;
}

#define HOST(h) ((CUdeviceptr)(uintptr_t)(h))

/*
 * Batched 3D copies (loop i: cuMemcpy3DBatchAsync as CUDA 12.8 finds it,
 * with a failIdx, or as 13.0 does), found through the shim's
 * cuGetProcAddress: every span page of a pointer operand's box, from its
 * first byte to its last (its rows rowLength bytes apart, its layers
 * layerHeight rows apart; 0: as tight as the copy), is backed first, on
 * either side, and no page past the box. A batch holding one copy the driver would refuse (a box
 * past a span's end) is refused whole, nothing of it backed, failIdx
 * naming that copy; no copies or no list at all get the driver's answer,
 * nothing backed; a copy with an array operand is left to the driver
 * (the emulation has no arrays), nothing backed for it.
 */
START_TEST(test_copy3d_batch_on_span)
{
	CUresult (*gpa)(const char *, void **, int, cuuint64_t,
			CUdriverProcAddressQueryResult *);
	CUresult (*create)(CUstream *, unsigned int);
	CUresult (*sync)(CUstream);
	CUresult (*destroy)(CUstream);
	CUresult (*dtoh)(void *, CUdeviceptr, size_t);
	const char *name = _i ? "cuMemcpy3DBatchAsync_v2" : "cuMemcpy3DBatchAsync";
	static const size_t at[] = { 2 * PG, 3 * PG, 5 * PG, 6 * PG };   /* p's rows */
	static unsigned char host[4 * 64], back[2 * 4096], row[64], tight[4 * 4096];
	CUdriverProcAddressQueryResult q;
	CUDA_MEMCPY3D_BATCH_OP ops[3];
	size_t before, fail, dfail, i;
	CUdeviceptr p, r;
	CUstream st = NULL;
	CUresult e;
	void *fn = NULL;

	open_lib();
	*(void **)&gpa = dlsym(lib, "cuGetProcAddress_v2");
	*(void **)&create = kv_dev_sym("cuStreamCreate");
	*(void **)&sync = kv_dev_sym("cuStreamSynchronize");
	*(void **)&destroy = kv_dev_sym("cuStreamDestroy_v2");
	*(void **)&dtoh = own("cuMemcpyDtoH_v2");
	ck_assert(gpa && create && sync && destroy && dtoh && DRV_BATCH3D(_i));
	ck_assert_int_eq(gpa("cuMemcpy3DBatchAsync", &fn, _i ? 13000 : 12080, 0, &q),
			 CUDA_SUCCESS);
	ck_assert_ptr_nonnull(fn);
	ck_assert_ptr_eq(fn, dlsym(lib, name));
	ck_assert_int_eq(create(&st, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
	for (i = 0; i < sizeof(host); i++)
		host[i] = (unsigned char)(i / 64 + 1);
	for (i = 0; i < sizeof(tight); i++)
		tight[i] = (unsigned char)(i / 4096 + 0x10);
	memset(back, 0xee, sizeof(back));
	p = span8();
	r = span8();
	before = mapped();
	/* host rows into p: 2 layers of 2 rows of 64 bytes, from byte 128
	 * of page 2, rows a page apart, layers 3 rows apart: rows on pages
	 * 2, 3, 5 and 6, and page 4 between them (the box's), not 1 or 7;
	 * out of r: 2 rows of 4096 bytes, from byte 4096 of page 4, 2 pages
	 * apart (pages 4 and 6, and 5), never written, to the host; host
	 * rows into r, as tight as the copy (2 layers of 2 rows of 4096
	 * bytes, 16 KiB) from 8 KiB before page 2: pages 1 and 2 */
	ops[0] = op3d(ptr_operand(p + 2 * PG + 128, PG, 3), ptr_operand(HOST(host), 0, 0),
		      64, 2, 2);
	ops[1] = op3d(ptr_operand(HOST(back), 0, 0), ptr_operand(r + 4 * PG + 4096, 2 * PG, 0),
		      4096, 2, 1);
	ops[2] = op3d(ptr_operand(r + 2 * PG - 8192, 0, 0), ptr_operand(HOST(tight), 0, 0),
		      4096, 2, 2);
	ck_assert_int_eq(batch3d(fn, !_i, ops, 3, st, &fail), CUDA_SUCCESS);
	ck_assert_int_eq(sync(st), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + 10 * PG);
	for (i = 0; i < 4; i++) {
		ck_assert_int_eq(dtoh(row, p + at[i] + 128, sizeof(row)), CUDA_SUCCESS);
		ck_assert_uint_eq(row[0], i + 1);
		ck_assert_uint_eq(row[63], i + 1);
	}
	ck_assert_int_eq(dtoh(row, p + 2 * PG + 192, sizeof(row)), CUDA_SUCCESS);
	ck_assert_uint_eq(row[0], 0);
	ck_assert_uint_eq(back[0], 0);
	ck_assert_uint_eq(back[sizeof(back) - 1], 0);
	ck_assert_int_eq(dtoh(row, r + 2 * PG - 8192, sizeof(row)), CUDA_SUCCESS);
	ck_assert_uint_eq(row[0], 0x10);
	ck_assert_int_eq(dtoh(row, r + 2 * PG + 8192 - sizeof(row), sizeof(row)),
			 CUDA_SUCCESS);
	ck_assert_uint_eq(row[63], 0x13);
	untouched(p);
	ck_assert(!was_backed(p + PG));
	ck_assert(!was_backed(p + 7 * PG));
	ck_assert(!was_backed(r + 3 * PG));
	ck_assert(!was_backed(r + 7 * PG));
	ck_assert_int_eq(release((void *)(uintptr_t)p), 0);
	ck_assert_int_eq(release((void *)(uintptr_t)r), 0);

	/* boxes ending at their spans' last byte, so that a box one byte
	 * longer runs past the end and is refused: into p as tight as the
	 * copy (16 KiB), into r rows 8 KiB apart and layers as tight as the
	 * copy (2 rows: 28 KiB); only each span's page 7 backed */
	p = span8();
	r = span8();
	before = mapped();
	ops[0] = op3d(ptr_operand(p + 8 * PG - 16384, 0, 0), ptr_operand(HOST(tight), 0, 0),
		      4096, 2, 2);
	ops[1] = op3d(ptr_operand(r + 8 * PG - 28672, 8192, 0), ptr_operand(HOST(tight), 0, 0),
		      4096, 2, 2);
	ck_assert_int_eq(batch3d(fn, !_i, ops, 2, st, &fail), CUDA_SUCCESS);
	ck_assert_int_eq(sync(st), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + 2 * PG);
	ck_assert_int_eq(dtoh(row, p + 8 * PG - sizeof(row), sizeof(row)), CUDA_SUCCESS);
	ck_assert_uint_eq(row[63], 0x13);
	ck_assert_int_eq(dtoh(row, r + 8 * PG - 28672, sizeof(row)), CUDA_SUCCESS);
	ck_assert_uint_eq(row[0], 0x10);
	ck_assert_int_eq(dtoh(row, r + 8 * PG - sizeof(row), sizeof(row)), CUDA_SUCCESS);
	ck_assert_uint_eq(row[63], 0x13);
	ck_assert_int_eq(release((void *)(uintptr_t)p), 0);
	ck_assert_int_eq(release((void *)(uintptr_t)r), 0);

	/* refused whole: copy 1's rows, a page apart from r's page 6, reach
	 * page 8, past r's end; copy 0 (into p's page 3, never backed) fits */
	p = span8();
	r = span8();
	before = mapped();
	ops[0] = op3d(ptr_operand(p + 3 * PG, 0, 0), ptr_operand(HOST(host), 0, 0), 64, 1, 1);
	ops[1] = op3d(ptr_operand(r + 6 * PG, PG, 0), ptr_operand(HOST(host), 0, 0), 64, 3, 1);
	DRIVER_REFUSES(batch3d(DRV_BATCH3D(_i), !_i, ops, 2, st, &fail));
	if (kv_dev_is_emu() && !_i)
		ck_assert_uint_eq(fail, 1);
	ck_assert_int_eq(batch3d(fn, !_i, ops, 2, st, &fail), CUDA_ERROR_INVALID_VALUE);
	if (!_i)
		ck_assert_uint_eq(fail, 1);
	ck_assert_uint_eq(mapped(), before);

	/* no copies, no list: passed on, the driver's answer (on the
	 * emulation, invalid value), nothing backed */
	e = batch3d(DRV_BATCH3D(_i), !_i, ops, 0, st, &dfail);
	ck_assert_int_eq(batch3d(fn, !_i, ops, 0, st, &fail), e);
	ck_assert_uint_eq(fail, dfail);
	if (kv_dev_is_emu())
		ck_assert_int_eq(e, CUDA_ERROR_INVALID_VALUE);
	e = batch3d(DRV_BATCH3D(_i), !_i, NULL, 1, st, &dfail);
	ck_assert_int_eq(batch3d(fn, !_i, NULL, 1, st, &fail), e);
	ck_assert_uint_eq(fail, dfail);
	if (kv_dev_is_emu())
		ck_assert_int_eq(e, CUDA_ERROR_INVALID_VALUE);
	ck_assert_uint_eq(mapped(), before);

	/* an array source (the emulation has none: not supported) into p's
	 * page 3: left to the driver, nothing backed */
	if (kv_dev_is_emu()) {
		ops[0].src.type = CU_MEMCPY_OPERAND_TYPE_ARRAY;
		ops[0].src.op.array.array = (CUarray)(uintptr_t)0x1000;
		ck_assert_int_eq(batch3d(fn, !_i, ops, 1, st, &fail), CUDA_ERROR_NOT_SUPPORTED);
		if (!_i)
			ck_assert_uint_eq(fail, 0);
		ck_assert_uint_eq(mapped(), before);
	}
	untouched(p);
	ck_assert_int_eq(destroy(st), CUDA_SUCCESS);
	ck_assert_int_eq(release((void *)(uintptr_t)p), 0);
	ck_assert_int_eq(release((void *)(uintptr_t)r), 0);
	exported(name);
	exported(_i ? "cuMemcpy3DBatchAsync_v2_ptsz" : "cuMemcpy3DBatchAsync_ptsz");
}
END_TEST

/* The same calls within the span still work: the range's pages are backed
 * and set. */
START_TEST(test_memset_in_span)
{
	unsigned int word = 0;
	CUresult (*dtoh)(void *, CUdeviceptr, size_t);
	CUdeviceptr p;
	size_t before;

	open_lib();
	*(void **)&dtoh = own("cuMemcpyDtoH_v2");
	ck_assert_ptr_nonnull(dtoh);
	p = span8();
	before = mapped();
	ck_assert_int_eq(shim.d32(p + 7 * PG, 0x01020304, PG / 4), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + PG);
	ck_assert_int_eq(dtoh(&word, p + 8 * PG - 4, 4), CUDA_SUCCESS);
	ck_assert_uint_eq(word, 0x01020304);
	ck_assert_int_eq(shim.d16a(p + 6 * PG, 0x0102, PG / 2, NULL), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + 2 * PG);
	/* zero over the rest: nothing new backed */
	ck_assert_int_eq(shim.d8(p, 0, 8 * PG), CUDA_SUCCESS);
	ck_assert_uint_eq(mapped(), before + 2 * PG);
	ck_assert_int_eq(release((void *)(uintptr_t)p), 0);
}
END_TEST

/*
 * cuMemFreeAsync of a span kvshim made for a cuMemAlloc releases it, as
 * cuMemFree does: handed to the driver, which knows no allocation there,
 * it would be refused and the span (its address range and pages) left
 * behind. A pointer of the driver's own, and a span already released, go
 * to the driver. The function is found as engines find it, through
 * cuGetProcAddress; loop 1 as a program built for per-thread default
 * streams asks for it (cuMemFreeAsync_ptsz).
 */
START_TEST(test_free_async_releases_a_span)
{
	CUresult (*gpa)(const char *, void **, int, cuuint64_t,
			CUdriverProcAddressQueryResult *);
	CUresult (*alloc)(CUdeviceptr *, size_t);
	CUresult (*free_async)(CUdeviceptr, CUstream) = NULL;
	int (*kv_begin)(void), (*kv_end)(void);
	const char *name = _i ? "cuMemFreeAsync_ptsz" : "cuMemFreeAsync";
	struct timespec ms = { 0, 1000 * 1000 };
	CUdriverProcAddressQueryResult q;
	struct kvshim_stats s0, s;
	struct kvemu_usage u0, u;
	CUdeviceptr p = 0, plain = 0;
	int i;

	open_lib();
	*(void **)&gpa = dlsym(lib, "cuGetProcAddress_v2");
	*(void **)&alloc = dlsym(lib, "cuMemAlloc_v2");
	*(void **)&kv_begin = dlsym(lib, "kvshim_kv_begin");
	*(void **)&kv_end = dlsym(lib, "kvshim_kv_end");
	ck_assert(gpa && alloc && kv_begin && kv_end);
	ck_assert_int_eq(gpa("cuMemFreeAsync", (void **)&free_async, 13000,
			     _i ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM : 0, &q),
			 CUDA_SUCCESS);
	ck_assert_ptr_nonnull(free_async);
	ck_assert_int_eq(stats(&s0), 0);
	kv_dev_usage(&u0);

	/* a span made for a cuMemAlloc in a window, then backed whole */
	ck_assert_int_eq(kv_begin(), 0);
	ck_assert_int_eq(alloc(&p, 16 * PG), CUDA_SUCCESS);
	ck_assert_int_eq(kv_end(), 0);
	ck_assert_int_eq(map((void *)(uintptr_t)p, 16 * PG), 0);
	ck_assert_int_eq(stats(&s), 0);
	ck_assert_uint_eq(s.reserved_bytes, s0.reserved_bytes + 16 * PG);
	ck_assert_uint_eq(s.mapped_bytes, s0.mapped_bytes + 16 * PG);
	kv_dev_reset_counts();
	ck_assert_int_eq(free_async(p, NULL), CUDA_SUCCESS);
	ck_assert_uint_eq(kv_dev_calls(name), 0);
	ck_assert_int_eq(stats(&s), 0);
	ck_assert_uint_eq(s.reserved_bytes, s0.reserved_bytes);
	/* its pages leave it for the pool (the worker unmaps them), its
	 * address range goes back to the driver (at most as before: without
	 * a fork per test, an earlier test's may go back meanwhile too) */
	for (i = 0; i < 10000; i++) {
		ck_assert_int_eq(stats(&s), 0);
		kv_dev_usage(&u);
		if (s.mapped_bytes <= s0.mapped_bytes && u.reservations <= u0.reservations)
			break;
		nanosleep(&ms, NULL);
	}
	ck_assert_uint_le(s.mapped_bytes, s0.mapped_bytes);
	ck_assert_uint_le(u.reservations, u0.reservations);

	/* the driver's own allocation is the driver's to free */
	ck_assert_int_eq(alloc(&plain, PG), CUDA_SUCCESS);
	kv_dev_usage(&u);
	ck_assert_uint_eq(u.allocs, u0.allocs + 1);
	ck_assert_int_eq(free_async(plain, NULL), CUDA_SUCCESS);
	ck_assert_uint_eq(kv_dev_calls(name), 1);
	kv_dev_usage(&u);
	ck_assert_uint_eq(u.allocs, u0.allocs);
	/* the span is gone: freed again, the driver refuses it */
	ck_assert_int_eq(free_async(p, NULL), CUDA_ERROR_INVALID_VALUE);
	ck_assert_uint_eq(kv_dev_calls(name), 2);
	ck_assert_int_eq(stats(&s), 0);
	ck_assert_uint_eq(s.reserved_bytes, s0.reserved_bytes);

	/* on a stream whose capture state cannot be read (no such stream),
	 * the call is the driver's, which refuses it, and the span stays */
	ck_assert_int_eq(kv_begin(), 0);
	ck_assert_int_eq(alloc(&p, 16 * PG), CUDA_SUCCESS);
	ck_assert_int_eq(kv_end(), 0);
	ck_assert_int_eq(free_async(p, (CUstream)(uintptr_t)0xdead0), CUDA_ERROR_INVALID_HANDLE);
	ck_assert_uint_eq(kv_dev_calls(name), 3);
	ck_assert_int_eq(stats(&s), 0);
	ck_assert_uint_eq(s.reserved_bytes, s0.reserved_bytes + 16 * PG);
	ck_assert_int_eq(free_async(p, NULL), CUDA_SUCCESS);
	ck_assert_int_eq(stats(&s), 0);
	ck_assert_uint_eq(s.reserved_bytes, s0.reserved_bytes);
}
END_TEST

Suite *hooks_suite(void)
{
	Suite *s = suite_create("hooks");
	TCase *tc = tcase_create("memset");
	TCase *fa = tcase_create("free-async");
	size_t i;

	/* the driver's own functions, looked up before any test loads kvshim
	 * (once loaded late, it hands out its wrappers through dlsym) */
	find_sets(&drv, kv_dev_sym);
	for (i = 0; i < sizeof(copy2d_names) / sizeof(copy2d_names[0]); i++)
		keep(copy2d_names[i][1]);
	for (i = 0; i < sizeof(copy3d_names) / sizeof(copy3d_names[0]); i++)
		keep(copy3d_names[i][1]);
	keep("cuMemcpy3DBatchAsync");
	keep("cuMemcpy3DBatchAsync_v2");
	keep("cuMemcpyDtoH_v2");
	tcase_add_test(tc, test_memset_count_overflow);
	tcase_add_test(tc, test_memset_past_span_end);
	tcase_add_test(tc, test_memset_misaligned);
	tcase_add_test(tc, test_memset_in_span);
	tcase_add_test(tc, test_copy_past_span_end);
	tcase_add_test(tc, test_memset2d_on_span);
	tcase_add_loop_test(tc, test_copy2d_on_span, 0, 3);
	tcase_add_loop_test(tc, test_copy3d_on_span, 0, 4);
	tcase_add_loop_test(tc, test_copy3d_two_spans, 0, 4);
	tcase_add_loop_test(tc, test_copy_peer_on_span, 0, 2);
	tcase_add_loop_test(tc, test_copy_batch_on_span, 0, 2);
	tcase_add_loop_test(tc, test_copy3d_batch_on_span, 0, 2);
	suite_add_tcase(s, tc);
	kt_add_emu_loop(fa, test_free_async_releases_a_span, 0, 2);
	suite_add_tcase(s, fa);
	return s;
}
