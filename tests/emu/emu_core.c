/*
 * emu_core.c: configuration, the entry check shared by every driver function (call counts,
 * failure injection, not-initialized), cuInit, error strings, cuGetProcAddress, and the kvemu_*
 * control API (kvemu_capture_stats is emu_graph.c's).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu_int.h"

kv_emu_state_t kv_emu = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .next_handle = 0x10000,
    .next_map_id = 1,
};

static const struct {
    const char *name;
    int version;
} funcs[KV_FN_COUNT] = {
#define KV_EMU_NAME(name, ver) { #name, ver },
    KV_EMU_FUNCS(KV_EMU_NAME)
#undef KV_EMU_NAME
};

static void *const locals[KV_FN_COUNT] = {
#define KV_EMU_ADDR(name, ver) (void *)&kv_emu_local_##name,
    KV_EMU_FUNCS(KV_EMU_ADDR)
#undef KV_EMU_ADDR
};

static unsigned long long calls[KV_FN_COUNT];

/*
 * Armed failures. armed counts the armed entries so the common case (none) costs one atomic
 * load per call instead of a lock.
 */
static struct {
    int n;
    int times;                  /* calls failing from the n-th on (kvemu_fail_times) */
    CUresult err;
} fails[KV_FN_COUNT];
static int armed;
static pthread_mutex_t fail_lock = PTHREAD_MUTEX_INITIALIZER;

/*
 * Held functions (kvemu_hold): a call waits at its start on hold_cond while held[fn] is set;
 * waiting[fn] counts those waiting now. Holds count in armed too, for the same fast path.
 */
static bool held[KV_FN_COUNT];
static int waiting[KV_FN_COUNT];
static pthread_cond_t hold_cond = PTHREAD_COND_INITIALIZER;

/* ------------------------------------------------------------------ configuration */

#define DEFAULT_DEVICE_BYTES ((size_t)8 << 30)
#define DEFAULT_DEVICE_COUNT 1

static pthread_once_t config_once = PTHREAD_ONCE_INIT;

/*
 * Parse "<digits>[K|M|G|T]" (binary multiples, either case) into bytes, rounded down to the
 * 2 MiB chunk size. Returns 0, or -EINVAL with *why saying what is wrong.
 */
static int parse_bytes(const char *s, size_t *out, const char **why)
{
    unsigned long long v = 0, mul = 1;
    const char *p = s;

    if (*p < '0' || *p > '9') {
        *why = "not a number";
        return -EINVAL;
    }
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (~0ULL - 9) / 10) {
            *why = "too large";
            return -EINVAL;
        }
        v = v * 10 + (unsigned long long)(*p - '0');
    }
    switch (*p) {
    case 'k': case 'K': mul = 1ULL << 10; p++; break;
    case 'm': case 'M': mul = 1ULL << 20; p++; break;
    case 'g': case 'G': mul = 1ULL << 30; p++; break;
    case 't': case 'T': mul = 1ULL << 40; p++; break;
    default: break;
    }
    if (*p != '\0') {
        *why = "unknown suffix (use K, M, G or T)";
        return -EINVAL;
    }
    if (v > (unsigned long long)SIZE_MAX / mul) {
        *why = "too large";
        return -EINVAL;
    }
    v *= mul;
    v -= v % KV_EMU_PAGE;
    if (v == 0) {
        *why = "less than one 2 MiB page";
        return -EINVAL;
    }
    *out = (size_t)v;
    return 0;
}

/* Parse a device count, 1 to KV_EMU_MAX_DEVICES. Returns 0 or -EINVAL with *why. */
static int parse_count(const char *s, int *out, const char **why)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || errno != 0) {
        *why = "not a number";
        return -EINVAL;
    }
    if (v < 1 || v > KV_EMU_MAX_DEVICES) {
        *why = "out of range (1 to 16)";
        return -EINVAL;
    }
    *out = (int)v;
    return 0;
}

/*
 * Parse KVEMU_DEVICE_BYTES: one size for every device, or a comma-separated list of sizes, the
 * n-th for device n (devices past the list take its last size; sizes past the devices are
 * unused). Returns 0 with sizes[0..*n) set, or -EINVAL with *why.
 */
