"""The Python binding and the transformers adapter's logic, on the CPU
emulation (no torch, no GPU): a stand-in block manager and cache that make
the calls transformers' continuous batching makes (a deque of free ids
handed out lowest first, ids returned on free or eviction, blocks kept
alive for prefix sharing), over KV "tensors" that are kvshim spans.
Run by `make check` with LD_LIBRARY_PATH naming tests/emu.
"""
import atexit
import collections
import contextlib
import ctypes
import io
import itertools
import json
import os
import random
import select
import subprocess
import sys
import tempfile
import threading
import time
import types
import unittest
import unittest.mock
from contextlib import redirect_stderr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import settings_once  # noqa: E402

# before kvshim reads its configuration: no pool, a 64 MiB limit that
# test_memory_short_requests_wait runs into, and no shared budget in this
# process (the tests that share start processes of their own, in pools
# named after POOL, never the GPU's real segment); in one unittest process
# over several test files only the first file's settings hold, and the
# others' tests are skipped (see settings_once)
POOL = "adapters%d" % os.getpid()
settings_once.configure(__file__, KVSHIM_POOL_LOW="0", KVSHIM_POOL_HIGH="0",
                        KVSHIM_LIMIT="64M", KVSHIM_POOL=POOL, KVSHIM_SHARE="off")


def _remove_segments(pool=POOL):
    import glob
    for path in glob.glob("/dev/shm/kvshim-*-" + pool):
        os.unlink(path)


atexit.register(_remove_segments)

import kvshim  # noqa: E402
from kvshim.adapters import blocks, transformers_cb  # noqa: E402
from kvshim.adapters import transformers_cb_reads as reads  # noqa: E402

MIB = 1 << 20


def setUpModule():
    settings_once.skip_unless_mine(sys.modules[__name__])


from standins import (FakeTensor, OffloadingManager517, StandInBlockManager,  # noqa: E402,F401
                      StandInCache, StandInGroup)


def pages(cache):
    return kvshim.stats()["mapped_bytes"] // (2 * MIB)


NOTHING_SCHEDULED = "No requests can be scheduled and no requests can be offloaded."


def stand_in_api(prepare_next_batch):
    """A continuous_api module whose ContinuousBatchProcessor (over a cache)
    prepares its batches with prepare_next_batch: (module, class)."""
    mod = types.ModuleType("fake_api")

    class ContinuousBatchProcessor:
        def __init__(self, cache):
            self.cache = cache
    ContinuousBatchProcessor.prepare_next_batch = prepare_next_batch
    mod.ContinuousBatchProcessor = ContinuousBatchProcessor
    return mod, ContinuousBatchProcessor


def admitting_api(scheduler, offloading_manager):
    """A continuous_api module whose processor (over a cache, with a
    scheduler() and an offloading_manager(processor)) admits each waiting
    request with 4 blocks, and nothing while the scheduler has
    block_new_requests set, as transformers: (module, class)."""
    def __init__(self, cache):
        self.cache, self.scheduler = cache, scheduler()
        self.offloading_manager = offloading_manager(self)

    def prepare_next_batch(self):
        if getattr(self.scheduler, "block_new_requests", False):
            return True             # as transformers: admit nothing this step
        for rid in list(self.scheduler.waiting_requests):
            if self.cache.allocate_blocks(4, rid, 0) is None:
                return False
            self.scheduler.active_requests[rid] = self.scheduler.waiting_requests.pop(rid)
        return True
    mod, cls = stand_in_api(prepare_next_batch)
    cls.__init__ = __init__
    return mod, cls


class ForkingRequest:
    """A request as transformers' fork reads it (5.17's RequestState): its
    id and the children it has still to fork; fork(id) makes a child."""

    def __init__(self, request_id, num_children):
        self.request_id, self.num_children = request_id, num_children

    def fork(self, request_id):
        return ForkingRequest(request_id, 0)

    def create_equivalent_initial_request(self):
        """A new request with this one's prompt, to prefill it again."""
        return ForkingRequest(self.request_id, 0)


def forking_api(sized=False):
    """A continuous_api module whose processor (over a cache) queues, at
    each pass, the active requests with children for their fork, as 5.17's
    scheduler does when it schedules them, and whose update_batch forks
    them as 5.17's does: the children join the active requests, then the
    cache forks the parent's blocks into theirs (.copies: what each fork
    returned). sized: as 5.17, each fork takes no more children than the
    cache's compute_max_num_forks (the free blocks shown over the blocks
    each child needs) and the others become new requests, waiting, that
    prefill the prompt again; a request none fit is not forked; else all
    are forked at once, as before it. (module, class)"""
    def __init__(self, cache):
        self.cache, self.copies = cache, []
        self.scheduler = types.SimpleNamespace(active_requests={}, waiting_requests={},
                                               _requests_to_fork=[])

    def prepare_next_batch(self):
        sched = self.scheduler
        for state in sched.active_requests.values():
            if state.num_children > 0 and state not in sched._requests_to_fork:
                sched._requests_to_fork.append(state)
        return True

    def update_batch(self):
        sched = self.scheduler
        while sched._requests_to_fork:
            state = sched._requests_to_fork.pop()
            n, state.num_children = state.num_children, 0
            children = ["%s__child#%d" % (state.request_id, i) for i in range(n)]
            forked = min(n, self.cache.compute_max_num_forks(state.request_id)) if sized else n
            for _ in range(n - forked):
                child = state.create_equivalent_initial_request()
                child.request_id = children.pop()
                sched.waiting_requests[child.request_id] = child
            if not forked:
                continue
            for child in children:
                sched.active_requests[child] = state.fork(child)
            self.copies.append(self.cache.fork_request(state.request_id, children))
    mod, cls = stand_in_api(prepare_next_batch)
    cls.__init__ = __init__
    cls.update_batch = update_batch
    return mod, cls


def failing_forking_api(handle=None, finish=True):
    """forking_api's processor with 5.17's way of failing one request:
    _handle_request_error(error, state) marks it FAILED with the error and
    delivers it (.delivered), or calls handle(error, state) instead; the
    scheduler's finish_request frees a request's blocks and drops it (not
    there when finish is False), and its set_request_cancellation names a
    request, and the next pass first drops those named and frees their
    blocks, as 5.17's clear_cancelled_requests does. (module, class)"""
    mod, cls = forking_api()
    init, queue = cls.__init__, cls.prepare_next_batch

    def __init__(self, cache):
        init(self, cache)
        self.delivered = []
        sched = self.scheduler
        sched._requests_to_cancel = set()
        sched.set_request_cancellation = sched._requests_to_cancel.add
        if finish:
            def finish_request(request_id):
                self.cache.free_blocks(request_id)
                sched.active_requests.pop(request_id, None)
            sched.finish_request = finish_request

    def _handle_request_error(self, error, state):
        if handle is not None:
            return handle(error, state)
        state.status, state.error = "FAILED", str(error)
        self.delivered.append(state)

    def prepare_next_batch(self):
        sched = self.scheduler
        for rid in sorted(sched._requests_to_cancel):
            sched.active_requests.pop(rid, None)
            sched.waiting_requests.pop(rid, None)
            self.cache.free_blocks(rid)
        sched._requests_to_cancel.clear()
        return queue(self)
    cls.__init__, cls.prepare_next_batch = __init__, prepare_next_batch
    cls._handle_request_error = _handle_request_error
    return mod, cls


def busy_forking_api(blocks):
    """forking_api's processor, busy: each pass admits every waiting request
    with blocks blocks (in arrival order, none while the scheduler has
    block_new_requests set, as transformers), then queues the forks; each
    update_batch first finishes the oldest active request that is no
    parent (freeing its blocks, and clearing block_new_requests, as 5.17
    does when a request finishes), then forks, as 5.17's update_batch.
    (module, class)"""
    mod, cls = forking_api()
    init, queue = cls.__init__, cls.prepare_next_batch

    def __init__(self, cache):
        init(self, cache)
        self.scheduler.block_new_requests = False

    def prepare_next_batch(self):
        sched = self.scheduler
        if not sched.block_new_requests:
            for rid in list(sched.waiting_requests):
                if self.cache.allocate_blocks(blocks, rid, 0) is None:
                    break
                sched.active_requests[rid] = sched.waiting_requests.pop(rid)
        return queue(self)

    def update_batch(self):
        sched = self.scheduler
        done = [rid for rid, s in sched.active_requests.items() if not s.num_children]
        if done:
            self.cache.free_blocks(done[0])
            del sched.active_requests[done[0]]
            sched.block_new_requests = False
        fork(self)
    fork = cls.update_batch
    cls.__init__, cls.update_batch = __init__, update_batch
    cls.prepare_next_batch = queue
    mod.ContinuousBatchProcessor.prepare_next_batch = prepare_next_batch
    return mod, cls


def patched(api):
    """The processor class of a stand-in continuous_api module (api: the
    (module, class) stand_in_api and admitting_api return), once the
    adapter has patched the module (its warnings kept off the output)."""
    mod, cls = api
    with redirect_stderr(io.StringIO()):
        transformers_cb.patch_api_module(mod)
    return cls


@contextlib.contextmanager
def captured(test):
    """A CUDA graph capture, begun through kvshim's hook as an engine's is
    under the preload, on a new stream of the current context; ended on
    leaving."""
    lib, cu = kvshim.library(), ctypes.CDLL("libcuda.so.1")
    stream, graph = ctypes.c_void_p(), ctypes.c_void_p()
    test.assertEqual(cu.cuStreamCreate(ctypes.byref(stream), 1), 0)
    test.addCleanup(cu.cuStreamDestroy_v2, stream)
    test.assertEqual(lib.cuStreamBeginCapture_v2(stream, 0), 0)
    try:
        yield
    finally:
        test.assertEqual(lib.cuStreamEndCapture(stream, ctypes.byref(graph)), 0)
        cu.cuGraphDestroy(graph)


class FallingAsk(list):
    """An ask set as asked[0] = nbytes that, read through now(), falls by
    every byte of pages this process empties after it is set, as kvshim's
    does (the pages go to its idle pages, which cover the waiters before
    anything in use)."""

    base = 0

    def __setitem__(self, i, nbytes):
        super().__setitem__(i, nbytes)
        self.base = kvshim.stats()["cached_bytes"]

    def now(self):
        return max(0, self[0] - (kvshim.stats()["cached_bytes"] - self.base))


