/*
 * emu_mem.c: physical memory (a chunk allocator over one sparse memfd per device), handles,
 * address reservations, mappings and access, and cuMemAlloc built from the same pieces.
 *
 * A mapping is an mmap of the memfd at the chunk's offset, so two mappings of one handle show
 * the same bytes, and an unmapped page is PROT_NONE anonymous memory that faults when touched.
 * Freed chunks get their pages punched out of the memfd, so the host gets the memory back and
 * the next owner reads zeros, as it does from a fresh cuMemCreate.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "emu_int.h"

#define P KV_EMU_PAGE

static bool aligned(uintptr_t v)
{
    return v % P == 0;
}

/* ------------------------------------------------------------------ physical chunks */

int kv_emu_mem_init(void)
{
    char name[32];
    int err = 0, i;

    for (i = 0; i < kv_emu.ndevices; i++) {
        kv_emu_dev_t *d = &kv_emu.devs[i];

        d->ctx.device = i;
        d->nchunks = d->bytes / P;
        snprintf(name, sizeof(name), "kvemu-dev%d", i);
        d->memfd = memfd_create(name, MFD_CLOEXEC);
        if (d->memfd < 0) {
            err = -errno;
            goto fail;
        }
        if (ftruncate(d->memfd, (off_t)d->bytes) < 0) {
            err = -errno;
            close(d->memfd);
            goto fail;
        }
        d->free_stack = malloc(d->nchunks * sizeof(*d->free_stack));
        if (!d->free_stack) {
            err = -ENOMEM;
            close(d->memfd);
            goto fail;
        }
        /* Lowest chunk on top: a fresh device hands out ascending, file-contiguous chunks. */
        for (size_t c = 0; c < d->nchunks; c++)
            d->free_stack[c] = (uint32_t)(d->nchunks - 1 - c);
        d->nfree = d->nchunks;
    }
    return 0;

fail:
    while (--i >= 0) {
        close(kv_emu.devs[i].memfd);
        free(kv_emu.devs[i].free_stack);
        kv_emu.devs[i].free_stack = NULL;
    }
    return err;
}

/*
 * Give a chunk's memory back to the host and make it read zero. Punching a hole does both;
 * where the file system refuses, zero it through a temporary mapping instead.
 */
static void wipe_chunk(kv_emu_dev_t *d, uint32_t chunk)
{
    off_t off = (off_t)chunk * (off_t)P;
    void *m;

    if (fallocate(d->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, (off_t)P) == 0)
        return;
    m = mmap(NULL, P, PROT_READ | PROT_WRITE, MAP_SHARED, d->memfd, off);
    if (m == MAP_FAILED)
        return;
    memset(m, 0, P);
    munmap(m, P);
}

/* Take n free chunks of d into out. Returns 0, or -ENOMEM taking none. */
static int take_chunks(kv_emu_dev_t *d, size_t n, uint32_t *out)
{
    if (d->nfree < n)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        out[i] = d->free_stack[--d->nfree];
    return 0;
}

static void give_chunks(kv_emu_dev_t *d, size_t n, const uint32_t *chunks)
{
    for (size_t i = 0; i < n; i++) {
        wipe_chunk(d, chunks[i]);
        d->free_stack[d->nfree++] = chunks[i];
    }
}

/* ------------------------------------------------------------------ handles */

/* A handle of size bytes (a multiple of P) on device dev. Returns 0 or -ENOMEM. */
static int create_handle(int dev, size_t size, bool internal, kv_emu_handle_t **out)
{
    kv_emu_dev_t *d = &kv_emu.devs[dev];
    kv_emu_handle_t *h;
    int err = -ENOMEM;

    h = calloc(1, sizeof(*h));
    if (!h)
        goto fail;
    h->nchunks = size / P;
    h->chunks = malloc(h->nchunks * sizeof(*h->chunks));
    if (!h->chunks)
        goto fail;
    err = take_chunks(d, h->nchunks, h->chunks);
    if (err < 0)
        goto fail;
    h->id = kv_emu.next_handle++;
    h->device = dev;
    h->internal = internal;
    h->next = kv_emu.handles;
    kv_emu.handles = h;
    if (!internal)
        d->handles++;
    *out = h;
    return 0;

fail:
    if (h)
        free(h->chunks);
    free(h);
    return err;
}

