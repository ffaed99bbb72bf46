/*
 * got.c - GOT slot rewriting for the modules LD_PRELOAD does not reach.
 *
 * Each object's relocations come from its file on disk (libelf), checked
 * against the loaded object's program headers; slots are written in place,
 * with the page made writable only for the store when RELRO had made it
 * read-only. The work for one object runs inside dl_iterate_phdr, so the
 * loader cannot unmap the object while its slots are written.
 */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <unistd.h>

#include "got.h"
#include "kvlog.h"
#include "kvshim.h"

#if defined(__x86_64__)
#define KV_GOT_MACHINE EM_X86_64
#define KV_R_JUMP_SLOT R_X86_64_JUMP_SLOT
#define KV_R_GLOB_DAT R_X86_64_GLOB_DAT
#define KV_R_ABS64 R_X86_64_64
#elif defined(__aarch64__)
#define KV_GOT_MACHINE EM_AARCH64
#define KV_R_JUMP_SLOT R_AARCH64_JUMP_SLOT
#define KV_R_GLOB_DAT R_AARCH64_GLOB_DAT
#define KV_R_ABS64 R_AARCH64_ABS64
#else
#define KV_GOT_MACHINE EM_NONE /* no patching: every object is refused */
#define KV_R_JUMP_SLOT (-1)
#define KV_R_GLOB_DAT (-1)
#define KV_R_ABS64 (-1)
#endif

/* PLT-like sections of one object (file addresses): a slot that still
 * points into one of them holds a lazy-binding stub, not a function. */
#define KV_GOT_MAX_PLT 4

/* An object as the loader has it. */
struct loaded {
	const char *name;
	uintptr_t base;
	const ElfW(Phdr) *phdr;
	size_t phnum;
};

