"""Hugging Face transformers (5.x) continuous batching: PagedAttentionCache
allocates one key and one value tensor per layer of a group, sized for the
whole block pool, and a BlockManager hands out block ids from a deque of
uninitialised ids (lowest first, then in the order they were freed).

This adapter, applied when transformers.generation.continuous_batching.cache
is imported:
- makes the KV tensors PagedAttentionCache.__init__ allocates lazy spans
  reserved from kvshim directly (kvshim.tensors: PyTorch's caching
  allocator never sees them, so it cannot hand their unbacked pages to
  other tensors once the cache is gone), each on the GPU it was asked for
  (a tensor-parallel rank's own, or a layer's when a model is split over
  GPUs), and backs the two padding blocks at their end (the cache zeroes
  one of them at once);
- registers the tensors as a kvshim block group (kvshim backs each tensor's
  blocks on its own GPU: under tensor parallelism every rank maps its own
  shards for the same block ids);
- backs blocks as get_free_blocks hands them out (returning None, as when
  blocks run out, if memory is short), and releases them whenever an id
  goes back into the uninitialised deque (freed, evicted from the prefix
  cache): blocks kept alive for prefix sharing stay backed;
- makes will_allocation_be_successful, the scheduler's admission check,
  also ask kvshim whether the next blocks can be backed, so requests wait
  instead of the engine failing; an allocation kvshim refuses after the
  check said yes (memory taken meanwhile) is undone and reported as
  unavailable;
- makes the free block count the scheduler and the offloading manager read
  (get_num_free_blocks) no more than kvshim can back (the free ids on
  pages other blocks hold, which the free list hands out first, and
  room's worth of whole pages, and the prefix cache's blocks, released
  when the engine needs them: see _reclaim): when memory is short, new
  prefills wait and transformers preempts its own requests as when its
  pool is full; and scales the scheduler's safety margin to what the
  engine can have (see _admission);
- (transformers.generation.continuous_batching.continuous_api) when
  nothing can be scheduled or offloaded because kvshim is short, the step
  does nothing and the loop retries, where transformers would fail; a
  fork of a request for parallel sampling kvshim cannot back is undone
  and the request waits for it, where transformers would fail, or fails
  alone where it could never be backed (see _guard_forks); and a
  pass kvshim left empty looks again every 2 ms for up to 100 ms, where
  transformers' loop would sleep 100 ms (or until a new request came),
  but not under tensor parallelism (each pass is a collective call);
- shares the GPU's budget fairly with other processes (README.md, "Sharing
  one GPU"): after each scheduling pass that kvshim cut short, states the
  blocks the waiting requests need as this process's demand; and before
  each pass, when kvshim asks the engine to give back blocks it uses (it
  holds more than its fair share while another process waits below its
  own), preempts requests the way transformers does when its cache is
  full (its offloading manager: to CPU where transformers was given CPU
  space, else the request starts again), as many in a pass as the ask
  needs and at most as many blocks a second as asked, and admits nothing
  new until the ask is over; with KVSHIM_CB_PACK on, it first moves blocks
  in use off the pages few of them use, so that those pages go back with
  nobody preempted (see _pack);
- gives the cache a read budget, the most KV tokens one batch reads, which
  sizes transformers' static batch buffers and its warm-up instead of the
  lazy cache's capacity (transformers_cb_reads.py).
If the installed transformers does not look as expected, it warns once and
leaves the cache as it is: allocated whole, as without kvshim. If kvshim
cannot manage the tensors it made, it backs them in full.
"""
import collections
import contextlib
import functools
import inspect
import itertools
import os
import sys
import threading
import time

import kvshim
from kvshim import ERANGE, tensors
from kvshim.adapters import warn
from kvshim.adapters import transformers_cb_reads
from kvshim.adapters.blocks import BlockTracker, TrackedFreeList

_EXPECTED = {
    "PagedAttentionCache": ("__init__", "will_allocation_be_successful", "blocks_needed",
                            "allocate_blocks", "get_num_free_blocks"),
}
_MANAGER_EXPECTED = ("get_free_blocks", "free_blocks", "has_enough_free_blocks")


def _looks_right(mod):
    cls = getattr(mod, "PagedAttentionCache", None)
    if cls is None:
        return "no PagedAttentionCache"
    for attr in _EXPECTED["PagedAttentionCache"]:
        if not hasattr(cls, attr):
            return "PagedAttentionCache has no %s" % attr
    try:
        from transformers.generation.continuous_batching.cache_manager import BlockManager
    except ImportError as e:
        return "no BlockManager (%s)" % e
    for attr in _MANAGER_EXPECTED:
        if not hasattr(BlockManager, attr):
            return "BlockManager has no %s" % attr
    return None


_KV_KWARGS = {"dtype", "device", "requires_grad"}


def _device_index(torch, device):
    if device is None:
        return torch.cuda.current_device() if torch.cuda.is_available() else None
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def _kv_request(torch, cache, args, kwargs):
    """The dtype and device index of a torch.empty call that allocates one
    of the cache's KV tensors (cache_shape, on a device kvshim manages),
    else None. Under tensor parallelism each rank's cache is on its own GPU
    (its shard of the heads); split over GPUs by layers, a cache's tensors
    are on several."""
    shape = getattr(cache, "cache_shape", None)
    if shape is None or set(kwargs) - _KV_KWARGS or kwargs.get("requires_grad"):
        return None
    size = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
    try:
        if tuple(int(d) for d in size) != tuple(shape):
            return None
    except (TypeError, ValueError):
        return None
    index = _device_index(torch, kwargs.get("device"))
    if not tensors.manages(index):
        return None
    return kwargs.get("dtype") or torch.get_default_dtype(), index


@contextlib.contextmanager
def _kv_from_spans(cache, torch):
    """While the cache is built: its KV tensors come from kvshim spans (see
    kvshim.tensors), with the last two blocks of each (the padding zone,
    which the cache zeroes at once) backed."""
    real_empty = torch.empty
    failed = []

    def empty(*args, **kwargs):
        request = None if failed else _kv_request(torch, cache, args, kwargs)
        if request is None:
            return real_empty(*args, **kwargs)
        dtype, index = request
        try:
            t = tensors.span_tensor(torch, cache.cache_shape, dtype, index)
            row = t.stride(0) * t.element_size()
            rows = 2 * cache.block_size
            kvshim.map(t.data_ptr() + (t.shape[0] - rows) * row, rows * row)
            cache.kvshim_padding_backed = True
        except (kvshim.KvshimError, ValueError, RuntimeError) as e:
            # kvshim cannot run here, or memory is short (or torch cannot
            # switch to the device: the plain allocation says why): this
            # and the next KV tensors are plain memory, attach leaves them be
            warn("transformers: KV tensors allocated whole: %s" % e)
            failed.append(e)
            return real_empty(*args, **kwargs)
        return t

    torch.empty = empty
    try:
        yield
    finally:
        torch.empty = real_empty


def _back_whole(kv):
    """Back the span tensors among kv in full: a cache kvshim cannot manage
    block by block runs as without kvshim. MemoryError when memory is short,
    as for a plain allocation."""
    for t in kv:
        try:
            kvshim.map(t.data_ptr(), t.numel() * t.element_size())
        except kvshim.KvshimError as e:
            if e.code != ERANGE:    # ERANGE: plain memory already
                raise MemoryError("kvshim: cannot back the KV cache: %s" % e) from e


def _manager_looks_right(bm):
    """Why the cache's block manager (an instance: _looks_right checks its
    class's methods only) is not as the adapter wires it, or None: its free
    ids in a deque (_uninit_block_ids, which the adapter replaces) and its
    records of shareable blocks in a dict (_id_to_block, which an allocation
    kvshim refuses is undone in)."""
    if bm is None:
        return "the cache has no _block_manager"
    if not isinstance(getattr(bm, "_uninit_block_ids", None), collections.deque):
        return "its block manager keeps no _uninit_block_ids deque"
    if not isinstance(getattr(bm, "_id_to_block", None), dict):
        return "its block manager keeps no _id_to_block dict"
    return None


