/*
 * shim.c - start-up in two steps. Logging and configuration come first, on
 * the first call that needs them. The allocator (which loads the driver and
 * fills the pool) starts only when a span is first needed, so a process that
 * never makes one pays nothing. Each outcome is kept: a process without a
 * GPU pays for the failed start once.
 */
#include <pthread.h>
#include <stdlib.h>

#include "kvshim.h"
#include "log.h"
#include "prim.h"
#include "shim.h"

#define KV_STRICT_EXIT 64

static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kv_config config;
static int configured;    /* 1 once the configuration was read */
static int config_rc;
static kv_alloc_t *alloc;
static int started;       /* 1 once the allocator's start was tried */
static int start_rc;
static int (*sweep_fn)(void);   /* see kv_shim_set_sweep */

/* Read the configuration, lock held. */
static void configure(void)
{
	config_rc = kv_config_load(&config);
	if (config_rc) {
		if (config.strict) {
			kv_log(KV_LOG_ERROR, NULL,
			       "KVSHIM_STRICT is on: exiting with status %d",
			       KV_STRICT_EXIT);
			exit(KV_STRICT_EXIT);
		}
		kv_log(KV_LOG_ERROR, NULL,
		       "kvshim is disabled by the malformed variable above: "
		       "every call passes through untouched");
	}
	__atomic_store_n(&configured, 1, __ATOMIC_RELEASE);
}

const struct kv_config *kv_shim_settings(void)
{
	if (!__atomic_load_n(&configured, __ATOMIC_ACQUIRE)) {
		pthread_mutex_lock(&start_lock);
		if (!configured)
			configure();
		pthread_mutex_unlock(&start_lock);
	}
	return config_rc ? NULL : &config;
}

/* Start the allocator, lock held. */
static int start(void)
{
	struct kv_alloc_opts o;
	int rc;

	kv_alloc_opts_default(&o);
	o.device = config.device;
	o.page = config.page;
	o.limit = config.limit;
	o.limit_pct = config.limit_pct;
	o.pool_low = config.pool_low;
	o.pool_high = config.pool_high;
	o.cache_max = config.cache_max;
	o.zero = config.zero;
	o.share = config.share;
	o.pool_name = config.pool[0] ? config.pool : NULL;
	o.budget = config.budget;
	o.budget_pct = config.budget_pct;
	o.min = config.min;
	o.max = config.max;
	o.share_mode = config.share_mode;
	rc = kv_alloc_create(&o, &alloc);
	if (rc)
		kv_log(KV_LOG_INFO, NULL, "not started: %s", kv_shim_strerror(rc));
	return rc;
}

int kv_shim_alloc(kv_alloc_t **a)
{
	int rc;

	/* a plain load after the first start: no lock on the hot path */
	if (__atomic_load_n(&started, __ATOMIC_ACQUIRE)) {
		*a = alloc;
		return start_rc;
	}
	pthread_mutex_lock(&start_lock);
	if (!configured)
		configure();
	if (!started) {
		start_rc = config_rc ? config_rc : start();
		__atomic_store_n(&started, 1, __ATOMIC_RELEASE);
	}
	rc = start_rc;
	*a = alloc;
	pthread_mutex_unlock(&start_lock);
	return rc;
}

kv_alloc_t *kv_shim_running(void)
{
	return __atomic_load_n(&started, __ATOMIC_ACQUIRE) ? alloc : NULL;
}

const struct kv_config *kv_shim_config(void)
{
	return __atomic_load_n(&configured, __ATOMIC_ACQUIRE) ? &config : NULL;
}

void kv_shim_shutdown(void)
{
	pthread_mutex_lock(&start_lock);
	kv_alloc_destroy(alloc);
	alloc = NULL;
	start_rc = 0;
	config_rc = 0;
	__atomic_store_n(&started, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&configured, 0, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&start_lock);
}

/*
 * In a child after fork only the calling thread exists: the allocator's
 * worker is gone and a CUDA context cannot be used. The child forgets the
 * parent's allocator (its memory belongs to the parent) and starts afresh
 * if it ever needs one.
 */
void kv_shim_forked(void)
{
	pthread_mutex_init(&start_lock, NULL);
	alloc = NULL;
	start_rc = 0;
	__atomic_store_n(&started, 0, __ATOMIC_RELEASE);
}

void kv_shim_set_sweep(int (*sweep)(void))
{
	__atomic_store_n(&sweep_fn, sweep, __ATOMIC_RELEASE);
}

int kv_shim_sweep(void)
{
	int (*sweep)(void) = __atomic_load_n(&sweep_fn, __ATOMIC_ACQUIRE);

	return sweep ? sweep() : 0;
}

void *kv_shim_driver(void)
{
	return kv_prim_driver();
}

void *kv_shim_dlsym(void *handle, const char *name)
{
	return kv_prim_dlsym(handle, name);
}

const char *kv_shim_strerror(int err)
{
	switch (err) {
	case KVSHIM_OK: return "success";
	case KVSHIM_EINVAL: return "invalid argument";
	case KVSHIM_ERANGE: return "address range is not inside one kvshim span";
	case KVSHIM_ENOTCLAIMED: return "range holds no claim to drop";
	case KVSHIM_ELIMIT: return "physical memory limit reached";
	case KVSHIM_ENOMEM: return "out of device or host memory";
	case KVSHIM_EDRIVER: return "CUDA driver error (see the log)";
	case KVSHIM_ENODEV: return "no CUDA driver or device";
	case KVSHIM_ECONFIG: return "malformed KVSHIM_* variable (see the log)";
	case KVSHIM_EBUSY: return "span is busy";
	case KVSHIM_ESTATE: return "kvshim is shut down or disabled";
	}
	return "unknown kvshim error";
}