/* An object's file, opened with libelf. */
struct file {
	const char *path;
	int fd;
	Elf *elf;
	GElf_Addr plt[KV_GOT_MAX_PLT][2];
	int nplt;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int elf_ready;
static uintptr_t page_size;

/* ---- reading an object's file --------------------------------------------- */

/*
 * Open path ("" is the main program) and check that it is an ELF object for
 * this machine; note where its PLT sections lie.
 * Returns 0, KVSHIM_ESTATE (logged) or KVSHIM_ENOMEM.
 */
static int file_open(struct file *f, const char *path)
{
	GElf_Ehdr eh;
	Elf_Scn *scn = NULL;
	size_t shstr;

	memset(f, 0, sizeof(*f));
	f->path = path[0] ? path : "/proc/self/exe";
	f->fd = open(f->path, O_RDONLY | O_CLOEXEC);
	if (f->fd < 0) {
		kv_warn("got: cannot open %s: %s", f->path, strerror(errno));
		return KVSHIM_ESTATE;
	}
	errno = 0;
	f->elf = elf_begin(f->fd, ELF_C_READ_MMAP, NULL);
	if (!f->elf) {
		int nomem = errno == ENOMEM;

		kv_warn("got: %s: %s", f->path, elf_errmsg(-1));
		close(f->fd);
		return nomem ? KVSHIM_ENOMEM : KVSHIM_ESTATE;
	}
	if (elf_kind(f->elf) != ELF_K_ELF || gelf_getclass(f->elf) != ELFCLASS64 ||
	    !gelf_getehdr(f->elf, &eh) || eh.e_machine != KV_GOT_MACHINE ||
	    (eh.e_type != ET_DYN && eh.e_type != ET_EXEC)) {
		kv_warn("got: %s is not an ELF object of this machine", f->path);
		goto bad;
	}
	if (elf_getshdrstrndx(f->elf, &shstr)) {
		kv_warn("got: %s has no section headers: %s", f->path, elf_errmsg(-1));
		goto bad;
	}
	while ((scn = elf_nextscn(f->elf, scn))) {
		GElf_Shdr sh;
		const char *name;

		if (!gelf_getshdr(scn, &sh) || !(sh.sh_flags & SHF_EXECINSTR))
			continue;
		name = elf_strptr(f->elf, shstr, sh.sh_name);
		if (name && (!strncmp(name, ".plt", 4) || !strcmp(name, ".iplt")) &&
		    f->nplt < KV_GOT_MAX_PLT) {
			f->plt[f->nplt][0] = sh.sh_addr;
			f->plt[f->nplt][1] = sh.sh_addr + sh.sh_size;
			f->nplt++;
		}
	}
	return 0;
bad:
	elf_end(f->elf);
	close(f->fd);
	return KVSHIM_ESTATE;
}

static void file_close(struct file *f)
{
	elf_end(f->elf);
	close(f->fd);
}

/*
 * Whether the file's program headers are those of the loaded object: the
 * offsets we write at come from the file, so a file replaced on disk since
 * it was loaded must not be trusted.
 * Returns 1 when they match, else 0.
 */
static int file_matches(struct file *f, const struct loaded *lo)
{
	size_t n, i;

	if (elf_getphdrnum(f->elf, &n) || n != lo->phnum)
		return 0;
	for (i = 0; i < n; i++) {
		GElf_Phdr p;

		if (!gelf_getphdr(f->elf, (int)i, &p) ||
		    p.p_type != lo->phdr[i].p_type ||
		    p.p_vaddr != lo->phdr[i].p_vaddr ||
		    p.p_memsz != lo->phdr[i].p_memsz ||
		    p.p_flags != lo->phdr[i].p_flags)
			return 0;
	}
	return 1;
}

/* ---- writing one slot ------------------------------------------------------ */

/*
 * The protection of the page at pg (page-aligned) as read from
 * /proc/self/maps: the fallback where the program headers are ambiguous.
 * Returns PROT_* bits, or -1 when no mapping holds the page.
 */
static int maps_prot(uintptr_t pg)
{
	char line[512];
	FILE *fp = fopen("/proc/self/maps", "re");
	int prot = -1;

	if (!fp)
		return -1;
	while (fgets(line, sizeof(line), fp)) {
		unsigned long lo, hi;
		char perm[5];

		if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perm) != 3)
			continue;
		if (pg >= lo && pg < hi) {
			prot = (perm[0] == 'r' ? PROT_READ : 0) |
			       (perm[1] == 'w' ? PROT_WRITE : 0) |
			       (perm[2] == 'x' ? PROT_EXEC : 0);
			break;
		}
		if (strlen(line) == sizeof(line) - 1 && line[sizeof(line) - 2] != '\n') {
			int c; /* skip the rest of an overlong line */

			while ((c = fgetc(fp)) != EOF && c != '\n')
				;
		}
	}
	fclose(fp);
	return prot;
}

/*
 * The protection the loader gave the page holding addr: the flags of the
 * PT_LOAD segment that covers it, or PROT_READ where PT_GNU_RELRO covers the
 * whole page (the loader rounds that range down to pages at both ends, as
 * glibc's _dl_protect_relro does). A page shared by two segments (binaries
 * aligned to pages smaller than the kernel's) is looked up in
 * /proc/self/maps instead.
 * Returns PROT_* bits, or -1 when addr is in no segment.
 */
static int page_prot(const struct loaded *lo, uintptr_t addr)
{
	uintptr_t pg = addr & ~(page_size - 1);
	int prot = -1, nload = 0;
	size_t i;

	for (i = 0; i < lo->phnum; i++) {
		const ElfW(Phdr) *p = &lo->phdr[i];
		uintptr_t s = lo->base + p->p_vaddr, e = s + p->p_memsz;

		if (p->p_type != PT_LOAD || e <= pg || s >= pg + page_size)
			continue;
		nload++;
		if (addr >= s && addr < e)
			prot = (p->p_flags & PF_R ? PROT_READ : 0) |
			       (p->p_flags & PF_W ? PROT_WRITE : 0) |
			       (p->p_flags & PF_X ? PROT_EXEC : 0);
	}
	if (prot < 0)
		return -1;
	if (nload != 1)
		return maps_prot(pg);
	for (i = 0; i < lo->phnum; i++) {
		const ElfW(Phdr) *p = &lo->phdr[i];
		uintptr_t s = (lo->base + p->p_vaddr) & ~(page_size - 1);
		uintptr_t e = (lo->base + p->p_vaddr + p->p_memsz) & ~(page_size - 1);

		if (p->p_type == PT_GNU_RELRO && pg >= s && pg < e)
			prot = PROT_READ;
	}
	return prot;
}

