/*
 * real.c - finding the real functions behind the hooks, once, without
 * hard-coded paths: the driver through the handle the shim hands out (the
 * one the allocator's primitive layer opened, libcuda.so.1 by soname), the
 * runtime by looking among the loaded objects for the libcudart the host
 * program uses.
 */
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
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
static pthread_mutex_t runtime_lock = PTHREAD_MUTEX_INITIALIZER;
static int runtime_found;

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

/* dl_iterate_phdr callback: the path of the first libcudart loaded. */
static int find_cudart(struct dl_phdr_info *info, size_t size, void *arg)
{
	const char *base = strrchr(info->dlpi_name, '/');

	base = base ? base + 1 : info->dlpi_name;
	/* libcudart.so.13, and the renamed copies wheels bundle
	 * (libcudart-1a2b3c4d.so.13) */
	if (strncmp(base, "libcudart", 9) != 0 || (base[9] != '.' && base[9] != '-'))
		return 0;
	*(const char **)arg = info->dlpi_name;
	return 1;
}

int kv_hooks_runtime(void)
{
	const char *path = NULL;
	void *h;
	size_t i;

	if (__atomic_load_n(&runtime_found, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&runtime_lock);
	if (!runtime_found) {
		dl_iterate_phdr(find_cudart, &path);
		h = path ? dlopen(path, RTLD_NOW | RTLD_NOLOAD) : NULL;
		/* none by name: whatever defines the runtime after us */
		if (!h && kv_shim_dlsym(RTLD_NEXT, "cudaMalloc"))
			h = RTLD_NEXT;
		if (h) {
			for (i = 0; i < NRUNTIME; i++)
				*runtime_entries[i].real =
					kv_shim_dlsym(h, runtime_entries[i].name);
			for (i = 0; i < sizeof(runtime_reals) / sizeof(runtime_reals[0]); i++)
				*runtime_reals[i].real =
					kv_shim_dlsym(h, runtime_reals[i].name);
			kv_debug("runtime functions from %s", path ? path : "the next object");
			kv_hooks_attach(0);     /* its dlsym, before it starts */
			/* the handle stays open: the runtime must not go away */
			__atomic_store_n(&runtime_found, 1, __ATOMIC_RELEASE);
		}
	}
	pthread_mutex_unlock(&runtime_lock);
	return runtime_found ? 0 : -1;
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

/*
 * dlsym(RTLD_NEXT) finds the next definition after its caller's object,
 * which glibc reads from the return address: through the wrapper that is
 * libkvshim.so's place, which serves a preloaded kvshim (next to the main
 * program) as before; loaded late (last), nothing comes after it. Then the
 * wrapper looks from the caller's object: the first object after it, in
 * load order, that defines name itself (not one of its dependencies; the
 * loader's own scopes are not followed). Returns it, or NULL.
 */
static void *next_after(const void *caller, const char *name)
{
	struct link_map *from = NULL, *m, *owner;
	Dl_info info;
	void *h, *sym;

	if (!dladdr1(caller, &info, (void **)&from, RTLD_DL_LINKMAP) || !from)
		return NULL;
	for (m = from->l_next; m; m = m->l_next) {
		if (!m->l_name || !m->l_name[0])
			continue;
		h = dlopen(m->l_name, RTLD_LAZY | RTLD_NOLOAD);
		if (!h)
			continue;
		sym = kv_shim_dlsym(h, name);
		dlclose(h);
		owner = NULL;
		if (sym && dladdr1(sym, &info, (void **)&owner, RTLD_DL_LINKMAP) && owner == m)
			return sym;
	}
	return NULL;
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
