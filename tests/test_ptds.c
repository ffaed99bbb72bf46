/*
 * test_ptds.c - the per-thread default stream forms of the copies and
 * memsets kvshim hooks (the _ptds and _ptsz names of hooks.h), one table
 * row each, reached as an engine built with --default-stream per-thread
 * reaches them: a driver form through the shim's cuGetProcAddress asked for
 * per-thread default streams, a runtime form by its name among the shim's
 * exports (what a preloaded shim binds an import to). Each does its work
 * into or out of span pages nothing backs yet, and must succeed, move the
 * right bytes, back exactly the span pages it touches (the emulation faults,
 * 700, on a page left unbacked), and reach the driver's per-thread form,
 * never the plain one (a hook wired to its plain real function, or with
 * its arguments shifted, fails here). A name hooks.h lists that the table
 * lacks fails the table's own test.
 *
 * On a GPU the driver forms' rows run too, with what a real driver can
 * show: success, the bytes, and how many of the span's pages kvshim backed
 * (its stats; which ones, and which function the call reached, only the
 * emulation tells). The runtime forms' rows need the emulation's runtime.
 *
 * Beside the table: a zero memset while the per-thread stream captures
 * (test_zero_memset_captured; the runtime's, test_rt_zero_memset_captured,
 * on the emulation only), and the streams each batched copy form may go on
 * (test_batch_streams); the driver's run on a GPU too.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "hooks.h"
#include "suites.h"

/* What a row does (see the op_* functions). */
enum shape {
	SET1D,          /* cuMemsetD8/16/32 */
	SET2D,          /* cuMemsetD2D8/16/32 */
	COPY,           /* the linear copies; arg: the device sides */
	COPY2D,         /* cuMemcpy2D, cuMemcpy2DUnaligned */
	COPY3D,         /* cuMemcpy3D */
	COPY3D_PEER,    /* cuMemcpy3DPeer, in the current context */
	PEER,           /* cuMemcpyPeer, in the current context */
	BATCH,          /* cuMemcpyBatchAsync; arg: 12 for CUDA 12.8's form */
	BATCH3D,        /* cuMemcpy3DBatchAsync; arg: 12 for CUDA 12.8's form */
	RT_SET1D,       /* cudaMemset */
	RT_SET2D,       /* cudaMemset2D */
	RT_SET3D,       /* cudaMemset3D */
	RT_COPY,        /* cudaMemcpy, device to device */
	RT_COPY2D,      /* cudaMemcpy2D */
	RT_COPY3D,      /* cudaMemcpy3D */
};

#define DST 1           /* COPY: the destination is device memory */
#define SRC 2           /* and the source */

struct row {
	const char *name;       /* the per-thread form, as hooks.h names it */
	const char *base;       /* a driver form: the name cuGetProcAddress is
				 * asked for; NULL for a runtime form */
	int version;            /* the CUDA version it is asked for */
	enum shape shape;
	int arg;                /* memsets: bytes per element; COPY: sides */
	int async;              /* takes a stream (NULL: the per-thread one;
				 * named in 13.0's batches, which refuse
				 * NULL: test_batch_streams) */
	const char *real;       /* the driver's per-thread form the call must
				 * reach: the row's own for a driver form */
};

static const struct row rows[] = {
	{ "cuMemsetD8_v2_ptds", "cuMemsetD8", 13000, SET1D, 1, 0, NULL },
	{ "cuMemsetD16_v2_ptds", "cuMemsetD16", 13000, SET1D, 2, 0, NULL },
	{ "cuMemsetD32_v2_ptds", "cuMemsetD32", 13000, SET1D, 4, 0, NULL },
	{ "cuMemsetD8Async_ptsz", "cuMemsetD8Async", 13000, SET1D, 1, 1, NULL },
	{ "cuMemsetD16Async_ptsz", "cuMemsetD16Async", 13000, SET1D, 2, 1, NULL },
	{ "cuMemsetD32Async_ptsz", "cuMemsetD32Async", 13000, SET1D, 4, 1, NULL },
	{ "cuMemsetD2D8_v2_ptds", "cuMemsetD2D8", 13000, SET2D, 1, 0, NULL },
	{ "cuMemsetD2D16_v2_ptds", "cuMemsetD2D16", 13000, SET2D, 2, 0, NULL },
	{ "cuMemsetD2D32_v2_ptds", "cuMemsetD2D32", 13000, SET2D, 4, 0, NULL },
	{ "cuMemsetD2D8Async_ptsz", "cuMemsetD2D8Async", 13000, SET2D, 1, 1, NULL },
	{ "cuMemsetD2D16Async_ptsz", "cuMemsetD2D16Async", 13000, SET2D, 2, 1, NULL },
	{ "cuMemsetD2D32Async_ptsz", "cuMemsetD2D32Async", 13000, SET2D, 4, 1, NULL },
	{ "cuMemcpy_ptds", "cuMemcpy", 13000, COPY, DST | SRC, 0, NULL },
	{ "cuMemcpyAsync_ptsz", "cuMemcpyAsync", 13000, COPY, DST | SRC, 1, NULL },
	{ "cuMemcpyHtoD_v2_ptds", "cuMemcpyHtoD", 13000, COPY, DST, 0, NULL },
	{ "cuMemcpyDtoH_v2_ptds", "cuMemcpyDtoH", 13000, COPY, SRC, 0, NULL },
	{ "cuMemcpyDtoD_v2_ptds", "cuMemcpyDtoD", 13000, COPY, DST | SRC, 0, NULL },
	{ "cuMemcpyHtoDAsync_v2_ptsz", "cuMemcpyHtoDAsync", 13000, COPY, DST, 1, NULL },
	{ "cuMemcpyDtoHAsync_v2_ptsz", "cuMemcpyDtoHAsync", 13000, COPY, SRC, 1, NULL },
	{ "cuMemcpyDtoDAsync_v2_ptsz", "cuMemcpyDtoDAsync", 13000, COPY, DST | SRC, 1, NULL },
	{ "cuMemcpy2D_v2_ptds", "cuMemcpy2D", 13000, COPY2D, 0, 0, NULL },
	{ "cuMemcpy2DUnaligned_v2_ptds", "cuMemcpy2DUnaligned", 13000, COPY2D, 0, 0, NULL },
	{ "cuMemcpy2DAsync_v2_ptsz", "cuMemcpy2DAsync", 13000, COPY2D, 0, 1, NULL },
	{ "cuMemcpy3D_v2_ptds", "cuMemcpy3D", 13000, COPY3D, 0, 0, NULL },
	{ "cuMemcpy3DAsync_v2_ptsz", "cuMemcpy3DAsync", 13000, COPY3D, 0, 1, NULL },
	{ "cuMemcpyPeer_ptds", "cuMemcpyPeer", 13000, PEER, 0, 0, NULL },
	{ "cuMemcpyPeerAsync_ptsz", "cuMemcpyPeerAsync", 13000, PEER, 0, 1, NULL },
	{ "cuMemcpy3DPeer_ptds", "cuMemcpy3DPeer", 13000, COPY3D_PEER, 0, 0, NULL },
	{ "cuMemcpy3DPeerAsync_ptsz", "cuMemcpy3DPeerAsync", 13000, COPY3D_PEER, 0, 1, NULL },
	{ "cuMemcpyBatchAsync_ptsz", "cuMemcpyBatchAsync", 12080, BATCH, 12, 1, NULL },
	{ "cuMemcpyBatchAsync_v2_ptsz", "cuMemcpyBatchAsync", 13000, BATCH, 13, 1, NULL },
	{ "cuMemcpy3DBatchAsync_ptsz", "cuMemcpy3DBatchAsync", 12080, BATCH3D, 12, 1, NULL },
	{ "cuMemcpy3DBatchAsync_v2_ptsz", "cuMemcpy3DBatchAsync", 13000, BATCH3D, 13, 1, NULL },
	{ "cudaMemset_ptds", NULL, 0, RT_SET1D, 1, 0, "cuMemsetD8_v2_ptds" },
	{ "cudaMemsetAsync_ptsz", NULL, 0, RT_SET1D, 1, 1, "cuMemsetD8Async_ptsz" },
	{ "cudaMemset2D_ptds", NULL, 0, RT_SET2D, 1, 0, "cuMemsetD2D8_v2_ptds" },
	{ "cudaMemset2DAsync_ptsz", NULL, 0, RT_SET2D, 1, 1, "cuMemsetD2D8Async_ptsz" },
	{ "cudaMemset3D_ptds", NULL, 0, RT_SET3D, 1, 0, "cuMemsetD2D8_v2_ptds" },
	{ "cudaMemset3DAsync_ptsz", NULL, 0, RT_SET3D, 1, 1, "cuMemsetD2D8Async_ptsz" },
	{ "cudaMemcpy_ptds", NULL, 0, RT_COPY, 0, 0, "cuMemcpyDtoD_v2_ptds" },
	{ "cudaMemcpyAsync_ptsz", NULL, 0, RT_COPY, 0, 1, "cuMemcpyDtoDAsync_v2_ptsz" },
	{ "cudaMemcpy2D_ptds", NULL, 0, RT_COPY2D, 0, 0, "cuMemcpy2D_v2_ptds" },
	{ "cudaMemcpy2DAsync_ptsz", NULL, 0, RT_COPY2D, 0, 1, "cuMemcpy2DAsync_v2_ptsz" },
	{ "cudaMemcpy3D_ptds", NULL, 0, RT_COPY3D, 0, 0, "cuMemcpy3D_v2_ptds" },
	{ "cudaMemcpy3DAsync_ptsz", NULL, 0, RT_COPY3D, 0, 1, "cuMemcpy3DAsync_v2_ptsz" },
};