static void destroy_handle(kv_emu_handle_t *h)
{
    kv_emu_dev_t *d = &kv_emu.devs[h->device];

    for (kv_emu_handle_t **pp = &kv_emu.handles; *pp; pp = &(*pp)->next) {
        if (*pp == h) {
            *pp = h->next;
            break;
        }
    }
    give_chunks(d, h->nchunks, h->chunks);
    if (!h->internal)
        d->handles--;
    free(h->chunks);
    free(h);
}

static kv_emu_handle_t *find_handle(CUmemGenericAllocationHandle id)
{
    for (kv_emu_handle_t *h = kv_emu.handles; h; h = h->next)
        if (h->id == id)
            return h;
    return NULL;
}

/* ------------------------------------------------------------------ reservations */

/*
 * Reserve size bytes of host VA aligned to align (a power of two, at least P): over-reserve by
 * align and trim both ends. MAP_NORESERVE, so hundreds of GiB cost no memory. Returns 0,
 * -ENOMEM.
 */
static int create_resv(size_t size, size_t align, kv_emu_resv_t **out)
{
    kv_emu_resv_t *r = NULL;
    uintptr_t raw, base;
    size_t span;
    void *m;

    if (size > SIZE_MAX - align)
        return -ENOMEM;
    span = size + align;
    m = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return -ENOMEM;
    raw = (uintptr_t)m;
    base = (raw + align - 1) & ~(uintptr_t)(align - 1);
    if (base > raw)
        munmap(m, base - raw);
    if (raw + span > base + size)
        munmap((void *)(base + size), raw + span - (base + size));

    r = calloc(1, sizeof(*r));
    if (!r)
        goto fail;
    r->base = base;
    r->size = size;
    r->npages = size / P;
    r->pages = calloc(r->npages, sizeof(*r->pages));
    if (!r->pages)
        goto fail;
    r->next = kv_emu.resvs;
    kv_emu.resvs = r;
    *out = r;
    return 0;

fail:
    free(r);
    munmap((void *)base, size);
    return -ENOMEM;
}

/* Give the range back to the host; its pages must have been dropped. */
static void destroy_resv(kv_emu_resv_t *r)
{
    for (kv_emu_resv_t **pp = &kv_emu.resvs; *pp; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    }
    munmap((void *)r->base, r->size);
    free(r->pages);
    free(r);
}

kv_emu_resv_t *kv_emu_find_resv(uintptr_t p, size_t n)
{
    for (kv_emu_resv_t *r = kv_emu.resvs; r; r = r->next)
        if (p >= r->base && p - r->base < r->size && n <= r->size - (p - r->base))
            return r;
    return NULL;
}

/* The user reservation holding [p, p + n) whole, NULL if none or if it backs a cuMemAlloc. */
static kv_emu_resv_t *find_user_resv(uintptr_t p, size_t n)
{
    kv_emu_resv_t *r = kv_emu_find_resv(p, n);

    return r && !r->alloc_bytes ? r : NULL;
}

/* How many of pages [first, first + n) of r are mapped. */
static size_t count_mapped(const kv_emu_resv_t *r, size_t first, size_t n)
{
    size_t c = 0;

    for (size_t i = first; i < first + n; i++)
        c += r->pages[i].handle != NULL;
    return c;
}

bool kv_emu_range_mapped(uintptr_t p, size_t n)
{
    kv_emu_resv_t *r;
    size_t first;

    if (n == 0)
        return true;
    r = find_user_resv(p, n);
    if (!r)
        return true;
    first = (p - r->base) / P;
    return count_mapped(r, first, (p - r->base + n - 1) / P - first + 1) ==
           (p - r->base + n - 1) / P - first + 1;
}

/* ------------------------------------------------------------------ mappings */

