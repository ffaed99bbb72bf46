/*
 * real.c - finding the real functions behind the hooks, once, without
 * hard-coded paths: the driver through the handle the shim hands out (the
 * one the allocator's primitive layer opened, libcuda.so.1 by soname), the
 * runtime by looking among the loaded objects for the libcudart the host
 * program uses.
 */
#include <dlfcn.h>
#include <limits.h>
#include <link.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "boundary.h"
#include "hooks.h"
#include "kvlog.h"

#define KV_DEFINE_REAL(name, ret, args) ret (*kv_real_##name) args;
KV_DRIVER_HOOKS(KV_DEFINE_REAL)
KV_RUNTIME_HOOKS(KV_DEFINE_REAL)
KV_DRIVER_REALS(KV_DEFINE_REAL)
KV_RUNTIME_REALS(KV_DEFINE_REAL)
#undef KV_DEFINE_REAL

__thread int kv_in_runtime;

struct entry {
	const char *name;
	void *hook;
	void **real;
};

#define KV_ENTRY(name, ret, args) \
	{ #name, (void *)kv_hook_##name, (void **)&kv_real_##name },
static const struct entry driver_entries[] = { KV_DRIVER_HOOKS(KV_ENTRY) };
static const struct entry runtime_entries[] = { KV_RUNTIME_HOOKS(KV_ENTRY) };
#undef KV_ENTRY
#define KV_REAL_ENTRY(name, ret, args) { #name, NULL, (void **)&kv_real_##name },
static const struct entry driver_reals[] = { KV_DRIVER_REALS(KV_REAL_ENTRY) };
static const struct entry runtime_reals[] = { KV_RUNTIME_REALS(KV_REAL_ENTRY) };
#undef KV_REAL_ENTRY

#define NDRIVER (sizeof(driver_entries) / sizeof(driver_entries[0]))
#define NRUNTIME (sizeof(runtime_entries) / sizeof(runtime_entries[0]))

static pthread_once_t driver_once = PTHREAD_ONCE_INIT;
static int driver_rc = -1;
/* Held only to publish a runtime look-up's result, never across a call
 * into the loader (see kv_hooks_runtime); taken across fork. */
static pthread_mutex_t runtime_lock = PTHREAD_MUTEX_INITIALIZER;
static int runtime_found;

#define NRUNTIME_REALS (sizeof(runtime_reals) / sizeof(runtime_reals[0]))

static void resolve_driver(void)
{
	void *h = kv_shim_driver();
	size_t i;

	if (!h)
		return;
	for (i = 0; i < NDRIVER; i++)
		*driver_entries[i].real = kv_shim_dlsym(h, driver_entries[i].name);
	for (i = 0; i < sizeof(driver_reals) / sizeof(driver_reals[0]); i++)
		*driver_reals[i].real = kv_shim_dlsym(h, driver_reals[i].name);
	driver_rc = 0;
}

int kv_hooks_driver(void)
{
	pthread_once(&driver_once, resolve_driver);
	return driver_rc;
}

/* dl_iterate_phdr callback: the path of the first libcudart loaded, copied
 * (the object may be closed once the loader's lock is let go). */
static int find_cudart(struct dl_phdr_info *info, size_t size, void *arg)
{
	const char *base = strrchr(info->dlpi_name, '/');

	base = base ? base + 1 : info->dlpi_name;
	/* libcudart.so.13, and the renamed copies wheels bundle
	 * (libcudart-1a2b3c4d.so.13) */
	if (strncmp(base, "libcudart", 9) != 0 || (base[9] != '.' && base[9] != '-'))
		return 0;
	if (strlen(info->dlpi_name) >= PATH_MAX)
		return 0;
	strcpy(arg, info->dlpi_name);
	return 1;
}

/*
 * The runtime's functions are looked up with no lock of kvshim's held: the
 * loader's calls (dl_iterate_phdr, dlopen, dlsym) take the loader's lock,
 * which a thread inside dlopen holds while a library constructor runs, and
 * that constructor may call the runtime through the wrappers. Threads that
 * meet here look up side by side; the first to publish wins, the others
 * drop their handle, so the functions are set once and never change.
 * Returns 0 once they are found, -1 while the process has no runtime.
 */
int kv_hooks_runtime(void)
{
	void *fns[NRUNTIME + NRUNTIME_REALS];
	char path[PATH_MAX] = "";
	void *h = NULL;
	size_t i;
	int won = 0;

	if (__atomic_load_n(&runtime_found, __ATOMIC_ACQUIRE))
		return 0;
	dl_iterate_phdr(find_cudart, path);
	if (path[0])
		h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	/* none by name: whatever defines the runtime after us */
	if (!h && kv_shim_dlsym(RTLD_NEXT, "cudaMalloc"))
		h = RTLD_NEXT;
	if (!h)
		return -1;
	for (i = 0; i < NRUNTIME; i++)
		fns[i] = kv_shim_dlsym(h, runtime_entries[i].name);
	for (i = 0; i < NRUNTIME_REALS; i++)
		fns[NRUNTIME + i] = kv_shim_dlsym(h, runtime_reals[i].name);
	/* its dlsym, before it starts: before any thread can see the
	 * functions (patching twice writes nothing the second time) */
	kv_hooks_attach(0);
	pthread_mutex_lock(&runtime_lock);
	if (!runtime_found) {
		for (i = 0; i < NRUNTIME; i++)
			*runtime_entries[i].real = fns[i];
		for (i = 0; i < NRUNTIME_REALS; i++)
			*runtime_reals[i].real = fns[NRUNTIME + i];
		__atomic_store_n(&runtime_found, 1, __ATOMIC_RELEASE);
		won = 1;
	}
	pthread_mutex_unlock(&runtime_lock);
	if (won)        /* the handle stays open: the runtime must not go away */
		kv_debug("runtime functions from %s", path[0] ? path : "the next object");
	else if (h != RTLD_NEXT)
		dlclose(h);
	return 0;
}

void kv_hooks_real_fork_prepare(void)
{
	pthread_mutex_lock(&runtime_lock);
}

void kv_hooks_real_fork_parent(void)
{
	pthread_mutex_unlock(&runtime_lock);
}

void kv_hooks_real_fork_child(void)
{
	pthread_mutex_unlock(&runtime_lock);
}

void *kv_hooks_wrap(void *fn)
{
	size_t i;

	if (!fn || kv_hooks_driver())
		return fn;
	for (i = 0; i < NDRIVER; i++)
		if (*driver_entries[i].real == fn)
			return driver_entries[i].hook;
	return fn;
}

/* The objects loaded after the caller's, in load order: their load base
 * and name, copied while the loader's lock is held. */
struct after {
	const void *caller;
	int seen;               /* the caller's object was met */
	int nomem;
	size_t n, cap;
	struct {
		ElfW(Addr) base;
		char *name;
	} *obj;
};

static int holds(const struct dl_phdr_info *info, uintptr_t a)
{
	int i;

	for (i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *p = &info->dlpi_phdr[i];

		if (p->p_type == PT_LOAD && a >= info->dlpi_addr + p->p_vaddr &&
		    a < info->dlpi_addr + p->p_vaddr + p->p_memsz)
			return 1;
	}
	return 0;
}

static int collect_after(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct after *c = arg;
	void *grown;

	if (!c->seen) {
		c->seen = holds(info, (uintptr_t)c->caller);
		return 0;
	}
	if (!info->dlpi_name || !info->dlpi_name[0])
		return 0;
	if (c->n == c->cap) {
		c->cap = c->cap ? 2 * c->cap : 32;
		grown = realloc(c->obj, c->cap * sizeof(*c->obj));
		if (!grown) {
			c->nomem = 1;
			return 1;
		}
		c->obj = grown;
	}
	c->obj[c->n].base = info->dlpi_addr;
	c->obj[c->n].name = strdup(info->dlpi_name);
	if (!c->obj[c->n].name) {
		c->nomem = 1;
		return 1;
	}
	c->n++;
	return 0;
}

/* Object i of c, if it is still the one loaded under its name: a
 * reference (dlclose it) and its link map; else NULL. */
static void *open_after(const struct after *c, size_t i, struct link_map **map)
{
	void *h = dlopen(c->obj[i].name, RTLD_LAZY | RTLD_NOLOAD);

	if (!h)
		return NULL;
	if (dlinfo(h, RTLD_DI_LINKMAP, map) || !*map || (*map)->l_addr != c->obj[i].base) {
		dlclose(h);
		return NULL;
	}
	return h;
}

/*
 * dlsym(RTLD_NEXT) finds the next definition after its caller's object,
 * which glibc reads from the return address: through the wrapper that is
 * libkvshim.so's place, which serves a preloaded kvshim (next to the main
 * program) as before; loaded late (last), nothing comes after it. Then the
 * wrapper looks from the caller's object: the first object after it, in
 * load order, that defines name itself (not one of its dependencies; the
 * loader's own scopes are not followed). The objects after the caller are
 * listed under the loader's lock (dl_iterate_phdr), and each is looked at
 * outside it through a reference of its own, so a dlclose meanwhile in
 * another thread frees nothing this walk reads; one closed (or replaced by
 * another at the same name) is passed over. Returns it, or NULL.
 */
static void *next_after(const void *caller, const char *name)
{
	struct after c = { .caller = caller };
	struct link_map *map, *owner;
	Dl_info info;
	void *h, *sym, *found = NULL;
	size_t i;

	dl_iterate_phdr(collect_after, &c);
	for (i = 0; i < c.n && !found; i++) {
		h = open_after(&c, i, &map);
		if (!h)
			continue;
		sym = kv_shim_dlsym(h, name);
		owner = NULL;
		if (sym && dladdr1(sym, &info, (void **)&owner, RTLD_DL_LINKMAP) && owner == map)
			found = sym;
		dlclose(h);
	}
	for (i = 0; i < c.n; i++)
		free(c.obj[i].name);
	free(c.obj);
	return found;
}

void *kv_hook_dlsym(void *handle, const char *name)
{
	void *sym;

	if (handle != RTLD_NEXT)
		return kv_hooks_wrap(kv_shim_dlsym(handle, name));
	/* from kvshim's place first: found there, no other look-up is made
	 * (each failing one allocates its message: a program defining malloc
	 * and looking libc's up must not re-enter it) */
	sym = kv_shim_dlsym(RTLD_NEXT, name);
	if (!sym) {
		sym = next_after(__builtin_return_address(0), name);
		/* not found either way: a failing look-up last, so that
		 * dlerror() says why, as the caller's own would */
		if (!sym)
			sym = kv_shim_dlsym(RTLD_NEXT, name);
	}
	return kv_hooks_wrap(sym);
}