class AdapterTest(unittest.TestCase):
    # 16 tokens x 8 heads x 128 x bf16 = 32 KiB blocks; 64 blocks a 2 MiB page
    def capped_engine(self):
        """A cache, its tracker, and a processor whose pass takes n blocks
        if the free block count covers them and otherwise raises as
        transformers does when nothing can be scheduled or offloaded."""
        c, tr = self.make(num_blocks=4096, layers=4)

        def prepare_next_batch(self, n=64):
            if self.cache.get_num_free_blocks() < n:
                raise RuntimeError(NOTHING_SCHEDULED)
            return self.cache.allocate_blocks(n, "r", 0) is not None
        ContinuousBatchProcessor = patched(stand_in_api(prepare_next_batch))
        return c, tr, ContinuousBatchProcessor(c)

    def patch_group(self, name, fn):
        """kvshim.Group's name (share_demand, share_unused, share_asked:
        what the adapter states and reads through its group) calls fn,
        without the group, for this test."""
        real = getattr(kvshim.Group, name)
        setattr(kvshim.Group, name, lambda group, *args: fn(*args))
        self.addCleanup(setattr, kvshim.Group, name, real)

    def capture_demand(self, stated):
        """What the adapter states as demand (share_demand) goes to the
        list stated for this test."""
        self.patch_group("share_demand", stated.append)

    def fake_ask(self, asked):
        """kvshim's ask (share_asked) reads asked[0] for this test (or
        asked.now(), for an ask that falls as pages go back: FallingAsk)."""
        self.patch_group("share_asked", getattr(asked, "now", lambda: asked[0]))

    def hold_off_long(self):
        """What preemptions free holds the next off for an hour, not a
        second, in this test: its figures do not depend on how fast a
        loaded machine runs it."""
        self.addCleanup(setattr, blocks.BlockTracker, "HOLD_OFF_S", blocks.BlockTracker.HOLD_OFF_S)
        blocks.BlockTracker.HOLD_OFF_S = 3600.0

    def ahead_off(self):
        """For a stand-in engine map_ahead cannot read (it would warn and
        turn mapping ahead off): off for this test only."""
        self.addCleanup(transformers_cb._ahead_setting.__setitem__, slice(None),
                        list(transformers_cb._ahead_setting))
        transformers_cb._ahead_setting[:] = [False]

    def make(self, num_blocks=1024, layers=2, padding=False):
        # (a stand-in engine that map_ahead cannot read turns mapping ahead
        # off for the process: each test starts from the setting as it was;
        # padding: the padding zone backed whole, as _kv_from_spans does)
        self.addCleanup(transformers_cb._ahead_setting.__setitem__, slice(None),
                        list(transformers_cb._ahead_setting))
        c = StandInCache(num_blocks, 16, layers, 8 * 128)
        self.addCleanup(self.release, c)
        if padding:
            for t in list(c.key_cache) + list(c.value_cache):
                row = t.stride(0) * t.element_size()
                kvshim.map(t.data_ptr() + num_blocks * c.block_size * row,
                           2 * c.block_size * row)
            c.kvshim_padding_backed = True
        tracker = transformers_cb.attach(c)
        self.assertIsNotNone(tracker)
        return c, tracker

    def release(self, c):
        for t in c.key_cache + c.value_cache:
            try:
                kvshim.release(t.addr)
            except kvshim.KvshimError:
                pass                    # a stand-in that is no span
        kvshim.trim(1 << 40)

    def test_blocks_follow_the_block_manager(self):
        c, tr = self.make(num_blocks=256)
        bm = c._block_manager
        self.assertEqual(pages(c), 0)
        a = bm.get_free_blocks(100, None, True, 0)          # ids 0..99: 2 pages a tensor
        self.assertEqual(a, list(range(100)))
        self.assertEqual(pages(c), 4 * 2)
        self.assertEqual(tr.mapped, 100)
        b = bm.get_free_blocks(10, None, True, 0)           # on pages already backed
        self.assertEqual(pages(c), 8)
        bm.free_blocks(a, shareable=True, complete=False)   # back to the free list
        self.assertEqual(tr.mapped, 10)
        st = kvshim.stats()
        self.assertEqual(st["cached_bytes"], 4 * 2 * MIB)   # page 0 of each: cached
        bm.free_blocks(b, shareable=True, complete=True)    # prefix cache keeps them
        self.assertEqual(tr.mapped, 10)
        # eviction from the prefix cache releases them
        bm.get_free_blocks(bm.num_free_blocks, None, False, 0)
        self.assertEqual(tr.mapped, c.num_blocks)

    def test_freed_blocks_handed_out_again_first(self):
        # requests come and go; blocks freed are reused before ids never
        # used, so the pages backed stay those of the busiest moment
        c, tr = self.make(num_blocks=1024)
        bm = c._block_manager
        live = [bm.get_free_blocks(16, None, False, 0) for _ in range(8)]   # 128 blocks
        self.assertEqual(pages(c), 4 * 2)
        for step in range(200):
            bm.free_blocks(live.pop(0), shareable=False)
            live.append(bm.get_free_blocks(16, None, False, 0))
        self.assertEqual(tr.mapped, 128)
        self.assertEqual(pages(c), 4 * 2)
        self.assertEqual(max(max(ids) for ids in live), 127)
        self.assertEqual(kvshim.stats()["cached_bytes"], 0)

    def test_prefix_blocks_stay_backed(self):
        c, tr = self.make()
        bm = c._block_manager
        a = bm.get_free_blocks(4, None, True, 0)
        bm.free_blocks(a, shareable=True, complete=True)
        self.assertEqual(tr.mapped, 4)
        bm.reuse_cached(a[0])
        self.assertEqual(tr.mapped, 4)
        self.assertEqual(kvshim.stats()["cached_bytes"], 0)

    def test_memory_short_requests_wait(self):
        c, tr = self.make(num_blocks=4096, layers=4)
        bm = c._block_manager
        taken = []
        # the limit (64 MiB) backs 4 pages a tensor: 256 blocks, and then no more
        while c.will_allocation_be_successful(64, 0):
            ids = bm.get_free_blocks(64, None, False, 0)
            self.assertIsNotNone(ids)
            taken += ids
        self.assertGreater(len(taken), 0)
        self.assertLess(len(taken), 4096)
        free_before = list(bm._uninit_block_ids)[:5]
        # asked anyway, get_free_blocks says no and changes nothing
        self.assertIsNone(bm.get_free_blocks(64, None, True, 0))
        self.assertEqual(list(bm._uninit_block_ids)[:5], free_before)
        self.assertEqual(tr.refused, 1)
        # a request finishing makes room again
        bm.free_blocks(taken[:64], shareable=False)
        kvshim.trim(0)
        self.assertTrue(c.will_allocation_be_successful(64, 0))
        self.assertIsNotNone(bm.get_free_blocks(64, None, False, 0))

    def test_block_size_not_dividing_the_page(self):
        c = StandInCache(1000, 24, 1, 8 * 128)      # 48 KiB blocks straddle pages
        self.addCleanup(self.release, c)
        tr = transformers_cb.attach(c)
        bm = c._block_manager
        ids = bm.get_free_blocks(43, None, False, 0)   # bytes 0 .. 43*48K: 2 pages and a bit
        self.assertEqual(pages(c), 2 * 2)
        bm.free_blocks(ids[:42], shareable=False)
        # block 42 straddles pages 0 and 1 and holds both
        self.assertEqual(kvshim.stats()["cached_bytes"], 0)
        self.assertEqual(tr.mapped, 1)
        bm.free_blocks(ids[42:], shareable=False)
        self.assertEqual(kvshim.stats()["cached_bytes"], 2 * 2 * 2 * MIB)

    def test_not_spans_backed_whole(self):
        c = StandInCache(64, 16, 1, 1024)
        self.addCleanup(self.release, c)
        c.key_cache[0] = FakeTensor(4096, 66 * 16, 1024)      # not a span
        err = io.StringIO()
        with redirect_stderr(err):
            self.assertIsNone(transformers_cb.attach(c))
        self.assertIn("not all kvshim spans", err.getvalue())
        self.assertIsInstance(c._block_manager._uninit_block_ids, collections.deque)
        self.assertNotIsInstance(c._block_manager._uninit_block_ids, blocks.TrackedFreeList)
        # the one span left is backed in full (66 blocks of 32 KiB: 2 pages)
        self.assertEqual(pages(c), 2)

    def test_kvshim_not_running_backs_whole(self):
        c = StandInCache(64, 16, 1, 1024)
        self.addCleanup(self.release, c)
        real = kvshim.Group

        def broken(*a, **k):
            raise kvshim.KvshimError(kvshim.ENODEV, "kvshim_group_create")
        kvshim.Group = broken
        self.addCleanup(setattr, kvshim, "Group", real)
        err = io.StringIO()
        with redirect_stderr(err):
            self.assertIsNone(transformers_cb.attach(c))
        self.assertIn("cannot manage the KV cache", err.getvalue())
        self.assertEqual(pages(c), 2 * 2)

    def test_backing_whole_short_of_memory(self):
        c = StandInCache(4096, 16, 1, 8 * 1024)      # 2 x 258 MiB, over the limit
        self.addCleanup(self.release, c)
        c.key_cache[0] = FakeTensor(4096, 10, 8 * 1024)
        with redirect_stderr(io.StringIO()):
            with self.assertRaises(MemoryError):
                transformers_cb.attach(c)
        self.assertEqual(pages(c), 0)

    def second_map_fails(self, tr, code):
        """Make the tracker's second map from now on fail with code (the
        second layer group's blocks of an allocation); returns the maps
        made, and the real map."""
        real, calls = tr.group.map, []

        def second(ids):
            calls.append(list(ids))
            if len(calls) == 2:
                raise kvshim.KvshimError(code, "kvshim_group_map")
            return real(ids)
        tr.group.map = second
        return calls, real

    def test_memory_taken_after_the_check(self):
        c, tr = self.make(num_blocks=256)
        c.group_cache_managers.append(StandInGroup())    # two layer groups
        bm = c._block_manager
        calls, real = self.second_map_fails(tr, kvshim.ENOMEM)
        self.assertIsNone(c.allocate_blocks(4, "r1", 0))
        # the first group's blocks went back; every table is as before
        self.assertEqual(calls, [[0, 1, 2, 3], [4, 5, 6, 7]])
        self.assertEqual([cm.block_table.get("r1") for cm in c.group_cache_managers], [[], []])
        self.assertEqual(bm.num_free_blocks, 256)
        self.assertEqual(tr.mapped, 0)
        self.assertEqual(tr.refused, 1)
        # the next try succeeds
        self.assertEqual(c.allocate_blocks(4, "r1", 0), 4)
        self.assertEqual(tr.mapped, 8)
        # an engine error that is not kvshim's still raises
        tr.group.map = real
        bm.get_free_blocks = lambda *a: None
        with self.assertRaises(ValueError):
            c.allocate_blocks(1, "r2", 0)

    def test_free_blocks_are_what_kvshim_can_back(self):
        c, tr = self.make(num_blocks=4096, layers=4)
        # the 64 MiB limit: 4 pages a tensor, less one page of margin: 192 blocks
        self.assertEqual(c.get_num_free_blocks(), 192)
        self.assertEqual(tr.shown, 192)     # (for reports: what the engine saw last)
        c._block_manager.get_free_blocks(64, None, False, 0)
        time.sleep(0.01)                    # past the headroom's time to live
        self.assertEqual(c.get_num_free_blocks(), 128)
        self.assertEqual(tr.shown, 128)
        # kvshim unable to tell: the engine's own count
        tr.group.close()
        time.sleep(0.01)
        self.assertEqual(c.get_num_free_blocks(), 4096 - 64)
        self.assertEqual(tr.shown, 4096 - 64)

    def test_engine_waits_when_kvshim_is_short(self):
        self.ahead_off()
        c, tr = self.make(num_blocks=4096, layers=4)

        def prepare_next_batch(self, n=64):
            # as transformers: nothing scheduled, nothing to offload
            if self.cache.allocate_blocks(n, "r", 0) is None:
                raise RuntimeError(NOTHING_SCHEDULED)
            return True
        mod, ContinuousBatchProcessor = stand_in_api(prepare_next_batch)
        err = io.StringIO()
        with redirect_stderr(err):
            transformers_cb.patch_api_module(mod)
            transformers_cb.patch_api_module(mod)      # once only
        # no manager here: the read budget goes without the workload
        self.assertIn("no workload hints", err.getvalue())
        proc = ContinuousBatchProcessor(c)
        self.assertTrue(proc.prepare_next_batch(256))  # the limit backs 256 blocks
        # kvshim is short: the step does nothing, the engine lives on
        self.assertFalse(proc.prepare_next_batch(64))
        self.assertGreater(tr.short, 0)
        # the engine's own pool is short: transformers' error stands
        with self.assertRaises(RuntimeError):
            proc.prepare_next_batch(8192)

    def test_engine_pass_timed_apart(self):
        # the seconds of transformers' own pass (kvshim's calls from its
        # block manager included) add up in tracker.engine_s, a pass that
        # raises too: the adapter's work around it is the rest
        self.ahead_off()
        c, tr = self.make(num_blocks=4096, layers=4)

        def prepare_next_batch(self, n=64):
            time.sleep(0.02)
            if n < 0:
                raise RuntimeError("the engine's own error")
            return self.cache.allocate_blocks(n, "r", 0) is not None
        mod, ContinuousBatchProcessor = stand_in_api(prepare_next_batch)
        with redirect_stderr(io.StringIO()):
            transformers_cb.patch_api_module(mod)
        proc = ContinuousBatchProcessor(c)
        self.assertEqual(tr.engine_s, 0.0)
        t = time.perf_counter()
        self.assertTrue(proc.prepare_next_batch(64))
        took = time.perf_counter() - t
        self.assertGreaterEqual(tr.engine_s, 0.02)
        self.assertLessEqual(tr.engine_s, took)
        before = tr.engine_s
        with self.assertRaises(RuntimeError):
            proc.prepare_next_batch(-1)
        self.assertGreaterEqual(tr.engine_s - before, 0.02)

    def test_engine_lives_when_kvshim_caps_its_free_blocks(self):
        self.ahead_off()
        # transformers' scheduler reads the free block count first and, at
        # zero, schedules nothing and finds nothing to offload: the engine
        # must wait for memory, not fail (seen on an H200 with three
        # engines under a 3 GiB shared budget)
        c, tr, proc = self.capped_engine()
        room = tr.group.headroom()
        self.assertGreater(room, 0)
        self.assertTrue(proc.prepare_next_batch(room))  # all kvshim can back
        time.sleep(0.01)                               # past the headroom's ttl
        self.assertFalse(proc.prepare_next_batch(64))  # kvshim has none left: wait
        self.assertGreater(tr.capped, 0)

    def test_free_blocks_on_held_pages_count(self):
        # blocks freed on pages that other blocks still hold cost no memory:
        # an engine whose requests finished here and there (every other
        # block) must see them free, not only whole pages kvshim can back
        # (on an H200 under a full shared budget, an engine holding 2.6 GiB
        # ran a handful of requests while 90 waited)
        # (32 KiB blocks, 64 a page; blocks that straddle pages are not
        # indexed by page, and count whole pages' room only, as before)
        c, tr = self.make(num_blocks=4096, layers=4)
        bm = c._block_manager
        room = tr.group.headroom()
        taken = bm.get_free_blocks(room, None, False, 0)
        self.assertIsNotNone(taken)
        time.sleep(0.01)                              # past the ttls
        self.assertLess(c.get_num_free_blocks(), 64)  # nothing left but a page or so
        freed = taken[1::2]
        bm.free_blocks(freed, shareable=False)
        time.sleep(0.01)
        self.assertGreaterEqual(c.get_num_free_blocks(), len(freed))
        # and the engine can have them: backed without new pages
        pages = kvshim.stats()["mapped_bytes"]
        again = bm.get_free_blocks(len(freed), None, False, 0)
        self.assertIsNotNone(again)
        self.assertEqual(sorted(again), sorted(freed))
        pages_now = kvshim.stats()["mapped_bytes"]
        self.assertEqual(pages_now, pages)

    def test_ids_on_held_pages_handed_out_first(self):
        # free ids on pages other blocks hold go out before the list's
        # first (a page freed whole, here page index 2, and never-used ids):
        # they cost no memory, and the pages in use stay few; what the
        # adapter maps ahead is what the engine will take
        c, tr = self.make(num_blocks=4096, layers=4)
        bm, free = c._block_manager, c._block_manager._uninit_block_ids
        taken = bm.get_free_blocks(192, None, False, 0)        # page indices 0, 1, 2
        self.assertEqual(taken, list(range(192)))
        scattered = list(range(1, 128, 2))                      # half of pages 0 and 1
        # (freed last, page index 2's ids lead the list)
        bm.free_blocks(scattered, shareable=False)
        bm.free_blocks(list(range(128, 192)), shareable=False)
        self.assertTrue(128 <= free[0] < 192)
        self.assertEqual(len(set(free)), len(free))
        coming = list(itertools.islice(free.upcoming(), 80))
        again = bm.get_free_blocks(80, None, False, 0)
        self.assertEqual(again, coming)
        self.assertEqual(sorted(again[:64]), scattered)         # the held pages first
        self.assertTrue(all(128 <= b < 192 for b in again[64:]))
        self.assertEqual(len(free), 4096 - 192 + 64 - 16)

    def test_blocks_backed_ahead_are_the_ones_taken(self):
        """The ids backed ahead (the next the engine takes, in upcoming's
        order: the free ids on held pages, then the list's) are the ones
        the next allocation takes, all of them: the pages the ahead batch
        makes hot go out after the pages that were hot already, as
        upcoming said (made hot first, 32 of 160 went to other ids, and 32
        ids backed ahead were left)."""
        c, tr = self.make(num_blocks=1024, layers=2)           # 64 blocks a page
        bm, free = c._block_manager, c._block_manager._uninit_block_ids
        self.assertIsNotNone(bm.get_free_blocks(256, None, False, 0))   # pages 0 to 3
        bm.free_blocks(list(range(0, 256, 2)), shareable=False)        # half of each
        want = list(itertools.islice(free.upcoming(), 160))
        self.assertEqual(sorted(want[:128]), list(range(0, 256, 2)))
        tr.ahead(want)
        tr._settle()
        got = bm.get_free_blocks(160, None, False, 0)
        self.assertEqual(got, want)

    def test_free_list_hands_out_from_inside(self):
        """Ids handed out from inside the free list (the preferred ones)
        leave copies that are counted, not walked to: the list's length,
        order and contents stay exact, through compaction too."""
        class Prefer:
            def __init__(self):
                self.want = []

            def prefer(self):
                return self.want.pop() if self.want else None

            def handed(self, b):
                pass

            def freed(self, ids):
                pass

            def preferred(self):
                return reversed(self.want)
        t = Prefer()
        free = blocks.TrackedFreeList(range(5000), lambda ids: None, t)
        t.want = list(range(3000, 4500))                 # 1500 from inside
        got = [free.popleft() for _ in range(1600)]
        self.assertEqual(got[:1500], list(range(4499, 2999, -1)))
        self.assertEqual(got[1500:], list(range(100)))   # then the first ones
        self.assertEqual(len(free), 5000 - 1600)
        rest = list(free)
        self.assertEqual(rest, list(range(100, 3000)) + list(range(4500, 5000)))
        self.assertEqual(free[0], 100)
        self.assertNotIn(3000, free)
        free.append(3000)                                # freed again: back in, once,
        self.assertIn(3000, free)
        self.assertEqual(free[0], 3000)                  # first (its old copy skipped)
        self.assertEqual(len(free), 5000 - 1600 + 1)
        self.assertEqual(sorted(free), sorted(rest + [3000]))
        self.assertEqual(sorted(free.popleft() for _ in range(3401)), sorted(rest + [3000]))
        self.assertEqual(len(free), 0)
        with self.assertRaises(IndexError):
            free.popleft()

    def test_free_list_tells_a_batch_once(self):
        """Ids put back inside batched() are told to the tracker once, at
        the outermost end, also when the body raises; one taken out
        meanwhile has those before it told first."""
        told = []
        free = blocks.TrackedFreeList([9], told.append)
        with free.batched():
            free.append(1)
            free.extend([3, 2])
            with free.batched():
                free.append(4)
            self.assertEqual(told, [])
        self.assertEqual(told, [[1, 3, 2, 4]])          # as put back
        self.assertEqual(sorted(free), [1, 2, 3, 4, 9])
        told.clear()
        with self.assertRaises(KeyError):
            with free.batched():
                free.append(5)
                raise KeyError(5)
        self.assertEqual(told, [[5]])
        told.clear()
        with free.batched():
            free.append(6)
            self.assertEqual(free.popleft(), 6)
            self.assertEqual(told, [[6]])
            free.append(7)
            self.assertEqual(told, [[6]])                # the batch still open
            self.assertEqual(free.take_ids([7]), [7])
            self.assertEqual(told, [[6], [7]])
            free.append(8)
        self.assertEqual(told, [[6], [7], [8]])
        free.append(10)                                  # no batch: at once
        self.assertEqual(told[-1], [10])

    def test_a_requests_blocks_go_back_in_one_release(self):
        """The engine frees a request's blocks one append at a time; they go
        back to kvshim in one release (one kvshim_group_unmap), by the block
        manager's free_blocks and by the cache's alike."""
        c, tr = self.make(num_blocks=1024)
        calls = []
        real = tr.group.unmap
        tr.group.unmap = lambda ids: (calls.append(list(ids)), real(ids))[1]
        self.assertEqual(c.allocate_blocks(40, "r", 0), 40)
        self.assertEqual(tr.mapped, 40)
        c.free_blocks("r")
        self.assertEqual(calls, [list(range(40))])
        self.assertEqual(tr.mapped, 0)
        self.assertEqual(kvshim.stats()["cached_bytes"], 4 * 2 * MIB)   # page 0 of each
        bm = c._block_manager
        ids = bm.get_free_blocks(24, None, False, 0)
        self.assertEqual(tr.mapped, 24)
        calls.clear()
        bm.free_blocks(ids, shareable=False)
        self.assertEqual(calls, [ids])
        self.assertEqual(tr.mapped, 0)
        # a cache of two layer groups frees a request's blocks through the
        # block manager twice: still one release
        c.group_cache_managers.append(StandInGroup())
        self.assertEqual(c.allocate_blocks(8, "r2", 0), 8)
        self.assertEqual(tr.mapped, 16)
        calls.clear()
        c.free_blocks("r2")
        self.assertEqual(len(calls), 1)
        self.assertEqual(sorted(calls[0]), list(range(16)))
        self.assertEqual(tr.mapped, 0)
        # the prefix cache's blocks that an allocation evicts (5.17's
        # has_enough_free_blocks), and those the adapter releases itself
        c, tr = self.make(num_blocks=256)
        bm = c._block_manager
        real = tr.group.unmap
        tr.group.unmap = lambda ids: (calls.append(list(ids)), real(ids))[1]
        kept = bm.get_free_blocks(40, None, True, 0)
        bm.free_blocks(kept, shareable=True, complete=True)
        self.assertEqual(len(bm._init_block_ids), 40)
        calls.clear()
        got = bm.get_free_blocks(bm.num_free_blocks - 30, None, False, 0)
        self.assertEqual(len(calls), 1)
        self.assertEqual(len(calls[0]), 10)
        self.assertEqual(len(bm._init_block_ids), 30)
        calls.clear()
        transformers_cb._uncache(bm, list(bm._init_block_ids)[:12], tr)
        self.assertEqual(len(calls), 1)
        self.assertEqual(len(calls[0]), 12)
        self.assertEqual(tr.mapped, len(got) + 18)

    def test_a_failed_release_keeps_only_what_it_hit(self):
        """A release the library refuses for one block of a batch (any
        error: here ENOMEM) leaves that block claimed, releases the others
        one at a time, and reports the error (logged by the free list).
        The block kept is free and backed: counted among the blocks backed
        ahead (its next hand-out takes no second claim), and released by
        the next pass that does not name it ahead."""
        c, tr = self.make(num_blocks=256)
        bm = c._block_manager
        ids = bm.get_free_blocks(10, None, False, 0)
        real = tr.group.unmap

        def unmap(batch):
            if 4 in batch:
                raise kvshim.KvshimError(kvshim.ENOMEM, "kvshim_group_unmap")
            real(batch)
        tr.group.unmap = unmap
        with self.assertRaises(kvshim.KvshimError):
            tr.give(ids)
        self.assertEqual(tr.mapped, 0)
        self.assertEqual(tr.ahead_backed(), 1)
        self.assertEqual(tr._held, {4: 1})
        tr.group.unmap = real
        tr.ahead([])
        self.assertEqual(tr.ahead_backed(), 0)
        self.assertEqual(tr._held, {})
        with self.assertRaises(kvshim.KvshimError):   # now it is nobody's
            real([4])

    def test_free_list_matches_a_plain_list(self):
        """Through any mix of ids handed out from the front and from
        inside, freed again (one by one or several at once) and copies
        compacted away, the free list hands out, holds and lists exactly
        what a plain list would: freed ids go to the front (several
        lowest first), the preferred id comes out of the middle."""
        class Prefer:
            want = None

            def prefer(self):
                b, self.want = self.want, None
                return b

            def handed(self, b):
                pass

            def freed(self, ids):
                pass

            def preferred(self):
                return iter(())
        for seed in range(20):
            rng = random.Random(seed)
            t = Prefer()
            free = blocks.TrackedFreeList(range(3000), lambda ids: None, t)
            model, out = list(range(3000)), []
            for _ in range(6000):
                op = rng.random()
                if op < 0.45 and model:                   # handed out from inside
                    t.want = rng.choice(model)
                    model.remove(t.want)
                    out.append(free.popleft())
                elif op < 0.6 and model:                  # from the front
                    self.assertEqual(free.popleft(), model.pop(0))
                elif op < 0.9 and out:                    # freed again, one
                    b = out.pop(rng.randrange(len(out)))
                    free.append(b)
                    model.insert(0, b)
                elif out:                                 # several at once
                    k = min(len(out), rng.randint(1, 8))
                    ids = [out.pop(rng.randrange(len(out))) for _ in range(k)]
                    free.extend(ids)
                    model[:0] = sorted(ids)
                self.assertEqual(len(free), len(model))
            self.assertEqual(list(free), model, "seed %d" % seed)
            self.assertTrue(all(b in free for b in model[:50]))
            self.assertFalse(any(b in free for b in out[:50]))

    def test_evictions_told_apart(self):
        """How transformers evicted each request, as its source around 5.17
        shows it: the same state waiting again with is_cpu_offloaded (its
        cache on the CPU), a new state under its id (started over), or
        neither (not told); counted on the tracker, whoever asked."""
        self.ahead_off()
        c, tr = self.make(num_blocks=4096, layers=4)

        def prepare_next_batch(self):
            if self.evict:
                self.offloading_manager.offload_requests()
            return False
        ContinuousBatchProcessor = patched(stand_in_api(prepare_next_batch))
        self.fake_ask([0])
        proc = ContinuousBatchProcessor(c)
        proc.evict = False
        states = {r: types.SimpleNamespace(request_id=r, is_cpu_offloaded=False)
                  for r in ("a", "b", "c", "d")}
        sched = proc.scheduler = types.SimpleNamespace(
            active_requests=dict(states), waiting_requests={}, safety_margin=0.15,
            block_new_requests=False)

        def offload_requests():
            for r in ("a", "b", "c"):
                sched.active_requests.pop(r)
            states["a"].is_cpu_offloaded = True
            sched.waiting_requests["a"] = states["a"]
            sched.waiting_requests["b"] = types.SimpleNamespace(request_id="b")
            sched.block_new_requests = True
            return 3
        proc.offloading_manager = types.SimpleNamespace(offload_requests=offload_requests)
        proc.prepare_next_batch()                       # the adapter wraps it
        self.assertEqual((tr.to_cpu, tr.started_over, tr.evicted_untold), (0, 0, 0))
        proc.evict = True
        proc.prepare_next_batch()
        self.assertEqual((tr.to_cpu, tr.started_over, tr.evicted_untold), (1, 1, 1))
        # an eviction of none counts none
        proc.offloading_manager.offload_requests = lambda: 0
        proc.offloading_manager._kvshim_wrapped = False
        proc.prepare_next_batch()
        self.assertEqual((tr.to_cpu, tr.started_over, tr.evicted_untold), (1, 1, 1))

    def test_admission_follows_what_kvshim_can_back(self):
        """The scheduler's safety margin is of what the engine can have
        now, not of its pool sized as if alone; while kvshim asks the engine
        to give back, it admits nothing (unless nothing runs), and admits
        again when the ask is over, but leaves transformers' own block on
        admissions (after its offloading manager evicted) alone."""
        self.ahead_off()
        c, tr = self.make(num_blocks=4096, layers=4)
        asked = [0]

        def prepare_next_batch(self):
            if self.evict:
                self.offloading_manager.offload_requests()
            return False
        ContinuousBatchProcessor = patched(stand_in_api(prepare_next_batch))
        self.fake_ask(asked)
        proc = ContinuousBatchProcessor(c)
        proc.evict = False
        sched = proc.scheduler = types.SimpleNamespace(
            active_requests={"r": object()}, waiting_requests={}, safety_margin=0.15,
            block_new_requests=False)

        def offload_requests():                         # as transformers: evicts, blocks
            sched.block_new_requests = True
            return 1
        proc.offloading_manager = types.SimpleNamespace(offload_requests=offload_requests)
        proc.prepare_next_batch()
        shown = c.get_num_free_blocks()                 # the 64 MiB limit's blocks
        self.assertLess(shown, 4096)
        self.assertAlmostEqual(sched.safety_margin, 0.15 * shown / 4096)
        self.assertFalse(sched.block_new_requests)
        asked[0] = tr.bytes_per_block
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertTrue(sched.block_new_requests)
        asked[0] = 0
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertFalse(sched.block_new_requests)
        sched.block_new_requests = True                 # transformers' own, after evicting
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertTrue(sched.block_new_requests)
        # set by the adapter, then by transformers' eviction: the ask's end
        # leaves it set (transformers clears it when a request finishes)
        sched.block_new_requests = False
        asked[0] = tr.bytes_per_block
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertTrue(sched.block_new_requests)
        proc.evict = True
        proc.prepare_next_batch()
        proc.evict = False
        asked[0] = 0
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertTrue(sched.block_new_requests)
        # asked with nothing running: nothing to keep from refilling
        sched.block_new_requests, sched.active_requests = False, {}
        asked[0] = tr.bytes_per_block
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertFalse(sched.block_new_requests)

    def test_no_second_pass_under_tensor_parallelism(self):
        # each pass all-reduces the group's state: a rank that looked again
        # alone would leave the others waiting in a collective
        c, tr, proc = self.capped_engine()
        proc.distributed_helper = types.SimpleNamespace(tp_size=2)
        self.assertFalse(proc.prepare_next_batch(tr.group.headroom() + 1024))
        self.assertEqual(tr.retries, 0)
        proc.distributed_helper.tp_size = 1
        self.assertFalse(proc.prepare_next_batch(tr.group.headroom() + 1024))
        self.assertGreater(tr.retries, 0)

    def test_asked_engine_drops_its_prefix_cache_first(self):
        """transformers 5.17 keeps the complete blocks of finished requests
        for prefix sharing and releases them only when its free list runs
        short: asked to give back, the engine releases those first, a
        whole page (the newest block's) here, before preempting anything.
        (kvshim's ask here: everything above 64 blocks, as the rule's
        shrinks with what is given back.)"""
        c, tr = self.make(num_blocks=4096, layers=4)
        bm = c._block_manager
        asked = [0]
        ContinuousBatchProcessor = patched(stand_in_api(lambda self: True))
        self.patch_group("share_asked",
                         lambda: asked[0] and max(0, tr.mapped - 64) * tr.bytes_per_block)
        proc = ContinuousBatchProcessor(c)
        proc.scheduler = types.SimpleNamespace(active_requests={"a": 1, "b": 2},
                                               waiting_requests={})
        preempted = []
        proc.offloading_manager = types.SimpleNamespace(
            offload_one_request=lambda: preempted.append(1))
        ids = bm.get_free_blocks(128, None, True, 0)
        bm.free_blocks(ids, shareable=True, complete=True)       # the prefix cache
        self.assertEqual(len(bm._init_block_ids), 128)
        self.assertEqual(tr.mapped, 128)
        asked[0] = 1
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertEqual(list(bm._init_block_ids), ids[:64])
        self.assertEqual(tr.mapped, 64)
        self.assertEqual(tr.dropped, 64)
        self.assertEqual(tr.unused_pages, 1)
        self.assertEqual(preempted, [])

    def capture_unused(self, stated):
        """What the adapter states as its unused pages (share_unused) goes
        to the list stated for this test."""
        self.patch_group("share_unused", stated.append)

    def test_unused_pages_stated(self):
        """The page indices only prefix-cache blocks claim are stated as
        unused (kvshim counts them out of the engine's use and asks for
        them first); a page with a block a request uses is not. Looked at
        again at the next pass when the cache changes here (not 0.1 s
        on), and stated again within the second kvshim holds a
        statement."""
        c, tr, proc, _ = self.paged_engine()
        stated = []
        self.capture_unused(stated)
        bm = c._block_manager
        self.lay_out(proc, [("a", 40), ("p", 88), ("q", 64)])
        # p and q finished: their complete blocks stay in the prefix cache;
        # page 0 holds a's 40 and 24 of p's, page 1 the rest of p's, page
        # 2 q's
        for rid in ("p", "q"):
            del proc.scheduler.active_requests[rid]
            bm.free_blocks(c.group_cache_managers[0].block_table.pop(rid),
                           shareable=True, complete=True)
        self.assertEqual(sorted(tr.cache_only_pages(bm._init_block_ids)), [1, 2])
        time.sleep(0.11)
        proc.prepare_next_batch()
        self.assertEqual(stated, [2 * tr.page_index_bytes])
        proc.prepare_next_batch()                       # unchanged: not restated
        self.assertEqual(len(stated), 1)
        # a new request shares a block of page 2: that page is in use now
        bm.reuse_cached(next(b for b in bm._init_block_ids if tr.page_of(b) == 2))
        time.sleep(0.11)
        proc.prepare_next_batch()
        self.assertEqual(stated[-1], tr.page_index_bytes)
        # restated before kvshim's second runs out
        tr._unused = (time.monotonic() - 0.3, stated[-1])
        time.sleep(0.11)
        proc.prepare_next_batch()
        self.assertEqual(stated[-2:], [tr.page_index_bytes] * 2)
        # the engine takes its cache's blocks (here all of page 1's):
        # stated at the next pass, not 0.1 s on
        transformers_cb._uncache(bm, [b for b in bm._init_block_ids if tr.page_of(b) == 1],
                                 tr, asked=False)
        proc.prepare_next_batch()
        self.assertEqual(stated[-1], 0)

    def test_ask_for_unused_pages_taken_since_preempts_nothing(self):
        """kvshim asks for the pages the engine stated unused; by the next
        pass a request took a block of the only one (its statement is up
        to 0.1 s old): no page is left to release, so the pages are
        stated afresh and the ask read again, and it is over. Before, the
        engine released its prefix cache's newest blocks for the ask
        (none emptied a page) and preempted a request for the rest, asked
        at its share."""
        c, tr, proc, _ = self.paged_engine()
        stated = []
        self.capture_unused(stated)
        bm = c._block_manager
        self.lay_out(proc, [("a", 32), ("b", 32), ("p", 64)])
        del proc.scheduler.active_requests["p"]
        bm.free_blocks(c.group_cache_managers[0].block_table.pop("p"),
                       shareable=True, complete=True)
        time.sleep(0.11)
        proc.prepare_next_batch()
        self.assertEqual(stated, [tr.page_index_bytes])
        # kvshim asks for what the engine states unused
        self.patch_group("share_asked", lambda: stated[-1])
        bm.reuse_cached(next(iter(bm._init_block_ids)))
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertEqual(stated[-1], 0)
        self.assertEqual((tr.preempted, proc.offloading_manager.evicted), (0, []))
        self.assertEqual(list(proc.scheduler.active_requests), ["a", "b"])
        self.assertEqual(len(bm._init_block_ids), 63)
        self.assertEqual(tr.dropped, 0)

    def test_idle_engine_asked_gives_whole_pages_of_its_prefix_cache(self):
        """An idle engine (no request) whose prefix cache holds three page
        indices, asked for one: it releases the blocks of one whole page
        (that of its newest block), and the page goes back. Released
        newest block first (before), the 64 newest lay on all three pages,
        and emptied none: the ask stood, and the engine gave again a
        second later."""
        c, tr, proc, _ = self.paged_engine()
        bm = c._block_manager
        ids = bm.get_free_blocks(192, None, True, 0)
        # kept in an order that spreads the newest over every page
        bm.free_blocks(sorted(ids, key=lambda b: (b % 64, b)), shareable=True, complete=True)
        newest = list(bm._init_block_ids)[-64:]
        self.assertEqual({tr.page_of(b) for b in newest}, {0, 1, 2})
        cached = kvshim.stats()["cached_bytes"]
        # (kvshim's ask: everything above 128 blocks, as the rule's shrinks
        # with what is given back)
        self.patch_group("share_asked", lambda: max(0, tr.mapped - 128) * tr.bytes_per_block)
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertEqual(kvshim.stats()["cached_bytes"] - cached, tr.page_index_bytes)
        self.assertEqual(sorted(tr._claims), [0, 1])
        self.assertEqual(len(bm._init_block_ids), 128)
        self.assertEqual((tr.dropped, tr.unused_pages, tr.preempted), (64, 1, 0))

    def cached_budget(self):
        """A cache whose engine filled kvshim's limit (64 MiB: 256 blocks)
        with blocks it then kept as its prefix cache (finished requests'
        complete blocks): (cache, tracker, the cached ids in the order
        they were kept)."""
        c, tr = self.make(num_blocks=4096, layers=4)
        bm = c._block_manager
        ids = []
        while tr.group.can_back(list(itertools.islice(bm._uninit_block_ids.upcoming(), 64))):
            ids += bm.get_free_blocks(64, None, True, 0)
        self.assertEqual(len(ids), 256)
        bm.free_blocks(ids, shareable=True, complete=True)
        time.sleep(0.01)                            # past the headroom's ttl
        self.assertEqual(tr.group.headroom(), 0)
        self.assertEqual(list(bm._init_block_ids), ids)
        return c, tr, ids

    def test_engine_short_of_memory_takes_its_prefix_cache(self):
        """transformers 5.17 evicts its prefix cache only when its free list
        runs short, and the list is the pool sized as if alone: an engine
        whose prefix cache holds the memory kvshim lets it have sees those
        blocks free, and taking them releases as many as it needs, the
        newest first (a quarter of a page at a time: 16 blocks), at no new
        memory."""
        c, tr, ids = self.cached_budget()
        bm = c._block_manager
        self.assertEqual(c.get_num_free_blocks(), len(ids))
        mapped = kvshim.stats()["mapped_bytes"]
        # taken without the admission check first, as a growing request's
        # next block is
        one = bm.get_free_blocks(1, None, True, 0)
        self.assertIn(one[0], ids[-16:])
        self.assertEqual(tr.reclaimed, 16)
        # then 64 more: 15 of those 16 are free, and 64 more go
        self.assertTrue(c.will_allocation_be_successful(64, 0))
        got = bm.get_free_blocks(64, None, True, 0)
        self.assertIsNotNone(got)
        self.assertLessEqual(set(got), set(ids[-80:]) - set(one))
        self.assertEqual(list(bm._init_block_ids), ids[:-80])
        self.assertEqual(tr.reclaimed, 80)
        self.assertEqual(tr.dropped, 0)             # no ask: nothing given back
        self.assertEqual(kvshim.stats()["mapped_bytes"], mapped)
        # what the cache cannot cover waits, and the cache stays as it is
        self.assertFalse(c.will_allocation_be_successful(256, 0))
        self.assertEqual(list(bm._init_block_ids), ids[:-80])
        # with room, the prefix cache is kept
        bm.free_blocks(got + one, shareable=False)
        kvshim.trim(1 << 40)
        time.sleep(0.01)
        self.assertIsNotNone(bm.get_free_blocks(8, None, False, 0))
        self.assertEqual(tr.reclaimed, 80)

    def test_prefix_cache_covers_a_request_the_estimate_let_through(self):
        """The estimate of what kvshim can back reads a headroom up to
        RETRY_FOR_S old: another process may have taken that room since.
        The admission check then finds the very ids refused, and releases
        the prefix cache as far as needed rather than refuse a request its
        own cache covers (and state a demand of a block, which asks
        nobody for anything)."""
        c, tr, ids = self.cached_budget()
        real = tr.room
        tr.room = lambda ttl=0.005: 64 if ttl else real(ttl)   # read before the room went
        short = tr.short
        self.assertTrue(c.will_allocation_be_successful(64, 0))
        self.assertEqual(tr.short, short)
        self.assertEqual(tr.reclaimed, 64)
        self.assertEqual(list(c._block_manager._init_block_ids), ids[:-64])
        self.assertIsNotNone(c.allocate_blocks(64, "r", 0))
        self.assertEqual(tr.short, short)
        # what the cache cannot cover is still refused, the rest of it kept
        del tr.room
        time.sleep(0.01)                            # past the estimate's ttl
        self.assertFalse(c.will_allocation_be_successful(256, 0))
        self.assertEqual(list(c._block_manager._init_block_ids), ids[:-64])

    def test_prefix_cache_kept_when_it_cannot_cover_what_the_estimate_let_through(self):
        """Refused the very ids a stale estimate let through, the admission
        check reads the estimate afresh before it releases anything: the
        prefix cache (256 blocks) cannot cover 300, and stays."""
        c, tr, ids = self.cached_budget()
        real = tr.room
        for stale in (512, 200):    # no shortfall by it, or one the cache covers
            tr.stale()              # (no earlier reading kept)
            tr.room = lambda ttl=0.005: stale if ttl else real(ttl)
            self.assertFalse(c.will_allocation_be_successful(300, 0))
            self.assertIsNone(c._block_manager.get_free_blocks(300, None, True, 0))
            self.assertEqual(list(c._block_manager._init_block_ids), ids)
            self.assertEqual(tr.reclaimed, 0)

    def test_admission_check_is_timed(self):
        """The admission check's look at the very ids counts in the time the
        engine spends in kvshim (busy, and slow when it is)."""
        c, tr, ids = self.cached_budget()
        real = tr.group.can_back
        tr.group.can_back = lambda ids: (time.sleep(0.2), real(ids))[1]
        self.addCleanup(setattr, tr.group, "can_back", real)
        busy = tr.busy
        self.assertTrue(c.will_allocation_be_successful(16, 0))
        self.assertGreaterEqual(tr.busy - busy, 0.2)

    def test_prefix_cache_released_as_far_as_needed(self):
        """Released only until kvshim can back what the engine takes: here
        a free page backs 64 of 100 blocks, and 36 more come from the
        prefix cache, released 16 at a time: 48, not 100."""
        c, tr = self.make(num_blocks=4096, layers=4)
        bm = c._block_manager
        bm.get_free_blocks(64, None, True, 0)                   # page 0, in use
        cached = bm.get_free_blocks(128, None, True, 0)         # pages 1 and 2
        bm.free_blocks(cached, shareable=True, complete=True)
        time.sleep(0.01)                                        # past the headroom's ttl
        self.assertTrue(c.will_allocation_be_successful(100, 0))
        self.assertEqual(tr.reclaimed, 48)
        self.assertEqual(list(bm._init_block_ids), cached[:-48])
        # shown free at once: the 48 on a page other blocks hold, and the
        # 80 still cached (the free page's room is within the margin)
        self.assertEqual(c.get_num_free_blocks(), 128)
        self.assertIsNotNone(bm.get_free_blocks(100, None, True, 0))
        self.assertEqual(tr.reclaimed, 48)

    def test_prefix_cache_released_first_on_pages_in_use(self):
        """Short of memory, the engine releases the prefix cache's blocks on
        the pages its blocks in use claim before the newest elsewhere: its
        new blocks fill the page it uses, and the three pages only the cache
        claims stay whole, stated unused, to go back when asked. Released
        newest first (before), the new blocks went onto page 3, and only two
        pages stayed the cache's alone."""
        c, tr, ids = self.cached_budget()
        bm = c._block_manager
        per = tr.page_index_bytes // tr.bytes_per_block
        self.assertEqual(per, 64)
        # a request holds one block of page 0 (reused from the cache)
        keep = ids[0]
        bm.reuse_cached(keep)
        self.assertEqual(len(tr.cache_only_pages(bm._init_block_ids)), 3)
        got = bm.get_free_blocks(16, None, True, 0)
        self.assertIsNotNone(got)
        self.assertEqual({tr.page_of(b) for b in got}, {tr.page_of(keep)})
        self.assertEqual(tr.reclaimed, 16)
        self.assertEqual(sorted(tr.cache_only_pages(bm._init_block_ids)),
                         sorted({tr.page_of(b) for b in ids} - {tr.page_of(keep)}))
        # the order itself: page 0's cached blocks newest first, then the rest
        order = tr.release_order(bm._init_block_ids)
        on0 = [b for b in reversed(bm._init_block_ids) if tr.page_of(b) == tr.page_of(keep)]
        self.assertEqual(order[:len(on0)], on0)
        self.assertEqual(len(order), len(bm._init_block_ids))

    def test_prefix_cache_parents_released_after_their_children(self):
        """A prefix is matched block by block from its first and stops at
        the first block missing: a cached block that is another cached
        block's parent is released with the rest, after the blocks on
        pages in use, so that a chain loses its end first."""
        c, tr, ids = self.cached_budget()
        bm = c._block_manager
        bm.reuse_cached(ids[0])                     # a block in use on page 0
        a, b, d = ids[1], ids[2], ids[3]            # a chain on page 0: a, b, d
        bm._id_to_block[b] = types.SimpleNamespace(parent_id=a, hash=None)
        bm._id_to_block[d] = types.SimpleNamespace(parent_id=b, hash=None)
        parents = transformers_cb._cached_parents(bm, bm._init_block_ids)
        self.assertEqual(parents, {a, b})
        order = tr.release_order(bm._init_block_ids, parents)
        on0 = [x for x in order if tr.page_of(x) == tr.page_of(ids[0])]
        self.assertEqual(on0[-2:], [b, a])          # last of page 0's, child first
        self.assertLess(order.index(d), order.index(ids[64]))   # d is a leaf: first group
        self.assertGreater(order.index(a), order.index(ids[-1]))  # a after the newest
        self.assertEqual(sorted(order), sorted(bm._init_block_ids))

    def churn(self, order=None, steps=1500, seed=5):
        """Requests growing a block at a time under kvshim's 64 MiB (four
        page indices of 64 blocks), five at once, each finishing at 4 to
        40 blocks into the prefix cache (but its last block), a new one
        starting in its place; order, if given, replaces the tracker's
        release_order. Returns the means over the steps of (page indices
        holding blocks in use less the fewest that could, page indices
        only the cache claims)."""
        c, tr = self.make(num_blocks=4096, layers=4)
        if order is not None:
            tr.release_order = order
        # every reading fresh: what the tracker keeps for a few ms would
        # make the steps depend on how fast they run
        room, capacity = tr.room, tr.capacity
        tr.room = lambda ttl=0: room(ttl=0)
        tr.capacity = lambda limit, room, ttl=0: capacity(limit, room, ttl=-1)
        bm = c._block_manager
        rng = random.Random(seed)
        reqs = [[rng.randint(4, 40), []] for _ in range(5)]
        extra = only = 0
        for _ in range(steps):
            for r in reqs:
                got = bm.get_free_blocks(1, r[1][-1] if r[1] else None, True, 0)
                if got is None:
                    continue            # (waits for memory)
                r[1] += got
                if len(r[1]) >= r[0]:
                    bm.free_blocks(r[1][:-1], shareable=True, complete=True)
                    bm.free_blocks(r[1][-1:], shareable=False)
                    r[0], r[1] = rng.randint(4, 40), []
            live = [b for r in reqs for b in r[1]]
            extra += len({tr.page_of(b) for b in live}) - -(-len(live) // 64)
            only += len(tr.cache_only_pages(bm._init_block_ids))
        self.release(c)                 # (the next churn starts from nothing)
        return extra / steps, only / steps

    def test_prefix_cache_released_on_pages_in_use_keeps_blocks_packed(self):
        """Over 1500 steps of requests coming and going under a full
        budget (three traces), releasing the prefix cache's blocks on pages
        in use first keeps the blocks in use on fewer pages, and more pages
        the cache's alone (to go back when asked), than releasing the
        newest first. (Read on the CPU emulation: pages beyond the fewest
        0.89, 0.82 and 0.77 against 1.80, 1.94 and 2.12; pages the cache's
        alone 1.60, 1.64 and 1.66 against 0.68, 0.51 and 0.31.)"""
        new = [self.churn(seed=k) for k in (4, 5, 6)]
        old = [self.churn(order=lambda cached, parents=(): list(reversed(cached)), seed=k)
               for k in (4, 5, 6)]
        extra = [sum(x[0] for x in r) for r in (new, old)]
        only = [sum(x[1] for x in r) for r in (new, old)]
        self.assertLess(extra[0], 0.6 * extra[1], (new, old))
        self.assertGreater(only[0], 2 * only[1], (new, old))

    def test_prefix_cache_kept_under_tensor_parallelism(self):
        """Each rank's kvshim would release different blocks: under tensor
        parallelism the prefix cache is not counted free, and stays, even
        when kvshim asks."""
        c, tr, ids = self.cached_budget()
        bm = c._block_manager
        bm.tp_on = True
        self.assertEqual(c.get_num_free_blocks(), 0)
        self.assertIsNone(bm.get_free_blocks(64, None, True, 0))
        self.assertEqual(list(bm._init_block_ids), ids)
        self.assertEqual(tr.reclaimed, 0)
        # nor dropped when kvshim asks
        self.fake_ask([64 * tr.bytes_per_block])
        transformers_cb._drop_prefix_cache(types.SimpleNamespace(cache=c), tr)
        self.assertEqual(list(bm._init_block_ids), ids)
        self.assertEqual(tr.dropped, 0)

    def test_prefix_cache_admits_a_waiting_request(self):
        """A request waiting on an engine whose prefix cache holds its
        memory is admitted from it, and the engine states no demand: not
        for the request, nor for its next step's prefill (16 blocks), which
        its prefix cache covers."""
        self.ahead_off()
        c, tr, ids = self.cached_budget()
        stated = []

        class Scheduler:
            def __init__(self):
                self.active_requests, self.waiting_requests = {}, {"w": object()}
                self.block_new_requests = False

        ContinuousBatchProcessor = patched(admitting_api(Scheduler, lambda proc: None))
        ContinuousBatchProcessor.max_batch_tokens = 250     # 16 blocks of 16 tokens
        self.fake_ask([0])
        self.capture_demand(stated)
        proc = ContinuousBatchProcessor(c)
        self.assertTrue(proc.prepare_next_batch())
        self.assertEqual(list(proc.scheduler.active_requests), ["w"])
        self.assertEqual(tr.reclaimed, 16)
        self.assertEqual(tr.short, 0)
        self.assertEqual(stated, [])

    def test_engine_waiting_states_demand_less_its_prefix_cache(self):
        """An engine held back states what it waits for less its prefix
        cache's blocks, which it takes before others' memory: 300 blocks
        wait, 256 are cached, 44 are asked of the budget."""
        self.ahead_off()
        c, tr, ids = self.cached_budget()
        stated = []

        class Request:
            # (and the next token: 300 blocks, as transformers 5.17 takes them)
            tokens_to_process = list(range(300 * 16 - 2))
        sched = types.SimpleNamespace(active_requests={}, waiting_requests={"w": Request()})

        def prepare_next_batch(self):
            return self.cache.allocate_blocks(300, "w", 0) is not None
        ContinuousBatchProcessor = patched(stand_in_api(prepare_next_batch))
        self.fake_ask([0])
        self.capture_demand(stated)
        proc = ContinuousBatchProcessor(c)
        proc.scheduler = sched
        self.assertFalse(proc.prepare_next_batch())
        # (the library adds the page index the admission check needs: see
        # test_stated_demand_is_admitted)
        self.assertEqual(stated[-1], 44 * tr.bytes_per_block)
        self.assertEqual(list(c._block_manager._init_block_ids), ids)   # left as it was

    def test_stated_demand_is_admitted(self):
        """A demand granted to the byte admits the blocks it states, through
        the real library on the emulation: two processes share a budget;
        one (B) holds the rest of it and waits for more, so the other (A),
        with a page index of its four tensors in use and two idle, has its
        use and its demand as room. Stated through its group
        (kvshim_group_share_demand, which adds a page index), its blocks
        are admitted, every one (kvshim_group_headroom); the blocks' bytes
        alone (kvshim_share_demand) admit a page index fewer, none of 16
        or 64 (on an H200 at 3 GiB, an engine's cushion of one page index
        kept a 16-block request out for over a second while it held idle
        pages of its own)."""
        pool = POOL + "d"
        self.addCleanup(_remove_segments, pool)
        page, ntensors, per = 2 * MIB, 4, 64           # 64 blocks a page
        env = dict(os.environ, KVSHIM_SHARE="on", KVSHIM_POOL=pool, KVSHIM_POOL_LOW="0",
                   KVSHIM_POOL_HIGH="0", KVSHIM_LIMIT="1G",
                   KVSHIM_BUDGET=str((3 * ntensors + 40) * page))
        a_code = (
            "import json, sys, time, kvshim\n"
            "page, n, per = %d, %d, %d\n"
            "g = kvshim.Group([kvshim.reserve(16 * page) for _ in range(n)], page // per,"
            " 16 * per)\n"
            "g.map(list(range(per)))\n"
            "g.map(list(range(per, 3 * per))); g.unmap(list(range(per, 3 * per)))\n"
            "print('ready', flush=True)\n"
            "sys.stdin.readline()\n"
            "out = []\n"
            "for held in (16, 64):\n"
            "    for margin in (1, 0):\n"
            "        (g.share_demand if margin else kvshim.share_demand)(held * page // per * n)\n"
            "        time.sleep(0.05)\n"
            "        out.append([held, margin, g.headroom()])\n"
            "print(json.dumps(out), flush=True)\n"
            "sys.stdin.readline()\n") % (page, ntensors, per)
        b_code = (
            "import sys, time, kvshim\n"
            "a = kvshim.reserve(40 * %d)\n"
            "kvshim.map(a, 40 * %d)\n"
            "kvshim.share_demand(1 << 30)\n"
            "print('ready', flush=True)\n"
            "while not sys.stdin.closed:\n"
            "    kvshim.share_demand(1 << 30)\n"
            "    import select\n"
            "    if select.select([sys.stdin], [], [], 0.05)[0]:\n"
            "        break\n") % (page, page)
        procs = []
        try:
            for code in (a_code, b_code):
                procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE))
                self.assertEqual(procs[-1].stdout.readline().strip(), "ready")
            procs[0].stdin.write("go\n")
            procs[0].stdin.flush()
            out = json.loads(procs[0].stdout.readline())
        finally:
            for p in procs:
                try:
                    p.stdin.close()
                    p.wait(timeout=60)
                except (OSError, subprocess.TimeoutExpired):
                    p.kill()
                    p.wait()
                p.stdout.close()
        self.assertEqual([(h, m) for h, m, _ in out], [(16, 1), (16, 0), (64, 1), (64, 0)])
        self.assertEqual([room >= held for held, _, room in out], [True, False, True, False],
                         out)

    def test_engine_whose_prefix_cache_covers_what_waits_is_not_held(self):
        """A pass that admitted nothing by transformers' own choice, while
        what waits fits in the prefix cache, is not kvshim holding the
        engine back: no demand."""
        self.ahead_off()
        c, tr, ids = self.cached_budget()
        stated = []

        class Request:
            tokens_to_process = list(range(60))
        sched = types.SimpleNamespace(active_requests={}, waiting_requests={"w": Request()})
        ContinuousBatchProcessor = patched(stand_in_api(
            lambda self: self.cache.get_num_free_blocks() >= 0))   # reads the count only
        self.fake_ask([0])
        self.capture_demand(stated)
        proc = ContinuousBatchProcessor(c)
        proc.scheduler = sched
        capped = tr.capped
        self.assertTrue(proc.prepare_next_batch())
        self.assertGreater(tr.capped, capped)
        self.assertEqual(stated, [])

    def test_prefix_cache_counts_once_in_the_margin(self):
        """The scheduler's margin is of what the engine can have: the
        prefix cache's blocks are backed and counted free, once."""
        c, tr, ids = self.cached_budget()
        sched = types.SimpleNamespace(safety_margin=0.15, active_requests={},
                                      waiting_requests={})
        transformers_cb._admission(types.SimpleNamespace(cache=c, scheduler=sched), tr)
        self.assertAlmostEqual(sched.safety_margin, 0.15 * len(ids) / 4096)

    def test_prefix_cache_covers_the_cushion(self):
        """The step of prefill an engine with requests states as demand is
        covered by its prefix cache's blocks first (it takes them when it
        needs them), never below none; not under tensor parallelism."""
        c, tr = self.make(num_blocks=4096, layers=4)
        bm = c._block_manager
        sched = types.SimpleNamespace(active_requests={"a": object()}, waiting_requests={})
        proc = types.SimpleNamespace(cache=c, scheduler=sched, max_batch_tokens=250)
        self.assertEqual(transformers_cb._cushion(proc), 16)    # 16 blocks of 16 tokens
        bm.free_blocks(bm.get_free_blocks(10, None, True, 0), shareable=True, complete=True)
        self.assertEqual(transformers_cb._cushion(proc), 6)
        bm.free_blocks(bm.get_free_blocks(20, None, True, 0), shareable=True, complete=True)
        self.assertEqual(transformers_cb._cushion(proc), 0)
        bm.tp_on = True
        self.assertEqual(transformers_cb._cushion(proc), 16)

    def test_pass_kvshim_left_empty_looks_again(self):
        self.ahead_off()
        # transformers' loop, finding nothing scheduled, sleeps 100 ms
        # unless a new request comes: a pass kvshim left empty looks again
        # soon, and schedules once the memory is back
        c, tr = self.make(num_blocks=4096, layers=4)
        passes = []

        def prepare_next_batch(self, n=64, rid="r", back_at=None):
            passes.append(rid)
            if n == 0:
                return False                 # nothing to do: no retry
            if back_at is not None and passes.count(rid) == back_at:
                self.cache.free_blocks("r")  # memory comes back meanwhile
            if self.cache.get_num_free_blocks() < n:
                raise RuntimeError(NOTHING_SCHEDULED)
            return self.cache.allocate_blocks(n, rid, 0) is not None
        ContinuousBatchProcessor = patched(stand_in_api(prepare_next_batch))
        proc = ContinuousBatchProcessor(c)
        self.assertTrue(proc.prepare_next_batch(tr.group.headroom()))
        self.assertFalse(proc.prepare_next_batch(0))
        self.assertEqual(tr.retries, 0)
        # the blocks come back by the third look (a request finishing, or
        # another process letting its pages go): the same call schedules
        # (the free count is read at most every 5 ms: a look or so more)
        self.assertTrue(proc.prepare_next_batch(64, "r2", back_at=3))
        self.assertGreaterEqual(passes.count("r2"), 3)
        self.assertEqual(tr.retries, passes.count("r2") - 1)
        # still short after RETRY_FOR_S: the step does nothing, the engine lives
        retries = tr.retries
        self.assertFalse(proc.prepare_next_batch(tr.group.headroom() + 1024, "r3"))
        self.assertGreater(tr.retries, retries)

    def three_admitted(self, num_blocks, layers):
        """A cache of num_blocks, its tracker, a processor as admitting_api's
        with transformers 5.17's offloading manager and three requests
        admitted (r0 to r2, 4 blocks each), and the ask fake_ask reads:
        (cache, tracker, processor, ask)."""
        c, tr = self.make(num_blocks=num_blocks, layers=layers)
        asked = [0]

        class Request:
            def __init__(self, rid):
                self.request_id, self.tokens_to_process = rid, list(range(60))
                self.remaining_prefill_tokens = []
                self.blocks = 4                  # what prepare_next_batch gives it

        class Scheduler:
            def __init__(self):
                self.active_requests, self.waiting_requests = {}, {}
                self.starved_requests = []

        ContinuousBatchProcessor = patched(admitting_api(Scheduler, OffloadingManager517))
        self.fake_ask(asked)
        proc = ContinuousBatchProcessor(c)
        for i in range(3):
            proc.scheduler.waiting_requests["r%d" % i] = Request("r%d" % i)
        self.assertTrue(proc.prepare_next_batch())
        return c, tr, proc, asked

    def test_fair_share_preempts_through_starved_requests(self):
        """transformers 5.17's offloading manager has offload_requests only,
        which evicts requests its scheduler found starved of blocks, newest
        first, while their demand passes the free blocks, never the last
        active one (the stand-in below follows that rule). Asked by kvshim,
        the adapter has it evict the newest active request, once, and
        leaves the starved list as it found it."""
        self.ahead_off()
        c, tr, proc, asked = self.three_admitted(4096, layers=4)
        mapped = tr.mapped
        asked[0] = 4 * tr.bytes_per_block                 # one request's blocks
        time.sleep(0.01)
        om, sched = proc.offloading_manager, proc.scheduler
        proc.prepare_next_batch()
        self.assertEqual(om.evicted, ["r2"])               # the newest
        self.assertEqual(sched.starved_requests, [])       # left as found
        self.assertEqual(tr.mapped, mapped - 4)
        self.assertEqual(tr.preempted, 1)
        # what it gave covers the ask: no second eviction within the second
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertEqual(om.evicted, ["r2"])
        # a request the scheduler found starved is not named again: the
        # newest other one is; and the last active request stays
        asked[0] = 8 * tr.bytes_per_block
        r1 = sched.active_requests["r1"]
        sched.starved_requests.append((r1, 1))
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertEqual(om.evicted, ["r2", "r0"])
        self.assertEqual(list(sched.active_requests), ["r1"])
        self.assertEqual(sched.starved_requests, [(r1, 1)])
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertEqual(list(sched.active_requests), ["r1"])

    def test_block_after_the_asks_eviction_ends_with_the_ask(self):
        """transformers blocks admissions after every eviction until a
        request finishes. An eviction the adapter has it make for kvshim's
        ask is the ask's: once the ask is over the engine admits again,
        though no request finished (on an H200 the small model, its one
        other request decoding, admitted nothing for 1.5 s with room for
        hundreds of blocks). Its own eviction's block stays (see
        test_admission_follows_what_kvshim_can_back)."""
        self.ahead_off()
        c, tr, proc, asked = self.three_admitted(4096, layers=4)
        sched, om = proc.scheduler, proc.offloading_manager
        asked[0] = 4 * tr.bytes_per_block
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertEqual(om.evicted, ["r2"])
        self.assertTrue(sched.block_new_requests)
        sched.waiting_requests["r3"] = type(sched.waiting_requests["r2"])("r3")
        time.sleep(0.01)
        proc.prepare_next_batch()                       # still asked: nothing admitted
        self.assertEqual(list(sched.waiting_requests), ["r2", "r3"])
        asked[0] = 0
        time.sleep(0.01)
        proc.prepare_next_batch()                       # (the ask ending in the eviction's
        self.assertFalse(sched.block_new_requests)      # pass: see test_asked_engine_
        self.assertEqual(sched.waiting_requests, {})    # empties_the_least_shared_page)
        self.assertEqual(sorted(sched.active_requests), ["r0", "r1", "r2", "r3"])

    def test_block_on_before_the_asks_eviction_stays(self):
        """transformers' own block on admissions (after an eviction in its
        own pass) stays when the adapter has it evict for kvshim's ask: the
        ask's end leaves it to transformers, who clears it when a request
        finishes."""
        self.ahead_off()
        c, tr, proc, asked = self.three_admitted(4096, layers=4)
        sched, om = proc.scheduler, proc.offloading_manager
        sched.block_new_requests, sched._kvshim_blocked = True, False
        asked[0] = 4 * tr.bytes_per_block
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertEqual(om.evicted, ["r2"])
        asked[0] = 0
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertTrue(sched.block_new_requests)
        self.assertEqual(list(sched.waiting_requests), ["r2"])

    def test_every_request_starved_the_newest_goes_alone(self):
        """When the scheduler found every active request starved, the
        adapter names the newest alone: through the scheduler's own list,
        transformers 5.17 would evict newest first while their demand
        passes the free blocks, all but one at once."""
        self.ahead_off()
        c, tr, proc, asked = self.three_admitted(4096, layers=4)
        sched, om = proc.scheduler, proc.offloading_manager
        sched.starved_requests[:] = [(r, 10 ** 6) for r in sched.active_requests.values()]
        found = list(sched.starved_requests)
        asked[0] = 4 * tr.bytes_per_block
        time.sleep(0.01)
        self.assertTrue(transformers_cb._give_back_one(proc, tr))
        self.assertEqual(om.evicted, ["r2"])
        self.assertEqual(sched.starved_requests, found[:2])

    def test_named_victim_goes_alone(self):
        """A request the scheduler found starved in its last pass stays
        where it is when the adapter has another evicted for kvshim's ask:
        transformers 5.17's offload_requests meets the demand of every
        starved request, so named beside it, the victim would take it
        along (here r1, starved of 100 blocks in a pool of 16, went with
        r2 before)."""
        self.ahead_off()
        c, tr, proc, asked = self.three_admitted(16, layers=2)
        sched = proc.scheduler
        r1 = sched.active_requests["r1"]
        sched.starved_requests.append((r1, 100))
        asked[0] = 4 * tr.bytes_per_block
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertEqual(proc.offloading_manager.evicted, ["r2"])
        self.assertEqual(list(sched.active_requests), ["r0", "r1"])
        self.assertEqual(sched.starved_requests, [(r1, 100)])

    def test_waiting_blocks_count_what_comes_back(self):
        """A waiting request needs blocks for the tokens before its
        position and those it has left to prefill, and the next, as
        transformers 5.17 allocates them for a request with no blocks: a
        new request (or one started over: its prompt and what it generated)
        its prompt; one preempted to the CPU its whole cache (its position
        kept, one token left); one of an older shape, with tokens_to_process
        only, those. The layer groups' blocks are the cache's blocks_needed
        (a sliding window holds fewer), else as many a group."""
        cache = types.SimpleNamespace(block_size=16, group_cache_managers=[0, 1])
        new = types.SimpleNamespace(remaining_prefill_tokens=list(range(100)),
                                    tokens_to_process=[], position_offset=0)
        on_cpu = types.SimpleNamespace(remaining_prefill_tokens=[7], tokens_to_process=[7],
                                       position_offset=200)
        old = types.SimpleNamespace(tokens_to_process=list(range(60)))  # no other fields
        proc = types.SimpleNamespace(cache=cache, scheduler=types.SimpleNamespace(
            waiting_requests={"new": new}))
        self.assertEqual(transformers_cb._waiting_blocks(proc), 7 * 2)
        proc.scheduler.waiting_requests = {"cpu": on_cpu}
        self.assertEqual(transformers_cb._waiting_blocks(proc), 13 * 2)
        proc.scheduler.waiting_requests = {"new": new, "cpu": on_cpu, "old": old}
        self.assertEqual(transformers_cb._waiting_blocks(proc), (7 + 13 + 4) * 2)
        # 15 tokens and the next fill a block: transformers takes two
        proc.scheduler.waiting_requests = {"w": types.SimpleNamespace(
            remaining_prefill_tokens=list(range(15)))}
        self.assertEqual(transformers_cb._waiting_blocks(proc), 2 * 2)
        # a sliding window of 8 blocks in the second group
        cache.blocks_needed = lambda n, allocated: n + min(n, 8)
        proc.scheduler.waiting_requests = {"cpu": on_cpu}
        self.assertEqual(transformers_cb._waiting_blocks(proc), 13 + 8)

    def test_fair_share_preempts_and_states_demand(self):
        """kvshim asks the engine for blocks it uses: one request is
        preempted a step (through transformers' offloading manager), no more
        than asked; a pass kvshim cut short states the waiting requests'
        blocks as demand, and a pass that was not, none."""
        self.ahead_off()
        c, tr = self.make(num_blocks=4096, layers=4)
        asked, stated = [0], []

        class Request:
            def __init__(self, n):
                self.tokens_to_process = list(range(n))

        class Scheduler:
            def __init__(self):
                self.active_requests, self.waiting_requests = {}, {}

        class OffloadingManager:
            def __init__(self, proc):
                self.proc, self.calls = proc, 0

            def offload_one_request(self):
                self.calls += 1
                rid = next(reversed(self.proc.scheduler.active_requests))
                state = self.proc.scheduler.active_requests.pop(rid)
                self.proc.cache.free_blocks(rid)
                self.proc.scheduler.waiting_requests[rid] = state

        ContinuousBatchProcessor = patched(admitting_api(Scheduler, OffloadingManager))
        self.fake_ask(asked)
        self.capture_demand(stated)
        proc = ContinuousBatchProcessor(c)
        for i in range(3):
            proc.scheduler.waiting_requests["r%d" % i] = Request(60)
        self.assertTrue(proc.prepare_next_batch())
        self.assertEqual(len(proc.scheduler.active_requests), 3)
        self.assertEqual(stated, [])                # never short: no demand
        # asked for one request's blocks: one preempted, then no more
        asked[0] = 4 * tr.bytes_per_block
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertEqual(proc.offloading_manager.calls, 1)
        self.assertEqual(tr.preempted, 1)
        proc.scheduler.waiting_requests.clear()
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertEqual(proc.offloading_manager.calls, 1)
        # kvshim short: the waiting request's blocks are stated as demand
        asked[0] = 0
        proc.scheduler.waiting_requests["w"] = Request(100)     # 7 blocks of 16
        tr.short += 1
        real_can = tr.can_take
        tr.can_take = lambda ids: (setattr(tr, "short", tr.short + 1), False)[1]
        self.addCleanup(setattr, tr, "can_take", real_can)
        time.sleep(0.01)
        self.assertFalse(proc.prepare_next_batch())
        self.assertEqual(stated[-1], 7 * tr.bytes_per_block)
        tr.can_take = real_can
        self.assertTrue(proc.prepare_next_batch())
        self.assertEqual(stated[-1], 0)
        # asked for two requests' blocks: both preempted in one pass; asked
        # for more than all of them: never the last active request
        time.sleep(1.05)                             # the last second's gift forgotten
        for i in range(3, 6):
            proc.scheduler.waiting_requests["r%d" % i] = Request(60)
        self.assertTrue(proc.prepare_next_batch())
        active = len(proc.scheduler.active_requests)
        self.assertGreaterEqual(active, 4)
        calls = proc.offloading_manager.calls
        asked[0] = 8 * tr.bytes_per_block
        time.sleep(0.01)
        proc.scheduler.waiting_requests.clear()
        proc.prepare_next_batch()
        self.assertEqual(proc.offloading_manager.calls - calls, 2)
        # (the stand-in admits the two again in the same pass)
        time.sleep(1.05)
        calls = proc.offloading_manager.calls
        asked[0] = 1000 * tr.bytes_per_block
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertEqual(proc.offloading_manager.calls - calls, active - 1)

    def test_cap_holding_requests_back_states_demand(self):
        """transformers 5.17 admits a request only if the free block count
        covers it: kvshim's cap on that count, not a refused map, is what
        holds a request back there (an H200 run with three engines stated
        no demand at all, and nobody was asked to give back). A pass whose
        waiting requests need more than kvshim can back states them as
        demand; a capped pass whose waiting requests fit states none."""
        self.ahead_off()
        c, tr = self.make(num_blocks=4096, layers=4)
        stated = []

        class Request:
            def __init__(self, n):
                self.tokens_to_process = list(range(n))

        def prepare_next_batch(self):
            waiting = self.scheduler.waiting_requests
            for rid in list(waiting):
                need = -(-(len(waiting[rid].tokens_to_process) + 1) // c.block_size)
                if self.cache.get_num_free_blocks() < need:
                    return False                   # waits for free blocks
                self.cache.allocate_blocks(need, rid, 0)
                del waiting[rid]
            return True
        ContinuousBatchProcessor = patched(stand_in_api(prepare_next_batch))
        self.capture_demand(stated)
        proc = ContinuousBatchProcessor(c)
        proc.scheduler = types.SimpleNamespace(active_requests={}, waiting_requests={})
        room = tr.group.headroom()
        # fits: admitted, no demand (the cap applied all the same)
        proc.scheduler.waiting_requests["a"] = Request(10 * c.block_size)
        self.assertTrue(proc.prepare_next_batch())
        self.assertGreater(tr.capped, 0)
        self.assertEqual(stated, [])
        # more than kvshim can back: held back, its blocks stated
        big = (room + 8) * c.block_size
        proc.scheduler.waiting_requests["b"] = Request(big)
        time.sleep(0.01)                                   # past the headroom's ttl
        self.assertFalse(proc.prepare_next_batch())
        self.assertEqual(stated[-1], -(-(big + 1) // c.block_size) * tr.bytes_per_block)
        self.assertGreater(tr.retries, 0)
        # gone (cancelled): the demand is taken back
        proc.scheduler.waiting_requests.clear()
        time.sleep(0.3)                       # a changed demand is stated at once
        self.assertFalse(proc.prepare_next_batch() is None)
        self.assertEqual(stated[-1], 0)

    def test_engine_with_requests_states_a_step_of_prefill(self):
        """An engine with requests, running or waiting, states one step's
        prefill (max_batch_tokens, in every layer group) as demand even
        when nothing holds it back: the shared budget keeps those blocks
        for it, and a burst maps at once instead of waiting for another
        engine to preempt. Held back by more, it states what it waits for;
        idle, it states none (its idle pages are the others'). Each with a
        page index more (see test_stated_demand_is_admitted)."""
        c, tr = self.make(num_blocks=4096, layers=4)
        c.group_cache_managers.append(StandInGroup())       # two layer groups
        asked, stated = [0], []

        class Request:
            def __init__(self, n):
                self.tokens_to_process = list(range(n))
                self.remaining_prefill_tokens = []

        class Scheduler:
            def __init__(self):
                self.active_requests, self.waiting_requests = {}, {}
                self.block_new_requests = False

        ContinuousBatchProcessor = patched(admitting_api(Scheduler, lambda proc: None))
        ContinuousBatchProcessor.max_batch_tokens = 250     # 16 blocks of 16 tokens
        self.fake_ask(asked)
        self.capture_demand(stated)
        proc = ContinuousBatchProcessor(c)
        sched = proc.scheduler
        step = 2 * 16 * tr.bytes_per_block
        self.assertTrue(proc.prepare_next_batch())
        self.assertEqual(stated, [])                        # idle: no demand
        # a request waits (admissions blocked), nothing held back by kvshim
        sched.waiting_requests["w"] = Request(60)
        sched.block_new_requests = True
        self.assertTrue(proc.prepare_next_batch())
        self.assertEqual(tr.short, 0)
        self.assertEqual(stated, [step])    # (the library adds the page index)
        # held back by kvshim: at least the step, more when more waits
        real_can = tr.can_take
        tr.can_take = lambda ids: (setattr(tr, "short", tr.short + 1), False)[1]
        sched.block_new_requests = False
        self.assertFalse(proc.prepare_next_batch())         # "w": 4 blocks a group
        self.assertEqual(stated[-1], step)
        sched.waiting_requests["big"] = Request(1000)       # and 63 a group
        self.assertFalse(proc.prepare_next_batch())
        self.assertEqual(stated[-1], 2 * (4 + 63) * tr.bytes_per_block)
        # admitted and running, nothing waits: the step again
        tr.can_take = real_can
        self.assertTrue(proc.prepare_next_batch())
        self.assertEqual(list(sched.active_requests), ["w", "big"])
        self.assertEqual(stated[-1], step)
        # both finished: idle, the demand taken back
        for rid in list(sched.active_requests):
            del sched.active_requests[rid]
            c.free_blocks(rid)
        self.assertTrue(proc.prepare_next_batch())
        self.assertEqual(stated[-1], 0)

    def test_growing_request_takes_a_block_on_its_last_page(self):
        """A request growing by a block (decoding) gets it on the page of
        its last block while that page has a free id, even when another
        page with claims and free ids (here page 1, freed on last, which
        the hot pages' order and the free list both hand out first) would
        give one: a request's blocks then share few pages with other
        requests', and preempting few requests empties a page (before,
        handed out wherever the list was, every page held blocks of dozens
        of requests)."""
        c, tr = self.make(num_blocks=256, layers=2)      # 64 blocks a page
        table = c.group_cache_managers[0].block_table
        for rid, n in (("r", 60), ("x", 4), ("y", 60), ("z", 4)):
            self.assertEqual(c.allocate_blocks(n, rid, 0), n)
        self.assertEqual({tr.page_of(b) for b in table["r"] + table["x"]}, {0})
        self.assertEqual({tr.page_of(b) for b in table["y"] + table["z"]}, {1})
        c.free_blocks("x")                  # 4 free ids on page 0
        c.free_blocks("z")                  # and 4 on page 1, freed last
        self.assertEqual(tr.page_of(next(c._block_manager._uninit_block_ids.upcoming())), 1)
        # a new request (no last block) is handed one of page 1's
        self.assertEqual(c.allocate_blocks(1, "n", 0), 1)
        self.assertEqual(tr.page_of(table["n"][0]), 1)
        # r, its last block on page 0, gets page 0's: one, then three at once
        self.assertEqual(c.allocate_blocks(1, "r", 0), 1)
        self.assertEqual(tr.page_of(table["r"][-1]), 0)
        self.assertEqual(c.allocate_blocks(3, "r", 0), 3)
        self.assertEqual([tr.page_of(b) for b in table["r"][-3:]], [0, 0, 0])
        self.assertEqual(sorted(table["r"][60:]), [60, 61, 62, 63])
        # page 0 is full: r's next comes from the other page with claims
        self.assertEqual(c.allocate_blocks(1, "r", 0), 1)
        self.assertEqual(tr.page_of(table["r"][-1]), 1)
        self.assertEqual(tr.mapped, 60 + 60 + 1 + 5)

    def test_one_allocation_stays_on_one_page(self):
        """The ids of one allocation are taken from the page of the id
        before while it has free ids, even where the free list alternates
        between pages (blocks freed one by one, as requests finish here
        and there): a prefill's blocks lie on one page, not on every page
        the list runs through (in the list's order they would be 127, 63,
        126, 62: two pages). What the adapter checks and maps ahead
        (upcoming) is what the allocation then takes."""
        c, tr = self.make(num_blocks=256, layers=2)
        bm = c._block_manager
        self.assertEqual(bm.get_free_blocks(256, None, False, 0), list(range(256)))
        # pages 0 and 1 freed, their ids in turn, one request's at a time
        # (pages 2 and 3 stay held)
        for b in [b for pair in zip(range(64), range(64, 128)) for b in pair]:
            bm.free_blocks([b], shareable=False)
        free = bm._uninit_block_ids
        self.assertEqual(list(itertools.islice(free, 4)), [127, 63, 126, 62])
        coming = list(itertools.islice(free.upcoming(), 4))
        self.assertEqual(c.allocate_blocks(4, "r", 0), 4)
        got = c.group_cache_managers[0].block_table["r"]
        self.assertEqual(got, coming)
        self.assertEqual(got[0], 127)
        self.assertEqual([tr.page_of(b) for b in got], [1, 1, 1, 1])
        self.assertEqual(tr.mapped, 128 + 4)
        self.assertEqual(len(bm._uninit_block_ids), 128 - 4)

    def paged_engine(self, num_blocks=256, padding=False):
        """A cache of num_blocks blocks (64 a 2 MiB page), its tracker, and
        a processor over it as admitting_api's, with transformers 5.17's
        offloading manager and a scheduler keeping its active requests in
        admission order: (cache, tracker, processor, the ask fake_ask
        reads, a FallingAsk)."""
        c, tr = self.make(num_blocks=num_blocks, layers=2, padding=padding)
        asked = FallingAsk([0])

        class Scheduler:
            def __init__(self):
                self.active_requests = collections.OrderedDict()
                self.waiting_requests, self.starved_requests = {}, []
                self.block_new_requests = False

        ContinuousBatchProcessor = patched(admitting_api(Scheduler, OffloadingManager517))
        self.fake_ask(asked)
        return c, tr, ContinuousBatchProcessor(c), asked

    def lay_out(self, proc, plan):
        """Run the requests of plan (pairs of a request id and a number of
        blocks it takes, in the order taken) as decoding requests."""
        class Request:
            def __init__(self, rid):
                self.request_id, self.tokens_to_process = rid, list(range(60))
                self.remaining_prefill_tokens, self.blocks = [], 0

        active = proc.scheduler.active_requests
        for rid, n in plan:
            state = active.setdefault(rid, Request(rid))
            self.assertEqual(proc.cache.allocate_blocks(n, rid, 0), n)
            state.blocks += n

    def sharers(self, c, tr):
        """{page index: the ids of the requests with blocks on it}."""
        on = {}
        for rid, ids in c.group_cache_managers[0].block_table.items():
            for b in ids:
                on.setdefault(tr.page_of(b), set()).add(rid)
        return on

    def shared_on(self):
        """The engine taken as sharing its budget with other processes, for
        this test only (a stand-in for share_members above 1)."""
        self.addCleanup(setattr, transformers_cb, "_shared", transformers_cb._shared)
        transformers_cb._shared = lambda proc: True

    def pack_on(self):
        """KVSHIM_CB_PACK on for this test only, and the engine taken as
        sharing its budget with other processes (these tests stand in for
        kvshim's asks; see test_packing_needs_others_sharing)."""
        self.addCleanup(transformers_cb._pack_setting.__setitem__, slice(None),
                        list(transformers_cb._pack_setting))
        transformers_cb._pack_setting[:] = [True]
        self.addCleanup(setattr, transformers_cb, "_shared", transformers_cb._shared)
        transformers_cb._shared = lambda proc: True

    def a_page_to_pack(self):
        """A paged engine whose requests a (16 blocks, page 0) and d (24,
        page 1) are left, b and c finished, with what it states unused
        captured: (cache, tracker, processor, ask, statements)."""
        c, tr, proc, asked = self.paged_engine()
        self.lay_out(proc, [("a", 16), ("b", 48), ("c", 40), ("d", 24)])
        self.finish(c, proc, ("b", "c"))
        self.assertEqual(self.sharers(c, tr), {0: {"a"}, 1: {"d"}})
        stated = []
        self.capture_unused(stated)
        return c, tr, proc, asked, stated

    def test_packing_needs_others_sharing(self):
        """KVSHIM_CB_PACK on (its default: unset here) packs only when other
        processes share the engine's budget, as kvshim's stats tell it
        (share_members above 1): alone (these tests' kvshim shares nothing,
        and alone under a shared budget is the same), the engine neither
        plans nor states packing's pages, and its cushion is the one it had
        before packing was on: a (16 blocks, page 0) and d (24, page 1),
        whose page 0 packing would empty and whose free ids would cover the
        cushion of 8 (see
        test_packing_engine_cushion_comes_from_its_pages_first), state
        nothing unused and the whole cushion. The look is kept on the cache
        and read again after SHARED_EVERY seconds; the stats fields are read
        through the real library in processes of their own, under
        KVSHIM_SHARE (alone, then with another process in the pool) and
        without."""
        env = dict(os.environ)
        env.pop("KVSHIM_CB_PACK", None)
        patch = unittest.mock.patch.dict(os.environ, env, clear=True)
        patch.start()
        self.addCleanup(patch.stop)
        self.addCleanup(transformers_cb._pack_setting.__setitem__, slice(None),
                        list(transformers_cb._pack_setting))
        transformers_cb._pack_setting[:] = []
        # (no read goes stale on its own while the test runs, however slow
        # the machine: the test ages the one kept on the cache itself)
        every = unittest.mock.patch.object(transformers_cb, "SHARED_EVERY", 3600.0)
        every.start()
        self.addCleanup(every.stop)
        c, tr, proc, asked, stated = self.a_page_to_pack()
        looks = []
        for name in ("pack_plan", "free_after_plan"):
            orig = getattr(tr, name)
            setattr(tr, name, lambda *a, _o=orig, _n=name, **k: looks.append(_n) or _o(*a, **k))
        proc.max_batch_tokens = 8 * c.block_size
        self.assertEqual(kvshim.stats()["share_budget_bytes"], 0)
        self.assertTrue(transformers_cb._pack_on())
        self.assertFalse(transformers_cb._packs(proc))
        self.assertIs(c.kvshim_shared, False)   # kept on the cache
        self.assertEqual(transformers_cb._cushion(proc), 8)
        transformers_cb._state_unused(proc, tr, fresh=True)
        self.assertEqual(stated[-1] if stated else 0, 0)
        self.assertEqual(looks, [])
        # the same engine taken as sharing: the look, the page, no cushion
        members = [2]
        stats = kvshim.Group.stats
        self.addCleanup(setattr, kvshim.Group, "stats", stats)
        kvshim.Group.stats = lambda g: dict(stats(g), share_members=members[0])
        self.assertFalse(transformers_cb._packs(proc))   # not read again yet
        c.kvshim_shared_at -= transformers_cb.SHARED_EVERY
        self.assertTrue(transformers_cb._packs(proc))
        self.assertEqual(transformers_cb._cushion(proc), 0)
        transformers_cb._state_unused(proc, tr, fresh=True)
        self.assertEqual(stated[-1], tr.page_index_bytes)
        self.assertIn("pack_plan", looks)
        # alone again under a shared budget (the others gone): as alone
        members[0] = 1
        c.kvshim_shared_at -= transformers_cb.SHARED_EVERY
        self.assertFalse(transformers_cb._packs(proc))
        self.assertEqual(transformers_cb._cushion(proc), 8)
        # kvshim's stats: the budget and the processes under KVSHIM_SHARE,
        # alone and with another in the pool; 0 and 0 without
        pool = POOL + "b"
        self.addCleanup(_remove_segments, pool)
        show = "import kvshim; s = kvshim.stats(); print(s['share_budget_bytes'], s['share_members'])"
        env = dict(os.environ, KVSHIM_BUDGET="64M", KVSHIM_POOL=pool)

        def figures(share):
            out = subprocess.run([sys.executable, "-c", show], env=dict(env, KVSHIM_SHARE=share),
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stderr)
            return [int(x) for x in out.stdout.split()]
        self.assertEqual(figures("on"), [64 * MIB, 1])
        self.assertEqual(figures("off"), [0, 0])
        with subprocess.Popen(
                [sys.executable, "-c", "import sys, kvshim; kvshim.stats(); print(1, flush=True); "
                 "sys.stdin.read()"], env=dict(env, KVSHIM_SHARE="on"),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as other:
            try:
                self.assertEqual(other.stdout.readline().strip(), "1")
                self.assertEqual(figures("on"), [64 * MIB, 2])
            finally:
                other.stdin.close()
                try:
                    other.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    other.kill()
        # once it has ended, its slot is reaped: alone again
        self.assertEqual(other.returncode, 0)
        self.assertEqual(figures("on"), [64 * MIB, 1])

    def rows(self, c, t, b, fill=None):
        """Block b's rows in tensor t of cache c: written with fill (bytes
        of a row, each row its own) when given; returns their bytes."""
        n = t.row_elems * t.elem
        cu = ctypes.CDLL("libcuda.so.1")
        cu.cuMemcpyHtoD_v2.argtypes = [ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t]
        cu.cuMemcpyDtoH_v2.argtypes = [ctypes.c_char_p, ctypes.c_uint64, ctypes.c_size_t]
        addr, size = t.addr + b * c.block_size * n, c.block_size * n
        if fill is not None:
            self.assertEqual(cu.cuMemcpyHtoD_v2(addr, fill, size), 0)
        out = ctypes.create_string_buffer(size)
        self.assertEqual(cu.cuMemcpyDtoH_v2(out, addr, size), 0)
        return out.raw

    def mark(self, c, blocks):
        """Write in every row of these blocks, in every KV tensor, bytes
        that tell the tensor, block and row apart: {(tensor, block): rows}."""
        marks = {}
        for k, t in enumerate(c.key_cache + c.value_cache):
            n = t.row_elems * t.elem
            for b in blocks:
                fill = b"".join(("%d/%d/%d;" % (k, b, r)).encode().ljust(n, b".")
                                for r in range(c.block_size))
                marks[(k, b)] = self.rows(c, t, b, fill)
        return marks

    def two_half_pages(self):
        """A paged engine (see paged_engine) whose two requests a and d hold
        32 blocks each, on pages 0 and 1, once b and c, their neighbours
        there, finished: (cache, tracker, processor, ask)."""
        c, tr, proc, asked = self.paged_engine()
        self.lay_out(proc, [("a", 32), ("b", 32), ("c", 32), ("d", 32)])
        self.assertEqual(self.sharers(c, tr), {0: {"a", "b"}, 1: {"c", "d"}})
        self.finish(c, proc, ("b", "c"))
        self.assertEqual(self.sharers(c, tr), {0: {"a"}, 1: {"d"}})
        return c, tr, proc, asked

    def finish(self, c, proc, rids):
        """These requests finish: their blocks go back to the free list."""
        for rid in rids:
            del proc.scheduler.active_requests[rid]
            c.free_blocks(rid)

    def stray(self, c, tr, page):
        """A free id on page taken and backed outside any block table (as
        a block backed ahead would be)."""
        free = c._block_manager._uninit_block_ids
        ids = free.take_ids([next(b for b in free if tr.page_of(b) == page)])
        self.assertTrue(tr.take(ids))

    def asked_what_it_states(self, proc, tr):
        """A pass states one page index unused; kvshim then asks for what
        the engine states, and a second pass runs. Returns the statements."""
        stated = []
        self.capture_unused(stated)
        time.sleep(0.11)
        proc.prepare_next_batch()
        self.assertEqual(stated[-1], tr.page_index_bytes)
        self.patch_group("share_asked", lambda: stated[-1])
        time.sleep(0.01)
        proc.prepare_next_batch()
        return stated

    def test_asked_engine_packs_its_blocks_and_preempts_nobody(self):
        """With KVSHIM_CB_PACK on, the pages that moving its blocks in use
        would empty are stated unused, and asked for one page index, the
        engine moves a's 32 blocks off page 0 (the fewest to move; a tie
        goes to the lower page) onto page 1's free ids: their KV rows are
        copied, a's block table and the block records name the new ids,
        page 0 goes back, and nobody is preempted (without it, a would be:
        see test_asked_engine_empties_the_least_shared_page)."""
        self.pack_on()
        c, tr, proc, asked = self.two_half_pages()
        bm, table = c._block_manager, c.group_cache_managers[0].block_table
        stated = []
        self.capture_unused(stated)
        self.assertEqual(tr.pack_plan(bm._init_block_ids), [(0, 32)])
        transformers_cb._state_unused(proc, tr, fresh=True)
        self.assertEqual(stated[-1], tr.page_index_bytes)
        before = list(table["a"])
        marks = self.mark(c, before)
        asked[0] = tr.page_index_bytes
        time.sleep(0.01)
        transformers_cb._give_back(proc, tr)
        self.assertEqual((proc.offloading_manager.evicted, tr.preempted), ([], 0))
        self.assertEqual((tr.moved, tr.packed_pages), (32, 1))
        self.assertEqual(sorted(tr._claims), [1])
        self.assertEqual(self.sharers(c, tr), {1: {"a", "d"}})
        tensors = c.key_cache + c.value_cache
        for old, new in zip(before, table["a"]):
            for k, t in enumerate(tensors):
                self.assertEqual(self.rows(c, t, new), marks[(k, old)])
            self.assertNotIn(old, bm._id_to_block)
            self.assertEqual(bm._id_to_block[new].id, new)
        self.assertEqual(stated[-1], 0)             # nothing more to pack
        for rid in ("a", "d"):
            c.free_blocks(rid)
        self.assertEqual((tr._claims, tr.mapped), ({}, 0))

    def test_pages_stated_for_packing_are_asked_and_packed(self):
        """kvshim asks for the pages the engine states unused: with
        KVSHIM_CB_PACK, the page moving a's blocks would empty is stated,
        asked for at the next pass, and packed; then nothing is stated and
        nobody was preempted. (Before, the prefix cache's look at the ask
        stated the pages afresh without it, and the ask was gone before the
        engine could pack.)"""
        self.pack_on()
        c, tr, proc, _ = self.two_half_pages()
        stated = self.asked_what_it_states(proc, tr)
        self.assertEqual((tr.moved, tr.packed_pages, stated[-1]), (32, 1, 0))
        self.assertEqual((tr.preempted, proc.offloading_manager.evicted), (0, []))
        self.assertEqual(self.sharers(c, tr), {1: {"a", "d"}})

    def test_pages_packing_cannot_empty_preempt_nobody(self):
        """A page with a block no table names is not stated for packing;
        one that gets such a block after it was stated (the statement is
        up to a second old) and is then asked for: the statement is taken
        back and the ask read again, and nobody is preempted for it.
        (Before, the ask for it went on to preempt a.)"""
        self.pack_on()
        c, tr, proc, _ = self.paged_engine()
        self.lay_out(proc, [("a", 16), ("b", 48), ("c", 32), ("d", 32)])
        self.finish(c, proc, ("b", "c"))
        stated = []
        self.capture_unused(stated)
        transformers_cb._state_unused(proc, tr, fresh=True)
        self.assertEqual(stated[-1], tr.page_index_bytes)       # page 0: a's 16
        self.stray(c, tr, 0)
        self.assertEqual(tr.pack_plan({}), [(0, 17)])
        self.patch_group("share_asked", lambda: stated[-1])
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertEqual((tr.moved, tr.preempted, proc.offloading_manager.evicted), (0, 0, []))
        self.assertEqual(stated[-1], 0)
        transformers_cb._state_unused(proc, tr, fresh=True)     # and not stated again
        self.assertEqual(stated[-1], 0)

    def test_a_failed_copy_moves_nothing_and_preempts_nobody(self):
        """A copy that fails (out of memory on the GPU) leaves every block
        where it was and frees the ids taken for the move; what the ask
        wanted of packing is taken back from the statement, and nobody is
        preempted for it (without that, the ask for the stated page went
        on to preempt a)."""
        self.pack_on()
        c, tr, proc, _ = self.two_half_pages()
        table = c.group_cache_managers[0].block_table
        before, mapped = {r: list(b) for r, b in table.items()}, tr.mapped

        def fail(proc, pairs):
            raise RuntimeError("CUDA out of memory")
        real = transformers_cb._copy_blocks
        transformers_cb._copy_blocks = fail
        self.addCleanup(setattr, transformers_cb, "_copy_blocks", real)
        err = io.StringIO()
        with redirect_stderr(err):
            stated = self.asked_what_it_states(proc, tr)
        self.assertIn("blocks not moved (CUDA out of memory)", err.getvalue())
        self.assertEqual((tr.moved, tr.preempted, proc.offloading_manager.evicted), (0, 0, []))
        self.assertEqual(({r: list(b) for r, b in table.items()}, tr.mapped), (before, mapped))
        self.assertIn(0, stated)

    def test_packing_engine_cushion_comes_from_its_pages_first(self):
        """The cushion an engine with requests states (one step's prefill
        above the margin) is covered first, with KVSHIM_CB_PACK, by the
        free ids on its pages that packing leaves, and packing keeps the
        cushion's worth: a (16 blocks, page 0) and d (24, page 1) leave 88
        free ids; with a cushion of 8, a's page is stated unused (its 16
        blocks fit in page 1's 40, 24 left), the cushion is stated as none,
        and asked, the engine packs a's page and still states none. Then
        its 24 free ids cover that much of a larger cushion: one of 30 is
        stated as 6, one of 100 as 76."""
        self.pack_on()
        c, tr, proc, asked, stated = self.a_page_to_pack()
        proc.max_batch_tokens = 8 * c.block_size
        self.assertEqual(transformers_cb._cushion_blocks(proc), 8)
        self.assertEqual(transformers_cb._cushion(proc), 0)
        transformers_cb._state_unused(proc, tr, fresh=True)
        self.assertEqual(stated[-1], tr.page_index_bytes)
        asked[0] = tr.page_index_bytes
        time.sleep(0.01)
        self.assertEqual(transformers_cb._pack(proc, tr), 1)
        self.assertEqual((self.sharers(c, tr), tr.free_on_pages()), ({1: {"a", "d"}}, 24))
        self.assertEqual((transformers_cb._cushion(proc), stated[-1]), (0, 0))
        proc.max_batch_tokens = 30 * c.block_size
        self.assertEqual(transformers_cb._cushion(proc), 6)
        proc.max_batch_tokens = 100 * c.block_size
        self.assertEqual(transformers_cb._cushion(proc), 76)

    def test_packing_cushion_looks_at_the_pages_once_a_tenth_of_a_second(self):
        """The cushion is read at every pass, and its look at what packing
        leaves goes over the prefix cache (milliseconds for a large one):
        taken again only after 0.1 s (an hour in this test), for another
        cushion, or once blocks were released or moved."""
        self.pack_on()
        c, tr, proc, _ = self.two_half_pages()
        proc.max_batch_tokens = 8 * c.block_size
        tr.PLAN_LOOK_S = 3600.0         # (a loaded machine's pauses do not count)
        looks = []
        plan = tr._plan
        tr._plan = lambda cached, keep: looks.append(keep) or plan(cached, keep)
        for _ in range(3):
            transformers_cb._cushion(proc)
        self.assertEqual(looks, [8])
        tr.stale()
        transformers_cb._cushion(proc)
        proc.max_batch_tokens = 9 * c.block_size
        transformers_cb._cushion(proc)
        self.assertEqual(looks, [8, 8, 9])

    def test_packable_page_behind_one_it_cannot_name_is_packed(self):
        """Asked for one page, the engine packs the first page of the plan
        whose every block in use a table names: page 0 has the fewest (a's
        4 and a block no table names) but cannot be emptied, so page 1
        (d's 10) goes. (Before, the plan was cut to the ask first, and
        only page 0 was looked at.)"""
        self.pack_on()
        c, tr, proc, asked = self.paged_engine()
        self.lay_out(proc, [("a", 4), ("b", 60), ("d", 10), ("f", 54), ("e", 30)])
        self.finish(c, proc, ("b", "f"))
        self.stray(c, tr, 0)
        self.assertEqual(self.sharers(c, tr), {0: {"a"}, 1: {"d"}, 2: {"e"}})
        self.assertEqual(tr.pack_plan({}), [(0, 5), (1, 10)])
        asked[0] = tr.page_index_bytes
        time.sleep(0.01)
        self.assertEqual(transformers_cb._pack(proc, tr), 1)
        self.assertEqual((tr.moved, sorted(tr._claims)), (10, [0, 2]))

    def test_pack_plan_moves_only_what_fits_and_what_it_can_name(self):
        """Pages go in the plan fewest blocks in use first while those
        blocks fit in the free ids of the pages left (each page taken
        leaves its own free ids out), never one only the prefix cache
        claims (that one is stated unused as it is); and _pack leaves a
        page with a block no table names (backed ahead), asking nothing
        of the rest. Here: a 40 and b 8 on page 0 (16 free), c 60 on page
        1 (4 free), d 20 on page 2 (44 free)."""
        self.pack_on()
        c, tr, proc, asked = self.paged_engine()
        bm = c._block_manager
        self.lay_out(proc, [("a", 40), ("b", 8), ("e", 16), ("c", 60), ("f", 4), ("d", 20),
                            ("g", 44), ("p", 16)])
        self.finish(c, proc, ("e", "f", "g"))
        # p finished: its 16 blocks stay in the prefix cache, alone on page 3
        del proc.scheduler.active_requests["p"]
        bm.free_blocks(c.group_cache_managers[0].block_table.pop("p"), shareable=True,
                       complete=True)
        self.assertEqual(self.sharers(c, tr), {0: {"a", "b"}, 1: {"c"}, 2: {"d"}})
        self.assertEqual(list(tr.cache_only_pages(bm._init_block_ids)), [3])
        # d's 20 fit in pages 0 and 1's 20 free ids; then a and b's 48 do
        # not fit in page 1's 4; page 3 is not in the plan; keeping a free
        # id on the pages left, nothing fits
        self.assertEqual(tr.pack_plan(bm._init_block_ids), [(2, 20)])
        self.assertEqual(tr.free_after_plan(bm._init_block_ids), 0)
        self.assertEqual(tr.pack_plan(bm._init_block_ids, keep=1), [])
        self.assertEqual(tr.free_after_plan(bm._init_block_ids, keep=1), 16 + 4 + 44)
        # a free id on page 2 backed ahead: page 2's claims are not all
        # named, and nothing moves
        spare = next(b for b in tr.near_ids(c.group_cache_managers[0].block_table["d"][0]))
        tr.ahead([spare])
        tr._settle()
        asked[0] = tr.page_index_bytes
        time.sleep(0.01)
        self.assertEqual(transformers_cb._pack(proc, tr), 0)
        self.assertEqual((tr.moved, sorted(tr._claims)), (0, [0, 1, 2, 3]))
        tr.ahead([])
        tr._settle()
        self.assertEqual(transformers_cb._pack(proc, tr), 1)
        self.assertEqual((tr.moved, sorted(tr._claims)), (20, [0, 1, 3]))
        self.assertEqual(self.sharers(c, tr), {0: {"a", "b", "d"}, 1: {"c", "d"}})

    def test_moved_blocks_keep_their_records(self):
        """A moved block's id changes wherever it is named: in every block
        table (a prefix block two requests share), its record, the hash
        table's entry, and its child's parent id."""
        bm = StandInBlockManager(8)
        bm._id_to_block = {1: types.SimpleNamespace(id=1, parent_id=None, hash=11),
                           2: types.SimpleNamespace(id=2, parent_id=1, hash=None),
                           5: types.SimpleNamespace(id=5, parent_id=None, hash=55)}
        bm._hash_to_id = {11: 1, 55: 5}
        x, y = [1, 2], [1, 3]
        spots = {1: [(x, 0), (y, 0)], 2: [(x, 1)]}
        transformers_cb._rename_blocks(bm, spots, {1: 6, 2: 7})
        self.assertEqual((x, y), ([6, 7], [6, 3]))
        self.assertEqual(sorted(bm._id_to_block), [5, 6, 7])
        self.assertEqual([(r.id, r.parent_id) for r in map(bm._id_to_block.get, (6, 7))],
                         [(6, None), (7, 6)])
        self.assertEqual(bm._hash_to_id, {11: 6, 55: 5})

    def test_asked_engine_empties_the_least_shared_page(self):
        """kvshim asks for pages, and a page goes back only when no block
        on it is used: asked for one page index, the engine preempts the
        requests on the page the fewest requests share (newest first), and
        that page goes back. Here page 1 holds blocks of a and b only,
        pages 0 and 2 of four and three requests; preempted newest first
        (before the change), d then c (80 blocks, more than the ask's 64)
        would have gone and no page with them: the ask would stay, and
        more requests would go the next second."""
        c, tr, proc, asked = self.paged_engine()
        self.lay_out(proc, [("a", 16), ("b", 16), ("c", 16), ("d", 16), ("a", 32),
                            ("b", 32), ("b", 8), ("c", 24), ("d", 24)])
        self.assertEqual(self.sharers(c, tr), {0: {"a", "b", "c", "d"}, 1: {"a", "b"},
                                               2: {"b", "c", "d"}})
        cached = kvshim.stats()["cached_bytes"]
        asked[0] = tr.page_index_bytes
        time.sleep(0.01)
        proc.prepare_next_batch()
        om, sched = proc.offloading_manager, proc.scheduler
        self.assertEqual(om.evicted, ["b", "a"])
        self.assertEqual(list(sched.active_requests), ["c", "d"])
        self.assertEqual(sched.starved_requests, [])
        self.assertEqual(tr.preempted, 2)
        self.assertNotIn(1, tr._claims)                  # page 1 goes back
        self.assertEqual(kvshim.stats()["cached_bytes"] - cached, tr.page_index_bytes)
        self.assertEqual(sorted(tr._claims), [0, 2])
        # what it gave covers the ask: nothing more within the second
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertEqual(om.evicted, ["b", "a"])

    def test_tensor_parallel_rank_preempts_the_newest(self):
        """Under tensor parallelism every rank must preempt the same
        requests (their batches would differ, and the group's collectives
        hang), and a rank's pages are its own: the choice by page is off,
        and the newest go, as on every rank. The layout is the one above,
        where the choice by page takes b and a."""
        c, tr, proc, asked = self.paged_engine()
        proc.distributed_helper = types.SimpleNamespace(tp_size=2)
        self.lay_out(proc, [("a", 16), ("b", 16), ("c", 16), ("d", 16), ("a", 32),
                            ("b", 32), ("b", 8), ("c", 24), ("d", 24)])
        asked[0] = tr.page_index_bytes
        time.sleep(0.01)
        self.assertEqual(transformers_cb._victims(proc, tr), [])
        proc.prepare_next_batch()
        self.assertEqual(proc.offloading_manager.evicted, ["d", "c"])
        self.assertEqual(list(proc.scheduler.active_requests), ["a", "b"])

    def test_asked_engine_keeps_a_request_when_every_page_is_shared(self):
        """Emptying a page never takes every active request (the engine
        would stop): where every page holds blocks of every request, no
        page is chosen, and preempting newest first leaves the oldest
        running however much is asked."""
        c, tr, proc, asked = self.paged_engine()
        self.lay_out(proc, [("x", 22), ("y", 21), ("z", 21), ("x", 22), ("y", 21),
                            ("z", 21)])
        self.assertEqual(self.sharers(c, tr), {0: {"x", "y", "z"}, 1: {"x", "y", "z"}})
        asked[0] = 4 * tr.page_index_bytes
        time.sleep(0.01)
        self.assertEqual(transformers_cb._victims(proc, tr), [])
        proc.prepare_next_batch()
        self.assertEqual(proc.offloading_manager.evicted, ["z", "y"])
        self.assertEqual(list(proc.scheduler.active_requests), ["x"])
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertEqual(list(proc.scheduler.active_requests), ["x"])
        self.assertEqual(tr.mapped, 44)

    def test_asks_counted_for_reports(self):
        """What kvshim's asks cost an engine, for colocate's tables: how
        many asks began (asks), how long they lasted in all and at most
        (asked_s, ask_worst: from the read that saw one begin to the read
        that saw it end), the passes whose waiting requests an ask kept
        out (kept_out), and the asks that found no page to empty
        (no_page): here every page holds blocks of every request."""
        c, tr, proc, asked = self.paged_engine()
        self.lay_out(proc, [("a", 16), ("b", 16), ("a", 48), ("b", 48)])
        self.assertEqual(self.sharers(c, tr), {0: {"a", "b"}, 1: {"a", "b"}})
        self.assertEqual((tr.asks, tr.asked_s, tr.kept_out, tr.no_page), (0, 0.0, 0, 0))
        proc.scheduler.waiting_requests["w"] = object()
        asked[0] = tr.page_index_bytes
        time.sleep(0.01)
        transformers_cb._admission(proc, tr)
        self.assertTrue(proc.scheduler.block_new_requests)
        self.assertEqual((tr.asks, tr.kept_out), (1, 1))
        self.assertEqual(transformers_cb._victims(proc, tr), [])
        self.assertEqual(tr.no_page, 1)
        time.sleep(0.05)
        transformers_cb._admission(proc, tr)
        self.assertEqual((tr.asks, tr.kept_out, tr.asked_s), (1, 2, 0.0))
        self.assertEqual(transformers_cb._victims(proc, tr), [])
        self.assertEqual(tr.no_page, 1)                 # once an ask
        asked[0] = 0
        time.sleep(0.01)
        transformers_cb._admission(proc, tr)
        self.assertFalse(proc.scheduler.block_new_requests)
        self.assertEqual((tr.asks, tr.kept_out), (1, 2))
        self.assertGreaterEqual(tr.asked_s, 0.06)
        self.assertEqual(tr.ask_worst, tr.asked_s)
        first = tr.asked_s
        # no ask: no page sought, none counted
        self.assertEqual(transformers_cb._victims(proc, tr), [])
        self.assertEqual(tr.no_page, 1)
        # a second, shorter ask
        asked[0] = tr.page_index_bytes
        time.sleep(0.01)
        tr.asked()
        asked[0] = 0
        time.sleep(0.01)
        tr.asked()
        self.assertEqual(tr.asks, 2)
        self.assertAlmostEqual(tr.ask_worst, max(first, tr.asked_s - first))
        self.assertGreater(tr.asked_s, first)

    def test_victims_free_the_page_of_prefix_blocks_and_skip_pages_held_ahead(self):
        """A page chosen for the ask goes back only if nothing on it stays
        claimed: the prefix cache's blocks there (complete blocks no
        request uses) are released with its requests, back to the free
        list; and a page with a block neither a request nor the cache
        holds (backed ahead for the next prefill) is never chosen:
        preempting its requests would not empty it. (_give_back drops the
        prefix cache before choosing victims: _victims is called alone.)"""
        c, tr, proc, asked = self.paged_engine()
        bm = c._block_manager
        self.lay_out(proc, [("a", 16), ("b", 16), ("c", 16), ("d", 16), ("a", 24),
                            ("p", 8), ("b", 32), ("b", 8), ("c", 24), ("d", 24)])
        # p finished: its complete blocks stay in the prefix cache
        del proc.scheduler.active_requests["p"]
        prefix = c.group_cache_managers[0].block_table.pop("p")
        bm.free_blocks(prefix, shareable=True, complete=True)
        self.assertEqual(sorted(bm._init_block_ids), sorted(prefix))
        self.assertEqual(self.sharers(c, tr), {0: {"a", "b", "c", "d"}, 1: {"a", "b"},
                                               2: {"b", "c", "d"}})
        self.assertEqual({tr.page_of(b) for b in prefix}, {1})
        self.assertEqual(tr._claims[1], 64)
        mapped = tr.mapped
        asked[0] = tr.page_index_bytes
        time.sleep(0.01)
        self.assertEqual(transformers_cb._victims(proc, tr), ["b", "a"])
        self.assertEqual(bm._init_block_ids, {})
        self.assertEqual(sorted(b for b in bm._uninit_block_ids if b in prefix), sorted(prefix))
        self.assertEqual(tr.mapped, mapped - 8)
        self.assertEqual(tr.dropped, 8)
        self.assertEqual(tr._claims[1], 24 + 32)         # a's and b's only
        # a free id on page 1 backed ahead: page 1 cannot be emptied, and
        # page 2 (b, c, d) is the fewest shared of the others
        spare = next(b for b in bm._uninit_block_ids if tr.page_of(b) == 1)
        tr.ahead([spare])
        tr._settle()
        self.assertEqual(tr._claims[1], 24 + 32 + 1)
        self.assertEqual(transformers_cb._victims(proc, tr), ["d", "c", "b"])
        tr.ahead([])                                     # released: page 1 again
        tr._settle()
        self.assertEqual(transformers_cb._victims(proc, tr), ["b", "a"])

    def test_pages_emptied_for_an_ask_count_once(self):
        """The ask falls as each page the engine empties goes back; what
        emptied it is not counted as given back again. Asked for three
        page indices, the engine preempts a and b (a page each); the ask,
        read afresh, is one page, and the newest request goes for it (its
        blocks share page 2 with c, the last active one, which stays).
        Counted twice, as before, a and b's pages covered the whole ask."""
        self.hold_off_long()
        c, tr, proc, asked = self.paged_engine()
        self.lay_out(proc, [("a", 64), ("b", 64), ("c", 32), ("d", 32)])
        self.assertEqual(self.sharers(c, tr), {0: {"a"}, 1: {"b"}, 2: {"c", "d"}})
        asked[0] = 3 * tr.page_index_bytes
        time.sleep(0.01)
        emptied = tr.emptied
        transformers_cb._give_back(proc, tr)
        self.assertEqual(proc.offloading_manager.evicted, ["b", "a", "d"])
        self.assertEqual(list(proc.scheduler.active_requests), ["c"])
        self.assertEqual(tr.emptied - emptied, 2)
        self.assertEqual(sorted(tr._claims), [2])
        # d's 32 blocks emptied no page: they hold off half of the rest of the
        # ask, and c, the last active request, stays
        self.assertEqual(tr.owed(), tr.page_index_bytes - 32 * tr.bytes_per_block)

    def test_prefix_blocks_that_empty_no_page_are_kept(self):
        """Asked for a page index by an engine whose prefix cache lies on
        pages both its requests also hold: no page can be emptied without
        preempting both, so the newest goes, and the prefix cache stays
        (before, its newest 64 blocks were released first, emptying no
        page, and counted as given: nothing was preempted for a second,
        and the next passes released the rest of it for nothing)."""
        c, tr, proc, asked = self.paged_engine()
        bm = c._block_manager
        self.lay_out(proc, [("x", 10), ("y", 10), ("p", 44)] * 3)
        del proc.scheduler.active_requests["p"]
        bm.free_blocks(c.group_cache_managers[0].block_table.pop("p"),
                       shareable=True, complete=True)
        cached = list(bm._init_block_ids)
        self.assertEqual(len(cached), 132)
        self.assertEqual(self.sharers(c, tr), {0: {"x", "y"}, 1: {"x", "y"}, 2: {"x", "y"}})
        self.assertEqual(tr.cache_only_pages(bm._init_block_ids), {})
        asked[0] = tr.page_index_bytes
        time.sleep(0.01)
        for _ in range(3):
            proc.prepare_next_batch()
            time.sleep(0.01)
        self.assertEqual(proc.offloading_manager.evicted, ["y"])
        self.assertEqual(list(bm._init_block_ids), cached)
        self.assertEqual((tr.dropped, tr.preempted), (0, 1))
        self.assertEqual(sorted(tr._claims), [0, 1, 2])
        self.assertGreater(tr.owed(), 0)

    def test_preempted_requests_cached_blocks_go_back_with_their_page(self):
        """A preempted request's complete blocks go to the prefix cache,
        still claimed (transformers 5.17): asked for a page index, the
        engine preempts a, whose page only a held, and the blocks a left
        cached there are released with it: the page goes back and the ask
        ends, and nothing more is preempted for it (before, no page went
        back, and the newest requests went one by one down to the last)."""
        c, tr, proc, asked = self.paged_engine()
        c.complete_on_free = True
        bm = c._block_manager
        self.lay_out(proc, [("a", 64), ("b", 64), ("c", 32), ("d", 32)])
        asked[0] = tr.page_index_bytes
        time.sleep(0.01)
        transformers_cb._give_back(proc, tr)
        self.assertEqual(proc.offloading_manager.evicted, ["a"])
        self.assertEqual(sorted(tr._claims), [1, 2])
        self.assertEqual(dict(bm._init_block_ids), {})
        self.assertEqual(asked.now(), 0)

    def test_preempted_requests_cached_blocks_hold_off_the_next(self):
        """On pages other requests hold, the blocks a preempted request
        left in the prefix cache go to the free list, where the engine
        takes its next blocks, and count as given back: z's 64 make up
        the ask of a page index, and y stays (counted as freeing its one
        incomplete block, y would have gone too)."""
        self.hold_off_long()
        c, tr, proc, asked = self.paged_engine()
        c.complete_on_free = True
        bm = c._block_manager
        self.lay_out(proc, [("x", 16), ("y", 16), ("z", 32)] * 2)
        self.assertEqual(self.sharers(c, tr), {0: {"x", "y", "z"}, 1: {"x", "y", "z"}})
        z = list(c.group_cache_managers[0].block_table["z"])
        asked[0] = tr.page_index_bytes
        time.sleep(0.01)
        transformers_cb._give_back(proc, tr)
        self.assertEqual(proc.offloading_manager.evicted, ["z"])
        self.assertEqual(len(bm._init_block_ids), 0)
        self.assertEqual(sorted(itertools.islice(tr.preferred(), 64)), sorted(z))
        self.assertEqual(sorted(tr._claims), [0, 1])
        self.assertEqual(tr.owed(), 0)

    def test_preempted_request_empties_a_page_the_cache_shares(self):
        """Preempted, v releases its last (incomplete) block and leaves its
        63 complete ones cached: those go, and with them page 0; page 1
        held v's last block and f's cached blocks (f finished), and only
        the cache claims it then: it goes back too, and the ask of two
        page indices ends with v alone preempted."""
        self.hold_off_long()
        c, tr, proc, asked = self.paged_engine()
        c.complete_on_free = True
        self.lay_out(proc, [("v", 64), ("f", 63), ("v", 1), ("x", 32), ("y", 32)])
        self.assertEqual(self.sharers(c, tr), {0: {"v"}, 1: {"f", "v"}, 2: {"x", "y"}})
        c.free_blocks("f")
        del proc.scheduler.active_requests["f"]
        proc.scheduler.active_requests.move_to_end("v")            # the newest
        asked[0] = 2 * tr.page_index_bytes
        time.sleep(0.01)
        while transformers_cb._give_back_one(proc, tr):
            pass
        self.assertEqual(proc.offloading_manager.evicted, ["v"])
        self.assertEqual(sorted(tr._claims), [2])
        self.assertEqual(asked.now(), 0)

    def test_held_off_blocks_on_the_padding_page_stay_held_off(self):
        """With 250 blocks, the last page index holds blocks 192 to 249
        and the padding zone, backed whole (as _kv_from_spans backs it):
        z, alone there, preempted for an ask of its 58 blocks, frees them
        all, and kvshim keeps the page; those blocks hold the next
        preemption off, and c stays."""
        self.hold_off_long()
        c, tr, proc, asked = self.paged_engine(num_blocks=250, padding=True)
        # (the padding page's ids go out first: z takes them, then is made
        # the newest, as if admitted last)
        self.lay_out(proc, [("z", 58), ("a", 64), ("b", 64), ("c", 64)])
        proc.scheduler.active_requests.move_to_end("z")
        self.assertEqual(self.sharers(c, tr)[3], {"z"})
        asked[0] = 58 * tr.bytes_per_block
        time.sleep(0.01)
        while transformers_cb._give_back_one(proc, tr):
            pass
        self.assertEqual(proc.offloading_manager.evicted, ["z"])
        self.assertNotIn(3, tr._claims)
        self.assertEqual(asked.now(), 58 * tr.bytes_per_block)   # the page stayed
        self.assertEqual(tr.owed(), 0)

    def test_a_preemption_after_the_hold_off_starts_a_new_one(self):
        """A preemption after the hold-off's second holds the next off
        from then, even with no look at the ask between."""
        self.hold_off_long()
        c, tr = self.make(num_blocks=256, layers=2)
        bm = c._block_manager
        bm.get_free_blocks(128, None, True, 0)                     # pages 0 and 1
        self.fake_ask([tr.page_index_bytes])
        tr.gave_back(10, on={0: 10})
        tr._held_since -= 2 * tr.HOLD_OFF_S                        # its second is over
        tr.gave_back(30, on={1: 30})
        self.assertEqual(tr.owed(), tr.page_index_bytes - 30 * tr.bytes_per_block)

    def test_preemptions_held_off_hold_no_cache_back(self):
        """What a preemption freed on pages still used holds off the next
        preemption for a second, not the release of the pages only the
        prefix cache claims: asked for a page index within that second,
        the engine releases its cache-only page and preempts nothing."""
        self.hold_off_long()
        c, tr, proc, asked = self.paged_engine()
        bm = c._block_manager
        self.lay_out(proc, [("x", 32), ("y", 32), ("x", 32), ("y", 32), ("p", 64)])
        del proc.scheduler.active_requests["p"]
        bm.free_blocks(c.group_cache_managers[0].block_table.pop("p"),
                       shareable=True, complete=True)
        self.assertEqual(list(tr.cache_only_pages(bm._init_block_ids)), [2])
        asked[0] = tr.page_index_bytes
        time.sleep(0.01)
        # a preemption that freed 32 blocks on each of pages 0 and 1, still claimed
        tr.gave_back(64, on={0: 32, 1: 32})
        self.assertEqual(tr.owed(), 0)
        transformers_cb._give_back(proc, tr)
        self.assertEqual(tr.unused_pages, 1)
        self.assertEqual(sorted(tr._claims), [0, 1])
        self.assertEqual(proc.offloading_manager.evicted, [])
        self.assertEqual(asked.now(), 0)

    def test_preemptions_held_off_hold_no_blocks_backed_ahead_back(self):
        """What a preemption freed on pages still used holds off the next
        preemption for a second, not the release of the blocks backed
        ahead, which costs the engine nothing: asked for a page index
        within that second, with no page only the prefix cache claims, the
        engine releases the page its blocks backed ahead fill alone (the
        ask still stands) and preempts nothing."""
        self.hold_off_long()
        c, tr, proc, asked = self.paged_engine()
        bm = c._block_manager
        self.lay_out(proc, [("x", 32), ("y", 32), ("x", 32), ("y", 32)])
        tr.ahead(list(itertools.islice(bm._uninit_block_ids.upcoming(), 64)))
        tr._settle()
        self.assertEqual({tr.page_of(b) for b in tr._ahead}, {2})
        asked[0] = tr.page_index_bytes
        time.sleep(0.01)
        # a preemption that freed 32 blocks on each of pages 0 and 1, still claimed
        tr.gave_back(64, on={0: 32, 1: 32})
        self.assertEqual(tr.owed(), 0)
        transformers_cb._give_back(proc, tr)
        self.assertEqual(tr._ahead, set())
        self.assertEqual(sorted(tr._claims), [0, 1])
        self.assertEqual(proc.offloading_manager.evicted, [])
        self.assertEqual(asked.now(), 0)

    def packable_four_pages(self):
        """With KVSHIM_CB_PACK on and the hold-off long, an engine of four
        page indices, each with one request left on it: a (16 blocks) on
        page 0, c (16) on 1, d (24) on 2 and g (34) on 3. Returns
        paged_engine's (cache, tracker, processor, ask)."""
        self.pack_on()
        self.hold_off_long()
        c, tr, proc, asked = self.paged_engine()
        self.lay_out(proc, [("a", 16), ("b", 48), ("c", 16), ("e", 48), ("d", 24), ("f", 40),
                            ("g", 34), ("h", 30)])
        self.finish(c, proc, ("b", "e", "f", "h"))
        self.assertEqual(self.sharers(c, tr), {0: {"a"}, 1: {"c"}, 2: {"d"}, 3: {"g"}})
        return c, tr, proc, asked

    def test_preemptions_held_off_hold_no_packing_back(self):
        """What a preemption freed on pages still used holds off the next
        preemption for a second, not packing, which costs the engine no
        work: asked for two page indices within that second, with
        KVSHIM_CB_PACK on, the engine moves the 16 blocks each of a (page 0)
        and c (page 1), the fewest to move, onto the free ids of pages 3
        and 2 (the fullest first); both pages go back, the ask ends, and
        nobody is preempted. (Sized by what the ask owed, less the 70
        blocks held off on pages 2 and 3, packing emptied page 0 alone,
        and the ask stood.)"""
        c, tr, proc, asked = self.packable_four_pages()
        self.assertEqual(tr.pack_plan({}), [(0, 16), (1, 16)])
        asked[0] = 2 * tr.page_index_bytes
        time.sleep(0.01)
        # a preemption that freed 40 blocks on page 2 and 30 on page 3, still claimed
        tr.gave_back(70, on={2: 40, 3: 30})
        self.assertEqual(tr.owed(), 2 * tr.page_index_bytes - 70 * tr.bytes_per_block)
        transformers_cb._give_back(proc, tr)
        self.assertEqual((tr.moved, tr.packed_pages), (32, 2))
        self.assertEqual(sorted(tr._claims), [2, 3])
        self.assertEqual(self.sharers(c, tr), {2: {"c", "d"}, 3: {"a", "c", "g"}})
        self.assertEqual(proc.offloading_manager.evicted, [])
        self.assertEqual(asked.now(), 0)

    def test_preemptions_held_off_past_the_ask_hold_no_packing_back(self):
        """As test_preemptions_held_off_hold_no_packing_back, with more held
        off than the ask (what it owes is nothing from the start): asked
        for one page index within the second after a preemption freed 70
        blocks on pages still used, the engine still packs, moving the 16
        blocks of a (page 0) onto page 3's free ids; page 0 goes back and
        the ask ends. (Packing run while the ask owed, nothing moved and
        the ask stood.)"""
        c, tr, proc, asked = self.packable_four_pages()
        asked[0] = tr.page_index_bytes
        time.sleep(0.01)
        tr.gave_back(70, on={2: 40, 3: 30})
        self.assertEqual(tr.owed(), 0)
        transformers_cb._give_back(proc, tr)
        self.assertEqual((tr.moved, tr.packed_pages), (16, 1))
        self.assertEqual(sorted(tr._claims), [1, 2, 3])
        self.assertEqual(self.sharers(c, tr), {1: {"c"}, 2: {"d"}, 3: {"a", "g"}})
        self.assertEqual(proc.offloading_manager.evicted, [])
        self.assertEqual(asked.now(), 0)

    def test_held_off_blocks_count_while_their_page_is_claimed(self):
        """What preemptions freed on a page still claimed holds off the
        next preemption, per page: once that page empties (and goes back,
        counted in the ask), its blocks hold nothing off any more."""
        self.hold_off_long()
        c, tr = self.make(num_blocks=256, layers=2)
        bm = c._block_manager
        ids = bm.get_free_blocks(128, None, True, 0)               # pages 0 and 1
        self.fake_ask([tr.page_index_bytes])
        tr.gave_back(30, on={0: 10, 1: 20})
        self.assertEqual(tr.owed(), tr.page_index_bytes - 30 * tr.bytes_per_block)
        bm.free_blocks(ids[64:], shareable=False)                   # page 1 empties
        self.assertEqual(sorted(tr._claims), [0])
        self.assertEqual(tr.owed(), tr.page_index_bytes - 10 * tr.bytes_per_block)

    def test_padding_page_never_counts_emptied(self):
        """With 250 blocks, 64 a page, the last page index holds blocks
        192 to 249 and the padding zone, backed outside the group: freeing
        its blocks empties no page (kvshim keeps it), and an ask never
        looks to it; page 2 empties as before."""
        c, tr = self.make(num_blocks=250, layers=2, padding=True)
        bm = c._block_manager
        ids = sorted(bm.get_free_blocks(250, None, True, 0))
        self.assertEqual(sorted(tr._claims), [0, 1, 2, 3])
        emptied = tr.emptied
        bm.free_blocks(ids[192:], shareable=True, complete=True)   # page 3: prefix cache only
        self.assertEqual(tr.cache_only_pages(bm._init_block_ids), {})
        self.assertEqual(tr.owners([("r", ids[:192])], bm._init_block_ids).keys(), {0, 1, 2})
        transformers_cb._uncache(bm, ids[192:], tr, asked=False)
        self.assertNotIn(3, tr._claims)
        self.assertEqual(tr.emptied, emptied)
        bm.free_blocks(ids[128:192], shareable=False)              # page 2
        self.assertEqual(tr.emptied, emptied + 1)

    def test_padding_page_ids_go_out_first_and_count_free(self):
        """With 250 blocks, 64 a page, the last page index holds blocks
        192 to 249 and the padding zone, backed whole: its 58 ids count
        free before any block is claimed, go out first at no map, stay
        first once all are freed again, and are not worth backing ahead."""
        c, tr = self.make(num_blocks=250, layers=2, padding=True)
        bm = c._block_manager
        self.assertEqual(pages(c), 4)
        self.assertEqual(tr.free_on_pages(), 58)
        # (what covers the cushion at no memory cost, packing or not)
        self.assertEqual((tr.free_after_plan({}, 0), tr.free_pinned()), (58, 58))
        self.assertFalse(tr.ahead_worth(200))
        self.assertTrue(tr.ahead_worth(0))
        got = bm.get_free_blocks(10, None, True, 0)
        self.assertTrue(all(192 <= b < 250 for b in got), got)
        self.assertEqual(pages(c), 4)                              # no page mapped
        self.assertEqual(tr.free_on_pages(), 48)
        self.assertEqual(tr.free_pinned(), 48)
        bm.free_blocks(got, shareable=False)
        self.assertNotIn(3, tr._claims)
        self.assertEqual(tr.free_on_pages(), 58)
        self.assertTrue(all(192 <= b < 250 for b in bm.get_free_blocks(5, None, True, 0)))
        self.assertEqual(pages(c), 4)

    def test_padding_page_ids_go_out_before_other_hot_pages(self):
        """The padding page's free ids go out before those of a page made
        hot after it (it never goes back; the other might), in the order
        prefer gives and upcoming names alike."""
        c, tr = self.make(num_blocks=250, layers=2, padding=True)
        bm = c._block_manager
        got = bm.get_free_blocks(58 + 64, None, True, 0)           # the padding page, page 0
        self.assertEqual(sorted(got[:58]), list(range(192, 250)))
        bm.free_blocks(got[:5], shareable=False)                   # the padding page: hot
        bm.free_blocks([got[58]], shareable=False)                 # page 0: hot, after it
        self.assertEqual(tr._hot_stack[-1], 0)
        self.assertTrue(set(itertools.islice(bm._uninit_block_ids.upcoming(), 5))
                        <= set(range(192, 250)))
        self.assertTrue(all(192 <= b < 250 for b in bm.get_free_blocks(5, None, True, 0)))

    def test_padding_page_ids_count_free_at_the_limit(self):
        """At the 64 MiB limit the engine is shown the padding page's free
        ids on top of what kvshim's room backs, and can take them all."""
        c, tr = self.make(num_blocks=4090, layers=4, padding=True)   # 58 ids on its page
        bm = c._block_manager
        room = tr.room()
        n = c.get_num_free_blocks()
        self.assertEqual(n, room + 58)
        self.assertEqual(tr.shown, n)
        got = bm.get_free_blocks(n, None, True, 0)
        self.assertEqual(len(got), n)
        self.assertTrue(set(range(4032, 4090)) <= set(got))
        self.assertEqual(tr.mapped, n)

    def test_emptied_counts_pages_whose_last_claim_went(self):
        """tracker.emptied counts a page index when its last block is
        released, not before."""
        c, tr = self.make(num_blocks=256, layers=2)
        bm = c._block_manager
        ids = bm.get_free_blocks(64, None, True, 0)
        emptied = tr.emptied
        bm.free_blocks(ids[:63], shareable=False)
        self.assertEqual(tr.emptied, emptied)
        bm.free_blocks(ids[63:], shareable=False)
        self.assertEqual(tr.emptied, emptied + 1)

    def test_ask_releases_blocks_backed_ahead_first(self):
        """Blocks backed ahead claim pages no request explains, and the
        pages with free ids (where the next ids come from) are those an
        ask empties soonest: asked, the engine releases them first, and
        the page they held is chosen again."""
        c, tr, proc, asked = self.paged_engine()
        bm = c._block_manager
        self.lay_out(proc, [("a", 16), ("b", 16), ("c", 16), ("d", 16), ("a", 32),
                            ("b", 32), ("b", 8), ("c", 24), ("d", 24)])
        self.assertEqual(self.sharers(c, tr), {0: {"a", "b", "c", "d"}, 1: {"a", "b"},
                                               2: {"b", "c", "d"}})
        a = c.group_cache_managers[0].block_table["a"]     # a's last 8, on page 1
        bm.free_blocks(a[-8:], shareable=False)
        del a[-8:]
        spare = next(b for b in bm._uninit_block_ids if tr.page_of(b) == 1)
        tr.ahead([spare])
        tr._settle()
        asked[0] = tr.page_index_bytes
        time.sleep(0.01)
        transformers_cb._give_back(proc, tr)
        self.assertEqual(tr._ahead, set())
        self.assertEqual(list(proc.scheduler.active_requests), ["c", "d"])
        self.assertEqual(tr.preempted, 2)
        self.assertNotIn(1, tr._claims)

    def test_ask_the_prefix_cache_covers_keeps_the_blocks_backed_ahead(self):
        """Asked for a page index that a page only its prefix cache claims
        makes up, the engine gives that page and keeps the blocks backed
        ahead for its next step: released, they would be backed again at
        the next pass, a row of new pages for every ask. An ask that
        stands after the prefix cache is gone takes them too."""
        c, tr = self.make(num_blocks=4096, layers=4)
        bm = c._block_manager
        asked = [0]
        # (kvshim's ask: one page index while the prefix cache holds one,
        # then while anything is backed ahead)
        self.patch_group("share_asked",
                         lambda: tr.page_index_bytes if (asked[0] == 1 and bm._init_block_ids) or (
                             asked[0] == 2 and tr._ahead) else 0)
        ContinuousBatchProcessor = patched(stand_in_api(lambda self: True))
        proc = ContinuousBatchProcessor(c)
        proc.scheduler = types.SimpleNamespace(active_requests={"a": 1},
                                               waiting_requests={})
        ids = bm.get_free_blocks(64, None, True, 0)
        bm.free_blocks(ids, shareable=True, complete=True)       # page 0: the prefix cache
        spare = list(itertools.islice(bm._uninit_block_ids.upcoming(), 64))
        tr.ahead(spare)
        tr._settle()
        self.assertEqual({tr.page_of(b) for b in tr._ahead}, {1})
        asked[0] = 1
        time.sleep(0.01)
        transformers_cb._give_back(proc, tr)
        self.assertEqual(len(bm._init_block_ids), 0)
        self.assertEqual(tr.unused_pages, 1)
        self.assertEqual(tr._ahead, set(spare))
        self.assertIn(1, tr._claims)
        asked[0] = 2                                              # stands: the rest goes
        time.sleep(0.01)
        transformers_cb._give_back(proc, tr)
        self.assertEqual(tr._ahead, set())
        self.assertNotIn(1, tr._claims)

    def test_ask_takes_a_page_the_prefix_cache_shares_with_blocks_ahead(self):
        """A page index whose claims are the prefix cache's blocks and
        blocks backed ahead (a finished request took the first of the ids
        backed ahead): asked for a page index, an engine with one request
        running (nothing to preempt) releases the blocks backed ahead and
        then that page's cached blocks, which empties it, in one pass, and
        the ask is over."""
        c, tr, proc, asked = self.paged_engine()
        bm = c._block_manager
        self.lay_out(proc, [("a", 64)])                           # page 0
        tr.ahead(list(itertools.islice(bm._uninit_block_ids.upcoming(), 64)))
        tr._settle()
        self.assertEqual({tr.page_of(b) for b in tr._ahead}, {1})
        self.lay_out(proc, [("p", 32)])
        self.assertEqual(self.sharers(c, tr)[1], {"p"})
        del proc.scheduler.active_requests["p"]
        bm.free_blocks(c.group_cache_managers[0].block_table.pop("p"),
                       shareable=True, complete=True)
        self.assertEqual({tr.page_of(b) for b in tr._ahead}, {1})
        self.assertEqual({tr.page_of(b) for b in bm._init_block_ids}, {1})
        asked[0] = tr.page_index_bytes
        time.sleep(0.01)
        transformers_cb._give_back(proc, tr)
        self.assertEqual(tr._ahead, set())
        self.assertEqual(sorted(tr._claims), [0])
        self.assertEqual(proc.offloading_manager.evicted, [])
        self.assertEqual(asked.now(), 0)

    def test_blocks_backed_ahead_count_against_the_ask(self):
        """Blocks backed ahead that fill a page alone: released for an ask
        of one page index, they give it back, and the ask, read afresh, is
        over: no request is preempted for it."""
        c, tr, proc, asked = self.paged_engine()
        bm = c._block_manager
        self.lay_out(proc, [("a", 64), ("b", 64)])
        self.assertEqual(self.sharers(c, tr), {0: {"a"}, 1: {"b"}})
        tr.ahead(list(itertools.islice(bm._uninit_block_ids.upcoming(), 64)))
        tr._settle()
        self.assertEqual({tr.page_of(b) for b in tr._ahead}, {2})
        # kvshim's ask: a page index while the page backed ahead is in use
        self.patch_group("share_asked", lambda: tr.page_index_bytes if tr._ahead else 0)
        time.sleep(0.01)
        self.assertEqual(transformers_cb._give_back(proc, tr), 0)
        self.assertEqual(tr._ahead, set())
        self.assertEqual(list(proc.scheduler.active_requests), ["a", "b"])
        self.assertEqual(tr.preempted, 0)

    def test_nothing_backed_ahead_pass_after_pass_while_asked(self):
        """Through the engine's passes: a prefill still running has its next
        blocks backed ahead; asked to give back, the engine releases them
        and backs none again, pass after pass, until the ask is over (an
        ask that stands: the page index the blocks backed ahead alone held
        went back, and the waiter took it)."""
        c, tr, proc, _ = self.paged_engine()
        asked = [0]
        self.fake_ask(asked)
        type(proc).max_batch_tokens = 512
        # page index 0, whole, by one request (never preempted: the last)
        self.lay_out(proc, [("a", 64)])
        proc.scheduler.active_requests["a"].remaining_prefill_tokens = [0] * 100
        named = []
        real = tr.ahead
        tr.ahead = lambda ids: (named.append(list(ids)), real(ids))[1]
        self.assertTrue(proc.prepare_next_batch())
        tr._settle()
        self.assertEqual(len(tr._ahead), 7)                     # 100 tokens: 7 blocks
        asked[0] = tr.page_index_bytes
        for _ in range(3):
            time.sleep(0.01)
            proc.prepare_next_batch()
            tr._settle()
            self.assertEqual(tr._ahead, set())
        self.assertEqual(len(named), 1)
        asked[0] = 0
        time.sleep(0.01)
        proc.prepare_next_batch()
        tr._settle()
        self.assertEqual(len(named), 2)
        self.assertEqual(len(tr._ahead), 7)

    def test_release_failure_keeps_the_id(self):
        def refuse(ids):
            raise kvshim.KvshimError(-2, "kvshim_group_unmap")
        free = blocks.TrackedFreeList([1, 2], refuse)
        err = io.StringIO()
        with redirect_stderr(err):
            free.append(3)
            free.extend([4, 5])
        # put back at the left, lowest first: handed out again first
        self.assertEqual(list(free), [4, 5, 3, 1, 2])
        self.assertIn("not released", err.getvalue())

    def test_blocks_backed_ahead_cost_the_engine_no_map(self):
        c, tr = self.make(num_blocks=1024)
        bm = c._block_manager
        bm.get_free_blocks(64, None, False, 0)                  # page 0 of each tensor
        calls = kvshim.stats()["map_calls"]
        tr.ahead(list(bm._uninit_block_ids)[:128])              # pages 1 and 2
        b = bm.get_free_blocks(128, None, False, 0)             # waits for the batch
        self.assertEqual(b, list(range(64, 192)))
        self.assertEqual(tr.ahead_hits, 128)
        self.assertEqual(tr.mapped, 192)
        # one map call in all: the thread's; the engine's take made none
        self.assertEqual(kvshim.stats()["map_calls"], calls + 1)
        self.assertEqual(pages(c), 4 * 3)
        self.assertGreater(tr.ahead_busy, 0)

    def test_blocks_ahead_wait_for_a_capture(self):
        # a capture begun through kvshim's hook, as an engine's under the
        # preload: the thread backing blocks ahead maps only after its end
        c, tr = self.make(num_blocks=1024)
        bm = c._block_manager
        with unittest.mock.patch.object(blocks, "CAPTURE_WAIT_MS", 60 * 1000):
            with captured(self):
                calls = kvshim.stats()["map_calls"]
                tr.ahead(list(bm._uninit_block_ids)[:64])
                time.sleep(0.2)
                during = kvshim.stats()["map_calls"] - calls
            tr._settle()
        # (on a machine too busy to run the thread in 0.2 s this proves
        # nothing of the wait, but cannot fail: the wait outlasts the test)
        self.assertEqual(during, 0)
        self.assertEqual(len(tr._ahead), 64)

    def test_blocks_ahead_stop_waiting_once_the_engine_waits(self):
        # the engine's thread waiting for the batch puts it on the engine's
        # path: it maps at once, the capture still running
        c, tr = self.make(num_blocks=1024)
        bm = c._block_manager
        with unittest.mock.patch.object(blocks, "CAPTURE_WAIT_MS", 60 * 1000), captured(self):
            tr.ahead(list(bm._uninit_block_ids)[:64])
            time.sleep(0.05)
            t = time.monotonic()
            tr._settle()
            took = time.monotonic() - t
        self.assertLess(took, 30)
        self.assertEqual(len(tr._ahead), 64)

    def test_blocks_ahead_not_taken_are_released(self):
        c, tr = self.make(num_blocks=1024)
        bm = c._block_manager
        tr.ahead(list(bm._uninit_block_ids)[:192])              # pages 0..2
        tr.ahead(list(bm._uninit_block_ids)[:64])               # demand fell: page 0
        tr.ahead([])                                            # none left: nothing held
        tr._settle()
        self.assertEqual(tr._ahead, set())
        st = kvshim.stats()
        self.assertEqual(st["mapped_bytes"], st["cached_bytes"])  # nothing claimed
        self.assertEqual(tr.mapped, 0)
        # and the ids are handed out and backed as usual after that
        self.assertEqual(bm.get_free_blocks(8, None, False, 0), list(range(8)))
        self.assertEqual(tr.ahead_hits, 0)
        self.assertEqual(tr.mapped, 8)

    def test_ahead_short_of_memory_leaves_the_map_to_the_engine(self):
        c, tr = self.make(num_blocks=4096, layers=4)
        bm = c._block_manager
        # the 64 MiB limit backs 256 blocks; ahead asks for 512: refused whole
        tr.ahead(list(bm._uninit_block_ids)[:512])
        self.assertIsNotNone(bm.get_free_blocks(64, None, False, 0))
        self.assertEqual(tr.ahead_hits, 0)
        self.assertEqual(tr.mapped, 64)
        self.assertEqual(tr.refused, 0)

    def test_map_ahead_follows_pending_prefill(self):
        c, tr = self.make(num_blocks=1024)
        state = types.SimpleNamespace

        class Processor:
            cache, max_batch_tokens = c, 512
            scheduler = state(active_requests={"a": state(remaining_prefill_tokens=[0] * 100)},
                              waiting_requests={"b": state(remaining_prefill_tokens=[0] * 60)})
        transformers_cb.map_ahead(Processor, tr)               # 160 tokens: 10 blocks
        tr._settle()
        self.assertEqual(sorted(tr._ahead), list(range(10)))
        Processor.scheduler.waiting_requests["b"].remaining_prefill_tokens = [0] * 4000
        Processor.max_batch_tokens = 2048
        transformers_cb.map_ahead(Processor, tr)               # capped at one step: 128
        tr._settle()
        # of ids 0 to 127, those on page 0 (64 a page), which the 10 backed
        # claim, cost the engine's map no driver call: only page 1's are
        # backed besides
        self.assertEqual(sorted(tr._ahead), list(range(10)) + list(range(64, 128)))
        # decode only, with a request, sharing the budget: the ids stand
        # (named again only once the engine took blocks)
        self.shared_on()
        Processor.scheduler = state(active_requests={"a": state(remaining_prefill_tokens=[])},
                                    waiting_requests={})
        named = []
        real = tr.ahead
        tr.ahead = lambda ids: (named.append(list(ids)), real(ids))[1]
        transformers_cb.map_ahead(Processor, tr)
        self.assertEqual(named, [])
        self.assertEqual(len(tr._ahead), 74)
        # no request at all: none
        Processor.scheduler = state(active_requests={}, waiting_requests={})
        transformers_cb.map_ahead(Processor, tr)
        tr._settle()
        self.assertEqual(tr._ahead, set())
        Processor.scheduler = state(active_requests={"a": state(remaining_prefill_tokens=[])},
                                    waiting_requests={})
        # while kvshim asks the engine to give back: none either
        Processor.scheduler.active_requests["a"].remaining_prefill_tokens = [0] * 100
        self.fake_ask([MIB])
        time.sleep(0.01)
        transformers_cb.map_ahead(Processor, tr)
        tr._settle()
        self.assertEqual(tr._ahead, set())

    def test_ahead_stands_for_the_next_request_and_takes_go_on_beside_it(self):
        """Decoding, an engine with requests keeps one step's blocks backed
        for the next request, only those whose pages hold no claim; it
        names them again once it has taken blocks; and its take of blocks
        not in the batch in flight does not wait for the thread."""
        c, tr = self.make(num_blocks=1024)                     # 64 blocks a page
        bm = c._block_manager
        state = types.SimpleNamespace
        self.shared_on()

        class Processor:
            cache, max_batch_tokens = c, 512                    # 32 blocks a step
            scheduler = state(active_requests={"a": state(remaining_prefill_tokens=[])},
                              waiting_requests={})
        self.assertEqual(bm.get_free_blocks(10, None, False, 0), list(range(10)))
        transformers_cb.map_ahead(Processor, tr)
        tr._settle()
        self.assertEqual(tr._ahead, set())                      # page 0 has 54 free ids
        self.assertEqual(bm.get_free_blocks(50, None, False, 0), list(range(10, 60)))
        transformers_cb.map_ahead(Processor, tr)
        tr._settle()
        # the next 32: 60 to 63 on page 0, 64 to 91 on page 1, which no
        # block claims yet
        self.assertEqual(sorted(tr._ahead), list(range(64, 92)))
        named = []
        real = tr.ahead
        tr.ahead = lambda ids: (named.append(list(ids)), real(ids))[1]
        transformers_cb.map_ahead(Processor, tr)
        self.assertEqual(named, [])                             # nothing taken since
        got = bm.get_free_blocks(40, None, False, 0)
        self.assertEqual(got, list(range(60, 100)))
        self.assertEqual(tr.ahead_hits, 28)
        # the thread's next batch (page 2's ids) held until released
        go = threading.Event()
        group_map = tr.group.map

        def slow_map(ids):
            if threading.current_thread().name == "kvshim-ahead":
                go.wait(30)
            return group_map(ids)
        tr.group.map = slow_map
        try:
            transformers_cb.map_ahead(Processor, tr)
            self.assertEqual(named, [list(range(128, 132))])
            self.assertTrue(tr.ahead_standing())
            took = []
            t = threading.Thread(target=lambda: took.append(
                bm.get_free_blocks(5, None, False, 0)))
            t.start()
            t.join(10)
            self.assertFalse(t.is_alive())                      # it did not wait
            self.assertEqual(took, [list(range(100, 105))])
        finally:
            go.set()
        tr._settle()
        self.assertEqual(sorted(tr._ahead), list(range(128, 132)))
        self.assertEqual(tr.mapped, 105)

    def test_standing_batch_done_counts_at_the_next_pass(self):
        """A standing batch the thread has backed counts at the engine's
        next pass, though no block of it was taken: its ids are free ids
        on claimed pages (capacity, the cushion), and they are not named
        again."""
        c, tr, proc, asked = self.paged_engine()
        self.shared_on()
        type(proc).max_batch_tokens = 512                      # 32 blocks a step
        self.lay_out(proc, [("a", 64)])                        # page index 0, whole
        named = []
        real = tr.ahead
        tr.ahead = lambda ids: (named.append(list(ids)), real(ids))[1]
        self.assertTrue(proc.prepare_next_batch())              # decoding: standing
        self.assertEqual(named, [list(range(64, 96))])
        end = time.monotonic() + 30
        while tr._thread.in_flight() and time.monotonic() < end:
            time.sleep(0.001)
        self.assertEqual(tr.ahead_backed(), 0)                  # done, not taken in
        self.assertEqual(tr.free_on_pages(), 0)
        self.assertTrue(proc.prepare_next_batch())              # nothing taken
        self.assertEqual(sorted(tr._ahead), list(range(64, 96)))
        self.assertEqual(tr.free_on_pages(), 64)               # page 1's ids, all free
        self.assertEqual(len(named), 1)
        # without packing, the cushion counts them as covered
        self.addCleanup(transformers_cb._pack_setting.__setitem__, slice(None),
                        list(transformers_cb._pack_setting))
        transformers_cb._pack_setting[:] = [False]
        self.assertEqual(transformers_cb._cushion_blocks(proc), 32)    # a step, no margin here
        self.assertEqual(transformers_cb._cushion(proc), 0)

    def test_padding_page_ids_cover_the_cushion_without_packing(self):
        """Without packing, the free ids on the padding page cover the
        cushion as blocks backed ahead do: backed with the cache, they are
        not stated again."""
        c, tr, proc, _ = self.paged_engine(num_blocks=250, padding=True)
        self.shared_on()
        type(proc).max_batch_tokens = 512                      # 32 blocks a step
        self.lay_out(proc, [("a", 10)])                        # on the padding page
        self.addCleanup(transformers_cb._pack_setting.__setitem__, slice(None),
                        list(transformers_cb._pack_setting))
        transformers_cb._pack_setting[:] = [False]
        self.assertEqual(transformers_cb._cushion_blocks(proc), 32)
        self.assertEqual(tr.free_pinned(), 48)
        self.assertEqual(transformers_cb._cushion(proc), 0)

    def test_standing_batch_named_again_after_an_ask_and_after_a_page_empties(self):
        """The standing batch, released for an ask, is named again at the
        first pass after it; and a page that empties makes it named again
        (its free ids go out first now)."""
        c, tr, proc, _ = self.paged_engine()
        self.shared_on()
        asked = [0]
        self.fake_ask(asked)
        type(proc).max_batch_tokens = 512                      # 32 blocks a step
        self.lay_out(proc, [("a", 64), ("b", 32)])             # page 0 whole, page 1 half
        named = []
        real = tr.ahead
        tr.ahead = lambda ids: (named.append(list(ids)), real(ids))[1]
        self.assertTrue(proc.prepare_next_batch())
        tr._settle()
        self.assertEqual(named, [[]])                           # page 1's free ids cover it
        c.free_blocks("b")                                     # page 1 empties
        del proc.scheduler.active_requests["b"]
        self.assertTrue(proc.prepare_next_batch())
        tr._settle()
        self.assertEqual(len(named), 2)
        self.assertEqual(len(named[1]), 32)
        self.assertEqual({tr.page_of(b) for b in named[1]}, {1})
        self.assertEqual(len(tr._ahead), 32)
        asked[0] = tr.page_index_bytes                         # an ask: released
        time.sleep(0.01)
        proc.prepare_next_batch()
        self.assertEqual(tr._ahead, set())
        self.assertEqual(len(named), 2)
        asked[0] = 0                                           # over: named again
        time.sleep(0.01)
        self.assertTrue(proc.prepare_next_batch())
        tr._settle()
        self.assertEqual(len(named), 3)
        self.assertEqual(len(tr._ahead), 32)

    def test_engine_alone_backs_nothing_for_the_next_request(self):
        """An engine no other process shares the budget with keeps no step
        backed for the next request (its pages follow its blocks in use):
        decoding, it backs nothing ahead; a pending prefill is still
        backed ahead."""
        c, tr, proc, asked = self.paged_engine()
        self.assertFalse(transformers_cb._shared(proc))        # alone, no shared budget
        type(proc).max_batch_tokens = 512
        self.lay_out(proc, [("a", 64)])                        # page index 0, whole
        for _ in range(3):
            self.assertTrue(proc.prepare_next_batch())
            tr._settle()
            self.assertEqual(tr._ahead, set())
        proc.scheduler.active_requests["a"].remaining_prefill_tokens = [0] * 100
        self.assertTrue(proc.prepare_next_batch())
        tr._settle()
        self.assertEqual(sorted(tr._ahead), list(range(64, 71)))   # 100 tokens: 7 blocks

    def test_cushion_off_states_none_and_keeps_no_step(self):
        """KVSHIM_CB_CUSHION: on, a decoding engine that shares its budget
        states one step as demand and keeps it backed for the next request;
        off, it states none and releases that step, packing still keeps a
        step's worth of free ids, and a pending prefill is still backed
        ahead."""
        c, tr, proc, asked = self.paged_engine()
        self.shared_on()
        self.addCleanup(transformers_cb._cushion_setting.__setitem__, slice(None),
                        list(transformers_cb._cushion_setting))
        transformers_cb._cushion_setting[:] = [True]
        type(proc).max_batch_tokens = 512                      # 32 blocks a step
        self.lay_out(proc, [("a", 64)])                        # page index 0, whole
        stated = []
        self.capture_demand(stated)
        self.assertEqual(transformers_cb._cushion(proc), 32)
        self.assertTrue(proc.prepare_next_batch())
        tr._settle()
        self.assertEqual(sorted(tr._ahead), list(range(64, 96)))    # the step, standing
        self.assertGreater(stated[-1], 0)
        transformers_cb._cushion_setting[:] = [False]
        self.assertEqual(transformers_cb._cushion_blocks(proc), 32)    # what packing keeps
        self.assertEqual(transformers_cb._cushion(proc), 0)
        for _ in range(3):
            self.assertTrue(proc.prepare_next_batch())
            tr._settle()
            self.assertEqual(tr._ahead, set())
        self.assertEqual(stated[-1], 0)
        proc.scheduler.active_requests["a"].remaining_prefill_tokens = [0] * 100
        self.assertTrue(proc.prepare_next_batch())
        tr._settle()
        self.assertEqual(sorted(tr._ahead), list(range(64, 71)))   # 100 tokens: 7 blocks
        self.assertEqual(stated[-1], 0)

    def idle_cushion(self, on):
        """KVSHIM_CB_IDLE_CUSHION (and the cushion itself on) as on says,
        for this test only."""
        for kept in (transformers_cb._cushion_setting, transformers_cb._idle_cushion_setting):
            self.addCleanup(kept.__setitem__, slice(None), list(kept))
        transformers_cb._cushion_setting[:] = [True]
        transformers_cb._idle_cushion_setting[:] = [on]

    def test_idle_cushion_keeps_the_step_after_the_last_request(self):
        """KVSHIM_CB_IDLE_CUSHION: off (the default), an engine whose last
        request finished releases the step it kept backed and states no
        demand; on, while it shares its budget, it keeps the step backed
        pass after pass, its cushion counted (and stated, less what covers
        it: here nothing, its step and the free ids on its page backed),
        and its next request's first step takes those blocks without a
        map; alone, or with the cushion off, it keeps nothing. (Packing's
        look at the free ids is taken afresh at every pass: what the
        engine states does not depend on how fast a loaded machine runs
        the test.)"""
        self.addCleanup(setattr, blocks.BlockTracker, "PLAN_LOOK_S", blocks.BlockTracker.PLAN_LOOK_S)
        blocks.BlockTracker.PLAN_LOOK_S = 0.0
        for on, shared, cushion, kept in ((False, True, True, False), (True, True, True, True),
                                          (True, False, True, False),
                                          (True, True, False, False)):
            with self.subTest(on=on, shared=shared, cushion=cushion):
                c, tr, proc, asked = self.paged_engine()
                self.idle_cushion(on)
                transformers_cb._cushion_setting[:] = [cushion]
                self.addCleanup(setattr, transformers_cb, "_shared", transformers_cb._shared)
                transformers_cb._shared = lambda proc: shared
                stated = []
                self.capture_demand(stated)
                type(proc).max_batch_tokens = 512                  # 32 blocks a step
                self.lay_out(proc, [("a", 64)])                    # page index 0, whole
                self.assertTrue(proc.prepare_next_batch())
                tr._settle()
                standing = sorted(tr._ahead)
                self.assertEqual(standing, list(range(64, 96)) if shared and cushion else [])
                self.finish(c, proc, ["a"])                        # idle from here
                for _ in range(3):
                    proc.prepare_next_batch()
                    tr._settle()
                    self.assertEqual(sorted(tr._ahead), standing if kept else [])
                self.assertEqual(transformers_cb._cushion_blocks(proc), 32 if kept else 0)
                self.assertEqual((stated or [0])[-1], 0, stated[-3:])
                if not kept:
                    continue
                mapped, hits = tr.mapped, tr.ahead_hits
                self.lay_out(proc, [("b", 32)])                    # the burst's first step
                self.assertEqual(tr.ahead_hits - hits, 32)
                self.assertEqual(tr.mapped, mapped + 32)
                self.assertEqual(tr._ahead, set())

    def idle_engine_failing_maps(self, step_tokens, error=None):
        """An engine sharing its budget, the idle cushion on, steps of
        step_tokens, whose group's maps raise fail[0] (an error code; error
        at first) while it is set. Returns (c, tr, proc, fail, named, done):
        named the ids its tracker was asked to back ahead, batch by batch;
        done waits (at most 30 s) for its thread that maps ahead."""
        c, tr, proc, asked = self.paged_engine()
        self.shared_on()
        self.idle_cushion(True)
        type(proc).max_batch_tokens = step_tokens
        named, real, fail = [], tr.group.map, [error]

        def map_(ids):
            if fail[0] is not None:
                raise kvshim.KvshimError(fail[0], "kvshim_group_map")
            return real(ids)
        tr.group.map = map_
        real_ahead = tr.ahead
        tr.ahead = lambda ids: (named.append(list(ids)), real_ahead(ids))[1]

        def done():
            end = time.monotonic() + 30
            while tr._thread is not None and tr._thread.in_flight() and time.monotonic() < end:
                time.sleep(0.001)
        return c, tr, proc, fail, named, done

    def test_idle_step_named_again_after_it_backed_nothing(self):
        """An idle engine's step that backed nothing (memory short: the
        budget full when it was named) is named again once AHEAD_RETRY_S
        has passed, and backed once memory is there: nothing the idle
        engine does would change its ids. Before that it stands; and an
        engine with requests keeps the standing rule (named again when it
        takes a block or a page empties)."""
        # 32 blocks a step
        c, tr, proc, fail, named, done = self.idle_engine_failing_maps(512, kvshim.ELIMIT)
        tr.AHEAD_RETRY_S = 3600.0
        proc.prepare_next_batch()                              # idle: the step named
        self.assertEqual(named, [list(range(32))])
        for _ in range(3):                                     # it failed; it stands
            done()
            proc.prepare_next_batch()
            self.assertEqual(len(named), 1)
        self.assertEqual(tr.ahead_backed(), 0)
        tr.AHEAD_RETRY_S, fail[0] = 0.0, None                  # memory back, time up
        proc.prepare_next_batch()                              # named again
        self.assertEqual(named[1:], [list(range(32))])
        done()
        proc.prepare_next_batch()
        self.assertEqual(sorted(tr._ahead), list(range(32)))
        self.assertEqual(len(named), 2)                        # backed: it stands
        # with a request, a step that backed nothing stands until the
        # engine takes a block
        self.lay_out(proc, [("a", 64)])                        # on the 32 and 32 more
        done()
        tr.drop_ahead()
        fail[0] = kvshim.ELIMIT
        n = len(named)
        proc.prepare_next_batch()                              # decoding: the step named
        n += 1
        self.assertEqual(len(named), n)
        for _ in range(3):
            done()
            proc.prepare_next_batch()
        self.assertEqual(len(named), n)
        self.assertEqual(tr.ahead_backed(), 0)

    def test_idle_step_failure_forgotten_once_named_afresh(self):
        """A batch that backed nothing, then ids named afresh that need no
        new batch (those worth backing are backed already), stand: the
        failure was the old batch's. (Kept, it had an idle engine name its
        step again at every pass for as long as it stayed idle.) And a
        batch that failed for another reason than memory is not tried
        again for it: it counts in ahead_errors (not in map_errors, which
        the engine's checks read for its own maps)."""
        c, tr, proc, fail, named, done = self.idle_engine_failing_maps(1024)
        proc.prepare_next_batch()                              # idle: 0..63 backed (a page index)
        done()
        proc.prepare_next_batch()
        self.assertEqual(sorted(tr._ahead), list(range(64)))
        self.lay_out(proc, [("a", 16)])                        # takes 0..15 from them
        fail[0] = kvshim.ELIMIT
        proc.prepare_next_batch()                              # names 16..79: 64..79 fail
        done()
        proc.prepare_next_batch()
        self.assertIsNotNone(tr._ahead_failed)
        fail[0] = None
        self.finish(c, proc, ["a"])                            # idle again
        tr.AHEAD_RETRY_S = 0.0
        n = len(named)
        for _ in range(5):
            done()
            proc.prepare_next_batch()
        self.assertLessEqual(len(named) - n, 1, named[n:])
        # another error than memory: counted, and the step stands
        tr.drop_ahead()
        fail[0] = kvshim.EDRIVER
        errors, n = tr.map_errors, len(named)
        for _ in range(5):
            done()
            proc.prepare_next_batch()
        self.assertEqual(len(named) - n, 1, named[n:])
        self.assertEqual(tr.ahead_errors, 1)
        self.assertEqual(tr.map_errors, errors)
        self.assertIsNone(tr._ahead_failed)

    def test_idle_cushion_without_the_cushion_warned_once(self):
        """KVSHIM_CB_IDLE_CUSHION on with KVSHIM_CB_CUSHION off does
        nothing: said once, naming both; not said with either off alone
        or both on."""
        self.addCleanup(transformers_cb._idle_alone_warned.__setitem__, slice(None),
                        list(transformers_cb._idle_alone_warned))
        for idle, cushion in ((True, False), (False, False), (True, True), (False, True)):
            with self.subTest(idle=idle, cushion=cushion):
                c, tr, proc, asked = self.paged_engine()
                self.idle_cushion(idle)
                transformers_cb._cushion_setting[:] = [cushion]
                transformers_cb._idle_alone_warned[:] = []
                err = io.StringIO()
                with redirect_stderr(err):
                    for _ in range(3):
                        transformers_cb._cushion(proc)
                said = err.getvalue().count("KVSHIM_CB_IDLE_CUSHION=on does nothing while "
                                            "KVSHIM_CB_CUSHION is off")
                self.assertEqual(said, 1 if idle and not cushion else 0, err.getvalue())

    def test_idle_cushion_switch_read_from_the_environment(self):
        """KVSHIM_CB_IDLE_CUSHION is read from the environment, once: off
        when unset; on turns it on; a bad value warns, naming it, and counts
        as off."""
        self.addCleanup(transformers_cb._idle_cushion_setting.__setitem__, slice(None),
                        list(transformers_cb._idle_cushion_setting))
        for env, want in (({}, False), ({"KVSHIM_CB_IDLE_CUSHION": "on"}, True),
                          ({"KVSHIM_CB_IDLE_CUSHION": "off"}, False),
                          ({"KVSHIM_CB_IDLE_CUSHION": "lull"}, False)):
            transformers_cb._idle_cushion_setting[:] = []
            err = io.StringIO()
            with unittest.mock.patch.dict(os.environ, env), redirect_stderr(err):
                if not env:
                    os.environ.pop("KVSHIM_CB_IDLE_CUSHION", None)      # unset
                self.assertEqual(transformers_cb._idle_cushion_on(), want, env)
            with unittest.mock.patch.dict(os.environ, {"KVSHIM_CB_IDLE_CUSHION": "on"}):
                self.assertEqual(transformers_cb._idle_cushion_on(), want, env)     # once
            self.assertEqual("KVSHIM_CB_IDLE_CUSHION=lull" in err.getvalue(), "lull" in str(env))

    def test_cushion_switch_read_from_the_environment(self):
        """KVSHIM_CB_CUSHION is read from the environment, once: off turns
        the cushion off; a bad value warns, naming it, and counts as off."""
        self.addCleanup(transformers_cb._cushion_setting.__setitem__, slice(None),
                        list(transformers_cb._cushion_setting))
        for value, want in (("off", False), ("on", True), ("soft", False)):
            transformers_cb._cushion_setting[:] = []
            err = io.StringIO()
            with unittest.mock.patch.dict(os.environ, {"KVSHIM_CB_CUSHION": value}), \
                    redirect_stderr(err):
                self.assertEqual(transformers_cb._cushion_on(), want, value)
            with unittest.mock.patch.dict(os.environ, {"KVSHIM_CB_CUSHION": "on"}):
                self.assertEqual(transformers_cb._cushion_on(), want, value)     # once
            self.assertEqual("KVSHIM_CB_CUSHION=soft" in err.getvalue(), value == "soft")

    def test_switch_settings(self):
        """KVSHIM_CB_AHEAD, KVSHIM_CB_PACK and KVSHIM_CB_CUSHION (all on when
        unset): their values, and bad ones refused naming the variable."""
        for setting, var, unset in ((transformers_cb.ahead_setting, "KVSHIM_CB_AHEAD", True),
                                    (transformers_cb.pack_setting, "KVSHIM_CB_PACK", True),
                                    (transformers_cb.cushion_setting, "KVSHIM_CB_CUSHION", True),
                                    (transformers_cb.give_back_setting, "KVSHIM_CB_GIVE_BACK",
                                     True),
                                    (transformers_cb.idle_cushion_setting,
                                     "KVSHIM_CB_IDLE_CUSHION", False)):
            for v, want in ((None, unset), ("on", True), ("1", True), ("0", False),
                            ("No", False), ("Off", False)):
                self.assertEqual(setting(v), want, (var, v))
            for bad in ("", "2", "maybe", "on "):
                with self.assertRaises(ValueError) as e:
                    setting(bad)
                self.assertIn(var, str(e.exception))

    def test_block_freed_twice_keeps_its_neighbours_claim(self):
        """An id put back into the free list while it is already there (an
        engine freeing a block twice) releases nothing: kvshim counts claims
        per page, so a second release of block 0 would drop block 1's claim,
        and block 1, still in use, would be left on an unclaimed page that
        trim (or another process's map) takes. The tracker releases only the
        ids it holds claims for, and counts the others in not_held."""
        c, tr = self.make(num_blocks=256)
        bm = c._block_manager
        a = bm.get_free_blocks(1, None, False, 0)
        b = bm.get_free_blocks(1, None, False, 0)
        self.assertEqual((a, b), ([0], [1]))                 # one page
        bm.free_blocks(a, shareable=False)
        err = io.StringIO()
        with redirect_stderr(err):
            bm._uninit_block_ids.append(a[0])                # freed again
        self.assertIn("hold no claim", err.getvalue())
        self.assertEqual(tr.not_held, 1)
        kvshim.trim(1 << 40)
        st = kvshim.stats()
        # block 1 is in use: its page (in each of the 4 tensors) stays
        # claimed and backed
        self.assertEqual(st["mapped_bytes"] - st["cached_bytes"], 4 * 2 * MIB)
        self.assertEqual(tr.mapped, 1)
        # handed out twice (as from a free list holding it twice), block 0
        # holds two claims, and its two frees release both: the page goes
        # back with block 1's
        self.assertTrue(tr.take([0]) and tr.take([0]))
        tr.give([0, 1])
        tr.give([0])
        self.assertEqual((tr.mapped, tr.not_held), (0, 1))
        kvshim.trim(1 << 40)
        self.assertEqual(kvshim.stats()["mapped_bytes"], 0)

    def test_unexpected_block_manager_backs_the_cache_whole(self):
        """A BlockManager that passes _looks_right (its class has the
        methods) but keeps its free ids elsewhere: attach warns and backs
        the cache whole (the module's promise for a transformers that does
        not look as expected), rather than raise AttributeError out of
        PagedAttentionCache.__init__ with the KV tensors left unbacked."""
        c = StandInCache(256, 16, 2, 8 * 128)
        self.addCleanup(self.release, c)
        c._block_manager._free_ids = c._block_manager.__dict__.pop("_uninit_block_ids")
        err = io.StringIO()
        with redirect_stderr(err):
            try:
                tracker = transformers_cb.attach(c)
            except AttributeError as e:
                self.fail("attach raised into the engine: %r" % e)
        self.assertIsNone(tracker)
        self.assertIn("_uninit_block_ids", err.getvalue())
        # 258 blocks of 32 KiB a tensor, backed whole: 5 pages each
        self.assertEqual(pages(c), 4 * 5)

    def test_map_error_puts_the_ids_back(self):
        """A map kvshim fails for another reason than memory (a driver
        error: EDRIVER) is undone as a refusal: the ids taken out of the
        free list go back, their records too, and get_free_blocks reports
        the blocks unavailable (None), which transformers handles; raised,
        the ids would be lost to the pool for good."""
        c, tr = self.make(num_blocks=256)
        bm = c._block_manager
        real = tr.group.map

        def fail(ids):
            raise kvshim.KvshimError(kvshim.EDRIVER, "kvshim_group_map")
        tr.group.map = fail
        err = io.StringIO()
        try:
            with redirect_stderr(err):
                self.assertIsNone(bm.get_free_blocks(8, None, True, 0))
        finally:
            tr.group.map = real
        self.assertIn("not backed", err.getvalue())
        self.assertEqual(len(bm._uninit_block_ids), 256)
        self.assertEqual(bm._id_to_block, {})
        self.assertEqual((tr.mapped, tr.map_errors), (0, 1))
        self.assertEqual(len(bm.get_free_blocks(8, None, True, 0)), 8)
        self.assertEqual(tr.mapped, 8)

    def test_map_error_after_the_check_is_undone(self):
        """As memory taken after the admission check: a map error in the
        second layer group's allocation undoes the first group's, and the
        request waits (allocate_blocks returns None), where transformers
        would raise into its loop."""
        c, tr = self.make(num_blocks=256)
        c.group_cache_managers.append(StandInGroup())    # two layer groups
        bm = c._block_manager
        real = self.second_map_fails(tr, kvshim.EDRIVER)[1]
        with redirect_stderr(io.StringIO()):
            self.assertIsNone(c.allocate_blocks(4, "r1", 0))
        tr.group.map = real
        self.assertEqual([cm.block_table.get("r1") for cm in c.group_cache_managers], [[], []])
        self.assertEqual(bm.num_free_blocks, 256)
        self.assertEqual((tr.mapped, tr.refused, tr.map_errors), (0, 0, 1))
        self.assertEqual(c.allocate_blocks(4, "r1", 0), 4)

    def test_refused_fork_waits(self):
        """A fork for parallel sampling (transformers' update_batch: the
        children join the active requests, then each layer group gives them
        the parent's complete blocks, referenced, and fresh ones for the
        rest) whose blocks kvshim cannot back, for memory (ENOMEM) or a map
        that fails (EDRIVER), at the second group's second child: undone
        whole, where transformers would raise into its loop and fail the
        engine. No block is lost, references and claims are as before, the
        children are gone and the parent has its num_children back, so its
        fork is queued again; it is logged, and the blocks the fork needs
        are stated as the engine's demand. Once kvshim can back them the
        fork goes through, and with every block freed nothing stays
        mapped."""
        for code in (kvshim.ENOMEM, kvshim.EDRIVER):
            with self.subTest(code=code):
                self.refused_fork(code)

    def refused_fork(self, code):
        c, tr = self.make(num_blocks=256)
        c.group_cache_managers.append(StandInGroup())    # two layer groups
        bm, groups = c._block_manager, c.group_cache_managers
        self.ahead_off()
        stated = []
        self.capture_demand(stated)
        proc = patched(forking_api())(c)
        sched = proc.scheduler
        # the parent: 6 blocks a group, the first 4 complete (its children
        # share them), the last 2 copied; 2 children
        self.assertEqual(c.allocate_blocks(6, "r", 0), 6)
        for cm in groups:
            for b in cm.block_table["r"][:4]:
                bm._id_to_block[b].hash = b
        sched.active_requests["r"] = ForkingRequest("r", 2)
        self.assertTrue(proc.prepare_next_batch())      # queues the fork
        refs = {b: r.ref_count for b, r in bm._id_to_block.items()}
        before = (bm.num_free_blocks, tr.mapped, dict(tr._held))
        real, calls = tr.group.map, []

        def fourth(ids):                    # the second group's second child
            calls.append(list(ids))
            if len(calls) == 4:
                raise kvshim.KvshimError(code, "kvshim_group_map")
            return real(ids)
        tr.group.map = fourth
        err = io.StringIO()
        try:
            with redirect_stderr(err):
                proc.update_batch()
        except (ValueError, kvshim.KvshimError) as e:
            self.fail("the refused fork raised into the engine's loop: %r" % e)
        finally:
            tr.group.map = real
        self.assertEqual(len(calls), 4)
        self.assertIn("fork of request r", err.getvalue())
        self.assertEqual(list(sched.active_requests), ["r"])
        self.assertEqual(sched.active_requests["r"].num_children, 2)
        self.assertEqual([list(cm.block_table) for cm in groups], [["r"], ["r"]])
        self.assertEqual({b: r.ref_count for b, r in bm._id_to_block.items()}, refs)
        self.assertEqual((bm.num_free_blocks, tr.mapped, tr._held), before)
        self.assertEqual(proc.copies, [([], [])])
        # the request waits: its next pass queues the fork again, and states
        # the blocks it needs (2 copied, for 2 children, in 2 groups)
        self.assertTrue(proc.prepare_next_batch())
        self.assertEqual(stated[-1], 8 * tr.bytes_per_block)
        # kvshim can back them now
        proc.update_batch()
        self.assertEqual(sorted(sched.active_requests), ["r", "r__child#0", "r__child#1"])
        for cm in groups:
            parent = cm.block_table["r"]
            for child in ("r__child#0", "r__child#1"):
                self.assertEqual(cm.block_table[child][:4], parent[:4])
            self.assertEqual([bm._id_to_block[b].ref_count for b in parent[:4]], [3] * 4)
        self.assertEqual(tr.mapped, 12 + 8)
        self.assertTrue(proc.prepare_next_batch())
        self.assertEqual(stated[-1], 0)
        for rid in list(sched.active_requests):
            c.free_blocks(rid)
        self.assertEqual((bm.num_free_blocks, tr.mapped), (256, 0))
        kvshim.trim(1 << 40)
        self.assertEqual(kvshim.stats()["mapped_bytes"], 0)

    def test_refused_fork_not_starved(self):
        """A fork kvshim refused for memory waits for what the engine's own
        requests free as they finish (alone under its limit, KVSHIM_LIMIT,
        nothing else gives it memory). Requests keep arriving: admitted
        meanwhile, each new one takes what one finishing request freed
        before the fork, which needs more than that, can have it, pass
        after pass, and the request waits for ever. Here the parent holds
        2 pages a tensor (128 blocks, none complete: all copied for its
        child), six requests of 64 blocks the other 6 pages of the limit's
        8, one finishes each step and one arrives: the fork must go
        through within a few steps."""
        c, tr = self.make(num_blocks=4096)
        self.ahead_off()
        proc = patched(busy_forking_api(64))(c)
        sched = proc.scheduler
        self.assertEqual(c.allocate_blocks(128, "r", 0), 128)
        sched.active_requests["r"] = ForkingRequest("r", 1)
        for k in range(6):
            self.assertEqual(c.allocate_blocks(64, "f%d" % k, 0), 64)
            sched.active_requests["f%d" % k] = ForkingRequest("f%d" % k, 0)
        self.assertFalse(c.will_allocation_be_successful(64, 0))   # the limit is reached
        err, n = io.StringIO(), 0
        with redirect_stderr(err):
            for _ in range(12):
                while len(sched.waiting_requests) < 2:
                    sched.waiting_requests["w%d" % n] = ForkingRequest("w%d" % n, 0)
                    n += 1
                proc.prepare_next_batch()
                proc.update_batch()
                if "r__child#0" in sched.active_requests:
                    break
        self.assertIn("fork of request r", err.getvalue())     # it was refused first
        self.assertIn("r__child#0", sched.active_requests,
                      "the fork still waits after 12 steps (refused %d times), its memory "
                      "taken by the %d requests admitted meanwhile"
                      % (tr.forks_refused, n - len(sched.waiting_requests)))
        for rid in list(sched.active_requests):
            c.free_blocks(rid)

    def test_sized_fork_takes_what_kvshim_shows(self):
        """transformers from 5.17 forks a request into no more children
        than the free blocks it is shown fit (compute_max_num_forks) and
        queues the others as new requests. The free count kvshim shows
        bounds it: under the 64 MiB limit (512 blocks), a parent of 192
        blocks, none complete, with 3 children, is forked into 1 (fewer
        than 384 blocks shown free, where the cache alone has 3904), the 2
        others wait as new requests; kvshim refuses nothing, nothing is
        logged, and once the parent and its child are freed the 2 can be
        admitted."""
        c, tr = self.make(num_blocks=4096)
        self.ahead_off()
        proc = patched(forking_api(sized=True))(c)
        sched = proc.scheduler
        self.assertEqual(c.allocate_blocks(192, "r", 0), 192)
        sched.active_requests["r"] = ForkingRequest("r", 3)
        self.assertTrue(proc.prepare_next_batch())
        shown = c.get_num_free_blocks()     # (what kvshim can back, less its cushion)
        self.assertTrue(192 <= shown < 384, shown)
        err = io.StringIO()
        with redirect_stderr(err):
            proc.update_batch()
        self.assertEqual(err.getvalue(), "")
        self.assertEqual(sorted(sched.active_requests), ["r", "r__child#0"])
        self.assertEqual(sorted(sched.waiting_requests), ["r__child#1", "r__child#2"])
        self.assertEqual((tr.forks_refused, tr.forks_failed, tr.mapped), (0, 0, 384))
        self.assertEqual(len(proc.copies[0][0]), 192)
        for rid in ("r", "r__child#0"):
            c.free_blocks(rid)
            del sched.active_requests[rid]
        for rid in ("r__child#1", "r__child#2"):
            self.assertEqual(c.allocate_blocks(192, rid, 0), 192)
        for rid in ("r__child#1", "r__child#2"):
            c.free_blocks(rid)
        self.assertEqual(tr.mapped, 0)
        kvshim.trim(1 << 40)
        self.assertEqual(kvshim.stats()["mapped_bytes"], 0)

    def test_fork_never_backed_fails_its_request(self):
        """A fork whose request's blocks and its own are more than kvshim's
        limit (64 MiB here: 512 blocks of 32 KiB in each of 4 tensors) could
        never be backed, whatever the engine's other requests give back,
        and would wait for ever: its request fails alone, as transformers
        fails a request in error (FAILED, kvshim's reason delivered to
        whoever waits for it), its blocks freed at the next pass as a
        cancelled request's, no demand stated for it. The engine goes on:
        another request's fork in the same step goes through, and one whose
        request and fork fill the limit exactly waits (for the blocks the
        others hold) instead of failing, and goes through once they are
        freed. Its blocks are freed at once (finish_request, as
        transformers frees a request it failed), or where the scheduler
        has no finish_request, at the next pass as a cancelled request's."""
        for finish in (True, False):
            with self.subTest(finish=finish):
                self.never_backed_fails(finish)

    def never_backed_fails(self, finish):
        c, tr = self.make(num_blocks=4096)
        self.ahead_off()
        stated = []
        self.capture_demand(stated)
        proc = patched(failing_forking_api(finish=finish))(c)
        sched = proc.scheduler
        # (forked last to first) r: 128 blocks, none complete (all copied),
        # 4 children: 640 in all; s: 64, 1 child; t: 128, 3 children: 512
        for rid, n, kids in (("t", 128, 3), ("s", 64, 1), ("r", 128, 4)):
            self.assertEqual(c.allocate_blocks(n, rid, 0), n)
            sched.active_requests[rid] = ForkingRequest(rid, kids)
        self.assertTrue(proc.prepare_next_batch())
        err = io.StringIO()
        with redirect_stderr(err):
            try:
                proc.update_batch()
            except (ValueError, RuntimeError, kvshim.KvshimError) as e:
                self.fail("the fork raised into the engine's loop: %r" % e)
        self.assertIn("fork of request r can never be backed", err.getvalue())
        self.assertIn("fork of request t not backed", err.getvalue())
        self.assertNotIn("request t can never", err.getvalue())
        self.assertEqual([st.request_id for st in proc.delivered], ["r"])
        r = proc.delivered[0]
        self.assertEqual(r.status, "FAILED")
        self.assertIn("the fork's 512 more need 80 MiB", r.error)
        self.assertIn("more than kvshim's limit for this process there, 64 MiB", r.error)
        self.assertEqual(r.num_children, 0)          # no fork queued again
        self.assertNotIn("r", c.kvshim_forks)
        self.assertEqual(tr.forks_failed, 1)
        self.assertNotIn("r__child#0", sched.active_requests)
        self.assertIn("s__child#0", sched.active_requests)     # forked beside it
        self.assertEqual(sched.active_requests["t"].num_children, 3)
        # r is gone, its blocks freed (or, cancelled, at the next pass); t's
        # fork, 384 blocks, is stated as demand
        self.assertEqual("r" in sched.active_requests, not finish)
        self.assertTrue(proc.prepare_next_batch())
        self.assertNotIn("r", sched.active_requests)
        self.assertEqual(stated[-1], 384 * tr.bytes_per_block)
        self.assertEqual(tr.mapped, 128 + 64 + 64)
        for rid in ("s", "s__child#0"):
            c.free_blocks(rid)
            del sched.active_requests[rid]
        self.assertTrue(proc.prepare_next_batch())
        proc.update_batch()
        self.assertIn("t__child#2", sched.active_requests)
        self.assertEqual((tr.forks_failed, tr.mapped), (1, 512))
        for rid in list(sched.active_requests):
            c.free_blocks(rid)
        self.assertEqual(tr.mapped, 0)
        kvshim.trim(1 << 40)
        self.assertEqual(kvshim.stats()["mapped_bytes"], 0)

    def test_fork_never_backed_waits_where_it_cannot_fail(self):
        """Where transformers cannot fail one request (no
        _handle_request_error), or delivering its result raised (its status
        and error are put back), or under tensor parallelism (the ranks
        must decide alike), the fork that can never be backed is undone and
        its request waits as before (its num_children back, its blocks
        stated as demand), logged; nothing is lost."""
        tp = types.SimpleNamespace(tp_size=2)
        for api, helper, said in (
                (forking_api(), None, "undone, the request waits"),
                (failing_forking_api(handle=self.raise_on_fail), None,
                 "request r could not be failed"),
                (failing_forking_api(), tp, "undone, the request waits")):
            with self.subTest(said=said, tensor_parallel=helper is not None):
                c, tr = self.make(num_blocks=4096)
                self.ahead_off()
                stated = []
                self.capture_demand(stated)
                proc = patched(api)(c)
                if helper is not None:
                    proc.distributed_helper = helper
                sched = proc.scheduler
                self.assertEqual(c.allocate_blocks(128, "r", 0), 128)
                sched.active_requests["r"] = ForkingRequest("r", 4)
                self.assertTrue(proc.prepare_next_batch())
                before = (c._block_manager.num_free_blocks, tr.mapped)
                err = io.StringIO()
                with redirect_stderr(err):
                    proc.update_batch()
                self.assertIn(said, err.getvalue())
                self.assertEqual(list(sched.active_requests), ["r"])
                self.assertEqual(sched.active_requests["r"].num_children, 4)
                # (a result that could not be delivered: the state as before)
                self.assertIsNone(getattr(sched.active_requests["r"], "status", None))
                self.assertEqual(getattr(proc, "delivered", []), [])
                self.assertEqual(tr.forks_failed, 0)
                self.assertEqual((c._block_manager.num_free_blocks, tr.mapped), before)
                self.assertTrue(proc.prepare_next_batch())
                self.assertEqual(stated[-1], 512 * tr.bytes_per_block)
                c.free_blocks("r")
                self.assertEqual(tr.mapped, 0)

    @staticmethod
    def raise_on_fail(error, state):
        # (as 5.17's can: the state marked, then the delivery raising)
        state.status, state.error = "FAILED", str(error)
        raise KeyError(state.request_id)

    def test_release_of_blocks_ahead_never_raises(self):
        """An id backed ahead that the engine puts back into the free list
        again (freed twice) releases nothing (its claim is the blocks backed
        ahead's); the next naming releases the blocks backed ahead, and
        nothing escapes tracker.ahead, i.e. map_ahead and
        prepare_next_batch, where an error would end the engine's loop."""
        c, tr = self.make(num_blocks=256)
        bm = c._block_manager
        ids = list(bm._uninit_block_ids)[:64]                # page 0, whole
        tr.ahead(ids)
        tr._settle()
        self.assertEqual(len(tr._ahead), 64)
        bm._uninit_block_ids.append(ids[0])                  # freed again
        err = io.StringIO()
        with redirect_stderr(err):
            try:
                tr.ahead([])
            except kvshim.KvshimError as e:
                self.fail("tracker.ahead raised into the engine: %s" % e)
        self.assertEqual(tr.ahead_backed(), 0)
        kvshim.trim(1 << 40)
        self.assertEqual(kvshim.stats()["mapped_bytes"], 0)

    def test_release_kvshim_refuses_of_blocks_ahead_is_logged(self):
        """kvshim refusing to release the blocks backed ahead (ahead, and
        drop_ahead for an ask) is logged, not raised into the engine's
        pass; those kvshim kept claimed stay held by the tracker and among
        the blocks backed ahead, and the next such pass releases them."""
        c, tr = self.make(num_blocks=256)
        bm = c._block_manager
        ids = list(bm._uninit_block_ids)[:8]
        for drop in (lambda: tr.ahead([]), tr.drop_ahead):
            tr.ahead(ids)
            tr._settle()
            self.assertEqual(tr.ahead_backed(), 8)
            real = tr.group.unmap

            def refused(_):
                raise kvshim.KvshimError(kvshim.EDRIVER, "kvshim_group_unmap")
            tr.group.unmap = refused
            err = io.StringIO()
            try:
                with redirect_stderr(err):
                    drop()
            finally:
                tr.group.unmap = real
            self.assertIn("not all released", err.getvalue())
            self.assertEqual(tr.ahead_backed(), 8)
            self.assertEqual(sorted(tr._held), ids)
            drop()                  # kvshim answering again: released
            self.assertEqual(tr.ahead_backed(), 0)
            self.assertEqual(tr._held, {})

    def test_unexpected_transformers_warns(self):
        mod = types.ModuleType("fake")
        err = io.StringIO()
        with redirect_stderr(err):
            transformers_cb.patch_cache_module(mod)
        self.assertIn("not as expected", err.getvalue())
        self.assertIn("left eager", err.getvalue())


class FakeDtype:
    def __init__(self, name, itemsize):
        self.name, self.itemsize = name, itemsize


class FakeDevice:
    def __init__(self, spec):
        kind, _, index = str(spec).partition(":")
        self.type, self.index = kind, int(index) if index else None


class FakeStorage:
    """A tensor's memory taken from a DLPack capsule: torch calls the
    capsule's deleter when the storage dies."""

    def __init__(self, managed):
        self.managed = managed

    def __del__(self):
        kvshim.dlpack_free(self.managed)


class FakeCudaTensor:
    """What torch.utils.dlpack.from_dlpack makes of a kvshim capsule: a view
    sharing the storage."""

    def __init__(self, storage, dtype):
        m = kvshim.DLManaged.from_address(storage.managed)
        self.storage, self.dtype = storage, dtype
        self.shape = tuple(m.shape[i] for i in range(m.ndim))
        self.addr = m.data
        self.is_cuda, self.device = m.device_type == 2, FakeDevice("cuda:%d" % m.device_id)

    def view(self, dtype):
        return FakeCudaTensor(self.storage, dtype)

    def data_ptr(self):
        return self.addr

    def stride(self, dim):
        n = 1
        for d in self.shape[dim + 1:]:
            n *= d
        return n

    def element_size(self):
        return self.dtype.itemsize

    def numel(self):
        n = 1
        for d in self.shape:
            n *= d
        return n


class Devices:
    """The emulated driver's devices, switched as torch.cuda switches them
    (torch.cuda.set_device and torch.cuda.device make a device's primary
    context current on the calling thread, through cudaSetDevice)."""

    DEVICE_ORDINAL = 9      # CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL

    def __init__(self):
        self.cu = ctypes.CDLL("libcuda.so.1")
        self.cu.cuInit(0)
        self.cu.cuCtxSetCurrent.argtypes = [ctypes.c_void_p]
        self.cu.cuPointerGetAttribute.argtypes = [ctypes.c_void_p, ctypes.c_int,
                                                  ctypes.c_uint64]
        self.ctx = {}

    def count(self):
        n = ctypes.c_int(0)
        self.cu.cuDeviceGetCount(ctypes.byref(n))
        return n.value

    def current_device(self):
        ctx, dev = ctypes.c_void_p(), ctypes.c_int(0)
        if self.cu.cuCtxGetCurrent(ctypes.byref(ctx)) != 0 or not ctx.value:
            return 0
        self.cu.cuCtxGetDevice(ctypes.byref(dev))
        return dev.value

    def set_device(self, index):
        if index not in self.ctx:
            ctx = ctypes.c_void_p()
            if self.cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), index) != 0:
                raise RuntimeError("CUDA error: invalid device ordinal")
            self.ctx[index] = ctx
        self.cu.cuCtxSetCurrent(self.ctx[index])

    @contextlib.contextmanager
    def device(self, index):
        prev = self.current_device()
        self.set_device(index)
        try:
            yield
        finally:
            self.set_device(prev)

    def ordinal(self, addr):
        """The device holding the memory at addr, or None (nothing backs it)."""
        dev = ctypes.c_int(-1)
        if self.cu.cuPointerGetAttribute(ctypes.byref(dev), self.DEVICE_ORDINAL, addr) != 0:
            return None
        return dev.value


DEVICES = Devices()


class FakeTorch(types.ModuleType):
    """The few torch calls kvshim.tensors and the cache construction make."""

    def __init__(self):
        super().__init__("torch")
        self.bfloat16 = FakeDtype("bfloat16", 2)
        self.int16 = FakeDtype("int16", 2)
        self.complex32x4 = FakeDtype("wide", 16)
        self.plain, self.taken, self.refuse_dlpack = [], [], False
        self._used = ctypes.create_string_buffer(b"used_dltensor")
        self.cuda = types.SimpleNamespace(current_device=DEVICES.current_device,
                                          set_device=DEVICES.set_device,
                                          device=DEVICES.device, is_available=lambda: True)
        self.utils = types.SimpleNamespace(
            dlpack=types.SimpleNamespace(from_dlpack=self.from_dlpack))

    def empty(self, *args, **kwargs):
        """Plain memory: an address in no span."""
        self.plain.append((args, kwargs))
        shape = args[0]
        n = 1
        for d in shape[1:]:
            n *= d
        return FakeTensor(4096, shape[0], n)

    def from_dlpack(self, capsule):
        api = ctypes.pythonapi
        api.PyCapsule_GetPointer.restype = ctypes.c_void_p
        api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
        if self.refuse_dlpack:
            raise RuntimeError("from_dlpack refused")
        managed = api.PyCapsule_GetPointer(capsule, b"dltensor")
        api.PyCapsule_SetName(capsule, self._used)
        m = kvshim.DLManaged.from_address(managed)
        self.taken.append((m.code, m.bits))
        return FakeCudaTensor(FakeStorage(managed), self.int16)

    def device(self, spec):
        return FakeDevice(spec)

    def get_default_dtype(self):
        return FakeDtype("float32", 4)


class FakePagedCache(StandInCache):
    """PagedAttentionCache.__init__'s allocations, as transformers 5.17 makes
    them: torch.empty(cache_shape, dtype=, device=) per layer, each layer on
    its device (devices[layer]: one device, or a model split over several)."""

    def __init__(self, torch, layers=2, num_blocks=256, block_size=16, row=8 * 128,
                 devices=("cuda:0",)):
        self.block_size, self.num_blocks = block_size, num_blocks
        self.cache_shape = ((num_blocks + 2) * block_size, 8, row // 8)
        self.key_cache, self.value_cache = [], []
        for layer in range(layers):
            dev = devices[layer % len(devices)]
            self.key_cache.append(torch.empty(self.cache_shape, dtype=torch.bfloat16,
                                              device=dev))
            self.value_cache.append(torch.empty(self.cache_shape, dtype=torch.bfloat16,
                                                device=dev))
        self.other = torch.empty((64,), dtype=torch.int16, device=devices[0])
        self._block_manager = StandInBlockManager(num_blocks)


class SpanTensorTest(unittest.TestCase):
    def setUp(self):
        self.torch = FakeTorch()
        kvshim.trim(1 << 40)
        self.spans0 = kvshim.stats()["spans"]

    def build(self, **kw):
        cache = FakePagedCache.__new__(FakePagedCache)
        cache.cache_shape = ((kw.get("num_blocks", 256) + 2) * 16, 8, 128)
        cache.block_size = 16
        with transformers_cb._kv_from_spans(cache, self.torch):
            FakePagedCache.__init__(cache, self.torch, **kw)
        return cache

    def test_kv_tensors_are_lazy_spans(self):
        c = self.build()
        # 4 KV tensors of 258 blocks x 32 KiB: one span each; the other
        # allocation went to torch as usual
        self.assertEqual(kvshim.stats()["spans"], self.spans0 + 4)
        self.assertEqual([a for a, _ in self.torch.plain], [((64,),)])
        for t in c.key_cache + c.value_cache:
            self.assertEqual(t.dtype.name, "bfloat16")
            self.assertEqual(t.shape, c.cache_shape)
        # handed to torch as 16-bit integers in DLPack capsules, viewed as
        # bfloat16; backed: the padding blocks only (the last page)
        self.assertEqual(self.torch.taken, [(kvshim.DL_INT, 16)] * 4)
        st = kvshim.stats()
        self.assertEqual(st["mapped_bytes"], 4 * 2 * MIB)
        self.assertEqual(st["cached_bytes"], 0)
        tr = transformers_cb.attach(c)
        self.assertIsNotNone(tr)
        ids = c._block_manager.get_free_blocks(65, None, False, 0)   # pages 0 and 1
        self.assertEqual(len(ids), 65)
        self.assertEqual(kvshim.stats()["mapped_bytes"], 4 * 3 * 2 * MIB)
        self.assertEqual(kvshim.stats()["cached_bytes"], 0)
        tr.group.close()
        # the spans go with the last tensor viewing them
        del c, tr, t
        import gc
        gc.collect()
        self.assertEqual(kvshim.stats()["spans"], self.spans0)

    def test_reserve_failing_falls_back(self):
        real = kvshim.reserve_dlpack
        calls = []

        def second_fails(*args):
            calls.append(args)
            if len(calls) == 2:
                raise kvshim.KvshimError(kvshim.ENOMEM, "kvshim_reserve_dlpack")
            return real(*args)
        kvshim.reserve_dlpack = second_fails
        self.addCleanup(setattr, kvshim, "reserve_dlpack", real)
        err = io.StringIO()
        with redirect_stderr(err):
            c = self.build()
            self.assertIsNone(transformers_cb.attach(c))
        self.assertIn("allocated whole", err.getvalue())
        self.assertIn("not all kvshim spans", err.getvalue())
        # one span made, then plain tensors; the span is backed in full
        self.assertEqual(len(calls), 2)
        self.assertEqual(kvshim.stats()["spans"], self.spans0 + 1)
        self.assertEqual(kvshim.stats()["mapped_bytes"], 5 * 2 * MIB)
        del c
        import gc
        gc.collect()
        self.assertEqual(kvshim.stats()["spans"], self.spans0)

    def test_other_devices_and_shapes_pass_through(self):
        cache = types.SimpleNamespace(cache_shape=(32, 8, 128), block_size=16)
        t = self.torch
        os.environ["KVSHIM_DEVICE"] = "0"       # device 1 is not kvshim's
        self.addCleanup(os.environ.pop, "KVSHIM_DEVICE")
        with transformers_cb._kv_from_spans(cache, t):
            t.empty((32, 8, 128), dtype=t.bfloat16, device="cuda:1")
            t.empty((32, 8, 128), dtype=t.bfloat16, device="cpu")
            t.empty((32, 8, 64), dtype=t.bfloat16, device="cuda:0")
            t.empty((32, 8, 128), dtype=t.bfloat16, device="cuda:0", pin_memory=True)
        self.assertEqual(len(t.plain), 4)
        self.assertEqual(kvshim.stats()["spans"], self.spans0)

    def test_bad_span_tensors_refused(self):
        from kvshim import tensors
        with self.assertRaises(ValueError):
            tensors.span_tensor(self.torch, (0, 8), self.torch.bfloat16)
        with self.assertRaises(ValueError):
            tensors.span_tensor(self.torch, (4, 8), self.torch.complex32x4)
        with self.assertRaises(ValueError):
            tensors.span_tensor(self.torch, (), self.torch.bfloat16)
        with self.assertRaises(kvshim.KvshimError) as cm:
            tensors.span_tensor(self.torch, (2,) * 9, self.torch.bfloat16)
        self.assertEqual(cm.exception.code, kvshim.EINVAL)
        self.assertEqual(kvshim.stats()["spans"], self.spans0)

    def test_span_released_when_torch_refuses_it(self):
        from kvshim import tensors
        self.torch.refuse_dlpack = True
        with self.assertRaises(RuntimeError):
            tensors.span_tensor(self.torch, (64, 8), self.torch.bfloat16)
        self.assertEqual(kvshim.stats()["spans"], self.spans0)

    def test_span_lives_as_long_as_a_view(self):
        from kvshim import tensors
        t = tensors.span_tensor(self.torch, (1024, 1024), self.torch.bfloat16)
        v = t.view(self.torch.int16)
        del t
        import gc
        gc.collect()
        self.assertEqual(kvshim.stats()["spans"], self.spans0 + 1)
        kvshim.map(v.data_ptr(), 4096)
        del v
        gc.collect()
        st = kvshim.stats()
        self.assertEqual(st["spans"], self.spans0)
        self.assertEqual(st["mapped_bytes"], 0)



class MultiDeviceTest(unittest.TestCase):
    """Several GPUs (make check emulates two): the KV tensors of a
    tensor-parallel rank on its own GPU, each rank backing its own shards of
    the same block ids; a model split over GPUs by layers, its cache's
    tensors on two devices in one block group; kvshim started on the
    current device."""

    def setUp(self):
        if DEVICES.count() < 2:
            self.skipTest("the driver has fewer than two devices")
        self.torch = FakeTorch()
        self.addCleanup(DEVICES.set_device, DEVICES.current_device())
        self.base = {}
        for dev in (0, 1):
            with DEVICES.device(dev):
                kvshim.trim(1 << 40)
                self.base[dev] = kvshim.stats()

    def stats(self, dev):
        """Device dev's figures since setUp (spans, mapped and cached)."""
        with DEVICES.device(dev):
            st = kvshim.stats()
        return {k: st[k] - self.base[dev][k] for k in ("spans", "mapped_bytes", "cached_bytes")}

    def build(self, devices, layers=2):
        cache = FakePagedCache.__new__(FakePagedCache)
        cache.cache_shape = ((256 + 2) * 16, 8, 128)
        cache.block_size = 16
        with transformers_cb._kv_from_spans(cache, self.torch):
            FakePagedCache.__init__(cache, self.torch, layers=layers, devices=devices)
        return cache

    def release(self, cache):
        cache.key_cache = cache.value_cache = None
        import gc
        gc.collect()

    def test_tensor_parallel_ranks_map_their_own_shards(self):
        ranks = {}
        for rank in (1, 0):          # each rank: set_device(rank), its cache there
            self.torch.cuda.set_device(rank)
            c = self.build(("cuda:%d" % rank,))
            self.addCleanup(self.release, c)
            for t in c.key_cache + c.value_cache:
                self.assertEqual(t.device.index, rank)
                # the padding blocks at the end: backed, on the rank's GPU
                self.assertEqual(DEVICES.ordinal(t.data_ptr() + t.numel() * 2 - 1), rank)
            ranks[rank] = (c, transformers_cb.attach(c))
            self.assertIsNotNone(ranks[rank][1])
        self.assertEqual(DEVICES.current_device(), 0)
        for rank, (c, tr) in ranks.items():
            ids = c._block_manager.get_free_blocks(65, None, False, 0)    # pages 0 and 1
            self.assertEqual(ids, list(range(65)))
            for t in c.key_cache + c.value_cache:
                self.assertEqual(DEVICES.ordinal(t.data_ptr()), rank)
                self.assertEqual(DEVICES.ordinal(t.data_ptr() + 2 * MIB), rank)
                self.assertIsNone(DEVICES.ordinal(t.data_ptr() + 4 * MIB))
        for rank in (0, 1):
            st = self.stats(rank)
            self.assertEqual(st["mapped_bytes"], 4 * 3 * 2 * MIB)
            self.assertEqual(st["spans"], 4)
        # rank 1 frees its blocks: its pages are cached, rank 0's untouched
        c, tr = ranks[1]
        c._block_manager.free_blocks(list(range(65)), shareable=False)
        self.assertEqual(self.stats(1)["cached_bytes"], 4 * 2 * 2 * MIB)
        self.assertEqual(self.stats(0)["cached_bytes"], 0)
        for rank, (c, tr) in ranks.items():
            tr.group.close()

    def test_group_stats_are_its_gpus(self):
        """A group's stats are those of its first tensor's GPU whatever the
        current device: the tracker's page size and who shares its budget
        are read there (kvshim.stats() would start kvshim on the current
        device, which the engine may not use)."""
        self.torch.cuda.set_device(1)
        c = self.build(("cuda:1",))
        self.addCleanup(self.release, c)
        tr = transformers_cb.attach(c)
        self.torch.cuda.set_device(0)
        ids = c._block_manager.get_free_blocks(65, None, False, 0)
        got = tr.group.stats()
        with DEVICES.device(1):
            there = kvshim.stats()
        here = kvshim.stats()
        self.assertEqual(got["mapped_bytes"], there["mapped_bytes"])
        self.assertNotEqual(got["mapped_bytes"], here["mapped_bytes"])
        self.assertEqual(tr._page, there["page_bytes"])
        c._block_manager.free_blocks(ids, shareable=False)
        self.assertEqual(tr.group.stats()["cached_bytes"] - self.base[1]["cached_bytes"],
                         self.stats(1)["cached_bytes"])
        gid = tr.group.id
        tr.group.close()
        with self.assertRaises(kvshim.KvshimError):
            kvshim.Group.stats(types.SimpleNamespace(id=gid))

    def test_layers_split_over_gpus(self):
        c = self.build(("cuda:0", "cuda:1"))
        self.addCleanup(self.release, c)
        self.assertEqual([t.device.index for t in c.key_cache], [0, 1])
        tr = transformers_cb.attach(c)
        self.assertIsNotNone(tr)
        ids = c._block_manager.get_free_blocks(65, None, False, 0)
        for layer, dev in ((0, 0), (1, 1)):
            for t in (c.key_cache[layer], c.value_cache[layer]):
                self.assertEqual(DEVICES.ordinal(t.data_ptr() + 2 * MIB), dev)
        for dev in (0, 1):
            self.assertEqual(self.stats(dev)["mapped_bytes"], 2 * 3 * 2 * MIB)
        self.assertTrue(tr.can_take([100]))
        self.assertGreater(tr.room(ttl=0), 0)
        c._block_manager.free_blocks(ids, shareable=False)
        for dev in (0, 1):
            self.assertEqual(self.stats(dev)["cached_bytes"], 2 * 2 * 2 * MIB)
        tr.group.close()

    def test_started_on_the_current_device(self):
        seen = []
        real = kvshim.stats
        kvshim.stats = lambda: seen.append(DEVICES.current_device()) or real()
        self.addCleanup(setattr, kvshim, "stats", real)
        self.torch.cuda.set_device(1)
        transformers_cb._start_kvshim(self.torch)
        for t in threading.enumerate():
            if t.name == "kvshim-start":
                t.join(10)
        self.assertEqual(seen, [1])

    def test_not_started_on_a_device_kvshim_leaves(self):
        seen = []
        real = kvshim.stats
        kvshim.stats = lambda: seen.append(1) or real()
        self.addCleanup(setattr, kvshim, "stats", real)
        os.environ["KVSHIM_DEVICE"] = "0"
        self.addCleanup(os.environ.pop, "KVSHIM_DEVICE")
        self.torch.cuda.set_device(1)
        transformers_cb._start_kvshim(self.torch)
        self.assertEqual([t for t in threading.enumerate() if t.name == "kvshim-start"], [])
        self.assertEqual(seen, [])


class DeviceSettingTest(unittest.TestCase):
    """KVSHIM_DEVICE read in Python as the library reads it."""

    def read(self, value):
        from kvshim import tensors
        old = os.environ.get("KVSHIM_DEVICE")
        os.environ["KVSHIM_DEVICE"] = value
        try:
            return tensors.devices(), [tensors.manages(i) for i in (0, 1, 2, 63, 64)]
        finally:
            if old is None:
                del os.environ["KVSHIM_DEVICE"]
            else:
                os.environ["KVSHIM_DEVICE"] = old

    def test_good(self):
        self.assertEqual(self.read("all"), (None, [True, True, True, True, False]))
        self.assertEqual(self.read("ALL")[0], None)
        self.assertEqual(self.read("0"), ({0}, [True, False, False, False, False]))
        self.assertEqual(self.read("2,0"), ({0, 2}, [True, False, True, False, False]))
        self.assertEqual(self.read("63")[0], {63})

    def test_default_is_all(self):
        from kvshim import tensors
        if "KVSHIM_DEVICE" in os.environ:
            self.skipTest("KVSHIM_DEVICE is set")
        self.assertIsNone(tensors.devices())
        self.assertTrue(tensors.manages(1))
        self.assertFalse(tensors.manages(None))

    def test_malformed_manages_nothing(self):
        for bad in ("", ",", "0,", "0,,1", " 1", "+1", "1 ", "0, 1", "-1", "64", "0,0",
                    "all,0", "1-3", "x"):
            self.assertEqual(self.read(bad), (set(), [False] * 5), bad)

# ---- what one batch reads (transformers_cb_reads) ------------------------------

class Grid:
    """A 4-D float tensor of shape (1, 1, rows, columns) or a view of one,
    with the few operations attention masks take: views by [..., q0:q1,
    k0:k1], fill_, triu_, assignment of a same-shaped grid."""

    def __init__(self, cells, r0, c0, rows, cols, dtype):
        self.cells, self.r0, self.c0, self.dtype = cells, r0, c0, dtype
        self.shape = (1, 1, rows, cols)
        self.device = "cpu"

    @classmethod
    def new(cls, shape, value, dtype):
        rows, cols = shape[-2], shape[-1]
        return cls([[value] * cols for _ in range(rows)], 0, 0, rows, cols, dtype)

    def _view(self, key):
        assert key[0] is Ellipsis and len(key) == 3
        q, k = key[1].indices(self.shape[2]), key[2].indices(self.shape[3])
        return Grid(self.cells, self.r0 + q[0], self.c0 + k[0], q[1] - q[0], k[1] - k[0],
                    self.dtype)

    def __getitem__(self, key):
        return self._view(key)

    def __setitem__(self, key, other):
        view = self._view(key)
        assert view.shape == other.shape
        for i, j in view.each():
            view.set(i, j, other.get(i, j))

    def each(self):
        return ((i, j) for i in range(self.shape[2]) for j in range(self.shape[3]))

    def get(self, i, j):
        return self.cells[self.r0 + i][self.c0 + j]

    def set(self, i, j, v):
        self.cells[self.r0 + i][self.c0 + j] = v

    def fill_(self, v):
        for i, j in self.each():
            self.set(i, j, v)
        return self

    def triu_(self, diagonal):
        for i, j in self.each():
            if j - i < diagonal:
                self.set(i, j, 0.0)
        return self

    def clone(self):
        return Grid([[self.get(i, j) for j in range(self.shape[3])]
                     for i in range(self.shape[2])], 0, 0, self.shape[2], self.shape[3],
                    self.dtype)

    def rows(self):
        return [[self.get(i, j) for j in range(self.shape[3])] for i in range(self.shape[2])]


class MaskTorch:
    """What building masks takes of torch, on Grids; counts the temporaries
    (torch.full) made."""
    bfloat16 = FakeDtype("bfloat16", 2)
    LOW = -3.0e38

    def __init__(self):
        self.temporaries = 0

    def finfo(self, dtype):
        return types.SimpleNamespace(min=self.LOW)

    def full(self, shape, value, dtype=None, device=None):
        self.temporaries += 1
        return Grid.new(shape, value, dtype)

    def zeros(self, shape, dtype=None):
        return Grid.new(shape, 0.0, dtype)

    def triu(self, grid, diagonal=0):
        return grid.clone().triu_(diagonal)

    def equal(self, a, b):
        return a.rows() == b.rows()


def reference_mask_builder(torch, shift=0):
    """build_attention_mask as transformers 5.17 writes it (causal part):
    a full [seqlen_q, seqlen_k] block, its upper triangle kept, assigned.
    shift moves the diagonal: a transformers building other masks."""
    def build_attention_mask(attention_mask, cumulative_seqlens_q, cumulative_seqlens_k,
                             sliding_window=1):
        low = torch.finfo(attention_mask.dtype).min
        for i in range(len(cumulative_seqlens_q) - 1):
            seqlen_q = cumulative_seqlens_q[i + 1] - cumulative_seqlens_q[i]
            seqlen_k = cumulative_seqlens_k[i + 1] - cumulative_seqlens_k[i]
            diagonal = seqlen_k - seqlen_q + 1 if 1 <= seqlen_q < seqlen_k else 1
            qr = slice(cumulative_seqlens_q[i], cumulative_seqlens_q[i + 1])
            kr = slice(cumulative_seqlens_k[i], cumulative_seqlens_k[i + 1])
            full = torch.full(attention_mask[..., qr, kr].shape, low,
                              dtype=attention_mask.dtype, device=attention_mask.device)
            attention_mask[..., qr, kr] = torch.triu(full, diagonal=diagonal + shift)
    return build_attention_mask


def io_module(mask_shift=0):
    """transformers' input_outputs as the adapter sees it: the IOs size
    their buffers from cache.num_blocks * cache.block_size at init."""
    mod = types.ModuleType("input_outputs")
    mod.torch = MaskTorch()
    mod.build_attention_mask = reference_mask_builder(mod.torch, mask_shift)

    class ContinuousBatchingIOs:
        def __init__(self, cache):
            self.cache = cache
            self._setup_static_tensors()

        def _setup_static_tensors(self):
            m = self.cache.max_batch_tokens
            num_pages = self.cache.num_blocks * self.cache.block_size
            self.mask_shape = (1, 1, m, num_pages + m)
            self.read_index_shape = (len(self.cache.group_cache_managers), num_pages + m)

    mod.ContinuousBatchingIOs = ContinuousBatchingIOs
    return mod


class StandInGraphs:
    """transformers' CudaGraphBuffer: the graphs kept, by shape."""
    def __init__(self):
        self._storage = {}

    def get_graph(self, key):
        return self._storage.get(key)

    def set_graph(self, key, graph):
        self._storage[key] = graph


class StandInIOs:
    """transformers' ContinuousBatchingIOs, as prepared for a batch: its
    padded sizes, its path and the graphs kept for its shapes."""
    def __init__(self):
        self.num_q_tokens, self.max_kv_read, self.use_block_table = 256, 1024, False
        self.graphs = StandInGraphs()

    def _get_graph_key(self):
        if self.use_block_table:
            return (self.num_q_tokens,)
        return (self.num_q_tokens, self.max_kv_read)


class StandInAsyncIOs:
    """transformers' ContinuousBatchingAsyncIOs: two pairs, each with the
    IOs a batch is prepared on (host_io) and runs on (device_io, which
    _transfer_inputs gives the host IOs' sizes and path)."""
    def __init__(self):
        self.io_pairs = [types.SimpleNamespace(host_io=StandInIOs(), device_io=StandInIOs())
                         for _ in range(2)]
        self.current_pair = 0

    @property
    def use_block_table(self):
        return self.io_pairs[self.current_pair].host_io.use_block_table


def runner_module():
    """transformers' model_runner: the varlen warm-up of 5.17, one fake
    request of max_batch_tokens new tokens after num_blocks * block_size -
    max_batch_tokens cached ones, its blocks from cache.allocate_blocks, its
    indices from the cache, its blocks freed at the end."""
    mod = types.ModuleType("model_runner")

    class ModelRunner:
        def __init__(self, cache):
            self.cache, self.indices = cache, []
            self.inputs_and_outputs = StandInIOs()
            self.use_cuda_graph_varlen = self.use_cuda_graph_decode = True
            self.ran = []

        def compute_batch(self, model, batch_data):
            # 5.17's: the IOs' path picks whether CUDA graphs apply; a
            # graph kept for the batch's shape is replayed, else one is
            # captured and kept
            ios = self.inputs_and_outputs
            if ios.use_block_table:
                use = self.use_cuda_graph_decode
            else:
                use = self.use_cuda_graph_varlen
            if isinstance(ios, StandInAsyncIOs):
                ios = ios.io_pairs[ios.current_pair].device_io
            key = ios._get_graph_key()
            if batch_data == "fails":
                raise RuntimeError("the forward failed")
            if not use:
                self.ran.append(("eager", key))
            elif ios.graphs.get_graph(key) is not None:
                self.ran.append(("replay", key))
            else:
                ios.graphs.set_graph(key, object())
                self.ran.append(("capture", key))

        def warmup(self, model):
            num_q = self.cache.max_batch_tokens
            kv = self.cache.num_blocks * self.cache.block_size - num_q
            return self.run_one_warmup(model=model, num_q_tokens=num_q, max_kv_read=kv)

        def run_one_warmup(self, model, num_q_tokens, max_kv_read):
            rid = "__warmup_PREFILLING_0__"
            blocks = -(-(num_q_tokens + max_kv_read) // self.cache.block_size)
            if self.cache.allocate_blocks(blocks, rid, 0) is None:
                return 0.0
            try:
                reads = [[] for _ in self.cache.group_cache_managers]
                writes = [[] for _ in self.cache.group_cache_managers]
                self.cache.extend_read_and_write_indices(rid, max_kv_read, num_q_tokens, reads,
                                                         writes)
                self.indices.append((reads, writes))
            finally:
                self.cache.free_blocks(rid)
            return 1.0

    mod.ModelRunner = ModelRunner
    return mod


def scheduler_module():
    mod = types.ModuleType("scheduler")

    class Scheduler:
        def __init__(self, cache):
            self.cache, self.waiting = cache, {}

        def add_waiting_request(self, state):
            self.waiting[state.request_id] = state

    mod.Scheduler = Scheduler
    return mod


def request(rid, prompt, new):
    """A RequestState's fields the admission check reads."""
    return types.SimpleNamespace(request_id=rid, initial_tokens=[1] * prompt, max_new_tokens=new,
                                 _new_tokens_limit=2147483647 if new is None else new)


def flow_modules(torch, cbc):
    """transformers' cache and continuous_api as the adapter sees them: the
    manager keeps nothing of its workload hints; building a batch
    processor builds the cache (torch.empty per KV tensor, sized by the
    config), then the IOs, the model runner and the scheduler."""
    cache_mod = types.ModuleType("cache")
    io, runner, sched = io_module(), runner_module(), scheduler_module()

    class PagedAttentionCache(StandInCache):
        def __init__(self, config, continuous_batching_config, device=None, dtype=None):
            self.config = config
            self.block_size = continuous_batching_config.block_size
            self.num_blocks = continuous_batching_config.num_blocks
            self.max_batch_tokens = continuous_batching_config.max_batch_tokens
            self.num_pages = self.num_blocks * self.block_size
            self.cache_shape = ((self.num_blocks + 2) * self.block_size, 8, 128)
            self.key_cache = [torch.empty(self.cache_shape, dtype=torch.bfloat16, device="cuda:0")]
            self.value_cache = [torch.empty(self.cache_shape, dtype=torch.bfloat16,
                                            device="cuda:0")]
            self._block_manager = StandInBlockManager(self.num_blocks)
            self.group_cache_managers = [StandInGroup()]

    cache_mod.PagedAttentionCache = PagedAttentionCache
    api = types.ModuleType("continuous_api")

    class ContinuousBatchProcessor:
        def __init__(self, cache):
            self.cache = cache
            self.ios = io.ContinuousBatchingIOs(cache)
            self.runner = runner.ModelRunner(cache)
            self.scheduler = sched.Scheduler(cache)

        def prepare_next_batch(self):
            return False

    class ContinuousBatchingManager:
        def __init__(self, model, generation_config, continuous_batching_config,
                     workload_hints=None):
            self.cbc = continuous_batching_config

        def _create_batch_processor(self):
            config = types.SimpleNamespace(max_position_embeddings=2048)
            return ContinuousBatchProcessor(cache_mod.PagedAttentionCache(config, self.cbc))

    api.ContinuousBatchProcessor = ContinuousBatchProcessor
    api.ContinuousBatchingManager = ContinuousBatchingManager
    return cache_mod, api, io, runner, sched


def use_blocks(cache, n):
    """n blocks of cache handed out: out of its free list, in use."""
    for _ in range(n):
        cache._block_manager._uninit_block_ids.popleft()


def load_colocate(name):
    """tests/bench/colocate.py (or KVSHIM_BENCH_SRC's), loaded as module name."""
    import importlib.util
    src = os.environ.get("KVSHIM_BENCH_SRC") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "bench")
    spec = importlib.util.spec_from_file_location(name, os.path.join(src, "colocate.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class PlainPaddingTest(unittest.TestCase):
    # tests/bench/built_tree.py: the adapter's default padding, given to a
    # plain run's config so that plain and kvshim read the same shapes
    # (tests/gpu's token comparisons, colocate's staticpad)
    def setUp(self):
        sys.path.insert(0, os.environ.get("KVSHIM_BENCH_SRC") or os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
        self.addCleanup(sys.path.pop, 0)
        import built_tree
        self.bt = built_tree
        self.addCleanup(self.put_back, os.environ.get("LD_PRELOAD"))
        os.environ.pop("LD_PRELOAD", None)

    def put_back(self, preload):
        if preload is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = preload

    def test_reads_the_adapters_own(self):
        self.assertEqual(self.bt.adapter_kv_pad(), reads.KV_PAD_AUTO)

    def test_a_plain_run_stays_plain(self):
        # padding a plain run's config loads neither libkvshim nor the
        # adapter's import hook (a fresh process: this one has both)
        code = ("import sys, types; sys.path.insert(0, %r); import built_tree; "
                "c = types.SimpleNamespace(kv_padding_interval_size=16384); "
                "print(built_tree.pad_plain_as_kvshim(c)); import kvshim; "
                "print(kvshim._lib is None, any(type(f).__name__ == '_Finder' "
                "for f in sys.meta_path))" % os.path.dirname(self.bt.__file__))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_PRELOAD")}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.split(), [str(reads.KV_PAD_AUTO), "True", "False"])

    def test_plain_config_padded_as_kvshim(self):
        pad = reads.KV_PAD_AUTO
        for own, want in ((16384, pad), (1 << 20, pad), (pad, None), (1024, None)):
            cbc = types.SimpleNamespace(kv_padding_interval_size=own)
            self.assertEqual(self.bt.pad_plain_as_kvshim(cbc), want)
            self.assertEqual(cbc.kv_padding_interval_size, want or own)
        # no such setting, or not a number: left alone
        for cbc in (types.SimpleNamespace(), types.SimpleNamespace(kv_padding_interval_size=True),
                    types.SimpleNamespace(kv_padding_interval_size="16384")):
            before = dict(vars(cbc))
            self.assertIsNone(self.bt.pad_plain_as_kvshim(cbc))
            self.assertEqual(vars(cbc), before)
        # under kvshim-run the adapter pads: nothing set here
        os.environ["LD_PRELOAD"] = "/x/libkvshim.so"
        cbc = types.SimpleNamespace(kv_padding_interval_size=16384)
        self.assertIsNone(self.bt.pad_plain_as_kvshim(cbc))
        self.assertEqual(cbc.kv_padding_interval_size, 16384)


class ReadBudgetTest(unittest.TestCase):
    # 16-token blocks of 32 KiB (8 heads x 128, bf16); 16384 blocks: a
    # capacity of 262144 tokens; batches of up to 256 new tokens
    def setUp(self):
        self.addCleanup(self.restore, set(reads._wired), os.environ.get(reads.READ_TOKENS_VAR))
        self.addCleanup(self.restore_pad, os.environ.get(reads.KV_PAD_VAR))
        # (the guard's threshold: STARVED_S, whatever the caller's
        # environment says)
        self.addCleanup(reads._starved.__setitem__, slice(None), list(reads._starved))
        reads._starved[:] = [reads.STARVED_S]
        reads._warned.clear()
        os.environ.pop(reads.READ_TOKENS_VAR, None)
        os.environ.pop(reads.KV_PAD_VAR, None)
        kvshim.trim(1 << 40)
        self.mapped0 = kvshim.stats()["mapped_bytes"]

    def restore(self, wired, setting):
        reads._wired.clear()
        reads._wired.update(wired)
        if setting is None:
            os.environ.pop(reads.READ_TOKENS_VAR, None)
        else:
            os.environ[reads.READ_TOKENS_VAR] = setting

    def restore_pad(self, setting):
        if setting is None:
            os.environ.pop(reads.KV_PAD_VAR, None)
        else:
            os.environ[reads.KV_PAD_VAR] = setting

    def fake_transformers(self, torch):
        """The modules the adapter imports by name: torch, and the block
        manager's (the stand-in)."""
        names = ["torch", "transformers", "transformers.generation",
                 "transformers.generation.continuous_batching",
                 "transformers.generation.continuous_batching.cache_manager"]
        for name in names:
            self.addCleanup(self.put_back, name, sys.modules.get(name))
            mod = types.ModuleType(name)
            mod.__path__ = []
            sys.modules[name] = mod
        sys.modules["torch"] = torch
        sys.modules[names[-1]].BlockManager = StandInBlockManager

    def put_back(self, name, mod):
        if mod is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = mod

    def build(self, hints=None, patch=("io", "runner", "scheduler"), wired=None,
              num_blocks=16384, kv_interval=1024):
        """A batch processor built as generate_batch builds one, with the
        adapter applied to the stand-in modules named in patch; the
        engine's own KV padding kv_interval."""
        torch = FakeTorch()
        self.fake_transformers(torch)
        cbc = types.SimpleNamespace(block_size=16, num_blocks=num_blocks, max_batch_tokens=256,
                                    max_requests_per_batch=8,
                                    kv_padding_interval_size=kv_interval)
        self.cbc = cbc
        cache_mod, api, iom, runner, sched = flow_modules(torch, cbc)
        err = io.StringIO()
        with redirect_stderr(err):
            transformers_cb.patch_cache_module(cache_mod)
            transformers_cb.patch_api_module(api)
            for name, mod, fn in (("io", iom, reads.patch_io_module),
                                  ("runner", runner, reads.patch_runner_module),
                                  ("scheduler", sched, reads.patch_scheduler_module)):
                if name in patch:
                    fn(mod)
            if wired is not None:
                reads._wired.clear()
                reads._wired.update(wired)
            manager = api.ContinuousBatchingManager(None, None, cbc, workload_hints=hints)
            proc = manager._create_batch_processor()
        self.addCleanup(self.release, proc)
        self.err = err.getvalue()
        return proc

    def release(self, proc):
        proc.cache.kvshim_tracker.group.close()
        proc.cache = proc.ios = proc.runner = proc.scheduler = None
        import gc
        gc.collect()
        kvshim.trim(1 << 40)

    def test_static_buffers_sized_by_the_workload(self):
        # 8 requests of up to 100 + 28 tokens: a batch reads at most 1024
        # KV tokens, not the capacity's 262144
        hints = types.SimpleNamespace(max_prompt_length=100, max_generated_length=28,
                                      num_requests=20)
        p = self.build(hints)
        self.assertEqual(self.err, "")
        self.assertEqual(p.cache.kvshim_read_tokens, 1024)
        self.assertEqual(p.cache.num_pages, 1024)          # the scheduler's budget
        self.assertEqual(p.cache.num_blocks, 16384)        # the pool keeps its size
        self.assertEqual(p.ios.mask_shape, (1, 1, 256, 1024 + 256))
        self.assertEqual(p.ios.read_index_shape, (1, 1024 + 256))
        self.assertIs(p.ios.cache, p.cache)
        self.assertIn("8 requests", p.cache.kvshim_read_how)

    def test_static_buffers_without_a_workload(self):
        # a server: max_position_embeddings (2048), and at least 64K
        p = self.build()
        self.assertEqual(p.cache.kvshim_read_tokens, 65536)
        self.assertIn("no workload given", p.cache.kvshim_read_how)
        os.environ[reads.READ_TOKENS_VAR] = "3000"          # whole blocks, not 1024s
        p = self.build()
        self.assertEqual(p.cache.kvshim_read_tokens, 3008)
        self.assertEqual(p.ios.mask_shape, (1, 1, 256, 3008 + 256))
        os.environ[reads.READ_TOKENS_VAR] = "off"
        p = self.build()
        self.assertIsNone(getattr(p.cache, "kvshim_read_tokens", None))
        self.assertEqual(p.ios.mask_shape, (1, 1, 256, 262144 + 256))

    def test_warmup_takes_no_blocks(self):
        hints = types.SimpleNamespace(max_prompt_length=100, max_generated_length=28,
                                      num_requests=8)
        p = self.build(hints)
        tr, bm = p.cache.kvshim_tracker, p.cache._block_manager
        free = list(bm._uninit_block_ids)
        self.assertEqual(p.runner.warmup(model=None), 1.0)
        # nothing taken from the block manager, nothing backed: the fake
        # request of R tokens (R - 256 cached, 256 new) read them all and
        # wrote 256, all in the write-trash block
        self.assertEqual(tr.calls, 0)
        self.assertEqual(list(bm._uninit_block_ids), free)
        self.assertEqual(kvshim.stats()["mapped_bytes"], self.mapped0 + 2 * 2 * MIB)
        (reads_, writes), = p.runner.indices
        self.assertEqual((len(reads_[0]), len(writes[0])), (1024, 256))
        trash = range(16385 * 16, 16386 * 16)
        self.assertTrue(all(r in trash for r in reads_[0] + writes[0]))
        self.assertEqual(p.cache.group_cache_managers[0].block_table, {})
        # after the warm-up, blocks come from the block manager again
        self.assertEqual(p.cache.allocate_blocks(2, "r1", 0), 2)
        self.assertEqual(p.cache.group_cache_managers[0].block_table["r1"], [0, 1])
        self.assertEqual(tr.mapped, 2)
        p.cache.free_blocks("r1")
        self.assertEqual(tr.mapped, 0)

    def test_warmup_without_block_tables_reads_at_most_r(self):
        hints = types.SimpleNamespace(max_prompt_length=100, max_generated_length=28,
                                      num_requests=8)
        p = self.build(hints)
        for cm in p.cache.group_cache_managers:
            cm.block_table = None            # a transformers keeping them elsewhere
        seen = []
        real = p.cache.allocate_blocks
        p.cache.allocate_blocks = lambda n, rid, a: seen.append(n)
        err = io.StringIO()
        with redirect_stderr(err):
            p.runner.warmup(model=None)
        p.cache.allocate_blocks = real
        # the warm-up ran as transformers' own, over R tokens, not 16384 blocks
        self.assertEqual(seen, [1024 // 16])
        self.assertIn("the warm-up backs the blocks it reads", err.getvalue())

    def test_requests_that_could_never_run_are_refused(self):
        hints = types.SimpleNamespace(max_prompt_length=100, max_generated_length=28,
                                      num_requests=8)
        p = self.build(hints)
        s = p.scheduler
        s.add_waiting_request(request("fits", 1000, 24))
        with self.assertRaises(ValueError) as cm:
            s.add_waiting_request(request("long", 1000, 25))
        self.assertIn("request long of 1000 prompt tokens and 25 new ones", str(cm.exception))
        self.assertIn("1024 KV tokens", str(cm.exception))
        self.assertIn(reads.READ_TOKENS_VAR, str(cm.exception))
        self.assertEqual(list(s.waiting), ["fits"])
        with self.assertRaises(ValueError):
            s.add_waiting_request(request("huge", 1025, None))
        # no max_new_tokens: it stops at R tokens
        err = io.StringIO()
        with redirect_stderr(err):
            r = request("open", 100, None)
            s.add_waiting_request(r)
        self.assertEqual(r._new_tokens_limit, 1024 - 100)
        self.assertIn("stop at 1024 tokens", err.getvalue())

    def test_batches_wider_than_the_share_capture_no_graph(self):
        # a batch reading more than the engine's share (follow_share raised
        # the bound) runs without a CUDA graph unless one is kept for its
        # shape; within the share, or with no budget shared, graphs as ever
        p = self.build()
        r, tr = p.runner, p.cache.kvshim_tracker
        ios = r.inputs_and_outputs
        self.assertEqual(reads.follow_share(p.cache, p.scheduler, None), 65536)
        self.assertIsNone(p.cache.kvshim_share_read)
        ios.max_kv_read = 32768                      # alone: no share, a graph
        r.compute_batch(None, {})
        self.assertEqual(reads.follow_share(p.cache, p.scheduler, 1000), 16000)
        self.assertEqual(p.cache.kvshim_share_read, 16000)
        r.compute_batch(None, {})                    # kept from before: replayed
        ios.max_kv_read = 16000                      # the share's own width
        r.compute_batch(None, {})
        ios.max_kv_read = 49152                      # wider, no graph kept: eager
        r.compute_batch(None, {})
        r.compute_batch(None, {})                    # and again (none captured)
        self.assertEqual(r.ran, [("capture", (256, 32768)), ("replay", (256, 32768)),
                                 ("capture", (256, 16000)), ("eager", (256, 49152)),
                                 ("eager", (256, 49152))])
        self.assertEqual(tr.eager, 2)
        self.assertIs(r.use_cuda_graph_varlen, True)
        # the decode fast path's shapes read no KV: graphs as ever (also
        # were a transformers to keep a KV read on that path)
        ios.use_block_table, ios.max_kv_read = True, 0
        r.compute_batch(None, {})
        self.assertEqual(r.ran[-1], ("capture", (256,)))
        ios.max_kv_read = 65536
        r.compute_batch(None, {})
        self.assertEqual(r.ran[-1], ("replay", (256,)))
        # a forward that fails: CUDA graphs are as they were after it
        ios.use_block_table, ios.max_kv_read = False, 65536
        with self.assertRaises(RuntimeError):
            r.compute_batch(None, "fails")
        self.assertIs(r.use_cuda_graph_varlen, True)
        self.assertEqual(tr.eager, 3)
        # the share no longer binding: graphs as ever
        self.assertEqual(reads.follow_share(p.cache, p.scheduler, 9000), 65536)
        self.assertIsNone(p.cache.kvshim_share_read)
        r.compute_batch(None, {})
        self.assertEqual(r.ran[-1], ("capture", (256, 65536)))
        self.assertEqual(tr.eager, 3)

    def test_batches_raised_for_a_starving_request_capture_no_graph(self):
        # the case it is for: the share binds (16000 tokens), a request
        # admitted without its first token starves, follow_share raises the
        # bound (on the padding's interval, 1024); transformers pads a
        # batch's read up to the bound at most, and that batch runs eager
        p = self.build()
        sched, cache, r, tr = p.scheduler, p.cache, p.runner, p.cache.kvshim_tracker
        use_blocks(cache, 3000)               # 48000 tokens in use
        first = request("a", 500, 100)
        first.generated_tokens = []
        sched.active_requests = {"a": first}
        t = 10.0
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t), 16000)
        r.inputs_and_outputs.max_kv_read = cache.num_pages
        r.compute_batch(None, {})             # the share's own width: a graph
        for now, bound in ((t + reads.STARVED_S, 17408), (t + 2 * reads.STARVED_S, 48128)):
            self.assertEqual(reads.follow_share(cache, sched, 1000, now=now), bound)
            self.assertEqual(cache.kvshim_share_read, 16000)   # the share, not the raise
            r.inputs_and_outputs.max_kv_read = cache.num_pages
            r.compute_batch(None, {})
        self.assertEqual(r.ran, [("capture", (256, 16000)), ("eager", (256, 17408)),
                                 ("eager", (256, 48128))])
        self.assertEqual(tr.eager, 2)
        # its first token given: the share again, graphs as ever
        first.generated_tokens = [1]
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + 2), 16000)
        r.inputs_and_outputs.max_kv_read = cache.num_pages
        r.compute_batch(None, {})
        self.assertEqual((r.ran[-1], tr.eager), (("replay", (256, 16000)), 2))

    def test_wider_batches_on_async_ios_and_without_graphs(self):
        p = self.build()
        r, tr = p.runner, p.cache.kvshim_tracker
        reads.follow_share(p.cache, p.scheduler, 1000)
        # asynchronous IOs: the pair about to run decides
        r.inputs_and_outputs = aio = StandInAsyncIOs()
        aio.io_pairs[1].device_io.max_kv_read = 32768
        r.compute_batch(None, {})
        aio.current_pair = 1
        r.compute_batch(None, {})
        self.assertEqual([x[0] for x in r.ran], ["capture", "eager"])
        self.assertEqual(tr.eager, 1)
        # CUDA graphs off: eager as transformers runs it, not counted
        r.use_cuda_graph_varlen = False
        r.compute_batch(None, {})
        self.assertEqual((r.ran[-1][0], tr.eager), ("eager", 1))
        self.assertIs(r.use_cuda_graph_varlen, False)
        # IOs that cannot be read: transformers' own choice, and a warning
        r.use_cuda_graph_varlen = True
        r.inputs_and_outputs = types.SimpleNamespace(use_block_table=False, max_kv_read=None,
                                                     graphs=StandInGraphs(),
                                                     _get_graph_key=lambda: (1,))
        err = io.StringIO()
        with redirect_stderr(err):
            self.assertFalse(reads.compute_eagerly(r))
            r.inputs_and_outputs = None
            self.assertFalse(reads.compute_eagerly(r))
        self.assertEqual(err.getvalue().count("its batch IOs: TypeError"), 1)
        self.assertIn("captured as a CUDA graph", err.getvalue())

    def test_cache_given_back_after_each_batch_without_a_graph(self):
        # a batch run without a graph gives PyTorch's cache back (its
        # temporaries), after it ran; a graph's batch, no; nor without
        # torch, or CUDA not set up; a refusal is warned once, and the
        # batches run on
        self.addCleanup(transformers_cb._give_back_setting.__setitem__, slice(None),
                        list(transformers_cb._give_back_setting))
        transformers_cb._give_back_setting[:] = [True]
        p = self.build()
        r, tr = p.runner, p.cache.kvshim_tracker
        reads.follow_share(p.cache, p.scheduler, 1000)
        ios = r.inputs_and_outputs
        calls = []

        class Cuda:
            ready = True
            cached = 0

            def is_initialized(self):
                return self.ready

            def memory_reserved(self):
                return 1000 + self.cached

            def empty_cache(self):
                if self.ready == "refuses":
                    raise RuntimeError("INTERNAL ASSERT FAILED: captures_underway.empty()")
                calls.append(r.ran[-1][0])     # after the batch ran
                self.cached = 0

        cuda = Cuda()
        with unittest.mock.patch.dict(sys.modules, {"torch": types.SimpleNamespace(cuda=cuda)}):
            ios.max_kv_read = 16000
            r.compute_batch(None, {})                # a graph
            ios.max_kv_read = 49152
            cuda.cached = 5
            r.compute_batch(None, {})
            cuda.cached = 5
            r.compute_batch(None, {})
            self.assertEqual(calls, ["eager", "eager"])
            self.assertEqual((tr.eager, tr.cache_given_back), (2, 2))
            # nothing cached: emptied, not counted; a batch that raised: not
            # emptied (it fails the engine's step; what it held is still
            # held by its exception)
            r.compute_batch(None, {})
            with self.assertRaises(RuntimeError):
                r.compute_batch(None, "fails")
            self.assertEqual((len(calls), tr.eager, tr.cache_given_back), (3, 4, 2))
            del calls[2:]
            tr.eager = 2
            # not while a stream of the process captures (another engine's)
            with unittest.mock.patch.object(kvshim, "capture_wait", lambda ms: False):
                r.compute_batch(None, {})
            self.assertEqual((len(calls), tr.eager, tr.cache_given_back), (2, 3, 2))
            # nor with KVSHIM_CB_GIVE_BACK off, read once from the
            # environment (a bad value warns, naming it, and counts as off)
            for value, want in (("off", 0), ("on", 1), ("now", 0)):
                transformers_cb._give_back_setting[:] = []
                err = io.StringIO()
                cuda.cached = 5
                with unittest.mock.patch.dict(os.environ, {"KVSHIM_CB_GIVE_BACK": value}), \
                        redirect_stderr(err):
                    r.compute_batch(None, {})
                cuda.cached = 5
                with unittest.mock.patch.dict(os.environ, {"KVSHIM_CB_GIVE_BACK": "on"}):
                    r.compute_batch(None, {})                # read once
                self.assertEqual((len(calls), tr.cache_given_back), (2 + 2 * want, 2 + 2 * want),
                                 value)
                del calls[2:]
                tr.cache_given_back = 2
                self.assertEqual("KVSHIM_CB_GIVE_BACK=now" in err.getvalue(), value == "now")
            transformers_cb._give_back_setting[:] = [True]
            tr.eager = 3
            cuda.ready = False
            r.compute_batch(None, {})
            cuda.ready = "refuses"
            err = io.StringIO()
            with redirect_stderr(err):
                r.compute_batch(None, {})
                r.compute_batch(None, {})
            self.assertEqual(err.getvalue().count("PyTorch's cache not given back"), 1)
            self.assertIn("RuntimeError: INTERNAL ASSERT FAILED", err.getvalue())
            self.assertEqual((len(calls), tr.eager, tr.cache_given_back), (2, 6, 2))
            self.assertEqual([x[0] for x in r.ran[-3:]], ["eager"] * 3)
        with unittest.mock.patch.dict(sys.modules):
            sys.modules.pop("torch", None)
            r.compute_batch(None, {})
        self.assertEqual((tr.eager, tr.cache_given_back), (7, 2))
        self.assertFalse(reads.give_back_cache())

    def test_unexpected_compute_batch_is_left_alone(self):
        mod = runner_module()
        orig = mod.ModelRunner.compute_batch = lambda self, model, batch_data, extra=0: None
        err = io.StringIO()
        with redirect_stderr(err):
            reads.patch_runner_module(mod)
        self.assertIn("ModelRunner.compute_batch takes", err.getvalue())
        self.assertIn("captured as a CUDA graph", err.getvalue())
        self.assertIs(mod.ModelRunner.compute_batch, orig)
        self.assertIn("runner", reads._wired)         # the warm-up is wired all the same
        # and the other way: an unexpected warm-up, compute_batch patched
        # (once, however often the module is patched)
        mod = runner_module()
        mod.ModelRunner.run_one_warmup = lambda self, model, num_q_tokens: 0
        orig = mod.ModelRunner.compute_batch
        err = io.StringIO()
        with redirect_stderr(err):
            reads.patch_runner_module(mod)
            patched = mod.ModelRunner.compute_batch
            reads.patch_runner_module(mod)
        self.assertIn("run_one_warmup takes", err.getvalue())
        self.assertIsNot(patched, orig)
        self.assertIs(mod.ModelRunner.compute_batch, patched)
        self.assertIs(patched.__wrapped__, orig)

    def test_unwired_pieces_leave_the_buffers(self):
        # a runner whose warm-up takes other arguments is left alone, and
        # the read budget is not applied: the buffers keep their size
        p = self.build(patch=("io", "scheduler"), wired={"io", "scheduler"})
        self.assertIn("runner not wired", self.err)
        self.assertIsNone(getattr(p.cache, "kvshim_read_tokens", None))
        self.assertEqual(p.cache.num_pages, 262144)
        self.assertEqual(p.ios.mask_shape, (1, 1, 256, 262144 + 256))
        mod = runner_module()
        mod.ModelRunner.run_one_warmup = lambda self, model, num_q_tokens, max_kv_read, extra: 0
        err = io.StringIO()
        with redirect_stderr(err):
            reads.patch_runner_module(mod)
        self.assertIn("run_one_warmup takes", err.getvalue())
        self.assertNotIn("runner", reads._wired)
        err = io.StringIO()
        with redirect_stderr(err):
            reads.patch_io_module(types.ModuleType("input_outputs"))
            reads.patch_scheduler_module(types.ModuleType("scheduler"))
            api = types.ModuleType("continuous_api")
            api.ContinuousBatchingManager = type("ContinuousBatchingManager", (), {
                "__init__": lambda self, model, generation_config: None})
            reads.patch_manager(api)
        self.assertIn("no ContinuousBatchingIOs._setup_static_tensors", err.getvalue())
        self.assertIn("no Scheduler.add_waiting_request", err.getvalue())
        self.assertIn("no workload hints", err.getvalue())

    def test_cache_not_as_expected(self):
        # no capacity to read: warned, nothing changed
        reads._wired.update(reads._NEEDED)
        cache = types.SimpleNamespace(block_size=16, config=None)
        err = io.StringIO()
        with redirect_stderr(err):
            self.assertIsNone(reads.apply_read_budget(cache, None))
        self.assertIn("not as expected (", err.getvalue())
        self.assertIn("num_pages", err.getvalue())
        self.assertFalse(hasattr(cache, "num_pages"))
        self.assertFalse(hasattr(cache, "kvshim_read_tokens"))

    def test_bad_setting_leaves_the_buffers(self):
        os.environ[reads.READ_TOKENS_VAR] = "lots"
        p = self.build()
        self.assertIn("KVSHIM_CB_READ_TOKENS=lots: expected auto, off, a number", self.err)
        self.assertIsNone(getattr(p.cache, "kvshim_read_tokens", None))
        self.assertEqual(p.ios.mask_shape, (1, 1, 256, 262144 + 256))

    def test_read_budget_as_memory(self):
        # a memory size: the tokens a cache of that many bytes holds, whole
        # blocks over every KV tensor, as a static share of it is cut
        p = self.build()
        per_block = p.cache.kvshim_tracker.bytes_per_block
        self.assertEqual(reads.bytes_per_block(p.cache), per_block)
        os.environ[reads.READ_TOKENS_VAR] = "%dKiB" % (per_block * 300 // 1024 + 1)
        p = self.build()
        self.assertEqual(self.err, "")
        self.assertEqual(p.cache.kvshim_read_tokens, 300 * 16)
        self.assertEqual(p.ios.mask_shape, (1, 1, 256, 300 * 16 + 256))
        self.assertIn("the 4800 tokens a cache of %d bytes holds"
                      % ((per_block * 300 // 1024 + 1) * 1024), p.cache.kvshim_read_how)
        # one at or above the whole cache changes nothing
        os.environ[reads.READ_TOKENS_VAR] = "1TiB"
        p = self.build()
        self.assertIsNone(getattr(p.cache, "kvshim_read_tokens", None))
        self.assertEqual(p.ios.mask_shape, (1, 1, 256, 262144 + 256))

    def entitled_to(self, fn):
        """kvshim.Group.share_entitled returns fn() for this test (bytes, or
        None: no budget shared)."""
        real = kvshim.Group.share_entitled
        kvshim.Group.share_entitled = lambda group: fn()
        self.addCleanup(setattr, kvshim.Group, "share_entitled", real)

    def pass_with(self, p, entitled_blocks):
        """One scheduling pass with the engine entitled to that many blocks
        (None: no budget shared), read afresh."""
        per_block = p.cache.kvshim_tracker.bytes_per_block
        self.entitled_to(lambda: None if entitled_blocks is None
                         else entitled_blocks * per_block + per_block // 2)
        p.cache.kvshim_tracker._entitled = (float("-inf"), None)
        p.prepare_next_batch()
        return p.cache.num_pages

    def test_read_follows_the_share(self):
        # auto: R (65536 tokens) sizes the buffers; each pass reads at most
        # the engine's part of the shared budget, as processes come and go
        p = self.build()
        self.assertEqual(p.cache.kvshim_read_most, 65536)        # it follows, up to R
        self.assertEqual(self.pass_with(p, None), 65536)        # alone, no budget shared
        self.assertEqual(self.pass_with(p, 1000), 16000)        # 1000 blocks of 16
        self.assertEqual(reads.follow_share(p.cache, p.scheduler, 1000), 16000)
        self.assertEqual(p.ios.mask_shape, (1, 1, 256, 65536 + 256))   # the buffers stay
        self.assertEqual(self.pass_with(p, 9000), 65536)        # never past R
        self.assertEqual(self.pass_with(p, 0), 16)              # at least a block
        # never below what the largest request it holds reads (on the
        # padding's interval, 1024): a waiting one of 20000 + 100, a
        # running one of 3000 + 1000, one without max_new_tokens (R)
        p.scheduler.waiting_requests = {"a": request("a", 20000, 100)}
        p.scheduler.active_requests = {"b": request("b", 3000, 1000)}
        self.assertEqual(self.pass_with(p, 1000), 20480)
        p.scheduler.waiting_requests = {}
        self.assertEqual(self.pass_with(p, 100), 4096)
        p.scheduler.active_requests = {"c": request("c", 10, None)}
        self.assertEqual(self.pass_with(p, 100), 65536)
        p.scheduler.active_requests = {"d": types.SimpleNamespace(request_id="d")}
        self.assertEqual(self.pass_with(p, 100), 65536)         # cannot tell: R
        p.scheduler.active_requests = {}
        self.assertEqual(self.pass_with(p, 100), 1600)
        # kvshim cannot tell (its call fails): R
        def fails():
            raise kvshim.KvshimError(22, "kvshim_group_share_entitled")
        self.entitled_to(fails)
        p.cache.kvshim_tracker._entitled = (float("-inf"), None)
        p.prepare_next_batch()
        self.assertEqual(p.cache.num_pages, 65536)

    def one_admitted_without_a_token(self):
        """An engine whose blocks in use (48000 tokens) are above its bound,
        with two admitted requests: b decoding, a without its first token.
        Returns (the processor, a)."""
        p = self.build()
        sched, cache = p.scheduler, p.cache
        use_blocks(cache, 3000)               # 48000 tokens in use
        first = request("a", 500, 100)
        first.generated_tokens = []
        going = request("b", 500, 100)
        going.generated_tokens = [7]
        sched.active_requests = {"b": going, "a": first}
        return p, first

    def test_starved_setting(self):
        """KVSHIM_CB_STARVED_MS as kvshim-config reads it: 250 unset, a whole
        number of milliseconds from 1 to 60000, digits only; each bad kind
        refused naming the variable."""
        self.assertEqual(reads.starved_ms_setting(None), 250)
        for value, want in (("1", 1), ("250", 250), ("0250", 250), ("500", 500), ("60000", 60000),
                            ("0" * 5000 + "1", 1)):
            self.assertEqual(reads.starved_ms_setting(value), want, value[:20])
        expected, large = "expected a whole number", "too large (at most 60000 milliseconds)"
        for value, why in (("", expected), ("0", expected), ("00", expected), ("-1", expected),
                           ("250ms", expected), (" 250", expected), ("250 ", expected),
                           ("+250", expected), ("2.5", expected), ("0.5s", expected),
                           ("off", expected), ("auto", expected), ("\u0663", expected),
                           ("0" * 5000, expected), ("60001", large), ("99999a", large),
                           ("60001x", large), ("99999999999999999999", large),
                           ("1" * 5000, large)):
            with self.assertRaises(ValueError, msg=value[:20]) as e:
                reads.starved_ms_setting(value)
            self.assertIn("KVSHIM_CB_STARVED_MS=%s: %s" % (value, why), str(e.exception))

    def test_starved_default_is_kvshim_configs(self):
        """The adapter's default for KVSHIM_CB_STARVED_MS is the one
        kvshim-config prints (the library's config table)."""
        env = {k: v for k, v in os.environ.items() if k != "KVSHIM_CB_STARVED_MS"}
        out = subprocess.run([os.environ["KVSHIM_CONFIG_BIN"], "--print"], env=env,
                             capture_output=True, text=True, timeout=30).stdout
        line = [l.split() for l in out.splitlines() if l.startswith("KVSHIM_CB_STARVED_MS ")]
        self.assertEqual(len(line), 1, out)
        self.assertEqual(line[0][1:3], [str(reads.starved_ms_setting(None)), "(default)"])

    def test_starved_read_from_the_environment(self):
        """KVSHIM_CB_STARVED_MS is read once: unset, STARVED_S; 200, 0.2 s;
        a bad value warns once, naming it, and STARVED_S stands."""
        self.addCleanup(reads._starved.__setitem__, slice(None), list(reads._starved))
        self.addCleanup(reads._warned.discard, "starved")
        for env, want in ((None, reads.STARVED_S), ("200", 0.2), ("soon", reads.STARVED_S)):
            reads._starved[:] = []
            reads._warned.discard("starved")
            err = io.StringIO()
            with unittest.mock.patch.dict(os.environ, {} if env is None else
                                          {"KVSHIM_CB_STARVED_MS": env}), redirect_stderr(err):
                if env is None:
                    os.environ.pop("KVSHIM_CB_STARVED_MS", None)
                self.assertEqual(reads.starved_s(), want, env)
            with unittest.mock.patch.dict(os.environ, {"KVSHIM_CB_STARVED_MS": "900"}):
                self.assertEqual(reads.starved_s(), want, env)      # once
            self.assertEqual("KVSHIM_CB_STARVED_MS=soon" in err.getvalue(), env == "soon")

    def test_starved_setting_sets_when_the_bound_is_raised(self):
        """With KVSHIM_CB_STARVED_MS=200 an admitted request without its
        first token raises the bound after 0.2 s (not at 0.19), and to the
        blocks in use after 0.4 s: the same steps as the default's 0.25 and
        0.5 s."""
        self.addCleanup(reads._starved.__setitem__, slice(None), list(reads._starved))
        reads._starved[:] = [0.2]
        p, _ = self.one_admitted_without_a_token()
        sched, cache = p.scheduler, p.cache
        t = 10.0
        for dt, bound in ((0.0, 16000), (0.1, 16000), (0.19, 16000), (0.21, 17408),
                          (0.39, 17408), (0.41, 48128)):
            self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + dt), bound, dt)

    def test_read_follows_yet_starves_no_admitted_request(self):
        # transformers' scheduler spends the budget per batch on the
        # requests before one (decoding first) and skips one whose past
        # tokens no longer fit: admitted requests holding more than the
        # bound starve the last of them (on an H200 an admitted request waited
        # 10.3 s for its first token, session 34). One admitted STARVED_S
        # ago without its first token raises the bound by what it reads; one
        # 2 * STARVED_S ago, to the blocks in use
        p, first = self.one_admitted_without_a_token()
        sched, cache = p.scheduler, p.cache
        t = 10.0
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t), 16000)
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + reads.STARVED_S / 2), 16000)
        # on the interval (1024) transformers pads a read to: 16000 + 600
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + reads.STARVED_S), 17408)
        self.assertEqual(reads.follow_share(cache, sched, 1000,
                                            now=t + reads.STARVED_S * 1.9), 17408)
        self.assertEqual(reads.follow_share(cache, sched, 1000,
                                            now=t + 2 * reads.STARVED_S), 48128)
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + 5), 48128)
        use_blocks(cache, 3000)               # 96000: at most R
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + 6), 65536)
        # its first token given: the share again, and it is forgotten
        first.generated_tokens = [1]
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + 7), 16000)
        self.assertEqual(cache.kvshim_admitted_at, {})
        # one admitted later counts from when the adapter first saw it
        late = request("c", 500, 100)
        late.generated_tokens = []
        sched.active_requests["c"] = late
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + 8), 16000)
        self.assertEqual(reads.follow_share(cache, sched, 1000,
                                            now=t + 8 + reads.STARVED_S * 0.9), 16000)
        # waiting (not admitted) it holds no blocks: the bound stands
        sched.active_requests = {}
        sched.waiting_requests = {"c": late}
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + 20), 16000)
        self.assertEqual(cache.kvshim_admitted_at, {})
        # a request whose tokens cannot be told never raises it
        sched.waiting_requests = {}
        sched.active_requests = {"d": request("d", 500, 100)}
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + 30), 16000)
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + 40), 16000)
        # alone (no budget shared) it reads up to R, and keeps nothing
        sched.active_requests = {"c": late}
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + 50), 16000)
        self.assertEqual(reads.follow_share(cache, sched, None, now=t + 60), 65536)
        self.assertEqual(cache.kvshim_admitted_at, {})
        # a pass of the engine reads the time itself: just admitted, the share
        sched.active_requests = {"e": late}
        self.assertEqual(self.pass_with(p, 1000), 16000)

    def test_read_raised_to_r_stays_while_the_request_starves(self):
        # the guard raises the bound to the blocks in use; where they hold R
        # or more the bound is R, and the request still waiting for its
        # first token must keep it pass by pass, not fall back to the share
        # for another STARVED_S (its admission time forgotten)
        p = self.build()
        sched, cache = p.scheduler, p.cache
        use_blocks(cache, 6000)               # 96000 tokens in use: past R
        first = request("a", 500, 100)
        first.generated_tokens = []
        sched.active_requests = {"a": first}
        t = 10.0
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t), 16000)
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + reads.STARVED_S), 17408)
        self.assertEqual(reads.follow_share(cache, sched, 1000,
                                            now=t + 2 * reads.STARVED_S), 65536)
        for dt in (0.01, 0.1, reads.STARVED_S / 2):
            self.assertEqual(reads.follow_share(cache, sched, 1000,
                                                now=t + 2 * reads.STARVED_S + dt), 65536)
        # its first token given: the share again, and it is forgotten
        first.generated_tokens = [1]
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + 5), 16000)
        self.assertEqual(cache.kvshim_admitted_at, {})

    def test_read_guard_spares_a_prefill_going_on(self):
        # a long prompt prefilled in chunks (transformers' PREFILLING_SPLIT)
        # has no first token for many passes while it moves on each: it is
        # not starved, and the bound stays the share; stalled, it is
        p = self.build()
        sched, cache = p.scheduler, p.cache
        use_blocks(cache, 3000)               # 48000 tokens in use
        long = request("a", 500, 100)
        long.generated_tokens = []
        long.position_offset = 0
        sched.active_requests = {"a": long}
        t = 10.0
        for i in range(10):
            long.position_offset = 256 * i
            self.assertEqual(reads.follow_share(cache, sched, 1000,
                                                now=t + i * reads.STARVED_S / 2), 16000)
        stalled = t + 9 * reads.STARVED_S / 2
        self.assertEqual(reads.follow_share(cache, sched, 1000,
                                            now=stalled + reads.STARVED_S / 2), 16000)
        self.assertEqual(reads.follow_share(cache, sched, 1000,
                                            now=stalled + reads.STARVED_S), 17408)
        self.assertEqual(reads.follow_share(cache, sched, 1000,
                                            now=stalled + 2 * reads.STARVED_S), 48128)

    def test_read_guard_raises_by_what_the_starving_read_first(self):
        # a raise is a wider batch, whose CUDA graph the engine keeps (on an
        # H200 the large engine captured graphs reading 49152 tokens where
        # its bound read 21824, and held 868 MiB more beside its KV cache:
        # session 35): first the bound grows by what the starving requests
        # read, on top of the largest request's floor, at most the blocks
        # in use; the blocks in use only once one has starved 2 * STARVED_S
        p = self.build()
        sched, cache = p.scheduler, p.cache
        use_blocks(cache, 3000)               # 48000 tokens in use
        a, b = request("a", 500, 100), request("b", 2000, 400)
        a.generated_tokens, b.generated_tokens = [], []
        sched.active_requests = {"a": a}
        t = 10.0
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t), 16000)
        sched.active_requests["b"] = b             # admitted STARVED_S / 2 later
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + reads.STARVED_S / 2),
                         16000)
        # a starves alone: 16000 + 600
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + reads.STARVED_S), 17408)
        # both: 16000 + 600 + 2400
        self.assertEqual(reads.follow_share(cache, sched, 1000,
                                            now=t + reads.STARVED_S * 1.5), 19456)
        # on top of the largest request's floor: one waiting of 30000
        sched.waiting_requests = {"w": request("w", 30000, 0)}
        self.assertEqual(reads.follow_share(cache, sched, 1000,
                                            now=t + reads.STARVED_S * 1.6), 33792)
        sched.waiting_requests = {}
        # a starving 2 * STARVED_S: the blocks in use
        self.assertEqual(reads.follow_share(cache, sched, 1000,
                                            now=t + 2 * reads.STARVED_S), 48128)
        # a's first token given, b starving 1.5 * STARVED_S: by b's read
        a.generated_tokens = [1]
        self.assertEqual(reads.follow_share(cache, sched, 1000,
                                            now=t + 2 * reads.STARVED_S + 0.01), 18432)
        # at most the blocks in use: 1010 blocks, 16160 tokens, of which
        # the bound's 16000 and 160 more (on the interval, 16384)
        p = self.build()
        sched, cache = p.scheduler, p.cache
        use_blocks(cache, 1010)
        a = request("a", 500, 100)
        a.generated_tokens = []
        sched.active_requests = {"a": a}
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t), 16000)
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + reads.STARVED_S), 16384)

    def test_read_guard_raise_is_not_lost_in_the_padding(self):
        # the bound in force above the share is the largest request's read
        # rounded up to the interval (1024): 16100 waiting reads 16384; a
        # request of 200 starving STARVED_S raises it by 200 on top of that
        # (17408), not to 16100 + 200, which the same rounding takes back
        # to 16384, leaving it starving until 2 * STARVED_S
        p = self.build()
        sched, cache = p.scheduler, p.cache
        use_blocks(cache, 3000)               # 48000 tokens in use
        a = request("a", 150, 50)
        a.generated_tokens = []
        sched.active_requests = {"a": a}
        sched.waiting_requests = {"w": request("w", 16000, 100)}
        t = 10.0
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t), 16384)
        self.assertEqual(reads.follow_share(cache, sched, 1000, now=t + reads.STARVED_S), 17408)

    def test_read_follows_a_request_without_max_new_tokens(self):
        # one without max_new_tokens stops at R (fit_request): the bound
        # covers what it holds now and its next token, on the interval
        # (1024), as it grows, instead of R for as long as it runs
        p = self.build()
        grows = request("g", 3000, None)
        grows.position_offset = 0                   # waiting: its prompt
        p.scheduler.waiting_requests = {"g": grows}
        self.assertEqual(self.pass_with(p, 100), 3072)
        p.scheduler.waiting_requests = {}
        p.scheduler.active_requests = {"g": grows}
        grows.position_offset = 3000                # prefilled: 3001
        self.assertEqual(self.pass_with(p, 100), 3072)
        grows.position_offset = 3072                # its next token: 3073
        self.assertEqual(self.pass_with(p, 100), 4096)
        grows.position_offset = 65535               # at R, no further
        self.assertEqual(self.pass_with(p, 100), 65536)
        # the share above it: the share
        grows.position_offset = 3000
        self.assertEqual(self.pass_with(p, 1000), 16000)
        # a position that cannot be told: R, as before
        for bad in (None, -1, True, "3000"):
            grows.position_offset = bad
            self.assertEqual(self.pass_with(p, 100), 65536)

    def test_read_follows_the_share_on_the_padding(self):
        # transformers pads a batch's KV read to its interval (1024 here),
        # at most num_pages, and keys a CUDA graph on the padded size,
        # kept for good: a bound raised to what the largest request reads
        # must lie on the interval, or each new largest request is a new
        # padded size (a batch reading 20050 pads to 20100, then 20200)
        p = self.build()
        caps = set()
        for prompt in (20000, 20100, 20300):
            p.scheduler.waiting_requests = {"a": request("a", prompt, 100)}
            caps.add(self.pass_with(p, 1000))
        self.assertEqual(caps, {20480})
        p.scheduler.waiting_requests = {}
        p.scheduler.active_requests = {"b": request("b", 3000, 1000)}
        self.assertEqual(self.pass_with(p, 100), 4096)
        # the interval KVSHIM_CB_KV_PAD sets is the one transformers pads to
        os.environ[reads.KV_PAD_VAR] = "4096"
        p = self.build()
        p.scheduler.active_requests = {"b": request("b", 3000, 1500)}
        self.assertEqual(self.pass_with(p, 100), 8192)

    def test_read_follows_the_share_in_a_small_cache(self):
        # a cache of 32768 tokens, below auto's R: transformers' buffers
        # stand (the whole cache), and each pass still reads at most the
        # engine's share (on an H200 the large engine of three, whose cache
        # was its own share, read up to 49152 tokens where its static
        # share read 21824)
        p = self.build(num_blocks=2048)
        self.assertIsNone(getattr(p.cache, "kvshim_read_tokens", None))
        self.assertEqual(p.ios.mask_shape, (1, 1, 256, 32768 + 256))
        self.assertEqual(p.cache.kvshim_read_most, 32768)        # it follows, up to the cache
        self.assertEqual(self.pass_with(p, None), 32768)
        self.assertEqual(self.pass_with(p, 1000), 16000)
        self.assertEqual(self.pass_with(p, 5000), 32768)
        os.environ[reads.READ_TOKENS_VAR] = "off"
        p = self.build(num_blocks=2048)
        self.assertEqual(self.pass_with(p, 1000), 32768)

    def test_read_set_by_the_operator_stands(self):
        # a number or a memory size is the operator's: it does not follow
        os.environ[reads.READ_TOKENS_VAR] = "3000"
        p = self.build()
        self.assertIsNone(getattr(p.cache, "kvshim_read_most", None))
        self.assertEqual(self.pass_with(p, 10), 3008)
        os.environ[reads.READ_TOKENS_VAR] = "off"
        p = self.build()
        self.assertIsNone(getattr(p.cache, "kvshim_read_most", None))
        self.assertEqual(self.pass_with(p, 10), 262144)

    def test_read_follows_not_across_ranks(self):
        # tensor-parallel ranks schedule alike: each reads up to R
        p = self.build()
        p.distributed_helper = types.SimpleNamespace(tp_size=2)
        self.assertEqual(self.pass_with(p, 1000), 65536)

    def test_read_budget_as_memory_under_a_block(self):
        # a size that holds no whole block: said, and transformers' own
        # sizing stands
        p = self.build()
        per_block = p.cache.kvshim_tracker.bytes_per_block
        self.assertGreater(per_block, 1024)
        os.environ[reads.READ_TOKENS_VAR] = "1KiB"
        p = self.build()
        self.assertIn("KVSHIM_CB_READ_TOKENS=1KiB: holds no whole block of this cache "
                      "(%d bytes a block)" % per_block, self.err)
        self.assertIsNone(getattr(p.cache, "kvshim_read_tokens", None))
        self.assertEqual(p.ios.mask_shape, (1, 1, 256, 262144 + 256))
        # a cache whose KV tensors cannot be read: said so, not as a size
        cache = types.SimpleNamespace(block_size=16, key_cache=[object()], value_cache=[])
        self.assertEqual(reads.bytes_per_block(cache), 0)
        with self.assertRaises(ValueError) as cm:
            reads.memory_tokens(reads.ReadBytes(1 << 30, "1GiB"), 16, reads.bytes_per_block(cache))
        self.assertIn("KVSHIM_CB_READ_TOKENS=1GiB: the cache's KV tensors cannot be read",
                      str(cm.exception))

    def test_memory_tokens_counts_whole_blocks(self):
        # blocks of 32 tokens of 2 MiB (16 layers, K and V, 8 heads of 128,
        # bf16): 750MiB is 375 blocks, 12000 tokens; a byte short of a
        # block more is still 375
        mib = 1 << 20
        self.assertEqual(reads.memory_tokens(reads.ReadBytes(750 * mib, "750MiB"), 32,
                                             2 * mib)[0], 12000)
        self.assertEqual(reads.memory_tokens(reads.ReadBytes(752 * mib - 1, "x"), 32,
                                             2 * mib)[0], 12000)
        self.assertEqual(reads.memory_tokens(reads.ReadBytes(752 * mib, "x"), 32,
                                             2 * mib)[0], 12032)

    def test_setting_bad_values(self):
        kinds = {
            "": "expected auto, off, a number", "lots": "expected auto, off, a number",
            "-16384": "expected", "+16384": "expected", " 16384": "expected",
            "16384 ": "expected", "1.5K": "expected", "16G": "expected",
            "\u0661\u0662": "expected", "0": "must be above zero", "0K": "must be above zero",
            "1073741825": "too large", "1025M": "too large",
            "99999999999999999999": "too large", "1073741825x": "too large",
            # memory sizes (tests/test_api.c, test_config_cb_read_tokens)
            "16B": "expected auto, off, a number", "GiB": "expected a number of bytes",
            "2XiB": "expected a number of bytes", "2 GiB": "expected a number of bytes",
            "+2GiB": "expected a number of bytes", "1.5GiB": "expected a number of bytes",
            "2GiBs": "expected auto, off, a number", "2iB": "expected a number of bytes",
            "\u0662GiB": "expected a number of bytes", "0GiB": "must be above zero",
            "16777216TiB": "too large", "99999999999999999999KiB": "too large",
            "2\u212aiB": "expected a number of bytes",     # a Kelvin sign, not a K
            "1" * 5000: "too large", "1" * 5000 + "KiB": "too large",
        }
        for value, why in kinds.items():
            with self.assertRaises(ValueError, msg=repr(value)) as cm:
                reads.read_tokens_setting(value)
            self.assertIn("KVSHIM_CB_READ_TOKENS=%s: %s" % (value, why), str(cm.exception))

    def test_kv_pad(self):
        # KVSHIM_CB_KV_PAD: the padding of each step's KV read in the
        # engine's config, the read budget as without it
        os.environ[reads.KV_PAD_VAR] = "32k"
        p = self.build()
        self.assertEqual(self.err, "")
        self.assertEqual(self.cbc.kv_padding_interval_size, 32768)
        self.assertEqual(p.cache.kvshim_kv_pad, 32768)
        self.assertEqual(p.cache.kvshim_read_tokens, 65536)
        # one above the read budget is set as given (transformers pads to
        # at most the budget)
        os.environ[reads.KV_PAD_VAR] = "1M"
        p = self.build()
        self.assertEqual(self.cbc.kv_padding_interval_size, 1 << 20)
        self.assertEqual(p.cache.kvshim_read_tokens, 65536)

    def test_kv_pad_auto(self):
        for setting in (None, "auto", "AUTO"):
            if setting is None:
                os.environ.pop(reads.KV_PAD_VAR, None)
            else:
                os.environ[reads.KV_PAD_VAR] = setting
            p = self.build()
            self.assertEqual(self.err, "")
            self.assertEqual(self.cbc.kv_padding_interval_size, 1024)
            self.assertFalse(hasattr(p.cache, "kvshim_kv_pad"))

    def test_kv_pad_auto_finer_than_transformers(self):
        # auto: KV_PAD_AUTO (8192) where the engine's own padding is
        # coarser (transformers 5.17: 16384), its own where as fine; the
        # read budget as without it, its steps the padding's
        self.assertEqual(reads.KV_PAD_AUTO, 8192)
        for setting in (None, "auto"):
            if setting is None:
                os.environ.pop(reads.KV_PAD_VAR, None)
            else:
                os.environ[reads.KV_PAD_VAR] = setting
            for own, want in ((16384, 8192), (65536, 8192), (8192, None), (4096, None)):
                p = self.build(kv_interval=own)
                self.assertEqual(self.err, "")
                self.assertEqual(self.cbc.kv_padding_interval_size, want or own)
                self.assertEqual(getattr(p.cache, "kvshim_kv_pad", None), want)
                self.assertEqual(p.cache.kvshim_read_tokens, 65536)
                self.assertEqual(p.cache.kvshim_read_interval, want or own)
        # a number set stands, coarser than auto's too
        os.environ[reads.KV_PAD_VAR] = "16384"
        p = self.build(kv_interval=16384)
        self.assertEqual(self.cbc.kv_padding_interval_size, 16384)
        self.assertEqual(p.cache.kvshim_kv_pad, 16384)
        # auto without the setting in the config: nothing set, no warning
        os.environ.pop(reads.KV_PAD_VAR, None)
        for cbc in (None, types.SimpleNamespace(block_size=16),
                    types.SimpleNamespace(kv_padding_interval_size=True)):
            cache = types.SimpleNamespace()
            err = io.StringIO()
            with redirect_stderr(err):
                self.assertIsNone(reads.apply_kv_pad(cache, cbc))
            self.assertEqual(err.getvalue(), "")
            self.assertFalse(hasattr(cache, "kvshim_kv_pad"))

    def test_kv_pad_bad_setting_keeps_transformers_own(self):
        for value in ("off", "lots", "0"):
            reads._warned.clear()
            os.environ[reads.KV_PAD_VAR] = value
            p = self.build()
            self.assertIn("KVSHIM_CB_KV_PAD=%s: expected auto or a number of tokens" % value,
                          self.err)
            self.assertIn("transformers' own KV padding is kept", self.err)
            self.assertEqual(self.cbc.kv_padding_interval_size, 1024)
            self.assertFalse(hasattr(p.cache, "kvshim_kv_pad"))
            self.assertEqual(p.cache.kvshim_read_tokens, 65536)

    def test_kv_pad_config_not_as_expected(self):
        # no config found, or one without the setting: warned, nothing set
        os.environ[reads.KV_PAD_VAR] = "32768"
        for cbc in (None, types.SimpleNamespace(block_size=16)):
            reads._warned.clear()
            cache = types.SimpleNamespace()
            err = io.StringIO()
            with redirect_stderr(err):
                self.assertIsNone(reads.apply_kv_pad(cache, cbc))
            self.assertIn("no kv_padding_interval_size in its config", err.getvalue())
            self.assertIn("KVSHIM_CB_KV_PAD=32768 is not applied", err.getvalue())
            self.assertFalse(hasattr(cache, "kvshim_kv_pad"))
            self.assertFalse(hasattr(cbc, "kv_padding_interval_size"))

    def test_kv_pad_setting_values(self):
        # as kvshim-config reads it (tests/test_api.c, test_config_cb_kv_pad)
        for value, want in ((None, None), ("auto", None), ("Auto", None), ("16384", 16384),
                            ("32k", 32768), ("1M", 1 << 20), ("1073741824", 1 << 30)):
            self.assertEqual(reads.kv_pad_setting(value), want)
        for value in ("", "off", "none", "lots", "-32768", " 32768", "1.5K", "32KB", "16G",
                      "0", "0K", "\u0661\u0662"):
            with self.assertRaises(ValueError, msg=repr(value)) as cm:
                reads.kv_pad_setting(value)
            self.assertIn("KVSHIM_CB_KV_PAD=%s: expected auto or a number of tokens" % value,
                          str(cm.exception))
        for value in ("1073741825", "1025M", "99999999999999999999", "1073741825x",
                      "2000000000G"):
            with self.assertRaises(ValueError, msg=repr(value)) as cm:
                reads.kv_pad_setting(value)
            self.assertIn("KVSHIM_CB_KV_PAD=%s: too large" % value, str(cm.exception))

    def test_setting_good_values(self):
        for value, want in ((None, "auto"), ("AUTO", "auto"), ("off", "off"), ("None", "off"),
                            ("16384", 16384), ("16k", 16384), ("1M", 1 << 20),
                            ("1073741824", 1 << 30)):
            self.assertEqual(reads.read_tokens_setting(value), want)
        # memory sizes, as tests/test_api.c reads them: the B tells them
        # from tokens
        for value, want in (("2GiB", 1 << 31), ("2GB", 1 << 31), ("750mib", 750 << 20),
                            ("16KB", 16384), ("1TiB", 1 << 40), ("0001KiB", 1024),
                            ("0" * 5000 + "1KiB", 1024)):
            self.assertEqual(reads.read_tokens_setting(value), reads.ReadBytes(want, value))
        # leading zeros skipped, however many, as kvshim-config skips them
        self.assertEqual(reads.read_tokens_setting("0000016384"), 16384)
        self.assertEqual(reads.read_tokens_setting("0" * 5000 + "16"), 16)

    def test_choice(self):
        choose = reads.choose_read_tokens
        hints = types.SimpleNamespace(max_prompt_length=264, max_generated_length=64,
                                      num_requests=48)
        # the issue's workload: 48 x 328 tokens, padded as transformers pads
        self.assertEqual(choose("auto", 2885376, hints, 48, 4096, 16384)[0], 16384)
        self.assertEqual(choose("auto", 2885376, hints, 48, 4096, 0)[0], 48 * 328)
        # at most AUTO_READ_CAP from a workload, but one request always fits
        many = types.SimpleNamespace(max_prompt_length=2000, max_generated_length=48,
                                     num_requests=1000)
        self.assertEqual(choose("auto", 10 ** 7, many, 1024, 4096, 16384)[0], 65536)
        long = types.SimpleNamespace(max_prompt_length=100000, max_generated_length=1000,
                                     num_requests=2)
        self.assertEqual(choose("auto", 10 ** 7, long, 1024, 4096, 1)[0], 101000)
        # no max_new_tokens, or no hints: the server default
        hints.max_generated_length = 0
        self.assertEqual(choose("auto", 10 ** 7, hints, 48, 131072, 16384)[0], 131072)
        self.assertEqual(choose("auto", 10 ** 7, None, None, None, 16384)[0], 65536)
        # a number as it is (a static cache of that size pads its reads up
        # to it: the same batch shapes), off, and anything not below the
        # capacity: transformers' own
        self.assertEqual(choose(20000, 10 ** 7, None, None, None, 16384)[0], 20000)
        self.assertEqual(choose(21824, 10 ** 7, hints, 48, 4096, 16384, 32)[0], 21824)
        self.assertEqual(choose(21825, 10 ** 7, None, None, None, 16384, 32)[0], 21856)
        self.assertIsNone(choose("off", 10 ** 7)[0])
        self.assertIsNone(choose(32768, 32768, None, None, None, 16384)[0])
        self.assertIn("not below", choose(40000, 32768, None, None, None, 16384)[1])

    def test_masks_built_in_place(self):
        mod = io_module()
        reads.patch_io_module(mod)
        torch = mod.torch
        torch.temporaries = 0
        q, k = [0, 5, 6, 9, 9], [0, 12, 20, 23, 26]   # chunked prefill, decode, prefill, empty
        ours = torch.zeros((1, 1, 9, 30))
        mod.build_attention_mask(ours, q, k, 1)
        self.assertEqual(torch.temporaries, 0)
        theirs = torch.zeros((1, 1, 9, 30))
        reference_mask_builder(torch)(theirs, q, k, 1)
        self.assertEqual(ours.rows(), theirs.rows())
        low = MaskTorch.LOW
        self.assertEqual(ours.rows()[0][:13], [0.0] * 8 + [low] * 4 + [0.0])
        self.assertEqual(ours.rows()[5][12:21], [0.0] * 9)   # the decode sees every key

    def test_mask_builder_giving_other_masks_kept(self):
        mod = io_module(mask_shift=1)
        theirs = mod.build_attention_mask
        err = io.StringIO()
        with redirect_stderr(err):
            reads.patch_io_module(mod)
        self.assertIs(mod.build_attention_mask, theirs)
        self.assertIn("build_attention_mask builds other masks", err.getvalue())
        self.assertIn("io", reads._wired)     # the buffers are still sized by R


