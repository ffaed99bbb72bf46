#!/usr/bin/env python3
"""adapter_passes.py - what the transformers adapter costs an engine's
scheduling pass, on the CPU emulation (no GPU figure): one engine of
transformers 5.17's shape (tests/python/fair_engines.py's stand-ins) with
its prefix cache and packing on (the library's defaults), under a shared
budget, its steps taking no time, for --seconds at each of --blocks (the
pool sized as if alone; the GPU engines of colocate.py have 1682 to 5871).
A request's prompt takes 40 blocks and it decodes 200 steps, one block
more every 16; 4 requests wait at all times. Prints a table: passes, ms a
pass (the stand-in engine's own work included), and the looks at the ids
the free list hands out next (TrackedFreeList.upcoming, several a pass),
how many and how long each took in all; and, timed apart on the idle
engine before, the median of 200 evictions from the prefix cache (a
prompt's 40 blocks back to the free list through the block manager's
has_enough_free_blocks, as transformers 5.17 evicts them when its free
list runs short). A second table splits a pass as colocate's scheduling
split does on a GPU (transformers' pass, kvshim's calls from the block
manager in it, and the adapter's work around it), and that work by its
parts in the order a pass does them (each timed where the pass calls it,
not where one part calls another; the timers' own cost, about a
microsecond a part, is in them). Then, apart (no kvshim: pure Python), what the read
bound that follows the share costs a pass with --follow admitted requests
(transformers_cb_reads.follow_share, the bound binding, every request
looked at for the largest and for a starved one), microseconds a call.

  LD_LIBRARY_PATH=tests/emu KVSHIM_LIB=$PWD/.libs/libkvshim.so \\
      PYTHONPATH=scripts/python python3 tests/bench/adapter_passes.py
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
EVICTIONS = 200                  # evictions from the prefix cache timed, the median kept
STANDINS = os.path.join(HERE, "..", "python")


# the parts of the adapter's work around transformers' pass, in the order
# one_pass and prepare_next_batch do them: (label, where, name); several
# names may share a label
PARTS = (("settle", "tracker", "settle_done"), ("fork guard", "cb", "_guard_forks"),
         ("give back", "cb", "_give_back"), ("admission", "cb", "_admission"),
         ("read bound", "reads", "follow_share"), ("demand", "cb", "_waiting_blocks"),
         ("demand", "cb", "_forks_waiting"), ("demand", "cb", "_margin_blocks"),
         ("demand", "cb", "_cached_blocks"), ("demand", "tracker", "state_demand"),
         ("cushion", "cb", "_cushion"), ("unused", "cb", "_state_unused"),
         ("map ahead", "cb", "map_ahead"))
LABELS = list(dict.fromkeys(label for label, _, _ in PARTS))


def time_parts(fe, owners):
    """Time each part of PARTS where the pass calls it (a part another
    part or transformers' pass calls counts in that one), and the stand-in
    engine's own pass: {label: seconds, "engine": seconds}, filled in as
    passes run. owners: {"cb", "reads", "tracker"} to patch. Before the
    adapter patches the engine (it keeps the pass it wraps)."""
    spent = dict.fromkeys(LABELS + ["engine"], 0.0)
    depth = [0]

    def timing(f, label):
        def timed(*args, **kwargs):
            if depth[0]:
                return f(*args, **kwargs)
            depth[0] += 1
            t = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - t
                depth[0] -= 1
        return timed
    for label, where, name in PARTS:
        owner = owners[where]
        setattr(owner, name, timing(getattr(owner, name), label))
    cls = fe.ContinuousBatchProcessor
    cls.prepare_next_batch = timing(cls.prepare_next_batch, "engine")
    return spent


def one(num_blocks, seconds, layers):
    """One engine, this process: {"passes", "seconds", "looks", "look_s",
    "evict_s", "parts": {label: seconds}}."""
    sys.path.insert(0, STANDINS)
    import fair_engines as fe
    from kvshim.adapters import blocks, transformers_cb, transformers_cb_reads
    from standins import StandInCache

    fe.PROMPT, fe.STEPS, fe.GROW = 40, 200, 16
    looks = [0, 0.0]
    upcoming = blocks.TrackedFreeList.upcoming

    def timed_upcoming(self):
        # (the time spent inside the generator, however far it is read)
        looks[0] += 1
        it = upcoming(self)
        while True:
            t = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                looks[1] += time.perf_counter() - t
                return
            looks[1] += time.perf_counter() - t
            yield b
    blocks.TrackedFreeList.upcoming = timed_upcoming

    spent = time_parts(fe, {"cb": transformers_cb, "reads": transformers_cb_reads,
                            "tracker": blocks.BlockTracker})
    mod = type(sys)("adapter_passes_api")
    mod.ContinuousBatchProcessor = fe.ContinuousBatchProcessor
    transformers_cb.patch_api_module(mod)
    cache = StandInCache(num_blocks, fe.BLOCK_TOKENS, layers, 8 * 128)
    tracker = transformers_cb.attach(cache)
    proc = fe.ContinuousBatchProcessor(cache)
    # an eviction from the prefix cache (5.17's has_enough_free_blocks puts
    # a prompt's worth of its blocks back one append at a time), timed apart
    # on the idle engine first
    bm = cache._block_manager
    evictions = []
    for i in range(EVICTIONS + 10):
        ids = bm.get_free_blocks(fe.PROMPT, None, True, 0)
        if ids is None:
            break
        bm.free_blocks(ids, shareable=True, complete=True)
        t = time.perf_counter()
        bm.has_enough_free_blocks(bm.num_free_blocks - len(bm._init_block_ids) + fe.PROMPT)
        evictions.append(time.perf_counter() - t)
    evict_s = statistics.median(evictions[10:]) if len(evictions) > 10 else float("nan")
    # then every block once through a request kept in the prefix cache: the
    # passes find the cache's pages backed and its prefix cache full, as an
    # engine that has run a while (cold, the emulation's page creation, a
    # CPU memset of each 2 MiB page, would be most of the first passes)
    cache.complete_on_free = True
    for i in range(num_blocks // fe.PROMPT):
        rid = "w%d" % i
        if cache.allocate_blocks(fe.PROMPT, rid, 0) is None:
            break
        cache.free_blocks(rid)
    n = passes = 0
    for k in spent:
        spent[k] = 0.0
    in_pass = 0.0
    calls, busy = tracker.calls, tracker.busy
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        while len(proc.scheduler.waiting_requests) < 4:
            rid = "q%d" % n
            proc.scheduler.waiting_requests[rid] = fe.Request(rid)
            n += 1
        t = time.perf_counter()
        ready = proc.prepare_next_batch()
        in_pass += time.perf_counter() - t
        if ready:
            proc.update_batch()
        passes += 1
    return {"passes": passes, "seconds": time.perf_counter() - t0,
            "looks": looks[0], "look_s": looks[1], "evict_s": evict_s,
            "pass_s": in_pass, "parts": spent,
            "calls": tracker.calls - calls, "busy_s": tracker.busy - busy}


def follow_cost(n, calls=2000):
    """Microseconds one follow_share call takes, the bound binding, with n
    admitted requests (half of them before their first token) and n // 4
    waiting: the median over 5 rounds of calls calls."""
    import types
    from kvshim.adapters import transformers_cb_reads as reads

    def state(i, first):
        return types.SimpleNamespace(request_id="r%d" % i, initial_tokens=[0] * 600,
                                     max_new_tokens=200, position_offset=600 + i % 200,
                                     generated_tokens=[] if first else [1] * (i % 200))
    sched = types.SimpleNamespace(
        active_requests={"r%d" % i: state(i, i % 2 == 0) for i in range(n)},
        waiting_requests={"w%d" % i: state(n + i, True) for i in range(n // 4)})
    cache = types.SimpleNamespace(block_size=32, kvshim_read_most=65536,
                                  kvshim_read_interval=16384, num_blocks=5871,
                                  _block_manager=types.SimpleNamespace(num_free_blocks=3000))
    rounds = []
    for r in range(5):
        t = time.perf_counter()
        for k in range(calls):
            reads.follow_share(cache, sched, 682, now=r * calls + k * 0.001)
        rounds.append((time.perf_counter() - t) / calls)
    return 1e6 * statistics.median(rounds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", default="1682,2443,5871",
                    help="the engines' block counts, comma-separated (default: colocate's)")
    ap.add_argument("--seconds", type=float, default=5.0, help="each engine's run (default 5)")
    ap.add_argument("--layers", type=int, default=2,
                    help="the engine's layers, two KV tensors each (default 2, as "
                    "fair_engines.py's; colocate's largest model has 24)")
    ap.add_argument("--follow", default="16,64,256",
                    help="admitted requests to time the read bound's pass with, comma-separated "
                    "(default 16,64,256; colocate's engines held up to 55)")
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        json.dump(one(int(args.one[0]), float(args.one[1]), int(args.one[2])), sys.stdout)
        return 0
    try:
        counts = [int(x) for x in args.blocks.split(",")]
    except ValueError:
        ap.error("--blocks must be whole numbers separated by commas, not %r" % args.blocks)
    if not counts or min(counts) < 64 or not args.seconds > 0:
        ap.error("--blocks must each be 64 or more and --seconds more than 0")
    if not 1 <= args.layers <= 128:
        ap.error("--layers must be 1 to 128, not %d" % args.layers)
    try:
        follow = [int(x) for x in args.follow.split(",")]
    except ValueError:
        ap.error("--follow must be whole numbers separated by commas, not %r" % args.follow)
    if not follow or min(follow) < 1 or max(follow) > 100000:
        ap.error("--follow must each be 1 to 100000")
    pool = "adapterpasses%d" % os.getpid()
    # the budget the pool as if alone takes (32 KiB blocks in two tensors a
    # layer)
    env = dict(os.environ, KVSHIM_SHARE="on", KVSHIM_POOL=pool, KVSHIM_CB_PACK="on",
               KVSHIM_POOL_LOW="0", KVSHIM_POOL_HIGH="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (STANDINS, env.get("PYTHONPATH")) if p)
    print("adapter_passes: CPU emulation, one engine alone, %d layers, steps of no time, "
          "%.0f s each (pool %s)" % (args.layers, args.seconds, pool))
    print("| blocks | passes | ms a pass | looks ahead | us a look | ms an eviction |")
    print("|---|---|---|---|---|---|")
    rows = []
    try:
        for nb in counts:
            own = dict(env, KVSHIM_BUDGET="%dM" % (nb * 64 * args.layers // 1024 + 64))
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", str(nb),
                                  str(args.seconds), str(args.layers)], env=own,
                                 capture_output=True, text=True,
                                 timeout=args.seconds + 120)
            if out.returncode:
                sys.stderr.write(out.stderr)
                print("adapter_passes: the engine of %d blocks exited %d" % (nb, out.returncode))
                return 1
            r = json.loads(out.stdout)
            print("| %d | %d | %.3f | %d | %.1f | %.3f |" % (
                nb, r["passes"], 1e3 * r["seconds"] / max(1, r["passes"]), r["looks"],
                1e6 * r["look_s"] / max(1, r["looks"]), 1e3 * r["evict_s"]))
            rows.append((nb, r))
    finally:
        for path in glob.glob("/dev/shm/kvshim-*-" + pool):
            os.unlink(path)
    print("\na scheduling pass split, microseconds a pass: transformers' pass (the stand-in "
          "engine's, kvshim's calls from its block manager in it) and the adapter's work "
          "around it, by its parts; the rest: what no part names; and the tracker's "
          "timed calls (its .calls and .busy, which colocate records on a GPU: in the pass "
          "and around it), how many a pass and microseconds a call")
    print("| blocks | pass | transformers' pass | around it | %s | the rest | tracker calls "
          "| us a call |" % " | ".join(LABELS))
    print("|---|---|---|---|%s---|---|---|" % ("---|" * len(LABELS)))
    for nb, r in rows:
        per = 1e6 / max(1, r["passes"])
        parts = r["parts"]
        around = r["pass_s"] - parts["engine"]
        print("| %d | %.1f | %.1f | %.1f | %s | %.1f | %.1f | %.1f |" % (
            nb, per * r["pass_s"], per * parts["engine"], per * around,
            " | ".join("%.1f" % (per * parts[k]) for k in LABELS),
            per * (around - sum(parts[k] for k in LABELS)),
            r["calls"] / max(1, r["passes"]), 1e6 * r["busy_s"] / max(1, r["calls"])))
    print("\nthe read bound that follows the share, one pass's call (follow_share, the bound "
          "binding; no kvshim call), median of 5 rounds")
    print("| admitted requests | waiting | us a call |")
    print("|---|---|---|")
    for n in follow:
        print("| %d | %d | %.1f |" % (n, n // 4, follow_cost(n)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
