#!/usr/bin/env python3
"""colocate.py - three models on one GPU: a static KV partition against
kvshim's shared budget, on a seeded bursty trace. Needs a GPU, torch and
transformers 5.x; downloads nothing.

Three engines, three processes: each is Hugging Face transformers'
continuous batching (ContinuousBatchingManager, fed with add_request) over
a randomly initialised Llama-style model of its own size (MODELS). One to
sixteen configurations (--configs) run one after the other, in one invocation:
- static: plain processes; each engine's KV cache is fixed at a third of
  the KV budget (num_blocks given), all of it allocated at start;
- kvshim: each engine under kvshim-run with KVSHIM_SHARE=on,
  KVSHIM_BUDGET set to the KV budget (a pool of its own) and KVSHIM_MIN to
  --floor-gib (a floor the others cannot take; none by default); each sizes
  its cache from the memory info kvshim shows it, as if alone, and pages
  flow between the engines under the one budget;
- capped (only when --configs names it): kvshim, with each engine's ceiling
  (KVSHIM_MAX) at a third of the budget, its static share, and the page in
  each KV tensor its two padding blocks take (static has those beside its
  third; pages are whole, so it may have up to a page index less): the static split
  through kvshim's machinery, which tells what kvshim itself costs a model
  from what another model using more memory (and so more of the GPU's time)
  costs it. --capped-share F sets the ceilings at F static shares instead
  (1 to 3; 3 is the whole budget): how far a model may grow past its share
  before the others' tails pay for it.
- unpacked (only when --configs names it): kvshim with KVSHIM_CB_PACK=off
  (README.md: asked to give back, an engine moves blocks in use off the
  pages few of them use before preempting anyone; on by default from
  session 16, so kvshim, capped and the sweep's budgets pack): kvshim
  without packing (with the reserve);
- unreserved (only when --configs names it): kvshim with KVSHIM_RESERVE=off
  (README.md: while processes share the budget, kvshim keeps a part of it
  free, from idle pages and pages only a prefix cache holds; 5% by default
  from session 20, so kvshim, capped and the sweep's budgets keep it;
  --reserve P sets it in every one of them): kvshim as it was before
  session 20;
- noahead (only when --configs names it): kvshim with KVSHIM_CB_AHEAD=off
  (README.md: the adapter maps the blocks the next step will take on a
  thread while the step computes, and from session 21 keeps one step's
  worth backed for the next request): every block mapped on the engine's
  path when it is handed out, which tells what mapping ahead saves a
  prefill's scheduling (the table "scheduling a prefill");
- nocushion (only when --configs names it): kvshim with
  KVSHIM_CB_CUSHION=off (README.md: an engine with requests states one
  step's prefill as demand even when none waits, a claim within its share,
  and keeps it backed for the next request): each engine states only what
  its waiting requests need, which tells whether neighbours were asked to
  give back blocks in use for requests that had not come;
- idle (only when --configs names it): kvshim with
  KVSHIM_CB_IDLE_CUSHION=on (README.md: an engine without requests keeps
  its cushion, one step stated and backed, while others share its budget,
  from session 43): the first step of a burst after a lull maps at once,
  and what the idle engines keep the others cannot borrow;
- keepcache (only when --configs names it): kvshim with
  KVSHIM_CB_GIVE_BACK=off (README.md: after a batch it runs without a CUDA
  graph, the adapter gives PyTorch's cache back, from session 42): those
  batches' temporaries stay in PyTorch's cache until the engine's next
  capture, which tells what the give-back costs and saves;
- starved (only when --configs names it): kvshim with
  KVSHIM_CB_STARVED_MS set to --starved-ms (500 by default, the default
  until session 45; README.md: an admitted request that long without its
  first token or progress raises its engine's read bound above its share,
  250 ms by default): the guard's threshold against kvshim's own. A
  shorter one has an admitted request starved by the bound wait less,
  and may raise the bound more often: batches wider than the share, run
  without a CUDA graph (the adapter's "eager" count; docs/BENCHMARKS.md,
  session 45: at 3 GiB, 3 such batches with 250 ms against 9 with 500 in
  the replays, and the medium engine's 37 against 2 in the rate 6
  warm-up);
- kvpad (only when --configs names it): kvshim with KVSHIM_CB_KV_PAD set
  to --kv-pad tokens (16384 by default: transformers' own, which kvshim
  kept until session 56; its auto is 8192 since): each step's KV read
  padded to a multiple of it, a coarser one meeting fewer CUDA graph keys
  (the table "CUDA graphs by key") at the cost of reading more padding;
- staticpad (only when --configs names it): the static split with its
  engines' KV read padded as kvshim's adapter pads it by default
  (kv_padding_interval_size 8192, KVSHIM_CB_KV_PAD=auto, against
  transformers' 16384), so that what the finer padding gives is told
  apart from what sharing gives. Every kvshim configuration pads so from
  session 56 (kvpad apart), and the verdicts against static (the targets,
  the spread, the sweep's smallest budget) compare it with the static split
  as transformers pads it: the padding's gain is in them;
- reads (only when --configs names it): kvshim whose engines' read budget
  is the static split's engine's cache at --budget-gib (KVSHIM_CB_READ_TOKENS
  set to its third of the budget as a memory size, 2097152KiB at 6 GiB,
  from session 31; a number of tokens before): at 6 GiB 87360, 32768 and
  21824 tokens, static's own
  (kvshim's default: 65536 each), so batches read at most what static's
  do, and the engines' masks are no larger than static's (below); their
  reads pad as kvshim's do (8192 from session 56), so the same CUDA graph
  keys as staticpad's, not static's (until session 56 static's). Until session 30 the adapter rounded a number up to a
  multiple of 16384 (98304, 32768 and 32768), which let the large engine
  read 32768 tokens where static's reads 21824;
- packed (only when --configs names it): kvshim with KVSHIM_CB_PACK=on,
  which kvshim now is; --sweep-pack names the sweep's budgets packed@B
  (both kept so that session 15's and 16's commands run as they ran);
- ample (only when --configs names it): plain processes as static, but
  each engine's KV cache is the whole budget, so that no model queues for
  memory (the three hold three budgets): each model's tail when the others
  are served in full, without kvshim, which tells what serving a
  neighbour's queue costs a model that does not queue (the GPU's time the
  three processes share) from what kvshim costs it;
- twin (only when --configs names it): the static split again, its
  engines started afresh, and compared with static by the rules kvshim
  is (the ratios, and with --repeat the spread tables): how often a
  configuration that is static itself misses static's p99 by those rules,
  the run-to-run spread that kvshim's misses are read against (on an H200
  a model's p99 moved up to 1.63x between two static replays of a trace:
  docs/BENCHMARKS.md, session 37). With static and kvshim beside it, the
  parity table reads kvshim against that spread: on each trace all three
  replayed, each model's static / kvshim and static / twin p99 TTFT (of
  the medians of the replays all three ran where more than one, the
  single values otherwise); a figure's spread is the least static / twin
  of any model among figures alike (the medians of as many replays, or
  any single replay: one replay moves more than a median of two), and
  kvshim meets parity within it when every model's static / kvshim is at
  least its spread or 1, whichever is less (issue 13's "every model at or
  below its static p99", within the spread measured); the same apart from
  captures, each with its own spreads.
Under kvshim a batch reads at most the adapter's read budget R (README:
64K tokens for these engines, which are fed by add_request), where a static
engine reads at most its cache (22K to 87K tokens at 6 GiB): the "engines
ready" line says each one's; the reads configuration gives kvshim's engines
the static split's, rounded up (above), to tell whether that is what a
model that does not queue pays under kvshim.
max_batch_tokens, the block size and everything else are the same in all;
CUDA graphs are on, as production engines serve (every run before session
15 had them off; --no-cuda-graphs does that); prefix caching is on, as
transformers 5.17 has it by default (the engines run as their users run
them): the complete blocks of finished requests are kept (never reused
here: the prompts are random) until the engine needs their memory.
--no-prefix-cache turns it off, as every run before session 9 had it.

The trace (make_trace): time is cut into phases of P seconds; in phase k
model k mod 3 is hot. Each model's requests arrive as a Poisson process of
rate R (requests/s) in its hot phases and --cold-rate otherwise; prompts
are uniform in [--prompt-min, --prompt-max] random tokens, outputs uniform
in [--new-min, --new-max] tokens (no EOS). One trace per rate in --rates,
seed in --seeds and phase length P in --phases (every combination; or
the traces --traces names, as r6-s2026-p8), each --cycles x 3 phases
long. The engines of a configuration replay the traces in turn (started
once), the same traces in every configuration. Under kvshim the engines
share the budget by weighted fair shares (README.md, "Sharing one GPU"):
kvshim-run's transformers adapter states each engine's demand and preempts
requests of an engine above its share when another waits below its own.
The weights are equal unless --weights gives them (small=1,medium=2: each
model's KVSHIM_WEIGHT in every kvshim configuration, 1 for a model not
named; a caller's KVSHIM_WEIGHT reaches no engine).

--sweep-gib B1,B2,... adds a kvshim configuration per budget (named
packed@B with --sweep-pack; ascending, engines started afresh for each),
replaying the traces of --sweep-rates (the first seed and phase), and
reports the smallest budget at which every model's p99 TTFT is at most
the static split's (at --budget-gib) times 1 + --tolerance: "half the
memory for the same service". With --repeat it replays every repeat (a
budget above the smallest that met skipped), and a trace replayed more
than once meets by the median of its replays against the static
replays' most, as the spread table judges. --sweep-unreserved runs each of those
budgets again without the reserve (unreserved@B, after kvshim@B), whose
smallest is reported apart; --sweep-unreserved=only runs them without it
alone. --sweep-nocushion does the same without the cushion (nocushion@B),
--sweep-idle with the idle cushion (idle@B, as the idle configuration),
--sweep-starved with KVSHIM_CB_STARVED_MS at --starved-ms (starved@B, as
the starved configuration), and --sweep-reads with each engine's read budget at its static share's
at --budget-gib, as the reads configuration (reads@B: half the memory
with the reads of the split it is measured against); =only on any runs
the variants alone, and then the first budget of
each that meets ends that variant's line (beside kvshim@B, a variant's
line ends with kvshim's). --quick is rates 3, 4 and 6, one seed and
one phase length, and a sweep of 3 GiB at rate 3. How long each part
took is printed as it ends, and an estimate first.
--dry-run tries all of it without torch or a GPU: engines that answer at
once with made-up figures (bench.test runs it). --deadline M ends the
run within M minutes (a machine lent for a fixed time): a trace replay
that would not end by then, by the estimate below, with its replays by
the later configurations (for static's, the kvshim and sweep replays
that pair it: each configuration replays its traces in turn), is not
started, and the later ones replay only what the first did; nor is a
configuration that could not replay one (a minute is kept to stop the
engines and write the tables, plots and JSON); the tables then compare
what ran, a sweep budget that skipped a replay is not said to meet, and
the replays skipped are named. An M too short for a first replay of
every configuration by the estimate printed first is refused before any
engine starts (exit 2), saying what would do. A replay is estimated as the longest
replay of the same trace so far; for the first, its length (3 x --cycles
x its phase) plus the longest time past the end of any replay so far at
its rate or above (the warm-up's among them; about 12 s with CUDA graphs
on an H200); before any, its length + 20 s + 8 s per request/s of its
rate (with graphs off the H200's longest at rate 6 took 115 s, this guess
116 s; with graphs on, 66 s); a configuration's start as the slowest so
far (30 s before any). What a replay and the later configurations' replays
of it need is the sum of those guesses, 5% and 15 s more (session 28's
rate 6 trace was skipped with 15 s more for each guess: 383 s guessed,
348 s left, 306 s taken).
--warmup replays, in each configuration before its traces, a trace of
another seed (the largest given plus one) at the highest rate, each model
hot once (--warmup-cycles N: N times), and counts it nowhere (its time is
in the JSON's seconds, and in the estimates; its CUDA graphs in the
JSON's warmup_graphs): a machine runs its first batch shapes 0.5 to 1 s a
step (kernels loaded or compiled; on an H200 the first configuration paid
most of them), and transformers captures a CUDA graph for each batch key
an engine first meets (20 to 325 ms each on an H200). --capture-keys has
each engine, in every configuration, capture a graph for every batch key
it can form before it serves (tests/bench/graph_capture.py: its queries,
its KV read up to its cache's tokens under static and its share's under
kvshim, at most its read budget, and requests of at most --prompt-max
and --new-max tokens; on its generation thread, kvshim's engines on the
adapter's padding block), as a production engine captures its batch sizes
at start: what each did is in its engine's start_graphs, its time in the
engines' start. --alternate, with
--repeat N, replays in N rounds: in round k each configuration replays
the k-th replay of each trace, engines started afresh, in the
configurations' order in even rounds and in reverse in odd ones (static,
kvshim, kvshim, static, ...), so that no configuration always runs first;
the warm-up is in round 0 only, and a replay the round's first
configuration skipped is skipped by the others. With --deadline, a
configuration's engines start only if one of its replays would then end
in time, with the later configurations' replays of it (a start guessed as
the slowest so far).

Measured per request: TTFT (first token's time, from transformers'
per-token timestamps, less the time the request was submitted at its
trace time), queue wait (until transformers started it), tokens; per
engine, every 100 ms: its KV memory (static: the cache it allocated;
kvshim: the pages it holds) and PyTorch's reserved memory; with kvshim,
the shared segment's total held against the budget (kvshim-top's reader),
every 50 ms; and the GPU's used memory (nvidia-smi), every 500 ms.

Prints one table per trace (per model and configuration: TTFT p50 and
p99, static p99 over this configuration's, mean queue wait, tokens/s, peak
KV and peak process memory), with the others (each model's longest TTFTs
and the CUDA graphs its engine captured while they waited, its p99 apart
from the requests that waited on a capture, each configuration's captures
against static's of about the same time of the trace (their time over
static's), the captures by their keys in transformers' graph cache (those
of a KV read no static engine of the model forms apart), its latency end
to end and the requests preempted and started
again, where the time goes, long steps and the graphs captured, the
scheduling of the steps that prefill (under kvshim with the adapter's part
of it, and the time its thread mapping ahead waited for captures), kvshim's
waits, asks and pages against blocks, what each engine held beside its
KV cache (PyTorch's memory that is not KV) and the widest KV read it
captured a graph for, and per configuration the three engines' blocks in
use summed, each engine's own free block count read
every 100 ms, the static split's too), then the summary against issue 13's
targets (every model at or below its static p99; over all requests at
least 2x at rate 3 and 1.5x at rate 4), with --repeat the run-to-run
spread of each model's p99 (of all its requests, then of those that
waited on no CUDA graph capture), with twin the parity table and its
verdict (of all requests, then apart from captures), and the sweep's
answer, with the most blocks the static split's requests held at one
moment (what a smaller budget cannot hold at once); writes colocate.json,
and per trace colocate-memory-<trace>.png, colocate-ttft-<trace>.png (CDF)
and colocate-ttft-time-<trace>.png (each model's TTFT over the run, every
other configuration against the static baseline) under --out (default
$KVSHIM_SUITE_OUT or .). Exit 0 when every request of every run completed
and the shared budget was never passed, 1 if not, 77 without a GPU.
"""
import argparse
import collections
import contextlib
import functools
import glob
import hashlib
import importlib.machinery
import importlib.util
import json
import math
import os
import queue
import random
import re
import statistics
import struct
import subprocess
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import built_tree  # noqa: E402  the built tree's library and tools
import graph_capture  # noqa: E402  --capture-keys' keys and captures

MIB = 1 << 20
GIB = 1 << 30
SLOW_MS = 2           # the adapter's slow call (blocks.py's SLOW_S)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name: layers, hidden, attention heads, KV heads, MLP width (head_dim 128)
MODELS = {
    "small": (12, 1536, 12, 4, 4096),
    "medium": (16, 2048, 16, 8, 5632),
    "large": (24, 3072, 24, 8, 8192),
}
ORDER = ("small", "medium", "large")
BLOCK = 32            # tokens a block
VOCAB = 32000


# the configurations whose engines run without kvshim
STATIC_MODE = frozenset(("static", "ample", "twin", "staticpad"))


def kv_bytes_per_token(name):
    layers, _, _, kv_heads, _ = MODELS[name]
    return layers * 2 * kv_heads * 128 * 2          # K and V, bf16


# ---- the trace ---------------------------------------------------------------

def make_trace(seed, rate, args, phase=None):
    """[{model, t, prompt, new, seed}] sorted by t, for one hot rate and
    phase length (--phase's first by default)."""
    phase = phase or args.phase_list[0]
    rng = random.Random("%d-%s" % (seed, rate) if phase == 8.0 else "%d-%s-%s" % (seed, rate, phase))
    phases = 3 * args.cycles
    out = []
    for m, name in enumerate(ORDER):
        t = 0.0
        for k in range(phases):
            lo, hi = k * phase, (k + 1) * phase
            r = rate if k % 3 == m else args.cold_rate
            t = max(t, lo)
            while r > 0:
                t += rng.expovariate(r)
                if t >= hi:
                    t = hi          # memoryless: restart the clock at the next phase
                    break
                out.append({"model": name, "t": round(t, 4),
                            "prompt": rng.randint(args.prompt_min, args.prompt_max),
                            "new": rng.randint(args.new_min, args.new_max),
                            "seed": rng.getrandbits(31)})
    out.sort(key=lambda q: q["t"])
    for i, q in enumerate(out):
        q["id"] = "q%d" % i
    return out


# ---- an engine (a child process) --------------------------------------------------

def ceiling_set():
    """The engine's ceiling, as spawn set it (bytes; 0: none)."""
    return int(os.environ.get("KVSHIM_MAX", "0"))


