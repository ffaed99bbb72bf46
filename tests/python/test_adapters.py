"""The Python binding and the transformers adapter's logic, on the CPU
emulation (no torch, no GPU): a stand-in block manager and cache that make
the calls transformers' continuous batching makes (a deque of free ids
handed out lowest first, ids returned on free or eviction, blocks kept
alive for prefix sharing), over KV "tensors" that are kvshim spans.
Run by `make check` with LD_LIBRARY_PATH naming tests/emu.
"""
import collections
import ctypes
import io
import os
import subprocess
import sys
import tempfile
import time
import types
import unittest
from contextlib import redirect_stderr

# before kvshim reads its configuration: no pool, and a 64 MiB limit that
# test_memory_short_requests_wait runs into
os.environ.update(KVSHIM_POOL_LOW="0", KVSHIM_POOL_HIGH="0", KVSHIM_LIMIT="64M")

import kvshim  # noqa: E402
from kvshim.adapters import blocks, transformers_cb  # noqa: E402

MIB = 1 << 20


class FakeTensor:
    """What the adapter reads of a torch tensor: address, row stride, size."""

    def __init__(self, addr, rows, row_elems, elem=2):
        self.addr, self.rows, self.row_elems, self.elem = addr, rows, row_elems, elem
        self.shape = (rows, row_elems)
        self.is_cuda = True

    def data_ptr(self):
        return self.addr

    def stride(self, dim):
        return self.row_elems

    def element_size(self):
        return self.elem

    def numel(self):
        return self.rows * self.row_elems


class StandInBlockManager:
    """The block manager's behaviour, written afresh: free ids in a deque
    (uninitialised), complete shareable blocks kept in an ordered dict when
    freed (initialised: prefix cache), evicted back to the deque on demand."""

    def __init__(self, num_blocks):
        self._uninit_block_ids = collections.deque(range(num_blocks))
        self._init_block_ids = {}
        self._id_to_block = {}
        self.refs = {}

    @property
    def num_free_blocks(self):
        return len(self._uninit_block_ids) + len(self._init_block_ids)

    def has_enough_free_blocks(self, n):
        short = n - len(self._uninit_block_ids)
        if short <= 0:
            return True
        if len(self._init_block_ids) < short:
            return False
        for _ in range(short):                 # evict from the prefix cache
            self._uninit_block_ids.append(self._init_block_ids.popitem()[0])
        return True

    def get_free_blocks(self, n, last_block_id, shareable, group_id):
        if not self.has_enough_free_blocks(n):
            return None
        ids = [self._uninit_block_ids.popleft() for _ in range(n)]
        for b in ids:
            self.refs[b] = 1
            if shareable:
                self._id_to_block[b] = object()
        return ids

    def free_blocks(self, ids, shareable, complete=False):
        for b in ids:
            self.refs.pop(b)
            if shareable and complete:
                self._init_block_ids[b] = None     # kept for prefix sharing
            else:
                self._id_to_block.pop(b, None)
                self._uninit_block_ids.append(b)

    def reuse_cached(self, b):
        """A new request shares a cached prefix block."""
        self._init_block_ids.pop(b)
        self.refs[b] = 1


class StandInCache:
    def __init__(self, num_blocks, block_size, layers, row_elems):
        self.block_size, self.num_blocks = block_size, num_blocks
        rows = (num_blocks + 2) * block_size
        size = rows * row_elems * 2
        kvshim.kv_begin()
        try:
            self.key_cache = [FakeTensor(kvshim.reserve(size), rows, row_elems) for _ in range(layers)]
            self.value_cache = [FakeTensor(kvshim.reserve(size), rows, row_elems) for _ in range(layers)]
        finally:
            kvshim.kv_end()
        self._block_manager = StandInBlockManager(num_blocks)
        self.group_cache_managers = [StandInGroup()]

    def blocks_needed(self, n, allocated):
        return n * len(self.group_cache_managers)

    def will_allocation_be_successful(self, n, allocated):
        return self.blocks_needed(n, allocated) <= self._block_manager.num_free_blocks

    def get_num_free_blocks(self):
        return self._block_manager.num_free_blocks

    def allocate_blocks(self, n, request_id, allocated):
        """Check once, then each layer group takes its blocks; a group
        finding none after the check is an error, as in transformers."""
        if not self.will_allocation_be_successful(n, allocated):
            return None
        for cm in self.group_cache_managers:
            table = cm.block_table.setdefault(request_id, [])
            ids = self._block_manager.get_free_blocks(n, table[-1] if table else None,
                                                      cm.uses_block_sharing, 0)
            if ids is None:
                raise ValueError("Failed to allocate %d blocks for request %s" % (n, request_id))
            table.extend(ids)
        return n