/*
 * Forget pages [first, first + n) of r, all mapped (the host mapping is the caller's business);
 * a released handle whose last page this was is freed, as in the real driver.
 */
static void drop_pages(kv_emu_resv_t *r, size_t first, size_t n)
{
    for (size_t i = first; i < first + n; i++) {
        kv_emu_page_t *pg = &r->pages[i];
        kv_emu_handle_t *h = pg->handle;

        h->maps--;
        if (!h->internal)
            kv_emu.devs[h->device].mapped_pages--;
        memset(pg, 0, sizeof(*pg));
        if (h->maps == 0 && h->released)
            destroy_handle(h);
    }
    r->mapped -= n;
}

/* Put anonymous PROT_NONE memory back over n pages at addr. Returns 0 or -errno. */
static int clear_range(uintptr_t addr, size_t n)
{
    void *m = mmap((void *)addr, n * P, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);

    return m == MAP_FAILED ? -errno : 0;
}

/*
 * Map chunks [hfirst, hfirst + n) of h at pages [first, first + n) of r, all unmapped, with no
 * access. Runs of file-contiguous chunks go in one mmap so the host keeps few VMAs. Returns 0
 * or -errno, leaving nothing mapped.
 */
static int map_pages(kv_emu_resv_t *r, size_t first, size_t n, kv_emu_handle_t *h, size_t hfirst)
{
    int fd = kv_emu.devs[h->device].memfd;
    uint32_t id;
    size_t i = 0, run;
    void *m;

    while (i < n) {
        for (run = 1; i + run < n; run++)
            if (h->chunks[hfirst + i + run] != h->chunks[hfirst + i] + run)
                break;
        m = mmap((void *)(r->base + (first + i) * P), run * P, PROT_NONE, MAP_SHARED | MAP_FIXED,
                 fd, (off_t)h->chunks[hfirst + i] * (off_t)P);
        if (m == MAP_FAILED) {
            int err = -errno;

            if (i > 0)
                clear_range(r->base + first * P, i);
            return err;
        }
        i += run;
    }

    id = kv_emu.next_map_id++;
    if (kv_emu.next_map_id == 0)
        kv_emu.next_map_id = 1;
    for (i = 0; i < n; i++) {
        r->pages[first + i].handle = h;
        r->pages[first + i].index = (uint32_t)(hfirst + i);
        r->pages[first + i].map_id = id;
        r->pages[first + i].rd = 0;
        r->pages[first + i].wr = 0;
        r->pages[first + i].prot = PROT_NONE;
    }
    h->maps += n;
    r->mapped += n;
    if (!h->internal)
        kv_emu.devs[h->device].mapped_pages += n;
    return 0;
}

/* ------------------------------------------------------------------ VMM entry points */

/* Validate an allocation property as the real driver does for pinned device memory. */
static CUresult check_prop(const CUmemAllocationProp *prop)
{
    if (!prop || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
        prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return CUDA_ERROR_INVALID_VALUE;
    if (!kv_emu_valid_device(prop->location.id))
        return CUDA_ERROR_INVALID_DEVICE;
    return CUDA_SUCCESS;
}

KV_EMU_API CUresult cuMemGetAllocationGranularity(size_t *granularity,
                                                  const CUmemAllocationProp *prop,
                                                  CUmemAllocationGranularity_flags option)
{
    CUresult r;

    KV_EMU_ENTER(cuMemGetAllocationGranularity);
    if (!granularity || (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM &&
                         option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED))
        return CUDA_ERROR_INVALID_VALUE;
    r = check_prop(prop);
    if (r != CUDA_SUCCESS)
        return r;
    *granularity = P;
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuMemGetAllocationGranularity);

/* The hint addr is ignored: the real driver may ignore it too. */
KV_EMU_API CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment,
                                        CUdeviceptr addr, unsigned long long flags)
{
    kv_emu_resv_t *r;
    int err;

    KV_EMU_ENTER(cuMemAddressReserve);
    (void)addr;
    if (!ptr || size == 0 || !aligned(size) || (alignment & (alignment - 1)) || flags)
        return CUDA_ERROR_INVALID_VALUE;
    kv_emu_lock();
    err = create_resv(size, alignment > P ? alignment : P, &r);
    if (err == 0)
        *ptr = r->base;
    kv_emu_unlock();
    return err < 0 ? kv_emu_from_errno(-err) : CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuMemAddressReserve);

