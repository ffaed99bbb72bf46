/*
 * test_preload.c - unmodified CUDA programs (tests/preload/prog, built four
 * ways) run with LD_PRELOAD=libkvshim.so, or loading it late, on the CPU
 * emulation. Each case is a process of its own: what the shim does to a
 * program is seen from outside, by its exit status.
 */
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "suites.h"

extern char **environ;

/*
 * What a child wrote to stderr, from file f, into out (len bytes, NUL
 * ended): all of it if it fits; else its "FAIL file:line: what" lines
 * first (what the test needs to see), then as much of its end as fits.
 * Everything is also copied to this process's stderr, into the test log.
 */
static void collect(FILE *f, char *out, size_t len)
{
	size_t n, used = 0, tail, ll;
	char *all, *line, *nl;
	long end;

	out[0] = '\0';
	if (fseek(f, 0, SEEK_END) || (end = ftell(f)) <= 0 || fseek(f, 0, SEEK_SET))
		return;
	all = malloc((size_t)end + 1);
	if (!all)
		return;
	n = fread(all, 1, (size_t)end, f);
	all[n] = '\0';
	fwrite(all, 1, n, stderr);
	if (n < len) {
		memcpy(out, all, n + 1);
		free(all);
		return;
	}
	for (line = all; line < all + n; line = nl + 1) {
		nl = memchr(line, '\n', (size_t)(all + n - line));
		if (!nl)
			nl = all + n;
		ll = (size_t)(nl - line);
		if (!strncmp(line, "FAIL ", 5) && used + ll + 2 < len / 2) {
			memcpy(out + used, line, ll);
			used += ll;
			out[used++] = '\n';
		}
	}
	tail = len - used - 7;
	memcpy(out + used, "[...]\n", 6);
	memcpy(out + used + 6, all + n - tail, tail);
	out[used + 6 + tail] = '\0';
	free(all);
}

/* Run prog CASE with extra environment (NULL-terminated "K=V" list) and
 * LD_PRELOAD set to libkvshim.so when preload is set; its exit status, with
 * what it wrote to stderr in out (see collect). */
static int run_out(const char *prog, const char *test, int preload,
		   const char *const *extra, char *out, size_t len)
{
	char *argv[] = { (char *)prog, (char *)test, NULL };
	char preload_var[PATH_MAX + 16], user_var[PATH_MAX + 16], real[PATH_MAX];
	char lib_var[PATH_MAX + 16], pool_var[80];
	static unsigned runs;
	const char *lib = getenv("KVSHIM_LIB");
	posix_spawn_file_actions_t fa;
	char **env;
	size_t n = 0, i, k = 0;
	FILE *err;
	pid_t pid;
	int st;

	ck_assert_ptr_nonnull(lib);
	while (environ[n])
		n++;
	env = calloc(n + 16, sizeof(*env));
	ck_assert_ptr_nonnull(env);
	/* the extra variables first: getenv finds the first of a name */
	for (i = 0; extra && extra[i]; i++)
		env[k++] = (char *)extra[i];
	/* sharing may be on (KVSHIM_SHARE): each program gets a pool of its
	 * own, in the runner's (never the GPU's real segment, nor a budget
	 * shared with an allocator this process keeps, as it does without
	 * forking) */
	snprintf(pool_var, sizeof(pool_var), "KVSHIM_POOL=%s-%u",
		 getenv("KVSHIM_POOL") ? getenv("KVSHIM_POOL") : "t", runs++);
	env[k++] = pool_var;
	for (i = 0; i < n; i++)
		if (strncmp(environ[i], "LD_PRELOAD=", 11) &&
		    strncmp(environ[i], "KVSHIM_", 7))
			env[k++] = environ[i];
	snprintf(lib_var, sizeof(lib_var), "KVSHIM_LIB=%s", lib);
	env[k++] = lib_var;
	if (preload) {
		snprintf(preload_var, sizeof(preload_var), "LD_PRELOAD=%s", lib);
		env[k++] = preload_var;
	}
	ck_assert_ptr_nonnull(realpath("tests/preload/libkvuser.so", real));
	snprintf(user_var, sizeof(user_var), "KVUSER_LIB=%s", real);
	env[k++] = user_var;
	env[k] = NULL;
	/* the child's stderr goes to a file (a pipe could fill while we wait) */
	err = tmpfile();
	ck_assert_ptr_nonnull(err);
	ck_assert_int_eq(posix_spawn_file_actions_init(&fa), 0);
	ck_assert_int_eq(posix_spawn_file_actions_adddup2(&fa, fileno(err), 2), 0);
	ck_assert_int_eq(posix_spawn(&pid, prog, &fa, NULL, argv, env), 0);
	posix_spawn_file_actions_destroy(&fa);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	free(env);
	collect(err, out, len);
	fclose(err);
	ck_assert_msg(WIFEXITED(st), "%s %s died with signal %d; its stderr:\n%s",
		      prog, test, WIFSIGNALED(st) ? WTERMSIG(st) : 0, out);
	return WEXITSTATUS(st);
}

