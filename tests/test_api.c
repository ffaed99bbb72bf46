/*
 * test_api.c - the public ABI as libkvshim.so exports it (loaded with
 * dlopen, as a program would use it), configuration parsing, start-up with
 * bad variables, and the README's configuration table.
 */
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "share_util.h"
#include "shim.h"
#include "suites.h"

static void *lib;
static int (*reserve)(size_t, void **);
static int (*release)(void *);
static int (*map)(const void *, size_t);
static int (*unmap)(const void *, size_t);
static int (*trim)(size_t, size_t *);
static int (*stats)(struct kvshim_stats *);
static const char *(*strerr)(int);

static void open_lib(void)
{
	const char *path = getenv("KVSHIM_LIB");

	ck_assert_msg(path != NULL, "KVSHIM_LIB names no library");
	lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	ck_assert_msg(lib != NULL, "dlopen %s: %s", path, dlerror());
	*(void **)&reserve = dlsym(lib, "kvshim_reserve");
	*(void **)&release = dlsym(lib, "kvshim_release");
	*(void **)&map = dlsym(lib, "kvshim_map");
	*(void **)&unmap = dlsym(lib, "kvshim_unmap");
	*(void **)&trim = dlsym(lib, "kvshim_trim");
	*(void **)&stats = dlsym(lib, "kvshim_stats");
	*(void **)&strerr = dlsym(lib, "kvshim_strerror");
	ck_assert(reserve && release && map && unmap && trim && stats && strerr);
}

START_TEST(test_abi_round_trip)
{
	struct kvshim_stats s;
	size_t freed = 0;
	void *p = NULL;

	open_lib();
	ck_assert_int_eq(reserve(100 * PG, &p), 0);
	ck_assert_ptr_nonnull(p);
	ck_assert_int_eq(map((char *)p + 3 * PG + 10, PG), 0);
	ck_assert_int_eq(kv_dev_fill((CUdeviceptr)(uintptr_t)p + 3 * PG, 2 * PG, 1), CUDA_SUCCESS);
	ck_assert_int_eq(stats(&s), 0);
	ck_assert_uint_eq(s.page_bytes, PG);
	ck_assert_uint_eq(s.reserved_bytes, 100 * PG);
	ck_assert_uint_eq(s.mapped_bytes, 2 * PG);
	ck_assert_uint_eq(s.cached_bytes, 0);
	ck_assert_uint_eq(s.spans, 1);
	ck_assert_int_eq(unmap((char *)p + 3 * PG + 10, PG), 0);
	ck_assert_int_eq(stats(&s), 0);
	ck_assert_uint_eq(s.cached_bytes, 2 * PG);
	ck_assert_int_eq(trim(SIZE_MAX, &freed), 0);
	ck_assert_uint_ge(freed, 2 * PG);
	ck_assert_int_eq(release(p), 0);
	ck_assert_int_eq(stats(&s), 0);
	ck_assert_uint_eq(s.reserved_bytes, 0);
	ck_assert_uint_eq(s.mapped_bytes, 0);
}
END_TEST

START_TEST(test_abi_bad_input)
{
	struct kvshim_stats s;
	void *p = NULL;
	int x;

	open_lib();
	ck_assert_int_eq(reserve(0, &p), KVSHIM_EINVAL);
	ck_assert_int_eq(reserve(PG, NULL), KVSHIM_EINVAL);
	ck_assert_ptr_null(p);
	ck_assert_int_eq(map(NULL, PG), KVSHIM_ERANGE);
	ck_assert_int_eq(map(&x, sizeof(x)), KVSHIM_ERANGE);
	ck_assert_int_eq(unmap(&x, sizeof(x)), KVSHIM_ERANGE);
	ck_assert_int_eq(release(&x), KVSHIM_ERANGE);
	ck_assert_int_eq(stats(NULL), KVSHIM_EINVAL);
	ck_assert_int_eq(stats(&s), 0);
	ck_assert_uint_eq(s.reserved_bytes, 0);
}
END_TEST

/* DLPack's DLManagedTensor as dlpack.h lays it out, written here apart
 * from the library's so that the test checks the layout, not a copy */
struct dl_managed {
	void *data;
	struct { int32_t type, id; } device;
	int32_t ndim;
	struct { uint8_t code, bits; uint16_t lanes; } dtype;
	int64_t *shape, *strides;
	uint64_t byte_offset;
	void *manager_ctx;
	void (*deleter)(struct dl_managed *);
};

