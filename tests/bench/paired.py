#!/usr/bin/env python3
"""Each request against itself: a colocate run's engine files (as
engines.tar.xz in docs/results keeps them) read request by request, the
same request (its id) in two configurations' replays of one trace, to say
where a small difference in TTFT comes from, such as the few milliseconds
a trace on which the static split never queues costs under kvshim.

    python3 tests/bench/paired.py DIR [--configs static,kvshim] [--traces T1,T2]

DIR holds the engine files (colocate-CONFIG-LABEL-MODEL.json, unpacked).
For each replay both configurations ran (the same label), each model and
all of them: the requests both served and this splits, and the second
configuration's TTFT less the first's in milliseconds, its mean and
median, the mean split into four parts that add up to it, how many
requests took more than 10 ms longer, and how many 10 ms less, and how
many served in both it left out: a request whose admission no step the
engine recorded explains (colocate wrote a step's start to 0.1 ms before
session 47, to 1 us since), or one admitted again after its first token
(moved to the CPU and back: its admission is the later one). A request
transformers started over whole (requeued, no CPU room) keeps only its
second run's times, here and in colocate's TTFT; colocate's evictions
table counts them.

The parts, from the engine's own records (its steps: when each began, its
scheduling and its run; the request's arrival, admission and first token):
- before its step: from its arrival to the start of the step whose
  scheduling admitted it (its queue, and the rest of the step its engine
  was in; negative where that scheduling began before it arrived);
- scheduling: that step's scheduling, and that of any later step begun
  before its first token (under kvshim the adapter's checks and maps are
  in it);
- running: those steps' runs (the forward passes, beside the other
  engines' on the GPU);
- the rest: what is left until its first token (between a step's
  scheduling and its run, and the token's way out): a fraction of a
  millisecond when the steps explain the request.
"""

import bisect
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import colocate  # noqa: E402
from apart import MODELS, both_ran, command_line, engines_of  # noqa: E402

GREW_S = 0.010          # a request took longer (or less) by more than this
ROUNDED_S = 5e-5        # a step's start as colocate wrote it, to 0.1 ms (1 us from session 47)


def parts(engine):
    """{request id: (ttft, before its step, scheduling, running, rest)} in
    seconds, for engine's requests served (colocate.served) whose steps
    explain them, and None when the engine recorded no steps (the
    engine's results as colocate writes them: its "requests" with first,
    started and last in its own clock and done_at in the trace's, and its
    "steps" as (start in the trace's time, seconds scheduling, seconds
    running, ...)). The step that admitted a request is the last begun
    before its admission (transformers marks it admitted in that step's
    scheduling), and its admission must lie in that scheduling; the later
    steps counted are those begun before its first token."""
    if not engine.get("steps"):
        return None
    steps = sorted(engine["steps"])
    starts = [st[0] for st in steps]
    out = {}
    for r in engine.get("requests", ()):
        try:
            if not colocate.served(r):
                continue
            t0 = r["last"] - r["done_at"]   # the trace's start in the engine's clock
            first, admitted = r["first"] - t0, r["started"] - t0
            ttft = float(r["ttft"])
        except (KeyError, TypeError):
            continue
        k = bisect.bisect_right(starts, admitted + ROUNDED_S) - 1
        if k < 0 or not admitted <= first or admitted > starts[k] + steps[k][1] + ROUNDED_S:
            continue
        mine = [steps[k]] + [st for st in steps[k + 1:] if st[0] < first - ROUNDED_S]
        sched = sum(st[1] for st in mine)
        run = sum(st[2] for st in mine)
        out[r["id"]] = (ttft, starts[k] - (first - ttft), sched, run,
                        first - starts[k] - sched - run)
    return out


def mean_ms(xs):
    return 1e3 * statistics.mean(xs)


def compare(base, other):
    """The row's figures for the requests in both base and other (parts'
    results, of the same engines): (requests, TTFT mean and median
    difference, the mean of each part's, how many grew and shrank by more
    than GREW_S), the differences in ms; None where none is in both."""
    ids = [i for i in base if i in other]
    if not ids:
        return None
    d = [[b - a for a, b in zip(base[i], other[i])] for i in ids]
    # (rounded to 0.1 ms, as printed, and no "-0.0" for a sum of
    # differences that cancel but for the float's last bits)
    ms = [round(v, 1) + 0.0 for v in (
        mean_ms(x[0] for x in d), 1e3 * statistics.median(x[0] for x in d),
        mean_ms(x[1] for x in d), mean_ms(x[2] for x in d), mean_ms(x[3] for x in d),
        mean_ms(x[4] for x in d))]
    return tuple([len(ids)] + ms + [sum(x[0] > GREW_S for x in d),
                                    sum(x[0] < -GREW_S for x in d)])


def main():
    args, cfgs, base, other, traces = command_line(__doc__, "paired")
    print("each request in %s less itself in %s, ms: TTFT (mean, median), the mean split into "
          "the time before its step, scheduling, running and the rest; requests more than "
          "%.0f ms longer, and shorter; and those served in both that the steps did not "
          "explain, left out" % (cfgs[1], cfgs[0], 1e3 * GREW_S))
    print("| replay | model | requests | TTFT mean | TTFT median | before its step | scheduling "
          "| running | the rest | longer | shorter | left out |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in traces:
        labels = both_ran(args.dir, cfgs, set(base[t]) & set(other[t]))
        if not labels:
            print("| %s | - | no replay both ran | | | | | | | | | |" % t)
        for lb in labels:
            engines = {c: engines_of(args.dir, c, lb, MODELS) for c in cfgs}
            split = {(c, m): parts(e) for c in cfgs for m, e in engines[c].items()}
            for m in MODELS + ("all",):
                names = MODELS if m == "all" else (m,)
                if any(split[c, n] is None for c in cfgs for n in names):
                    print("| %s | %s | steps not counted | | | | | | | | | |" % (lb, m))
                    continue
                served = [{(n, r["id"]) for n in names for r in engines[c][n]["requests"]
                           if colocate.served(r)} for c in cfgs]
                row = compare(*({(n, i): v for n in names for i, v in split[c, n].items()}
                                for c in cfgs))
                both = len(served[0] & served[1])
                if row is None:
                    print("| %s | %s | none in both | | | | | | | | | %d |" % (lb, m, both))
                    continue
                print("| %s | %s | %d | %+.1f | %+.1f | %+.1f | %+.1f | %+.1f | %+.1f | %d | %d "
                      "| %d |" % ((lb, m) + row + (both - row[0],)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
