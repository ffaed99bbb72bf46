/*
 * test_got.c - GOT patching (hooks/got.c) on caller libraries built every
 * way a module reaches an imported function: lazy and immediate binding,
 * with and without RELRO, -fno-plt, -Bsymbolic, loaded with RTLD_DEEPBIND,
 * loaded after a first patching pass, and PIE and non-PIE main programs.
 *
 * The helper objects are in tests/got under the build directory (the cwd
 * under make check); KVSHIM_TEST_GOT_DIR names another place. Every test
 * puts the slots back as it found them, so the suite also runs in one
 * process (CK_FORK=no, as under valgrind).
 */
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "got.h"
#include "log.h"
#include "pages.h"
#include "suites.h"

typedef int (*fn_t)(int);

/* the objects that must never be patched in this process: the real
 * implementation and the loader */
static const char *const skip_target[] = { "libgottarget", "ld-linux", NULL };

static int hook1(int x)
{
	return x + 1000;
}

static int hook2(int x)
{
	return x + 2000;
}

static const char *dir(void)
{
	const char *d = getenv("KVSHIM_TEST_GOT_DIR");

	return d && *d ? d : "tests/got";
}

/* dlopen and exec take a relative path with a slash from the cwd */
static void path_of(char *buf, size_t len, const char *file)
{
	const char *d = dir();

	snprintf(buf, len, "%s%s/%s", d[0] == '/' || d[0] == '.' ? "" : "./", d, file);
}

/* A loaded caller library and what the tests reach through it. */
struct caller {
	void *h;
	struct link_map *lm;
	fn_t call, call2, table;
};

static void open_caller(struct caller *c, const char *lib, int flags)
{
	char path[4096];

	path_of(path, sizeof(path), lib);
	c->h = dlopen(path, flags);
	ck_assert_msg(c->h != NULL, "dlopen %s: %s", path, dlerror());
	ck_assert_int_eq(dlinfo(c->h, RTLD_DI_LINKMAP, &c->lm), 0);
	c->call = (fn_t)dlsym(c->h, "kvgot_call");
	c->call2 = (fn_t)dlsym(c->h, "kvgot_call2");
	c->table = (fn_t)dlsym(c->h, "kvgot_call_table");
	ck_assert(c->call && c->call2 && c->table);
}

/* The target library, loaded before any caller: each caller's DT_NEEDED
 * then finds it by soname, without a search through its $ORIGIN rpath
 * (where valgrind reports the loader's own string reads). */
static void *target;

static void open_target(void)
{
	char path[4096];

	path_of(path, sizeof(path), "libgottarget.so");
	target = dlopen(path, RTLD_NOW);
	ck_assert_msg(target != NULL, "dlopen %s: %s", path, dlerror());
}

static void close_target(void)
{
	dlclose(target);
	target = NULL;
}

/* The real functions. */
static fn_t real(const char *name)
{
	fn_t f = (fn_t)dlsym(target, name);

	ck_assert(f != NULL);
	return f;
}

/* Put every slot back on the real functions. */
static void restore_all(void)
{
	struct kv_got_hook h[2] = {
		{ "kvgot_target", (void *)real("kvgot_target"), NULL },
		{ "kvgot_target2", (void *)real("kvgot_target2"), NULL },
	};

	ck_assert_int_ge(kv_got_patch_all((void *)restore_all, skip_target, h, 2), 0);
}

static void close_caller(struct caller *c)
{
	restore_all();
	ck_assert_int_eq(c->call(1), 2);
	ck_assert_int_eq(c->table(1), 2);
	ck_assert_int_eq(c->call2(1), 3);
	dlclose(c->h);
}

/*
 * The walk every caller variant goes through: patch the object, see calls
 * reach the hook, the original recorded, the pages as they were; patch
 * again and see nothing change. relro: the object must hold read-only
 * pages (the slots written lie in them). lazy: kvgot_call2 is not called
 * before patching, so its slot may still hold the PLT stub.
 */