START_TEST(test_abi_dlpack)
{
	int (*dlpack)(int, const long long *, unsigned, unsigned, void **);
	static const long long shape[] = { 3 * 1024, 8, 128 };
	struct dl_managed *m = NULL;
	struct kvshim_stats s;

	open_lib();
	*(void **)&dlpack = dlsym(lib, "kvshim_reserve_dlpack");
	ck_assert_ptr_nonnull(dlpack);
	ck_assert_int_eq(dlpack(3, shape, 4, 16, (void **)&m), 0);
	ck_assert_ptr_nonnull(m);
	ck_assert_ptr_nonnull(m->data);
	ck_assert_int_eq(m->device.type, 2);     /* kDLCUDA */
	ck_assert_int_eq(m->device.id, 0);
	ck_assert_int_eq(m->ndim, 3);
	ck_assert_uint_eq(m->dtype.code, 4);
	ck_assert_uint_eq(m->dtype.bits, 16);
	ck_assert_uint_eq(m->dtype.lanes, 1);
	ck_assert_int_eq(m->shape[0], 3 * 1024);
	ck_assert_int_eq(m->shape[1], 8);
	ck_assert_int_eq(m->shape[2], 128);
	ck_assert_ptr_null(m->strides);
	ck_assert_uint_eq(m->byte_offset, 0);
	ck_assert_ptr_nonnull(m->deleter);
	/* 6 MiB: a span of three pages, none backed */
	ck_assert_int_eq(stats(&s), 0);
	ck_assert_uint_eq(s.reserved_bytes, 3 * PG);
	ck_assert_uint_eq(s.mapped_bytes, 0);
	ck_assert_int_eq(map(m->data, PG + 1), 0);
	ck_assert_int_eq(kv_dev_fill((CUdeviceptr)(uintptr_t)m->data, 2 * PG, 7), CUDA_SUCCESS);
	m->deleter(m);
	ck_assert_int_eq(stats(&s), 0);
	ck_assert_uint_eq(s.reserved_bytes, 0);
	ck_assert_uint_eq(s.mapped_bytes, 0);
	ck_assert_uint_eq(s.spans, 0);
}
END_TEST

START_TEST(test_abi_dlpack_bad)
{
	int (*dlpack)(int, const long long *, unsigned, unsigned, void **);
	static const long long ok[] = { 4, 4 }, zero[] = { 4, 0 },
		negative[] = { -4, 4 }, huge[] = { 1LL << 40, 1LL << 40 };
	static const struct { int ndim; const long long *shape; unsigned code, bits; } bad[] = {
		{ 0, ok, 2, 32 }, { 9, ok, 2, 32 }, { -1, ok, 2, 32 },
		{ 2, NULL, 2, 32 }, { 2, zero, 2, 32 }, { 2, negative, 2, 32 },
		{ 2, huge, 2, 32 }, { 2, ok, 3, 32 }, { 2, ok, 7, 32 },
		{ 2, ok, 2, 0 }, { 2, ok, 2, 12 }, { 2, ok, 2, 256 },
	};
	struct kvshim_stats s;
	void *m = NULL;
	size_t i;

	open_lib();
	*(void **)&dlpack = dlsym(lib, "kvshim_reserve_dlpack");
	ck_assert_ptr_nonnull(dlpack);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(dlpack(bad[i].ndim, bad[i].shape, bad[i].code, bad[i].bits,
				     &m) == KVSHIM_EINVAL && m == NULL, "case %zu accepted", i);
	ck_assert_int_eq(dlpack(2, ok, 2, 32, NULL), KVSHIM_EINVAL);
	ck_assert_int_eq(stats(&s), 0);
	ck_assert_uint_eq(s.reserved_bytes, 0);
	ck_assert_uint_eq(s.spans, 0);
}
END_TEST

START_TEST(test_strerror)
{
	int e, f;

	open_lib();
	for (e = KVSHIM_ESTATE; e <= 0; e++) {
		ck_assert_ptr_nonnull(strerr(e));
		ck_assert_str_ne(strerr(e), strerr(1));
		for (f = KVSHIM_ESTATE; f < e; f++)
			ck_assert_str_ne(strerr(e), strerr(f));
	}
	ck_assert_str_eq(strerr(12345), "unknown kvshim error");
}
END_TEST

/* ---- configuration ---- */

START_TEST(test_parse_size)
{
	const char *why = NULL;
	size_t v = 0;

	ck_assert_int_eq(kv_parse_size("4096", &v, &why), 0);
	ck_assert_uint_eq(v, 4096);
	ck_assert_int_eq(kv_parse_size("2M", &v, &why), 0);
	ck_assert_uint_eq(v, 2u << 20);
	ck_assert_int_eq(kv_parse_size("3g", &v, &why), 0);
	ck_assert_uint_eq(v, (size_t)3 << 30);
	ck_assert_int_eq(kv_parse_size("1KiB", &v, &why), 0);
	ck_assert_uint_eq(v, 1024);
	ck_assert_int_eq(kv_parse_size("2T", &v, &why), 0);
	ck_assert_uint_eq(v, (size_t)2 << 40);
}
END_TEST

START_TEST(test_parse_size_bad)
{
	static const char *const bad[] = {
		"", "x", "-1", "1X", "1.5G", "G", "1 G", "99999999999999999999",
		"17179869184T"
	};
	const char *why;
	size_t i, v = 77;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why = NULL;
		ck_assert_msg(kv_parse_size(bad[i], &v, &why) == KVSHIM_ECONFIG,
			      "'%s' accepted", bad[i]);
		ck_assert_ptr_nonnull(why);
		ck_assert_uint_eq(v, 77);
	}
}
END_TEST