def attach(cache):
    """Register the cache's tensors and wire its block manager. Returns the
    tracker, or None when kvshim cannot manage the tensors, or the block
    manager is not as expected (they are then backed in full)."""
    kv = list(cache.key_cache) + list(cache.value_cache)
    if not kv:
        return None
    why = _manager_looks_right(getattr(cache, "_block_manager", None))
    if why:
        # (checked before the group is made: nothing is left registered)
        warn("transformers continuous batching not as expected (%s): "
             "the KV cache is backed in full" % why)
        _back_whole(kv)
        return None
    t = kv[0]
    block_bytes = cache.block_size * t.stride(0) * t.element_size()
    try:
        group = kvshim.Group([x.data_ptr() for x in kv], block_bytes, cache.num_blocks)
    except kvshim.KvshimError as e:
        if e.code == ERANGE:
            warn("transformers: the KV tensors are not all kvshim spans: "
                 "the cache is backed in full")
        else:
            warn("transformers: kvshim cannot manage the KV cache (%s): "
                 "it is backed in full" % e)
        _back_whole(kv)
        return None
    tracker = BlockTracker(group)
    # (the group's tensors on its first GPU, whose stats the tracker reads:
    # see _never_backed)
    devices = [getattr(x, "device", None) for x in kv]
    cache.kvshim_gpu0_tensors = devices.count(devices[0])
    if getattr(cache, "kvshim_padding_backed", False):
        # the padding zone, the last two blocks' rows, is backed whole (see
        # _kv_from_spans)
        tracker.pin((t.shape[0] - 2 * cache.block_size) * t.stride(0) * t.element_size())
    bm = cache._block_manager
    free = TrackedFreeList(bm._uninit_block_ids, tracker.give, tracker)
    tracker.freed(free)     # ids never handed out are free on their pages too
    bm._uninit_block_ids = free
    orig_get = bm.get_free_blocks

    def get_free_blocks(n_blocks, last_block_id, shareable, group_id):
        _reclaim(bm, tracker, n_blocks, free.upcoming)
        with tracker.near(last_block_id):
            ids = orig_get(n_blocks, last_block_id, shareable, group_id)
        try:
            if ids is None or tracker.take(ids):
                return ids
        except kvshim.KvshimError as e:
            # a map that failed for another reason than memory (a driver
            # error): nothing was backed; raised, the ids taken out of the
            # free list (and their records) would be lost to the pool for
            # good. Undone as a refusal, which transformers handles (see
            # allocate_blocks)
            warn("transformers: blocks %s not backed (%s): the allocation is "
                 "reported unavailable" % (ids[:8], e))
        # refused: the ids go back as they were, nothing released
        if shareable:
            for b in ids:
                bm._id_to_block.pop(b, None)
        free.put_back_front(ids)
        return None

    # a request's blocks, and those an eviction from the prefix cache puts
    # back, go back in one release (see TrackedFreeList.batched)
    _batch_frees(bm, "free_blocks", free)
    _batch_frees(cache, "free_blocks", free)
    _batch_frees(bm, "has_enough_free_blocks", free)
    orig_will = cache.will_allocation_be_successful

    def will_allocation_be_successful(num_requested_blocks, allocated_blocks):
        if not orig_will(num_requested_blocks, allocated_blocks):
            return False
        need = cache.blocks_needed(num_requested_blocks, allocated_blocks)
        # (a reclaim checks the very ids while the prefix cache has blocks,
        # and has answered then)
        return (_reclaim(bm, tracker, need, free.upcoming, exact=True)
                or tracker.can_take(itertools.islice(free.upcoming(), need)))

    orig_allocate = cache.allocate_blocks

    def allocate_blocks(n_blocks, request_id, allocated_blocks):
        # the admission check said yes, but the memory went (to another
        # process) before the map: transformers raises when a group's
        # allocation fails after the check; undo the groups served first
        # and report the blocks unavailable, so the request waits
        managers = list(getattr(cache, "group_cache_managers", ()))
        before = [len(getattr(cm, "block_table", {}).get(request_id, ())) for cm in managers]
        short, errors = tracker.short, tracker.map_errors
        try:
            return orig_allocate(n_blocks, request_id, allocated_blocks)
        except ValueError:
            # (kvshim's refusal: for memory, or a map that failed, see
            # get_free_blocks)
            if tracker.short == short and tracker.map_errors == errors:
                raise
        for cm, k in zip(managers, before):
            table = cm.block_table.get(request_id)
            if table is not None and len(table) > k:
                extra = table[k:]
                del table[k:]
                bm.free_blocks(extra, shareable=cm.uses_block_sharing)
        return None

    orig_free = cache.get_num_free_blocks

    def free_shown():
        n = orig_free()
        room = tracker.room()
        if room is None or room >= n:
            return n
        # the free blocks the engine hands out next that kvshim can back:
        # those on pages other blocks hold, and whole pages' worth of room;
        # and its prefix cache's, which it releases when it needs them
        # (see _reclaim)
        cap = min(n, tracker.capacity(n, room) + len(_prefix_cache(bm)))
        if cap >= n:
            return n
        # kvshim, not the engine's pool, holds the engine back: a pass
        # that schedules nothing because of it must not fail the engine
        # (counted apart from short, which states demand)
        tracker.capped += 1
        return cap

    def get_num_free_blocks():
        tracker.shown = free_shown()
        return tracker.shown

    bm.get_free_blocks = get_free_blocks
    cache.get_num_free_blocks = get_num_free_blocks
    cache.will_allocation_be_successful = will_allocation_be_successful
    cache.allocate_blocks = allocate_blocks
    cache.kvshim_tracker = tracker
    return tracker


def _start_kvshim(torch):
    """Start kvshim on the current device (its driver set-up, then its
    worker filling the page pool) on a thread of its own while transformers
    sizes the cache, so that the first KV tensor does not wait for it. The
    thread makes that device current first: a fresh thread's would be
    device 0, whatever GPU this rank runs on."""
    try:
        index = torch.cuda.current_device()
    except (AttributeError, RuntimeError):
        return
    if not tensors.manages(index):
        return

    def start():
        try:
            with torch.cuda.device(index):
                kvshim.stats()
        except (OSError, RuntimeError, kvshim.KvshimError):
            pass    # the first span tensor meets the same error and says so
    threading.Thread(target=start, name="kvshim-start", daemon=True).start()


def patch_cache_module(mod):
    why = _looks_right(mod)
    if why:
        warn("transformers continuous batching not as expected (%s): "
             "the KV cache is left eager" % why)
        return
    import torch

    cls = mod.PagedAttentionCache
    if getattr(cls, "_kvshim_patched", False):
        return
    orig_init = cls.__init__
    try:
        sig = inspect.signature(orig_init)
    except (TypeError, ValueError):
        sig = None

    def __init__(self, *args, **kwargs):
        _start_kvshim(torch)
        with _kv_from_spans(self, torch):
            orig_init(self, *args, **kwargs)
        if attach(self) is None:
            return
        try:
            cb_config = sig.bind(self, *args, **kwargs).arguments.get("continuous_batching_config")
        except (AttributeError, TypeError):
            cb_config = None
        transformers_cb_reads.apply_read_budget(self, cb_config)
        transformers_cb_reads.apply_kv_pad(self, cb_config)

    cls.__init__ = __init__
    cls._kvshim_patched = True


AHEAD_VAR = "KVSHIM_CB_AHEAD"
PACK_VAR = "KVSHIM_CB_PACK"
CUSHION_VAR = "KVSHIM_CB_CUSHION"
IDLE_CUSHION_VAR = "KVSHIM_CB_IDLE_CUSHION"
GIVE_BACK_VAR = "KVSHIM_CB_GIVE_BACK"
_BOOL = {"1": True, "true": True, "yes": True, "on": True,
         "0": False, "false": False, "no": False, "off": False}
_ahead_setting = []
_pack_setting = []
_cushion_setting = []
_idle_cushion_setting = []
_give_back_setting = []
_idle_alone_warned = []


def _bool_setting(var, value, unset):
    """A switch as kvshim-config reads it: unset when value is None.
    Raises ValueError naming var."""
    if value is None:
        return unset
    if value.lower() not in _BOOL:
        raise ValueError("%s=%s: expected 1/true/yes/on or 0/false/no/off" % (var, value))
    return _BOOL[value.lower()]


def ahead_setting(value):
    """KVSHIM_CB_AHEAD as kvshim-config reads it: on (also when unset) or
    off. Raises ValueError naming the variable."""
    return _bool_setting(AHEAD_VAR, value, True)


def pack_setting(value):
    """KVSHIM_CB_PACK as kvshim-config reads it: on (also when unset) or
    off. Raises ValueError naming the variable."""
    return _bool_setting(PACK_VAR, value, True)


def cushion_setting(value):
    """KVSHIM_CB_CUSHION as kvshim-config reads it: on (also when unset) or
    off. Raises ValueError naming the variable."""
    return _bool_setting(CUSHION_VAR, value, True)


def idle_cushion_setting(value):
    """KVSHIM_CB_IDLE_CUSHION as kvshim-config reads it: off (also when
    unset) or on. Raises ValueError naming the variable."""
    return _bool_setting(IDLE_CUSHION_VAR, value, False)


def give_back_setting(value):
    """KVSHIM_CB_GIVE_BACK as kvshim-config reads it: on (also when unset)
    or off. Raises ValueError naming the variable."""
    return _bool_setting(GIVE_BACK_VAR, value, True)


def _switch(kept, setting, var, off):
    """A switch read once from the environment's var by setting, kept in
    the list kept; a bad value warns (off: what that leaves undone) and
    counts as off."""
    if not kept:
        try:
            kept.append(setting(os.environ.get(var)))
        except ValueError as e:
            warn("%s: %s" % (e, off))
            kept.append(False)
    return kept[0]


def _pack_on():
    return _switch(_pack_setting, pack_setting, PACK_VAR, "blocks in use are not moved")


def _ahead_on():
    return _switch(_ahead_setting, ahead_setting, AHEAD_VAR,
                   "blocks are mapped when handed out only")


def _cushion_on():
    return _switch(_cushion_setting, cushion_setting, CUSHION_VAR,
                   "the engine states no cushion and keeps no step backed for the next request")


def _idle_cushion_on():
    return _switch(_idle_cushion_setting, idle_cushion_setting, IDLE_CUSHION_VAR,
                   "an engine without requests keeps no cushion")


