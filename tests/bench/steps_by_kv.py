#!/usr/bin/env python3
"""Batch times by the KV in use: a colocate run's engine files read step
by step, each batch's run (its forward pass, beside the other engines'
on the GPU) put in a bin of the KV tokens its engine's requests held, to
show what the padding of a batch's KV read costs. transformers 5.17 pads
the KV a batch reads to a multiple of kv_padding_interval_size (16384
tokens; 8192 under kvshim's adapter from session 56, KVSHIM_CB_KV_PAD,
and in colocate's staticpad: the padding each engine file records), at
most the cache's num_pages (under kvshim, the read bound): a batch's time
steps up where the KV in use crosses a multiple, and moves less between
(docs/BENCHMARKS.md, session 55: on an H200 the medium engine's batches
took 26 ms with under 16384 tokens in use and 44 ms above, under static
and kvshim alike; session 56: 15 ms under 8192 with 8192).

    python3 tests/bench/steps_by_kv.py DIR [--configs static,kvshim] [--traces T1,T2] [--bin N]

DIR holds the engine files (colocate-CONFIG-LABEL-MODEL.json, unpacked).
The KV in use at a step is its engine's last sample (every 100 ms) at or
before the step's start: the cache's blocks less its free count (in which
the prefix cache's count as free), BLOCK tokens each; a step before the
first sample is left out. For each model and configuration, over every
replay of the traces both configurations ran, each bin of --bin tokens
(4096 by default) holding LEAST steps or more: the steps, their median
batch time in ms, and the KV read that in-use KV pads to at the engine's
padding and its usual bound (kvshim's: the bound most of its samples had;
static's: its cache). An approximation: a batch reads its queries' KV as
well, and the sample may be up to 100 ms old.
"""

import argparse
import bisect
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import colocate  # noqa: E402
from apart import MODELS, both_ran, command_line, engines_of  # noqa: E402

LEAST = 20              # steps a bin needs to be printed
PAD = 16384             # transformers 5.17's kv_padding_interval_size


def in_use_at(engine):
    """(sample times, KV tokens in use at each) of an engine's samples whose
    free count was read, in time order."""
    nb = engine["num_blocks"]
    rows = sorted((s[0], (nb - s[3][colocate.VIEW_FREE]) * colocate.BLOCK)
                  for s in engine.get("samples", ())
                  if len(s) > 3 and isinstance(s[3], list)
                  and s[3][colocate.VIEW_FREE] is not None)
    return [t for t, _ in rows], [k for _, k in rows]


def usual_bound(engine):
    """The most KV tokens a batch of the engine reads: under kvshim the read
    bound most of its samples had (read_caps), else its read_tokens."""
    caps = engine.get("read_caps") or {}
    if caps:
        return int(max(caps.items(), key=lambda kv: kv[1])[0])
    return int(engine["read_tokens"])


def padded(tokens, pad, bound):
    """The KV read transformers pads tokens to: a multiple of pad, at most
    bound (at least one interval, as a batch reads one)."""
    return min(max(-(-tokens // pad), 1) * pad, bound)


def binned(engines, width):
    """{bin: [batch seconds]} over engines (one model's, any replays), each
    step in the bin of the KV in use at its start."""
    bins = {}
    for e in engines:
        times, kv = in_use_at(e)
        for st in e.get("steps", ()):
            i = bisect.bisect_right(times, st[0]) - 1
            if i >= 0:
                bins.setdefault(kv[i] // width, []).append(st[2])
    return bins


def tokens(text):
    """--bin's value: a positive number of tokens."""
    n = int(text)
    if n <= 0:
        raise argparse.ArgumentTypeError("give a positive number of tokens (got %d)" % n)
    return n


def main():
    args, cfgs, base, other, traces = command_line(
        __doc__, "steps_by_kv",
        [("--bin", {"type": tokens, "default": 4096, "help": "tokens a bin (4096)"})])
    print("batch times by the KV in use, over the replays of %s both configurations ran: each "
          "step's batch in the bin of the KV tokens its engine's requests held (its last sample "
          "before the step), bins of %d tokens with %d steps or more; the KV read that pads to, "
          "at the engine's padding and usual bound" % (", ".join(traces), args.bin, LEAST))
    print("| model | config | KV in use, tokens | steps | batch p50 ms | KV read padded to |")
    print("|---|---|---|---|---|---|")
    labels = {t: both_ran(args.dir, cfgs, set(base[t]) & set(other[t])) for t in traces}
    for m in MODELS:
        for c in cfgs:
            engines = [engines_of(args.dir, c, lb, (m,))[m] for t in traces for lb in labels[t]]
            if not engines:
                continue
            pad = engines[0].get("kv_pad") or PAD
            bound = usual_bound(engines[0])
            for b, xs in sorted(binned(engines, args.bin).items()):
                if len(xs) < LEAST:
                    continue
                lo, hi = b * args.bin, (b + 1) * args.bin
                reads = sorted({padded(min(lo + 1, hi - 1), pad, bound),
                                padded(hi - 1, pad, bound)})
                print("| %s | %s | %d to %d | %d | %.1f | %s |" % (
                    m, c, lo, hi, len(xs), 1e3 * statistics.median(xs),
                    " to ".join(str(r) for r in reads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