class BindingTest(unittest.TestCase):
    def test_preloaded_library_comes_first(self):
        # the library in the process is the one used, whatever KVSHIM_LIB says
        env = dict(os.environ, LD_PRELOAD=os.environ["KVSHIM_LIB"],
                   KVSHIM_LIB="/nonexistent/libkvshim.so")
        out = subprocess.run([sys.executable, "-c", "import kvshim; "
                              "print(kvshim.library()._name, kvshim.stats()['spans'])"],
                             env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.split(), ["libkvshim.so", "0"])

    def test_capture_wait(self):
        # True at once without a capture; False at once on the thread that
        # captures (it would wait for itself); a negative timeout is none
        cu = ctypes.CDLL("libcuda.so.1")
        self.assertTrue(kvshim.capture_wait(0))
        self.assertTrue(kvshim.capture_wait(-5))
        dev, ctx = ctypes.c_int(), ctypes.c_void_p()
        self.assertEqual(cu.cuInit(0), 0)
        self.assertEqual(cu.cuDeviceGet(ctypes.byref(dev), 0), 0)
        self.assertEqual(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), 0)
        self.addCleanup(cu.cuDevicePrimaryCtxRelease_v2, dev)
        self.assertEqual(cu.cuCtxSetCurrent(ctx), 0)
        with captured(self):
            t = time.monotonic()
            self.assertFalse(kvshim.capture_wait(60 * 1000))
            self.assertLess(time.monotonic() - t, 30)
        self.assertTrue(kvshim.capture_wait(60 * 1000))

    def test_errors_are_raised_with_codes(self):
        with self.assertRaises(kvshim.KvshimError) as cm:
            kvshim.map(4096, 10)
        self.assertEqual(cm.exception.code, -2)
        self.assertIn("not inside one kvshim span", str(cm.exception))
        with self.assertRaises(kvshim.KvshimError) as cm:
            kvshim.kv_end()
        self.assertEqual(cm.exception.code, -10)
        with self.assertRaises(kvshim.KvshimError):
            kvshim.Group([4096], 1024, 10)
        with self.assertRaises(kvshim.KvshimError):
            kvshim.reserve(0)

    def test_group_bad_ids(self):
        p = kvshim.reserve(8 * MIB)
        self.addCleanup(kvshim.release, p)
        g = kvshim.Group([p], MIB, 8)
        with self.assertRaises(kvshim.KvshimError) as cm:
            g.map([8])
        self.assertEqual(cm.exception.code, -1)
        g.map([0, 7])
        self.assertTrue(g.can_back([1]))
        self.assertGreater(g.headroom(), 0)
        g.unmap([0, 7])
        with self.assertRaises(kvshim.KvshimError) as cm:
            g.unmap([0])
        self.assertEqual(cm.exception.code, -3)
        g.close()
        with self.assertRaises(kvshim.KvshimError):
            g.map([0])

    def test_group_share_entitled(self):
        # no budget shared here: no bound; a closed group: refused
        p = kvshim.reserve(8 * MIB)
        self.addCleanup(kvshim.release, p)
        g = kvshim.Group([p], MIB, 8)
        self.assertIsNone(g.share_entitled())
        g.close()
        with self.assertRaises(kvshim.KvshimError) as cm:
            g.share_entitled()
        self.assertEqual(cm.exception.code, -1)
        # sharing a 48 MiB budget: all of it alone, half once another
        # process joins, all again once it leaves (the group's blocks over
        # its two tensors)
        pool = POOL + "e"
        self.addCleanup(_remove_segments, pool)
        env = dict(os.environ, KVSHIM_SHARE="on", KVSHIM_POOL=pool, KVSHIM_BUDGET="48M")
        code = ("import sys, kvshim\n"
                "g = kvshim.Group([kvshim.reserve(16 << 20) for _ in range(2)], 1 << 20, 16)\n"
                "g.map([0])\n"
                "print('ready', flush=True)\n"
                "for line in sys.stdin:\n"
                "    print(g.share_entitled(), flush=True)\n")
        procs = []
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE))
            self.addCleanup(procs[-1].stdout.close)
            self.addCleanup(procs[-1].kill)

        def line(proc):
            """Its next line, failing the test after 60 s without one."""
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            self.assertTrue(ready, "pid %d said nothing in 60 s" % proc.pid)
            return proc.stdout.readline()
        # (both joined before either is asked)
        self.assertEqual([line(q) for q in procs], ["ready\n"] * 2)

        def ask(proc):
            proc.stdin.write("\n")
            proc.stdin.flush()
            return int(line(proc))
        self.assertEqual(ask(procs[0]), 24 * MIB)
        self.assertEqual(ask(procs[1]), 24 * MIB)
        procs[1].stdin.close()
        self.assertEqual(procs[1].wait(timeout=60), 0)
        self.assertEqual(ask(procs[0]), 48 * MIB)
        procs[0].stdin.close()
        self.assertEqual(procs[0].wait(timeout=60), 0)

    def test_ints_out_of_range_refused(self):
        """An int the C type cannot hold is refused (KvshimError, EINVAL),
        never wrapped by ctypes into another value: block 2**64 + 1 is not
        block 1, 2**32 + 8 bits are not 8, a dimension of 2**64 + 4 is not
        4, trim(-1) is not a trim of everything."""
        p = kvshim.reserve(8 * MIB)
        self.addCleanup(kvshim.release, p)
        g = kvshim.Group([p], MIB, 8)
        self.addCleanup(g.close)

        def refused(call, *args):
            with self.assertRaises(kvshim.KvshimError) as cm:
                call(*args)
            self.assertEqual(cm.exception.code, kvshim.EINVAL, (call, args))

        g.map([2])
        g.unmap([2])       # its page stays mapped, cached: what trim(-1) would free
        mapped = kvshim.stats()["mapped_bytes"]
        self.assertGreater(mapped, 0)
        for ids in ([2 ** 64 + 1], [0, 2 ** 63], [-1]):
            refused(g.map, ids)
            refused(g.can_back, ids)
        refused(g.can_back, None, -1)
        refused(kvshim.trim, -1)
        refused(kvshim.trim, 2 ** 64)
        self.assertEqual(kvshim.stats()["mapped_bytes"], mapped)
        reserved = kvshim.stats()["reserved_bytes"]
        for shape, code, bits in (([4], kvshim.DL_INT, 2 ** 32 + 8),
                                  ([2 ** 64 + 4], kvshim.DL_INT, 8),
                                  ([4], 2 ** 32 + kvshim.DL_INT, 8)):
            refused(kvshim.reserve_dlpack, shape, code, bits)
        refused(kvshim.reserve, 2 ** 64 + MIB)
        refused(kvshim.Group, [p], 2 ** 64 + MIB, 8)
        self.assertEqual(kvshim.stats()["reserved_bytes"], reserved)