START_TEST(test_parse_bool)
{
	static const char *const yes[] = { "1", "true", "YES", "On" };
	static const char *const no[] = { "0", "false", "no", "OFF" };
	const char *why;
	int i, v;

	for (i = 0; i < 4; i++) {
		ck_assert_int_eq(kv_parse_bool(yes[i], &v, &why), 0);
		ck_assert_int_eq(v, 1);
		ck_assert_int_eq(kv_parse_bool(no[i], &v, &why), 0);
		ck_assert_int_eq(v, 0);
	}
	v = 5;
	ck_assert_int_eq(kv_parse_bool("2", &v, &why), KVSHIM_ECONFIG);
	ck_assert_int_eq(kv_parse_bool("", &v, &why), KVSHIM_ECONFIG);
	ck_assert_int_eq(kv_parse_bool("onn", &v, &why), KVSHIM_ECONFIG);
	ck_assert_int_eq(v, 5);
}
END_TEST

START_TEST(test_config_defaults)
{
	struct kv_config c;

	ck_assert_int_eq(kv_config_load(&c), 0);
	ck_assert_int_eq(c.devices_all, 1);
	ck_assert(c.devices == UINT64_MAX);
	ck_assert(kv_config_manages(&c, 0) && kv_config_manages(&c, 7) && kv_config_manages(&c, 63));
	ck_assert(!kv_config_manages(&c, 64) && !kv_config_manages(&c, -1));
	ck_assert_uint_eq(c.page, 0);
	ck_assert_uint_eq(c.limit, 0);
	ck_assert_uint_eq(c.limit_pct, 100);
	ck_assert_uint_eq(c.pool_low, 8u << 20);
	ck_assert_uint_eq(c.pool_high, 64u << 20);
	ck_assert_uint_eq(c.cache_max, SIZE_MAX);
	ck_assert_int_eq(c.zero, 1);
	ck_assert_int_eq(c.strict, 0);
}
END_TEST

START_TEST(test_config_values)
{
	struct kv_config c;

	setenv("KVSHIM_LIMIT", "40%", 1);
	setenv("KVSHIM_POOL_LOW", "2M", 1);
	setenv("KVSHIM_POOL_HIGH", "1G", 1);
	setenv("KVSHIM_CACHE_MAX", "256M", 1);
	setenv("KVSHIM_ZERO", "off", 1);
	setenv("KVSHIM_LOG", "error", 1);
	setenv("KVSHIM_PAGE", "32M", 1);
	ck_assert_int_eq(kv_config_load(&c), 0);
	ck_assert_uint_eq(c.page, 32u << 20);
	ck_assert_uint_eq(c.limit_pct, 40);
	ck_assert_uint_eq(c.pool_low, 2u << 20);
	ck_assert_uint_eq(c.pool_high, 1u << 30);
	ck_assert_uint_eq(c.cache_max, 256u << 20);
	ck_assert_int_eq(c.zero, 0);
	setenv("KVSHIM_LIMIT", "6G", 1);
	ck_assert_int_eq(kv_config_load(&c), 0);
	ck_assert_uint_eq(c.limit, (size_t)6 << 30);
	ck_assert_uint_eq(c.limit_pct, 0);
}
END_TEST

/* Each malformed value: reported, its default kept, the load refused. */
START_TEST(test_config_bad_values)
{
	static const char *const bad[][2] = {
		{ "KVSHIM_LIMIT", "0" }, { "KVSHIM_LIMIT", "150%" },
		{ "KVSHIM_LIMIT", "0%" }, { "KVSHIM_LIMIT", "lots" },
		{ "KVSHIM_LIMIT", "%" }, { "KVSHIM_POOL_LOW", "-4M" },
		{ "KVSHIM_POOL_HIGH", "4Q" }, { "KVSHIM_CACHE_MAX", "some" },
		{ "KVSHIM_ZERO", "maybe" }, { "KVSHIM_LOG", "loud" },
		{ "KVSHIM_DEVICE", "-1" }, { "KVSHIM_DEVICE", "1x" },
		{ "KVSHIM_STRICT", "2" }, { "KVSHIM_PAGE", "3M" },
		{ "KVSHIM_PAGE", "0" }, { "KVSHIM_PAGE", "big" },
	};
	struct kv_config c;
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		setenv(bad[i][0], bad[i][1], 1);
		ck_assert_msg(kv_config_load(&c) == KVSHIM_ECONFIG,
			      "%s=%s accepted", bad[i][0], bad[i][1]);
		ck_assert_uint_eq(c.limit_pct, 100);
		ck_assert_uint_eq(c.pool_low, 8u << 20);
		ck_assert_uint_eq(c.cache_max, SIZE_MAX);
		ck_assert_int_eq(c.zero, 1);
		unsetenv(bad[i][0]);
	}
	setenv("KVSHIM_POOL_LOW", "128M", 1);
	ck_assert_int_eq(kv_config_load(&c), KVSHIM_ECONFIG);
	unsetenv("KVSHIM_POOL_LOW");
}
END_TEST

/* A malformed variable disables kvshim: every call says so, nothing runs. */
START_TEST(test_bad_config_disables)
{
	kv_alloc_t *a = (kv_alloc_t *)1;

	setenv("KVSHIM_ZERO", "perhaps", 1);
	ck_assert_int_eq(kv_shim_alloc(&a), KVSHIM_ECONFIG);
	ck_assert_ptr_null(a);
	ck_assert_int_eq(kv_shim_alloc(&a), KVSHIM_ECONFIG);
	kv_shim_shutdown();
	unsetenv("KVSHIM_ZERO");
}
END_TEST

