/*
 * shim.c - start-up in two steps. Logging and configuration come first, on
 * the first call that needs them. A device's allocator (which loads the
 * driver and fills that device's pool) starts only when a span is first
 * needed on that device, so a process that never makes one pays nothing,
 * and a process on one GPU of eight starts one allocator. Each outcome is
 * kept: a process without a GPU pays for the failed start once.
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
static int listed;        /* 1 once the devices KVSHIM_DEVICE lists were checked */
static int listed_rc;
static int (*sweep_fn)(void);   /* see kv_shim_set_sweep */

/* Each device's allocator, indexed by ordinal. started is set (release)
 * once the start was tried, after alloc and rc: readers that see it read
 * those without the lock. */
static struct kv_dev {
	kv_alloc_t *alloc;
	int rc;
	int started;
} devs[KV_MAX_DEVICES];

/* The allocators started, in the order they started: what a lookup by
 * address asks. nlive is published (release) after live[nlive - 1]. */
static kv_alloc_t *live[KV_MAX_DEVICES];
static int nlive;

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
 * sizes its tables from it); a page that cannot exist there, a device
 * that does not exist and a limit under one page are refused, and where
 * the process shares a budget, a budget or ceiling under one page and a
 * floor over the budget. Returns 0, KVSHIM_ECONFIG (refused, see
 * refuse) or the driver's error (no driver: ENODEV, as the allocator would
 * say).
 */
static int fit_device(struct kv_alloc_opts *o)
{
	size_t total, gran, page, limit, budget;
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
	if (!o->share)
		return 0;       /* the budget's variables mean nothing alone */
	if (o->budget && o->budget < page)
		return refuse("KVSHIM_BUDGET", "less than one page", page);
	if (o->max && o->max < page)
		return refuse("KVSHIM_MAX", "less than one page", page);
	/* a floor the budget cannot hold would keep every other process out */
	budget = kv_alloc_budget(o, total);
	if (o->min > budget)
		return refuse("KVSHIM_MIN", "more than the budget (KVSHIM_BUDGET)", budget);
	return 0;
}

/*
 * Check, once, that the driver has every device KVSHIM_DEVICE lists (lock
 * held): a list naming a device that is not there is refused like a
 * malformed value, for every device. Returns 0, KVSHIM_ECONFIG or the
 * driver's error (no driver: ENODEV).
 */
static int check_listed(void)
{
	size_t total, gran;
	int d, rc;

	if (listed)
		return listed_rc;
	listed_rc = 0;
	for (d = 0; d < KV_MAX_DEVICES && !config.devices_all && !listed_rc; d++) {
		if (!kv_config_manages(&config, d))
			continue;
		rc = kv_prim_device_info(d, &total, &gran);
		if (rc == KVSHIM_EINVAL) {
			char why[64];

			snprintf(why, sizeof(why), "the driver has no device %d", d);
			listed_rc = refuse("KVSHIM_DEVICE", why, 0);
		} else if (rc) {
			return rc;      /* no driver: not settled, said by the start */
		}
	}
	listed = 1;
	return listed_rc;
}

/* Start device's allocator, lock held. */
static int start(int device)
{
	struct kv_alloc_opts o;
	int rc;

	rc = check_listed();
	if (rc)
		return rc;
	if (!kv_config_manages(&config, device)) {
		const char *v = getenv("KVSHIM_DEVICE");
		char shown[96];

		kv_log(KV_LOG_WARN, NULL,
		       "device %d is not in KVSHIM_DEVICE=%s: kvshim leaves its memory alone",
		       device, kv_log_escape(v ? v : "", shown, sizeof(shown)));
		return KVSHIM_ENODEV;
	}
	kv_alloc_opts_default(&o);
	o.device = device;
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
	o.reserve_pct = config.reserve_pct;
	o.min = config.min;
	o.max = config.max;
	o.weight = config.weight;
	o.share_mode = config.share_mode;
	rc = fit_device(&o);
	if (!rc)
		rc = kv_alloc_create(&o, &devs[device].alloc);
	if (rc && rc != KVSHIM_ECONFIG)
		kv_log(KV_LOG_INFO, NULL, "not started on device %d: %s", device,
		       kv_shim_strerror(rc));
	if (!rc) {
		live[nlive] = devs[device].alloc;
		__atomic_store_n(&nlive, nlive + 1, __ATOMIC_RELEASE);
		kv_debug("started on device %d", device);
	}
	return rc;
}