def _idle_cushion(proc):
    """Whether an engine without requests keeps its cushion (see _cushion):
    KVSHIM_CB_IDLE_CUSHION on, the cushion on, and other processes sharing
    its budget."""
    return _idle_cushion_on() and _cushion_on() and _shared(proc)


def give_back_on():
    """Whether PyTorch's cache is given back after a batch run without a
    CUDA graph (transformers_cb_reads.give_back_cache): KVSHIM_CB_GIVE_BACK,
    read once."""
    return _switch(_give_back_setting, give_back_setting, GIVE_BACK_VAR,
                   "PyTorch's cache is kept after a batch run without a CUDA graph")


def map_ahead(processor, tracker):
    """After a step is scheduled (its blocks backed): back, on the tracker's
    thread while the step computes, the blocks the next step's prefill will
    take: the prompt tokens the scheduled and waiting requests have left,
    at most one step's worth (max_batch_tokens), as the ids the block
    manager will hand out next. With no prefill pending, an engine with
    requests (running or waiting) that shares its budget with other
    processes keeps one step's worth backed for the next request to come
    (none with KVSHIM_CB_CUSHION=off; the step its cushion claims in the
    shared budget, see _cushion, which they then cover; an engine alone
    does as before, its pages following its blocks in use within a page a
    tensor): a request arrives between two
    passes, and without it its prompt's first blocks were mapped on the
    engine's path (on an H200 a large engine mapped 21 new page indices, 48
    pages each, for the 29 requests of its hot phases, and scheduling a
    prefill took 2 to 13 ms more than static's at the median). Those ids are
    named again only once the engine has taken blocks or emptied a page
    since, or after an ask, and no batch is in flight, so most decode passes
    look at nothing; an idle engine's step (KVSHIM_CB_IDLE_CUSHION) that
    backed nothing for want of memory is also named again AHEAD_RETRY_S
    after that try (its demand has others give way meanwhile). Of the ids,
    only those whose pages hold no claim are backed (ahead_worth): the
    others cost the engine's map no driver call,
    and its takes of them never wait for the thread. An engine without
    requests holds none from its next pass (its idle pages are the others';
    with KVSHIM_CB_IDLE_CUSHION on it keeps the step backed, see _cushion),
    nor while kvshim asks the engine to give back (the blocks backed ahead
    are released then, see _give_back: backed again at every pass, they
    would come and go for as long as the ask lasts; the engine's takes map
    its blocks)."""
    if tracker.asked():
        return
    try:
        cache, sched = processor.cache, processor.scheduler
        active, waiting = sched.active_requests, sched.waiting_requests
        states = itertools.chain(active.values(), waiting.values())
        tokens = min(sum(len(s.remaining_prefill_tokens) for s in states),
                     processor.max_batch_tokens)
        standing = (tokens <= 0 and _cushion_on() and _shared(processor)
                    and (bool(active or waiting) or _idle_cushion_on()))
        if standing:
            # (an idle engine's step, named while memory was short, is
            # named again: nothing it does would change its ids)
            if tracker.ahead_standing(retry=not (active or waiting)):
                return
            tokens = processor.max_batch_tokens
        n = cache.blocks_needed(-(-tokens // cache.block_size), 0) if tokens > 0 else 0
        free = cache._block_manager._uninit_block_ids
        ids = [b for b in itertools.islice(free.upcoming() if hasattr(free, "upcoming") else free, n)
               if tracker.ahead_worth(b)]
    except (AttributeError, TypeError) as e:
        warn("transformers continuous batching not as expected (%s): blocks are mapped "
             "when handed out only" % e)
        _ahead_setting[:] = [False]
        return
    tracker.ahead(ids)


def _waiting_blocks(proc):
    """Blocks the requests waiting for admission need, over the layer
    groups (the cache's blocks_needed: a sliding window's group holds at
    most its window): what the engine waits for. A request's blocks hold
    the tokens before its position (position_offset: those of a request
    preempted to the CPU, whose cache comes back whole when it is admitted
    again; 0 for a new one) and those it has left to prefill
    (transformers' own count: remaining_prefill_tokens, else
    tokens_to_process), and the next one, as transformers 5.17 allocates
    for a request with no blocks: (tokens + 1) // block_size + 1.
    (Counted by its prompt alone, a request waiting on the CPU counted one
    block, and its engine stated next to nothing for it. On an H200 at
    rate 6 the large model's preempted requests started again up to 27.8 s
    after they arrived while new ones were admitted; whether this was why
    is not known.)"""
    cache = proc.cache
    waiting = getattr(getattr(proc, "scheduler", None), "waiting_requests", None) or {}
    groups = len(getattr(cache, "group_cache_managers", ()) or ()) or 1
    needed = getattr(cache, "blocks_needed", None)
    n = 0
    for state in list(waiting.values()):
        tokens = (getattr(state, "remaining_prefill_tokens", None)
                  or getattr(state, "tokens_to_process", None)
                  or getattr(state, "initial_tokens", None) or ())
        past = getattr(state, "position_offset", 0)
        past = past if isinstance(past, int) and past > 0 else 0
        blocks = (past + len(tokens) + 1) // cache.block_size + 1
        n += needed(blocks, 0) if needed else blocks * groups
    return n


def _margin_blocks(proc):
    """The free blocks under which the scheduler admits no new prefill
    (safety_margin x num_blocks, as _admission scaled it); 0 when it has
    none."""
    margin = getattr(getattr(proc, "scheduler", None), "safety_margin", None)
    total = getattr(proc.cache, "num_blocks", 0)
    if not isinstance(margin, (int, float)) or not isinstance(total, int):
        return 0
    return max(0, int(-(-margin * total // 1)))


def _cushion(proc):
    """Blocks an engine with requests (running or waiting) keeps free for
    its next step: one step's prefill (max_batch_tokens) in every layer
    group above the scheduler's margin (below which it admits nothing),
    stated as demand even when nothing waits. Within its share, the
    shared budget keeps them for it (a claim), so that a model whose burst
    begins maps at once, where it would otherwise wait for another engine
    to preempt (on an H200 at rate 6, another engine took the idle pages of
    the small model just as its burst began, and the small model waited
    3 to 5 s). Its own prefix cache's blocks (see _reclaim) and then its
    idle pages cover it first; with KVSHIM_CB_PACK, the free ids on its
    pages that packing leaves (it keeps the cushion's worth) before them.
    0 for an idle engine: its idle pages are the others' (unless
    KVSHIM_CB_IDLE_CUSHION is on, while others share its budget: then it
    keeps the cushion, and map_ahead the step backed, so that the first
    step of a burst after a lull maps at once; on an H200 at a 3 GiB
    budget an idle small model's request waited 0.21 s for 48 MiB of
    pages, one step's prefill, while the large model held 1920 MiB against
    its entitlement's 1024 and 16 MiB of the budget was free, session 41);
    and 0 with
    KVSHIM_CB_CUSHION=off (nor does map_ahead keep a step backed for the
    next request then): the engine states what its waiting requests need
    (with the scheduler's margin), and nothing while none waits, so it
    claims nothing for a request that has not come. (On an H200 at a 3 GiB
    budget, from 17.0 to 17.85 s, as the large model's burst began, kvshim
    asked the medium engine, above its share, for up to 246 MiB while the
    large engine stated up to 342 MiB of demand and its requests had their
    first tokens within 0.21 s; the medium model's request of 17.71 s
    waited 3.8 s; docs/BENCHMARKS.md, section 4, session 25. Off, in
    session 26, the asks at 3 GiB fell from 111 and 324 to 35 and 46
    (medium, large), but the tails did not follow one way: on by default.)"""
    if not _cushion_on():
        _warn_idle_alone()
        return 0
    need = _cushion_blocks(proc)
    tracker = getattr(proc.cache, "kvshim_tracker", None)
    if need and tracker is not None and _packs(proc):
        # the free ids on its pages that packing leaves cost no memory and
        # cover it first: an engine whose pages are part used states no
        # cushion, and the pages packing would empty (keeping the cushion's
        # worth of free ids) count as unused (the rule counts a process's
        # unused pages only while it waits for nothing)
        init = _prefix_cache(getattr(proc.cache, "_block_manager", None))
        need = max(0, need - tracker.free_after_plan(init, need))
    elif need and tracker is not None:
        # the blocks backed ahead for the next request (see map_ahead) are
        # backed already: stated again, the engine would want them twice;
        # so are the padding zone's page's free ids (see BlockTracker.pin)
        need = max(0, need - tracker.ahead_backed() - tracker.free_pinned())
    return need


def _warn_idle_alone():
    """KVSHIM_CB_IDLE_CUSHION on does nothing while KVSHIM_CB_CUSHION is
    off (an idle engine keeps the cushion, and there is none): said once."""
    if not _idle_alone_warned and _idle_cushion_on():
        _idle_alone_warned.append(True)
        warn("%s=on does nothing while %s is off: an engine without requests keeps "
             "no cushion" % (IDLE_CUSHION_VAR, CUSHION_VAR))


def _cushion_blocks(proc):
    """The cushion before what covers it without memory (see _cushion):
    one step's prefill in every layer group above the margin, less the
    prefix cache's blocks; 0 for an engine without requests, unless it
    keeps its cushion idle (_idle_cushion). (Packing
    keeps this many free ids on its pages, whether the engine states the
    cushion or not: KVSHIM_CB_CUSHION switches the statement.)"""
    sched = getattr(proc, "scheduler", None)
    if not (getattr(sched, "active_requests", None) or getattr(sched, "waiting_requests", None)
            or _idle_cushion(proc)):
        return 0
    cache = proc.cache
    tokens = getattr(proc, "max_batch_tokens", 0)
    try:
        step = cache.blocks_needed(-(-int(tokens) // cache.block_size), 0) if tokens else 0
    except (AttributeError, TypeError, ValueError):
        step = 0
    if not step:
        return 0
    return max(0, step + _margin_blocks(proc) - _cached_blocks(cache))


def _give_back(proc, tracker):
    """Preempt requests while kvshim asks this engine to give back blocks it
    uses, as transformers does when its cache is full: first those whose
    blocks fill the pages fewest requests share (see _victims: what goes
    back is whole pages), then the newest, as many in one pass as the ask
    needs (the process waiting below its share waits a step, not a step
    per request), never the last active one, and none more once one freed
    nothing. The page indices only its prefix cache's blocks claim go
    first (see _drop_unused), which kvshim asks for before anything in use
    (even of an engine at its share); then, if the ask still stands, the
    blocks backed ahead: they are claims on the pages with free ids, those
    an ask empties soonest, that no request explains (see _victims), and
    while asked the engine backs none ahead (see map_ahead); then the
    pages only the prefix cache claims once they are gone (those it shared
    with them). (Released before the prefix cache's pages, the blocks
    backed ahead were backed again at the first pass after the ask: on an
    H200 a large engine that nothing queued on was asked 609 times in a
    56 s replay and made 31398 pages for the 1298 blocks it took, about a
    row of 48 pages an ask; likely those.) Then with KVSHIM_CB_PACK the
    pages that moving its blocks in use empties (see _pack); the ask is
    read afresh after each. Those cost the engine no work: what its
    preemptions freed on pages still used holds back more preemptions (see
    owed), not them. Returns how many were."""
    n = 0
    if tracker.asked():
        _drop_unused(proc, tracker)
        # (the ask whole: what preemptions freed within the second holds
        # back only more preemptions, see owed)
        if tracker.asked() and tracker.drop_ahead():
            # pages they shared with the prefix cache are its alone now
            _drop_unused(proc, tracker)
        if _packs(proc):
            # (the ask whole, as for the blocks backed ahead)
            while tracker.asked() and _pack(proc, tracker):
                pass
            if tracker.owed():
                # what is left, packing cannot give now (or the engine is
                # above its share): the pages stated for it are taken back,
                # so that no request is preempted for them (stated again
                # at the next look, within a second)
                _state_unused(proc, tracker, fresh=True, pack=False)
                tracker.reread()
    for victim in _victims(proc, tracker):
        if not _give_back_one(proc, tracker, victim):
            break
        n += 1
    _drop_prefix_cache(proc, tracker)
    while _give_back_one(proc, tracker):
        n += 1
    return n


def _victims(proc, tracker):
    """The active requests to preempt for kvshim's ask, newest first: those
    with blocks on the page indices the fewest requests share, taken until
    their pages make up the ask (a request not yet past its prompt counts
    twice: preempting it delays its first token), never every active one.
    The prefix cache's blocks on those pages are released first. (Preempted
    newest first, requests free blocks, but a page goes back only when
    every block on it is free.) Empty when the pages cannot be told (blocks
    straddle pages) or none can be emptied, and under tensor parallelism:
    each rank's pages are its own, and ranks that preempted different
    requests would run different batches (the newest go there instead).
    An ask in which a pass of an engine with two requests or more found
    no page (none whose claims its requests and prefix cache explain, or
    none but pages every active request is on) counts in tracker.no_page
    (see found_no_page)."""
    if _tensor_parallel(proc):
        return []
    owed = tracker.owed()
    if not owed:
        return []
    sched = getattr(proc, "scheduler", None)
    active = getattr(sched, "active_requests", None)
    if not active or len(active) < 2:
        return []
    tables = [(rid, blocks) for rid, blocks in _block_tables(proc.cache) if rid in active]
    bm = getattr(proc.cache, "_block_manager", None)
    owners = tracker.owners(tables, _prefix_cache(bm))
    if not owners:
        tracker.found_no_page()
        return []

    def weight(rid):
        return 2 if getattr(active[rid], "remaining_prefill_tokens", None) else 1

    pages = -(-owed // max(1, tracker.page_index_bytes))
    chosen, uncache = set(), []
    while pages > 0 and owners:
        p = min(owners, key=lambda p: (sum(weight(r) for r in owners[p][0] - chosen), p))
        rids, ids = owners.pop(p)
        if len(chosen | rids) >= len(active):
            break
        chosen |= rids
        uncache += ids
        pages -= 1
    if not chosen and not uncache:
        tracker.found_no_page()     # every page needs every active request
    _uncache(bm, uncache, tracker)
    return [rid for rid in reversed(active) if rid in chosen]


def _uncache(bm, ids, tracker, asked=True):
    """Release these prefix-cache blocks (ids in the block manager's
    _init_block_ids) as transformers 5.17's has_enough_free_blocks does
    when its free list runs short: out of the cache and its hash table,
    into the free list (which releases them). asked: for kvshim's ask
    (counted in tracker.dropped; the pages they empty go back, see
    gave_back), else for the engine itself."""
    init, by_hash = getattr(bm, "_init_block_ids", None), getattr(bm, "_hash_to_id", None)
    blocks = getattr(bm, "_id_to_block", None)
    if not ids or init is None or blocks is None:
        return
    before = tracker.mapped
    free = bm._uninit_block_ids         # (a TrackedFreeList: attach made it)
    with free.batched():
        for b in ids:
            if b not in init:
                continue
            del init[b]
            h = getattr(blocks.get(b), "hash", None)
            if by_hash is not None and h is not None and by_hash.get(h) == b:
                del by_hash[h]
            free.append(b)
    if asked and before > tracker.mapped:
        tracker.gave_back(before - tracker.mapped, preempted=False)
    # (the pages it stated unused may be gone: looked at again at the next
    # statement; _drop_unused states them afresh before the ask is read)
    tracker.unused_stale()


def _prefix_cache(bm):
    """The prefix cache's blocks (transformers 5.17's _init_block_ids:
    complete blocks of finished requests, kept for sharing), which the
    engine counts as free and the adapter releases when the engine needs
    their memory (see _reclaim); none under tensor parallelism, where each
    rank's kvshim would release different ones."""
    if bm is None or getattr(bm, "tp_on", False):
        return {}
    return getattr(bm, "_init_block_ids", None) or {}


def _cached_blocks(cache):
    """How many blocks the cache's prefix cache holds (see _prefix_cache)."""
    return len(_prefix_cache(getattr(cache, "_block_manager", None)))


def _cached_parents(bm, init):
    """The prefix cache's blocks (init) that are the parent of another of
    its blocks (transformers' Block.parent_id: the block before it in its
    request): released first, they would leave their children's prefix
    unreachable (a match stops at the first block it cannot find)."""
    blocks = getattr(bm, "_id_to_block", None) or {}
    parents = {getattr(blocks.get(b), "parent_id", None) for b in init}
    return {p for p in parents if p is not None and p in init}


def _newest(init, k):
    """The k newest of the prefix cache's blocks, the newest first: those
    5.17's eviction (popitem) takes first."""
    return list(itertools.islice(reversed(init), k))


def _reclaim(bm, tracker, need, upcoming, exact=False):
    """Before the engine takes need blocks (upcoming() gives the ids it
    hands out next): while kvshim cannot back them, release its prefix
    cache's blocks, those on pages in use first (but parents of other
    cached blocks), then the newest, as transformers 5.17 evicts them when
    its free list runs short (see tracker.release_order), a quarter of a
    page index's worth at a time
    (the ids released on a page that other blocks hold cost no memory, and
    a page they empty is the engine's own idle page: either may be enough
    before the whole shortfall is). kvshim checks the very ids when
    capacity, an estimate that keeps a page of margin, falls short, and
    also when it does not if exact (the caller checks them anyway: the
    admission check). The estimate can be wrong: its headroom reading is
    up to RETRY_FOR_S old, and another process may have taken that room
    since (on an H200 at rate 6, requests of the small model waited three
    steps, refused, it seems, while blocks of its own prefix cache could
    have served them, and a larger one that arrived later was admitted
    through it). So at kvshim's first refusal of the very ids the estimate
    is read afresh, and bounds what goes: if the prefix cache cannot cover
    the difference by it, the cache is left as it is, as 5.17 leaves it
    (the engine waits for memory, and says so), and no more than the
    difference and a page index's blocks go.

    5.17's free list is the pool sized as if alone, which hardly ever runs
    short: left to itself, the prefix cache (on by default) would keep the
    pages of every finished request, and the engine would wait for memory,
    or others would be asked for theirs, while it held pages no request
    uses. Returns True when kvshim, checking the very ids, found it could
    back them; else False (not checked, or it could not)."""
    init = _prefix_cache(bm)
    if not init or need <= 0:
        return False
    # (a reading up to RETRY_FOR_S old will do for the estimate: the ids
    # are checked exactly before any is released, and the engine's thread
    # is spared a driver read per allocation)
    room = tracker.room(ttl=RETRY_FOR_S)
    if room is None:
        return False
    short = need - tracker.capacity(need, room)
    if short > len(init) or (short <= 0 and not exact):
        return False
    page = max(1, tracker.page_index_bytes // max(1, tracker.bytes_per_block))
    step, most, order, at = max(1, page // 4), None, None, 0
    while init:
        if tracker.can_back(itertools.islice(upcoming(), need)):
            return True
        if most is None:
            # refused: the estimate may be stale (another process took the
            # room since); read afresh, it bounds what goes: the shortfall
            # and a page index's blocks (the margin it keeps)
            tracker.stale()
            room = tracker.room(ttl=0)
            if room is None:
                return False
            short = need - tracker.capacity(need, room)
            if short > len(init):
                return False
            most = max(0, short) + page
        k = min(step, len(init), most)
        if k <= 0:
            return False
        if order is None:
            # (the order is read once: a look goes over the whole cache)
            order = tracker.release_order(init, _cached_parents(bm, init))
        batch = []
        while len(batch) < k and at < len(order):
            if order[at] in init:
                batch.append(order[at])
            at += 1
        before = len(init)
        _uncache(bm, batch, tracker, asked=False)
        if len(init) == before:         # (nothing it could release)
            return False
        most -= k
        tracker.reclaimed += k
        tracker.stale()
    return False


def _drop_unused(proc, tracker):
    """Asked to give back: the page indices only the prefix cache's blocks
    claim, those the adapter states unused (see one_pass), the page of the
    newest block first (5.17's eviction order), whole, as many as the ask
    needs. kvshim asks for them before anything in use, of any engine
    (README.md, "Sharing one GPU"), and each page they empty goes back.
    Then, released or not, the pages are stated afresh and the ask read
    again: what was given back so is not asked again (counted in
    tracker.unused_pages and dropped, not as given), and an ask for pages
    stated unused that requests took since (its blocks are in use now)
    ends instead of preempting requests for it. Read whole: not less what
    preemptions freed within the second (see owed), which holds back only
    more preemptions. Returns the blocks released."""
    asked = tracker.asked()
    if not asked:
        return 0
    bm = getattr(getattr(proc, "cache", None), "_block_manager", None)
    init = _prefix_cache(bm)
    pages = tracker.cache_only_pages(init) if init else {}
    want = -(-asked // max(1, tracker.page_index_bytes))
    order, seen = [], set()
    for b in reversed(init) if pages else ():
        p = tracker.page_of(b)
        if p in pages and p not in seen:
            seen.add(p)
            order.append(p)
            if len(order) >= want:
                break
    released = len(init)
    if order:
        _uncache(bm, [b for p in order for b in pages[p]], tracker)
        tracker.unused_pages += len(order)
    _state_unused(proc, tracker, fresh=True)
    tracker.reread()
    return released - len(init)


def _packs(proc):
    """Whether this engine packs: KVSHIM_CB_PACK on, other processes sharing
    its budget (without them nobody asks, and the plan's look is work for
    nothing: an engine alone, with or without a shared budget, does as
    before packing was on), not under tensor parallelism."""
    return _pack_on() and _shared(proc) and not _tensor_parallel(proc)


SHARED_EVERY = 1.0     # seconds between two reads of who shares the budget


def _shared(proc):
    """Whether other processes share kvshim's budget with this one now
    (its stats' share_members, this process included, above 1; 0 without a
    shared budget), on its cache's GPU (its group's, whatever the current
    device): read at most every SHARED_EVERY seconds, kept on the cache, as
    processes come and go."""
    cache = getattr(proc, "cache", None)
    now = time.monotonic()
    shared = getattr(cache, "kvshim_shared", None)
    if shared is None or now - getattr(cache, "kvshim_shared_at", now) >= SHARED_EVERY:
        group = getattr(getattr(cache, "kvshim_tracker", None), "group", None)
        try:
            shared = (group.stats() if group is not None else kvshim.stats()).get(
                "share_members", 0) > 1
        except (kvshim.KvshimError, AttributeError, OSError, RuntimeError):
            shared = False
        if cache is not None:
            cache.kvshim_shared, cache.kvshim_shared_at = shared, now
    return shared


def _state_unused(proc, tracker, fresh=False, pack=None):
    """State the engine's unused pages (see BlockTracker.state_unused): the
    prefix cache's, and, when it packs (pack: None, as _packs says), those
    moving its blocks in use would empty (see _packable: the pages _pack
    can empty, not those with a block no table names)."""
    init = _prefix_cache(getattr(getattr(proc, "cache", None), "_block_manager", None))
    pack = _packs(proc) if pack is None else pack
    keep = _cushion_blocks(proc) if pack else 0
    tracker.state_unused(init, fresh=fresh, keep=keep,
                         packable=(lambda: len(_packable(proc, tracker, init, keep)[0]))
                         if pack else None)


def _block_tables(cache):
    """(request id, its block ids) in every layer group's block table."""
    for cm in getattr(cache, "group_cache_managers", ()) or ():
        table = getattr(cm, "block_table", None)
        if isinstance(table, dict):
            yield from table.items()


def _packable(proc, tracker, init, keep):
    """The pages packing can empty now, keeping keep free ids (see
    BlockTracker.pack_plan), of those whose every block in use a block
    table names (a page with another claim, a block backed ahead, cannot
    be emptied by moving blocks), the fewest blocks to move first:
    ([(blocks in use, page)], {block on them: [(its table, index)]})."""
    plan = dict(tracker.pack_plan(init, keep))
    spots = {}
    for _, blocks in _block_tables(proc.cache):
        for i, b in enumerate(blocks):
            if tracker.page_of(b) in plan:
                spots.setdefault(b, []).append((blocks, i))
    named = collections.Counter(tracker.page_of(b) for b in spots)
    return sorted((live, p) for p, live in plan.items() if named[p] == live), spots


def _pack(proc, tracker):
    """Asked to give back, with KVSHIM_CB_PACK on: empty page indices by
    moving the blocks in use on them onto the free ids of the other pages
    with blocks in use, the fewest blocks to move first (see
    BlockTracker.pack_plan and pack_targets), keeping the cushion's worth
    of free ids (see _cushion), as many pages as the ask still needs once
    the prefix cache's went (see _drop_unused), read whole: not less what
    preemptions freed within the second (see owed), which holds back only
    more preemptions. Each block's KV rows are copied in every KV tensor of
    the cache, after the device's queued work (a synchronize), its id
    replaced in the block tables and in the block manager's records (the
    block, its hash, the parent id of the blocks after it); then the prefix
    cache's blocks on those pages are released and the old ids go back into
    the free list, which empties the pages: they go back after kvshim's
    fence, which the copies are queued before. No request is preempted and
    none loses work. A page whose claims the block tables and the prefix
    cache do not explain stays. Not under tensor parallelism (each rank's
    pages are its own), nor when blocks may straddle pages. The pages
    stated unused are looked at afresh and the ask read again after it, as
    after _drop_unused. Returns the page indices emptied."""
    if not _packs(proc):
        return 0
    asked = tracker.asked()
    cache = getattr(proc, "cache", None)
    bm = getattr(cache, "_block_manager", None)
    free = getattr(bm, "_uninit_block_ids", None)
    if not asked or not isinstance(free, TrackedFreeList):
        return 0
    init = _prefix_cache(bm)
    whole, spots = _packable(proc, tracker, init, _cushion_blocks(proc))
    # those the ask needs, the fewest blocks to move first
    pages = {p for _, p in whole[:-(-asked // max(1, tracker.page_index_bytes))]}
    moving = sorted(b for b in spots if tracker.page_of(b) in pages)
    to = tracker.pack_targets(pages, len(moving), init) if moving else []
    if not moving or len(to) < len(moving):
        return 0
    got = free.take_ids(to)
    try:
        taken = got == to and tracker.take(got)
    except kvshim.KvshimError as e:
        # (a map that failed for another reason than memory: nothing was
        # backed, and the pass must go on)
        warn("transformers: blocks not moved (%s): the pages stay" % e)
        taken = False
    if not taken:
        free.put_back_front(got)
        return 0
    pairs = list(zip(moving, got))
    try:
        _copy_blocks(proc, pairs)
    except (RuntimeError, MemoryError) as e:
        # (the blocks stay where they are; the targets, partly written,
        # were free and go back)
        warn("transformers: blocks not moved (%s): the pages stay" % e)
        free.extend(got)
        return 0
    _rename_blocks(bm, spots, dict(pairs))
    _uncache(bm, [b for b in init if tracker.page_of(b) in pages], tracker)
    emptied = tracker.emptied
    free.extend(moving)
    tracker.moved += len(pairs)
    tracker.packed_pages += tracker.emptied - emptied
    tracker.stale()
    _state_unused(proc, tracker, fresh=True)
    tracker.reread()
    return tracker.emptied - emptied


COPY_BLOCKS = 64            # blocks one indexed copy moves (see _copy_blocks)


def _copy_blocks(proc, pairs):
    """Copy the KV rows of each (from, to) block pair in every KV tensor of
    the engine's cache (a block's rows: block_size of them from block *
    block_size): on the engine's compute stream where it has one
    (transformers 5.17 runs its steps, and its own block copies, there: a
    stream that does not wait for the default one), between two
    synchronizes of the tensors' devices, so that nothing the engine
    queued writes the blocks meanwhile and its next step reads them
    copied. An indexed copy per tensor and COPY_BLOCKS blocks (its
    temporary, those blocks' rows, comes from PyTorch's allocator) where
    torch has them, else a copy per block."""
    cache = proc.cache
    kv = list(cache.key_cache) + list(cache.value_cache)
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    sync = getattr(cuda, "synchronize", None)
    devices = {getattr(t, "device", None) for t in kv} - {None}
    stream = getattr(getattr(proc, "inputs_and_outputs", None), "compute_stream", None)
    on = cuda.stream(stream) if stream is not None and hasattr(cuda, "stream") \
        else contextlib.nullcontext()
    bs = cache.block_size
    for dev in devices if sync is not None else ():
        sync(dev)
    indexed = torch is not None and hasattr(torch, "tensor")
    with on:
        for k in range(0, len(pairs), COPY_BLOCKS):
            part, index = pairs[k:k + COPY_BLOCKS], {}
            for t in kv:
                if indexed and hasattr(t, "index_copy_"):
                    if t.device not in index:
                        rows = [[a * bs + i for a, _ in part for i in range(bs)],
                                [b * bs + i for _, b in part for i in range(bs)]]
                        index[t.device] = [torch.tensor(r, device=t.device) for r in rows]
                    src, dst = index[t.device]
                    t.index_copy_(0, dst, t.index_select(0, src))
                else:
                    for a, b in part:
                        t[b * bs:(b + 1) * bs].copy_(t[a * bs:(a + 1) * bs])
    for dev in devices if sync is not None else ():
        sync(dev)


def _rename_blocks(bm, spots, new):
    """Blocks moved (new: old id to new): their ids in the block tables
    (spots: old id to (table, index) pairs), and in the block manager's
    records: the Block (its id), the hash table's entry, and the parent id
    of the blocks whose parent moved."""
    for b, places in spots.items():
        for blocks, i in places:
            blocks[i] = new.get(b, b)
    records = getattr(bm, "_id_to_block", None)
    by_hash = getattr(bm, "_hash_to_id", None)
    if not isinstance(records, dict):
        return
    for a, b in new.items():
        block = records.pop(a, None)
        if block is None:
            continue
        block.id = b
        records[b] = block
        h = getattr(block, "hash", None)
        if isinstance(by_hash, dict) and h is not None and by_hash.get(h) == a:
            by_hash[h] = b
    for block in records.values():
        parent = getattr(block, "parent_id", None)
        if parent in new:
            block.parent_id = new[parent]


def _drop_prefix_cache(proc, tracker):
    """Asked to give back, when blocks may straddle pages (no page can be
    told: see _victims): the prefix cache's blocks (complete blocks no
    request uses, kept for sharing; transformers 5.17 releases them only
    when its free list runs short, which a pool sized as if alone hardly
    ever does), as many as the ask needs, the newest first, as 5.17's own
    eviction takes them (see _uncache). When pages can be told, those it
    empties went already (see _drop_unused and _victims), and the rest
    would empty none. None under tensor parallelism (see _prefix_cache)."""
    bm = getattr(getattr(proc, "cache", None), "_block_manager", None)
    init = _prefix_cache(bm)
    if not init or tracker.page_of(next(iter(init))) is not None:
        return
    k = min(len(init), -(-tracker.owed() // max(1, tracker.bytes_per_block)))
    if k > 0:
        _uncache(bm, _newest(init, k), tracker)


def _give_back_one(proc, tracker, victim=None):
    """Preempt one request (victim's id, or the newest) if kvshim asks for
    more than this engine gave back within the last second and the engine
    has more than one active request. Returns whether one was, and freed
    blocks. A victim is preempted whatever is left of the ask (its page
    goes back only with the last of the victims that share it); what a
    preemption frees on pages still claimed holds the next one off (see
    owed). A preempted request's complete blocks go to the
    prefix cache, still claimed (transformers 5.17's free_blocks): they
    are released with it, and the cache's blocks on pages only the cache
    claims then (see _uncache_preempted), or no page would go back."""
    if victim is None and not tracker.should_give_back():
        return False
    om = getattr(proc, "offloading_manager", None)
    sched = getattr(proc, "scheduler", None)
    one = getattr(om, "offload_one_request", None)
    many = getattr(om, "offload_requests", None)
    starved = getattr(sched, "starved_requests", None)
    if one is None and (many is None or not isinstance(starved, list)):
        if not getattr(proc, "_kvshim_warned_preempt", False):
            proc._kvshim_warned_preempt = True
            warn("transformers continuous batching has no offloading manager kvshim can "
                 "drive: an engine above its fair share gives memory back only as its "
                 "requests finish")
        return False
    active = getattr(sched, "active_requests", None)
    if not active or len(active) < 2:
        return False
    if victim is not None:
        if victim not in active:
            return True              # gone already (evicted with another): go on
        if many is None or not isinstance(starved, list):
            return False             # cannot be named: the newest go instead
    bm = getattr(proc.cache, "_block_manager", None)
    cached = len(_prefix_cache(bm))
    before = tracker.mapped
    theirs = getattr(sched, "block_new_requests", False) and not getattr(
        sched, "_kvshim_blocked", False)
    with tracker.released() as on:
        if victim is not None:
            _offload_named(many, starved, active[victim], proc.cache)
        elif one is not None:
            one()
        else:
            _offload_newest(proc, many, starved, active)
        _uncache_preempted(bm, tracker, cached, on)
    tracker.evictions += 1
    if not theirs and getattr(sched, "block_new_requests", False):
        # transformers blocks admissions after every eviction until a
        # request finishes; this one was the ask's, and its block ends
        # with the ask (see _admission). Left as transformers', it held an
        # engine whose one other request decoded for seconds: on an H200
        # at rate 6, the small model admitted nothing for 1.3 s with room
        # for 49 to 316 blocks, 12 requests waiting
        sched._kvshim_blocked = True
    freed = before - tracker.mapped
    if freed > 0:           # (an eviction transformers declined counts nothing)
        tracker.gave_back(freed, on=on)
    return freed > 0


def _uncache_preempted(bm, tracker, cached, on):
    """After a preemption: release the blocks it left in the prefix cache
    (the cache's newest since it held cached blocks: 5.17's free_blocks
    appends them), into the free list, where the engine takes its next
    blocks; then the cache's blocks on the page indices it released ids
    on (on: their count per page) that only the cache claims now, which
    empties them (counted in tracker.dropped)."""
    init = _prefix_cache(bm)
    if len(init) > cached:
        _uncache(bm, _newest(init, len(init) - cached), tracker, asked=False)
    pages = tracker.cache_only_of(list(on), init) if init else {}
    _uncache(bm, [b for ids in pages.values() for b in ids], tracker)


def _admission(proc, tracker, evicted=False):
    """Before a scheduling pass: the scheduler's safety margin, and whether
    it may admit new requests at all (evicted: the adapter evicted a
    request for the ask just before this pass, which then admits nothing
    whatever the ask, as transformers after an eviction).

    transformers' FIFO scheduler admits one new prefill a batch once the
    free block count is under safety_margin x num_blocks (0.15 by default
    in 5.17). num_blocks is the pool sized as if alone, and the count is
    capped at what kvshim can back, so under a shared budget the engine
    would admit one prefill a batch long before its memory is low: the
    margin is taken of what the engine can have now (its blocks in use and
    the free blocks it is shown) instead.

    While kvshim asks the engine to give back, it admits nothing (its
    block_new_requests, which transformers sets itself after evicting and
    clears when a request finishes; the adapter clears it when the ask is
    over, if it set it or an eviction the ask made did while transformers'
    own block was off, and not in the pass of that eviction: a pass the
    retry loop repeats 2 ms later may): requests it preempted, or that
    finished, would
    otherwise leave blocks that new requests fill again at once, on the
    same pages, and no page would ever go back. So too while a fork
    kvshim refused waits (see _guard_forks) and other requests run: each
    new request would take what one finishing frees before the fork, which
    needs more, could have it, pass after pass; with nothing else running,
    nothing of the engine's would come back for it, and it admits again."""
    sched = getattr(proc, "scheduler", None)
    if sched is None:
        return
    base = getattr(sched, "_kvshim_safety_margin", None)
    if base is None and isinstance(getattr(sched, "safety_margin", None), (int, float)):
        base = sched._kvshim_safety_margin = sched.safety_margin
    cache = proc.cache
    if base:
        total = getattr(cache, "num_blocks", 0)
        # (the prefix cache's blocks are both backed and counted free)
        have = tracker.mapped + cache.get_num_free_blocks() - _cached_blocks(cache)
        if total > 0:
            sched.safety_margin = base * min(1.0, have / total)
    if not hasattr(sched, "block_new_requests"):
        return
    _own_blocks_count(proc, sched)
    if ((tracker.asked() or _fork_waits_on_others(proc))
            and getattr(sched, "active_requests", None)):
        if not sched.block_new_requests:
            sched.block_new_requests = sched._kvshim_blocked = True
        if getattr(sched, "waiting_requests", None):
            tracker.kept_out += 1
    elif getattr(sched, "_kvshim_blocked", False) and not evicted:
        # the ask is over (or nothing is left running that could give
        # back): admit again (transformers would wait for a request to
        # finish, and an engine that gave back every one has none left)
        sched.block_new_requests = sched._kvshim_blocked = False


def _own_blocks_count(proc, sched):
    """When transformers' offloading manager evicts in its own pass, its
    block on admissions (until a request finishes) is its, not the
    adapter's: the adapter must not clear it when the ask ends (an
    eviction the adapter has it make is the ask's: see _give_back_one).
    Wraps offload_requests once to say so."""
    om = getattr(proc, "offloading_manager", None)
    orig = getattr(om, "offload_requests", None)
    if orig is None or getattr(om, "_kvshim_wrapped", False):
        return

    def offload_requests(*args, **kwargs):
        before = dict(getattr(sched, "active_requests", None) or {})
        n = orig(*args, **kwargs)
        if n:
            sched._kvshim_blocked = False
            _count_evicted(sched, before, getattr(proc.cache, "kvshim_tracker", None))
        return n
    try:
        om.offload_requests = offload_requests
        om._kvshim_wrapped = True
    except AttributeError:      # a manager that takes no attributes: left as it is
        pass


def _count_evicted(sched, before, tracker):
    """Count how transformers evicted the requests that left the active
    ones (before: {request id: state}, as they were) into tracker: their
    cache moved to the CPU (the same state waits again, is_cpu_offloaded
    set; it comes back when all of its blocks fit at once), or requeued to
    start over (a new state waits under its id, its prompt holding what it
    had generated, at the back of the queue), as transformers' source
    around 5.17 does; in evicted_untold when neither shows."""
    if tracker is None:
        return
    active = getattr(sched, "active_requests", None) or {}
    waiting = getattr(sched, "waiting_requests", None) or {}
    for rid, state in before.items():
        if rid in active:
            continue
        now = waiting.get(rid)
        if now is state and getattr(now, "is_cpu_offloaded", False):
            tracker.to_cpu += 1
        elif now is not None and now is not state:
            tracker.started_over += 1
        else:
            tracker.evicted_untold += 1


def _offload_newest(proc, offload_requests, starved, active):
    """transformers 5.17's offloading manager evicts only requests its
    scheduler found starved of blocks, newest first, while their demand
    passes the free blocks (never the last active request): name the newest
    active request the scheduler did not find starved (those may go in its
    own eviction), or the newest of all when it found every one starved,
    alone starved of more blocks than are free, so it is the one evicted
    (to CPU where transformers has room, else requeued to start again).
    (Evicting through the scheduler's own list when every request was
    starved could take all but one at once.)"""
    named = {id(e[0]) for e in starved}
    victim = next((r for r in reversed(active.values()) if id(r) not in named),
                  next(reversed(active.values())))
    _offload_named(offload_requests, starved, victim, proc.cache)


def _offload_named(offload_requests, starved, victim, cache):
    """Evict victim (an active request's state) through transformers 5.17's
    offload_requests: named alone as starved, of more blocks than are
    free, it is the one evicted (the requests the scheduler found starved
    in its last pass would count in the demand offload_requests meets, and
    go too); the starved list is put back as it was."""
    found = list(starved)
    starved[:] = [(victim, cache.get_num_free_blocks() + 1)]
    try:
        offload_requests()
    finally:
        gone = not starved          # (offload_requests took the victim's entry)
        starved[:] = [e for e in found if not (gone and e[0] is victim)]


# How often, and for how long, a pass kvshim cut short looks again (see
# patch_api_module): kvshim's own wait for memory looks every 2 ms; 100 ms
# is how long transformers' loop sleeps when nothing was scheduled.
RETRY_S = 0.002
RETRY_FOR_S = 0.1


def _batch_frees(obj, name, free):
    """obj.name (free_blocks: the block manager's, by ids, or the cache's,
    by request; has_enough_free_blocks, whose eviction from the prefix cache
    puts blocks back) tells the tracker of the ids it puts back in free
    once, at its end; left alone where obj has none."""
    orig = getattr(obj, name, None)
    if not callable(orig):
        return

    @functools.wraps(orig)
    def batched(*args, **kwargs):
        with free.batched():
            return orig(*args, **kwargs)
    setattr(obj, name, batched)


def _guard_forks(proc, tracker):
    """transformers forks a request for parallel sampling in update_batch,
    after the step that prefilled all of its prompt but the last token: its
    children join the active requests, then cache.fork_request gives them,
    in each layer group, the parent's complete blocks (referenced: their
    ref_count goes up) and fresh blocks for the rest (get_free_blocks,
    which kvshim backs). When kvshim cannot back those (short of memory, a
    map that fails, or a KvshimError out of the tracker), 5.17 raises into
    its loop and the engine fails, the references and the blocks of the
    children served first left taken. Wraps fork_request once (at a
    processor's first pass, before its first update_batch) so that
    kvshim's refusal is undone whole: the children's tables and fresh
    blocks go (their claims with them), the references are as before, the
    children leave the active requests and the parent has its num_children
    back, so that the scheduler queues its fork again the next time it
    schedules it (5.17 holds back the last prompt token of a request with
    children for that), and the request waits. Logged once a request; the
    blocks the fork needs are stated as demand while it waits (see
    _forks_waiting). A fork that can never be backed (see _never_backed)
    would wait for ever: its request fails instead, alone (see
    _fail_request), and the engine goes on; not under tensor parallelism,
    where the ranks must decide alike (it waits there). A fork
    transformers refuses itself (its pool full) is raised as before. The
    wrapped fork_request returns what transformers' does (the copy's
    sources and destinations), two empty lists when undone."""
    cache = proc.cache
    sched = getattr(proc, "scheduler", None)
    bm = getattr(cache, "_block_manager", None)
    orig = getattr(cache, "fork_request", None)
    if (not callable(orig) or sched is None or bm is None
            or isinstance(getattr(cache, "kvshim_forks", None), dict)):
        return
    waiting = cache.kvshim_forks = {}      # parent request id: blocks its fork needs

    def fork_request(source_request_id, destination_request_ids, *args, **kwargs):
        children = list(destination_request_ids)
        managers = [cm for cm in getattr(cache, "group_cache_managers", None) or ()
                    if isinstance(getattr(cm, "block_table", None), dict)]
        had = [set(cm.block_table) for cm in managers]
        refs = {}
        for cm in managers:
            for b in cm.block_table.get(source_request_id, ()):
                record = bm._id_to_block.get(b)
                if record is not None:
                    refs[b] = record.ref_count
        taken, inner = [], bm.get_free_blocks

        def get_free_blocks(*args, **kwargs):
            # (as transformers calls it, whatever its parameters: a fork
            # kvshim backs must go through as without it)
            ids = inner(*args, **kwargs)
            if ids is not None:
                shareable = kwargs.get("shareable", args[2] if len(args) > 2 else False)
                taken.append((list(ids), shareable))
            return ids

        short, errors = tracker.short, tracker.map_errors
        bm.get_free_blocks = get_free_blocks
        try:
            out = orig(source_request_id, children, *args, **kwargs)
        except kvshim.KvshimError as e:
            why = e
        except ValueError as e:
            if tracker.short == short and tracker.map_errors == errors:
                raise
            why = e
        else:
            waiting.pop(source_request_id, None)
            return out
        finally:
            bm.get_free_blocks = inner
        # undone: the children's tables, the references the fork added, its
        # fresh blocks (released in one call)
        free_list = getattr(bm, "_uninit_block_ids", None)
        with getattr(free_list, "batched", contextlib.nullcontext)():
            for cm, before in zip(managers, had):
                for child in children:
                    if child not in before:
                        cm.block_table.pop(child, None)
            for b, n in refs.items():
                record = bm._id_to_block.get(b)
                if record is not None:
                    record.ref_count = n
            for ids, shareable in taken:
                bm.free_blocks(ids, shareable=shareable)
        active = getattr(sched, "active_requests", None)
        parent = None
        if isinstance(active, dict):
            for child in children:
                active.pop(child, None)
            parent = active.get(source_request_id)
        tracker.forks_refused += 1
        if parent is None or not hasattr(parent, "num_children"):
            waiting.pop(source_request_id, None)
            warn("transformers: the fork of request %s not backed (%s): undone, its "
                 "children dropped (the request is gone)" % (source_request_id, why))
            return [], []
        need = _fork_blocks(bm, managers, source_request_id, len(children))
        never = None if _tensor_parallel(proc) else _never_backed(
            cache, tracker, managers, source_request_id, need)
        if never and _fail_request(proc, sched, parent, RuntimeError(
                "kvshim cannot back the fork of request %s for parallel sampling: %s"
                % (source_request_id, never))):
            waiting.pop(source_request_id, None)
            tracker.forks_failed += 1
            warn("transformers: the fork of request %s can never be backed (%s): undone, "
                 "the request fails, the engine goes on" % (source_request_id, never))
            return [], []
        parent.num_children += len(children)
        if source_request_id not in waiting:
            warn("transformers: the fork of request %s not backed (%s): undone, the "
                 "request waits" % (source_request_id, why))
        waiting[source_request_id] = need
        return [], []

    cache.fork_request = fork_request


def _never_backed(cache, tracker, managers, request_id, fresh):
    """Why a fork of request_id that takes fresh blocks more can never be
    backed, or None: the request's blocks (its ids in every layer group)
    and those, on the group's first GPU (the bytes of each block in each
    of its tensors there), are more than the most kvshim lets this process
    hold there: its limit (KVSHIM_LIMIT, else the GPU's memory) or the
    budget it shares with other processes. Whole pages hold blocks, so the
    memory needed is at least that: a fork this refuses could not be
    backed even were every other request's block given back. None too
    when kvshim cannot tell (its stats unread)."""
    ids = set()
    for cm in managers:
        ids.update(cm.block_table.get(request_id, ()))
    group = tracker.group
    tensors = getattr(cache, "kvshim_gpu0_tensors", None) or group.ntensors
    nbytes = (len(ids) + fresh) * group.block_bytes * tensors
    try:
        st = group.stats()
    except kvshim.KvshimError:
        return None
    for what, most in (("kvshim's limit for this process", st.get("limit_bytes", 0)),
                       ("the budget it shares with other processes",
                        st.get("share_budget_bytes", 0))):
        if most and nbytes > most:
            # (rounded up, the most down: the two never read alike)
            return ("the request's blocks and the fork's %d more need %d MiB of KV on "
                    "the GPU, more than %s there, %d MiB"
                    % (fresh, -(-nbytes >> 20), what, most >> 20))
    return None


def _fail_request(proc, sched, state, error):
    """Fail one request as transformers fails a request in error
    (ContinuousBatchProcessor._handle_request_error: status FAILED, the
    error and its tokens delivered as its result) and free its blocks at
    once, as transformers does after it (Scheduler.finish_request; where
    there is none, at the start of the next pass, as a cancelled
    request's: set_request_cancellation). Whether it was done: not where
    transformers has no such calls, nor where delivering the result raised
    (logged; the request's status and error are put back, and it waits).
    Once the result is out the request is failed whatever follows: a free
    that raises is logged."""
    handle = getattr(proc, "_handle_request_error", None)
    finish = getattr(sched, "finish_request", None)
    cancel = getattr(sched, "set_request_cancellation", None)
    if not callable(handle) or not (callable(finish) or callable(cancel)):
        return False
    was = (getattr(state, "status", None), getattr(state, "error", None))
    try:
        handle(error, state)
    except Exception as e:     # noqa: BLE001  (transformers' own calls: any error)
        state.status, state.error = was
        warn("transformers: request %s could not be failed (%r): it waits"
             % (state.request_id, e))
        return False
    for free in (finish, cancel):
        if not callable(free):
            continue
        try:
            free(state.request_id)
            break
        except Exception as e:     # noqa: BLE001
            warn("transformers: the blocks of failed request %s not freed by %s (%r)"
                 % (state.request_id, getattr(free, "__name__", "transformers"), e))
    return True


def _fork_blocks(bm, managers, request_id, children):
    """The fresh blocks a fork of request_id into this many children takes:
    in each layer group (managers), the parent's blocks but its leading
    complete ones where blocks are shared (referenced, as 5.17's
    BlockManager.fork_blocks does), for each child."""
    n = 0
    for cm in managers:
        table = cm.block_table.get(request_id, ())
        shared = 0
        if getattr(cm, "uses_block_sharing", False):
            for b in table:
                if not getattr(bm._id_to_block.get(b), "is_complete", False):
                    break
                shared += 1
        n += (len(table) - shared) * children
    return n


def _forks_waiting(proc):
    """The blocks the forks kvshim refused need (see _guard_forks), of the
    parents still active with children to fork; the others are
    forgotten."""
    waiting = getattr(proc.cache, "kvshim_forks", None)
    if not waiting:
        return 0
    active = getattr(getattr(proc, "scheduler", None), "active_requests", None) or {}
    for rid in list(waiting):
        if getattr(active.get(rid), "num_children", 0) <= 0:
            del waiting[rid]
    return sum(waiting.values())


def _fork_waits_on_others(proc):
    """Whether a fork kvshim refused waits (see _forks_waiting) while
    active requests other than the parents waiting run, whose blocks come
    back as they finish."""
    if not _forks_waiting(proc):
        return False
    waiting = proc.cache.kvshim_forks
    return any(rid not in waiting for rid in proc.scheduler.active_requests)


def _tensor_parallel(proc):
    """Whether the engine is one rank of a tensor-parallel group: each of
    its scheduling passes is a collective call (the group's state is
    all-reduced), so a rank must never run passes the others do not."""
    helper = getattr(proc, "distributed_helper", None)
    return getattr(helper, "tp_size", 1) > 1


def patch_api_module(mod):
    """When transformers finds nothing to schedule and nothing to offload
    because kvshim is short (other processes hold the memory), it fails the
    engine; the step instead does nothing, and the loop retries. A pass
    that kvshim left with nothing scheduled looks again every RETRY_S for
    up to RETRY_FOR_S: memory comes back within milliseconds, and
    transformers' loop, finding nothing scheduled, would sleep 100 ms
    unless a new request came. Each step
    first gives back what kvshim asks for, and states what the engine waits
    for (see the top). And the manager keeps generate_batch's workload for
    the read budget."""
    transformers_cb_reads.patch_manager(mod)
    cls = getattr(mod, "ContinuousBatchProcessor", None)
    if cls is None or not hasattr(cls, "prepare_next_batch"):
        warn("transformers continuous batching not as expected (no ContinuousBatchProcessor."
             "prepare_next_batch): an engine short of memory may fail")
        return
    if vars(cls).get("_kvshim_patched"):
        return
    orig = cls.prepare_next_batch

    def one_pass(self, tracker, args, kwargs):
        """One scheduling pass: (ready, whether kvshim held it back)."""
        evictions = tracker.evictions
        tracker.settle_done()
        _guard_forks(self, tracker)
        _give_back(self, tracker)
        _admission(self, tracker, evicted=tracker.evictions != evictions)
        # (tensor-parallel ranks must schedule alike: their GPUs' shares
        # may differ, so they read up to R)
        if getattr(self.cache, "kvshim_read_most", None) and not _tensor_parallel(self):
            transformers_cb_reads.follow_share(self.cache, getattr(self, "scheduler", None),
                                               tracker.entitled())
        short, capped = tracker.short, tracker.capped
        # (transformers' own pass, kvshim's calls from its block manager
        # included, timed apart from the work around it: tracker.engine_s)
        t = time.perf_counter()
        try:
            ready = orig(self, *args, **kwargs)
        except RuntimeError as e:
            if ((tracker.short == short and tracker.capped == capped)
                    or "can be offloaded" not in str(e).lower()):
                raise
            ready = None
        finally:
            tracker.engine_s += time.perf_counter() - t
        # kvshim held this pass back: it refused blocks (a check or a map),
        # the pass failed for want of what kvshim could not back (ready is
        # None), or its cap on the free block count left out requests still
        # waiting (the cap applies on most passes: only when the waiting
        # requests need more than kvshim can back did it hold them back).
        # Their blocks are what the engine waits for (at least one block:
        # a request decoding), stated as its demand
        # (with the scheduler's margin: transformers admits no new prefill
        # while the free count is under it, so an engine whose free count
        # kvshim caps below margin and prompts waits as surely; on an H200
        # the small model waited 5 s so, with 125 blocks shown free, about 210 of
        # margin and no demand stated); and a fork kvshim refused holds it
        # too until it goes through, its blocks stated (see _guard_forks)
        waiting = _waiting_blocks(self)
        forks = _forks_waiting(self)
        need = (waiting + _margin_blocks(self) if waiting > 0 else 0) + forks
        cached = _cached_blocks(self.cache)
        held = forks > 0 or tracker.short != short or ready is None or (
            need > 0 and tracker.capped != capped
            and tracker.capacity(need, tracker.room() or 0) + cached < need)
        # (less its prefix cache's blocks, which it takes before others'
        # memory: see _reclaim; kvshim_group_share_demand adds the page
        # index the admission check needs)
        tracker.state_demand(max(max(1, need - cached) if held else 0, _cushion(self)))
        # and the pages only that prefix cache claims, which kvshim counts
        # out of its use and asks for first (see _drop_unused)
        _state_unused(self, tracker)
        return ready, held

    def prepare_next_batch(self, *args, **kwargs):
        tracker = getattr(getattr(self, "cache", None), "kvshim_tracker", None)
        if tracker is None:
            return orig(self, *args, **kwargs)
        ready, held = one_pass(self, tracker, args, kwargs)
        # nothing scheduled because kvshim held the pass back: transformers'
        # loop would sleep until a new request comes or 100 ms pass; memory
        # comes back within milliseconds (the free budget, others' idle
        # pages), so look again every RETRY_S, as long as that sleep
        if not ready and held and not _tensor_parallel(self):
            end = time.monotonic() + RETRY_FOR_S
            while not ready and held and time.monotonic() < end:
                time.sleep(RETRY_S)
                tracker.retries += 1
                ready, held = one_pass(self, tracker, args, kwargs)
        if ready is None:
            return False
        if _ahead_on():
            map_ahead(self, tracker)
        return ready

    cls.prepare_next_batch = prepare_next_batch
    cls._kvshim_patched = True