/* A reservation with pages still mapped is refused (the real driver leaves it undefined). */
KV_EMU_API CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
    CUresult res = CUDA_SUCCESS;
    kv_emu_resv_t *r;

    KV_EMU_ENTER(cuMemAddressFree);
    kv_emu_lock();
    r = find_user_resv(ptr, 1);
    if (!r || r->base != ptr || r->size != size || r->mapped) {
        res = CUDA_ERROR_INVALID_VALUE;
        goto out;
    }
    destroy_resv(r);
out:
    kv_emu_unlock();
    return res;
}
KV_EMU_ALIAS(cuMemAddressFree);

KV_EMU_API CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                                const CUmemAllocationProp *prop, unsigned long long flags)
{
    kv_emu_handle_t *h;
    CUresult r;
    int err;

    KV_EMU_ENTER(cuMemCreate);
    if (!handle || size == 0 || !aligned(size) || flags)
        return CUDA_ERROR_INVALID_VALUE;
    r = check_prop(prop);
    if (r != CUDA_SUCCESS)
        return r;
    kv_emu_lock();
    err = create_handle(prop->location.id, size, false, &h);
    if (err == 0)
        *handle = h->id;
    kv_emu_unlock();
    return err < 0 ? CUDA_ERROR_OUT_OF_MEMORY : CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuMemCreate);

KV_EMU_API CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    CUresult r = CUDA_SUCCESS;
    kv_emu_handle_t *h;

    KV_EMU_ENTER(cuMemRelease);
    kv_emu_lock();
    h = find_handle(handle);
    if (!h || h->internal || h->released) {
        r = CUDA_ERROR_INVALID_VALUE;
        goto out;
    }
    if (h->maps == 0) {
        destroy_handle(h);
    } else {
        h->released = true;
        kv_emu.devs[h->device].released_mapped++;
    }
out:
    kv_emu_unlock();
    return r;
}
KV_EMU_ALIAS(cuMemRelease);

KV_EMU_API CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                             CUmemGenericAllocationHandle handle, unsigned long long flags)
{
    CUresult res = CUDA_ERROR_INVALID_VALUE;
    kv_emu_handle_t *h;
    kv_emu_resv_t *r;
    size_t first;
    int err;

    KV_EMU_ENTER(cuMemMap);
    if (size == 0 || !aligned(ptr) || !aligned(size) || !aligned(offset) || flags)
        return CUDA_ERROR_INVALID_VALUE;
    kv_emu_lock();
    h = find_handle(handle);
    if (!h || h->internal || h->released)
        goto out;
    if (offset > h->nchunks * P || size > h->nchunks * P - offset)
        goto out;
    r = find_user_resv(ptr, size);
    if (!r)
        goto out;
    first = (ptr - r->base) / P;
    if (count_mapped(r, first, size / P) != 0)
        goto out;
    err = map_pages(r, first, size / P, h, offset / P);
    res = err < 0 ? kv_emu_from_errno(-err) : CUDA_SUCCESS;
out:
    kv_emu_unlock();
    return res;
}
KV_EMU_ALIAS(cuMemMap);

/* The host protection a page gets from what its devices may do: the most any of them may. */
static int host_prot(const kv_emu_page_t *pg)
{
    return pg->wr ? PROT_READ | PROT_WRITE : pg->rd ? PROT_READ : PROT_NONE;
}

/*
 * Each descriptor sets what its device may do over the range (PROT_NONE takes it away), and
 * leaves the other devices' rights as they were. The host has one protection per page, not one
 * per device, so a page's host protection is the most permissive any device has; the memsets and
 * kernels that run on a device check that device's own rights (kv_emu_check_access).
 */