#define PROG "tests/preload/prog"

/* Run a case and check its exit status; on a mismatch the message carries
 * the child's failing lines. */
static void expect_exit(const char *prog, const char *test, int preload,
			const char *const *extra, int code)
{
	char out[4096];
	int st = run_out(prog, test, preload, extra, out, sizeof(out));

	ck_assert_msg(st == code, "%s %s exited %d, not %d; its stderr:\n%s",
		      prog, test, st, code, out);
}

static void expect_pass(const char *prog, const char *test, int preload,
			const char *const *extra)
{
	expect_exit(prog, test, preload, extra, 0);
}

/* A child's failed expectation reaches the parent with its file and line:
 * the "expect-fails" case fails one on purpose. */
START_TEST(test_child_failure_reported)
{
	char out[4096] = "";
	int st = run_out(PROG, "expect-fails", 1, NULL, out, sizeof(out));

	ck_assert_int_eq(st, 1);
	ck_assert_msg(strstr(out, "FAIL ") && strstr(out, "prog.c:") &&
		      strstr(out, "1 + 1 == 3"),
		      "the child's failure did not come back: \"%s\"", out);
}
END_TEST

START_TEST(test_window)
{
	expect_pass(PROG, "window", 1, NULL);
}
END_TEST

START_TEST(test_memset_memcpy)
{
	expect_pass(PROG, "memset-memcpy", 1, NULL);
}
END_TEST

START_TEST(test_memset_bounds)
{
	expect_pass(PROG, "memset-bounds", 1, NULL);
}
END_TEST

START_TEST(test_memset_2d)
{
	expect_pass(PROG, "memset-2d", 1, NULL);
}
END_TEST

START_TEST(test_memcpy_2d)
{
	expect_pass(PROG, "memcpy-2d", 1, NULL);
}
END_TEST

START_TEST(test_size_policy)
{
	static const char *const env[] = { "KVSHIM_MIN_BYTES=32M", NULL };

	expect_pass(PROG, "size-policy", 1, env);
}
END_TEST

START_TEST(test_meminfo_virtual)
{
	expect_pass(PROG, "meminfo", 1, NULL);
}
END_TEST

START_TEST(test_meminfo_real)
{
	static const char *const env[] = { "KVSHIM_MEMINFO=real", NULL };

	expect_pass(PROG, "meminfo", 1, env);
}
END_TEST

/* "KVSHIM_POOL=" a pool of this test's own, named under the runner's (whose
 * segments the runner removes at its end), into var (len bytes). */
static void own_pool(char *var, size_t len, const char *what)
{
	snprintf(var, len, "KVSHIM_POOL=%s-%s%d",
		 getenv("KVSHIM_POOL") ? getenv("KVSHIM_POOL") : "t", what, (int)getpid());
}

/* Run a sharing case of prog with KVSHIM_SHARE=share and a 256 MiB budget,
 * in a pool of its own; it must pass. */
static void expect_pass_shared(const char *test, const char *share)
{
	char pool[80], var[32];
	const char *env[] = { var, "KVSHIM_BUDGET=256M", pool, NULL };

	snprintf(var, sizeof(var), "KVSHIM_SHARE=%s", share);
	own_pool(pool, sizeof(pool), share);
	expect_pass(PROG, test, 1, env);
}