#define NROWS ((int)(sizeof(rows) / sizeof(rows[0])))

/* Every function kvshim hooks, by name. */
#define KV_HOOK_NAME(name, ret, args) #name,
static const char *const hooked[] = {
	KV_DRIVER_HOOKS(KV_HOOK_NAME)
	KV_RUNTIME_HOOKS(KV_HOOK_NAME)
};
#undef KV_HOOK_NAME

static void *lib;
static int (*reserve)(size_t, void **);
static int (*release)(void *);
static int (*map)(const void *, size_t);
static int (*stats)(struct kvshim_stats *);
/* the driver's own, found before any test loads kvshim (loaded late, it
 * hands out its wrappers through dlsym) */
static CUresult (*dtoh)(void *, CUdeviceptr, size_t);
static CUresult (*ctx_current)(CUcontext *);
static CUresult (*ctx_sync)(void);
static CUresult (*instantiate)(CUgraphExec *, CUgraph, unsigned long long);
static CUresult (*launch)(CUgraphExec, CUstream);
static CUresult (*stream_sync)(CUstream);
static CUresult (*graph_destroy)(CUgraph);
static CUresult (*exec_destroy)(CUgraphExec);
static CUresult (*driver_gpa)(const char *, void **, int, cuuint64_t,
			      CUdriverProcAddressQueryResult *);

/* The row under test and what it must reach. */
static const struct row *row;
static const char *real_name;
static char plain_name[64];

/* Whether name is a per-thread form (_ptds, _ptsz) of a copy or memset. */
static int copy_or_set_per_thread(const char *name)
{
	size_t n = strlen(name);

	if (n < 5 || (strcmp(name + n - 5, "_ptds") && strcmp(name + n - 5, "_ptsz")))
		return 0;
	return !strncmp(name, "cuMemcpy", 8) || !strncmp(name, "cuMemset", 8) ||
	       !strncmp(name, "cudaMemcpy", 10) || !strncmp(name, "cudaMemset", 10);
}

/* The span of 8 pages a row works on: page 0 backed and holding seed 5's
 * pattern, the others unbacked. */
static CUdeviceptr span8(void)
{
	return kt_span8(reserve, map);
}

/* The bytes kvshim has mapped into spans; before the row's span. */
static size_t mapped(void)
{
	struct kvshim_stats st;

	ck_assert_int_eq(stats(&st), 0);
	return st.mapped_bytes;
}

static size_t mapped0;

/* The number of bits set in mask. */
static unsigned bits(unsigned mask)
{
	unsigned n = 0;

	for (; mask; mask &= mask - 1)
		n++;
	return n;
}

/* The pages of span p backed now: bit i for page i. */
static unsigned backed(CUdeviceptr p)
{
	unsigned mask = 0, i;

	for (i = 0; i < 8; i++)
		if (kv_dev_ordinal(p + i * PG) >= 0)
			mask |= 1u << i;
	return mask;
}

/* Before a step of the row: the driver's call counts from zero. */
static void start(void)
{
	kv_dev_reset_counts();
}

/*
 * Right after a step of the row (before the test reads anything back: its
 * own reads use plain forms): it returned success, reached the per-thread
 * form calls times and the plain form never, and span p has exactly the
 * pages of mask backed. kvshim calls cuMemsetD8Async itself, to scrub the
 * pages it backs on its own stream (on the caller's thread, or on its
 * worker's at any time): where that is the plain form, its count cannot
 * tell the row's call from kvshim's own, and the per-thread form's count
 * alone shows which the row reached.
 */
static void done(int rc, unsigned long long calls, CUdeviceptr p, unsigned mask)
{
	unsigned long long real_calls = kv_dev_calls(real_name);
	unsigned long long plain_calls = kv_dev_calls(plain_name);

	ck_assert_msg(rc == 0, "%s: returned %d", row->name, rc);
	ck_assert_msg(mapped() - mapped0 == bits(mask) * PG, "%s: %zu pages backed, not %u",
		      row->name, (mapped() - mapped0) / PG, bits(mask));
	if (!kv_dev_is_emu())
		return;
	ck_assert_msg(real_calls == calls, "%s: %s called %llu times, not %llu", row->name,
		      real_name, real_calls, calls);
	if (strcmp(plain_name, "cuMemsetD8Async"))
		ck_assert_msg(plain_calls == 0, "%s: reached %s, the legacy stream's form",
			      row->name, plain_name);
	ck_assert_msg(backed(p) == mask, "%s: pages backed %#x, not %#x", row->name,
		      backed(p), mask);
}

/* n bytes at d read back. */
static void read_back(void *h, CUdeviceptr d, size_t n)
{
	ck_assert_int_eq(dtoh(h, d, n), CUDA_SUCCESS);
}