KV_EMU_API CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc,
                                   size_t count)
{
    CUresult res = CUDA_ERROR_INVALID_VALUE;
    uint32_t set_rd = 0, set_wr = 0, clear = 0;
    kv_emu_resv_t *r;
    size_t first, i, run;
    int prot;

    KV_EMU_ENTER(cuMemSetAccess);
    if (size == 0 || !aligned(ptr) || !aligned(size) || !desc || count == 0)
        return CUDA_ERROR_INVALID_VALUE;
    for (i = 0; i < count; i++) {
        uint32_t bit;

        if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE)
            return CUDA_ERROR_INVALID_VALUE;
        if (!kv_emu_valid_device(desc[i].location.id))
            return CUDA_ERROR_INVALID_DEVICE;
        bit = 1u << desc[i].location.id;
        switch (desc[i].flags) {
        case CU_MEM_ACCESS_FLAGS_PROT_NONE:
            clear |= bit;
            set_rd &= ~bit;
            set_wr &= ~bit;
            break;
        case CU_MEM_ACCESS_FLAGS_PROT_READ:
            clear |= bit;
            set_rd |= bit;
            set_wr &= ~bit;
            break;
        case CU_MEM_ACCESS_FLAGS_PROT_READWRITE:
            clear |= bit;
            set_rd |= bit;
            set_wr |= bit;
            break;
        default:
            return CUDA_ERROR_INVALID_VALUE;
        }
    }
    kv_emu_lock();
    r = find_user_resv(ptr, size);
    if (!r)
        goto out;
    first = (ptr - r->base) / P;
    if (count_mapped(r, first, size / P) != size / P)
        goto out;
    /* the host protection, page run by page run, before any right changes */
    for (i = 0; i < size / P; i += run) {
        kv_emu_page_t want = r->pages[first + i];

        want.rd = (want.rd & ~clear) | set_rd;
        want.wr = (want.wr & ~clear) | set_wr;
        prot = host_prot(&want);
        for (run = 1; i + run < size / P; run++) {
            kv_emu_page_t next = r->pages[first + i + run];

            next.rd = (next.rd & ~clear) | set_rd;
            next.wr = (next.wr & ~clear) | set_wr;
            if (host_prot(&next) != prot)
                break;
        }
        if (mprotect((void *)(ptr + i * P), run * P, prot) < 0) {
            res = kv_emu_from_errno(errno);
            for (size_t k = 0; k < i; k++)      /* the runs done so far, as they were */
                mprotect((void *)(ptr + k * P), P, r->pages[first + k].prot);
            goto out;
        }
    }
    for (i = first; i < first + size / P; i++) {
        r->pages[i].rd = (r->pages[i].rd & ~clear) | set_rd;
        r->pages[i].wr = (r->pages[i].wr & ~clear) | set_wr;
        r->pages[i].prot = host_prot(&r->pages[i]);
    }
    res = CUDA_SUCCESS;
out:
    kv_emu_unlock();
    return res;
}
KV_EMU_ALIAS(cuMemSetAccess);

bool kv_emu_check_access(int dev, uintptr_t p, size_t n, bool write)
{
    uint32_t bit = 1u << dev;
    kv_emu_resv_t *r;
    size_t first, last;

    if (n == 0)
        return true;
    r = kv_emu_find_resv(p, n);
    if (!r || r->alloc_bytes)
        return true;        /* host memory, or a cuMemAlloc allocation: no rights kept */
    first = (p - r->base) / P;
    last = (p - r->base + n - 1) / P;
    for (size_t i = first; i <= last; i++) {
        const kv_emu_page_t *pg = &r->pages[i];

        if (pg->handle && !((write ? pg->wr : pg->rd) & bit))
            return false;
    }
    return true;
}

/*
 * As in the real driver, the range must be made of whole mappings: a sub-range of what one
 * cuMemMap mapped is refused.
 */