int kv_shim_alloc_on(int device, kv_alloc_t **a)
{
	struct kv_dev *d;
	int rc;

	*a = NULL;
	if (device < 0 || device >= KV_MAX_DEVICES) {
		static int said;

		if (!kv_shim_settings())
			return KVSHIM_ECONFIG;
		if (!__atomic_exchange_n(&said, 1, __ATOMIC_RELAXED))
			kv_log(KV_LOG_WARN, NULL,
			       "device %d: kvshim manages devices 0 to %d only: it leaves this one alone",
			       device, KV_MAX_DEVICES - 1);
		return KVSHIM_ENODEV;
	}
	d = &devs[device];
	/* a plain load after the first start: no lock on the hot path */
	if (__atomic_load_n(&d->started, __ATOMIC_ACQUIRE)) {
		*a = d->alloc;
		return d->rc;
	}
	pthread_mutex_lock(&start_lock);
	if (!configured)
		configure();
	if (!d->started) {
		d->rc = config_rc ? config_rc : start(device);
		__atomic_store_n(&d->started, 1, __ATOMIC_RELEASE);
	}
	rc = d->rc;
	*a = d->alloc;
	pthread_mutex_unlock(&start_lock);
	return rc;
}

int kv_shim_device(int *device)
{
	if (!kv_shim_settings())
		return KVSHIM_ECONFIG;
	return kv_prim_current_device(device);
}

int kv_shim_alloc(kv_alloc_t **a)
{
	int device, rc;

	*a = NULL;
	rc = kv_shim_device(&device);
	return rc ? rc : kv_shim_alloc_on(device, a);
}

kv_alloc_t *kv_shim_running_on(int device)
{
	if (device < 0 || device >= KV_MAX_DEVICES ||
	    !__atomic_load_n(&devs[device].started, __ATOMIC_ACQUIRE))
		return NULL;
	return devs[device].alloc;
}

kv_alloc_t *kv_shim_running(void)
{
	int device;

	if (!__atomic_load_n(&nlive, __ATOMIC_ACQUIRE) ||
	    kv_prim_current_device(&device))
		return NULL;
	return kv_shim_running_on(device);
}

kv_alloc_t *kv_shim_sole(void)
{
	return __atomic_load_n(&nlive, __ATOMIC_ACQUIRE) == 1 ? live[0] : NULL;
}

kv_alloc_t *kv_shim_owner(CUdeviceptr addr, CUdeviceptr *base, size_t *size,
			  uint64_t *id)
{
	int i, n = __atomic_load_n(&nlive, __ATOMIC_ACQUIRE);

	for (i = 0; i < n; i++)
		if (kv_alloc_span(live[i], addr, base, size, id) == 0)
			return live[i];
	return NULL;
}

void kv_shim_capture(int begin)
{
	int i, n;

	if (begin) {
		kv_prim_capture_begin();
		return;
	}
	kv_prim_capture_end();
	/* work put off during the capture (unmaps that need a fence) */
	if (kv_prim_capturing())
		return;
	n = __atomic_load_n(&nlive, __ATOMIC_ACQUIRE);
	for (i = 0; i < n; i++)
		kv_alloc_wake(live[i]);
}

int kv_shim_capture_wait(unsigned ms)
{
	return kv_prim_capture_wait(ms);
}

const struct kv_config *kv_shim_config(void)
{
	return __atomic_load_n(&configured, __ATOMIC_ACQUIRE) ? &config : NULL;
}

/* Forget every device's allocator (destroying them when destroy), lock
 * held or in a child after fork. */
static void forget(int destroy)
{
	int i;

	__atomic_store_n(&nlive, 0, __ATOMIC_RELEASE);
	for (i = 0; i < KV_MAX_DEVICES; i++) {
		if (destroy)
			kv_alloc_destroy(devs[i].alloc);
		devs[i].alloc = NULL;
		devs[i].rc = 0;
		__atomic_store_n(&devs[i].started, 0, __ATOMIC_RELEASE);
		live[i] = NULL;
	}
}

void kv_shim_shutdown(void)
{
	pthread_mutex_lock(&start_lock);
	forget(1);
	config_rc = 0;
	listed = 0;
	__atomic_store_n(&configured, 0, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&start_lock);
}

/*
 * In a child after fork only the calling thread exists: the allocators'
 * workers are gone and a CUDA context cannot be used. The child forgets the
 * parent's allocators (their memory belongs to the parent) and starts afresh
 * if it ever needs one.
 */
void kv_shim_forked(void)
{
	pthread_mutex_init(&start_lock, NULL);
	kv_prim_forked();
	forget(0);
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
