"""Stand-ins for what the transformers adapter reads of an engine: torch
tensors (address, row stride, size), transformers' block manager and its
paged cache, written afresh from their behaviour. Shared by the adapter's
tests (test_adapters.py) and the engines sharing one budget
(fair_engines.py). Import after kvshim's variables are set: it loads
kvshim."""
import collections
import ctypes
import types

import kvshim


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

    def __getitem__(self, rows):
        """A view of these rows (a slice, step 1), as torch slices dim 0."""
        start, stop, step = rows.indices(self.rows)
        if step != 1:
            raise ValueError("FakeTensor slices rows one by one only")
        return FakeTensor(self.addr + start * self.row_elems * self.elem, max(0, stop - start),
                          self.row_elems, self.elem)

    def copy_(self, src):
        """src's rows into these, through the (emulated) driver's copy."""
        cu = ctypes.CDLL("libcuda.so.1")
        cu.cuMemcpyDtoD_v2.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_size_t]
        rc = cu.cuMemcpyDtoD_v2(self.addr, src.addr, self.numel() * self.elem)
        if rc:
            raise RuntimeError("FakeTensor.copy_: CUDA error %d" % rc)
        return self


class StandInBlock(types.SimpleNamespace):
    """A shareable block's record, as 5.17's Block: complete (its tokens
    hashed, so prefix sharing and forks may reference it) once it has a
    hash."""

    @property
    def is_complete(self):
        return self.hash is not None


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
            if shareable:
                # a record as 5.17's Block, which counts its references
                # (without a parent: chains are made by the tests that
                # need them)
                self._id_to_block[b] = StandInBlock(id=b, parent_id=None, hash=None,
                                                    ref_count=1)
            else:
                self.refs[b] = 1
        return ids

    def free_blocks(self, ids, shareable, complete=False):
        """Free ids; one not in use raises KeyError. A block with a record
        counts there (its id follows the record when the adapter moves it),
        the others in refs. As 5.17: blocks not shareable go back in one
        extend, shareable ones one append at a time (those kept for prefix
        sharing not at all), once their last reference goes (a fork's
        children share their parent's complete blocks)."""
        back = []
        for b in ids:
            record = self._id_to_block.get(b)
            if record is None:
                self.refs.pop(b)
            elif record.ref_count < 1:
                raise KeyError(b)
            else:
                record.ref_count -= 1
                if record.ref_count > 0:
                    continue                           # another request's still
                if shareable and complete:
                    self._init_block_ids[b] = None     # kept for prefix sharing
                    continue
                del self._id_to_block[b]
            if shareable:
                self._uninit_block_ids.append(b)
            else:
                back.append(b)
        if back:
            self._uninit_block_ids.extend(back)

    def fork_blocks(self, parent_blocks, num_forks, shareable, group_id):
        """As 5.17, for parallel sampling: each of num_forks children
        references the parent's leading complete blocks (shareable ones:
        their ref_count goes up by num_forks) and takes fresh blocks,
        through get_free_blocks, for the rest, which the caller copies.
        Returns (each child's blocks, copy sources, copy destinations), or
        (None, [], []) when blocks run out, what was done till then left
        as it is, as 5.17 leaves it."""
        shared = []
        if shareable:
            for b in parent_blocks:
                record = self._id_to_block[b]
                if not record.is_complete:
                    break
                record.ref_count += num_forks
                shared.append(b)
        rest = list(parent_blocks[len(shared):])
        if not rest:
            return [list(shared) for _ in range(num_forks)], [], []
        forks, src, dst = [], [], []
        for _ in range(num_forks):
            ids = self.get_free_blocks(len(rest), shared[-1] if shared else None, shareable,
                                       group_id)
            if ids is None:
                return None, [], []
            forks.append(shared + ids)
            src.extend(rest)
            dst.extend(ids)
        return forks, src, dst

    def reuse_cached(self, b):
        """A new request shares a cached prefix block."""
        self._init_block_ids.pop(b)
        self._id_to_block[b].ref_count = 1