KV_EMU_API CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    CUresult res = CUDA_ERROR_INVALID_VALUE;
    kv_emu_resv_t *r;
    size_t first, last;
    int err;

    KV_EMU_ENTER(cuMemUnmap);
    if (size == 0 || !aligned(ptr) || !aligned(size))
        return CUDA_ERROR_INVALID_VALUE;
    kv_emu_lock();
    r = find_user_resv(ptr, size);
    if (!r)
        goto out;
    first = (ptr - r->base) / P;
    last = first + size / P - 1;
    if (count_mapped(r, first, size / P) != size / P)
        goto out;
    if (first > 0 && r->pages[first - 1].map_id == r->pages[first].map_id)
        goto out;
    if (last + 1 < r->npages && r->pages[last + 1].map_id == r->pages[last].map_id)
        goto out;
    err = clear_range(ptr, size / P);
    if (err < 0) {
        res = kv_emu_from_errno(-err);
        goto out;
    }
    drop_pages(r, first, size / P);
    res = CUDA_SUCCESS;
out:
    kv_emu_unlock();
    return res;
}
KV_EMU_ALIAS(cuMemUnmap);

/* ------------------------------------------------------------------ classic allocations */

KV_EMU_API CUresult cuMemGetInfo_v2(size_t *free, size_t *total)
{
    struct CUctx_st *c;

    KV_EMU_ENTER(cuMemGetInfo_v2);
    if (!free || !total)
        return CUDA_ERROR_INVALID_VALUE;
    c = kv_emu_current();
    if (!c)
        return CUDA_ERROR_INVALID_CONTEXT;
    kv_emu_lock();
    *free = kv_emu.devs[c->device].nfree * P;
    *total = kv_emu.devs[c->device].bytes;
    kv_emu_unlock();
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuMemGetInfo_v2);

/*
 * A private reservation mapped read-write over an internal handle, so cuMemGetInfo and the
 * out-of-memory point are shared with cuMemCreate as on a GPU. Potentially unsafe during a
 * capture, as CUDA documents for cudaMalloc (PyTorch allocates during capture in relaxed mode).
 */
KV_EMU_API CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    kv_emu_handle_t *h = NULL;
    kv_emu_resv_t *r = NULL;
    struct CUctx_st *c;
    size_t size;
    int err;

    KV_EMU_ENTER(cuMemAlloc_v2);
    if (!dptr || bytesize == 0)
        return CUDA_ERROR_INVALID_VALUE;
    c = kv_emu_current();
    if (!c)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (bytesize > SIZE_MAX - P)
        return CUDA_ERROR_OUT_OF_MEMORY;
    size = (bytesize + P - 1) / P * P;

    kv_emu_lock();
    if (kv_emu_capture_unsafe(KV_FN_cuMemAlloc_v2) != CUDA_SUCCESS) {
        kv_emu_unlock();
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    err = create_handle(c->device, size, true, &h);
    if (err < 0)
        goto out;
    err = create_resv(size, P, &r);
    if (err < 0)
        goto out;
    err = map_pages(r, 0, r->npages, h, 0);
    if (err < 0)
        goto out;
    if (mprotect((void *)r->base, size, PROT_READ | PROT_WRITE) < 0) {
        err = -errno;
        drop_pages(r, 0, r->npages);
        goto out;
    }
    for (size_t i = 0; i < r->npages; i++) {
        r->pages[i].rd = r->pages[i].wr = 1u << c->device;
        r->pages[i].prot = PROT_READ | PROT_WRITE;
    }
    r->alloc_bytes = bytesize;
    r->alloc_handle = h;
    kv_emu.devs[c->device].allocs++;
    *dptr = r->base;
out:
    if (err < 0) {
        if (r)
            destroy_resv(r);
        if (h)
            destroy_handle(h);
    }
    kv_emu_unlock();
    return err < 0 ? kv_emu_from_errno(-err) : CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuMemAlloc_v2);

/* The cuMemAlloc allocation starting at dptr, or NULL; call locked. */
static kv_emu_resv_t *find_alloc(CUdeviceptr dptr)
{
    kv_emu_resv_t *r = kv_emu_find_resv(dptr, 1);

    return r && r->alloc_bytes && r->base == dptr ? r : NULL;
}