def commands(info):
    """An engine's side of the protocol: says READY (with info), then gives
    (its requests of the trace, t0, the output's path) for each RUN line,
    until QUIT or the end of input; done() ends each."""
    print("READY " + json.dumps(info), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "QUIT":
            return
        trace_path, t0, out_path = cmd[1], float(cmd[2]), cmd[3]
        with open(trace_path) as f:
            mine = [q for q in json.load(f) if q["model"] == info["engine"]]
        yield mine, t0, out_path


def done(run, out_path):
    """Write a replay's figures, and say DONE."""
    with open(out_path, "w") as f:
        json.dump(run, f)
    print("DONE", flush=True)


def dry_engine(args):
    """--dry-run's engine: no torch, no GPU. It answers as engine() does, at
    once, with made-up figures of the same shape (each request's first
    token after 50 to 150 ms, 1.5 times that under kvshim, 1.6 without the
    cushion, as if every
    configuration were its own), so that the run's orchestration,
    --deadline, the tables, the plots and the JSON can be tried anywhere.
    Under kvshim (the CPU emulation, where there is no GPU) it maps a
    span's first 16 MiB, so that the shared segment has a process that
    holds pages, and each replay takes 0.3 s, so that it is read."""
    name = args.engine
    num_blocks = args.num_blocks or 4 * GIB // (kv_bytes_per_token(name) * BLOCK)
    kvshim = "libkvshim" in os.environ.get("LD_PRELOAD", "")
    follows = None
    if kvshim:
        import kvshim as kv
        span = kv.reserve(64 * MIB)
        kv.map(span, 16 * MIB)
        if dry_read_follows():
            # its read bound as the adapter's follow_share sets it: the
            # blocks of its share of the budget (the emulation's), in tokens
            group = kv.Group([span], MIB, 64)
            follows = group.share_entitled
    info = {"engine": name, "pid": os.getpid(), "num_blocks": num_blocks,
            "max_batch_tokens": args.max_batch_tokens,
            "kv_tensor_bytes": num_blocks * kv_bytes_per_token(name) * BLOCK,
            "read_tokens": dry_read_tokens(name) if kvshim else num_blocks * BLOCK,
            "kvshim": kvshim, "ceiling": ceiling_set(), "cuda_graphs": args.cuda_graphs,
            "pack": os.environ.get("KVSHIM_CB_PACK"),
            "reserve": os.environ.get("KVSHIM_RESERVE", "5%" if kvshim else "off"),
            "ahead": os.environ.get("KVSHIM_CB_AHEAD", "on" if kvshim else "off"),
            "weight": os.environ.get("KVSHIM_WEIGHT", "1") if kvshim else "-",
            "cushion": os.environ.get("KVSHIM_CB_CUSHION", "on" if kvshim else "off"),
            "give_back": os.environ.get("KVSHIM_CB_GIVE_BACK", "on" if kvshim else "off"),
            "idle_cushion": os.environ.get("KVSHIM_CB_IDLE_CUSHION", "off"),
            "starved_ms": str(starved_ms_used()) if kvshim else "-",
            # (as engine() reports it: the adapter's, whose auto is
            # built_tree.adapter_kv_pad() against transformers' 16384; staticpad's)
            "kv_pad": (int(os.environ.get("KVSHIM_CB_KV_PAD") or built_tree.adapter_kv_pad())
                       if kvshim else built_tree.adapter_kv_pad() if args.pad_as_kvshim
                       else None),
            "ready_s": 0.0}
    pad = info["kv_pad"] or 16384
    if args.capture_read:
        # the keys as the engine would count them, every one captured
        read = min(args.capture_read, info["read_tokens"])
        n = len(graph_capture.varlen_keys(args.max_batch_tokens, read, 64, pad,
                                          args.capture_longest))
        info["start_graphs"] = {"read": read, "longest": args.capture_longest, "keys": n,
                                "captured": n, "present": 0, "eager": 0, "skipped": 0,
                                "on_padding": True if kvshim else None, "seconds": 0.0,
                                "counted": n}
    for mine, t0, out_path in commands(info):
        rows = []
        for k, q in enumerate(mine):
            g = random.Random("%s %s %s" % (q["seed"], name, kvshim))
            wait = g.uniform(0.0, 0.05)
            # (without the cushion a tenth slower again: the sweep's lines,
            # kvshim's and nocushion's, can then end apart)
            ttft = (wait + g.uniform(0.05, 0.1)) * (
                (1.6 if os.environ.get("KVSHIM_CB_CUSHION") == "off" else 1.5) if kvshim else 1.0)
            if kvshim and k == 0:
                # its first request, preempted after its first token,
                # started again half a second later
                wait = ttft + 0.5
            rows.append(dict(q, status=3, error=None, tokens=q["new"], first=t0 + q["t"] + ttft,
                             last=t0 + q["t"] + ttft + 0.01 * q["new"], started=t0 + q["t"] + wait,
                             ttft=ttft, wait=wait, done_at=q["t"] + ttft + 0.01 * q["new"]))
        if kvshim:
            time.sleep(0.3)
        caps = None
        if follows is not None:
            per = kv_bytes_per_token(name) * BLOCK
            got = follows()
            cap = info["read_tokens"] if got is None else max(got // per, 1) * BLOCK
            caps = {str(min(cap, info["read_tokens"])): 3}
        kv = info["kv_tensor_bytes"]
        run = dict(info, requests=rows,
                   # (an eighth of the blocks in use under kvshim, a
                   # quarter without; PyTorch's reserved memory holds static's
                   # KV tensors, not kvshim's, and beside them 512 MiB that
                   # grows 64 MiB a sample, and 128 MiB more under kvshim)
                   samples=[(0.1 * k, kv // (1 if not kvshim else 4 - k),
                             (512 + 64 * k) * MIB + (128 * MIB if kvshim else kv),
                             # (8 blocks shown free; requests waiting in the second
                             # only: 4 MiB of demand, 16 blocks backed ahead, 32
                             # free ids on its pages, 8 in its prefix cache, 4 MiB
                             # in kvshim's pool, 2 MiB cached; the first's 2 MiB
                             # of demand is its cushion's, nothing waiting)
                             [0, 8, num_blocks - num_blocks // 8] + [
                                 [0, 1, 2 * MIB, 4, 24, 6, 2 * MIB, 0],
                                 [2, 1, 4 * MIB, 16, 32, 8, 4 * MIB, 2 * MIB],
                                 [0, 1, 0, 0, 0, 0, 0, 0]][k] if kvshim else
                             [None, None, num_blocks - num_blocks // 4, 0, 1, None])
                            for k in range(3)],
                   # (every third a prefill's, three times as long; under
                   # kvshim the adapter's calls to its tracker in the
                   # scheduling, and the part in transformers' own pass)
                   steps=[(round(q["t"], 4), 0.005, 0.21 if k % 3 == 0 else 0.07)
                          + ((0.001, 0.004) if kvshim else ()) for k, q in enumerate(mine)],
                   # (a CUDA graph captured in every fifth step's batch,
                   # its key a KV read of 1 to 4 times 16384 tokens padded
                   # as transformers pads it: to a multiple of 16384, or
                   # of KVSHIM_CB_KV_PAD, at most what the engine reads)
                   graphs=[(round(q["t"] + 0.005, 4), 0.05,
                            [64, min(-(-16384 * (k // 5 % 4 + 1) // pad) * pad,
                                     info["read_tokens"]), 1024])
                           for k, q in enumerate(mine) if k % 5 == 0])
        if kvshim:
            run["kvshim_stats"] = {"physical_bytes": kv // 2}
            run["kvshim_tracker"] = dict({k: 0 for k in TRACKER_FIGURES}, worst=0.0,
                                         worst_in="take", asks=2, asked_s=0.25, ask_worst=0.2,
                                         started_over=1, taken=40,
                                         ahead_hits=0 if os.environ.get("KVSHIM_CB_AHEAD") == "off"
                                         else 30, ahead_busy=0.0 if
                                         os.environ.get("KVSHIM_CB_AHEAD") == "off" else 0.05,
                                         ahead_waited=0.0 if
                                         os.environ.get("KVSHIM_CB_AHEAD") == "off" else 0.01,
                                         moved=3 if os.environ.get("KVSHIM_CB_PACK") == "on" else 0,
                                         # (two batches without a CUDA graph, the cache
                                         # given back after each unless it is off)
                                         eager=2, cache_given_back=0 if os.environ.get(
                                             "KVSHIM_CB_GIVE_BACK") == "off" else 2)
            run["eager_steps"] = [(1.0, 0.06, 1), (2.0, 0.08, 1)]
            run["kvshim_waits"] = dict({k: 0 for k in WAIT_FIGURES}, share_waits=1,
                                       share_wait_ns=2000000)
            run["kvshim_gate"] = dict(capture_gate_waits=1, capture_gate_wait_ns=30000000)
            # (48 pages made and mapped, 24 of them given back, at 1,
            # 0.5, 0.5, 0.5 and 0.25 ms a page)
            run["kvshim_driver"] = dict(pages_created=48, create_ns=48000000, pages_mapped=48,
                                        map_ns=24000000, pages_unmapped=24, unmap_ns=12000000,
                                        pages_released=24, release_ns=12000000,
                                        pages_zeroed=48, zero_ns=12000000)
            run["kvshim_preempted"] = run["kvshim_short"] = 0
        if caps is not None:
            run["read_caps"] = caps
        done(run, out_path)
    return 0


# An engine's view in each of its samples (engine_view), by slot: blocks
# kvshim could back, the free block count the engine was shown, its own free
# blocks, requests waiting, requests active, the demand stated (bytes); from
# session 46 on, under kvshim, blocks backed ahead (taken in), free ids on
# the pages it holds, its prefix cache's blocks, and the bytes of kvshim's
# pool of ready pages and of its cached pages (mapped, no block on them), in
# the engine's process
(VIEW_ROOM, VIEW_SHOWN, VIEW_FREE, VIEW_WAITING, VIEW_ACTIVE, VIEW_DEMAND,
 VIEW_AHEAD, VIEW_FREE_ON, VIEW_PREFIX, VIEW_POOLED, VIEW_CACHED) = range(11)


def engine_view(cache, sched, tracker, stats=None):
    """What the engine and, under kvshim (its adapter's tracker), the
    adapter last saw, read without calling kvshim (stats: kvshim.stats() as
    read for the same sample): a list by the VIEW_ slots. Without kvshim
    the room, the count shown and the demand are None and the last five
    absent; under kvshim the last five are absent where they cannot be
    read (the first six stand). The count shown is the adapter's record of
    it (tracker.shown, from session 46 on); before, what its capacity last
    read. None when the engine's own figures cannot be read."""
    try:
        view = [cache._block_manager.num_free_blocks, len(sched.waiting_requests),
                len(sched.active_requests)]
        if tracker is None:
            return [None, None] + view + [None]
        shown = getattr(tracker, "shown", None)
        view = [tracker._room[1], tracker._cap[1] if shown is None else shown] + view + [
            tracker._demand[1]]
    except (AttributeError, TypeError, IndexError):
        return None
    try:
        return view + [tracker.ahead_backed(), tracker.free_on_pages(),
                       len(cache._block_manager._init_block_ids),
                       stats["pooled_bytes"], stats["cached_bytes"]]
    except (AttributeError, TypeError, KeyError):
        return view


def static_pad_used(manager, cbc):
    """The KV padding a staticpad engine's steps use, as its model runner
    holds it (the config given, where the runner has none)."""
    conf = getattr(getattr(manager.batch_processor, "model_runner", None), "cb_config", cbc)
    pad = getattr(conf, "kv_padding_interval_size", None)
    return pad if isinstance(pad, int) else None


def engine(args):
    if args.dry_run:
        return dry_engine(args)
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    name = args.engine
    layers, hidden, heads, kv_heads, inter = MODELS[name]
    torch.manual_seed(ORDER.index(name))
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=128,
                      vocab_size=VOCAB, max_position_embeddings=8192)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    gen = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0, max_new_tokens=16)
    cb_args = dict(block_size=BLOCK, num_blocks=args.num_blocks or None,
                   max_batch_tokens=args.max_batch_tokens,
                   allow_block_sharing=args.prefix_cache, use_cuda_graph=args.cuda_graphs)
    if args.cpu_offload_gib > 0:
        cb_args["cpu_offload_space"] = args.cpu_offload_gib
    try:
        cbc = ContinuousBatchingConfig(**cb_args)
    except TypeError:       # a transformers without CPU offloading
        cb_args.pop("cpu_offload_space", None)
        cbc = ContinuousBatchingConfig(**cb_args)
    if args.pad_as_kvshim:
        # staticpad: its KV reads padded as kvshim's adapter pads them
        built_tree.pad_plain_as_kvshim(cbc)
        if not isinstance(getattr(cbc, "kv_padding_interval_size", None), int):
            raise RuntimeError("staticpad: this transformers' ContinuousBatchingConfig has "
                               "no kv_padding_interval_size")
    kvshim = None
    if os.environ.get("LD_PRELOAD", "").find("libkvshim") >= 0:
        import kvshim
    steps, graphs, eager = time_steps()
    t_start = time.perf_counter()
    # a first request builds the cache (in the manager's thread)
    manager = built_tree.started_manager(model, gen, cbc, "engine %s" % name)
    cache = manager.batch_processor.cache
    kv_tensor_bytes = sum(t.numel() * t.element_size()
                          for t in list(cache.key_cache) + list(cache.value_cache))
    info = {"engine": name, "pid": os.getpid(), "num_blocks": cache.num_blocks,
            "max_batch_tokens": cache.max_batch_tokens, "kv_tensor_bytes": kv_tensor_bytes,
            # the most KV tokens one batch reads (transformers' num_pages:
            # the cache's tokens, or kvshim's read budget R), which sizes
            # the attention mask and read indices a step writes; where its
            # passes follow the engine's share, the most they may read (the
            # first request has lowered num_pages by then)
            "read_tokens": int(getattr(cache, "kvshim_read_most", None)
                               or getattr(cache, "num_pages", 0) or 0),
            "kvshim": kvshim is not None, "ceiling": ceiling_set(),
            "cuda_graphs": args.cuda_graphs, "pack": os.environ.get("KVSHIM_CB_PACK"),
            # (kvshim's default reserve: 5%)
            "reserve": os.environ.get("KVSHIM_RESERVE", "5%" if kvshim is not None else "off"),
            "ahead": os.environ.get("KVSHIM_CB_AHEAD", "on" if kvshim is not None else "off"),
            "weight": os.environ.get("KVSHIM_WEIGHT", "1") if kvshim is not None else "-",
            "cushion": os.environ.get("KVSHIM_CB_CUSHION", "on" if kvshim is not None else "off"),
            "give_back": os.environ.get("KVSHIM_CB_GIVE_BACK",
                                        "on" if kvshim is not None else "off"),
            "idle_cushion": os.environ.get("KVSHIM_CB_IDLE_CUSHION", "off"),
            "starved_ms": str(starved_ms_used()) if kvshim is not None else "-",
            # the padding of a step's KV read that the adapter set (None:
            # transformers' own)
            "kv_pad": getattr(cache, "kvshim_kv_pad", None) or (
                static_pad_used(manager, cbc) if args.pad_as_kvshim else None),
            "ready_s": time.perf_counter() - t_start}
    if args.capture_read:
        graphs_before = len(graphs) if graphs is not None else None
        info["start_graphs"] = capture_at_start(manager, model, cache, args, kvshim is not None)
        if graphs_before is not None:   # as time_steps counted them
            info["start_graphs"]["counted"] = len(graphs) - graphs_before
        info["ready_s"] = time.perf_counter() - t_start

    stats = [None]      # kvshim.stats() as kv_now last read it

    def kv_now():
        if kvshim is None:
            return kv_tensor_bytes
        stats[0] = kvshim.stats()
        return stats[0]["physical_bytes"]

    def adapter_now():
        """engine_view of the engine now (after kv_now, in each sample)."""
        tracker = getattr(cache, "kvshim_tracker", None)
        proc = getattr(manager, "batch_processor", None)
        sched = getattr(proc, "scheduler", None)
        if sched is None or (kvshim is not None and tracker is None):
            return None
        return engine_view(cache, sched, tracker, stats[0])

    for mine, t0, out_path in commands(info):
        tracker = getattr(cache, "kvshim_tracker", None) if kvshim is not None else None
        before = tracker_figures(tracker)
        if tracker is not None:
            tracker.worst, tracker.worst_in, tracker.ask_worst = 0.0, None, 0.0
            stats_before = kvshim.stats()
        first_step, first_graph = len(steps), len(graphs) if graphs is not None else 0
        first_eager = len(eager)
        # the bound on what a pass reads, following the engine's share of a
        # shared budget (the adapter's follow_share; None: it does not)
        follows = getattr(cache, "kvshim_read_most", None) is not None
        run = replay(manager, mine, t0, kv_now, torch, adapter_now,
                     (lambda: int(cache.num_pages)) if follows else None)
        run.update(info)
        # (to 1 us: paired.py sets a request's admission and first token
        # against them; written to 0.1 ms and 10 us before session 47)
        run["steps"] = [tuple(round(x, 6) for x in (st[0] - t0,) + tuple(st[1:]))
                        for st in steps[first_step:]]
        if graphs is not None:
            run["graphs"] = [(round(g[0] - t0, 4), round(g[1], 5))
                             + ((list(g[2]),) if g[2] is not None else ())
                             for g in graphs[first_graph:]]
        if tracker is not None:         # the fair shares' work in this engine
            # the steps that ran batches without a CUDA graph, wider than
            # the share: (start, seconds, batches)
            run["eager_steps"] = [(round(e[0] - t0, 4), round(e[1], 5), e[2])
                                  for e in eager[first_eager:]]
            run["kvshim_stats"] = kvshim.stats()
            after = tracker_figures(tracker)
            run["kvshim_tracker"] = {k: after[k] - before[k] for k in after}
            run["kvshim_tracker"]["worst"] = tracker.worst
            run["kvshim_tracker"]["worst_in"] = tracker.worst_in
            run["kvshim_tracker"]["ask_worst"] = tracker.ask_worst
            run["kvshim_waits"] = {k: run["kvshim_stats"][k] - stats_before[k]
                                   for k in WAIT_FIGURES}
            run["kvshim_driver"] = {k: run["kvshim_stats"][k] - stats_before[k]
                                    for k in DRIVER_FIGURES}
            if all(k in stats_before for k in GATE_FIGURES):
                run["kvshim_gate"] = {k: run["kvshim_stats"][k] - stats_before[k]
                                      for k in GATE_FIGURES}
            run["kvshim_preempted"] = run["kvshim_tracker"]["preempted"]
            run["kvshim_short"] = run["kvshim_tracker"]["short"]
        done(run, out_path)
    manager.stop(block=True, timeout=60)
    return 0


# What the kvshim adapter's tracker counts, per run (see blocks.py)
TRACKER_FIGURES = ("busy", "calls", "slow", "retries", "short", "capped", "preempted", "dropped",
                   "reclaimed", "taken", "ahead_hits", "ahead_busy", "ahead_waited", "asks",
                   "asked_s", "no_page", "kept_out", "unused_pages", "moved", "packed_pages",
                   "to_cpu", "started_over", "evicted_untold", "eager",
                   "cache_given_back")


# What kvshim counts of the maps that waited for other processes (kvshim.h)
WAIT_FIGURES = ("share_waits", "share_wait_ns", "share_waits_used", "share_waits_failed")


# What kvshim counts of the process's stream captures that began only once
# a fence of its own had ended (kvshim.h; from session 34)
GATE_FIGURES = ("capture_gate_waits", "capture_gate_wait_ns")


# What kvshim counts of its driver work on physical pages (kvshim.h), in
# the whole process: the engine's thread, the adapter's thread mapping
# ahead and kvshim's worker
DRIVER_FIGURES = ("pages_created", "create_ns", "pages_mapped", "map_ns", "pages_unmapped",
                  "unmap_ns", "pages_released", "release_ns", "pages_zeroed", "zero_ns")


def driver_row(t):
    """The row of the table "driver calls on physical pages" for an engine's
    figures t: its pages created, mapped, unmapped, released and zeroed
    over the replay, the seconds of each and their sum, and the pages
    created per block handed out ("-" where no block was; all "-" where
    its adapter kept no tracker)."""
    d = t["kv_driver"]
    if d is None:
        return ("-",) * 12
    taken = t["kv_ahead"][0]
    return (tuple("%d" % d[k] for k in DRIVER_FIGURES[0::2])
            + tuple("%.2f" % (d[k] / 1e9) for k in DRIVER_FIGURES[1::2])
            + ("%.2f" % (sum(d[k] for k in DRIVER_FIGURES[1::2]) / 1e9),
               "%.2f" % (d["pages_created"] / taken) if taken else "-"))


def tracker_figures(tracker):
    return {k: getattr(tracker, k, 0) for k in TRACKER_FIGURES} if tracker is not None else {}


# Callables the engine's generation thread runs, each once, with its batch
# processor, at its next scheduling pass (time_steps' wrapper), before it
# schedules: work on its IOs that no step may run beside.
ON_LOOP = []


def capture_at_start(manager, model, cache, args, under_kvshim):
    """--capture-keys: the engine's CUDA graphs for every batch key it can
    meet (graph_capture.varlen_keys: its batches' queries, KV reads up to
    --capture-read tokens, its share's, within the cache's num_pages, and
    requests of at most --capture-longest tokens), captured on its
    generation thread before it serves, its fake requests under kvshim on
    the adapter's padding block. Returns what was done: keys, the read and
    longest used, and graph_capture.capture_all's counts and seconds, or
    error where it failed or its thread did not answer in 600 s (the
    engine serves on, capturing as it meets keys)."""
    proc = manager.batch_processor
    out = {"read": None, "longest": args.capture_longest, "keys": 0, "captured": 0,
           "present": 0, "eager": 0, "skipped": 0, "seconds": 0.0}
    try:
        conf = proc.model_runner.cb_config
        read = min(int(cache.num_pages), args.capture_read)
        keys = graph_capture.varlen_keys(int(cache.max_batch_tokens), read,
                                         int(conf.q_padding_interval_size),
                                         int(conf.kv_padding_interval_size),
                                         args.capture_longest)
    except (AttributeError, TypeError, ValueError) as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
        return out
    out.update(read=read, keys=len(keys))
    on_padding = None
    if under_kvshim:
        from kvshim.adapters import transformers_cb_reads as reads
        on_padding = reads._warmup_on_padding
    done, answer = threading.Event(), []

    def run(proc_):
        try:
            answer.append(graph_capture.capture_all(proc_, model, keys, read, on_padding))
        except Exception as e:          # recorded; never raised into transformers' loop
            answer.append({"error": "%s: %s" % (type(e).__name__, e)})
        finally:
            done.set()
    ON_LOOP.append(run)
    if not done.wait(600):
        with contextlib.suppress(ValueError):
            ON_LOOP.remove(run)
        out["error"] = "the generation thread did not answer in 600 s"
    else:
        out.update(answer[0])
    return out


def start_graphs_text(name, done):
    """What engine name's --capture-keys did (capture_at_start's), for a
    line: its graphs captured of the keys, their seconds, and what went
    wrong."""
    if not done:
        return "%s none (not asked)" % name
    text = "%s %d of %d keys in %.1f s (KV read up to %s)" % (
        name, done["captured"], done["keys"], done["seconds"], done["read"])
    for field, what in (("present", "in its cache already"),
                        ("eager", "run without a graph"),
                        ("skipped", "skipped (no blocks, or the batch keyed otherwise)")):
        if done.get(field):
            text += ", %d %s" % (done[field], what)
    if done.get("on_padding") is False:
        text += ", its fake requests on blocks of its own (no padding block)"
    if done.get("error"):
        text += ", failed: %s" % done["error"]
    return text


def time_steps():
    """Time every generation step of the engine, both configurations
    alike, and the CUDA graphs it captures: returns (steps, graphs). steps
    gets (start, seconds scheduling it, seconds running
    it) per step that ran a batch, and under kvshim a fourth figure: the
    seconds of the scheduling that the adapter's calls to its tracker took
    (the tracker's busy time: kvshim's calls, its maps included; not the
    adapter's other work, nor the thread that maps ahead), and a fifth
    where the adapter times it (from session 53): the seconds of the
    scheduling in transformers' own pass, the rest being the adapter's
    work around it (see sched_split). Scheduling
    (prepare_next_batch) includes those calls; a step without CUDA graphs
    is synchronous (transformers' sync batching), so its time is the GPU's;
    with graphs (the default), whether a step waits for its replay is
    transformers' doing, not checked here. graphs gets (start, seconds,
    key) per CUDA graph transformers captures (ModelRunner._capture_graph:
    an eager forward, then the capture), at its warm-up and in a step whose
    batch has no graph in its cache under its key (transformers 5.17:
    queries padded to q_padding_interval_size, 64; the KV the batch reads
    padded to kv_padding_interval_size, 16384, or 8192 where kvshim's
    adapter or staticpad sets it, at most the cache's tokens, under kvshim
    the adapter's read budget; the longest KV padded to a power
    of 2 from 1024, as far; its cache is a dict that never evicts, so a
    capture is a key the engine never met); key is None where transformers
    keeps no such key; graphs is None where it has no such method (not
    counted). Under kvshim, eager gets (start, seconds, batches) per step
    in which the adapter ran batches wider than the engine's share without
    a CUDA graph (its tracker's eager count rose)."""
    from transformers.generation.continuous_batching import continuous_api
    cls = continuous_api.ContinuousBatchProcessor
    prepare, step = cls.prepare_next_batch, cls._generation_step
    steps, eager, last = [], [], threading.local()
    graphs = None
    try:
        from transformers.generation.continuous_batching import model_runner
        runner = model_runner.ModelRunner
        capture = runner._capture_graph
    except (ImportError, AttributeError):
        runner = None
    if runner is not None:
        graphs = []

        @functools.wraps(capture)
        def timed_capture(self, *args, **kwargs):
            t = time.perf_counter()
            try:
                # the batch's key in the graph cache, as transformers 5.17
                # stores the graph under it (with async batching, in the
                # IO pair's device side; None where it keeps no such key)
                io = self.inputs_and_outputs
                if hasattr(io, "io_pairs"):
                    io = io.io_pairs[io.current_pair].device_io
                key = tuple(io._get_graph_key())
            except (AttributeError, TypeError):
                key = None
            try:
                return capture(self, *args, **kwargs)
            finally:
                graphs.append((t, time.perf_counter() - t, key))
        runner._capture_graph = timed_capture

    def timed_prepare(self, *args, **kwargs):
        while ON_LOOP:                  # work for the generation thread, between steps
            ON_LOOP.pop(0)(self)
        tracker = getattr(getattr(self, "cache", None), "kvshim_tracker", None)
        busy = tracker.busy if tracker is not None else None
        own = getattr(tracker, "engine_s", None)
        t = time.perf_counter()
        ready = prepare(self, *args, **kwargs)
        last.prep = (t, time.perf_counter() - t,
                     tracker.busy - busy if tracker is not None else None,
                     tracker.engine_s - own if own is not None else None)
        return ready

    def timed_step(self, *args, **kwargs):
        tracker = getattr(getattr(self, "cache", None), "kvshim_tracker", None)
        ran = getattr(tracker, "eager", None)
        t = time.perf_counter()
        step(self, *args, **kwargs)
        took = time.perf_counter() - t
        p = getattr(last, "prep", (t, 0.0, None, None))
        steps.append((p[0], p[1], took) + ((p[2],) if p[2] is not None else ())
                     + ((p[3],) if p[2] is not None and p[3] is not None else ()))
        if ran is not None and tracker.eager > ran:
            eager.append((t, took, tracker.eager - ran))

    cls.prepare_next_batch, cls._generation_step = timed_prepare, timed_step
    return steps, graphs, eager


def replay(manager, reqs, t0, kv_now, torch, adapter_now=None, read_cap=None):
    """Submit reqs at t0 + their times; collect every result. Samples
    every 100 ms: (s, KV bytes, PyTorch's reserved bytes, the engine's
    view or None; see adapter_now in engine), and with read_cap (a
    callable) how many samples saw each read bound."""
    submitted, results = {}, {}
    samples, stop = [], threading.Event()
    caps = collections.Counter()

    def sample():
        while not stop.is_set():
            samples.append((time.perf_counter() - t0, kv_now(), torch.cuda.memory_reserved(),
                            adapter_now() if adapter_now else None))
            if read_cap is not None:
                caps[read_cap()] += 1
            stop.wait(0.1)

    def collect():
        while len(results) < len(reqs) and not stop.is_set():
            out = manager.get_result(timeout=0.1)
            if out is None or not out.is_finished():
                continue
            ts = out.timestamps or []
            results[out.request_id] = {
                "status": int(out.status), "error": out.error,
                "tokens": len(out.generated_tokens),
                "first": ts[0] if ts else None, "last": ts[-1] if ts else None,
                "started": out.lifespan[0] if out.lifespan else None}

    threads = [threading.Thread(target=sample, daemon=True),
               threading.Thread(target=collect, daemon=True)]
    for th in threads:
        th.start()
    for q in reqs:
        delay = t0 + q["t"] - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        g = random.Random(q["seed"])
        ids = [g.randrange(1, VOCAB) for _ in range(q["prompt"])]
        submitted[q["id"]] = time.perf_counter()
        rid = manager.add_request(ids, request_id=q["id"], max_new_tokens=q["new"],
                                  record_timestamps=True)
        if rid is None:
            results[q["id"]] = {"status": -1, "error": "dropped by add_request"}
    deadline = time.perf_counter() + 150
    while len(results) < len(reqs) and time.perf_counter() < deadline:
        if not manager.is_running():        # the engine failed: report what it did
            time.sleep(0.5)
            break
        time.sleep(0.05)
    stop.set()
    for th in threads:
        th.join(timeout=5)
    rows = []
    for q in reqs:
        r = results.get(q["id"], {"status": -2, "error": "no result in time"})
        sub = submitted.get(q["id"])
        row = dict(q, **r)
        row["ttft"] = r["first"] - sub if r.get("first") and sub else None
        row["wait"] = r["started"] - sub if r.get("started") and sub and r["started"] > 0 else None
        row["done_at"] = r["last"] - t0 if r.get("last") else None
        rows.append(row)
    out = {"requests": rows, "samples": samples}
    if read_cap is not None:
        out["read_caps"] = {str(k): n for k, n in sorted(caps.items(), key=lambda x: str(x[0]))}
    return out


# ---- the parent ----------------------------------------------------------------------

def smi_id():
    """The GPU the engines share, as nvidia-smi -i names it: each engine
    makes its model and cache on torch.device("cuda"), CUDA ordinal 0, which
    KVSHIM_DEVICE does not move (it says which devices kvshim manages);
    through CUDA_VISIBLE_DEVICES where that is set (nvidia-smi numbers every
    GPU of the machine; it takes the index or UUID the variable lists)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[0] if visible else "0"


def nvidia_smi_used():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                              "-i", smi_id()],
                             capture_output=True, text=True, timeout=5).stdout
        return int(out.split()[0]) * MIB
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def gpu_named(dry_run):
    """The GPU the engines share as nvidia-smi names it ("name, memory.total
    [MiB], driver_version"), "none (--dry-run)" in a dry run, or None where
    nvidia-smi does not answer: rounds.py reads runs made apart as one only
    on one kind of card."""
    if dry_run:
        return "none (--dry-run)"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader", "-i", smi_id()],
                             capture_output=True, text=True, timeout=5).stdout.strip()
        return out or None
    except (OSError, subprocess.SubprocessError):
        return None


def load_top():
    # kvshim-top reads segments through the built tree's kvshim-config
    os.environ.setdefault("KVSHIM_CONFIG_BIN", os.path.join(ROOT, "kvshim-config"))
    path = os.path.join(ROOT, "scripts", "kvshim-top")
    loader = importlib.machinery.SourceFileLoader("kvshim_top", path)
    spec = importlib.util.spec_from_loader("kvshim_top", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


class Sampler:
    """GPU used memory (nvidia-smi), and the shared segment's held bytes."""

    def __init__(self, t0, pool):
        self.t0, self.pool = t0, pool
        self.gpu, self.held = [], []
        self.top = load_top() if pool else None
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run_gpu, daemon=True)]
        if pool:
            self.threads.append(threading.Thread(target=self.run_held, daemon=True))
        for th in self.threads:
            th.start()

    def run_gpu(self):
        while not self.stop.is_set():
            used = nvidia_smi_used()
            if used is not None:
                self.gpu.append((time.perf_counter() - self.t0, used))
            self.stop.wait(0.5)

    def run_held(self):
        while not self.stop.is_set():
            for seg in self.top.segments(self.pool):
                if "error" not in seg:
                    # per pid: held, idle (cached and pooled), demand,
                    # asked, share and gap (the rule's, kvshim-config's),
                    # unused (stated by its adapter), weight
                    self.held.append((time.perf_counter() - self.t0, seg["held"], seg["budget"],
                                      {p["pid"]: [p["held"], p["cached"] + p["pooled"],
                                                  p.get("demand"), p.get("asked"),
                                                  p.get("share"), p.get("gap"),
                                                  p.get("unused"), p.get("weight")]
                                       for p in seg["processes"]}))
            self.stop.wait(0.05)

    def finish(self):
        self.stop.set()
        for th in self.threads:
            th.join(timeout=5)


def read_line(proc, want, timeout):
    """The next line of proc's stdout starting with want (others echoed)."""
    q = proc.kv_lines
    end = time.time() + timeout
    while True:
        try:
            line = q.get(timeout=max(0.1, end - time.time()))
        except queue.Empty:
            raise RuntimeError("no %s from engine pid %d in %.0f s" % (want, proc.pid, timeout))
        if line is None:
            raise RuntimeError("engine pid %d exited (code %s) before %s"
                               % (proc.pid, proc.poll(), want))
        if line.startswith(want):
            return line[len(want):].strip()
        sys.stdout.write(line)


def dry_read_follows():
    """Whether the adapter's read bound would follow the engine's share of
    the budget: with kvshim's own choice of it (auto)."""
    from kvshim.adapters import transformers_cb_reads as reads
    return reads.read_tokens_setting(os.environ.get(reads.READ_TOKENS_VAR)) == "auto"


def starved_ms_used():
    """The starvation guard's threshold the adapter uses, in milliseconds
    (KVSHIM_CB_STARVED_MS, or its default)."""
    from kvshim.adapters import transformers_cb_reads as reads
    return round(1000 * reads.starved_s())


def dry_read_tokens(name):
    """What the adapter would choose for model name's engine under kvshim,
    read through its own parsing and counting: auto is 65536 for these
    engines (fed by add_request), a number as it is, a memory size the
    tokens a cache of that size holds."""
    from kvshim.adapters import transformers_cb_reads as reads
    setting = reads.read_tokens_setting(os.environ.get(reads.READ_TOKENS_VAR))
    if isinstance(setting, reads.ReadBytes):
        return reads.memory_tokens(setting, BLOCK, kv_bytes_per_token(name) * BLOCK)[0]
    return setting if isinstance(setting, int) else 65536


def static_blocks(name, budget):
    """The blocks of model name's cache in a static split of budget: a
    third of it."""
    return budget // 3 // (kv_bytes_per_token(name) * BLOCK)


def spawn(name, cfg, args, pool, outdir, tag):
    """Start model name's engine for configuration cfg (run_config's: its
    mode and budget, and the settings a configuration turns from kvshim's
    defaults: ceiling, shares, pack, static_reads, reserve, ahead,
    cushion), its log in outdir. Returns the process."""
    mode, budget = cfg["mode"], cfg["budget"]
    cmd = [sys.executable, os.path.abspath(__file__), "--engine", name,
           "--max-batch-tokens", str(args.max_batch_tokens),
           "--cpu-offload-gib", str(args.cpu_offload_gib)]
    cmd.append("--prefix-cache" if args.prefix_cache else "--no-prefix-cache")
    cmd.append("--cuda-graphs" if args.cuda_graphs else "--no-cuda-graphs")
    if args.dry_run:
        cmd.append("--dry-run")
    if args.capture_keys and args.cuda_graphs:
        # the most a batch of this engine reads: its cache's tokens
        # (static), or its weighted part of the budget's (kvshim, whose
        # read bound follows that share beside the others)
        if mode == "static":
            share = budget * cfg.get("shares", 1)
        else:
            w = args.weight_of or {}
            share = 3 * budget * w.get(name, 1) // sum(w.get(n, 1) for n in ORDER)
        cmd += ["--capture-read", str(static_blocks(name, share) * BLOCK),
                "--capture-longest", str(args.prompt_max + args.new_max)]
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.pop("KVSHIM_MAX", None)         # capped's alone (the caller's would pass)
    env.pop("KVSHIM_WEIGHT", None)      # --weights' alone (equal, 1, without it)
    env.pop("KVSHIM_CB_READ_TOKENS", None)      # reads' alone
    env["KVSHIM_CB_PACK"] = "on" if cfg.get("pack", True) else "off"   # unpacked's alone off
    env.pop("KVSHIM_RESERVE", None)     # kvshim's default (5%), or --reserve; unreserved's off
    if not cfg.get("reserve", True):
        env["KVSHIM_RESERVE"] = "off"
    elif args.reserve is not None and mode != "static":
        env["KVSHIM_RESERVE"] = args.reserve
    env.pop("KVSHIM_CB_AHEAD", None)    # the adapter's default (on); noahead's off
    if not cfg.get("ahead", True):
        env["KVSHIM_CB_AHEAD"] = "off"
    env.pop("KVSHIM_CB_CUSHION", None)  # the adapter's default (on); nocushion's off
    if not cfg.get("cushion", True):
        env["KVSHIM_CB_CUSHION"] = "off"
    env.pop("KVSHIM_CB_IDLE_CUSHION", None)     # the adapter's default (off); idle's on
    if cfg.get("idle_cushion"):
        env["KVSHIM_CB_IDLE_CUSHION"] = "on"
    env.pop("KVSHIM_CB_GIVE_BACK", None)    # the adapter's default (on); keepcache's off
    if not cfg.get("give_back", True):
        env["KVSHIM_CB_GIVE_BACK"] = "off"
    env.pop("KVSHIM_CB_STARVED_MS", None)   # the adapter's default (250); starved's --starved-ms
    if cfg.get("starved_ms"):
        env["KVSHIM_CB_STARVED_MS"] = str(cfg["starved_ms"])
    env.pop("KVSHIM_CB_KV_PAD", None)   # the adapter's auto; kvpad's --kv-pad
    if cfg.get("kv_pad") and mode != "static":
        env["KVSHIM_CB_KV_PAD"] = str(cfg["kv_pad"])
    elif cfg.get("kv_pad"):             # staticpad's: set in its config, as the adapter does
        cmd.append("--pad-as-kvshim")
    if mode == "static":
        cmd += ["--num-blocks", str(static_blocks(name, budget * cfg.get("shares", 1)))]
        env["KVSHIM_SHARE"] = "off"     # no kvshim here; said for clarity
    else:
        cmd = [built_tree.kvshim_run()] + cmd + ["--num-blocks", "0"]
        env.update(KVSHIM_SHARE="on", KVSHIM_BUDGET=str(budget), KVSHIM_POOL=pool,
                   KVSHIM_MIN=str(int(args.floor_gib * GIB)))
        if args.weight_of:
            env["KVSHIM_WEIGHT"] = str(args.weight_of[name])
        if cfg.get("static_reads"):
            # what the static split's engine of this model reads at most in
            # a batch, written as an operator moving from that split would:
            # its third of --budget-gib, whose tokens the adapter counts
            # (static_blocks' whole blocks)
            env["KVSHIM_CB_READ_TOKENS"] = "%dKiB" % (int(args.budget_gib * GIB) // 3 // 1024)
        if cfg.get("ceiling"):
            # and a page index more: the two padding blocks, backed at once
            # (a page in each KV tensor), which static has beside its third
            env["KVSHIM_MAX"] = str(cfg["ceiling"] + 2 * MODELS[name][0] * 2 * MIB)
        env = built_tree.environment(env)
    log = open(os.path.join(outdir, "colocate-%s-%s.log" % (tag, name)), "w")
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=log, text=True, bufsize=1)
    proc.kv_lines = queue.Queue()

    def pump():
        for line in proc.stdout:
            proc.kv_lines.put(line)
        proc.kv_lines.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return proc


DRAINS = "(drains)"      # took's key for (rate, seconds past a trace's end)
STARTS = "(starts)"      # took's key for the seconds each configuration's engines took to start
SLACK = (1.05, 15.0)     # fits' room over the sum of its guesses: a factor, then seconds


def trace_seconds(tr, args):
    """How long trace tr's arrivals last: its cycles of three phases."""
    return 3 * tr.get("cycles", args.cycles) * tr["phase"]


def replay_took(took, tr, args, seconds):
    """Count a replay of trace tr that took seconds: by its base label, and
    what it took past the trace's end (the engines' start of it, the drain
    of their queues), by its rate, for the first guesses of the others."""
    took.setdefault(tr["base"], []).append(seconds)
    took.setdefault(DRAINS, []).append((float(tr["rate"]),
                                        max(0.0, seconds - trace_seconds(tr, args))))


def replay_guess(tr, args, took):
    """Seconds a replay of trace tr is expected to take: the longest of
    its replays so far (took: seconds by base label); else its length
    plus the longest drain of the replays so far at its rate or above
    (the warm-up's, at the highest rate, among them); else a guess from
    its length and rate (see the top). No room is added: fits adds it."""
    if took.get(tr["base"]):
        return max(took[tr["base"]])
    drains = [d for rate, d in took.get(DRAINS, ()) if rate >= float(tr["rate"])]
    if drains:
        return trace_seconds(tr, args) + max(drains)
    return trace_seconds(tr, args) + 20.0 + 8.0 * float(tr["rate"])


def start_guess(took):
    """Seconds a configuration's engines are expected to take to start: the
    slowest start so far, 30 s before any."""
    return max(took.get(STARTS) or [30.0])


def turns_guess(turns, warmup=None):
    """Seconds turns ((configuration, traces, round), as main plans them)
    are guessed to take before any has run: about 30 s to start and stop
    three engines, and each trace its length and the drain of its queue
    (15 s, more at high rates), the warm-up trace's too in round 0. (On an
    H200 with CUDA graphs, sessions 19 and 20: start and stop 17 to 31 s;
    rate 3's 48 s trace 56 to 57 s, its 24 s warm-up 34 to 35 s; rate 6's
    64 to 66 s and 36 to 38 s. This guesses 69, 45, 75 and 51 s: what a run
    guesses as it goes (see fits) is the sum of the replays' times, 5%
    and 15 s more, and a --deadline this lets through must leave those
    guesses room.)"""
    return sum(30 + sum(3 * tr["cycles"] * tr["phase"] + 15 + 2 * float(tr["rate"])
                        for tr in trs + ([warmup] if warmup and r == 0 else []))
               for _, trs, r in turns)


def fits(now, deadline, tr, ran, later, args, took, warmup=None):
    """Whether a replay of trace tr started now would end by deadline, and
    the later configurations' replays after it (later: the labels of each
    one's traces; each starts its engines, start_guess, replays the
    warm-up trace warmup if any, the round's, and replays those of the
    traces this one ran, ran, and tr, it has), all with SLACK's room: a
    replay that nothing could be compared with is not started, nor one
    that would leave no time for the comparisons of those already run.
    (Every sweep budget counts, also those a budget that meets would
    skip.) Returns (whether, the seconds it would need)."""
    need = replay_guess(tr, args, took)
    for labels in later:
        mine = [t for t in ran + [tr] if t["label"] in labels]
        if mine:
            need += start_guess(took) + sum(replay_guess(t, args, took)
                                            for t in mine + [warmup] if t)
    need = need * SLACK[0] + SLACK[1]
    return now + need <= deadline, need


def worth_starting(now, deadline, traces, later, args, took, warmup=None):
    """Whether a configuration whose engines start now, taking as long as
    the slowest start so far, and replay the warm-up trace warmup, if any,
    could run one of traces by deadline as fits would let it (the later
    configurations' replays of it counted; the start and warm-up with
    SLACK's factor), so that no engines start only for their replays to be
    skipped. True before any engines started: the run's first
    configuration was checked before it began (main)."""
    if not took.get(STARTS):
        return True
    ready = now + SLACK[0] * (start_guess(took) +
                              (replay_guess(warmup, args, took) if warmup else 0))
    return any(fits(ready, deadline, tr, [], later, args, took, warmup)[0] for tr in traces)


def run_config(cfg, args, traces, outdir, deadline=None, took=None, later=(), warmup=None):
    """Start the three engines of configuration cfg ({"name", "mode",
    "budget"}), replay traces in turn, stop them. A replay that would not
    end by deadline (time.perf_counter()'s), with the later configurations'
    replays of it (see fits), is skipped. took ({base label: [seconds]})
    gets each replay's time. warmup: a trace replayed first and counted
    nowhere (see --warmup). Returns the results."""
    took = {} if took is None else took
    mode, budget, tag = cfg["mode"], cfg["budget"], cfg["name"].replace("@", "-")
    pool = "colocate%d%s" % (os.getpid(), tag.replace(".", "_").replace("-", "_")) \
        if mode == "kvshim" else None
    t_spawn = time.perf_counter()
    procs = {name: spawn(name, cfg, args, pool, outdir, tag) for name in ORDER}
    res = {"name": cfg["name"], "mode": mode, "budget": budget, "engines": {}, "runs": {},
           "seconds": {}, "skipped": [], "pool": pool}
    try:
        for name, p in procs.items():
            # (--capture-keys: their captures too, at most 600 s more)
            res["engines"][name] = json.loads(read_line(p, "READY",
                                                        1200 if args.capture_keys else 600))
        res["startup_s"] = time.perf_counter() - t_spawn
        took.setdefault(STARTS, []).append(res["startup_s"])
        pids = {n: e["pid"] for n, e in res["engines"].items()}
        print("colocate: %s: engines ready in %.1f s: %s" % (cfg["name"], res["startup_s"], ", ".join(
            "%s %d blocks (%.0f MiB of KV tensors%s%s)" % (
                n, e["num_blocks"], e["kv_tensor_bytes"] / MIB,
                ", a batch reads at most %d tokens" % e["read_tokens"] if e.get("read_tokens") else "",
                ", its KV read padded to %d tokens" % e["kv_pad"] if e.get("kv_pad") else "")
            for n, e in res["engines"].items())), flush=True)
        if args.capture_keys:
            print("colocate: %s: CUDA graphs captured at start (--capture-keys): %s" % (
                cfg["name"], ", ".join(start_graphs_text(n, e.get("start_graphs"))
                                       for n, e in res["engines"].items())), flush=True)
        if warmup is not None:
            t_run = time.perf_counter()
            run = replay_all(procs, warmup, os.path.join(
                outdir, "colocate-warmup-%s-%%s.json" % tag), args, pool)
            res["warmup_s"] = time.perf_counter() - t_run
            res["warmup_failed"] = failed_requests(run)
            # the CUDA graphs each engine captured in it (None: not counted)
            res["warmup_graphs"] = {n: e.get("graphs") for n, e in run["engines"].items()}
            # what each held beside its KV cache as the warm-up began and ended
            res["warmup_beside"] = {n: (lambda b: (b[0], b[-1]) if b else None)(
                beside(e, res["engines"][n])) for n, e in run["engines"].items()}
            replay_took(took, warmup, args, res["warmup_s"])
            print("colocate: %s: warm-up replay done in %.0f s (not counted%s)" % (
                cfg["name"], res["warmup_s"],
                "; %d requests FAILED" % res["warmup_failed"] if res["warmup_failed"] else ""),
                flush=True)
        ran = []
        for tr in traces:
            t_run = time.perf_counter()
            ok, need = fits(t_run, deadline, tr, ran, later, args, took, warmup) \
                if deadline is not None else (True, 0.0)
            if not ok:
                print("colocate: %s, trace %s: skipped, it would end past --deadline (%.0f s "
                      "left before the last minute, about %.0f s needed: %.0f s for it, the "
                      "rest for its replays in the later configurations and the room over "
                      "the guesses)" % (
                          cfg["name"], tr["label"], deadline - t_run, need,
                          replay_guess(tr, args, took)), flush=True)
                res["skipped"].append(tr["label"])
                continue
            run = replay_all(procs, tr, os.path.join(
                outdir, "colocate-%s-%s-%%s.json" % (tag, tr["label"])), args, pool)
            run["pids"] = pids
            res["runs"][tr["label"]] = run
            ran.append(tr)
            res["seconds"][tr["label"]] = time.perf_counter() - t_run
            replay_took(took, tr, args, res["seconds"][tr["label"]])
            print("colocate: %s, trace %s: done in %.0f s" % (cfg["name"], tr["label"],
                                                              res["seconds"][tr["label"]]), flush=True)
    finally:
        t_stop = time.perf_counter()
        for p in procs.values():
            try:
                p.stdin.write("QUIT\n")
                p.stdin.flush()
            except OSError:
                pass
        for p in procs.values():
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
        if pool:
            for path in glob_segments(pool):
                os.unlink(path)
        res["stop_s"] = time.perf_counter() - t_stop
    res["total_s"] = time.perf_counter() - t_spawn
    print("colocate: %s took %.0f s in all (start %.0f s, stop %.0f s)" % (
        cfg["name"], res["total_s"], res.get("startup_s", 0), res["stop_s"]), flush=True)
    return res


def replay_all(procs, tr, out, args, pool):
    """Have the engines procs replay trace tr together, two seconds from
    now, each writing its results to out % its name, and read the GPU and
    the shared segment meanwhile. Returns the run: {"gpu_used", "held",
    "engines": {name: its results}}."""
    t0 = time.perf_counter() + 2.0
    sampler = Sampler(t0, pool)
    for name, p in procs.items():
        p.stdin.write("RUN %s %.6f %s\n" % (tr["path"], t0, out % name))
        p.stdin.flush()
    for name, p in procs.items():
        read_line(p, "DONE", tr["cycles"] * 3 * tr["phase"] + 400)
    sampler.finish()
    run = {"gpu_used": sampler.gpu, "held": sampler.held, "engines": {}}
    for name in ORDER:
        with open(out % name) as f:
            run["engines"][name] = json.load(f)
    return run


def served(r):
    """Whether request r of a replay was served: a first token, and
    finished."""
    return r["ttft"] is not None and r["status"] == 3


def failed_requests(run):
    """How many requests of a replay (replay's run) failed (see served)."""
    return sum(1 for e in run["engines"].values() for r in e["requests"] if not served(r))


def merge(res, more):
    """Add a later turn's results (run_config's) of a configuration to
    res: its replays, their times and those skipped; each turn's start,
    warm-up, stop and total times in res["turns"]."""
    res.setdefault("turns", [{k: res.get(k) for k in TURN_TIMES}])
    res["turns"].append({k: more.get(k) for k in TURN_TIMES})
    res["total_s"] = sum(t["total_s"] or 0.0 for t in res["turns"])
    res["runs"].update(more["runs"])
    res["seconds"].update(more["seconds"])
    res["skipped"] += more["skipped"]


TURN_TIMES = ("startup_s", "warmup_s", "stop_s", "total_s")


def glob_segments(pool):
    return glob.glob("/dev/shm/kvshim-GPU-*-" + pool)


def ms2(x):
    """Seconds x as milliseconds in a table's cell, '-' for nan."""
    return "-" if x != x else "%.2f" % (1e3 * x)


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100.0
    i = int(k)
    return xs[i] if i + 1 >= len(xs) else xs[i] + (xs[i + 1] - xs[i]) * (k - i)


LONG_STEP = 4.0     # a step this many times its engine's median step is long
WORST = 3           # the longest TTFTs shown per model and configuration
ADMITTED_S = 0.5    # a first token this long after admission is counted


def long_steps(engines, name):
    """Engine name's long steps in a replay (engines: {name: its results,
    whose "steps" are (start, seconds scheduling, seconds running the
    batch), starts on the clock every engine shares}) and what ran beside
    them: (how many, their median seconds, {other engine: (the median
    seconds of its steps whose batch overlapped one of them, or nan for
    none; the median of all its steps)}). A batch runs from its step's
    start plus the scheduling, for the running time."""
    def runs(n):
        return [(st[0] + st[1], st[0] + st[1] + st[2]) for st in engines[n].get("steps", ())]
    mine = runs(name)
    mid = pct([b - a for a, b in mine], 50)
    long = [(a, b) for a, b in mine if b - a > LONG_STEP * mid]
    beside = {}
    for other in engines:
        if other == name:
            continue
        theirs = runs(other)
        over = [b - a for a, b in theirs if any(a < lb and b > la for la, lb in long)]
        beside[other] = (pct(over, 50), pct([b - a for a, b in theirs], 50))
    return len(long), pct([b - a for a, b in long], 50), beside


PAUSE_S = 0.02     # a pause between an engine's steps this long, with requests in flight


def step_pauses(engine):
    """An engine's pauses between steps (one batch's run ended, the next
    step not begun: transformers' update of the batch and its loop, and
    whatever call of the process they wait on) over PAUSE_S while it had a
    request in flight (arrived, its last token not given; "requests"' t and
    done_at), as (start, seconds) in the trace's time, or None where its
    steps were not counted. (On an H200 a kvshim engine ran no step for
    0.16 s while its process gained pages: docs/BENCHMARKS.md, session
    35.)"""
    steps = engine.get("steps")
    if steps is None:
        return None
    steps = sorted(steps)
    live = [(r["t"], r["done_at"]) for r in engine.get("requests", ())
            if r.get("t") is not None and r.get("done_at") is not None]
    out = []
    for st, nxt in zip(steps, steps[1:]):
        a, b = st[0] + st[1] + st[2], nxt[0]
        if b - a > PAUSE_S and any(t <= a and done >= b for t, done in live):
            out.append((round(a, 4), round(b - a, 4)))
    return out


def captured(engine, a, b):
    """Seconds of the CUDA graphs an engine was capturing at some time in
    [a, b): begun before b, ended after a (s from the trace's start; its
    "graphs": (start, seconds[, key]) per capture), or None where its
    captures were not counted. (A request that arrives while a capture runs
    waits on it too: counting only those begun after its arrival left such
    requests among the others, on an H200 a rate-4 miss "apart from
    captures": docs/BENCHMARKS.md, session 35.)"""
    graphs = engine.get("graphs")
    return None if graphs is None else sum(g[1] for g in graphs if g[0] < b and g[0] + g[1] > a)


def graph_keys(table, label, results, warmed=True):
    """Print trace label's table of the CUDA graphs each engine captured
    by their keys (see time_steps): a capture is a key its engine had not
    met, in the warm-up or a replay before; those whose KV read is above
    what the static split's engine of the model reads at most are batches
    only a bigger cache forms (a decode fast path's key, the queries
    alone, reads none); those whose key the static split's engine of the
    model never captured in the run (its warm-up and replays) are keys it
    never met, whatever their cause. warmed: whether the replay's engines
    had the warm-up (with --alternate, those of round 0 only)."""
    rows = [(name, cname, t) for name, cname, t in cells(table, label, results)
            if t["graphs"] is not None]
    if not rows:
        return
    print("\nCUDA graphs by key, trace %s: the graphs each engine captured in the replay "
          "(transformers keeps each under its key, the batch's queries, KV read and longest KV, "
          "each padded, and never drops one, so each is a key the engine, or with async "
          "batching its IO pair, met for the first time): how many and their seconds, how many "
          "distinct keys, and those whose KV read is above what the static split's engine of "
          "the model reads at most (a batch only a bigger cache forms) and their seconds, and "
          "those whose key the static split's engine never captured in this run, warm-up and "
          "replays (a key it never met), and their seconds; what the engine reads at most; and "
          "how many it captured in the warm-up (with --warmup; with --alternate, in round 0)"
          % label)
    print("| model | config | captured | their s | keys | KV read above static's most "
          "| their s | static never met | their s | reads at most | warm-up captured |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    static = results.get("static", {})
    for name, cname, t in rows:
        graphs = t["graphs"]
        keyed = [g for g in graphs if len(g) > 2]
        most = static.get("engines", {}).get(name, {}).get("read_tokens")
        above = [g for g in keyed if most and len(g[2]) > 1 and g[2][1] > most] \
            if cname != "static" else None
        # the keys the static split's engine of this model captured in the run
        theirs = [(static.get("warmup_graphs") or {}).get(name)] + [
            run["engines"].get(name, {}).get("graphs") for run in static.get("runs", {}).values()]
        # (None where static did not run or its captures were not counted)
        met = {tuple(g[2]) for gs in theirs if gs for g in gs if len(g) > 2}
        new = [g for g in keyed if tuple(g[2]) not in met] \
            if cname != "static" and any(gs is not None for gs in theirs) else None
        warm = (results[cname].get("warmup_graphs") or {}) if warmed else {}
        print("| %s | %s | %d | %.2f | %s | %s | %s | %s | %s | %s | %s |" % (
            name, cname, len(graphs), sum(g[1] for g in graphs),
            len({tuple(g[2]) for g in keyed}) if keyed else "-",
            "-" if above is None or not keyed or not most else len(above),
            "-" if above is None or not keyed or not most else "%.2f" % sum(g[1] for g in above),
            "-" if new is None or not keyed else len(new),
            "-" if new is None or not keyed else "%.2f" % sum(g[1] for g in new),
            results[cname]["engines"].get(name, {}).get("read_tokens") or "-",
            len(warm[name]) if warm.get(name) is not None else "-"))


def graph_steps(engine):
    """(how many CUDA graphs an engine captured in a replay, how many of
    its long steps (long_steps) captured one), or None where its captures
    were not counted. A capture runs in its step's batch (an eager
    forward, then the capture), so a step from its start to its batch's
    end holds it."""
    graphs = engine.get("graphs")
    if graphs is None:
        return None
    steps = engine.get("steps", ())
    mid = pct([st[2] for st in steps], 50)
    return (len(graphs), sum(1 for st in steps if st[2] > LONG_STEP * mid
                             and captured(engine, st[0], st[0] + st[1] + st[2])))


HEAVY_STEP = 2.0    # a batch that ran this many times its engine's median step held a prefill


def heavy_steps(engine):
    """An engine's scheduling before its heavy steps (batches that ran over
    HEAVY_STEP times its median: most hold a prefill, which a decode-only
    batch does not, but a decode slowed by a neighbour's batch counts too,
    and in an engine whose median step holds a prefill most prefills do
    not) and before the others: (how many heavy steps, their scheduling's
    p50 and p90 seconds, the adapter's calls to its tracker in it at p50
    and p90 (nan without a kvshim adapter: steps of three figures), the
    other steps' scheduling p50). Scheduling a prefill takes its blocks,
    so kvshim's maps fall there, in the tracker's calls; the adapter's
    other work (its retries' sleeps, map_ahead's look at the ids, packing's
    copies) is in the rest, with transformers' own scheduling."""
    steps = engine.get("steps", ())
    mid = pct([st[2] for st in steps], 50)
    heavy = [st for st in steps if st[2] > HEAVY_STEP * mid]
    light = [st for st in steps if st[2] <= HEAVY_STEP * mid]
    kv = [st[3] for st in heavy if len(st) > 3]
    return (len(heavy), pct([st[1] for st in heavy], 50), pct([st[1] for st in heavy], 90),
            pct(kv, 50), pct(kv, 90), pct([st[1] for st in light], 50))


def sched_split(engine):
    """An engine's scheduling a step split where the adapter timed it (steps
    of five figures: see time_steps): (steps, mean seconds scheduling, of
    it in transformers' own pass, around it) over all its steps, then the
    same over its heavy steps (see heavy_steps); the means nan where no
    step has the split (static's: its scheduling is transformers' alone;
    runs before session 53). Transformers' pass holds kvshim's calls from
    its block manager (a map when blocks are handed out) and the adapter's
    hooks there; the work around it holds the adapter's checks, demand and
    asks, kvshim's other calls, its retries' sleeps and the look at the
    ids to map ahead. Against static's scheduling, which of the two a
    longer scheduling under kvshim comes from."""
    def mean(xs):
        return statistics.fmean(xs) if xs else float("nan")

    steps = engine.get("steps", ())
    mid = pct([st[2] for st in steps], 50)
    out = ()
    for some in (steps, [st for st in steps if st[2] > HEAVY_STEP * mid]):
        split = [st for st in some if len(st) > 4]
        out += (len(some), mean([st[1] for st in some]), mean([st[4] for st in split]),
                mean([st[1] - st[4] for st in split]))
    return out


def blocks_in_use(engine):
    """[(s, KV bytes, bytes of blocks in use)] over an engine's samples that
    have the engine's view (every configuration's from session 15 on, only
    kvshim's before): the KV memory it holds (static: its whole cache;
    kvshim: its pages) and the cache's blocks less the engine's free count
    (transformers counts the prefix cache's blocks free), at the same
    moments."""
    n, per = engine.get("num_blocks"), engine.get("kv_tensor_bytes")
    return [(s[0], s[1], (n - s[3][VIEW_FREE]) * per / n) for s in engine.get("samples", ())
            if n and per and len(s) > 3 and s[3] and s[3][VIEW_FREE] is not None]


def in_use(engine):
    """(mean KV bytes, mean bytes of blocks in use) over an engine's samples
    with its view (blocks_in_use); None without them."""
    rows = blocks_in_use(engine)
    if not rows:
        return None
    return (statistics.fmean(r[1] for r in rows), statistics.fmean(r[2] for r in rows))


def held_while_waiting(engine):
    """What an engine held while requests of its waited for admission, over
    its samples whose view has every VIEW_ slot (kvshim's engines, from
    session 46 on) in which some did: a dict of "samples" (their number)
    and the means, in bytes, of "pages" (its KV pages, as kvshim counts
    them), "used" (the blocks its requests held, as blocks_in_use),
    "prefix" (its prefix cache's blocks: free to the engine, their pages
    held), "free_on" (the free ids on the pages it holds: handing them out
    maps nothing), "ahead" (the blocks backed ahead, taken in: among
    free_on where blocks lie on one page), "pooled" and "cached" (kvshim's
    pool of ready pages and its cached pages, no block on them), "rest"
    (the pages less all those but ahead: the padding zone's rows, pages
    being mapped or unmapped, a batch backed ahead not taken in yet),
    "shown" (the free block count the engine was shown: what it admits
    with; None where no sample has it) and "demand" (stated);
    {"samples": 0} when none had requests waiting; None without samples
    that tell (older runs', static's)."""
    n, nbytes = engine.get("num_blocks"), engine.get("kv_tensor_bytes")
    told = [s for s in engine.get("samples", ())
            if len(s) > 3 and s[3] and len(s[3]) > VIEW_CACHED and s[3][VIEW_FREE] is not None]
    if not n or not nbytes or not told:
        return None
    rows = [s for s in told if s[3][VIEW_WAITING]]
    if not rows:
        return {"samples": 0}
    per = nbytes / n

    def mean(slot, scale=per):
        return statistics.fmean((s[3][slot] or 0) * scale for s in rows)
    shown = [s[3][VIEW_SHOWN] * per for s in rows if s[3][VIEW_SHOWN] is not None]
    out = {"samples": len(rows), "pages": statistics.fmean(s[1] for s in rows),
           "used": statistics.fmean((n - s[3][VIEW_FREE]) * per for s in rows),
           "prefix": mean(VIEW_PREFIX), "free_on": mean(VIEW_FREE_ON), "ahead": mean(VIEW_AHEAD),
           "pooled": mean(VIEW_POOLED, 1), "cached": mean(VIEW_CACHED, 1),
           "shown": statistics.fmean(shown) if shown else None,
           "demand": mean(VIEW_DEMAND, 1)}
    out["rest"] = out["pages"] - sum(out[k] for k in ("used", "prefix", "free_on", "pooled",
                                                      "cached"))
    return out


def stated(held, pid):
    """(mean stated demand, mean idle pages, mean stated unused) of the
    process pid, bytes, over the shared segment's samples of a replay from
    the trace's start (held: [t, held, budget, {pid: [held, idle, demand,
    asked, share, gap, unused, weight]}], as the monitor takes them); None without
    samples of it."""
    rows = [h[3].get(pid, h[3].get(str(pid))) for h in held or () if h[0] >= 0.0]
    rows = [r for r in rows if r]
    if not rows:
        return None
    return tuple(statistics.fmean((r[k] or 0) if len(r) > k else 0 for r in rows)
                 for k in (2, 1, 6))


def summed_in_use(engines, step=0.1):
    """The blocks in use of the engines together: on a grid of step seconds
    over the replay (from the trace's start: samples begin 2 s before it)
    while all of them have samples with their view, the sum of each one's
    latest sample at or before the point. [] when one has none."""
    rows = [blocks_in_use(e) for e in engines]
    if not rows or not all(rows):
        return []
    start, end = max([0.0] + [r[0][0] for r in rows]), min(r[-1][0] for r in rows)
    out, at = [], [0] * len(rows)
    for k in range(int((end - start) / step + 1e-6) + 1 if end >= start else 0):
        t = start + k * step + 1e-9
        for i, r in enumerate(rows):
            while at[i] + 1 < len(r) and r[at[i] + 1][0] <= t:
                at[i] += 1
        out.append(sum(r[at[i]][2] for i, r in enumerate(rows)))
    return out


def beside(engine, info):
    """What an engine's process held beside its KV cache in each of its
    samples: PyTorch's reserved memory, less the KV tensors where they are
    in it (static's; kvshim's pages are not PyTorch's). info: its READY
    line's figures."""
    less = 0 if info.get("kvshim") else info.get("kv_tensor_bytes", 0)
    return [x[2] - less for x in engine.get("samples", ()) if len(x) > 2]


def widest_read(*graph_lists):
    """The widest KV read (the key's second field) of the CUDA graphs in
    graph_lists ((start, seconds, key) lists, None where not counted), or
    None where no graph has a key."""
    reads = [g[2][1] for gs in graph_lists for g in gs or ()
             if len(g) > 2 and g[2] and len(g[2]) > 1]
    return max(reads) if reads else None


def beside_of(res, run, name):
    """An engine's memory beside its KV cache in a replay (beside), with
    the warm-up's (res["warmup_beside"]): {start, most, warmup_first,
    warmup_last, widest, graphs}, or None without samples."""
    b = beside(run["engines"][name], res["engines"][name])
    if not b:
        return None
    w = (res.get("warmup_beside") or {}).get(name) or (None, None)
    warm = (res.get("warmup_graphs") or {}).get(name)
    graphs = run["engines"][name].get("graphs")
    return {"start": b[0], "most": max(b), "warmup_first": w[0], "warmup_last": w[1],
            "widest": widest_read(warm, graphs),
            "graphs": None if graphs is None else len(graphs) + len(warm or ())}


def summarize(results, traces):
    """Per trace, per configuration and model: the table's figures. And
    whether all requests completed and the budget held."""
    table, ok = {}, True
    for tr in traces:
        label = tr["label"]
        for cname, res in results.items():
            run = res["runs"].get(label)
            if run is None:
                continue
            for name in ORDER + ("all",):
                engines = ORDER if name == "all" else (name,)
                rows = [r for n in engines for r in run["engines"][n]["requests"]]
                good = [r for r in rows if served(r)]
                bad = len(rows) - len(good)
                ok &= bad == 0
                ttft = [r["ttft"] for r in good]
                ended = [r for r in good if r["done_at"] is not None]
                waits = [r["wait"] for r in good if r["wait"] is not None]
                toks = sum(r["tokens"] for r in good)
                span = max([r["done_at"] for r in good] or [1]) - min([r["t"] for r in rows] or [0])
                peak_kv = sum(max(s[1] for s in run["engines"][n]["samples"]) for n in engines)
                # static: the KV cache is part of PyTorch's reserved memory
                peak_proc = sum(max(s[2] + (s[1] if res["engines"][n]["kvshim"] else 0)
                                    for s in run["engines"][n]["samples"]) for n in engines)
                steps = [st for n in engines for st in run["engines"][n].get("steps", ())]
                tracker = [run["engines"][n].get("kvshim_tracker") or {} for n in engines]
                # one engine's means over its own samples (none for "all":
                # the engines' samples cover different windows)
                packing = in_use(run["engines"][name]) \
                    if name in ORDER and res["mode"] == "kvshim" else None
                said = stated(run.get("held"), (run.get("pids") or {}).get(name)) \
                    if packing else None
                table[(label, cname, name)] = {
                    "long_steps": long_steps(run["engines"], name) if name in ORDER else None,
                    "pauses": step_pauses(run["engines"][name]) if name in ORDER else None,
                    "graph_steps": graph_steps(run["engines"][name]) if name in ORDER else None,
                    "heavy_steps": heavy_steps(run["engines"][name]) if name in ORDER else None,
                    "sched_split": sched_split(run["engines"][name]) if name in ORDER else None,
                    "kv_ahead": tuple(sum(x.get(k, 0) for x in tracker)
                                      for k in ("taken", "ahead_hits", "ahead_busy",
                                                "ahead_waited")),
                    "kv_pages_mean": packing[0] if packing else None,
                    "kv_demand_mean": said[0] if said else None,
                    "kv_idle_mean": said[1] if said else None,
                    "kv_unused_mean": said[2] if said else None,
                    "kv_blocks_mean": packing[1] if packing else None,
                    "kv_waiting": held_while_waiting(run["engines"][name]) if packing else None,
                    "steps": len(steps),
                    "step_p50": pct([st[2] for st in steps], 50),
                    "step_p99": pct([st[2] for st in steps], 99),
                    "step_max": max([st[2] for st in steps] or [float("nan")]),
                    "sched_p50": pct([st[1] for st in steps], 50),
                    "sched_p99": pct([st[1] for st in steps], 99),
                    "sched_max": max([st[1] for st in steps] or [float("nan")]),
                    "wait_p99": pct(waits, 99),
                    "prefill_p99": pct([r["ttft"] - r["wait"] for r in good
                                        if r["wait"] is not None], 99),
                    # admission to first token (TTFT less the queue wait;
                    # one started again after its first token left out)
                    "admitted": [r["ttft"] - r["wait"] for r in good
                                 if r["wait"] is not None and r["wait"] <= r["ttft"]],
                    "kv_slow": sum(x.get("slow", 0) for x in tracker),
                    "kv_worst": max([x.get("worst", 0.0) for x in tracker] or [0.0]),
                    "kv_busy": sum(x.get("busy", 0.0) for x in tracker),
                    "kv_retries": sum(x.get("retries", 0) for x in tracker),
                    "kv_short": sum(x.get("short", 0) for x in tracker),
                    "kv_capped": sum(x.get("capped", 0) for x in tracker),
                    "kv_worst_in": max(tracker, key=lambda x: x.get("worst", 0.0),
                                       default={}).get("worst_in") or "-",
                    "kv_asks": {k: sum(x.get(k, 0) for x in tracker)
                                for k in ("asks", "asked_s", "no_page", "kept_out",
                                          "unused_pages", "moved", "packed_pages", "to_cpu",
                                          "started_over", "evicted_untold")},
                    "kv_ask_worst": max([x.get("ask_worst", 0.0) for x in tracker] or [0.0]),
                    "kv_waits": {k: sum((run["engines"][n].get("kvshim_waits") or {}).get(k, 0)
                                        for n in engines) for k in WAIT_FIGURES},
                    # batches run without a CUDA graph, those after which
                    # PyTorch's cache was given back, and the seconds of the
                    # steps they ran in
                    "kv_eager": (sum(x.get("eager", 0) for x in tracker),
                                 sum(x.get("cache_given_back", 0) for x in tracker),
                                 [e[1] for n in engines
                                  for e in run["engines"][n].get("eager_steps", ())]),
                    # (None: a library before session 34 counts none)
                    "kv_gate": None if any("kvshim_gate" not in run["engines"][n]
                                           for n in engines) else
                    {k: sum(run["engines"][n]["kvshim_gate"][k] for n in engines)
                     for k in GATE_FIGURES},
                    # (None: an engine whose adapter kept no tracker)
                    "kv_driver": None if any("kvshim_driver" not in run["engines"][n]
                                             for n in engines) else
                    {k: sum(run["engines"][n]["kvshim_driver"].get(k, 0) for n in engines)
                     for k in DRIVER_FIGURES},
                    "requests": len(rows), "failed": bad,
                    "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99),
                    # apart from the requests whose engine captured a CUDA
                    # graph while they waited (None: captures not counted)
                    "graph_waits": uncaptured(run["engines"], engines),
                    "graphs": run["engines"][name].get("graphs") if name in ORDER else None,
                    # the longest three, (TTFT s, arrival s): what a p99 of a few
                    # dozen requests is made of
                    # and the seconds of CUDA graphs its engine captured
                    # from its arrival to its first token (None: not counted)
                    "worst": [w + (captured(run["engines"][w[2]], w[1], w[1] + w[0]),)
                              for w in sorted(((r["ttft"], r["t"], n) for n in engines
                                               for r in run["engines"][n]["requests"]
                                               if served(r)), reverse=True)[:WORST]],
                    # end to end: arrival to last token; a request whose
                    # (last) start came after its first token was preempted
                    # and started again
                    "e2e_p50": pct([r["done_at"] - r["t"] for r in ended], 50),
                    "e2e_p99": pct([r["done_at"] - r["t"] for r in ended], 99),
                    "again": [r["done_at"] - r["t"] for r in ended
                              if r["wait"] is not None and r["wait"] > r["ttft"]],
                    "ttft_mean": statistics.fmean(ttft) if ttft else float("nan"),
                    "wait_mean": statistics.fmean(waits) if waits else float("nan"),
                    "tokens_s": toks / span if span > 0 else float("nan"),
                    "peak_kv": peak_kv, "peak_proc": peak_proc,
                    # beside the KV cache: at the replay's start and at most
                    # in it, after the warm-up (first and last), and the
                    # widest KV read its graphs of the warm-up and the
                    # replay captured (None: no samples, or "all")
                    "beside": beside_of(res, run, name) if name in ORDER else None,
                    "preempted": sum(run["engines"][n].get("kvshim_preempted", 0) for n in engines)}
            together = summed_in_use([run["engines"][n] for n in ORDER])
            if together:
                table[(label, cname, "blocks")] = {
                    "p50": pct(together, 50), "p99": pct(together, 99), "peak": max(together),
                    "kv": sum(max(s[1] for s in run["engines"][n]["samples"]) for n in ORDER)
                    if res["mode"] == "static" else res["budget"]}
            if run["gpu_used"]:
                table[(label, cname, "gpu")] = {"peak_used": max(g[1] for g in run["gpu_used"])}
            if run["held"]:
                over = [h for h in run["held"] if h[1] > h[2]]
                table[(label, cname, "held")] = {"peak_held": max(h[1] for h in run["held"]),
                                                 "budget": run["held"][0][2], "over": len(over)}
                ok &= not over
            elif res["mode"] == "kvshim":
                # sharing ran but its segment was never read: the budget
                # cannot be said to have held
                print("colocate: %s, %s: the shared segment was never read" % (cname, label))
                ok = False
    return table, ok


def uncaptured(engines, names):
    """Of the served requests of the engines names (engines: {name: its
    results}): (how many had their engine capturing a CUDA graph at some
    time between their arrival and their first token; the p99 TTFT of the
    others), or None where an engine's captures were not counted."""
    if any(engines[n].get("graphs") is None for n in names):
        return None
    rows = [(n, r) for n in names for r in engines[n]["requests"] if served(r)]
    waits = [waited(engines[n], r) for n, r in rows]
    return (sum(waits), pct([r["ttft"] for (n, r), w in zip(rows, waits) if not w], 99))


def waited(engine, r):
    """Whether served request r's engine was capturing a CUDA graph at some
    time between its arrival and its first token (its captures counted)."""
    return captured(engine, r["t"], r["t"] + r["ttft"]) > 0


def untouched(replays, names):
    """Of the requests of the engines names, those served in every one of
    replays (each {name: its engine's results}: one trace's replays by the
    configurations compared) whose own engine was capturing a CUDA graph at
    no time between their arrival and their first token in any of them
    (see waited): the same requests in every replay, {(name, id)}. None
    where an engine's captures were not counted. (A capture falls on
    whichever requests' batches meet a new shape: the p99 apart from each
    replay's own captures may leave out a burst's requests in one
    configuration and keep them in the other.)"""
    keep = None
    for engines in replays:
        if any(engines[n].get("graphs") is None for n in names):
            return None
        ok = {(n, r["id"]) for n in names for r in engines[n]["requests"]
              if served(r) and not waited(engines[n], r)}
        keep = ok if keep is None else keep & ok
    return keep


def p99_of(engines, names, keep):
    """The p99 TTFT of the requests keep ({(name, id)}) of the engines
    names."""
    return pct([r["ttft"] for n in names for r in engines[n]["requests"]
                if (n, r["id"]) in keep], 99)


def p99s_untouched(results, labels, configs):
    """For one trace's replays labels that every configuration in configs
    ran: per model and all, the p99 TTFT of the requests no replay of any
    of them waited on a capture for (untouched), each configuration's
    replays in labels' order, and how many requests that is (None for a
    model none of whose requests is left). Returns {name: ({config: [p99,
    ...]}, requests) or None}, or None where captures were not counted."""
    out = {}
    runs = {(c, lb): results[c]["runs"][lb]["engines"] for c in configs for lb in labels}
    for name in ORDER + ("all",):
        names = ORDER if name == "all" else (name,)
        keep = untouched(list(runs.values()), names)
        if keep is None:
            return None
        out[name] = ({c: [p99_of(runs[(c, lb)], names, keep) for lb in labels]
                      for c in configs}, len(keep)) if keep else None
    return out


PAIR_S = 0.15   # two engines' captures this close in a trace's time: most likely one shape


def paired_captures(ours, theirs):
    """The time of each CUDA graph capture in ours over that of the one in
    theirs it pairs with ((start, seconds[, key]) lists, from the trace's
    start):
    two that began within PAIR_S of each other, each the only one of its
    list that near the other (two engines of one model replaying one trace
    meet a new batch shape at about the same time). None where either
    engine's captures were not counted."""
    if ours is None or theirs is None:
        return None
    out = []
    for t, sec, *_ in theirs:
        near = [g for g in ours if abs(g[0] - t) < PAIR_S]
        if len(near) == 1 and sec > 0 and \
                sum(1 for g in theirs if abs(g[0] - near[0][0]) < PAIR_S) == 1:
            out.append(near[0][1] / sec)
    return out


def ratio(table, label, cname, name, key="ttft_p99"):
    """Static p99 over configuration cname's, for one model of a trace (key:
    which p99, TTFT's by default)."""
    st, t = table.get((label, "static", name)), table.get((label, cname, name))
    if not st or not t or not t[key] > 0:
        return float("nan")
    return st[key] / t[key]


def cells(table, label, results, names=ORDER):
    """(model, configuration, its figures) of trace label, model by model
    in names, each in the configurations' order, where it has figures."""
    for name in names:
        for cname in results:
            t = table.get((label, cname, name))
            if t is not None:
                yield name, cname, t


def print_tables(table, traces, results, args):
    for tr in traces:
        label = tr["label"]
        print("\ntrace %s: rate %s requests/s in a model's hot phase (%.2f/s otherwise), seed %d, "
              "phases of %.0f s; static KV budget %.1f GiB, kvshim floors %.1f GiB, %s; prefix "
              "cache %s; CUDA graphs %s" % (
                  label, tr["rate"], args.cold_rate, tr["seed"], tr["phase"], args.budget_gib,
                  args.floor_gib, "weights " + ", ".join("%s %d" % (n, args.weight_of[n])
                                                         for n in ORDER)
                  if args.weight_of else "equal weights", "on" if args.prefix_cache else "off",
                  "on" if args.cuda_graphs else "off"))
        print("(model all: every request; its peaks are sums of the engines' peaks)")
        print("| model | config | requests | failed | TTFT p50 s | TTFT p99 s | p99 static/config "
              "| mean queue wait s | tokens/s | peak KV MiB | peak process MiB | preempted |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, cname, t in cells(table, label, results, ORDER + ("all",)):
            r = ratio(table, label, cname, name)
            r = "-" if cname == "static" or r != r else "%.2fx" % r
            print("| %s | %s | %d | %d | %.3f | %.3f | %s | %.3f | %.0f | %.0f | %.0f | %d |" % (
                name, cname, t["requests"], t["failed"], t["ttft_p50"], t["ttft_p99"], r,
                t["wait_mean"], t["tokens_s"], t["peak_kv"] / MIB, t["peak_proc"] / MIB,
                t["preempted"]))
        print("\nthe longest TTFTs, trace %s: each model's %d longest in seconds, with when "
              "the request arrived (s from the trace's start) and, where its engine captured "
              "CUDA graphs between its arrival and its first token (begun before too), their "
              "seconds (a graph for a "
              "batch shape not in transformers' graph cache: an eager forward, then the "
              "capture); with 101 requests a model or fewer, its p99 lies between the longest "
              "two" % (label, WORST))
        print("| model | config | longest TTFTs s (arrival s; graphs captured s) |")
        print("|---|---|---|")
        for name, cname, t in cells(table, label, results):
            print("| %s | %s | %s |" % (name, cname, ", ".join(
                "%.3f (%.2f%s)" % (w[0], w[1], "; %.3f" % w[3] if w[3] else "")
                for w in t["worst"])))
        print("\nadmitted, then waiting, trace %s: the requests whose first token came more than "
              "%.1f s after their engine admitted them (TTFT less the queue wait; those started "
              "again after their first token left out), how many and the longest (an admitted "
              "request waits for the scheduler's budget per batch, which under kvshim may be "
              "below what the admitted requests read: docs/BENCHMARKS.md, session 34)"
              % (label, ADMITTED_S))
        print("| model | config | requests | over %.1f s after admission | longest s |"
              % ADMITTED_S)
        print("|---|---|---|---|---|")
        for name, cname, t in cells(table, label, results, ORDER + ("all",)):
            a = t["admitted"]
            print("| %s | %s | %d | %d | %s |" % (
                name, cname, len(a), sum(x > ADMITTED_S for x in a),
                "%.3f" % max(a) if a else "-"))
        print("\nCUDA graphs, trace %s: the requests whose engine was capturing a graph "
              "at some time between their arrival and their first token (a capture begun "
              "before their arrival too), and the p99 TTFT of the others "
              "against the p99 of all (a capture is transformers' doing, alike in every "
              "configuration: it falls on whichever requests' batches meet a shape not in its "
              "graph cache)" % label)
        print("| model | config | requests | waited on a capture | TTFT p99 s | p99 of the others s "
              "| others' p99 static/config |")
        print("|---|---|---|---|---|---|---|")
        for name, cname, t in cells(table, label, results, ORDER + ("all",)):
            g, st = t["graph_waits"], table.get((label, "static", name), {}).get("graph_waits")
            if g is None:
                print("| %s | %s | %d | - | %.3f | - | - |" % (name, cname, t["requests"],
                                                              t["ttft_p99"]))
                continue
            r = "-" if cname == "static" or not st or not st[1] == st[1] or not g[1] > 0 \
                else "%.2fx" % (st[1] / g[1])
            print("| %s | %s | %d | %d | %.3f | %.3f | %s |" % (
                name, cname, t["requests"], g[0], t["ttft_p99"], g[1], r))
        print("\ncaptures beside static's, trace %s: the CUDA graphs each engine captured within "
              "%.2f s of the trace's time of one static's engine of its model captured, each the "
              "only one of its engine that near the other (most likely the same batch shape): "
              "how many static's engine captured, how many paired, and each pair's capture time "
              "over static's, median [least, most] (a capture beside driver calls of its process "
              "runs longer: docs/BENCHMARKS.md, session 24)" % (label, PAIR_S))
        print("| model | config | static's captures | paired | capture time / static's |")
        print("|---|---|---|---|---|")
        for name, cname, t in cells(table, label, results):
            st = table.get((label, "static", name), {}).get("graphs")
            pairs = paired_captures(t["graphs"], st)
            if cname == "static" or pairs is None:
                continue
            print("| %s | %s | %d | %d | %s |" % (
                name, cname, len(st), len(pairs), "%.2fx [%.2f, %.2f]" % (
                    pct(pairs, 50), min(pairs), max(pairs)) if pairs else "-"))
        print("\ncaptures at kvshim's fence, trace %s: the stream captures of each kvshim "
              "engine's process (its CUDA graphs) whose begin waited for a fence of kvshim's "
              "in progress (a context-wide wait for the work queued before it, made before "
              "pages leave a span, which no capture may run beside), how many and their wait "
              "in all, beside the graphs the engine captured in the replay" % label)
        print("| model | config | graphs captured | began after a fence | their wait s |")
        print("|---|---|---|---|---|")
        for name, cname, t in cells(table, label, results):
            g = t.get("kv_gate")
            if g is None:
                continue
            print("| %s | %s | %s | %d | %.3f |" % (
                name, cname, len(t["graphs"]) if t["graphs"] is not None else "-",
                g["capture_gate_waits"], g["capture_gate_wait_ns"] / 1e9))
        graph_keys(table, label, results, not (args.alternate and tr.get("round")))
        print("\nend to end, trace %s: each request from its arrival (its time in the trace) to "
              "its last token, in seconds (a model's latency follows its steps, which run beside "
              "the other engines' batches, as well as its queue); and the requests preempted after "
              "their first token and started again, how many, and the longest of them (those "
              "transformers started over, whose last start is after their first token; one it "
              "moved to the CPU and back may not say so)" % label)
        print("| model | config | latency p50 s | latency p99 s | p99 static/config "
              "| started again | their longest s |")
        print("|---|---|---|---|---|---|---|")
        for name, cname, t in cells(table, label, results, ORDER + ("all",)):
            r = ratio(table, label, cname, name, "e2e_p99")
            r = "-" if cname == "static" or r != r else "%.2fx" % r
            print("| %s | %s | %.2f | %.2f | %s | %d | %s |" % (
                name, cname, t["e2e_p50"], t["e2e_p99"], r, len(t["again"]),
                "%.2f" % max(t["again"]) if t["again"] else "-"))
        print("\nwhere the time goes, trace %s: engine steps (each batch: scheduling it, which "
              "under kvshim holds the adapter's checks and maps, then running it), queue wait and "
              "prefill (TTFT less the wait) at p99, and the adapter's calls (slow: over %.0f ms); "
              "the slowest step is often a batch shape the machine runs for the first time, "
              "whose kernels load or compile then (0.5 to 1 s on a fresh machine)"
              % (label, SLOW_MS))
        print("| model | config | steps | step p50 ms | step p99 ms | step max ms | sched p50 ms "
              "| sched p99 ms "
              "| sched max ms | wait p99 s | prefill p99 s | kvshim calls slow | kvshim worst ms "
              "| kvshim busy s | retries | short | capped |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, cname, t in cells(table, label, results):
            kv = results[cname]["mode"] == "kvshim"
            print("| %s | %s | %d | %.1f | %.1f | %.0f | %.2f | %.2f | %.1f | %.3f | %.3f "
                  "| %s | %s | %s | %s | %s | %s |" % (
                      name, cname, t["steps"], 1e3 * t["step_p50"], 1e3 * t["step_p99"],
                      1e3 * t["step_max"], 1e3 * t["sched_p50"], 1e3 * t["sched_p99"],
                      1e3 * t["sched_max"],
                      t["wait_p99"], t["prefill_p99"],
                      t["kv_slow"] if kv else "-", "%.1f" % (1e3 * t["kv_worst"]) if kv else "-",
                      "%.2f" % t["kv_busy"] if kv else "-", t["kv_retries"] if kv else "-",
                      t["kv_short"] if kv else "-", t["kv_capped"] if kv else "-"))
        print("\nlong steps, trace %s: each engine's steps over %.0f times its median step, "
              "and the medians of the other engines' steps that ran beside them (batches "
              "overlapping in time), in brackets those engines' medians over the replay (a "
              "request that does not queue may still wait behind a long step); and the CUDA "
              "graphs the engine captured in the replay, and its long steps that captured one"
              % (label, LONG_STEP))
        print("| model | config | long steps | long p50 ms | %s | graphs captured "
              "| long steps capturing |" % " | ".join("%s beside ms" % n for n in ORDER))
        print("|---|---|---|---|%s---|---|" % ("---|" * len(ORDER)))
        for name, cname, t in cells(table, label, results):
            if t["long_steps"] is None:
                continue
            n, mid, beside = t["long_steps"]
            g = t["graph_steps"] or ("-", "-")
            print("| %s | %s | %d | %s | %s | %s | %s |" % (
                name, cname, n, "%.0f" % (1e3 * mid) if n else "-", " | ".join(
                    "-" if o not in beside else "%s (%.1f)" % (
                        "-" if beside[o][0] != beside[o][0] else "%.1f" % (1e3 * beside[o][0]),
                        1e3 * beside[o][1]) for o in ORDER), g[0], g[1]))
        print("\npauses between steps, trace %s: each engine's pauses over %.0f ms between one "
              "batch's end and its next step's start while it had a request in flight "
              "(transformers' update of the batch and its loop, and whatever call of its process "
              "they wait on; on an H200 a kvshim engine paused 0.16 s while its process gained "
              "pages: docs/BENCHMARKS.md, session 35): how many, the longest and when (s from "
              "the trace's start), and their seconds in all" % (label, 1e3 * PAUSE_S))
        print("| model | config | pauses | longest s (at s) | in all s |")
        print("|---|---|---|---|---|")
        for name, cname, t in cells(table, label, results):
            if t.get("pauses") is None:
                continue
            ps = t["pauses"]
            worst = max(ps, key=lambda x: x[1]) if ps else None
            print("| %s | %s | %d | %s | %.3f |" % (
                name, cname, len(ps), "%.3f (%.2f)" % (worst[1], worst[0]) if worst else "-",
                sum(x[1] for x in ps)))
        print("\nscheduling a prefill, trace %s: each engine's heavy steps (batches that ran "
              "over %.0f times its median step: most hold a prefill), the scheduling before them "
              "at p50 and p90, and under kvshim the adapter's calls to its tracker in it (kvshim's "
              "calls, its maps included; the adapter's other work, such as its retries' sleeps, "
              "is in the rest, with transformers' own scheduling), against the scheduling "
              "before its other steps; and under kvshim the blocks the engine was handed over "
              "the replay, how many of them the adapter had backed ahead, the seconds its "
              "thread spent backing blocks ahead, and the seconds it waited first for CUDA graph "
              "captures of its engine to end (a map beside a capture slows it)"
              % (label, HEAVY_STEP))
        print("| model | config | heavy steps | sched p50 ms | sched p90 ms | kvshim p50 ms "
              "| kvshim p90 ms | other steps' sched p50 ms | blocks handed out | backed ahead "
              "| ahead thread s | ahead waited for captures s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        ms = lambda x: "-" if x != x else "%.1f" % (1e3 * x)
        for name, cname, t in cells(table, label, results):
            if t["heavy_steps"] is None:
                continue
            n, p50, p90, k50, k90, other = t["heavy_steps"]
            taken, hits, busy, waited = t["kv_ahead"]
            kv = results[cname]["mode"] == "kvshim"
            print("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                name, cname, n, ms(p50), ms(p90), ms(k50), ms(k90), ms(other),
                taken if kv else "-", hits if kv else "-", "%.2f" % busy if kv else "-",
                "%.2f" % waited if kv else "-"))
        print("\nscheduling split, trace %s: each engine's scheduling a step, mean ms, over all "
              "its steps and over its heavy steps (as above), and under kvshim that scheduling "
              "split into transformers' own pass (kvshim's calls from its block manager, its "
              "maps among them, included) and the adapter's work around it (its checks, demand "
              "and asks, kvshim's other calls, its retries' sleeps, the look at the ids to map "
              "ahead); static's is transformers' alone; '-' where the run recorded no split "
              "(before session 53)" % label)
        print("| model | config | steps | sched ms | in transformers' pass ms | around it ms "
              "| heavy steps | their sched ms | in transformers' pass ms | around it ms |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, cname, t in cells(table, label, results):
            if not t.get("sched_split"):
                continue
            n, sched, inner, outer, hn, hsched, hinner, houter = t["sched_split"]
            print("| %s | %s | %d | %s | %s | %s | %d | %s | %s | %s |" % (
                name, cname, n, ms2(sched), ms2(inner), ms2(outer), hn, ms2(hsched),
                ms2(hinner), ms2(houter)))
        kv_table(table, label, results,
                 "maps that waited for other processes, trace %s: how many, how long in all, "
                 "how many waited for pages others use (above their share), how many gave up; "
                 "and the adapter's slowest call" % label,
                 ("waits", "waited s", "for pages in use", "gave up", "slowest call"),
                 lambda t: ("%d" % t["kv_waits"]["share_waits"],
                            "%.2f" % (t["kv_waits"]["share_wait_ns"] / 1e9),
                            "%d" % t["kv_waits"]["share_waits_used"],
                            "%d" % t["kv_waits"]["share_waits_failed"], t["kv_worst_in"]))
        kv_table(table, label, results,
                 "batches without a CUDA graph, trace %s: the batches each engine ran without "
                 "one (reading more than its share of the budget, its bound raised for a "
                 "starving request: docs/BENCHMARKS.md, session 41), those after which "
                 "PyTorch's reserved memory fell (its cache given back, unless "
                 "KVSHIM_CB_GIVE_BACK=off: session 42), and the steps they ran in: how many, "
                 "their median and longest seconds, against the median of all its steps" % label,
                 ("batches", "cache given back", "steps", "their p50 s", "their longest s",
                  "all steps' p50 s"),
                 lambda t: ("%d" % t["kv_eager"][0], "%d" % t["kv_eager"][1],
                            "%d" % len(t["kv_eager"][2]),
                            "%.3f" % pct(t["kv_eager"][2], 50) if t["kv_eager"][2] else "-",
                            "%.3f" % max(t["kv_eager"][2]) if t["kv_eager"][2] else "-",
                            "%.3f" % t["step_p50"] if t["step_p50"] == t["step_p50"] else "-"))
        kv_table(table, label, results,
                 "driver calls on physical pages, trace %s: over the replay, in the engine's "
                 "whole process (its thread, the adapter's thread mapping ahead and kvshim's "
                 "worker), the pages kvshim created, mapped, unmapped, released and zeroed, "
                 "the seconds each took and their sum, and the pages created per block the "
                 "engine was handed (a block on a page it already holds needs none; a page "
                 "given back to the budget is created anew when a block needs it again)" % label,
                 ("created", "mapped", "unmapped", "released", "zeroed", "create s", "map s",
                  "unmap s", "release s", "zero s", "driver s", "created per block"),
                 driver_row)
        kv_table(table, label, results,
                 "asks to give back, trace %s: how often kvshim began to ask the engine for "
                 "blocks it uses, how long the asks lasted in all and at most, the passes whose "
                 "waiting requests an ask kept out, and the asks in which a pass found no page to "
                 "empty (with two requests or more, none that preempting fewer than all of them "
                 "would empty); the page indices only prefix-cache blocks claimed (unused) "
                 "that the asks had it release; and, packing, the blocks in use it moved and the "
                 "page indices that emptied" % label,
                 ("asks", "asked s", "longest s", "passes kept out", "no page", "unused pages",
                  "blocks moved", "pages emptied by moving"),
                 lambda t: ("%d" % t["kv_asks"]["asks"], "%.2f" % t["kv_asks"]["asked_s"],
                            "%.2f" % t["kv_ask_worst"], "%d" % t["kv_asks"]["kept_out"],
                            "%d" % t["kv_asks"]["no_page"],
                            "%d" % t["kv_asks"].get("unused_pages", 0),
                            "%d" % t["kv_asks"].get("moved", 0),
                            "%d" % t["kv_asks"].get("packed_pages", 0)))
        kv_table(table, label, results,
                 "evictions, trace %s: the requests transformers evicted, for kvshim's asks or "
                 "its own, by how (read from its request states as its source around 5.17 keeps "
                 "them): their cache moved to the CPU (back when all of its blocks fit at once), "
                 "requeued to start over (at the back of the queue, what they generated to "
                 "prefill again), or neither shown" % label,
                 ("to the CPU", "started over", "not told"),
                 lambda t: ("%d" % t["kv_asks"].get("to_cpu", 0),
                            "%d" % t["kv_asks"].get("started_over", 0),
                            "%d" % t["kv_asks"].get("evicted_untold", 0)))
        kv_table(table, label, results,
                 "KV pages against blocks in use, trace %s: the KV pages each engine holds "
                 "(idle ones included) and the blocks its requests hold (the cache's blocks "
                 "less the engine's free count, in which the prefix cache's count as free), "
                 "means over its samples of the replay (every 100 ms, until its results are "
                 "in), and pages over blocks: a page goes back only when all of its blocks are "
                 "free; and from the shared segment's samples (every 50 ms from the trace's "
                 "start), the means of what it stated it waited for (demand: requests waiting "
                 "and its cushion), of its idle pages (mapped nowhere or claimed by no block) "
                 "and of the pages it stated unused (only its prefix cache's blocks, or those "
                 "packing would empty)" % label,
                 ("KV pages held MiB", "blocks in use MiB", "pages / blocks", "demand MiB",
                  "idle MiB", "unused MiB"),
                 lambda t: ("-",) * 6 if t["kv_pages_mean"] is None else (
                     "%.0f" % (t["kv_pages_mean"] / MIB), "%.0f" % (t["kv_blocks_mean"] / MIB),
                     "%.2fx" % (t["kv_pages_mean"] / t["kv_blocks_mean"])
                     if t["kv_blocks_mean"] > 0 else "-") + tuple(
                     "-" if t.get(k) is None else "%.0f" % (t[k] / MIB)
                     for k in ("kv_demand_mean", "kv_idle_mean", "kv_unused_mean")))
        kv_table(table, label, results,
                 "KV pages held while requests waited, trace %s: over each engine's samples "
                 "(every 100 ms) in which requests of its waited for admission, how many, and "
                 "the means of its KV pages (as kvshim counts them), of the blocks its requests "
                 "held, of its prefix cache's blocks (free to the engine, their pages held), of "
                 "the free ids on the pages it holds (handing them out maps nothing), of the "
                 "blocks backed ahead for its next prefill (among those free ids), of kvshim's "
                 "pool of ready pages and its cached pages (no block on them), of the rest (the "
                 "padding zone's rows, pages being mapped or unmapped, a batch backed ahead not "
                 "taken in yet), of the free blocks the engine was shown (what it admits with) "
                 "and of the demand it stated (runs before session 46: none)" % label,
                 ("samples", "KV pages held MiB", "blocks in use MiB", "prefix cache MiB",
                  "free on its pages MiB", "backed ahead MiB", "pool MiB", "cached MiB",
                  "the rest MiB", "shown free MiB", "demand MiB"),
                 waiting_row)
        together = [(c, table[(label, c, "blocks")]) for c in results
                    if (label, c, "blocks") in table]
        if together:
            print("\nblocks in use by the three engines together, trace %s: the sum of each "
                  "engine's blocks in use (its latest sample, on a 100 ms grid while all three "
                  "have samples), against the KV memory the configuration had (static: the "
                  "engines' caches; kvshim: its budget); static's peak is the most its "
                  "requests held at one moment" % label)
            print("| config | p50 MiB | p99 MiB | peak MiB | KV memory MiB |")
            print("|---|---|---|---|---|")
            for c, b in together:
                print("| %s | %.0f | %.0f | %.0f | %.0f |" % (
                    c, b["p50"] / MIB, b["p99"] / MIB, b["peak"] / MIB, b["kv"] / MIB))
        beside_table(table, label, results)
        used = ["%s %.0f MiB" % (c, table[(label, c, "gpu")]["peak_used"] / MIB)
                for c in results if (label, c, "gpu") in table]
        if used:
            print("GPU memory used at most (nvidia-smi, every 500 ms): " + ", ".join(used))
        for c in results:
            h = table.get((label, c, "held"))
            if h:
                print("%s: shared segment held at most %.0f MiB of a %.0f MiB budget; samples "
                      "over it: %d" % (c, h["peak_held"] / MIB, h["budget"] / MIB, h["over"]))
        read_caps(label, results)


def read_caps(label, results):
    """Where an engine's read bound followed its share of the budget (the
    adapter's follow_share): the bounds its samples saw, and how often;
    printed."""
    for c, res in results.items():
        engines = res.get("runs", {}).get(label, {}).get("engines", {})
        seen = []
        for name in ORDER:
            caps = engines.get(name, {}).get("read_caps")
            if not caps:
                continue
            n = sum(caps.values())
            seen.append("%s %s" % (name, ", ".join(
                "%s (%.0f%%)" % (k, 100.0 * v / n) for k, v in
                sorted(caps.items(), key=lambda x: -x[1]))))
        if seen:
            print("%s: the most KV tokens one batch read, following each engine's share of the "
                  "budget (KVSHIM_CB_READ_TOKENS=auto), in its samples every 100 ms: %s"
                  % (c, "; ".join(seen)))


def beside_table(table, label, results):
    """Each engine's memory beside its KV cache (beside_of), where the
    engines sampled it; printed."""
    rows = [(n, c, t["beside"]) for n, c, t in cells(table, label, results) if t.get("beside")]
    if not rows:
        return
    print("\nbeside the KV cache, trace %s: what each engine's process held beside its KV "
          "cache (PyTorch's reserved memory, less the KV tensors where they are in it: "
          "static's; kvshim's pages are not PyTorch's), from its samples every 100 ms: as "
          "the warm-up began and ended (with --warmup), as the replay began and at most in "
          "it, that most over the static engine's of the model, and the widest KV read of "
          "the CUDA graphs it captured in the warm-up and the replay, and how many (it "
          "grows in steps at captures of new keys: docs/BENCHMARKS.md, session 29); the "
          "whole GPU's is below (nvidia-smi)" % label)
    print("| model | config | warm-up's start MiB | after it MiB | replay's start MiB "
          "| replay's most MiB | over static's MiB | widest read captured | graphs |")
    print("|---|---|---|---|---|---|---|---|---|")
    mib = lambda v: "-" if v is None else "%.0f" % (v / MIB)
    for name, cname, b in rows:
        st = (table.get((label, "static", name)) or {}).get("beside")
        print("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            name, cname, mib(b["warmup_first"]), mib(b["warmup_last"]), mib(b["start"]),
            mib(b["most"]), "-" if cname == "static" or not st else
            "%+.0f" % ((b["most"] - st["most"]) / MIB),
            "-" if b["widest"] is None else "%d" % b["widest"],
            "-" if b["graphs"] is None else "%d" % b["graphs"]))


# the sweep's budgets run again with a setting changed (--sweep-unreserved,
# --sweep-nocushion, --sweep-idle, --sweep-starved, --sweep-reads): the configuration's name,
# and what the tables say
SWEEP_VARIANTS = (("unreserved", "without the reserve"), ("nocushion", "without the cushion"),
                  ("idle", "with the idle cushion"),
                  ("starved", "with the starvation guard at --starved-ms"),
                  ("reads", "with each engine's read budget at its static share's"))


def is_sweep(cname):
    """Whether configuration cname is one of the sweep's budgets."""
    return cname.startswith(("kvshim@", "packed@") + tuple(v + "@" for v, _ in SWEEP_VARIANTS))


def sweep_variant(cname):
    """The variant (SWEEP_VARIANTS' name) sweep configuration cname runs,
    or None for kvshim's own."""
    return next((v for v, _ in SWEEP_VARIANTS if cname.startswith(v + "@")), None)


def targets(table, traces, results, args):
    """Issue 13's table (static p99 / kvshim p99 per model), the targets
    checked, and the sweep's smallest budget. Returns the summary (JSON)."""
    out = {"traces": {}, "sweep": None}
    tol = 1.0 + args.tolerance
    if "static" not in results:
        print("\nsummary: none (no static split in --configs to compare with)")
        out["repeats"] = out["repeats_apart"] = out["repeats_common"] = {}
        return out
    if "kvshim" not in results:
        print("\nsummary: none against kvshim (not in --configs; the spread tables below "
              "compare the others with static)")
    else:
        print("\nsummary: p99 TTFT, static split at %.1f GiB against kvshim at %.1f GiB "
              "(a model meets the static split when static/kvshim >= %.2f)" % (
                  args.budget_gib, args.budget_gib, 1 / tol))
        print("| trace | rate | model | static p99 s | kvshim p99 s | static / kvshim |")
        print("|---|---|---|---|---|---|")
    for tr in traces:
        label = tr["label"]
        if (label, "kvshim", "all") not in table or (label, "static", "all") not in table:
            continue
        worst = min(ratio(table, label, "kvshim", n) for n in ORDER)
        overall = ratio(table, label, "kvshim", "all")
        for name in ORDER + ("all",):
            print("| %s | %s | %s | %.3f | %.3f | %.2fx |" % (
                label, tr["rate"], name, table[(label, "static", name)]["ttft_p99"],
                table[(label, "kvshim", name)]["ttft_p99"], ratio(table, label, "kvshim", name)))
        want = {3.0: 2.0, 4.0: 1.5}.get(float(tr["rate"]))
        out["traces"][label] = {"worst_model_ratio": worst, "overall_ratio": overall,
                                "every_model_at_or_below_static": worst * tol >= 1.0,
                                "overall_target": want,
                                "overall_met": None if want is None else overall >= want}
    for label, v in out["traces"].items():
        print("colocate: %s: every model at or below its static p99: %s (worst %.2fx); "
              "over all %.2fx%s" % (label, "yes" if v["every_model_at_or_below_static"] else "NO",
                                    v["worst_model_ratio"], v["overall_ratio"],
                                    "" if v["overall_target"] is None else
                                    " (target %.1fx: %s)" % (v["overall_target"],
                                                             "met" if v["overall_met"] else "NOT met")))
    out["repeats"] = repeats(table, traces, results)
    out["repeats_apart"] = repeats(table, traces, results, apart=True)
    out["repeats_common"] = repeats(table, traces, results, common=True)
    sweep = [c for c in results if is_sweep(c)]
    spread = {}
    for c in ("twin", "reads", "packed", "unpacked", "unreserved", "noahead", "nocushion",
              "idle", "keepcache", "starved", "kvpad", "staticpad") + tuple(sweep):
        if c in results:
            spread[c] = out["repeats_" + c] = repeats(table, traces, results, c)
            out["repeats_apart_" + c] = repeats(table, traces, results, c, apart=True)
            out["repeats_common_" + c] = repeats(table, traces, results, c, common=True)
    if "kvshim" in results and "twin" in results:
        out["parity"] = parity(table, traces, results)
        out["parity_apart"] = parity(table, traces, results, apart=True)
    if sweep:
        rows, smallest, smallest_of = [], None, {}
        for c in sorted(sweep, key=lambda c: results[c]["budget"]):
            labels = [tr["label"] for tr in traces if (tr["label"], c, "all") in table]
            # (a budget that skipped a replay, --deadline, is not said to meet;
            # a trace replayed more than once meets within static's spread)
            ran_meet = bool(labels) and all(
                spread[c][tr["base"]][n]["kvshim_median"] <= spread[c][tr["base"]][n][
                    "static_max"] * tol if tr["base"] in spread[c]
                else ratio(table, tr["label"], c, n) * tol >= 1.0
                for tr in traces if tr["label"] in labels for n in ORDER)
            skipped = len(results[c].get("skipped", []))
            meets = ran_meet and not skipped
            rows.append({"config": c, "budget_gib": results[c]["budget"] / GIB, "traces": labels,
                         "meets": meets, "met_on_replays_run": ran_meet, "replays_skipped": skipped,
                         "ratios": {lb: {n: ratio(table, lb, c, n) for n in ORDER + ("all",)}
                                    for lb in labels}})
            if meets and sweep_variant(c):
                smallest_of.setdefault(sweep_variant(c), results[c]["budget"] / GIB)
            elif meets:
                smallest = smallest or results[c]["budget"] / GIB
        print("\nbudget sweep: kvshim at each budget against the static split at %.1f GiB "
              "(per model static p99 / kvshim p99; a budget meets when every model does, "
              "within --tolerance, on every trace: a trace both replayed more than once by "
              "the median of its replays against static's most, as the spread table)"
              % args.budget_gib)
        print("| kvshim budget GiB | trace | small | medium | large | all | every model meets |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            for lb in r["traces"]:
                x = r["ratios"][lb]
                print("| %.2f%s | %s | %.2fx | %.2fx | %.2fx | %.2fx | %s |" % (
                    r["budget_gib"], " (%s)" % sweep_variant(r["config"])
                    if sweep_variant(r["config"]) else "", lb, x["small"], x["medium"],
                    x["large"], x["all"], "yes" if r["meets"] else
                    "no: %d replay%s skipped by --deadline (met on those it ran: %s)" % (
                        r["replays_skipped"], "s" * (r["replays_skipped"] != 1),
                        "yes" if r["met_on_replays_run"] else "no")
                    if r["replays_skipped"] else "no"))
        for what, b, kind in (("", smallest, ("kvshim@", "packed@")),) + tuple(
                (" " + said, smallest_of.get(v), v + "@") for v, said in SWEEP_VARIANTS):
            if any(r["config"].startswith(kind) for r in rows):
                part = [r["budget_gib"] for r in rows if r["config"].startswith(kind) and
                        r["met_on_replays_run"] and r["replays_skipped"]]
                print("colocate: smallest kvshim budget%s meeting the static %.1f GiB split's "
                      "per-model p99: %s%s" % (
                          what, args.budget_gib, "%.2f GiB" % b if b else "none of those tried",
                          "" if b or not part else " (%.2f GiB met on the replays it ran, but "
                          "--deadline skipped some: not judged)" % min(part)))
        # what no budget below can hold at once: static's requests' blocks at their peak
        held = {lb: table[(lb, "static", "blocks")]["peak"]
                for lb in sorted({lb for r in rows for lb in r["traces"]})
                if (lb, "static", "blocks") in table}
        for lb, peak in held.items():
            print("colocate: %s: the static split's requests held up to %.0f MiB of blocks at one "
                  "moment; a budget below that cannot hold them all at once (and pages, whole, "
                  "hold more than their blocks)" % (lb, peak / MIB))
        out["sweep"] = {"rows": rows, "smallest_gib": smallest, "static_gib": args.budget_gib,
                        "static_peak_blocks": held}
        for v, _ in SWEEP_VARIANTS:
            out["sweep"]["smallest_%s_gib" % v] = smallest_of.get(v)
    return out


def p99_apart(t):
    """The p99 TTFT of a model's requests that waited on no CUDA graph
    capture (the CUDA graphs table's "p99 of the others"), or None where
    the engines did not say when they captured or every request waited on
    one."""
    g = t.get("graph_waits")
    return g[1] if g and g[1] == g[1] else None


def by_base(traces):
    """The labels of each trace's replays (--repeat), by the trace's base
    name, in the traces' order. Returns {base: [label, ...]}."""
    bases = {}
    for tr in traces:
        bases.setdefault(tr["base"], []).append(tr["label"])
    return bases


def ran_by_all(table, labels, configs):
    """Of one trace's replays (labels), those that every configuration in
    configs ran (a replay --deadline skipped is none)."""
    return [lb for lb in labels if all((lb, c, "all") in table for c in configs)]


def replayed(table, labels, configs, fig):
    """Of one trace's replays (labels), those that every configuration in
    configs ran (a replay --deadline skipped is none). Returns their labels,
    or [] where fig (a p99 of a table row) is None for a model or all in one
    of them: that trace cannot be compared."""
    done = ran_by_all(table, labels, configs)
    if any(fig(table[(lb, c, n)]) is None for lb in done for c in configs
           for n in ORDER + ("all",)):
        return []
    return done


def repeats(table, traces, results, config="kvshim", apart=False, common=False):
    """For each trace that static and config (kvshim by default; twin,
    reads, packed, unpacked, unreserved, noahead, nocushion, idle,
    keepcache, starved or kvpad too) both replayed more than once (--repeat; a replay --deadline
    skipped does not count): per model, the p99 TTFT of every replay, static and
    config's, their medians and the ratio of the medians; config meets the
    static split within its spread when its median is at most the static
    replays' largest p99 (capped and ample are left out: the targets are
    kvshim's). With apart, the same for the p99 of the requests that
    waited on no capture (p99_apart; a trace where a replay lacks it is
    left out): what the spread is apart from transformers' captures.
    With common, the same for the p99 of the requests that waited on a
    capture of their engine in no replay of either (p99s_untouched; the
    same requests in each, how many under "requests"; a model none of
    whose requests is left is printed so and left out, and a trace where
    captures were not counted is left out, as apart's). Printed; returns
    {trace: {model: figures}}, config's under the keys "kvshim" and
    "kvshim_median"."""
    fig = p99_apart if apart else (lambda t: t["ttft_p99"])
    out = {}
    for base, labels in by_base(traces).items():
        if "static" not in results or config not in results:
            continue
        if common:
            done = ran_by_all(table, labels, ("static", config))
            figs = p99s_untouched(results, done, ("static", config)) if len(done) > 1 else None
            if not figs:
                continue
        else:
            done = replayed(table, labels, ("static", config), fig)
            if len(done) < 2:
                continue
            figs = {name: ({c: [fig(table[(lb, c, name)]) for lb in done]
                            for c in ("static", config)}, None) for name in ORDER + ("all",)}
        if not out:
            print("\nrun-to-run spread%s: the traces static and %s both replayed more than "
                  "once; p99 TTFT in seconds%s, median [least, most]; %s meets the static "
                  "split within its spread when its median is at most static's most"
                  % (" apart from captures" if apart else
                     " on the requests no capture touched" if common else "", config,
                     " of the requests that waited on no CUDA graph capture (the CUDA "
                     "graphs tables' p99 of the others)" if apart else
                     " of the requests that waited on a CUDA graph capture of their engine in "
                     "no replay of either configuration, the same requests in each (apart "
                     "from captures leaves out each replay's own, which may be a burst's in "
                     "one configuration and not in the other; a model none of whose requests "
                     "is left: none)" if common else "", config))
            print("| trace | replays each | model | %sstatic p99 | %s p99 "
                  "| static / %s (medians) | within static's spread |" % (
                      "requests | " if common else "", config, config))
            print("|---|---|---|---|---|---|---%s|" % ("|---" if common else ""))
        out[base] = {}
        for name in ORDER + ("all",):
            if figs[name] is None:
                print("| %s | %d | %s | 0 | none | | | |" % (base, len(done), name))
                continue
            (by, n) = figs[name]
            st, kv = by["static"], by[config]
            f = {"static": st, "kvshim": kv, "static_median": statistics.median(st),
                 "kvshim_median": statistics.median(kv), "static_max": max(st)}
            f["ratio"] = f["static_median"] / f["kvshim_median"] if f["kvshim_median"] > 0 \
                else float("nan")
            f["within_spread"] = f["kvshim_median"] <= max(st)
            if common:
                f["requests"] = n
            out[base][name] = f
            print("| %s | %d | %s | %s%.3f [%.3f, %.3f] | %.3f [%.3f, %.3f] | %.2fx | %s |" % (
                base, len(done), name, "%d | " % n if common else "",
                f["static_median"], min(st), max(st),
                f["kvshim_median"], min(kv), max(kv), f["ratio"],
                "yes" if f["within_spread"] else "NO"))
    return out


def parity(table, traces, results, apart=False):
    """Issue 13's "every model's p99 TTFT under kvshim at most its static
    p99, within the run-to-run spread measured": for each trace that
    static, kvshim and twin all replayed, per model, the p99 TTFT of each
    (the median of the n replays all three ran where more than one, the
    single value otherwise), static's over kvshim's and static's over
    twin's. A figure is read against the spread of figures alike, as a
    single replay moves more than a median does: the medians of n replays
    against the least static / twin of any model on any trace's medians of
    n; a single value against the least static / twin of any model in any
    one replay all three ran (those of traces replayed more than once
    too). kvshim meets parity within the spread when every model's static
    / kvshim is at least its spread or 1, whichever is less. With apart,
    the same for the p99 of the requests that waited on no capture
    (p99_apart, as repeats). Printed, table and verdict; returns {"traces":
    {trace: {"replays": n, "models": {model: figures}}}, "spreads": {n:
    {"kvshim_worst", "twin_worst" ({"ratio", "model", "trace"}),
    "threshold", "met"}}, "met"}, or None where no trace was replayed by
    all three (or none has the figures apart from captures)."""
    fig = p99_apart if apart else (lambda t: t["ttft_p99"])
    cfgs = ("static", "kvshim", "twin")
    rows, singles = {}, []
    for base, labels in by_base(traces).items():
        done = replayed(table, labels, cfgs, fig) if set(cfgs) <= set(results) else []
        if not done:
            continue
        rows[base] = {"replays": len(done), "models": {}}
        for name in ORDER:
            f = {c: statistics.median(fig(table[(lb, c, name)]) for lb in done) for c in cfgs}
            for c in ("kvshim", "twin"):
                f[c + "_ratio"] = f["static"] / f[c] if f[c] > 0 else math.inf
            rows[base]["models"][name] = f
            for lb in done:
                st, tw = fig(table[(lb, "static", name)]), fig(table[(lb, "twin", name)])
                singles.append((st / tw if tw > 0 else math.inf, name, lb))
    said = " apart from captures" if apart else ""
    if not rows:
        print("colocate: parity within the static split's own spread%s: not judged (no trace "
              "that static, kvshim and twin all replayed%s)" % (
                  said, ", with the p99 of the requests that waited on no capture" if apart
                  else ""))
        return None

    def least(figs):
        # (the first of equals, in the traces' and the models' order)
        r, name, where = min(figs, key=lambda w: w[0])
        return {"ratio": r, "model": name, "trace": where}
    spreads = {}
    for n in sorted({v["replays"] for v in rows.values()}):
        alike = [(f, name, base) for base, v in rows.items() if v["replays"] == n
                 for name, f in v["models"].items()]
        tw = least(singles if n == 1 else [(f["twin_ratio"], name, base)
                                           for f, name, base in alike])
        kv = least([(f["kvshim_ratio"], name, base) for f, name, base in alike])
        threshold = min(1.0, tw["ratio"])
        for f, _, _ in alike:
            f["within_spread"] = f["kvshim_ratio"] >= threshold
        spreads[n] = {"kvshim_worst": kv, "twin_worst": tw, "threshold": threshold,
                      "met": kv["ratio"] >= threshold}

    def x(r, n):
        # (three decimals where kvshim's worst and its spread read the
        # same at two but decide apart)
        v = spreads[n]
        return ("%.3fx" if "%.2f" % v["kvshim_worst"]["ratio"] == "%.2f" % v["threshold"]
                else "%.2fx") % r
    print("\nparity against the static split's own spread%s: the traces static, kvshim and twin "
          "all replayed; p99 TTFT in seconds%s, the median of the replays all three ran where "
          "more than one, the single value otherwise; each figure is read against the spread of "
          "figures alike, the least static / twin of any model in the medians of as many "
          "replays, or in any one replay, and a model meets parity within it when its static / "
          "kvshim is at least that or 1.00, whichever is less (%s)" % (
              said, " of the requests that waited on no CUDA graph capture" if apart else "",
              "; ".join("%s: %s, %s %s" % (
                  "single replays" if n == 1 else "medians of %d" % n,
                  x(v["twin_worst"]["ratio"], n), v["twin_worst"]["model"],
                  v["twin_worst"]["trace"]) for n, v in spreads.items())))
    print("| trace | replays each | model | static p99 | kvshim p99 | twin p99 | static / kvshim "
          "| static / twin | within the spread |")
    print("|---|---|---|---|---|---|---|---|---|")
    for base, v in rows.items():
        n = v["replays"]
        for name, f in v["models"].items():
            print("| %s | %d%s | %s | %.3f | %.3f | %.3f | %s | %s | %s |" % (
                base, n, " (medians)" if n > 1 else "", name,
                f["static"], f["kvshim"], f["twin"], x(f["kvshim_ratio"], n),
                x(f["twin_ratio"], n), "yes" if f["within_spread"] else "NO"))
    met = all(v["met"] for v in spreads.values())
    print("colocate: parity within the static split's own spread%s: %s (%s)" % (
        said, "yes" if met else "NO", "; ".join(
            "%s: kvshim's worst %s, %s %s; the static split against itself: worst %s, %s %s" % (
                "single replays" if n == 1 else "medians of %d" % n,
                x(v["kvshim_worst"]["ratio"], n), v["kvshim_worst"]["model"],
                v["kvshim_worst"]["trace"], x(v["twin_worst"]["ratio"], n),
                v["twin_worst"]["model"], v["twin_worst"]["trace"])
            for n, v in spreads.items())))
    return {"traces": rows, "spreads": spreads, "met": met}


def plot(results, traces, outdir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("colocate: matplotlib not found: no plots")
        return
    for tr in traces:
        label = tr["label"]
        have = [(c, r) for c, r in results.items() if label in r["runs"]]
        if not have:                    # (every replay of it skipped: --deadline)
            continue
        fig, axes = plt.subplots(1, len(have), figsize=(7 * len(have), 4.5), sharey=True)
        axes = axes if len(have) > 1 else [axes]
        for ax, (cname, res) in zip(axes, have):
            run = res["runs"][label]
            for name in ORDER:
                s = run["engines"][name]["samples"]
                ax.plot([x[0] for x in s], [x[1] / GIB for x in s], label="%s KV" % name)
            if run["held"]:
                ax.plot([h[0] for h in run["held"]], [h[1] / GIB for h in run["held"]], "k-",
                        lw=0.8, label="shared segment held")
                ax.axhline(run["held"][0][2] / GIB, color="r", ls="--", lw=0.8, label="budget")
            ax.set_title("%s: KV memory per engine (%s)" % (cname, label))
            ax.set_xlabel("seconds")
            ax.set_ylabel("GiB")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "colocate-memory-%s.png" % label), dpi=110)
        plt.close(fig)
        # TTFT CDFs
        fig, axes = plt.subplots(1, len(ORDER), figsize=(15, 4.2))
        for ax, name in zip(axes, ORDER):
            for cname, res in have:
                rows = res["runs"][label]["engines"][name]["requests"]
                ttft = sorted(r["ttft"] for r in rows if r["ttft"] is not None)
                if ttft:
                    ax.plot(ttft, [(i + 1) / len(ttft) for i in range(len(ttft))],
                            ls="--" if cname == "static" else "-", label=cname)
            if ax.lines:
                ax.set_xscale("log")
                ax.legend(fontsize=8)
            ax.set_title("%s: TTFT CDF (%s)" % (name, label))
            ax.set_xlabel("TTFT, seconds")
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "colocate-ttft-%s.png" % label), dpi=110)
        plt.close(fig)
        # each model's TTFT over the run, against its static baseline
        fig, axes = plt.subplots(len(ORDER), 1, figsize=(12, 9), sharex=True)
        for ax, (m, name) in zip(axes, enumerate(ORDER)):
            for k in range(3 * tr["cycles"]):
                if k % 3 == m:
                    ax.axvspan(k * tr["phase"], (k + 1) * tr["phase"], color="0.93")
            for cname, res in have:
                rows = [r for r in res["runs"][label]["engines"][name]["requests"]
                        if r["ttft"] is not None]
                rows.sort(key=lambda r: r["t"])
                static = cname == "static"
                ax.plot([r["t"] for r in rows], [max(r["ttft"], 1e-3) for r in rows],
                        "o-" if static else ".-", ms=3 if static else 4, lw=0.8,
                        color="0.45" if static else None, label="%s (p99 %.2f s)" % (
                            cname, pct([r["ttft"] for r in rows], 99)))
            ax.set_yscale("log")
            ax.set_ylabel("%s: TTFT, s" % name)
            ax.legend(fontsize=8, loc="upper left")
        axes[0].set_title("TTFT of each request by its arrival, %s (shaded: the model's hot phases)"
                          % label)
        axes[-1].set_xlabel("arrival, seconds into the trace")
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "colocate-ttft-time-%s.png" % label), dpi=110)
        plt.close(fig)


def waiting_row(t):
    """The row of "KV pages held while requests waited" for an engine's
    figures t (held_while_waiting's, under kv_waiting)."""
    w = t.get("kv_waiting")
    if w is None:
        return ("-",) * 11
    if not w["samples"]:
        return ("0",) + ("-",) * 10
    return ("%d" % w["samples"],) + tuple(
        "-" if w[k] is None else "%.0f" % (w[k] / MIB)
        for k in ("pages", "used", "prefix", "free_on", "ahead", "pooled", "cached", "rest",
                  "shown", "demand"))


def kv_table(table, label, results, title, columns, row):
    """Print title, then a table of the engines of the kvshim configurations
    in results on trace label: per model and configuration, row(t) of its
    figures t (strings, one per column)."""
    print("\n" + title)
    print("| model | config | %s |" % " | ".join(columns))
    print("|---" * (len(columns) + 2) + "|")
    for name in ORDER:
        for cname in results:
            t = table.get((label, cname, name))
            if t is not None and results[cname]["mode"] == "kvshim":
                print("| %s | %s | %s |" % (name, cname, " | ".join(row(t))))


def code_version():
    """What ran, so that runs made apart are read as one only where the
    code was one: SHA-256 (16 hex digits) of the loaded sections of the
    library the engines preload (its code and data, not its build id or
    debug sections: one build gives one hash, stripped or not; None where
    the library is not there or not ELF), and of the Python that shapes a
    replay (this file, built_tree.py, graph_capture.py and the adapter
    package the engines import, each named relative to its folder, so a
    copy of the tree elsewhere hashes alike). Taken as the run starts."""
    env = built_tree.environment()
    here = os.path.dirname(os.path.abspath(__file__))
    py = hashlib.sha256()
    files = [(here, n) for n in ("colocate.py", "built_tree.py", "graph_capture.py")]
    for top in env["KVSHIM_PYTHONPATH"].split(os.pathsep):
        files += sorted((top, os.path.relpath(f, top)) for f in glob.glob(
            os.path.join(top, "**", "*.py"), recursive=True))
    try:
        for top, name in files:
            with open(os.path.join(top, name), "rb") as f:
                py.update(name.encode() + b"\0" + f.read() + b"\0")
    except OSError:
        return None
    return {"library": elf_sections_digest(env["KVSHIM_LIB"]), "python": py.hexdigest()[:16]}


def elf_sections_digest(path, names=(b".text", b".rodata", b".data", b".dynsym", b".dynstr")):
    """SHA-256 (16 hex digits) of an ELF64 little-endian file's sections
    names, as their bytes and sizes (.bss: none), or None where the file
    cannot be read as one."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:5] != b"\x7fELF\x02" or data[5] != 1:
            return None
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3a)

        def section(i):
            # (name offset, type, offset, size) of section i
            base = shoff + i * shentsize
            name, kind = struct.unpack_from("<II", data, base)
            off, size = struct.unpack_from("<QQ", data, base + 0x18)
            return name, kind, off, size
        _, _, stroff, _ = section(shstrndx)
        h, found = hashlib.sha256(), 0
        for i in range(shnum):
            name, kind, off, size = section(i)
            label = data[stroff + name:data.index(b"\0", stroff + name)]
            if label in names:
                found += 1
                h.update(label + b"\0" + str(size).encode() + b"\0")
                if kind != 8:       # SHT_NOBITS: no bytes in the file
                    h.update(data[off:off + size])
        return h.hexdigest()[:16] if found else None
    except (OSError, struct.error, ValueError, IndexError):
        return None


def write_json(path, args, traces, summary, table, results, gpu, warmup, code):
    """colocate.json: the options, the GPU (gpu_named), the code's version
    (code_version, as the run started), traces and the warm-up's (None without --warmup),
    summary and table, and every request, engine step and sample of the
    shared segment."""
    with open(path, "w") as f:
        json.dump({"args": {k: v for k, v in vars(args).items()}, "gpu": gpu,
                   "code": code,
                   "traces": traces, "warmup": warmup, "summary": summary,
                   "table": {"|".join(map(str, k)): v for k, v in table.items()},
                   "engines": {m: r["engines"] for m, r in results.items()},
                   # every request: [arrival s, TTFT s, queue wait s, prompt, new tokens, status,
                   # last token s from the trace's start] (the last from session 18 on)
                   "requests": {m: {lb: {n: [[q["t"], q["ttft"], q["wait"], q["prompt"], q["new"],
                                               q["status"], q.get("done_at")]
                                              for q in run["engines"][n]["requests"]]
                                         for n in ORDER}
                                    for lb, run in r["runs"].items()}
                                for m, r in results.items()},
                   "steps": {m: {lb: {n: run["engines"][n].get("steps", []) for n in ORDER}
                                 for lb, run in r["runs"].items()}
                             for m, r in results.items()},
                   # the shared segment every 50 ms: [s, held, budget, {pid: [held, idle,
                   # demand, asked, share, gap, unused, weight]}] (older runs' files
                   # lack the last ones)
                   "held": {m: {lb: run["held"] for lb, run in r["runs"].items()}
                            for m, r in results.items() if r["mode"] == "kvshim"},
                   # each replay's engine pids (engines start afresh each turn)
                   "pids": {m: {lb: run.get("pids") for lb, run in r["runs"].items()}
                            for m, r in results.items()},
                   "seconds": {m: {"startup": r.get("startup_s"), "total": r.get("total_s"),
                                   "warmup": r.get("warmup_s"), "traces": r.get("seconds"),
                                   "turns": r.get("turns")}
                               for m, r in results.items()},
                   "skipped": {m: r.get("skipped", []) for m, r in results.items()},
                   # the CUDA graphs each engine captured in the warm-up, as
                   # "graphs" (with --warmup; None where not counted)
                   "warmup_graphs": {m: r.get("warmup_graphs") for m, r in results.items()},
                   # each kvshim configuration's pool (KVSHIM_POOL), removed at its end
                   "pools": {m: r.get("pool") for m, r in results.items() if r.get("pool")}},
                  f, separators=(",", ":"))


def numbers(text, what, ap, kind=float):
    """A comma-separated list of positive numbers, or the usage error."""
    try:
        xs = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        ap.error("%s takes numbers separated by commas" % what)
    if not xs or any(x <= 0 for x in xs):
        ap.error("%s takes positive numbers" % what)
    return xs


def weights(text, ap):
    """--weights: model=W pairs separated by commas, each model of MODELS at
    most once and W a whole number from 1 to 1000 (KVSHIM_WEIGHT's range);
    {model: W} with 1 for a model not named, or the usage error."""
    got = {}
    for pair in (x.strip() for x in text.split(",")):
        name, eq, w = (x.strip() for x in pair.partition("="))
        if name in MODELS and not eq:
            ap.error("--weights: %r: no weight (model=weight, as %s=2)" % (pair, name))
        if name not in MODELS:
            ap.error("--weights: %r names no model (model=weight, the models %s)"
                     % (pair, ", ".join(ORDER)))
        if name in got:
            ap.error("--weights names %s twice" % name)
        if not re.fullmatch(r"[0-9]+", w) or not 1 <= int(w) <= 1000:
            ap.error("--weights: %r: a weight is a whole number from 1 to 1000" % pair)
        got[name] = int(w)
    return {name: got.get(name, 1) for name in ORDER}


def trace_names(text, ap):
    """--traces: a comma-separated list of trace names as colocate labels
    them (r<rate>-s<seed>-p<phase>, all positive, the seed whole), each
    once; [(rate, seed, phase)] in the order given, or the usage error."""
    picked = []
    for name in (x.strip() for x in text.split(",")):
        m = re.fullmatch(r"r([0-9]*\.?[0-9]+)-s([0-9]+)-p([0-9]*\.?[0-9]+)", name)
        if not m or float(m.group(1)) <= 0 or int(m.group(2)) <= 0 or float(m.group(3)) <= 0:
            ap.error("--traces: %r is no trace name (r<rate>-s<seed>-p<phase>, each positive, "
                     "as r6-s2026-p8)" % name)
        t = (float(m.group(1)), int(m.group(2)), float(m.group(3)))
        if t in picked:
            ap.error("--traces names %s twice" % name)
        picked.append(t)
    return picked


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--num-blocks", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--capture-read", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--pad-as-kvshim", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--capture-longest", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=os.environ.get("KVSHIM_SUITE_OUT", "."))
    ap.add_argument("--configs", default="static,kvshim")
    ap.add_argument("--budget-gib", type=float, default=6.0, help="KV budget of the three engines")
    ap.add_argument("--floor-gib", type=float, default=0.0,
                    help="each engine's floor in the shared budget (kvshim)")
    ap.add_argument("--weights", help="each engine's weight in the shared budget (kvshim's "
                    "KVSHIM_WEIGHT), as small=1,medium=2 (1 for a model not named; default: "
                    "equal weights)")
    ap.add_argument("--rates", help="hot-phase arrival rates, requests/s (default 3,4,6)")
    ap.add_argument("--seeds", help="trace seeds, one trace per rate each (default 2026,7)")
    ap.add_argument("--seed", type=int, help="one seed (as --seeds)")
    ap.add_argument("--phases", help="seconds a model stays hot, one trace per value (default 8)")
    ap.add_argument("--phase", type=float, help="one phase length (as --phases)")
    ap.add_argument("--traces", help="these traces alone, as colocate names them "
                    "(r6-s2026-p8,r3-s11-p4: rate, seed, phase), instead of every combination "
                    "of --rates, --seeds and --phases")
    ap.add_argument("--cold-rate", type=float, default=0.25)
    ap.add_argument("--cycles", type=int, default=2, help="times each model is hot")
    ap.add_argument("--repeat", type=int, default=1,
                    help="replay each trace this many times per configuration (the run-to-run "
                         "spread)")
    ap.add_argument("--alternate", action="store_true",
                    help="with --repeat N: N rounds, each configuration replaying the k-th "
                         "replays in round k, in reverse order every other round (engines "
                         "started afresh each round), so that none always replays first")
    ap.add_argument("--deadline", type=float, default=None,
                    help="minutes the whole run may take: replays that would end later are "
                         "skipped; too few for a first replay of every configuration: refused")
    ap.add_argument("--warmup", action="store_true",
                    help="before each configuration's replays, one it does not count: a trace "
                         "of another seed, each model hot once (--warmup-cycles) at the highest "
                         "rate (a machine loads or compiles kernels for each batch shape it "
                         "first runs, 0.5 to 1 s steps when fresh, which the first configuration "
                         "pays most)")
    ap.add_argument("--kv-pad", type=int, default=None,
                    help="kvpad's KVSHIM_CB_KV_PAD: the multiple of tokens its engines pad a "
                         "step's KV read to (16384 by default: transformers' own, kvshim's "
                         "until session 56)")
    ap.add_argument("--starved-ms", type=int, default=None,
                    help="starved's KVSHIM_CB_STARVED_MS: the milliseconds an admitted request "
                         "waits without its first token or progress before its engine's read "
                         "bound is raised for it (500 by default; kvshim's own: 250)")
    ap.add_argument("--warmup-rate", type=float, default=None,
                    help="with --warmup, the warm-up trace's hot-phase rate, requests/s "
                         "(default: the highest rate replayed), so that a run replaying rate 3 "
                         "alone can warm up as one replaying rates 3 to 6 does")
    ap.add_argument("--warmup-cycles", type=int, default=1,
                    help="with --warmup, the warm-up trace's cycles: each model hot this many "
                         "times (transformers captures a CUDA graph for each batch key it "
                         "first meets; a longer warm-up meets more of them before the replays)")
    ap.add_argument("--capture-keys", action="store_true",
                    help="each engine, in every configuration, captures a CUDA graph for every "
                         "batch key it can meet (queries, KV read up to its share, longest KV) "
                         "before it serves, as production engines capture their batch sizes at "
                         "start, so that the replays meet few new keys (tests/bench/graph_capture.py)")
    ap.add_argument("--sweep-gib", default="",
                    help="kvshim budgets to try against the static split at --budget-gib")
    ap.add_argument("--sweep-rates", default="3", help="the rates the sweep replays")
    ap.add_argument("--sweep-pack", action="store_true",
                    help="name the sweep's budgets packed@B (they pack, as kvshim does by "
                         "default from session 16)")
    ap.add_argument("--reserve", default=None,
                    help="the reserve of every kvshim configuration but unreserved "
                         "(KVSHIM_RESERVE: a percentage from 0 to 50; default: kvshim's, 5%%)")
    ap.add_argument("--sweep-unreserved", nargs="?", const="also", choices=("also", "only"),
                    help="run each sweep budget again without the reserve (unreserved@B); "
                         "=only: without it alone")
    ap.add_argument("--sweep-nocushion", nargs="?", const="also", choices=("also", "only"),
                    help="run each sweep budget again without the cushion (nocushion@B); "
                         "=only: without it alone")
    ap.add_argument("--sweep-idle", nargs="?", const="also", choices=("also", "only"),
                    help="run each sweep budget again with the idle cushion (idle@B); "
                         "=only: with it alone")
    ap.add_argument("--sweep-starved", nargs="?", const="also", choices=("also", "only"),
                    help="run each sweep budget again with KVSHIM_CB_STARVED_MS at --starved-ms "
                         "(starved@B); =only: with it alone")
    ap.add_argument("--sweep-reads", nargs="?", const="also", choices=("also", "only"),
                    help="run each sweep budget again with each engine's read budget at its "
                         "static share's at --budget-gib, as the reads configuration (reads@B); "
                         "=only: with it alone")
    ap.add_argument("--sweep-all", action="store_true",
                    help="run every sweep budget (by default the sweep ends at the first that meets)")
    ap.add_argument("--tolerance", type=float, default=0.0,
                    help="a model meets the static split within this fraction of its p99")
    ap.add_argument("--quick", action="store_true",
                    help="rates 3, 4 and 6, one seed and phase, a sweep of 3 GiB at rate 3")
    ap.add_argument("--cpu-offload-gib", type=float, default=0.0,
                    help="transformers' CPU space for preempted requests' KV (0: its default)")
    ap.add_argument("--capped-share", type=float, default=1.0,
                    help="capped's ceiling, in static shares (a third of the budget): 1 to 3")
    ap.add_argument("--dry-run", action="store_true",
                    help="engines that answer at once with made-up figures (no torch, no GPU): "
                         "tries the run's orchestration, tables, plots and JSON")
    ap.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                    help="transformers' CUDA graphs (on by default, as production engines serve)")
    ap.add_argument("--prefix-cache", action=argparse.BooleanOptionalAction, default=True,
                    help="transformers' prefix caching (on by default, as transformers has it)")
    ap.add_argument("--prompt-min", type=int, default=256)
    ap.add_argument("--prompt-max", type=int, default=1024)
    ap.add_argument("--new-min", type=int, default=64)
    ap.add_argument("--new-max", type=int, default=256)
    ap.add_argument("--max-batch-tokens", type=int, default=2048)
    args = ap.parse_args()
    if args.engine:
        try:
            return engine(args)
        except Exception:
            # transformers' batching thread is not a daemon: the engine
            # would outlive its error, and the run wait for its DONE
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
    configs = [c for c in args.configs.split(",") if c]
    if not configs or set(configs) - {"static", "kvshim", "capped", "ample", "twin", "packed",
                                      "unpacked", "reads", "unreserved", "noahead",
                                      "nocushion", "idle", "keepcache", "starved", "kvpad",
                                      "staticpad"}:
        ap.error("--configs takes static, kvshim, capped, ample, twin, packed, unpacked, "
                 "reads, unreserved, noahead, nocushion, idle, keepcache, starved, kvpad "
                 "and staticpad")
    given = [o for o, v in (("--rates", args.rates), ("--seeds", args.seeds),
                            ("--seed", args.seed), ("--phases", args.phases),
                            ("--phase", args.phase), ("--quick", args.quick))
             if v not in (None, False)]
    if args.traces is not None and given:
        ap.error("--traces names the traces: not with %s" % ", ".join(given))
    if args.quick:
        args.rates, args.seeds, args.phases = "3,4,6", "2026", "8"
        args.sweep_gib = args.sweep_gib or "3"
    if args.traces is not None:
        picked = trace_names(args.traces, ap)
        rates = list(dict.fromkeys(r for r, _, _ in picked))
        seeds = list(dict.fromkeys(s for _, s, _ in picked))
        args.phase_list = list(dict.fromkeys(p for _, _, p in picked))
    else:
        rates = numbers(args.rates or "3,4,6", "--rates", ap)
        seeds = [args.seed] if args.seed is not None else numbers(args.seeds or "2026,7",
                                                                  "--seeds", ap, int)
        args.phase_list = [args.phase] if args.phase else numbers(args.phases or "8",
                                                                   "--phases", ap)
        picked = [(r, s, p) for r in rates for s in seeds for p in args.phase_list]
    sweep = numbers(args.sweep_gib, "--sweep-gib", ap) if args.sweep_gib else []
    sweep_rates = numbers(args.sweep_rates, "--sweep-rates", ap) if sweep else []
    if args.budget_gib <= 0 or args.cycles < 1 or any(p <= 0 for p in args.phase_list):
        ap.error("--budget-gib, --phases and --cycles must be positive")
    if args.deadline is not None and not args.deadline > 0:
        ap.error("--deadline must be more than 0 minutes")
    if not 1 <= args.repeat <= 20:
        ap.error("--repeat must be from 1 to 20")
    if args.capture_keys and not args.cuda_graphs:
        ap.error("--capture-keys captures CUDA graphs: not with --no-cuda-graphs")
    if args.starved_ms is not None and "starved" not in configs and not args.sweep_starved:
        ap.error("--starved-ms sets starved's engines: name starved in --configs, or give "
                 "--sweep-starved")
    args.starved_ms = 500 if args.starved_ms is None else args.starved_ms
    if not 1 <= args.starved_ms <= 60000:
        ap.error("--starved-ms must be from 1 to 60000 milliseconds")
    if args.kv_pad is not None and "kvpad" not in configs:
        ap.error("--kv-pad pads kvpad's engines: name kvpad in --configs")
    args.kv_pad = 16384 if args.kv_pad is None else args.kv_pad
    if not 1 <= args.kv_pad <= 1 << 30:
        ap.error("--kv-pad must be from 1 to 1073741824 tokens")
    if not 1 <= args.warmup_cycles <= 10:
        ap.error("--warmup-cycles must be from 1 to 10")
    if args.warmup_cycles != 1 and not args.warmup:
        ap.error("--warmup-cycles lengthens the warm-up: give --warmup too")
    if args.warmup_rate is not None and not (0 < args.warmup_rate <= 1000):
        ap.error("--warmup-rate must be more than 0 and at most 1000 requests/s")
    if args.warmup_rate is not None and not args.warmup:
        ap.error("--warmup-rate sets the warm-up's rate: give --warmup too")
    if args.floor_gib < 0 or 3 * args.floor_gib > min([args.budget_gib] + sweep):
        ap.error("--floor-gib must be from 0 to a third of --budget-gib (and of every --sweep-gib)")
    args.weight_of = weights(args.weights, ap) if args.weights is not None else None
    if args.weight_of and not sweep and set(configs) <= STATIC_MODE:
        ap.error("--weights weighs kvshim's engines: name a kvshim configuration in --configs "
                 "(or give --sweep-gib)")
    if not 1.0 <= args.capped_share <= 3.0:
        ap.error("--capped-share must be from 1 to 3 static shares")
    if args.tolerance < 0 or args.cpu_offload_gib < 0:
        ap.error("--tolerance and --cpu-offload-gib must not be negative")
    if sweep and "static" not in configs:
        ap.error("--sweep-gib compares with the static split: keep static in --configs")
    if args.reserve is not None and not re.fullmatch(r"(50|[1-4]?[0-9])%?", args.reserve):
        ap.error("--reserve %r: a percentage from 0 to 50 (5 or 5%%), as KVSHIM_RESERVE takes"
                 % args.reserve)
    for v, _ in SWEEP_VARIANTS:
        if getattr(args, "sweep_" + v) and not args.sweep_gib:
            ap.error("--sweep-%s runs the sweep's budgets again: give them with --sweep-gib" % v)
    if args.sweep_pack and not args.sweep_gib:
        ap.error("--sweep-pack names the sweep's budgets: give them with --sweep-gib")
    try:
        if args.dry_run:
            print("colocate: --dry-run: engines without torch or a GPU, figures made up")
        else:
            import torch
            if not torch.cuda.is_available():
                print("colocate: no GPU: skipped")
                return 77
    except ImportError:
        print("colocate: no torch: skipped")
        return 77
    t_all = time.perf_counter()
    gpu = gpu_named(args.dry_run)
    code = code_version()
    print("colocate: GPU: %s" % (gpu or "not named (nvidia-smi did not answer)"), flush=True)
    outdir = os.path.abspath(args.out)
    os.makedirs(outdir, exist_ok=True)
    traces = []
    for rate, seed, phase in picked:
        label = "r%g-s%d-p%g" % (rate, seed, phase)
        trace = make_trace(seed, float(rate), args, phase)
        path = os.path.join(outdir, "colocate-trace-%s.json" % label)
        with open(path, "w") as f:
            json.dump(trace, f)
        for k in range(args.repeat):
            traces.append({"label": label if k == 0 else "%s-run%d" % (label, k + 1),
                           "base": label, "round": k, "rate": "%g" % rate, "seed": seed,
                           "phase": phase, "cycles": args.cycles, "path": path,
                           "n": len(trace)})
        print("colocate: trace %s: %d requests (%s)" % (label, len(trace), ", ".join(
            "%s %d" % (n, sum(q["model"] == n for q in trace)) for n in ORDER)))
    warmup = None
    if args.warmup:
        wargs = argparse.Namespace(**vars(args))
        wargs.cycles = args.warmup_cycles
        seed, phase = max(seeds) + 1, args.phase_list[0]
        rate = args.warmup_rate if args.warmup_rate is not None else max(rates)
        trace = make_trace(seed, float(rate), wargs, phase)
        path = os.path.join(outdir, "colocate-trace-warmup.json")
        with open(path, "w") as f:
            json.dump(trace, f)
        warmup = {"label": "warmup", "base": "warmup", "rate": "%g" % rate, "seed": seed,
                  "phase": phase, "cycles": args.warmup_cycles, "path": path, "n": len(trace)}
        print("colocate: warm-up trace (seed %d, rate %g, each model hot %s): %d requests" % (
            seed, rate, "once" if args.warmup_cycles == 1 else "%d times" % args.warmup_cycles,
            len(trace)))
    sweep_traces = [tr for tr in traces if float(tr["rate"]) in sweep_rates
                    and tr["seed"] == seeds[0] and tr["phase"] == args.phase_list[0]]
    budget = int(args.budget_gib * GIB)
    plan = [({"name": c, "mode": "static" if c in STATIC_MODE else "kvshim",
              "budget": budget, "shares": 3 if c == "ample" else 1,
              "ceiling": int(args.capped_share * budget) // 3 if c == "capped" else 0,
              "pack": c not in STATIC_MODE | {"unpacked"},
              "static_reads": c == "reads", "reserve": c != "unreserved",
              "ahead": c != "noahead", "cushion": c != "nocushion",
              "idle_cushion": c == "idle", "give_back": c != "keepcache",
              "starved_ms": args.starved_ms if c == "starved" else None,
              "kv_pad": args.kv_pad if c == "kvpad" else
              built_tree.adapter_kv_pad() if c == "staticpad" else None}, traces)
            for c in configs]
    # the sweep's budgets, kvshim's (packing, as kvshim does by default;
    # named packed@B with --sweep-pack)
    base = "packed" if args.sweep_pack else "kvshim"
    # (kvshim and packed are alike now: either, at --budget-gib, is that
    # budget's run)
    same = [c for c in ("kvshim", "packed") if c in configs]
    # and each budget again with a setting off (--sweep-unreserved,
    # --sweep-nocushion, or a setting on, --sweep-idle, --sweep-reads), after it, or
    # instead of it (=only)
    variants = [v for v, _ in SWEEP_VARIANTS if getattr(args, "sweep_" + v)]
    names = ([] if any(getattr(args, "sweep_" + v) == "only" for v in variants) else [base]) \
        + variants
    alone = base not in names

    def sweep_line(cname):
        """The line of the sweep configuration cname is on, which the first
        of its budgets that meets ends: kvshim's (None; a variant beside it
        ends with it), or with the variants alone (=only on any of them),
        its variant's own."""
        return sweep_variant(cname) if alone else None
    plan += [({"name": "%s@%g" % (name, b), "mode": "kvshim", "budget": int(b * GIB),
               "pack": True, "reserve": name != "unreserved", "cushion": name != "nocushion",
               "idle_cushion": name == "idle", "static_reads": name == "reads",
               "starved_ms": args.starved_ms if name == "starved" else None},
              sweep_traces)
             for b in sorted(sweep)
             for name in names
             if b != args.budget_gib or not same or name != base]
    # the configurations' turns: each replays its traces in one turn, or,
    # alternating, the k-th replays of them in round k, the order of the
    # configurations reversed every other round
    turns = []
    for r in range(args.repeat if args.alternate else 1):
        for cfg, trs in (plan if r % 2 == 0 else plan[::-1]):
            mine = [tr for tr in trs if not args.alternate or tr["round"] == r]
            if mine:
                turns.append((cfg, mine, r))
    est = turns_guess(turns, warmup)
    print("colocate: %d configurations, %d trace runs in all%s: about %.0f min (a guess)" % (
        len(plan), sum(len(trs) for _, trs, _ in turns),
        ", alternating in %d rounds" % args.repeat if args.alternate else "", est / 60),
        flush=True)
    if args.deadline is not None:
        # (and a minute to stop the engines and write the results)
        # (in minutes, rounded up to a tenth, as said and as --deadline is given)
        first = math.ceil((turns_guess([(c, trs[:1], r) for c, trs, r in turns if r == 0],
                                       warmup) + 60) / 6) / 10
        if first > args.deadline + 1e-9:
            print("colocate: --deadline %g min cannot hold a first replay of every "
                  "configuration (about %.1f min with the minute to finish, by the guess "
                  "above): nothing would be compared, so nothing is started; give "
                  "--deadline %.1f or more (a minute over it: the guesses made as it runs "
                  "count each replay's time, 5%% and 15 s more), or fewer configurations"
                  % (args.deadline, first, first + 1), file=sys.stderr, flush=True)
            return 2
        if est + 60 > 60 * args.deadline:
            print("colocate: --deadline %g min is less than the whole run's guess (%.1f min "
                  "with the minute to finish): replays that would end later are skipped"
                  % (args.deadline, (est + 60) / 60), flush=True)
    results, met, took = {}, {}, {}
    # (a minute of it kept to stop the engines and write the tables, plots and JSON)
    deadline = t_all + 60 * args.deadline - 60 if args.deadline is not None else None
    firsts, dropped = {}, []

    def skip(cname, labels):
        """Replays of configuration cname skipped before its engines started:
        in its results' skipped, or, with none yet, said at the end too."""
        if cname in results:
            results[cname]["skipped"] += labels
        else:
            dropped.extend("%s %s" % (cname, lb) for lb in labels)

    for i, (cfg, trs, r) in enumerate(turns):
        # budgets above the smallest that met are not tried; it and those
        # below it replay every round (with --repeat, judged by the spread)
        line = sweep_line(cfg["name"]) if is_sweep(cfg["name"]) else None
        if is_sweep(cfg["name"]) and line in met and not args.sweep_all and \
                cfg["budget"] / GIB > met[line]:
            print("colocate: %s skipped: %g GiB already meets the static split" % (
                cfg["name"], met[line]), flush=True)
            continue
        # (a round's first is the first configuration that runs in it)
        first = firsts.setdefault(r, cfg["name"])
        unpaired = []
        if first != cfg["name"]:
            # the traces the round's first configuration replayed (none if
            # it never ran): the others pair them
            paired = results.get(first, {}).get("runs", {})
            unpaired = [tr["label"] for tr in trs if tr["label"] not in paired]
            trs = [tr for tr in trs if tr["label"] not in unpaired]
        if not trs:
            if unpaired:
                print("colocate: %s skipped: %s not replayed by %s" % (
                    cfg["name"], ", ".join(unpaired), first), flush=True)
                skip(cfg["name"], unpaired)
            continue
        warm = warmup if r == 0 else None
        later = [{tr["label"] for tr in t} for c, t, q in turns[i + 1:] if q == r] \
            if first == cfg["name"] else []
        if deadline is not None and not worth_starting(time.perf_counter(), deadline, trs, later,
                                                       args, took, warm):
            print("colocate: %s skipped: no replay of it would end by --deadline, with the later "
                  "configurations' replays of it" % cfg["name"], flush=True)
            skip(cfg["name"], [tr["label"] for tr in trs] + unpaired)
            continue
        res = run_config(cfg, args, trs, outdir, deadline, took, later, warm)
        res["skipped"] += unpaired
        if cfg["name"] in results:
            merge(results[cfg["name"]], res)
        else:
            results[cfg["name"]] = res
        if is_sweep(cfg["name"]) and "static" in results and \
                line == sweep_variant(cfg["name"]):
            # ascending budgets: the first that meets the static split ends
            # its line of the sweep
            table, _ = summarize(results, trs)
            if all(ratio(table, tr["label"], cfg["name"], n) * (1 + args.tolerance) >= 1.0
                   for tr in trs for n in ORDER):
                met[line] = min(met.get(line, math.inf), cfg["budget"] / GIB)
    # the sweep's configuration at --budget-gib is the main kvshim run
    if sweep and same and same[0] in results and args.budget_gib in sweep:
        results["%s@%g" % (base, args.budget_gib)] = results[same[0]]
    table, ok = summarize(results, traces)
    for name, r in results.items():
        if r.get("warmup_failed"):
            print("colocate: %s: %d requests of its warm-up failed" % (name, r["warmup_failed"]))
            ok = False
    print_tables(table, traces, results, args)
    summary = targets(table, traces, results, args)
    t_plot = time.perf_counter()
    plot(results, traces, outdir)
    write_json(os.path.join(outdir, "colocate.json"), args, traces, summary, table, results,
               gpu, warmup, code)
    print("colocate: plots and JSON written in %.0f s; the whole run took %.1f min" % (
        time.perf_counter() - t_plot, (time.perf_counter() - t_all) / 60))
    skipped = dropped + ["%s %s" % (c, lb) for c, r in results.items()
                         for lb in r.get("skipped", ())]
    if skipped:
        print("colocate: %d replays skipped by --deadline: %s" % (len(skipped), ", ".join(skipped)))
    print("colocate: %s" % ("PASS" if ok else "FAIL (requests failed or the budget was passed)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