class EarlyStartTest(unittest.TestCase):
    def run_start(self):
        raised = []
        old = threading.excepthook
        threading.excepthook = raised.append
        self.addCleanup(setattr, threading, "excepthook", old)
        transformers_cb._start_kvshim(FakeTorch())
        for t in threading.enumerate():
            if t.name == "kvshim-start":
                t.join(10)
        return raised

    def test_starts_kvshim(self):
        calls = []
        real = kvshim.stats
        kvshim.stats = lambda: calls.append(1) or real()
        self.addCleanup(setattr, kvshim, "stats", real)
        self.assertEqual(self.run_start(), [])
        self.assertEqual(calls, [1])

    def test_errors_stay_on_the_thread(self):
        # kvshim not found, or disabled: the first span tensor says so
        self.addCleanup(setattr, kvshim, "stats", kvshim.stats)
        for error in (OSError("kvshim: libkvshim.so not found"),
                      kvshim.KvshimError(kvshim.ECONFIG, "kvshim_stats")):
            def fail(error=error):
                raise error
            kvshim.stats = fail
            self.assertEqual(self.run_start(), [])


class ImportHookTest(unittest.TestCase):
    def test_adapter_applied_on_import(self):
        from kvshim import adapters
        seen = []
        sys.modules["kvshim_test_target_cb"] = None
        del sys.modules["kvshim_test_target_cb"]
        adapters.ADAPTERS["kvshim_test_target_cb"] = ("tests_adapter_probe", "hit")
        probe = types.ModuleType("tests_adapter_probe")
        probe.hit = lambda mod: seen.append(mod.__name__)
        sys.modules["tests_adapter_probe"] = probe
        where = tempfile.mkdtemp()
        target = os.path.join(where, "kvshim_test_target_cb.py")
        with open(target, "w") as f:
            f.write("VALUE = 1\n")
        self.addCleanup(os.unlink, target)
        sys.path.insert(0, where)
        adapters.install()
        import kvshim_test_target_cb
        self.assertEqual(kvshim_test_target_cb.VALUE, 1)
        self.assertEqual(seen, ["kvshim_test_target_cb"])