/* Free allocation r with its range and handle; call locked. */
static void free_alloc(kv_emu_resv_t *r)
{
    kv_emu_handle_t *h = r->alloc_handle;

    kv_emu.devs[h->device].allocs--;
    drop_pages(r, 0, r->npages);
    destroy_resv(r);
    destroy_handle(h);
}

/* A free waits for the device and is not stream-ordered: potentially unsafe during a capture. */
KV_EMU_API CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    CUresult res = CUDA_ERROR_INVALID_VALUE;
    kv_emu_resv_t *r;

    KV_EMU_ENTER(cuMemFree_v2);
    if (!kv_emu_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    kv_emu_lock();
    r = find_alloc(dptr);
    if (!r)
        goto out;
    res = kv_emu_capture_unsafe(KV_FN_cuMemFree_v2);
    if (res != CUDA_SUCCESS)
        goto out;
    free_alloc(r);
out:
    kv_emu_unlock();
    return res;
}
KV_EMU_ALIAS(cuMemFree_v2);

/*
 * A stream-ordered free of a cuMemAlloc allocation (the real driver takes those too). Work here
 * is done by the time the call that enqueued it returns, so the free is made at once, after the
 * stream's checks: a stream that is not live is an invalid handle, a pointer that is not the
 * start of a live allocation an invalid value (a capture left valid), and a free the capture
 * rules refuse (kv_emu_capture_free) frees nothing.
 */
static CUresult free_async(enum kv_emu_fn fn, CUdeviceptr dptr, CUstream s, bool ptsz)
{
    CUresult res = CUDA_ERROR_INVALID_VALUE;
    kv_emu_resv_t *r;

    if (!kv_emu_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    kv_emu_lock();
    if (!kv_emu_valid_stream(s)) {
        res = CUDA_ERROR_INVALID_HANDLE;
        goto out;
    }
    r = find_alloc(dptr);
    if (!r)
        goto out;
    res = kv_emu_capture_free(fn, s, ptsz);
    if (res != CUDA_SUCCESS)
        goto out;
    free_alloc(r);
out:
    kv_emu_unlock();
    return res;
}

KV_EMU_API CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)
{
    KV_EMU_ENTER(cuMemFreeAsync);
    return free_async(KV_FN_cuMemFreeAsync, dptr, hStream, false);
}
KV_EMU_ALIAS(cuMemFreeAsync);

KV_EMU_API CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream)
{
    KV_EMU_ENTER(cuMemFreeAsync_ptsz);
    return free_async(KV_FN_cuMemFreeAsync_ptsz, dptr, hStream, true);
}
KV_EMU_ALIAS(cuMemFreeAsync_ptsz);

