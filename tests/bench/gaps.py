"""How long the fair shares left gaps unserved in a colocate run, from its
JSON (colocate.py's colocate.json, or that file compressed with xz, as
docs/results keeps it). For each kvshim configuration and trace, from the
shared segment's samples (every 50 ms; each counts until the next, at
most 0.2 s):
  - gap s: the time in which some engine had a gap (what it waited for,
    below its share);
  - unasked s: of that time, the time in which neither the free budget nor
    the idle pages of the engines not waiting covered the gaps, the engines
    were asked for less than the gaps, and engines that waited held idle
    pages. Until session 13 the rule counted those pages as covering the
    gaps (a waiter's own idle pages serve its own demand), so nobody was
    asked for what they could not cover;
  - queued s: of the unasked time, the time in which an engine with a gap
    had a request waiting for its first start (arrived at its trace time,
    not yet started: the run's requests, by their arrival and queue wait,
    which colocate.py takes to the request's last start; so a request is
    counted until its first token at most, by which it had started; a
    request waits at least until the engine's next step, and one preempted
    back into the queue is not counted again). In the rest, the
    engines with gaps stated demand with no request waiting so: the
    cushion an engine states for the requests it runs, or requests
    preempted and waiting again. "-" when the JSON has no requests or pids
    for the trace (colocate.py writes pids from d2e01ef on, after session
    12's GPU runs).
Figures are the segment's KV pages, not process memory.
  python3 tests/bench/gaps.py docs/results/2026-11-29-h200-session13/run3/colocate.json.xz
"""
import argparse
import json
import lzma
import sys

MIB = 1 << 20
STEP_MAX = 0.2


def load(path):
    """The run's JSON at path (.xz: compressed). Exits 2 naming path when it
    cannot be read or holds no segment samples."""
    opener = lzma.open if path.endswith(".xz") else open
    try:
        with opener(path, "rt") as f:
            run = json.load(f)
    except (OSError, lzma.LZMAError, ValueError) as e:
        refuse("%s: cannot read a colocate JSON: %s" % (path, e))
    if not isinstance(run, dict) or not isinstance(run.get("held"), dict):
        refuse("%s: no shared-segment samples (\"held\"): not colocate.py's JSON" % path)
    return run


def refuse(why):
    print("gaps.py: " + why, file=sys.stderr)
    sys.exit(2)


def number(x, none_ok=False):
    """Whether x is a number as JSON gives one (None too, if none_ok)."""
    return (x is None and none_ok) or (isinstance(x, (int, float)) and not isinstance(x, bool))


def well_formed(samples):
    """Whether samples are as colocate.py writes them: a list of [t, held,
    budget, {pid: [held, idle, demand, asked, share, gap, ...]}], t and the
    figures numbers (a figure may be None: not read)."""
    return isinstance(samples, list) and all(
        isinstance(s, list) and len(s) == 4 and number(s[0]) and number(s[2], True)
        and isinstance(s[3], dict) and all(
            isinstance(v, list) and len(v) >= 6 and all(number(x, True) for x in v[:6])
            for v in s[3].values())
        for s in samples)


def queues(run, path, cfg, label):
    """{pid (as the samples name it): [(arrival, first start)]}: when each
    of the trace's requests waited in its engine's queue, from the run's
    requests ([t, ttft, wait, ...]; a request never started has no wait;
    wait runs to its last start, ttft bounds the first) and pids ({model:
    pid}); None when the run lacks either for the trace (colocate.py before
    d2e01ef wrote no pids). Exits 2 naming path when they are there but not
    as colocate.py writes them."""
    def of(key):
        """The run's key for this trace: None when absent."""
        top = run.get(key)
        if top is None:
            return None
        if not isinstance(top, dict) or not isinstance(top.get(cfg, {}), dict):
            bad()
        return top.get(cfg, {}).get(label)

    def bad():
        refuse("%s: %s, %s: requests or pids not as colocate.py writes them" % (
            path, cfg, label))

    pids, reqs = of("pids"), of("requests")
    if pids is None or reqs is None:
        return None
    if not isinstance(pids, dict) or not isinstance(reqs, dict) or any(
            not number(pid) or not isinstance(reqs.get(name), list) or any(
                not isinstance(r, list) or len(r) < 3 or not number(r[0])
                or not number(r[1], True) or not number(r[2], True) for r in reqs[name])
            for name, pid in pids.items()):
        bad()
    return {str(pid): [(r[0], r[0] + (r[2] if r[1] is None else min(r[1], r[2])))
                       for r in reqs[name] if r[2] is not None]
            for name, pid in pids.items()}


def times(samples, queued=None):
    """(seconds with a gap, seconds of them unasked, seconds of those in
    which an engine with a gap had requests queued, or None without
    queued: see queues) over samples (see well_formed)."""
    gap_s = unasked_s = 0.0
    queued_s = 0.0 if queued is not None else None
    for (t, _, budget, procs), (t_next, _, _, _) in zip(samples, samples[1:]):
        dt = min(t_next - t, STEP_MAX)
        p = {pid: [x or 0 for x in v[:6]] for pid, v in procs.items()}
        gap = sum(v[5] for v in p.values())
        if gap <= 0:
            continue
        gap_s += dt
        free = (budget or 0) - sum(v[0] for v in p.values())
        waiters_idle = sum(v[1] for v in p.values() if v[2] > 0)
        others_idle = sum(v[1] for v in p.values() if v[2] <= 0)
        if (sum(v[3] for v in p.values()) < gap and waiters_idle > 0
                and free + others_idle < gap):
            unasked_s += dt
            if queued is not None and any(
                    v[5] > 0 and any(a <= t < b for a, b in queued.get(pid, ()))
                    for pid, v in p.items()):
                queued_s += dt
    return gap_s, unasked_s, queued_s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="colocate.json or colocate.json.xz")
    args = ap.parse_args()
    rows = []
    for path in args.json:
        run = load(path)
        for cfg, traces in sorted(run["held"].items()):
            if not isinstance(traces, dict):
                refuse("%s: %s: samples not as colocate.py writes them" % (path, cfg))
            for label, samples in sorted(traces.items()):
                if not well_formed(samples):
                    refuse("%s: %s, %s: samples not as colocate.py writes them" % (
                        path, cfg, label))
                rows.append((path, cfg, label) + times(samples, queues(run, path, cfg, label)))
    print("| run | config | trace | gap s | unasked s | queued s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| %s | %s | %s | %.1f | %.1f | %s |" % (
            row[:5] + ("-" if row[5] is None else "%.1f" % row[5],)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
