#!/usr/bin/env python3
"""Colocate runs made apart, read as one run with --repeat: each run's
replays become replays of one trace, and colocate's spread and parity
tables are printed over all of them.

    python3 tests/bench/rounds.py [--config NAME] RUN RUN [RUN ...]

A RUN is a colocate output folder (its colocate.json, or colocate.json.xz
as docs/results keeps it) or that file. A long colocate run spans several
calls of the GPU machine, and a machine given back between two calls takes
the whole run with it (session 49 lost 18 minutes so). Runs of one round
each (--configs static,kvshim,twin, one replay of each trace), one per
call, lose one round at most; alternate the configurations' order between
runs by hand (static first in one, last in the next), as --alternate does.
Under the spread table, the chance its rule reads NO on a model's row
where kvshim is no different from static, for the replays each trace had
(rule_chance: 0.20 with 3 replays each, 0.07 to 0.21 with 4): how strict
the rule is, not a test of the figures.

The runs must agree on every setting that shapes a replay (the budget,
the trace's making, the warm-up and its trace, the engines' options:
SAME; a configuration's own, ONLY_IN, where both ran it; each engine's
effective settings as it reported them: ENGINE), on the code (as
colocate.json records its version from session 50), and on the GPU (as
colocate.json names it from session 50; before, as card.txt beside the
file does), and each trace they share must be the same trace. Differences
are refused, naming the setting and the runs; so is one run given twice
(by its path, or by its measured times: two copies of one run). Prints
each run's --configs as given, each replay's p99 TTFT per model and
configuration with the run it came from; then, for each trace replayed
more than once, colocate's run-to-run spread table (kvshim against
static, or --config's: kvpad, noahead or another configuration colocate
ran beside static; and twin against static where twin ran) and its
parity table. Exits 0 when a trace was replayed more than once by static
and the configuration judged, 1 when none was (nothing judged), 2 on bad
input.
"""

import argparse
import hashlib
import json
import lzma
import math
import numbers
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import colocate  # noqa: E402

# colocate's settings that shape a replay; the others (--out, --configs,
# --repeat, --alternate, --deadline, the sweep's, --tolerance, --weights as
# given: weight_of is what it means) do not; the trace's own (--cycles,
# --rates, --seeds, --phases) are compared trace by trace (TRACE)
SAME = ("budget_gib", "floor_gib", "weight_of", "cold_rate", "warmup", "warmup_rate",
        "warmup_cycles", "capture_keys", "reserve", "cpu_offload_gib", "cuda_graphs",
        "prefix_cache", "prompt_min", "prompt_max", "new_min", "new_max",
        "max_batch_tokens", "dry_run")
# settings one configuration alone reads, compared where both runs ran it
ONLY_IN = {"starved_ms": "starved", "kv_pad": "kvpad", "capped_share": "capped"}
# what makes a trace, beside its base name
TRACE = ("rate", "seed", "phase", "cycles", "n")
# an engine's settings as it reported them on READY (colocate's engines
# record), compared for each configuration both runs ran (not read_tokens:
# older trees, session 33's among them, reported the bound as the engine's
# first request had lowered it, which moved with timing)
ENGINE = ("kvshim", "num_blocks", "max_batch_tokens", "kv_tensor_bytes", "ceiling",
          "cuda_graphs", "pack", "reserve", "ahead", "weight", "cushion", "give_back",
          "idle_cushion", "starved_ms", "kv_pad")


class Refused(Exception):
    pass


def json_of(run):
    """The path of run's colocate.json (or .json.xz): run itself where it
    is a file. A folder holding both is refused: which is the run?"""
    if os.path.isfile(run):
        return run
    there = [p for p in (os.path.join(run, n) for n in ("colocate.json", "colocate.json.xz"))
             if os.path.isfile(p)]
    if not there:
        raise Refused("%s: no colocate.json or colocate.json.xz there" % run)
    if len(there) > 1:
        raise Refused("%s holds both colocate.json and colocate.json.xz: name the one to read"
                      % run)
    return there[0]


