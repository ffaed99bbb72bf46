/*
 * demo.c - kvshim's allocator at work through the public ABI: a KV cache
 * reserved in full, physical pages following the blocks in use, and memory
 * given back when blocks are freed. Runs on a GPU, or on the CPU emulation
 * of the driver (tests/emu), and says which.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#include "kvshim.h"

#define MIB (1024.0 * 1024.0)
#define BLOCK ((size_t)256 << 10)   /* one KV block of one layer */

static void row(const char *step)
{
	struct kvshim_stats s;
	double per_page = 0;

	if (kvshim_stats(&s)) {
		printf("%-44s (no stats)\n", step);
		return;
	}
	if (s.pages_mapped)
		per_page = s.map_ns / 1000.0 / s.pages_mapped;
	printf("%-44s %10.0f %9.0f %8.0f %8.0f %9.0f %9.2f\n", step,
	       s.reserved_bytes / MIB, s.mapped_bytes / MIB, s.cached_bytes / MIB,
	       s.pooled_bytes / MIB, s.physical_bytes / MIB, per_page);
}

static int check(int rc, const char *what)
{
	if (rc)
		fprintf(stderr, "kvshim demo: %s: %s\n", what, kvshim_strerror(rc));
	return rc;
}

static const char *driver_kind(void)
{
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
	int (*emu)(void) = h ? (int (*)(void))dlsym(h, "kvemu_is_emulation") : NULL;

	return emu && emu() ? "the CPU emulation of the CUDA driver (no GPU here)"
			    : "the real CUDA driver";
}

int main(int argc, char **argv)
{
	size_t reserve = (size_t)64 << 30, b, nblocks, freed = 0, last = 0;
	char *kv = NULL;
	int rc;

	if (argc > 1)
		reserve = (size_t)strtoull(argv[1], NULL, 0) << 30;
	rc = kvshim_reserve(reserve, (void **)&kv);
	if (rc == KVSHIM_ENODEV) {
		fprintf(stderr, "kvshim demo: no CUDA driver or GPU found; "
			"run through scripts/demo.sh to use the CPU emulation\n");
		return 1;
	}
	if (check(rc, "reserve"))
		return 1;
	printf("kvshim demo on %s\n\n", driver_kind());
	printf("%-44s %10s %9s %8s %8s %9s %9s\n", "step (MiB)", "reserved",
	       "mapped", "cached", "pooled", "physical", "map us/pg");
	row("reserve a KV cache span");

	/* requests arrive: their blocks are backed as the engine hands them out */
	nblocks = ((size_t)512 << 20) / BLOCK;
	for (b = 0; b < nblocks; b++)
		if (check(kvshim_map(kv + b * BLOCK, BLOCK), "map"))
			return 1;
	row("requests hold 2048 blocks (512 MiB)");
	for (; b < 4 * nblocks; b++)
		if (check(kvshim_map(kv + b * BLOCK, BLOCK), "map"))
			return 1;
	row("requests hold 8192 blocks (2 GiB)");

	/* most requests finish: their blocks stay mapped as cache, for free */
	for (b = nblocks; b < 4 * nblocks; b++)
		if (check(kvshim_unmap(kv + b * BLOCK, BLOCK), "unmap"))
			return 1;
	row("6144 blocks freed (pages kept as cache)");

	/* another model needs memory: the cache goes back to the driver */
	if (check(kvshim_trim((size_t)1 << 40, &freed), "trim"))
		return 1;
	row("trim: cache and pool given back");

	/* new requests reuse pages without a new reservation */
	for (b = 0; b < nblocks; b++)
		if (check(kvshim_map(kv + (nblocks + b) * BLOCK, BLOCK), "map"))
			return 1;
	row("2048 more blocks mapped");
	if (check(kvshim_release(kv), "release"))
		return 1;
	row("span released (its pages return later)");
	if (check(kvshim_trim((size_t)1 << 40, &last), "trim"))
		return 1;
	row("trim: its pages given back (pool refilled)");
	printf("\ntrim gave back %.0f MiB; physical memory followed the blocks in use, "
	       "not the %.0f GiB reserved.\n", freed / MIB, reserve / MIB / 1024);
	return 0;
}
