// Device kernels of the GPU test suite and the benchmarks: write a pattern
// over a range and count the words that do not hold it. The CPU emulation
// (tests/emu) runs host versions of the same kernels by name.
extern "C" __global__ void kv_fill(unsigned int *p, unsigned long long nwords,
				   unsigned int seed)
{
	unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
	unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;

	for (; i < nwords; i += step)
		p[i] = seed ^ ((unsigned int)i * 2654435761u);
}

extern "C" __global__ void kv_check(const unsigned int *p, unsigned long long nwords,
				    unsigned int seed, unsigned long long *bad)
{
	unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
	unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
	unsigned long long n = 0;

	for (; i < nwords; i += step)
		n += p[i] != (seed ^ ((unsigned int)i * 2654435761u));
	if (n)
		atomicAdd(bad, n);
}