/* [d, d + n) holds seed 5's pattern (page 0's, copied). */
static void holds_page0(CUdeviceptr d, size_t n)
{
	unsigned long long bad = 1;

	ck_assert_int_eq(kv_dev_check(d, n, 5, &bad), CUDA_SUCCESS);
	ck_assert_msg(bad == 0, "%s: %llu words are not page 0's", row->name, bad);
}

/* [d, d + n) holds zeros. */
static void zeros(CUdeviceptr d, size_t n)
{
	size_t nz = 1;

	ck_assert_int_eq(kv_dev_nonzero(d, n, &nz), CUDA_SUCCESS);
	ck_assert_msg(nz == 0, "%s: %zu bytes are not zero", row->name, nz);
}

/* The host buffer h of n bytes holds byte v throughout. */
static void host_is(const unsigned char *h, size_t n, unsigned char v)
{
	size_t i;

	for (i = 0; i < n; i++)
		ck_assert_msg(h[i] == v, "%s: host byte %zu is %#x, not %#x", row->name, i, h[i], v);
}

/* The memsets' value, w bytes wide, and its byte i (little endian). */
static const unsigned values[] = { 0, 0x5a, 0x5a5b, 0, 0x5a5b5c5d };

static unsigned char value_byte(int w, size_t i)
{
	return (unsigned char)(values[w] >> (8 * (i % (size_t)w)));
}

/* The 8 bytes around d (4 before, 4 from it): zeros before when
 * set_before is 0, else the value; from it alike with set_after. */
static void edge(CUdeviceptr d, int w, int set_before, int set_after)
{
	unsigned char h[8];
	size_t i;

	read_back(h, d - 4, sizeof(h));
	for (i = 0; i < 8; i++) {
		int set = i < 4 ? set_before : set_after;
		unsigned char want = set ? value_byte(w, i) : 0;

		ck_assert_msg(h[i] == want, "%s: byte %d around %#llx is %#x, not %#x", row->name,
			      (int)i - 4, (unsigned long long)d, h[i], want);
	}
}

/* The host pattern copies carry into the span. */
static unsigned char pattern[4096];

/* ---- the driver's forms ---------------------------------------------------------- */

typedef CUresult (*set8_fn)(CUdeviceptr, unsigned char, size_t);
typedef CUresult (*set16_fn)(CUdeviceptr, unsigned short, size_t);
typedef CUresult (*set32_fn)(CUdeviceptr, unsigned int, size_t);
typedef CUresult (*set8a_fn)(CUdeviceptr, unsigned char, size_t, CUstream);
typedef CUresult (*set16a_fn)(CUdeviceptr, unsigned short, size_t, CUstream);
typedef CUresult (*set32a_fn)(CUdeviceptr, unsigned int, size_t, CUstream);

/* A memset of n elements of the row's width from d to v, through fn. */
static CUresult set1d_to(void *fn, CUdeviceptr d, size_t n, unsigned v)
{
	switch (row->arg + 8 * row->async) {
	case 1: return ((set8_fn)fn)(d, (unsigned char)v, n);
	case 2: return ((set16_fn)fn)(d, (unsigned short)v, n);
	case 4: return ((set32_fn)fn)(d, v, n);
	case 9: return ((set8a_fn)fn)(d, (unsigned char)v, n, NULL);
	case 10: return ((set16a_fn)fn)(d, (unsigned short)v, n, NULL);
	default: return ((set32a_fn)fn)(d, v, n, NULL);
	}
}

/* The same to the row's value. */
static CUresult set1d(void *fn, CUdeviceptr d, size_t n)
{
	return set1d_to(fn, d, n, values[row->arg]);
}

/* One page's worth of elements from 64 bytes into page 2: pages 2 and 3. */
static void op_set1d(void *fn, CUdeviceptr p)
{
	int w = row->arg;
	CUdeviceptr d = p + 2 * PG + 64;

	start();
	done(set1d(fn, d, PG / w), 1, p, 0x0d);
	edge(d, w, 0, 1);
	edge(d + PG, w, 1, 0);
}

typedef CUresult (*set2d8_fn)(CUdeviceptr, size_t, unsigned char, size_t, size_t);
typedef CUresult (*set2d16_fn)(CUdeviceptr, size_t, unsigned short, size_t, size_t);
typedef CUresult (*set2d32_fn)(CUdeviceptr, size_t, unsigned int, size_t, size_t);
typedef CUresult (*set2d8a_fn)(CUdeviceptr, size_t, unsigned char, size_t, size_t, CUstream);
typedef CUresult (*set2d16a_fn)(CUdeviceptr, size_t, unsigned short, size_t, size_t, CUstream);
typedef CUresult (*set2d32a_fn)(CUdeviceptr, size_t, unsigned int, size_t, size_t, CUstream);

/* A 2D memset of h rows of w elements, pitch bytes apart, from d. */
static CUresult set2d(void *fn, CUdeviceptr d, size_t pitch, size_t w, size_t h)
{
	switch (row->arg + 8 * row->async) {
	case 1: return ((set2d8_fn)fn)(d, pitch, (unsigned char)values[1], w, h);
	case 2: return ((set2d16_fn)fn)(d, pitch, (unsigned short)values[2], w, h);
	case 4: return ((set2d32_fn)fn)(d, pitch, values[4], w, h);
	case 9: return ((set2d8a_fn)fn)(d, pitch, (unsigned char)values[1], w, h, NULL);
	case 10: return ((set2d16a_fn)fn)(d, pitch, (unsigned short)values[2], w, h, NULL);
	default: return ((set2d32a_fn)fn)(d, pitch, values[4], w, h, NULL);
	}
}

/* Two rows of 64 elements at the start of pages 2 and 4: page 3, which
 * the rows skip, is backed too (and left zero). */
static void op_set2d(void *fn, CUdeviceptr p)
{
	int w = row->arg;

	start();
	done(set2d(fn, p + 2 * PG, 2 * PG, 64, 2), 1, p, 0x1d);
	edge(p + 4 * PG + 4, w, 1, 1);
	edge(p + 4 * PG + 64 * (size_t)w, w, 1, 0);
	zeros(p + 3 * PG, 64);
}

typedef CUresult (*copy_fn)(CUdeviceptr, CUdeviceptr, size_t);
typedef CUresult (*copya_fn)(CUdeviceptr, CUdeviceptr, size_t, CUstream);

/* A linear copy of n bytes (a host side's pointer as a CUdeviceptr). */
static CUresult copy(void *fn, CUdeviceptr d, CUdeviceptr s, size_t n)
{
	return row->async ? ((copya_fn)fn)(d, s, n, NULL) : ((copy_fn)fn)(d, s, n);
}

static CUdeviceptr hp(const void *h)
{
	return (CUdeviceptr)(uintptr_t)h;
}

/*
 * Into the span: 4 KiB across the end of page 2, from the host or from
 * page 0. Device to device: then from the end of page 4 (never written:
 * zeros) over what was just copied, so that both sides must be backed.
 * Out of the span: 4 KiB across the end of page 4 (zeros).
 */