START_TEST(test_meminfo_share)
{
	expect_pass_shared("meminfo-share", "on");
}
END_TEST

/* KVSHIM_SHARE=auto: memory info alone registers nothing; a KV span does,
 * and from then on memory info shows the budget. */
START_TEST(test_share_auto)
{
	expect_pass_shared("share-auto", "auto");
}
END_TEST

/* KVSHIM_SHARE=auto alone, with the default budget (the device's memory):
 * memory info is what it is without sharing, before a KV span and with
 * one, to the byte, and the process did register. */
START_TEST(test_share_auto_alone_same)
{
	char pool[80], off[4096], on[4096];
	const char *env_off[] = { "KVSHIM_SHARE=off", "KVSHIM_POOL_LOW=0", "KVSHIM_POOL_HIGH=0",
				  pool, NULL };
	const char *env_auto[] = { "KVSHIM_SHARE=auto", "KVSHIM_POOL_LOW=0", "KVSHIM_POOL_HIGH=0",
				   pool, NULL };
	const char *a, *b;
	int st;

	own_pool(pool, sizeof(pool), "same");
	st = run_out(PROG, "meminfo-print", 1, env_off, off, sizeof(off));
	ck_assert_msg(st == 0, "meminfo-print, sharing off, exited %d:\n%s", st, off);
	st = run_out(PROG, "meminfo-print", 1, env_auto, on, sizeof(on));
	ck_assert_msg(st == 0, "meminfo-print, sharing auto, exited %d:\n%s", st, on);
	a = strstr(off, "meminfo: ");
	b = strstr(on, "meminfo: ");
	ck_assert_msg(a && b, "no figures printed: \"%s\" / \"%s\"", off, on);
	ck_assert_msg(strstr(a, "segments 0\n") && strstr(b, "segments 1\n"),
		      "registered off or not with auto: \"%s\" / \"%s\"", a, b);
	ck_assert_msg(!strncmp(a, b, (size_t)(strstr(a, ", segments") - a)),
		      "memory info differs alone under auto: \"%s\" against off's \"%s\"", b, a);
}
END_TEST

START_TEST(test_entry_point)
{
	expect_pass(PROG, "entry-point", 1, NULL);
}
END_TEST

START_TEST(test_dlsym_road)
{
	expect_pass(PROG, "dlsym-road", 1, NULL);
}
END_TEST

START_TEST(test_threads)
{
	expect_pass(PROG, "threads", 1, NULL);
}
END_TEST

/* cudaFreeAsync of a span kvshim made for a cudaMalloc releases it */
START_TEST(test_free_async_span)
{
	expect_pass(PROG, "free-async", 1, NULL);
}
END_TEST

/* the main program's dlsym(RTLD_NEXT), once kvshim is loaded late */
START_TEST(test_late_rtld_next)
{
	expect_pass(PROG, "late-next", 0, NULL);
}
END_TEST

START_TEST(test_fork)
{
	expect_pass(PROG, "fork", 1, NULL);
}
END_TEST

START_TEST(test_ctor)
{
	static const char *const env[] = { "KVTEST_CTOR=1", NULL };

	expect_pass(PROG, "ctor", 1, env);
}
END_TEST

START_TEST(test_exec)
{
	expect_pass(PROG, "exec", 1, NULL);
}
END_TEST

START_TEST(test_deepbind)
{
	expect_pass(PROG, "deepbind", 1, NULL);
}
END_TEST

/* cudaSetDevice(1), then a KV-sized buffer in a window: a lazy span on
 * device 1 (needs two devices: make check emulates two). */
START_TEST(test_set_device)
{
	expect_pass(PROG, "set-device", 1, NULL);
}
END_TEST

/* The same worker with KVSHIM_DEVICE=0: its buffer passes through. */
START_TEST(test_set_device_filtered)
{
	static const char *const env[] = { "KVSHIM_DEVICE=0", NULL };

	expect_pass(PROG, "set-device-filtered", 1, env);
}
END_TEST

/* A malformed variable: the program runs untouched; with KVSHIM_STRICT it
 * is stopped with status 64 at kvshim's first use. */
