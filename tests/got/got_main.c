/*
 * got_main.c - a main program that imports kvgot_target, built as PIE
 * (got-main-pie) and as non-PIE (got-main-nopie) and run by test_got.c:
 * the main program's GOT is patched like any object's. Exits 0 when every
 * check passes, else 1 with the failed check on stderr.
 */
#include <link.h>
#include <stdio.h>

#include "got.h"
#include "pages.h"

int kvgot_target(int x);

static int hook(int x)
{
	return x + 1000;
}

static int main_base(struct dl_phdr_info *info, size_t size, void *arg)
{
	*(uintptr_t *)arg = info->dlpi_addr;
	return 1; /* the main program comes first */
}

#define CHECK(cond) do {                                                   \
		if (!(cond)) {                                             \
			fprintf(stderr, "got-main: %s:%d: check failed: %s\n", \
				__FILE__, __LINE__, #cond);                \
			return 1;                                          \
		}                                                          \
	} while (0)

int main(void)
{
	static const char *const skip[] = { "libgottarget", "ld-linux", NULL };
	void *orig = NULL;
	struct kv_got_hook h = { "kvgot_target", (void *)hook, &orig };
	struct kt_got_pages before, after;
	uintptr_t base = 0;
	int rc;

	dl_iterate_phdr(main_base, &base);
	CHECK(kvgot_target(1) == 2);
	CHECK(kt_got_pages(base, &before) == 0);
	/* self NULL: the patching code lives in this program, whose only
	 * hooked import is kvgot_target */
	rc = kv_got_patch_all(NULL, skip, &h, 1);
	CHECK(rc == 1);
	CHECK(kvgot_target(1) == 1001);
	CHECK(orig != NULL);
	CHECK(((int (*)(int))orig)(1) == 2);
	CHECK(kt_got_pages(base, &after) == 0);
	CHECK(kt_got_pages_equal(&before, &after));
	CHECK(kv_got_patch_object("", base, &h, 1) == 0);
	CHECK(kv_got_patch_all(NULL, skip, &h, 1) == 0);
	CHECK(kvgot_target(1) == 1001);
	h.func = orig;
	h.orig = NULL;
	CHECK(kv_got_patch_object("", base, &h, 1) == 1);
	CHECK(kvgot_target(1) == 2);
	return 0;
}
