/*
 * test_prim.c - the primitive layer against the driver: set-up, the VMM
 * calls' contracts and how driver errors come back as kvshim errors.
 */
#include <string.h>

#include "log.h"
#include "prim.h"
#include "share_util.h"
#include "suites.h"

static kv_prim_t p;

static void open_prim(void)
{
	ck_assert_int_eq(kv_prim_open(&p, 0, 0), 0);
}

static void close_prim(void)
{
	kv_prim_close(&p);
}

START_TEST(test_open_reads_device)
{
	size_t free_b = 0, total = 0;

	ck_assert_uint_eq(p.page, PG);
	ck_assert_uint_gt(p.device_bytes, 0);
	ck_assert_int_eq(kv_prim_meminfo(&p, &free_b, &total), 0);
	ck_assert_uint_eq(total, p.device_bytes);
	ck_assert_uint_le(free_b, total);
}
END_TEST

START_TEST(test_open_bad_ordinal)
{
	kv_prim_t q;

	ck_assert_int_eq(kv_prim_open(&q, 999, 0), KVSHIM_ENODEV);
	kv_prim_close(&q);
	ck_assert_int_eq(kv_prim_open(&q, 0, PG + PG / 2), KVSHIM_EINVAL);
	kv_prim_close(&q);
}
END_TEST

START_TEST(test_reserve_bad_size)
{
	CUdeviceptr va = 0;

	ck_assert_int_eq(kv_prim_reserve(&p, 0, &va), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_prim_reserve(&p, PG + 4096, &va), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_prim_reserve(&p, 1, &va), KVSHIM_EINVAL);
	ck_assert_uint_eq(va, 0);
}
END_TEST

/* The whole round trip a page makes, with a kernel writing and reading it. */
START_TEST(test_page_round_trip)
{
	CUmemGenericAllocationHandle h[2];
	unsigned long long bad = 1;
	CUdeviceptr va;

	ck_assert_int_eq(kv_prim_reserve(&p, 2 * PG, &va), 0);
	ck_assert_uint_eq(va % PG, 0);
	ck_assert_int_eq(kv_prim_create(&p, &h[0]), 0);
	ck_assert_int_eq(kv_prim_create(&p, &h[1]), 0);
	ck_assert_int_eq(kv_prim_map(&p, va, h[0]), 0);
	ck_assert_int_eq(kv_prim_map(&p, va + PG, h[1]), 0);
	ck_assert_int_eq(kv_prim_access(&p, va, 2 * PG), 0);
	ck_assert_int_eq(kv_dev_fill(va, 2 * PG, 7), CUDA_SUCCESS);
	ck_assert_int_eq(kv_dev_check(va, 2 * PG, 7, &bad), CUDA_SUCCESS);
	ck_assert_uint_eq(bad, 0);
	ck_assert_int_eq(kv_prim_zero(&p, va + PG, PG), 0);
	ck_assert_int_eq(kv_dev_check(va, PG, 7, &bad), CUDA_SUCCESS);
	ck_assert_uint_eq(bad, 0);
	ck_assert_int_eq(kv_dev_check(va + PG, PG, 7, &bad), CUDA_SUCCESS);
	ck_assert_uint_eq(bad, PG / 4);
	ck_assert_int_eq(kv_prim_unmap(&p, va, 2 * PG), 0);
	ck_assert_int_eq(kv_prim_release(&p, h[0]), 0);
	ck_assert_int_eq(kv_prim_release(&p, h[1]), 0);
	ck_assert_int_eq(kv_prim_unreserve(&p, va, 2 * PG), 0);
}
END_TEST

/* One physical page seen at two addresses: what the scrub arena relies on. */
START_TEST(test_page_two_addresses)
{
	CUmemGenericAllocationHandle h;
	unsigned long long bad = 1;
	CUdeviceptr va, vb;

	ck_assert_int_eq(kv_prim_reserve(&p, PG, &va), 0);
	ck_assert_int_eq(kv_prim_reserve(&p, PG, &vb), 0);
	ck_assert_int_eq(kv_prim_create(&p, &h), 0);
	ck_assert_int_eq(kv_prim_map(&p, va, h), 0);
	ck_assert_int_eq(kv_prim_map(&p, vb, h), 0);
	ck_assert_int_eq(kv_prim_access(&p, va, PG), 0);
	ck_assert_int_eq(kv_prim_access(&p, vb, PG), 0);
	ck_assert_int_eq(kv_dev_fill(va, PG, 11), CUDA_SUCCESS);
	ck_assert_int_eq(kv_dev_check(vb, PG, 11, &bad), CUDA_SUCCESS);
	ck_assert_uint_eq(bad, 0);
	ck_assert_int_eq(kv_prim_zero(&p, vb, PG), 0);
	ck_assert_int_eq(kv_dev_check(va, PG, 11, &bad), CUDA_SUCCESS);
	ck_assert_uint_eq(bad, PG / 4);
	ck_assert_int_eq(kv_prim_unmap(&p, va, PG), 0);
	ck_assert_int_eq(kv_prim_unmap(&p, vb, PG), 0);
	ck_assert_int_eq(kv_prim_release(&p, h), 0);
	ck_assert_int_eq(kv_prim_unreserve(&p, va, PG), 0);
	ck_assert_int_eq(kv_prim_unreserve(&p, vb, PG), 0);
}
END_TEST