def gpu_of(path, d):
    """The GPU a run used: its JSON's "gpu", else the line of card.txt
    beside it that nvidia-smi's name query wrote."""
    if d.get("gpu"):
        return d["gpu"]
    card = os.path.join(os.path.dirname(path), "card.txt")
    try:
        with open(card) as f:
            lines = f.read().splitlines()
    except (OSError, ValueError):
        lines = []
    for i, line in enumerate(lines):
        if line.startswith("name, memory.total") and i + 1 < len(lines):
            return lines[i + 1].strip()
    raise Refused("%s names no GPU (no \"gpu\" in it, no card.txt beside it with "
                  "nvidia-smi's name line): runs read as one must be of one kind of card"
                  % path)


def finite(x):
    """Whether x is a number a p99 can be (None: no requests)."""
    if x is None:
        return True
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def load(run):
    """(path, its JSON) of one run, checked for what this reads of it:
    its args, traces and table, the p99 of every model's row and the rows
    of every model beside each configuration's "all" row, and the form of
    its engines, warm-up and code records."""
    path = json_of(run)
    try:
        opener = lzma.open if path.endswith(".xz") else open
        with opener(path, "rt") as f:
            d = json.load(f)
    except (OSError, EOFError, lzma.LZMAError, ValueError, RecursionError) as e:
        raise Refused("%s: not a colocate.json (%s)" % (
            path, str(e) or type(e).__name__)) from e
    if not isinstance(d, dict) or not all(isinstance(d.get(k), t) for k, t in (
            ("args", dict), ("traces", list), ("table", dict))):
        raise Refused("%s: not a colocate.json (no args, traces and table)" % path)
    for i, tr in enumerate(d["traces"]):
        if not isinstance(tr, dict) or not isinstance(tr.get("label"), str) \
                or not isinstance(tr.get("base", ""), (str, type(None))):
            raise Refused("%s: trace %d is not a colocate trace (no label, or a base not "
                          "a name)" % (path, i))
    for key, row in d["table"].items():
        if not isinstance(row, dict):
            raise Refused("%s: table row %r is not a colocate row" % (path, key))
        if key.rsplit("|", 1)[-1] in colocate.ORDER + ("all",) and (
                "ttft_p99" not in row or not finite(row["ttft_p99"])):
            raise Refused("%s: table row %r has no p99 TTFT (ttft_p99)" % (path, key))
        parts = key.split("|")
        if len(parts) == 3 and parts[2] == "all":
            for m in colocate.ORDER:
                if "|".join(parts[:2] + [m]) not in d["table"]:
                    raise Refused("%s: table row %r has no %s row beside it" % (path, key, m))
    for k in ("engines", "warmup", "code"):
        if d.get(k) is not None and not isinstance(d[k], dict):
            raise Refused("%s: its %s is not a colocate record" % (path, k))
    return path, d


def warmup_of(path, d):
    """The warm-up trace a run replayed first ({rate, seed, phase, cycles}
    and n where recorded; None without --warmup): as colocate.json records
    it from session 50, before, as colocate made it (the seed after its
    traces', the first phase, --warmup-rate or the highest rate)."""
    a = d["args"]
    if not a.get("warmup"):
        return None
    if d.get("warmup"):
        return {k: d["warmup"].get(k) for k in TRACE}
    try:
        rate = a.get("warmup_rate")
        rate = "%g" % (rate if rate is not None else max(float(t["rate"]) for t in d["traces"]))
        return {"rate": rate, "seed": max(int(t["seed"]) for t in d["traces"]) + 1,
                "phase": a["phase_list"][0], "cycles": a.get("warmup_cycles", 1), "n": None}
    except (KeyError, TypeError, ValueError, IndexError):
        raise Refused("%s: its warm-up's trace cannot be told (no rates, seeds or phases)"
                      % path)