static void check_caller(const char *lib, int flags, int relro, int lazy)
{
	struct caller c;
	struct kt_got_pages before, after;
	void *orig = NULL, *orig2 = NULL;
	struct kv_got_hook h[2] = {
		{ "kvgot_target", (void *)hook1, &orig },
		{ "kvgot_target2", (void *)hook2, &orig2 },
	};

	open_caller(&c, lib, flags);
	ck_assert_int_eq(c.call(1), 2);
	ck_assert_int_eq(c.table(1), 2);
	ck_assert_int_eq(kt_got_pages(c.lm->l_addr, &before), 0);
	if (relro)
		ck_assert_uint_gt(kt_got_pages_readonly(&before), 0);

	/* the call slot and the table's pointer; kvgot_target2's slot */
	ck_assert_int_eq(kv_got_patch_object(c.lm->l_name, c.lm->l_addr, h, 2), 3);
	ck_assert_int_eq(c.call(1), 1001);
	ck_assert_int_eq(c.table(1), 1001);
	ck_assert_int_eq(c.call2(1), 2001);
	ck_assert_ptr_eq(orig, (void *)real("kvgot_target"));
	ck_assert_int_eq(((fn_t)orig)(1), 2);
	/* an unresolved lazy slot holds a PLT stub, never recorded */
	if (lazy && !getenv("LD_BIND_NOW"))
		ck_assert_ptr_null(orig2);
	else
		ck_assert_ptr_eq(orig2, (void *)real("kvgot_target2"));
	ck_assert_int_eq(kt_got_pages(c.lm->l_addr, &after), 0);
	ck_assert_msg(kt_got_pages_equal(&before, &after),
		      "page protections of %s changed", lib);

	/* idempotent: nothing written, our hook never taken as original */
	ck_assert_int_eq(kv_got_patch_object(c.lm->l_name, c.lm->l_addr, h, 2), 0);
	ck_assert_int_eq(kv_got_patch_all((void *)check_caller, skip_target, h, 2), 0);
	ck_assert_ptr_eq(orig, (void *)real("kvgot_target"));
	ck_assert_int_eq(c.call(1), 1001);
	ck_assert_int_eq(c.table(1), 1001);
	ck_assert_int_eq(kt_got_pages(c.lm->l_addr, &after), 0);
	ck_assert(kt_got_pages_equal(&before, &after));
	close_caller(&c);
}

START_TEST(test_lazy_partial_relro)
{
	check_caller("libgotcall_lazy.so", RTLD_LAZY, 1, 1);
}
END_TEST

START_TEST(test_lazy_no_relro)
{
	check_caller("libgotcall_norelro.so", RTLD_LAZY, 0, 1);
}
END_TEST

START_TEST(test_full_relro)
{
	check_caller("libgotcall_now.so", RTLD_NOW, 1, 0);
}
END_TEST

START_TEST(test_no_plt)
{
	check_caller("libgotcall_noplt.so", RTLD_NOW, 1, 0);
}
END_TEST

START_TEST(test_bsymbolic)
{
	check_caller("libgotcall_symbolic.so", RTLD_NOW, 1, 0);
}
END_TEST

START_TEST(test_deepbind)
{
	check_caller("libgotcall_deep.so", RTLD_NOW | RTLD_DEEPBIND, 1, 0);
}
END_TEST

/* kv_got_patch_all on everything loaded, then a library loaded afterwards:
 * a second pass patches the newcomer alone. */
START_TEST(test_late_load)
{
	struct caller a, b;
	void *orig = NULL;
	struct kv_got_hook h = { "kvgot_target", (void *)hook1, &orig };

	open_caller(&a, "libgotcall_now.so", RTLD_NOW);
	ck_assert_int_eq(kv_got_patch_all((void *)check_caller, skip_target, &h, 1), 2);
	ck_assert_int_eq(a.call(1), 1001);

	open_caller(&b, "libgotcall_late.so", RTLD_NOW);
	ck_assert_int_eq(b.call(1), 2);
	ck_assert_int_eq(kv_got_patch_all((void *)check_caller, skip_target, &h, 1), 2);
	ck_assert_int_eq(b.call(1), 1001);
	ck_assert_int_eq(b.table(1), 1001);
	ck_assert_int_eq(a.call(1), 1001);
	ck_assert_ptr_eq(orig, (void *)real("kvgot_target"));
	close_caller(&b);
	close_caller(&a);
}
END_TEST

/* The object holding self and those named in skip keep their slots. */
START_TEST(test_self_and_skip)
{
	static const char *const skip[] = {
		"libgottarget", "ld-linux", "libgotcall_now", NULL
	};
	struct caller a, b, s;
	struct kv_got_hook h = { "kvgot_target", (void *)hook1, NULL };

	open_caller(&a, "libgotcall_norelro.so", RTLD_NOW);
	open_caller(&b, "libgotcall_now.so", RTLD_NOW);
	open_caller(&s, "libgotcall_noplt.so", RTLD_NOW);
	ck_assert_int_eq(kv_got_patch_all((void *)s.call, skip, &h, 1), 2);
	ck_assert_int_eq(a.call(1), 1001);
	ck_assert_int_eq(a.table(1), 1001);
	ck_assert_int_eq(b.call(1), 2);
	ck_assert_int_eq(b.table(1), 2);
	ck_assert_int_eq(s.call(1), 2);
	ck_assert_int_eq(s.table(1), 2);
	close_caller(&s);
	close_caller(&b);
	close_caller(&a);
}
END_TEST

struct race {
	struct caller *c;
	int rounds;
	int bad;
};

static void *patcher(void *arg)
{
	struct race *r = arg;
	struct kv_got_hook h = { "kvgot_target", (void *)hook1, NULL };
	int i;

	for (i = 0; i < r->rounds; i++) {
		if (kv_got_patch_all((void *)patcher, skip_target, &h, 1) < 0)
			r->bad++;
		if (r->c->call(1) != 1001)
			r->bad++;
	}
	return NULL;
}

