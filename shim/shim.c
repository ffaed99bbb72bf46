/*
 * shim.c - start-up in two steps. Logging and configuration come first, on
 * the first call that needs them. The allocator (which loads the driver and
 * fills the pool) starts only when a span is first needed, so a process that
 * never makes one pays nothing. Each outcome is kept: a process without a
 * GPU pays for the failed start once.
 */
#include <pthread.h>
#include <stdio.h>
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

/* A KVSHIM_* value refused once the device is known: logged naming the
 * variable as set (and the size it was checked against, if bytes), and
 * with KVSHIM_STRICT on, the process exits as for a malformed one. Returns
 * KVSHIM_ECONFIG. */
static int refuse(const char *name, const char *why, size_t bytes)
{
	const char *v = getenv(name);
	char shown[96], size[48] = "";

	if (bytes)
		snprintf(size, sizeof(size), " (%zu MiB)", bytes >> 20);
	kv_log(KV_LOG_ERROR, NULL, "%s=%s: %s%s", name,
	       kv_log_escape(v ? v : "", shown, sizeof(shown)), why, size);
	if (config.strict) {
		kv_log(KV_LOG_ERROR, NULL, "KVSHIM_STRICT is on: exiting with status %d",
		       KV_STRICT_EXIT);
		exit(KV_STRICT_EXIT);
	}
	kv_log(KV_LOG_ERROR, NULL, "kvshim is not started: every call passes through untouched");
	return KVSHIM_ECONFIG;
}

/* Cap *v at most bytes; when the variable was set, say so naming it. */
static void cap(const char *name, size_t *v, size_t most, const char *what)
{
	const char *set = getenv(name);
	char shown[96];

	if (*v <= most)
		return;
	if (set)
		kv_log(KV_LOG_WARN, NULL, "%s=%s: more than %s (%zu MiB): capped to it",
		       name, kv_log_escape(set, shown, sizeof(shown)), what, most >> 20);
	*v = most;
}

/*
 * Check the options against the device they are for, lock held: sizes
 * beyond its memory are capped (the limit is a ceiling, and the allocator
 * sizes its tables from it), a page that cannot exist there and a device
 * that does not exist are refused. Returns 0, KVSHIM_ECONFIG (refused, see
 * refuse) or the driver's error (no driver: ENODEV, as the allocator would
 * say).
 */
static int fit_device(struct kv_alloc_opts *o)
{
	size_t total, gran, page, limit;
	char what[64];
	int rc;

	rc = kv_prim_device_info(o->device, &total, &gran);
	if (rc == KVSHIM_EINVAL)
		return refuse("KVSHIM_DEVICE", "the driver has no such device", 0);
	if (rc)
		return rc;
	snprintf(what, sizeof(what), "device %d's memory", o->device);
	if (o->page > total)
		return refuse("KVSHIM_PAGE", "larger than the device's memory", total);
	if (o->page % gran)
		return refuse("KVSHIM_PAGE", "not a multiple of the device's granularity", gran);
	page = o->page ? o->page : gran;
	if (o->limit)
		cap("KVSHIM_LIMIT", &o->limit, total, what);
	limit = o->limit ? o->limit : total / 100 * (o->limit_pct ? o->limit_pct : 100);
	if (limit < page)
		return refuse("KVSHIM_LIMIT", "less than one page", page);
	cap("KVSHIM_POOL_HIGH", &o->pool_high, limit, "the limit");
	cap("KVSHIM_POOL_LOW", &o->pool_low, o->pool_high, "KVSHIM_POOL_HIGH");
	if (o->budget)
		cap("KVSHIM_BUDGET", &o->budget, total, what);
	cap("KVSHIM_MIN", &o->min, total, what);
	if (o->max)
		cap("KVSHIM_MAX", &o->max, total, what);
	return 0;
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
	o.weight = config.weight;
	o.share_mode = config.share_mode;
	rc = fit_device(&o);
	if (!rc)
		rc = kv_alloc_create(&o, &alloc);
	if (rc && rc != KVSHIM_ECONFIG)
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

void kv_shim_capture(int begin)
{
	kv_alloc_t *a;

	if (begin) {
		kv_prim_capture_begin();
		return;
	}
	kv_prim_capture_end();
	/* work put off during the capture (unmaps that need a fence) */
	a = kv_shim_running();
	if (a && !kv_prim_capturing())
		kv_alloc_wake(a);
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
