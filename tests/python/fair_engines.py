#!/usr/bin/env python3
"""fair_engines.py - engines of transformers 5.17's shape, one process each,
sharing one kvshim budget on the CPU emulation, every one of them with
more work than its share holds (colocate.py's rate 6, in small).

An engine is the transformers adapter over stand-ins (standins.py): a
paged cache whose block pool is sized as if alone, a scheduler that
grows each active request by a block every few steps and admits waiting
requests while the free block count covers their prompt (which the
adapter caps at what kvshim can back), and 5.17's offloading manager,
which evicts the newest starved requests while their demand passes the
free blocks (an evicted request starts again). A step sleeps a while, as
the GPU's would. Each engine keeps WAITING requests waiting from its start
to its end, or, given a lull, none until the lull ends.

run(...) starts the engines (the first alone for a head start, the others
after it) and returns each one's samples; as a script, it prints them as a
table. Run by test_fair_engines.py on the emulation.
"""
import collections
import glob
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BLOCK_TOKENS = 16        # 16 tokens x 8 heads x 128 x bf16: 32 KiB blocks, 64 a 2 MiB page
LAYERS = 2               # four tensors: a page index is 8 MiB
PROMPT = 8               # blocks a request's prompt takes
STEPS = 24               # steps a request decodes
GROW = 6                 # it takes one more block every GROW steps
WAITING = 12             # requests each engine keeps waiting
STEP_S = 0.004           # a step's time


class Request:
    def __init__(self, rid):
        self.request_id = rid
        self.tokens_to_process = list(range(PROMPT * BLOCK_TOKENS - 1))
        # (what the adapter's read bound counts a request's tokens by)
        self.initial_tokens = self.tokens_to_process
        self.max_new_tokens = STEPS
        self.remaining_prefill_tokens = []
        self.blocks = self.steps = 0

    def restart(self):
        """Evicted: it starts again (no CPU space)."""
        self.blocks = self.steps = 0


class Scheduler:
    def __init__(self):
        self.active_requests = collections.OrderedDict()
        self.waiting_requests = collections.OrderedDict()
        self.starved_requests = []
        self.block_new_requests = False


class ContinuousBatchProcessor:
    """5.17's batch processor, in small (the offloading manager is
    standins.OffloadingManager517). A step prefills one prompt's worth at
    most (max_batch_tokens): the adapter's cushion and the blocks it backs
    ahead for the next request follow it."""

    max_batch_tokens = PROMPT * BLOCK_TOKENS

    def __init__(self, cache):
        from standins import OffloadingManager517    # (loads kvshim: engines only)
        self.cache, self.scheduler = cache, Scheduler()
        self.offloading_manager = OffloadingManager517(self)
        self.done = 0

    def prepare_next_batch(self):
        sched, cache = self.scheduler, self.cache
        sched.starved_requests = []
        for state in list(sched.active_requests.values()):
            if state.steps and state.steps % GROW == 0 and state.blocks <= state.steps // GROW + PROMPT - 1:
                if cache.allocate_blocks(1, state.request_id, state.blocks) is None:
                    sched.starved_requests.append((state, 1))
                else:
                    state.blocks += 1
        if not sched.block_new_requests:
            for rid, state in list(sched.waiting_requests.items()):
                if cache.get_num_free_blocks() < PROMPT:
                    break
                if cache.allocate_blocks(PROMPT, rid, 0) is None:
                    break
                state.blocks = PROMPT
                sched.active_requests[rid] = sched.waiting_requests.pop(rid)
        if sched.starved_requests:
            self.offloading_manager.offload_requests()
        return bool(sched.active_requests)

    def update_batch(self):
        """Requests not starved this step decode a token; finished ones go."""
        sched = self.scheduler
        starved = {id(s) for s, _ in sched.starved_requests}
        for rid, state in list(sched.active_requests.items()):
            if id(state) in starved:
                continue
            state.steps += 1
            if state.steps >= STEPS:
                del sched.active_requests[rid]
                self.cache.free_blocks(rid)
                sched.block_new_requests = False
                self.done += 1