/* Threads patching the same slots at once: every pass sees the hook in
 * place afterwards, and no page is left writable. */
START_TEST(test_concurrent)
{
	struct caller c;
	struct kt_got_pages before, after;
	struct race r[4];
	pthread_t t[4];
	int i;

	open_caller(&c, "libgotcall_now.so", RTLD_NOW);
	ck_assert_int_eq(kt_got_pages(c.lm->l_addr, &before), 0);
	for (i = 0; i < 4; i++) {
		r[i] = (struct race){ .c = &c, .rounds = 20 };
		ck_assert_int_eq(pthread_create(&t[i], NULL, patcher, &r[i]), 0);
	}
	for (i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		ck_assert_int_eq(r[i].bad, 0);
	}
	ck_assert_int_eq(c.table(1), 1001);
	ck_assert_int_eq(kt_got_pages(c.lm->l_addr, &after), 0);
	ck_assert(kt_got_pages_equal(&before, &after));
	close_caller(&c);
}
END_TEST

START_TEST(test_bad_input)
{
	struct caller c;
	char path[4096];
	struct kv_got_hook h = { "kvgot_target", (void *)hook1, NULL };
	struct kv_got_hook noname = { NULL, (void *)hook1, NULL };
	struct kv_got_hook nofunc = { "kvgot_target", NULL, NULL };
	int level = kv_log_get_level();

	open_caller(&c, "libgotcall_now.so", RTLD_NOW);
	kv_log_set_level(KV_LOG_NONE); /* the failures below are logged */

	ck_assert_int_eq(kv_got_patch_object(c.lm->l_name, c.lm->l_addr, NULL, 1), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_got_patch_all(NULL, NULL, NULL, 1), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_got_patch_object(NULL, c.lm->l_addr, &h, 1), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_got_patch_object(c.lm->l_name, c.lm->l_addr, &noname, 1), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_got_patch_object(c.lm->l_name, c.lm->l_addr, &nofunc, 1), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_got_patch_all(NULL, NULL, &noname, 1), KVSHIM_EINVAL);
	ck_assert_int_eq(kv_got_patch_all(NULL, NULL, &nofunc, 1), KVSHIM_EINVAL);
	/* nothing loaded at that base */
	ck_assert_int_eq(kv_got_patch_object(c.lm->l_name, 4096, &h, 1), KVSHIM_EINVAL);
	/* n = 0: nothing to do, whatever else is passed */
	ck_assert_int_eq(kv_got_patch_object(c.lm->l_name, c.lm->l_addr, NULL, 0), 0);
	ck_assert_int_eq(kv_got_patch_object(c.lm->l_name, c.lm->l_addr, &h, 0), 0);
	ck_assert_int_eq(kv_got_patch_all(NULL, NULL, NULL, 0), 0);
	/* a file that cannot be read, or is not the object loaded there */
	path_of(path, sizeof(path), "no-such-object.so");
	ck_assert_int_eq(kv_got_patch_object(path, c.lm->l_addr, &h, 1), KVSHIM_ESTATE);
	ck_assert_int_eq(kv_got_patch_object("/proc/self/maps", c.lm->l_addr, &h, 1),
			 KVSHIM_ESTATE);
	path_of(path, sizeof(path), "libgottarget.so");
	ck_assert_int_eq(kv_got_patch_object(path, c.lm->l_addr, &h, 1), KVSHIM_ESTATE);

	kv_log_set_level(level);
	ck_assert_int_eq(c.call(1), 2);
	ck_assert_int_eq(c.table(1), 2);
	dlclose(c.h);
}
END_TEST

/* Run a got-main-* program (the main program's own GOT is patched). */
static void run_main(const char *prog)
{
	char path[4096];
	pid_t pid;
	int st;

	path_of(path, sizeof(path), prog);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		execl(path, path, (char *)NULL);
		fprintf(stderr, "got: cannot run %s\n", path);
		_exit(127);
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s failed (status %#x)", path, st);
}

START_TEST(test_main_pie)
{
	run_main("got-main-pie");
}
END_TEST

START_TEST(test_main_nopie)
{
	run_main("got-main-nopie");
}
END_TEST

Suite *got_suite(void)
{
	Suite *s = suite_create("got");
	TCase *tc = tcase_create("got");

	tcase_add_checked_fixture(tc, open_target, close_target);

	tcase_add_test(tc, test_lazy_partial_relro);
	tcase_add_test(tc, test_lazy_no_relro);
	tcase_add_test(tc, test_full_relro);
	tcase_add_test(tc, test_no_plt);
	tcase_add_test(tc, test_bsymbolic);
	tcase_add_test(tc, test_deepbind);
	tcase_add_test(tc, test_late_load);
	tcase_add_test(tc, test_self_and_skip);
	tcase_add_test(tc, test_concurrent);
	tcase_add_test(tc, test_bad_input);
	tcase_add_test(tc, test_main_pie);
	tcase_add_test(tc, test_main_nopie);
	suite_add_tcase(s, tc);
	return s;
}
