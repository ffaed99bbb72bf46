/*
 * emu_graph.c: stream capture (begin, end, status, per-thread capture modes), the rules that
 * refuse calls conflicting with a capture, and graphs: the ones captures produce, instantiated
 * and launched.
 *
 * The rules follow CUDA's documentation (cuThreadExchangeStreamCaptureMode, cuStreamIsCapturing,
 * cuStreamBeginCapture, cuStreamEndCapture) and what was measured on a real driver; where neither
 * names an error code, the emulation picks one. tests/emu/README.md lists each rule and its
 * source.
 * Operations enqueued on a capturing stream are not run: they are recorded, in order, into the
 * capture's graph, and run at each launch of an executable graph made from it.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "emu_int.h"

/*
 * The calling thread: a token unique over the process's life (a pthread_t may be reused), its
 * capture mode (cuThreadExchangeStreamCaptureMode; 0 is global, the default) and its per-thread
 * default stream, which can capture like any stream.
 */
static __thread uint64_t thread_token;
static __thread CUstreamCaptureMode thread_mode;
static __thread struct CUstream_st thread_stream;
static uint64_t next_token;

static uint64_t self(void)
{
    if (thread_token == 0)
        thread_token = __atomic_add_fetch(&next_token, 1, __ATOMIC_RELAXED);
    return thread_token;
}

/*
 * The stream object behind handle s, which kv_emu_valid_stream accepted: NULL for the legacy
 * stream (CU_STREAM_LEGACY, or NULL outside a _ptsz call), the calling thread's own for
 * CU_STREAM_PER_THREAD (or NULL in a _ptsz call).
 */
static struct CUstream_st *object(CUstream s, bool ptsz)
{
    if (s == CU_STREAM_LEGACY || (!s && !ptsz))
        return NULL;
    if (!s || s == CU_STREAM_PER_THREAD)
        return &thread_stream;
    return s;
}

/*
 * The device of the calling thread's current context, or -1 without one (cuEventRecord needs
 * none: its legacy stream then conflicts with no capture).
 */
static int current_device(void)
{
    struct CUctx_st *c = kv_emu_current();

    return c ? c->device : -1;
}

/* ------------------------------------------------------------------ the rules */

/* Count a call refused with a stream-capture error. Returns err. */
static CUresult refuse(enum kv_emu_fn fn, CUresult err)
{
    static const char *const names[KV_FN_COUNT] = {
#define KV_EMU_NAME(name, ver) #name,
        KV_EMU_FUNCS(KV_EMU_NAME)
#undef KV_EMU_NAME
    };

    kv_emu.stats.refused++;
    kv_emu.stats.last_refused = names[fn];
    return err;
}

static void invalidate(kv_emu_capture_t *c)
{
    if (!c->invalidated)
        kv_emu.stats.invalidated++;
    c->invalidated = true;
}

/* Whether capture c prohibits the calling thread's potentially unsafe calls. */
static bool prohibits(const kv_emu_capture_t *c)
{
    if (thread_mode == CU_STREAM_CAPTURE_MODE_RELAXED)
        return false;
    if (c->thread == self())
        return c->mode != CU_STREAM_CAPTURE_MODE_RELAXED;
    return thread_mode == CU_STREAM_CAPTURE_MODE_GLOBAL &&
           c->mode == CU_STREAM_CAPTURE_MODE_GLOBAL;
}

/* Whether a blocking stream of device dev captures; invalidate is whether to invalidate them. */
static bool legacy_blocked(int dev, bool invalidate_them)
{
    bool hit = false;

    for (kv_emu_capture_t *c = kv_emu.captures; c; c = c->next) {
        if (c->device != dev || !c->blocking)
            continue;
        hit = true;
        if (invalidate_them)
            invalidate(c);
    }
    return hit;
}

CUresult kv_emu_capture_unsafe(enum kv_emu_fn fn)
{
    bool hit = false;

    for (kv_emu_capture_t *c = kv_emu.captures; c; c = c->next) {
        if (prohibits(c)) {
            invalidate(c);
            hit = true;
        }
    }
    return hit ? refuse(fn, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED) : CUDA_SUCCESS;
}

