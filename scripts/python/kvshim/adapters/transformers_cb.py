"""Hugging Face transformers (5.x) continuous batching: PagedAttentionCache
allocates one key and one value tensor per layer of a group, sized for the
whole block pool, and a BlockManager hands out block ids from a deque of
uninitialised ids (lowest first, then in the order they were freed).

This adapter, applied when transformers.generation.continuous_batching.cache
is imported:
- opens a KV window around PagedAttentionCache.__init__, so the tensors are
  lazy spans, and backs the two padding blocks at their end as they are
  allocated (the cache zeroes one of them at once);
- registers the tensors as a kvshim block group;
- backs blocks as get_free_blocks hands them out (returning None, as when
  blocks run out, if memory is short), and releases them whenever an id
  goes back into the uninitialised deque (freed, evicted from the prefix
  cache): blocks kept alive for prefix sharing stay backed;
- makes will_allocation_be_successful, the scheduler's admission check,
  also ask kvshim whether the next blocks can be backed, so requests wait
  instead of the engine failing.
If the installed transformers does not look as expected, it warns once and
leaves the cache as it is: allocated whole, as without kvshim.
"""
import contextlib
import itertools

import kvshim
from kvshim.adapters import warn
from kvshim.adapters.blocks import BlockTracker, TrackedFreeList

ERANGE = -2
_EXPECTED = {
    "PagedAttentionCache": ("__init__", "will_allocation_be_successful", "blocks_needed"),
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


@contextlib.contextmanager
def _padding_backed(cache, torch):
    """While the cache is built: back the last two blocks (the padding zone)
    of each KV tensor as soon as it is allocated."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        shape = getattr(cache, "cache_shape", None)
        if shape is not None and t.is_cuda and tuple(t.shape) == tuple(shape):
            row = t.stride(0) * t.element_size()
            rows = 2 * cache.block_size
            try:
                kvshim.map(t.data_ptr() + (t.shape[0] - rows) * row, rows * row)
            except kvshim.KvshimError as e:
                # ERANGE: not a span (memory PyTorch had cached), nothing
                # to do; anything else: kvshim cannot run here, and the
                # tensor is plain memory all the same
                if e.code != ERANGE:
                    warn("transformers: padding blocks not backed: %s" % e)
        return t

    torch.empty = empty
    try:
        yield
    finally:
        torch.empty = real_empty


def attach(cache):
    """Register the cache's tensors and wire its block manager. Returns the
    tracker, or None when the tensors are not kvshim spans."""
    tensors = list(cache.key_cache) + list(cache.value_cache)
    if not tensors:
        return None
    t = tensors[0]
    block_bytes = cache.block_size * t.stride(0) * t.element_size()
    try:
        group = kvshim.Group([x.data_ptr() for x in tensors], block_bytes, cache.num_blocks)
    except kvshim.KvshimError as e:
        if e.code == ERANGE:
            warn("transformers: the KV tensors are not kvshim spans "
                 "(PyTorch's expandable segments, or a reused segment): left as they are")
        else:
            warn("transformers: kvshim cannot manage the KV cache (%s): left as it is" % e)
        return None
    tracker = BlockTracker(group)
    bm = cache._block_manager
    free = TrackedFreeList(bm._uninit_block_ids, tracker.give)
    bm._uninit_block_ids = free
    orig_get = bm.get_free_blocks

    def get_free_blocks(n_blocks, last_block_id, shareable, group_id):
        ids = orig_get(n_blocks, last_block_id, shareable, group_id)
        if ids is None or tracker.take(ids):
            return ids
        if shareable:
            for b in ids:
                bm._id_to_block.pop(b, None)
        free.put_back_front(ids)
        return None

    orig_will = cache.will_allocation_be_successful

    def will_allocation_be_successful(num_requested_blocks, allocated_blocks):
        if not orig_will(num_requested_blocks, allocated_blocks):
            return False
        need = cache.blocks_needed(num_requested_blocks, allocated_blocks)
        return tracker.can_take(itertools.islice(bm._uninit_block_ids, need))

    bm.get_free_blocks = get_free_blocks
    cache.will_allocation_be_successful = will_allocation_be_successful
    cache.kvshim_tracker = tracker
    return tracker


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

    def __init__(self, *args, **kwargs):
        try:
            window = kvshim.window()
            window.__enter__()
        except kvshim.KvshimError as e:      # kvshim disabled: run as usual
            warn("transformers: no KV window (%s): the cache is allocated whole" % e)
            orig_init(self, *args, **kwargs)
            return
        try:
            with _padding_backed(self, torch):
                orig_init(self, *args, **kwargs)
        finally:
            window.__exit__(None, None, None)
        attach(self)

    cls.__init__ = __init__
    cls._kvshim_patched = True
