/*
 * ctor.c - a module whose constructor makes CUDA runtime calls, as an
 * engine's extension does when Python imports it: the loader's lock is
 * held meanwhile (dlopen runs constructors under it). With KVCTOR set, the
 * constructor first starts a thread whose first runtime call makes kvshim
 * look the runtime up, waits until that thread blocks (on the loader's
 * lock, which the look-up needs), then, with KVCTOR=call, allocates itself;
 * with KVCTOR=fork, forks, and the child allocates. Neither may hang:
 * kvshim must hold no lock of its own while it waits for the loader's.
 * What happened is read with kvctor_result once dlopen returns.
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include "blocked.h"

__attribute__((visibility("default"))) int kvctor_result(void);

static pthread_t looker;
static pid_t looker_tid;
static int started, result = -1;

static void *look_up(void *arg)
{
	__atomic_store_n(&looker_tid, (pid_t)syscall(SYS_gettid), __ATOMIC_RELEASE);
	cudaFree(0);
	return NULL;
}

/* One allocation and its free through the runtime: 0 when both succeed. */
static int allocate(void)
{
	void *p = NULL;

	if (cudaMalloc(&p, 1 << 20) != cudaSuccess)
		return 1;
	return cudaFree(p) == cudaSuccess ? 0 : 2;
}

__attribute__((constructor)) static void ctor(void)
{
	const char *mode = getenv("KVCTOR");
	int never = 0, st = -1;
	pid_t pid;

	if (!mode || pthread_create(&looker, NULL, look_up, NULL))
		return;
	started = 1;
	while (!__atomic_load_n(&looker_tid, __ATOMIC_ACQUIRE))
		sched_yield();
	kt_wait_blocked(looker_tid, &never);
	if (!strcmp(mode, "call")) {
		result = allocate();
		return;
	}
	pid = fork();
	if (pid == 0) {
		alarm(20);      /* a bound on a hang, not a wait */
		_exit(allocate());
	}
	if (pid < 0 || waitpid(pid, &st, 0) != pid)
		return;
	/* a child killed (SIGALRM: it hung) reads as 128 + the signal */
	result = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* The constructor's outcome (0: no hang, the allocations succeeded; -1:
 * not run), once the looking thread is done too. */
int kvctor_result(void)
{
	if (started) {
		pthread_join(looker, NULL);
		started = 0;
	}
	return result;
}