START_TEST(test_bad_config_strict_exits)
{
	kv_alloc_t *a;

	setenv("KVSHIM_STRICT", "1", 1);
	setenv("KVSHIM_LIMIT", "much", 1);
	kv_shim_alloc(&a);
}
END_TEST

START_TEST(test_shim_starts)
{
	struct timespec ts = { 0, 10 * 1000 * 1000 };
	kv_alloc_t *a = NULL;
	struct kvshim_stats s;
	int i;

	setenv("KVSHIM_LIMIT", "64M", 1);
	setenv("KVSHIM_POOL_LOW", "2M", 1);
	setenv("KVSHIM_POOL_HIGH", "4M", 1);
	ck_assert_int_eq(kv_shim_alloc(&a), 0);
	ck_assert_ptr_nonnull(a);
	/* the shim's worker fills the pool after the start has returned */
	for (i = 0; i < 300; i++) {
		ck_assert_int_eq(kv_alloc_stats(a, &s), 0);
		if (s.pooled_bytes >= 4u << 20)
			break;
		nanosleep(&ts, NULL);
	}
	ck_assert_uint_eq(s.limit_bytes, 64u << 20);
	ck_assert_uint_eq(s.pooled_bytes, 4u << 20);
	ck_assert_ptr_nonnull(kv_shim_config());
	kv_shim_shutdown();
	ck_assert_ptr_null(kv_shim_config());
	unsetenv("KVSHIM_LIMIT");
	unsetenv("KVSHIM_POOL_LOW");
	unsetenv("KVSHIM_POOL_HIGH");
}
END_TEST

/* ---- configuration: values refused, capped or made to work ---- */

/* kv_config_load refuses KVSHIM_<var>=value, naming the variable, and
 * with why (unless NULL) as its reason. */
static void refused_because(const char *var, const char *value, const char *why)
{
	char name[64], log[2048], expect[128];
	struct kv_config c;
	int rc;

	snprintf(name, sizeof(name), "KVSHIM_%s", var);
	setenv(name, value, 1);
	kt_capture_start();
	rc = kv_config_load(&c);
	kt_capture_end(log, sizeof(log));
	unsetenv(name);
	ck_assert_msg(rc == KVSHIM_ECONFIG, "%s=\"%s\" accepted", name, value);
	snprintf(expect, sizeof(expect), "kvshim: error: %s=", name);
	ck_assert_msg(strstr(log, expect) != NULL, "%s=\"%s\": no message naming it in \"%s\"",
		      name, value, log);
	if (!why)
		return;
	snprintf(expect, sizeof(expect), "%s=%s: %s", name, value, why);
	ck_assert_msg(strstr(log, expect) != NULL, "no \"%s\" in \"%s\"", expect, log);
}

static void refused(const char *var, const char *value)
{
	refused_because(var, value, NULL);
}

/* kv_config_load reads each KVSHIM_<var>=good[i][0] as the number
 * good[i][1] in the size_t field at offset of struct kv_config. */
static void read_as(const char *var, const char *const (*good)[2], size_t n, size_t offset)
{
	struct kv_config c;
	char name[64];
	size_t i, v;

	snprintf(name, sizeof(name), "KVSHIM_%s", var);
	for (i = 0; i < n; i++) {
		setenv(name, good[i][0], 1);
		ck_assert_msg(kv_config_load(&c) == 0, "%s=\"%s\" refused", name, good[i][0]);
		memcpy(&v, (const char *)&c + offset, sizeof(v));
		ck_assert_msg(v == strtoull(good[i][1], NULL, 10), "%s=\"%s\" read as %zu",
			      name, good[i][0], v);
	}
	unsetenv(name);
}

/* Numbers are digits only: no leading white space or sign, nothing after
 * them but a suffix where one is allowed. */
START_TEST(test_config_number_sign_space)
{
	static const char *const device[] = { " 1", "+1", "1 ", "\t1", "-0", "0x1", "" };
	static const char *const size[] = { " 4G", "+4G", "4G ", " 50%", "+50%", "50 %" };
	size_t i;

	for (i = 0; i < sizeof(device) / sizeof(device[0]); i++)
		refused("DEVICE", device[i]);
	for (i = 0; i < sizeof(size) / sizeof(size[0]); i++)
		refused("LIMIT", size[i]);
	refused("POOL_LOW", "+2M");
	refused("BUDGET", " 50%");
	refused("SHARE_MODE", " 0600");
	refused("SHARE_MODE", "+0600");
}
END_TEST

/* KVSHIM_DEVICE: all (any case), or a list of ordinals from 0 to 63, each
 * once, in any order. */
