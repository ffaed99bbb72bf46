"""The Python binding and the transformers adapter's logic, on the CPU
emulation (no torch, no GPU): a stand-in block manager and cache that make
the calls transformers' continuous batching makes (a deque of free ids
handed out lowest first, ids returned on free or eviction, blocks kept
alive for prefix sharing), over KV "tensors" that are kvshim spans.
Run by `make check` with LD_LIBRARY_PATH naming tests/emu.
"""
import collections
import io
import os
import sys
import tempfile
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

    def blocks_needed(self, n, allocated):
        return n

    def will_allocation_be_successful(self, n, allocated):
        return self.blocks_needed(n, allocated) <= self._block_manager.num_free_blocks


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

    def test_not_spans_left_alone(self):
        c = StandInCache(64, 16, 1, 1024)
        self.addCleanup(self.release, c)
        c.key_cache[0] = FakeTensor(4096, 66 * 16, 1024)      # not a span
        err = io.StringIO()
        with redirect_stderr(err):
            self.assertIsNone(transformers_cb.attach(c))
        self.assertIn("not kvshim spans", err.getvalue())
        self.assertIsInstance(c._block_manager._uninit_block_ids, collections.deque)
        self.assertNotIsInstance(c._block_manager._uninit_block_ids, blocks.TrackedFreeList)

    def test_kvshim_not_running_leaves_cache(self):
        c = StandInCache(64, 16, 1, 1024)
        self.addCleanup(self.release, c)
        real = kvshim.Group

        def broken(*a, **k):
            raise kvshim.KvshimError(-7, "kvshim_group_create")
        kvshim.Group = broken
        self.addCleanup(setattr, kvshim, "Group", real)
        err = io.StringIO()
        with redirect_stderr(err):
            self.assertIsNone(transformers_cb.attach(c))
        self.assertIn("cannot manage the KV cache", err.getvalue())

    def test_release_failure_keeps_the_id(self):
        def refuse(ids):
            raise kvshim.KvshimError(-2, "kvshim_group_unmap")
        free = blocks.TrackedFreeList([1, 2], refuse)
        err = io.StringIO()
        with redirect_stderr(err):
            free.append(3)
            free.extend([4, 5])
        self.assertEqual(list(free), [1, 2, 3, 4, 5])
        self.assertIn("not released", err.getvalue())

    def test_unexpected_transformers_warns(self):
        mod = types.ModuleType("fake")
        err = io.StringIO()
        with redirect_stderr(err):
            transformers_cb.patch_cache_module(mod)
        self.assertIn("not as expected", err.getvalue())
        self.assertIn("left eager", err.getvalue())


class BindingTest(unittest.TestCase):
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
