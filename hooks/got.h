/*
 * got.h - interposition by rewriting GOT slots, for the modules that
 * LD_PRELOAD does not reach: a module loaded with RTLD_DEEPBIND, one linked
 * -Bsymbolic, or every module already loaded when libkvshim.so itself comes
 * late through dlopen (Python ctypes after torch).
 *
 * The relocations are read from each object's file on disk (libelf): PLT
 * slots (JUMP_SLOT), GOT data slots (GLOB_DAT, which -fno-plt calls go
 * through) and plain pointer relocations (R_X86_64_64 / R_AARCH64_ABS64,
 * addend 0) that name one of the hooked symbols. A slot in a read-only page
 * (RELRO) is made writable for the store and given its original protection
 * back, derived from the object's PT_LOAD and PT_GNU_RELRO headers.
 *
 * All calls are serialized by one mutex and are idempotent: a slot that
 * already holds the hook is left alone and never reported as an original.
 */
#ifndef KV_GOT_H
#define KV_GOT_H

#include <stddef.h>
#include <stdint.h>

struct kv_got_hook {
	const char *name; /* symbol name as imported, e.g. "cudaMalloc" */
	void *func;       /* what the slot should point to */
	/* Optional (NULL: don't care): receives the previous value of the
	 * first slot patched, when *orig is still NULL. Left untouched where
	 * that value is no real function: NULL, the hook itself, or a lazy
	 * binding stub in the object's own PLT (a JUMP_SLOT not yet resolved);
	 * a later slot that is resolved fills it. The caller must be ready to
	 * find the real function by other means (dlsym). */
	void **orig;
};

/* Patch every slot of one loaded object that imports one of hooks[0..n).
 * path is the object's file (link_map l_name, dl_phdr_info dlpi_name; ""
 * means the main program, read through /proc/self/exe) and load_base its
 * load bias (l_addr, dlpi_addr). The file's program headers must match those
 * of the object loaded at load_base, so a stale file is never trusted.
 * Returns the number of slots written (0 when every slot already held its
 * hook or nothing is imported); KVSHIM_EINVAL for a NULL path, a hook
 * without name or func, hooks NULL with n > 0, or a load_base where no
 * object is loaded; KVSHIM_ESTATE when the file cannot be read, is not an
 * ELF object of this machine or does not match the loaded object (logged,
 * nothing written); KVSHIM_ENOMEM when memory runs out. */
int kv_got_patch_object(const char *path, uintptr_t load_base,
			const struct kv_got_hook *hooks, size_t n);

/* Patch every loaded object (dl_iterate_phdr) but the one holding the
 * address self (libkvshim.so: its own GOT must keep reaching the real
 * functions; NULL skips none) and those whose file name starts with one of
 * the NULL-terminated prefixes in skip (may be NULL), e.g. "libcuda.so",
 * "libcudart.so", "ld-linux", "linux-vdso". Objects that cannot be read
 * (no file, stale file) are logged and skipped.
 * Returns the total number of slots written; KVSHIM_EINVAL for bad hooks
 * (as kv_got_patch_object); KVSHIM_ENOMEM when memory ran out for some
 * object and no slot was written. */
int kv_got_patch_all(const void *self, const char *const *skip,
		     const struct kv_got_hook *hooks, size_t n);

/* The lock across fork, for the caller's pthread_atfork handlers (attach.c):
 * taken before fork, so that no child starts with a patch half done or the
 * lock held by a thread it does not have; let go after, in the parent and
 * in the child. */
void kv_got_fork_prepare(void);
void kv_got_fork_parent(void);
void kv_got_fork_child(void);

#endif /* KV_GOT_H */
