/*
 * pages.h - the page protections of one loaded object, as /proc/self/maps
 * shows them, so the GOT tests can check that patching leaves every page as
 * the loader left it.
 */
#ifndef KT_GOT_PAGES_H
#define KT_GOT_PAGES_H

#include <stddef.h>
#include <stdint.h>

#define KT_GOT_MAX_PAGES 256

struct kt_got_pages {
	size_t n;
	uintptr_t page[KT_GOT_MAX_PAGES];
	char perm[KT_GOT_MAX_PAGES][5]; /* "r--p" and so on */
};

/* The pages of every PT_LOAD segment of the object loaded at base.
 * Returns 0, or -1 when no object is loaded there, it is too large or
 * /proc/self/maps cannot be read. */
int kt_got_pages(uintptr_t base, struct kt_got_pages *out);

/* Returns 1 when a and b hold the same pages with the same protections. */
int kt_got_pages_equal(const struct kt_got_pages *a, const struct kt_got_pages *b);

/* Returns the number of read-only, non-executable pages (RELRO and rodata). */
size_t kt_got_pages_readonly(const struct kt_got_pages *p);

#endif /* KT_GOT_PAGES_H */
