"""What every block-pool adapter shares: mirroring an engine's free list of
KV blocks onto a kvshim block group. A block leaving the free list is
backed (kvshim_group_map) before the engine's kernels can touch it; a block
coming back is released (kvshim_group_unmap: its pages stay cached, no
driver call). Engines keep their free lists in different shapes; the
adapter for one wires its list to a BlockTracker.
"""
import collections
import contextlib
import functools
import threading
import time

import kvshim
from kvshim import ELIMIT, ENOMEM, ENOTCLAIMED
from kvshim.adapters import warn


# A call the engine waits on longer than this is counted (.slow): the time
# of a 2 MiB page's map is tens of microseconds, a handoff of others' pages
# about 14 ms.
SLOW_S = 0.002


def _timed(method):
    """Add the time a tracker method takes to the tracker's .busy, count it
    in .slow when it passes SLOW_S, and keep the longest in .worst."""
    @functools.wraps(method)
    def timed(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            t = time.perf_counter() - t
            self.busy += t
            self.calls += 1
            if t > self.worst:
                self.worst, self.worst_in = t, method.__name__
            if t > SLOW_S:
                self.slow += 1
    return timed


# The longest the thread backing blocks ahead waits for a CUDA graph's
# capture to end before it maps anyway (transformers' captures took 20 to
# 325 ms on an H200: docs/BENCHMARKS.md, session 24), and the slices it
# waits in: once the engine's thread waits for the batch, it stops waiting
# within a slice.
CAPTURE_WAIT_MS = 1000
CAPTURE_SLICE_MS = 5


class _Ahead(threading.Thread):
    """The thread that backs blocks ahead of need: one batch at a time,
    while the engine's thread goes on (kvshim's calls release the GIL). A
    batch waits first for any CUDA graph capture of the process to end
    (kvshim.capture_wait, up to CAPTURE_WAIT_MS): the driver's calls of a
    map made beside a capture slow it, and the capture is on the engine's
    path, the batch not; but once the engine's thread waits for the batch
    (finish), the batch is on its path too, and maps at once."""

    def __init__(self, group):
        super().__init__(name="kvshim-ahead", daemon=True)
        self.group = group
        self._cv = threading.Condition()
        self._todo = None        # the ids to back next
        self._batch = frozenset()  # the ids of the last batch started
        self._done = None        # (ids, backed, short) of the last batch (short:
                                 # it failed for want of memory)
        self._urgent = False     # the engine's thread waits for the batch
        self.busy = 0.0          # seconds spent backing
        self.waited = 0.0        # seconds spent waiting for captures to end

    def start_batch(self, ids):
        with self._cv:
            self._todo, self._done, self._urgent = ids, None, False
            self._batch = frozenset(ids)
            self._cv.notify()
        if not self.is_alive():
            self.start()

    def in_flight(self):
        """Whether a batch is being backed now (a look, no wait)."""
        return self._todo is not None

    def apart(self, ids):
        """Whether the last batch started, done or not, holds none of ids
        (only the engine's thread starts batches)."""
        return self._batch.isdisjoint(ids)

    def finish(self):
        """Wait for the batch in flight: (ids, backed), or None if none."""
        with self._cv:
            self._urgent = True
            while self._todo is not None:
                self._cv.wait()
            done, self._done = self._done, None
            return done

    def _wait_captures(self):
        """Wait until no CUDA graph capture of the process runs, at most
        CAPTURE_WAIT_MS, or until the engine's thread waits for the batch."""
        end = time.perf_counter() + CAPTURE_WAIT_MS / 1e3
        try:
            while not self._urgent and not kvshim.capture_wait(CAPTURE_SLICE_MS):
                if time.perf_counter() >= end:
                    break
        except Exception:        # anything: map at once (the batch must end)
            pass

    def run(self):
        while True:
            with self._cv:
                while self._todo is None:
                    self._cv.wait()
                ids = self._todo
            t = time.perf_counter()
            self._wait_captures()
            self.waited += time.perf_counter() - t
            t = time.perf_counter()
            short = False
            try:
                self.group.map(ids)
                backed = True
            except Exception as e:   # short of memory, or anything: the engine maps
                backed = False       # them itself; the batch always ends, or it would wait
                short = isinstance(e, kvshim.KvshimError) and e.code in (ELIMIT, ENOMEM)
            self.busy += time.perf_counter() - t
            with self._cv:
                self._todo, self._done = None, (ids, backed, short)
                self._cv.notify_all()


class BlockTracker:
    """The kvshim side of one engine block pool.

    Mapping ahead: an adapter that knows which ids its engine will hand out
    next, and that it will hand them out soon (the blocks a request's
    prefill still needs), names them with ahead(); they are backed on a
    thread of their own while the engine computes the current step, and
    claimed by the tracker until handed out, so the map on the engine's
    path finds them backed and costs nothing. Ids named ahead that the
    engine did not hand out are released at the next ahead(), so blocks
    held this way never exceed one call's worth."""

    HOLD_OFF_S = 1.0             # how long what a preemption freed on pages still
                                 # claimed holds the next one off (see owed)
    PLAN_LOOK_S = 0.1            # how long free_after_plan's look holds

    def __init__(self, group):
        self.group = group
        self.mapped = 0          # blocks held backed, for reports and tests
        self.peak = 0            # the most blocks held backed at once
        self.refused = 0         # maps refused for want of memory
        self.short = 0           # times kvshim said no, checks and maps alike
        self.capped = 0          # times the engine's free block count was capped at
                                 # what kvshim can back
        self.shown = None        # the free block count get_num_free_blocks last gave
                                 # (the engine's calls and the adapter's), for reports
        self._room = (0.0, None)  # (when, blocks) of the last headroom read
        self.busy = 0.0          # seconds the engine spent in this tracker
        self.engine_s = 0.0      # seconds in the engine's own scheduling passes (an
                                 # adapter's, around which it does its own work)
        self.calls = 0           # ...over this many calls
        self.worst = 0.0         # the longest of them, seconds
        self.worst_in = None     # ...in this method (its name)
        self.slow = 0            # how many took longer than SLOW_S
        self.retries = 0         # passes looked at again because kvshim was short
        self.preempted = 0       # requests preempted because kvshim asked
        self.evictions = 0       # evictions the adapter had the engine make
                                 # for an ask (one that freed nothing too)
        self.to_cpu = 0          # requests evicted (for an ask or not) whose
                                 # cache transformers moved to the CPU
        self.started_over = 0    # ...that it requeued to start over
        self.evicted_untold = 0  # ...that it did neither way it says
        self.dropped = 0         # prefix-cache blocks released because kvshim asked
        self.reclaimed = 0       # ...because the engine needed their memory
        self._demand = (0.0, 0)  # (when, bytes) of the last demand stated
        self._unused = (0.0, 0)  # (when, bytes) of the last unused pages stated
        self._unused_seen = (-1.0, None)  # (when, what) the prefix cache's pages
                                 # were last looked at (see state_unused)
        self.unused_pages = 0    # page indices only prefix-cache blocks claimed,
                                 # released because kvshim asked
        self.packed_pages = 0    # page indices emptied by moving the blocks in use
                                 # on them (KVSHIM_CB_PACK), because kvshim asked
        self.moved = 0           # ...the blocks moved so
        self._asked = (0.0, 0)   # (when, bytes) of the last ask read
        self._entitled = (float("-inf"), None)  # (when, blocks) of the last entitled read
        self.asks = 0            # times kvshim began to ask for blocks back
        self.asked_s = 0.0       # seconds under an ask, asks that ended
        self.ask_worst = 0.0     # the longest of them, seconds
        self._ask_from = None    # when the ask read now began, if one is
        self.no_page = 0         # asks in which a pass found no page to empty
        self._no_page_seen = False  # ...this ask has been counted there
        self.kept_out = 0        # passes whose waiting requests an ask (or a fork waiting) kept out
        self._held_off = {}      # page index: blocks preemptions freed there for an
                                 # ask, the page still claimed (see owed)
        self._held_since = 0.0   # ...since, the first of them
        self._released = None    # while released(): ids released per page index
        self._pinned = set()     # page indices also backed outside the group (see pin)
        self.emptied = 0         # page indices whose last claim went (each rereads
                                 # the ask: see _claimed)
        self._ahead = set()      # ids backed ahead, not yet handed out
        # the claims the tracker holds, by id: one for each id it mapped
        # (take, a batch backed ahead taken in) and has not released since.
        # kvshim counts claims per page, not per block: a release of an id
        # that holds none (an engine freeing a block twice) would drop the
        # claim of another block on its page, one in use, which trim or
        # another process's map could then take. Only ids held here are
        # released. (More than one for an id handed out again while in use,
        # as a free list holding an id freed twice does: each map is a claim)
        self._held = {}
        self.not_held = 0        # ids put back that held no claim here (freed
                                 # twice, say): nothing released for them
        self._told_not_held = False
        self.map_errors = 0      # maps that failed for another reason than memory
        self.ahead_errors = 0    # batches backed ahead that failed so (apart:
                                 # the engine's checks read map_errors)
        self.forks_refused = 0   # forks of a request kvshim could not back, undone
        self.forks_failed = 0    # ...whose request failed: it could never be backed
        self._thread = None      # the _Ahead thread, once needed
        self.ahead_hits = 0      # blocks handed out already backed
        self.taken = 0           # blocks handed out in all
        self.eager = 0           # batches wider than the share run without
                                 # a CUDA graph (transformers_cb_reads)
        self.cache_given_back = 0  # such batches after which PyTorch's
                                 # reserved memory fell (give_back_cache;
                                 # not after one that raised, beside a
                                 # capture, or with KVSHIM_CB_GIVE_BACK off)
        self._named_at = None    # (taken, emptied) when the ids to back ahead
                                 # were last named
        self._ahead_failed = None  # when the last batch backed ahead was found
                                 # to have backed nothing for want of memory
                                 # (None: it backed, or another error)
        # blocks claimed per page index (the same in every tensor of the
        # group): a free block on a page with claims costs no memory
        self._claims = collections.Counter()
        try:
            # (the group's GPU's, whatever the current device)
            self._page = int(group.stats()["page_bytes"])
        except (kvshim.KvshimError, KeyError, TypeError, ValueError, AttributeError):
            self._page = 0       # unknown: every block counts as needing memory
        self._cap = (0.0, None)  # (when, blocks) of the last capacity read
        # free ids by page index (ids given back and not handed out since),
        # and the pages with claims that have some: where the next id is
        # best taken (see prefer)
        self._free_on = {}
        self._hot = set()
        self._hot_stack = []     # the hot pages, newest last (stale entries
                                 # skipped when met: a set's next() would walk
                                 # every slot ever deleted)
        self._hot_free = 0       # free ids on hot pages, all together
        self._near = None        # while one allocation runs (see near):
                                 # the page its next id is taken from first
        self._near_on = False
        self._left = (0.0, None, 0)  # (when, keep, free ids) of free_after_plan's look

    @property
    def bytes_per_block(self):
        """Bytes one block id spans over every tensor of the group."""
        return self.group.block_bytes * self.group.ntensors

    def _pages(self, b):
        """The page indices block b lies on."""
        bb = self.group.block_bytes
        return range(b * bb // self._page, ((b + 1) * bb - 1) // self._page + 1)

    def _claimed(self, ids, k, later=False):
        """Count ids as claimed (k = 1) or released (k = -1) on their pages.
        later: pages this makes hot go out after the hot pages there are,
        in the order of ids (blocks backed ahead: they were named in the
        order upcoming gives, after the hot pages' free ids)."""
        if not self._page:
            return
        for b in ids:
            pages = self._pages(b)
            if k < 0 and self._released is not None:
                self._released[pages[0]] += 1
            for p in pages:
                self._claims[p] += k
                if self._claims[p] <= 0:
                    del self._claims[p]
                    if p not in self._pinned:
                        # it goes back, and the ask falls with it: read afresh
                        self.emptied += 1
                        self._held_off.pop(p, None)
                        self.reread()
                        self._cool(p)
                elif self._free_on.get(p):
                    self._heat(p, later)

    def _heat(self, p, later=False):
        """Page p has claims and free ids: hot (its ids go out before the
        other hot pages', or, later, after them)."""
        if p not in self._hot:
            self._hot.add(p)
            if later:
                self._hot_stack.insert(0, p)
            else:
                self._hot_stack.append(p)
            self._hot_free += len(self._free_on[p])
            if len(self._hot_stack) > 4 * len(self._hot) + 64:
                self._hot_stack = [q for q in self._hot_stack if q in self._hot]

    def _cool(self, p):
        """Page p has no claims (and is not pinned) or no free ids any
        more."""
        if p in self._hot:
            self._hot.discard(p)
            self._hot_free -= len(self._free_on.get(p, ()))

    def pin(self, offset):
        """Each tensor of the group is backed from offset on outside it
        (an engine's padding zone, mapped whole): the page index holding
        offset, if blocks of the group lie on it too, never goes back when
        they are all free. It is not counted emptied, and asks do not look
        to empty it (owners, cache_only_pages). Its free ids are hot
        whether a block there is claimed or not: backed already, they go
        out first (prefer) and count free (capacity), where they used to
        wait for the free list to reach them, the engine meanwhile mapping
        other pages for its blocks (on an H200 at a 3 GiB budget, the
        large model's last page index, 96 MiB, held 30 of its 798 blocks:
        docs/BENCHMARKS.md, session 46)."""
        if self._page and offset % self._page:
            p = offset // self._page
            self._pinned.add(p)
            if self._free_on.get(p):
                self._heat(p)

    def _pinned_free(self):
        """The pinned page indices (see pin) with free ids, in order."""
        return [p for p in sorted(self._pinned) if self._free_on.get(p)]

    def free_pinned(self):
        """The free ids on the pinned page indices (see pin): backed with
        the cache, whatever the engine holds; 0 when blocks may straddle
        pages."""
        return sum(len(self._free_on[p]) for p in self._pinned_free()) if self._one_page() else 0

    def _one_page(self):
        """Whether every block lies on one page (the index below needs it)."""
        return self._page and self._page % self.group.block_bytes == 0

    def freed(self, ids):
        """Index ids put back in the engine's free list by their page."""
        if not self._one_page():
            return
        bb = self.group.block_bytes
        for b in ids:
            p = b * bb // self._page
            s = self._free_on.setdefault(p, set())
            if b in s:
                continue
            s.add(b)
            if p in self._hot:
                self._hot_free += 1
            elif p in self._claims or p in self._pinned:
                self._heat(p)

    def handed(self, b):
        """Id b left the engine's free list: out of the index (and, while
        an allocation runs, where its next id is taken: see near)."""
        p = self.page_of(b)
        if p is None:
            return
        if self._near_on:
            self._near = p
        s = self._free_on.get(p)
        if s is not None and b in s:
            if len(s) == 1:
                self._cool(p)
                del self._free_on[p]
            else:
                s.discard(b)
                if p in self._hot:
                    self._hot_free -= 1

    def page_of(self, b):
        """The page index block b lies on; None when blocks may straddle
        pages (no index is kept then)."""
        return b * self.group.block_bytes // self._page if self._one_page() else None

    def near_ids(self, b):
        """The free ids on block b's page, in the order near hands them out
        after b."""
        p = self.page_of(b)
        return list(self._free_on.get(p, ())) if p is not None else []

    @contextlib.contextmanager
    def near(self, last):
        """While one allocation hands out ids: take each from the page of
        the one before it (last: the request's last block, or None) while
        that page has free ids. A request's blocks then share few pages
        with other requests' (handed out in the free list's order, a
        request decoding takes a block every few steps wherever the list
        is, and every page holds blocks of dozens of requests: on an H200
        an engine asked for one page index preempted 30 of its 44
        requests), so that preempting few requests empties a page."""
        self._near_on = True
        self._near = None if last is None else self.page_of(last)
        try:
            yield
        finally:
            self._near_on, self._near = False, None

    def owners(self, tables, cached=()):
        """For page indices whose every claimed block is in tables (pairs
        of a request id and its block ids) or in cached (blocks no request
        uses, kept claimed: the prefix cache's): {page: (set of request
        ids, list of cached ids)}. Pages with claims neither explains
        (blocks backed ahead) are left out: preempting cannot empty them."""
        if not self._one_page():
            return {}
        on, ids = {}, {}
        for rid, blocks in tables:
            for b in blocks:
                p = self.page_of(b)
                on.setdefault(p, (set(), []))[0].add(rid)
                ids.setdefault(p, set()).add(b)
        for b in cached:
            p = self.page_of(b)
            if b not in ids.setdefault(p, set()):
                on.setdefault(p, (set(), []))[1].append(b)
                ids[p].add(b)
        return {p: o for p, o in on.items()
                if len(ids[p]) >= self._claims.get(p, 0) and p not in self._pinned}

    @property
    def page_index_bytes(self):
        """Bytes one page index spans over every tensor of the group."""
        return self._page * self.group.ntensors

    def preferred(self):
        """Every id prefer() would give, in turn."""
        seen = set()
        for p in self._pinned_free():
            seen.add(p)
            yield from list(self._free_on[p])
        for p in reversed(list(self._hot_stack)):
            if p in self._hot and p not in seen:
                seen.add(p)
                yield from list(self._free_on.get(p, ()))

    def prefer(self):
        """A free id on a page other blocks claim (on the padding zone's
        first, see pin: it never goes back), to hand out before the
        free list's first: taking it costs no memory, and filling the pages
        in use first keeps the blocks in use on few pages, so that pages
        empty out and can go back (handed out in the list's order, the
        blocks of long requests stay spread over every page they ever
        touched: on an H200 an engine pinned 48 MiB with one request).
        None when there is none."""
        if self._near is not None:
            s = self._free_on.get(self._near)
            if s:
                return next(iter(s))
        for p in self._pinned:
            s = self._free_on.get(p)
            if s:
                return next(iter(s))
        stack = self._hot_stack
        while stack:
            p = stack[-1]
            if p in self._hot:
                s = self._free_on.get(p)
                if s:
                    return next(iter(s))
                self._cool(p)
            stack.pop()
        return None

    def _settle(self, ids=None):
        """Take in the batch backed ahead, if one was in flight, waiting for
        it; with ids, only if they are in it (a batch that holds none of
        them is taken in later): an engine taking or freeing other blocks
        goes on while the thread maps (the library maps from both threads
        at once, claims counted per page), where it used to wait for the
        whole batch."""
        if self._thread is None or (ids is not None and self._thread.apart(ids)):
            return
        done = self._thread.finish()
        if done is not None:
            self._ahead_failed = time.monotonic() if done[2] else None
            if not done[1] and not done[2]:
                self.ahead_errors += 1
        if done is not None and done[1]:
            new = [b for b in done[0] if b not in self._ahead]
            self._ahead.update(new)
            self._hold(new)
            self._claimed(new, 1, later=True)

    def _hold(self, ids):
        """The tracker holds a claim more for each of ids (it mapped them)."""
        held = self._held
        for b in ids:
            held[b] = held.get(b, 0) + 1

    def _unhold(self, ids):
        """Of ids the engine put back, those whose claim the tracker releases
        (each taken out of the claims held; see _held), in order. An id
        holding no claim here, or whose claim is the blocks backed ahead's
        (it is free: backed ahead, it was never handed out), releases
        nothing: counted in not_held, and said once."""
        held, ahead, drop, skip = self._held, self._ahead, [], []
        for b in ids:
            n = held.get(b, 0)
            if not n or b in ahead:
                skip.append(b)
            elif n == 1:
                del held[b]
                drop.append(b)
            else:
                held[b] = n - 1
                drop.append(b)
        if skip:
            self.not_held += len(skip)
            if not self._told_not_held:
                self._told_not_held = True
                warn("blocks %s put back in the free list hold no claim (freed twice, "
                     "or never handed out through kvshim): nothing released for them "
                     "(said once; counted in not_held)" % skip[:8])
        return drop

    def free_on_pages(self):
        """The free ids on pages other blocks claim, and on the padding
        zone's (see pin; they cost no memory: see prefer); 0 when blocks
        may straddle pages."""
        return self._hot_free if self._one_page() else 0

    @_timed
    def capacity(self, limit, room, ttl=0.005):
        """How many of the ids the engine hands out next kvshim can back
        now, at most limit: the free ids on pages other blocks claim (they
        go out first, see prefer, and cost no memory), then room's worth
        (blocks of whole pages, as room() reads it; the exact check is
        can_take's, on the very ids). Without the first part, blocks freed
        on pages that other blocks still hold would not count, and an
        engine whose blocks are spread over its pages would see none free
        while most are. Read at most every ttl seconds."""
        when, blocks = self._cap
        now = time.monotonic()
        if blocks is None or now - when > ttl:
            blocks = room + self.free_on_pages()
            self._cap = (now, blocks)
        return min(blocks, limit)

    @property
    def ahead_busy(self):
        """Seconds spent backing blocks ahead, off the engine's thread."""
        return self._thread.busy if self._thread is not None else 0.0

    @property
    def ahead_waited(self):
        """Seconds the thread backing blocks ahead waited for CUDA graph
        captures to end before backing them."""
        return self._thread.waited if self._thread is not None else 0.0

    def settle_done(self):
        """Take in a batch backed ahead that is done, without waiting: its
        blocks then count in the free ids on claimed pages (capacity, the
        cushion) at once. (Left to the next take of one of its ids, a
        standing batch could wait there for dozens of decode steps,
        counted nowhere: its pages gone from the headroom, its ids not on
        claimed pages.) Each pass begins with it."""
        if self._thread is not None and not self._thread.in_flight():
            self._settle()

    AHEAD_RETRY_S = 0.1          # how long a batch that backed nothing stands
                                 # before ahead_standing(retry=True) names it again

    def ahead_standing(self, retry=False):
        """Whether the blocks last named ahead still stand: no block was
        handed out since (see take) and no page emptied (its free ids come
        first now), so the ids the engine hands out next are the same; or
        their batch is still in flight. With retry, a batch that backed
        nothing for want of memory stands only AHEAD_RETRY_S from when it
        was taken in (at the start of a pass, after its map's own wait):
        an idle engine's, named once, would otherwise never be backed,
        nothing it does changing the ids (see map_ahead). Never waits."""
        if self._thread is not None and self._thread.in_flight():
            return True
        if self._named_at != (self.taken, self.emptied):
            return False
        return (not retry or self._ahead_failed is None
                or time.monotonic() - self._ahead_failed < self.AHEAD_RETRY_S)

    def ahead_backed(self):
        """How many blocks stand backed ahead (a batch taken in)."""
        return len(self._ahead)

    def ahead_worth(self, b):
        """Whether block b is worth backing ahead: it is (backed ahead
        already), or backing it maps a page (one of its pages holds no
        claim and is not the padding zone's, see pin). A block on claimed
        pages costs the engine's map no driver
        call, and left to the engine it never waits for a batch in flight
        (see _settle)."""
        if b in self._ahead or not self._page:
            return True
        return any(p not in self._claims and p not in self._pinned for p in self._pages(b))

    @_timed
    def ahead(self, ids):
        """Back these ids ahead of need (the next the engine will hand out),
        on the tracker's thread; release the ids backed ahead before that
        are not among them."""
        self._settle()
        ids = list(ids)
        keep = set(ids)
        self._release_ahead([b for b in self._ahead if b not in keep])
        new = [b for b in ids if b not in self._ahead]
        self._named_at = (self.taken, self.emptied)
        self._ahead_failed = None   # named afresh: what failed before is not these
        if new:
            if self._thread is None:
                self._thread = _Ahead(self.group)
            self._thread.start_batch(new)

    @_timed
    def take(self, ids):
        """Back blocks the engine hands out. False (nothing changed) when
        memory is short, so the engine can treat them as unavailable."""
        ids = list(ids)
        if not ids:
            return True
        self._settle(ids)
        need = [b for b in ids if b not in self._ahead]
        try:
            if need:
                self.group.map(need)
        except kvshim.KvshimError as e:
            if e.code in (ELIMIT, ENOMEM):
                self.refused += 1
                self.short += 1
                return False
            # (nothing was backed: the caller puts the ids back, see
            # transformers_cb's get_free_blocks)
            self.map_errors += 1
            raise
        self._hold(need)
        self._claimed(need, 1)
        self.taken += len(ids)
        self.ahead_hits += len(ids) - len(need)
        self._ahead.difference_update(ids)
        self.mapped += len(ids)
        self.peak = max(self.peak, self.mapped)
        return True

    @_timed
    def give(self, ids):
        """Blocks back in the engine's free list: drop their claims, those
        the tracker holds only (see _unhold: a block freed twice, or one the
        engine never took through us, has none to drop, and releasing it
        anyway would drop another block's claim on its page)."""
        ids = list(ids)
        if not ids:
            return
        self.freed(ids)
        self._settle(ids)
        ids = self._unhold(ids)
        if not ids:
            return
        try:
            self.group.unmap(ids)
        except kvshim.KvshimError:
            # (the library unmaps all of them or none) one at a time: a
            # failure leaves only the blocks it hit claimed, not the whole
            # batch (see TrackedFreeList.batched), and is raised
            failed = self._unmap_each(ids)
            if failed is not None:
                raise failed
            return
        self.mapped -= len(ids)
        self._claimed(ids, -1)

    def _unmap_each(self, ids, handed=True):
        """Release ids one at a time (their claims already out of _held),
        after kvshim refused them together. handed: ids the engine had (in
        mapped), else blocks backed ahead. An id whose release fails for
        another reason than holding no claim keeps its claim in kvshim, and
        so here: held again, and counted among the blocks backed ahead (it
        is free and backed), so that its next hand-out takes no second
        claim, and the next pass that does not name it ahead releases it
        again; returns the first such error, or None."""
        failed = None
        for b in ids:
            try:
                self.group.unmap([b])
            except kvshim.KvshimError as e:
                if e.code != ENOTCLAIMED:
                    self._hold([b])
                    self._ahead.add(b)
                    if handed:
                        self.mapped -= 1
                    if failed is None:
                        failed = e
                continue
            if handed:
                self.mapped -= 1
            self._claimed([b], -1)
        return failed

    def stale(self):
        """Blocks were released or moved: read the headroom, the capacity
        and the free ids a plan leaves again."""
        self._room = self._cap = (0.0, None)
        self._left = (0.0, None, 0)

    @_timed
    def room(self, ttl=0.005):
        """Blocks kvshim could back now, read at most every ttl seconds
        (an engine asks per request it schedules; the exact check is
        can_take's); None when kvshim cannot tell."""
        when, blocks = self._room
        now = time.monotonic()
        if now - when > ttl:
            try:
                blocks = self.group.headroom()
            except kvshim.KvshimError:
                blocks = None
            self._room = (now, blocks)
        return blocks

    @_timed
    def state_demand(self, nblocks):
        """State in the shared budget the blocks this engine waits for now
        (those its waiting requests need, or its cushion; 0: none), as
        _state does (kvshim_group_share_demand adds the page index its
        admission check needs)."""
        self._state("demand", max(0, int(nblocks)) * self.bytes_per_block)

    def _state(self, what, nbytes):
        """State nbytes as this process's what (demand, unused) through
        the group's share_<what> (each GPU of its tensors its part, whatever
        the current device): again every 0.25 s while it lasts (kvshim
        holds a statement for a second), and at once when it changes."""
        when, last = getattr(self, "_" + what)
        now = time.monotonic()
        if nbytes == last and (not nbytes or now - when < 0.25):
            return
        try:
            getattr(self.group, "share_" + what)(nbytes)
        except (kvshim.KvshimError, AttributeError):
            return
        setattr(self, "_" + what, (now, nbytes))

    def _cache_only(self, cached):
        """The set of page indices whose every claimed block is in cached
        (blocks no request uses, kept claimed: the prefix cache's): those
        on which cached has as many blocks as there are claims. Empty when
        blocks may straddle pages."""
        if not self._one_page():
            return set()
        per = self._page // self.group.block_bytes
        claims = self._claims
        return {p for p, n in collections.Counter(b // per for b in cached).items()
                if 0 < claims.get(p, 0) <= n and p not in self._pinned}

    def cache_only_of(self, pages, cached):
        """Of these page indices, those whose every claimed block is in
        cached (see _cache_only), each with its ids in cached: {page:
        [ids]}, looking at each page's ids only (not at the whole cache).
        Releasing those ids empties the page."""
        if not self._one_page():
            return {}
        per = self._page // self.group.block_bytes
        on = {}
        for p in pages:
            n = self._claims.get(p, 0)
            if n and p not in self._pinned:
                ids = [b for b in range(p * per, (p + 1) * per) if b in cached]
                if len(ids) >= n:
                    on[p] = ids
        return on

    def cache_only_pages(self, cached):
        """The page indices of _cache_only(cached), each with its ids:
        {page: [ids]} (see cache_only_of)."""
        return self.cache_only_of(self._cache_only(cached), cached)

    @_timed
    def release_order(self, cached, parents=()):
        """cached's blocks (the prefix cache's, kept oldest first) in the
        order the engine's own need releases them: those on pages that
        blocks in use also claim, newest first, then the rest, newest first
        (transformers 5.17's order). Blocks in parents (a cached block's
        parent: a prefix is matched block by block from its first, and
        stops at the first block missing, so a parent released before its
        children would leave them unreachable) go with the rest. Released,
        the first ones' ids go out next at no memory cost (see prefer):
        the engine's new blocks fill the pages it uses, and the pages only
        the cache claims stay whole, to go back when kvshim asks (stated
        unused). Released newest first
        alone, the new blocks may go onto pages only the cache claimed
        while its blocks on the pages in use stay, and the pages in use
        hold far more than the blocks in use (on an H200 at 3 GiB, an
        engine's 480 MiB of pages in use held 96 MiB of blocks in use;
        which free blocks held them was not recorded). Newest first alone
        when blocks may straddle pages. A look goes over the whole cache:
        about 15 ms for 50,000 blocks on a 2-core CI machine, once for
        each shortfall the cache covers."""
        newest = list(reversed(cached))
        if not self._one_page():
            return newest
        only = self._cache_only(cached)
        per = self._page // self.group.block_bytes
        first = [b for b in newest if b // per not in only and b not in parents]
        taken = set(first)
        return first + [b for b in newest if b not in taken]

    def pack_plan(self, cached, keep=0):
        """The page indices whose blocks in use could move onto the free
        ids of the other pages with claims, so that they empty (the blocks
        in use being those claimed less cached's, the prefix cache's, which
        are released instead; pages only cached claims are not among them:
        see cache_only_pages), the fewest blocks to move first, while keep
        free ids stay on the pages left (the engine's cushion, which they
        cover: see free_after_plan): [(page, blocks in use on it)]. Each
        page taken leaves its own free ids out of those the blocks can move
        to. Empty when blocks may straddle pages."""
        return self._plan(cached, keep)[0]

    def free_after_plan(self, cached, keep=0):
        """The free ids on the pages with blocks in use, and on the padding
        zone's, that pack_plan(cached, keep) leaves (at least keep when
        there is a plan; not those of the
        pages only cached claims, stated unused): what covers the engine's
        cushion at no memory cost while the plan's pages are stated unused,
        so that the two are not counted twice. Looked at every PLAN_LOOK_S
        at most for one keep (an engine asks at every pass, and the look
        goes over the prefix cache: see state_unused; what blocks the
        engine takes or frees meanwhile shows at the next look), and afresh
        after stale()."""
        now = time.monotonic()
        when, was, left = self._left
        if was != keep or now - when > self.PLAN_LOOK_S:
            left = self._plan(cached, keep)[1]
            self._left = (now, keep, left)
        return left

    def _plan(self, cached, keep):
        """(pack_plan's plan, the free ids left on the pages with blocks in
        use once it is carried out)."""
        if not self._one_page():
            return [], 0
        # the pages with blocks in use, and the padding zone's (it never
        # goes back): where blocks move to (their free ids: not those of
        # pages only the cache claims, which go back)
        live_on = self._live_on(cached)
        room = sum(len(self._free_on.get(p, ())) for p in live_on) + sum(
            len(self._free_on[p]) for p in self._pinned_free() if p not in live_on)
        moving, plan = 0, []
        for live, p in sorted((n, p) for p, n in live_on.items() if p not in self._pinned):
            left = room - len(self._free_on.get(p, ()))
            if moving + live + keep > left:
                break
            room = left
            moving += live
            plan.append((p, live))
        return plan, room - moving

    def _live_on(self, cached):
        """{page index: its blocks in use} for the pages with some: its
        claims less cached's blocks there (blocks may not straddle
        pages)."""
        per = self._page // self.group.block_bytes
        on_cached = collections.Counter(b // per for b in cached)
        return {p: n - on_cached[p] for p, n in self._claims.items() if n > on_cached[p]}

    def pack_targets(self, sources, n, cached):
        """n free ids to move blocks in use to, off the page indices in
        sources: on the padding zone's page first (see pin: it never goes
        back), then on the other pages with blocks in use (see pack_plan),
        the fullest first, so that the emptiest stay emptiest; fewer when
        there are not n."""
        if not self._one_page():
            return []
        pinned = [p for p in self._pinned_free() if p not in sources]
        pages = pinned + [p for _, p in sorted(
            (len(self._free_on[p]), p) for p in self._live_on(cached)
            if p not in sources and p not in pinned and self._free_on.get(p))]
        ids = []
        for p in pages:
            for b in sorted(self._free_on[p]):
                ids.append(b)
                if len(ids) == n:
                    return ids
        return ids

    @_timed
    def state_unused(self, cached, fresh=False, packable=None, keep=0):
        """State in the shared budget the bytes of the page indices only
        cached's blocks claim (see cache_only_pages), and, given packable
        (a function: how many page indices moving the blocks in use on them
        would empty now, keep free ids left; see pack_plan), those too:
        unless the engine waits, the fair shares count them out of what it
        uses, and ask for them first. Looked at every 0.1 s at most, and
        then if the cache's size or the blocks claimed changed or a second
        passed (changes that leave both alike are seen within it), and at
        once if fresh (an ask must not read pages already released);
        stated again every 0.25 s while it lasts (kvshim holds it for a
        second), and at once when it changes. The look goes over every
        cached block: about 7 ms for 50,000 (unused_stale marks it due)."""
        now = time.monotonic()
        seen, what = self._unused_seen
        key = (len(cached), self.mapped, len(self._claims), keep if packable else None)
        nbytes = self._unused[1]
        if fresh or (now - seen >= 0.1 and (key != what or now - seen >= 1.0)):
            self._unused_seen = (now, key)
            pages = len(self._cache_only(cached)) + (packable() if packable else 0)
            nbytes = pages * self.page_index_bytes
        self._state("unused", nbytes)

    def unused_stale(self):
        """The prefix cache changed here: the next state_unused looks."""
        self._unused_seen = (-1.0, None)

    def reread(self):
        """Take the next ask read afresh (what was just given back is no
        longer asked for)."""
        self._asked = (0.0, 0)

    @_timed
    def entitled(self, ttl=0.25):
        """Blocks this engine is entitled to in the shared budget (its
        weighted part were every process sharing it to want all: it moves
        as processes come and go, not with their load), read at most every
        ttl seconds; None where no budget is shared or kvshim cannot
        tell."""
        when, blocks = self._entitled
        now = time.monotonic()
        if now - when > ttl:
            try:
                nbytes = self.group.share_entitled()
            except (kvshim.KvshimError, AttributeError):
                nbytes = None
            blocks = None if nbytes is None else nbytes // self.bytes_per_block
            self._entitled = (now, blocks)
        return blocks

    @_timed
    def asked(self, ttl=0.005):
        """Bytes of the blocks it uses that kvshim asks this engine to give
        back now (it holds more than its fair share while another process
        waits below its own), read at most every ttl seconds; 0 when none
        or when kvshim cannot tell."""
        when, nbytes = self._asked
        now = time.monotonic()
        if now - when > ttl:
            try:
                nbytes = self.group.share_asked()
            except (kvshim.KvshimError, AttributeError):
                nbytes = 0
            self._asked = (now, nbytes)
            self._ask_seen(now, nbytes)
        return nbytes

    def _ask_seen(self, now, nbytes):
        """Count asks as they begin and end, for reports: how often, how
        long in all, the longest. As read: an ask begins or ends at the
        read that sees it (the engine reads once a pass, a step apart), so
        one that comes and goes between two reads is not seen, two with
        none read between them count as one, and one still on at the end
        counts in asks, not yet in asked_s."""
        if nbytes and self._ask_from is None:
            self._ask_from = now
            self.asks += 1
            self._no_page_seen = False
        elif not nbytes and self._ask_from is not None:
            took = now - self._ask_from
            self.asked_s += took
            self.ask_worst = max(self.ask_worst, took)
            self._ask_from = None

    def owed(self):
        """Bytes of kvshim's ask not yet given back: the ask, which drops
        as each page the engine empties goes back, less the blocks its
        preemptions freed on pages still claimed, within a second of the
        first of them (those free no page: the ask stays, and giving on at
        once would empty the engine; the engine takes its next blocks
        there instead of new pages). A page that empties since counts
        once, in the ask."""
        nbytes = self.asked()
        if not nbytes or time.monotonic() - self._held_since > self.HOLD_OFF_S:
            self._held_off = {}
        held = sum(self._held_off.values()) * self.bytes_per_block
        return max(0, nbytes - held)

    def should_give_back(self):
        """Whether to preempt one more request for kvshim's ask."""
        return self.owed() > 0

    @contextlib.contextmanager
    def released(self):
        """While it lasts, count the ids released on each page index: the
        Counter it yields (for gave_back)."""
        self._released = collections.Counter()
        try:
            yield self._released
        finally:
            self._released = None

    def gave_back(self, nblocks, preempted=True, on=None):
        """Count what the engine freed for kvshim's ask: nblocks blocks,
        by preempting a request or (not preempted) from its prefix cache.
        The pages they emptied went back (the ask falls with them, see
        _claimed). What a preemption freed on pages still claimed, or on
        the page also backed outside the group (see pin), (on: ids released
        per page index, see released) holds the next preemption off (see
        owed); a prefix cache's blocks that emptied no page gave nothing
        and hold nothing off."""
        if not preempted:
            self.dropped += max(0, nblocks)
            return
        self.preempted += 1
        now = time.monotonic()
        if not self._held_off or now - self._held_since > self.HOLD_OFF_S:
            self._held_off, self._held_since = {}, now
        if not self._page:       # no pages known: every block freed holds off
            self._held_off[None] = self._held_off.get(None, 0) + max(0, nblocks)
            return
        for p, n in (on or {}).items():
            if p in self._claims or p in self._pinned:
                self._held_off[p] = self._held_off.get(p, 0) + n

    def found_no_page(self):
        """A pass under the ask found no page to empty: counted once an
        ask (no_page)."""
        if not self._no_page_seen:
            self._no_page_seen = True
            self.no_page += 1

    @_timed
    def can_back(self, ids):
        """Would backing these blocks succeed now? (Not a refusal that
        holds the engine back: see can_take.)"""
        ids = list(ids)
        return not ids or self.group.can_back(ids)

    def can_take(self, ids):
        """Would backing these blocks succeed now? A no counts in short:
        the engine is held back."""
        if self.can_back(ids):
            return True
        self.short += 1
        return False

    @_timed
    def drop_ahead(self):
        """Release every block backed ahead (see ahead). Returns how many
        were (the pages they empty go back, and the ask is read afresh:
        see _claimed)."""
        self._settle()
        drop = list(self._ahead)
        self._release_ahead(drop)
        self._named_at = None       # named afresh once nothing asks
        return len(drop)

    def _release_ahead(self, drop):
        """Release these ids backed ahead: unbacked, and no longer claimed.
        They leave the blocks backed ahead whatever kvshim says, and a
        failure is logged, never raised: this runs in the engine's
        scheduling pass (map_ahead, _give_back), where an error would end
        its loop. One at a time when kvshim refuses them together (it
        releases all or none), as give does."""
        if not drop:
            return
        self._ahead.difference_update(drop)
        held = self._held
        for b in drop:
            n = held.get(b, 0)
            if n > 1:
                held[b] = n - 1
            else:
                held.pop(b, None)
        try:
            self.group.unmap(drop)
        except kvshim.KvshimError as e:
            failed = self._unmap_each(drop, handed=False)
            warn("blocks backed ahead %s not all released: %s" % (drop[:8], failed or e))
            return
        self._claimed(drop, -1)


class TrackedFreeList(collections.deque):
    """A deque of free block ids that tells its tracker about every id put
    back into it (append, extend and their left forms); taking ids out is
    the engine's allocation path, which the adapter wraps to back them.
    The id is back in the list first: a failure to release it is logged,
    never lost.

    Ids put back at the right (append, extend: how engines free blocks) go
    to the left instead, lowest first: the engine hands them out again
    before ids it never used. Their pages are still mapped (cached), so
    taking them costs no driver call, and the blocks in use stay packed on
    the pages backed at the busiest moment; handed out first in, first out,
    the blocks in use would walk through the whole span and leave every
    page behind them mapped."""

    def __init__(self, iterable, on_return, tracker=None):
        super().__init__(iterable)
        self._on_return = on_return
        self._tracker = tracker
        # how many times each id is in the list (once, or more for an id
        # freed twice), and the list's length: an id handed out from inside
        # (the tracker's preferred) leaves its copy where it is (removing it
        # there would cost a walk of the list: 60 us at 5000 ids deep), so
        # an id has more copies than it is in the list: the leftmost are the
        # ones in it (an id freed again goes out first, from the left), the
        # others are skipped when popleft reaches them
        self._count = collections.Counter(collections.deque.__iter__(self))
        self._n = collections.deque.__len__(self)
        self._extra = collections.Counter()     # copies beyond the count, by id
        self._nextra = 0
        self._batch = None      # ids put back inside batched(), told at its end

    def __len__(self):
        return self._n

    def __iter__(self):
        if not self._nextra:
            yield from collections.deque.__iter__(self)
            return
        # (dict reads: a Counter's missing key costs a Python call, and a
        # walk may pass hundreds of extra copies)
        extra, count, seen = self._extra, self._count, {}
        for b in collections.deque.__iter__(self):
            if b in extra:
                k = seen[b] = seen.get(b, 0) + 1
                if k > count.get(b, 0):
                    continue
            yield b

    def __contains__(self, b):
        return self._count.get(b, 0) > 0

    def __getitem__(self, i):
        if not isinstance(i, int) or i < 0:
            raise TypeError("TrackedFreeList indexes from the left only")
        for k, b in enumerate(self):
            if k == i:
                return b
        raise IndexError("TrackedFreeList index out of range")

    def _take(self, b):
        """Id b leaves the list (one of its copies, counted)."""
        self._count[b] -= 1
        if not self._count[b]:
            del self._count[b]
        self._n -= 1

    def _take_inside(self, b):
        """Id b leaves the list from where it is: its copy stays, extra."""
        self._take(b)
        self._extra[b] += 1
        self._nextra += 1

    def _put(self, ids):
        """Ids come into the list (their copies put at the left)."""
        for b in ids:
            self._count[b] += 1
        self._n += len(ids)

    def popleft(self):
        """The next id for the engine: the tracker's preferred one (on a
        page other blocks hold; see BlockTracker.prefer), else the first."""
        if not self._n:
            raise IndexError("pop from an empty TrackedFreeList")
        self._tell()
        t = self._tracker
        b = t.prefer() if t is not None else None
        if b is not None and b in self:
            self._take_inside(b)
            self._compact()
        else:
            if b is not None:           # not in the list: the tracker's index was stale
                t.handed(b)
            while True:
                b = collections.deque.popleft(self)
                if b in self:           # the leftmost copy: in the list
                    break
                self._extra[b] -= 1     # an extra copy
                if not self._extra[b]:
                    del self._extra[b]
                self._nextra -= 1
            self._take(b)
        if t is not None:
            t.handed(b)
        return b

    def _compact(self):
        """Drop the extra copies once they are many (over 64, and over a
        32nd of the list): one walk for all of them. Every look at the ids
        handed out next (upcoming, several a pass) walks past the extra
        copies, which gather at the left where freed ids go: allowed a
        quarter of the list, they cost a stand-in engine of 2400 blocks
        167 us a look and 1.8 ms a pass, against 17 us and 0.7 ms now."""
        n = collections.deque.__len__(self)
        if self._nextra <= max(64, n // 32):
            return
        keep = list(self)
        collections.deque.clear(self)
        collections.deque.extend(self, keep)
        self._extra.clear()
        self._nextra = 0

    def _returned(self, ids):
        if self._batch is not None:
            self._batch.extend(ids)
            return
        try:
            self._on_return(ids)
        except kvshim.KvshimError as e:
            warn("blocks %s not released: %s" % (ids[:8], e))

    @contextlib.contextmanager
    def batched(self):
        """Ids put back inside are told to the tracker once, at the end (the
        outermost, when nested; also when the body raises): a call that
        puts ids back one append at a time (transformers 5.17 evicts its
        prefix cache's blocks so, and frees a request's incomplete shared
        blocks so) costs one release for all of them, not one each (see
        docs/BENCHMARKS.md, section 4, session 22). An id taken out
        meanwhile has those before it told first (see _tell). No lock: the
        engine's scheduling runs on one thread, as in transformers."""
        if self._batch is not None:
            yield
            return
        self._batch = []
        try:
            yield
        finally:
            ids, self._batch = self._batch, None
            if ids:
                self._returned(ids)

    def _tell(self):
        """Ids put back in a batch still open are told now, before one is
        taken out."""
        if self._batch:
            ids, self._batch = self._batch, None
            try:
                self._returned(ids)
            finally:
                self._batch = []

    def append(self, x):
        super().appendleft(x)
        self._put([x])
        self._returned([x])

    def appendleft(self, x):
        super().appendleft(x)
        self._put([x])
        self._returned([x])

    def extend(self, xs):
        xs = list(xs)
        super().extendleft(sorted(xs, reverse=True))
        self._put(xs)
        self._returned(xs)

    def extendleft(self, xs):
        xs = list(xs)
        super().extendleft(xs)
        self._put(xs)
        self._returned(xs)

    def take_ids(self, ids):
        """Take these ids out of the list, as popleft hands out the
        tracker's preferred ones (their copies stay where they are, counted
        extra). Returns those that were in it."""
        self._tell()
        got = []
        for b in ids:
            if b not in self:
                continue
            self._take_inside(b)
            if self._tracker is not None:
                self._tracker.handed(b)
            got.append(b)
        self._compact()
        return got

    def put_back_front(self, ids):
        """Return ids that were taken but never backed, in their order,
        without releasing anything."""
        ids = list(ids)
        super().extendleft(reversed(ids))
        self._put(ids)
        if self._tracker is not None:
            self._tracker.freed(ids)

    def upcoming(self):
        """The ids in the order popleft hands them out to one allocation of
        a new request (while nothing is claimed or released meanwhile): the
        preferred ones, then the list's, each followed by the other free
        ids on its page (see BlockTracker.near)."""
        t, seen = self._tracker, set()
        if t is not None:
            for b in t.preferred():
                seen.add(b)
                yield b
        near = getattr(t, "near_ids", None)
        for b in self:
            if b in seen:
                continue
            seen.add(b)
            yield b
            for x in near(b) if near else ():
                if x not in seen:
                    seen.add(x)
                    yield x
