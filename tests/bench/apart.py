#!/usr/bin/env python3
"""The spread table apart from captures, recounted from a colocate run's
engine files (colocate-CONFIG-TRACE-MODEL.json, as engines.tar.xz in
docs/results keeps them), with colocate.py's rule as it is now: a request
waited on a capture if its engine was capturing a graph at some time
between its arrival and its first token. Then each engine's pauses between
steps over colocate.PAUSE_S with requests in flight (colocate.step_pauses),
for runs made before colocate printed them.

    python3 tests/bench/apart.py DIR [--configs static,kvshim] [--traces T1,T2]

DIR holds the engine files (unpacked). Prints, for each trace both
configurations replayed, each model and all of them, the p99 TTFT of the
requests that waited on no capture: median [least, most] over the
replays both ran (each with its three engines' files), the ratio of the
medians, and whether the second configuration's median is at most the
first's most (colocate's spread rule); then the same on the requests no
capture touched (colocate.untouched: those that waited on a capture of
their engine in no replay of either configuration, the same in each).
"""

import argparse
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import colocate  # noqa: E402

MODELS = ("small", "medium", "large")


def replays(d, cfg):
    """{trace: [replay labels]} of configuration cfg's engine files in d."""
    out = {}
    pat = re.compile(r"^colocate-%s-(.+)-(%s)\.json$" % (re.escape(cfg), "|".join(MODELS)))
    for name in sorted(os.listdir(d)):
        m = pat.match(name)
        if m:
            label = m.group(1)
            base = re.sub(r"-run\d+$", "", label)
            out.setdefault(base, set()).add(label)
    return {t: sorted(ls) for t, ls in out.items()}


def engines_of(d, cfg, label, names):
    """{name: its engine's results} of configuration cfg's replay label in
    d, for the engines names."""
    engines = {}
    for n in names:
        with open(os.path.join(d, "colocate-%s-%s-%s.json" % (cfg, label, n))) as f:
            engines[n] = json.load(f)
    return engines


def p99_apart(d, cfg, label, names):
    got = colocate.uncaptured(engines_of(d, cfg, label, names), names)
    return None if got is None else got[1]


def both_ran(d, cfgs, labels):
    """Of a trace's replay labels, those each configuration in cfgs ran,
    each with the files of its three engines in d, in order."""
    return [lb for lb in sorted(labels) if all(
        os.path.exists(os.path.join(d, "colocate-%s-%s-%s.json" % (c, lb, m)))
        for c in cfgs for m in MODELS)]


def row(t, m, s, k, extra=""):
    """Prints a table row: the first configuration's p99s s against the
    second's k, median [least, most], their ratio and the spread rule."""
    ms, mk = statistics.median(s), statistics.median(k)
    print("| %s | %s | %s%.3f [%.3f, %.3f] | %.3f [%.3f, %.3f] | %.2fx | %s |" % (
        t, m, extra, ms, min(s), max(s), mk, min(k), max(k), ms / mk,
        "yes" if mk <= max(s) else "NO"))


def command_line(doc, name, extra=()):
    """The command line of a script that reads a colocate run's engine
    files as this one does (DIR [--configs A,B] [--traces T1,T2]; doc: its
    docstring, name: its name in messages; extra: its own options, as
    (flag, add_argument's keywords) pairs): (its arguments, the two
    configurations, each one's {trace: replay labels}, the traces both
    replayed, in --traces' order if given). Exits 2 on bad arguments, 1
    when no trace was replayed by both."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--configs", default="static,kvshim")
    ap.add_argument("--traces")
    for flag, kwargs in extra:
        ap.add_argument(flag, **kwargs)
    args = ap.parse_args()
    cfgs = args.configs.split(",")
    if len(cfgs) != 2 or not os.path.isdir(args.dir):
        ap.error("give a directory of engine files and two configurations")
    base, other = (replays(args.dir, c) for c in cfgs)
    traces = [t for t in base if t in other]
    if args.traces:
        traces = [t for t in args.traces.split(",") if t in traces]
    if not traces:
        print("%s: no trace both configurations replayed in %s" % (name, args.dir),
              file=sys.stderr)
        sys.exit(1)
    return args, cfgs, base, other, traces


def main():
    args, cfgs, base, other, traces = command_line(__doc__, "apart")
    print("| trace | model | %s p99 | %s p99 | %s / %s (medians) | within %s's spread |" % (
        cfgs[0], cfgs[1], cfgs[0], cfgs[1], cfgs[0]))
    print("|---|---|---|---|---|---|")
    both = {t: both_ran(args.dir, cfgs, set(base[t]) & set(other[t])) for t in traces}
    for t in traces:
        for m in MODELS + ("all",):
            names = MODELS if m == "all" else (m,)
            if not both[t]:
                print("| %s | %s | no replay both ran | | | |" % (t, m))
                continue
            xs = [[p99_apart(args.dir, c, lb, names) for lb in both[t]] for c in cfgs]
            if any(v is None for x in xs for v in x):
                print("| %s | %s | captures not counted | | | |" % (t, m))
                continue
            row(t, m, *xs)
    print("\non the requests no capture of their engine touched, in no replay of either "
          "configuration (the same requests in each)")
    print("| trace | model | requests | %s p99 | %s p99 | %s / %s (medians) | within %s's "
          "spread |" % (cfgs[0], cfgs[1], cfgs[0], cfgs[1], cfgs[0]))
    print("|---|---|---|---|---|---|---|")
    for t in traces:
        for m in MODELS + ("all",):
            names = MODELS if m == "all" else (m,)
            if not both[t]:
                print("| %s | %s | no replay both ran | | | | |" % (t, m))
                continue
            runs = [[engines_of(args.dir, c, lb, names) for lb in both[t]] for c in cfgs]
            keep = colocate.untouched(runs[0] + runs[1], names)
            if not keep:
                print("| %s | %s | %s | | | | |" % (
                    t, m, "captures not counted" if keep is None else "none"))
                continue
            row(t, m, *([colocate.p99_of(e, names, keep) for e in r] for r in runs),
                extra="%d | " % len(keep))
    print("\npauses between steps over %.0f ms with requests in flight: how many, the longest "
          "(at s from the trace's start), in all s" % (1e3 * colocate.PAUSE_S))
    print("| replay | model | %s | %s |" % tuple(cfgs))
    print("|---|---|---|---|")
    for t in traces:
        for lb in sorted(set(base[t]) | set(other[t])):
            for m in MODELS:
                cols = []
                for c in cfgs:
                    path = os.path.join(args.dir, "colocate-%s-%s-%s.json" % (c, lb, m))
                    if not os.path.exists(path):
                        cols.append("-")
                        continue
                    with open(path) as f:
                        ps = colocate.step_pauses(json.load(f))
                    if ps is None:
                        cols.append("steps not counted")
                        continue
                    w = max(ps, key=lambda x: x[1]) if ps else None
                    cols.append("%d, %s, %.3f" % (len(ps), "%.3f (%.2f)" % (w[1], w[0])
                                                  if w else "-", sum(x[1] for x in ps)))
                print("| %s | %s | %s | %s |" % (lb, m, cols[0], cols[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