static int in_plt(const struct file *f, const struct loaded *lo, const void *p)
{
	uintptr_t a = (uintptr_t)p;
	int i;

	for (i = 0; i < f->nplt; i++)
		if (a >= lo->base + f->plt[i][0] && a < lo->base + f->plt[i][1])
			return 1;
	return 0;
}

/*
 * Point the slot at addr to h->func, opening a read-only page for the store
 * only and closing it again; record the old value in *h->orig where it is
 * the first real function seen.
 * Returns 1 when the slot was written, 0 when it already held the hook or
 * could not be written (logged).
 */
static int patch_slot(const struct file *f, const struct loaded *lo, uintptr_t addr,
		      const struct kv_got_hook *h)
{
	void **slot = (void **)addr;
	void *pg = (void *)(addr & ~(page_size - 1));
	void *old;
	int prot;

	if (addr % sizeof(void *)) {
		kv_warn("got: %s: misaligned slot at %#lx for %s",
			f->path, (unsigned long)addr, h->name);
		return 0;
	}
	prot = page_prot(lo, addr);
	if (prot < 0 || !(prot & PROT_READ)) {
		kv_warn("got: %s: slot for %s at %#lx is in no readable segment",
			f->path, h->name, (unsigned long)addr);
		return 0;
	}
	if (__atomic_load_n(slot, __ATOMIC_ACQUIRE) == h->func)
		return 0;
	if (!(prot & PROT_WRITE) && mprotect(pg, page_size, prot | PROT_WRITE)) {
		kv_warn("got: %s: cannot unprotect the slot for %s: %s",
			f->path, h->name, strerror(errno));
		return 0;
	}
	old = __atomic_exchange_n(slot, h->func, __ATOMIC_ACQ_REL);
	if (!(prot & PROT_WRITE) && mprotect(pg, page_size, prot))
		kv_error("got: %s: cannot protect the slot for %s again: %s",
			 f->path, h->name, strerror(errno));
	if (h->orig && old && old != h->func && !in_plt(f, lo, old) &&
	    !__atomic_load_n(h->orig, __ATOMIC_ACQUIRE))
		__atomic_store_n(h->orig, old, __ATOMIC_RELEASE);
	kv_debug("got: %s: %s at %#lx now %p (was %p)",
		 f->path, h->name, (unsigned long)addr, h->func, old);
	return 1;
}

/* ---- one object ------------------------------------------------------------ */

/* A dynamic symbol that names a hook. */
struct match {
	size_t sym;
	const struct kv_got_hook *h;
};

/*
 * The symbols of the dynamic symbol table symscn that name one of the
 * hooks, found in one pass so that the relocations (a million in a large
 * C++ library) are matched by index, and an object that imports no hook is
 * left after that pass.
 * Returns the number of matches in *out (malloc'd, NULL when none) or
 * KVSHIM_ENOMEM.
 */
static long find_matches(Elf *elf, Elf_Scn *symscn, const GElf_Shdr *symsh,
			 const struct kv_got_hook *hooks, size_t n, struct match **out)
{
	Elf_Data *d = elf_getdata(symscn, NULL);
	size_t i, k, nsym, cap = 0;
	long found = 0;

	*out = NULL;
	if (!d || !symsh->sh_entsize)
		return 0;
	nsym = symsh->sh_size / symsh->sh_entsize;
	for (i = 1; i < nsym; i++) {
		const char *name;
		GElf_Sym s;

		if (!gelf_getsym(d, (int)i, &s) || !s.st_name)
			continue;
		name = elf_strptr(elf, symsh->sh_link, s.st_name);
		if (!name)
			continue;
		for (k = 0; k < n && strcmp(name, hooks[k].name); k++)
			;
		if (k == n)
			continue;
		if ((size_t)found == cap) {
			struct match *m = realloc(*out, (cap ? 2 * cap : 8) * sizeof(*m));

			if (!m) {
				free(*out);
				*out = NULL;
				return KVSHIM_ENOMEM;
			}
			*out = m;
			cap = cap ? 2 * cap : 8;
		}
		(*out)[found].sym = i;
		(*out)[found].h = &hooks[k];
		found++;
	}
	return found;
}