class StandInCache:
    # a request's blocks, freed, go to the prefix cache but for its last
    # (transformers 5.17's decrease_ref_count: its complete blocks are kept
    # for sharing, when finished or preempted alike)
    complete_on_free = False

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

    def free_blocks(self, request_id):
        for cm in self.group_cache_managers:
            if request_id in cm.block_table:
                ids = cm.block_table.pop(request_id)
                share = cm.uses_block_sharing
                if self.complete_on_free and share:
                    self._block_manager.free_blocks(ids[:-1], shareable=True, complete=True)
                    ids = ids[-1:]
                self._block_manager.free_blocks(ids, shareable=share)

    def compute_max_num_forks(self, request_id):
        """The children a fork of request_id can take (5.17's): the free
        blocks shown over the fresh blocks each child needs, in every
        layer group its blocks but the leading complete ones where blocks
        are shared; no bound where it needs none."""
        need = 0
        for cm in self.group_cache_managers:
            table = cm.block_table[request_id]
            shared = 0
            if cm.uses_block_sharing:
                for b in table:
                    if not self._block_manager._id_to_block[b].is_complete:
                        break
                    shared += 1
            need += len(table) - shared
        return 2 ** 31 if need == 0 else self.get_num_free_blocks() // need

    def fork_request(self, request_id, children):
        """Fork a request's blocks into its children's, every layer group in
        turn (5.17's fork_request): (copy sources, copy destinations)."""
        src, dst = [], []
        for cm in self.group_cache_managers:
            s, d = cm.fork_blocks(request_id, children, self._block_manager)
            src.extend(s)
            dst.extend(d)
        return src, dst

    def extend_read_and_write_indices(self, request_id, past, query, read_index, write_index):
        """Rows of the request's blocks, per layer group, as a full attention
        group reads (everything up to the new tokens) and writes them."""
        for cm, reads, writes in zip(self.group_cache_managers, read_index, write_index):
            rows = [b * self.block_size + i for b in cm.block_table[request_id]
                    for i in range(self.block_size)]
            writes.extend(rows[past:past + query])
            reads.extend(rows[:past + query])


class StandInGroup:
    def __init__(self):
        self.block_table, self.uses_block_sharing = {}, True

    def fork_blocks(self, request_id, children, bm):
        """The children's tables from the block manager's fork; as 5.17's
        CacheAllocator, a fork it could not make raises ValueError."""
        forks, src, dst = bm.fork_blocks(self.block_table[request_id], len(children),
                                         self.uses_block_sharing, 0)
        if forks is None:
            raise ValueError("Failed to fork blocks for request %s" % request_id)
        for child, ids in zip(children, forks):
            self.block_table[child] = ids
        return src, dst


class OffloadingManager517:
    """transformers 5.17's offload_requests: evict the newest requests its
    scheduler found starved of blocks while their demand passes the free
    blocks, never the last active one; the victims go back to waiting,
    oldest first (restarted, where the request can: no CPU space here), and
    new requests wait until one finishes (block_new_requests).
    .evicted: the request ids evicted, in order."""

    def __init__(self, proc):
        self.proc, self.evicted = proc, []

    def offload_requests(self):
        sched, cache = self.proc.scheduler, self.proc.cache
        starved = sched.starved_requests
        if not starved:
            return 0
        free = cache.get_num_free_blocks()
        demand = sum(n for _, n in starved)
        victims = []
        while demand > free and starved and len(sched.active_requests) - len(victims) > 1:
            state, n = starved.pop()
            victims.append(state)
            demand -= n
            free += state.blocks
        for state in reversed(victims):
            rid = state.request_id
            sched.active_requests.pop(rid, None)
            cache.free_blocks(rid)
            if hasattr(state, "restart"):
                state.restart()
            sched.waiting_requests[rid] = state
            self.evicted.append(rid)
        if victims:
            sched.block_new_requests = True
        return len(victims)