START_TEST(test_config_devices)
{
	static const struct { const char *value; uint64_t mask; int all; } good[] = {
		{ "all", UINT64_MAX, 1 }, { "ALL", UINT64_MAX, 1 }, { "All", UINT64_MAX, 1 },
		{ "0", 1, 0 }, { "3", 8, 0 }, { "0,2", 5, 0 }, { "2,0", 5, 0 },
		{ "0,1,2,3", 15, 0 }, { "63", 1ull << 63, 0 }, { "00", 1, 0 },
	};
	struct kv_config c;
	size_t i;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		setenv("KVSHIM_DEVICE", good[i].value, 1);
		ck_assert_msg(kv_config_load(&c) == 0, "KVSHIM_DEVICE=%s refused", good[i].value);
		ck_assert_msg(c.devices == good[i].mask && c.devices_all == good[i].all,
			      "KVSHIM_DEVICE=%s read as %#llx", good[i].value,
			      (unsigned long long)c.devices);
	}
	setenv("KVSHIM_DEVICE", "0,2", 1);
	ck_assert_int_eq(kv_config_load(&c), 0);
	ck_assert(kv_config_manages(&c, 0) && !kv_config_manages(&c, 1) &&
		  kv_config_manages(&c, 2) && !kv_config_manages(&c, 3));
	unsetenv("KVSHIM_DEVICE");
}
END_TEST

/* Every malformed KVSHIM_DEVICE is refused with a message naming it: an
 * empty value or entry, signs, spaces, other separators, ranges, words,
 * an ordinal above 63, one listed twice, all mixed with ordinals. */
START_TEST(test_config_devices_bad)
{
	static const char *const bad[] = {
		"", ",", "0,", ",0", "0,,1", "-1", "+1", " 1", "1 ", "0, 1", "0 ,1",
		"0;1", "0 1", "0:1", "1-3", "0x1", "1x", "one", "al", "alll", "none",
		"64", "100", "99999999999999999999", "0,64", "0,0", "2,1,2", "all,0",
		"0,all", "\t0",
	};
	char log[2048], expect[128];
	struct kv_config c;
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		refused("DEVICE", bad[i]);
		setenv("KVSHIM_DEVICE", bad[i], 1);
		kt_capture_start();
		kv_config_load(&c);
		kt_capture_end(log, sizeof(log));
		unsetenv("KVSHIM_DEVICE");
		/* the default stays in place */
		ck_assert_int_eq(c.devices_all, 1);
		snprintf(expect, sizeof(expect), "%s", i == 0 ? "KVSHIM_DEVICE=: " : "KVSHIM_DEVICE=");
		ck_assert_msg(strstr(log, expect) != NULL, "\"%s\": %s", bad[i], log);
	}
	/* the why says what is wrong */
	setenv("KVSHIM_DEVICE", "0,0", 1);
	kt_capture_start();
	kv_config_load(&c);
	kt_capture_end(log, sizeof(log));
	ck_assert_msg(strstr(log, "listed twice") != NULL, "%s", log);
	setenv("KVSHIM_DEVICE", "64", 1);
	kt_capture_start();
	kv_config_load(&c);
	kt_capture_end(log, sizeof(log));
	ck_assert_msg(strstr(log, "above 63") != NULL, "%s", log);
	setenv("KVSHIM_DEVICE", "0,,1", 1);
	kt_capture_start();
	kv_config_load(&c);
	kt_capture_end(log, sizeof(log));
	ck_assert_msg(strstr(log, "an empty entry") != NULL, "%s", log);
	unsetenv("KVSHIM_DEVICE");
}
END_TEST

/* A size whose suffix would carry it past 2^64 - 1 is refused, not
 * wrapped. */
START_TEST(test_config_size_overflow)
{
	refused("LIMIT", "99999999999999999999");
	refused("LIMIT", "17179869184T");
	refused("POOL_HIGH", "18446744073709551615K");
	refused("MAX", "16777216T");
	refused("DEVICE", "99999999999999999999");
}
END_TEST

/* KVSHIM_CB_READ_TOKENS (read by the Python adapter, checked here with the
 * rest): auto, off, a number of tokens with a K or M suffix, or a memory
 * size ending in B or iB (the B tells 16M tokens from 16MiB), each read
 * into its own field; each bad kind refused, with its reason.
 * tests/python/test_adapters.py reads the same strings alike. */
