/*
 * user.c - a module that allocates through the runtime, for the test
 * program to load with RTLD_DEEPBIND: its own cudaMalloc binds to
 * libcudart first, past a preloaded libkvshim.so, unless kvshim patches it.
 */
#include <stddef.h>

#include <cuda_runtime_api.h>

__attribute__((visibility("default"))) int kvuser_alloc(void **p, size_t n);
__attribute__((visibility("default"))) int kvuser_free(void *p);

int kvuser_alloc(void **p, size_t n)
{
	return cudaMalloc(p, n);
}

int kvuser_free(void *p)
{
	return cudaFree(p);
}