static void op_copy(void *fn, CUdeviceptr p)
{
	static unsigned char host[4096];
	CUdeviceptr to = p + 3 * PG - 2048, from = p + 5 * PG - 2048;

	switch (row->arg) {
	case DST:
		start();
		done(copy(fn, to, hp(pattern), sizeof(pattern)), 1, p, 0x0d);
		read_back(host, to, sizeof(host));
		ck_assert_msg(!memcmp(host, pattern, sizeof(host)), "%s: wrong bytes", row->name);
		break;
	case SRC:
		memset(host, 0xee, sizeof(host));
		start();
		done(copy(fn, hp(host), from, sizeof(host)), 1, p, 0x31);
		host_is(host, sizeof(host), 0);
		break;
	default:
		start();
		done(copy(fn, to, p, 4096), 1, p, 0x0d);
		holds_page0(to, 4096);
		start();
		done(copy(fn, to, from, 4096), 1, p, 0x3d);
		zeros(to, 4096);
		break;
	}
}

typedef CUresult (*peer_fn)(CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t);
typedef CUresult (*peera_fn)(CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t, CUstream);

/* A peer copy in the current context. */
static CUresult peer(void *fn, CUdeviceptr d, CUdeviceptr s, size_t n)
{
	CUcontext c = NULL;

	ck_assert_int_eq(ctx_current(&c), CUDA_SUCCESS);
	ck_assert_ptr_nonnull(c);
	return row->async ? ((peera_fn)fn)(d, c, s, c, n, NULL) : ((peer_fn)fn)(d, c, s, c, n);
}

/* As op_copy's device to device copies. */
static void op_peer(void *fn, CUdeviceptr p)
{
	CUdeviceptr to = p + 3 * PG - 2048, from = p + 5 * PG - 2048;

	start();
	done(peer(fn, to, p, 4096), 1, p, 0x0d);
	holds_page0(to, 4096);
	start();
	done(peer(fn, to, from, 4096), 1, p, 0x3d);
	zeros(to, 4096);
}

typedef CUresult (*c2d_fn)(const CUDA_MEMCPY2D *);
typedef CUresult (*c2da_fn)(const CUDA_MEMCPY2D *, CUstream);

/*
 * Two rows of 64 bytes from the host into the start of pages 2 and 4
 * (page 3 between them backed too); then a row out of page 6 (zeros).
 */
static void op_copy2d(void *fn, CUdeviceptr p)
{
	static unsigned char host[64];
	CUDA_MEMCPY2D c;

	memset(&c, 0, sizeof(c));
	c.dstMemoryType = CU_MEMORYTYPE_DEVICE;
	c.dstDevice = p + 2 * PG;
	c.dstPitch = 2 * PG;
	c.srcMemoryType = CU_MEMORYTYPE_HOST;
	c.srcHost = pattern;
	c.srcPitch = 64;
	c.WidthInBytes = 64;
	c.Height = 2;
	start();
	done(row->async ? ((c2da_fn)fn)(&c, NULL) : ((c2d_fn)fn)(&c), 1, p, 0x1d);
	read_back(host, p + 4 * PG, sizeof(host));
	ck_assert_msg(!memcmp(host, pattern + 64, sizeof(host)), "%s: wrong bytes", row->name);
	zeros(p + 3 * PG, 64);

	memset(&c, 0, sizeof(c));
	c.srcMemoryType = CU_MEMORYTYPE_DEVICE;
	c.srcDevice = p + 6 * PG;
	c.srcPitch = 64;
	c.dstMemoryType = CU_MEMORYTYPE_HOST;
	c.dstHost = host;
	c.dstPitch = 64;
	c.WidthInBytes = 64;
	c.Height = 1;
	memset(host, 0xee, sizeof(host));
	start();
	done(row->async ? ((c2da_fn)fn)(&c, NULL) : ((c2d_fn)fn)(&c), 1, p, 0x5d);
	host_is(host, sizeof(host), 0);
}

typedef CUresult (*c3d_fn)(const CUDA_MEMCPY3D *);
typedef CUresult (*c3da_fn)(const CUDA_MEMCPY3D *, CUstream);
typedef CUresult (*c3dp_fn)(const CUDA_MEMCPY3D_PEER *);
typedef CUresult (*c3dpa_fn)(const CUDA_MEMCPY3D_PEER *, CUstream);

/* A 3D copy through fn, as a peer copy in the current context for
 * COPY3D_PEER. */
static CUresult copy3d(void *fn, const CUDA_MEMCPY3D *c)
{
	CUDA_MEMCPY3D_PEER q;
	CUcontext ctx = NULL;

	if (row->shape == COPY3D)
		return row->async ? ((c3da_fn)fn)(c, NULL) : ((c3d_fn)fn)(c);
	ck_assert_int_eq(ctx_current(&ctx), CUDA_SUCCESS);
	q = kv_dev_peer3d(c, ctx);
	return row->async ? ((c3dpa_fn)fn)(&q, NULL) : ((c3dp_fn)fn)(&q);
}

/*
 * Two slices of a row of 64 bytes from the host into the start of pages 2
 * and 4 (slices two rows of a page apart: page 3 backed too); then a row
 * out of page 6 (zeros).
 */
static void op_copy3d(void *fn, CUdeviceptr p)
{
	static unsigned char host[64];
	CUDA_MEMCPY3D c;

	memset(&c, 0, sizeof(c));
	c.dstMemoryType = CU_MEMORYTYPE_DEVICE;
	c.dstDevice = p + 2 * PG;
	c.dstPitch = PG;
	c.dstHeight = 2;
	c.srcMemoryType = CU_MEMORYTYPE_HOST;
	c.srcHost = pattern;
	c.srcPitch = 64;
	c.srcHeight = 1;
	c.WidthInBytes = 64;
	c.Height = 1;
	c.Depth = 2;
	start();
	done(copy3d(fn, &c), 1, p, 0x1d);
	read_back(host, p + 4 * PG, sizeof(host));
	ck_assert_msg(!memcmp(host, pattern + 64, sizeof(host)), "%s: wrong bytes", row->name);
	zeros(p + 3 * PG, 64);

	memset(&c, 0, sizeof(c));
	c.srcMemoryType = CU_MEMORYTYPE_DEVICE;
	c.srcDevice = p + 6 * PG;
	c.dstMemoryType = CU_MEMORYTYPE_HOST;
	c.dstHost = host;
	c.WidthInBytes = 64;
	c.Height = 1;
	c.Depth = 1;
	memset(host, 0xee, sizeof(host));
	start();
	done(copy3d(fn, &c), 1, p, 0x5d);
	host_is(host, sizeof(host), 0);
}

typedef CUresult (*batch12_fn)(CUdeviceptr *, CUdeviceptr *, size_t *, size_t,
			       CUmemcpyAttributes *, size_t *, size_t, size_t *, CUstream);
typedef CUresult (*batch13_fn)(CUdeviceptr *, CUdeviceptr *, size_t *, size_t,
			       CUmemcpyAttributes *, size_t *, size_t, CUstream);

/*
 * One batch: page 0 into 4 KiB across the end of page 2, the host into
 * page 5, and page 6 (zeros) out to the host.
 */