static int parse_sizes(const char *s, size_t *sizes, int *n, const char **why)
{
    char item[64];
    const char *p = s, *comma;
    size_t len;

    *n = 0;
    for (;;) {
        comma = strchr(p, ',');
        len = comma ? (size_t)(comma - p) : strlen(p);
        if (*n == KV_EMU_MAX_DEVICES) {
            *why = "more than 16 sizes";
            return -EINVAL;
        }
        if (len == 0 || len >= sizeof(item)) {
            *why = len ? "a size is too long" : "an empty size in the list";
            return -EINVAL;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        if (parse_bytes(item, &sizes[*n], why) < 0)
            return -EINVAL;
        (*n)++;
        if (!comma)
            return 0;
        p = comma + 1;
    }
}

/*
 * Read KVEMU_* once, at the first call of anything: a bad value is reported and replaced by the
 * default, never fatal, as a test should not die of its environment. KVEMU_DEVICES counts the
 * devices; KVEMU_DEVICE_BYTES sizes each (see parse_sizes).
 */
static void load_config(void)
{
    size_t sizes[KV_EMU_MAX_DEVICES] = { DEFAULT_DEVICE_BYTES };
    const char *s, *why = "";
    int nsizes = 1;

    kv_emu.ndevices = DEFAULT_DEVICE_COUNT;
    s = getenv("KVEMU_DEVICE_BYTES");
    if (s && parse_sizes(s, sizes, &nsizes, &why) < 0) {
        fprintf(stderr, "kvemu: KVEMU_DEVICE_BYTES=%s: %s\n", s, why);
        sizes[0] = DEFAULT_DEVICE_BYTES;
        nsizes = 1;
    }
    s = getenv("KVEMU_DEVICES");
    if (s && parse_count(s, &kv_emu.ndevices, &why) < 0) {
        fprintf(stderr, "kvemu: KVEMU_DEVICES=%s: %s\n", s, why);
        kv_emu.ndevices = DEFAULT_DEVICE_COUNT;
    }
    for (int i = 0; i < KV_EMU_MAX_DEVICES; i++)
        kv_emu.devs[i].bytes = sizes[i < nsizes ? i : nsizes - 1];
}

static void ensure_config(void)
{
    pthread_once(&config_once, load_config);
}

/* ------------------------------------------------------------------ shared helpers */

/*
 * fork: a child's driver calls must not find the lock held by a thread the child does not
 * have (a kvshim worker of the parent's inside a driver call as it forked): the lock is taken
 * across fork, as glibc takes malloc's, from the first time it is taken at all.
 */
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void fork_prepare(void)
{
    pthread_mutex_lock(&kv_emu.lock);
}

static void fork_release(void)
{
    pthread_mutex_unlock(&kv_emu.lock);
}

static void fork_safe(void)
{
    pthread_atfork(fork_prepare, fork_release, fork_release);
}

void kv_emu_lock(void)
{
    pthread_once(&fork_once, fork_safe);
    pthread_mutex_lock(&kv_emu.lock);
}

void kv_emu_unlock(void)
{
    pthread_mutex_unlock(&kv_emu.lock);
}

bool kv_emu_valid_device(int ordinal)
{
    return ordinal >= 0 && ordinal < kv_emu.ndevices;
}

/* The CUresult closest to an errno from a failed host call. */
CUresult kv_emu_from_errno(int err)
{
    switch (err) {
    case ENOMEM:
    case ENOSPC:
        return CUDA_ERROR_OUT_OF_MEMORY;
    case EINVAL:
        return CUDA_ERROR_INVALID_VALUE;
    case EFAULT:
        return CUDA_ERROR_ILLEGAL_ADDRESS;
    default:
        return CUDA_ERROR_OPERATING_SYSTEM;
    }
}

/*
 * Wait while fn is held, then fire fn's armed failure if this call is the one. Returns its error,
 * or CUDA_SUCCESS.
 */
static CUresult take_failure(enum kv_emu_fn fn)
{
    CUresult r = CUDA_SUCCESS;

    pthread_mutex_lock(&fail_lock);
    if (held[fn]) {
        waiting[fn]++;
        while (held[fn])
            pthread_cond_wait(&hold_cond, &fail_lock);
        waiting[fn]--;
    }
    if (fails[fn].n > 0 && --fails[fn].n == 0) {
        r = fails[fn].err;
        if (--fails[fn].times > 0)
            fails[fn].n = 1;    /* the next call fails too */
        else
            __atomic_sub_fetch(&armed, 1, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&fail_lock);
    return r;
}

/* The function whose next entry on this thread passes (kv_emu_pass_next), or -1. */
static __thread int pass_next = -1;

void kv_emu_pass_next(enum kv_emu_fn fn)
{
    pass_next = (int)fn;
}

CUresult kv_emu_enter(enum kv_emu_fn fn, bool need_init)
{
    CUresult r;

    if (pass_next == (int)fn) {
        pass_next = -1;
        return CUDA_SUCCESS;
    }
    ensure_config();
    __atomic_add_fetch(&calls[fn], 1, __ATOMIC_RELAXED);
    if (__atomic_load_n(&armed, __ATOMIC_RELAXED) > 0) {
        r = take_failure(fn);
        if (r != CUDA_SUCCESS)
            return r;
    }
    if (need_init && !__atomic_load_n(&kv_emu.initialized, __ATOMIC_ACQUIRE))
        return CUDA_ERROR_NOT_INITIALIZED;
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------------------ init and version */

KV_EMU_API CUresult cuInit(unsigned int Flags)
{
    CUresult r = CUDA_SUCCESS;
    int err;

    KV_EMU_ENTER_NOINIT(cuInit);
    if (Flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    kv_emu_lock();
    if (!kv_emu.initialized) {
        err = kv_emu_mem_init();
        if (err < 0)
            r = kv_emu_from_errno(-err);
        else
            __atomic_store_n(&kv_emu.initialized, true, __ATOMIC_RELEASE);
    }
    kv_emu_unlock();
    return r;
}
KV_EMU_ALIAS(cuInit);

KV_EMU_API CUresult cuDriverGetVersion(int *driverVersion)
{
    KV_EMU_ENTER_NOINIT(cuDriverGetVersion);
    if (!driverVersion)
        return CUDA_ERROR_INVALID_VALUE;
    *driverVersion = CUDA_VERSION;
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuDriverGetVersion);

/* ------------------------------------------------------------------ error strings */

#define KV_EMU_ERRORS(E)                                                                  \
    E(CUDA_SUCCESS, "no error")                                                           \
    E(CUDA_ERROR_INVALID_VALUE, "invalid argument")                                       \
    E(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")                                          \
    E(CUDA_ERROR_NOT_INITIALIZED, "initialization error")                                 \
    E(CUDA_ERROR_DEINITIALIZED, "driver shutting down")                                   \
    E(CUDA_ERROR_NO_DEVICE, "no CUDA-capable device is detected")                         \
    E(CUDA_ERROR_INVALID_DEVICE, "invalid device ordinal")                                \
    E(CUDA_ERROR_INVALID_IMAGE, "device kernel image is invalid")                         \
    E(CUDA_ERROR_INVALID_CONTEXT, "invalid device context")                               \
    E(CUDA_ERROR_CONTEXT_ALREADY_CURRENT, "context already current")                      \
    E(CUDA_ERROR_ALREADY_MAPPED, "resource already mapped")                               \
    E(CUDA_ERROR_NOT_MAPPED, "resource not mapped")                                       \
    E(CUDA_ERROR_INVALID_HANDLE, "invalid resource handle")                               \
    E(CUDA_ERROR_ILLEGAL_STATE, "the operation cannot be performed in the present state") \
    E(CUDA_ERROR_NOT_FOUND, "named symbol not found")                                     \
    E(CUDA_ERROR_NOT_READY, "device not ready")                                           \
    E(CUDA_ERROR_ILLEGAL_ADDRESS, "an illegal memory access was encountered")             \
    E(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "too many resources requested for launch")      \
    E(CUDA_ERROR_LAUNCH_FAILED, "unspecified launch failure")                             \
    E(CUDA_ERROR_NOT_PERMITTED, "operation not permitted")                                \
    E(CUDA_ERROR_NOT_SUPPORTED, "operation not supported")                                \
    E(CUDA_ERROR_OPERATING_SYSTEM, "OS call failed or operation not supported on this OS") \
    E(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "operation not permitted when stream is capturing") \
    E(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,                                                \
      "operation failed due to a previous error during capture")                           \
    E(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT,                                                   \
      "operation would make the legacy stream depend on a capturing blocking stream")       \
    E(CUDA_ERROR_CAPTURED_EVENT,                                                            \
      "operation not permitted on an event last recorded in a capturing stream")            \
    E(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD,                                               \
      "attempt to terminate a thread-local capture sequence from another thread")           \
    E(CUDA_ERROR_UNKNOWN, "unknown error")

static const struct {
    CUresult code;
    const char *name;
    const char *text;
} errors[] = {
#define KV_EMU_ERR(code, text) { code, #code, text },
    KV_EMU_ERRORS(KV_EMU_ERR)
#undef KV_EMU_ERR
};

/* Index of code in errors[], or -1. */
static int find_error(CUresult code)
{
    for (size_t i = 0; i < sizeof(errors) / sizeof(errors[0]); i++)
        if (errors[i].code == code)
            return (int)i;
    return -1;
}

KV_EMU_API CUresult cuGetErrorString(CUresult error, const char **pStr)
{
    int i;

    KV_EMU_ENTER_NOINIT(cuGetErrorString);
    if (!pStr)
        return CUDA_ERROR_INVALID_VALUE;
    i = find_error(error);
    *pStr = i < 0 ? NULL : errors[i].text;
    return i < 0 ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuGetErrorString);

KV_EMU_API CUresult cuGetErrorName(CUresult error, const char **pStr)
{
    int i;

    KV_EMU_ENTER_NOINIT(cuGetErrorName);
    if (!pStr)
        return CUDA_ERROR_INVALID_VALUE;
    i = find_error(error);
    *pStr = i < 0 ? NULL : errors[i].name;
    return i < 0 ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuGetErrorName);

/* ------------------------------------------------------------------ entry points by name */

/* Whether name is a per-thread default stream variant (_ptsz, _ptds): those are asked for by
 * flag, not name. */
static bool is_per_thread(const char *name)
{
    size_t n = strlen(name);

    return n > 5 && (strcmp(name + n - 5, "_ptsz") == 0 || strcmp(name + n - 5, "_ptds") == 0);
}

/* Length of name without a version suffix "_v<digits>". */
static size_t base_len(const char *name)
{
    size_t n = strlen(name);
    size_t i = n;

    while (i > 0 && name[i - 1] >= '0' && name[i - 1] <= '9')
        i--;
    if (i < n && i >= 2 && name[i - 1] == 'v' && name[i - 2] == '_')
        return i - 2;
    return n;
}

/*
 * The newest variant of base name sym whose version is at most max_version. Returns its index,
 * -1 if no function has that base name, -2 if all that do are too new.
 */
static int find_variant(const char *sym, int max_version)
{
    size_t n = strlen(sym);
    int best = -1;
    bool known = false;

    for (int i = 0; i < KV_FN_COUNT; i++) {
        if (is_per_thread(funcs[i].name) || base_len(funcs[i].name) != n ||
            strncmp(funcs[i].name, sym, n) != 0)
            continue;
        known = true;
        if (funcs[i].version <= max_version &&
            (best < 0 || funcs[i].version > funcs[best].version))
            best = i;
    }
    if (best < 0)
        return known ? -2 : -1;
    return best;
}

/* Index of the exported function named name + "_ptsz" or name + "_ptds", or -1. */
static int find_per_thread(const char *name)
{
    size_t n = strlen(name);

    for (int i = 0; i < KV_FN_COUNT; i++)
        if (strncmp(funcs[i].name, name, n) == 0 && is_per_thread(funcs[i].name) &&
            strlen(funcs[i].name) == n + 5)
            return i;
    return -1;
}

/*
 * The lookup behind both cuGetProcAddress variants: by base name, as the real driver, so
 * "cuMemAlloc" gives cuMemAlloc_v2 and "cuMemAlloc_v2" is not found. With the per-thread
 * default stream flag, the variant's _ptsz or _ptds twin where there is one: the stream capture
 * calls, cuMemFreeAsync, and the memsets and copies (emu_ptds.h) have them here.
 */
static CUresult get_proc(const char *symbol, void **pfn, int version, cuuint64_t flags,
                         CUdriverProcAddressQueryResult *status)
{
    int i;

    if (!symbol || !pfn || (flags & ~(cuuint64_t)(CU_GET_PROC_ADDRESS_LEGACY_STREAM |
                                                   CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM)))
        return CUDA_ERROR_INVALID_VALUE;
    *pfn = NULL;
    i = find_variant(symbol, version);
    if (i < 0) {
        if (status)
            *status = i == -2 ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                              : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        return CUDA_ERROR_NOT_FOUND;
    }
    if (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) {
        int t = find_per_thread(funcs[i].name);

        if (t >= 0)
            i = t;
    }
    *pfn = locals[i];
    if (status)
        *status = CU_GET_PROC_ADDRESS_SUCCESS;
    return CUDA_SUCCESS;
}

KV_EMU_API CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion,
                                        cuuint64_t flags, CUdriverProcAddressQueryResult *symbolStatus)
{
    KV_EMU_ENTER_NOINIT(cuGetProcAddress_v2);
    return get_proc(symbol, pfn, cudaVersion, flags, symbolStatus);
}
KV_EMU_ALIAS(cuGetProcAddress_v2);

KV_EMU_API CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion,
                                     cuuint64_t flags)
{
    KV_EMU_ENTER_NOINIT(cuGetProcAddress);
    return get_proc(symbol, pfn, cudaVersion, flags, NULL);
}
KV_EMU_ALIAS(cuGetProcAddress);

/* ------------------------------------------------------------------ control API */

/* Index of func by exported name, else by base name (newest variant); -1 if unknown. */
static int find_func(const char *func)
{
    if (!func)
        return -1;
    for (int i = 0; i < KV_FN_COUNT; i++)
        if (strcmp(funcs[i].name, func) == 0)
            return i;
    return find_variant(func, 0x7fffffff);
}

KV_EMU_API int kvemu_fail_times(const char *func, int n, int times, CUresult err)
{
    int i = find_func(func);

    ensure_config();
    if (i < 0 || n < 0 || times < 1)
        return -1;
    pthread_mutex_lock(&fail_lock);
    if (fails[i].n > 0)
        __atomic_sub_fetch(&armed, 1, __ATOMIC_RELAXED);
    fails[i].n = n;
    fails[i].times = times;
    fails[i].err = err;
    if (n > 0)
        __atomic_add_fetch(&armed, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&fail_lock);
    return 0;
}

KV_EMU_API int kvemu_fail_nth(const char *func, int n, CUresult err)
{
    return kvemu_fail_times(func, n, 1, err);
}

KV_EMU_API int kvemu_hold(const char *func, int on)
{
    int i = find_func(func);

    ensure_config();
    if (i < 0)
        return -1;
    pthread_mutex_lock(&fail_lock);
    if (held[i] != (on != 0)) {
        held[i] = on != 0;
        __atomic_add_fetch(&armed, on ? 1 : -1, __ATOMIC_RELAXED);
    }
    pthread_cond_broadcast(&hold_cond);
    pthread_mutex_unlock(&fail_lock);
    return 0;
}

KV_EMU_API int kvemu_waiting(const char *func)
{
    int i = find_func(func), n;

    if (i < 0)
        return -1;
    pthread_mutex_lock(&fail_lock);
    n = waiting[i];
    pthread_mutex_unlock(&fail_lock);
    return n;
}

KV_EMU_API unsigned long long kvemu_calls(const char *func)
{
    int i = find_func(func);

    return i < 0 ? 0 : __atomic_load_n(&calls[i], __ATOMIC_RELAXED);
}

KV_EMU_API void kvemu_reset_counts(void)
{
    for (int i = 0; i < KV_FN_COUNT; i++)
        __atomic_store_n(&calls[i], 0, __ATOMIC_RELAXED);
    kv_emu_lock();
    memset(&kv_emu.stats, 0, sizeof(kv_emu.stats));
    kv_emu_unlock();
}

KV_EMU_API void kvemu_usage(int device, struct kvemu_usage *out)
{
    const kv_emu_dev_t *d;

    if (!out)
        return;
    memset(out, 0, sizeof(*out));
    ensure_config();
    kv_emu_lock();
    if (kv_emu.initialized && kv_emu_valid_device(device)) {
        d = &kv_emu.devs[device];
        out->physical_bytes = (d->nchunks - d->nfree) * KV_EMU_PAGE;
        out->handles = d->handles;
        out->released_mapped = d->released_mapped;
        out->mapped_pages = d->mapped_pages;
        out->allocs = d->allocs;
        for (const kv_emu_resv_t *r = kv_emu.resvs; r; r = r->next) {
            if (r->alloc_bytes)
                continue;
            out->reservations++;
            out->reserved_bytes += r->size;
        }
    }
    kv_emu_unlock();
}

KV_EMU_API int kvemu_is_emulation(void)
{
    return 1;
}
