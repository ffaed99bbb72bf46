/*
 * pages.c - page protections of a loaded object, from /proc/self/maps.
 */
#include <link.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "pages.h"

struct find {
	uintptr_t base;
	struct kt_got_pages *out;
	long psz;
	int found;
	int over;
};

static int add_pages(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct find *f = arg;
	uintptr_t mask = ~((uintptr_t)f->psz - 1);
	int i;

	if (info->dlpi_addr != f->base)
		return 0;
	f->found = 1;
	for (i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *p = &info->dlpi_phdr[i];
		uintptr_t a, e;

		if (p->p_type != PT_LOAD)
			continue;
		a = (info->dlpi_addr + p->p_vaddr) & mask;
		e = info->dlpi_addr + p->p_vaddr + p->p_memsz;
		for (; a < e; a += f->psz) {
			if (f->out->n && f->out->page[f->out->n - 1] >= a)
				continue; /* a page shared with the previous segment */
			if (f->out->n == KT_GOT_MAX_PAGES) {
				f->over = 1;
				return 1;
			}
			f->out->page[f->out->n++] = a;
		}
	}
	return 1;
}

static int perm_of(FILE *fp, uintptr_t page, char perm[5])
{
	char line[512];

	rewind(fp);
	while (fgets(line, sizeof(line), fp)) {
		unsigned long lo, hi;
		char p[5];

		if (sscanf(line, "%lx-%lx %4s", &lo, &hi, p) == 3 && page >= lo && page < hi) {
			memcpy(perm, p, 5);
			return 0;
		}
	}
	return -1;
}

int kt_got_pages(uintptr_t base, struct kt_got_pages *out)
{
	struct find f = { .base = base, .out = out, .psz = sysconf(_SC_PAGESIZE) };
	FILE *fp;
	size_t i;
	int rc = 0;

	memset(out, 0, sizeof(*out));
	dl_iterate_phdr(add_pages, &f);
	if (!f.found || f.over)
		return -1;
	fp = fopen("/proc/self/maps", "re");
	if (!fp)
		return -1;
	for (i = 0; i < out->n && !rc; i++)
		rc = perm_of(fp, out->page[i], out->perm[i]);
	fclose(fp);
	return rc;
}

int kt_got_pages_equal(const struct kt_got_pages *a, const struct kt_got_pages *b)
{
	size_t i;

	if (a->n != b->n)
		return 0;
	for (i = 0; i < a->n; i++)
		if (a->page[i] != b->page[i] || strcmp(a->perm[i], b->perm[i]))
			return 0;
	return 1;
}

size_t kt_got_pages_readonly(const struct kt_got_pages *p)
{
	size_t i, n = 0;

	for (i = 0; i < p->n; i++)
		n += !strncmp(p->perm[i], "r--", 3);
	return n;
}