START_TEST(test_config_cb_read_tokens)
{
	static const char *const good[][2] = {
		{ "auto", "0" }, { "AUTO", "0" }, { "16384", "16384" }, { "16k", "16384" },
		{ "64K", "65536" }, { "1M", "1048576" }, { "1024M", "1073741824" },
		{ "1073741824", "1073741824" }, { "0000016384", "16384" },
	};
	static const char *const bytes[][2] = {
		{ "2GiB", "2147483648" }, { "2GB", "2147483648" }, { "750mib", "786432000" },
		{ "16KB", "16384" }, { "1TiB", "1099511627776" }, { "0001KiB", "1024" },
	};
	static const char *const bad[] = {
		"", "lots", "-16384", "+16384", " 16384", "16384 ", "1.5K", "16G", "0", "0K",
		"1073741825", "1025M", "99999999999999999999", "16B", "GiB", "2XiB", "2 GiB",
		"+2GiB", "1.5GiB", "2GiBs", "2iB",
		"2\xe2\x84\xaaiB",            /* a Kelvin sign, not a K */
		"\xd9\xa2GiB",                 /* an Arabic-Indic two */
		"99999999999999999999KiB",
	};
	static const char *const why[][2] = {
		{ "lots", "expected auto, off, a number of tokens" },
		{ "16B", "expected auto, off, a number of tokens" },
		{ "2GiBs", "expected auto, off, a number of tokens" },
		{ "2XiB", "expected a number of bytes" },
		{ "0GiB", "must be above zero" },
		{ "0", "must be above zero" },
		{ "16777216TiB", "too large" },
		{ "1025M", "too large (at most 1G tokens)" },
	};
	struct kv_config c;
	size_t i;

	ck_assert_int_eq(kv_config_load(&c), 0);
	ck_assert_uint_eq(c.cb_read_tokens, 0);
	ck_assert_uint_eq(c.cb_read_bytes, 0);
	read_as("CB_READ_TOKENS", good, sizeof(good) / sizeof(good[0]),
		offsetof(struct kv_config, cb_read_tokens));
	read_as("CB_READ_TOKENS", bytes, sizeof(bytes) / sizeof(bytes[0]),
		offsetof(struct kv_config, cb_read_bytes));
	setenv("KVSHIM_CB_READ_TOKENS", "off", 1);
	ck_assert_int_eq(kv_config_load(&c), 0);
	ck_assert_uint_eq(c.cb_read_tokens, SIZE_MAX);
	unsetenv("KVSHIM_CB_READ_TOKENS");
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		refused("CB_READ_TOKENS", bad[i]);
	for (i = 0; i < sizeof(why) / sizeof(why[0]); i++)
		refused_because("CB_READ_TOKENS", why[i][0], why[i][1]);
}
END_TEST

/* KVSHIM_CB_KV_PAD (read by the Python adapter): auto or a number of
 * tokens with a K or M suffix; off, which names no padding, and each bad
 * kind refused. */
START_TEST(test_config_cb_kv_pad)
{
	static const char *const good[][2] = {
		{ "auto", "0" }, { "Auto", "0" }, { "16384", "16384" }, { "32k", "32768" },
		{ "1M", "1048576" }, { "1073741824", "1073741824" },
	};
	static const char *const bad[] = {
		"", "off", "none", "lots", "-32768", " 32768", "1.5K", "32KB", "16G", "0",
		"0K", "1073741825", "1025M", "99999999999999999999",
	};
	static const char *const why[][2] = {
		{ "off", "expected auto or a number of tokens" },
		{ "lots", "expected auto or a number of tokens" },
		{ "0", "expected auto or a number of tokens" },
		{ "32KB", "expected auto or a number of tokens" },
		{ "1073741825", "too large (at most 1G tokens)" },
		{ "1025M", "too large (at most 1G tokens)" },
		{ "1073741825x", "too large (at most 1G tokens)" },
	};
	struct kv_config c;
	size_t i;

	ck_assert_int_eq(kv_config_load(&c), 0);
	ck_assert_uint_eq(c.cb_kv_pad, 0);
	read_as("CB_KV_PAD", good, sizeof(good) / sizeof(good[0]),
		offsetof(struct kv_config, cb_kv_pad));
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		refused("CB_KV_PAD", bad[i]);
	/* each refused with its reason, as the Python adapter gives it; never
	 * offering off */
	for (i = 0; i < sizeof(why) / sizeof(why[0]); i++)
		refused_because("CB_KV_PAD", why[i][0], why[i][1]);
}
END_TEST

/* KVSHIM_CB_STARVED_MS (read by the Python adapter): 250 by default, a whole
 * number of milliseconds from 1 to 60000; each bad kind refused with its
 * reason. */
START_TEST(test_config_cb_starved_ms)
{
	static const char *const good[][2] = {
		{ "1", "1" }, { "250", "250" }, { "500", "500" }, { "60000", "60000" },
		{ "0250", "250" },
	};
	static const char *const bad[] = {
		"", "0", "-1", " 250", "250 ", "+250", "2.5", "250ms", "0.5s", "off", "auto",
		"60001", "99999999999999999999",
	};
	static const char *const why[][2] = {
		{ "0", "expected a whole number of milliseconds from 1 to 60000" },
		{ "250ms", "expected a whole number of milliseconds from 1 to 60000" },
		{ "off", "expected a whole number of milliseconds from 1 to 60000" },
		{ "60001", "too large (at most 60000 milliseconds)" },
	};
	struct kv_config c;
	size_t i;

	ck_assert_int_eq(kv_config_load(&c), 0);
	ck_assert_uint_eq(c.cb_starved_ms, 250);
	read_as("CB_STARVED_MS", good, sizeof(good) / sizeof(good[0]),
		offsetof(struct kv_config, cb_starved_ms));
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		refused("CB_STARVED_MS", bad[i]);
	for (i = 0; i < sizeof(why) / sizeof(why[0]); i++)
		refused_because("CB_STARVED_MS", why[i][0], why[i][1]);
}
END_TEST

/* KVSHIM_SHARE_MODE must give the owner read and write (0600 to 0777), as
 * its message says. */