/*
 * Walk every dynamic SHT_RELA section of the file (.rela.plt, .rela.dyn) and
 * patch the slots whose symbol is hooked, whether the object imports the
 * symbol or defines it and calls it through its own PLT (interposable).
 * Returns the number of slots written, or KVSHIM_ENOMEM.
 */
static int file_patch(struct file *f, const struct loaded *lo,
		      const struct kv_got_hook *hooks, size_t n)
{
	Elf_Scn *scn = NULL;
	struct match *m = NULL;
	size_t msym = 0; /* the symbol table m was found in */
	long nm = 0;
	int count = 0;

	while ((scn = elf_nextscn(f->elf, scn))) {
		GElf_Shdr sh, symsh;
		Elf_Scn *symscn;
		Elf_Data *rel;
		size_t i, nrel;

		/* only what the loader applies: static relocations kept by
		 * --emit-relocs are not allocated and name .symtab */
		if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_RELA ||
		    !(sh.sh_flags & SHF_ALLOC) || !sh.sh_link || !sh.sh_entsize)
			continue;
		symscn = elf_getscn(f->elf, sh.sh_link);
		if (!symscn || !gelf_getshdr(symscn, &symsh) || symsh.sh_type != SHT_DYNSYM)
			continue;
		if (sh.sh_link != msym) {
			free(m);
			nm = find_matches(f->elf, symscn, &symsh, hooks, n, &m);
			if (nm < 0)
				return (int)nm;
			msym = sh.sh_link;
		}
		rel = elf_getdata(scn, NULL);
		if (!nm || !rel)
			continue;
		nrel = sh.sh_size / sh.sh_entsize;
		for (i = 0; i < nrel; i++) {
			GElf_Rela r;
			size_t sym;
			long type, k;

			if (!gelf_getrela(rel, (int)i, &r))
				break;
			type = (long)GELF_R_TYPE(r.r_info);
			if (type != KV_R_JUMP_SLOT && type != KV_R_GLOB_DAT && type != KV_R_ABS64)
				continue;
			/* a data slot with an addend holds an address inside the
			 * symbol, not the symbol: leave it */
			if (type != KV_R_JUMP_SLOT && r.r_addend)
				continue;
			sym = GELF_R_SYM(r.r_info);
			for (k = 0; k < nm && m[k].sym != sym; k++)
				;
			if (k < nm)
				count += patch_slot(f, lo, lo->base + r.r_offset, m[k].h);
		}
	}
	free(m);
	return count;
}

/* ---- entry points ---------------------------------------------------------- */

/*
 * Checks shared by both entry points, and the one-time libelf setup; called
 * with lock held.
 * Returns 0, KVSHIM_EINVAL or KVSHIM_ESTATE.
 */
static int prepare(const struct kv_got_hook *hooks, size_t n)
{
	size_t i;

	if (!hooks)
		return KVSHIM_EINVAL;
	for (i = 0; i < n; i++)
		if (!hooks[i].name || !hooks[i].func)
			return KVSHIM_EINVAL;
	if (!elf_ready) {
		if (elf_version(EV_CURRENT) == EV_NONE) {
			kv_warn("got: libelf: %s", elf_errmsg(-1));
			return KVSHIM_ESTATE;
		}
		page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
		elf_ready = 1;
	}
	return 0;
}

static void loaded_from(struct loaded *lo, const struct dl_phdr_info *info)
{
	lo->name = info->dlpi_name;
	lo->base = info->dlpi_addr;
	lo->phdr = info->dlpi_phdr;
	lo->phnum = info->dlpi_phnum;
}

struct one_ctx {
	struct file *f;
	const struct kv_got_hook *hooks;
	size_t n;
	uintptr_t base;
	int seen;   /* an object is loaded at base */
	int result; /* slots written, when found */
	int found;
};

static int one_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct one_ctx *c = arg;
	struct loaded lo;

	if (info->dlpi_addr != c->base)
		return 0;
	c->seen = 1;
	loaded_from(&lo, info);
	if (!file_matches(c->f, &lo))
		return 0;
	c->found = 1;
	c->result = file_patch(c->f, &lo, c->hooks, c->n);
	return 1;
}