class StandInGroup:
    def __init__(self):
        self.block_table, self.uses_block_sharing = {}, True


def pages(cache):
    return kvshim.stats()["mapped_bytes"] // (2 * MIB)


class AdapterTest(unittest.TestCase):
    # 16 tokens x 8 heads x 128 x bf16 = 32 KiB blocks; 64 blocks a 2 MiB page
    def make(self, num_blocks=1024, layers=2):
        c = StandInCache(num_blocks, 16, layers, 8 * 128)
        self.addCleanup(self.release, c)
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

    def test_memory_taken_after_the_check(self):
        c, tr = self.make(num_blocks=256)
        c.group_cache_managers.append(StandInGroup())    # two layer groups
        bm = c._block_manager
        real = tr.group.map
        calls = []

        def second_refused(ids):
            calls.append(list(ids))
            if len(calls) == 2:
                raise kvshim.KvshimError(kvshim.ENOMEM, "kvshim_group_map")
            return real(ids)
        tr.group.map = second_refused
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
        c._block_manager.get_free_blocks(64, None, False, 0)
        time.sleep(0.01)                    # past the headroom's time to live
        self.assertEqual(c.get_num_free_blocks(), 128)
        # kvshim unable to tell: the engine's own count
        tr.group.close()
        time.sleep(0.01)
        self.assertEqual(c.get_num_free_blocks(), 4096 - 64)

    def test_engine_waits_when_kvshim_is_short(self):
        c, tr = self.make(num_blocks=4096, layers=4)
        mod = types.ModuleType("fake_api")

        class ContinuousBatchProcessor:
            def __init__(self, cache):
                self.cache = cache

            def prepare_next_batch(self, n=64):
                # as transformers: nothing scheduled, nothing to offload
                if self.cache.allocate_blocks(n, "r", 0) is None:
                    raise RuntimeError("No requests can be scheduled and no requests "
                                       "can be offloaded.")
                return True
        mod.ContinuousBatchProcessor = ContinuousBatchProcessor
        transformers_cb.patch_api_module(mod)
        transformers_cb.patch_api_module(mod)          # once only
        proc = ContinuousBatchProcessor(c)
        self.assertTrue(proc.prepare_next_batch(256))  # the limit backs 256 blocks
        # kvshim is short: the step does nothing, the engine lives on
        self.assertFalse(proc.prepare_next_batch(64))
        self.assertGreater(tr.short, 0)
        # the engine's own pool is short: transformers' error stands
        with self.assertRaises(RuntimeError):
            proc.prepare_next_batch(8192)

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


class FakeTorch(types.ModuleType):
    """The few torch calls kvshim.tensors and the cache construction make."""

    def __init__(self):
        super().__init__("torch")
        self.bfloat16 = FakeDtype("bfloat16", 2)
        self.int16 = FakeDtype("int16", 2)
        self.complex32x4 = FakeDtype("wide", 16)
        self.plain, self.taken, self.refuse_dlpack = [], [], False
        self._used = ctypes.create_string_buffer(b"used_dltensor")
        self.cuda = types.SimpleNamespace(current_device=lambda: 0, is_available=lambda: True)
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
    them: torch.empty(cache_shape, dtype=, device=) per layer."""

    def __init__(self, torch, layers=2, num_blocks=256, block_size=16, row=8 * 128):
        self.block_size, self.num_blocks = block_size, num_blocks
        self.cache_shape = ((num_blocks + 2) * block_size, 8, row // 8)
        self.key_cache, self.value_cache = [], []
        for _ in range(layers):
            self.key_cache.append(torch.empty(self.cache_shape, dtype=torch.bfloat16,
                                              device="cuda:0"))
            self.value_cache.append(torch.empty(self.cache_shape, dtype=torch.bfloat16,
                                                device="cuda:0"))
        self.other = torch.empty((64,), dtype=torch.int16, device="cuda:0")
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


class EarlyStartTest(unittest.TestCase):
    def run_start(self):
        import threading
        raised = []
        old = threading.excepthook
        threading.excepthook = raised.append
        self.addCleanup(setattr, threading, "excepthook", old)
        transformers_cb._start_kvshim()
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


if __name__ == "__main__":
    unittest.main(verbosity=2)