START_TEST(test_config_share_mode_owner)
{
	struct kv_config c;

	refused("SHARE_MODE", "0400");
	refused("SHARE_MODE", "0200");
	refused("SHARE_MODE", "0066");
	refused("SHARE_MODE", "01600");
	refused("SHARE_MODE", "0800");
	setenv("KVSHIM_SHARE_MODE", "0660", 1);
	ck_assert_int_eq(kv_config_load(&c), 0);
	ck_assert_uint_eq(c.share_mode, 0660);
	unsetenv("KVSHIM_SHARE_MODE");
}
END_TEST

/* A control character in a value reaches the log escaped: one line per
 * message, whatever the value holds. */
START_TEST(test_config_log_escapes)
{
	char log[2048], *nl;
	struct kv_config c;

	setenv("KVSHIM_ZERO", "on\nkvshim: error: forged\r\x1b[2J", 1);
	kt_capture_start();
	ck_assert_int_eq(kv_config_load(&c), KVSHIM_ECONFIG);
	kt_capture_end(log, sizeof(log));
	unsetenv("KVSHIM_ZERO");
	ck_assert_msg(strstr(log, "KVSHIM_ZERO=on\\nkvshim: error: forged\\r\\x1b[2J") != NULL,
		      "not escaped: \"%s\"", log);
	nl = strchr(log, '\n');
	ck_assert_ptr_nonnull(nl);
	ck_assert_msg(strchr(nl + 1, '\n') == NULL, "more than one line: \"%s\"", log);
	ck_assert_ptr_null(strchr(log, '\r'));
	ck_assert_ptr_null(strchr(log, '\x1b'));
}
END_TEST

/* The device's memory, as the driver reports it. */
static size_t device_bytes(void)
{
	CUresult (*total_mem)(size_t *, CUdevice);
	size_t total = 0;

	*(void **)&total_mem = kv_dev_sym("cuDeviceTotalMem_v2");
	ck_assert_ptr_nonnull(total_mem);
	ck_assert_int_eq(total_mem(&total, 0), CUDA_SUCCESS);
	return total;
}

/* KVSHIM_LIMIT=value starts kvshim with the limit capped to the device's
 * memory, and says so naming the variable. */
static void limit_capped(const char *value)
{
	char log[4096];
	kv_alloc_t *a = NULL;
	int rc;

	setenv("KVSHIM_LIMIT", value, 1);
	kt_capture_start();
	rc = kv_shim_alloc(&a);
	kt_capture_end(log, sizeof(log));
	ck_assert_msg(rc == 0, "KVSHIM_LIMIT=%s: kvshim not started: %d", value, rc);
	ck_assert_uint_eq(kt_stats(a).limit_bytes, device_bytes());
	ck_assert_msg(strstr(log, "KVSHIM_LIMIT=") && strstr(log, "capped"),
		      "KVSHIM_LIMIT=%s: no message: \"%s\"", value, log);
	kv_shim_shutdown();
	unsetenv("KVSHIM_LIMIT");
}

START_TEST(test_config_limit_100T)
{
	limit_capped("100T");
}
END_TEST

START_TEST(test_config_limit_all_ones)
{
	limit_capped("18446744073709551615");
}
END_TEST

START_TEST(test_config_limit_9000T)
{
	limit_capped("9000T");
}
END_TEST

/* name=value (with other, when not NULL, set to its value first): kvshim
 * is not started, and the message names the variable and its value. */
static void shim_refuses(const char *name, const char *value, const char *other,
			 const char *other_value)
{
	char log[4096], set[64];
	kv_alloc_t *a = NULL;

	if (other)
		setenv(other, other_value, 1);
	setenv(name, value, 1);
	kt_capture_start();
	ck_assert_int_eq(kv_shim_alloc(&a), KVSHIM_ECONFIG);
	kt_capture_end(log, sizeof(log));
	ck_assert_ptr_null(a);
	snprintf(set, sizeof(set), "%s=%s", name, value);
	ck_assert_msg(strstr(log, set) != NULL, "no message naming %s: \"%s\"", set, log);
	kv_shim_shutdown();
	unsetenv(name);
	if (other)
		unsetenv(other);
}

/* KVSHIM_PAGE larger than the device: kvshim is not started, and the
 * message names the variable (with KVSHIM_STRICT: exit 64). */
START_TEST(test_config_page_too_big)
{
	shim_refuses("KVSHIM_PAGE", "1T", NULL, NULL);
}
END_TEST

START_TEST(test_config_page_too_big_strict)
{
	kv_alloc_t *a;

	setenv("KVSHIM_STRICT", "1", 1);
	setenv("KVSHIM_PAGE", "1T", 1);
	kv_shim_alloc(&a);
}
END_TEST

/* KVSHIM_DEVICE naming a device the driver does not have. */
START_TEST(test_config_no_such_device)
{
	shim_refuses("KVSHIM_DEVICE", "7", NULL, NULL);
}
END_TEST

/* KVSHIM_LIMIT under one page: every map would fail; refused instead. */
START_TEST(test_config_limit_under_a_page)
{
	shim_refuses("KVSHIM_LIMIT", "1K", NULL, NULL);
}
END_TEST

/* With sharing off, the budget's variables mean nothing: kvshim starts
 * whatever they say. */
static void shim_starts_alone(const char *name, const char *value)
{
	kv_alloc_t *a = NULL;

	setenv(name, value, 1);
	ck_assert_int_eq(kv_shim_alloc(&a), 0);
	ck_assert_ptr_nonnull(a);
	kv_shim_shutdown();
	unsetenv(name);
}