def engines_of(d):
    """{configuration: {model: its engine's settings (ENGINE)}}."""
    out = {}
    for cname, engines in (d.get("engines") or {}).items():
        if isinstance(engines, dict):
            out[cname] = {m: {k: e.get(k) for k in ENGINE}
                          for m, e in engines.items() if isinstance(e, dict)}
    return out


def timings_of(d):
    """A digest of the run's measured times (colocate.json's "requests",
    "seconds" and "held": every request's, each configuration's start and
    replays, the shared segment's samples): two files of one run share it,
    two runs do not (their engines' pids may: each fresh machine numbers
    its processes alike; a dry run's requests are made up alike). None
    where the file has none of them."""
    times = {k: d.get(k) for k in ("requests", "seconds", "held") if d.get(k)}
    if not times:
        return None
    return hashlib.sha256(json.dumps(times, sort_keys=True).encode()).hexdigest()


def agree(p0, d0, path, d):
    """Refuses a run (path, its JSON d) that differs from the first (p0,
    d0) in a setting, its code or its engines."""
    a0, a = d0["args"], d["args"]
    for k in SAME:
        if a0.get(k) != a.get(k):
            raise Refused("%s and %s differ in %s (%r against %r): their replays cannot be "
                          "read as one run's" % (p0, path, k, a0.get(k), a.get(k)))
    ran0 = {key.split("|")[1] for key in d0["table"] if key.count("|") == 2}
    ran = {key.split("|")[1] for key in d["table"] if key.count("|") == 2}
    for k, cname in ONLY_IN.items():
        both = {c for c in ran0 & ran if c.split("@")[0] == cname}
        if both and a0.get(k) != a.get(k):
            raise Refused("%s and %s differ in %s (%r against %r), which %s reads" % (
                p0, path, k, a0.get(k), a.get(k), ", ".join(sorted(both))))
    w0, w = warmup_of(p0, d0), warmup_of(path, d)
    if w0 and w and any(w0[k] != w[k] for k in TRACE if w0[k] is not None and w[k] is not None):
        raise Refused("%s and %s warmed up on different traces (%s against %s)" % (
            p0, path, w0, w))
    c0, c = d0.get("code"), d.get("code")
    if c0 and c and c0 != c:
        raise Refused("%s and %s ran different code (%s against %s): compare only one tree's "
                      "runs" % (p0, path, c0, c))
    e0, e = engines_of(d0), engines_of(d)
    for cname in sorted(set(e0) & set(e)):
        for m in sorted(set(e0[cname]) & set(e[cname])):
            for k in ENGINE:
                if e0[cname][m][k] != e[cname][m][k]:
                    raise Refused("%s and %s: %s's %s engine differs in %s (%r against %r)" % (
                        p0, path, cname, m, k, e0[cname][m][k], e[cname][m][k]))


def merged(runs):
    """Every run's replays as replays of one run: (table {(label, config,
    model): row}, traces [{"label", "base", ...}], configurations, rows
    [(label, the run's number, from 1)], gpu, each run's --configs as
    given). Refuses runs that disagree (agree), differ in their GPU or
    in a trace they share, and a run given twice."""
    seen, times, table, traces, configs, rows, count = {}, {}, {}, [], [], [], {}
    first, made, taken, orders = None, {}, set(), []
    for run in runs:
        path, d = load(run)
        real = os.path.realpath(path)
        if real in seen:
            raise Refused("%s is given twice (as %s too)" % (path, seen[real]))
        seen[real] = path
        mine = timings_of(d)
        if mine is not None and mine in times:
            raise Refused("%s and %s are one run (their measured times are the same)" % (
                times[mine], path))
        times[mine] = path
        gpu = gpu_of(path, d)
        if first is None:
            first = (path, d, gpu)
        else:
            agree(first[0], first[1], path, d)
            if gpu != first[2]:
                raise Refused("%s and %s ran on different GPUs or drivers (%s against %s): "
                              "compare only within one kind of card" % (
                                  first[0], path, first[2], gpu))
        names = {}
        ran = {key.split("|")[0] for key in d["table"]}
        for tr in d["traces"]:
            if tr["label"] not in ran:
                continue    # (a replay --deadline skipped)
            base = tr.get("base") or re.sub(r"-run\d+$", "", tr["label"])
            trace = {k: tr.get(k) for k in TRACE}
            if base in made and made[base][1] != trace:
                raise Refused("%s's trace %s is not %s's (%s against %s)" % (
                    path, base, made[base][0], trace, made[base][1]))
            made.setdefault(base, (path, trace))
            count[base] = count.get(base, 0) + 1
            label = base if count[base] == 1 else "%s-run%d" % (base, count[base])
            if label in taken:
                raise Refused("%s: its replay %s would be named %s, which an earlier replay "
                              "is" % (path, tr["label"], label))
            taken.add(label)
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
        a = d["args"]
        orders.append("--configs %s%s" % (a.get("configs") or "-",
                                            " --alternate" if a.get("alternate") else ""))
    return table, traces, configs, rows, first[2], orders


