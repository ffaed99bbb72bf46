/*
 * attach.c - what runs when libkvshim.so is loaded: the fork handler, and,
 * when the library was not preloaded but loaded late (dlopen, Python's
 * ctypes after torch was imported), GOT patching of every module already
 * loaded, so their later CUDA calls reach the wrappers all the same.
 */
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "boundary.h"
#include "got.h"
#include "hooks.h"
#include "kvlog.h"

/* The objects whose own calls must keep reaching the real functions. */
static const char *const skip[] = {
	"libcuda.so", "libcudart.so", "libcudart-", "libnvidia-", "ld-linux",
	"libc.so", "libkvshim", "linux-vdso", NULL
};

#define KV_GOT_ENTRY(name, ret, args) { #name, (void *)kv_hook_##name, NULL },
static const struct kv_got_hook all_hooks[] = {
	KV_DRIVER_HOOKS(KV_GOT_ENTRY)
	KV_RUNTIME_HOOKS(KV_GOT_ENTRY)
};
#undef KV_GOT_ENTRY

/*
 * The dlsym road: a program that carries the runtime statically (nvcc's
 * default) and libcudart itself open libcuda.so.1 and look its functions
 * up with dlsym. Their dlsym slots go to kv_hook_dlsym, which hands back
 * wrappers for hooked driver functions (cuGetProcAddress included, so the
 * look-ups it serves are covered too). Only the main program and libcudart
 * are patched. A dlsym(RTLD_NEXT) made through the wrapper is resolved from
 * its caller's object (kv_hook_dlsym), not libkvshim.so's place in the
 * search order, which loaded late is last.
 */
static int patch_dlsym(struct dl_phdr_info *info, size_t size, void *arg)
{
	static const struct kv_got_hook dl[] = {
		{ "dlsym", (void *)kv_hook_dlsym, NULL }
	};
	const char *base = strrchr(info->dlpi_name, '/');
	int n;

	base = base ? base + 1 : info->dlpi_name;
	if (info->dlpi_name[0] &&
	    (strncmp(base, "libcudart", 9) || (base[9] != '.' && base[9] != '-')))
		return 0;
	n = kv_got_patch_object(info->dlpi_name, info->dlpi_addr, dl, 1);
	if (n > 0)
		*(int *)arg += n;
	return 0;
}

int kv_hooks_attach(int all)
{
	int n = 0, m = 0;

	if (all)
		n = kv_got_patch_all((const void *)kv_hooks_attach, skip,
				     all_hooks,
				     sizeof(all_hooks) / sizeof(all_hooks[0]));
	dl_iterate_phdr(patch_dlsym, &m);
	return n < 0 ? n : n + m;
}

static int count_adds(struct dl_phdr_info *info, size_t size, void *arg)
{
	*(unsigned long long *)arg = info->dlpi_adds;
	return 1;
}

/* The sweep's lock; the GOT patcher's is taken inside it. */
static pthread_mutex_t sweep_lock = PTHREAD_MUTEX_INITIALIZER;

int kv_hooks_sweep(void)
{
	static unsigned long long seen;
	unsigned long long adds = 0;
	int n = 0;

	dl_iterate_phdr(count_adds, &adds);
	if (adds == __atomic_load_n(&seen, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&sweep_lock);
	if (adds != seen) {
		n = kv_hooks_attach(1);
		__atomic_store_n(&seen, adds, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&sweep_lock);
	return n < 0 ? 0 : n;
}

/* Was this library named in LD_PRELOAD? */
static int preloaded(void)
{
	const char *list = getenv("LD_PRELOAD"), *base;
	Dl_info info;

	if (!list || !dladdr((void *)preloaded, &info) || !info.dli_fname)
		return 0;
	base = strrchr(info.dli_fname, '/');
	base = base ? base + 1 : info.dli_fname;
	return strstr(list, base) != NULL;
}

/*
 * A fork waits for the hooks' locks, in the order they nest (the sweep's,
 * then the GOT patcher's; the runtime look-up's is taken under neither), so
 * that the child has every one free and nothing half patched or half
 * published, whatever its parent's other threads were doing. None of them
 * is held across a call that waits for another thread.
 */
static void prepare(void)
{
	pthread_mutex_lock(&sweep_lock);
	kv_got_fork_prepare();
	kv_hooks_real_fork_prepare();
}

static void parent(void)
{
	kv_hooks_real_fork_parent();
	kv_got_fork_parent();
	pthread_mutex_unlock(&sweep_lock);
}

static void child(void)
{
	kv_hooks_real_fork_child();
	kv_got_fork_child();
	pthread_mutex_unlock(&sweep_lock);
	kv_shim_forked();
}

__attribute__((constructor)) static void attach(void)
{
	int n;

	pthread_atfork(prepare, parent, child);
	kv_shim_set_sweep(kv_hooks_sweep);
	if (preloaded()) {
		kv_hooks_attach(0);
		return;
	}
	n = kv_hooks_attach(1);
	if (n < 0)
		kv_warn("loaded late, and the modules already loaded could not be patched: %d", n);
	else
		kv_info("loaded late: %d call sites of modules already loaded now reach kvshim", n);
}