START_TEST(test_driver_oom_is_enomem)
{
	CUmemGenericAllocationHandle h;

	ck_assert_int_eq(kv_dev_fail_nth("cuMemCreate", 1, CUDA_ERROR_OUT_OF_MEMORY), 0);
	ck_assert_int_eq(kv_prim_create(&p, &h), KVSHIM_ENOMEM);
}
END_TEST

START_TEST(test_driver_error_is_edriver)
{
	CUdeviceptr va;

	ck_assert_int_eq(kv_dev_fail_nth("cuMemAddressReserve", 1, CUDA_ERROR_UNKNOWN), 0);
	ck_assert_int_eq(kv_prim_reserve(&p, PG, &va), KVSHIM_EDRIVER);
}
END_TEST

/*
 * What a failed cuMemAddressReserve, failing with err, writes to stderr
 * (at most n - 1 bytes into buf), at log level at; its answer is checked
 * once stderr is back.
 */
static void reserve_fails_saying(CUresult err, int at, char *buf, size_t n)
{
	int level = kv_log_get_level(), rc;
	CUdeviceptr va;

	ck_assert_int_eq(kv_dev_fail_nth("cuMemAddressReserve", 1, err), 0);
	kv_log_set_level(at);
	kt_capture_start();
	rc = kv_prim_reserve(&p, PG, &va);
	kt_capture_end(buf, n);
	kv_log_set_level(level);
	ck_assert_int_eq(rc, KVSHIM_EDRIVER);
}

/* A driver shutting down (the process exiting) is an error code, and no
 * error line: the driver releases everything itself. */
START_TEST(test_driver_shutting_down_is_quiet)
{
	char said[512];

	reserve_fails_saying(CUDA_ERROR_DEINITIALIZED, KV_LOG_WARN, said, sizeof(said));
	ck_assert_msg(said[0] == '\0', "the driver shutting down logged: %s", said);
	reserve_fails_saying(CUDA_ERROR_DEINITIALIZED, KV_LOG_DEBUG, said, sizeof(said));
	ck_assert_msg(strstr(said, "kvshim: debug: cuMemAddressReserve: the CUDA driver is "
				"shutting down"), "at debug level: %s", said);
	reserve_fails_saying(CUDA_ERROR_UNKNOWN, KV_LOG_WARN, said, sizeof(said));
	ck_assert_msg(strstr(said, "kvshim: error: cuMemAddressReserve failed: "),
		      "another driver error logged: %s", said);
	ck_assert_msg(strstr(said, "(999)"), "no CUresult number in: %s", said);
}
END_TEST

/* A driver that says out of memory really runs out: create until it does. */
START_TEST(test_device_fills_up)
{
	size_t n = p.device_bytes / PG + 1, i, made = 0;
	CUmemGenericAllocationHandle *h = calloc(n, sizeof(*h));
	int rc = 0;

	ck_assert_ptr_nonnull(h);
	for (i = 0; i < n; i++) {
		rc = kv_prim_create(&p, &h[i]);
		if (rc)
			break;
		made++;
	}
	ck_assert_int_eq(rc, KVSHIM_ENOMEM);
	ck_assert_uint_lt(made, n);
	for (i = 0; i < made; i++)
		ck_assert_int_eq(kv_prim_release(&p, h[i]), 0);
	free(h);
}
END_TEST

Suite *prim_suite(void)
{
	Suite *s = suite_create("prim");
	TCase *tc = tcase_create("driver");

	tcase_add_checked_fixture(tc, open_prim, close_prim);
	tcase_add_test(tc, test_open_reads_device);
	tcase_add_test(tc, test_open_bad_ordinal);
	tcase_add_test(tc, test_reserve_bad_size);
	tcase_add_test(tc, test_page_round_trip);
	tcase_add_test(tc, test_page_two_addresses);
	kt_add_emu(tc, test_driver_oom_is_enomem);
	kt_add_emu(tc, test_driver_error_is_edriver);
	kt_add_emu(tc, test_driver_shutting_down_is_quiet);
	kt_add_emu(tc, test_device_fills_up);
	suite_add_tcase(s, tc);
	return s;
}