START_TEST(test_bad_config)
{
	static const char *const env[] = { "KVSHIM_ZERO=perhaps", NULL };
	static const char *const strict[] = {
		"KVSHIM_ZERO=perhaps", "KVSHIM_STRICT=1", NULL
	};

	expect_pass(PROG, "bad-config", 1, env);
	expect_exit(PROG, "window", 1, strict, 64);
}
END_TEST

/* Loaded late with dlopen: the GOT of every kind of binary is patched. */
START_TEST(test_late_attach)
{
	static const char *const progs[] = {
		PROG, PROG "-now", PROG "-noplt", PROG "-nopie"
	};

	expect_pass(progs[_i], "late", 0, NULL);
}
END_TEST

/* Loaded late, started, then dlclose'd: the library stays loaded and the
 * program's CUDA calls keep reaching it (no crash, from them or from the
 * worker thread). */
START_TEST(test_dlclose)
{
	expect_pass(PROG, "dlclose", 0, NULL);
}
END_TEST

/* A module's constructor makes runtime calls while another thread's
 * runtime look-up waits for the loader: neither its calls (call) nor a
 * child it forks (fork) hang. */
static void ctor_lookup(const char *mode)
{
	char lib[PATH_MAX + 16], real[PATH_MAX], kvctor[32];
	const char *env[] = { kvctor, lib, NULL };

	ck_assert_ptr_nonnull(realpath("tests/preload/libkvctor.so", real));
	snprintf(lib, sizeof(lib), "KVCTOR_LIB=%s", real);
	snprintf(kvctor, sizeof(kvctor), "KVCTOR=%s", mode);
	expect_pass(PROG, "ctor-lookup", 1, env);
}

START_TEST(test_ctor_lookup)
{
	ctor_lookup("call");
}
END_TEST

START_TEST(test_ctor_lookup_fork)
{
	ctor_lookup("fork");
}
END_TEST

/* A fork while another thread's sweep holds kvshim's patching locks: the
 * child's sweep does not hang. */
START_TEST(test_fork_sweep)
{
	expect_pass(PROG, "fork-sweep", 1, NULL);
}
END_TEST

Suite *preload_suite(void)
{
	Suite *s = suite_create("preload");
	TCase *tc = tcase_create("ld-preload");
	TCase *late = tcase_create("late-attach");

	tcase_set_timeout(tc, 60);
	kt_add_emu(tc, test_child_failure_reported);
	kt_add_emu(tc, test_window);
	kt_add_emu(tc, test_memset_memcpy);
	kt_add_emu(tc, test_memset_bounds);
	kt_add_emu(tc, test_memset_2d);
	kt_add_emu(tc, test_memcpy_2d);
	kt_add_emu(tc, test_size_policy);
	kt_add_emu(tc, test_meminfo_virtual);
	kt_add_emu(tc, test_meminfo_real);
	kt_add_emu(tc, test_meminfo_share);
	kt_add_emu(tc, test_share_auto);
	kt_add_emu(tc, test_share_auto_alone_same);
	kt_add_emu(tc, test_entry_point);
	kt_add_emu(tc, test_dlsym_road);
	kt_add_emu(tc, test_threads);
	kt_add_emu(tc, test_fork);
	kt_add_emu(tc, test_free_async_span);
	kt_add_emu(tc, test_ctor);
	kt_add_emu(tc, test_exec);
	kt_add_emu(tc, test_deepbind);
	kt_add_emu(tc, test_bad_config);
	kt_add_emu(tc, test_set_device);
	kt_add_emu(tc, test_set_device_filtered);
	kt_add_emu(tc, test_ctor_lookup);
	kt_add_emu(tc, test_ctor_lookup_fork);
	kt_add_emu(tc, test_fork_sweep);
	suite_add_tcase(s, tc);
	tcase_set_timeout(late, 60);
	if (kv_dev_is_emu()) {
		tcase_add_loop_test(late, test_late_attach, 0, 4);
		tcase_add_test(late, test_dlclose);
		tcase_add_test(late, test_late_rtld_next);
	}
	suite_add_tcase(s, late);
	return s;
}
