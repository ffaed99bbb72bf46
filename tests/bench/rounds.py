#!/usr/bin/env python3
"""Colocate runs made apart, read as one run with --repeat: each run's
replays become replays of one trace, and colocate's spread and parity
tables are printed over all of them.

    python3 tests/bench/rounds.py RUN RUN [RUN ...]

A RUN is a colocate output folder (its colocate.json, or colocate.json.xz
as docs/results keeps it) or that file. A long colocate run spans several
calls of the GPU machine, and a machine given back between two calls takes
the whole run with it (session 49 lost 18 minutes so). Runs of one round
each (--configs static,kvshim,twin, one replay of each trace), one per
call, lose one round at most; alternate the configurations' order between
runs by hand (static first in one, last in the next), as --alternate does.

The runs must agree on every setting that shapes a replay (the budget,
the trace's making, the warm-up, the engines' options: SAME) and on the
GPU (as colocate.json names it from session 49; before, as card.txt beside
the file does), and each trace they share must be the same trace.
Differences are refused, naming the setting and the runs. Prints each
replay's p99 TTFT per model and configuration, with the run it came from;
then, for each trace replayed more than once, colocate's run-to-run spread
table (kvshim against static, and twin against static where twin ran) and
its parity table. Exits 0 when a trace was replayed more than once by
static and kvshim, 1 when none was (nothing judged), 2 on bad input.
"""

import argparse
import json
import lzma
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import colocate  # noqa: E402

# colocate's settings that shape a replay; the others (--out, --configs,
# --repeat, --alternate, --deadline, the sweep's, --tolerance) do not
SAME = ("budget_gib", "floor_gib", "weights", "weight_of", "cold_rate", "cycles", "warmup",
        "warmup_rate", "warmup_cycles", "kv_pad", "starved_ms", "capture_keys", "reserve",
        "cpu_offload_gib", "capped_share", "cuda_graphs", "prefix_cache", "prompt_min",
        "prompt_max", "new_min", "new_max", "max_batch_tokens", "dry_run")
# what makes a trace, beside its base name
TRACE = ("rate", "seed", "phase", "cycles", "n")


class Refused(Exception):
    pass


def json_of(run):
    """The path of run's colocate.json (or .json.xz): run itself where it
    is a file."""
    if os.path.isfile(run):
        return run
    for name in ("colocate.json", "colocate.json.xz"):
        path = os.path.join(run, name)
        if os.path.isfile(path):
            return path
    raise Refused("%s: no colocate.json or colocate.json.xz there" % run)


def gpu_of(path, d):
    """The GPU a run used: its JSON's "gpu", else the line of card.txt
    beside it that nvidia-smi's name query wrote."""
    if d.get("gpu"):
        return d["gpu"]
    card = os.path.join(os.path.dirname(path), "card.txt")
    try:
        with open(card) as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for i, line in enumerate(lines):
        if line.startswith("name, memory.total") and i + 1 < len(lines):
            return lines[i + 1].strip()
    raise Refused("%s names no GPU (no \"gpu\" in it, no card.txt beside it with "
                  "nvidia-smi's name line): runs read as one must be of one kind of card"
                  % path)


def load(run):
    """(path, its JSON) of one run, checked for what this reads."""
    path = json_of(run)
    try:
        opener = lzma.open if path.endswith(".xz") else open
        with opener(path, "rt") as f:
            d = json.load(f)
    except (OSError, lzma.LZMAError, ValueError) as e:
        raise Refused("%s: not a colocate.json (%s)" % (path, e))
    if not isinstance(d, dict) or not all(isinstance(d.get(k), t) for k, t in (
            ("args", dict), ("traces", list), ("table", dict))):
        raise Refused("%s: not a colocate.json (no args, traces and table)" % path)
    return path, d


def merged(runs):
    """Every run's replays as replays of one run: (table {(label, config,
    model): row}, traces [{"label", "base", ...}], configurations, rows
    [(label, the run's number, from 1)], gpu). Refuses runs that differ in a setting of SAME,
    in their GPU or in a trace they share, and a run given twice."""
    seen, table, traces, configs, rows, count = {}, {}, [], [], [], {}
    first = None
    made = {}
    for run in runs:
        path, d = load(run)
        real = os.path.realpath(path)
        if real in seen:
            raise Refused("%s is given twice (as %s too)" % (path, seen[real]))
        seen[real] = path
        gpu = gpu_of(path, d)
        if first is None:
            first = (path, d["args"], gpu)
        else:
            p0, a0, g0 = first
            for k in SAME:
                if a0.get(k) != d["args"].get(k):
                    raise Refused("%s and %s differ in %s (%r against %r): their replays "
                                  "cannot be read as one run's" % (
                                      p0, path, k, a0.get(k), d["args"].get(k)))
            if gpu != g0:
                raise Refused("%s and %s ran on different GPUs (%s against %s): compare "
                              "only within one kind of card" % (p0, path, g0, gpu))
        names = {}
        ran = {key.split("|")[0] for key in d["table"]}
        for tr in d["traces"]:
            if tr.get("label") not in ran:
                continue    # (a replay --deadline skipped)
            base = tr.get("base", tr.get("label"))
            mine = {k: tr.get(k) for k in TRACE}
            if base in made and made[base][1] != mine:
                raise Refused("%s's trace %s is not %s's (%s against %s)" % (
                    path, base, made[base][0], mine, made[base][1]))
            made.setdefault(base, (path, mine))
            count[base] = count.get(base, 0) + 1
            label = base if count[base] == 1 else "%s-run%d" % (base, count[base])
            names[tr["label"]] = label
            traces.append(dict(tr, label=label, base=base))
            rows.append((label, len(seen)))
        for key, row in d["table"].items():
            parts = key.split("|")
            if len(parts) != 3 or parts[0] not in names:
                raise Refused("%s: table row %r names no replay of its traces" % (path, key))
            table[(names[parts[0]], parts[1], parts[2])] = row
            if parts[1] not in configs:
                configs.append(parts[1])
    return table, traces, configs, rows, first[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN")
    args = ap.parse_args()
    if len(args.runs) < 2:
        ap.error("give two runs or more (one run's own replays: colocate prints their tables)")
    try:
        table, traces, configs, rows, gpu = merged(args.runs)
    except Refused as e:
        print("rounds: %s" % e, file=sys.stderr)
        return 2
    print("rounds: %d runs read as one, on %s: %s" % (len(args.runs), gpu, ", ".join(configs)))
    for i, run in enumerate(args.runs):
        print("run %d: %s" % (i + 1, run))
    shown = [c for c in ("static", "kvshim", "twin") if c in configs]
    print("\neach replay's p99 TTFT in seconds, by the run it came from")
    print("| replay | run | model | %s |" % " | ".join(shown))
    print("|---|---|---|%s" % ("---|" * len(shown)))
    for label, k in rows:
        for name in colocate.ORDER + ("all",):
            figs = [table.get((label, c, name)) for c in shown]
            print("| %s | %d | %s | %s |" % (label, k, name, " | ".join(
                "-" if t is None or t.get("ttft_p99") is None else "%.3f" % t["ttft_p99"]
                for t in figs)))
    results = {c: {} for c in configs}
    judged = colocate.repeats(table, traces, results)
    if "twin" in results:
        colocate.repeats(table, traces, results, "twin")
    colocate.parity(table, traces, results)
    if not judged:
        print("rounds: no trace replayed more than once by static and kvshim: nothing judged",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