class ColocateReadCapsTest(unittest.TestCase):
    def test_read_caps_printed_for_every_trace(self):
        # colocate.py prints, in each trace's tables, the read bounds its
        # engines' samples saw where they followed their shares: with two
        # traces, both (its --dry-run engines follow under auto)
        src = os.environ.get("KVSHIM_BENCH_SRC") or os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "..", "bench")
        import shutil
        out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, out, True)
        env = {k: v for k, v in os.environ.items()
               if k not in ("KVSHIM_POOL", "KVSHIM_LIMIT", "KVSHIM_POOL_LOW", "KVSHIM_POOL_HIGH",
                            reads.READ_TOKENS_VAR)}
        run = subprocess.run([sys.executable, os.path.join(src, "colocate.py"), "--dry-run",
                              "--configs", "static,kvshim", "--traces", "r6-s2026-p4,r3-s1-p8",
                              "--budget-gib", "3", "--out", out], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        self.assertEqual(run.returncode, 0, run.stdout[-2000:])
        sections = run.stdout.split("\ntrace ")[1:]
        self.assertEqual([s.split(":")[0] for s in sections], ["r6-s2026-p4", "r3-s1-p8"])
        self.assertEqual([s.count("following each engine's share of the budget")
                          for s in sections], [1, 1])

    def test_nvidia_smi_index_through_visible_devices(self):
        # nvidia-smi numbers every GPU of the machine: the GPU colocate
        # samples is the engines' (torch.device("cuda"): CUDA ordinal 0,
        # whatever KVSHIM_DEVICE lists), mapped through
        # CUDA_VISIBLE_DEVICES where that is set
        mod = load_colocate("colocate_smi")
        cases = [({}, "0"), ({"KVSHIM_DEVICE": "all"}, "0"), ({"KVSHIM_DEVICE": "1,0"}, "0"),
                 ({"CUDA_VISIBLE_DEVICES": "1"}, "1"),
                 ({"CUDA_VISIBLE_DEVICES": "3, 2", "KVSHIM_DEVICE": "1,0"}, "3"),
                 ({"CUDA_VISIBLE_DEVICES": "GPU-abc"}, "GPU-abc"),
                 ({"CUDA_VISIBLE_DEVICES": "1", "KVSHIM_DEVICE": "2"}, "1")]
        for env, want in cases:
            with unittest.mock.patch.dict(os.environ, env, clear=False):
                for k in ("KVSHIM_DEVICE", "CUDA_VISIBLE_DEVICES"):
                    if k not in env:
                        os.environ.pop(k, None)
                self.assertEqual(mod.smi_id(), want, env)

    def test_steps_that_ran_eager_are_timed(self):
        # colocate times each generation step and each capture, and under
        # kvshim the steps in which the adapter ran batches without a CUDA
        # graph (its tracker's eager count rose), on the stand-in modules
        # transformers' continuous batching names
        mod = load_colocate("colocate_eager")
        api, runner = types.ModuleType("continuous_api"), runner_module()
        tracker = types.SimpleNamespace(eager=0, busy=0.0)

        class ContinuousBatchProcessor:
            def __init__(self):
                self.cache = types.SimpleNamespace(kvshim_tracker=tracker)

            def prepare_next_batch(self):
                return True

            def _generation_step(self, wide):
                tracker.eager += wide

        api.ContinuousBatchProcessor = ContinuousBatchProcessor
        runner.ModelRunner._capture_graph = lambda self, *args: None
        names = {"transformers": types.ModuleType("transformers"),
                 "transformers.generation": types.ModuleType("transformers.generation"),
                 "transformers.generation.continuous_batching":
                     types.ModuleType("transformers.generation.continuous_batching")}
        names["transformers.generation.continuous_batching"].continuous_api = api
        names["transformers.generation.continuous_batching"].model_runner = runner
        names["transformers.generation.continuous_batching.continuous_api"] = api
        names["transformers.generation.continuous_batching.model_runner"] = runner
        with unittest.mock.patch.dict(sys.modules, names):
            steps, graphs, eager = mod.time_steps()
        proc = ContinuousBatchProcessor()
        for wide in (0, 2, 0, 1):
            proc.prepare_next_batch()
            proc._generation_step(wide)
        self.assertEqual(len(steps), 4)
        self.assertEqual(graphs, [])
        self.assertEqual([e[2] for e in eager], [2, 1])
        # each timed from its step's start (after its scheduling began)
        self.assertTrue(steps[1][0] <= eager[0][0] < steps[2][0] <= steps[3][0] <= eager[1][0])
        # without kvshim (no tracker): no eager steps
        proc.cache = types.SimpleNamespace()
        proc._generation_step(0)
        self.assertEqual((len(steps), len(eager)), (5, 2))


if __name__ == "__main__":
    unittest.main(verbosity=2)