/* A cuMemAlloc allocation gives its requested size; a reservation gives itself whole. */
KV_EMU_API CUresult cuMemGetAddressRange_v2(CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr)
{
    CUresult res = CUDA_ERROR_NOT_FOUND;
    kv_emu_resv_t *r;
    size_t size;

    KV_EMU_ENTER(cuMemGetAddressRange_v2);
    if (!kv_emu_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    kv_emu_lock();
    r = kv_emu_find_resv(dptr, 1);
    if (!r)
        goto out;
    size = r->alloc_bytes ? r->alloc_bytes : r->size;
    if (dptr - r->base >= size)
        goto out;
    if (pbase)
        *pbase = r->base;
    if (psize)
        *psize = size;
    res = CUDA_SUCCESS;
out:
    kv_emu_unlock();
    return res;
}
KV_EMU_ALIAS(cuMemGetAddressRange_v2);

/* ------------------------------------------------------------------ pointer attributes */

/*
 * One attribute of the memory at p, locked; what cuPointerGetAttribute answers. Memory of a
 * device is a cuMemAlloc allocation (its device is the allocating context's) or a mapped page of
 * a reservation (the device of the handle mapped there). Host memory, an unmapped page of a
 * reservation and an attribute not listed give CUDA_ERROR_INVALID_VALUE [choice: the real driver
 * knows more attributes; for a reserved page no handle backs, it has no device to name].
 */
static CUresult attribute(void *data, CUpointer_attribute a, CUdeviceptr p)
{
    const kv_emu_handle_t *h;
    kv_emu_resv_t *r = kv_emu_find_resv(p, 1);

    if (!r)
        return CUDA_ERROR_INVALID_VALUE;
    h = r->alloc_bytes ? r->alloc_handle : r->pages[(p - r->base) / P].handle;
    if (!h)
        return CUDA_ERROR_INVALID_VALUE;
    switch (a) {
    case CU_POINTER_ATTRIBUTE_CONTEXT:
        *(CUcontext *)data = r->alloc_bytes ? &kv_emu.devs[h->device].ctx : NULL;
        break;
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
        *(unsigned int *)data = CU_MEMORYTYPE_DEVICE;
        break;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER:
        *(CUdeviceptr *)data = p;
        break;
    case CU_POINTER_ATTRIBUTE_IS_MANAGED:
        *(unsigned int *)data = 0;
        break;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
        *(int *)data = h->device;
        break;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
        *(CUdeviceptr *)data = r->base;
        break;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
        *(size_t *)data = r->alloc_bytes ? r->alloc_bytes : r->size;
        break;
    case CU_POINTER_ATTRIBUTE_MAPPED:
        *(unsigned int *)data = 1;
        break;
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

/* What cuPointerGetAttributes writes for an attribute of memory no device holds: the documented
 * NULL values, and -2 for the device ordinal, as the runtime reports unregistered memory. */
static void attribute_default(void *data, CUpointer_attribute a)
{
    switch (a) {
    case CU_POINTER_ATTRIBUTE_CONTEXT:
        *(CUcontext *)data = NULL;
        break;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER:
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
        *(CUdeviceptr *)data = 0;
        break;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
        *(size_t *)data = 0;
        break;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
        *(int *)data = -2;
        break;
    default:
        *(unsigned int *)data = 0;
        break;
    }
}

/* Whether the emulation answers attribute a (see attribute). */
static bool known_attribute(CUpointer_attribute a)
{
    switch (a) {
    case CU_POINTER_ATTRIBUTE_CONTEXT:
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER:
    case CU_POINTER_ATTRIBUTE_IS_MANAGED:
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
    case CU_POINTER_ATTRIBUTE_MAPPED:
        return true;
    default:
        return false;
    }
}

KV_EMU_API CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attribute_,
                                         CUdeviceptr ptr)
{
    CUresult r;

    KV_EMU_ENTER(cuPointerGetAttribute);
    if (!data || !ptr)
        return CUDA_ERROR_INVALID_VALUE;
    kv_emu_lock();
    r = attribute(data, attribute_, ptr);
    kv_emu_unlock();
    return r;
}
KV_EMU_ALIAS(cuPointerGetAttribute);

/*
 * Several attributes at once. As the real driver documents it, memory that is no device's gets
 * default values and success rather than an error; an attribute the emulation does not know is
 * an invalid value.
 */
KV_EMU_API CUresult cuPointerGetAttributes(unsigned int numAttributes,
                                          CUpointer_attribute *attributes, void **data,
                                          CUdeviceptr ptr)
{
    KV_EMU_ENTER(cuPointerGetAttributes);
    if (!numAttributes || !attributes || !data)
        return CUDA_ERROR_INVALID_VALUE;
    for (unsigned int i = 0; i < numAttributes; i++)
        if (!data[i] || !known_attribute(attributes[i]))
            return CUDA_ERROR_INVALID_VALUE;
    kv_emu_lock();
    for (unsigned int i = 0; i < numAttributes; i++)
        if (!ptr || attribute(data[i], attributes[i], ptr) != CUDA_SUCCESS)
            attribute_default(data[i], attributes[i]);
    kv_emu_unlock();
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuPointerGetAttributes);