static void op_batch(void *fn, CUdeviceptr p)
{
	static unsigned char host[4096];
	CUdeviceptr d[3] = { p + 3 * PG - 2048, p + 5 * PG, hp(host) };
	CUdeviceptr s[3] = { p, hp(pattern), p + 6 * PG };
	size_t z[3] = { 4096, sizeof(pattern), sizeof(host) };
	CUmemcpyAttributes attr;
	size_t idx = 0, fail = 7;
	CUresult r;

	memset(&attr, 0, sizeof(attr));
	attr.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
	memset(host, 0xee, sizeof(host));
	start();
	if (row->arg == 12)
		r = ((batch12_fn)fn)(d, s, z, 3, &attr, &idx, 1, &fail, NULL);
	else
		r = ((batch13_fn)fn)(d, s, z, 3, &attr, &idx, 1, CU_STREAM_PER_THREAD);
	done(r, 1, p, 0x6d);
	/* (the emulation's: a driver need not touch failIdx when all went well) */
	if (row->arg == 12 && kv_dev_is_emu())
		ck_assert_uint_eq(fail, SIZE_MAX);
	/* a batch is asynchronous, its host side pageable: done when all is */
	ck_assert_int_eq(ctx_sync(), CUDA_SUCCESS);
	host_is(host, sizeof(host), 0);
	holds_page0(d[0], 4096);
	read_back(host, d[1], sizeof(host));
	ck_assert_msg(!memcmp(host, pattern, sizeof(host)), "%s: wrong bytes", row->name);
}

typedef CUresult (*batch3d12_fn)(size_t, CUDA_MEMCPY3D_BATCH_OP *, size_t *,
				 unsigned long long, CUstream);
typedef CUresult (*batch3d13_fn)(size_t, CUDA_MEMCPY3D_BATCH_OP *, unsigned long long,
				 CUstream);

/* A pointer operand at p, its rows pitch bytes apart (0: as tight as the
 * copy). */
static CUmemcpy3DOperand operand(CUdeviceptr p, size_t pitch)
{
	CUmemcpy3DOperand o;

	memset(&o, 0, sizeof(o));
	o.type = CU_MEMCPY_OPERAND_TYPE_POINTER;
	o.op.ptr.ptr = p;
	o.op.ptr.rowLength = pitch;
	return o;
}

/*
 * One batch of 3D copies: three rows of 64 bytes of page 0, as tight as
 * the copy, into the start of pages 2, 3 and 4 (rows a page apart); and a
 * row out of page 6 (zeros) to the host.
 */
static void op_batch3d(void *fn, CUdeviceptr p)
{
	static unsigned char host[64], want[64];
	CUDA_MEMCPY3D_BATCH_OP ops[2];
	size_t fail = 7, i;
	CUresult r;

	memset(ops, 0, sizeof(ops));
	ops[0].dst = operand(p + 2 * PG, PG);
	ops[0].src = operand(p, 0);
	ops[0].extent = (CUextent3D){ 64, 3, 1 };
	ops[1].dst = operand(hp(host), 0);
	ops[1].src = operand(p + 6 * PG, 0);
	ops[1].extent = (CUextent3D){ 64, 1, 1 };
	ops[0].srcAccessOrder = ops[1].srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
	memset(host, 0xee, sizeof(host));
	start();
	if (row->arg == 12)
		r = ((batch3d12_fn)fn)(2, ops, &fail, 0, NULL);
	else
		r = ((batch3d13_fn)fn)(2, ops, 0, CU_STREAM_PER_THREAD);
	done(r, 1, p, 0x5d);
	if (row->arg == 12 && kv_dev_is_emu())
		ck_assert_uint_eq(fail, SIZE_MAX);
	ck_assert_int_eq(ctx_sync(), CUDA_SUCCESS);
	host_is(host, sizeof(host), 0);
	for (i = 0; i < 3; i++) {
		read_back(want, p + 64 * i, sizeof(want));
		read_back(host, p + (2 + i) * PG, sizeof(host));
		ck_assert_msg(!memcmp(host, want, sizeof(host)), "%s: wrong bytes in page %zu",
			      row->name, 2 + i);
	}
}

/* ---- the runtime's forms ---------------------------------------------------------- */

static void *vp(CUdeviceptr d)
{
	return (void *)(uintptr_t)d;
}

/* cudaMemset: as op_set1d, one byte wide. */
static void op_rt_set1d(void *fn, CUdeviceptr p)
{
	cudaError_t (*set)(void *, int, size_t);
	cudaError_t (*seta)(void *, int, size_t, cudaStream_t);
	CUdeviceptr d = p + 2 * PG + 64;

	*(void **)&set = fn;
	*(void **)&seta = fn;
	start();
	done(row->async ? seta(vp(d), (int)values[1], PG, NULL) : set(vp(d), (int)values[1], PG),
	     1, p, 0x0d);
	edge(d, 1, 0, 1);
	edge(d + PG, 1, 1, 0);
}

/* cudaMemset2D: as op_set2d, one byte wide. */
static void op_rt_set2d(void *fn, CUdeviceptr p)
{
	cudaError_t (*set)(void *, size_t, int, size_t, size_t);
	cudaError_t (*seta)(void *, size_t, int, size_t, size_t, cudaStream_t);
	void *d = vp(p + 2 * PG);

	*(void **)&set = fn;
	*(void **)&seta = fn;
	start();
	done(row->async ? seta(d, 2 * PG, (int)values[1], 64, 2, NULL) :
			  set(d, 2 * PG, (int)values[1], 64, 2), 1, p, 0x1d);
	edge(p + 4 * PG + 4, 1, 1, 1);
	edge(p + 4 * PG + 64, 1, 1, 0);
	zeros(p + 3 * PG, 64);
}

/* cudaMemset3D: two slices of a row of 64 bytes, at the start of pages 2
 * and 4 (page 3 backed too): a 2D memset of the driver's per slice. */
static void op_rt_set3d(void *fn, CUdeviceptr p)
{
	cudaError_t (*set)(struct cudaPitchedPtr, int, struct cudaExtent);
	cudaError_t (*seta)(struct cudaPitchedPtr, int, struct cudaExtent, cudaStream_t);
	struct cudaPitchedPtr pp = { vp(p + 2 * PG), PG, 64, 2 };
	struct cudaExtent x = { 64, 1, 2 };

	*(void **)&set = fn;
	*(void **)&seta = fn;
	start();
	done(row->async ? seta(pp, (int)values[1], x, NULL) : set(pp, (int)values[1], x), 2, p,
	     0x1d);
	edge(p + 4 * PG + 4, 1, 1, 1);
	edge(p + 4 * PG + 64, 1, 1, 0);
	zeros(p + 3 * PG, 64);
}

/* cudaMemcpy device to device: as op_copy's. */
static void op_rt_copy(void *fn, CUdeviceptr p)
{
	cudaError_t (*cp)(void *, const void *, size_t, enum cudaMemcpyKind);
	cudaError_t (*cpa)(void *, const void *, size_t, enum cudaMemcpyKind, cudaStream_t);
	CUdeviceptr to = p + 3 * PG - 2048, from = p + 5 * PG - 2048;
	enum cudaMemcpyKind k = cudaMemcpyDeviceToDevice;

	*(void **)&cp = fn;
	*(void **)&cpa = fn;
	start();
	done(row->async ? cpa(vp(to), vp(p), 4096, k, NULL) : cp(vp(to), vp(p), 4096, k), 1, p,
	     0x0d);
	holds_page0(to, 4096);
	start();
	done(row->async ? cpa(vp(to), vp(from), 4096, k, NULL) : cp(vp(to), vp(from), 4096, k),
	     1, p, 0x3d);
	zeros(to, 4096);
}

