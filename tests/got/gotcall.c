/*
 * gotcall.c - the caller libraries of the GOT tests (libgotcall_*.so), one
 * source linked several ways (lazy or immediate binding, with and without
 * RELRO, -fno-plt, -Bsymbolic). Each reaches libgottarget.so three ways: a
 * call through the PLT (or, with -fno-plt, a GLOB_DAT slot), a pointer in a
 * RELRO table (a R_X86_64_64 / R_AARCH64_ABS64 relocation), and a second
 * function that no test calls before patching (a lazy slot left unresolved).
 */
#include <stddef.h>

int kvgot_target(int x);
int kvgot_target2(int x);
int kvgot_call(int x);
int kvgot_call2(int x);
int kvgot_call_table(int x);

/* the NULL keeps the compiler from folding the volatile index away */
static int (*const table[2])(int) = { kvgot_target, NULL };

int kvgot_call(int x)
{
	return kvgot_target(x);
}

int kvgot_call2(int x)
{
	return kvgot_target2(x);
}

int kvgot_call_table(int x)
{
	volatile int i = 0;

	return table[i](x);
}