def rule_chance(n, m):
    """The chance that the spread table's rule reads NO on a row where a
    configuration's m replays are drawn as static's n are (no difference
    at all): its median above static's most. From ranks alone, so for any
    distribution without ties: the top k of the n + m replays all the
    configuration's has chance C(n+m-k, m-k) / C(n+m, m). For odd m the
    median is its ((m+1)/2)-th largest: exact, (p, p). For even m, the mean
    of its middle two: at least the chance both pass static's most (k =
    m/2 + 1), at most the chance the upper does (k = m/2). Returns (least,
    most)."""
    def top(k):
        return math.comb(n + m - k, m - k) / math.comb(n + m, m)
    if m % 2:
        return top((m + 1) // 2), top((m + 1) // 2)
    return top(m // 2 + 1), top(m // 2)


def print_rule_chance(table, traces, config):
    """Under the spread table, for each trace static and config both
    replayed more than once, what its rule costs a configuration no
    different from static: rule_chance per model row, for the replays
    both ran."""
    said = []
    for base, labels in colocate.by_base(traces).items():
        done = colocate.replayed(table, labels, ("static", config), lambda t: t["ttft_p99"])
        if len(done) < 2:
            continue
        least, most = rule_chance(len(done), len(done))
        said.append("%s, %d replays each: %s" % (
            base, len(done), "%.2f" % least if least == most
            else "between %.2f and %.2f" % (least, most)))
    if said:
        print("the spread rule's chance of a NO on one model's row where %s's replays are no "
              "different from static's (from ranks alone): %s" % (config, "; ".join(said)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN")
    ap.add_argument("--config", default="kvshim",
                    help="the configuration judged against static (default kvshim; kvpad, "
                    "staticpad, noahead or another colocate runs beside static)")
    args = ap.parse_args()
    if args.config in ("static", "twin"):
        ap.error("--config %s: give a kvshim configuration to judge against static (or "
                 "staticpad, ample; twin is judged beside any)" % args.config)
    if len(args.runs) < 2:
        ap.error("give two runs or more (one run's own replays: colocate prints their tables)")
    try:
        table, traces, configs, rows, gpu, orders = merged(args.runs)
    except Refused as e:
        print("rounds: %s" % e, file=sys.stderr)
        return 2
    print("rounds: %d runs read as one, on %s: %s" % (len(args.runs), gpu, ", ".join(configs)))
    for i, run in enumerate(args.runs):
        print("run %d: %s (%s)" % (i + 1, run, orders[i]))
    shown = [c for c in ("static", args.config, "twin") if c in configs]
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
    judged = colocate.repeats(table, traces, results, args.config)
    print_rule_chance(table, traces, args.config)
    if "twin" in results:
        colocate.repeats(table, traces, results, "twin")
    colocate.parity(table, traces, results)
    if not judged:
        print("rounds: no trace replayed more than once by static and %s: nothing judged"
              % args.config, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