/* Sharing a budget, a budget or a ceiling under one page: every map
 * would fail; refused. */
START_TEST(test_config_budget_under_a_page)
{
	/* (the default, auto) */
	unsetenv("KVSHIM_SHARE");
	shim_refuses("KVSHIM_BUDGET", "1K", NULL, NULL);
	shim_refuses("KVSHIM_MAX", "1K", NULL, NULL);
	setenv("KVSHIM_SHARE", "off", 1);
	shim_starts_alone("KVSHIM_BUDGET", "1K");
	shim_starts_alone("KVSHIM_MAX", "1K");
	unsetenv("KVSHIM_SHARE");
}
END_TEST

/* Sharing a budget, a floor over it would keep every other process out:
 * refused, whether the budget is in bytes or a share of the device; a
 * floor at the budget is taken. */
START_TEST(test_config_floor_over_budget)
{
	kv_alloc_t *a = NULL;

	setenv("KVSHIM_SHARE", "auto", 1);
	shim_refuses("KVSHIM_MIN", "128M", "KVSHIM_BUDGET", "64M");
	shim_refuses("KVSHIM_MIN", "3G", "KVSHIM_BUDGET", "50%");
	setenv("KVSHIM_BUDGET", "64M", 1);
	setenv("KVSHIM_MIN", "64M", 1);
	ck_assert_int_eq(kv_shim_alloc(&a), 0);
	kv_shim_shutdown();
	unsetenv("KVSHIM_BUDGET");
	setenv("KVSHIM_SHARE", "off", 1);
	shim_starts_alone("KVSHIM_MIN", "128G");
	unsetenv("KVSHIM_SHARE");
}
END_TEST

/* The README's table lists every variable with its default. */
START_TEST(test_readme_table)
{
	const char *dir = getenv("srcdir");
	char path[4096], row[256], *text;
	size_t i, n;
	FILE *f;

	snprintf(path, sizeof(path), "%s/README.md", dir ? dir : ".");
	f = fopen(path, "r");
	ck_assert_msg(f != NULL, "cannot read %s", path);
	text = calloc(1, 1 << 20);
	n = fread(text, 1, (1 << 20) - 1, f);
	fclose(f);
	ck_assert_uint_gt(n, 0);
	for (i = 0; i < kv_config_nvars; i++) {
		snprintf(row, sizeof(row), "| `KVSHIM_%s` | `%s` |",
			 kv_config_vars[i].name, kv_config_vars[i].def);
		ck_assert_msg(strstr(text, row) != NULL,
			      "README.md has no row starting \"%s\"", row);
	}
	free(text);
}
END_TEST

Suite *api_suite(void)
{
	Suite *s = suite_create("api");
	TCase *abi = tcase_create("abi");
	TCase *cfg = tcase_create("config");

	tcase_add_test(abi, test_abi_round_trip);
	tcase_add_test(abi, test_abi_bad_input);
	tcase_add_test(abi, test_abi_dlpack);
	tcase_add_test(abi, test_abi_dlpack_bad);
	tcase_add_test(abi, test_strerror);
	suite_add_tcase(s, abi);

	tcase_add_test(cfg, test_parse_size);
	tcase_add_test(cfg, test_parse_size_bad);
	tcase_add_test(cfg, test_parse_bool);
	tcase_add_test(cfg, test_config_defaults);
	kt_add_exit(cfg, test_config_values, 0);
	kt_add_exit(cfg, test_config_bad_values, 0);
	kt_add_exit(cfg, test_bad_config_disables, 0);
	kt_add_exit(cfg, test_bad_config_strict_exits, 64);
	tcase_add_test(cfg, test_shim_starts);
	kt_add_exit(cfg, test_config_number_sign_space, 0);
	kt_add_exit(cfg, test_config_size_overflow, 0);
	kt_add_exit(cfg, test_config_devices, 0);
	kt_add_exit(cfg, test_config_devices_bad, 0);
	kt_add_exit(cfg, test_config_share_mode_owner, 0);
	kt_add_exit(cfg, test_config_cb_read_tokens, 0);
	kt_add_exit(cfg, test_config_cb_kv_pad, 0);
	kt_add_exit(cfg, test_config_cb_starved_ms, 0);
	kt_add_exit(cfg, test_config_log_escapes, 0);
	kt_add_exit(cfg, test_config_limit_100T, 0);
	kt_add_exit(cfg, test_config_limit_all_ones, 0);
	kt_add_exit(cfg, test_config_limit_9000T, 0);
	kt_add_exit(cfg, test_config_page_too_big, 0);
	kt_add_exit(cfg, test_config_page_too_big_strict, 64);
	kt_add_exit(cfg, test_config_no_such_device, 0);
	kt_add_exit(cfg, test_config_limit_under_a_page, 0);
	kt_add_exit(cfg, test_config_budget_under_a_page, 0);
	kt_add_exit(cfg, test_config_floor_over_budget, 0);
	tcase_add_test(cfg, test_readme_table);
	suite_add_tcase(s, cfg);
	return s;
}