/* cudaMemcpy2D: as op_copy2d. */
static void op_rt_copy2d(void *fn, CUdeviceptr p)
{
	cudaError_t (*cp)(void *, size_t, const void *, size_t, size_t, size_t,
			  enum cudaMemcpyKind);
	cudaError_t (*cpa)(void *, size_t, const void *, size_t, size_t, size_t,
			   enum cudaMemcpyKind, cudaStream_t);
	static unsigned char host[64];
	void *d = vp(p + 2 * PG), *s = vp(p + 6 * PG);

	*(void **)&cp = fn;
	*(void **)&cpa = fn;
	start();
	done(row->async ? cpa(d, 2 * PG, pattern, 64, 64, 2, cudaMemcpyHostToDevice, NULL) :
			  cp(d, 2 * PG, pattern, 64, 64, 2, cudaMemcpyHostToDevice), 1, p, 0x1d);
	read_back(host, p + 4 * PG, sizeof(host));
	ck_assert_msg(!memcmp(host, pattern + 64, sizeof(host)), "%s: wrong bytes", row->name);
	memset(host, 0xee, sizeof(host));
	start();
	done(row->async ? cpa(host, 64, s, 64, 64, 1, cudaMemcpyDeviceToHost, NULL) :
			  cp(host, 64, s, 64, 64, 1, cudaMemcpyDeviceToHost), 1, p, 0x5d);
	host_is(host, sizeof(host), 0);
}

/* cudaMemcpy3D: as op_copy3d. */
static void op_rt_copy3d(void *fn, CUdeviceptr p)
{
	cudaError_t (*cp)(const struct cudaMemcpy3DParms *);
	cudaError_t (*cpa)(const struct cudaMemcpy3DParms *, cudaStream_t);
	static unsigned char host[64];
	struct cudaMemcpy3DParms q;

	*(void **)&cp = fn;
	*(void **)&cpa = fn;
	memset(&q, 0, sizeof(q));
	q.dstPtr = (struct cudaPitchedPtr){ vp(p + 2 * PG), PG, 64, 2 };
	q.srcPtr = (struct cudaPitchedPtr){ pattern, 64, 64, 1 };
	q.extent = (struct cudaExtent){ 64, 1, 2 };
	q.kind = cudaMemcpyHostToDevice;
	start();
	done(row->async ? cpa(&q, NULL) : cp(&q), 1, p, 0x1d);
	read_back(host, p + 4 * PG, sizeof(host));
	ck_assert_msg(!memcmp(host, pattern + 64, sizeof(host)), "%s: wrong bytes", row->name);

	memset(&q, 0, sizeof(q));
	q.dstPtr = (struct cudaPitchedPtr){ host, 64, 64, 1 };
	q.srcPtr = (struct cudaPitchedPtr){ vp(p + 6 * PG), 64, 64, 1 };
	q.extent = (struct cudaExtent){ 64, 1, 1 };
	q.kind = cudaMemcpyDeviceToHost;
	memset(host, 0xee, sizeof(host));
	start();
	done(row->async ? cpa(&q, NULL) : cp(&q), 1, p, 0x5d);
	host_is(host, sizeof(host), 0);
}

static void (*const ops[])(void *, CUdeviceptr) = {
	[SET1D] = op_set1d, [SET2D] = op_set2d, [COPY] = op_copy, [COPY2D] = op_copy2d,
	[COPY3D] = op_copy3d, [COPY3D_PEER] = op_copy3d, [PEER] = op_peer, [BATCH] = op_batch,
	[BATCH3D] = op_batch3d,
	[RT_SET1D] = op_rt_set1d, [RT_SET2D] = op_rt_set2d, [RT_SET3D] = op_rt_set3d,
	[RT_COPY] = op_rt_copy, [RT_COPY2D] = op_rt_copy2d, [RT_COPY3D] = op_rt_copy3d,
};

/* ---- the tests ---------------------------------------------------------------------- */

static void open_lib(void)
{
	const char *path = getenv("KVSHIM_LIB");

	ck_assert_msg(path != NULL, "KVSHIM_LIB names no library");
	ck_assert(dtoh && ctx_current && ctx_sync);
	lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	ck_assert_msg(lib != NULL, "dlopen %s: %s", path, dlerror());
	*(void **)&reserve = dlsym(lib, "kvshim_reserve");
	*(void **)&release = dlsym(lib, "kvshim_release");
	*(void **)&map = dlsym(lib, "kvshim_map");
	*(void **)&stats = dlsym(lib, "kvshim_stats");
	ck_assert(reserve && release && map && stats);
}

/*
 * The per-thread form as an engine finds it. A driver form: through the
 * shim's cuGetProcAddress, by base name, asked for per-thread default
 * streams; the driver picks its per-thread form and the shim hands out
 * its wrapper of that name. A runtime form: the shim's export of its name
 * (the runtime is loaded first, as an engine linking it has it).
 */
static void *find(void)
{
	CUresult (*gpa)(const char *, void **, int, cuuint64_t,
			CUdriverProcAddressQueryResult *);
	CUdriverProcAddressQueryResult q;
	void *fn = NULL, *rt;

	if (!row->base) {
		rt = dlopen("libcudart.so.13", RTLD_NOW | RTLD_LOCAL);
		ck_assert_msg(rt != NULL, "dlopen libcudart.so.13: %s", dlerror());
		ck_assert_msg(dlsym(rt, row->name) != NULL, "the runtime has no %s", row->name);
		fn = dlsym(lib, row->name);
		ck_assert_msg(fn != NULL, "libkvshim.so does not export %s", row->name);
		return fn;
	}
	*(void **)&gpa = dlsym(lib, "cuGetProcAddress_v2");
	ck_assert_ptr_nonnull(gpa);
	ck_assert_int_eq(gpa(row->base, &fn, row->version,
			     CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &q), CUDA_SUCCESS);
	ck_assert_msg(fn != NULL && fn == dlsym(lib, row->name),
		      "cuGetProcAddress(%s, per-thread) through libkvshim.so is not its %s",
		      row->base, row->name);
	return fn;
}

/* Row i under test: its names, the pattern, kvshim loaded, and the form
 * as an engine finds it. */
static void *pick(int i)
{
	size_t n;

	row = &rows[i];
	real_name = row->real ? row->real : row->name;
	n = strlen(real_name) - 5;
	ck_assert_uint_lt(n, sizeof(plain_name));
	memcpy(plain_name, real_name, n);
	plain_name[n] = '\0';
	for (n = 0; n < sizeof(pattern); n++)
		pattern[n] = (unsigned char)(n * 7 + 1);
	open_lib();
	return find();
}

/* Row i of the table (see the head of this file). */
START_TEST(test_per_thread_form)
{
	void *fn;
	CUdeviceptr p;

	fn = pick(_i);
	mapped0 = mapped();
	p = span8();
	if (kv_dev_is_emu())
		ck_assert_uint_eq(backed(p), 0x01);
	ck_assert_uint_eq(mapped() - mapped0, PG);
	ops[row->shape](fn, p);
	ck_assert_int_eq(release(vp(p)), 0);
}
END_TEST