def engine(seconds, num_blocks, start_at, prefix_cache=False, follow=False, lull=0.0):
    """One engine (this process), from start_at (a time.time()) for
    seconds; prints its samples as JSON. lull: seconds from its start with
    no request (an idle engine), after which it keeps WAITING waiting as
    the others; it then reports how its first request was admitted
    (first: the passes that took, from the one after it came, the
    adapter's retries in them, and the blocks it was handed backed ahead
    by then). prefix_cache: a request's
    complete blocks, freed (finished or evicted), stay in the prefix cache
    (transformers 5.17 with block sharing, its default). follow: its
    cache's read bound follows its share, as with KVSHIM_CB_READ_TOKENS=auto
    (up to the whole cache: the stand-ins wire no read budget), and it
    joins the budget only at start_at (its cache made then), so that the
    members come as the engines start."""
    import kvshim
    from kvshim.adapters import transformers_cb
    from standins import StandInCache

    mod = type(sys)("fair_engines_api")
    mod.ContinuousBatchProcessor = ContinuousBatchProcessor
    transformers_cb.patch_api_module(mod)
    if follow:
        time.sleep(max(0.0, start_at - time.time()))
    cache = StandInCache(num_blocks, BLOCK_TOKENS, LAYERS, 8 * 128)
    cache.complete_on_free = prefix_cache
    if follow:
        # (num_pages from 1: only the bound's passes set what it reads)
        cache.kvshim_read_most, cache.num_pages = num_blocks * BLOCK_TOKENS, 1
    tracker = transformers_cb.attach(cache)
    proc = ContinuousBatchProcessor(cache)
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.monotonic()
    end, n, samples, next_sample = t0 + seconds, 0, [], t0
    first, passes, retries = None, 0, 0
    while time.monotonic() < end:
        while len(proc.scheduler.waiting_requests) < WAITING and time.monotonic() >= t0 + lull:
            rid = "q%d" % n
            proc.scheduler.waiting_requests[rid] = Request(rid)
            n += 1
        if lull and first is None and n:
            if not passes:
                retries = tracker.retries
            passes += 1
            ready = proc.prepare_next_batch()
            if proc.scheduler.active_requests:
                first = {"passes": passes, "retries": tracker.retries - retries,
                         "hits": tracker.ahead_hits}
        else:
            ready = proc.prepare_next_batch()
        if ready:
            proc.update_batch()
            time.sleep(STEP_S)
        else:
            time.sleep(STEP_S)
        now = time.monotonic()
        if now >= next_sample:
            next_sample = now + 0.1
            samples.append([round(now - t0, 3), tracker.mapped,
                            kvshim.stats()["physical_bytes"],
                            len(proc.scheduler.active_requests), proc.done,
                            tracker.preempted, len(proc.offloading_manager.evicted), tracker.short,
                            tracker.capped, getattr(cache, "num_pages", None),
                            tracker.ahead_backed()])
    json.dump({"pid": os.getpid(), "samples": samples, "moved": tracker.moved,
               "ahead_hits": tracker.ahead_hits, "first": first}, sys.stdout)
    return 0


# columns of a sample
FIELDS = ("t", "blocks", "physical", "active", "done", "preempted", "evicted", "short", "capped",
          "read", "ahead")


def own_env():
    """The caller's environment without any KVSHIM_ variable but where
    kvshim's library is and what it logs (the test harness's own, such as
    KVSHIM_CONFIG_BIN, go too: the engines read none), for a test's
    processes that set kvshim's settings themselves. (In one process over
    several test files, test_adapters' module sets KVSHIM_LIMIT=64M for its
    own engines, which bound these to 64 MiB of a 96 MiB budget, and
    test_top's sets a floor, a ceiling and a reserve.)"""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("KVSHIM_") or k in ("KVSHIM_LIB", "KVSHIM_LOG")}


def run(budget_mib=96, seconds=6.0, head_start=1.5, engines=3, pool=None, weights=None,
        prefix_cache=False, pack=False, follow=False, lulls=None, idle_cushions=None):
    """Start engines under one budget of budget_mib, the first head_start
    seconds before the others, each running seconds from its start, with
    KVSHIM_WEIGHT weights[k] (default 1 each), with a prefix cache or not
    (see engine), packing or not (KVSHIM_CB_PACK, said either way: off
    here unless pack, though on is the library's default), its read bound
    following its share or not (see engine), engine k idle for lulls[k]
    seconds from its start (see engine; none by default), with
    KVSHIM_CB_IDLE_CUSHION on where idle_cushions[k] (off by default).
    Returns [{"pid", "samples", "moved", "ahead_hits", "first"}] in start
    order (moved: the blocks it moved; ahead_hits: the blocks it was
    handed backed ahead; first: see engine)."""
    pool = pool or "fairengines%d" % os.getpid()
    env = own_env()
    env.update(KVSHIM_SHARE="on", KVSHIM_BUDGET="%dM" % budget_mib, KVSHIM_POOL=pool,
               KVSHIM_POOL_LOW="0", KVSHIM_POOL_HIGH="0", KVSHIM_CB_PACK="on" if pack else "off")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, env.get("PYTHONPATH")) if p)
    # the block pool as if alone: the whole budget
    num_blocks = budget_mib * 1024 // 32 // (2 * LAYERS)
    start = time.time() + 1.0
    procs = []
    try:
        for k in range(engines):
            at = start + (head_start if k else 0.0)
            own = dict(env, KVSHIM_WEIGHT=str(weights[k] if weights else 1),
                       KVSHIM_CB_IDLE_CUSHION="on" if idle_cushions and idle_cushions[k]
                       else "off")
            procs.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--engine", str(seconds),
                 str(num_blocks), repr(at), "1" if prefix_cache else "0",
                 "1" if follow else "0", repr(lulls[k] if lulls else 0.0)],
                env=own, stdout=subprocess.PIPE, text=True))
        out = []
        for p in procs:
            text, _ = p.communicate(timeout=seconds + head_start + 120)
            if p.returncode:
                raise RuntimeError("engine pid %d exited %d" % (p.pid, p.returncode))
            out.append(json.loads(text))
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for path in glob.glob("/dev/shm/kvshim-*-" + pool):
            os.unlink(path)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--engine":
        return engine(float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]),
                      sys.argv[5:6] == ["1"], sys.argv[6:7] == ["1"], float(sys.argv[7]))
    out = run()
    print("t     " + "  ".join("engine %d: blocks MiB active done evicted" % k
                                for k in range(len(out))))
    for i in range(0, max(len(o["samples"]) for o in out), 5):
        row = []
        for o in out:
            s = o["samples"][i] if i < len(o["samples"]) else None
            row.append("%5s %4s %4s %4s %4s" % ((s[1], s[2] >> 20, s[3], s[4], s[6])
                                                 if s else ("", "", "", "", "")))
        print("%4.1f  %s" % (i / 10, "   ".join(row)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