CUresult kv_emu_capture_sync_op(enum kv_emu_fn fn, bool waits)
{
    CUresult r = waits ? kv_emu_capture_unsafe(fn) : CUDA_SUCCESS;

    if (r != CUDA_SUCCESS)
        return r;
    if (legacy_blocked(current_device(), true))
        return refuse(fn, CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
    if (kv_emu.captures)
        kv_emu.stats.eager_ops++;
    return CUDA_SUCCESS;
}

CUresult kv_emu_capture_sync_stream(enum kv_emu_fn fn, CUstream s, bool ptsz)
{
    struct CUstream_st *o = object(s, ptsz);
    CUresult r;

    if (o && o->cap) {
        invalidate(o->cap);
        return refuse(fn, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    r = kv_emu_capture_unsafe(fn);
    if (r != CUDA_SUCCESS)
        return r;
    if (!o && legacy_blocked(current_device(), true))
        return refuse(fn, CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
    return CUDA_SUCCESS;
}

CUresult kv_emu_capture_sync_ctx(enum kv_emu_fn fn)
{
    int dev = current_device();
    bool hit = false;

    for (kv_emu_capture_t *c = kv_emu.captures; c; c = c->next) {
        if (c->device == dev) {
            invalidate(c);
            hit = true;
        }
    }
    if (hit)
        return refuse(fn, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    return kv_emu_capture_unsafe(fn);
}

CUresult kv_emu_capture_sync_event(enum kv_emu_fn fn, struct CUevent_st *e)
{
    for (kv_emu_capture_t *c = kv_emu.captures; e->capture_id && c; c = c->next) {
        if (c->id == e->capture_id) {
            invalidate(c);
            return refuse(fn, CUDA_ERROR_CAPTURED_EVENT);
        }
    }
    return kv_emu_capture_unsafe(fn);
}

CUresult kv_emu_capture_destroy_stream(enum kv_emu_fn fn, struct CUstream_st *s)
{
    if (!s->cap)
        return CUDA_SUCCESS;
    invalidate(s->cap);
    return refuse(fn, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
}

/* ------------------------------------------------------------------ graphs */

/* Append copies of ops[0..n) to g as nodes. Returns 0, or -1 (out of memory) adding none. */
static int append(struct CUgraph_st *g, const kv_emu_op_t *ops, size_t n)
{
    struct CUgraphNode_st **nodes;
    size_t cap = g->cap, i;

    if (g->n + n > cap) {
        while (g->n + n > cap)
            cap = cap ? 2 * cap : 16;
        nodes = realloc(g->nodes, cap * sizeof(*nodes));
        if (!nodes)
            return -1;
        g->nodes = nodes;
        g->cap = cap;
    }
    for (i = 0; i < n; i++) {
        struct CUgraphNode_st *node = malloc(sizeof(*node));

        if (!node) {
            while (i-- > 0)
                free(g->nodes[g->n + i]);
            return -1;
        }
        node->graph = g;
        node->op = ops[i];
        g->nodes[g->n + i] = node;
    }
    g->n += n;
    return 0;
}

static struct CUgraph_st *create_graph(void)
{
    struct CUgraph_st *g = calloc(1, sizeof(*g));

    if (!g)
        return NULL;
    g->next = kv_emu.graphs;
    kv_emu.graphs = g;
    return g;
}

static void destroy_graph(struct CUgraph_st *g)
{
    for (struct CUgraph_st **pp = &kv_emu.graphs; *pp; pp = &(*pp)->next) {
        if (*pp == g) {
            *pp = g->next;
            break;
        }
    }
    for (size_t i = 0; i < g->n; i++)
        free(g->nodes[i]);
    free(g->nodes);
    free(g);
}

static bool valid_graph(CUgraph g)
{
    for (struct CUgraph_st *p = kv_emu.graphs; p; p = p->next)
        if (p == g)
            return true;
    return false;
}

static bool valid_exec(CUgraphExec x)
{
    for (struct CUgraphExec_st *p = kv_emu.execs; p; p = p->next)
        if (p == x)
            return true;
    return false;
}

CUresult kv_emu_capture_enqueue(enum kv_emu_fn fn, CUstream s, bool ptsz, const kv_emu_op_t *ops,
                                size_t nops, bool *recorded)
{
    struct CUstream_st *o = object(s, ptsz);
    kv_emu_capture_t *c = o ? o->cap : NULL;

    *recorded = false;
    if (c) {
        if (c->invalidated)
            return refuse(fn, CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
        if (append(c->graph, ops, nops) < 0)
            return CUDA_ERROR_OUT_OF_MEMORY;
        for (size_t i = 0; i < nops; i++)
            if (ops[i].kind == KV_OP_EVENT)
                ops[i].u.event.event->capture_id = c->id;
        if (c->graph->n)
            c->deps[0] = c->graph->nodes[c->graph->n - 1];
        kv_emu.stats.captured_ops += nops;
        *recorded = true;
        return CUDA_SUCCESS;
    }
    if (!o && legacy_blocked(current_device(), true))
        return refuse(fn, CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
    if (kv_emu.captures)
        kv_emu.stats.eager_ops += nops;
    return CUDA_SUCCESS;
}

CUresult kv_emu_capture_free(enum kv_emu_fn fn, CUstream s, bool ptsz)
{
    struct CUstream_st *o = object(s, ptsz);
    kv_emu_capture_t *c = o ? o->cap : NULL;

    if (c) {
        if (c->invalidated)
            return refuse(fn, CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
        invalidate(c);
        return refuse(fn, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    if (!o && legacy_blocked(current_device(), true))
        return refuse(fn, CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------------------ capture entry points */

/*
 * Begin a capture on s. The documentation says the legacy stream cannot capture and a stream
 * already capturing cannot begin again, naming no error code: the emulation answers
 * CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and CUDA_ERROR_ILLEGAL_STATE.
 */
static CUresult begin(enum kv_emu_fn fn, CUstream s, CUstreamCaptureMode mode, bool ptsz)
{
    struct CUstream_st *o;
    kv_emu_capture_t *c;
    CUresult r = CUDA_SUCCESS;

    if ((unsigned int)mode > CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_ERROR_INVALID_VALUE;
    if (!kv_emu_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    kv_emu_lock();
    if (!kv_emu_valid_stream(s)) {
        r = CUDA_ERROR_INVALID_HANDLE;
        goto out;
    }
    o = object(s, ptsz);
    if (!o) {
        r = refuse(fn, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        goto out;
    }
    if (o->cap) {
        r = CUDA_ERROR_ILLEGAL_STATE;
        goto out;
    }
    c = calloc(1, sizeof(*c));
    if (!c || !(c->graph = create_graph())) {
        free(c);
        r = CUDA_ERROR_OUT_OF_MEMORY;
        goto out;
    }
    c->id = ++kv_emu.next_capture_id;
    c->mode = mode;
    c->thread = self();
    c->device = o == &thread_stream ? current_device() : o->device;
    c->blocking = !(o->flags & CU_STREAM_NON_BLOCKING);
    c->graph->capture = c;
    c->next = kv_emu.captures;
    kv_emu.captures = c;
    o->cap = c;
    kv_emu.stats.begun++;
out:
    kv_emu_unlock();
    return r;
}

/* The legacy variant has no mode argument: its captures are global. */
KV_EMU_API CUresult cuStreamBeginCapture(CUstream hStream)
{
    KV_EMU_ENTER(cuStreamBeginCapture);
    return begin(KV_FN_cuStreamBeginCapture, hStream, CU_STREAM_CAPTURE_MODE_GLOBAL, false);
}
KV_EMU_ALIAS(cuStreamBeginCapture);

KV_EMU_API CUresult cuStreamBeginCapture_ptsz(CUstream hStream)
{
    KV_EMU_ENTER(cuStreamBeginCapture_ptsz);
    return begin(KV_FN_cuStreamBeginCapture_ptsz, hStream, CU_STREAM_CAPTURE_MODE_GLOBAL, true);
}
KV_EMU_ALIAS(cuStreamBeginCapture_ptsz);

KV_EMU_API CUresult cuStreamBeginCapture_v2(CUstream hStream, CUstreamCaptureMode mode)
{
    KV_EMU_ENTER(cuStreamBeginCapture_v2);
    return begin(KV_FN_cuStreamBeginCapture_v2, hStream, mode, false);
}
KV_EMU_ALIAS(cuStreamBeginCapture_v2);

KV_EMU_API CUresult cuStreamBeginCapture_v2_ptsz(CUstream hStream, CUstreamCaptureMode mode)
{
    KV_EMU_ENTER(cuStreamBeginCapture_v2_ptsz);
    return begin(KV_FN_cuStreamBeginCapture_v2_ptsz, hStream, mode, true);
}
KV_EMU_ALIAS(cuStreamBeginCapture_v2_ptsz);

/*
 * End the capture on s: its graph, or NULL and CUDA_ERROR_STREAM_CAPTURE_INVALIDATED for an
 * invalidated one; either way s captures no more. A stream not capturing gives
 * CUDA_ERROR_ILLEGAL_STATE; a capture not begun in relaxed mode, ended from another thread,
 * CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD, and it goes on.
 */
static CUresult end(enum kv_emu_fn fn, CUstream s, CUgraph *phGraph, bool ptsz)
{
    kv_emu_capture_t *c;
    struct CUstream_st *o;
    CUresult r = CUDA_SUCCESS;

    if (!phGraph)
        return CUDA_ERROR_INVALID_VALUE;
    if (!kv_emu_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    kv_emu_lock();
    if (!kv_emu_valid_stream(s)) {
        r = CUDA_ERROR_INVALID_HANDLE;
        goto out;
    }
    o = object(s, ptsz);
    c = o ? o->cap : NULL;
    if (!c) {
        r = CUDA_ERROR_ILLEGAL_STATE;
        goto out;
    }
    if (c->mode != CU_STREAM_CAPTURE_MODE_RELAXED && c->thread != self()) {
        r = refuse(fn, CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD);
        goto out;
    }
    for (kv_emu_capture_t **pp = &kv_emu.captures; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    o->cap = NULL;
    c->graph->capture = NULL;
    if (c->invalidated) {
        destroy_graph(c->graph);
        *phGraph = NULL;
        r = refuse(fn, CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    } else {
        *phGraph = c->graph;
        kv_emu.stats.ended++;
    }
    free(c);
out:
    kv_emu_unlock();
    return r;
}

KV_EMU_API CUresult cuStreamEndCapture(CUstream hStream, CUgraph *phGraph)
{
    KV_EMU_ENTER(cuStreamEndCapture);
    return end(KV_FN_cuStreamEndCapture, hStream, phGraph, false);
}
KV_EMU_ALIAS(cuStreamEndCapture);

KV_EMU_API CUresult cuStreamEndCapture_ptsz(CUstream hStream, CUgraph *phGraph)
{
    KV_EMU_ENTER(cuStreamEndCapture_ptsz);
    return end(KV_FN_cuStreamEndCapture_ptsz, hStream, phGraph, true);
}
KV_EMU_ALIAS(cuStreamEndCapture_ptsz);

/*
 * What the capture queries report about s, into the outputs given (any may be NULL but status).
 * The legacy stream, while a blocking stream of its device captures, gives
 * CUDA_ERROR_STREAM_CAPTURE_IMPLICIT without invalidating anything, as documented. Valid data
 * other than the status comes only with CU_STREAM_CAPTURE_STATUS_ACTIVE; otherwise it is zeroed.
 */
static CUresult capture_info(enum kv_emu_fn fn, CUstream s, bool ptsz,
                             CUstreamCaptureStatus *status, cuuint64_t *id, CUgraph *graph,
                             const CUgraphNode **deps, const CUgraphEdgeData **edges,
                             size_t *ndeps)
{
    kv_emu_capture_t *c = NULL;
    struct CUstream_st *o;
    CUresult r = CUDA_SUCCESS;

    if (!status || (edges && !deps))
        return CUDA_ERROR_INVALID_VALUE;
    if (!kv_emu_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    kv_emu_lock();
    if (!kv_emu_valid_stream(s)) {
        r = CUDA_ERROR_INVALID_HANDLE;
        goto out;
    }
    o = object(s, ptsz);
    if (!o && legacy_blocked(current_device(), false)) {
        r = refuse(fn, CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
        goto out;
    }
    if (o)
        c = o->cap;
    *status = !c ? CU_STREAM_CAPTURE_STATUS_NONE
            : c->invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                             : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    if (*status != CU_STREAM_CAPTURE_STATUS_ACTIVE)
        c = NULL;
    if (id)
        *id = c ? c->id : 0;
    if (graph)
        *graph = c ? c->graph : NULL;
    if (deps)
        *deps = c && c->graph->n ? c->deps : NULL;
    if (edges)
        *edges = c && c->graph->n ? c->edge : NULL;
    if (ndeps)
        *ndeps = c && c->graph->n ? 1 : 0;
out:
    kv_emu_unlock();
    return r;
}

KV_EMU_API CUresult cuStreamIsCapturing(CUstream hStream, CUstreamCaptureStatus *captureStatus)
{
    KV_EMU_ENTER(cuStreamIsCapturing);
    return capture_info(KV_FN_cuStreamIsCapturing, hStream, false, captureStatus, NULL, NULL,
                        NULL, NULL, NULL);
}
KV_EMU_ALIAS(cuStreamIsCapturing);

KV_EMU_API CUresult cuStreamIsCapturing_ptsz(CUstream hStream,
                                             CUstreamCaptureStatus *captureStatus)
{
    KV_EMU_ENTER(cuStreamIsCapturing_ptsz);
    return capture_info(KV_FN_cuStreamIsCapturing_ptsz, hStream, true, captureStatus, NULL, NULL,
                        NULL, NULL, NULL);
}
KV_EMU_ALIAS(cuStreamIsCapturing_ptsz);

KV_EMU_API CUresult cuStreamGetCaptureInfo(CUstream hStream,
                                           CUstreamCaptureStatus *captureStatus_out,
                                           cuuint64_t *id_out)
{
    KV_EMU_ENTER(cuStreamGetCaptureInfo);
    return capture_info(KV_FN_cuStreamGetCaptureInfo, hStream, false, captureStatus_out, id_out,
                        NULL, NULL, NULL, NULL);
}
KV_EMU_ALIAS(cuStreamGetCaptureInfo);

KV_EMU_API CUresult cuStreamGetCaptureInfo_ptsz(CUstream hStream,
                                                CUstreamCaptureStatus *captureStatus_out,
                                                cuuint64_t *id_out)
{
    KV_EMU_ENTER(cuStreamGetCaptureInfo_ptsz);
    return capture_info(KV_FN_cuStreamGetCaptureInfo_ptsz, hStream, true, captureStatus_out,
                        id_out, NULL, NULL, NULL, NULL);
}
KV_EMU_ALIAS(cuStreamGetCaptureInfo_ptsz);

KV_EMU_API CUresult cuStreamGetCaptureInfo_v2(CUstream hStream,
                                              CUstreamCaptureStatus *captureStatus_out,
                                              cuuint64_t *id_out, CUgraph *graph_out,
                                              const CUgraphNode **dependencies_out,
                                              size_t *numDependencies_out)
{
    KV_EMU_ENTER(cuStreamGetCaptureInfo_v2);
    return capture_info(KV_FN_cuStreamGetCaptureInfo_v2, hStream, false, captureStatus_out,
                        id_out, graph_out, dependencies_out, NULL, numDependencies_out);
}
KV_EMU_ALIAS(cuStreamGetCaptureInfo_v2);

KV_EMU_API CUresult cuStreamGetCaptureInfo_v2_ptsz(CUstream hStream,
                                                   CUstreamCaptureStatus *captureStatus_out,
                                                   cuuint64_t *id_out, CUgraph *graph_out,
                                                   const CUgraphNode **dependencies_out,
                                                   size_t *numDependencies_out)
{
    KV_EMU_ENTER(cuStreamGetCaptureInfo_v2_ptsz);
    return capture_info(KV_FN_cuStreamGetCaptureInfo_v2_ptsz, hStream, true, captureStatus_out,
                        id_out, graph_out, dependencies_out, NULL, numDependencies_out);
}
KV_EMU_ALIAS(cuStreamGetCaptureInfo_v2_ptsz);

KV_EMU_API CUresult cuStreamGetCaptureInfo_v3(CUstream hStream,
                                              CUstreamCaptureStatus *captureStatus_out,
                                              cuuint64_t *id_out, CUgraph *graph_out,
                                              const CUgraphNode **dependencies_out,
                                              const CUgraphEdgeData **edgeData_out,
                                              size_t *numDependencies_out)
{
    KV_EMU_ENTER(cuStreamGetCaptureInfo_v3);
    return capture_info(KV_FN_cuStreamGetCaptureInfo_v3, hStream, false, captureStatus_out,
                        id_out, graph_out, dependencies_out, edgeData_out,
                        numDependencies_out);
}
KV_EMU_ALIAS(cuStreamGetCaptureInfo_v3);

KV_EMU_API CUresult cuStreamGetCaptureInfo_v3_ptsz(CUstream hStream,
                                                   CUstreamCaptureStatus *captureStatus_out,
                                                   cuuint64_t *id_out, CUgraph *graph_out,
                                                   const CUgraphNode **dependencies_out,
                                                   const CUgraphEdgeData **edgeData_out,
                                                   size_t *numDependencies_out)
{
    KV_EMU_ENTER(cuStreamGetCaptureInfo_v3_ptsz);
    return capture_info(KV_FN_cuStreamGetCaptureInfo_v3_ptsz, hStream, true, captureStatus_out,
                        id_out, graph_out, dependencies_out, edgeData_out,
                        numDependencies_out);
}
KV_EMU_ALIAS(cuStreamGetCaptureInfo_v3_ptsz);

/* The mode is the calling thread's alone; no context is needed. */
KV_EMU_API CUresult cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode *mode)
{
    CUstreamCaptureMode old;

    KV_EMU_ENTER(cuThreadExchangeStreamCaptureMode);
    if (!mode || (unsigned int)*mode > CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_ERROR_INVALID_VALUE;
    old = thread_mode;
    thread_mode = *mode;
    *mode = old;
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuThreadExchangeStreamCaptureMode);

/* ------------------------------------------------------------------ graph entry points */

#define KV_EMU_INSTANTIATE_FLAGS                                                        \
    (CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH | CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD | \
     CUDA_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH | CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY)

/*
 * An executable copy of g: later changes to g, or its destruction, leave it as it is. A graph
 * still being captured into cannot be instantiated (CUDA_ERROR_INVALID_VALUE).
 */
KV_EMU_API CUresult cuGraphInstantiateWithFlags(CUgraphExec *phGraphExec, CUgraph hGraph,
                                                unsigned long long flags)
{
    struct CUgraphExec_st *x = NULL;
    CUresult r = CUDA_ERROR_INVALID_VALUE;

    KV_EMU_ENTER(cuGraphInstantiateWithFlags);
    if (!phGraphExec || (flags & ~(unsigned long long)KV_EMU_INSTANTIATE_FLAGS))
        return CUDA_ERROR_INVALID_VALUE;
    kv_emu_lock();
    if (!valid_graph(hGraph) || hGraph->capture)
        goto out;
    r = CUDA_ERROR_OUT_OF_MEMORY;
    x = calloc(1, sizeof(*x));
    if (!x)
        goto out;
    x->n = hGraph->n;
    x->ops = calloc(x->n ? x->n : 1, sizeof(*x->ops));
    if (!x->ops) {
        free(x);
        goto out;
    }
    for (size_t i = 0; i < x->n; i++)
        x->ops[i] = hGraph->nodes[i]->op;
    x->next = kv_emu.execs;
    kv_emu.execs = x;
    *phGraphExec = x;
    r = CUDA_SUCCESS;
out:
    kv_emu_unlock();
    return r;
}
KV_EMU_ALIAS(cuGraphInstantiateWithFlags);

/*
 * Run x's operations in order, now; into a capturing stream, record them there instead. The
 * operations are copied under the lock, so a concurrent cuGraphExecDestroy cannot pull them
 * away. Returns the first failure (an illegal address), the rest not run.
 */
KV_EMU_API CUresult cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream)
{
    kv_emu_op_t *ops = NULL;
    CUresult r = CUDA_SUCCESS;
    bool recorded = false;
    size_t n = 0;

    KV_EMU_ENTER(cuGraphLaunch);
    if (!kv_emu_current())
        return CUDA_ERROR_INVALID_CONTEXT;
    kv_emu_lock();
    if (!valid_exec(hGraphExec)) {
        r = CUDA_ERROR_INVALID_VALUE;
        goto out;
    }
    if (!kv_emu_valid_stream(hStream)) {
        r = CUDA_ERROR_INVALID_HANDLE;
        goto out;
    }
    n = hGraphExec->n;
    ops = malloc((n ? n : 1) * sizeof(*ops));
    if (!ops) {
        r = CUDA_ERROR_OUT_OF_MEMORY;
        goto out;
    }
    memcpy(ops, hGraphExec->ops, n * sizeof(*ops));
    r = kv_emu_capture_enqueue(KV_FN_cuGraphLaunch, hStream, false, ops, n, &recorded);
out:
    kv_emu_unlock();
    for (size_t i = 0; r == CUDA_SUCCESS && !recorded && i < n; i++)
        r = kv_emu_run(&ops[i]);
    free(ops);
    return r;
}
KV_EMU_ALIAS(cuGraphLaunch);

/*
 * nodes NULL: the count in *numNodes. Else the first *numNodes nodes, NULL past the last, and
 * *numNodes lowered to the count there is.
 */
KV_EMU_API CUresult cuGraphGetNodes(CUgraph hGraph, CUgraphNode *nodes, size_t *numNodes)
{
    CUresult r = CUDA_SUCCESS;
    size_t i;

    KV_EMU_ENTER(cuGraphGetNodes);
    if (!numNodes)
        return CUDA_ERROR_INVALID_VALUE;
    kv_emu_lock();
    if (!valid_graph(hGraph)) {
        r = CUDA_ERROR_INVALID_VALUE;
    } else if (!nodes) {
        *numNodes = hGraph->n;
    } else {
        for (i = 0; i < *numNodes; i++)
            nodes[i] = i < hGraph->n ? hGraph->nodes[i] : NULL;
        if (*numNodes > hGraph->n)
            *numNodes = hGraph->n;
    }
    kv_emu_unlock();
    return r;
}
KV_EMU_ALIAS(cuGraphGetNodes);

KV_EMU_API CUresult cuGraphExecDestroy(CUgraphExec hGraphExec)
{
    struct CUgraphExec_st *found = NULL;

    KV_EMU_ENTER(cuGraphExecDestroy);
    kv_emu_lock();
    for (struct CUgraphExec_st **pp = &kv_emu.execs; *pp; pp = &(*pp)->next) {
        if (*pp == hGraphExec) {
            found = *pp;
            *pp = found->next;
            break;
        }
    }
    kv_emu_unlock();
    if (!found)
        return CUDA_ERROR_INVALID_VALUE;
    free(found->ops);
    free(found);
    return CUDA_SUCCESS;
}
KV_EMU_ALIAS(cuGraphExecDestroy);

/* A graph still being captured into is the capture's to destroy (CUDA_ERROR_INVALID_VALUE). */
KV_EMU_API CUresult cuGraphDestroy(CUgraph hGraph)
{
    CUresult r = CUDA_SUCCESS;

    KV_EMU_ENTER(cuGraphDestroy);
    kv_emu_lock();
    if (!valid_graph(hGraph) || hGraph->capture)
        r = CUDA_ERROR_INVALID_VALUE;
    else
        destroy_graph(hGraph);
    kv_emu_unlock();
    return r;
}
KV_EMU_ALIAS(cuGraphDestroy);

/* ------------------------------------------------------------------ control API */

KV_EMU_API void kvemu_capture_stats(struct kvemu_capture_stats *out)
{
    if (!out)
        return;
    kv_emu_lock();
    *out = kv_emu.stats;
    out->captures = 0;
    out->graphs = 0;
    out->graph_execs = 0;
    for (const kv_emu_capture_t *c = kv_emu.captures; c; c = c->next)
        out->captures++;
    for (const struct CUgraph_st *g = kv_emu.graphs; g; g = g->next)
        out->graphs++;
    for (const struct CUgraphExec_st *x = kv_emu.execs; x; x = x->next)
        out->graph_execs++;
    kv_emu_unlock();
}