/*
 * Row i, one of the six 1D memsets (the table's first rows), sets a whole
 * span of 8 pages (page 0 backed) to zero while the per-thread default
 * stream captures, begun through kvshim as an engine begins it. A
 * synchronous _ptds form runs on that stream: where the driver records it
 * into the capture, as it records the _ptsz forms given no stream, kvshim
 * must back every page first, or a replay would leave the pages backed
 * later unset. Where the driver refuses the call, the capture ends
 * invalidated. (Outside a capture a zero memset sets only the pages mapped
 * now: the others arrive zeroed.)
 */
START_TEST(test_zero_memset_captured)
{
	CUresult (*gpa)(const char *, void **, int, cuuint64_t,
			CUdriverProcAddressQueryResult *);
	CUresult (*begin)(CUstream, CUstreamCaptureMode);
	CUresult (*end)(CUstream, CUgraph *);
	CUdriverProcAddressQueryResult q;
	CUresult rc, ended;
	CUgraphExec exec;
	CUgraph g = NULL;
	CUdeviceptr p;
	void *fn;

	ck_assert(instantiate && launch && stream_sync && graph_destroy && exec_destroy);
	fn = pick(_i);
	ck_assert_int_eq(rows[_i].shape, SET1D);
	*(void **)&gpa = dlsym(lib, "cuGetProcAddress_v2");
	ck_assert_ptr_nonnull(gpa);
	ck_assert_int_eq(gpa("cuStreamBeginCapture", (void **)&begin, 13000,
			     CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &q), CUDA_SUCCESS);
	ck_assert_int_eq(gpa("cuStreamEndCapture", (void **)&end, 13000,
			     CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &q), CUDA_SUCCESS);
	ck_assert_ptr_eq((void *)begin, dlsym(lib, "cuStreamBeginCapture_v2_ptsz"));
	mapped0 = mapped();
	p = span8();
	ck_assert_int_eq(begin(NULL, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
	rc = set1d_to(fn, p, 8 * PG / (size_t)row->arg, 0);
	ended = end(NULL, &g);
	ck_assert_msg(mapped() - mapped0 == 8 * PG, "%s: %zu of 8 pages backed", row->name,
		      (mapped() - mapped0) / PG);
	if (rc != CUDA_SUCCESS) {
		/* refused: the capture is invalidated, no graph. kvshim backed
		 * the whole range first all the same (above): it cannot tell a
		 * driver that refuses (every one seen, which wastes the backing)
		 * from one that would capture the call */
		ck_assert_msg(!row->async, "%s: refused in a capture (%d)", row->name, rc);
		ck_assert_msg(ended != CUDA_SUCCESS && g == NULL,
			      "%s: refused (%d), and the capture still ended (%d)", row->name,
			      rc, ended);
		ck_assert_int_eq(ctx_sync(), CUDA_SUCCESS);
	} else {
		ck_assert_msg(ended == CUDA_SUCCESS && g != NULL, "%s: capture end %d", row->name,
			      ended);
		/* the engine writes every page, then the replay sets them all */
		ck_assert_int_eq(kv_dev_fill(p, 8 * PG, 9), CUDA_SUCCESS);
		ck_assert_int_eq(instantiate(&exec, g, 0), CUDA_SUCCESS);
		ck_assert_int_eq(launch(exec, CU_STREAM_PER_THREAD), CUDA_SUCCESS);
		ck_assert_int_eq(stream_sync(CU_STREAM_PER_THREAD), CUDA_SUCCESS);
		zeros(p, 8 * PG);
		exec_destroy(exec);
		graph_destroy(g);
	}
	printf("ptds: %s while the per-thread stream captures: %s\n", row->name,
	       rc == CUDA_SUCCESS ? "captured, replay sets every page" : "refused");
	ck_assert_int_eq(release(vp(p)), 0);
}
END_TEST

/*
 * The runtime's cudaMemset_ptds, zero over a span of 8 pages (page 0
 * backed) while the per-thread default stream captures, begun through
 * kvshim's cudaStreamBeginCapture_ptsz: kvshim backs the whole range first,
 * as test_zero_memset_captured's driver forms, and the runtime's answer
 * stands (the emulation's runtime, which refuses it as its driver does;
 * a real runtime's is not tested).
 */
START_TEST(test_rt_zero_memset_captured)
{
	cudaError_t (*set)(void *, int, size_t);
	cudaError_t (*begin)(cudaStream_t, enum cudaStreamCaptureMode);
	cudaError_t (*end)(cudaStream_t, cudaGraph_t *);
	cudaError_t rc, ended;
	cudaGraph_t g = NULL;
	CUdeviceptr p;
	int i;

	for (i = 0; i < NROWS && strcmp(rows[i].name, "cudaMemset_ptds"); i++)
		;
	ck_assert_int_lt(i, NROWS);
	*(void **)&set = pick(i);
	*(void **)&begin = dlsym(lib, "cudaStreamBeginCapture_ptsz");
	*(void **)&end = dlsym(lib, "cudaStreamEndCapture_ptsz");
	ck_assert(begin && end);
	mapped0 = mapped();
	p = span8();
	ck_assert_int_eq(begin(NULL, cudaStreamCaptureModeGlobal), cudaSuccess);
	rc = set(vp(p), 0, 8 * PG);
	ended = end(NULL, &g);
	ck_assert_msg(rc != cudaSuccess && ended != cudaSuccess && g == NULL,
		      "cudaMemset_ptds in a per-thread capture: %d, the capture's end %d", rc,
		      ended);
	ck_assert_msg(mapped() - mapped0 == 8 * PG, "cudaMemset_ptds: %zu of 8 pages backed",
		      (mapped() - mapped0) / PG);
	ck_assert_int_eq(ctx_sync(), CUDA_SUCCESS);
	ck_assert_int_eq(release(vp(p)), 0);
}
END_TEST

/* One copy of z bytes from src to d as a batch through fn on stream st:
 * a linear batch, or a 3D one (op) where three_d; CUDA 13.0's form where
 * v13, else 12.8's, with *fail. */
static CUresult call_batch(void *fn, int three_d, int v13, CUdeviceptr d, CUdeviceptr src,
			   size_t z, CUstream st, size_t *fail)
{
	CUDA_MEMCPY3D_BATCH_OP op;
	CUmemcpyAttributes attr;
	size_t idx = 0;

	memset(&attr, 0, sizeof(attr));
	attr.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
	memset(&op, 0, sizeof(op));
	op.dst.type = op.src.type = CU_MEMCPY_OPERAND_TYPE_POINTER;
	op.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
	op.dst.op.ptr.ptr = d;
	op.src.op.ptr.ptr = src;
	op.extent = (CUextent3D){ z, 1, 1 };
	if (three_d)
		return v13 ? ((batch3d13_fn)fn)(1, &op, 0, st) :
			     ((batch3d12_fn)fn)(1, &op, fail, 0, st);
	return v13 ? ((batch13_fn)fn)(&d, &src, &z, 1, &attr, &idx, 1, st) :
		     ((batch12_fn)fn)(&d, &src, &z, 1, &attr, &idx, 1, fail, st);
}

/*
 * The streams a batched copy may go on, form by form: a linear batch and a
 * 3D batch, CUDA 12.8's form and 13.0's, plain and per-thread (i: bit 0 3D,
 * bit 1 13.0's, bit 2 per-thread), each on NULL, CU_STREAM_LEGACY and
 * CU_STREAM_PER_THREAD. The legacy stream is refused (NULL in a plain form
 * too), and so is NULL in 13.0's per-thread form, where 12.8's reads it as
 * the per-thread default stream: what driver 580.159.04 answers (measured),
 * and what the driver found here answers too, or the table is out of date.
 * kvshim refuses those alike with nothing backed and the driver not
 * called (12.8's failure index SIZE_MAX, as its documentation has it for
 * an error of no one copy; the driver's is printed, and on the emulation
 * must agree), and backs the pages of a batch on the others.
 */
START_TEST(test_batch_streams)
{
	static const CUstream streams[] = { NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD };
	static const char *const stream_names[] = { "NULL", "CU_STREAM_LEGACY",
						    "CU_STREAM_PER_THREAD" };
	CUresult (*gpa)(const char *, void **, int, cuuint64_t,
			CUdriverProcAddressQueryResult *);
	int three_d = _i & 1, v13 = (_i >> 1) & 1, pt = (_i >> 2) & 1;
	const char *base = three_d ? "cuMemcpy3DBatchAsync" : "cuMemcpyBatchAsync";
	cuuint64_t flag = pt ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM :
			       CU_GET_PROC_ADDRESS_LEGACY_STREAM;
	CUdriverProcAddressQueryResult q;
	void *fn = NULL, *own = NULL;
	size_t j, fail, own_fail, before;
	CUdeviceptr p, d;
	CUresult rc, want;
	char name[64];

	ck_assert_ptr_nonnull(driver_gpa);
	open_lib();
	*(void **)&gpa = dlsym(lib, "cuGetProcAddress_v2");
	ck_assert_ptr_nonnull(gpa);
	ck_assert_int_eq(gpa(base, &fn, v13 ? 13000 : 12080, flag, &q), CUDA_SUCCESS);
	ck_assert_int_eq(driver_gpa(base, &own, v13 ? 13000 : 12080, flag, &q), CUDA_SUCCESS);
	snprintf(name, sizeof(name), "%s%s%s", base, v13 ? "_v2" : "", pt ? "_ptsz" : "");
	ck_assert_msg(fn == dlsym(lib, name) && own && own != fn,
		      "%s: not the shim's wrapper, or no driver function", name);
	p = span8();
	for (j = 0; j < 3; j++) {
		CUstream st = streams[j];

		want = st == CU_STREAM_LEGACY || (!st && !(pt && !v13)) ?
			CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
		/* the driver's own answer, on page 0 (backed) alone */
		own_fail = 77;
		rc = call_batch(own, three_d, v13, p + 2048, p, 1024, st, &own_fail);
		ck_assert_msg(rc == want, "%s, stream %s: the driver answers %d, not %d", name,
			      stream_names[j], rc, want);
		ck_assert_int_eq(ctx_sync(), CUDA_SUCCESS);
		/* kvshim's, into page 2 + j (unbacked) */
		d = p + (2 + j) * PG;
		before = mapped();
		kv_dev_reset_counts();
		fail = 77;
		rc = call_batch(fn, three_d, v13, d, p, 1024, st, &fail);
		ck_assert_msg(rc == want, "%s, stream %s: kvshim answers %d, not %d", name,
			      stream_names[j], rc, want);
		ck_assert_int_eq(ctx_sync(), CUDA_SUCCESS);
		ck_assert_msg(mapped() - before == (want ? 0 : PG), "%s, stream %s: %zu pages backed",
			      name, stream_names[j], (mapped() - before) / PG);
		if (want && kv_dev_is_emu())
			ck_assert_msg(kv_dev_calls(name) == 0, "%s, stream %s: the driver was called",
				      name, stream_names[j]);
		if (want && !v13) {
			printf("ptds: %s, stream %s: failIdx %s from kvshim, %s from the driver\n",
			       name, stream_names[j], fail == SIZE_MAX ? "SIZE_MAX" : "other",
			       own_fail == SIZE_MAX ? "SIZE_MAX" : own_fail == 77 ? "untouched" :
			       "other");
			ck_assert_msg(fail == SIZE_MAX, "%s, stream %s: failIdx %zu, not SIZE_MAX",
				      name, stream_names[j], fail);
			if (kv_dev_is_emu())
				ck_assert_uint_eq(fail, own_fail);
		}
		if (!want) {
			unsigned long long bad = 1;

			ck_assert_int_eq(kv_dev_check(d, 1024, 5, &bad), CUDA_SUCCESS);
			ck_assert_msg(bad == 0, "%s, stream %s: %llu words are not page 0's",
				      name, stream_names[j], bad);
		}
	}
	ck_assert_int_eq(release(vp(p)), 0);
}
END_TEST

/* The table has a row for every per-thread copy and memset hooks.h lists,
 * and no row twice. */
START_TEST(test_every_form_has_a_row)
{
	size_t i, rows_needed = 0;
	int j, found;

	for (i = 0; i < sizeof(hooked) / sizeof(hooked[0]); i++) {
		if (!copy_or_set_per_thread(hooked[i]))
			continue;
		rows_needed++;
		for (j = 0, found = 0; j < NROWS; j++)
			found += !strcmp(rows[j].name, hooked[i]);
		ck_assert_msg(found == 1, "%s: %d rows in test_ptds.c, not 1", hooked[i], found);
	}
	ck_assert_uint_eq(rows_needed, NROWS);
}
END_TEST

Suite *ptds_suite(void)
{
	Suite *s = suite_create("ptds");
	TCase *tc = tcase_create("per-thread");
	int drivers = 0;

	*(void **)&dtoh = kv_dev_sym("cuMemcpyDtoH_v2");
	*(void **)&ctx_current = kv_dev_sym("cuCtxGetCurrent");
	*(void **)&ctx_sync = kv_dev_sym("cuCtxSynchronize");
	*(void **)&instantiate = kv_dev_sym("cuGraphInstantiateWithFlags");
	*(void **)&launch = kv_dev_sym("cuGraphLaunch");
	*(void **)&stream_sync = kv_dev_sym("cuStreamSynchronize");
	*(void **)&graph_destroy = kv_dev_sym("cuGraphDestroy");
	*(void **)&exec_destroy = kv_dev_sym("cuGraphExecDestroy");
	*(void **)&driver_gpa = kv_dev_sym("cuGetProcAddress_v2");
	tcase_add_test(tc, test_every_form_has_a_row);
	/* (the driver forms' rows come first) */
	while (drivers < NROWS && rows[drivers].base)
		drivers++;
	tcase_add_loop_test(tc, test_per_thread_form, 0, kv_dev_is_emu() ? NROWS : drivers);
	tcase_add_loop_test(tc, test_zero_memset_captured, 0, 6);
	tcase_add_loop_test(tc, test_batch_streams, 0, 8);
	if (kv_dev_is_emu())
		tcase_add_test(tc, test_rt_zero_memset_captured);
	suite_add_tcase(s, tc);
	return s;
}