int kv_got_patch_object(const char *path, uintptr_t load_base,
			const struct kv_got_hook *hooks, size_t n)
{
	struct one_ctx c = { .hooks = hooks, .n = n, .base = load_base };
	struct file f;
	int rc;

	if (!n)
		return 0;
	if (!path)
		return KVSHIM_EINVAL;
	pthread_mutex_lock(&lock);
	rc = prepare(hooks, n);
	if (rc)
		goto out;
	rc = file_open(&f, path);
	if (rc)
		goto out;
	c.f = &f;
	dl_iterate_phdr(one_cb, &c);
	file_close(&f);
	if (c.found) {
		rc = c.result;
	} else if (c.seen) {
		kv_warn("got: %s is not the object loaded at %#lx",
			f.path, (unsigned long)load_base);
		rc = KVSHIM_ESTATE;
	} else {
		rc = KVSHIM_EINVAL;
	}
out:
	pthread_mutex_unlock(&lock);
	return rc;
}

struct all_ctx {
	const void *self;
	const char *const *skip;
	const struct kv_got_hook *hooks;
	size_t n;
	uint32_t *hashes;       /* name_hash of each hook's name */
	uintptr_t vdso;
	int index;
	int total;
	int nomem;
};

static int holds(const struct loaded *lo, uintptr_t a)
{
	size_t i;

	for (i = 0; i < lo->phnum; i++) {
		const ElfW(Phdr) *p = &lo->phdr[i];

		if (p->p_type == PT_LOAD && a >= lo->base + p->p_vaddr &&
		    a < lo->base + p->p_vaddr + p->p_memsz)
			return 1;
	}
	return 0;
}

static int skipped(const char *name, const char *const *skip)
{
	const char *base = strrchr(name, '/');

	base = base ? base + 1 : name;
	for (; skip && *skip; skip++)
		if (!strncmp(base, *skip, strlen(*skip)))
			return 1;
	return 0;
}

#if __ELF_NATIVE_CLASS == 64
#define KV_R_SYM(info) ELF64_R_SYM(info)
#else
#define KV_R_SYM(info) ELF32_R_SYM(info)
#endif

/* FNV-1a: a cheap first test before strcmp. */
static uint32_t name_hash(const char *s)
{
	uint32_t h = 2166136261u;

	while (*s)
		h = (h ^ (unsigned char)*s++) * 16777619u;
	return h;
}

/* A dynamic-section address: relocated by the loader on most systems, an
 * offset from the load base where the section is read-only. */
static uintptr_t dyn_addr(const struct loaded *lo, ElfW(Addr) v)
{
	return v < lo->base ? lo->base + v : v;
}

/* Does any of relocations [rel, rel + size) name a hook? */
static int rela_names(const ElfW(Rela) *rel, size_t size, const ElfW(Sym) *sym,
		      const char *str, const uint32_t *hashes,
		      const struct kv_got_hook *hooks, size_t n)
{
	size_t i, k, count = size / sizeof(*rel);

	for (i = 0; i < count; i++) {
		const ElfW(Sym) *sy;
		const char *name;
		uint32_t h;

		if (KV_R_SYM(rel[i].r_info) == 0)
			continue;
		/* an import names a symbol the object does not define */
		sy = &sym[KV_R_SYM(rel[i].r_info)];
		if (sy->st_shndx != SHN_UNDEF)
			continue;
		name = str + sy->st_name;
		h = name_hash(name);
		for (k = 0; k < n; k++)
			if (hashes[k] == h && !strcmp(hooks[k].name, name))
				return 1;
	}
	return 0;
}

/*
 * Whether the loaded object imports one of the hooks (a symbol it does not
 * define: an object that defines a hooked name itself, such as one with
 * the runtime linked in, is left alone by the sweep), read from the
 * relocations of its dynamic section in memory: most objects of a large
 * process (a PyTorch one loads dozens) import none, and this spares reading
 * their files (45 ms down to 5 for 40 libraries here, LLVM's among them).
 * Returns 1 when in doubt.
 */
