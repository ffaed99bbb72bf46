#!/usr/bin/env python3
"""Each request against itself: a colocate run's engine files (as
engines.tar.xz in docs/results keeps them) read request by request, the
same request (its id) in two configurations' replays of one trace, to say
where a small difference in TTFT comes from, such as the few milliseconds
a trace on which the static split never queues costs under kvshim.

    python3 tests/bench/paired.py DIR [--configs static,kvshim] [--traces T1,T2]

DIR holds the engine files (colocate-CONFIG-LABEL-MODEL.json, unpacked).
For each replay both configurations ran (the same label), each model and
all of them: the requests both served and this splits (a first token in
each, admitted by a step the engine recorded; one started again after its
first token, as an eviction may, is left out), and the second
configuration's TTFT less the first's in milliseconds, its mean and
median, the mean split into four parts that add up to it, and how many
requests took more than 10 ms longer, and how many 10 ms less.

The parts, from the engine's own records (its steps: when each began, its
scheduling and its run; the request's arrival, admission and first token):
- before its step: from its arrival to the start of the step whose
  scheduling admitted it (its queue, and the rest of the step its engine
  was in; negative where that scheduling began before it arrived);
- scheduling: that step's scheduling, and that of any later step that
  began before its first token (under kvshim the adapter's checks and
  maps are in it);
- running: those steps' runs (the forward passes, beside the other
  engines' on the GPU);
- the rest: what is left until its first token (between a step's
  scheduling and its run, and the token's way out).
"""

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from apart import MODELS, both_ran, command_line  # noqa: E402

GREW_S = 0.010          # a request took longer (or less) by more than this


def parts(engine):
    """{request id: (ttft, before its step, scheduling, running, rest)} in
    seconds, for engine's requests with a first token, an admission and a
    step that admitted them (the engine's results as colocate writes
    them: its "requests" with first, started and last in its own clock
    and done_at in the trace's, and its "steps" as (start in the trace's
    time, seconds scheduling, seconds running, ...)). Requests it cannot
    split are left out."""
    steps = sorted(engine.get("steps") or ())
    starts = [st[0] for st in steps]
    out = {}
    for r in engine.get("requests", ()):
        try:
            t0 = r["last"] - r["done_at"]   # the trace's start in the engine's clock
            first, admitted = r["first"] - t0, r["started"] - t0
            ttft = float(r["ttft"])
        except (KeyError, TypeError):
            continue
        arrival = first - ttft
        # the step whose scheduling admitted it: the last begun before that
        k = next((i for i in range(len(starts) - 1, -1, -1) if starts[i] <= admitted), None)
        if k is None or not admitted <= first:
            continue
        mine = [steps[k]] + [st for st in steps[k + 1:] if st[0] < first]
        sched = sum(st[1] for st in mine)
        run = sum(st[2] for st in mine)
        out[r["id"]] = (ttft, starts[k] - arrival, sched, run,
                        first - starts[k] - sched - run)
    return out


def compare(first, second):
    """The row's figures for the requests in both first and second (parts'
    results, of the same engines): (requests, TTFT mean and median
    difference, the mean of each part's, how many grew and shrank by more
    than GREW_S), the differences in ms; None where none is in both."""
    ids = [i for i in first if i in second]
    if not ids:
        return None
    d = [[b - a for a, b in zip(first[i], second[i])] for i in ids]
    ms = lambda xs: 1e3 * statistics.mean(xs)  # noqa: E731
    return (len(ids), ms(x[0] for x in d), 1e3 * statistics.median(x[0] for x in d),
            ms(x[1] for x in d), ms(x[2] for x in d), ms(x[3] for x in d), ms(x[4] for x in d),
            sum(x[0] > GREW_S for x in d), sum(x[0] < -GREW_S for x in d))


def main():
    args, cfgs, base, other, traces = command_line(__doc__, "paired")
    print("each request in %s less itself in %s, ms: TTFT (mean, median), the mean split into "
          "the time before its step, scheduling, running and the rest; requests more than "
          "%.0f ms longer, and shorter" % (cfgs[1], cfgs[0], 1e3 * GREW_S))
    print("| replay | model | requests | TTFT mean | TTFT median | before its step | scheduling "
          "| running | the rest | longer | shorter |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for t in traces:
        labels = both_ran(args.dir, cfgs, set(base[t]) & set(other[t]))
        if not labels:
            print("| %s | - | no replay both ran | | | | | | | | |" % t)
        for lb in labels:
            split = {}
            for c in cfgs:
                for m in MODELS:
                    with open(os.path.join(args.dir, "colocate-%s-%s-%s.json" % (c, lb, m))) as f:
                        split[c, m] = parts(json.load(f))
            for m in MODELS + ("all",):
                names = MODELS if m == "all" else (m,)
                row = compare(*({(n, i): v for n in names for i, v in split[c, n].items()}
                                for c in cfgs))
                if row is None:
                    print("| %s | %s | none in both | | | | | | | | |" % (lb, m))
                    continue
                print("| %s | %s | %d | %+.1f | %+.1f | %+.1f | %+.1f | %+.1f | %+.1f | %d | %d |"
                      % ((lb, m) + row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