static int imports_any(const struct loaded *lo, const struct kv_got_hook *hooks,
		       size_t n, const uint32_t *hashes)
{
	const ElfW(Dyn) *d = NULL;
	uintptr_t symtab = 0, strtab = 0, rela = 0, jmprel = 0;
	size_t relasz = 0, pltrelsz = 0, i;
	long pltrel = DT_RELA;

	for (i = 0; i < lo->phnum; i++)
		if (lo->phdr[i].p_type == PT_DYNAMIC)
			d = (const ElfW(Dyn) *)(lo->base + lo->phdr[i].p_vaddr);
	if (!d)
		return 1;
	for (; d->d_tag != DT_NULL; d++) {
		switch (d->d_tag) {
		case DT_SYMTAB: symtab = dyn_addr(lo, d->d_un.d_ptr); break;
		case DT_STRTAB: strtab = dyn_addr(lo, d->d_un.d_ptr); break;
		case DT_RELA: rela = dyn_addr(lo, d->d_un.d_ptr); break;
		case DT_RELASZ: relasz = d->d_un.d_val; break;
		case DT_JMPREL: jmprel = dyn_addr(lo, d->d_un.d_ptr); break;
		case DT_PLTRELSZ: pltrelsz = d->d_un.d_val; break;
		case DT_PLTREL: pltrel = (long)d->d_un.d_val; break;
		case DT_REL: return 1;          /* not the layout read below */
		}
	}
	if (!symtab || !strtab || pltrel != DT_RELA)
		return 1;
	return (rela && rela_names((const ElfW(Rela) *)rela, relasz,
				   (const ElfW(Sym) *)symtab, (const char *)strtab,
				   hashes, hooks, n)) ||
	       (jmprel && rela_names((const ElfW(Rela) *)jmprel, pltrelsz,
				     (const ElfW(Sym) *)symtab, (const char *)strtab,
				     hashes, hooks, n));
}

static int all_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct all_ctx *c = arg;
	struct loaded lo;
	struct file f;
	int first = c->index++ == 0, rc;

	loaded_from(&lo, info);
	/* the main program comes first and has no name; a nameless object
	 * after it (the vDSO on older glibc) has no file */
	if (!lo.name || (!lo.name[0] && !first))
		return 0;
	if ((c->vdso && lo.base == c->vdso) || skipped(lo.name, c->skip) ||
	    (c->self && holds(&lo, (uintptr_t)c->self)) ||
	    !imports_any(&lo, c->hooks, c->n, c->hashes))
		return 0;
	rc = file_open(&f, lo.name);
	if (rc) {
		if (rc == KVSHIM_ENOMEM)
			c->nomem = 1;
		return 0;
	}
	if (file_matches(&f, &lo)) {
		rc = file_patch(&f, &lo, c->hooks, c->n);
		if (rc < 0)
			c->nomem = 1;
		else
			c->total += rc;
	} else
		kv_warn("got: %s on disk is not the object loaded: skipped",
			f.path);
	file_close(&f);
	return 0;
}

void kv_got_fork_prepare(void)
{
	pthread_mutex_lock(&lock);
}

void kv_got_fork_parent(void)
{
	pthread_mutex_unlock(&lock);
}

void kv_got_fork_child(void)
{
	pthread_mutex_unlock(&lock);
}

int kv_got_patch_all(const void *self, const char *const *skip,
		     const struct kv_got_hook *hooks, size_t n)
{
	struct all_ctx c = { .self = self, .skip = skip, .hooks = hooks, .n = n };
	int rc;

	if (!n)
		return 0;
	pthread_mutex_lock(&lock);
	rc = prepare(hooks, n);
	if (rc)
		goto out;
	c.vdso = (uintptr_t)getauxval(AT_SYSINFO_EHDR);
	c.hashes = malloc(n * sizeof(*c.hashes));
	if (!c.hashes) {
		rc = KVSHIM_ENOMEM;
		goto out;
	}
	for (size_t k = 0; k < n; k++)
		c.hashes[k] = name_hash(hooks[k].name);
	dl_iterate_phdr(all_cb, &c);
	free(c.hashes);
	rc = c.nomem && !c.total ? KVSHIM_ENOMEM : c.total;
out:
	pthread_mutex_unlock(&lock);
	return rc;
}
